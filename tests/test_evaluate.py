"""Tests of iunet_nb.model.evaluate with golden values computed by hand or by brute force."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from iunet_nb.errors import GeometryError, InputError
from iunet_nb.model.evaluate import (dice, evaluate_case, hausdorff95, jaccard, precision, recall,
                               summarize, surface_dice, volume_difference, volume_ml)

SPACING = (2.5, 0.8, 0.7)  # (z, y, x) mm, as the conftest geometry


def _box(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 1
    return m


def _sphere(shape, center_vox, radius_mm, spacing) -> np.ndarray:
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, center_vox, spacing)],
                        indexing="ij", sparse=True)
    return (sum(g ** 2 for g in grids) <= radius_mm ** 2).astype(np.uint8)


def _border_points_mm(mask: np.ndarray, spacing) -> np.ndarray:
    """Physical (z, y, x) mm of voxels with a face neighbour outside (shift-based, no scipy)."""
    m = np.pad(mask.astype(bool), 1)
    inner = m[1:-1, 1:-1, 1:-1]
    all_nb = np.ones_like(inner)
    for axis in range(3):
        for step in (-1, 1):
            all_nb &= np.roll(m, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(inner & ~all_nb) * np.asarray(spacing, float)


def _brute_force(pred, ref, spacing, tol):
    """(hd95, nsd) from k-d tree nearest neighbours between surface point sets."""
    a, b = _border_points_mm(pred, spacing), _border_points_mm(ref, spacing)
    d_ab = cKDTree(b).query(a)[0]
    d_ba = cKDTree(a).query(b)[0]
    hd95 = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    nsd = (np.sum(d_ab <= tol) + np.sum(d_ba <= tol)) / (a.shape[0] + b.shape[0])
    return hd95, nsd


# -- overlap --------------------------------------------------------------------------------------
def test_two_overlapping_cubes_by_hand():
    shape = (12, 12, 14)
    ref = _box(shape, (2, 2, 2), (8, 8, 8))    # 216 voxels
    pred = _box(shape, (2, 2, 4), (8, 8, 12))  # 288 voxels, overlap 6 * 6 * 4 = 144
    assert dice(pred, ref) == pytest.approx(2 * 144 / (216 + 288))  # 4/7
    assert jaccard(pred, ref) == pytest.approx(144 / (216 + 288 - 144))
    assert precision(pred, ref) == pytest.approx(0.5)
    assert recall(pred, ref) == pytest.approx(2 / 3)
    assert volume_difference(pred, ref) == pytest.approx(1 / 3)
    assert volume_difference(ref, pred) == pytest.approx(-0.25)
    assert dice(ref.astype(bool), ref) == 1.0


@pytest.mark.parametrize("shift", [0, 1, 3, 5])
def test_jaccard_dice_relation(shift):
    shape = (10, 16, 16)
    ref = _box(shape, (2, 3, 3), (8, 11, 12))
    pred = np.roll(ref, shift, axis=2)
    d = dice(pred, ref)
    assert jaccard(pred, ref) == pytest.approx(d / (2 - d), abs=1e-12)


def test_volume_ml_of_a_known_box():
    mask = _box((20, 30, 40), (5, 5, 5), (15, 25, 35))  # 10 x 20 x 30 = 6000 voxels
    # 6000 voxels x (2.5 * 0.8 * 0.7 = 1.4 mm^3) = 8400 mm^3 = 8.4 mL
    assert volume_ml(mask, SPACING) == pytest.approx(8.4)
    assert volume_ml(np.zeros((3, 3, 3), bool), SPACING) == 0.0
    with pytest.raises(GeometryError, match="spacing_mm"):
        volume_ml(mask, (2.5, 0.0, 0.7))


# -- surface --------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 3])
def test_spheres_shifted_along_the_coarse_axis(k):
    shape = (24, 48, 52)
    ref = _sphere(shape, (11, 23, 25), 12.0, SPACING)
    pred = _sphere(shape, (11 + k, 23, 25), 12.0, SPACING)
    hd = hausdorff95(pred, ref, SPACING)
    golden_hd, golden_nsd = _brute_force(pred, ref, SPACING, 2.0)
    assert hd == pytest.approx(golden_hd, abs=1e-6)
    # the caps are flat and a k-slice shift moves them by k * 2.5 mm
    assert hd == pytest.approx(k * SPACING[0], rel=0.1)
    nsd = surface_dice(pred, ref, SPACING, tolerance_mm=2.0)
    assert nsd == pytest.approx(golden_nsd, abs=1e-9)
    assert nsd < 1.0  # shift 2.5 mm or more > 2 mm tolerance


def test_shift_along_fine_axis_and_border_touching_masks():
    shape = (10, 20, 30)
    ref = _box(shape, (0, 4, 0), (6, 15, 20))  # touches three image faces
    pred = _box(shape, (0, 4, 4), (7, 16, 26))
    golden_hd, golden_nsd = _brute_force(pred, ref, SPACING, 1.5)
    assert hausdorff95(pred, ref, SPACING) == pytest.approx(golden_hd, abs=1e-6)
    assert surface_dice(pred, ref, SPACING, 1.5) == pytest.approx(golden_nsd, abs=1e-9)
    # The whole image: its surface is the outer shell, distance to itself 0.
    full = np.ones((4, 5, 6), np.uint8)
    assert hausdorff95(full, full, SPACING) == 0.0


def test_hd95_is_the_larger_directed_percentile():
    """An extra blob far away: only pred -> ref distances grow, and hd95 follows them."""
    shape = (12, 30, 40)
    ref = _box(shape, (2, 5, 5), (10, 25, 20))
    pred = ref.copy()
    pred[4:8, 10:20, 30:36] = 1  # blob 10 voxels (7 mm) beyond the box along x
    hd = hausdorff95(pred, ref, SPACING)
    golden_hd, golden_nsd = _brute_force(pred, ref, SPACING, 2.0)
    assert hd == pytest.approx(golden_hd, abs=1e-6)
    assert hd > 7.0  # the blob is at least 11 voxels x 0.7 mm from the box surface
    assert hausdorff95(ref, pred, SPACING) == pytest.approx(hd)  # symmetric
    assert surface_dice(pred, ref, SPACING, 2.0) == pytest.approx(golden_nsd, abs=1e-9)


def test_nsd_identical_is_one_and_tolerance_behaviour():
    shape = (20, 40, 40)
    ref = _sphere(shape, (9.5, 19.5, 19.5), 10.0, SPACING)
    assert surface_dice(ref, ref, SPACING, 0.0) == 1.0
    assert hausdorff95(ref, ref, SPACING) == 0.0
    shifted = np.roll(ref, 2, axis=0)  # 5 mm along z
    assert surface_dice(shifted, ref, SPACING, 2.0) < 0.9
    assert surface_dice(shifted, ref, SPACING, 5.0 + 1e-6) == 1.0
    with pytest.raises(InputError, match="tolerance_mm"):
        surface_dice(shifted, ref, SPACING, -1.0)


def test_empty_prediction_and_empty_reference():
    shape = (8, 9, 10)
    ref = _box(shape, (2, 2, 2), (5, 6, 7))
    empty = np.zeros(shape, np.uint8)
    assert dice(empty, ref) == 0.0
    assert jaccard(empty, ref) == 0.0
    assert precision(empty, ref) == 0.0
    assert recall(empty, ref) == 0.0
    assert volume_difference(empty, ref) == -1.0
    assert hausdorff95(empty, ref, SPACING) == math.inf
    assert surface_dice(empty, ref, SPACING, 2.0) == 0.0
    row = evaluate_case(empty, ref, SPACING)
    assert row["dice"] == 0.0 and row["hd95_mm"] == math.inf and row["surface_dice"] == 0.0
    metrics = [dice, jaccard, precision, recall, volume_difference,
               lambda p, r: hausdorff95(p, r, SPACING),
               lambda p, r: surface_dice(p, r, SPACING, 2.0),
               lambda p, r: evaluate_case(p, r, SPACING)]
    for metric in metrics:
        with pytest.raises(InputError, match="empty reference mask"):
            metric(ref, empty)


def test_shape_dtype_and_spacing_errors():
    a = np.zeros((4, 5, 6), np.uint8)
    a[1, 1, 1] = 1
    b = np.zeros((4, 5, 7), np.uint8)
    b[1, 1, 1] = 1
    for metric in (dice, jaccard, precision, recall, volume_difference):
        with pytest.raises(GeometryError, match="differ"):
            metric(a, b)
    with pytest.raises(GeometryError, match="differ"):
        hausdorff95(a, b, SPACING)
    with pytest.raises(GeometryError, match="spacing_mm"):
        hausdorff95(a, a, (1.0, 1.0))
    with pytest.raises(InputError, match="threshold probabilities"):
        dice(a.astype(np.float32), a)
    with pytest.raises(InputError, match="3D"):
        dice(a[0], a[0])


# -- per case and summary ------------------------------------------------------------------------
def test_evaluate_case_matches_the_single_metrics():
    shape = (16, 30, 34)
    ref = _sphere(shape, (7, 14, 16), 9.0, SPACING)
    pred = _sphere(shape, (8, 15, 14), 8.0, SPACING)
    row = evaluate_case(pred, ref, SPACING, tolerance_mm=1.5, case_id="p07")
    assert list(row)[0] == "case_id" and row["case_id"] == "p07"
    assert row["dice"] == pytest.approx(dice(pred, ref))
    assert row["jaccard"] == pytest.approx(jaccard(pred, ref))
    assert row["precision"] == pytest.approx(precision(pred, ref))
    assert row["recall"] == pytest.approx(recall(pred, ref))
    assert row["volume_difference"] == pytest.approx(volume_difference(pred, ref))
    assert row["volume_pred_ml"] == pytest.approx(volume_ml(pred, SPACING))
    assert row["volume_ref_ml"] == pytest.approx(volume_ml(ref, SPACING))
    assert row["hd95_mm"] == pytest.approx(hausdorff95(pred, ref, SPACING))
    assert row["surface_dice"] == pytest.approx(surface_dice(pred, ref, SPACING, 1.5))
    assert 0.0 < row["surface_dice"] < 1.0 and 0.0 < row["dice"] < 1.0
    assert "case_id" not in evaluate_case(pred, ref, SPACING)


def test_summarize_excludes_infinities_and_counts_them():
    rows = [
        {"case_id": "a", "dice": 0.8, "hd95_mm": 4.0},
        {"case_id": "b", "dice": 0.6, "hd95_mm": 8.0},
        {"case_id": "c", "dice": 0.0, "hd95_mm": math.inf},
        {"case_id": "d", "dice": 0.7, "hd95_mm": 6.0},
    ]
    table = summarize(rows)
    assert list(table.index) == ["dice", "hd95_mm"]
    assert list(table.columns) == ["n", "mean", "sd", "median", "min", "max", "n_inf",
                                   "n_nan"]
    assert table.loc["dice", "n"] == 4
    assert table.loc["dice", "mean"] == pytest.approx(2.1 / 4)
    assert table.loc["dice", "median"] == pytest.approx(0.65)
    assert table.loc["dice", "sd"] == pytest.approx(np.std([0.8, 0.6, 0.0, 0.7], ddof=1))
    assert table.loc["hd95_mm", "n"] == 3 and table.loc["hd95_mm", "n_inf"] == 1
    assert table.loc["hd95_mm", "mean"] == pytest.approx(6.0)
    assert table.loc["hd95_mm", "sd"] == pytest.approx(2.0)
    assert table.loc["hd95_mm", "max"] == 8.0 and table.loc["hd95_mm", "min"] == 4.0
    same = summarize(pd.DataFrame(rows))
    pd.testing.assert_frame_equal(table, same)
    with pytest.raises(InputError, match="at least one"):
        summarize([])
    with pytest.raises(InputError, match="no numeric"):
        summarize([{"case_id": "a"}])


def test_summarize_of_evaluate_case_rows():
    shape = (12, 20, 20)
    ref = _box(shape, (3, 5, 5), (9, 15, 15))
    rows = [evaluate_case(np.roll(ref, s, axis=2), ref, SPACING, case_id=f"c{s}")
            for s in (0, 1, 2)]
    rows.append(evaluate_case(np.zeros(shape, np.uint8), ref, SPACING, case_id="empty"))
    table = summarize(rows)
    assert table.loc["dice", "max"] == 1.0 and table.loc["dice", "min"] == 0.0
    assert table.loc["hd95_mm", "n_inf"] == 1 and table.loc["hd95_mm", "n"] == 3
    assert np.isfinite(table.loc["hd95_mm", "mean"])
    assert "case_id" not in table.index
