"""Segmentation metrics, spacing-aware, as pure functions on ``(z, y, x)`` masks.

All metrics take a prediction and a reference mask of the same shape (``bool`` or integer
dtype; non-zero = foreground) and, where distances matter, ``spacing_mm`` in ``(z, y, x)``.

Conventions, for every metric:

* **empty reference** -> :class:`InputError` ("empty reference mask ..."): overlap and
  distances to nothing are undefined; drop the case or fix the reference.
* **empty prediction** (non-empty reference) -> ``dice = jaccard = precision = recall = 0``,
  ``volume_difference = -1``, ``hausdorff95 = inf``, ``surface_dice = 0``.
* shapes differ -> :class:`GeometryError`.

Surfaces are the *border voxels* of a mask: foreground voxels with at least one of their 6
face neighbours in the background (outside the image counts as background). Distances are
Euclidean in mm between voxel centres (``scipy.ndimage.distance_transform_edt`` with
``sampling=spacing_mm``). For speed, both masks are first cropped to the bounding box of
their union plus one voxel of background on every side; this does not change any distance.

Example:
    >>> row = evaluate_case(pred, ref, spacing_mm=(2.5, 0.8, 0.8), case_id="p01")  # doctest: +SKIP
    >>> table = summarize([row, ...])                                           # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from ..errors import GeometryError, InputError

__all__ = [
    "dice",
    "jaccard",
    "precision",
    "recall",
    "volume_ml",
    "volume_difference",
    "hausdorff95",
    "surface_dice",
    "evaluate_case",
    "summarize",
]

logger = logging.getLogger(__name__)

_SUMMARY_COLUMNS = ["n", "mean", "sd", "median", "min", "max", "n_inf", "n_nan"]


# ----------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------
def _as_mask(mask: Any, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name} mask must be bool or integer (uint8 labels), got dtype "
                         f"{arr.dtype}; threshold probabilities first (e.g. prob >= 0.5)")
    if arr.ndim != 3:
        raise InputError(f"{name} mask must be 3D (z, y, x), got shape {arr.shape}")
    return arr != 0 if arr.dtype != bool else arr


def _pair(pred: Any, ref: Any) -> tuple[np.ndarray, np.ndarray]:
    p, r = _as_mask(pred, "prediction"), _as_mask(ref, "reference")
    if p.shape != r.shape:
        raise GeometryError(f"prediction shape {p.shape} and reference shape {r.shape} differ; "
                            "resample the prediction onto the reference grid first")
    if not r.any():
        raise InputError(f"empty reference mask (shape {r.shape}, no foreground voxel): the "
                         "metric is undefined; exclude this case or check the reference labels")
    return p, r


def _spacing(spacing_mm: Sequence[float]) -> tuple[float, float, float]:
    try:
        s = tuple(float(v) for v in spacing_mm)
    except (TypeError, ValueError):
        s = ()
    if len(s) != 3 or not all(math.isfinite(v) and v > 0 for v in s):
        raise GeometryError(f"spacing_mm must be three positive finite numbers (z, y, x) in mm, "
                            f"got {spacing_mm!r}")
    return s  # type: ignore[return-value]


def _counts(p: np.ndarray, r: np.ndarray) -> tuple[int, int, int]:
    """(true positives, |pred|, |ref|)."""
    return (int(np.count_nonzero(p & r)), int(np.count_nonzero(p)), int(np.count_nonzero(r)))


# ----------------------------------------------------------------------------------------------
# overlap metrics
# ----------------------------------------------------------------------------------------------
def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice similarity coefficient ``2 |P & R| / (|P| + |R|)`` in [0, 1].

    Args:
        pred: bool/uint8 ``(z, y, x)`` prediction.
        ref: bool/uint8 ``(z, y, x)`` reference (non-empty).

    Raises:
        InputError: empty reference, 3D/dtype problems. GeometryError: shapes differ.
    """
    tp, n_p, n_r = _counts(*_pair(pred, ref))
    return 2.0 * tp / (n_p + n_r)


def jaccard(pred: np.ndarray, ref: np.ndarray) -> float:
    """Jaccard index (IoU) ``|P & R| / |P | R|`` in [0, 1]; equals ``d / (2 - d)`` for Dice d."""
    tp, n_p, n_r = _counts(*_pair(pred, ref))
    return tp / (n_p + n_r - tp)


def precision(pred: np.ndarray, ref: np.ndarray) -> float:
    """Precision ``|P & R| / |P|``; 0 for an empty prediction (nothing correct was found)."""
    tp, n_p, _ = _counts(*_pair(pred, ref))
    return tp / n_p if n_p else 0.0


def recall(pred: np.ndarray, ref: np.ndarray) -> float:
    """Recall (sensitivity) ``|P & R| / |R|``."""
    tp, _, n_r = _counts(*_pair(pred, ref))
    return tp / n_r


def volume_ml(mask: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Volume of the foreground in mL: voxel count x voxel volume (mm^3) / 1000.

    Args:
        mask: bool/uint8 ``(z, y, x)``; may be empty (0 mL).
        spacing_mm: ``(z, y, x)`` voxel size in mm.
    """
    s = _spacing(spacing_mm)
    return int(np.count_nonzero(_as_mask(mask, "the"))) * s[0] * s[1] * s[2] / 1000.0


def volume_difference(pred: np.ndarray, ref: np.ndarray) -> float:
    """Relative signed volume difference ``(|P| - |R|) / |R|`` (-1 for an empty prediction).

    Positive means over-segmentation. Spacing cancels out; for absolute volumes use
    :func:`volume_ml`.
    """
    _, n_p, n_r = _counts(*_pair(pred, ref))
    return (n_p - n_r) / n_r


# ----------------------------------------------------------------------------------------------
# surface metrics
# ----------------------------------------------------------------------------------------------
def _crop_union(p: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to their union's bounding box, padded by one background voxel."""
    union = p | r
    sl = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        nz = np.flatnonzero(np.any(union, axis=other))
        sl.append(slice(int(nz[0]), int(nz[-1]) + 1))
    region = tuple(sl)
    return np.pad(p[region], 1), np.pad(r[region], 1)


def _border(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a 6-neighbour in the background (mask padded with background)."""
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1))


def _surface_distances(p: np.ndarray, r: np.ndarray, spacing: tuple[float, float, float]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) pred surface -> ref surface and ref surface -> pred surface.

    Both masks must be non-empty.
    """
    p, r = _crop_union(p, r)
    sp, sr = _border(p), _border(r)
    to_ref = ndimage.distance_transform_edt(~sr, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return to_ref[sp], to_pred[sr]


def _hd95(d_pred: np.ndarray, d_ref: np.ndarray) -> float:
    return float(max(np.percentile(d_pred, 95), np.percentile(d_ref, 95)))


def _nsd(d_pred: np.ndarray, d_ref: np.ndarray, tolerance_mm: float) -> float:
    within = np.count_nonzero(d_pred <= tolerance_mm) + np.count_nonzero(d_ref <= tolerance_mm)
    return within / (d_pred.size + d_ref.size)


def hausdorff95(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm.

    The larger of the two directed 95th percentiles (pred surface -> ref surface, and ref
    surface -> pred surface), each over border voxels counted equally, NumPy's default
    linear-interpolated percentile. This is the definition of MONAI's
    ``compute_hausdorff_distance(percentile=95)`` and DeepMind's ``surface-distance``
    (up to its surfel-area weights).

    Args:
        pred: bool/uint8 ``(z, y, x)``.
        ref: bool/uint8 ``(z, y, x)``, non-empty.
        spacing_mm: ``(z, y, x)`` voxel size in mm.

    Returns:
        Distance in mm; ``inf`` for an empty prediction.

    Raises:
        InputError: empty reference. GeometryError: shapes differ or bad spacing.
    """
    p, r = _pair(pred, ref)
    s = _spacing(spacing_mm)
    if not p.any():
        return math.inf
    return _hd95(*_surface_distances(p, r, s))


def surface_dice(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float],
                 tolerance_mm: float = 2.0) -> float:
    """Normalised surface Dice (NSD, Nikolov et al. 2021) at ``tolerance_mm``, in [0, 1].

    The fraction of both surfaces that lies within ``tolerance_mm`` of the other surface:
    ``(#{s in S_P: d(s, S_R) <= tau} + #{s in S_R: d(s, S_P) <= tau}) / (|S_P| + |S_R|)``.
    Voxel-border approximation: surfaces are border voxels, each counted with weight 1 and
    distances measured between voxel centres, instead of Nikolov's surface elements weighted
    by their area. With anisotropic spacing this over-weights the in-plane faces a little;
    identical masks still give exactly 1.

    Args:
        pred: bool/uint8 ``(z, y, x)``.
        ref: bool/uint8 ``(z, y, x)``, non-empty.
        spacing_mm: ``(z, y, x)`` voxel size in mm.
        tolerance_mm: tolerance tau in mm (>= 0).

    Returns:
        NSD; 0 for an empty prediction.

    Raises:
        InputError: empty reference or negative tolerance. GeometryError: shapes/spacing.
    """
    p, r = _pair(pred, ref)
    s = _spacing(spacing_mm)
    tol = _tolerance(tolerance_mm)
    if not p.any():
        return 0.0
    return _nsd(*_surface_distances(p, r, s), tol)


def _tolerance(tolerance_mm: float) -> float:
    try:
        tol = float(tolerance_mm)
    except (TypeError, ValueError):
        tol = math.nan
    if not math.isfinite(tol) or tol < 0:
        raise InputError(f"tolerance_mm must be a finite number >= 0 (mm), got {tolerance_mm!r}")
    return tol


# ----------------------------------------------------------------------------------------------
# per case and summary
# ----------------------------------------------------------------------------------------------
def evaluate_case(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float],
                  tolerance_mm: float = 2.0, *, case_id: str | None = None
                  ) -> dict[str, Any]:
    """All metrics of one case, computing the surface distances once.

    Args:
        pred: bool/uint8 ``(z, y, x)`` prediction.
        ref: bool/uint8 ``(z, y, x)`` reference, non-empty.
        spacing_mm: ``(z, y, x)`` voxel size in mm.
        tolerance_mm: NSD tolerance in mm.
        case_id: optional; stored under ``"case_id"`` (first key) when given.

    Returns:
        ``{"case_id"?, "dice", "jaccard", "precision", "recall", "volume_difference",
        "volume_pred_ml", "volume_ref_ml", "hd95_mm", "surface_dice"}`` as Python floats.

    Raises:
        InputError: empty reference. GeometryError: shapes differ or bad spacing.
    """
    p, r = _pair(pred, ref)
    s = _spacing(spacing_mm)
    tol = _tolerance(tolerance_mm)
    tp, n_p, n_r = _counts(p, r)
    voxel_ml = s[0] * s[1] * s[2] / 1000.0
    if n_p:
        d_pred, d_ref = _surface_distances(p, r, s)
        hd95, nsd = _hd95(d_pred, d_ref), _nsd(d_pred, d_ref, tol)
    else:
        hd95, nsd = math.inf, 0.0
    row: dict[str, Any] = {} if case_id is None else {"case_id": case_id}
    row.update({
        "dice": 2.0 * tp / (n_p + n_r),
        "jaccard": tp / (n_p + n_r - tp),
        "precision": tp / n_p if n_p else 0.0,
        "recall": tp / n_r,
        "volume_difference": (n_p - n_r) / n_r,
        "volume_pred_ml": n_p * voxel_ml,
        "volume_ref_ml": n_r * voxel_ml,
        "hd95_mm": float(hd95),
        "surface_dice": float(nsd),
    })
    return row


def summarize(rows: list[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Per-metric statistics over cases.

    Every numeric column is a metric; other columns (``case_id``, reader, method, ...) are
    ignored. Infinite values (e.g. ``hd95_mm`` of an empty prediction) and NaN are *not*
    averaged in: every statistic uses the finite values only, and ``n_inf`` / ``n_nan`` count
    what was left out, so a failure is visible rather than hidden (or turned into ``inf``).

    Args:
        rows: one dict per case (as from :func:`evaluate_case`) or a DataFrame.

    Returns:
        DataFrame indexed by metric with columns ``n`` (finite values), ``mean``, ``sd``
        (sample standard deviation, ddof=1; NaN for n < 2), ``median``, ``min``, ``max``,
        ``n_inf``, ``n_nan``.

    Raises:
        InputError: no rows, or no numeric column.
    """
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if df.empty:
        raise InputError("summarize needs at least one case (row); got none")
    numeric = df.select_dtypes(include=[np.number]).drop(
        columns=[c for c in df.columns if str(c) == "case_id"], errors="ignore")
    if numeric.shape[1] == 0:
        raise InputError(f"summarize found no numeric metric column among {list(df.columns)}")
    out = {}
    for name in numeric.columns:
        values = numeric[name].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        n = finite.size
        out[name] = {
            "n": n,
            "mean": float(finite.mean()) if n else math.nan,
            "sd": float(finite.std(ddof=1)) if n >= 2 else math.nan,
            "median": float(np.median(finite)) if n else math.nan,
            "min": float(finite.min()) if n else math.nan,
            "max": float(finite.max()) if n else math.nan,
            "n_inf": int(np.count_nonzero(np.isinf(values))),
            "n_nan": int(np.count_nonzero(np.isnan(values))),
        }
    table = pd.DataFrame.from_dict(out, orient="index")[_SUMMARY_COLUMNS]
    table.index.name = "metric"
    return table.astype({"n": int, "n_inf": int, "n_nan": int})
