"""Zhou et al. coarse-to-fine system: config, FCN, sampling, 3-slice fusion, iterations, I/O."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_ellipsoid
from torch import nn

from iunet_nb.errors import CheckpointError, ConfigError, InputError
from iunet_nb.io.volume import Geometry, Volume
from iunet_nb.model.evaluate import dice
from iunet_nb.systems import zhou
from iunet_nb.systems.zhou import FCN2D, ZhouConfig, ZhouModel, load_zhou, predict_zhou, train_zhou




def _cases(n=2, shape=(16, 24, 24)):
    g = Geometry(spacing_mm=(2.5, 0.8, 0.7), origin_mm=(-10.0, 5.0, 30.0),
                 direction=(1, 0, 0, 0, -1, 0, 0, 0, 1))
    out = []
    for i in range(n):
        m = make_ellipsoid(shape, center=(8, 11 + i, 12), radii=(4, 5, 6))
        rng = np.random.default_rng(i)
        ct = np.where(m > 0, 120.0, -50.0) + rng.normal(0, 10, shape)
        out.append((Volume(ct.astype(np.float32), g), Volume(m, g)))
    return out


TINY = ZhouConfig(base_channels=2, depth=3, coarse_iterations=2, fine_iterations=2,
                  batch_size=2, lr=1e-3, fine_margin_px=(1, 2), test_frame_px=2,
                  max_iterations=2)


class _Thresh(nn.Module):
    """Stub view model: logit +-50 where the input is above ``level`` (3 slices in, 3 out)."""

    min_size = 1

    def __init__(self, level: float) -> None:
        super().__init__()
        self.level = level
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.where(x > self.level, 50.0, -50.0)


def _stub_model(cfg, coarse_level, fine_level):
    model = ZhouModel(cfg)
    for v in zhou.VIEWS:
        model.coarse[v] = _Thresh(coarse_level)
        model.fine[v] = _Thresh(fine_level)
    return model


# ------------------------------------------------------------------------------ config
def test_config_defaults_are_the_seed_and_round_trip():
    cfg = ZhouConfig()
    assert (cfg.coarse_iterations, cfg.fine_iterations, cfg.batch_size, cfg.lr) == \
        (80000, 50000, 1, 1e-5)
    assert cfg.fine_margin_px == (10, 20) and cfg.test_frame_px == 15
    assert cfg.max_iterations == 10 and cfg.stop_dsc == 0.95
    assert cfg.min_target_fraction == 0.01
    red = ZhouConfig.reduced(seed=3)
    assert red.voxel_mm == (4.0, 4.0, 4.0) and red.seed == 3
    assert ZhouConfig.from_json(red.to_json()) == red


@pytest.mark.parametrize("kwargs, match", [
    (dict(depth=2), "depth must be >= 3"),
    (dict(fine_margin_px=(20, 10)), "fine_margin_px"),
    (dict(stop_dsc=1.5), "stop_dsc"),
    (dict(hu_window=(240, -100)), "hu_window"),
    (dict(voxel_mm=(4, 0, 4)), "voxel_mm"),
    (dict(batch_size=0), "batch_size must be a positive integer"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ZhouConfig(**kwargs)


# ------------------------------------------------------------------------------ network
@pytest.mark.parametrize("hw", [(13, 21), (5, 7), (40, 33)])
def test_fcn_keeps_any_size(hw):
    net = FCN2D(3, 3, base_channels=2, depth=3).eval()
    x = torch.randn(2, 3, *hw)
    out = zhou._forward_padded(net, x)
    assert out.shape == (2, 3, *hw)
    # Padding small inputs must not change what a larger input's top-left corner sees... but
    # it must not leak between batch items: item 1 alone gives the same logits.
    torch.testing.assert_close(zhou._forward_padded(net, x[1:]), out[1:], atol=1e-5, rtol=1e-5)


def test_fcn_rejects_bad_input():
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        FCN2D(depth=3)(torch.zeros(3, 8, 8))
    with pytest.raises(ConfigError, match="depth >= 3"):
        FCN2D(depth=2)


# ------------------------------------------------------------------------------ sampling
def test_slab_is_three_neighbours_clamped_at_the_ends():
    vol = np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3)
    s = zhou._slab(vol, 0, 0)
    np.testing.assert_array_equal(s, vol[[0, 0, 1]])
    s = zhou._slab(vol, 2, 2)                       # sagittal: (3, z, y)
    np.testing.assert_array_equal(s, np.moveaxis(vol[:, :, [1, 2, 2]], 2, 0))
    assert zhou._slab(vol, 1, 1).shape == (3, 4, 3)  # coronal: (3, z, x)


def test_coarse_index_uses_the_target_fraction():
    mask = np.zeros((3, 10, 10), np.float32)
    mask[0, :1, :1] = 1      # 1 %
    mask[1, :2, :5] = 1      # 10 %
    case = zhou._Case(np.zeros_like(mask), mask, (0, 0, 0), (2, 2, 5))
    assert zhou._coarse_index([case], 0, 0.01) == [[0, 1]]
    assert zhou._coarse_index([case], 0, 0.05) == [[1]]
    # nothing reaches 50 %: falls back to every slice with any target
    assert zhou._coarse_index([case], 0, 0.5) == [[0, 1]]


def test_fine_sample_crops_box_plus_margins():
    shape = (12, 40, 40)
    mask = np.zeros(shape, np.float32)
    mask[4:8, 10:20, 15:30] = 1
    case = zhou._Case(np.random.default_rng(0).normal(size=shape).astype(np.float32), mask,
                      (4, 10, 15), (8, 20, 30))
    rng = np.random.default_rng(1)
    for _ in range(20):
        x, y = zhou._fine_sample([case], 0, (2, 5), 3, rng)
        assert x.shape[:2] == (3, 3) and x.shape == y.shape
        h, w = x.shape[-2:]
        assert 10 + 4 <= h <= 10 + 10 and 15 + 4 <= w <= 15 + 10
        # every target pixel of the slices is inside the crop
        assert (y[:, 1].sum(axis=(1, 2)) == 10 * 15).all()
    # margins clipped at the image border
    case2 = zhou._Case(case.image, mask, (4, 0, 15), (8, 20, 40))
    x, _ = zhou._fine_sample([case2], 0, (3, 3), 1, rng)
    assert x.shape[-2:] == (23, 28)


# ------------------------------------------------------------------------------ fusion
def test_predict_view_gives_each_slice_the_mean_of_its_three_inputs():
    vol = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32)
    net = _Thresh(0.0)
    for axis in range(3):
        prob = zhou._predict_view(net, vol, axis, (0, 0, 0), vol.shape, torch.device("cpu"))
        np.testing.assert_allclose(prob, (vol > 0).astype(np.float32), atol=1e-6)
    # a box: zero outside, exact inside
    lo, hi = (1, 2, 3), (5, 6, 7)
    prob = zhou._predict_view(net, vol, 1, lo, hi, torch.device("cpu"))
    inside = np.zeros(vol.shape, bool)
    inside[1:5, 2:6, 3:7] = True
    np.testing.assert_allclose(prob[inside], (vol[inside] > 0).astype(np.float32), atol=1e-6)
    assert not prob[~inside].any()


def test_predict_view_averages_disagreeing_inputs():
    # A net whose output channel k is 1 only for k == 0: slice j is "1" only in the input
    # centred at j + 1. Interior slices appear in 3 inputs -> 1/3; the last slice is seen
    # by 2 inputs (centred at n-2, n-1) and gets 0 from both.
    class First(nn.Module):
        min_size = 1

        def forward(self, x):
            out = torch.full_like(x, -50.0)
            out[:, 0] = 50.0
            return out

    vol = np.zeros((5, 3, 3), np.float32)
    prob = zhou._predict_view(First(), vol, 0, (0, 0, 0), vol.shape, torch.device("cpu"))
    np.testing.assert_allclose(prob[:, 0, 0], [1 / 2, 1 / 3, 1 / 3, 1 / 3, 0.0], atol=1e-6)


def test_predict_zhou_coarse_then_fine_iterations_and_geometry():
    (ct, mask), = _cases(1)
    cfg = ZhouConfig(hu_window=(-100.0, 240.0), base_channels=2, depth=3, test_frame_px=2)
    # coarse over-segments (threshold below the background), fine is exact -> S1 differs
    # from S0, S2 equals S1 -> stops after 2 iterations with d2 = 1.
    model = _stub_model(cfg, coarse_level=-2.0, fine_level=0.0)
    pred = predict_zhou(ct, model, device="cpu")
    assert pred.coarse_mask.array.all()            # everything above -2 (windowed units)
    np.testing.assert_array_equal(pred.mask.array, mask.array)
    assert pred.iterations == 2
    assert pred.inter_iteration_dsc[0] == pytest.approx(dice(np.ones_like(mask.array),
                                                             mask.array))
    assert pred.inter_iteration_dsc[1] == 1.0
    # the second box is the organ's box plus the 2-voxel frame, clipped
    lo, hi = pred.boxes[1]
    nz = np.nonzero(mask.array)
    assert lo == tuple(max(0, int(a.min()) - 2) for a in nz)
    assert hi == tuple(min(n, int(a.max()) + 3) for a, n in zip(nz, mask.shape))
    assert pred.mask.geometry == ct.geometry and pred.mask.array.dtype == np.uint8
    # coarse only
    assert predict_zhou(ct, model, fine=False).iterations == 0


def test_predict_zhou_stops_at_max_iterations_and_on_empty():
    (ct, mask), = _cases(1)
    cfg = ZhouConfig(base_channels=2, depth=3, max_iterations=3, stop_dsc=1.0)
    model = _stub_model(cfg, 0.0, 0.0)
    pred = predict_zhou(ct, model)
    assert pred.iterations == 3 and pred.inter_iteration_dsc == [1.0, 1.0, 1.0]
    empty = _stub_model(cfg, 5.0, 0.0)            # coarse finds nothing
    pred = predict_zhou(ct, empty)
    assert pred.iterations == 0 and not pred.mask.array.any()
    assert sum(m.calls for m in empty.fine.values()) == 0


def test_predict_zhou_on_a_coarser_working_grid_returns_the_original_grid():
    g = Geometry(spacing_mm=(2.5, 0.8, 0.7))
    mask = make_ellipsoid((16, 32, 32), radii=(5, 9, 10))
    ct = Volume(np.where(mask > 0, 150.0, -50.0).astype(np.float32), g)
    cfg = ZhouConfig(base_channels=2, depth=3, voxel_mm=(5.0, 1.6, 1.4), test_frame_px=1)
    pred = predict_zhou(ct, _stub_model(cfg, 0.0, 0.0))
    assert pred.mask.shape == ct.shape
    assert dice(pred.mask.array, mask) > 0.9
    # no shift: the centroid comes back to within a fifth of a voxel
    np.testing.assert_allclose(np.argwhere(pred.mask.array).mean(0), np.argwhere(mask).mean(0),
                               atol=0.2)


def test_predict_zhou_rejects_bad_input():
    (ct, _), = _cases(1)
    with pytest.raises(InputError, match="ZhouModel"):
        predict_zhou(ct, nn.Linear(1, 1))
    bad = ct.with_array(np.where(ct.array > 0, np.nan, ct.array).astype(np.float32))
    with pytest.raises(InputError, match="NaN"):
        predict_zhou(bad, ZhouModel(TINY))
    with pytest.raises(InputError, match="Volume"):
        predict_zhou(ct.array, ZhouModel(TINY))


# ------------------------------------------------------------------------------ training
def test_train_is_seeded_and_saves_a_loadable_model(tmp_path):
    cases = _cases(2)
    a = train_zhou(cases, TINY, tmp_path / "a", progress=False, data_description="2 ellipsoids")
    b = train_zhou(cases, TINY, None, progress=False)
    assert set(a.losses) == {f"{s}/{v}" for s in ("coarse", "fine") for v in zhou.VIEWS}
    assert all(len(v) == 2 and np.isfinite(v).all() for v in a.losses.values())
    assert a.losses == b.losses
    for (k, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(pa, pb, msg=k)
    card = json.loads((tmp_path / "a" / "model.json").read_text())
    assert card["system"] == "zhou" and card["data"] == "2 ellipsoids"
    assert ZhouConfig.from_dict(card["config"]) == TINY
    loaded = load_zhou(tmp_path / "a" / "model.pt")
    ct = cases[0][0]
    np.testing.assert_array_equal(predict_zhou(ct, loaded).probability,
                                  predict_zhou(ct, a.model).probability)
    other = train_zhou(cases, ZhouConfig(**{**TINY.to_dict(), "seed": 1}), None,
                       progress=False)
    assert other.losses != a.losses


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_zhou(tmp_path / "missing.pt")
    model = ZhouModel(TINY)
    model.save(tmp_path / "m.pt")
    card = json.loads((tmp_path / "m.json").read_text())
    card["system"] = "roth"
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="'roth' model"):
        load_zhou(tmp_path / "m.pt")
    card["system"] = "zhou"
    card["config"]["base_channels"] = 4
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="do not match"):
        load_zhou(tmp_path / "m.pt")


def test_train_rejects_bad_cases():
    (ct, mask), = _cases(1)
    with pytest.raises(InputError, match="at least one"):
        train_zhou([], TINY, progress=False)
    with pytest.raises(InputError, match="shape"):
        train_zhou([(ct, Volume(mask.array[:-1]))], TINY, progress=False)
    with pytest.raises(InputError, match="no training case has a target"):
        train_zhou([(ct, mask.with_array(np.zeros_like(mask.array)))], TINY, progress=False)


@pytest.mark.slow
def test_training_learns_the_ellipsoid():
    cases = _cases(3, shape=(16, 32, 32))
    cfg = ZhouConfig(base_channels=4, depth=3, coarse_iterations=60, fine_iterations=60,
                     batch_size=2, lr=3e-3, fine_margin_px=(2, 4), test_frame_px=3)
    result = train_zhou(cases, cfg, progress=False)
    for key, losses in result.losses.items():
        assert np.mean(losses[-10:]) < np.mean(losses[:10]), key
    pred = predict_zhou(cases[0][0], result.model)
    assert dice(pred.mask.array, cases[0][1].array) > 0.8


# ------------------------------------------------------------------------------ orientation
def _stored_otherwise(v: Volume) -> Volume:
    """The same physical image stored x-first and reversed in two axes (SimpleITK keeps every
    voxel at its physical point)."""
    import SimpleITK as sitk

    return Volume.from_sitk(sitk.Flip(sitk.PermuteAxes(v.to_sitk(), [1, 2, 0]), [True, False, True]))


def _back_on(reference: Volume, moved: Volume) -> np.ndarray:
    import SimpleITK as sitk

    img = moved.to_sitk()
    return sitk.GetArrayFromImage(sitk.Resample(img, reference.to_sitk(), sitk.Transform(),
                                                sitk.sitkNearestNeighbor, 0, img.GetPixelID()))


def test_a_copy_stored_otherwise_gives_the_same_result_in_physical_space():
    (ct, mask), = _cases(1)
    copy = _stored_otherwise(ct)
    assert copy.shape != ct.shape
    # stub views: the result is the organ; the fine boxes cover the same voxels
    cfg = ZhouConfig(hu_window=(-100.0, 240.0), base_channels=2, depth=3, test_frame_px=2)
    stub = _stub_model(cfg, coarse_level=-2.0, fine_level=0.0)
    p1, p2 = predict_zhou(ct, stub), predict_zhou(copy, stub)
    np.testing.assert_array_equal(p1.mask.array, mask.array)
    np.testing.assert_array_equal(_back_on(ct, p2.mask), p1.mask.array)
    assert p2.mask.geometry == copy.geometry and p1.iterations == p2.iterations == 2
    for (lo1, hi1), (lo2, hi2) in zip(p1.boxes, p2.boxes):
        in1, in2 = np.zeros(ct.shape, np.uint8), np.zeros(copy.shape, np.uint8)
        in1[tuple(slice(a, b) for a, b in zip(lo1, hi1))] = 1
        in2[tuple(slice(a, b) for a, b in zip(lo2, hi2))] = 1
        np.testing.assert_array_equal(_back_on(ct, copy.with_array(in2)), in1)
    # a random network: the same probabilities (its views see the same anatomical slices)
    torch.manual_seed(0)
    net = ZhouModel(TINY).eval()
    q1 = net.organ_probability(ct, stage="fine")
    q2 = net.organ_probability(copy, stage="fine")
    np.testing.assert_allclose(_back_on(ct, copy.with_array(q2)), q1, atol=1e-5)
    assert q1.std() > 1e-4   # not a constant map: the comparison means something


def test_training_on_copies_stored_otherwise_gives_the_same_weights():
    cases = _cases(2)
    copies = [(_stored_otherwise(c), _stored_otherwise(m)) for c, m in cases]
    a = train_zhou(cases, TINY, progress=False).model.state_dict()
    b = train_zhou(copies, TINY, progress=False).model.state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    with torch.random.fork_rng():
        torch.manual_seed(TINY.seed)        # the initial weights train_zhou starts from
        init = ZhouModel(TINY).state_dict()
    assert any(not torch.allclose(a[k].float(), init[k].float()) for k in a)  # it trained


def test_the_bundled_coarse_to_fine_system_loads_checked_and_segments(tmp_path, monkeypatch):
    """The shipped Zhou system has trained fine models (unlike the box detector, whose fine
    stage has one step), its card states its real-CT figure, and a changed file is refused."""
    from iunet_nb.systems.zhou import bundled_zhou_path, load_bundled_zhou

    model = load_bundled_zhou()
    card = json.loads(bundled_zhou_path().with_suffix(".json").read_text())
    assert card["system"] == "zhou" and model.config.fine_iterations > 1000
    assert "PANCREAS_0002 pancreas" in card["real_ct"]
    (ct, _), = _cases(1)
    pred = predict_zhou(ct, model)
    assert pred.mask.shape == ct.shape and pred.mask.geometry == ct.geometry
    other = ZhouModel(ZhouConfig(base_channels=2, depth=3))
    other.save(tmp_path / "other.pt")
    monkeypatch.setattr(zhou, "bundled_zhou_path", lambda: tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not the shipped Zhou pancreas system"):
        load_bundled_zhou()
