"""Pictures people would rather look at than read: slice overviews with contours, loss curves.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), not pyplot, so
they neither depend on nor change the global backend and are displayed inline by Jupyter.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ._atomic import atomic_path
from .volume import Volume

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["plot_overview", "plot_loss"]

_VIEWS = ("axial", "coronal", "sagittal")


def _slices(arr: np.ndarray, center: Sequence[int]) -> list[np.ndarray]:
    z, y, x = center
    # display orientation: axial (y down, x right); coronal and sagittal with z (superior) up
    return [arr[z], arr[:, y, :][::-1], arr[:, :, x][::-1]]


def plot_overview(ct: Volume, mask: Volume | None = None, reference: Volume | None = None,
                  path: str | os.PathLike | None = None, *, window: tuple[float, float] = (-160, 240),
                  center: Sequence[int] | None = None, title: str = "") -> "Figure":
    """Three orthogonal slices through ``center`` with the mask (red) and reference (green) contours.

    Pixel aspect follows the voxel spacing, so a coronal view of 2.5 mm slices is not squashed.

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
    for i, (ax, img) in enumerate(zip(axes, _slices(ct.array, center))):
        ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspects[i],
                  interpolation="nearest")
        for m, colour, label in ((mask, "red", "segmentation"), (reference, "lime", "reference")):
            if m is not None:
                sl = _slices(m.array, center)[i]
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

