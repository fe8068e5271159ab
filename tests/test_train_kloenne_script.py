"""scripts/train_kloenne.py: the synthetic liver cases (square field, liver-scan slices) and
the configuration it trains."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from conftest import load_script, make_ellipsoid

from iunet_nb.errors import InputError
from iunet_nb.io.images import write_mask
from iunet_nb.io.volume import Geometry, Volume
from iunet_nb.systems.kloenne import KloenneConfig


@pytest.fixture(scope="module")
def script():
    yield from load_script("train_kloenne")


def _pair(shape=(10, 12, 16), spacing=(2.0, 2.0, 2.0)):
    g = Geometry(spacing_mm=spacing, origin_mm=(-5.0, 7.0, 3.0),
                 direction=(1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    mask = np.zeros(shape, np.uint8)
    mask[4:7, 5:8, 6:10] = 1
    ct = np.random.default_rng(0).normal(40, 10, shape).astype(np.float32)
    return Volume(ct, g), Volume(mask, g)


def test_square_fov_pads_with_air_and_keeps_every_voxel_in_place(script):
    ct, mask = _pair()
    out_ct, out_mask = script.square_fov(ct, mask, side_mm=40.0, rng=3)   # 20 x 20 voxels
    assert out_ct.shape == out_mask.shape == (10, 20, 20)
    assert out_ct.geometry == out_mask.geometry
    # where the old voxel (0, 0, 0) went: the padding before each axis
    idx = np.argwhere(out_ct.array == ct.array[0, 0, 0])
    assert len(idx) == 1
    z, y, x = idx[0]
    assert z == 0 and 2 <= y <= 6 and 1 <= x <= 3     # 8 and 4 voxels split 0.3..0.7
    np.testing.assert_array_equal(out_ct.array[:, y:y + 12, x:x + 16], ct.array)
    np.testing.assert_array_equal(out_mask.array[:, y:y + 12, x:x + 16], mask.array)
    assert out_mask.array.sum() == mask.array.sum()
    pad = np.ones(out_ct.shape, bool)
    pad[:, y:y + 12, x:x + 16] = False
    assert (out_ct.array[pad] == script.AIR_HU).all()
    np.testing.assert_allclose(out_ct.geometry.index_to_physical([0, y, x]),
                               ct.geometry.index_to_physical([0, 0, 0]), atol=1e-6)
    # an axis already as long as the field is left alone (never cropped)
    same_ct, _ = script.square_fov(ct, mask, side_mm=20.0, rng=3)
    assert same_ct.shape == ct.shape and same_ct.geometry == ct.geometry


def test_crop_slices_keeps_the_target_and_its_margins(script):
    ct, mask = _pair()
    out_ct, out_mask = script.crop_slices(ct, mask, (2.0, 4.0))   # 1 slice before, 2 after
    assert out_ct.shape == (6, 12, 16)
    np.testing.assert_array_equal(out_ct.array, ct.array[3:9])
    np.testing.assert_array_equal(out_mask.array, mask.array[3:9])
    np.testing.assert_allclose(out_ct.geometry.index_to_physical([0, 0, 0]),
                               ct.geometry.index_to_physical([3, 0, 0]), atol=1e-6)
    wide_ct, _ = script.crop_slices(ct, mask, (100.0, 100.0))     # clipped at the ends
    assert wide_ct.shape == ct.shape
    empty = mask.with_array(np.zeros_like(mask.array))
    assert script.crop_slices(ct, empty, (0.0, 0.0))[0] is ct


def _label_map(shape=(16, 24, 28)):
    g = Geometry(spacing_mm=(2.0, 2.0, 2.0))
    labels = np.zeros(shape, np.uint8)
    labels[make_ellipsoid(shape, center=(7, 11, 10), radii=(4, 7, 8)) > 0] = 6    # liver
    labels[make_ellipsoid(shape, center=(9, 12, 21), radii=(3, 4, 3)) > 0] = 1    # spleen
    return Volume(labels, g)


def test_make_liver_case_is_the_liver_on_a_square_field_and_reproducible(script):
    labels = _label_map()
    kw = dict(seed=5, phase="arterial", wide_quality=True, lesion_fraction=1.0,
              side_mm=64.0, margins_mm=(2.0, 0.0))
    ct, mask = script.make_liver_case(labels, **kw)
    assert ct.shape == mask.shape and ct.shape[1:] == (32, 32)
    assert ct.array.dtype == np.float32 and mask.array.dtype == np.uint8
    assert set(np.unique(mask.array)) == {0, 1}
    assert mask.array.sum() == (labels.array == 6).sum()           # the whole liver, no spleen
    z = np.flatnonzero((labels.array == 6).any(axis=(1, 2)))
    assert ct.shape[0] == z[-1] - z[0] + 2                         # 1 slice margin before
    again, _ = script.make_liver_case(labels, **kw)
    np.testing.assert_array_equal(ct.array, again.array)


def test_synth_liver_cases_reads_btcv_maps_and_draws_per_case(script, tmp_path):
    for i in (1, 2):
        write_mask(_label_map(), tmp_path / f"000{i}.nii.gz")
    cases = script.SynthLiverCases(tmp_path, syntheses=2, seed=11, phases="arterial:1",
                                   wide_quality=False, lesion_fraction=0.0,
                                   fov_mm=(60.0, 70.0))
    assert len(cases) == 4 and cases.phase_counts() == {"arterial": 4}
    sides = [job[3] for job in cases.jobs]
    assert all(60.0 <= s <= 70.0 for s in sides) and len(set(sides)) == 4
    ct, mask = cases[3]
    assert ct.shape == mask.shape and mask.array.sum() > 0
    with pytest.raises(InputError, match="does not exist"):
        script.SynthLiverCases(tmp_path / "none", 1, 0, "arterial:1", False, 0.0, (60.0, 70.0))


def test_build_config_cpu_scale_and_the_seeds_full_scale(script):
    ns = dict(arch="unet", dims=2, slice_size=128, base_channels=12, depth=5, msd_layers=0,
              batch_size=12, iterations=0, lr=1e-3, seed=4, background_slices=0.25)
    cpu = script.build_config(argparse.Namespace(scale="cpu", **ns))
    assert (cpu.slice_size, cpu.base_channels, cpu.effective_batch, cpu.iterations) == \
        (128, 12, 12, 7000)
    assert cpu.stats_volumes == 10 and cpu.percentiles == (0.6, 0.99) and cpu.seed == 4
    assert cpu.background_slices == 0.25
    full = script.build_config(argparse.Namespace(scale="full", **ns))
    seed_defaults = KloenneConfig()
    assert (full.base_channels, full.effective_batch, full.iterations) == \
        (seed_defaults.base_channels, 28, 10000)
