"""Building blocks of the session's undo/redo history and their storage (no pickles).

* :class:`_Diff`: the changed voxels of a uint8 array, delta-coded and zlib-compressed;
* :class:`_Scribble`: one scribble (id, label, voxels, brush info);
* :class:`_Entry`: one undoable action, everything it changed before and after, saved as
  one ``.npz`` (``history/<uid>.npz`` in a session folder, written once);
* the scribble registry ``{id: _Scribble}`` as one compressed ``.npz``
  (``scribbles-<n>.npz`` in a session folder).

:class:`~iunet_nb.interactive.session.Session` applies the entries (``_apply``) and keeps the stacks;
nothing here needs a session.
"""

from __future__ import annotations

import dataclasses
import io as _io
import json
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..model.preprocess import Box

__all__ = ["_Diff", "_Entry", "_Scribble", "_registry_from_bytes", "_registry_to_bytes"]


def _zip(array: np.ndarray) -> bytes:
    return zlib.compress(np.ascontiguousarray(array).tobytes(), 1)


def _unzip(blob: bytes, dtype: Any) -> np.ndarray:
    return np.frombuffer(zlib.decompress(blob), dtype=dtype)


@dataclass(frozen=True)
class _Diff:
    """Changed voxels of a uint8 array: delta-coded sorted flat indices, old and new values."""

    n: int
    idx: bytes
    old: bytes
    new: bytes

    @classmethod
    def make(cls, indices: np.ndarray, old: np.ndarray, new: np.ndarray) -> _Diff:
        keep = old != new
        indices, old, new = indices[keep], old[keep], new[keep]
        deltas = np.diff(indices, prepend=np.int64(0)).astype(np.int64)
        return cls(int(indices.size), _zip(deltas), _zip(old.astype(np.uint8)),
                   _zip(new.astype(np.uint8)))

    @classmethod
    def between(cls, before: np.ndarray, after: np.ndarray, region: Box | None = None) -> _Diff:
        """Diff of two whole arrays, optionally only inside ``region`` (the rest is equal)."""
        if region is None:
            idx = np.flatnonzero(before != after)
            return cls.make(idx, before.ravel()[idx], after.ravel()[idx])
        sub_b, sub_a = before[region.slices], after[region.slices]
        local = np.nonzero(sub_b != sub_a)
        glob = tuple(l + o for l, o in zip(local, region.lo_zyx))
        idx = np.ravel_multi_index(glob, before.shape).astype(np.int64)
        order = np.argsort(idx)
        return cls.make(idx[order], sub_b[local][order], sub_a[local][order])

    def indices(self) -> np.ndarray:
        return np.cumsum(_unzip(self.idx, np.int64))

    def apply(self, array: np.ndarray, forward: bool) -> None:
        if self.n:
            array.ravel()[self.indices()] = _unzip(self.new if forward else self.old, np.uint8)

    @property
    def nbytes(self) -> int:
        return len(self.idx) + len(self.old) + len(self.new) + 64


@dataclass(frozen=True)
class _Scribble:
    """One scribble: its id, label (1 fg / 2 bg) and voxels (sorted flat int64 indices)."""

    id: int
    label: int
    indices: np.ndarray
    info: dict[str, Any]

    @property
    def nbytes(self) -> int:
        return int(self.indices.nbytes) + 200


@dataclass
class _Entry:
    """One undoable action: everything it changed, before and after."""

    uid: str
    action: str
    details: dict[str, Any]
    mask: _Diff | None = None
    scribbles_before: dict[int, _Scribble | None] = dataclasses.field(default_factory=dict)
    scribbles_after: dict[int, _Scribble | None] = dataclasses.field(default_factory=dict)
    params_before: dict[str, np.ndarray] | None = None
    params_after: dict[str, np.ndarray] | None = None
    prob_before: np.ndarray | None = None
    prob_after: np.ndarray | None = None
    state_before: dict[str, Any] = dataclasses.field(default_factory=dict)
    state_after: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        n = 256 + (self.mask.nbytes if self.mask is not None else 0)
        for side in (self.scribbles_before, self.scribbles_after):
            n += sum(s.nbytes for s in side.values() if s is not None)
        for params in (self.params_before, self.params_after):
            if params:
                n += sum(int(a.nbytes) for a in params.values())
        for prob in (self.prob_before, self.prob_after):
            if prob is not None:
                n += int(prob.nbytes)
        return n

    # -- serialisation (one .npz per entry, no pickles) --------------------------------------
    def to_npz_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {"uid": self.uid, "action": self.action, "details": self.details,
                                "state_before": self.state_before,
                                "state_after": self.state_after, "mask_n": None,
                                "scribbles": {}, "params": {}}
        if self.mask is not None:
            meta["mask_n"] = self.mask.n
            for part in ("idx", "old", "new"):
                arrays[f"mask_{part}"] = np.frombuffer(getattr(self.mask, part), np.uint8)
        for side, entries in (("before", self.scribbles_before), ("after", self.scribbles_after)):
            side_meta = []
            for sid, s in entries.items():
                side_meta.append({"id": sid, "present": s is not None,
                                  "label": s.label if s else 0, "info": s.info if s else {}})
                if s is not None:
                    arrays[f"scrib_{side}_{sid}"] = s.indices
            meta["scribbles"][side] = side_meta
        for side, params in (("before", self.params_before), ("after", self.params_after)):
            if params is not None:
                meta["params"][side] = list(params)
                for i, a in enumerate(params.values()):
                    arrays[f"param_{side}_{i}"] = a
        for side, prob in (("before", self.prob_before), ("after", self.prob_after)):
            if prob is not None:
                arrays[f"prob_{side}"] = prob
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)
        buf = _io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_npz_bytes(cls, data: bytes) -> _Entry:
        with np.load(_io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
        mask = None
        if meta["mask_n"] is not None:
            mask = _Diff(int(meta["mask_n"]), *(arrays[f"mask_{p}"].tobytes()
                                                for p in ("idx", "old", "new")))
        sides: dict[str, dict[int, _Scribble | None]] = {}
        for side in ("before", "after"):
            sides[side] = {}
            for m in meta["scribbles"].get(side, []):
                sid = int(m["id"])
                sides[side][sid] = (_Scribble(sid, int(m["label"]),
                                              arrays[f"scrib_{side}_{sid}"].astype(np.int64),
                                              m["info"]) if m["present"] else None)
        params: dict[str, dict[str, np.ndarray] | None] = {"before": None, "after": None}
        for side, names in meta["params"].items():
            params[side] = {n: arrays[f"param_{side}_{i}"] for i, n in enumerate(names)}
        return cls(meta["uid"], meta["action"], meta["details"], mask,
                   sides["before"], sides["after"], params["before"], params["after"],
                   arrays.get("prob_before"), arrays.get("prob_after"),
                   meta["state_before"], meta["state_after"])



def _registry_to_bytes(registry: dict[int, _Scribble]) -> bytes:
    """The scribble registry as a compressed ``.npz`` (ids, labels, brush info, voxels)."""
    ids = sorted(registry)
    arrays: dict[str, np.ndarray] = {
        "ids": np.asarray(ids, dtype=np.int64),
        "labels": np.asarray([registry[i].label for i in ids], dtype=np.uint8),
        "info": np.frombuffer(json.dumps([registry[i].info for i in ids]).encode(),
                              np.uint8)}
    for i in ids:
        arrays[f"idx_{i}"] = registry[i].indices
    buf = _io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _registry_from_bytes(data: bytes) -> dict[int, _Scribble]:
    with np.load(_io.BytesIO(data), allow_pickle=False) as z:
        ids = [int(i) for i in z["ids"]]
        labels = [int(v) for v in z["labels"]]
        infos = json.loads(z["info"].tobytes().decode("utf-8"))
        return {i: _Scribble(i, lab, z[f"idx_{i}"].astype(np.int64), info)
                for i, lab, info in zip(ids, labels, infos)}

