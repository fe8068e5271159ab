"""Synthetic CT: determinism, geometry, HU ranges, noise texture, phantom, bundled sample."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest
from scipy import ndimage as ndi

from iunet_nb.errors import ConfigError, InputError
from iunet_nb.realism import noise_texture
from iunet_nb.synth import (
    BTCV,
    PHANTOM_LABELS,
    TISSUE,
    SynthConfig,
    load_sample,
    make_phantom,
    phantom_labels,
    synthesize,
    synthesize_ct,
)
from iunet_nb.volume import Geometry, Volume

SMALL = {"shape_zyx": (24, 64, 64), "spacing_mm": (2.5, 2.0, 2.0)}


@pytest.fixture(scope="module")
def labels() -> Volume:
    return phantom_labels(7, **SMALL)


@pytest.fixture(scope="module")
def case(labels: Volume):
    return synthesize(labels, label_table=PHANTOM_LABELS, rng=3)


def _eroded(mask: np.ndarray, spacing, mm: float) -> np.ndarray:
    return ndi.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1] > mm


def test_same_seed_same_array_different_seed_different(labels, case):
    again = synthesize_ct(labels, label_table=PHANTOM_LABELS, rng=3)
    np.testing.assert_array_equal(again.array, case.ct.array)
    other = synthesize_ct(labels, label_table=PHANTOM_LABELS, rng=4)
    assert np.abs(other.array - case.ct.array).mean() > 5.0
    gen = synthesize_ct(labels, label_table=PHANTOM_LABELS, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(gen.array, case.ct.array)


def test_geometry_dtype_and_labels_untouched(labels):
    geom = Geometry(spacing_mm=labels.spacing_mm, origin_mm=(-12.5, 40.0, 300.0),
                    direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    arr = labels.array.copy()
    arr.flags.writeable = False              # any in-place write would raise
    before = arr.copy()
    ct = synthesize_ct(Volume(arr, geom), label_table=PHANTOM_LABELS, rng=0)
    assert ct.array.dtype == np.float32 and ct.shape == arr.shape
    assert ct.geometry.is_close(geom, atol=0)
    np.testing.assert_array_equal(arr, before)
    assert -1024 <= ct.array.min() and ct.array.max() <= 3071


def test_organ_hu_within_documented_ranges(labels, case):
    cfg = SynthConfig()
    ct, p = case.ct.array, case.params
    sp = labels.spacing_mm
    for name, key in (("pancreas", "pancreas_hu"), ("liver", "liver_hu"), ("spleen", "spleen_hu")):
        lo, hi = getattr(cfg, key)
        assert lo <= p[key] <= hi
        core = _eroded(labels.array == PHANTOM_LABELS[name], sp, 3.0)
        mean = float(ct[core].mean())
        # texture (sd <= 8 HU, low frequency) and noise move the regional mean a little
        assert abs(mean - p[key]) < 10.0, (name, mean, p[key])
        assert lo - 10 <= mean <= hi + 10


def test_noise_sd_in_range_and_spatially_correlated(labels, case):
    core = _eroded(labels.array == PHANTOM_LABELS["liver"], labels.spacing_mm, 4.0)
    tex = noise_texture(case.ct, core)
    assert 5.0 <= tex.local_sd_hu <= 25.0, tex.local_sd_hu
    assert tex.neighbour_corr_zyx[2] > 0.3 and tex.neighbour_corr_zyx[1] > 0.3
    # white noise would give about 0; check the measure can fail
    white = Volume(np.random.default_rng(0).normal(100, 15, case.ct.shape).astype(np.float32),
                   case.ct.geometry)
    assert noise_texture(white, core).neighbour_corr_zyx[2] < 0.1


def test_anatomy_body_encloses_labels_spine_behind_aorta(labels, case):
    t = case.tissue.array
    body = t != TISSUE["air"]
    fg = ndi.binary_dilation(labels.array > 0, iterations=2)
    assert body[fg].all()
    bone = np.isin(t, [TISSUE["bone_trabecular"], TISSUE["bone_cortical"]])
    aorta = labels.array == PHANTOM_LABELS["aorta"]
    # phantom is LPS: array y grows posterior; the vertebral bodies lie behind the aorta
    assert bone.any() and np.nonzero(bone)[1].mean() > np.nonzero(aorta)[1].mean()
    for name in ("fat", "muscle", "bowel_wall"):
        assert (t == TISSUE[name]).sum() > 1000, name
    assert case.params["orientation_ap_lr_si"] == [-1.0, 1.0, 1.0]


def test_orientation_read_from_anatomy(labels):
    flipped = Volume(np.ascontiguousarray(labels.array[:, ::-1]), labels.geometry)
    c = synthesize(flipped, label_table=PHANTOM_LABELS, rng=0)
    assert c.params["orientation_ap_lr_si"][0] == 1.0
    bone = np.isin(c.tissue.array, [TISSUE["bone_trabecular"], TISSUE["bone_cortical"]])
    aorta = flipped.array == PHANTOM_LABELS["aorta"]
    assert np.nonzero(bone)[1].mean() < np.nonzero(aorta)[1].mean()


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_phantom_pancreas_volume(seed):
    lab = phantom_labels(seed, **SMALL)
    ml = (lab.array == PHANTOM_LABELS["pancreas"]).sum() * np.prod(SMALL["spacing_mm"]) / 1000
    assert 50.0 <= ml <= 150.0
    panc = np.nonzero(lab.array == PHANTOM_LABELS["pancreas"])
    aorta = np.nonzero(lab.array == PHANTOM_LABELS["aorta"])
    assert panc[1].min() < aorta[1].min()          # some pancreas lies anterior to the aorta


def test_make_phantom_shape_and_mask():
    ct, mask = make_phantom(11)
    assert ct.shape == mask.shape == (48, 128, 128)
    assert ct.spacing_mm == (2.5, 1.5, 1.5) and ct.geometry.is_close(mask.geometry)
    assert ct.array.dtype == np.float32 and mask.array.dtype == np.uint8
    assert set(np.unique(mask.array)) == {0, 1}
    ml = mask.array.sum() * 2.5 * 1.5 * 1.5 / 1000
    assert 50 <= ml <= 150
    assert 70 < float(ct.array[_eroded(mask.array > 0, ct.spacing_mm, 2.0)].mean()) < 130


def test_bad_input_raises():
    with pytest.raises(InputError, match="integer labels"):
        synthesize_ct(Volume(np.zeros((8, 8, 8), np.float32)))
    with pytest.raises(InputError, match="as a Volume"):
        synthesize_ct(np.zeros((8, 8), np.uint8))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="empty"):
        synthesize_ct(Volume(np.zeros((8, 8, 8), np.uint8)))
    lab = np.zeros((8, 8, 8), np.uint8)
    lab[2:5, 2:5, 2:5] = 42
    with pytest.raises(InputError, match=r"\[42\] are not in label_table"):
        synthesize_ct(Volume(lab), label_table=BTCV)
    with pytest.raises(InputError, match="too small"):
        synthesize_ct(Volume(np.ones((2, 8, 8), np.uint8)))
    with pytest.raises(InputError, match="at least 8 x 32 x 32"):
        make_phantom(0, shape_zyx=(4, 16, 16))


def test_config_validation_and_json_round_trip():
    with pytest.raises(ConfigError, match="liver_hu"):
        SynthConfig(liver_hu=(130.0, 100.0))
    cfg = SynthConfig(noise_sd_hu=(5.0, 6.0))
    assert SynthConfig.from_json(cfg.to_json()) == cfg


def test_config_ranges_are_used(labels):
    cfg = SynthConfig(noise_sd_hu=(30.0, 30.0), texture_sd_hu=(0.0, 0.0))
    c = synthesize(labels, label_table=PHANTOM_LABELS, rng=1, config=cfg)
    assert c.params["noise_sd_hu"] == 30.0
    core = _eroded(labels.array == PHANTOM_LABELS["liver"], labels.spacing_mm, 4.0)
    assert noise_texture(c.ct, core).local_sd_hu > 18.0


def test_load_sample_matches_card_and_regenerates():
    ct, mask = load_sample()
    card = json.loads((resources.files("iunet_nb") / "assets" / "sample.json").read_text())
    assert ct.shape == tuple(card["shape_zyx"]) and ct.array.dtype == np.int16
    assert np.allclose(ct.spacing_mm, card["spacing_mm"], atol=1e-4)
    ml = mask.array.sum() * np.prod(ct.spacing_mm) / 1000
    assert ml == pytest.approx(card["pancreas_ml"], abs=0.01)
    assert 50 <= ml <= 150 and ct.meta["seed"] == card["seed"]
    size = sum(len((resources.files("iunet_nb") / "assets" / n).read_bytes())
               for n in ("sample_ct.nii.gz", "sample_pancreas.nii.gz"))
    assert size <= 5_000_000
    ct2, mask2 = make_phantom(card["seed"], shape_zyx=tuple(card["shape_zyx"]),
                              spacing_mm=tuple(card["spacing_mm"]))
    np.testing.assert_array_equal(mask2.array, mask.array)
    diff = np.abs(np.clip(np.rint(ct2.array), -1024, 3071) - ct.array)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert np.allclose(ct2.geometry.origin_mm, ct.geometry.origin_mm, atol=1e-3)
