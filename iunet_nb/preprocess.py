"""iUnet preprocessing (Boers et al. 2020) with an exact, recorded inverse.

The forward pipeline, in this order:

1. **smooth** the image with a Gaussian of ``sigma_vox`` voxels (isotropic in voxel units) on
   the original grid. Only the crop padded by the filter radius is smoothed, which gives the
   same values inside the crop as smoothing the whole volume (the filter never reads further);
2. **window**: clip HU to ``hu_window`` and rescale linearly to ``[-1, 1]``;
3. **crop** to the box plus a margin on each side of ``ceil(margin_frac * n)`` voxels for an
   image dimension of ``n`` voxels, clipped to the image;
4. **resample** the crop to ``size_zyx`` voxels, trilinear.

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
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ._config import JsonConfig
from .errors import ConfigError, GeometryError, InputError
from .volume import Geometry, Volume

__all__ = [
    "PreprocessConfig",
    "Box",
    "CropRecord",
    "preprocess_image",
    "crop_mask",
    "restore_probabilities",
    "restore_mask",
]

logger = logging.getLogger(__name__)

#: scipy's default Gaussian truncation (in sigmas); the crop is padded by the filter radius.
_TRUNCATE = 4.0
_EPS_INDEX = 1e-6  # float noise tolerated when rounding physical boxes to voxel indices


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

    Raises:
        ConfigError: a value is out of range or of the wrong type.
    """

    version: int = 1
    sigma_vox: float = 0.75
    hu_window: tuple[float, float] = (-160.0, 240.0)
    margin_frac: float = 0.05
    size_zyx: tuple[int, int, int] = (24, 64, 64)

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
        object.__setattr__(self, "sigma_vox", float(self.sigma_vox))
        object.__setattr__(self, "hu_window", (float(window[0]), float(window[1])))
        object.__setattr__(self, "margin_frac", float(self.margin_frac))
        object.__setattr__(self, "size_zyx", tuple(int(s) for s in size))

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
        original_shape_zyx: shape of the original image.
        box: the box given to :func:`preprocess_image` (before the margin), for provenance.
        crop: the crop actually taken: ``box`` plus the margin, clipped to the image.
        size_zyx: the working grid ``(D, H, W)``.
        version: format version of the record.
    """

    original_shape_zyx: tuple[int, int, int]
    box: Box
    crop: Box
    size_zyx: tuple[int, int, int]
    version: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "original_shape_zyx", _shape3(self.original_shape_zyx))
        object.__setattr__(self, "size_zyx", _shape3(self.size_zyx))
        if min(self.size_zyx) < 1:
            raise InputError(f"CropRecord.size_zyx must be positive, got {self.size_zyx}")
        self.crop.validate(self.original_shape_zyx)

    @property
    def scale_zyx(self) -> tuple[float, float, float]:
        """Original voxels per working voxel along ``(z, y, x)`` (crop size / working size)."""
        c, s = self.crop.size, self.size_zyx
        return c[0] / s[0], c[1] / s[1], c[2] / s[2]

    def working_to_original_index(self, index_zyx: Sequence[float] | np.ndarray) -> np.ndarray:
        """Continuous working-grid index/indices ``(..., 3)`` to original-grid indices."""
        idx = np.asarray(index_zyx, dtype=float)
        return (idx + 0.5) * np.array(self.scale_zyx) - 0.5 + np.array(self.crop.lo_zyx)

    def original_to_working_index(self, index_zyx: Sequence[float] | np.ndarray) -> np.ndarray:
        """Continuous original-grid index/indices ``(..., 3)`` to working-grid indices."""
        idx = np.asarray(index_zyx, dtype=float) - np.array(self.crop.lo_zyx)
        return (idx + 0.5) / np.array(self.scale_zyx) - 0.5

    def working_geometry(self, geometry: Geometry) -> Geometry:
        """Physical geometry of the working grid, given the original image's geometry.

        Spacing is ``spacing * scale``; the origin is the physical position of working voxel
        ``(0, 0, 0)``; the direction is unchanged. Use it for anything measured in mm on the
        working grid (e.g. geodesic distances).
        """
        spacing = tuple(s * k for s, k in zip(geometry.spacing_mm, self.scale_zyx))
        origin = geometry.index_to_physical(self.working_to_original_index((0.0, 0.0, 0.0)))
        return Geometry(spacing, tuple(origin.tolist()),  # type: ignore[arg-type]
                        geometry.direction)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "original_shape_zyx": list(self.original_shape_zyx),
                "box": self.box.to_dict(), "crop": self.crop.to_dict(),
                "size_zyx": list(self.size_zyx)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CropRecord":
        keys = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or not keys - {"version"} <= set(data) or set(data) - keys:
            raise InputError(f"a CropRecord needs exactly the keys {sorted(keys)}, got "
                             f"{sorted(data) if isinstance(data, dict) else type(data).__name__}")
        if data.get("version", 1) != 1:
            raise InputError(f"CropRecord version {data['version']} is not supported (expected 1)")
        return cls(tuple(data["original_shape_zyx"]),  # type: ignore[arg-type]
                   Box.from_dict(data["box"]),
                   Box.from_dict(data["crop"]), tuple(data["size_zyx"]))  # type: ignore[arg-type]


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


def _smooth_crop(image: np.ndarray, crop: Box, sigma_vox: float) -> np.ndarray:
    """float32 crop of ``image`` smoothed as if the whole image had been smoothed."""
    if sigma_vox <= 0:
        return np.array(image[crop.slices], dtype=np.float32)  # a copy: edited in place later
    radius = int(_TRUNCATE * sigma_vox + 0.5)  # scipy's own kernel radius
    padded = crop.expand((radius,) * 3).clip(image.shape)
    region = np.asarray(image[padded.slices], dtype=np.float32)
    smoothed = ndimage.gaussian_filter(region, sigma=sigma_vox, mode="nearest",
                                       truncate=_TRUNCATE)
    inner = tuple(slice(cl - pl, ch - pl) for cl, ch, pl in
                  zip(crop.lo_zyx, crop.hi_zyx, padded.lo_zyx))
    return smoothed[inner]


def preprocess_image(image: Volume | np.ndarray, box: Box,
                     cfg: PreprocessConfig | None = None) -> tuple[np.ndarray, CropRecord]:
    """Smooth, window, crop and resample a CT to the working grid.

    Args:
        image: CT in HU, ``(z, y, x)``, any real dtype (a :class:`Volume` or an array).
        box: the organ's bounding box on this image (e.g. :meth:`Box.from_mask` of the
            reference, or a user's box); must lie inside the image.
        cfg: settings; defaults to :class:`PreprocessConfig()`.

    Returns:
        ``(x, record)``: ``x`` float32 ``cfg.size_zyx`` with values in ``[-1, 1]``, and the
        :class:`CropRecord` that undoes the crop and resampling.

    Raises:
        InputError: the image is not 3D, the box is outside/empty, or the voxels read
            (the crop padded by the smoothing radius) contain NaN or infinity.
    """
    cfg = cfg if cfg is not None else PreprocessConfig()
    arr = image.array if isinstance(image, Volume) else np.asarray(image)
    if arr.ndim != 3:
        raise InputError(f"preprocess_image expects a 3D image (z, y, x), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise InputError(f"preprocess_image expects a real-valued image, got dtype {arr.dtype}")
    box.validate(arr.shape)
    crop = box.expand(cfg.margin_zyx(arr.shape)).clip(arr.shape)
    region = _smooth_crop(arr, crop, cfg.sigma_vox)
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
    record = CropRecord(tuple(arr.shape), box, crop, cfg.size_zyx)  # type: ignore[arg-type]
    out = _resample(region, cfg.size_zyx)
    logger.debug("preprocessed %s -> %s via crop %s", arr.shape, out.shape, crop.to_dict())
    return out, record


def crop_mask(mask: np.ndarray, record: CropRecord) -> np.ndarray:
    """A mask on the working grid: crop, then trilinear resample of the binary mask.

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
        resample to the crop's size pasted at the crop, ``fill`` elsewhere.

    Raises:
        GeometryError: the spatial shape is not ``record.size_zyx``.
        InputError: the array is not 3D/4D or holds NaN.
    """
    prob = _check_working(prob_working, record)
    full = np.full(prob.shape[:-3] + record.original_shape_zyx, fill, dtype=np.float32)
    full[(Ellipsis,) + record.crop.slices] = _resample(prob, record.crop.size)
    return full


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
    region = _resample(prob, record.crop.size)
    # Outside the crop every probability is 0 (fill): label 0, or (0 >= threshold) for 1 channel.
    if region.ndim == 4:
        labels, outside = np.argmax(region, axis=0).astype(np.uint8), 0
    else:
        labels, outside = (region >= threshold).astype(np.uint8), int(0.0 >= threshold)
    full = np.full(record.original_shape_zyx, outside, dtype=np.uint8)
    full[record.crop.slices] = labels
    return full
