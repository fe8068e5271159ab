"""``iunet-nb session``: look at, export and continue an autosaved session folder headless.

A :class:`~iunet_nb.interactive.session.Session` autosaves after every action (``state.json`` is its
manifest; every file it names carries a SHA-256). These subcommands work on such a folder
from a shell, e.g. on a cluster node or after a kernel died::

    iunet-nb session info sessions/case01 [--reference REF]      # what is in it (no CT needed)
    iunet-nb session export sessions/case01 mask.nii.gz          # the saved mask (no CT needed)
    iunet-nb session export sessions/case01 seg.dcm --ct DICOMDIR  # DICOM-SEG (needs the CT)
    iunet-nb session refine sessions/case01 --ct CT [--model M]  # refine the pending scribbles
    iunet-nb session undo sessions/case01 --ct CT [--steps 2]    # also: redo

``info`` and mask ``export`` read only the folder: the mask file is checked against the
manifest's SHA-256 first, so a damaged autosave is reported, never exported. ``refine``,
``undo`` and ``redo`` open the session with :meth:`Session.load` (same CT and weights,
checked by hash; the folder is locked meanwhile) and autosave the result as the annotator
would.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, SessionError

__all__ = ["add_cli", "read_manifest", "saved_mask", "session_info"]

logger = logging.getLogger(__name__)


def read_manifest(folder: str | Path, *, use_previous: bool = False) -> dict[str, Any]:
    """The autosave manifest (``state.json``, or ``state.prev.json``) of a session folder.

    Raises:
        SessionError: no manifest, or one that is not a session manifest (the message says
            whether the previous state can be used instead).
    """
    folder = Path(folder)
    path = folder / ("state.prev.json" if use_previous else "state.json")
    if not path.is_file():
        raise SessionError(f"{path} does not exist: {folder} holds no saved session "
                           "(a folder the annotator or Session(folder=...) autosaved to)")
    hint = ("; try --previous (the state one action earlier)"
            if not use_previous and (folder / "state.prev.json").is_file() else "")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
        _check_manifest(manifest, folder)
    except (ValueError, KeyError, TypeError) as exc:
        raise SessionError(f"{path} is corrupt or truncated ({exc}){hint}") from exc
    return manifest


def _check_manifest(manifest: Any, folder: Path) -> None:
    """ValueError unless ``manifest`` has the fields (and types) info and export use, and every
    file it names lies inside ``folder`` (a manifest naming ``/etc/x`` or ``../x`` is refused)."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(what)

    need(isinstance(manifest, dict), "not a JSON object")
    for key, kind in (("files", dict), ("state", dict), ("ct", dict)):
        need(isinstance(manifest.get(key), kind), f"{key!r} is not a {kind.__name__}")
    need(isinstance(manifest["ct"].get("shape"), list)
         and all(isinstance(n, int) for n in manifest["ct"]["shape"]), "ct.shape is not a list "
         "of integers")
    for key in ("undo", "redo"):
        need(isinstance(manifest.get(key, []), list), f"{key!r} is not a list")
    for key in ("refine_round", "refined_below"):
        value = manifest["state"].get(key, 0)
        need(isinstance(value, int) and not isinstance(value, bool),
             f"state.{key} is {value!r:.40}, not an integer")
    entries = list(manifest["files"].values()) + manifest.get("undo", []) + manifest.get("redo", [])
    home = os.path.realpath(folder)
    for entry in entries:
        need(isinstance(entry, dict) and isinstance(entry.get("name"), str)
             and isinstance(entry.get("sha256"), str), f"a file entry is malformed: {entry!r:.80}")
        name = entry["name"]
        real = os.path.realpath(os.path.join(home, name))
        need(not os.path.isabs(name) and ".." not in Path(name).parts
             and real.startswith(home + os.sep), f"file name {name!r} points outside the "
             "session folder")


def saved_mask(folder: str | Path, *, use_previous: bool = False):
    """The mask the session last autosaved, in the CT's geometry, after a SHA-256 check.

    Returns:
        a :class:`~iunet_nb.io.volume.Volume` (uint8 {0, 1}).

    Raises:
        SessionError: no session, or the mask file is missing or does not match the manifest.
    """
    folder = Path(folder)
    return _read_saved_mask(folder, read_manifest(folder, use_previous=use_previous))


def _read_saved_mask(folder: Path, manifest: dict[str, Any]):
    from ..io.images import read_mask

    entry = manifest["files"].get("mask")
    if entry is None:
        raise SessionError(f"the session in {folder} has no saved mask yet (segment or paint "
                           "first)")
    path = folder / entry["name"]
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise SessionError(f"{path}: the session's mask file cannot be read ({exc})") from exc
    if digest != entry["sha256"]:
        raise SessionError(f"{path} does not match the session manifest (damaged or replaced)"
                           "; try --previous (the state one action earlier)")
    return read_mask(path)


def session_info(folder: str | Path, *, reference=None, use_previous: bool = False
                 ) -> dict[str, Any]:
    """What a session folder holds, from its manifest, mask and event log (no CT needed).

    Args:
        folder: the session folder.
        reference: optional reference mask Volume on the CT's grid: adds ``dsc``.
        use_previous: describe ``state.prev.json`` instead.

    Returns:
        dict with ``session_id``, ``case_id``, ``reader_id``, ``saved_at``, ``ct_shape``,
        ``box``, ``predicted``, ``refine_round``, ``n_scribbles``, ``pending_scribbles``
        (added since the last refine), ``undo_depth``, ``redo_depth``, ``n_events``,
        ``event_counts``, ``mask_voxels``, ``mask_ml`` and, with a reference, ``dsc``.

    Raises:
        SessionError: see :func:`saved_mask`.
        InputError: the reference is not on the CT's grid.
    """
    from ..model.evaluate import dice

    folder = Path(folder)
    manifest = read_manifest(folder, use_previous=use_previous)
    state = manifest["state"]
    info: dict[str, Any] = {
        "folder": str(folder), "session_id": manifest.get("session_id"),
        "case_id": manifest.get("case_id"), "reader_id": manifest.get("reader_id"),
        "saved_at": manifest.get("saved_at"), "ct_shape": tuple(manifest["ct"]["shape"]),
        "box": state.get("box"), "predicted": bool(state.get("predicted")),
        "refine_round": int(state.get("refine_round", 0)),
        "undo_depth": len(manifest.get("undo", [])), "redo_depth": len(manifest.get("redo", [])),
    }
    ids = _scribble_ids(folder, manifest)
    info["n_scribbles"] = len(ids)
    info["pending_scribbles"] = sum(1 for i in ids if i >= int(state.get("refined_below", 0)))
    from .autosave import read_events

    counts: dict[str, int] = {}
    for event in read_events(folder / "events.jsonl"):  # damaged lines skipped, with a warning
        kind = str(event.get("event", "?"))
        counts[kind] = counts.get(kind, 0) + 1
    info["n_events"], info["event_counts"] = sum(counts.values()), counts
    if "mask" in manifest["files"]:
        mask = _read_saved_mask(folder, manifest)
        n = int(np.count_nonzero(mask.array))
        info["mask_voxels"] = n
        info["mask_ml"] = n * float(np.prod(mask.spacing_mm)) / 1000.0
        if reference is not None:
            if reference.shape != mask.shape:
                raise InputError(f"the reference has shape {reference.shape}, the session's CT "
                                 f"{mask.shape}: give the reference mask of this case")
            info["dsc"] = float(dice(mask.array, reference.array))
    return info


def _scribble_ids(folder: Path, manifest: dict[str, Any]) -> list[int]:
    entry = manifest["files"].get("scribbles")
    if entry is None:
        return []
    try:
        with np.load(folder / entry["name"], allow_pickle=False) as z:
            return [int(i) for i in z["ids"]]
    except (OSError, ValueError, KeyError) as exc:
        raise SessionError(f"{folder / entry['name']}: the scribble file cannot be read ({exc})"
                           ) from exc


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def _open(args: argparse.Namespace):
    from ..io.images import read_image, read_mask
    from ..model.checkpoint import load_bundled_model, load_model
    from .session import Session

    if not args.ct:
        raise InputError(f"`iunet-nb session {args.action}` needs the session's CT: --ct PATH "
                         "(the file or DICOM folder the session was made on)")
    ct = read_image(args.ct)
    model, card = load_model(args.model) if args.model else load_bundled_model()
    reference = read_mask(args.reference) if getattr(args, "reference", None) else None
    return Session.load(args.folder, ct, model, card, reference=reference, device=args.device,
                        use_previous=args.previous)


def _print_info(info: dict[str, Any]) -> None:
    for key in ("folder", "session_id", "case_id", "reader_id", "saved_at", "ct_shape", "box",
                "predicted", "refine_round", "n_scribbles", "pending_scribbles", "undo_depth",
                "redo_depth", "n_events"):
        print(f"{key:18s} {info[key]}")
    if info["event_counts"]:
        print(f"{'events':18s} " + ", ".join(f"{k} {v}" for k, v in
                                             sorted(info["event_counts"].items())))
    if "mask_voxels" in info:
        print(f"{'mask':18s} {info['mask_voxels']} voxels, {info['mask_ml']:.1f} mL")
    if "dsc" in info:
        print(f"{'DSC vs reference':18s} {info['dsc']:.4f}")


def _cmd_session(args: argparse.Namespace) -> int:
    from ..io.images import read_mask, write_mask

    if args.action == "info":
        reference = read_mask(args.reference) if args.reference else None
        _print_info(session_info(args.folder, reference=reference, use_previous=args.previous))
        return 0
    if args.action == "export":
        from ..io.paths import check_output
        from .autosave import check_export_target

        check_export_target(Path(args.folder), args.ct, args.out)
        check_output(args.out, {"reference mask": args.reference}, what="OUT")
    if args.action == "export" and not args.out.lower().endswith((".dcm",)):
        out = write_mask(saved_mask(args.folder, use_previous=args.previous), args.out)
        print(f"wrote {out}")
        return 0
    if args.action == "refine":  # before reading the CT and the model
        pending = session_info(args.folder, use_previous=args.previous)["pending_scribbles"]
        if not pending:
            raise SessionError(f"nothing to refine in {args.folder}: no scribble was added "
                               "since the last refine; add one first (in the annotator, or "
                               "Session.add_scribble)")
    session = _open(args)
    try:
        if args.action == "export":
            print(f"wrote {session.export(args.out)}")
        elif args.action == "refine":
            before = session.mask.array.copy()
            after = session.refine().array  # SessionError when there is nothing to refine
            print(f"refine round {session.refine_round} done: "
                  f"{int(np.count_nonzero(before != after))} voxels changed; autosaved")
        else:  # undo / redo
            step = session.undo if args.action == "undo" else session.redo
            can = (lambda: session.can_undo) if args.action == "undo" else (lambda: session.can_redo)
            done = 0
            for _ in range(args.steps):
                if not can():
                    break
                step()
                done += 1
            if done < args.steps:
                print(f"only {done} of {args.steps} step(s) could be done: nothing more to "
                      f"{args.action}")
            print(f"{args.action}: {done} step(s); autosaved")
    finally:
        session.close()
    return 0


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``session`` (info, export, refine, undo, redo) to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("session", help="inspect, export or continue an autosaved session "
                                              "folder (info, export, refine, undo, redo)")
    p.add_argument("action", choices=("info", "export", "refine", "undo", "redo"))
    p.add_argument("folder", help="the session folder (holds state.json)")
    p.add_argument("out", nargs="?", default=None,
                   help="export: output file (.nii.gz, .nrrd, .mha, or .dcm for DICOM-SEG)")
    p.add_argument("--ct", default=None, help="the session's CT (refine, undo, redo, .dcm export)")
    p.add_argument("--model", default=None, help="model.pt with its model.json (default: "
                                                 "bundled), the one the session was made with")
    p.add_argument("--reference", default=None, help="reference mask: info prints the DSC")
    p.add_argument("--steps", type=int, default=1, help="undo/redo: how many steps (default 1)")
    p.add_argument("--previous", action="store_true",
                   help="use state.prev.json, the state one action earlier (a damaged autosave)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the saved config's)")

    def run(args: argparse.Namespace) -> int:
        if args.action == "export" and not args.out:
            p.error("export needs an output file: iunet-nb session export FOLDER OUT")
        if args.steps < 1:
            p.error("--steps must be >= 1")
        return _cmd_session(args)

    p.set_defaults(func=run)
    return p
