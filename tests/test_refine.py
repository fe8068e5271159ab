"""Tests of the refinement helpers that need no Session (iunet_nb.refine)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from iunet_nb.errors import ConfigError
from iunet_nb.refine import RefineConfig, _refine_target, _refine_weights, _stroke_direction


def test_refine_target_sets_scribble_voxels_to_their_label_on_a_copy():
    mask = np.zeros((2, 3, 4), np.uint8)
    mask[0, 1, 1:3] = 1
    scribbles = np.zeros_like(mask)
    scribbles[1, 2, 3] = 1  # foreground on background
    scribbles[0, 1, 2] = 2  # background on foreground
    scribbles[0, 1, 1] = 1  # foreground on foreground: stays 1
    before = mask.copy()
    target = _refine_target(mask, scribbles)
    expected = np.zeros_like(mask)
    expected[0, 1, 1] = expected[1, 2, 3] = 1
    np.testing.assert_array_equal(target, expected)
    np.testing.assert_array_equal(mask, before)  # the input is not changed


@pytest.mark.parametrize(("labels", "direction"), [({1}, 1), ({2}, -1), ({1, 2}, 0)])
def test_stroke_direction_of_scribble_labels(labels, direction):
    assert _stroke_direction(labels) == direction


def test_refine_weights_use_the_configs_band_and_scribble_weight():
    # one scribble voxel in the middle, Euclidean distance in mm ("none", geodesic_lam=0):
    # a 1.5 mm band holds the 6 face (1 mm) and 12 edge (1.41 mm) neighbours, not the
    # 8 corners (1.73 mm) nor anything 2 mm away
    shape, centre = (5, 7, 7), (2, 3, 3)
    image = np.zeros(shape, np.float32)
    scribbles = np.zeros(shape, np.uint8)
    scribbles[centre] = 1
    cfg = RefineConfig(threshold=1.5, normalisation="none", geodesic_lam=0.0,
                       scribble_weight=5.0)
    w = _refine_weights(image, scribbles, (1.0, 1.0, 1.0), cfg)
    expected = np.ones(shape, np.float32)
    for off in itertools.product((-1, 0, 1), repeat=3):
        if 0 < sum(abs(o) for o in off) <= 2:
            expected[tuple(c + o for c, o in zip(centre, off))] = 0.0
    expected[centre] = 5.0
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, expected)
    assert int(np.count_nonzero(w == 0)) == 18
    # threshold 0: no band at all
    w0 = _refine_weights(image, scribbles, (1.0, 1.0, 1.0),
                         RefineConfig(threshold=0.0, normalisation="none", geodesic_lam=0.0))
    assert int(np.count_nonzero(w0 == 0)) == 0 and w0[centre] == 3.0


def test_refine_config_rejects_an_unknown_normalisation():
    with pytest.raises(ConfigError, match="normalisation must be one of"):
        RefineConfig(normalisation="mean")
