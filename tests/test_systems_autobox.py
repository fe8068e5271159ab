"""Automatic box for iUnet: detector probabilities -> Box, component filtering, recall."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_ellipsoid

from iunet_nb.errors import ConfigError, InputError
from iunet_nb.preprocess import Box
from iunet_nb.systems import zhou
from iunet_nb.systems.autobox import (BoxDetector, box_contains, box_recall, detect_box,
                                      settle_box)
from iunet_nb.volume import Geometry, Volume


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
