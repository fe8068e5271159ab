"""Keyboard shortcuts while the pointer is over the annotator, kept away from JupyterLab.

Without help a key reaches an ipycanvas view only after a click on it, and otherwise goes to
JupyterLab's command mode (``b`` inserts a cell, ``d d`` deletes one, ``0 0`` restarts the
kernel). :class:`KeyCatcher` is a tiny anywidget (its JavaScript is inline, so it works
offline wherever anywidget does: JupyterLab 4, Voila) that, once shown inside the annotator:

* marks the annotator's element with ``data-lm-suppress-shortcuts`` (Lumino, and so
  JupyterLab 4, skips its shortcuts for events from inside such an element) and stops every
  key event there from bubbling on to JupyterLab's document listener;
* focuses the annotator when the pointer enters it (unless a text field of the annotator is
  being typed in) and lets go of the focus when the pointer leaves;
* sends each key, with its modifiers and the view under the pointer, to Python in one small
  comm message: ``{"key", "shift", "ctrl", "meta", "view"}``; it takes them in the capture
  phase, so the focused canvas's own key handler does not see the same key a second time.

Keys typed into the annotator's own text inputs (a slider's number box, the window
drop-down) stay with that input; a click on one of its checkboxes or buttons leaves the
shortcuts working.
Without anywidget the catcher is not created and the views' own (click-to-focus) key
handling remains.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

__all__ = ["KEY_CATCHER_ESM", "make_key_catcher"]

logger = logging.getLogger(__name__)

#: The catcher's JavaScript (an anywidget ES module).
KEY_CATCHER_ESM = r"""
const TYPING = new Set(["TEXTAREA", "SELECT"]);
// inputs that take no typed text: a click on one (the auto-refine checkbox) must not leave
// the shortcuts dead until the next click on a view
const NOT_TEXT = new Set(["checkbox", "radio", "button", "submit", "reset", "range", "color",
                          "file", "image"]);
const MODIFIERS = new Set(["Shift", "Control", "Alt", "Meta", "CapsLock"]);
function typing(t) {
  if (!t) return false;
  if (t.tagName === "INPUT") return !NOT_TEXT.has((t.type || "text").toLowerCase());
  return TYPING.has(t.tagName) || t.isContentEditable;
}
function render({ model, el }) {
  el.style.display = "none";
  let root = null, hovered = "axial", tries = 0, cleanup = () => {};
  const attach = () => {
    root = el.closest("." + model.get("root_class"));
    if (!root) {
      if (tries++ < 200) requestAnimationFrame(attach);
      return;
    }
    root.setAttribute("data-lm-suppress-shortcuts", "true");
    if (!root.hasAttribute("tabindex")) root.tabIndex = -1;
    root.style.outline = "none";
    const enter = () => {
      const a = document.activeElement;
      if (a && root.contains(a) && typing(a)) return;
      root.focus({ preventScroll: true });
    };
    const leave = () => {
      if (document.activeElement === root) root.blur();
    };
    const over = (e) => {
      const v = e.target && e.target.closest ? e.target.closest(".iunet-view") : null;
      if (!v) return;
      for (const c of v.classList) {
        if (c.startsWith("iunet-view-")) hovered = c.slice("iunet-view-".length);
      }
    };
    const capture = (e) => {
      if (typing(e.target) || MODIFIERS.has(e.key)) return;
      e.stopPropagation();
      if (e.key === "Tab") return;
      e.preventDefault();
      model.send({ type: "key", key: e.key, shift: e.shiftKey, ctrl: e.ctrlKey,
                   meta: e.metaKey, view: hovered });
      model.set("count", model.get("count") + 1);
      model.save_changes();
    };
    const bubble = (e) => e.stopPropagation();
    root.addEventListener("pointerenter", enter);
    root.addEventListener("pointerleave", leave);
    root.addEventListener("pointerover", over);
    root.addEventListener("keydown", capture, true);
    root.addEventListener("keydown", bubble);
    root.addEventListener("keyup", bubble);
    root.addEventListener("keypress", bubble);
    cleanup = () => {
      root.removeEventListener("pointerenter", enter);
      root.removeEventListener("pointerleave", leave);
      root.removeEventListener("pointerover", over);
      root.removeEventListener("keydown", capture, true);
      root.removeEventListener("keydown", bubble);
      root.removeEventListener("keyup", bubble);
      root.removeEventListener("keypress", bubble);
    };
  };
  attach();
  return () => cleanup();
}
export default { render };
"""


def make_key_catcher(root_class: str, on_key: Callable[[dict[str, Any]], Any]) -> Any:
    """A :class:`KeyCatcher` widget for the element with CSS class ``root_class`` (an
    ancestor of where the widget is shown), or None when anywidget is not installed.

    Args:
        root_class: CSS class of the annotator's element (``add_class``).
        on_key: called with ``{"key", "shift", "ctrl", "meta", "view"}`` per key press.
    """
    try:
        import anywidget
        import traitlets as t
    except ImportError:
        logger.info("anywidget is not installed: keyboard shortcuts need a click on a view")
        return None

    class KeyCatcher(anywidget.AnyWidget):  # type: ignore[misc]
        _esm = KEY_CATCHER_ESM
        root_class = t.Unicode("").tag(sync=True)
        count = t.Int(0).tag(sync=True)  # keys the page sent (a test reads it)

    catcher = KeyCatcher(root_class=root_class)

    def handle(_widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "key" \
                and isinstance(content.get("key"), str):
            on_key(content)

    catcher.on_msg(handle)
    return catcher
