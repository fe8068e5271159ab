"""Pictures people would rather look at than read: slice overviews with contours, loss curves.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), not pyplot, so
they neither depend on nor change the global backend and are displayed inline by Jupyter.

Every picture of a CT, here and in the annotator (``iunet_nb.widgets.render``), is shown in
the patient's orientation through one function, :func:`display_flips`: axial with anterior
at the top and the patient's left on the screen's right (radiological convention), coronal
and sagittal with the head at the top. :func:`display_slice` cuts and flips one slice that
way. A CT stored RAS (most NIfTI converters) and the same CT stored LPS (DICOM) therefore
give the same picture.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .errors import InputError
from .io._atomic import atomic_path
from .io.volume import Geometry, Volume

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["display_flips", "display_slice", "plot_overview", "plot_loss"]

_VIEWS = ("axial", "coronal", "sagittal")

#: per view: (wanted physical LPS axis and sign) for rows, then for columns.
#: axial: anterior at the top (rows run towards +P), patient's left on the right (+L);
#: coronal: superior at the top (rows run towards -S), left on the right;
#: sagittal: superior at the top, anterior on the left (columns run towards +P).
_DISPLAY_AXES: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "axial": ((1, +1), (0, +1)),
    "coronal": ((2, -1), (0, +1)),
    "sagittal": ((2, -1), (1, +1)),
}
#: view -> (slicing axis, (row axis, col axis)) in (z, y, x).
_VIEW_AXES: dict[str, tuple[int, tuple[int, int]]] = {
    "axial": (0, (1, 2)), "coronal": (1, (0, 2)), "sagittal": (2, (0, 1))}


def _check_view(view: str) -> tuple[int, tuple[int, int]]:
    if view not in _VIEW_AXES:
        raise InputError(f"unknown view {view!r}; use 'axial', 'coronal' or 'sagittal'")
    return _VIEW_AXES[view]


def display_flips(geometry: Geometry | None, view: str) -> tuple[bool, bool]:
    """Whether a view's rows / columns are flipped for display (radiological orientation).

    A view's slice is ``(row, col)`` in array indices: axial ``(y, x)``, coronal ``(z, x)``,
    sagittal ``(z, y)``. The wanted screen directions (LPS): axial rows run towards
    posterior, columns towards the patient's left; coronal rows run towards inferior,
    columns to the left; sagittal rows run towards inferior, columns towards posterior. An
    array axis is flipped when its direction (a column of the direction matrix) points
    against the wanted one. Without a geometry the identity direction is assumed: coronal
    and sagittal rows (z) are flipped.

    Args:
        geometry: the array's geometry; None for a plain array (identity direction).
        view: ``"axial"``, ``"coronal"`` or ``"sagittal"``.

    Returns:
        ``(flip_rows, flip_cols)``.

    Raises:
        InputError: unknown view.

    Example:
        >>> from iunet_nb.io.volume import Geometry
        >>> ras = Geometry(direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))   # NIfTI stored RAS
        >>> display_flips(ras, "axial")
        (True, True)
    """
    _, row_col = _check_view(view)
    d = (np.eye(3) if geometry is None
         else np.asarray(geometry.direction, dtype=float).reshape(3, 3))
    flips = []
    for array_axis, (phys, sign) in zip(row_col, _DISPLAY_AXES[view]):
        sitk_axis = 2 - array_axis  # array (z, y, x) -> SimpleITK index (x, y, z)
        component = d[phys, sitk_axis]
        if abs(component) < 1e-6:  # oblique / permuted beyond recognition: follow the largest
            component = d[int(np.argmax(np.abs(d[:, sitk_axis]))), sitk_axis] * sign
            flips.append(component < 0)
        else:
            flips.append(component * sign < 0)
    return bool(flips[0]), bool(flips[1])


def display_slice(array: np.ndarray, geometry: Geometry | None, view: str,
                  index: int) -> np.ndarray:
    """One slice of a ``(z, y, x)`` array as it is shown on screen (:func:`display_flips`).

    Args:
        array: ``(z, y, x)``, any dtype.
        geometry: the array's geometry; None for the identity direction.
        view: ``"axial"`` (``index`` along z), ``"coronal"`` (along y) or ``"sagittal"``
            (along x).
        index: the slice's array index along the view's slicing axis.

    Returns:
        ``(rows, cols)`` view of ``array`` (no copy), flipped for display.

    Raises:
        InputError: unknown view, not a 3D array, or ``index`` outside the array.
    """
    axis, _ = _check_view(view)
    array = np.asarray(array)
    if array.ndim != 3:
        raise InputError(f"display_slice needs a 3D (z, y, x) array, got shape {array.shape}")
    if not 0 <= int(index) < array.shape[axis]:
        raise InputError(f"{view} slice {index} is outside the image (0..{array.shape[axis] - 1})")
    sl = np.take(array, int(index), axis=axis)
    flip_rows, flip_cols = display_flips(geometry, view)
    return sl[::-1 if flip_rows else 1, ::-1 if flip_cols else 1]


def _slices(volume: Volume | np.ndarray, geometry: Geometry | None,
            center: Sequence[int]) -> list[np.ndarray]:
    arr = volume.array if isinstance(volume, Volume) else volume
    return [display_slice(arr, geometry, view, int(center[i])) for i, view in enumerate(_VIEWS)]


def plot_overview(ct: Volume, mask: Volume | None = None, reference: Volume | None = None,
                  path: str | os.PathLike | None = None, *, window: tuple[float, float] = (-160, 240),
                  center: Sequence[int] | None = None, title: str = "") -> "Figure":
    """Three orthogonal slices through ``center`` with the mask (red) and reference (green) contours.

    The slices are shown in the patient's orientation (:func:`display_flips`, from the CT's
    direction matrix), as in the annotator: axial with anterior up and the patient's left on
    the right, coronal and sagittal with the head up. Pixel aspect follows the voxel spacing,
    so a coronal view of 2.5 mm slices is not squashed.

    Args:
        ct: CT in HU.
        mask: predicted mask (uint8) on the CT's grid.
        reference: reference mask on the CT's grid.
        path: PNG to write (atomically); None to only return the figure.
        window: display range in HU (default: the paper's -160..240).
        center: ``(z, y, x)`` voxel the slices go through; default the mask's (or reference's) centroid.
        title: figure title.
    """
    from matplotlib.figure import Figure

    masks = [m for m in (mask, reference) if m is not None]
    if center is None:
        nz = [np.argwhere(m.array > 0) for m in masks if m.array.any()]
        center = (np.round(nz[0].mean(axis=0)).astype(int) if nz
                  else np.array(ct.shape) // 2)
    sz, sy, sx = ct.spacing_mm
    aspects = [sy / sx, sz / sx, sz / sy]
    fig = Figure(figsize=(13, 4.8))
    axes = fig.subplots(1, 3)
    geometry = ct.geometry
    for i, (ax, img) in enumerate(zip(axes, _slices(ct, geometry, center))):
        ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspects[i],
                  interpolation="nearest")
        for m, colour, label in ((mask, "red", "segmentation"), (reference, "lime", "reference")):
            if m is not None:
                sl = _slices(m, geometry, center)[i]
                if sl.any():
                    ax.contour(sl, levels=[0.5], colors=colour, linewidths=1.0)
                ax.plot([], [], color=colour, label=label)
        ax.set_title(f"{_VIEWS[i]} (slice {int(center[i])})")
        ax.set_axis_off()
    if masks:
        axes[0].legend(loc="lower left", fontsize=8, framealpha=0.6)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    return fig


def plot_loss(losses: Sequence[float], path: str | os.PathLike | None = None,
              smooth: int = 20) -> "Figure":
    """Training loss per iteration with a running mean over ``smooth`` iterations."""
    from matplotlib.figure import Figure

    y = np.asarray(losses, dtype=float)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(np.arange(1, len(y) + 1), y, alpha=0.35, label="loss")
    if len(y) >= smooth > 1:
        run = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
        ax.plot(np.arange(smooth, len(y) + 1), run, label=f"mean of {smooth}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("soft Dice loss")
    ax.legend()
    fig.tight_layout()
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    return fig

