"""Kloenne et al.: percentile window, z-score stats, slice draws, augmentation, nets, ensemble,
slice-count folds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import back_on, make_ellipsoid, stored_otherwise

from iunet_nb.errors import CheckpointError, ConfigError, InputError
from iunet_nb.io.volume import Geometry, Volume
from iunet_nb.systems import kloenne
from iunet_nb.systems.kloenne import (
    KloenneConfig,
    KloenneEnsemble,
    KloenneModel,
    MSDNet,
    UNetND,
    load_kloenne,
    percentile_window,
    predict_kloenne,
    select_top_k,
    slice_count_folds,
    train_kloenne,
)




def _cases(n=2, shape=(12, 24, 24)):
    g = Geometry(spacing_mm=(3.0, 0.9, 0.9))
    out = []
    for i in range(n):
        m = make_ellipsoid(shape, center=(6, 11 + i, 12), radii=(3, 6, 7))
        ct = np.where(m > 0, 120.0, -50.0) + np.random.default_rng(i).normal(0, 10, shape)
        out.append((Volume(ct.astype(np.float32), g), Volume(m, g)))
    return out


def _tiny(**kw):
    base = dict(slice_size=16, base_channels=2, depth=2, msd_layers=3, n_slices=4,
                batch_size=6, iterations=2, stats_volumes=2, stats_voxels=500)
    base.update(kw)
    return KloenneConfig(**base)


def test_config_seed_values_and_errors():
    cfg = KloenneConfig()
    assert cfg.percentiles == (0.6, 0.99) and cfg.n_slices == 16 and cfg.slice_size == 128
    assert cfg.effective_batch == 28 and cfg.effective_p_augment == 0.9
    c3 = KloenneConfig(dims=3)
    assert c3.effective_batch == 1 and c3.effective_p_augment == 0.8
    assert (cfg.p_range_shift, cfg.rotation_deg, cfg.msd_layers) == (0.2, 16.0, 100)
    assert KloenneConfig.from_json(c3.to_json()) == c3
    with pytest.raises(ConfigError, match="arch must be one of"):
        KloenneConfig(arch="vnet")
    with pytest.raises(ConfigError, match="percentiles"):
        KloenneConfig(percentiles=(0.99, 0.6))
    with pytest.raises(ConfigError, match="divisible"):
        KloenneConfig(slice_size=100, depth=5)
    with pytest.raises(ConfigError, match="dims must be 2 or 3"):
        KloenneConfig(dims=4)


def test_percentile_window_clips_to_the_volumes_quantiles():
    arr = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    out = percentile_window(arr, (0.6, 0.99))
    lo, hi = np.quantile(arr, (0.6, 0.99))
    assert out.min() == pytest.approx(lo) and out.max() == pytest.approx(hi)
    np.testing.assert_array_equal(out[6, 5], arr[6, 5])      # 650: inside, unchanged
    # the sub-sampled quantiles stay within a few ranks
    big = np.random.default_rng(0).normal(size=(50, 50, 50)).astype(np.float32)
    fast = percentile_window(big, (0.6, 0.99), max_samples=20000)
    np.testing.assert_allclose([fast.min(), fast.max()], np.quantile(big, (0.6, 0.99)),
                               atol=0.05)


def test_zscore_stats_come_from_a_random_sample():
    vols = [np.full((4, 4, 4), v, np.float32) for v in (1.0, 3.0, 100.0)]
    cfg = _tiny(stats_volumes=2, stats_voxels=64)
    mean, sd = kloenne._zscore_stats(vols, cfg, np.random.default_rng(0))
    pick = np.random.default_rng(0).choice(3, size=2, replace=False)
    expected = np.concatenate([vols[i].ravel() for i in pick])
    assert mean == pytest.approx(expected.mean()) and sd == pytest.approx(expected.std())


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("arch", ["unet", "msd"])
def test_networks_keep_the_size(arch, dims):
    shape = (2, 1, 16, 16) if dims == 2 else (1, 1, 4, 16, 16)
    net = (UNetND(dims, 1, 2, 2, 3) if arch == "unet" else MSDNet(dims, 1, 2, 4, 3))
    out = net(torch.randn(*shape))
    assert out.shape == (shape[0], 2, *shape[2:])


def test_msd_is_dense_and_dilated():
    net = MSDNet(2, 1, 2, layers=12, max_dilation=10)
    convs = [layer[0] for layer in net.layers]
    assert [c.in_channels for c in convs] == list(range(1, 13))
    assert [c.dilation[0] for c in convs] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 2]
    assert net.head.in_channels == 13
    unet = UNetND(2, 1, 2, 4, 3)
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in unet.modules())
    assert all(m.negative_slope == 0.01 for m in unet.modules()
               if isinstance(m, torch.nn.LeakyReLU))


def _vol(z=10, s=16, fg=(2, 3, 4, 7)):
    image = torch.arange(z, dtype=torch.float32)[:, None, None].expand(z, s, s).clone()
    label = torch.zeros(z, s, s, dtype=torch.long)
    label[list(fg)] = 1
    return kloenne._Vol(image, label, np.array(fg))


def test_slice_draws_use_only_target_slices_sorted_and_redrawn():
    vol = _vol()
    cfg = _tiny(n_slices=3)
    rng = np.random.default_rng(0)
    draws = set()
    for _ in range(20):
        x, y = kloenne._draw_stack(vol, cfg, rng, augment=False)
        z = x[:, 0, 0].numpy()
        assert set(z) <= {2, 3, 4, 7} and (np.diff(z) >= 0).all() and y.sum() == 3 * 16 * 16
        draws.add(tuple(z))
    assert len(draws) > 2
    # fewer target slices than n_slices: drawn with replacement
    x, _ = kloenne._draw_stack(vol, _tiny(n_slices=6), rng, augment=False)
    assert x.shape[0] == 6


def test_augmentation_rotates_image_and_label_alike():
    s = 16
    x = torch.zeros(1, s, s)
    x[0, 4:12, 9:11] = 1.0
    y = (x > 0).long()
    xr, yr = kloenne._rotate(x, y, torch.tensor([90.0]))
    assert torch.equal((xr > 0.5).long(), yr)
    assert torch.equal(yr[0], torch.rot90(y[0], 1, (0, 1))) or \
        torch.equal(yr[0], torch.rot90(y[0], -1, (0, 1)))
    # the augmented draw keeps shapes and changes the image
    vol = _vol()
    a, _ = kloenne._draw_stack(vol, _tiny(n_slices=3), np.random.default_rng(1), augment=True)
    b, _ = kloenne._draw_stack(vol, _tiny(n_slices=3), np.random.default_rng(1), augment=False)
    assert a.shape == b.shape and not torch.equal(a, b)


def test_batches_have_the_configured_size():
    vols = [_vol(), _vol(fg=(0, 1, 5, 6, 8))]
    x, y = kloenne._batch(vols, _tiny(n_slices=4, batch_size=6), np.random.default_rng(0))
    assert x.shape == (6, 1, 16, 16) and y.shape == (6, 16, 16)
    x, y = kloenne._batch(vols, _tiny(dims=3, n_slices=4, batch_size=0),
                          np.random.default_rng(0))
    assert x.shape == (1, 1, 4, 16, 16) and y.shape == (1, 4, 16, 16)


class _Bright(torch.nn.Module):
    """Stub net: foreground where the z-scored input is above 0."""

    def forward(self, x):
        return torch.cat([-20 * x, 20 * x], 1)


@pytest.mark.parametrize("dims", [2, 3])
def test_predict_covers_every_slice_and_restores_the_grid(dims):
    (ct, mask), = _cases(1, shape=(13, 32, 32))
    model = KloenneModel(_tiny(dims=dims, slice_size=32, n_slices=4))
    model.net = _Bright()
    # window (0.6, 0.99) of this volume lies between -50 and 120: z-score with mean in
    # between so that the organ is > 0 and the background < 0
    model.stats.copy_(torch.tensor([35.0, 50.0]))
    pred = predict_kloenne(ct, model)
    assert pred.shape == ct.shape and pred.geometry == ct.geometry
    inter = (pred.array & mask.array).sum()
    assert 2 * inter / (pred.array.sum() + mask.array.sum()) > 0.95


def test_train_seeded_validate_save_load_and_ensemble(tmp_path):
    cases = _cases(2)
    results = []
    for arch, seed in (("unet", 0), ("unet", 1), ("msd", 0)):
        cfg = _tiny(arch=arch, seed=seed)
        results.append(train_kloenne(cases, cfg, tmp_path / f"{arch}{seed}", validation=cases,
                                     progress=False))
    again = train_kloenne(cases, _tiny(arch="unet", seed=0), None, progress=False)
    assert again.losses == results[0].losses and again.validation_dsc is None
    assert all(0.0 <= r.validation_dsc <= 1.0 for r in results)
    assert results[0].model.stats[1] > 0
    card = json.loads((tmp_path / "unet0" / "model.json").read_text())
    assert card["system"] == "kloenne" and card["validation_dsc"] == results[0].validation_dsc
    loaded = load_kloenne(tmp_path / "unet0" / "model.pt")
    torch.testing.assert_close(loaded.stats, results[0].model.stats)
    np.testing.assert_array_equal(predict_kloenne(cases[0][0], loaded).array,
                                  predict_kloenne(cases[0][0], results[0].model).array)
    # top-1 of each kind: the better unet and the msd
    ens = select_top_k(results, k=1)
    best_unet = max(results[:2], key=lambda r: r.validation_dsc).model
    assert ens.members[0] is best_unet and ens.members[1] is results[2].model
    assert ens.kinds == ["unet2d", "msd2d"]
    pred = predict_kloenne(cases[0][0], ens)
    # the ensemble's probability is the mean of the members'
    p = [kloenne._probabilities(m, cases[0][0], torch.device("cpu")) for m in ens.members]
    full = torch.nn.functional.interpolate(((p[0] + p[1]) / 2)[:, None], size=(24, 24),
                                           mode="bilinear", align_corners=False)[:, 0]
    np.testing.assert_array_equal(pred.array, (full.numpy() >= 0.5).astype(np.uint8))
    with pytest.raises(InputError, match="no validation DSC"):
        select_top_k([again])
    with pytest.raises(CheckpointError, match="not found"):
        load_kloenne(tmp_path / "nothing.pt")


def test_errors():
    (ct, mask), = _cases(1)
    with pytest.raises(InputError, match="no training case has a target"):
        train_kloenne([(ct, mask.with_array(np.zeros_like(mask.array)))], _tiny(),
                      progress=False)
    with pytest.raises(InputError, match="KloenneModel or KloenneEnsemble"):
        predict_kloenne(ct, torch.nn.Linear(1, 1))
    with pytest.raises(InputError, match="at least one KloenneModel"):
        KloenneEnsemble([])


def test_slice_count_folds_are_contiguous_in_slice_count():
    cases = [("a", 300, 1.0), ("b", 40, 5.0), ("c", 120, 2.5), ("d", 40, 2.5),
             ("e", 200, 1.25), ("f", 90, 3.0)]
    folds = slice_count_folds(cases, k=3)
    assert [f["test"] for f in folds] == [["b", "d"], ["c", "f"], ["a", "e"]]
    assert folds[0]["train"] == ["a", "c", "e", "f"]
    with pytest.raises(ConfigError, match="k must be"):
        slice_count_folds(cases, k=7)
    with pytest.raises(ConfigError, match="unique"):
        slice_count_folds([("a", 1, 1.0), ("a", 2, 1.0)], k=2)


def test_slice_skipping_and_interpolation_in_3d():
    vol = _vol(z=40, fg=tuple(range(40)))
    cfg = _tiny(dims=3, n_slices=4, noise_sd=0.0, p_range_shift=0.0, rotation_deg=0.0)
    rng = np.random.default_rng(0)
    same_parity, halves = 0, 0
    for _ in range(40):
        x, _ = kloenne._draw_stack(vol, cfg, rng, augment=True)
        z = x[:, 0, 0].numpy()
        halves += bool(np.allclose(z % 1, 0.5))          # interpolated: mean of i and i+1
        idx = np.floor(z).astype(int)
        same_parity += len(set(idx % 2)) == 1
    # skipping (half of the draws) gives one parity; random draws of 4 of 40 rarely do (1/8)
    assert same_parity >= 15 and 10 <= halves <= 30


def test_z_range_limits_the_slices():
    (ct, mask), = _cases(1, shape=(13, 32, 32))
    model = KloenneModel(_tiny(slice_size=32, n_slices=4))
    model.net = _Bright()
    model.stats.copy_(torch.tensor([35.0, 50.0]))
    full = predict_kloenne(ct, model).array
    part = predict_kloenne(ct, model, z_range=(5, 8)).array
    np.testing.assert_array_equal(part[5:8], full[5:8])
    assert not part[:5].any() and not part[8:].any() and full[:5].any()
    with pytest.raises(InputError, match="z_range"):
        predict_kloenne(ct, model, z_range=(8, 8))


# ------------------------------------------------------------------------------ orientation
class _BrightUpperRows(_Bright):
    """Foreground where bright, in the first half of each slice's rows (depends on slicing)."""

    def forward(self, x):
        out = super().forward(x).clone()
        out[..., x.shape[-2] // 2:, :] = torch.tensor([20.0, -20.0]).view(
            1, 2, *([1] * (x.ndim - 2)))
        return out


@pytest.mark.parametrize("dims", [2, 3])
def test_a_copy_stored_otherwise_gives_the_same_mask_in_physical_space(dims):
    (ct, _), = _cases(1, shape=(13, 32, 32))
    copy = stored_otherwise(ct)
    # slice_size 32 = the in-plane size of the LPS-ordered volume: no in-plane resampling
    model = KloenneModel(_tiny(dims=dims, slice_size=32, n_slices=4))
    model.net = _BrightUpperRows()
    model.stats.copy_(torch.tensor([35.0, 50.0]))
    m1, m2 = predict_kloenne(ct, model), predict_kloenne(copy, model)
    assert 0 < m1.array.sum() < m1.array.size and m2.geometry == copy.geometry
    np.testing.assert_array_equal(back_on(ct, m2), m1.array)


def test_on_step_sees_every_step_with_its_loss_and_model():
    cases = _cases(2)
    seen = []
    result = train_kloenne(cases, _tiny(iterations=3), None, progress=False,
                           on_step=lambda i, loss, model: seen.append((i, loss, model)))
    assert [s[0] for s in seen] == [0, 1, 2]
    assert [s[1] for s in seen] == result.losses
    assert all(s[2] is result.model for s in seen)


def test_background_slices_share_and_the_seeds_default():
    image = torch.arange(40, dtype=torch.float32)[:, None, None].expand(40, 4, 4).clone()
    label = torch.zeros(40, 4, 4, dtype=torch.long)
    label[10:20] = 1
    vol = kloenne._Vol(image, label, np.arange(10, 20), np.r_[0:10, 20:40])
    rng = np.random.default_rng(0)
    cfg = _tiny(n_slices=16, background_slices=0.25)
    drawn = np.concatenate([kloenne._draw_stack(vol, cfg, rng, False)[0][:, 0, 0].numpy()
                            for _ in range(200)]).astype(int)
    share = np.mean((drawn < 10) | (drawn >= 20))
    assert 0.2 < share < 0.3                       # binomial(16, 0.25) per draw
    x, _ = kloenne._draw_stack(vol, cfg, rng, False)
    assert (np.diff(x[:, 0, 0].numpy()) >= 0).all()  # still sorted in z
    seed_cfg = _tiny(n_slices=16)
    assert seed_cfg.background_slices == 0.0
    only = np.concatenate([kloenne._draw_stack(vol, seed_cfg, rng, False)[0][:, 0, 0].numpy()
                           for _ in range(50)])
    assert ((only >= 10) & (only < 20)).all()
    with pytest.raises(ConfigError, match="background_slices"):
        _tiny(background_slices=1.5)


def test_init_fine_tunes_from_a_trained_model_and_keeps_its_statistics():
    cases = _cases(2)
    first = train_kloenne(cases, _tiny(iterations=2), None, progress=False).model
    first.stats.copy_(torch.tensor([3.0, 7.0]))
    tuned = train_kloenne(cases, _tiny(iterations=1, lr=1e-9), None, progress=False,
                          init=first).model
    torch.testing.assert_close(tuned.stats, first.stats)
    for a, b in zip(tuned.net.parameters(), first.net.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)   # lr ~0: the weights stay
    with pytest.raises(ConfigError, match="same network"):
        train_kloenne(cases, _tiny(iterations=1, base_channels=4), None, progress=False,
                      init=first)


def test_the_bundled_liver_model_loads_checked_and_segments():
    """The shipped liver model: its hash is checked, its card states what it measures on real
    CT at each slice thickness, and it segments a CT on the CT's own grid."""
    from iunet_nb.systems.kloenne import bundled_kloenne_path, load_bundled_kloenne

    model = load_bundled_kloenne()
    card = json.loads(bundled_kloenne_path().with_suffix(".json").read_text())
    assert card["system"] == "kloenne" and card["date"] == "2026-12-07"
    assert {f"3D-IRCADb {p} {t} mm liver" for p in ("1.7", "1.17")
            for t in ("1.6", "3.2", "4.8")} == set(card["real_ct"])
    assert "no real CT" in card["data"] and model.config.kind == "unet2d"
    (ct, _), = _cases(1)
    mask = predict_kloenne(ct, model)
    assert mask.shape == ct.shape and mask.geometry == ct.geometry
