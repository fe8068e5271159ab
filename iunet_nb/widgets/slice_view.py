"""One slice view of a CT: an ipycanvas Canvas, a slice slider, mouse and keyboard handling.

A :class:`SliceView` shows one view (axial, coronal or sagittal) of a CT with the current
mask and scribbles of a :class:`~iunet_nb.interactive.session.Session`. It owns only view state (slice,
zoom, pan, window/level, overlay style, crosshair: traitlets, so views can be linked) and
turns mouse gestures into plain data for its owner: a brush stroke as ``(N, 2)`` ``(row, col)``
array indices on one slice, a box as two index ranges. It never segments anything; the
:class:`~iunet_nb.widgets.annotator.Annotator` makes the Session calls.

Drawing: every redraw composes the slice in NumPy (:func:`~iunet_nb.widgets.render.compose_slice`
at the slice's own resolution), encodes it once as PNG and sends it in *one* batched canvas
message (``hold_canvas``) with a canvas transform that scales it to the right aspect ratio
(voxel spacing), zoom and pan; the browser scales it (nearest neighbour). The PNG goes into
an off-screen canvas of the slice's size (never displayed), from which the view's canvas
copies it; a redraw that changes only the transform or the decorations (pan, zoom, the
crosshair moved by another view, a rubber band) copies it again instead of sending and
decoding the PNG again. Scrolling one view so sends one PNG, not three (the other two views
only move their crosshair). While the user paints, each mouse move sends only a short line
segment (the stroke preview), so a stroke appears at once; the full redraw follows when the
stroke is committed.

The mouse handlers (:meth:`SliceView.handle_mouse_down` etc.) take canvas pixel
coordinates, exactly what ipycanvas passes, so tests drive the view without a browser.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as w
import numpy as np
import traitlets as t
from ipycanvas import Canvas, hold_canvas

from ..errors import InputError
from ..io.volume import Volume
from .render import (
    BG_COLOR,
    FG_COLOR,
    WINDOW_PRESETS,
    SliceTransform,
    compose_slice,
    display_flips,
    encode_png,
    orientation_letters,
)

__all__ = ["PAINT_TOOLS", "TOOLS", "SliceView"]

logger = logging.getLogger(__name__)

#: Tools of the slice views: navigation, window/level drag, box, scribbles, manual editing.
TOOLS: tuple[str, ...] = ("navigate", "window", "box", "fg", "bg", "eraser", "paint", "erase")
#: Tools that paint a stroke with the brush.
PAINT_TOOLS: tuple[str, ...] = ("fg", "bg", "eraser", "paint", "erase")
_VIEW_AXES: dict[str, tuple[int, tuple[int, int]]] = {
    "axial": (0, (1, 2)), "coronal": (1, (0, 2)), "sagittal": (2, (0, 1))}
_PREVIEW_COLORS = {"fg": FG_COLOR, "bg": BG_COLOR, "eraser": (255, 255, 255),
                   "paint": (255, 64, 32), "erase": (255, 255, 0)}
#: every canvas message of every view goes through this lock: ipycanvas batches commands in
#: one global manager, and a refinement finishing on the worker thread redraws too.
_DRAW_LOCK = threading.RLock()


def _rgb(color: tuple[int, int, int], alpha: float = 1.0) -> str:
    return f"rgba({color[0]}, {color[1]}, {color[2]}, {alpha})"


def _put_png(canvas: Canvas, png: bytes, rgba: np.ndarray) -> None:
    """One putImageData of already-encoded PNG bytes (ipycanvas re-encodes at ~50 ms)."""
    manager = getattr(canvas, "_canvas_manager", None)
    try:
        from ipycanvas.canvas import COMMANDS
        send = manager.send_draw_command  # type: ignore[union-attr]
        command = COMMANDS["putImageData"]
    except (AttributeError, ImportError, KeyError):  # another ipycanvas: the public path
        canvas.put_image_data(rgba, 0, 0)
        return
    send(canvas, command, [0, 0], [png])


class SliceView(w.VBox):
    """One view of a CT with mask and scribble overlays; linked to others by traitlets.

    Args:
        volume: the CT (HU) with its geometry; arrays ``(z, y, x)``.
        view: ``"axial"`` (slice k = ``a[k]``, ``(row, col) = (y, x)``), ``"coronal"``
            (``a[:, k]``, ``(z, x)``) or ``"sagittal"`` (``a[:, :, k]``, ``(z, y)``).
        session: where the mask and scribbles come from (``Session.slice_of``); None shows
            the CT only. Replace it with :meth:`set_session`.
        size_px: the canvas's longer side in pixels; the other side follows the slice's
            physical aspect ratio (voxel spacing). The slice slider is as wide as the canvas.

    The canvas carries the patient directions at its four edges (:attr:`letters`, from the
    direction matrix: axial R | L, A over P) and the view's name with the slice number in the
    top-left corner. :attr:`changes` (a ``(z, y, x)`` uint8 volume, 1 added / 2 removed, or
    None) overlays what the last refinement changed.

    Traits (not synced to the browser; link them with ``traitlets.link``): ``slice_index``,
    ``crosshair`` (z, y, x), ``zoom``, ``center`` (display column, row at the canvas
    centre), ``window_width`` / ``window_level`` (HU), ``opacity``, ``contour_only``,
    ``show_crosshair``, ``tool`` (one of :data:`TOOLS`), ``brush_radius_mm``, ``box_rect``.

    Callbacks (register with :meth:`on_stroke`, :meth:`on_box`, :meth:`on_key`,
    :meth:`on_message`):

    * stroke: ``fn(view=, slice_index=, points=(N, 2) float (row, col), tool=, radius_mm=)``;
    * box: ``fn(view=, slice_index=, rows=(lo, hi), cols=(lo, hi))`` (voxel ranges, hi
      exclusive);
    * key: ``fn(key, shift, ctrl, meta)`` for keys the view does not use itself;
    * message: ``fn(text)`` for user mistakes (e.g. painting outside the image).

    Mouse: in ``navigate`` a click moves the crosshair (all linked views follow) and a drag
    pans; in ``window`` a drag changes width (left-right) and level (up-down); in ``box`` a
    drag draws a rectangle; the paint tools draw a stroke with the brush. The wheel and the
    keys ArrowUp/ArrowDown/PageUp/PageDown scroll slices; ``+``/``-`` zoom, ``Home`` resets
    zoom and pan.
    """

    slice_index = t.Int(0)
    crosshair = t.Tuple(t.Int(), t.Int(), t.Int(), default_value=(0, 0, 0))
    zoom = t.Float(1.0)
    center = t.Tuple(t.Float(), t.Float(), default_value=(0.0, 0.0))
    window_width = t.Float(WINDOW_PRESETS["abdomen"][0])
    window_level = t.Float(WINDOW_PRESETS["abdomen"][1])
    opacity = t.Float(0.4)
    contour_only = t.Bool(False)
    show_crosshair = t.Bool(True)
    tool = t.Enum(TOOLS, default_value="navigate")
    brush_radius_mm = t.Float(3.0)
    box_rect = t.Tuple(allow_none=True, default_value=None)

    def __init__(self, volume: Volume, view: str, *, session: Any = None,
                 size_px: int = 384, **kwargs: Any) -> None:
        if not isinstance(volume, Volume):
            raise InputError(f"SliceView needs an iunet_nb Volume, got {type(volume).__name__}")
        if view not in _VIEW_AXES:
            raise InputError(f"unknown view {view!r}; use 'axial', 'coronal' or 'sagittal'")
        if volume.array.ndim != 3:
            raise InputError(f"SliceView needs a 3D volume (z, y, x), got shape {volume.shape}")
        self.volume = volume
        self.view = view
        self.axis, (self.row_axis, self.col_axis) = _VIEW_AXES[view]
        shape = volume.shape
        spacing = volume.spacing_mm
        self.n_rows, self.n_cols = shape[self.row_axis], shape[self.col_axis]
        self.spacing_rc = (float(spacing[self.row_axis]), float(spacing[self.col_axis]))
        self.flips = display_flips(volume.geometry, view)
        self.letters = orientation_letters(volume.geometry, view, self.flips)
        self.changes: np.ndarray | None = None
        height_mm = self.n_rows * self.spacing_rc[0]
        width_mm = self.n_cols * self.spacing_rc[1]
        scale = size_px / max(height_mm, width_mm)
        cw, ch = max(round(width_mm * scale), 16), max(round(height_mm * scale), 16)
        self.canvas = Canvas(width=cw, height=ch,
                             layout=w.Layout(width=f"{cw}px", height=f"{ch}px"))
        # no description: the track spans the canvas (the view's name is on the canvas)
        self.slider = w.IntSlider(value=shape[self.axis] // 2, min=0, max=shape[self.axis] - 1,
                                  description="", continuous_update=True,
                                  tooltip=f"{view} slice", style={"description_width": "0px"},
                                  layout=w.Layout(width=f"{cw}px", margin="0px"))
        # the composed slice lives here, in the browser; the view's canvas copies it
        self._image = Canvas(width=self.n_cols, height=self.n_rows)
        self.session = session
        self.png_sends = 0
        self.redraw_count = 0
        self.last_redraw_s = 0.0
        self.last_rgba: np.ndarray | None = None
        self._png_cache: tuple[Any, bytes, np.ndarray] | None = None
        self._drag: dict[str, Any] | None = None
        self._callbacks: dict[str, list[Callable[..., Any]]] = {
            "stroke": [], "box": [], "key": [], "message": []}
        self._hold = 0
        center = (shape[0] // 2, shape[1] // 2, shape[2] // 2)
        super().__init__([self.slider, self.canvas], **kwargs)
        self.add_class("iunet-view")
        self.add_class(f"iunet-view-{view}")
        with self.hold_redraw():
            self.center = (self.n_cols / 2.0, self.n_rows / 2.0)
            self.crosshair = center
            self.slice_index = center[self.axis]
        t.link((self.slider, "value"), (self, "slice_index"))
        self.canvas.on_mouse_down(self.handle_mouse_down)
        self.canvas.on_mouse_move(self.handle_mouse_move)
        self.canvas.on_mouse_up(self.handle_mouse_up)
        self.canvas.on_mouse_out(self.handle_mouse_out)
        self.canvas.on_mouse_wheel(self.handle_wheel)
        self.canvas.on_key_down(self.handle_key)
        # a new page has empty canvases: send the picture again (no re-encoding)
        self.canvas.on_client_ready(lambda: self.redraw(reencode=False, resend=True))
        self._image.on_client_ready(lambda: self.redraw(reencode=False, resend=True))
        self.observe(self._on_slice, names="slice_index")
        self.observe(self._on_crosshair, names="crosshair")
        self.observe(self._on_style, names=["zoom", "center", "window_width", "window_level",
                                            "opacity", "contour_only", "show_crosshair",
                                            "box_rect"])
        self.observe(self._on_tool, names="tool")
        self.redraw()

    # -- public API ------------------------------------------------------------------------
    def set_session(self, session: Any, volume: Volume | None = None) -> None:
        """Show another session (and CT, when the case changes); resets slice and view."""
        if volume is not None and volume is not self.volume:
            if volume.shape != self.volume.shape or volume.spacing_mm != self.volume.spacing_mm:
                raise InputError("a SliceView keeps its canvas size: make a new one for a CT "
                                 "of another shape or spacing")
            self.volume = volume
            self.flips = display_flips(volume.geometry, self.view)
            self.letters = orientation_letters(volume.geometry, self.view, self.flips)
        self.session = session
        self.changes = None
        self._png_cache = None
        self.redraw()

    @property
    def transform(self) -> SliceTransform:
        """The current canvas <-> index mapping."""
        return SliceTransform(self.n_rows, self.n_cols, self.spacing_rc[0], self.spacing_rc[1],
                              self.canvas.width, self.canvas.height, self.flips[0],
                              self.flips[1], max(self.zoom, 0.05), tuple(self.center))

    def on_stroke(self, callback: Callable[..., Any]) -> None:
        """Call ``callback(view=, slice_index=, points=, tool=, radius_mm=)`` per stroke."""
        self._callbacks["stroke"].append(callback)

    def on_box(self, callback: Callable[..., Any]) -> None:
        """Call ``callback(view=, slice_index=, rows=(lo, hi), cols=(lo, hi))`` per box."""
        self._callbacks["box"].append(callback)

    def on_key(self, callback: Callable[..., Any]) -> None:
        """Call ``callback(key, shift, ctrl, meta)`` for keys the view does not handle."""
        self._callbacks["key"].append(callback)

    def on_message(self, callback: Callable[[str], Any]) -> None:
        """Call ``callback(text)`` to tell the user about a mistake (shown by the owner)."""
        self._callbacks["message"].append(callback)

    def set_window(self, preset_or_width: str | float, level: float | None = None) -> None:
        """Window by preset name (:data:`~iunet_nb.widgets.render.WINDOW_PRESETS`) or width/level.

        Raises:
            InputError: unknown preset, or width <= 0.
        """
        if isinstance(preset_or_width, str):
            if preset_or_width not in WINDOW_PRESETS:
                raise InputError(f"unknown window preset {preset_or_width!r}; use one of "
                                 f"{sorted(WINDOW_PRESETS)}")
            width, level = WINDOW_PRESETS[preset_or_width]
        else:
            width = float(preset_or_width)
            if level is None:
                raise InputError("give the window level (HU) with the width")
        if not (math.isfinite(width) and width > 0 and math.isfinite(float(level))):
            raise InputError(f"window width must be > 0 HU and level finite, got {width}, {level}")
        with self.hold_redraw():
            self.window_width = float(width)
            self.window_level = float(level)

    def reset_view(self) -> None:
        """Zoom 1, slice centred."""
        with self.hold_redraw():
            self.zoom = 1.0
            self.center = (self.n_cols / 2.0, self.n_rows / 2.0)

    def close(self) -> None:
        """Close the view, with its off-screen picture canvas."""
        image = getattr(self, "_image", None)
        if image is not None:
            image.close()
        super().close()

    def hold_redraw(self) -> _Hold:
        """Context manager: change several traits, redraw once at the end."""
        return _Hold(self)

    # -- drawing ---------------------------------------------------------------------------
    def changes_slice(self) -> np.ndarray | None:
        """The current slice of :attr:`changes` (None when nothing is highlighted)."""
        if self.changes is None:
            return None
        index: list[Any] = [slice(None)] * 3
        index[self.axis] = int(self.slice_index)
        return self.changes[tuple(index)]

    def layers(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The current slice's ``(image, mask, scribbles)`` as ``(row, col)`` arrays."""
        k = int(self.slice_index)
        index: list[Any] = [slice(None)] * 3
        index[self.axis] = k
        image = self.volume.array[tuple(index)]  # a view (np.take copies, slowly when strided)
        if self.session is None:
            return image, None, None
        return (image, self.session.slice_of("mask", self.view, k),
                self.session.slice_of("scribbles", self.view, k))

    def redraw(self, *, reencode: bool = True, resend: bool = False) -> None:
        """Compose the slice, send it in one batched message with the crosshair and box.

        Args:
            reencode: False reuses the picture already in the browser when only the
                transform or the decorations changed (pan, zoom, crosshair of another view,
                rubber band): no PNG is encoded or sent.
            resend: send the last PNG again (a new page's canvases are empty).
        """
        if self._hold:
            self._hold_dirty = True
            return
        t0 = time.perf_counter()
        with _DRAW_LOCK:
            tr = self.transform
            cached = self._png_cache
            fresh = resend
            if reencode or cached is None or cached[0] != int(self.slice_index):
                fresh = True
                image, mask, scribbles = self.layers()
                rgba = compose_slice(image, self.window_width, self.window_level, mask=mask,
                                     scribbles=scribbles, changes=self.changes_slice(),
                                     opacity=float(self.opacity),
                                     contour_only=bool(self.contour_only),
                                     flip_rows=self.flips[0], flip_cols=self.flips[1])
                png = encode_png(rgba)
                self._png_cache = cached = (int(self.slice_index), png, rgba)
            _, png, rgba = cached
            self.last_rgba = rgba
            c = self.canvas
            with hold_canvas():
                if fresh:
                    _put_png(self._image, png, rgba)
                    self.png_sends += 1
                c.reset_transform()
                c.fill_style = "#000000"
                c.fill_rect(0, 0, c.width, c.height)
                c.image_smoothing_enabled = False
                c.set_transform(*tr.canvas_matrix())
                c.draw_image(self._image, 0, 0)
                c.reset_transform()
                self._draw_decorations(tr)
        self.redraw_count += 1
        self.last_redraw_s = time.perf_counter() - t0

    def _draw_decorations(self, tr: SliceTransform) -> None:
        c = self.canvas
        c.set_line_dash([])
        if self.show_crosshair:
            z_y_x = self.crosshair
            x, y = tr.index_to_canvas(z_y_x[self.row_axis], z_y_x[self.col_axis])
            c.stroke_style = "rgba(255, 230, 0, 0.55)"
            c.line_width = 1
            c.stroke_line(0, y, c.width, y)
            c.stroke_line(x, 0, x, c.height)
        if self.box_rect is not None:
            r0, c0, r1, c1 = self.box_rect
            self._stroke_index_rect(tr, r0, c0, r1, c1, "rgba(0, 255, 255, 0.9)", dashed=True)
        self._draw_labels()

    def _draw_labels(self) -> None:
        """Orientation letters at the edges' midpoints, the view and slice at the top left."""
        c = self.canvas
        w_, h_ = c.width, c.height
        c.font = "bold 14px sans-serif"
        c.fill_style = "rgba(255, 210, 0, 0.95)"
        c.text_baseline = "middle"
        lt = self.letters
        c.text_align = "left"
        c.fill_text(lt["left"], 4, h_ / 2)
        c.text_align = "right"
        c.fill_text(lt["right"], w_ - 4, h_ / 2)
        c.text_align = "center"
        c.text_baseline = "top"
        c.fill_text(lt["top"], w_ / 2, 3)
        c.text_baseline = "bottom"
        c.fill_text(lt["bottom"], w_ / 2, h_ - 2)
        c.font = "12px sans-serif"
        c.fill_style = "rgba(255, 255, 255, 0.85)"
        c.text_align = "left"
        c.text_baseline = "top"
        c.fill_text(f"{self.view} {int(self.slice_index) + 1}/{self.volume.shape[self.axis]}",
                    4, 3)

    def _stroke_index_rect(self, tr: SliceTransform, r0: float, c0: float, r1: float,
                           c1: float, style: str, dashed: bool = False) -> None:
        """A rectangle around voxel ranges rows r0..r1-1, cols c0..c1-1 (edges at +-0.5)."""
        xa, ya = tr.index_to_canvas(r0 - 0.5, c0 - 0.5)
        xb, yb = tr.index_to_canvas(r1 - 0.5, c1 - 0.5)
        c = self.canvas
        c.stroke_style = style
        c.line_width = 2
        if dashed:
            c.set_line_dash([6, 4])
        c.stroke_rect(min(xa, xb), min(ya, yb), abs(xb - xa), abs(yb - ya))
        c.set_line_dash([])

    # -- trait observers -------------------------------------------------------------------
    def _on_slice(self, change: dict[str, Any]) -> None:
        k = int(change["new"])
        if self.crosshair[self.axis] != k:
            ch = list(self.crosshair)
            ch[self.axis] = k
            self.crosshair = tuple(ch)  # -> _on_crosshair -> redraw
        else:
            self.redraw()

    def _on_crosshair(self, change: dict[str, Any]) -> None:
        k = int(change["new"][self.axis])
        if int(self.slice_index) != k:
            self.slice_index = k  # -> _on_slice -> redraw
        else:
            self.redraw(reencode=change["old"][self.axis] != k)

    def _on_style(self, change: dict[str, Any]) -> None:
        self.redraw(reencode=change["name"] in ("window_width", "window_level", "opacity",
                                                "contour_only"))

    def _on_tool(self, change: dict[str, Any]) -> None:
        self._drag = None

    @t.validate("slice_index")
    def _valid_slice(self, proposal: dict[str, Any]) -> int:
        return int(min(max(int(proposal["value"]), 0), self.volume.shape[self.axis] - 1))

    @t.validate("zoom")
    def _valid_zoom(self, proposal: dict[str, Any]) -> float:
        z = float(proposal["value"])
        return min(max(z, 0.25), 16.0) if math.isfinite(z) else 1.0

    @t.validate("crosshair")
    def _valid_crosshair(self, proposal: dict[str, Any]) -> tuple[int, int, int]:
        shape = self.volume.shape
        return tuple(int(min(max(int(v), 0), n - 1))  # type: ignore[return-value]
                     for v, n in zip(proposal["value"], shape))

    # -- events ----------------------------------------------------------------------------
    def _emit(self, kind: str, *args: Any, **kwargs: Any) -> None:
        for fn in list(self._callbacks[kind]):
            fn(*args, **kwargs)

    def _message(self, text: str) -> None:
        if self._callbacks["message"]:
            self._emit("message", text)
        else:
            logger.warning("%s view: %s", self.view, text)

    def handle_mouse_down(self, x: float, y: float) -> None:
        """Start a gesture at canvas pixel ``(x, y)`` (what ipycanvas sends)."""
        tr = self.transform
        row, col = tr.canvas_to_index(x, y)
        tool = self.tool
        if (tool in PAINT_TOOLS or tool == "box") and not tr.inside(row, col):
            self._drag = None
            self._message(f"that point is outside the image on the {self.view} view: "
                          "start the stroke or box on the CT")
            return
        self._drag = {"tool": tool, "start": (x, y), "last": (x, y), "moved": False,
                      "points": [(row, col)], "center": tuple(self.center),
                      "window": (self.window_width, self.window_level),
                      "slice": int(self.slice_index)}
        if tool in PAINT_TOOLS:
            self._preview_segment(tr, (x, y), (x, y))

    def handle_mouse_move(self, x: float, y: float) -> None:
        """Continue a gesture (cheap when no button is down)."""
        drag = self._drag
        if drag is None:
            return
        x0, y0 = drag["start"]
        if abs(x - x0) + abs(y - y0) > 2:
            drag["moved"] = True
        tool = drag["tool"]
        tr = self.transform
        if tool in PAINT_TOOLS:
            row, col = self._clip(*tr.canvas_to_index(x, y))
            if (row, col) != drag["points"][-1]:
                drag["points"].append((row, col))
                self._preview_segment(tr, drag["last"], (x, y))
        elif tool == "navigate":
            if drag["moved"]:
                u, v = drag["center"]
                sx, sy = tr.scale
                self.center = (u - (x - x0) / sx, v - (y - y0) / sy)
        elif tool == "window":
            width0, level0 = drag["window"]
            with self.hold_redraw():
                self.window_width = max(1.0, width0 + 2.0 * (x - x0))
                self.window_level = level0 - 2.0 * (y - y0)
        elif tool == "box":
            self.redraw(reencode=False)
            r0, c0 = drag["points"][0]
            r1, c1 = self._clip(*tr.canvas_to_index(x, y))
            with _DRAW_LOCK, hold_canvas():
                self._stroke_index_rect(tr, min(r0, r1) + 0.5, min(c0, c1) + 0.5,
                                        max(r0, r1) + 0.5, max(c0, c1) + 0.5,
                                        "rgba(0, 255, 255, 0.9)")
        drag["last"] = (x, y)

    def handle_mouse_up(self, x: float, y: float) -> None:
        """Finish a gesture: emit the stroke / box, or move the crosshair on a click."""
        drag, self._drag = self._drag, None
        if drag is None:
            return
        tool = drag["tool"]
        tr = self.transform
        if tool in PAINT_TOOLS:
            row, col = self._clip(*tr.canvas_to_index(x, y))
            if (row, col) != drag["points"][-1]:
                drag["points"].append((row, col))
            points = np.asarray(drag["points"], dtype=float)
            self._emit("stroke", view=self.view, slice_index=drag["slice"], points=points,
                       tool=tool, radius_mm=float(self.brush_radius_mm))
        elif tool == "box":
            r0, c0 = drag["points"][0]
            r1, c1 = self._clip(*tr.canvas_to_index(x, y))
            rows = _voxel_range(r0, r1, self.n_rows)
            cols = _voxel_range(c0, c1, self.n_cols)
            if rows[1] - rows[0] < 2 or cols[1] - cols[0] < 2:
                self._message("the box is too small: drag a rectangle around the structure")
                self.redraw(reencode=False)
                return
            self._emit("box", view=self.view, slice_index=drag["slice"], rows=rows, cols=cols)
        elif tool == "navigate" and not drag["moved"]:
            row, col = tr.canvas_to_index(x, y)
            if tr.inside(row, col):
                ch = list(self.crosshair)
                ch[self.row_axis] = round(row)
                ch[self.col_axis] = round(col)
                self.crosshair = tuple(ch)

    def handle_mouse_out(self, x: float, y: float) -> None:
        """Leaving the canvas ends a gesture where the pointer was last inside."""
        if self._drag is not None:
            lx, ly = self._drag["last"]
            self.handle_mouse_up(lx, ly)

    def handle_wheel(self, dx: float, dy: float) -> None:
        """Mouse wheel: one slice per notch (ipycanvas passes the wheel deltas)."""
        if dy:
            self.slice_index = int(self.slice_index) + (1 if dy < 0 else -1)

    def handle_key(self, key: str, shift: bool = False, ctrl: bool = False,
                   meta: bool = False) -> None:
        """Slice / zoom keys here; everything else goes to the key callbacks."""
        step = 5 if shift else 1
        if key in ("ArrowUp", "PageUp") and not ctrl:
            self.slice_index = int(self.slice_index) + step
        elif key in ("ArrowDown", "PageDown") and not ctrl:
            self.slice_index = int(self.slice_index) - step
        elif key in ("+", "=") and not ctrl:
            self.zoom = self.zoom * 1.25
        elif key == "-" and not ctrl:
            self.zoom = self.zoom / 1.25
        elif key == "Home" and not ctrl:
            self.reset_view()
        else:
            self._emit("key", key, shift, ctrl, meta)

    # -- helpers ---------------------------------------------------------------------------
    def _clip(self, row: float, col: float) -> tuple[float, float]:
        return (float(min(max(row, -0.5), self.n_rows - 0.5)),
                float(min(max(col, -0.5), self.n_cols - 0.5)))

    def _preview_segment(self, tr: SliceTransform, a: tuple[float, float],
                         b: tuple[float, float]) -> None:
        """Draw one segment of the stroke being painted (one small message)."""
        color = _PREVIEW_COLORS.get(self._drag["tool"] if self._drag else "fg", FG_COLOR)
        c = self.canvas
        with _DRAW_LOCK, hold_canvas():
            c.stroke_style = _rgb(color, 0.7)
            c.line_width = max(2.0 * self.brush_radius_mm * tr.px_per_mm, 1.0)
            c.line_cap = "round"
            c.stroke_line(a[0], a[1], b[0], b[1])


def _voxel_range(a: float, b: float, n: int) -> tuple[int, int]:
    """Voxels whose centres lie between two index positions: ``(lo, hi)``, hi exclusive."""
    lo = math.floor(min(a, b) + 0.5)
    hi = math.floor(max(a, b) + 0.5) + 1
    return max(lo, 0), min(hi, n)


class _Hold:
    """Batch trait changes of one view into a single redraw."""

    def __init__(self, view: SliceView) -> None:
        self.view = view

    def __enter__(self) -> SliceView:
        if self.view._hold == 0:
            self.view._hold_dirty = False
        self.view._hold += 1
        return self.view

    def __exit__(self, *exc: object) -> None:
        self.view._hold -= 1
        if self.view._hold == 0 and getattr(self.view, "_hold_dirty", False):
            self.view._hold_dirty = False
            self.view.redraw()
