"""Tests of the interactive Session: strokes, refine, undo/redo, autosave/load, events, async."""

from __future__ import annotations

import datetime
import itertools
import json
import shutil
import threading

import numpy as np
import pytest
import torch

import iunet_nb.interactive.autosave as autosave_mod
import iunet_nb.interactive.refine as refine_mod
import iunet_nb.interactive.session as session_mod
from iunet_nb.errors import ConfigError, InputError, SessionError
from iunet_nb.interactive.refine import _near_scribbles
from iunet_nb.interactive.session import RefineConfig, Session, stroke_to_voxels
from iunet_nb.io.images import read_mask
from iunet_nb.io.volume import Volume
from iunet_nb.model.nets import build_network
from iunet_nb.model.preprocess import Box

EVENT_FIELDS = {"t_monotonic", "t_wall", "session_id", "case_id", "reader_id", "event",
                "duration_s", "dsc", "n_scribble_voxels", "details"}


@pytest.fixture
def cfg() -> RefineConfig:
    # box_fallback="error": these tiny ellipsoid cases are not abdomens for the pancreas detector
    return RefineConfig(device="cpu", iterations=3, lr=1e-2, box_fallback="error")


@pytest.fixture
def case(ellipsoid_case):
    ct, ref = ellipsoid_case
    return ct, ref, Box.from_mask(ref.array)


def _session(case, model, card, cfg, **kw) -> Session:
    ct, _, box = case
    return Session(ct, model, card, box, config=cfg, **kw)


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- strokes
def _brute_disc(shape2, center, spacing2, radius_mm):
    rr, cc = np.meshgrid(np.arange(shape2[0]), np.arange(shape2[1]), indexing="ij")
    d2 = ((rr - center[0]) * spacing2[0]) ** 2 + ((cc - center[1]) * spacing2[1]) ** 2
    return d2 <= radius_mm ** 2


@pytest.mark.parametrize("view, k, center, radius, count, extent", [
    # spacing (z, y, x) = (2.5, 0.8, 0.7); counts and half-extents worked out by hand
    ("axial", 5, (10, 12), 2.0, 21, (2, 2)),     # rows y: |dy|*0.8 <= 2; cols x: |dx|*0.7 <= 2
    ("coronal", 7, (12, 15), 3.0, 19, (1, 4)),   # rows z: |dz|*2.5 <= 3; cols x: 4 * 0.7 <= 3
    ("sagittal", 9, (12, 15), 3.0, 17, (1, 3)),  # rows z; cols y: 3 * 0.8 <= 3
])
def test_stroke_on_each_view_lands_on_the_right_voxels(case, model, card, cfg, view, k, center,
                                                       radius, count, extent):
    s = _session(case, model, card, cfg)
    sid = s.add_scribble("bg", [center], view=view, slice_index=k, radius_mm=radius)
    scrib = s.scribbles.array
    axis, (ra, ca) = session_mod.VIEWS[view]
    plane = np.take(scrib, k, axis=axis)
    spacing = s.volume.spacing_mm
    expected = _brute_disc(plane.shape, center, (spacing[ra], spacing[ca]), radius)
    assert np.array_equal(plane == 2, expected)
    assert int(np.count_nonzero(scrib)) == count == s.scribble_info(sid)["n_voxels"]
    rows, cols = np.nonzero(plane)
    assert (rows.min(), rows.max()) == (center[0] - extent[0], center[0] + extent[0])
    assert (cols.min(), cols.max()) == (center[1] - extent[1], center[1] + extent[1])
    assert np.count_nonzero(np.delete(scrib, k, axis=axis)) == 0  # nothing on other slices


def test_polyline_stroke_is_the_distance_to_segments():
    shape, spacing = (4, 20, 30), (3.0, 1.0, 0.5)
    idx = stroke_to_voxels(shape, spacing, [(2, 2), (2, 20), (15, 20)], "axial", 1,
                           radius_mm=1.5)
    vol = np.zeros(shape, bool)
    vol.ravel()[idx] = True
    # independent check: dense sampling of the polyline (points every 0.01 voxel)
    t = np.linspace(0, 1, 2001)[:, None]
    pts = np.concatenate([(1 - t) * np.array([2, 2]) + t * np.array([2, 20]),
                          (1 - t) * np.array([2, 20]) + t * np.array([15, 20])])
    rr, cc = np.meshgrid(np.arange(20), np.arange(30), indexing="ij")
    grid = np.stack([rr.ravel(), cc.ravel()], 1).astype(float)
    d = np.min(np.hypot((grid[:, None, 0] - pts[None, :, 0]) * 1.0,
                        (grid[:, None, 1] - pts[None, :, 1]) * 0.5), axis=1).reshape(20, 30)
    assert np.array_equal(vol[1], d <= 1.5 + 1e-4)  # sampling error < 1e-5; ties at 1.5 count
    assert not vol[[0, 2, 3]].any()
    thin = stroke_to_voxels(shape, spacing, [(5, 3), (5, 9)], "axial", 0)  # default 0.5 voxel
    assert sorted(np.unravel_index(thin, shape)[2].tolist()) == list(range(3, 10))


@pytest.mark.parametrize("kwargs, match", [
    ({"stroke": [(3, 100)], "view": "axial", "slice_index": 2}, "outside the axial slice"),
    ({"stroke": [(3, 3)], "view": "axial", "slice_index": 24}, "outside the axial slices"),
    ({"stroke": [(3, 3)], "view": "oblique", "slice_index": 2}, "unknown view"),
    ({"stroke": [], "view": "axial", "slice_index": 2}, "empty"),
    ({"stroke": [(3, 3)], "view": "axial", "slice_index": 2, "radius_mm": 1, "radius_vox": 1},
     "not both"),
    ({"stroke": [(3, 3)], "view": "axial", "slice_index": 2, "radius_mm": -1}, ">= 0"),
    ({"stroke": [(3, np.nan)], "view": "axial", "slice_index": 2}, "NaN"),
    ({"stroke": [(3, 3)], "view": "axial"}, "slice_index"),
    ({"points": [(0, 0, 40)]}, "outside the image"),
    ({}, "either a stroke"),
])
def test_bad_scribbles_are_refused(case, model, card, cfg, kwargs, match):
    s = _session(case, model, card, cfg)
    with pytest.raises(InputError, match=match):
        s.add_scribble("fg", **kwargs)
    assert not s.can_undo and not s.scribbles.array.any()


def test_bad_labels_and_ids(case, model, card, cfg):
    s = _session(case, model, card, cfg)
    with pytest.raises(InputError, match="not a scribble label"):
        s.add_scribble(3, points=[(1, 1, 1)])
    with pytest.raises(InputError, match="not a mask label"):
        s.paint("maybe", points=[(1, 1, 1)])
    with pytest.raises(InputError, match="no scribble with id 7"):
        s.erase_scribble(7)
    with pytest.raises(SessionError, match="nothing to undo"):
        s.undo()
    with pytest.raises(SessionError, match="nothing to redo"):
        s.redo()


def test_refine_preconditions(case, model, card, cfg):
    ct, _, box = case
    s = Session(ct, model, card, None, config=cfg)
    with pytest.raises(SessionError, match="no box"):
        s.predict()
    with pytest.raises(SessionError, match="call predict"):
        s.refine()
    s.predict(box)
    with pytest.raises(SessionError, match="at least one scribble"):
        s.refine()
    s.add_scribble("fg", points=[(0, 0, 0)])  # far outside the box + margin
    with pytest.raises(SessionError, match="inside the crop"):
        s.refine()
    whole = Session(ct, model, card, None, config=RefineConfig(device="cpu",
                                                               box_fallback="whole"))
    whole.predict()
    assert whole.box == Box((0, 0, 0), ct.shape)


def test_config_validation_and_json_round_trip():
    cfg = RefineConfig(iterations=7, lam=0.25, keep_weights_between_rounds=False)
    assert RefineConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="iterations"):
        RefineConfig(iterations=0)
    with pytest.raises(ConfigError, match="normalisation"):
        RefineConfig(normalisation="mean")
    with pytest.raises(ConfigError, match="lr"):
        RefineConfig(lr=0.0)
    with pytest.raises(ConfigError, match="device"):
        RefineConfig(device="tpu")


# ----------------------------------------------------------------------------- refine
def test_refine_changes_only_the_unfrozen_parameters(case, model, card, cfg):
    caller_before = _params(model)
    s = _session(case, model, card, cfg)
    s.predict()
    s.add_scribble("fg", [(16, 10), (16, 20)], view="axial", slice_index=12, radius_mm=2)
    before = _params(s._model)
    s.refine()
    after = _params(s._model)
    trainable = {"bottleneck2.0.weight", "bottleneck2.0.bias", "head.weight", "head.bias"}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == trainable
    for k, v in _params(model).items():  # the caller's model is untouched
        assert torch.equal(v, caller_before[k]), k


def test_fg_scribble_in_a_missed_region_grows_the_mask(case, model, card):
    with torch.no_grad():  # make the network miss everything: strongly favour background
        model.head.bias.copy_(torch.tensor([0.15, -0.15]))
    # the image-driven band (the paper's) leaves the whole homogeneous organ unlabelled, so
    # the untrained network can learn "bright = organ" from the scribbles alone
    cfg = RefineConfig(device="cpu", iterations=10, lr=3e-2, force_scribbles=False,
                       geodesic_lam=1.0, local_mm=None)
    s = _session(case, model, card, cfg)
    s.predict()
    region = case[1].array.astype(bool)
    assert s.mask.array[region].sum() == 0  # missed
    s.add_scribble("fg", [(16, 8), (16, 24)], view="axial", slice_index=12, radius_mm=3)
    s.add_scribble("fg", [(10, 16), (22, 16)], view="axial", slice_index=10, radius_mm=3)
    scribbled = s.scribbles.array == 1
    p_before = s.probabilities().array[scribbled].mean()
    s.refine()
    grown = s.mask.array
    assert s.probabilities().array[scribbled].mean() > p_before + 0.05
    assert grown[scribbled].mean() > 0.5      # not forced: the network learnt it
    assert grown[region].sum() > 2 * scribbled.sum()


def test_a_confidently_contradicted_stroke_fills_its_region(case, model, card):
    with torch.no_grad():  # a network sure of background everywhere (an unseen structure)
        model.head.bias.copy_(torch.tensor([6.0, -6.0]))
    region = case[1].array.astype(bool)
    masks = {}
    for fill_below in (0.1, 0.0):
        cfg = RefineConfig(device="cpu", iterations=3, box_fallback="error",
                           fill_below=fill_below)
        s = _session(case, model, card, cfg)
        s.predict()
        assert not s.mask.array[region].any()
        s.add_scribble("fg", [(16, 14), (16, 18)], view="axial", slice_index=12, radius_mm=1)
        masks[fill_below] = s.refine().array.astype(bool)
        event = [e for e in s.events if e["event"] == "refine"][-1]
        assert (event["details"]["n_filled"] > 0) == (fill_below > 0)
        if fill_below:
            s.undo()   # the fill is part of the round: one undo takes it back
            assert not s.mask.array[region].any()
    dsc = {k: 2 * (m & region).sum() / (m.sum() + region.sum()) for k, m in masks.items()}
    assert dsc[0.1] > 0.8 and dsc[0.0] < 0.3, dsc


def test_scribbles_are_forced_into_the_output(case, model, card, cfg):
    s = _session(case, model, card, cfg)
    s.predict()
    s.add_scribble("fg", [(16, 16)], view="axial", slice_index=12, radius_mm=3)
    s.add_scribble("bg", [(16, 16)], view="axial", slice_index=13, radius_mm=3)
    mask = s.refine().array
    scrib = s.scribbles.array
    assert np.all(mask[scrib == 1] == 1) and np.all(mask[scrib == 2] == 0)


def test_cached_and_naive_refinement_agree(case, model, card, cfg):
    import dataclasses
    masks, probs = [], []
    for cached in (True, False):
        s = _session(case, model, card, dataclasses.replace(cfg, cached_encoder=cached,
                                                            precision="float32"))
        s.predict()
        s.add_scribble("fg", [(16, 10), (16, 20)], view="axial", slice_index=12, radius_mm=2)
        masks.append(s.refine().array)
        probs.append(s._prob)
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-5)


def test_bfloat16_refinement_follows_float32(case, model, card, cfg):
    # bfloat16 keeps about 3 significant digits: the refined probabilities move by far less
    # than the refinement itself moves them, and the event log says which arithmetic ran
    import dataclasses
    # 24 x 32 x 32: the deepest level has 3 x 4 x 4 voxels (smaller grids run float32)
    card = dataclasses.replace(card, preprocess=dataclasses.replace(card.preprocess,
                                                                    size_zyx=(24, 32, 32)))
    probs, events = [], []
    for precision in ("float32", "bfloat16"):
        s = _session(case, model, card, dataclasses.replace(cfg, precision=precision))
        s.predict()
        start = s._prob.copy()
        s.add_scribble("fg", [(16, 10), (16, 20)], view="axial", slice_index=12, radius_mm=2)
        s.refine()
        probs.append(s._prob)
        events.append([e for e in s.events if e["event"] == "refine"][-1]["details"])
    moved = np.abs(probs[0] - start).max()
    assert moved > 0.01
    assert np.abs(probs[1] - probs[0]).max() < 0.1 * moved
    assert [e["precision"] for e in events] == ["float32", "bfloat16"]


# ----------------------------------------------------------------------------- undo / redo
def _state(s: Session):
    return (s.mask.array, s.scribbles.array, {k: v.copy() for k, v in s._get_params().items()})


def _same(a, b) -> bool:
    return (np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
            and all(np.array_equal(a[2][k], b[2][k]) for k in a[2]))


def _mixed_actions(s: Session) -> list:
    states = [_state(s)]
    s.predict(); states.append(_state(s))
    sid = s.add_scribble("fg", [(16, 10), (16, 20)], view="axial", slice_index=12, radius_mm=2)
    states.append(_state(s))
    s.add_scribble("bg", [(5, 3), (20, 3)], view="coronal", slice_index=16, radius_vox=1)
    states.append(_state(s))
    s.refine(); states.append(_state(s))
    s.paint(1, [(2, 2), (2, 8)], view="axial", slice_index=3, radius_vox=1.5)
    states.append(_state(s))
    s.erase_scribble(sid); states.append(_state(s))
    s.erase_scribbles([(10, 3)], "coronal", 16, radius_vox=2); states.append(_state(s))
    s.paint("bg", [(3, 2)], view="sagittal", slice_index=5, radius_vox=1)  # (3, 2, 5) painted
    states.append(_state(s))
    s.refine(); states.append(_state(s))
    s.reset(); states.append(_state(s))
    return states


def test_undo_redo_restore_every_state_exactly(case, model, card, cfg):
    s = _session(case, model, card, cfg)
    states = _mixed_actions(s)
    assert s.history == ["predict", "scribble", "scribble", "refine", "paint", "erase", "erase",
                         "paint", "refine", "reset"]
    assert len({int(st[0].sum()) for st in states}) > 3  # the actions really changed the mask
    for expected in reversed(states[:-1]):
        s.undo()
        assert _same(_state(s), expected)
    assert not s.can_undo and s.can_redo
    for expected in states[1:]:
        s.redo()
        assert _same(_state(s), expected)
    s.undo()
    s.paint(1, points=[(0, 0, 0)])  # a new action clears the redo history
    assert not s.can_redo


def test_history_memory_is_bounded(case, model, card):
    cfg = RefineConfig(device="cpu", iterations=1, max_history_mb=0.005)  # 5 KiB
    s = _session(case, model, card, cfg)
    s.predict()
    for i in range(30):
        s.paint(1 - i % 2, [(16, 16)], view="axial", slice_index=i // 2, radius_mm=3)
    assert s.history_nbytes <= 0.005 * 2 ** 20
    assert 1 <= len(s.history) < 31
    n = len(s.history)
    for _ in range(n):
        s.undo()
    with pytest.raises(SessionError, match="nothing to undo"):
        s.undo()
    unbounded = _session(case, model, card, RefineConfig(device="cpu"))
    unbounded.predict()
    for i in range(30):
        unbounded.paint(1 - i % 2, [(16, 16)], view="axial", slice_index=i // 2, radius_mm=3)
    assert len(unbounded.history) == 31 and unbounded.history_nbytes > 0.005 * 2 ** 20


# ----------------------------------------------------------------------------- autosave / load
def test_autosave_and_load_resume_identically(case, model, card, cfg, tmp_path):
    ct, _, _ = case
    folder = tmp_path / "s1"
    s = _session(case, model, card, cfg, folder=folder, case_id="c1", reader_id="r1")
    _mixed_actions(s)
    s.undo()  # leave one entry on the redo stack
    t = _session(case, model, card, cfg)  # a control that never saw the folder
    # a copy of the folder: one folder has one writer (s goes on writing its own)
    shutil.copytree(folder, tmp_path / "copy", ignore=shutil.ignore_patterns("session.lock"))
    loaded = Session.load(tmp_path / "copy", ct, model, card)
    assert _same(_state(loaded), _state(s))
    assert loaded.history == s.history and loaded.can_redo
    assert loaded.session_id == s.session_id and loaded.box == s.box
    # the same undo history: undoing both gives identical states all the way down
    for _ in range(3):
        assert np.array_equal(loaded.undo().array, s.undo().array)
    for _ in range(3):
        s.redo(); loaded.redo()
    # the same next refine result
    s.add_scribble("fg", [(12, 12)], view="axial", slice_index=11, radius_mm=2)
    loaded.add_scribble("fg", [(12, 12)], view="axial", slice_index=11, radius_mm=2)
    assert np.array_equal(s.refine().array, loaded.refine().array)
    assert _same(_state(s), _state(loaded))
    assert t.history == []
    # the mask file is the mask in the CT's geometry
    state = json.loads((folder / "state.json").read_text())
    on_disk = read_mask(folder / state["files"]["mask"]["name"])
    assert on_disk.geometry.is_close(ct.geometry)


def test_load_with_another_ct_or_model_is_refused(case, model, card, cfg, tmp_path):
    ct, _, _ = case
    s = _session(case, model, card, cfg, folder=tmp_path / "s")
    s.predict()
    other = Volume(ct.array + np.float32(1.0), ct.geometry)
    s.close()
    with pytest.raises(SessionError, match="another CT"):
        Session.load(tmp_path / "s", other, model, card)
    other_model = build_network(card.net).eval()
    with pytest.raises(SessionError, match="other network weights"):
        Session.load(tmp_path / "s", ct, other_model, card)
    with pytest.raises(SessionError, match="already holds a session"):
        _session(case, model, card, cfg, folder=tmp_path / "s")
    with pytest.raises(SessionError, match="holds no saved session"):
        Session.load(tmp_path / "nothing", ct, model, card)


def test_truncated_autosave_is_refused_and_the_previous_state_survives(case, model, card, cfg,
                                                                       tmp_path):
    ct, _, _ = case
    folder = tmp_path / "s"
    s = _session(case, model, card, cfg, folder=folder)
    s.predict()
    s.add_scribble("fg", [(16, 10), (16, 20)], view="axial", slice_index=12, radius_mm=2)
    before_last = s.mask.array
    s.refine()
    s.close()
    state = json.loads((folder / "state.json").read_text())
    newest = folder / state["undo"][-1]["name"]
    newest.write_bytes(newest.read_bytes()[:100])  # a crash mid-write of the newest entry
    files_before = sorted(p.name for p in folder.rglob("*"))
    with pytest.raises(SessionError, match="corrupt or truncated.*use_previous=True"):
        Session.load(folder, ct, model, card)
    assert sorted(p.name for p in folder.rglob("*")) == files_before  # nothing touched
    previous = Session.load(folder, ct, model, card, use_previous=True)
    assert np.array_equal(previous.mask.array, before_last)
    assert previous.history == ["predict", "scribble"]
    previous.close()
    # a truncated manifest is refused too
    (folder / "state.json").write_text((folder / "state.json").read_text()[:50])
    with pytest.raises(SessionError, match="corrupt or truncated"):
        Session.load(folder, ct, model, card)


# ----------------------------------------------------------------------------- events
def test_event_log_has_one_line_per_action(case, model, card, cfg, tmp_path):
    _, ref, _ = case
    folder = tmp_path / "s"
    s = _session(case, model, card, cfg, folder=folder, case_id="case7", reader_id="reader2",
                 reference=ref)
    _mixed_actions(s)
    s.undo(); s.redo()
    s.export(tmp_path / "out.nii.gz")
    lines = (folder / "events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["event"] for e in events] == [
        "open", "predict", "scribble", "scribble", "refine", "paint", "erase", "erase", "paint",
        "refine", "reset", "undo", "redo", "export"]
    assert events == s.events
    for e in events:
        assert EVENT_FIELDS <= set(e)
        assert e["session_id"] == s.session_id and e["case_id"] == "case7"
        assert e["reader_id"] == "reader2" and e["duration_s"] >= 0
        assert datetime.datetime.fromisoformat(e["t_wall"]).utcoffset() == datetime.timedelta(0)
    assert all(a["t_monotonic"] <= b["t_monotonic"] for a, b in itertools.pairwise(events))
    # DSC recomputed independently for the exported mask
    out = read_mask(tmp_path / "out.nii.gz").array.astype(bool)
    r = ref.array.astype(bool)
    assert events[-1]["dsc"] == pytest.approx(2 * (out & r).sum() / (out.sum() + r.sum()),
                                              abs=1e-6)
    assert events[2]["n_scribble_voxels"] == int(np.count_nonzero(_stroke_count(s)))
    assert events[4]["details"]["iterations"] == cfg.iterations


def _stroke_count(s: Session) -> np.ndarray:
    return stroke_to_voxels(s.volume.shape, s.volume.spacing_mm, [(16, 10), (16, 20)], "axial",
                            12, radius_mm=2)


def test_events_kept_in_memory_without_folder(case, model, card, cfg):
    s = _session(case, model, card, cfg)
    s.predict()
    assert [e["event"] for e in s.events] == ["open", "predict"]
    assert s.events[1]["dsc"] is None
    with pytest.raises(SessionError, match="no folder"):
        s.save()


# ----------------------------------------------------------------------------- async
def test_refine_async_gives_the_same_result_as_refine(case, model, card, cfg):
    results = []
    for use_async in (False, True):
        with _session(case, model, card, cfg) as s:
            s.predict()
            s.add_scribble("fg", [(16, 10), (16, 20)], view="axial", slice_index=12, radius_mm=2)
            results.append(s.refine_async().result(timeout=60).array if use_async
                           else s.refine().array)
            assert s.history[-1] == "refine"
    assert np.array_equal(results[0], results[1])


def test_superseded_refine_async_leaves_no_trace(case, model, card, cfg, monkeypatch):
    started, release = threading.Event(), threading.Event()
    original = refine_mod.fine_tune

    def slow_fine_tune(*args, **kwargs):
        started.set()
        release.wait(10)  # hold the refinement between its snapshot and its first step
        return original(*args, **kwargs)

    monkeypatch.setattr(refine_mod, "fine_tune", slow_fine_tune)
    with _session(case, model, card, cfg) as s:
        s.predict()
        s.add_scribble("fg", [(16, 10), (16, 20)], view="axial", slice_index=12, radius_mm=2)
        mask, params = s.mask.array, _params(s._model)
        n_events = len(s.events)
        future = s.refine_async()
        assert started.wait(10)
        s.add_scribble("bg", [(3, 3)], view="axial", slice_index=2)  # supersedes it
        release.set()
        with pytest.raises(Exception) as info:
            future.result(timeout=30)
        assert type(info.value).__name__ == "CancelledError"
        assert future.cancelled()
        s.close()
        assert np.array_equal(s.mask.array, mask)
        assert all(torch.equal(v, params[k]) for k, v in _params(s._model).items())
        assert s.history == ["predict", "scribble", "scribble"]
        assert [e["event"] for e in s.events[n_events:]] == ["scribble"]
        with pytest.raises(SessionError, match="closed"):
            s.refine_async()


# ----------------------------------------------------------------------------- misc
def test_paint_and_export_in_ct_geometry(case, model, card, cfg, tmp_path):
    ct, _, _ = case
    s = _session(case, model, card, cfg)
    n = s.paint("fg", [(4, 4), (4, 9)], view="axial", slice_index=3, radius_vox=0.5)
    assert n == 6
    assert set(zip(*np.nonzero(s.mask.array))) == {(3, 4, c) for c in range(4, 10)}
    assert s.paint(1, [(4, 4)], view="axial", slice_index=3) == 0  # no change, no history
    assert s.history == ["paint"]
    out = read_mask(s.export(tmp_path / "m.nrrd"))
    assert np.array_equal(out.array, s.mask.array) and out.geometry.is_close(ct.geometry)
    with pytest.raises(InputError, match="extension"):
        s.export(tmp_path / "m.png")


# ----------------------------------------------------------------------------- locality, one-way
def _shifted_session(case, model, card, **overrides) -> Session:
    """Predicted, then an accepted mask the network does not reproduce (so refine moves it)."""
    cfg = RefineConfig(device="cpu", iterations=3, lr=5e-2, **overrides)
    s = _session(case, model, card, cfg)
    s.predict()
    shifted = np.roll(case[1].array, 4, axis=2)
    extra = np.argwhere((shifted == 0) & (s.mask.array == 1))
    if len(extra):
        s.paint(0, points=extra)
    s.paint(1, points=np.argwhere(shifted))
    assert np.array_equal(s.mask.array, shifted)
    return s


def _favour_foreground(model) -> None:
    """Bias the untrained network towards foreground: a refine then grows the mask."""
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([-0.15, 0.15]))


def _min_dist_mm(voxels_zyx: np.ndarray, seeds_zyx: np.ndarray, spacing) -> np.ndarray:
    from scipy.spatial.distance import cdist
    sp = np.asarray(spacing, dtype=float)
    return cdist(voxels_zyx * sp, seeds_zyx * sp).min(axis=1)


def test_local_config_defaults_and_validation():
    d = RefineConfig()
    assert (d.geodesic_lam, d.lr, d.local_mm, d.one_way) == (0.0, 1e-3, 15.0, True)
    assert d.confidence_gate and not d.new_changes_only
    assert (d.lam, d.iterations, d.threshold, d.scribble_weight) == (0.0, 5, 0.2, 3.0)
    paper = RefineConfig(local_mm=None, one_way=False)
    assert RefineConfig.from_json(paper.to_json()) == paper
    assert RefineConfig(local_mm=7).local_mm == 7.0
    for bad in (0, -3.0, float("nan"), float("inf"), "15", True):
        with pytest.raises(ConfigError, match="local_mm must be a finite distance > 0"):
            RefineConfig(local_mm=bad)
    with pytest.raises(ConfigError, match="one_way must be true or false"):
        RefineConfig(one_way=1)
    # a config saved before local_mm / one_way existed keeps the paper's behaviour on load
    legacy = json.loads(RefineConfig(lr=0.02).to_json())
    for name in ("local_mm", "one_way", "scribble_ce", "confidence_gate", "new_changes_only",
                 "edge_weight", "precision"):
        del legacy[name]
    old = autosave_mod.config_from_saved(json.dumps(legacy))
    assert (old.local_mm, old.one_way, old.scribble_ce, old.lr) == (None, False, 0.0, 0.02)
    assert old.precision == "float32" and RefineConfig().precision == "auto"
    assert old.edge_weight == 0.0 and RefineConfig().edge_weight == 0.5
    assert not old.confidence_gate and not old.new_changes_only
    assert autosave_mod.config_from_saved(RefineConfig().to_json()) == RefineConfig()


@pytest.mark.parametrize("distance", [1.0, 2.6, 6.0])
def test_near_scribbles_matches_brute_force(distance):
    shape, spacing = (9, 14, 16), (2.5, 0.8, 0.7)
    rng = np.random.default_rng(3)
    seeds = np.unique(rng.integers(0, np.prod(shape), 5))
    seeds = np.append(seeds, np.ravel_multi_index((8, 0, 15), shape))  # outside the region
    region = Box((1, 2, 3), (7, 12, 14))
    got = _near_scribbles(shape, spacing, seeds, region, distance)
    zyx = np.argwhere(np.ones(region.size, bool)) + np.asarray(region.lo_zyx)
    seeds_zyx = np.stack(np.unravel_index(seeds, shape), axis=1)
    expected = (_min_dist_mm(zyx, seeds_zyx, spacing) <= distance).reshape(region.size)
    assert got.shape == region.size and np.array_equal(got, expected)
    assert 0 < expected.sum() < expected.size
    assert not _near_scribbles(shape, spacing, np.zeros(0, np.int64), region, distance).any()


def test_refine_changes_farther_than_local_mm_from_the_new_stroke_are_undone(case, model, card):
    stroke = {"view": "axial", "slice_index": 12, "radius_mm": 2}
    free = _shifted_session(case, model, card, local_mm=None, one_way=False)
    local = _shifted_session(case, model, card, local_mm=4.0, one_way=False)
    before = local.mask.array
    assert np.array_equal(before, free.mask.array)
    for s in (free, local):
        s.add_scribble("fg", [(16, 8), (16, 14)], **stroke)
    unrestricted = free.refine().array
    after = local.refine().array
    seeds = np.argwhere(local.scribbles.array)
    moved = np.argwhere(unrestricted != before)
    far = _min_dist_mm(moved, seeds, case[0].spacing_mm) > 4.0 + 1e-9  # as the session
    assert far.sum() > 0 and (~far).sum() > 0        # the free refine moved far and near voxels
    kept = np.argwhere(after != before)
    assert _min_dist_mm(kept, seeds, case[0].spacing_mm).max() <= 4.0 + 1e-9
    near = tuple(moved[~far].T)
    assert np.array_equal(after[near], unrestricted[near])  # near changes are the network's
    assert local.events[-1]["details"]["n_reverted"] == int(far.sum())
    assert local.events[-1]["details"]["local_mm"] == 4.0


def test_extra_iterations_wait_for_the_strokes_added_since_the_last_refine(case, model, card,
                                                                           monkeypatch):
    seen = []
    real = refine_mod.fine_tune

    def spy(*args, **kw):
        seen.append((kw["scribbles"].copy(), kw["agree_on"].copy()))
        return real(*args, **kw)

    monkeypatch.setattr(refine_mod, "fine_tune", spy)
    cfg = RefineConfig(device="cpu", iterations=2, lr=1e-2, extra_iterations=6, box_fallback="error")
    s = _session(case, model, card, cfg)
    s.predict()
    s.add_scribble("fg", [(16, 8), (16, 14)], view="axial", slice_index=12, radius_mm=2)
    s.refine()
    s.add_scribble("bg", [(4, 4), (4, 10)], view="axial", slice_index=12, radius_mm=2)
    s.refine()
    (scrib1, new1), (scrib2, new2) = seen
    # round 1: the foreground stroke; round 2: only the background stroke added since
    assert new1.any() and np.all(scrib1[new1] == 1) and np.array_equal(new1, scrib1 == 1)
    assert new2.any() and np.all(scrib2[new2] == 2) and not (new2 & (scrib2 == 1)).any()
    steps = [e["details"]["iterations"] for e in s.events if e["event"] == "refine"]
    assert all(2 <= n <= 8 for n in steps)
    assert s.events[-1]["details"]["extra_iterations"] == 6


@pytest.mark.parametrize("label", ["fg", "bg"])
def test_one_way_refine_only_moves_in_the_strokes_direction(case, model, card, label):
    if label == "bg":
        _favour_foreground(model)  # else the untrained network only shrinks the mask
    free = _shifted_session(case, model, card, local_mm=None, one_way=False)
    one_way = _shifted_session(case, model, card, local_mm=None, one_way=True)
    before = one_way.mask.array
    for s in (free, one_way):
        s.add_scribble(label, [(16, 8), (16, 14)], view="axial", slice_index=12, radius_mm=2)
    unrestricted = free.refine().array
    after = one_way.refine().array
    grow, shrink = (unrestricted > before), (unrestricted < before)
    assert grow.any() and shrink.any()                # the free refine moved both ways
    if label == "fg":
        assert np.all(after >= before)                # a foreground stroke never removes
        assert np.array_equal(after[grow], unrestricted[grow])
    else:
        assert np.all(after <= before)                # a background stroke never adds
        assert np.array_equal(after[shrink], unrestricted[shrink])


def test_mixed_new_strokes_move_both_ways_and_only_new_strokes_count(case, model, card):
    free = _shifted_session(case, model, card, local_mm=None, one_way=False)
    one_way = _shifted_session(case, model, card, local_mm=None, one_way=True)
    for s in (free, one_way):
        s.add_scribble("fg", [(16, 8), (16, 14)], view="axial", slice_index=12, radius_mm=2)
        s.add_scribble("bg", [(16, 26)], view="axial", slice_index=12, radius_mm=2)
    assert np.array_equal(free.refine().array, one_way.refine().array)
    assert one_way.events[-1]["details"]["new_scribbles"] == [1, 2]
    # the next round sees only the scribble added since: a background stroke, remove only
    before = one_way.mask.array
    one_way.add_scribble("bg", [(4, 4)], view="axial", slice_index=12, radius_mm=2)
    after = one_way.refine().array
    assert one_way.events[-1]["details"]["new_scribbles"] == [3]
    assert np.all(after <= before)
    # refine again without a new scribble: all current scribbles count (mixed: both ways)
    one_way.refine()
    assert one_way.events[-1]["details"]["new_scribbles"] == [1, 2, 3]


def test_confidence_gate_keeps_what_the_network_held_more_surely_than_the_stroke(
        case, model, card, monkeypatch):
    # A network whose refinement wants every voxel out (output 0) and that started from a
    # prior rising along x: the gate lets a background stroke remove only what the prior held
    # no more surely than the surest stroke voxel.
    work = card.preprocess.size_zyx
    ramp = np.broadcast_to(np.linspace(0.5, 1.0, work[2], dtype=np.float32), work).copy()

    def fake_fine_tune(model, image, target, weight, config, **kwargs):
        return np.zeros(work, np.float32), [0.0], None, ramp

    monkeypatch.setattr(refine_mod, "fine_tune", fake_fine_tune)
    removed = {}
    for gate in (False, True):
        cfg = RefineConfig(device="cpu", local_mm=None, confidence_gate=gate,
                           box_fallback="error")
        s = _session(case, model, card, cfg)
        s.predict()
        s.paint(1, points=np.argwhere(case[1].array))  # the accepted mask: the reference
        before = s.mask.array
        s.add_scribble("bg", [(8, 12), (14, 12)], view="axial", slice_index=12, radius_mm=1)
        stroke = s.scribbles.array != 0
        after = s.refine().array
        removed[gate] = (before == 1) & (after == 0) & ~stroke
        # the prior on the CT grid, as the session restores it
        prior = session_mod.restore_probabilities(ramp, s._working_grid(s.box)[2])
    sure = np.where((before == 1) != (prior >= 0.5), before.astype(np.float32), prior)
    sure_max = float(sure[stroke].max())
    assert 0.5 < sure_max < 0.9
    assert np.array_equal(removed[False], (before == 1) & ~stroke)  # ungated: all of it
    assert np.array_equal(removed[True], removed[False] & (sure <= sure_max))
    assert 0 < removed[True].sum() < removed[False].sum()


def test_new_changes_only_leaves_what_the_previous_network_already_wanted(case, model, card,
                                                                          monkeypatch):
    # Round 1's network keeps only the right half of the crop; the user paints the left part
    # of the organ back by hand. Round 2's network wants everything out: with
    # new_changes_only it removes only what round 1's network still held (the right half),
    # not the painted voxels round 1's network had already let go.
    work = card.preprocess.size_zyx
    right = np.zeros(work, np.float32)
    right[..., work[2] // 2:] = 1.0
    removed = {}
    for flag in (False, True):
        outputs = iter([right, np.zeros(work, np.float32)])

        def fake_fine_tune(model, image, target, weight, config, outputs=outputs, **kwargs):
            p = next(outputs)
            return p, [0.0], None, p

        monkeypatch.setattr(refine_mod, "fine_tune", fake_fine_tune)
        cfg = RefineConfig(device="cpu", local_mm=None, one_way=False,
                           new_changes_only=flag, box_fallback="error")
        s = _session(case, model, card, cfg)
        s.predict()
        s.add_scribble("fg", points=[(12, 16, 24)])
        s.refine()
        held = session_mod.restore_probabilities(right, s._working_grid(s.box)[2]) >= 0.5
        painted = (case[1].array == 1) & ~held
        s.paint(1, points=np.argwhere(painted))
        before = s.mask.array
        s.add_scribble("bg", points=[(12, 16, 20)])
        after = s.refine().array
        removed[flag] = (before == 1) & (after == 0)
        assert s.events[-1]["details"]["new_changes_only"] is flag
    assert painted.sum() > 100 and (held & (before == 1)).sum() > 100
    assert removed[False][painted].all()                  # without: the painted part goes
    assert not removed[True][painted].any()               # with: it stays
    assert np.array_equal(removed[True], removed[False] & ~painted)


def _local_actions(s: Session) -> None:
    s.add_scribble("fg", [(16, 8), (16, 14)], view="axial", slice_index=12, radius_mm=2)
    s.refine()
    s.add_scribble("bg", [(16, 26)], view="axial", slice_index=12, radius_mm=2)


def test_new_strokes_survive_undo_redo_and_load(case, model, card, tmp_path):
    cfg = {"local_mm": 6.0, "one_way": True}
    ref = _shifted_session(case, model, card, **cfg)
    _local_actions(ref)
    expected = ref.refine().array                     # refine after the bg stroke only
    assert ref.events[-1]["details"]["new_scribbles"] == [2]
    # undo twice (the bg scribble, the first refine) and redo: the same next refine
    s = _shifted_session(case, model, card, **cfg)
    _local_actions(s)
    s.undo(); s.undo(); s.redo(); s.redo()
    assert np.array_equal(s.refine().array, expected)
    assert s.events[-1]["details"]["new_scribbles"] == [2]
    # undoing the first refine makes the fg stroke new again: both strokes count
    u = _shifted_session(case, model, card, **cfg)
    _local_actions(u)
    u.undo(); u.undo()
    u.add_scribble("bg", [(16, 26)], view="axial", slice_index=12, radius_mm=2)
    u.refine()
    assert u.events[-1]["details"]["new_scribbles"] == [1, 3]
    # a saved and reloaded session gives the same next refine
    folder = tmp_path / "s"
    w = Session(case[0], model, card, case[2], folder=folder,
                config=RefineConfig(device="cpu", iterations=3, lr=5e-2, **cfg))
    w.predict()
    w.paint(1, points=np.argwhere(np.roll(case[1].array, 4, axis=2)))
    _local_actions(w)
    w.close()
    loaded = Session.load(folder, case[0], model, card)
    assert loaded.config.local_mm == 6.0 and loaded.config.one_way
    assert np.array_equal(loaded.refine().array, expected)
    assert loaded.events[-1]["details"]["new_scribbles"] == [2]
    # after a new prediction every scribble counts as new again
    loaded.predict()
    loaded.refine()
    assert loaded.events[-1]["details"]["new_scribbles"] == [1, 2]
    loaded.close()


def test_without_a_box_the_bundled_detector_finds_the_pancreas():
    from iunet_nb.model.checkpoint import load_bundled_model
    from iunet_nb.model.evaluate import dice
    from iunet_nb.synth.generator import load_sample

    ct, ref = load_sample()
    model, card = load_bundled_model()
    s = Session(ct, model, card, None, config=RefineConfig(device="cpu"))
    mask = s.predict()
    box = s.box
    # the detector's tight box (systems/autobox.py) holds 79.7 % of the pancreas; re-boxed
    # around the network's own mask in it (settle_box), measured: 98.5 %, DSC 0.956 (0.955 with
    # the reference box, 0.931 in the detector's box)
    inside = ref.array[box.slices].sum() / ref.array.sum()
    assert inside > 0.95, f"the settled box {box.to_dict()} holds {inside:.1%} of the pancreas"
    assert dice(mask.array, ref.array) > 0.94
    assert s.events[-1]["details"]["box"] == box.to_dict()
