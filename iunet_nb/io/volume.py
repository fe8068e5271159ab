"""`Geometry` and `Volume`: an image array that never loses its place in the world.

Conventions (see SPEC.md):

* arrays are ``(z, y, x)``, exactly as ``SimpleITK.GetArrayFromImage`` returns them;
* ``spacing_mm`` is given in the array's order, ``(z, y, x)``;
* ``origin_mm`` is the physical (LPS, millimetre) position of voxel ``(0, 0, 0)``, as
  ``(x, y, z)`` like every physical point;
* ``direction`` is SimpleITK's row-major 3 x 3 matrix whose *columns* are the physical
  directions of the x, y and z index axes.

The only place that reverses SimpleITK's ``(x, y, z)`` order is :meth:`Geometry.from_sitk`
and :meth:`Geometry.apply_to`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import GeometryError, InputError

__all__ = ["CT_SPACING_RANGE_MM", "Geometry", "Volume", "check_ct_spacing"]

_ORTHO_TOL = 1e-3
#: Voxel spacing (mm) a CT can have, thinnest to thickest; outside it the header is wrong
#: (micrometres or metres written as mm), and the work grows without bound (a 1e-6 mm
#: spacing makes a smoothing kernel of millions of voxels).
CT_SPACING_RANGE_MM: tuple[float, float] = (0.05, 50.0)


@dataclass(frozen=True)
class Geometry:
    """Where a ``(z, y, x)`` voxel grid sits in physical space.

    Args:
        spacing_mm: voxel size ``(z, y, x)`` in mm, each > 0 and finite.
        origin_mm: physical position ``(x, y, z)`` of voxel ``(0, 0, 0)`` in mm.
        direction: 9 numbers, row-major 3 x 3; columns are the x, y, z axis directions.

    Raises:
        GeometryError: zero, negative or non-finite spacing; a non-orthonormal direction.
    """

    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        spacing = tuple(float(s) for s in self.spacing_mm)
        origin = tuple(float(o) for o in self.origin_mm)
        direction = tuple(float(d) for d in np.asarray(self.direction, dtype=float).ravel())
        if len(spacing) != 3 or len(origin) != 3 or len(direction) != 9:
            raise GeometryError(
                f"a 3D geometry needs 3 spacings, 3 origin values and a 3x3 direction; got "
                f"{len(spacing)}, {len(origin)} and {len(direction)} values")
        if not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise GeometryError(
                f"voxel spacing must be positive and finite, got {spacing} mm (z, y, x); "
                "fix the image header (e.g. in 3D Slicer or with SimpleITK SetSpacing)")
        if not all(np.isfinite(origin)):
            raise GeometryError(f"image origin must be finite, got {origin}")
        d = np.array(direction).reshape(3, 3)
        if not np.allclose(d.T @ d, np.eye(3), atol=_ORTHO_TOL):
            raise GeometryError(
                "the direction matrix is not orthonormal (sheared or scaled axes); resample the "
                f"image to an orthogonal grid first. Matrix: {np.round(d, 4).tolist()}")
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "origin_mm", origin)
        object.__setattr__(self, "direction", direction)

    # -- SimpleITK ---------------------------------------------------------------------
    @classmethod
    def from_sitk(cls, image: Any) -> "Geometry":
        """Geometry of a 3D ``SimpleITK.Image`` (spacing reversed to ``(z, y, x)``)."""
        if image.GetDimension() != 3:
            raise GeometryError(f"expected a 3D image, got a {image.GetDimension()}D one")
        return cls(spacing_mm=tuple(image.GetSpacing())[::-1], origin_mm=tuple(image.GetOrigin()),
                   direction=tuple(image.GetDirection()))

    def apply_to(self, image: Any) -> Any:
        """Set this geometry on a ``SimpleITK.Image`` in place and return it."""
        image.SetSpacing(tuple(self.spacing_mm[::-1]))
        image.SetOrigin(tuple(self.origin_mm))
        image.SetDirection(tuple(self.direction))
        return image

    # -- coordinates ---------------------------------------------------------------------
    @property
    def matrix(self) -> np.ndarray:
        """3 x 3 direction matrix (columns: x, y, z index axes)."""
        return np.array(self.direction).reshape(3, 3)

    def index_to_physical(self, index_zyx: Sequence[float] | np.ndarray) -> np.ndarray:
        """Continuous voxel index/indices ``(..., 3)`` in ``(z, y, x)`` to physical ``(x, y, z)`` mm."""
        idx = np.asarray(index_zyx, dtype=float)[..., ::-1]
        scaled = idx * np.array(self.spacing_mm[::-1])
        return scaled @ self.matrix.T + np.array(self.origin_mm)

    def physical_to_index(self, point_xyz: Sequence[float] | np.ndarray) -> np.ndarray:
        """Physical point(s) ``(..., 3)`` ``(x, y, z)`` mm to continuous ``(z, y, x)`` index."""
        p = np.asarray(point_xyz, dtype=float) - np.array(self.origin_mm)
        idx_xyz = (p @ self.matrix) / np.array(self.spacing_mm[::-1])
        return idx_xyz[..., ::-1]

    def is_close(self, other: "Geometry", atol: float = 1e-4) -> bool:
        """True when spacing, origin and direction agree within ``atol`` (mm / unitless)."""
        return (np.allclose(self.spacing_mm, other.spacing_mm, atol=atol)
                and np.allclose(self.origin_mm, other.origin_mm, atol=atol)
                and np.allclose(self.direction, other.direction, atol=atol))

    def to_dict(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image or mask: ``array`` in ``(z, y, x)`` plus its :class:`Geometry`.

    Args:
        array: 3D NumPy array ``(z, y, x)``; CT in HU as ``int16`` or ``float32``, masks ``uint8``.
        geometry: where the grid sits; defaults to 1 mm isotropic at the origin.
        meta: free-form provenance (source path, DICOM UIDs, ...); JSON-native values.

    Raises:
        InputError: the array is not 3D or is empty.
    """

    array: np.ndarray
    geometry: Geometry = dataclasses.field(default_factory=Geometry)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim != 3:
            raise InputError(
                f"expected a 3D image (z, y, x), got {arr.ndim}D with shape {arr.shape}; "
                "select one volume of a 4D series, or stack 2D slices into a 3D image first")
        if min(arr.shape) < 1:
            raise InputError(f"the image is empty (shape {arr.shape})")
        object.__setattr__(self, "array", arr)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return self.geometry.spacing_mm

    def with_array(self, array: np.ndarray, **meta: Any) -> "Volume":
        """A new volume on the same grid (same geometry) holding ``array``."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise GeometryError(
                f"array shape {array.shape} does not match the volume's grid {self.array.shape}")
        return Volume(array, self.geometry, {**self.meta, **meta})

    def to_sitk(self) -> Any:
        """This volume as a ``SimpleITK.Image`` with its geometry."""
        import SimpleITK as sitk

        return self.geometry.apply_to(sitk.GetImageFromArray(self.array))

    @classmethod
    def from_sitk(cls, image: Any, **meta: Any) -> "Volume":
        """A volume from a 3D ``SimpleITK.Image`` (array ``(z, y, x)``, geometry kept)."""
        import SimpleITK as sitk

        geometry = Geometry.from_sitk(image)
        return cls(sitk.GetArrayFromImage(image), geometry, dict(meta))


def check_ct_spacing(geometry: Geometry, what: str = "the CT") -> None:
    """Raise GeometryError unless every spacing lies in :data:`CT_SPACING_RANGE_MM`.

    Raises:
        GeometryError: a spacing below 0.05 mm or above 50 mm; the message gives it.

    Example:
        >>> check_ct_spacing(Geometry(spacing_mm=(2.5, 0.8, 0.8)))
    """
    lo, hi = CT_SPACING_RANGE_MM
    spacing = geometry.spacing_mm
    if all(lo <= s <= hi for s in spacing):
        return
    shown = ", ".join(f"{s:.3g}" for s in spacing)
    raise GeometryError(
        f"{what} has voxel spacing ({shown}) mm (z, y, x), outside the {lo:g}..{hi:g} mm a CT "
        "can have (micrometres or metres in the header?); fix the header (e.g. in 3D Slicer, "
        "or SimpleITK SetSpacing) and save it again")
