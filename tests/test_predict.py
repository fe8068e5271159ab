"""Prediction: box handling, geometry kept, probabilities back on the CT's grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iunet_nb.errors import InputError
from iunet_nb.model.predict import make_box, predict_probabilities, segment
from iunet_nb.model.preprocess import Box, PreprocessConfig

CFG = PreprocessConfig(size_zyx=(8, 16, 16))


class _Oracle(torch.nn.Module):
    """A 'network' whose foreground logit is the (preprocessed) intensity: bright = organ."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-8 * x, 8 * x], dim=1)


def test_segment_keeps_geometry_and_finds_the_bright_organ(ellipsoid_case):
    ct, ref = ellipsoid_case
    box = make_box(ct, reference=ref)
    mask = segment(ct, _Oracle(), box, CFG)
    assert mask.geometry == ct.geometry and mask.shape == ct.shape
    assert mask.array.dtype == np.uint8
    inter = np.logical_and(mask.array, ref.array).sum()
    assert 2 * inter / (mask.array.sum() + ref.array.sum()) > 0.85
    # nothing outside the crop
    lo, hi = box.lo_zyx, box.hi_zyx
    outside = mask.array.copy()
    outside[max(lo[0] - 2, 0):hi[0] + 2, max(lo[1] - 2, 0):hi[1] + 2, max(lo[2] - 2, 0):hi[2] + 2] = 0
    assert not outside.any()


def test_probabilities_are_zero_outside_the_crop(ellipsoid_case):
    ct, ref = ellipsoid_case
    box = Box((2, 2, 2), (10, 12, 14))
    prob = predict_probabilities(_Oracle(), ct, box, CFG)
    assert prob.shape == ct.shape and prob.dtype == np.float32
    assert prob[20:].max() == 0 and prob[:, 25:].max() == 0
    assert 0 <= prob.min() and prob.max() <= 1


def test_make_box_from_voxels_physical_and_reference(ellipsoid_case):
    ct, ref = ellipsoid_case
    from_ref = make_box(ct, reference=ref)
    assert make_box(ct, voxel=[*from_ref.lo_zyx, *from_ref.hi_zyx]) == from_ref
    g = ct.geometry
    corner_lo = g.index_to_physical(np.array(from_ref.lo_zyx, float))
    corner_hi = g.index_to_physical(np.array(from_ref.hi_zyx, float) - 1)
    phys = make_box(ct, physical_mm=[*corner_lo, *corner_hi])
    assert phys.lo_zyx == from_ref.lo_zyx and phys.hi_zyx == from_ref.hi_zyx


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one"),
    ({"voxel": [0, 0, 0, 5, 5]}, "6 integers"),
    ({"voxel": [0, 0, 0, 500, 5, 5]}, "outside"),
])
def test_make_box_errors(ellipsoid_case, kwargs, match):
    ct, _ = ellipsoid_case
    with pytest.raises(InputError, match=match):
        make_box(ct, **kwargs)


class _UpperRows(torch.nn.Module):
    """Foreground where bright, in the first half of the working rows only: its output
    depends on which anatomical axis the working grid's rows follow."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = 8 * x
        fg[..., x.shape[-2] // 2:, :] = -8.0
        return torch.cat([-fg, fg], dim=1)


def test_a_ct_stored_otherwise_gives_the_same_mask_in_physical_space(ellipsoid_case):
    import SimpleITK as sitk

    from iunet_nb.io.volume import Volume

    ct, ref = ellipsoid_case     # direction diag(1, -1, 1): y stored posterior-to-anterior

    def stored(v):
        return Volume.from_sitk(sitk.Flip(sitk.PermuteAxes(v.to_sitk(), [2, 0, 1]),
                                          [False, True, True]))

    def back(v):
        img = v.to_sitk()
        return sitk.GetArrayFromImage(sitk.Resample(img, ct.to_sitk(), sitk.Transform(),
                                                    sitk.sitkNearestNeighbor, 0,
                                                    img.GetPixelID()))

    copy_ct, copy_ref = stored(ct), stored(ref)
    m1 = segment(ct, _UpperRows(), make_box(ct, reference=ref), CFG)
    m2 = segment(copy_ct, _UpperRows(), make_box(copy_ct, reference=copy_ref), CFG)
    assert 0 < m1.array.sum() < ref.array.sum()   # only part of the organ: rows matter
    assert m2.geometry == copy_ct.geometry
    np.testing.assert_array_equal(back(m2), m1.array)
