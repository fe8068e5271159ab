"""Tests of the comparison harness: methods, random walker, full fine-tuning, tables."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from iunet_nb.errors import ConfigError, InputError
from iunet_nb.interactive.edges import EDGE_WEIGHT
from iunet_nb.interactive.robot import RobotConfig, plan_stroke, run_robot
from iunet_nb.interactive.session import RefineConfig, Session, fine_tune
from iunet_nb.model.nets import build_network
from iunet_nb.model.preprocess import Box
from iunet_nb.studies.compare import (
    IMPROVED_CONFIG,
    METHODS,
    PAPER_CONFIG,
    CompareCase,
    FullFineTuneNet,
    Method,
    _apply_for,
    compare_methods,
    random_walker_probability,
    random_walker_round,
)


# ------------------------------------------------------------------------------ random walker
def test_random_walker_on_a_uniform_chain_is_linear():
    n = 11
    image = np.zeros((1, 1, n))
    seeds = np.zeros((1, 1, n), np.uint8)
    seeds[0, 0, 0], seeds[0, 0, -1] = 1, 2
    p = random_walker_probability(image, seeds, tol=1e-10)
    # harmonic function on a path with equal weights: 1 - i / (n - 1)
    np.testing.assert_allclose(p[0, 0], 1 - np.arange(n) / (n - 1), atol=1e-6)


def test_random_walker_stops_at_an_intensity_edge():
    image = np.zeros((3, 8, 20))
    image[:, :, 12:] = 1.0                      # an edge between x = 11 and 12
    image += np.random.default_rng(0).normal(0, 0.01, image.shape)
    seeds = np.zeros(image.shape, np.uint8)
    seeds[:, :, 0] = 1
    seeds[:, :, -1] = 2
    p = random_walker_probability(image, seeds, spacing_mm=(2.0, 1.0, 1.0))
    assert p[:, :, :12].min() > 0.9 and p[:, :, 12:].max() < 0.1
    assert np.all(p[seeds == 1] == 1) and np.all(p[seeds == 2] == 0)


def test_random_walker_needs_both_labels():
    with pytest.raises(InputError, match="foreground and background seeds"):
        random_walker_probability(np.zeros((2, 3, 3)), np.ones((2, 3, 3), np.uint8))
    with pytest.raises(InputError, match="same 3D shape"):
        random_walker_probability(np.zeros((2, 3, 3)), np.ones((2, 3, 4), np.uint8))


def test_random_walker_round_grows_into_missed_organ(ellipsoid_case, model, card):
    ct, ref = ellipsoid_case
    s = Session(ct, model, card, Box.from_mask(ref.array), config=RefineConfig(device="cpu"))
    half = ref.array.copy()
    half[:, :, 16:] = 0                           # the right half is missed
    s.paint(1, points=np.argwhere(half))
    before = s.mask.array
    stroke = plan_stroke(before, ref.array, ct.spacing_mm, RobotConfig(views=("axial",)), 0)
    assert stroke.label == "fg"
    n = random_walker_round(s, stroke)
    after = s.mask.array
    assert n == int(np.count_nonzero(after != before)) > 0
    assert np.all(after.ravel()[stroke.voxels] == 1)       # the scribble is honoured
    missed = (ref.array == 1) & (half == 0)
    gained = int(np.count_nonzero(after[missed]))
    leaked = int(np.count_nonzero(after[ref.array == 0]))
    assert gained > 2 * stroke.voxels.size and leaked < 0.05 * gained
    assert [e["event"] for e in s.events][-3:] in (["scribble", "paint", "paint"],
                                                   ["paint", "scribble", "paint"])


# ------------------------------------------------------------------------------ full fine-tuning
def test_full_fine_tune_trains_the_encoder_too(model):
    x = torch.randn(1, 1, 8, 16, 16)
    full = FullFineTuneNet(model)
    with torch.no_grad():
        assert torch.equal(full(x), model(x))
    assert len(full.interactive_parameters()) == len(list(model.parameters()))
    first_conv = model.encoder[0][0].conv.weight.detach().clone()
    target = np.zeros((8, 16, 16), np.uint8)
    target[2:6, 4:12, 4:12] = 1
    weight = np.ones((8, 16, 16), np.float32)
    torch.manual_seed(0)
    fine_tune(full, x[0, 0].numpy(), target, weight, RefineConfig(iterations=2, lr=1e-2))
    assert not torch.equal(model.encoder[0][0].conv.weight, first_conv)
    # the plain (paper) path leaves the encoder alone
    plain = build_network(model.cfg).eval()
    before = plain.encoder[0][0].conv.weight.detach().clone()
    fine_tune(plain, x[0, 0].numpy(), target, weight, RefineConfig(iterations=2, lr=1e-2))
    assert torch.equal(plain.encoder[0][0].conv.weight, before)


# ------------------------------------------------------------------------------ harness
def test_methods_table_is_complete_and_paper_config_is_the_papers():
    assert list(METHODS) == ["paint", "paper", "full", "random_walker", "improved",
                            "session_default"]
    assert METHODS["full"].full_network and METHODS["paint"].kind == "paint"
    # the paper's refinement: eq. 3 with lambda, image-driven band, no locality, both ways,
    # the network's mask (scribbles not forced)
    assert PAPER_CONFIG.threshold == 0.2 and PAPER_CONFIG.lam > 0
    assert PAPER_CONFIG.scribble_weight == 3.0 and not PAPER_CONFIG.force_scribbles
    assert PAPER_CONFIG.geodesic_lam == 1.0 and PAPER_CONFIG.lr == 1e-2
    assert PAPER_CONFIG.local_mm is None and not PAPER_CONFIG.one_way
    assert METHODS["paper"].refine == PAPER_CONFIG
    # the improved method is the Session's own refinement
    assert (IMPROVED_CONFIG.geodesic_lam, IMPROVED_CONFIG.lr, IMPROVED_CONFIG.local_mm,
            IMPROVED_CONFIG.one_way, IMPROVED_CONFIG.scribble_ce) == (0.0, 1e-3, 15.0, True, 1.0)
    assert PAPER_CONFIG.scribble_ce == 0.0  # the paper's loss is eq. 3 alone
    assert not PAPER_CONFIG.confidence_gate and not METHODS["full"].refine.confidence_gate
    # the defaults are the improved method plus the confidence gate and edge snapping
    assert METHODS["improved"].refine == IMPROVED_CONFIG
    assert PAPER_CONFIG.edge_weight == 0.0 and METHODS["full"].refine.edge_weight == 0.0
    assert dataclasses.replace(IMPROVED_CONFIG, confidence_gate=True,
                               edge_weight=EDGE_WEIGHT) == RefineConfig()
    assert METHODS["session_default"].refine == RefineConfig()
    for name in ("paper", "full", "improved", "session_default"):
        assert _apply_for(METHODS[name]) is None        # add_scribble + Session.refine
    assert METHODS["full"].refine.local_mm is None and METHODS["full"].refine.geodesic_lam == 1
    with pytest.raises(ConfigError, match="kind"):
        Method("x", "magic")
    with pytest.raises(ConfigError, match="full_network"):
        Method("x", "paint", full_network=True)
    with pytest.raises(ConfigError, match="must be a RefineConfig"):
        Method("x", "refine", refine={"lr": 1e-3})


def test_improved_method_is_the_sessions_own_refine(ellipsoid_case, model, card):
    ct, ref = ellipsoid_case
    robot = RobotConfig(rounds=2, seed=1)
    fast = dataclasses.replace(IMPROVED_CONFIG, iterations=2, lr=5e-2)
    result = compare_methods([CompareCase("ell", ct, ref)], model, card, robot,
                             methods=[Method("improved_fast", "refine", fast)])
    with Session(ct, model, card, Box.from_mask(ref.array),
                 config=dataclasses.replace(fast, device="cpu")) as s:
        direct = run_robot(s, ref, robot, predict=True)
        events = [e["event"] for e in s.events]
    assert events == ["open", "predict", "scribble", "refine", "scribble", "refine"]  # no paint
    np.testing.assert_array_equal(result.table["dsc"].to_numpy(), direct.table["dsc"].to_numpy())


def test_compare_methods_runs_every_method_from_the_same_start(ellipsoid_case, model, card):
    ct, ref = ellipsoid_case
    cases = [CompareCase("ell", ct, ref)]
    fast = Method("fast", "refine", RefineConfig(iterations=1), description="1 step")
    result = compare_methods(cases, model, card, RobotConfig(rounds=2, seed=1),
                             methods=["paint", "random_walker", fast])
    t = result.table
    assert len(t) == 3 * 3 and set(t["method"]) == {"paint", "random_walker", "fast"}
    start = t[t["round"] == 0]["dsc"].to_numpy()
    assert np.all(start == start[0])                # same weights, same box, same prediction
    paint = t[t["method"] == "paint"]["dsc"].to_numpy()
    assert np.all(np.diff(paint) > 0)               # painting inside errors only fixes voxels
    summ = result.summary.set_index("method")
    assert list(summ.index) == ["paint", "random_walker", "fast"]
    for method in summ.index:
        curve = t[t["method"] == method].sort_values("round")["dsc"].to_numpy()
        np.testing.assert_allclose([summ.loc[method, f"mean_dsc_r{k}"] for k in range(3)],
                                   curve)
        assert summ.loc[method, "auc"] == pytest.approx(
            (curve[0] / 2 + curve[1] + curve[2] / 2) / 2)
    assert summ.loc["paint", "monotone_mean"] and summ.loc["fast", "description"] == "1 step"
    with pytest.raises(ConfigError, match="unknown method"):
        compare_methods(cases, model, card, methods=["nope"])
    with pytest.raises(InputError, match="at least one case"):
        compare_methods([], model, card, methods=["paint"])
