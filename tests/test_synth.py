"""Synthetic CT: determinism, geometry, HU ranges, noise texture, phantom, bundled sample."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest
from scipy import ndimage as ndi

from iunet_nb.errors import ConfigError, InputError
from iunet_nb.io.volume import Geometry, Volume
from iunet_nb.synth.generator import (
    BTCV,
    PHANTOM_LABELS,
    TISSUE,
    SynthConfig,
    load_sample,
    synthesize,
    synthesize_ct,
)
from iunet_nb.synth.phantom import grow_liver_to_spleen, make_phantom, phantom_labels
from iunet_nb.synth.realism import noise_texture

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


def test_noise_sd_in_range_and_high_frequency(labels, case):
    core = _eroded(labels.array == PHANTOM_LABELS["liver"], labels.spacing_mm, 4.0)
    tex = noise_texture(case.ct, core)
    assert 5.0 <= tex.local_sd_hu <= 25.0, tex.local_sd_hu
    # generator 1.0 (Gaussian-smoothed noise) gave neighbour correlation 0.41-0.50 in plane and
    # NPS mean frequency 0.12-0.15 cycles/mm on this 2 mm phantom; 2.0 gives 0.15-0.28 and 0.17-0.19
    assert tex.neighbour_corr_zyx[1] < 0.33 and tex.neighbour_corr_zyx[2] < 0.33, tex
    assert tex.mean_freq_per_mm > 0.16, tex.mean_freq_per_mm
    # smoothed noise of the same level fails these checks
    w = np.random.default_rng(0).normal(0, 1, case.ct.shape).astype(np.float32)
    smooth = Volume(100 + 15 * ndi.gaussian_filter(w, 0.8) / ndi.gaussian_filter(w, 0.8).std(),
                    case.ct.geometry)
    assert noise_texture(smooth, core).neighbour_corr_zyx[2] > 0.33


def _hankel_corr(peak: float, r_mm: float) -> float:
    """Autocorrelation at lag r of 2D isotropic noise with NPS f exp(-f^2 / 2 peak^2)."""
    from scipy import integrate, special

    def acf(r: float) -> float:
        return integrate.quad(lambda f: f * f * np.exp(-0.5 * (f / peak) ** 2)
                              * special.j0(2 * np.pi * f * r), 0, 12 * peak, limit=200)[0]

    return acf(r_mm) / acf(0.0)


@pytest.mark.parametrize("peak", [0.15, 0.25])
def test_ct_noise_matches_its_spectrum_golden(peak):
    from iunet_nb.synth.generator import _ct_noise

    sp = (1.6, 0.5, 0.5)        # fine grid: the spectrum is (almost) not aliased
    n = _ct_noise((24, 192, 192), sp, 12.0, peak, 0.9, np.random.default_rng(1))
    assert n.dtype == np.float32 and n.std() == pytest.approx(12.0, rel=1e-3)

    def corr(ax: int, lag: int) -> float:
        a, b = np.moveaxis(n, ax, 0)[:-lag], np.moveaxis(n, ax, 0)[lag:]
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    for lag in (1, 2):          # in plane: the Hankel transform of the NPS, computed independently
        want = _hankel_corr(peak, lag * 0.5)
        assert corr(1, lag) == pytest.approx(want, abs=0.03), (lag, want)
        assert corr(2, lag) == pytest.approx(want, abs=0.03), (lag, want)
    assert corr(0, 1) == pytest.approx(np.exp(-0.5 * (1.6 / 0.9) ** 2), abs=0.03)  # Gaussian in z
    # the real CT's texture (3D-IRCADb: NPS mean frequency 0.24-0.35 cycles/mm on 0.74-0.78 mm
    # pixels) is reproduced on its own grid (peak 0.25: 0.39, a slightly sharper kernel)
    fine = Volume(100 + _ct_noise((16, 160, 160), (1.6, 0.78, 0.78), 15.0, peak, 0.9,
                                  np.random.default_rng(2)), Geometry(spacing_mm=(1.6, 0.78, 0.78)))
    tex = noise_texture(fine, np.ones(fine.shape, bool))
    assert 0.22 <= tex.mean_freq_per_mm <= 0.41, tex.mean_freq_per_mm
    # on a 2 mm grid the peak lies above Nyquist: almost white
    coarse = _ct_noise((16, 96, 96), (2.0, 2.0, 2.0), 15.0, peak, 0.9, np.random.default_rng(3))
    c = np.corrcoef(coarse[:, :, :-1].ravel(), coarse[:, :, 1:].ravel())[0, 1]
    assert abs(c) < 0.12, c


def test_smooth_labels_rounds_off_a_staircase():
    from iunet_nb.synth.generator import _smooth_labels

    # a slanted plane labelled on thick slices: steps of 3 voxels every 3 slices along z
    z, y, x = np.mgrid[:30, :24, :24]
    stair = (y < 3 + 3 * (z // 3)).astype(np.uint8) * 6
    stair[:, :, 12:] = np.where(stair[:, :, 12:] == 6, 1, 0)   # second label beside it
    out = _smooth_labels(stair, (2.0, 2.0, 2.0), 2.0)
    assert out.dtype == stair.dtype and set(np.unique(out)) <= {0, 1, 6}

    def edge(lab: np.ndarray) -> np.ndarray:   # boundary position per slice (middle column)
        return (lab[:, :, 6] > 0).sum(1)[3:-3]

    # the smoothed boundary moves by at most 2 voxels per slice instead of 3 every third slice
    assert np.abs(np.diff(edge(stair))).max() == 3
    assert np.abs(np.diff(edge(out))).max() <= 2
    assert abs(int((out > 0).sum()) - int((stair > 0).sum())) < 0.03 * (stair > 0).sum()
    # adjacent labels stay adjacent (no background gap opens between them)
    assert ((out[:, :, 11] == 6) == (out[:, :, 12] == 1)).mean() > 0.95
    # a single stray voxel disappears
    speck = np.zeros((10, 10, 10), np.uint8)
    speck[5, 5, 5] = 3
    assert not _smooth_labels(speck, (2.0, 2.0, 2.0), 2.0).any()


def test_kidney_bone_fat_histogram_shapes(labels, case):
    # generator 1.0 on this phantom (seeds 3, 4): kidney bimodality coefficient 0.48, 0.53 (two
    # levels), bone p95 456, 628 HU, fat sd 15, 18 HU; 2.0: 0.34, 0.37, 1027, 1066 HU, 22, 22 HU
    import scipy.stats as ss

    bcs = []
    for seed in (3, 4):
        c = case if seed == 3 else synthesize(labels, label_table=PHANTOM_LABELS, rng=seed)
        a, t = c.ct.array, c.tissue.array
        v = a[_eroded(np.isin(labels.array, [2, 3]), labels.spacing_mm, 2.0)].astype(np.float64)
        n, g, k = v.size, ss.skew(v), ss.kurtosis(v)
        bcs.append((g * g + 1) / (k + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3))))
        bone = np.isin(t, [TISSUE["bone_trabecular"], TISSUE["bone_cortical"]])
        assert np.percentile(a[bone], 95) > 700, seed
        fat = (t == TISSUE["fat"]) & (a > -190) & (a < -30)
        assert a[fat].std() > 20.5, seed
    assert np.mean(bcs) < 0.42, bcs       # above 5/9 a histogram is called bimodal


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


# ------------------------------------------------------------------ liver grown to the spleen
def _liver_spleen_map(gap_vox: int = 5) -> Volume:
    arr = np.zeros((20, 30, 40), np.uint8)
    arr[5:15, 8:22, 2:14] = BTCV["liver"]
    arr[5:15, 8:22, 14 + gap_vox:30] = BTCV["spleen"]
    arr[5:15, 2:6, 14:20] = BTCV["stomach"]  # an organ near the gap: never overwritten
    return Volume(arr, Geometry((2.0, 2.0, 2.0)))


def test_grow_liver_to_spleen_bridges_the_gap_over_background_only():
    labels = _liver_spleen_map()
    grown = grow_liver_to_spleen(labels, 0)
    a, b = labels.array, grown.array
    liver_b = b == BTCV["liver"]
    assert np.array_equal(b == BTCV["spleen"], a == BTCV["spleen"])
    assert np.array_equal(b == BTCV["stomach"], a == BTCV["stomach"])
    added = liver_b & (a != BTCV["liver"])
    assert added.any() and np.all(a[added] == 0)
    # before: 5 background voxels between them; after: the liver touches the spleen
    def touching(liver: np.ndarray) -> bool:
        return bool((ndi.binary_dilation(liver) & (b == BTCV["spleen"])).any())

    assert not touching(a == BTCV["liver"]) and touching(liver_b)
    assert np.array_equal(grow_liver_to_spleen(labels, 0).array, b)     # seeded
    assert a is labels.array and (a == BTCV["liver"]).sum() < liver_b.sum()  # input untouched


def test_grow_liver_to_spleen_cover_spreads_a_sheet_over_the_spleen():
    labels = _liver_spleen_map()
    bridge = grow_liver_to_spleen(labels, 0).array
    covered = grow_liver_to_spleen(labels, 0, cover_mm=(30.0, 30.0)).array
    a = labels.array
    for organ in ("spleen", "stomach"):
        assert np.array_equal(covered == BTCV[organ], a == BTCV[organ])
    sheet = (covered == BTCV["liver"]) & (bridge != BTCV["liver"])
    assert sheet.sum() > 100
    assert np.all(a[sheet] == 0) and np.all(bridge[sheet] == 0)
    d_spleen = ndi.distance_transform_edt(a != BTCV["spleen"], sampling=(2.0, 2.0, 2.0))
    assert d_spleen[sheet].max() <= 20.0            # the thickest sheet drawn is 20 mm
    # over the spleen's far faces too: past the bridge's x range, above and below it
    assert sheet[:, :, 25:].any() and (sheet[:5].any() or sheet[15:].any())
    # the bridge alone is as before the option existed (its draws come first)
    assert np.array_equal(grow_liver_to_spleen(labels, 0, cover_mm=None).array, bridge)
    with pytest.raises(ConfigError, match="cover_mm"):
        grow_liver_to_spleen(labels, 0, cover_mm=(5.0, 1.0))


def test_grow_liver_to_spleen_without_a_spleen_or_with_a_bad_width():
    arr = _liver_spleen_map().array.copy()
    arr[arr == BTCV["spleen"]] = 0
    labels = Volume(arr, Geometry((2.0, 2.0, 2.0)))
    assert grow_liver_to_spleen(labels, 0) is labels
    with pytest.raises(ConfigError, match="width_mm"):
        grow_liver_to_spleen(labels, 0, width_mm=(0.0, 5.0))


def test_organ_contact_puts_soft_tissue_against_the_organs_and_moves_nothing_else(labels, case):
    off = synthesize(labels, label_table=PHANTOM_LABELS, rng=3,
                     config=SynthConfig(organ_contact_fraction=0.0))
    on = synthesize(labels, label_table=PHANTOM_LABELS, rng=3,
                    config=SynthConfig(organ_contact_fraction=0.6))
    before, after = off.tissue.array, on.tissue.array
    changed = before != after
    assert changed.sum() > 50
    assert set(np.unique(before[changed])) <= {TISSUE["fat"], TISSUE["lung"], TISSUE["heart"]}
    assert np.all(after[changed] == TISSUE["muscle"])
    sp = labels.spacing_mm
    near_organ = ndi.distance_transform_edt(labels.array == 0, sampling=sp)
    assert near_organ[changed].max() <= 6.0 + 1e-6
    # the case's own draws do not move: the CT differs only within the blur's reach of the
    # new soft tissue, and the drawn parameters are the same
    far = ndi.distance_transform_edt(~changed, sampling=sp) > 12.0
    np.testing.assert_array_equal(on.ct.array[far], off.ct.array[far])
    assert on.params == off.params == case.params
    # the default (0.25) turns a subset of what 0.6 turns: the same smooth field, a lower quantile
    default_changed = off.tissue.array != case.tissue.array
    assert SynthConfig().organ_contact_fraction == 0.25
    assert 0 < default_changed.sum() < changed.sum() and not (default_changed & ~changed).any()
    cfg = SynthConfig(organ_contact_fraction=0.1)
    assert SynthConfig.from_json(cfg.to_json()) == cfg
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(ConfigError, match="organ_contact_fraction"):
            SynthConfig(organ_contact_fraction=bad)


def test_liver_lesions_darken_the_liver_inside_its_label_and_move_nothing_else(labels, case):
    on = synthesize(labels, label_table=PHANTOM_LABELS, rng=3,
                    config=SynthConfig(liver_lesion_fraction=1.0))
    assert SynthConfig().liver_lesion_fraction == 0.0 and "liver_lesions" not in case.params
    assert 1 <= on.params.pop("liver_lesions") <= 4
    assert on.params == case.params                       # its own stream: no draw moves
    np.testing.assert_array_equal(on.tissue.array, case.tissue.array)
    diff = case.ct.array - on.ct.array
    liver = labels.array == PHANTOM_LABELS["liver"]
    changed = np.abs(diff) > 1.0
    assert changed.sum() > 20 and diff.min() > -1e-3     # only darker
    # inside the liver (the label, hence the training target, is unchanged) up to the blur
    sp = labels.spacing_mm
    assert ndi.distance_transform_edt(~liver, sampling=sp)[changed].max() <= 4.0
    assert diff[changed & liver].max() >= 25.0 - 1.0      # the drop's lower bound, at the core
    again = synthesize(labels, label_table=PHANTOM_LABELS, rng=3,
                       config=SynthConfig(liver_lesion_fraction=1.0))
    np.testing.assert_array_equal(again.ct.array, on.ct.array)
    cfg = SynthConfig(liver_lesion_fraction=0.5)
    assert SynthConfig.from_json(cfg.to_json()) == cfg
    from iunet_nb.model.train import _generator  # what a model card's data description says

    assert "liver lesions 0.5" in _generator(cfg) and "lesion" not in _generator(SynthConfig())
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(ConfigError, match="liver_lesion_fraction"):
            SynthConfig(liver_lesion_fraction=bad)


def test_lobulated_pancreas_puts_fat_inside_the_gland_and_moves_nothing_else(labels, case):
    on = synthesize(labels, label_table=PHANTOM_LABELS, rng=3,
                    config=SynthConfig(pancreas_lobulation_fraction=1.0))
    assert SynthConfig().pancreas_lobulation_fraction == 0.0
    assert "pancreas_fat_share" not in case.params
    share = on.params.pop("pancreas_fat_share")
    assert 0.05 <= share <= 0.40
    assert on.params == case.params                       # its own stream: no draw moves
    np.testing.assert_array_equal(on.tissue.array, case.tissue.array)
    diff = case.ct.array - on.ct.array
    pancreas = labels.array == PHANTOM_LABELS["pancreas"]
    changed = np.abs(diff) > 1.0
    assert diff.min() > -1e-3                             # fat only darkens the gland
    sp = labels.spacing_mm
    assert ndi.distance_transform_edt(~pancreas, sampling=sp)[changed].max() <= 4.0
    # a share of the gland holds fat, most of the way to fat HU before the blur
    darker = (diff > 60.0) & pancreas
    assert 0.02 * pancreas.sum() < darker.sum() < 0.6 * pancreas.sum()
    off = synthesize(labels, label_table=PHANTOM_LABELS, rng=3,
                     config=SynthConfig(pancreas_lobulation_fraction=0.0))
    np.testing.assert_array_equal(off.ct.array, case.ct.array)
    cfg = SynthConfig(pancreas_lobulation_fraction=0.5)
    assert SynthConfig.from_json(cfg.to_json()) == cfg
    from iunet_nb.model.train import _generator

    assert "lobulated pancreas 0.5" in _generator(cfg)
    assert "lobulated" not in _generator(SynthConfig())
    for bad in (-0.1, 1.5, True):
        with pytest.raises(ConfigError, match="pancreas_lobulation_fraction"):
            SynthConfig(pancreas_lobulation_fraction=bad)


def test_phase_config_changes_the_contrast_not_the_anatomy():
    from iunet_nb.synth.generator import SynthConfig
    from iunet_nb.synth.phases import PHASES, phase_config

    assert set(PHASES) == {"non_contrast", "arterial", "portal_venous", "delayed", "random"}
    assert phase_config("portal_venous") == SynthConfig()
    arterial, plain = phase_config("arterial"), phase_config("non_contrast")
    assert arterial.aorta_hu[0] > SynthConfig().aorta_hu[1]       # brighter than portal-venous
    assert plain.pancreas_hu[1] < SynthConfig().pancreas_hu[0]    # unenhanced: darker
    assert plain.bowel_fraction == SynthConfig().bowel_fraction   # anatomy unchanged
    wide = phase_config("delayed", wide_quality=True)
    assert wide.noise_sd_hu[1] > SynthConfig().noise_sd_hu[1]
    assert wide.slice_sigma_mm[1] > SynthConfig().slice_sigma_mm[1]
    with pytest.raises(ConfigError, match="unknown contrast phase"):
        phase_config("venous")
    # random: every soft-tissue organ spans the others' ranges, so HU does not tell them apart
    rnd = phase_config("random")
    organs = [rnd.liver_hu, rnd.spleen_hu, rnd.pancreas_hu, rnd.bowel_wall_hu, rnd.stomach_wall_hu]
    assert max(lo for lo, _ in organs) < min(hi for _, hi in organs) - 100
    assert rnd.bowel_fraction == SynthConfig().bowel_fraction
