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
"""

from __future__ import annotations

import html
import logging
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import ipywidgets as w
import numpy as np

from ..errors import InputError
from ..volume import Volume

__all__ = ["BACKENDS", "View3D", "niivue_available"]

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("auto", "niivue", "itk", "none")


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

    Attributes:
        backend: the backend in use (``"none"`` when none could load).
        available: whether a viewer is shown.
        note: the message shown instead of (or next to) the viewer.

    Raises:
        InputError: unknown backend name.
    """

    def __init__(self, volume: Volume, backend: str = "auto", *, height_px: int = 360,
                 window: tuple[float, float] = (-160.0, 240.0)) -> None:
        if backend not in BACKENDS:
            raise InputError(f"unknown 3D backend {backend!r}; use one of {list(BACKENDS)}")
        super().__init__(layout=w.Layout(width=f"{height_px + 40}px"))
        self.requested = backend
        self.height_px = int(height_px)
        self.window = (float(window[0]), float(window[1]))
        self.note = ""
        self.available = False
        self.backend = "none"
        self.mask_updates = 0
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
        self.children = [self._note] + ([self._viewer] if self._viewer is not None else [])

    # -- backends -------------------------------------------------------------------------
    def _set_note(self, text: str) -> None:
        self.note = text
        self._note.value = f"<small>{text}</small>"

    def _start_niivue(self) -> None:
        try:
            from ipyniivue import NiiVue, SliceType

            nv = NiiVue(height=self.height_px)
            nv.set_slice_type(SliceType.MULTIPLANAR)
            self._viewer = nv
            self.backend = "niivue"
            self.available = True
            self._load_ct(self.volume)
            self._set_note("3D view (ipyniivue): CT and mask (red). Drag to rotate the render.")
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
        from ..io import write_image, write_mask

        path = self._tmp / name
        if volume.array.dtype == np.uint8:
            write_mask(volume, path)
        else:
            write_image(volume, path)
        return path

    def _load_ct(self, volume: Volume) -> None:
        from ipyniivue import Volume as NvVolume

        path = self._nifti(volume, f"ct-{id(volume)}.nii.gz")
        self._ct_layer = NvVolume(path=str(path), colormap="gray", cal_min=self.window[0],
                                  cal_max=self.window[1])
        self._viewer.volumes = [self._ct_layer]

    def set_volume(self, volume: Volume) -> None:
        """Show another CT (a new case); the mask is cleared."""
        self.volume = volume
        if self.backend == "niivue":
            self._load_ct(volume)
        elif self.backend == "itk":
            self._viewer.image = volume.array.astype(np.float32)

    def update_mask(self, mask: Volume) -> None:
        """Show a new mask (uint8 {0, 1} on the CT's grid)."""
        if mask.shape != self.volume.shape:
            raise InputError(f"the mask's shape {mask.shape} differs from the CT's "
                             f"{self.volume.shape}")
        self.mask_updates += 1
        if self.backend == "niivue":
            from ipyniivue import Volume as NvVolume

            if not np.any(mask.array):
                self._viewer.volumes = [self._ct_layer]
                return
            name = f"mask-{self.mask_updates}.nii.gz"
            path = self._nifti(Volume(mask.array.astype(np.uint8), mask.geometry), name)
            layer = NvVolume(data=path.read_bytes(), name=name, colormap="red", opacity=0.5,
                             cal_min=0.0, cal_max=1.0)
            path.unlink()
            self._viewer.volumes = [self._ct_layer, layer]
        elif self.backend == "itk":
            self._viewer.label_image = np.ascontiguousarray(mask.array, dtype=np.uint8)
