"""Automatic box for iUnet: detector probabilities -> Box, component filtering, recall."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_ellipsoid

from iunet_nb.errors import ConfigError, InputError
from iunet_nb.model.preprocess import Box
from iunet_nb.systems import zhou
from iunet_nb.systems.autobox import (BoxDetector, box_contains, box_recall, detect_box,
                                      settle_box)
from iunet_nb.io.volume import Geometry, Volume


@pytest.fixture
def ct():
    return Volume(np.zeros((20, 30, 40), np.float32), Geometry(spacing_mm=(2.0, 1.0, 1.0)))


def _prob(shape, organ, blob=None, p=0.9):
    prob = np.zeros(shape, np.float32)
    prob[organ] = p
    if blob is not None:
        prob[blob] = p
    return prob


ORGAN = (slice(5, 12), slice(10, 20), slice(8, 25))
BLOB = (slice(17, 19), slice(1, 3), slice(35, 37))   # 8 voxels, far away


def test_box_is_the_organ_and_small_far_components_are_dropped(ct):
    prob = _prob(ct.shape, ORGAN, BLOB)
    box = detect_box(ct, lambda v: prob, margin_mm=0)
    assert box == Box((5, 10, 8), (12, 20, 25))
    assert detect_box(ct, lambda v: prob, min_component_frac=0.0, margin_mm=0) == \
        Box((5, 1, 8), (19, 20, 37))


def test_threshold_decides_what_counts(ct):
    prob = _prob(ct.shape, ORGAN, p=0.9)
    prob[2:5, 10:20, 8:25] = 0.2            # a fringe above the organ
    assert detect_box(ct, lambda v: prob).lo_zyx == (5, 10, 8)                   # default 0.3
    assert detect_box(ct, lambda v: prob, threshold=0.1).lo_zyx == (2, 10, 8)


def test_margin_in_mm_is_converted_with_the_spacing_and_clipped(ct):
    prob = _prob(ct.shape, ORGAN)
    # spacing (2, 1, 1) mm: 10 mm = 5 slices and 10 voxels in plane; x clipped at 0
    assert detect_box(ct, lambda v: prob) == Box((5, 10, 8), (12, 20, 25))   # default: none
    assert detect_box(ct, lambda v: prob, margin_mm=10) == Box((0, 0, 0), (17, 30, 35))
    assert detect_box(ct, lambda v: prob, margin_mm=3) == Box((3, 7, 5), (14, 23, 28))


def test_low_probabilities_fall_back_to_half_the_maximum(ct, caplog):
    prob = _prob(ct.shape, ORGAN, p=0.3)
    prob[6, 12, 10] = 0.4           # the peak; 0.3 >= 0.4 / 2 keeps the whole organ
    assert detect_box(ct, lambda v: prob, threshold=0.5, margin_mm=0) == \
        Box((5, 10, 8), (12, 20, 25))
    assert "using 0.200" in caplog.text


def test_nothing_found_and_bad_detectors_raise(ct):
    with pytest.raises(InputError, match="found no organ"):
        detect_box(ct, lambda v: np.full(v.shape, 0.01, np.float32))
    with pytest.raises(InputError, match="on the image's grid"):
        detect_box(ct, lambda v: np.zeros((2, 2, 2), np.float32))
    with pytest.raises(InputError, match="organ_probability"):
        detect_box(ct, 42)
    with pytest.raises(ConfigError, match="threshold"):
        detect_box(ct, lambda v: v.array, threshold=1.5)
    with pytest.raises(ConfigError, match="margin_mm"):
        detect_box(ct, lambda v: v.array, margin_mm=-1.0)


def _segmenter(shape, organ, margin=2):
    """A stand-in iUnet: the organ's voxels within ``margin`` voxels of the box (its crop)."""
    calls = []

    def segment(box):
        calls.append(box)
        mask = np.zeros(shape, np.uint8)
        mask[organ] = 1
        crop = box.expand((margin,) * 3).clip(shape)
        out = np.zeros_like(mask)
        out[crop.slices] = mask[crop.slices]
        return out
    return segment, calls


def test_settle_box_takes_the_box_of_the_segmenters_own_mask():
    shape = (20, 30, 40)
    seg, calls = _segmenter(shape, ORGAN)
    cut = Box((7, 12, 12), (12, 20, 25))        # the detector cut the organ at z 7, y 12, x 12
    assert box_recall(cut, _prob(shape, ORGAN)) < 0.6
    once = settle_box(cut, seg)
    assert once == Box((5, 10, 10), (12, 20, 25)) and calls == [cut]   # grown by the margin
    assert settle_box(cut, seg, passes=3) == Box((5, 10, 8), (12, 20, 25))  # whole organ
    calls.clear()
    assert settle_box(Box((5, 10, 8), (12, 20, 25)), seg, passes=5) == Box((5, 10, 8), (12, 20, 25))
    assert len(calls) == 1                      # a stable box stops at once
    assert settle_box(cut, seg, passes=0) == cut


def test_settle_box_keeps_the_box_when_the_mask_is_empty(caplog):
    box = Box((1, 1, 1), (5, 5, 5))
    assert settle_box(box, lambda b: np.zeros((8, 8, 8), np.uint8)) == box
    assert "empty" in caplog.text
    with pytest.raises(ConfigError, match="passes"):
        settle_box(box, lambda b: np.ones((8, 8, 8)), passes=-1)


def test_a_zhou_model_is_a_box_detector():
    mask = make_ellipsoid((16, 24, 24), radii=(4, 5, 6))
    ct = Volume(np.where(mask > 0, 150.0, -80.0).astype(np.float32))

    class Thresh(torch.nn.Module):
        min_size = 1

        def forward(self, x):
            return torch.where(x > 0, 50.0, -50.0)

    model = zhou.ZhouModel(zhou.ZhouConfig(base_channels=2, depth=3))
    for v in zhou.VIEWS:
        model.coarse[v] = Thresh()
        model.fine[v] = Thresh()
    assert isinstance(model, BoxDetector)
    box = detect_box(ct, model, margin_mm=0)
    assert box == Box.from_mask(mask)
    assert box_contains(box, mask)
    fine = detect_box(ct, lambda v: model.organ_probability(v, stage="fine"), margin_mm=0)
    assert fine == box


def test_box_recall_counts_voxels_inside():
    mask = np.zeros((4, 4, 4), np.uint8)
    mask[1:3, 1:3, 1:3] = 1                       # 8 voxels
    assert box_recall(Box((1, 1, 1), (3, 3, 3)), mask) == 1.0
    assert box_recall(Box((1, 1, 1), (2, 3, 3)), mask) == 0.5
    assert box_recall(Box((0, 0, 0), (9, 9, 2)), mask) == 0.5   # clipped to the image
    assert not box_contains(Box((1, 1, 1), (3, 3, 2)), mask)
    with pytest.raises(InputError, match="empty"):
        box_recall(Box((0, 0, 0), (1, 1, 1)), np.zeros((2, 2, 2)))


def test_a_box_over_half_the_image_is_flagged(ct, caplog):
    prob = np.full(ct.shape, 0.08, np.float32)        # an unsure detector: flat and low
    box = detect_box(ct, lambda v: prob, margin_mm=0)
    assert box == Box((0, 0, 0), ct.shape)
    assert "covers 100 % of the image" in caplog.text
    caplog.clear()
    detect_box(ct, lambda v: _prob(ct.shape, ORGAN), margin_mm=0)
    assert "covers" not in caplog.text


def test_detected_box_is_the_same_physical_box_for_a_copy_stored_otherwise():
    import SimpleITK as sitk

    g = Geometry(spacing_mm=(2.0, 1.0, 1.2), origin_mm=(3.0, -7.0, 11.0),
                 direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    mask = make_ellipsoid((16, 24, 28), center=(6.0, 9.0, 17.0), radii=(3, 5, 6))
    ct = Volume(np.where(mask > 0, 150.0, -80.0).astype(np.float32), g)
    copy = Volume.from_sitk(sitk.DICOMOrient(sitk.PermuteAxes(ct.to_sitk(), [2, 0, 1]), "ASL"))

    class UpperHalf(torch.nn.Module):
        """Bright voxels in the first half of each slice's rows: depends on the slicing."""

        min_size = 1

        def forward(self, x):
            out = torch.where(x > 0, 50.0, -50.0)
            out[..., x.shape[-2] // 2:, :] = -50.0
            return out

    class Nothing(torch.nn.Module):
        min_size = 1

        def forward(self, x):
            return torch.full_like(x, -50.0)

    model = zhou.ZhouModel(zhou.ZhouConfig(base_channels=2, depth=3))
    for v in zhou.VIEWS:   # only the axial view votes (1/3 after fusion, above 0.1)
        model.coarse[v] = UpperHalf() if v == "axial" else Nothing()
        model.fine[v] = model.coarse[v]
    b1, b2 = detect_box(ct, model, margin_mm=3.0), detect_box(copy, model, margin_mm=3.0)
    # the same physical box: corner voxel centres map to the same points (mm)
    c1 = ct.geometry.index_to_physical(np.array([b1.lo_zyx, np.array(b1.hi_zyx) - 1]))
    c2 = copy.geometry.index_to_physical(np.array([b2.lo_zyx, np.array(b2.hi_zyx) - 1]))
    np.testing.assert_allclose(np.sort(c1, axis=0), np.sort(c2, axis=0), atol=1e-6)
    assert b1.size != b2.size   # stored otherwise: the voxel box really differs


# --------------------------------------------------------------------------- confidence check
def _check(prob, detected, box, mask, spacing=(2.0, 2.0, 2.0), **kw):
    from iunet_nb.systems.autobox import check_box

    kept = prob >= 0.3
    return check_box(detected, box, prob, kept, mask, spacing, **kw)


def _pancreas_like(p=0.99):
    """A 60 x 100 x 100 image at 2 mm; a 'gland' box of 40 x 30 x 70 voxels (80 x 60 x 140 mm)."""
    shape = (60, 100, 100)
    organ = (slice(10, 50), slice(30, 60), slice(15, 85))
    prob = np.zeros(shape, np.float32)
    prob[organ] = p
    mask = np.zeros(shape, np.uint8)
    mask[12:48, 32:58, 20:80] = 1          # 36 * 26 * 60 voxels * 8 uL = 449 mL: too much
    thin = np.zeros(shape, np.uint8)
    thin[organ][::2, ::2, ::2] = 1           # 20 * 15 * 35 voxels = 84 mL
    return prob, Box((10, 30, 15), (50, 60, 85)), mask, thin


def test_a_confident_pancreas_sized_box_is_trusted():
    prob, box, _mask, thin = _pancreas_like()
    check = _check(prob, box, box, thin)
    assert not check.unsure and check.reasons == () and check.summary() == ""
    assert check.peak_probability == pytest.approx(0.99)
    assert check.mean_probability == pytest.approx(0.99)
    assert check.detected_mm == (80.0, 60.0, 140.0) and check.box_mm == (80.0, 60.0, 140.0)
    assert check.mask_ml == pytest.approx(20 * 15 * 35 * 8 / 1000)
    assert not check.z_border and check.moved_mm == 0.0
    d = check.to_dict()
    assert d["unsure"] is False and d["reasons"] == [] and d["box"] == box.to_dict()


def test_each_implausible_sign_gives_its_reason():
    prob, box, mask, thin = _pancreas_like(p=0.7)                      # peak 0.7 < 0.9
    check = _check(prob, box, box, thin)
    assert check.unsure and len(check.reasons) == 1 and "highest probability is 0.70" in \
        check.summary()
    prob, box, mask, thin = _pancreas_like()
    assert "mask holds 449 mL" in _check(prob, box, box, mask).summary()
    moved = Box((10, 30, 15), (50, 60, 65))                           # hi x moved 20 vox = 40 mm
    reasons = _check(prob, box, moved, thin).reasons
    assert any("disagrees with the detector's box by 40 mm" in r for r in reasons)
    tall = Box((0, 30, 15), (50, 60, 85))                             # reaches slice 0
    assert "reaches the first or last slice" in _check(prob, tall, box, thin).summary()
    vague = np.where(prob > 0, np.float32(0.35), np.float32(0))        # kept, but barely
    vague[30, 45, 50] = 0.99                                          # one confident voxel
    check = _check(vague, box, box, thin)
    assert check.reasons == ("the detector's mean probability in its box is 0.35 (< 0.4)",)
    small = Box((20, 40, 40), (25, 45, 50))                           # 10 x 10 x 20 mm
    assert "not a pancreas's size (z 10 mm, y 10 mm, x 20 mm" in \
        _check(prob, box, small, thin).summary()


def test_the_limits_are_the_measured_ones_and_can_be_changed():
    from iunet_nb.systems.autobox import BoxLimits

    lim = BoxLimits()
    # measured (RESULTS.md): synthetic peaks 0.986-1.000, real 0.646 / 0.651 / 0.833
    assert 0.833 < lim.min_peak_probability <= 0.986
    # the 30 BTCV pancreas boxes (z 48-144, y 56-110, x 98-170 mm) and volumes (35-150 mL) pass
    assert all(lo <= 48 and 144 <= hi for lo, hi in [(lim.min_box_mm[0], lim.max_box_mm[0])])
    assert lim.min_box_mm[1] <= 56 and lim.max_box_mm[1] >= 110
    assert lim.min_box_mm[2] <= 98 and lim.max_box_mm[2] >= 170
    assert lim.min_mask_ml <= 35 and lim.max_mask_ml >= 150
    prob, box, _mask, thin = _pancreas_like(p=0.7)
    assert not _check(prob, box, box, thin, limits=BoxLimits(min_peak_probability=0.5)).unsure


def test_find_box_detects_settles_and_checks():
    from iunet_nb.systems.autobox import find_box

    ct = Volume(np.zeros((60, 100, 100), np.float32), Geometry(spacing_mm=(2.0, 2.0, 2.0)))
    prob, box, _mask, thin = _pancreas_like()
    seen = []

    def segment(b):
        seen.append(b)
        return thin

    check = find_box(ct, segment, detector=lambda v: prob)
    assert seen == [box] and check.detected == box and check.box == Box.from_mask(thin)
    assert not check.unsure
    check = find_box(ct, segment, detector=lambda v: prob * 0.7)
    assert check.unsure and "highest probability" in check.summary()
