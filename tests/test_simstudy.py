"""Tests of the simulated reader study: plan order, simulated timeline, analysis, errors."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from iunet_nb.errors import ConfigError, InputError
from iunet_nb.interactive.robot import RobotConfig
from iunet_nb.interactive.session import RefineConfig
from iunet_nb.model.checkpoint import ModelCard
from iunet_nb.model.nets import NetConfig, build_network
from iunet_nb.model.preprocess import PreprocessConfig
from iunet_nb.studies.simstudy import (
    add_cli,
    draw_think_s,
    outline_fill,
    simulate_study,
    validate_simulation_parameters,
)
from iunet_nb.studies.study import analyse_study, case_times, design_study, load_event_logs
from iunet_nb.synth.phantom import make_phantom

TINY_REFINE = RefineConfig(device="cpu", iterations=2)




@pytest.fixture(scope="module")
def tiny():
    card = ModelCard(net=NetConfig(base_channels=4), preprocess=PreprocessConfig(size_zyx=(8, 16, 16)))
    torch.manual_seed(0)
    model = build_network(card.net).eval()
    cases = [(f"c{i}", *make_phantom(i, shape_zyx=(12, 40, 40), spacing_mm=(8.0, 4.0, 4.0)))
             for i in range(2)]
    return model, card, cases


@pytest.fixture(scope="module")
def study(tiny, tmp_path_factory):
    model, card, cases = tiny
    plan = design_study(["r1", "r2"], [c[0] for c in cases], seed=1)
    out = tmp_path_factory.mktemp("sim") / "study"
    torch.set_num_threads(1)
    sim = simulate_study(plan, cases, out, model=model, card=card, skills=["expert", "novice"],
                         rounds=2, refine_config=TINY_REFINE, seed=3, progress=False)
    return plan, sim, cases


# ------------------------------------------------------------------------------ pure pieces
def test_think_times_follow_the_robots_lognormal_model():
    robot = RobotConfig.preset("novice")  # median 9 s, log-sd 0.7
    rng = np.random.default_rng(5)
    draws = np.array([draw_think_s(robot, rng) for _ in range(4000)])
    assert np.median(draws) == pytest.approx(9.0, rel=0.05)
    assert np.std(np.log(draws)) == pytest.approx(0.7, rel=0.05)
    again = np.random.default_rng(5)
    assert draw_think_s(robot, again) == pytest.approx(9.0 * math.exp(0.7 * np.random.default_rng(
        5).standard_normal()))
    assert draw_think_s(RobotConfig(think_model="none"), rng) == 0.0


def test_outline_fill_is_exact_without_jitter_and_close_with_it():
    yy, xx = np.mgrid[:40, :40]
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 <= 10 ** 2
    painted, perimeter = outline_fill(disc, (1.0, 1.0), 0.0, 10.0, rng=0)
    assert np.array_equal(painted, disc)
    # boundary pixels of a radius-10 disc: about 2 pi r (8-connected staircase: a bit less)
    assert 0.8 * 2 * math.pi * 10 < perimeter < 1.2 * 2 * math.pi * 10
    shaky, _ = outline_fill(disc, (1.0, 1.0), 1.5, 10.0, rng=0)
    dice = 2 * np.count_nonzero(shaky & disc) / (shaky.sum() + disc.sum())
    assert not np.array_equal(shaky, disc) and 0.8 < dice < 0.99
    with pytest.raises(InputError, match="non-empty 2D region"):
        outline_fill(np.zeros((5, 5), bool), (1.0, 1.0), 0.0, 1.0)


# ------------------------------------------------------------------------------ the study
def test_each_reader_follows_the_plan_in_its_folders(study):
    plan, sim, _ = study
    for reader in plan.readers:
        mine = sim.tasks[sim.tasks["reader_id"] == reader]
        planned = plan.tasks_for(reader)
        assert list(mine["case_id"]) == [t.case_id for t in planned]
        assert list(mine["method"]) == [t.method for t in planned]
        for t in planned:
            events = [json.loads(line) for line in
                      (sim.study_dir / t.folder / "events.jsonl").read_text().splitlines()]
            assert {e["reader_id"] for e in events} == {reader}
            assert {e["case_id"] for e in events} == {t.case_id}
            kinds = [e["event"] for e in events]
            assert kinds[0] == "open" and kinds[-1] == "save"
            if t.method == "manual":
                assert "predict" not in kinds and "refine" not in kinds and "paint" in kinds
            else:
                assert kinds[1] == "predict" and "paint" not in kinds
    # the simulated readers' starts follow one another: each task starts when the last ended
    for reader in plan.readers:
        walls = [pd.Timestamp(json.loads((sim.study_dir / t.folder / "events.jsonl")
                                         .read_text().splitlines()[0])["t_wall"])
                 for t in plan.tasks_for(reader)]
        assert walls == sorted(walls)
    assert sorted(sim.tasks["skill"].unique()) == ["expert", "novice"]
    assert set(sim.tasks.loc[sim.tasks["reader_id"] == "r2", "skill"]) == {"novice"}


def test_logged_times_are_the_simulated_think_plus_action_times(study):
    plan, sim, _ = study
    times = case_times(load_event_logs(sim.study_dir), plan)
    assert times["complete"].all()
    for t in plan.tasks:
        events = [json.loads(line) for line in
                  (sim.study_dir / t.folder / "events.jsonl").read_text().splitlines()]
        think = [e["details"]["simulated"]["think_s"] for e in events]
        dur = [e["duration_s"] for e in events]
        # the timeline: each event's clock is the previous one plus its think and its action
        clock = np.cumsum([dur[0]] + [a + b for a, b in zip(think[1:], dur[1:])])
        assert np.allclose([e["t_monotonic"] for e in events], clock, atol=1e-5)
        start = next(i for i, e in enumerate(events) if e["event"] in
                     (("paint",) if t.method == "manual" else ("predict",)))
        # the paper's time: manual from the start of the first paint, interactive from predict
        expected = sum(think[start + 1:]) + sum(dur[start + 1:])
        if t.method == "manual":
            expected += dur[start]
        row = times[(times["reader_id"] == t.reader_id) & (times["case_id"] == t.case_id)]
        assert float(row["time_s"].iloc[0]) == pytest.approx(expected, abs=1e-4)
        sim_row = sim.tasks[(sim.tasks["reader_id"] == t.reader_id)
                            & (sim.tasks["case_id"] == t.case_id)]
        assert float(sim_row["time_s"].iloc[0]) == pytest.approx(expected, abs=1e-4)
        # thinking dominates: seconds of think per stroke, milliseconds of computing
        assert sum(think) == pytest.approx(float(sim_row["think_s"].iloc[0]), abs=1e-4)
        assert sum(think) > 3.0
    manual = times[times["method"] == "manual"]["time_s"]
    assert (manual > 20.0).all()  # several slices outlined, each several strokes


def test_analysis_runs_and_interactive_dsc_never_ends_below_its_start(study):
    _, sim, _ = study
    result = analyse_study(sim.study_dir)
    assert len(result.times) == 4 and result.times["complete"].all()
    assert set(result.dsc["method"]) == {"manual", "interactive"}
    assert result.stats["per_method"]["manual"]["n_tasks"] == 2
    inter = sim.tasks[sim.tasks["method"] == "interactive"]
    assert (inter["dsc_final"] >= inter["dsc_initial"] - 1e-12).all()
    assert (inter["rounds"] >= 1).all()  # the random network is far from the 0.95 target
    # the final DSC matches the last DSC the session logged against the reference
    for row in sim.tasks.itertuples():
        last = json.loads((sim.study_dir / row.folder / "events.jsonl").read_text()
                          .splitlines()[-1])
        assert last["dsc"] == pytest.approx(row.dsc_final, abs=1e-6)
    # the manual outline is close to the reference (expert: 0.5 mm jitter on 4 mm pixels)
    manual = sim.tasks[(sim.tasks["method"] == "manual") & (sim.tasks["skill"] == "expert")]
    assert (manual["dsc_final"] > 0.9).all()


def test_the_same_seed_draws_the_same_strokes_and_think_times(tiny, study, tmp_path):
    model, card, cases = tiny
    plan, sim, _ = study
    again = simulate_study(plan, cases, tmp_path / "again", model=model, card=card,
                           skills=["expert", "novice"], rounds=2, refine_config=TINY_REFINE,
                           seed=3, progress=False)
    cols = ["reader_id", "case_id", "n_strokes", "n_undo", "think_s", "dsc_final"]
    pd.testing.assert_frame_equal(again.tasks[cols], sim.tasks[cols])


# ------------------------------------------------------------------------------ bad input
def test_bad_input_is_refused_with_what_to_do(tiny, study, tmp_path):
    model, card, cases = tiny
    plan, sim, _ = study
    kw = {"model": model, "card": card, "refine_config": TINY_REFINE, "progress": False}
    with pytest.raises(InputError, match="already holds sessions"):
        simulate_study(plan, cases, sim.study_dir, **kw)
    with pytest.raises(InputError, match=r"\['c1'\] are not among the cases"):
        simulate_study(plan, cases[:1], tmp_path / "a", **kw)
    with pytest.raises(ConfigError, match="unknown skill 'expret'"):
        simulate_study(plan, cases, tmp_path / "b", skills="expret", **kw)
    with pytest.raises(ConfigError, match=r"missing \['r2'\]"):
        simulate_study(plan, cases, tmp_path / "c", skills={"r1": "expert"}, **kw)
    with pytest.raises(ConfigError, match="rounds must be an integer >= 1"):
        simulate_study(plan, cases, tmp_path / "d", rounds=0, **kw)
    with pytest.raises(ConfigError, match=r"dsc_target must be a number in \(0, 1\]"):
        simulate_study(plan, cases, tmp_path / "e", dsc_target=95, **kw)
    with pytest.raises(ConfigError, match="phantom:4"):
        validate_simulation_parameters(3, ["c0", "c1"])
    with pytest.raises(ConfigError, match="unknown skill"):
        validate_simulation_parameters(3, "phantom:4", skills=["expert", "pro"])
    assert validate_simulation_parameters(2, "phantom:2") == (["reader1", "reader2"],
                                                              ["phantom000", "phantom001"])


def test_cli_registers_simulate_study():
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["simulate-study", "--out", "x", "--readers", "2", "--skills",
                              "expert", "novice", "--rounds", "4"])
    assert args.readers == ["2"] and args.skills == ["expert", "novice"] and args.rounds == 4
    assert args.data == "phantom:4" and callable(args.func)
