"""Experiment 2, the reader study: the analysis of its event logs and final masks.

The JSON Lines event logs written by :class:`iunet_nb.interactive.session.Session`
(fields ``seq``, ``t_monotonic``, ``t_wall``, ``session_id``, ``case_id``, ``reader_id``,
``event``, ``duration_s``, ``dsc``, ``n_scribble_voxels``, ``details``):

* time per case (:func:`case_times`), the paper's definitions: *manual* from the first
  annotation (the start of the first ``paint``/``scribble``/``erase`` action) to the last
  ``save`` (or ``export``); *interactive* from the initial segmentation (the ``predict``
  event, logged when the mask is there) to the last ``save``/``export``. Times are
  ``t_monotonic`` differences within one process; when a session was resumed after a crash
  or a kernel restart (``open``/``load`` events start a new process segment) the time while
  nothing ran is not counted.
* DSC of each reader's final mask against a reference: a given one, or the *consensus* of
  all final masks of the case (:func:`consensus`). Majority vote is the default: it is
  parameter-free, the same whatever the field of view, and with the paper's 3 readers it is
  always defined (no ties). STAPLE (SimpleITK's ``STAPLEImageFilter``, thresholded at 0.5)
  weighs readers by their estimated sensitivity and specificity, but its foreground prior
  comes from the fraction of foreground in the image, so its result depends on how much
  background the grid holds (a crop changes it); it is available with ``method="staple"``.
  A consensus built from the masks it scores favours each of them a little (each mask is
  one of its votes); a reference made independently (the paper's two extra readers) avoids
  that, pass it as ``reference``.
* pairwise inter-observer DSC (:func:`interobserver_dsc`): mean DSC of two readers over the
  cases both segmented (optionally with one method only; NaN where they share none).
* manual vs interactive (:func:`compare_methods`): Wilcoxon signed-rank tests of time and
  DSC. In the crossover design each reader does each case with *one* method, so a pair per
  reader x case does not exist; the tests then pair per case (each case's mean over the
  readers who used each method). Where the same reader did a case with both methods the
  pairs are reader x case. ``paired_by`` says which was used. Median time reduction
  ``100 * (1 - median interactive / median manual)`` (the paper: 48.4 %).

The whole analysis is :func:`analyse_study`; its one-page report is
:func:`iunet_nb.studies.report.write_study_report`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError, InputError
from ..io.volume import Volume
from .cv_report import _json_ready, paired_wilcoxon
from .design import METHODS, StudyPlan

__all__ = [
    "END_EVENTS",
    "START_EVENTS",
    "StudyResult",
    "analyse_study",
    "case_times",
    "compare_methods",
    "consensus",
    "dsc_table",
    "interobserver_dsc",
    "load_event_logs",
    "load_final_masks",
    "validate_analysis_parameters",
]

logger = logging.getLogger(__name__)

#: Events that start the clock, per method (the paper's definitions).
START_EVENTS: dict[str, tuple[str, ...]] = {
    "manual": ("paint", "scribble", "erase"),
    "interactive": ("predict",),
}
#: Events that count as "saved" (the clock stops at the last one).
END_EVENTS: tuple[str, ...] = ("save", "export")
_SEGMENT_EVENTS = ("open", "load")  # a new process segment (monotonic clock) starts here
_REQUIRED = ("event", "t_monotonic", "t_wall", "session_id", "case_id", "reader_id")
_CONSENSUS = ("majority", "staple")


# ----------------------------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------------------------
def validate_analysis_parameters(study_dir: Any, plan: Any = None,
                                 consensus_method: Any = "majority",
                                 interobserver_method: Any = None) -> tuple[Path, StudyPlan | None]:
    """Check the analysis notebook's parameters before anything is read at length.

    Returns:
        ``(study folder, plan or None)``; the plan defaults to ``study_dir/plan.json``.

    Raises:
        InputError: the study folder is missing or holds no ``events.jsonl``; the plan file
            is missing.
        ConfigError: unknown consensus or method names, a bad plan.
    """
    if not isinstance(study_dir, (str, os.PathLike)) or not str(study_dir):
        raise ConfigError(f"study_dir must be a folder path, got {study_dir!r}")
    root = Path(study_dir)
    if not root.is_dir():
        raise InputError(f"study folder {root} does not exist; run the study (or the simulated "
                         "reader study) first, or point study_dir at its folder")
    if not any(root.rglob("events.jsonl")):
        raise InputError(f"{root} holds no events.jsonl; is it the study folder?")
    if consensus_method not in _CONSENSUS:
        raise ConfigError(f"consensus_method must be one of {list(_CONSENSUS)}, got "
                          f"{consensus_method!r}")
    if interobserver_method is not None and interobserver_method not in METHODS:
        raise ConfigError(f"interobserver_method must be None or one of {list(METHODS)}, got "
                          f"{interobserver_method!r}")
    if plan is None and (root / "plan.json").is_file():
        plan = root / "plan.json"
    if plan is not None and not isinstance(plan, StudyPlan):
        plan = StudyPlan.from_json(plan)
    return root, plan


# ----------------------------------------------------------------------------------------------
# event logs and times
# ----------------------------------------------------------------------------------------------
def _log_files(source: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = sorted(path.rglob("events.jsonl"))
            if not files:
                raise InputError(f"no events.jsonl under {path}; point at a study folder (one "
                                 "session folder per task) or give the log files")
            return files
        if not path.is_file():
            raise InputError(f"event log {path} does not exist")
        return [path]
    files = [Path(p) for p in source]
    for p in files:
        if not p.is_file():
            raise InputError(f"event log {p} does not exist")
    if not files:
        raise InputError("no event log files were given")
    return files


def load_event_logs(folder_or_files: str | os.PathLike | Iterable[str | os.PathLike],
                    ) -> pd.DataFrame:
    """Read Session event logs (JSON Lines) into one table.

    Args:
        folder_or_files: a folder (every ``events.jsonl`` below it is read), one file, or a
            list of files.

    Returns:
        One row per event, in file order: the event's fields (``details`` stays a dict),
        ``method`` (from the event or its details when the logger recorded it, else None),
        ``source`` (the file) and ``line`` (1-based).

    Raises:
        InputError: no files, a line that is not JSON (except an interrupted last line,
            which is skipped with a warning), or an event without the required fields.
    """
    rows = []
    for path in _log_files(folder_or_files):
        lines = path.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                if n == len(lines):
                    logger.warning("%s: last line %d is not complete JSON (interrupted write); "
                                   "skipped", path, n)
                    continue
                raise InputError(f"{path} line {n} is not valid JSON ({exc}); the log is "
                                 "damaged") from exc
            if not isinstance(record, dict):
                raise InputError(f"{path} line {n} is not a JSON object")
            missing = [k for k in _REQUIRED if k not in record]
            if missing:
                raise InputError(f"{path} line {n}: event lacks {missing}; is this a Session "
                                 "event log?")
            details = record.get("details") if isinstance(record.get("details"), dict) else {}
            method = record.get("method", details.get("method"))
            rows.append({**record, "method": method, "source": str(path), "line": n})
    if not rows:
        raise InputError("the event logs hold no events")
    events = pd.DataFrame(rows)
    for col in ("case_id", "reader_id", "session_id"):
        events[col] = events[col].astype(str)
    return events


def _timed_span(group: pd.DataFrame, method: str) -> dict[str, Any]:
    """Start/stop and elapsed time of one reader x case (rows in log order)."""
    ev = group.reset_index(drop=True)
    # process segments: a new one at every open/load event and at every new file
    new_seg = ev["event"].isin(_SEGMENT_EVENTS) | (ev["source"] != ev["source"].shift())
    ev["segment"] = new_seg.cumsum()
    starts = ev.index[ev["event"].isin(START_EVENTS[method])]
    ends = ev.index[ev["event"].isin(END_EVENTS)]
    out: dict[str, Any] = {"time_s": math.nan, "complete": False, "start_event": None,
                           "n_segments": int(ev["segment"].nunique())}
    if len(starts) == 0:
        out["problem"] = f"no {'/'.join(START_EVENTS[method])} event"
        return out
    i0 = int(starts[0])
    ends = ends[ends > i0]
    if len(ends) == 0:
        out["problem"] = "not saved"
        return out
    i1 = int(ends[-1])
    span = ev.iloc[i0:i1 + 1]
    t0 = float(ev.at[i0, "t_monotonic"])
    if method == "manual":  # the first annotation started duration_s before it was logged
        t0 -= float(ev.at[i0, "duration_s"] or 0.0)
    total = 0.0
    for seg, rows in span.groupby("segment", sort=False):
        t = rows["t_monotonic"].astype(float)
        lo = t0 if seg == ev.at[i0, "segment"] else float(t.iloc[0])
        total += float(t.iloc[-1]) - lo
    out.update(time_s=total, complete=True, start_event=str(ev.at[i0, "event"]), problem="")
    return out


def case_times(events: pd.DataFrame, plan: StudyPlan | None = None) -> pd.DataFrame:
    """Time per reader x case from the paper's start/stop definitions.

    The method of a reader x case comes from the events (a ``method`` field), else from the
    ``plan``, else it is inferred: ``interactive`` if there is a ``predict`` event, else
    ``manual`` (logged). Sessions of one reader x case (several files, or a resumed session)
    are taken together, files ordered by their first wall-clock time. See the module
    docstring for the start/stop events and how resumed sessions are timed.

    Args:
        events: from :func:`load_event_logs`.
        plan: the study plan (gives the method; tasks without any log are reported missing).

    Returns:
        One row per reader x case: ``reader_id``, ``case_id``, ``method``, ``time_s``,
        ``time_min``, ``complete`` (False: never started or never saved; time NaN),
        ``problem``, ``start_event``, ``n_segments`` (process segments), counts of
        ``predict``/``refine``/``scribble``/``paint``/``undo`` events, ``final_dsc`` (the
        last DSC logged against the session's reference, if any), ``source``.

    Raises:
        InputError: missing columns, or the log's method disagrees with the plan.
    """
    missing = [c for c in (*_REQUIRED, "source", "line") if c not in events.columns]
    if missing:
        raise InputError(f"case_times needs the table of load_event_logs; missing {missing}")
    ev = events.copy()
    first_wall = ev.groupby("source")["t_wall"].transform("min")
    ev = ev.assign(_first_wall=first_wall).sort_values(["_first_wall", "source", "line"],
                                                       kind="stable")
    rows = []
    for (reader, case), group in ev.groupby(["reader_id", "case_id"], sort=True):
        logged = sorted({str(m) for m in group["method"] if m is not None and pd.notna(m)})
        planned = plan.method_of(reader, case) if plan is not None else None
        if len(logged) > 1:
            raise InputError(f"reader {reader}, case {case}: the log names several methods "
                             f"{logged}")
        if logged and planned and logged[0] != planned:
            raise InputError(f"reader {reader}, case {case}: the log says {logged[0]!r} but the "
                             f"plan says {planned!r}; is this the right plan?")
        method = logged[0] if logged else planned
        if method is None:
            method = "interactive" if (group["event"] == "predict").any() else "manual"
            logger.info("reader %s, case %s: no method in the log or plan; inferred %s",
                        reader, case, method)
        if method not in METHODS:
            raise InputError(f"reader {reader}, case {case}: unknown method {method!r}")
        span = _timed_span(group, method)
        if not span["complete"]:
            logger.warning("reader %s, case %s (%s): %s; its time is left out", reader, case,
                           method, span["problem"])
        counts = group["event"].value_counts()
        dsc = group["dsc"].dropna() if "dsc" in group else pd.Series(dtype=float)
        rows.append({"reader_id": reader, "case_id": case, "method": method,
                     "time_s": span["time_s"], "time_min": span["time_s"] / 60.0,
                     "complete": span["complete"], "problem": span.get("problem", ""),
                     "start_event": span["start_event"], "n_segments": span["n_segments"],
                     **{f"n_{e}": int(counts.get(e, 0))
                        for e in ("predict", "refine", "scribble", "paint", "undo")},
                     "final_dsc": float(dsc.iloc[-1]) if len(dsc) else math.nan,
                     "source": group["source"].iloc[0]})
    table = pd.DataFrame(rows)
    if plan is not None:
        logged_pairs = set(zip(table["reader_id"], table["case_id"]))
        absent = [t for t in plan.tasks if (t.reader_id, t.case_id) not in logged_pairs]
        if absent:
            logger.warning("%d planned task(s) have no event log, e.g. %s", len(absent),
                           absent[0].folder)
            extra = pd.DataFrame([{"reader_id": t.reader_id, "case_id": t.case_id,
                                   "method": t.method, "time_s": math.nan, "time_min": math.nan,
                                   "complete": False, "problem": "no event log"}
                                  for t in absent])
            table = pd.concat([table, extra], ignore_index=True)
    return table.sort_values(["reader_id", "case_id"], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# masks, consensus, DSC
# ----------------------------------------------------------------------------------------------
def _array(mask: Volume | np.ndarray, what: str) -> np.ndarray:
    arr = mask.array if isinstance(mask, Volume) else np.asarray(mask)
    if arr.ndim != 3:
        raise InputError(f"{what} must be a 3D (z, y, x) mask, got shape {arr.shape}")
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{what} must be a bool or integer mask, got dtype {arr.dtype}")
    return arr != 0


def consensus(masks: Sequence[Volume | np.ndarray], method: str = "majority"
              ) -> np.ndarray:
    """Consensus of several readers' masks of one case.

    Args:
        masks: uint8/bool ``(z, y, x)`` masks (or Volumes) of the same shape, one per reader.
        method: ``"majority"`` (default; a voxel is foreground when more than half of the
            masks have it; with an even number a tie is background) or ``"staple"``
            (SimpleITK ``STAPLEImageFilter``, foreground 1, its probability >= 0.5). See the
            module docstring for why majority is the default.

    Returns:
        uint8 ``(z, y, x)`` mask {0, 1}.

    Raises:
        InputError: no masks, different shapes, not masks.
        ConfigError: unknown method.
    """
    if method not in _CONSENSUS:
        raise ConfigError(f"consensus method must be one of {list(_CONSENSUS)}, got {method!r}")
    arrays = [_array(m, f"mask {i}") for i, m in enumerate(masks)]
    if not arrays:
        raise InputError("consensus needs at least one mask")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InputError(f"consensus masks must share one grid, got shapes {sorted(shapes)}")
    if len(arrays) == 1:
        return arrays[0].astype(np.uint8)
    if method == "majority":
        votes = np.sum(arrays, axis=0, dtype=np.int32)
        return (2 * votes > len(arrays)).astype(np.uint8)
    import SimpleITK as sitk

    images = [sitk.GetImageFromArray(a.astype(np.uint8)) for a in arrays]
    staple = sitk.STAPLEImageFilter()
    staple.SetForegroundValue(1.0)
    prob = sitk.GetArrayFromImage(staple.Execute(images))
    return (prob >= 0.5).astype(np.uint8)


def load_final_masks(study_dir: str | os.PathLike, plan: StudyPlan
                     ) -> dict[tuple[str, str], Volume]:
    """Each task's final mask from its session folder's autosave manifest (``state.json``).

    Args:
        study_dir: the study folder (holding ``<reader>/<method>/<case>/`` session folders).
        plan: the plan (gives the folders).

    Returns:
        ``{(reader_id, case_id): mask Volume}``; tasks without a saved session are left out
        (logged).
    """
    from ..io.images import read_mask

    root = Path(study_dir)
    out = {}
    for t in plan.tasks:
        folder = root / t.folder
        state = folder / "state.json"
        if not state.is_file():
            logger.warning("no saved session in %s; task left out of the DSC analysis", folder)
            continue
        try:
            manifest = json.loads(state.read_text(encoding="utf-8"))
            name = manifest["files"]["mask"]["name"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{state} is not a session manifest with a mask ({exc})") from exc
        out[(t.reader_id, t.case_id)] = read_mask(folder / name)
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.count_nonzero(a & b)) / denom


def dsc_table(masks: Mapping[tuple[str, str], Volume | np.ndarray], plan: StudyPlan | None = None,
              reference: Mapping[str, Volume | np.ndarray] | None = None,
              consensus_method: str = "majority") -> pd.DataFrame:
    """DSC of every reader's final mask against the case's reference.

    Args:
        masks: ``{(reader_id, case_id): mask}``.
        plan: gives each task's method (None: method column is None).
        reference: ``{case_id: mask}`` references made independently; cases without one get
            the consensus of all their final masks (:func:`consensus`).
        consensus_method: ``"majority"`` or ``"staple"``.

    Returns:
        Rows ``reader_id``, ``case_id``, ``method``, ``dsc``, ``reference`` (what the
        reference was, e.g. ``"majority of 3"``).

    Raises:
        InputError: masks of one case on different grids, no masks.
    """
    if not masks:
        raise InputError("dsc_table needs at least one final mask")
    by_case: dict[str, dict[str, np.ndarray]] = {}
    for (reader, case), m in masks.items():
        by_case.setdefault(str(case), {})[str(reader)] = _array(m, f"mask of {reader}/{case}")
    rows = []
    for case, per_reader in sorted(by_case.items()):
        if reference is not None and case in reference:
            ref, kind = _array(reference[case], f"reference of {case}"), "given"
        else:
            ref = consensus(list(per_reader.values()), consensus_method).astype(bool)
            kind = f"{consensus_method} of {len(per_reader)}"
        for reader, m in sorted(per_reader.items()):
            if m.shape != ref.shape:
                raise InputError(f"{reader}/{case}: mask shape {m.shape} != reference shape "
                                 f"{ref.shape}")
            rows.append({"reader_id": reader, "case_id": case,
                         "method": plan.method_of(reader, case) if plan is not None else None,
                         "dsc": _dice(m, ref), "reference": kind})
    return pd.DataFrame(rows)


def interobserver_dsc(masks: Mapping[tuple[str, str], Volume | np.ndarray],
                      plan: StudyPlan | None = None, method: str | None = None,
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pairwise inter-observer DSC (the paper's Table: 0.85-0.87 between its 3 readers).

    Args:
        masks: ``{(reader_id, case_id): mask}``.
        plan: gives the methods (needed when ``method`` is given).
        method: only masks made with this method (the paper: manual); None: all.

    Returns:
        ``(matrix, pairs)``: ``matrix`` is reader x reader mean DSC over the cases both
        segmented (1 on the diagonal, symmetric, NaN where two readers share no case);
        ``pairs`` has one row per reader pair: ``reader_a``, ``reader_b``, ``n_cases``,
        ``mean_dsc``, ``sd_dsc``, ``cases``.

    Raises:
        InputError: ``method`` given without a plan.
    """
    if method is not None and plan is None:
        raise InputError("interobserver_dsc: filtering by method needs the study plan")
    by_reader: dict[str, dict[str, np.ndarray]] = {}
    for (reader, case), m in masks.items():
        if method is None or plan.method_of(reader, case) == method:  # type: ignore[union-attr]
            by_reader.setdefault(str(reader), {})[str(case)] = _array(m, f"{reader}/{case}")
    readers = sorted(by_reader) if plan is None else [r for r in plan.readers if r in by_reader]
    matrix = pd.DataFrame(np.nan, index=readers, columns=readers, dtype=float)
    pairs = []
    for i, a in enumerate(readers):
        matrix.loc[a, a] = 1.0
        for b in readers[i + 1:]:
            shared = sorted(set(by_reader[a]) & set(by_reader[b]))
            values = [_dice(by_reader[a][c], by_reader[b][c]) for c in shared]
            mean = float(np.mean(values)) if values else math.nan
            matrix.loc[a, b] = matrix.loc[b, a] = mean
            pairs.append({"reader_a": a, "reader_b": b, "n_cases": len(shared), "mean_dsc": mean,
                          "sd_dsc": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
                          "cases": " ".join(shared)})
    matrix.index.name = "reader"
    return matrix, pd.DataFrame(pairs, columns=["reader_a", "reader_b", "n_cases", "mean_dsc",
                                                "sd_dsc", "cases"])


# ----------------------------------------------------------------------------------------------
# manual vs interactive
# ----------------------------------------------------------------------------------------------
def _paired(table: pd.DataFrame, value: str, a: str, b: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Paired samples of ``value`` for methods a and b: per reader x case if possible."""
    t = table.dropna(subset=[value])
    t = t[t["method"].isin([a, b])]
    per_rc = t.pivot_table(index=["reader_id", "case_id"], columns="method", values=value,
                           aggfunc="mean")
    if a in per_rc and b in per_rc and len(per_rc[[a, b]].dropna()):
        both = per_rc[[a, b]].dropna()
        return both[a].to_numpy(), both[b].to_numpy(), "reader x case"
    per_case = t.pivot_table(index="case_id", columns="method", values=value, aggfunc="mean")
    if a in per_case and b in per_case:
        both = per_case[[a, b]].dropna()
        return both[a].to_numpy(), both[b].to_numpy(), "case (mean over readers)"
    return np.array([]), np.array([]), "none"


def compare_methods(times: pd.DataFrame, dsc: pd.DataFrame | None = None,
                    a: str = "manual", b: str = "interactive") -> dict[str, Any]:
    """Manual vs interactive: medians, the median time reduction and Wilcoxon tests.

    Args:
        times: from :func:`case_times` (incomplete tasks, time NaN, are left out).
        dsc: from :func:`dsc_table` (optional).
        a, b: the methods compared (reduction is of ``b`` relative to ``a``).

    Returns:
        A JSON-ready dict: per method ``n``, median/mean/sd of time (s) and of DSC;
        ``median_time_reduction_pct = 100 * (1 - median_time(b) / median_time(a))`` over all
        complete tasks; ``paired_median_time_reduction_pct``, the median over pairs of
        ``100 * (1 - t_b / t_a)``; ``wilcoxon_time`` and ``wilcoxon_dsc``
        (:func:`iunet_nb.studies.cv_report.paired_wilcoxon` of a - b, with ``paired_by``).
    """
    out: dict[str, Any] = {"methods": [a, b], "per_method": {}}
    done = times[times["complete"].astype(bool)] if "complete" in times else times
    for m in (a, b):
        t = done.loc[done["method"] == m, "time_s"].dropna().to_numpy(float)
        entry = {"n_tasks": int(t.size),
                 "median_time_s": float(np.median(t)) if t.size else math.nan,
                 "mean_time_s": float(t.mean()) if t.size else math.nan,
                 "sd_time_s": float(t.std(ddof=1)) if t.size > 1 else math.nan}
        if dsc is not None and len(dsc):
            d = dsc.loc[dsc["method"] == m, "dsc"].dropna().to_numpy(float)
            entry.update(n_dsc=int(d.size), mean_dsc=float(d.mean()) if d.size else math.nan,
                         sd_dsc=float(d.std(ddof=1)) if d.size > 1 else math.nan,
                         median_dsc=float(np.median(d)) if d.size else math.nan)
        out["per_method"][m] = entry
    ma, mb = out["per_method"][a]["median_time_s"], out["per_method"][b]["median_time_s"]
    out["median_time_reduction_pct"] = (100.0 * (1.0 - mb / ma)
                                        if math.isfinite(ma) and ma > 0 else math.nan)
    xa, xb, by = _paired(done, "time_s", a, b)
    ok = xa > 0
    out["paired_median_time_reduction_pct"] = (float(np.median(100.0 * (1 - xb[ok] / xa[ok])))
                                               if ok.any() else math.nan)
    out["wilcoxon_time"] = {**paired_wilcoxon(xa, xb), "paired_by": by}
    if dsc is not None and len(dsc):
        da, db, by_d = _paired(dsc, "dsc", a, b)
        out["wilcoxon_dsc"] = {**paired_wilcoxon(da, db), "paired_by": by_d}
    return _json_ready(out)


# ----------------------------------------------------------------------------------------------
# the whole analysis
# ----------------------------------------------------------------------------------------------
@dataclass
class StudyResult:
    """Everything the analysis produced (tables are pandas DataFrames)."""

    times: pd.DataFrame
    dsc: pd.DataFrame | None
    interobserver: pd.DataFrame | None
    interobserver_pairs: pd.DataFrame | None
    stats: dict[str, Any]
    notes: list[str]


def analyse_study(study_dir: str | os.PathLike, plan: StudyPlan | str | os.PathLike | None = None,
                  *, reference: Mapping[str, Volume | np.ndarray] | None = None,
                  consensus_method: str = "majority", interobserver_method: str | None = None,
                  ) -> StudyResult:
    """Analyse a study folder: logs -> times; final masks -> DSC and inter-observer table.

    Args:
        study_dir: the study folder (session folders ``<reader>/<method>/<case>/``, or any
            folder of ``events.jsonl`` files when there is no plan).
        plan: the plan (object or JSON path); default ``study_dir/plan.json`` when present.
        reference: independent references ``{case_id: mask}`` (else the consensus).
        consensus_method: ``"majority"`` (default) or ``"staple"``.
        interobserver_method: restrict the inter-observer table to one method (the paper
            used the manual masks); None: all final masks.

    Returns:
        A :class:`StudyResult`. Without final masks (no ``state.json``), DSC comes from the
        event logs' last ``dsc`` (against the session's own reference), if any.
    """
    root = Path(study_dir)
    if plan is None and (root / "plan.json").is_file():
        plan = root / "plan.json"
    if plan is not None and not isinstance(plan, StudyPlan):
        plan = StudyPlan.from_json(plan)
    notes = []
    events = load_event_logs(root)
    times = case_times(events, plan)
    masks = load_final_masks(root, plan) if plan is not None else {}
    dsc = matrix = pairs = None
    if masks:
        dsc = dsc_table(masks, plan, reference, consensus_method)
        ref_kinds = sorted(set(dsc["reference"]))
        notes.append(f"DSC against: {', '.join(ref_kinds)} (final masks from the session "
                     "folders)")
        matrix, pairs = interobserver_dsc(masks, plan, interobserver_method)
    elif times["final_dsc"].notna().any():
        dsc = times.loc[times["final_dsc"].notna(),
                        ["reader_id", "case_id", "method", "final_dsc"]].rename(
            columns={"final_dsc": "dsc"}).assign(reference="session reference (event log)")
        notes.append("no final masks found: DSC is the last value logged against each "
                     "session's own reference")
    else:
        notes.append("no final masks and no DSC in the logs: DSC not analysed")
    stats = compare_methods(times, dsc)
    w = stats["wilcoxon_time"]
    notes.append(f"Wilcoxon tests paired by {w['paired_by']}"
                 + (" (each reader used one method per case in this design)"
                    if w["paired_by"].startswith("case") else ""))
    incomplete = times[~times["complete"].astype(bool)]
    if len(incomplete):
        notes.append(f"{len(incomplete)} task(s) incomplete and left out of the times: " +
                     ", ".join(f"{r.reader_id}/{r.case_id} ({r.problem})"
                               for r in incomplete.itertuples()))
    return StudyResult(times=times, dsc=dsc, interobserver=matrix, interobserver_pairs=pairs,
                       stats=stats, notes=notes)

