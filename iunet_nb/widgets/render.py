"""Pure NumPy rendering of one CT slice for the slice views (no widget imports).

Everything here is a fast, stateless function of arrays, so the slice views stay thin and the
pixels they show can be tested without a browser:

* :func:`window_to_uint8` / :func:`window_lut`: window/level (HU -> grey), a LUT for integer CT;
* :func:`display_flips` (from :mod:`iunet_nb.plots`, shared with every other picture): how a
  view's ``(row, col)`` slice is flipped for display so that the patient appears in the usual
  radiological orientation, from the CT's direction matrix;
* :func:`mask_contour`: the boundary pixels of a 2D mask;
* :func:`compose_slice`: grey CT + mask overlay (filled or contour) + scribbles -> RGBA;
* :func:`encode_png`: a fast PNG encoder (zlib level 1) for sending the RGBA to the browser;
* :class:`SliceTransform`: canvas pixels <-> ``(row, col)`` array indices through the view's
  flips, the voxel spacing (aspect ratio), zoom and pan.

Conventions (``iunet_nb.interactive.session``): a 2D slice is ``(row, col)`` in array indices: axial
``(y, x)``, coronal ``(z, x)``, sagittal ``(z, y)``. Display images are ``(rows, cols, 4)``
uint8 RGBA after the display flips.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..errors import InputError
from ..plots import display_flips  # the engine's orientation, shared with plot_overview

__all__ = [
    "ADDED_COLOR",
    "BG_COLOR",
    "FG_COLOR",
    "REMOVED_COLOR",
    "MASK_COLOR",
    "WINDOW_PRESETS",
    "SliceTransform",
    "compose_slice",
    "display_flips",
    "encode_png",
    "mask_contour",
    "orientation_letters",
    "window_lut",
    "window_to_uint8",
]

#: Window presets: name -> (width HU, level HU), each a different window. "abdomen" W400/L40
#: is the usual abdominal soft-tissue window and also the paper's network input range
#: -160..240 HU (Boers et al. 2020), so it is listed once.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "abdomen": (400.0, 40.0),
    "pancreas": (250.0, 60.0),
    "liver": (150.0, 90.0),
    "bone": (1800.0, 400.0),
    "lung": (1500.0, -600.0),
}
MASK_COLOR: tuple[int, int, int] = (255, 64, 32)
FG_COLOR: tuple[int, int, int] = (40, 220, 60)
BG_COLOR: tuple[int, int, int] = (40, 140, 255)
#: Colours of what the last refinement changed, shown for a moment: voxels it added / removed.
ADDED_COLOR: tuple[int, int, int] = (255, 235, 0)
REMOVED_COLOR: tuple[int, int, int] = (230, 0, 255)
#: LPS letters of the +x, +y, +z physical directions and of their opposites.
_LPS_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))
#: view -> (row axis, col axis) in (z, y, x) (as iunet_nb.interactive.session.VIEWS).
_ROW_COL: dict[str, tuple[int, int]] = {"axial": (1, 2), "coronal": (0, 2), "sagittal": (0, 1)}


def _check_window(width: float, level: float) -> tuple[float, float]:
    if not (isinstance(width, (int, float, np.number)) and isinstance(level, (int, float, np.number))
            and math.isfinite(width) and math.isfinite(level) and width > 0):
        raise InputError(f"window width must be a finite number > 0 and level finite, got "
                         f"width={width!r}, level={level!r} (e.g. abdomen: width 400, level 40)")
    return float(width), float(level)


def window_lut(width: float, level: float, lo: int = -32768, hi: int = 32767) -> np.ndarray:
    """Grey values of the integers ``lo..hi`` under a window: uint8 ``(hi - lo + 1,)``.

    ``grey = clip((v - (level - width / 2)) / width, 0, 1) * 255``, rounded half up, so
    ``level - width/2`` maps to 0 and ``level + width/2`` to 255.

    Raises:
        InputError: width <= 0 or not finite, or ``hi < lo``.
    """
    width, level = _check_window(width, level)
    if hi < lo:
        raise InputError(f"window_lut needs lo <= hi, got lo={lo}, hi={hi}")
    v = np.arange(lo, hi + 1, dtype=np.float64)
    return _grey(v, width, level)


def _grey(v: np.ndarray, width: float, level: float) -> np.ndarray:
    g = (v - (level - width / 2.0)) * 255.0 / width
    return np.floor(np.clip(g, 0.0, 255.0) + 0.5).astype(np.uint8)


def window_to_uint8(image: np.ndarray, width: float, level: float) -> np.ndarray:
    """Window/level a 2D slice in HU to uint8 grey (same formula as :func:`window_lut`).

    Integer slices (int16 / uint8 CT) go through a LUT over their own value range (one
    gather, no float temporaries); float slices are computed directly; NaN becomes 0.

    Args:
        image: ``(rows, cols)`` HU, any real dtype.
        width: window width in HU (> 0).
        level: window centre in HU.

    Returns:
        uint8 ``(rows, cols)``.

    Raises:
        InputError: bad window, or not a 2D real array.
    """
    image = np.asarray(image)
    if image.ndim != 2 or not (np.issubdtype(image.dtype, np.integer)
                               or np.issubdtype(image.dtype, np.floating)):
        raise InputError(f"window_to_uint8 needs a 2D real slice, got {image.dtype} "
                         f"{image.shape}")
    width, level = _check_window(width, level)
    if np.issubdtype(image.dtype, np.integer) and image.itemsize <= 2 and image.size:
        lo, hi = int(image.min()), int(image.max())
        lut = _grey(np.arange(lo, hi + 1, dtype=np.float64), width, level)
        return lut[image.astype(np.int32) - lo] if lo else lut[image]
    g = _grey(np.nan_to_num(image.astype(np.float32), nan=level - width), width, level)
    return g


def _letter(vector: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(vector)))
    return _LPS_LETTERS[axis][0 if vector[axis] > 0 else 1]


def orientation_letters(geometry: Geometry | None, view: str,
                        flips: tuple[bool, bool] | None = None) -> dict[str, str]:
    """The patient directions at a view's four edges, as a radiologist labels them.

    Worked out from the direction matrix and the display flips (not assumed): the letter at
    the right edge is the LPS direction (``L``/``R``, ``P``/``A``, ``S``/``I``, the largest
    component for an oblique scan) in which the displayed columns run, the bottom one that of
    the displayed rows; left and top are their opposites. With :func:`display_flips` an
    axial view reads R (left edge), L (right), A (top), P (bottom).

    Args:
        geometry: the CT's geometry (None: identity direction).
        view: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        flips: ``(flip_rows, flip_cols)``; None: :func:`display_flips`.

    Returns:
        ``{"left": .., "right": .., "top": .., "bottom": ..}``.

    Raises:
        InputError: unknown view.
    """
    if view not in _ROW_COL:
        raise InputError(f"unknown view {view!r}; use 'axial', 'coronal' or 'sagittal'")
    if flips is None:
        flips = display_flips(geometry, view)
    d = (np.eye(3) if geometry is None
         else np.asarray(geometry.direction, dtype=float).reshape(3, 3))
    row_axis, col_axis = _ROW_COL[view]
    down = d[:, 2 - row_axis] * (-1.0 if flips[0] else 1.0)
    right = d[:, 2 - col_axis] * (-1.0 if flips[1] else 1.0)
    return {"left": _letter(-right), "right": _letter(right), "top": _letter(-down),
            "bottom": _letter(down)}


def mask_contour(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a 2D mask: inside pixels with a 4-neighbour outside (or the edge).

    Args:
        mask: ``(rows, cols)``, nonzero = inside.

    Returns:
        bool ``(rows, cols)``.
    """
    m = np.asarray(mask) != 0
    if m.ndim != 2:
        raise InputError(f"mask_contour needs a 2D mask, got shape {m.shape}")
    inner = np.zeros_like(m)
    inner[1:-1, 1:-1] = (m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1]
                         & m[1:-1, :-2] & m[1:-1, 2:])
    return m & ~inner


def _blend(rgb: np.ndarray, where: np.ndarray, color: Sequence[int], alpha: float) -> None:
    if alpha <= 0 or not where.any():
        return
    sel = rgb[where].astype(np.float32)
    sel += (np.asarray(color, dtype=np.float32) - sel) * float(alpha)
    rgb[where] = np.floor(sel + 0.5).astype(np.uint8)


def compose_slice(image: np.ndarray, width: float, level: float, *,
                  mask: np.ndarray | None = None, scribbles: np.ndarray | None = None,
                  changes: np.ndarray | None = None, opacity: float = 0.4, contour_only: bool = False,
                  flip_rows: bool = False, flip_cols: bool = False,
                  mask_color: Sequence[int] = MASK_COLOR, fg_color: Sequence[int] = FG_COLOR,
                  bg_color: Sequence[int] = BG_COLOR, scribble_opacity: float = 0.85,
                  ) -> np.ndarray:
    """One display image: windowed CT, mask overlay, scribbles; RGBA uint8.

    Layers, bottom to top: grey CT (:func:`window_to_uint8`); the mask blended with
    ``mask_color`` at ``opacity`` (``contour_only``: only its boundary pixels, fully opaque,
    so the CT under the mask stays visible); foreground / background scribbles blended at
    ``scribble_opacity`` in their two colours; on top, what the last refinement changed
    (``changes``: 1 added, 2 removed) in :data:`ADDED_COLOR` / :data:`REMOVED_COLOR` at
    ``scribble_opacity``. Finally the display flips.
    ``out = round(under + (colour - under) * alpha)`` per channel.

    Args:
        image: ``(rows, cols)`` HU.
        width, level: window in HU.
        mask: ``(rows, cols)`` {0, 1} or None.
        scribbles: ``(rows, cols)`` uint8 0 none / 1 foreground / 2 background, or None.
        changes: ``(rows, cols)`` uint8 0 unchanged / 1 added / 2 removed, or None.
        opacity: mask opacity in [0, 1].
        contour_only: draw only the mask's contour.
        flip_rows, flip_cols: display flips (:func:`display_flips`).

    Returns:
        uint8 ``(rows, cols, 4)``, alpha 255, C-contiguous.

    Raises:
        InputError: layers of another shape than the image, opacity outside [0, 1].
    """
    grey = window_to_uint8(image, width, level)
    for name, layer in (("mask", mask), ("scribbles", scribbles), ("changes", changes)):
        if layer is not None and np.shape(layer) != grey.shape:
            raise InputError(f"the {name} slice has shape {np.shape(layer)}, the image slice "
                             f"{grey.shape}; they must be the same slice of the same grid")
    for name, a in (("opacity", opacity), ("scribble_opacity", scribble_opacity)):
        if not (isinstance(a, (int, float, np.number)) and 0.0 <= a <= 1.0):
            raise InputError(f"{name} must be a number in [0, 1], got {a!r}")
    rows, cols = grey.shape
    out = np.empty((rows, cols, 4), dtype=np.uint8)
    out[..., 0] = grey
    out[..., 1] = grey
    out[..., 2] = grey
    out[..., 3] = 255
    rgb = out[..., :3]
    if mask is not None:
        m = np.asarray(mask) != 0
        if contour_only:
            _blend(rgb, mask_contour(m), mask_color, 1.0)
        else:
            _blend(rgb, m, mask_color, opacity)
    if scribbles is not None:
        s = np.asarray(scribbles)
        _blend(rgb, s == 1, fg_color, scribble_opacity)
        _blend(rgb, s == 2, bg_color, scribble_opacity)
    if changes is not None:
        ch = np.asarray(changes)
        if ch.any():
            _blend(rgb, ch == 1, ADDED_COLOR, scribble_opacity)
            _blend(rgb, ch == 2, REMOVED_COLOR, scribble_opacity)
    if flip_rows:
        out = out[::-1]
    if flip_cols:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def encode_png(rgba: np.ndarray, level: int = 1) -> bytes:
    """Encode an RGBA (or RGB) uint8 image as PNG quickly (no filtering, zlib ``level``).

    Pillow's default PNG encoder (adaptive filters, level 6) takes about 50 ms for a
    512 x 512 RGBA slice on this project's CPU; this one about 9 ms at level 1, losslessly.

    Args:
        rgba: uint8 ``(rows, cols, 4)`` or ``(rows, cols, 3)``.
        level: zlib level 0..9.

    Returns:
        the PNG file's bytes.

    Raises:
        InputError: not a uint8 RGB/RGBA image.
    """
    a = np.asarray(rgba)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] not in (3, 4) or 0 in a.shape[:2]:
        raise InputError(f"encode_png needs uint8 (rows, cols, 3 or 4), got {a.dtype} {a.shape}")
    h, w, c = a.shape
    raw = np.empty((h, w * c + 1), dtype=np.uint8)
    raw[:, 0] = 0  # filter type 0 (none) on every scanline
    raw[:, 1:] = a.reshape(h, w * c)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", w, h, 8, 6 if c == 4 else 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), level)) + chunk(b"IEND", b""))


@dataclass(frozen=True)
class SliceTransform:
    """Canvas pixels <-> ``(row, col)`` array indices of one view's slices.

    The display image (after the flips) is drawn with its pixel ``(r, c)`` covering canvas
    ``x in [ox + c * sx, ox + (c + 1) * sx)`` and ``y in [oy + r * sy, ...)``, where
    ``sx = px_per_mm * spacing_col`` and ``sy = px_per_mm * spacing_row``, so one mm is the
    same number of canvas pixels along both axes (correct aspect ratio on anisotropic CT).
    At ``zoom == 1`` the slice fits the canvas; ``center`` is the display point (in display
    pixel units, continuous; pixel ``(r, c)`` spans ``[c, c + 1) x [r, r + 1)``) shown at the
    canvas centre, so panning changes ``center`` and zooming keeps it.

    Args:
        n_rows, n_cols: slice size in voxels.
        spacing_row_mm, spacing_col_mm: voxel size along rows / columns in mm.
        canvas_width, canvas_height: canvas size in pixels.
        flip_rows, flip_cols: display flips.
        zoom: magnification (>= 0.05) relative to "fit".
        center: ``(u, v)`` = (display column, display row) at the canvas centre; None = the
            middle of the slice.
    """

    n_rows: int
    n_cols: int
    spacing_row_mm: float
    spacing_col_mm: float
    canvas_width: int
    canvas_height: int
    flip_rows: bool = False
    flip_cols: bool = False
    zoom: float = 1.0
    center: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for name in ("n_rows", "n_cols", "canvas_width", "canvas_height"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"SliceTransform.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("spacing_row_mm", "spacing_col_mm"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise InputError(f"SliceTransform.{name} must be a finite spacing > 0 mm, "
                                 f"got {v!r}")
        if not (math.isfinite(self.zoom) and self.zoom >= 0.05):
            raise InputError(f"zoom must be >= 0.05, got {self.zoom!r}")
        if self.center is None:
            object.__setattr__(self, "center", (self.n_cols / 2.0, self.n_rows / 2.0))

    # -- derived ---------------------------------------------------------------------------
    @property
    def px_per_mm(self) -> float:
        """Canvas pixels per mm (equal along both axes)."""
        fit = min(self.canvas_width / (self.n_cols * self.spacing_col_mm),
                  self.canvas_height / (self.n_rows * self.spacing_row_mm))
        return fit * self.zoom

    @property
    def scale(self) -> tuple[float, float]:
        """``(sx, sy)``: canvas pixels per display column / row."""
        p = self.px_per_mm
        return p * self.spacing_col_mm, p * self.spacing_row_mm

    @property
    def origin(self) -> tuple[float, float]:
        """``(ox, oy)``: canvas position of the display image's top-left corner."""
        sx, sy = self.scale
        u, v = self.center  # type: ignore[misc]
        return self.canvas_width / 2.0 - u * sx, self.canvas_height / 2.0 - v * sy

    def canvas_matrix(self) -> tuple[float, float, float, float, float, float]:
        """``(a, b, c, d, e, f)`` for ``setTransform``: draw the display image at (0, 0)."""
        sx, sy = self.scale
        ox, oy = self.origin
        return sx, 0.0, 0.0, sy, ox, oy

    # -- mapping ---------------------------------------------------------------------------
    def canvas_to_index(self, x: float, y: float) -> tuple[float, float]:
        """Canvas pixel ``(x, y)`` -> ``(row, col)`` array index (float; voxel centres at
        integers; inside the slice when ``-0.5 <= row <= n_rows - 0.5``, same for col)."""
        sx, sy = self.scale
        ox, oy = self.origin
        dc = (x - ox) / sx - 0.5
        dr = (y - oy) / sy - 0.5
        row = self.n_rows - 1 - dr if self.flip_rows else dr
        col = self.n_cols - 1 - dc if self.flip_cols else dc
        return float(row), float(col)

    def index_to_canvas(self, row: float, col: float) -> tuple[float, float]:
        """``(row, col)`` array index -> canvas pixel ``(x, y)`` (inverse of the above)."""
        sx, sy = self.scale
        ox, oy = self.origin
        dr = self.n_rows - 1 - row if self.flip_rows else row
        dc = self.n_cols - 1 - col if self.flip_cols else col
        return float(ox + (dc + 0.5) * sx), float(oy + (dr + 0.5) * sy)

    def inside(self, row: float, col: float) -> bool:
        """Whether an index lies on the slice (within half a voxel of its edge voxels)."""
        return -0.5 <= row <= self.n_rows - 0.5 and -0.5 <= col <= self.n_cols - 0.5

    # -- navigation ------------------------------------------------------------------------
    def panned(self, dx_px: float, dy_px: float) -> SliceTransform:
        """The transform after dragging the image by ``(dx, dy)`` canvas pixels."""
        sx, sy = self.scale
        u, v = self.center  # type: ignore[misc]
        return replace(self, center=(u - dx_px / sx, v - dy_px / sy))

    def zoomed(self, zoom: float) -> SliceTransform:
        """The same centre at another zoom."""
        return replace(self, zoom=float(zoom))
