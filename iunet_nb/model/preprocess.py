"""iUnet preprocessing (Boers et al. 2020) with an exact, recorded inverse.

The forward pipeline, in this order:

1. **smooth** the image with a Gaussian of ``sigma_vox`` voxels (isotropic in voxel units) on
   the original grid, or, with ``antialias`` > 0, of ``max(sigma_vox, antialias * f)`` voxels
   along each axis where ``f`` is that axis's downsampling factor (crop voxels per working
   voxel): an anti-aliasing prefilter, so that the working image looks the same whether the CT
   has 0.7 mm or 2 mm pixels and 1 mm or 5 mm slices; with ``max_smooth_mm`` > 0 the
   ``sigma_vox`` part is at most that many mm along any axis. Only the crop padded by the filter
   radius is smoothed, which gives the same values inside the crop as smoothing the whole
   volume (the filter never reads further);
2. **window**: clip HU to ``hu_window`` and rescale linearly to ``[-1, 1]``;
3. **crop** to the box plus a margin on each side of ``ceil(margin_frac * n)`` voxels for an
   image dimension of ``n`` voxels, clipped to the image;
4. **reorient** the crop to the patient axes (LPS): working axis 0 runs inferior -> superior,
   axis 1 anterior -> posterior (+y of LPS), axis 2 right -> left (+x of LPS), whatever order
   the file stores its axes in. Only a transpose and flips (exact, no interpolation), read from
   the image's direction matrix (:func:`lps_orientation`); a plain array (no geometry) and an
   identity direction are left as they are. The crop box stays in *array* indices;
5. **resample** the crop to ``size_zyx`` voxels, trilinear.

Orientation: the network must see the same anatomy in the same place whatever the storage
order (a DICOM series with identity direction, a NIfTI stored right-to-left or
posterior-to-anterior, a volume stored x-first). :class:`CropRecord` records the transpose
(``axes_zyx``) and the flips (``flip_zyx``), and every inverse (:func:`restore_probabilities`,
:func:`restore_mask`, :func:`crop_mask`, :meth:`CropRecord.working_to_original_index`,
:meth:`CropRecord.working_geometry`) undoes them, so masks come back on the array as stored.
An oblique direction (not a signed permutation) is mapped to the nearest signed permutation,
i.e. the nearest patient axes, with a warning in the log: the network then sees the anatomy
rotated by the angle between the image's axes and LPS (reported), as it would in any
array-based tool; resample the CT to an axis-aligned grid first if that angle matters.

Grid convention (used both ways): ``torch.nn.functional.interpolate(mode="trilinear",
align_corners=False)`` with an explicit output size. A crop of ``n`` voxels resampled to ``m``
voxels maps working index ``o`` to crop index ``(o + 0.5) * n / m - 0.5``; the crop's first and
last voxel *edges* coincide with the working grid's. The inverse maps crop index ``c`` to
working index ``(c + 0.5) * m / n - 0.5``, which is exactly the inverse function, so every voxel
centre maps to the same physical point both ways (:meth:`CropRecord.working_geometry`).
Sample points that fall less than half a voxel outside the grid take the edge value (torch
clamps the source index), so linear functions are reproduced exactly except in that rim.

Example:
    >>> cfg = PreprocessConfig()
    >>> box = Box.from_mask(mask)                                    # doctest: +SKIP
    >>> x, record = preprocess_image(ct, box, cfg)                   # doctest: +SKIP
    >>> mask_back = restore_mask(prob_working, record)               # doctest: +SKIP
    >>> lps_orientation(ct.geometry)     # a volume stored right-to-left (x flipped)  # doctest: +SKIP
    ((0, 1, 2), (False, False, True))
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .._config import JsonConfig
from ..errors import ConfigError, GeometryError, InputError
from ..io.volume import Geometry, Volume

__all__ = [
    "PreprocessConfig",
    "Box",
    "CropRecord",
    "preprocess_image",
    "crop_mask",
    "restore_probabilities",
    "restore_crop_probabilities",
    "restore_mask",
    "lps_orientation",
    "reorient_to_lps",
    "reorient_from_lps",
]

logger = logging.getLogger(__name__)

#: scipy's default Gaussian truncation (in sigmas); the crop is padded by the filter radius.
_TRUNCATE = 4.0
_EPS_INDEX = 1e-6  # float noise tolerated when rounding physical boxes to voxel indices
#: a direction matrix within this (max abs entry) of a signed permutation counts as axis-aligned
_AXIS_ALIGNED_TOL = 1e-3
_IDENTITY_AXES: tuple[int, int, int] = (0, 1, 2)
_NO_FLIPS: tuple[bool, bool, bool] = (False, False, False)


# ----------------------------------------------------------------------------------------------
# Orientation
# ----------------------------------------------------------------------------------------------
def lps_orientation(geometry: Geometry | None,
                    ) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """How to bring an array in ``geometry`` to patient (LPS) order by a transpose and flips.

    The LPS working order is ``(z, y, x)`` of LPS: axis 0 inferior -> superior, axis 1
    anterior -> posterior, axis 2 right -> left. Array axis ``axes[w]`` becomes working axis
    ``w``, reversed when ``flips[w]``: ``working = np.flip(np.transpose(a, axes), [w for w
    in range(3) if flips[w]])`` (see :func:`reorient_to_lps`).

    An oblique direction is mapped to the nearest signed permutation (the assignment of
    index axes to physical axes with the largest total ``|cosine|``); this is logged as a
    warning with the angle between the image's axes and the patient axes.

    Args:
        geometry: the array's geometry; None (a plain array) means "already in working order".

    Returns:
        ``(axes, flips)``; ``((0, 1, 2), (False, False, False))`` for None or an identity
        direction.
    """
    if geometry is None:
        return _IDENTITY_AXES, _NO_FLIPS
    d = geometry.matrix  # columns: physical directions of the index axes x, y, z
    # array axis a is SimpleITK index axis 2 - a; physical axis p (x, y, z) is working axis 2 - p
    best, best_score = None, -1.0
    for perm in itertools.permutations(range(3)):  # perm[j]: physical axis of index axis j
        score = sum(abs(d[perm[j], j]) for j in range(3))
        if score > best_score + 1e-12:
            best, best_score = perm, score
    assert best is not None
    axes = [0, 0, 0]
    flips = [False, False, False]
    snapped = np.zeros((3, 3))
    for j, p in enumerate(best):
        sign = 1.0 if d[p, j] >= 0 else -1.0
        snapped[p, j] = sign
        axes[2 - p] = 2 - j
        flips[2 - p] = sign < 0
    if np.max(np.abs(d - snapped)) > _AXIS_ALIGNED_TOL:
        rot = snapped.T @ d
        angle = math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(rot) - 1.0) / 2.0))))
        logger.warning(
            "oblique direction %s: the working grid follows the nearest patient axes (array "
            "axes %s, flips %s), so the network sees the anatomy rotated by %.1f degrees from "
            "LPS; resample the CT to an axis-aligned grid if that matters",
            np.round(d, 4).tolist(), axes, flips, angle)
    return (axes[0], axes[1], axes[2]), (flips[0], flips[1], flips[2])


def _is_identity(axes: Sequence[int], flips: Sequence[bool]) -> bool:
    return tuple(axes) == _IDENTITY_AXES and not any(flips)


def _to_working_order(array: np.ndarray, axes: Sequence[int], flips: Sequence[bool],
                      ) -> np.ndarray:
    """Transpose/flip the last 3 axes of ``array`` (array order -> working order); a view."""
    if _is_identity(axes, flips):
        return array
    lead = array.ndim - 3
    out = np.transpose(array, tuple(range(lead)) + tuple(lead + a for a in axes))
    flip_axes = tuple(lead + w for w in range(3) if flips[w])
    return np.flip(out, flip_axes) if flip_axes else out


def _from_working_order(array: np.ndarray, axes: Sequence[int], flips: Sequence[bool],
                        ) -> np.ndarray:
    """Inverse of :func:`_to_working_order` (working order -> array order); a view."""
    if _is_identity(axes, flips):
        return array
    lead = array.ndim - 3
    flip_axes = tuple(lead + w for w in range(3) if flips[w])
    out = np.flip(array, flip_axes) if flip_axes else array
    inverse = [0, 0, 0]
    for w, a in enumerate(axes):
        inverse[a] = w
    return np.transpose(out, tuple(range(lead)) + tuple(lead + w for w in inverse))


def _reoriented_geometry(geometry: Geometry, shape: Sequence[int], axes: Sequence[int],
                         flips: Sequence[bool]) -> Geometry:
    """Geometry of ``_to_working_order(array of shape, axes, flips)``: same physical points."""
    spacing = tuple(geometry.spacing_mm[a] for a in axes)
    first = [0.0, 0.0, 0.0]  # array index of the new voxel (0, 0, 0)
    for w, a in enumerate(axes):
        first[a] = float(int(shape[a]) - 1) if flips[w] else 0.0
    origin = geometry.index_to_physical(first)
    d = geometry.matrix
    cols = []
    for j in range(3):  # new SimpleITK index axis j = working axis 2 - j
        w = 2 - j
        col = d[:, 2 - axes[w]] * (-1.0 if flips[w] else 1.0)
        cols.append(col)
    direction = np.stack(cols, axis=1)
    return Geometry(spacing, tuple(origin.tolist()),  # type: ignore[arg-type]
                    tuple(direction.ravel().tolist()))


def reorient_to_lps(volume: Volume) -> Volume:
    """The same image stored in patient (LPS) axis order: exact transpose and flips.

    Physical positions are unchanged: the voxel that held a value sits at the same point in
    mm before and after. An axis-aligned direction becomes the identity; an oblique one keeps
    the residual rotation (:func:`lps_orientation`).

    Args:
        volume: any 3D :class:`Volume`.

    Returns:
        ``volume`` itself when it is already in LPS order, else a new contiguous Volume (same
        dtype and meta).
    """
    axes, flips = lps_orientation(volume.geometry)
    if _is_identity(axes, flips):
        return volume
    array = np.ascontiguousarray(_to_working_order(volume.array, axes, flips))
    geometry = _reoriented_geometry(volume.geometry, volume.shape, axes, flips)
    return Volume(array, geometry, dict(volume.meta))


def reorient_from_lps(array: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Inverse of :func:`reorient_to_lps` for an array: LPS order back to ``geometry``'s order.

    Args:
        array: ``(..., Z, Y, X)`` in the LPS order of an image with ``geometry`` (e.g. a mask
            predicted on ``reorient_to_lps(ct)``).
        geometry: the original image's geometry.

    Returns:
        a contiguous array in the original array order.
    """
    axes, flips = lps_orientation(geometry)
    return np.ascontiguousarray(_from_working_order(np.asarray(array), axes, flips))


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PreprocessConfig(JsonConfig):
    """Settings of the iUnet preprocessing.

    Args:
        version: format version of this config.
        sigma_vox: Gaussian smoothing sigma in voxels of the original grid (0 = no smoothing).
        hu_window: ``(low, high)`` HU; values are clipped to it, then mapped linearly to
            ``[-1, 1]`` (``low`` -> -1, ``high`` -> +1).
        margin_frac: margin added on *each* side of the box along each axis, as a fraction of
            that image dimension: ``ceil(margin_frac * n)`` voxels for ``n`` voxels along the
            axis (a 512 x 512 x 119 image at 0.05 gets 26, 26 and 6 voxels); the result is
            clipped to the image.
        size_zyx: working grid ``(D, H, W)``; the paper's 64 x 64 x 24 (x, y, z) is
            ``(24, 64, 64)``. Any positive size works, e.g. ``(48, 128, 128)``.
        antialias: 0 (the paper's, and models before 2026-12): ``sigma_vox`` alone. Above 0,
            the smoothing along an axis is ``max(sigma_vox, antialias * f)`` voxels where
            ``f`` = crop voxels / working voxels along it (an anti-aliasing prefilter before the
            trilinear downsampling, which reads single points). Without it a 512 x 512 CT
            cropped to 247 voxels and resampled to 64 reaches the network with its pixel
            noise and fine texture aliased, while a 2 mm CT barely changes: measured on NIH
            PANCREAS_0002 with a network trained on 2 mm synthetic CT, DSC 0.46 without,
            0.56 with 0.5 (``docs/report.md``).
        max_smooth_mm: 0 (models before 2026-12-07): ``sigma_vox`` voxels along every axis.
            Above 0, the ``sigma_vox`` smoothing along an axis is at most this many mm (the
            ``antialias`` prefilter is not capped; an array without geometry is not capped).
            ``sigma_vox`` is counted in voxels, so on thick slices it blurs along z far more
            than the network saw in training, on top of the slice profile's own blur: 0.75
            voxel of a 5 mm slice is 3.75 mm. 1.5 mm is 0.75 voxel of the 2 mm grid of the
            synthetic training CT. Measured on NIH PANCREAS_0002 (``docs/report.md``).

    Raises:
        ConfigError: a value is out of range or of the wrong type.
    """

    version: int = 1
    sigma_vox: float = 0.75
    hu_window: tuple[float, float] = (-160.0, 240.0)
    margin_frac: float = 0.05
    size_zyx: tuple[int, int, int] = (24, 64, 64)
    antialias: float = 0.0
    max_smooth_mm: float = 0.0

    def __post_init__(self) -> None:
        if self.version != 1:
            raise ConfigError(f"PreprocessConfig version {self.version} is not supported "
                              "(this iunet_nb reads version 1)")
        if not _is_real(self.sigma_vox) or not math.isfinite(self.sigma_vox) or self.sigma_vox < 0:
            raise ConfigError(f"sigma_vox must be a finite number >= 0 (voxels), "
                              f"got {self.sigma_vox!r}")
        window = tuple(self.hu_window)
        if (len(window) != 2 or not all(_is_real(v) and math.isfinite(v) for v in window)
                or not window[0] < window[1]):
            raise ConfigError(f"hu_window must be two finite numbers (low, high) with "
                              f"low < high, got {self.hu_window!r}")
        if (not _is_real(self.margin_frac) or not math.isfinite(self.margin_frac)
                or not 0 <= self.margin_frac <= 1):
            raise ConfigError(f"margin_frac must be in [0, 1] (fraction of each image "
                              f"dimension), got {self.margin_frac!r}")
        size = tuple(self.size_zyx)
        if len(size) != 3 or not all(_is_int(s) and s >= 1 for s in size):
            raise ConfigError(f"size_zyx must be three positive integers (D, H, W), "
                              f"got {self.size_zyx!r}")
        if not _is_real(self.antialias) or not 0 <= self.antialias <= 4:
            raise ConfigError(f"antialias must be a number in [0, 4] (0: off), "
                              f"got {self.antialias!r}")
        if (not _is_real(self.max_smooth_mm) or not math.isfinite(self.max_smooth_mm)
                or self.max_smooth_mm < 0):
            raise ConfigError(f"max_smooth_mm must be a finite number >= 0 (mm; 0: no cap), "
                              f"got {self.max_smooth_mm!r}")
        object.__setattr__(self, "max_smooth_mm", float(self.max_smooth_mm))
        object.__setattr__(self, "antialias", float(self.antialias))
        object.__setattr__(self, "sigma_vox", float(self.sigma_vox))
        object.__setattr__(self, "hu_window", (float(window[0]), float(window[1])))
        object.__setattr__(self, "margin_frac", float(self.margin_frac))
        object.__setattr__(self, "size_zyx", tuple(int(s) for s in size))

    def sigma_zyx(self, crop_shape: Sequence[int], axes_zyx: Sequence[int] = (0, 1, 2),
                  spacing_mm: Sequence[float] | None = None) -> tuple[float, float, float]:
        """Smoothing sigma in voxels along each array axis of a crop of ``crop_shape``.

        ``axes_zyx``: the array axis that becomes each working axis (:class:`CropRecord`).
        ``spacing_mm``: the voxel size of each array axis (for ``max_smooth_mm``).
        """
        sigma = [self.sigma_vox] * 3
        if self.max_smooth_mm > 0 and spacing_mm is not None:
            sigma = [min(self.sigma_vox, self.max_smooth_mm / float(d)) for d in spacing_mm]
        if self.antialias > 0:
            for w, a in enumerate(axes_zyx):
                factor = int(crop_shape[a]) / self.size_zyx[w]
                sigma[a] = max(sigma[a], self.antialias * factor)
        return (sigma[0], sigma[1], sigma[2])

    def margin_zyx(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """Margin in voxels on each side, ``ceil(margin_frac * n)`` per axis of ``shape``."""
        m = [int(math.ceil(self.margin_frac * int(n) - 1e-9)) for n in shape]
        return (m[0], m[1], m[2])


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


# ----------------------------------------------------------------------------------------------
# Box
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Box:
    """An axis-aligned voxel box ``[lo, hi)`` in ``(z, y, x)`` indices (``hi`` exclusive).

    Construction only checks that there are three integers per corner; use :meth:`validate`
    to check the box against an image (inside, non-empty, not inverted).

    Args:
        lo_zyx: first voxel inside the box, ``(z, y, x)``.
        hi_zyx: one past the last voxel inside the box, ``(z, y, x)``.

    Raises:
        InputError: not three integers per corner.
    """

    lo_zyx: tuple[int, int, int]
    hi_zyx: tuple[int, int, int]

    def __post_init__(self) -> None:
        for name in ("lo_zyx", "hi_zyx"):
            value = getattr(self, name)
            try:
                items = tuple(value)
            except TypeError:
                items = ()
            if len(items) != 3 or not all(_is_int(v) or (_is_real(v) and float(v).is_integer())
                                          for v in items):
                raise InputError(f"Box.{name} must be three integer voxel indices (z, y, x), "
                                 f"got {value!r}")
            object.__setattr__(self, name, tuple(int(v) for v in items))

    # -- constructors --------------------------------------------------------------------------
    @classmethod
    def from_mask(cls, mask: np.ndarray) -> "Box":
        """Tight bounding box of the non-zero voxels of a 3D mask ``(z, y, x)``.

        Raises:
            InputError: the mask is not 3D or has no non-zero voxel ("empty mask").
        """
        mask = np.asarray(mask)
        if mask.ndim != 3:
            raise InputError(f"Box.from_mask expects a 3D mask (z, y, x), got shape {mask.shape}")
        lo, hi = [], []
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            nz = np.flatnonzero(np.any(mask, axis=other))
            if nz.size == 0:
                raise InputError(f"empty mask (shape {mask.shape}): it has no non-zero voxel, so "
                                 "it has no bounding box; draw a box or give a non-empty mask")
            lo.append(int(nz[0]))
            hi.append(int(nz[-1]) + 1)
        return cls(tuple(lo), tuple(hi))  # type: ignore[arg-type]

    @classmethod
    def from_physical(cls, lo_xyz_mm: Sequence[float], hi_xyz_mm: Sequence[float],
                      geometry: Geometry, shape: Sequence[int]) -> "Box":
        """Voxel box covering a physical box, for any direction matrix.

        The physical box is axis-aligned in physical space with opposite corners ``lo_xyz_mm``
        and ``hi_xyz_mm`` (``(x, y, z)`` mm; their order per axis does not matter). Its 8
        corners are mapped to continuous voxel indices and the min/max taken per index axis;
        the result is rounded outward (``floor`` of the min, ``ceil`` of the max, plus one
        because ``hi`` is exclusive), so every voxel whose centre is inside the physical box
        is in the voxel box, then clipped to ``shape``. A physical box whose corners are voxel
        centres gives exactly those voxels.

        Args:
            lo_xyz_mm: one corner ``(x, y, z)`` in mm.
            hi_xyz_mm: the opposite corner ``(x, y, z)`` in mm.
            geometry: the image's geometry.
            shape: the image's array shape ``(z, y, x)``.

        Raises:
            InputError: non-finite corners, or the box lies entirely outside the image.
        """
        a = np.asarray(lo_xyz_mm, dtype=float)
        b = np.asarray(hi_xyz_mm, dtype=float)
        if a.shape != (3,) or b.shape != (3,) or not np.all(np.isfinite(np.r_[a, b])):
            raise InputError(f"physical box corners must be 3 finite numbers (x, y, z) mm each, "
                             f"got {lo_xyz_mm!r} and {hi_xyz_mm!r}")
        pmin, pmax = np.minimum(a, b), np.maximum(a, b)
        corners = np.array([[(pmin, pmax)[i][0], (pmin, pmax)[j][1], (pmin, pmax)[k][2]]
                            for i in (0, 1) for j in (0, 1) for k in (0, 1)])
        idx = geometry.physical_to_index(corners)
        lo = np.floor(idx.min(axis=0) + _EPS_INDEX).astype(int)
        hi = np.ceil(idx.max(axis=0) - _EPS_INDEX).astype(int) + 1
        box = cls(tuple(lo.tolist()), tuple(hi.tolist())).clip(shape)
        if any(h <= l for l, h in zip(box.lo_zyx, box.hi_zyx)):
            raise InputError(
                f"the physical box {pmin.tolist()} .. {pmax.tolist()} mm (x, y, z) lies outside "
                f"the image of shape {tuple(int(s) for s in shape)} (z, y, x); it maps to voxels "
                f"{lo.tolist()} .. {hi.tolist()}. Check that the box was drawn on this image")
        return box

    # -- geometry --------------------------------------------------------------------------------
    @property
    def size(self) -> tuple[int, int, int]:
        """``hi - lo`` per axis ``(z, y, x)`` in voxels (<= 0 for an empty/inverted box)."""
        return tuple(h - l for l, h in zip(self.lo_zyx, self.hi_zyx))  # type: ignore[return-value]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """``(z, y, x)`` slices selecting the box from an array."""
        (z0, y0, x0), (z1, y1, x1) = self.lo_zyx, self.hi_zyx
        return slice(z0, z1), slice(y0, y1), slice(x0, x1)

    def expand(self, margin_zyx: Sequence[int]) -> "Box":
        """The box grown by ``margin_zyx`` voxels on each side (not clipped)."""
        m = [int(v) for v in margin_zyx]
        return Box(tuple(l - d for l, d in zip(self.lo_zyx, m)),  # type: ignore[arg-type]
                   tuple(h + d for h, d in zip(self.hi_zyx, m)))  # type: ignore[arg-type]

    def clip(self, shape: Sequence[int]) -> "Box":
        """The intersection with an image of ``shape`` (may be empty: check with validate)."""
        shape = _shape3(shape)
        lo = tuple(min(max(l, 0), n) for l, n in zip(self.lo_zyx, shape))
        hi = tuple(max(min(h, n), 0) for h, n in zip(self.hi_zyx, shape))
        return Box(lo, hi)  # type: ignore[arg-type]

    def validate(self, shape: Sequence[int]) -> "Box":
        """Check the box is non-empty and inside an image of ``shape``; return it.

        Raises:
            InputError: the box is inverted or empty (``hi <= lo`` on an axis) or reaches
                outside the image; the message gives the image shape and the box.
        """
        shape = _shape3(shape)
        desc = f"box lo={list(self.lo_zyx)} hi={list(self.hi_zyx)} (z, y, x, hi exclusive)"
        if any(h <= l for l, h in zip(self.lo_zyx, self.hi_zyx)):
            raise InputError(f"the {desc} is empty or inverted (hi <= lo on an axis) for the "
                             f"image of shape {list(shape)}; give a box with lo < hi")
        if any(l < 0 for l in self.lo_zyx) or any(h > n for h, n in zip(self.hi_zyx, shape)):
            raise InputError(f"the {desc} reaches outside the image of shape {list(shape)} "
                             "(z, y, x); use Box.clip(shape) to keep the part inside")
        return self

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, list[int]]:
        return {"lo_zyx": list(self.lo_zyx), "hi_zyx": list(self.hi_zyx)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Box":
        if not isinstance(data, dict) or set(data) != {"lo_zyx", "hi_zyx"}:
            raise InputError(f"a Box is written as {{'lo_zyx': [z, y, x], 'hi_zyx': [z, y, x]}}, "
                             f"got {data!r}")
        return cls(tuple(data["lo_zyx"]), tuple(data["hi_zyx"]))


def _shape3(shape: Sequence[int]) -> tuple[int, int, int]:
    s = tuple(int(n) for n in shape)
    if len(s) != 3:
        raise InputError(f"expected a 3D image shape (z, y, x), got {tuple(shape)}")
    return s  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# CropRecord
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CropRecord(JsonConfig):
    """Everything needed to map working-grid arrays back to the original grid.

    Args:
        original_shape_zyx: shape of the original image (array order).
        box: the box given to :func:`preprocess_image` (before the margin), for provenance;
            array indices.
        crop: the crop actually taken: ``box`` plus the margin, clipped to the image; array
            indices.
        size_zyx: the working grid ``(D, H, W)``, in working (LPS) order.
        version: format version of the record.
        axes_zyx: working axis ``w`` comes from array axis ``axes_zyx[w]`` (identity default:
            the working grid follows the array, as in records saved before orientation was
            recorded).
        flip_zyx: working axis ``w`` runs against array axis ``axes_zyx[w]`` when True.

    Raises:
        InputError: a shape or crop that does not fit, or ``axes_zyx`` / ``flip_zyx`` that are
            not a permutation of (0, 1, 2) / three booleans.
    """

    original_shape_zyx: tuple[int, int, int]
    box: Box
    crop: Box
    size_zyx: tuple[int, int, int]
    version: int = 1
    axes_zyx: tuple[int, int, int] = _IDENTITY_AXES
    flip_zyx: tuple[bool, bool, bool] = _NO_FLIPS

    def __post_init__(self) -> None:
        object.__setattr__(self, "original_shape_zyx", _shape3(self.original_shape_zyx))
        object.__setattr__(self, "size_zyx", _shape3(self.size_zyx))
        if min(self.size_zyx) < 1:
            raise InputError(f"CropRecord.size_zyx must be positive, got {self.size_zyx}")
        axes = tuple(self.axes_zyx)
        if sorted(axes) != [0, 1, 2] or not all(_is_int(a) for a in axes):
            raise InputError(f"CropRecord.axes_zyx must be a permutation of (0, 1, 2) (the array "
                             f"axis behind each working axis), got {self.axes_zyx!r}")
        flips = tuple(self.flip_zyx)
        if len(flips) != 3 or not all(isinstance(f, (bool, np.bool_)) for f in flips):
            raise InputError(f"CropRecord.flip_zyx must be three booleans, got {self.flip_zyx!r}")
        object.__setattr__(self, "axes_zyx", tuple(int(a) for a in axes))
        object.__setattr__(self, "flip_zyx", tuple(bool(f) for f in flips))
        self.crop.validate(self.original_shape_zyx)

    @property
    def crop_size_working(self) -> tuple[int, int, int]:
        """The crop's size in working (LPS) axis order, voxels of the original grid."""
        c = self.crop.size
        return c[self.axes_zyx[0]], c[self.axes_zyx[1]], c[self.axes_zyx[2]]

    @property
    def scale_zyx(self) -> tuple[float, float, float]:
        """Original voxels per working voxel along each *working* axis (crop / working size)."""
        c, s = self.crop_size_working, self.size_zyx
        return c[0] / s[0], c[1] / s[1], c[2] / s[2]

    def working_to_original_index(self, index_zyx: Sequence[float] | np.ndarray) -> np.ndarray:
        """Continuous working-grid index/indices ``(..., 3)`` to original-grid (array) indices."""
        idx = np.asarray(index_zyx, dtype=float)
        n = np.array(self.crop_size_working, dtype=float)
        c = (idx + 0.5) * np.array(self.scale_zyx) - 0.5        # index in the reoriented crop
        c = np.where(np.array(self.flip_zyx), n - 1.0 - c, c)
        out = np.empty_like(c)
        out[..., list(self.axes_zyx)] = c                       # array axis axes[w] <- w
        return out + np.array(self.crop.lo_zyx)

    def original_to_working_index(self, index_zyx: Sequence[float] | np.ndarray) -> np.ndarray:
        """Continuous original-grid (array) index/indices ``(..., 3)`` to working-grid indices."""
        idx = np.asarray(index_zyx, dtype=float) - np.array(self.crop.lo_zyx)
        c = idx[..., list(self.axes_zyx)]                       # working axis w <- axes[w]
        n = np.array(self.crop_size_working, dtype=float)
        c = np.where(np.array(self.flip_zyx), n - 1.0 - c, c)
        return (c + 0.5) / np.array(self.scale_zyx) - 0.5

    def working_geometry(self, geometry: Geometry) -> Geometry:
        """Physical geometry of the working grid, given the original image's geometry.

        Spacing (working order) is the original spacing of the array axis behind each working
        axis times :attr:`scale_zyx`; the origin is the physical position of working voxel
        ``(0, 0, 0)``; the direction is the original one with its columns permuted and signed
        like the axes (the identity for an axis-aligned image, since the working grid is in
        LPS order). Use it for anything measured in mm on the working grid (e.g. geodesic
        distances): ``working_geometry(g).index_to_physical(w) ==
        g.index_to_physical(working_to_original_index(w))``.
        """
        axes, flips = self.axes_zyx, self.flip_zyx
        spacing = tuple(geometry.spacing_mm[a] * k for a, k in zip(axes, self.scale_zyx))
        origin = geometry.index_to_physical(self.working_to_original_index((0.0, 0.0, 0.0)))
        d = geometry.matrix
        cols = [d[:, 2 - axes[2 - j]] * (-1.0 if flips[2 - j] else 1.0) for j in range(3)]
        return Geometry(spacing, tuple(origin.tolist()),  # type: ignore[arg-type]
                        tuple(np.stack(cols, axis=1).ravel().tolist()))

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "original_shape_zyx": list(self.original_shape_zyx),
                "box": self.box.to_dict(), "crop": self.crop.to_dict(),
                "size_zyx": list(self.size_zyx), "axes_zyx": list(self.axes_zyx),
                "flip_zyx": list(self.flip_zyx)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CropRecord":
        """Read :meth:`to_dict`'s output; a record saved before ``axes_zyx`` / ``flip_zyx``
        existed has no such keys and gets the identity (its working grid was in array order).
        """
        keys = {f.name for f in dataclasses.fields(cls)}
        optional = {"version", "axes_zyx", "flip_zyx"}
        if not isinstance(data, dict) or not keys - optional <= set(data) or set(data) - keys:
            raise InputError(f"a CropRecord needs the keys {sorted(keys - optional)} (optional: "
                             f"{sorted(optional)}), got "
                             f"{sorted(data) if isinstance(data, dict) else type(data).__name__}")
        if data.get("version", 1) != 1:
            raise InputError(f"CropRecord version {data['version']} is not supported (expected 1)")
        return cls(tuple(data["original_shape_zyx"]),  # type: ignore[arg-type]
                   Box.from_dict(data["box"]),
                   Box.from_dict(data["crop"]), tuple(data["size_zyx"]),  # type: ignore[arg-type]
                   axes_zyx=tuple(data.get("axes_zyx", _IDENTITY_AXES)),  # type: ignore[arg-type]
                   flip_zyx=tuple(data.get("flip_zyx", _NO_FLIPS)))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# Forward and inverse
# ----------------------------------------------------------------------------------------------
def _resample(array: np.ndarray, size_zyx: Sequence[int]) -> np.ndarray:
    """Trilinear resample of ``(D, H, W)`` / ``(K, D, H, W)`` to ``size_zyx`` (module grid rule)."""
    size = tuple(int(s) for s in size_zyx)
    arr = np.ascontiguousarray(array, dtype=np.float32)
    if arr.shape[-3:] == size:
        return arr.copy()
    t = torch.from_numpy(arr)
    t = t[None, None] if arr.ndim == 3 else t[None]
    with torch.no_grad():
        out = F.interpolate(t, size=size, mode="trilinear", align_corners=False)
    out = out[0, 0] if arr.ndim == 3 else out[0]
    return out.numpy()


def _smooth_crop(image: np.ndarray, crop: Box, sigma_vox: float | Sequence[float],
                 ) -> np.ndarray:
    """float32 crop of ``image`` smoothed as if the whole image had been smoothed.

    ``sigma_vox``: one sigma for every axis or one per array axis, in voxels."""
    sigmas = (tuple(float(s) for s in sigma_vox) if isinstance(sigma_vox, Sequence)
              else (float(sigma_vox),) * 3)
    if max(sigmas) <= 0:
        return np.array(image[crop.slices], dtype=np.float32)  # a copy: edited in place later
    radius = tuple(int(_TRUNCATE * s + 0.5) for s in sigmas)  # scipy's own kernel radius
    padded = crop.expand(radius).clip(image.shape)
    region = np.asarray(image[padded.slices], dtype=np.float32)
    smoothed = ndimage.gaussian_filter(region, sigma=sigmas, mode="nearest",
                                       truncate=_TRUNCATE)
    inner = tuple(slice(cl - pl, ch - pl) for cl, ch, pl in
                  zip(crop.lo_zyx, crop.hi_zyx, padded.lo_zyx))
    return smoothed[inner]


def preprocess_image(image: Volume | np.ndarray, box: Box,
                     cfg: PreprocessConfig | None = None) -> tuple[np.ndarray, CropRecord]:
    """Smooth, window, crop, reorient to LPS and resample a CT to the working grid.

    Args:
        image: CT in HU, ``(z, y, x)``, any real dtype. A :class:`Volume`'s direction decides
            the reorientation to patient (LPS) order (:func:`lps_orientation`); a plain array
            is taken as already in working order (nothing is transposed or flipped).
        box: the organ's bounding box on this image in *array* indices (e.g.
            :meth:`Box.from_mask` of the reference, or a user's box); must lie inside the image.
        cfg: settings; defaults to :class:`PreprocessConfig()`.

    Returns:
        ``(x, record)``: ``x`` float32 ``cfg.size_zyx`` (LPS order) with values in
        ``[-1, 1]``, and the :class:`CropRecord` that undoes the crop, reorientation and
        resampling.

    Raises:
        InputError: the image is not 3D, the box is outside/empty, or the voxels read
            (the crop padded by the smoothing radius) contain NaN or infinity.
    """
    cfg = cfg if cfg is not None else PreprocessConfig()
    arr = image.array if isinstance(image, Volume) else np.asarray(image)
    axes, flips = lps_orientation(image.geometry if isinstance(image, Volume) else None)
    if arr.ndim != 3:
        raise InputError(f"preprocess_image expects a 3D image (z, y, x), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise InputError(f"preprocess_image expects a real-valued image, got dtype {arr.dtype}")
    box.validate(arr.shape)
    crop = box.expand(cfg.margin_zyx(arr.shape)).clip(arr.shape)
    crop_shape = tuple(h - lo for lo, h in zip(crop.lo_zyx, crop.hi_zyx))
    spacing = image.spacing_mm if isinstance(image, Volume) else None
    region = _smooth_crop(arr, crop, cfg.sigma_zyx(crop_shape, axes, spacing))
    if not np.all(np.isfinite(region)):
        bad = int(np.size(region) - np.count_nonzero(np.isfinite(region)))
        raise InputError(f"the image holds {bad} NaN/infinite value(s) inside the crop "
                         f"{crop.to_dict()}; fill them (e.g. with -1024 HU) before preprocessing")
    low, high = cfg.hu_window
    np.clip(region, low, high, out=region)
    region -= np.float32(low)
    region *= np.float32(2.0 / (high - low))
    region -= np.float32(1.0)
    np.clip(region, -1.0, 1.0, out=region)  # guards against float rounding past +-1
    record = CropRecord(tuple(arr.shape), box, crop, cfg.size_zyx,  # type: ignore[arg-type]
                        axes_zyx=axes, flip_zyx=flips)
    out = _resample(_to_working_order(region, axes, flips), cfg.size_zyx)
    logger.debug("preprocessed %s -> %s via crop %s (working axes %s, flips %s)", arr.shape,
                 out.shape, crop.to_dict(), axes, flips)
    return out, record


def crop_mask(mask: np.ndarray, record: CropRecord) -> np.ndarray:
    """A mask on the working grid: crop, reorient as the image, trilinear resample.

    Args:
        mask: ``(z, y, x)`` of the original shape; non-zero = foreground.
        record: from :func:`preprocess_image` on the matching image.

    Returns:
        float32 ``record.size_zyx`` with values in ``[0, 1]`` (threshold at 0.5 for labels).

    Raises:
        GeometryError: the mask's shape is not the record's original shape.
    """
    mask = np.asarray(mask)
    if mask.shape != record.original_shape_zyx:
        raise GeometryError(f"mask shape {mask.shape} does not match the image the record was "
                            f"made from {record.original_shape_zyx}; use the image's own mask")
    region = (mask[record.crop.slices] != 0).astype(np.float32)
    region = _to_working_order(region, record.axes_zyx, record.flip_zyx)
    return np.clip(_resample(region, record.size_zyx), 0.0, 1.0)


def restore_probabilities(prob_working: np.ndarray, record: CropRecord, *,
                          fill: float = 0.0) -> np.ndarray:
    """Working-grid probabilities back on the original grid (inverse of the crop + resample).

    Args:
        prob_working: float ``(D, H, W)`` or ``(K, D, H, W)`` on the working grid.
        record: from :func:`preprocess_image`.
        fill: value outside the crop.

    Returns:
        float32 of the original shape ``(Z, Y, X)`` (or ``(K, Z, Y, X)``): the trilinear
        resample to the crop's size, brought back to array order, pasted at the crop,
        ``fill`` elsewhere.

    Raises:
        GeometryError: the spatial shape is not ``record.size_zyx``.
        InputError: the array is not 3D/4D or holds NaN.
    """
    prob = _check_working(prob_working, record)
    full = np.full(prob.shape[:-3] + record.original_shape_zyx, fill, dtype=np.float32)
    full[(Ellipsis,) + record.crop.slices] = _restore_region(prob, record)
    return full


def restore_crop_probabilities(prob_working: np.ndarray, record: CropRecord) -> np.ndarray:
    """Working-grid probabilities on the crop region only (``record.crop``'s shape, array
    order): :func:`restore_probabilities` without the paste into the full grid.

    Raises:
        GeometryError: the spatial shape is not ``record.size_zyx``.
        InputError: the array is not 3D/4D or holds NaN.
    """
    return _restore_region(_check_working(prob_working, record), record)


def _restore_region(prob: np.ndarray, record: CropRecord) -> np.ndarray:
    """Working-grid array resampled to the crop and brought back to array order."""
    region = _resample(prob, record.crop_size_working)
    return _from_working_order(region, record.axes_zyx, record.flip_zyx)


def _check_working(prob_working: np.ndarray, record: CropRecord) -> np.ndarray:
    prob = np.asarray(prob_working)
    if prob.ndim not in (3, 4):
        raise InputError(f"expected probabilities (D, H, W) or (K, D, H, W), "
                         f"got shape {prob.shape}")
    if prob.shape[-3:] != record.size_zyx:
        raise GeometryError(f"probabilities of spatial shape {prob.shape[-3:]} do not match the "
                            f"record's working grid {record.size_zyx}")
    if np.isnan(prob).any():
        raise InputError("the probabilities contain NaN; check the network output")
    return prob


def restore_mask(prob_working: np.ndarray, record: CropRecord,
                 threshold: float = 0.5) -> np.ndarray:
    """uint8 mask on the original grid from working-grid probabilities.

    Probabilities are resampled first (:func:`restore_probabilities`), then thresholded, so
    the boundary is interpolated at the original resolution.

    Args:
        prob_working: ``(D, H, W)`` foreground probability -> mask ``prob >= threshold`` in
            {0, 1}; or ``(K, D, H, W)`` class probabilities -> label map ``argmax`` over K
            (``threshold`` unused; outside the crop every channel is 0, giving label 0).
        record: from :func:`preprocess_image`.
        threshold: foreground threshold for the one-channel case.

    Returns:
        uint8 ``(Z, Y, X)`` of the original shape.
    """
    prob = _check_working(prob_working, record)
    region = _restore_region(prob, record)
    # Outside the crop every probability is 0 (fill): label 0, or (0 >= threshold) for 1 channel.
    if region.ndim == 4:
        labels, outside = np.argmax(region, axis=0).astype(np.uint8), 0
    else:
        labels, outside = (region >= threshold).astype(np.uint8), int(0.0 >= threshold)
    full = np.full(record.original_shape_zyx, outside, dtype=np.uint8)
    full[record.crop.slices] = labels
    return full
