"""Roth et al. multi-organ 3D FCN: label mapping, weighted Dice, B-spline/patch sampling, tiles."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import back_on, make_ellipsoid, stored_otherwise
from torch import nn

from iunet_nb.errors import CheckpointError, ConfigError, InputError
from iunet_nb.io.volume import Geometry, Volume
from iunet_nb.model.losses import one_hot, soft_dice_loss
from iunet_nb.model.nets import count_parameters
from iunet_nb.systems import roth
from iunet_nb.systems.roth import (
    BTCV_TO_ROTH,
    ROTH_ORGANS,
    SEED_ORGANS,
    RothConfig,
    RothModel,
    bspline_displacement,
    load_roth,
    map_labels,
    predict_roth,
    train_roth,
    weighted_dice_loss,
)




TINY = RothConfig(base_channels=2, depth=2, patch_size=(8, 8, 8), batch_size=2, iterations=2,
                  lr=1e-3, downsample=(1.0, 2.0, 2.0), bspline_spacing=4, bspline_max_disp=1.0,
                  translation_vox=2.0, tile_z=8)


def _case(seed=0, shape=(12, 24, 24)):
    g = Geometry(spacing_mm=(3.0, 1.0, 1.0), origin_mm=(5.0, -3.0, 20.0))
    lab = np.zeros(shape, np.int16)
    lab[make_ellipsoid(shape, center=(6, 8, 8), radii=(3, 4, 4)) > 0] = 6    # liver
    lab[make_ellipsoid(shape, center=(6, 16, 16), radii=(2, 3, 3)) > 0] = 11  # pancreas
    hu = {0: -80.0, 6: 110.0, 11: 60.0}
    ct = np.vectorize(hu.get)(lab).astype(np.float32)
    ct += np.random.default_rng(seed).normal(0, 5, shape).astype(np.float32)
    return Volume(ct, g), Volume(lab, g)


def test_btcv_mapping_is_the_issue_table():
    lab = np.arange(14, dtype=np.int16).reshape(1, 1, 14)
    out = map_labels(lab)[0, 0]
    #          bg sp rk lk gb es li st ao ivc pv pa ra la
    expected = [0, 4, 8, 9, 6, 0, 3, 5, 1, 2, 2, 7, 0, 0]
    assert out.tolist() == expected
    assert ROTH_ORGANS[out[11] - 1] == "pancreas" and BTCV_TO_ROTH["vein"] == (9, 10)
    assert ROTH_ORGANS[out[3] - 1] == "left_kidney" and ROTH_ORGANS[:7] == SEED_ORGANS
    # a network with the seed's seven organs: the kidneys are background
    seven = map_labels(lab, organs=SEED_ORGANS)[0, 0]
    assert seven.tolist() == [0, 4, 0, 0, 6, 0, 3, 5, 1, 2, 2, 7, 0, 0]
    # a network of two organs numbers them 1, 2
    assert map_labels(lab, organs=("liver", "pancreas"))[0, 0].tolist() == \
        [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2, 0, 0]
    with pytest.raises(InputError, match="unknown organ"):
        map_labels(lab, {"kidney": (2,)})
    with pytest.raises(InputError, match="integer"):
        map_labels(lab.astype(float))


def test_full_scale_network_has_the_seeds_19m_parameters():
    cfg = RothConfig()
    assert (cfg.patch_size, cfg.batch_size, cfg.iterations, cfg.lr) == ((64,) * 3, 3, 50000, 1e-2)
    assert (cfg.bspline_max_disp, cfg.bspline_spacing, cfg.downsample) == (4.0, 24, (4.0,) * 3)
    from iunet_nb.model.nets import build_network
    n = count_parameters(build_network(cfg.net_config))
    assert 18.5e6 < n < 19.5e6


@pytest.mark.parametrize("kwargs, match", [
    (dict(patch_size=(60, 64, 64)), "multiples of 8"),
    (dict(tile_z=36), "tile_z must be a multiple of 8"),
    (dict(class_weights=(1.0, 1.0)), "None or 10 non-negative weights"),
    (dict(organs=SEED_ORGANS, class_weights=(1.0,) * 10), "None or 8 non-negative"),
    (dict(organs=("kidney",)), "distinct organs of"),
    (dict(organs=("pancreas", "liver")), "in that order"),
    (dict(organs=()), "distinct organs of"),
    (dict(organs="liver"), "distinct organs of"),
    (dict(tile_overlap=1.0), "tile_overlap"),
    (dict(rotation_deg=-1.0), "rotation_deg"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        RothConfig(**kwargs)


def test_weighted_dice_equals_soft_dice_with_unit_weights_and_weights_classes():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 3, 4, 5, 6, generator=g), 1)
    target = one_hot(torch.randint(0, 3, (2, 4, 5, 6), generator=g), 3)
    torch.testing.assert_close(weighted_dice_loss(probs, target, [1, 1, 1]),
                               soft_dice_loss(probs, target))
    # independent: per item/class Dice by hand
    inter = (probs * target).sum((2, 3, 4))
    dice = (2 * inter + 1e-6) / (probs.sum((2, 3, 4)) + target.sum((2, 3, 4)) + 1e-6)
    expected = -(dice * torch.tensor([0.0, 2.0, 1.0])).mean()
    torch.testing.assert_close(weighted_dice_loss(probs, target, [0.0, 2.0, 1.0]), expected)
    with pytest.raises(InputError, match="3 weights"):
        weighted_dice_loss(probs, target, [1, 1])


def test_bspline_is_bounded_smooth_and_seeded():
    d = bspline_displacement((20, 30, 30), 8, 4.0, np.random.default_rng(0))
    assert d.shape == (3, 20, 30, 30) and np.abs(d).max() <= 4.0 and np.abs(d).max() > 0.5
    # smooth: neighbour differences far below the amplitude
    assert np.abs(np.diff(d, axis=3)).max() < 1.0
    np.testing.assert_array_equal(d, bspline_displacement((20, 30, 30), 8, 4.0,
                                                          np.random.default_rng(0)))
    # constant coefficients reproduce the constant (partition of unity)
    rng = np.random.default_rng(1)
    flat = bspline_displacement((5, 5, 5), 4, 0.0, rng)
    assert not flat.any()


def test_patch_without_augmentation_is_a_plain_crop():
    cfg = RothConfig(**{**TINY.to_dict(), "rotation_deg": 0.0, "translation_vox": 0.0,
                        "bspline_max_disp": 0.0})
    img = torch.arange(20 * 21 * 22, dtype=torch.float32).reshape(20, 21, 22) / 1e4
    lab = (torch.arange(20 * 21 * 22) % 7).reshape(20, 21, 22).to(torch.uint8)
    rng = np.random.default_rng(3)
    coords = roth._patch_grid(img.shape, cfg, rng)
    # re-draw the centre independently: first 3 draws of the same generator
    again = np.random.default_rng(3)
    centre = [again.uniform(0, n - 1) for n in img.shape]
    np.testing.assert_allclose(coords[0, 0, 0], np.array(centre) - 3.5, atol=1e-9)
    # integer coordinates: sampling reproduces the voxels exactly
    coords = np.stack(np.meshgrid(np.arange(2, 10), np.arange(3, 11), np.arange(4, 12),
                                  indexing="ij"), -1).astype(float)
    x, y = roth._sample(img, lab, coords)
    torch.testing.assert_close(x, img[2:10, 3:11, 4:12], atol=1e-5, rtol=0)
    assert torch.equal(y, lab[2:10, 3:11, 4:12].long())
    # outside the image: air (-1) and background
    x, y = roth._sample(img, lab, coords - 30)
    assert torch.allclose(x, torch.tensor(-1.0)) and not y.any()


def test_tiles_cover_the_volume_with_overlap():
    assert roth._tiles(10, 16, 0.5) == [0]
    assert roth._tiles(64, 32, 0.5) == [0, 16, 32]
    assert roth._tiles(70, 32, 0.5) == [0, 16, 32, 38]
    assert roth._tiles(64, 32, 0.0) == [0, 32]


class _Const(nn.Module):
    """Stub FCN: logits that depend on the input only through a per-voxel rule."""

    def forward(self, x):
        # class 3 (liver) where bright, else background; other classes very unlikely
        out = torch.full((x.shape[0], 10, *x.shape[2:]), -20.0)
        out[:, 0] = torch.where(x[:, 0] > 0.5, -20.0, 20.0)
        out[:, 3] = torch.where(x[:, 0] > 0.5, 20.0, -20.0)
        return out


def test_predict_tiles_and_restores_the_grid():
    ct, lab = _case(shape=(20, 24, 24))
    cfg = RothConfig(**{**TINY.to_dict(), "hu_window": (-100.0, 140.0), "tile_z": 8,
                        "downsample": (1.0, 1.0, 1.0)})
    model = RothModel(cfg)
    model.net = _Const()
    pred = predict_roth(ct, model)
    liver = (lab.array == 6)
    # windowed > 0.5 <=> HU > 80: the liver (110 HU), not the pancreas (60)
    np.testing.assert_array_equal(pred.organ_mask("liver").array, liver.astype(np.uint8))
    assert pred.labels.geometry == ct.geometry and set(np.unique(pred.labels.array)) <= {0, 3}
    prob = model.organ_probability(ct, organ="liver")
    assert prob.shape == ct.shape and prob[liver].min() > 0.99
    with pytest.raises(ConfigError, match="organ must be one of"):
        pred.organ_mask("kidney")
    assert pred.organs == ROTH_ORGANS and pred.labels.meta["organs"] == list(ROTH_ORGANS)
    seven = RothModel(dataclasses.replace(cfg, organs=SEED_ORGANS))
    seven.net = _Const()
    seven.net.forward = lambda x: _Const.forward(seven.net, x)[:, :8]
    pred7 = predict_roth(ct, seven)
    np.testing.assert_array_equal(pred7.organ_mask("liver").array, liver.astype(np.uint8))
    with pytest.raises(ConfigError, match="no 'left_kidney' output"):
        pred7.organ_mask("left_kidney")
    with pytest.raises(ConfigError, match="no 'right_kidney' output"):
        seven.organ_probability(ct, organ="right_kidney")
    assert seven.organ_label("pancreas") == 7 and model.organ_label("left_kidney") == 9


def test_predict_on_a_downsampled_grid():
    g = Geometry(spacing_mm=(3.0, 1.0, 1.0))
    liver = make_ellipsoid((16, 32, 32), radii=(5, 10, 10)) > 0
    # 240 / -80 HU: the threshold (80 HU) is the midpoint, so partial volume is symmetric
    ct = Volume(np.where(liver, 240.0, -80.0).astype(np.float32), g)
    cfg = RothConfig(**{**TINY.to_dict(), "hu_window": (-100.0, 140.0),
                        "downsample": (1.0, 2.0, 2.0)})
    model = RothModel(cfg)
    model.net = _Const()
    pred = predict_roth(ct, model)
    got = pred.labels.array == 3
    assert pred.labels.shape == ct.shape
    assert 2 * (got & liver).sum() / (got.sum() + liver.sum()) > 0.93
    np.testing.assert_allclose(np.argwhere(got).mean(0), np.argwhere(liver).mean(0), atol=0.2)


def test_train_seeded_save_load(tmp_path):
    cases = [_case(0), _case(1)]
    a = train_roth(cases, TINY, tmp_path, progress=False, data_description="toy")
    b = train_roth(cases, TINY, None, progress=False)
    assert len(a.losses) == 2 and np.isfinite(a.losses).all() and a.losses == b.losses
    card = json.loads((tmp_path / "model.json").read_text())
    assert card["system"] == "roth" and RothConfig.from_dict(card["config"]) == TINY
    loaded = load_roth(tmp_path / "model.pt")
    np.testing.assert_array_equal(predict_roth(cases[0][0], loaded).labels.array,
                                  predict_roth(cases[0][0], a.model).labels.array)
    with pytest.raises(CheckpointError, match="'roth' model, not a 'zhou'"):
        from iunet_nb.systems.zhou import load_zhou
        load_zhou(tmp_path / "model.pt")


def test_train_on_from_saved_weights(tmp_path):
    cases = [_case(0), _case(1)]
    first = train_roth(cases, TINY, tmp_path, progress=False)
    zero = dataclasses.replace(TINY, lr=1e-12, lr_final=1e-12)   # a step that moves nothing
    on = train_roth(cases, zero, None, progress=False, init_from=tmp_path / "model.pt")
    fresh = train_roth(cases, zero, None, progress=False)
    for (name, a), b, c in zip(first.model.state_dict().items(), on.model.state_dict().values(),
                               fresh.model.state_dict().values()):
        if a.is_floating_point() and "running" not in name:
            torch.testing.assert_close(b, a, atol=1e-6, rtol=0)
    assert not all(torch.equal(a, c) for a, c in zip(first.model.state_dict().values(),
                                                     fresh.model.state_dict().values()))
    with pytest.raises(ConfigError, match="base_channels"):
        train_roth(cases, dataclasses.replace(TINY, base_channels=3), None, progress=False,
                   init_from=tmp_path / "model.pt")


def test_a_card_from_before_the_kidneys_loads_and_trains_on_with_them(tmp_path):
    """A model card without ``organs`` (the seed's seven, as written before the kidneys were
    added) loads as seven organs; training on from it into the nine-organ network carries
    every weight and the seven organs' output rows, and the kidneys' rows start fresh."""
    seven = dataclasses.replace(TINY, organs=SEED_ORGANS)
    cases = [_case(0), _case(1)]
    train_roth(cases, seven, tmp_path, progress=False)
    card = json.loads((tmp_path / "model.json").read_text())
    assert card["config"].pop("organs") == list(SEED_ORGANS)
    (tmp_path / "model.json").write_text(json.dumps(card))
    old = load_roth(tmp_path / "model.pt")
    assert old.config.organs == SEED_ORGANS and old.net.head.out_channels == 8
    zero = dataclasses.replace(TINY, lr=1e-12, lr_final=1e-12)
    nine = train_roth(cases, zero, None, progress=False, init_from=tmp_path / "model.pt").model
    with roth._seeded(zero.seed):                  # as train_roth makes its network
        fresh = RothModel(zero)
    assert nine.net.head.out_channels == 10
    for (name, a), b in zip(old.state_dict().items(), nine.state_dict().values()):
        if name.startswith("net.head."):
            torch.testing.assert_close(b[:8], a, atol=1e-6, rtol=0)     # bg + the seven
            torch.testing.assert_close(b[8:], fresh.state_dict()[name][8:], atol=1e-6, rtol=0)
        elif a.is_floating_point() and "running" not in name:
            torch.testing.assert_close(b, a, atol=1e-6, rtol=0)
    # a network of fewer organs takes the rows of those it keeps
    two = dataclasses.replace(zero, organs=("liver", "pancreas"))
    small = train_roth(cases, two, None, progress=False, init_from=tmp_path / "model.pt").model
    rows = [0, SEED_ORGANS.index("liver") + 1, SEED_ORGANS.index("pancreas") + 1]
    torch.testing.assert_close(small.state_dict()["net.head.bias"],
                               old.state_dict()["net.head.bias"][rows], atol=1e-6, rtol=0)


def test_training_run_snapshots_and_card(tmp_path):
    from iunet_nb.systems._common import TrainingRun

    run = TrainingRun(tmp_path / "run", "scripts/train_roth.py --x", "toy data", 1, save_every=2)
    (tmp_path / "run").mkdir()
    on_step = run.on_step(iterations=4)
    result = train_roth([_case(0)], dataclasses.replace(TINY, iterations=4), None,
                        progress=False, on_step=on_step)
    snap = json.loads((tmp_path / "run" / "snapshot.json").read_text())
    assert snap["iterations_done"] == 2          # step 4 is the last: no snapshot of it
    shipped = tmp_path / "assets" / "roth.pt"
    shipped.parent.mkdir()
    path = run.finish(result.model, result.losses, 4, 1, ship_to=shipped, extra_key=7)
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["script"] == "scripts/train_roth.py --x" and card["data"] == "toy data"
    assert card["extra_key"] == 7 and card["commit"] and "4 steps" in card["budget"]
    assert json.loads((tmp_path / "run" / "losses.json").read_text()) == result.losses
    assert shipped.read_bytes() == path.read_bytes()
    assert json.loads(shipped.with_suffix(".json").read_text()) == card


def test_train_input_errors():
    ct, lab = _case()
    with pytest.raises(InputError, match="at least one"):
        train_roth([], TINY, progress=False)
    with pytest.raises(InputError, match="none of|any of the Roth organs"):
        train_roth([(ct, lab.with_array(np.full(lab.shape, 5, np.int16)))], TINY,
                   progress=False)
    with pytest.raises(InputError, match="labels above 9"):
        train_roth([(ct, lab)], TINY, label_table=None, progress=False)
    with pytest.raises(InputError, match="RothModel"):
        predict_roth(ct, nn.Linear(1, 1))


@pytest.mark.slow
def test_training_reduces_the_loss():
    cases = [_case(i, shape=(16, 24, 24)) for i in range(2)]
    cfg = RothConfig(**{**TINY.to_dict(), "iterations": 60, "base_channels": 4,
                        "patch_size": (8, 16, 16), "lr": 3e-3,
                        "organs": ("liver", "pancreas")})    # the two the cases hold
    result = train_roth(cases, cfg, progress=False)
    assert np.mean(result.losses[-10:]) < np.mean(result.losses[:10]) - 0.05


# ------------------------------------------------------------------------------ orientation
class _UpperRows(_Const):
    """Like _Const, but liver only in the first half of each tile's rows (depends on slicing)."""

    def forward(self, x):
        out = super().forward(x)
        half = x.shape[-2] // 2
        out[:, 3, :, half:] = -20.0
        out[:, 0, :, half:] = 20.0
        return out


def test_a_copy_stored_otherwise_gives_the_same_labels_in_physical_space():
    ct, _ = _case(shape=(20, 24, 24))
    copy = stored_otherwise(ct)
    cfg = RothConfig(**{**TINY.to_dict(), "hu_window": (-100.0, 140.0), "tile_z": 8,
                        "downsample": (1.0, 1.0, 1.0)})
    model = RothModel(cfg)
    model.net = _UpperRows()
    l1, l2 = predict_roth(ct, model).labels, predict_roth(copy, model).labels
    assert 0 < np.count_nonzero(l1.array) and l2.geometry == copy.geometry
    np.testing.assert_array_equal(back_on(ct, l2), l1.array)
    torch.manual_seed(0)
    net = RothModel(TINY).eval()   # a random network, downsampled grid
    p1 = net.organ_probability(ct, organ="pancreas")
    p2 = net.organ_probability(copy, organ="pancreas")
    np.testing.assert_allclose(back_on(ct, copy.with_array(p2)), p1, atol=1e-5)
    assert p1.std() > 1e-5


def test_cosine_lr_and_on_step(monkeypatch):
    """lr_final makes Adam's rate fall from lr to lr_final; on_step sees every step; a card
    written before lr_final existed still reads (constant rate)."""
    seen = []
    real_step = torch.optim.Adam.step

    def step(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    calls = []
    cfg = dataclasses.replace(TINY, iterations=5, lr=1e-2, lr_final=1e-4)
    result = train_roth([_case(0)], cfg, progress=False, 
                        on_step=lambda i, v, m: calls.append((i, v, m)))
    assert seen[0] == pytest.approx(1e-2) and seen[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(seen, seen[1:]))
    assert [c[:2] for c in calls] == list(enumerate(result.losses))
    assert all(c[2] is result.model for c in calls)
    seen.clear()
    train_roth([_case(0)], TINY, progress=False)
    assert seen == [pytest.approx(TINY.lr)] * TINY.iterations
    old = TINY.to_dict()
    del old["lr_final"]
    assert RothConfig.from_dict(old) == TINY
    with pytest.raises(ConfigError, match="lr_final"):
        RothConfig(lr_final=0.0)


def test_batch_dice_and_cross_entropy():
    """dice_over_batch sums each class over the batch (a class absent from one subvolume no
    longer scores a perfect Dice there); ce_weight adds cross-entropy; defaults: the seed's."""
    torch.manual_seed(0)
    logits = torch.randn(2, 8, 4, 4, 4)
    target = torch.zeros(2, 8, 4, 4, 4)
    target[:, 0] = 1
    target[0, 0, :2], target[0, 3, :2] = 0, 1             # liver in the first item only
    probs = torch.softmax(logits, 1)
    base = RothConfig(organs=SEED_ORGANS)
    assert not base.dice_over_batch and base.ce_weight == 0 and base.class_weights is None
    assert roth._loss(logits, target, base) == weighted_dice_loss(probs, target, (1.0,) * 8)
    batch = dataclasses.replace(base, dice_over_batch=True)
    joined = weighted_dice_loss(probs.movedim(0, 1).reshape(1, 8, -1),
                                target.movedim(0, 1).reshape(1, 8, -1), (1.0,) * 8)
    assert torch.allclose(roth._loss(logits, target, batch), joined)
    ce = dataclasses.replace(base, ce_weight=0.5)
    expected = weighted_dice_loss(probs, target, (1.0,) * 8) + 0.5 * torch.nn.functional \
        .cross_entropy(logits, target.argmax(1))
    assert torch.allclose(roth._loss(logits, target, ce), expected)
    # predicting no organ at all: per item, the absent classes score -1; over the batch the
    # liver that one item has still costs
    empty = torch.full_like(logits, -30.0)
    empty[:, 0] = 30.0
    assert roth._loss(empty, target, base) < roth._loss(empty, target, batch) - 0.05
    with pytest.raises(ConfigError, match="ce_weight"):
        RothConfig(ce_weight=-1.0)
    with pytest.raises(ConfigError, match="dice_over_batch"):
        RothConfig(dice_over_batch=1)
    cfg = dataclasses.replace(TINY, dice_over_batch=True, ce_weight=1.0)
    result = train_roth([_case(0), _case(1)], cfg, progress=False)
    assert np.isfinite(result.losses).all()


def test_the_bundled_model_loads_checked_and_segments():
    """The shipped multi-organ model: its hash is checked, its card states what it measures on
    real CT, and it segments a CT on the CT's own grid."""
    from iunet_nb.systems.roth import bundled_roth_path, load_bundled_roth

    model = load_bundled_roth()
    card = json.loads(bundled_roth_path().with_suffix(".json").read_text())
    assert card["system"] == "roth" and card["date"] == "2026-12-07"
    assert {"3D-IRCADb 1.7 liver", "3D-IRCADb 1.7 left kidney", "3D-IRCADb 1.7 right kidney",
            "PANCREAS_0002 pancreas"} <= set(card["real_ct"])
    assert model.config.organs == ROTH_ORGANS and card["iterations_total"] == 17500
    assert model.config.dice_over_batch and model.config.ce_weight == 1.0
    ct, _ = _case(0, shape=(24, 40, 40))
    pred = predict_roth(ct, model)
    assert pred.labels.shape == ct.shape and pred.labels.geometry == ct.geometry


def test_marginal_loss_for_organs_a_case_does_not_label():
    """A -1 channel marks an organ the subvolume's case does not draw: predicting it where the
    label map says background costs nothing (it may be that organ), unlike in a fully labelled
    case; with every organ labelled the loss is unchanged."""
    cfg = RothConfig(organs=SEED_ORGANS, dice_over_batch=True, ce_weight=1.0)
    target = torch.zeros(2, 8, 4, 4, 4)
    target[:, 0] = 1
    target[:, 3, :2], target[:, 0, :2] = 1, 0              # liver in the top half
    logits = torch.full_like(target, -10.0)
    logits[:, 3, :2] = 10.0                                # liver found ...
    logits[:, 7, 2:] = 10.0                                # ... and "pancreas" below it
    full = roth._loss(logits, target, cfg)
    partial = target.clone()
    partial[:, 7] = -1.0                                   # the pancreas is not drawn
    marginal = roth._loss(logits, partial, cfg)
    assert marginal < full - 1.0
    ideal = logits.clone()                                 # background where it is drawn
    ideal[:, 7, 2:], ideal[:, 0, 2:] = -10.0, 10.0
    assert marginal <= roth._loss(ideal, target, cfg) + 1e-3    # as good as the ideal
    logits.requires_grad_(True)
    roth._loss(logits, partial, cfg).backward()
    assert torch.isfinite(logits.grad).all()
    # a labelled organ the network misses still costs in the partial case
    missed = logits.detach().clone()
    missed[:, 3, :2] = -10.0
    missed[:, 0, :2] = 10.0
    assert roth._loss(missed, partial, cfg) > marginal + 0.3


def test_train_with_unlabelled_organs():
    ct, lab = _case()
    result = train_roth([(ct, lab), (ct, lab)], TINY, progress=False,
                        unlabelled=[(), ("pancreas", "stomach")])
    assert np.isfinite(result.losses).all()
    with pytest.raises(InputError, match="2 cases"):
        train_roth([(ct, lab), (ct, lab)], TINY, progress=False, unlabelled=[()])
    with pytest.raises(InputError, match="Roth organs"):
        train_roth([(ct, lab)], TINY, progress=False, unlabelled=[("kidney",)])
    with pytest.raises(InputError, match="Roth organs"):
        train_roth([(ct, lab)], TINY, progress=False, unlabelled=["pancreas"])
