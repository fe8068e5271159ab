"""The autosave folder of a :class:`~iunet_nb.interactive.session.Session`: writing, loading, crash repair.

Folder layout (every file written atomically, :mod:`iunet_nb.io._atomic`; ``state.json`` last)::

    state.json            manifest: CT hash, file names + SHA-256, undo/redo order, state
    state.prev.json       the previous manifest (its files are kept until the next save)
    config.json card.json RefineConfig and ModelCard
    mask-<n>.nii.gz       the mask in the CT's geometry (opens in ITK-SNAP / 3D Slicer)
    scribbles-<n>.npz     the scribbles (ids, labels, voxel indices; compressed)
    params-<n>.pt         the unfrozen parameters' values (torch.save; weights_only loading)
    prob-<n>.npy          the last network probabilities on the working grid
    history/<uid>.npz     one file per undo/redo entry (diffs; written once)
    events.jsonl          the event log (append, flush, fsync)
    session.lock          the folder lock (:mod:`iunet_nb.interactive.locking`)

:class:`AutosaveFolder` writes what changed since the last save, then the manifest, and
deletes files neither the current nor the previous manifest names; :func:`read_folder`
checks every file against the manifest's checksums before anything is restored. The session
decides *what* its state is; this module only knows how it lies on disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import io as _io
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, InputError, IunetError, SessionError
from ..io._atomic import atomic_write_bytes, atomic_write_text
from ..io.volume import Volume
from ..model.checkpoint import ModelCard
from ._history import _Entry, _registry_from_bytes, _registry_to_bytes, _Scribble
from .locking import FolderLock
from .refine import RefineConfig

__all__ = ["AutosaveFolder", "SavedSession", "Snapshot", "read_events", "read_folder"]

logger = logging.getLogger(__name__)

FORMAT = "iunet-nb-session"
FORMAT_VERSION = 1
COMPONENTS = ("mask", "scribbles", "params", "prob", "config", "card")
# temporaries of _atomic.atomic_path left by a crash mid-write (".<stem>.<random><suffix>")
_ORPHAN_TMP = re.compile(r"\.(state|config|card|(mask|scribbles|params|prob)-\d+|[0-9a-f]{32})"
                         r"\.[A-Za-z0-9_]+\.((prev\.)?json|nii\.gz|npz|pt|npy)")
_SESSION_FILE = re.compile(r"state(\.prev)?\.json|events\.jsonl|config\.json|card\.json|"
                           r"session\.lock|(mask|scribbles|params|prob)-\d+\.(nii\.gz|npz|pt|npy)")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def array_hash(volume: Volume) -> str:
    """Hash of a CT's voxels, dtype, shape and geometry (a saved session names its CT)."""
    h = hashlib.blake2b(digest_size=20)
    arr = np.ascontiguousarray(volume.array)
    h.update(f"{arr.shape}|{arr.dtype.str}|{volume.geometry.to_dict()}".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def model_hash(model: torch.nn.Module) -> str:
    """Hash of a network's weights (a saved session names the weights it started from)."""
    h = hashlib.blake2b(digest_size=20)
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A session's state as a save writes it.

    ``params`` is called only when the parameters changed since the last save.
    """

    session_id: str
    case_id: str
    reader_id: str
    volume: Volume
    ct_hash: str
    model_hash: str
    config: RefineConfig
    card: ModelCard
    mask: np.ndarray
    registry: dict[int, _Scribble]
    params: Callable[[], dict[str, np.ndarray]]
    prob: np.ndarray | None
    undo: list[_Entry]
    redo: list[_Entry]
    state: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class SavedSession:
    """A session read back from its folder (every file checked against its checksum; the
    event log is read after :func:`repair_after_crash`, by the session)."""

    manifest: dict[str, Any]
    manifest_text: str
    config: RefineConfig
    mask: np.ndarray
    registry: dict[int, _Scribble]
    params: dict[str, np.ndarray]
    prob: np.ndarray | None
    undo: list[_Entry]
    redo: list[_Entry]


class AutosaveFolder:
    """The autosave folder of one open session; holds its lock until :meth:`close`.

    Args:
        folder: the session folder (it exists).
        lock: the folder's lock, held.
        saved: the session this folder holds when it was loaded (None: a new session).
    """

    def __init__(self, folder: Path, lock: FolderLock, saved: SavedSession | None = None
                 ) -> None:
        self.folder = folder
        self._lock: FolderLock | None = lock
        # component -> (file name, sha256); dirty components get new files
        self._files: dict[str, tuple[str, str]] = {}
        self._dirty = set(COMPONENTS)
        self._history_files: dict[str, tuple[str, str]] = {}
        self._seq = 0
        self._manifest_text: str | None = None
        if saved is not None:
            m = saved.manifest
            self._files = {k: (v["name"], v["sha256"]) for k, v in m["files"].items()}
            self._history_files = {e.uid: (r["name"], r["sha256"]) for e, r in
                                   zip(saved.undo + saved.redo, m["undo"] + m["redo"])}
            self._dirty = set()
            self._seq = int(m["seq"])
            self._manifest_text = saved.manifest_text

    # -- the lock ---------------------------------------------------------------------------
    def io(self) -> contextlib.AbstractContextManager[None]:
        """Serialise folder writes; refuse them once closed."""
        if self._lock is None:
            raise SessionError(f"the session in {self.folder} is closed, so it no longer "
                               "writes its folder; reopen it with Session.load(folder, ...) "
                               "to continue")
        return self._lock.io()

    def close(self) -> None:
        """Give the folder lock up (another process may then open the session). Idempotent."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    # -- writing ----------------------------------------------------------------------------
    def mark(self, *components: str) -> None:
        """Components changed since the last save: the next one writes them anew."""
        self._dirty.update(components)

    def save(self, snap: Snapshot) -> float:
        """Write what changed, then the manifest; returns the seconds it took.

        Raises:
            SessionError: the folder is closed, or a write failed (the folder then still
                holds the previous state).
        """
        t0 = time.perf_counter()
        try:
            with self.io():
                self._write(snap)
        except IunetError:
            raise
        except Exception as exc:
            raise SessionError(f"autosave to {self.folder} failed ({exc}); the change is in "
                               "memory and the folder still holds the previous state. Free "
                               "disk space or fix permissions, then call save()") from exc
        return round(time.perf_counter() - t0, 6)

    def append_event(self, record: dict[str, Any]) -> None:
        """Append one event line to ``events.jsonl`` and flush it to disk."""
        line = json.dumps(record, sort_keys=True) + "\n"
        with self.io(), open(self.folder / "events.jsonl", "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def _write(self, snap: Snapshot) -> None:
        from ..io.images import write_mask

        folder = self.folder
        self._seq += 1
        seq = self._seq
        files = dict(self._files)

        def put(component: str, name: str, data: bytes) -> None:
            atomic_write_bytes(folder / name, data)
            files[component] = (name, sha256(data))

        def due(component: str) -> bool:
            return component in self._dirty or component not in files

        if due("config"):
            put("config", "config.json", (snap.config.to_json() + "\n").encode())
        if due("card"):
            put("card", "card.json", (snap.card.to_json() + "\n").encode())
        if due("mask"):
            name = f"mask-{seq:06d}.nii.gz"
            write_mask(Volume(snap.mask, snap.volume.geometry), folder / name)
            files["mask"] = (name, sha256((folder / name).read_bytes()))
        if due("scribbles"):
            put("scribbles", f"scribbles-{seq:06d}.npz", _registry_to_bytes(snap.registry))
        if due("params"):
            buf = _io.BytesIO()
            torch.save({n: torch.from_numpy(a) for n, a in snap.params().items()}, buf)
            put("params", f"params-{seq:06d}.pt", buf.getvalue())
        if due("prob"):
            if snap.prob is None:
                files.pop("prob", None)
            else:
                buf = _io.BytesIO()
                np.save(buf, snap.prob, allow_pickle=False)
                put("prob", f"prob-{seq:06d}.npy", buf.getvalue())
        history_dir = folder / "history"
        history_dir.mkdir(exist_ok=True)
        for entry in snap.undo + snap.redo:
            if entry.uid not in self._history_files:
                data = entry.to_npz_bytes()
                name = f"history/{entry.uid}.npz"
                atomic_write_bytes(folder / name, data)
                self._history_files[entry.uid] = (name, sha256(data))
        manifest = {
            "format": FORMAT, "version": FORMAT_VERSION, "saved_at": utc_now(), "seq": seq,
            "session_id": snap.session_id, "case_id": snap.case_id,
            "reader_id": snap.reader_id,
            "ct": {"hash": snap.ct_hash, "shape": list(snap.volume.shape),
                   "dtype": str(snap.volume.array.dtype),
                   "geometry": snap.volume.geometry.to_dict()},
            "model_hash": snap.model_hash,
            "files": {k: {"name": n, "sha256": h} for k, (n, h) in sorted(files.items())},
            "undo": [self._history_ref(e) for e in snap.undo],
            "redo": [self._history_ref(e) for e in snap.redo],
            "state": snap.state,
        }
        text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
        if self._manifest_text is not None:
            atomic_write_text(folder / "state.prev.json", self._manifest_text)
        atomic_write_text(folder / "state.json", text)
        previous = self._manifest_text
        self._manifest_text = text
        self._files = files
        self._dirty.clear()
        self._cleanup([text] + ([previous] if previous else []),
                      {e.uid for e in snap.undo + snap.redo})

    def _history_ref(self, entry: _Entry) -> dict[str, str]:
        name, digest = self._history_files[entry.uid]
        return {"name": name, "sha256": digest, "action": entry.action}

    def _cleanup(self, manifests: list[str], live: set[str]) -> None:
        """Delete session files that neither the current nor the previous manifest names."""
        keep: set[str] = set()
        for text in manifests:
            m = json.loads(text)
            keep |= {f["name"] for f in m["files"].values()}
            keep |= {f["name"] for f in m["undo"] + m["redo"]}
        for uid in list(self._history_files):
            if uid not in live and self._history_files[uid][0] not in keep:
                del self._history_files[uid]
        candidates = [p for pattern in ("mask-*.nii.gz", "scribbles-*.npz", "params-*.pt",
                                        "prob-*.npy", "history/*.npz")
                      for p in self.folder.glob(pattern)]
        for p in candidates:
            rel = p.relative_to(self.folder).as_posix()
            if rel not in keep:
                with contextlib.suppress(OSError):
                    p.unlink()


# -- reading ------------------------------------------------------------------------------------
def read_folder(folder: Path, path: Path, hint: str, volume: Volume,
                model: torch.nn.Module, card: ModelCard, device: str | None
                ) -> SavedSession:
    """Read and check the session saved in ``folder`` by the manifest ``path``.

    Nothing is changed on disk. ``hint`` ends every error message (how to load the previous
    state instead, when there is one).

    Raises:
        SessionError: a missing, truncated or corrupt file (the message names it); another CT
            or other weights than the saved session's; a card that does not match.
    """
    try:
        manifest_text = path.read_text(encoding="utf-8")
        manifest = json.loads(manifest_text)
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}")
        if manifest.get("version") != FORMAT_VERSION:
            raise ValueError(f"version {manifest.get('version')!r}, expected {FORMAT_VERSION}")
        files = {k: (v["name"], v["sha256"]) for k, v in manifest["files"].items()}
        if "state" not in manifest:  # read by the session; checked here with the rest
            raise KeyError("state")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SessionError(f"{path} is corrupt or truncated ({exc}){hint}") from exc
    if manifest["ct"]["hash"] != array_hash(volume):
        raise SessionError(
            f"the session in {folder} was saved for another CT (shape "
            f"{tuple(manifest['ct']['shape'])}, {manifest['ct']['dtype']}); this CT has "
            f"shape {volume.shape}, {volume.array.dtype}, or different voxels/geometry. "
            "Open the CT the session was made for")
    if manifest["model_hash"] != model_hash(model):
        raise SessionError(f"the session in {folder} was made with other network weights; "
                           "load it with the model it was created with")

    def read(name: str, digest: str) -> bytes:
        p = folder / name
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise SessionError(f"session file {p} is missing or unreadable ({exc}){hint}") \
                from exc
        if sha256(data) != digest:
            raise SessionError(f"session file {p} is corrupt or truncated (checksum "
                               f"mismatch){hint}")
        return data

    blobs = {k: read(n, h) for k, (n, h) in files.items()}
    try:
        config = config_from_saved(blobs["config"].decode("utf-8"))
        saved_card = ModelCard.from_json(blobs["card"].decode("utf-8"))
    except IunetError as exc:
        raise SessionError(f"the saved configs in {folder} cannot be read ({exc})") from exc
    if (saved_card.net.to_dict() != card.net.to_dict()
            or saved_card.preprocess.to_dict() != card.preprocess.to_dict()):
        raise SessionError(f"the card given does not match the session's card in {folder} "
                           "(network or preprocessing differ)")
    if device is not None:
        config = dataclasses.replace(config, device=device)
    try:
        undo = [_Entry.from_npz_bytes(read(r["name"], r["sha256"])) for r in manifest["undo"]]
        redo = [_Entry.from_npz_bytes(read(r["name"], r["sha256"])) for r in manifest["redo"]]
        registry = _registry_from_bytes(blobs["scribbles"])
        params = torch.load(_io.BytesIO(blobs["params"]), map_location="cpu", weights_only=True)
        prob = (np.load(_io.BytesIO(blobs["prob"]), allow_pickle=False)
                if "prob" in blobs else None)
    except SessionError:
        raise
    except Exception as exc:
        raise SessionError(f"a file of the session in {folder} cannot be decoded "
                           f"({type(exc).__name__}: {exc}){hint}") from exc
    from ..io.images import read_mask
    try:
        mask_vol = read_mask(folder / files["mask"][0])
    except IunetError as exc:
        raise SessionError(f"the saved mask cannot be read ({exc}){hint}") from exc
    if mask_vol.shape != volume.shape or not mask_vol.geometry.is_close(volume.geometry):
        raise SessionError(f"the saved mask is not on the CT's grid{hint}")
    return SavedSession(manifest=manifest, manifest_text=manifest_text, config=config,
                        mask=np.ascontiguousarray(mask_vol.array, dtype=np.uint8),
                        registry=registry, params={n: t.numpy() for n, t in params.items()},
                        prob=prob, undo=undo, redo=redo)


def config_from_saved(text: str) -> RefineConfig:
    """The saved RefineConfig; a config written before ``local_mm``/``one_way`` existed
    keeps the behaviour it was saved with (changes anywhere in the crop, both ways), one
    written before ``scribble_ce`` existed refines without the scribble term, one written
    before ``confidence_gate``/``new_changes_only`` existed without those, and one written
    before ``edge_weight`` existed thresholds the probability alone, one written before
    ``fill_below``/``geodesic_sides`` existed refines without them, and one written before
    ``precision`` existed refines in float32."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"RefineConfig: not valid JSON ({exc})") from exc
    if isinstance(data, dict):
        data = {"local_mm": None, "one_way": False, "scribble_ce": 0.0,
                "confidence_gate": False, "new_changes_only": False, "edge_weight": 0.0,
                "fill_below": 0.0, "geodesic_sides": False, "precision": "float32", **data}
    return RefineConfig.from_dict(data)


def repair_after_crash(folder: Path) -> None:
    """Remove what a crash mid-write left behind (the folder lock is held).

    An interrupted event append leaves a line without its newline: the next append would
    glue onto it and both events would be lost, so the file is cut back to its last complete
    line. Temporaries of interrupted atomic writes are deleted.
    """
    events = folder / "events.jsonl"
    if events.is_file():
        with open(events, "rb+") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                fh.truncate(keep)
                fh.flush()
                os.fsync(fh.fileno())
                logger.warning("%s ended in a partly written event (%d bytes, a crash during "
                               "a write?); removed it", events, len(data) - keep)
    for where in (folder, folder / "history"):
        if not where.is_dir():
            continue
        for p in where.iterdir():
            if p.is_file() and _ORPHAN_TMP.fullmatch(p.name):
                with contextlib.suppress(OSError):
                    p.unlink()
                    logger.info("removed %s, left by an interrupted write", p)


def check_export_target(folder: Path | None, ct_source: Any, path: str | os.PathLike) -> None:
    """InputError when ``path`` is the CT's file or an autosave file of the session in
    ``folder`` (None: no folder)."""
    from ..io.paths import check_output

    check_output(path, {"CT": ct_source}, what="the export path")
    if folder is None:
        return
    path = Path(path)
    parent, home = os.path.realpath(path.parent), os.path.realpath(folder)
    if ((parent == home and _SESSION_FILE.fullmatch(path.name))
            or parent == os.path.join(home, "history")):
        raise InputError(f"{path} is one of the autosave files of the session in {folder}; "
                         "writing over it would damage the session. Choose another name (e.g. "
                         f"{Path(folder) / 'export.nii.gz'})")


def read_events(path: Path) -> list[dict[str, Any]]:
    """The events of an ``events.jsonl``; a damaged line costs that line only (a warning)."""
    if not path.is_file():
        return []
    events = []
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:  # a damaged line (not UTF-8, not JSON, not an event) costs that line only
            event = json.loads(line.decode("utf-8"))
            if not isinstance(event, dict):
                raise ValueError(f"a JSON {type(event).__name__}, not an event")
            events.append(event)
        except ValueError:  # UnicodeDecodeError and JSONDecodeError too
            logger.warning("%s line %d is not a valid event (damaged or interrupted write?); "
                           "skipped, the file is kept as it is", path, n)
    return events

