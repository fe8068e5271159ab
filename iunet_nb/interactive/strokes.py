"""Brush strokes to voxels: the view conventions, stroke rasterisation and brush labels.

Array conventions (SPEC.md): every array is ``(z, y, x)``. A *view* names a family of 2D
slices, and a 2D point on a slice is ``(row, col)`` in array indices (floats allowed):

* ``"axial"``: slice ``k`` is ``array[k, :, :]``; ``(row, col) = (y, x)``;
* ``"coronal"``: slice ``k`` is ``array[:, k, :]``; ``(row, col) = (z, x)``;
* ``"sagittal"``: slice ``k`` is ``array[:, :, k]``; ``(row, col) = (z, y)``.

A widget flips or transposes for display; :func:`stroke_to_voxels` (and the
:class:`~iunet_nb.interactive.session.Session` that calls it) only ever sees array indices.

Scribble labels are uint8 ``1`` (foreground) and ``2`` (background); a mask label is ``1``
(paint) or ``0`` (erase). The private helpers here check the brush input of
:meth:`Session.add_scribble <iunet_nb.interactive.session.Session.add_scribble>` and
:meth:`Session.paint <iunet_nb.interactive.session.Session.paint>`: exact voxel points and labels.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from ..model.preprocess import _is_int, _is_real

__all__ = ["VIEWS", "stroke_to_voxels", "check_scribble_size", "MAX_STROKE_POINTS",
           "MAX_SCRIBBLE_VOXELS", "MAX_BRUSH_SWEEP_VOXELS"]

#: view name -> (axis fixed by the slice index, (row axis, column axis)) in (z, y, x).
VIEWS: dict[str, tuple[int, tuple[int, int]]] = {
    "axial": (0, (1, 2)),
    "coronal": (1, (0, 2)),
    "sagittal": (2, (0, 1)),
}
_FG, _BG = 1, 2

# Caps on one scribble, far above anything drawn by hand, so that a runaway or hostile call
# is refused at once instead of holding a Session's lock for minutes (a 10^6-point stroke
# took 81 s). A hand-drawn stroke is one point per pointer event, ~60 a second: 10,000 points
# is nearly 3 minutes of drawing without lifting the pen; the robot's strokes have a few
# hundred. Painting costs ~30 us a point here, so 10,000 points take ~0.3 s.
MAX_STROKE_POINTS = 10_000
# Exact voxels (``points=``): the robot places at most one slice's worth (512 x 512 = 262,144);
# 10^6 took 0.65 s, 3 * 10^6 3 s on a loaded 2-core host.
MAX_SCRIBBLE_VOXELS = 1_000_000
# Voxels a stroke's brush passes over, overlaps counted (the painting work): each segment's
# box, clipped to the slice. The largest brush (20 mm) on 0.5 mm pixels over a 2,000-point
# stroke sweeps ~1.4 * 10^7; 10^8 takes ~0.4 s.
MAX_BRUSH_SWEEP_VOXELS = 100_000_000


def _check_view(view: str, slice_index: Any, shape: Sequence[int]) -> tuple[int, int, int, int]:
    if view not in VIEWS:
        raise InputError(f"unknown view {view!r}; use one of {list(VIEWS)} (axial: slice k = "
                         "array[k], (row, col) = (y, x); coronal: array[:, k], (z, x); "
                         "sagittal: array[:, :, k], (z, y))")
    axis, (ra, ca) = VIEWS[view]
    if not _is_int(slice_index) or not 0 <= int(slice_index) < shape[axis]:
        raise InputError(f"slice_index {slice_index!r} is outside the {view} slices "
                         f"0..{shape[axis] - 1} of the image of shape {tuple(shape)} (z, y, x)")
    return axis, ra, ca, int(slice_index)


def stroke_to_voxels(shape: Sequence[int], spacing_mm: Sequence[float],
                     stroke: Sequence[Sequence[float]] | np.ndarray, view: str,
                     slice_index: int, *, radius_mm: float | None = None,
                     radius_vox: float | None = None) -> np.ndarray:
    """Voxels painted by a brush stroke on one slice of a view.

    The stroke is a polyline of 2D points ``(row, col)`` on slice ``slice_index`` of ``view``
    (see the module docstring for the view conventions). A voxel of that slice is painted
    when its centre lies within the brush radius of the polyline (the exact distance to the
    nearest segment, not a sampled approximation); a single point paints a disc. With
    ``radius_mm`` the distance is measured in mm with the slice's two spacings, so the disc
    is an ellipse in voxels on an anisotropic slice (e.g. 3 mm on a coronal slice of 2.5 mm
    slices and 0.7 mm columns reaches 1 voxel along z and 4 along x); with ``radius_vox`` it
    is measured in voxel units. Neither given: ``radius_vox=0.5``, a thin one-voxel line.

    Args:
        shape: image shape ``(z, y, x)``.
        spacing_mm: voxel size ``(z, y, x)`` in mm.
        stroke: ``(N, 2)`` points ``(row, col)`` in array indices, N >= 1; every point must lie
            on the slice (``-0.5 <= row <= n_rows - 0.5``, same for col).
        view: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        slice_index: index along the view's fixed axis.
        radius_mm: brush radius in mm (>= 0).
        radius_vox: brush radius in voxels (>= 0); give at most one of the two.

    Returns:
        int64 sorted unique flat indices into the ``(z, y, x)`` array (``np.ravel_multi_index``).

    Raises:
        InputError: unknown view, slice out of range, empty stroke, points not ``(N, 2)``
            finite numbers or off the slice, both or a negative radius.

    Example:
        >>> idx = stroke_to_voxels((3, 5, 5), (2.0, 1.0, 1.0), [(2, 2)], "axial", 1,
        ...                        radius_vox=1)
        >>> [tuple(int(v) for v in np.unravel_index(i, (3, 5, 5))) for i in idx]
        [(1, 1, 2), (1, 2, 1), (1, 2, 2), (1, 2, 3), (1, 3, 2)]
    """
    shape = tuple(int(s) for s in shape)
    axis, ra, ca, k = _check_view(view, slice_index, shape)
    pts = _as_points(stroke, 2, "stroke")
    n_r, n_c = shape[ra], shape[ca]
    off = ((pts[:, 0] < -0.5) | (pts[:, 0] > n_r - 0.5) | (pts[:, 1] < -0.5)
           | (pts[:, 1] > n_c - 0.5))
    if off.any():
        bad = pts[np.flatnonzero(off)[0]].tolist()
        raise InputError(f"stroke point (row, col) = {bad} lies outside the {view} slice of "
                         f"{n_r} x {n_c} voxels (rows 0..{n_r - 1}, cols 0..{n_c - 1}); clip "
                         "the stroke to the image")
    scale_r, scale_c, radius = _brush_scale(spacing_mm, ra, ca, radius_mm, radius_vox)
    plane = np.zeros((n_r, n_c), dtype=bool)
    segments = [(pts[0], pts[0])] if len(pts) == 1 else list(itertools.pairwise(pts))
    for a, b in segments:
        r0 = max(math.floor(min(a[0], b[0]) - radius / scale_r), 0)
        r1 = min(math.ceil(max(a[0], b[0]) + radius / scale_r) + 1, n_r)
        c0 = max(math.floor(min(a[1], b[1]) - radius / scale_c), 0)
        c1 = min(math.ceil(max(a[1], b[1]) + radius / scale_c) + 1, n_c)
        if r1 <= r0 or c1 <= c0:
            continue
        rr = (np.arange(r0, r1, dtype=float)[:, None] - a[0]) * scale_r
        cc = (np.arange(c0, c1, dtype=float)[None, :] - a[1]) * scale_c
        dr, dc = (b[0] - a[0]) * scale_r, (b[1] - a[1]) * scale_c
        length2 = dr * dr + dc * dc
        t = np.clip((rr * dr + cc * dc) / length2, 0.0, 1.0) if length2 > 0 else 0.0
        d2 = (rr - t * dr) ** 2 + (cc - t * dc) ** 2
        plane[r0:r1, c0:c1] |= d2 <= radius * radius + 1e-9
    rows, cols = np.nonzero(plane)
    index = [None, None, None]
    index[axis] = np.full(rows.shape, k, dtype=np.int64)
    index[ra], index[ca] = rows.astype(np.int64), cols.astype(np.int64)
    return np.sort(np.ravel_multi_index(tuple(index), shape)).astype(np.int64)


def check_scribble_size(shape: Sequence[int], spacing_mm: Sequence[float],
                        stroke: Any = None, points: Any = None, *, view: str = "axial",
                        slice_index: Any = 0, radius_mm: float | None = None,
                        radius_vox: float | None = None) -> None:
    """Refuse a stroke or a point set beyond the caps, before any painting work.

    Cheap: the point count is read with ``len`` before anything is converted; the sweep is
    bounded from the points' coordinates alone.

    Args:
        shape: image shape ``(z, y, x)``.
        spacing_mm: voxel size ``(z, y, x)`` in mm.
        stroke: ``(N, 2)`` points, as :func:`stroke_to_voxels` takes them; or
        points: ``(N, 3)`` exact voxels.
        view, slice_index, radius_mm, radius_vox: as :func:`stroke_to_voxels`.

    Raises:
        InputError: more than :data:`MAX_STROKE_POINTS` stroke points, more than
            :data:`MAX_SCRIBBLE_VOXELS` points, or a brush sweep beyond
            :data:`MAX_BRUSH_SWEEP_VOXELS`.
    """
    if points is not None:
        n = _count(points)
        if n is not None and n > MAX_SCRIBBLE_VOXELS:
            raise InputError(f"{n:,} points in one scribble is more than the "
                             f"{MAX_SCRIBBLE_VOXELS:,} allowed; split them into several scribbles")
        return
    if stroke is None:
        return
    n = _count(stroke)
    if n is not None and n > MAX_STROKE_POINTS:
        raise InputError(f"a stroke of {n:,} points is more than the {MAX_STROKE_POINTS:,} "
                         "allowed; draw it as several strokes, or thin its points")
    shape = tuple(int(v) for v in shape)
    _, ra, ca, _ = _check_view(view, slice_index, shape)
    pts = _as_points(stroke, 2, "stroke")
    scale_r, scale_c, radius = _brush_scale(spacing_mm, ra, ca, radius_mm, radius_vox)
    a, b = (pts[:1], pts[:1]) if len(pts) == 1 else (pts[:-1], pts[1:])
    rows = np.minimum(np.abs(b[:, 0] - a[:, 0]) + 2 * radius / scale_r + 2, shape[ra])
    cols = np.minimum(np.abs(b[:, 1] - a[:, 1]) + 2 * radius / scale_c + 2, shape[ca])
    sweep = float(np.sum(rows * cols))
    if sweep > MAX_BRUSH_SWEEP_VOXELS:
        raise InputError(f"this stroke's brush would pass over {sweep:.2g} voxels, more than the "
                         f"{MAX_BRUSH_SWEEP_VOXELS:.0e} allowed; use a smaller brush or fewer "
                         "points")


def _count(points: Any) -> int | None:
    try:
        return len(points)
    except TypeError:
        return None


def _as_points(points: Any, dim: int, what: str) -> np.ndarray:
    try:
        pts = np.asarray(points, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be a list of {dim}-number points, got {points!r}") from exc
    if pts.size == 0:
        raise InputError(f"the {what} is empty: give at least one point")
    if pts.ndim == 1 and pts.size == dim:
        pts = pts[None]
    if pts.ndim != 2 or pts.shape[1] != dim:
        raise InputError(f"{what} must be (N, {dim}) points, got an array of shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise InputError(f"{what} contains NaN or infinite coordinates")
    return pts


def _brush_scale(spacing_mm: Sequence[float], ra: int, ca: int, radius_mm: float | None,
                 radius_vox: float | None) -> tuple[float, float, float]:
    if radius_mm is not None and radius_vox is not None:
        raise InputError("give the brush radius either in mm (radius_mm) or in voxels "
                         "(radius_vox), not both")
    if radius_mm is None and radius_vox is None:
        radius_vox = 0.5
    value = radius_mm if radius_mm is not None else radius_vox
    if not _is_real(value) or not math.isfinite(float(value)) or value < 0:
        raise InputError(f"the brush radius must be a finite number >= 0, got {value!r}")
    if radius_mm is not None:
        return float(spacing_mm[ra]), float(spacing_mm[ca]), float(radius_mm)
    return 1.0, 1.0, float(radius_vox)  # type: ignore[arg-type]


def _points_to_voxels(shape: Sequence[int], points: Any) -> np.ndarray:
    pts = _as_points(points, 3, "points")
    if not np.array_equal(pts, np.round(pts)):
        raise InputError("points must be integer voxel indices (z, y, x)")
    idx = pts.astype(np.int64)
    bad = np.any((idx < 0) | (idx >= np.asarray(shape)), axis=1)
    if bad.any():
        raise InputError(f"point {idx[np.flatnonzero(bad)[0]].tolist()} (z, y, x) lies outside "
                         f"the image of shape {tuple(shape)}")
    return np.unique(np.ravel_multi_index(tuple(idx.T), tuple(shape))).astype(np.int64)



def _parse_label(label: Any, *, for_mask: bool) -> int:
    names = ({"fg": 1, "foreground": 1, "bg": 0, "background": 0, "erase": 0} if for_mask
             else {"fg": _FG, "foreground": _FG, "bg": _BG, "background": _BG})
    allowed = (0, 1) if for_mask else (_FG, _BG)
    if isinstance(label, str) and label.lower() in names:
        return names[label.lower()]
    if _is_int(label) and int(label) in allowed:
        return int(label)
    what = ("a mask label: 1 / 'fg' (paint) or 0 / 'bg' (erase)" if for_mask
            else "a scribble label: 1 / 'fg' (foreground) or 2 / 'bg' (background)")
    raise InputError(f"{label!r} is not {what}")

