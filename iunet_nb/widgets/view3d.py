"""A 3D view of the CT and the current mask next to the slice views (optional backends).

Backends, measured on this project's machine (``../shared/ENVIRONMENT.md`` section 3):

* ``"niivue"`` (default when installed: ``pip install iunet-nb[view]``): ipyniivue, an
  anywidget whose JavaScript is bundled; renders offline in JupyterLab 4 and Voila (WebGL2,
  also in headless Chromium with software rendering). Multiplanar + 3D render of the CT with
  the mask as a red overlay.
* ``"itk"``: itkwidgets, for users who have it working. 0.32 has no JupyterLab 4 extension
  ("Module itkwidgets ... is not registered") and 1.0 loads its viewer from the internet, so
  the view says so next to the widget.
* ``"none"``: nothing (a one-line note).

Whatever happens, the app keeps working: when a backend cannot load, :class:`View3D` shows a
clear message instead of the viewer (``View3D.available`` is then False).

The 3D view is never on the critical path of an edit. It shows the CT and the mask on a
coarser grid (:func:`downsample_factors`: about ``max_side`` voxels along the longest physical
side, :data:`MAX_SIDE` = 64 by default: a 195 x 512 x 512 CT of 1.0 x 0.9 x 0.9 mm becomes
27 x 64 x 64 blocks of 7 x 8 x 8 voxels, 460 times fewer; the mask is reduced with a block
maximum, so a thin structure does not vanish), and
:meth:`View3D.update_mask` only marks the mask as changed: the new overlay is sent after
``delay_s`` without a further change (debounced, on a timer thread), or at once with
:meth:`View3D.flush` (the "update 3D" button), or never while ``auto_update`` is off.
Measured on PANCREAS_0002 (195 x 512 x 512, 2-core machine shared with a training job): a
mask change in the annotator took 239 ms in the kernel with the full-size 3D overlay written
and sent on the spot (and then held Chromium's software WebGL for minutes), 14 ms with the 3D
view off; see ``benchmarks/RESULTS.md`` for the figure after this change.

The viewer uses the radiological convention (the patient's left on the screen's right), as
the slice views do, and its grey window follows the slice views' window (:meth:`set_window`).

Where the page draws WebGL without a GPU (SwiftShader, llvmpipe: headless Chromium, a
virtual desktop), every new overlay holds the page for a noticeable time (:data:`MAX_SIDE`),
so by default the view then updates only on request ("update 3D", key ``u``): a hidden
probe widget shown with the view reports the page's WebGL renderer (:func:`software_webgl`).
"""

from __future__ import annotations

import html
import logging
import math
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as w
import numpy as np

from ..errors import InputError
from ..io.volume import Volume

__all__ = ["BACKENDS", "MAX_SIDE", "SOFTWARE_RENDERERS", "View3D", "downsample_factors",
           "downsample_volume", "niivue_available", "software_webgl"]

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("auto", "niivue", "itk", "none")
#: Default voxels along the 3D view's longest side (so about 64^3 = 262,144 at most). Each
#: new mask overlay holds the page for a time that grows with the grid's voxels when the
#: browser renders WebGL in software (headless Chromium, a machine or remote desktop without
#: a GPU), about 2 microseconds a voxel on a loaded 2-core AMD EPYC (2026-12-07, the page's
#: longest frame gap after an update): PANCREAS_0002 1.2-1.3 s at 128 (786,432 voxels),
#: 0.8 s at 96, 0.4-0.5 s at 64 (load average 2.3); in the real-browser benchmark (load
#: average 3-4) 0.76-0.94 s at 96 and 3D-IRCADb 1.7 (520,200 voxels at 96) 1.0-1.17 s, over
#: issue 23's 1 s goal. 64 leaves room under that goal, with coarse voxels of 6-8 mm.
MAX_SIDE = 64
#: Words in a WebGL renderer's name (``UNMASKED_RENDERER_WEBGL``) that mean it draws without a
#: GPU.
SOFTWARE_RENDERERS: tuple[str, ...] = ("swiftshader", "llvmpipe", "softpipe", "software",
                                       "basic render driver")

#: The renderer probe's JavaScript (an anywidget ES module): one throw-away WebGL context,
#: its renderer's name sent to Python, the context released.
_GL_PROBE_ESM = r"""
function render({ model, el }) {
  el.style.display = "none";
  let name = "";
  try {
    const canvas = document.createElement("canvas");
    const gl = canvas.getContext("webgl2") || canvas.getContext("webgl");
    if (!gl) {
      name = "no webgl";
    } else {
      const info = gl.getExtension("WEBGL_debug_renderer_info");
      name = String(gl.getParameter(info ? info.UNMASKED_RENDERER_WEBGL : gl.RENDERER));
      const lose = gl.getExtension("WEBGL_lose_context");
      if (lose) lose.loseContext();
    }
  } catch (e) {
    name = "error: " + e;
  }
  model.set("renderer", name);
  model.save_changes();
}
export default { render };
"""


def software_webgl(renderer: str) -> bool:
    """Whether a WebGL renderer's name says it draws without a GPU (:data:`SOFTWARE_RENDERERS`).

    Example:
        >>> software_webgl("ANGLE (Google, Vulkan 1.3.0 (SwiftShader Device (Subzero)))")
        True
    """
    name = str(renderer).lower()
    return any(word in name for word in SOFTWARE_RENDERERS)


def _make_gl_probe() -> Any:
    """A hidden anywidget that reports the page's WebGL renderer in its ``renderer`` trait, or
    None without anywidget."""
    try:
        import anywidget
        import traitlets as t
    except ImportError:
        return None

    class WebGLProbe(anywidget.AnyWidget):  # type: ignore[misc]
        _esm = _GL_PROBE_ESM
        renderer = t.Unicode("").tag(sync=True)

    return WebGLProbe()


def downsample_factors(shape: tuple[int, ...], spacing_mm: tuple[float, ...],
                       max_side: int = MAX_SIDE) -> tuple[int, int, int]:
    """Integer block sizes ``(fz, fy, fx)`` that bring a grid to about ``max_side`` voxels
    along its longest physical side, with near-isotropic coarse voxels.

    The coarse voxel size is ``longest side in mm / max_side``; each axis gets
    ``max(1, round(that / spacing))``, capped by the axis length.

    Example:
        >>> downsample_factors((195, 512, 512), (1.0, 0.9, 0.9))
        (7, 8, 8)

    Raises:
        InputError: ``max_side`` < 8, or a shape / spacing that is not 3D and positive.
    """
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 8:
        raise InputError(f"max_side (voxels along the 3D view's longest side) must be an "
                         f"integer >= 8, got {max_side!r}")
    if len(shape) != 3 or len(spacing_mm) != 3 or min(shape) < 1 or min(spacing_mm) <= 0:
        raise InputError(f"downsample_factors needs a 3D shape and positive spacing, got "
                         f"{shape}, {spacing_mm}")
    target = max(n * s for n, s in zip(shape, spacing_mm)) / max_side
    return tuple(int(min(n, max(1, round(target / s))))  # type: ignore[return-value]
                 for n, s in zip(shape, spacing_mm))


def downsample_volume(volume: Volume, factors: tuple[int, int, int], *,
                      reduce: str = "sample") -> Volume:
    """A coarser copy of ``volume`` on blocks of ``factors`` voxels, with its geometry.

    Coarse voxel ``i`` covers fine voxels ``i * f .. i * f + f - 1`` along each axis (a
    trailing remainder of fewer than ``f`` voxels is dropped); its centre, and so the new
    origin, is the block's centre. ``reduce="sample"`` takes the block's middle voxel (for a
    CT: no float temporaries), ``"max"`` the block's maximum (for a mask: a structure thinner
    than a block survives).

    Raises:
        InputError: a factor < 1, or an unknown ``reduce``.
    """
    f = tuple(int(v) for v in factors)
    if len(f) != 3 or min(f) < 1:
        raise InputError(f"factors must be three integers >= 1, got {factors!r}")
    if reduce not in ("sample", "max"):
        raise InputError(f"reduce must be 'sample' or 'max', got {reduce!r}")
    a = volume.array
    n = tuple(max(1, s // k) for s, k in zip(a.shape, f))
    f = tuple(min(k, s) for k, s in zip(f, a.shape))
    if f == (1, 1, 1):
        out = a
    elif reduce == "sample":
        out = a[f[0] // 2::f[0], f[1] // 2::f[1], f[2] // 2::f[2]][:n[0], :n[1], :n[2]]
    else:
        # one axis at a time, the first on contiguous rows: 20 ms for 195 x 512 x 512 where
        # a single 6-D reduction takes 260 ms
        c = a[:n[0] * f[0], :n[1] * f[1], :n[2] * f[2]]
        c = c.reshape(n[0], f[0], -1).max(axis=1).reshape(n[0], n[1] * f[1], n[2] * f[2])
        c = c.reshape(n[0], n[1], f[1], n[2] * f[2]).max(axis=2)
        out = c.reshape(n[0], n[1], n[2], f[2]).max(axis=3)
    g = volume.geometry
    d = np.asarray(g.direction, dtype=float).reshape(3, 3)
    shift_xyz = np.array([(f[2] - 1) / 2 * g.spacing_mm[2], (f[1] - 1) / 2 * g.spacing_mm[1],
                          (f[0] - 1) / 2 * g.spacing_mm[0]])
    origin = tuple(float(v) for v in np.asarray(g.origin_mm) + d @ shift_xyz)
    geometry = type(g)(spacing_mm=tuple(s * k for s, k in zip(g.spacing_mm, f)),
                       origin_mm=origin, direction=g.direction)
    return Volume(np.ascontiguousarray(out), geometry)


def niivue_available() -> bool:
    """Whether ipyniivue can be imported."""
    try:
        import ipyniivue  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means 'not available'
        return False
    return True


class View3D(w.VBox):
    """3D view of a CT and a mask (see the module docstring for the backends).

    Args:
        volume: the CT (HU).
        backend: ``"auto"`` (niivue when installed, else a message), ``"niivue"``, ``"itk"``
            or ``"none"``.
        height_px: viewer height.
        window: ``(lo, hi)`` HU shown in grey (default the iUnet window -160..240).
        max_side: voxels along the longest physical side of the grid the 3D view shows
            (:func:`downsample_factors`).
        delay_s: a changed mask is sent this long after the last change (debounce); 0 sends
            it on the spot (tests, scripts).
        auto_update: True: send mask changes on their own; False: only :meth:`flush` (the
            "update 3D" button, key ``u``) sends them; None (default): on their own unless
            the page draws WebGL without a GPU (then as False, and the note says so).

    Attributes:
        backend: the backend in use (``"none"`` when none could load).
        available: whether a viewer is shown.
        note: the message shown instead of (or next to) the viewer.
        factors: the block sizes ``(fz, fy, fx)`` of the 3D view's grid.
        mask_updates: how many mask overlays were sent to the viewer.
        pending: whether a mask change waits to be sent.
        renderer: the page's WebGL renderer as its probe reported it (``""`` until then).

    Raises:
        InputError: unknown backend name, a bad ``max_side`` or ``delay_s``.
    """

    def __init__(self, volume: Volume, backend: str = "auto", *, height_px: int = 360,
                 window: tuple[float, float] = (-160.0, 240.0), max_side: int = MAX_SIDE,
                 delay_s: float = 1.5, auto_update: bool | None = None) -> None:
        if backend not in BACKENDS:
            raise InputError(f"unknown 3D backend {backend!r}; use one of {list(BACKENDS)}")
        if isinstance(delay_s, bool) or not isinstance(delay_s, (int, float)) \
                or not math.isfinite(delay_s) or delay_s < 0:
            raise InputError(f"delay_s (seconds before a mask change reaches the 3D view) "
                             f"must be a number >= 0, got {delay_s!r}")
        super().__init__(layout=w.Layout(width=f"{height_px + 40}px"))
        self.requested = backend
        self.height_px = int(height_px)
        self.window = (float(window[0]), float(window[1]))
        self.max_side = max_side
        self.factors = downsample_factors(volume.shape, volume.spacing_mm, max_side)
        self.delay_s = float(delay_s)
        self.note = ""
        self.available = False
        self.backend = "none"
        self.mask_updates = 0
        self.last_send_s = 0.0
        self._lock = threading.RLock()
        self._pending: Volume | Callable[[], Volume] | None = None
        self._window_pending = False
        self._timer: threading.Timer | None = None
        self._auto_default = auto_update is None
        self.renderer = ""
        self._gl_probe: Any = None
        self.auto_update_box = w.Checkbox(value=auto_update is not False, indent=False,
                                          description="3D follows edits")
        self.update_button = w.Button(description="update 3D", layout=w.Layout(width="auto"),
                                      tooltip="send the current mask to the 3D view now")
        self.update_button.on_click(lambda _b: self.flush())
        self.auto_update_box.observe(self._on_auto, "value")
        self._tmp = Path(tempfile.mkdtemp(prefix="iunet-view3d-"))
        weakref.finalize(self, shutil.rmtree, str(self._tmp), True)
        self._viewer: Any = None
        self._ct_layer: Any = None
        self._note = w.HTML()
        self.volume = volume
        if backend == "none":
            self._set_note("3D view off (view3d='none').")
        elif backend in ("auto", "niivue"):
            if niivue_available():
                self._start_niivue()
            else:
                self._set_note("3D view: ipyniivue is not installed. Install it with "
                               "<code>pip install 'iunet-nb[view]'</code> (works offline in "
                               "JupyterLab 4) and reopen the annotator.")
        else:
            self._start_itk()
        controls = ([w.HBox([self.auto_update_box, self.update_button])]
                    if self.available else [])
        if self.backend == "niivue" and self._auto_default:
            self._gl_probe = _make_gl_probe()
            if self._gl_probe is not None:
                self._gl_probe.observe(self._on_renderer, "renderer")
        self.children = ([self._note] + controls
                         + ([self._viewer] if self._viewer is not None else [])
                         + ([self._gl_probe] if self._gl_probe is not None else []))

    @property
    def auto_update(self) -> bool:
        """Whether mask changes reach the 3D view on their own (after ``delay_s``)."""
        return bool(self.auto_update_box.value)

    @auto_update.setter
    def auto_update(self, value: bool) -> None:
        self.auto_update_box.value = bool(value)

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def _on_renderer(self, change: dict[str, Any]) -> None:
        """The page said how it draws WebGL: without a GPU, update only on request."""
        self.renderer = str(change["new"])
        if not (software_webgl(self.renderer) and self._auto_default and self.auto_update):
            return
        self.auto_update = False
        lower = self.renderer.lower()
        word = next(w for w in SOFTWARE_RENDERERS if w in lower)
        start = lower.find(word)
        name = self.renderer[start:start + len(word)]      # as the browser spells it
        self._set_note(self.note + " This browser draws the 3D view without a graphics card "
                       f"({html.escape(name)}), which holds the page for a moment after each "
                       "update, so it follows your edits only when you press <b>update 3D</b> "
                       "(or the key u).")

    def _on_auto(self, change: dict[str, Any]) -> None:
        if change["new"] and self._pending is not None:
            self._schedule()

    # -- backends -------------------------------------------------------------------------
    def _set_note(self, text: str) -> None:
        self.note = text
        self._note.value = f"<small>{text}</small>"

    def _start_niivue(self) -> None:
        try:
            from ipyniivue import NiiVue, SliceType

            # the slice views' convention: the patient's left on the screen's right
            nv = NiiVue(height=self.height_px, is_radiological_convention=True)
            nv.set_slice_type(SliceType.MULTIPLANAR)
            self._viewer = nv
            self.backend = "niivue"
            self.available = True
            self._load_ct(self.volume)
            fz, fy, fx = self.factors
            coarse = "" if self.factors == (1, 1, 1) else (
                f" on a coarser grid (blocks of {fz} x {fy} x {fx} voxels)")
            self._set_note(f"3D view (ipyniivue): CT and mask (red){coarse}, patient's left on "
                           "the right. Drag to rotate the render.")
        except Exception as exc:  # noqa: BLE001 - shown in the app, never lost
            logger.warning("ipyniivue could not start: %s", exc)
            self._viewer, self.available, self.backend = None, False, "none"
            self._set_note(f"3D view: ipyniivue could not start ({html.escape(str(exc))}); the "
                           "slice views work without it.")

    def _start_itk(self) -> None:
        try:
            import itkwidgets  # type: ignore[import-not-found]

            self._itk = itkwidgets
            self._viewer = itkwidgets.view(image=self.volume.array.astype(np.float32),
                                           label_image=np.zeros(self.volume.shape, np.uint8))
            self.backend = "itk"
            self.available = True
            self._set_note("3D view (itkwidgets). If it stays empty: itkwidgets 0.32 has no "
                           "JupyterLab 4 extension and 1.0 needs the internet; use "
                           "view3d='niivue' (pip install 'iunet-nb[view]').")
        except Exception as exc:  # noqa: BLE001 - shown in the app, never lost
            self._viewer, self.available, self.backend = None, False, "none"
            self._set_note(f"3D view: itkwidgets cannot load here ({html.escape(type(exc).__name__)}"
                           f": {html.escape(str(exc))}). It has no offline JupyterLab 4 "
                           "viewer; use view3d='niivue' (pip install 'iunet-nb[view]').")

    # -- data -----------------------------------------------------------------------------
    def _nifti(self, volume: Volume, name: str) -> Path:
        from ..io.images import write_image, write_mask

        path = self._tmp / name
        if volume.array.dtype == np.uint8:
            write_mask(volume, path)
        else:
            write_image(volume, path)
        return path

    def _load_ct(self, volume: Volume) -> None:
        from ipyniivue import Volume as NvVolume

        path = self._nifti(downsample_volume(volume, self.factors), f"ct-{id(volume)}.nii.gz")
        self._ct_layer = NvVolume(path=str(path), colormap="gray", cal_min=self.window[0],
                                  cal_max=self.window[1])
        self._viewer.volumes = [self._ct_layer]

    def set_volume(self, volume: Volume) -> None:
        """Show another CT (a new case); the mask is cleared."""
        with self._lock:
            self._cancel_timer()
            self._pending = None
        self.volume = volume
        self.factors = downsample_factors(volume.shape, volume.spacing_mm, self.max_side)
        if self.backend == "niivue":
            self._load_ct(volume)
        elif self.backend == "itk":
            self._viewer.image = volume.array.astype(np.float32)

    def set_window(self, lo: float, hi: float) -> None:
        """Grey window of the CT in HU (the slice views' window: ``level -+ width / 2``);
        sent like a mask change (debounced), so a window drag does not re-render per move."""
        self.window = (float(lo), float(hi))
        if not self.available:
            return
        with self._lock:
            self._window_pending = True
        if self.delay_s == 0:
            self.flush()
        else:
            self._schedule()

    def update_mask(self, mask: Volume | Callable[[], Volume], *, now: bool = False) -> None:
        """Note a new mask (uint8 {0, 1} on the CT's grid); it is sent ``delay_s`` after the
        last change (at once with ``now=True`` or ``delay_s == 0``), not while
        :attr:`auto_update` is off (then :meth:`flush` sends it).

        Args:
            mask: the mask, or a function that returns it when it is sent (the annotator
                passes one, so not even the copy of a 51-million-voxel mask happens in the
                edit's handler).
            now: send it at once.

        Raises:
            InputError: the mask is not on the CT's grid.
        """
        if isinstance(mask, Volume) and mask.shape != self.volume.shape:
            raise InputError(f"the mask's shape {mask.shape} differs from the CT's "
                             f"{self.volume.shape}")
        if not self.available:
            return
        with self._lock:
            self._pending = mask
        if now or (self.auto_update and self.delay_s == 0):
            self.flush()
        elif self.auto_update:
            self._schedule()

    def _schedule(self) -> None:
        with self._lock:
            self._cancel_timer()
            timer = threading.Timer(self.delay_s, self._flush_from_timer)
            timer.daemon = True
            self._timer = timer
            timer.start()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _flush_from_timer(self) -> None:
        try:
            self.flush(mask=self.auto_update)
        except Exception:  # noqa: BLE001 - the 3D view is a nicety: log, never crash a thread
            logger.exception("the 3D view could not be updated")

    def flush(self, mask: bool = True) -> bool:
        """Send the pending window and (``mask=True``) mask change to the viewer now.
        Returns whether a mask was sent."""
        with self._lock:
            self._cancel_timer()
            if self._window_pending and self.backend == "niivue" and self._ct_layer is not None:
                self._window_pending = False
                self._ct_layer.cal_min, self._ct_layer.cal_max = self.window
            if not mask or self._pending is None:
                return False
            pending, self._pending = self._pending, None
            t0 = time.perf_counter()
            self._send_mask(pending)
            self.last_send_s = time.perf_counter() - t0
            self.mask_updates += 1
        return True

    def _send_mask(self, mask: Volume | Callable[[], Volume]) -> None:
        if callable(mask):
            mask = mask()
            if mask.shape != self.volume.shape:  # the case changed meanwhile: nothing to show
                return
        if self.backend == "niivue":
            from ipyniivue import Volume as NvVolume

            array = mask.array
            if not np.any(array):
                self._viewer.volumes = [self._ct_layer]
                return
            small = downsample_volume(Volume(np.asarray(array, dtype=np.uint8), mask.geometry),
                                      self.factors, reduce="max")
            name = f"mask-{self.mask_updates + 1}.nii.gz"
            path = self._nifti(small, name)
            layer = NvVolume(data=path.read_bytes(), name=name, colormap="red", opacity=0.5,
                             cal_min=0.0, cal_max=1.0)
            path.unlink()
            self._viewer.volumes = [self._ct_layer, layer]
        elif self.backend == "itk":
            self._viewer.label_image = np.ascontiguousarray(mask.array, dtype=np.uint8)

    def close(self) -> None:
        """Cancel a pending update and close the widget."""
        lock = getattr(self, "_lock", None)
        if lock is not None:
            with lock:
                self._cancel_timer()
                self._pending = None
        probe = getattr(self, "_gl_probe", None)
        if probe is not None:
            probe.close()
        super().close()
