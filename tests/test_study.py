"""Tests of the reader study: design, event-log timing, consensus, DSC tables, statistics.

Event logs are written here with known times (``write_study_logs``, also used by the
notebook tests); one test drives a real :class:`~iunet_nb.interactive.session.Session` to check that
the analysis reads what the session writes.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_ellipsoid

from iunet_nb.errors import ConfigError, InputError
from iunet_nb.io.images import write_mask
from iunet_nb.io.volume import Geometry, Volume
from iunet_nb.studies.study import (
    StudyPlan,
    analyse_study,
    case_times,
    compare_methods,
    consensus,
    design_study,
    dsc_table,
    interobserver_dsc,
    load_event_logs,
    load_final_masks,
    validate_analysis_parameters,
    validate_design_parameters,
    validate_id,
    write_study_report,
)

READERS = ["r1", "r2", "r3"]
CASES = ["c1", "c2", "c3", "c4"]


# ----------------------------------------------------------------------------- log writer
def _event(t_mono: float, event: str, *, session: str, case: str, reader: str, seq: int,
           duration: float = 0.01, dsc: float | None = None, wall0: float = 1.7e9,
           details: dict | None = None) -> dict:
    wall = datetime.datetime.fromtimestamp(wall0 + t_mono, datetime.timezone.utc)
    return {"seq": seq, "t_monotonic": t_mono, "t_wall": wall.isoformat(), "session_id": session,
            "case_id": case, "reader_id": reader, "event": event, "duration_s": duration,
            "dsc": dsc, "n_scribble_voxels": 0, "details": details or {}}


def write_session_log(folder: Path, reader: str, case: str, method: str, time_s: float, *,
                      t_open: float = 100.0, saved: bool = True, restart_after: float | None = None,
                      dsc: float | None = None) -> Path:
    """An ``events.jsonl`` whose timed span (paper's definitions) is exactly ``time_s``.

    Manual: the first paint starts at ``t_open + 7`` (logged 0.5 s later with duration 0.5);
    interactive: the predict event is logged at ``t_open + 7``. An intermediate save is
    logged halfway; the final save at start + time_s (no save at all if not ``saved``).
    With ``restart_after`` the process "crashes" that many seconds after the start and a new
    one (another monotonic clock, starting at 5.0) resumes with a ``load`` event; the time in
    between is not counted.
    """
    folder.mkdir(parents=True, exist_ok=True)
    kw = {"session": f"s-{reader}-{case}", "case": case, "reader": reader}
    start = t_open + 7.0
    ev = [("open", t_open, 0.01)]
    if method == "manual":
        ev.append(("paint", start + 0.5, 0.5))
        annotate = "paint"
    else:
        ev.append(("predict", start, 1.2))
        annotate = "scribble"
    if restart_after is None:
        ev += [(annotate, start + 0.3 * time_s, 0.1),
               ("save" if saved else annotate, start + 0.5 * time_s, 0.05)]
        if method == "interactive":
            ev.append(("refine", start + 0.6 * time_s, 0.8))
        ev.append(("save", start + time_s, 0.05) if saved else (annotate, start + time_s, 0.1))
    else:
        rest = time_s - restart_after
        ev += [(annotate, start + restart_after, 0.1),
               ("load", 5.0, 0.3), (annotate, 5.0 + 0.5 * rest, 0.1), ("save", 5.0 + rest, 0.05)]
    wall_shift = 0.0
    lines = []
    for seq, (name, t, d) in enumerate(ev):
        if name == "load":
            wall_shift = 1000.0  # the restart happened later in wall-clock time
        lines.append(json.dumps(_event(t, name, seq=seq, duration=d, dsc=dsc,
                                       wall0=1.7e9 + wall_shift, **kw)))
    path = folder / "events.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_study_logs(root: Path, plan: StudyPlan, times: dict[tuple[str, str], float],
                     masks: dict[tuple[str, str], np.ndarray] | None = None,
                     geometry: Geometry | None = None) -> None:
    """Session folders for every task of ``plan``: logs with the given times (+ final masks)."""
    root.mkdir(parents=True, exist_ok=True)
    plan.to_json(root / "plan.json")
    for t in plan.tasks:
        folder = root / t.folder
        write_session_log(folder, t.reader_id, t.case_id, t.method, times[(t.reader_id, t.case_id)])
        if masks is not None:
            name = "mask-000003.nii.gz"
            write_mask(Volume(masks[(t.reader_id, t.case_id)].astype(np.uint8),
                              geometry or Geometry()), folder / name)
            (folder / "state.json").write_text(json.dumps(
                {"format": "iunet-nb-session", "files": {"mask": {"name": name, "sha256": ""}}}))


def known_study(root: Path) -> tuple[StudyPlan, dict, dict]:
    """3 readers x 4 cases; manual 900 s, interactive 450 s except two known outliers."""
    plan = design_study(READERS, CASES, n_subsets=2, seed=0)
    times = {}
    for t in plan.tasks:
        times[(t.reader_id, t.case_id)] = 900.0 if t.method == "manual" else 450.0
    base = make_ellipsoid(shape=(6, 12, 12), radii=(2.5, 4.0, 4.0))
    masks = {}
    for i, t in enumerate(plan.tasks):
        m = base.copy()
        if t.reader_id == "r3":
            m[:, :, :6] = 0  # reader 3 always misses the left half
        masks[(t.reader_id, t.case_id)] = m
    write_study_logs(root, plan, times, masks)
    return plan, times, masks


# ----------------------------------------------------------------------------- design
def test_paper_design_alternates_subset_and_method_per_reader():
    cases = [f"case{i:02d}" for i in range(10)]
    plan = design_study(["r1", "r2", "r3"], cases, n_subsets=2, seed=3)
    a, b = plan.subsets
    assert len(a) == len(b) == 5 and sorted(a + b) == cases
    expected = {"r1": [(a, "manual"), (b, "interactive")],
                "r2": [(a, "interactive"), (b, "manual")],
                "r3": [(b, "manual"), (a, "interactive")]}
    for reader, blocks in expected.items():
        tasks = plan.tasks_for(reader)
        assert [t.position for t in tasks] == list(range(10))
        got = [(tuple(t.case_id for t in tasks[:5]), tasks[0].method),
               (tuple(t.case_id for t in tasks[5:]), tasks[5].method)]
        assert got == [(tuple(sorted(s)), m) for s, m in blocks]
        assert {t.method for t in tasks[:5]} == {blocks[0][1]}
    # every case is done by every reader exactly once, with both methods across readers
    for case in cases:
        methods = sorted(plan.method_of(r, case) for r in plan.readers)
        assert len(methods) == 3 and set(methods) == {"manual", "interactive"}
    assert plan.tasks_for("r2")[0].folder == f"r2/interactive/{plan.tasks_for('r2')[0].case_id}"


def test_design_is_seeded_and_any_numbers_work():
    p1 = design_study(["a", "b"], [f"c{i}" for i in range(7)], n_subsets=4, seed=1)
    p2 = design_study(["a", "b"], [f"c{i}" for i in range(7)], n_subsets=4, seed=1)
    p3 = design_study(["a", "b"], [f"c{i}" for i in range(7)], n_subsets=4, seed=2)
    assert p1 == p2 and p1.subsets != p3.subsets
    assert sorted(len(s) for s in p1.subsets) == [1, 2, 2, 2]
    for r in ("a", "b"):  # 4 subsets, 2 methods: each method on two subsets per reader
        blocks = {t.block: t.method for t in p1.tasks_for(r)}
        assert [blocks[k] for k in range(4)].count("manual") == 2
    assert p1.tasks_for("a")[0].method != p1.tasks_for("b")[0].method


def test_plan_json_round_trip_and_validation(tmp_path):
    plan = design_study(READERS, CASES)
    path = tmp_path / "plan.json"
    plan.to_json(path)
    again = StudyPlan.from_json(path)
    assert again == plan
    assert [t.case_id for t in again.tasks_for("r3")] == [t.case_id for t in plan.tasks_for("r3")]
    data = json.loads(path.read_text())
    data["tasks"] = data["tasks"][:-1]
    with pytest.raises(ConfigError, match="every reader has every case once"):
        StudyPlan.from_dict(data)
    data = json.loads(path.read_text())
    data["tasks"][0]["reader_id"] = "../evil"
    data["readers"][0] = "../evil"
    with pytest.raises(ConfigError, match="path separator"):
        StudyPlan.from_dict(data)
    with pytest.raises(InputError, match="does not exist"):
        StudyPlan.from_json(tmp_path / "nope.json")
    with pytest.raises(InputError, match="did you mean 'r1'"):
        plan.tasks_for("r 1")


@pytest.mark.parametrize("bad, match", [
    ("a/b", "path separator"), ("..", "path separator"), ("x..y", "path separator"),
    ("a\\b", "path separator"), ("", "non-empty"), (" r1", "not a valid id"),
    ("r:1", "not a valid id"), (7, "non-empty string"),
])
def test_validate_id_rejects_what_cannot_be_a_folder(bad, match):
    with pytest.raises(ConfigError, match=match):
        validate_id(bad, "reader id")
    assert validate_id("reader_1.b-2") == "reader_1.b-2"


@pytest.mark.parametrize("kw, match", [
    ({"readers": ["r1", "r1"]}, "repeat"),
    ({"n_subsets": 3}, "multiple of the number of methods"),
    ({"n_subsets": 6}, "larger than the number of cases"),
    ({"methods": ("manual", "interactiv")}, "did you mean 'interactive'"),
    ({"cases": "c1"}, "lists of ids"),
    ({"n_subsets": 0}, "positive integer"),
])
def test_design_errors(kw, match):
    args = {"readers": READERS, "cases": CASES, **kw}
    with pytest.raises(ConfigError, match=match):
        design_study(args.pop("readers"), args.pop("cases"), **args)


def test_validate_design_parameters_accepts_a_count_and_a_source():
    readers, cases = validate_design_parameters(3, "phantom:6")
    assert readers == ["reader1", "reader2", "reader3"]
    assert cases == [f"phantom{i:03d}" for i in range(6)]
    with pytest.raises(ConfigError, match="readers must be"):
        validate_design_parameters("r1", CASES)
    with pytest.raises(InputError, match="does not exist"):
        validate_design_parameters(3, "/no/such/folder")


# ----------------------------------------------------------------------------- logs, times
def test_case_times_follow_the_paper_definitions(tmp_path):
    write_session_log(tmp_path / "m", "r1", "c1", "manual", 321.0)
    write_session_log(tmp_path / "i", "r1", "c2", "interactive", 123.0)
    events = load_event_logs(tmp_path)
    assert len(events) == 5 + 6 and set(events["event"]) >= {"open", "paint", "predict", "save"}
    times = case_times(events).set_index("case_id")
    # no plan and no method in the log: inferred from the presence of a predict event
    assert times.loc["c1", "method"] == "manual" and times.loc["c2", "method"] == "interactive"
    assert times.loc["c1", "time_s"] == pytest.approx(321.0, abs=1e-9)
    assert times.loc["c2", "time_s"] == pytest.approx(123.0, abs=1e-9)
    assert times.loc["c2", "time_min"] == pytest.approx(2.05)
    assert times.loc["c1", "start_event"] == "paint" and times.loc["c2", "n_refine"] == 1
    assert times["complete"].all()


def test_resumed_session_does_not_count_the_downtime(tmp_path):
    write_session_log(tmp_path, "r1", "c1", "interactive", 200.0, restart_after=60.0)
    times = case_times(load_event_logs(tmp_path))
    assert times.loc[0, "n_segments"] == 2
    assert times.loc[0, "time_s"] == pytest.approx(200.0, abs=1e-9)


def test_unsaved_task_is_reported_not_timed(tmp_path):
    write_session_log(tmp_path, "r1", "c1", "manual", 50.0, saved=False)
    times = case_times(load_event_logs(tmp_path))
    assert not times.loc[0, "complete"] and math.isnan(times.loc[0, "time_s"])
    assert times.loc[0, "problem"] == "not saved"


def test_method_from_plan_must_agree_with_the_log(tmp_path):
    plan = design_study(["r1"], ["c1", "c2"], n_subsets=2)
    planned = plan.method_of("r1", "c1")
    other = "manual" if planned == "interactive" else "interactive"
    path = write_session_log(tmp_path, "r1", "c1", other, 10.0)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    for rec in lines:
        rec["details"]["method"] = other
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    with pytest.raises(InputError, match="the plan says"):
        case_times(load_event_logs(tmp_path), plan)


def test_load_event_logs_errors_and_truncated_last_line(tmp_path, caplog):
    path = write_session_log(tmp_path, "r1", "c1", "manual", 10.0)
    with open(path, "a") as fh:
        fh.write('{"event": "sav')  # a crash in the middle of the last write
    assert len(load_event_logs(path)) == 5
    assert "interrupted write" in caplog.text
    bad = tmp_path / "bad" / "events.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"event": "open"}\n{"event": "save"}\n')
    with pytest.raises(InputError, match="event lacks"):
        load_event_logs(bad)
    bad.write_text('not json\n{"event": "save"}\n')
    with pytest.raises(InputError, match="line 1 is not valid JSON"):
        load_event_logs(bad)
    with pytest.raises(InputError, match="no events.jsonl"):
        load_event_logs(_empty(tmp_path))


def _empty(tmp_path: Path) -> Path:
    p = tmp_path / "empty"
    p.mkdir()
    return p


# ----------------------------------------------------------------------------- consensus
def _staple_em(masks, iters=300):
    """Warfield et al. 2004 binary STAPLE, written out: EM over sensitivity p, specificity q."""
    d = np.asarray(masks, float).reshape(len(masks), -1)
    g = d.mean()  # prior: mean foreground fraction (ITK's choice)
    p = np.full(len(d), 0.99999)
    q = np.full(len(d), 0.99999)
    for _ in range(iters):
        a = g * np.prod(np.where(d == 1, p[:, None], 1 - p[:, None]), axis=0)
        b = (1 - g) * np.prod(np.where(d == 0, q[:, None], 1 - q[:, None]), axis=0)
        w = a / (a + b)
        p = (d * w).sum(1) / w.sum()
        q = ((1 - d) * (1 - w)).sum(1) / (1 - w).sum()
    return w.reshape(np.shape(masks)[1:])


def _three_masks():
    a = np.zeros((1, 6, 10), np.uint8)
    a[0, 1:5, 1:7] = 1
    b = np.zeros_like(a)
    b[0, 1:5, 1:5] = 1          # under-segments
    c = np.zeros_like(a)
    c[0, :, 4:10] = 1           # shifted, unreliable
    return a, b, c


def test_majority_vote_of_three_known_masks():
    a, b, c = _three_masks()
    cons = consensus([a, b, c], "majority")
    expected = np.zeros_like(a)
    expected[0, 1:5, 1:7] = 1   # columns 1-3: a+b; 4: all three; 5-6: a+c
    np.testing.assert_array_equal(cons, expected)
    assert cons.dtype == np.uint8
    # two masks: ties are background, so the majority of two is their intersection
    np.testing.assert_array_equal(consensus([a, b]), a & b)


def test_staple_matches_an_independent_em_and_differs_from_majority():
    a, b, c = _three_masks()
    expected = (_staple_em([a, b, c]) >= 0.5).astype(np.uint8)
    got = consensus([a, b, c], "staple")
    np.testing.assert_array_equal(got, expected)
    # STAPLE learns that c is unreliable: a+c votes (columns 5-6) are not foreground
    assert got[0, 1:5, 5:7].sum() == 0 and consensus([a, b, c])[0, 1:5, 5:7].all()


def test_consensus_errors():
    a, b, _ = _three_masks()
    with pytest.raises(ConfigError, match="majority"):
        consensus([a, b], "mean")
    with pytest.raises(InputError, match="share one grid"):
        consensus([a, np.zeros((1, 6, 9), np.uint8)])
    with pytest.raises(InputError, match="at least one"):
        consensus([])
    with pytest.raises(InputError, match="bool or integer"):
        consensus([a.astype(float)])


def test_dsc_and_interobserver_tables_with_known_masks():
    full = make_ellipsoid(shape=(6, 12, 12), radii=(2.5, 4.0, 4.0))
    half = full.copy()
    half[:, :, :6] = 0
    n_full, n_half = int(full.sum()), int(half.sum())
    expected_half = 2 * n_half / (n_full + n_half)
    masks = {("r1", "c1"): full, ("r2", "c1"): full, ("r3", "c1"): half,
             ("r1", "c2"): full, ("r2", "c2"): half}
    plan = design_study(["r1", "r2", "r3"], ["c1", "c2"], n_subsets=2)
    table = dsc_table(masks, plan).set_index(["reader_id", "case_id"])
    assert table.loc[("r1", "c1"), "dsc"] == 1.0 and table.loc[("r3", "c1"), "dsc"] == \
        pytest.approx(expected_half)
    # c2 has two masks: the majority is their intersection (= half)
    assert table.loc[("r2", "c2"), "dsc"] == 1.0
    assert table.loc[("r1", "c2"), "dsc"] == pytest.approx(expected_half)
    assert table.loc[("r1", "c1"), "reference"] == "majority of 3"
    assert table.loc[("r1", "c1"), "method"] == plan.method_of("r1", "c1")
    given = dsc_table(masks, plan, reference={"c1": half}).set_index(["reader_id", "case_id"])
    assert given.loc[("r3", "c1"), "dsc"] == 1.0 and given.loc[("r3", "c1"), "reference"] == "given"

    matrix, pairs = interobserver_dsc(masks)
    assert matrix.loc["r1", "r2"] == pytest.approx((1.0 + expected_half) / 2)
    assert matrix.loc["r2", "r1"] == matrix.loc["r1", "r2"]
    assert matrix.loc["r1", "r3"] == pytest.approx(expected_half)  # only c1 shared
    assert np.allclose(np.diag(matrix.to_numpy()), 1.0)
    assert pairs.set_index(["reader_a", "reader_b"]).loc[("r1", "r3"), "n_cases"] == 1
    with pytest.raises(InputError, match="needs the study plan"):
        interobserver_dsc(masks, method="manual")


# ----------------------------------------------------------------------------- statistics
def test_median_time_reduction_and_wilcoxon_by_case(tmp_path):
    known_study(tmp_path)
    result = analyse_study(tmp_path)  # finds plan.json itself
    s = result.stats
    assert s["per_method"]["manual"]["median_time_s"] == pytest.approx(900.0)
    assert s["per_method"]["interactive"]["median_time_s"] == pytest.approx(450.0)
    assert s["median_time_reduction_pct"] == pytest.approx(50.0)
    assert s["paired_median_time_reduction_pct"] == pytest.approx(50.0)
    w = s["wilcoxon_time"]
    # crossover design: no reader did a case twice -> pairs per case (4 cases, all d = +450):
    # exact permutation p over 2**4 sign flips = 2 / 16
    assert w["paired_by"].startswith("case") and w["n_used"] == 4
    assert w["p_value"] == pytest.approx(2 / 16)
    assert "cannot reach p < 0.05" in w["note"]


def test_compare_methods_with_distinct_times_gives_exact_p():
    # same reader did each case with both methods: pairs are reader x case
    rows = []
    manual = [600, 640, 700, 720, 800, 950, 1000]
    inter = [300, 330, 390, 380, 520, 400, 610]
    for i, (m, t) in enumerate(zip(manual, inter)):
        rows += [{"reader_id": "r1", "case_id": f"c{i}", "method": "manual", "time_s": m,
                  "complete": True},
                 {"reader_id": "r1", "case_id": f"c{i}", "method": "interactive", "time_s": t,
                  "complete": True}]
    import pandas as pd

    s = compare_methods(pd.DataFrame(rows))
    assert s["wilcoxon_time"]["paired_by"] == "reader x case"
    # 7 positive distinct differences: exact two-sided p = 2 / 2**7
    assert s["wilcoxon_time"]["p_value"] == pytest.approx(2 / 128)
    assert s["median_time_reduction_pct"] == pytest.approx(100 * (1 - 390 / 720))
    expected_paired = np.median([100 * (1 - b / a) for a, b in zip(manual, inter)])
    assert s["paired_median_time_reduction_pct"] == pytest.approx(expected_paired)


def test_analyse_study_reads_masks_and_writes_the_report(tmp_path):
    plan, _, masks = known_study(tmp_path / "study")
    result = analyse_study(tmp_path / "study", plan)
    dsc = result.dsc.set_index(["reader_id", "case_id"])
    # consensus per case = majority of 3 = the full ellipsoid (r1, r2 agree) -> r3 gets the
    # half-ellipsoid DSC, the others 1
    full = masks[("r1", "c1")]
    half = masks[("r3", "c1")]
    expected_half = 2 * half.sum() / (full.sum() + half.sum())
    assert dsc.loc[("r1", "c1"), "dsc"] == 1.0
    assert dsc.loc[("r3", "c2"), "dsc"] == pytest.approx(expected_half)
    assert result.interobserver.loc["r1", "r3"] == pytest.approx(expected_half)
    files = write_study_report(result, tmp_path / "report")
    md = files["markdown"].read_text()
    assert "**50.0 %**" in md and "paired by case" in md
    stats = json.loads(files["stats"].read_text())
    assert stats["median_time_reduction_pct"] == pytest.approx(50.0)
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<table" in files["html"].read_text()
    import pandas as pd

    times = pd.read_csv(files["times"])
    assert len(times) == 12 and set(times["time_s"]) == {900.0, 450.0}


def test_validate_analysis_parameters(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        validate_analysis_parameters(tmp_path / "missing")
    with pytest.raises(InputError, match="no events.jsonl"):
        validate_analysis_parameters(_empty(tmp_path))
    plan, _, _ = known_study(tmp_path / "s")
    root, got = validate_analysis_parameters(tmp_path / "s")
    assert got == plan and root == tmp_path / "s"
    with pytest.raises(ConfigError, match="consensus_method"):
        validate_analysis_parameters(tmp_path / "s", consensus_method="STAPLE!")


# ----------------------------------------------------------------------------- with a Session


@pytest.mark.usefixtures("_one_thread")
def test_analysis_reads_a_real_session_folder(tmp_path, ellipsoid_case):
    import torch

    from iunet_nb.interactive.session import RefineConfig, Session
    from iunet_nb.model.checkpoint import ModelCard
    from iunet_nb.model.nets import NetConfig, build_network
    from iunet_nb.model.preprocess import Box, PreprocessConfig

    ct, ref = ellipsoid_case
    card = ModelCard(net=NetConfig(base_channels=4),
                     preprocess=PreprocessConfig(size_zyx=(8, 16, 16)))
    torch.manual_seed(0)
    model = build_network(card.net).eval()
    plan = design_study(["r1"], ["c1", "c2"], n_subsets=2)
    plan.to_json(tmp_path / "plan.json")
    for t in plan.tasks:
        s = Session(ct, model, card, Box.from_mask(ref.array), folder=tmp_path / t.folder,
                    case_id=t.case_id, reader_id=t.reader_id,
                    config=RefineConfig(device="cpu", iterations=1), reference=ref)
        if t.method == "interactive":
            s.predict()
            s.add_scribble("fg", points=np.argwhere(ref.array)[:5])
            s.refine()
        else:
            s.paint(1, points=np.argwhere(ref.array))
        s.save()
        s.close()
    events = load_event_logs(tmp_path)
    times = case_times(events, plan).set_index("case_id")
    for t in plan.tasks:
        ev = events[events["case_id"] == t.case_id]
        start = ev[ev["event"] == ("predict" if t.method == "interactive" else "paint")].iloc[0]
        end = ev[ev["event"] == "save"].iloc[-1]
        t0 = start["t_monotonic"] - (start["duration_s"] if t.method == "manual" else 0.0)
        assert times.loc[t.case_id, "time_s"] == pytest.approx(end["t_monotonic"] - t0)
        assert times.loc[t.case_id, "method"] == t.method
    manual_case = next(t.case_id for t in plan.tasks if t.method == "manual")
    assert times.loc[manual_case, "final_dsc"] == pytest.approx(1.0)
    masks = load_final_masks(tmp_path, plan)
    np.testing.assert_array_equal(masks[("r1", manual_case)].array, ref.array)


def test_cli_design_then_analyse(tmp_path, capsys):
    import argparse

    from iunet_nb.studies.study import add_cli

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["study", "design", "--readers", *READERS, "--cases", *CASES,
                              "--seed", "0", "--out", str(tmp_path / "plan.json")])
    assert args.func(args) == 0
    assert StudyPlan.from_json(tmp_path / "plan.json") == design_study(READERS, CASES, seed=0)
    known_study(tmp_path / "study")
    args = parser.parse_args(["study", "analyse", str(tmp_path / "study"), "--out",
                              str(tmp_path / "report"), "--consensus", "staple"])
    assert args.func(args) == 0
    assert "**50.0 %**" in capsys.readouterr().out
    dsc = pd.read_csv(tmp_path / "report" / "dsc.csv")
    assert set(dsc["reference"]) == {"staple of 3"}
