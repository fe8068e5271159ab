"""Tests of the undo/redo building blocks and their storage (iunet_nb.interactive._history)."""

from __future__ import annotations

import numpy as np

from iunet_nb.interactive._history import (
    _Diff,
    _Entry,
    _registry_from_bytes,
    _registry_to_bytes,
    _Scribble,
)
from iunet_nb.model.preprocess import Box


def _arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    before = rng.integers(0, 2, (4, 5, 6)).astype(np.uint8)
    after = before.copy()
    after[1:3, 2:4, 1:5] = 1 - after[1:3, 2:4, 1:5]
    return before, after


def test_diff_between_applies_forward_and_back_and_counts_changes():
    before, after = _arrays()
    for region in (None, Box((1, 2, 1), (3, 4, 5))):
        diff = _Diff.between(before, after, region)
        assert diff.n == int(np.count_nonzero(before != after)) == 16
        np.testing.assert_array_equal(diff.indices(), np.flatnonzero(before != after))
        work = before.copy()
        diff.apply(work, forward=True)
        np.testing.assert_array_equal(work, after)
        diff.apply(work, forward=False)
        np.testing.assert_array_equal(work, before)


def test_entry_npz_round_trip_keeps_every_field():
    before, after = _arrays()
    s1 = _Scribble(1, 1, np.array([3, 9, 40], np.int64), {"kind": "stroke", "view": "axial"})
    s2 = _Scribble(2, 2, np.array([5], np.int64), {"kind": "points", "n_points": 1})
    params = {"last.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    entry = _Entry("abc123", "refine", {"round": 2, "seed": 2},
                   mask=_Diff.between(before, after),
                   scribbles_before={1: None, 2: s2}, scribbles_after={1: s1, 2: None},
                   params_before=params, params_after={"last.weight": params["last.weight"] + 1},
                   prob_before=None, prob_after=np.full((2, 2, 2), 0.25, np.float32),
                   state_before={"refine_round": 2}, state_after={"refine_round": 3})
    back = _Entry.from_npz_bytes(entry.to_npz_bytes())
    assert (back.uid, back.action, back.details) == ("abc123", "refine", {"round": 2, "seed": 2})
    assert back.mask == entry.mask
    assert back.scribbles_before[1] is None and back.scribbles_after[2] is None
    for got, want in ((back.scribbles_after[1], s1), (back.scribbles_before[2], s2)):
        assert (got.id, got.label, got.info) == (want.id, want.label, want.info)
        np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(back.params_before["last.weight"], params["last.weight"])
    np.testing.assert_array_equal(back.params_after["last.weight"], params["last.weight"] + 1)
    assert back.prob_before is None
    np.testing.assert_array_equal(back.prob_after, entry.prob_after)
    assert (back.state_before, back.state_after) == ({"refine_round": 2}, {"refine_round": 3})
    assert back.nbytes == entry.nbytes


def test_registry_round_trip_keeps_ids_labels_voxels_and_info():
    registry = {4: _Scribble(4, 2, np.array([1, 2, 3], np.int64), {"kind": "points"}),
                1: _Scribble(1, 1, np.array([10, 11], np.int64),
                             {"kind": "stroke", "radius_mm": 2.5})}
    back = _registry_from_bytes(_registry_to_bytes(registry))
    assert sorted(back) == [1, 4]
    for sid, s in registry.items():
        assert (back[sid].id, back[sid].label, back[sid].info) == (s.id, s.label, s.info)
        assert back[sid].indices.dtype == np.int64
        np.testing.assert_array_equal(back[sid].indices, s.indices)
    assert _registry_from_bytes(_registry_to_bytes({})) == {}
