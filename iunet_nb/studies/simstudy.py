"""Experiment 2 played headless: simulated readers follow a study plan, manual and interactive.

:func:`simulate_study` takes a :class:`~iunet_nb.studies.study.StudyPlan`, the cases (CT and
reference) and a model, and lets one simulated reader per plan reader do its tasks in plan
order, each in its own :class:`~iunet_nb.interactive.session.Session` folder ``<reader>/<method>/<case>``
of the study folder, with the case and reader ids in the event log, exactly where a person's
sessions go. :func:`iunet_nb.studies.study.analyse_study` then reads the folder unchanged.

**A reader** is a :class:`~iunet_nb.interactive.robot.RobotConfig` (the presets ``"expert"`` and
``"novice"`` differ in brush radius, stroke length, jitter and think time). The box is the
reference's bounding box (the paper's box drawing is not simulated).

**Interactive arm** (the method's start event is the initial segmentation):

1. ``predict()``;
2. up to ``rounds`` rounds while the DSC against the reference is below ``dsc_target``: the
   robot plans a stroke in the largest error region (:func:`~iunet_nb.interactive.robot.plan_stroke`),
   ``add_scribble`` + ``refine()``; when a refinement lowered the DSC the reader takes it
   back (``undo()``, its scribble stays: it is correct information), as a person who sees
   a worse result would (``undo_worse``);
3. ``save()``.

**Manual arm** (no network; start event the first annotation), starting from an empty mask:

1. *outline and fill, slice by slice*: on every axial slice holding the reference, the
   reader traces the organ's outline and fills it, one ``paint`` (label 1, exact voxels) per
   slice. The traced outline is the reference's boundary displaced by a smooth random
   offset (Gaussian-filtered noise with standard deviation ``jitter_mm``, correlation length
   a quarter of the stroke length): painted = {signed distance to the reference outline <
   offset}. An outline of perimeter P mm is drawn in ``ceil(P / stroke_length_mm)`` strokes,
   each costing one think time;
2. up to ``rounds`` correction strokes while DSC < ``dsc_target``: the same robot strokes as
   the interactive arm, painted into the mask (``paint`` 1 in missed organ, 0 in a leak);
3. ``save()``.

**Simulated time.** Nothing sleeps. Every reader action (a stroke, an outline, an undo, the
final review before ``save``) is preceded by a think time from the robot's model
(lognormal, median ``think_median_s``, log-sd ``think_sigma``; a refine right after its
scribble and the opening of a case have none). The Session writes real clocks into
``events.jsonl``; once a session is closed its log is rewritten (atomically) onto a
simulated timeline: event ``i`` gets ``t_monotonic = t_{i-1} + think_i + duration_s_i``
(``duration_s`` is the action's measured compute time: the refine a reader waits for),
starting at 0 at ``open``, and ``t_wall`` = the simulated start of the task plus that
(each reader's tasks follow one another from the moment the simulation started). The
measured values stay in each event's ``details["simulated"]`` (``think_s``,
``t_monotonic_measured``, ``t_wall_measured``). :func:`iunet_nb.studies.study.case_times` reads
``t_monotonic`` and so times the simulated work: interactive, from the predict event to the
save; manual, from the start of the first paint to the save.

Seeds: task ``(reader r, case c)`` draws its strokes, outlines and think times from
``np.random.default_rng([seed, robot.seed, r, c])`` (indices in the plan), so one task's
randomness does not depend on which tasks ran before it.

Example:
    >>> plan = design_study(["r1", "r2"], ["c0", "c1"])                      # doctest: +SKIP
    >>> sim = simulate_study(plan, cases, "runs/sim", model=model, card=card)  # doctest: +SKIP
    >>> write_study_report(analyse_study("runs/sim"), "runs/sim/report")     # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from ..errors import ConfigError, InputError
from ..interactive.refine import RefineConfig
from ..interactive.robot import SKILLS, RobotConfig, plan_stroke
from ..interactive.session import Session
from ..io._atomic import atomic_write_text
from ..io.volume import Volume
from ..model.checkpoint import ModelCard
from ..model.nets import SegmentationNet
from ..model.preprocess import Box
from .design import StudyPlan, StudyTask, validate_id

__all__ = [
    "SimulationResult",
    "add_cli",
    "draw_think_s",
    "load_simulation_cases",
    "outline_fill",
    "simulate_study",
    "validate_simulation_parameters",
]

logger = logging.getLogger(__name__)

Case = tuple[str, Volume, Volume]


@dataclass
class SimulationResult:
    """What :func:`simulate_study` did.

    Attributes:
        study_dir: the study folder (``plan.json``, session folders, ``simulation.json``).
        tasks: one row per task, in the order they were simulated: ``reader_id``,
            ``position``, ``case_id``, ``method``, ``skill``, ``folder``, ``n_strokes``
            (scribbles, outline strokes and correction strokes), ``n_undo``, ``rounds``
            (correction rounds done), ``think_s`` (total simulated think time of the task),
            ``compute_s`` (total measured action time), ``time_s`` (the simulated time by the
            paper's definition, computed here from the simulated timeline),
            ``dsc_initial`` (after predict; manual: after the outline pass), ``dsc_final``
            (against the case's reference), ``wall_s`` (real seconds the task took to simulate).
        plan: the plan followed.
        readers: ``{reader_id: RobotConfig}`` used.
    """

    study_dir: Path
    tasks: pd.DataFrame
    plan: StudyPlan
    readers: dict[str, RobotConfig]


# ----------------------------------------------------------------------------------------------
# pure pieces
# ----------------------------------------------------------------------------------------------
def draw_think_s(robot: RobotConfig, rng: np.random.Generator) -> float:
    """One think time (s) from the robot's model: lognormal (median, log-sd) or 0 for "none"."""
    if robot.think_model == "none":
        return 0.0
    return float(np.exp(math.log(robot.think_median_s)
                        + robot.think_sigma * rng.standard_normal()))


def outline_fill(reference_slice: np.ndarray, spacing_mm: Sequence[float], jitter_mm: float,
                 correlation_mm: float, rng: np.random.Generator | int | None = None,
                 ) -> tuple[np.ndarray, float]:
    """A hand-traced, filled outline of a 2D region: the manual arm's per-slice action.

    The outline is the region's boundary displaced by a smooth random offset: ``noise`` is
    white Gaussian noise filtered with a Gaussian of ``correlation_mm`` and scaled to a
    standard deviation of ``jitter_mm``; the painted region is ``{s < noise}`` where ``s`` is
    the signed distance (mm) to the region's boundary, negative inside.

    Args:
        reference_slice: bool ``(rows, cols)`` region (non-empty).
        spacing_mm: ``(row, col)`` pixel size in mm.
        jitter_mm: standard deviation of the outline's displacement (>= 0; 0 = exact).
        correlation_mm: correlation length of the displacement along the outline (> 0).
        rng: seed or Generator.

    Returns:
        ``(painted, perimeter_mm)``: bool ``(rows, cols)`` filled region and the length of
        the reference outline (boundary pixels times the mean pixel size).

    Raises:
        InputError: an empty region, bad spacing.
    """
    rng = np.random.default_rng(rng)
    region = np.asarray(reference_slice, dtype=bool)
    if region.ndim != 2 or not region.any():
        raise InputError("outline_fill needs a non-empty 2D region")
    sp = [float(s) for s in spacing_mm]
    if len(sp) != 2 or min(sp) <= 0:
        raise InputError(f"spacing_mm must be two positive numbers (row, col), got {spacing_mm}")
    inside = ndimage.distance_transform_edt(region, sampling=sp)
    outside = ndimage.distance_transform_edt(~region, sampling=sp)
    signed = np.where(region, -inside, outside) + 0.5 * float(np.mean(sp)) * np.where(region, 1, -1)
    # (half a pixel towards the boundary, so with no jitter the region itself is painted)
    if jitter_mm > 0:
        noise = rng.standard_normal(region.shape)
        sigma = [max(float(correlation_mm) / s, 0.5) for s in sp]
        noise = ndimage.gaussian_filter(noise, sigma, mode="wrap")
        sd = float(noise.std())
        noise = noise * (jitter_mm / sd) if sd > 0 else np.zeros_like(noise)
    else:
        noise = np.zeros(region.shape)
    painted = signed < noise
    boundary = region & ~ndimage.binary_erosion(region, border_value=0)
    return painted, float(boundary.sum()) * float(np.mean(sp))


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------
def _robot(value: Any, what: str) -> RobotConfig:
    if isinstance(value, RobotConfig):
        return value
    if isinstance(value, str):
        if value not in SKILLS:
            raise ConfigError(f"{what}: unknown skill {value!r}; presets are {list(SKILLS)} (or "
                              "pass a RobotConfig)")
        return RobotConfig.preset(value)
    raise ConfigError(f"{what} must be a skill name {list(SKILLS)} or a RobotConfig, got "
                      f"{type(value).__name__}")


def _readers(plan: StudyPlan, skills: Any) -> dict[str, RobotConfig]:
    """``{reader: RobotConfig}`` from one skill, a list aligned with the plan, or a mapping."""
    if isinstance(skills, (str, RobotConfig)):
        return {r: _robot(skills, f"skill of {r}") for r in plan.readers}
    if isinstance(skills, Mapping):
        unknown = sorted(set(skills) - set(plan.readers))
        missing = [r for r in plan.readers if r not in skills]
        if unknown or missing:
            raise ConfigError(f"skills must name every reader of the plan {list(plan.readers)}; "
                              f"missing {missing}, not in the plan {unknown}")
        return {r: _robot(skills[r], f"skill of {r}") for r in plan.readers}
    if isinstance(skills, Sequence):
        if len(skills) == 0:
            raise ConfigError("skills is empty; give one skill, one per reader, or a mapping")
        # a shorter list cycles (["expert", "novice"] for 3 readers: expert, novice, expert)
        return {r: _robot(skills[i % len(skills)], f"skill of {r}")
                for i, r in enumerate(plan.readers)}
    raise ConfigError(f"skills must be a skill name, a RobotConfig, a list or a mapping, got "
                      f"{type(skills).__name__}")


def _cases(plan: StudyPlan, cases: Any) -> dict[str, tuple[Volume, Volume]]:
    if isinstance(cases, Mapping):
        items = [(k, *v) for k, v in cases.items()]
    elif isinstance(cases, Sequence) and not isinstance(cases, str):
        items = list(cases)
    else:
        raise InputError(f"cases must be a list of (case_id, ct, reference) or a mapping "
                         f"{{case_id: (ct, reference)}}, got {type(cases).__name__}")
    out: dict[str, tuple[Volume, Volume]] = {}
    for item in items:
        if not isinstance(item, (tuple, list)) or len(item) != 3:
            raise InputError(f"each case must be (case_id, ct Volume, reference Volume), got "
                             f"{item!r:.80}")
        cid, ct, ref = item
        if not isinstance(ct, Volume) or not isinstance(ref, Volume):
            raise InputError(f"case {cid!r}: CT and reference must be Volumes")
        if ct.shape != ref.shape:
            raise InputError(f"case {cid!r}: reference shape {ref.shape} != CT shape {ct.shape}")
        if not np.any(ref.array):
            raise InputError(f"case {cid!r}: the reference mask is empty")
        out[str(cid)] = (ct, ref)
    missing = [c for c in plan.cases if c not in out]
    if missing:
        raise InputError(f"the plan's cases {missing} are not among the cases given "
                         f"({sorted(out)[:10]}); give every planned case")
    return out


def validate_simulation_parameters(readers: Any, cases: Any, skills: Any = "expert",
                                   rounds: Any = 3, seed: Any = 0, dsc_target: Any = 0.95,
                                   n_subsets: Any = 2, *, structure: str = "pancreas",
                                   reference: Any = "consensus",
                                   ) -> tuple[list[str], list[str]]:
    """Check the simulated reader study notebook's parameters (first cell after them).

    Args:
        readers: list of ids or a number (``reader1`` ...).
        cases: a data source (``"phantom:<n>"``, a folder, ``"btcv-synth:<folder>"``).
        skills: a preset name, or a list of them (cycled over the readers).
        rounds, seed, dsc_target, n_subsets: as :func:`simulate_study` / ``design_study``.
        structure: the structure segmented.
        reference: what the analysis scores against: ``"consensus"`` (of the readers' final
            masks, as in the paper) or ``"truth"`` (the cases' reference masks).

    Returns:
        ``(reader ids, case ids)``.

    Raises:
        ConfigError / InputError: the first problem found, with what to do.
    """
    from .design import validate_design_parameters

    if not isinstance(cases, str):
        raise ConfigError(f"cases must be a data source string such as 'phantom:4', got "
                          f"{cases!r}")
    reader_ids, case_ids = validate_design_parameters(readers, cases, n_subsets, seed=seed,
                                                      structure=structure)
    skill_list = [skills] if isinstance(skills, str) else skills
    if not isinstance(skill_list, (list, tuple)) or not skill_list:
        raise ConfigError(f"skills must be a preset name or a list of them from {list(SKILLS)}, "
                          f"got {skills!r}")
    for s in skill_list:
        _robot(s, "skills")
    _check_int(rounds, "rounds", 1)
    _check_target(dsc_target)
    if reference not in ("consensus", "truth"):
        raise ConfigError(f"reference must be 'consensus' or 'truth', got {reference!r}")
    return reader_ids, case_ids


def _check_int(v: Any, name: str, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {v!r}")
    return int(v)


def _check_target(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
        raise ConfigError(f"dsc_target must be a number in (0, 1], got {v!r}")
    return float(v)


def load_simulation_cases(source: str, structure: str = "pancreas", seed: int = 0, *,
                          shape_zyx: Sequence[int] | None = None,
                          spacing_mm: Sequence[float] | None = None) -> list[Case]:
    """``[(case_id, ct, reference)]`` of a data source (``"phantom:<n>"``, a folder, ...).

    The same cases (and ids) as the cross-validation and the study design use for that
    source: phantom ``i`` is ``make_phantom(seed + i)``.

    Args:
        source: the data source.
        structure: the structure whose reference is used.
        seed: seed of synthetic cases.
        shape_zyx, spacing_mm: phantom sources only: a smaller grid (e.g. for a quick run);
            None keeps :func:`~iunet_nb.synth.phantom.make_phantom`'s defaults.

    Raises:
        ConfigError / InputError: a bad source; a shape or spacing for a non-phantom source.
    """
    from .crossval import _case_loader, _parse_source, case_ids

    if shape_zyx is not None or spacing_mm is not None:
        if _parse_source(source)[0] != "phantom":
            raise ConfigError("shape_zyx / spacing_mm apply to 'phantom:<n>' sources only")
        from ..synth.phantom import make_phantom

        kw: dict[str, Any] = {}
        if shape_zyx is not None:
            kw["shape_zyx"] = tuple(int(v) for v in shape_zyx)
        if spacing_mm is not None:
            kw["spacing_mm"] = tuple(float(v) for v in spacing_mm)
        ids = case_ids(source, structure)
        return [(cid, *make_phantom(seed + i, **kw)) for i, cid in enumerate(ids)]
    ids, load, description = _case_loader(source, structure, "auto", None, seed)
    logger.info("simulation cases: %s", description)
    return [(cid, *load(cid)) for cid in ids]


# ----------------------------------------------------------------------------------------------
# one task
# ----------------------------------------------------------------------------------------------
class _Clock:
    """Think times per event ``seq`` of one session (what is added to the timeline)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.think: dict[int, float] = {}

    def act(self, think_s: float, action: Any, *args: Any, **kwargs: Any) -> Any:
        seq = len(self.session.events)
        result = action(*args, **kwargs)
        if len(self.session.events) > seq:
            self.think[seq] = self.think.get(seq, 0.0) + float(think_s)
        return result


def _dsc(session: Session, ref: np.ndarray) -> float:
    m = session.mask.array != 0
    denom = int(m.sum()) + int(ref.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.count_nonzero(m & ref)) / denom


def _interactive(session: Session, clock: _Clock, ref: np.ndarray, robot: RobotConfig,
                 rounds: int, target: float, undo_worse: bool, rng: np.random.Generator,
                 ) -> dict[str, Any]:
    spacing = session.volume.spacing_mm
    clock.act(0.0, session.predict)
    dsc = dsc0 = _dsc(session, ref)
    n_strokes = n_undo = done = 0
    for _ in range(rounds):
        if dsc >= target:
            break
        stroke = plan_stroke(session.mask.array, ref, spacing, robot, rng)
        if stroke is None:
            break
        clock.act(draw_think_s(robot, rng), stroke.apply_scribble, session)
        clock.act(0.0, session.refine)
        n_strokes += 1
        done += 1
        new = _dsc(session, ref)
        if undo_worse and new < dsc:
            clock.act(draw_think_s(robot, rng), session.undo)
            n_undo += 1
        else:
            dsc = new
    return {"dsc_initial": dsc0, "n_strokes": n_strokes, "n_undo": n_undo, "rounds": done}


def _manual(session: Session, clock: _Clock, ref: np.ndarray, robot: RobotConfig, rounds: int,
            target: float, rng: np.random.Generator) -> dict[str, Any]:
    spacing = session.volume.spacing_mm
    n_strokes = 0
    for k in np.flatnonzero(ref.any(axis=(1, 2))):
        painted, perimeter = outline_fill(ref[k], spacing[1:], robot.jitter_mm,
                                          0.25 * robot.stroke_length_mm, rng)
        strokes = max(1, math.ceil(perimeter / robot.stroke_length_mm))
        think = sum(draw_think_s(robot, rng) for _ in range(strokes))
        rows, cols = np.nonzero(painted)
        if rows.size == 0:  # the hand missed a tiny slice altogether: nothing painted
            continue
        points = np.stack([np.full(rows.size, k), rows, cols], axis=1)
        clock.act(think, session.paint, 1, points=points)
        n_strokes += strokes
    dsc = dsc0 = _dsc(session, ref)
    done = 0
    for _ in range(rounds):
        if dsc >= target:
            break
        stroke = plan_stroke(session.mask.array, ref, spacing, robot, rng)
        if stroke is None:
            break
        clock.act(draw_think_s(robot, rng), stroke.apply_paint, session)
        n_strokes += 1
        done += 1
        dsc = _dsc(session, ref)
    return {"dsc_initial": dsc0, "n_strokes": n_strokes, "n_undo": 0, "rounds": done}


def _retime(path: Path, think_by_seq: Mapping[int, float], start: datetime.datetime,
            method: str) -> tuple[float, float, float, float]:
    """Rewrite ``events.jsonl`` onto the simulated timeline (see the module docstring).

    Returns:
        ``(span_s, time_s, think_s, compute_s)``: the whole session's simulated length, the
        paper's time (start event to the last save), total think and total compute time.
    """
    from .analysis import END_EVENTS, START_EVENTS

    events = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
              if line.strip()]
    t = 0.0
    lines = []
    start_t = end_t = None
    total_think = total_compute = 0.0
    for i, e in enumerate(events):
        think = float(think_by_seq.get(int(e["seq"]), 0.0))
        duration = float(e.get("duration_s") or 0.0)
        t = (t + think if i else 0.0) + duration
        total_think += think
        total_compute += duration
        details = e.get("details") if isinstance(e.get("details"), dict) else {}
        details["simulated"] = {"think_s": round(think, 6),
                                "t_monotonic_measured": e["t_monotonic"],
                                "t_wall_measured": e["t_wall"]}
        e["details"] = details
        e["t_monotonic"] = round(t, 6)
        e["t_wall"] = (start + datetime.timedelta(seconds=t)).isoformat(timespec="milliseconds")
        if start_t is None and e["event"] in START_EVENTS[method]:
            start_t = t - (duration if method == "manual" else 0.0)
        if e["event"] in END_EVENTS:
            end_t = t
        lines.append(json.dumps(e, sort_keys=True))
    atomic_write_text(path, "\n".join(lines) + "\n")
    time_s = (end_t - start_t) if start_t is not None and end_t is not None else math.nan
    return t, time_s, total_think, total_compute


def _simulate_task(task: StudyTask, ct: Volume, ref_volume: Volume, root: Path,
                   model: SegmentationNet, card: ModelCard, robot: RobotConfig,
                   refine_config: RefineConfig, rounds: int, target: float, undo_worse: bool,
                   rng: np.random.Generator, start: datetime.datetime) -> dict[str, Any]:
    import time

    t0 = time.perf_counter()
    ref = ref_volume.array != 0
    folder = root / task.folder
    with Session(ct, model, card, Box.from_mask(ref), config=refine_config, folder=folder,
                 case_id=task.case_id, reader_id=task.reader_id,
                 reference=ref_volume) as session:
        clock = _Clock(session)
        if task.method == "interactive":
            info = _interactive(session, clock, ref, robot, rounds, target, undo_worse, rng)
        else:
            info = _manual(session, clock, ref, robot, rounds, target, rng)
        clock.act(draw_think_s(robot, rng), session.save)  # the final review, then save
        dsc_final = _dsc(session, ref)
    span, time_s, think, compute = _retime(folder / "events.jsonl", clock.think, start,
                                           task.method)
    return {"reader_id": task.reader_id, "position": task.position, "case_id": task.case_id,
            "method": task.method, "skill": robot.skill, "folder": task.folder, **info,
            "think_s": think, "compute_s": compute, "time_s": time_s, "span_s": span,
            "dsc_final": dsc_final, "wall_s": time.perf_counter() - t0}


# ----------------------------------------------------------------------------------------------
# the study
# ----------------------------------------------------------------------------------------------
def simulate_study(plan: StudyPlan, cases: Sequence[Case] | Mapping[str, tuple[Volume, Volume]],
                   out_dir: str | os.PathLike, *, model: SegmentationNet, card: ModelCard,
                   skills: str | RobotConfig | Sequence[str | RobotConfig]
                   | Mapping[str, str | RobotConfig] = "expert",
                   rounds: int = 3, dsc_target: float = 0.95, undo_worse: bool = True,
                   refine_config: RefineConfig | None = None, seed: int = 0,
                   progress: bool = True) -> SimulationResult:
    """Play the plan with simulated readers; write a study folder ``analyse_study`` reads.

    Args:
        plan: the study plan (:func:`iunet_nb.studies.study.design_study`).
        cases: ``[(case_id, ct, reference)]`` or ``{case_id: (ct, reference)}``; every
            planned case must be there (CT in HU, reference uint8 on the CT's grid).
        out_dir: the study folder; written: ``plan.json``, one session folder per task
            (``<reader>/<method>/<case>``), ``simulation.json`` and ``simulation_tasks.csv``.
            It must not hold sessions already.
        model, card: the network the interactive arm refines (e.g.
            :func:`iunet_nb.model.checkpoint.load_bundled_model`).
        skills: the readers' robots: one preset name or :class:`RobotConfig` for all, a list
            (cycled over ``plan.readers``) or a mapping ``{reader_id: skill}``.
        rounds: most correction rounds per task (interactive: scribble + refine; manual:
            correction strokes after the outline pass), >= 1.
        dsc_target: a reader stops correcting once DSC against the reference reaches it.
        undo_worse: interactive readers undo a refinement that lowered the DSC.
        refine_config: the sessions' :class:`RefineConfig` (default ``RefineConfig()``).
        seed: base seed (see the module docstring).
        progress: a tqdm bar over the tasks.

    Returns:
        A :class:`SimulationResult`.

    Raises:
        ConfigError: bad skills, rounds, target or seed.
        InputError: missing cases, a folder that already holds sessions.
    """
    from tqdm.auto import tqdm

    if not isinstance(plan, StudyPlan):
        raise ConfigError(f"plan must be a StudyPlan (design_study), got {type(plan).__name__}")
    rounds = _check_int(rounds, "rounds", 1)
    target = _check_target(dsc_target)
    seed = _check_int(seed, "seed", 0)
    refine_config = RefineConfig() if refine_config is None else refine_config
    if not isinstance(refine_config, RefineConfig):
        raise ConfigError(f"refine_config must be a RefineConfig, got "
                          f"{type(refine_config).__name__}")
    robots = _readers(plan, skills)
    data = _cases(plan, cases)
    root = Path(out_dir)
    taken = [t.folder for t in plan.tasks if (root / t.folder / "state.json").exists()
             or (root / t.folder / "events.jsonl").exists()]
    if taken:
        raise InputError(f"{root} already holds sessions (e.g. {taken[0]}); simulate into an "
                         "empty folder or delete the old study first")
    root.mkdir(parents=True, exist_ok=True)
    plan.to_json(root / "plan.json")
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    reader_index = {r: i for i, r in enumerate(plan.readers)}
    case_index = {c: i for i, c in enumerate(plan.cases)}
    ordered = [t for r in plan.readers for t in plan.tasks_for(r)]
    rows = []
    elapsed = dict.fromkeys(plan.readers, 0.0)  # each reader's simulated day so far
    for task in tqdm(ordered, desc="Simulated readers", unit="task", disable=not progress):
        robot = robots[task.reader_id]
        rng = np.random.default_rng([seed, robot.seed, reader_index[task.reader_id],
                                     case_index[task.case_id]])
        ct, ref = data[task.case_id]
        start = now + datetime.timedelta(seconds=elapsed[task.reader_id])
        row = _simulate_task(task, ct, ref, root, model, card, robot, refine_config, rounds,
                             target, undo_worse, rng, start)
        elapsed[task.reader_id] += row["span_s"]
        rows.append(row)
        logger.info("%s %s %s (%s): DSC %.3f -> %.3f, %d strokes, simulated %.0f s", task.reader_id,
                    task.method, task.case_id, robot.skill, row["dsc_initial"], row["dsc_final"],
                    row["n_strokes"], row["time_s"])
    tasks = pd.DataFrame(rows)
    atomic_write_text(root / "simulation_tasks.csv", tasks.to_csv(index=False))
    atomic_write_text(root / "simulation.json", json.dumps({
        "seed": seed, "rounds": rounds, "dsc_target": target, "undo_worse": undo_worse,
        "refine_config": refine_config.to_dict(), "model": card.to_dict(),
        "readers": {r: c.to_dict() for r, c in robots.items()},
        "box": "reference bounding box",
        "timeline": "simulated (think time + measured action time); see iunet_nb.studies.simstudy",
    }, indent=2, default=str) + "\n")
    return SimulationResult(study_dir=root, tasks=tasks, plan=plan, readers=robots)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def _cmd_simulate(args: argparse.Namespace) -> int:
    from ..model.checkpoint import load_bundled_model, load_model
    from .analysis import analyse_study
    from .design import design_study
    from .report import write_study_report

    if args.plan:
        plan = StudyPlan.from_json(args.plan)
    else:
        if not args.readers:
            raise ConfigError("give --readers (or --plan)")
        readers = ([f"reader{i + 1}" for i in range(int(args.readers[0]))]
                   if len(args.readers) == 1 and args.readers[0].isdigit() else args.readers)
        for r in readers:
            validate_id(r, "reader id")
        from .crossval import case_ids

        plan = design_study(readers, case_ids(args.data, args.structure), args.subsets,
                            seed=args.seed)
    cases = load_simulation_cases(args.data, args.structure, args.data_seed)
    model, card = load_model(args.model) if args.model else load_bundled_model()
    refine = RefineConfig.from_json(args.refine_config) if args.refine_config else RefineConfig()
    if args.device:
        refine = dataclasses.replace(refine, device=args.device)
    sim = simulate_study(plan, cases, args.out, model=model, card=card, skills=args.skills,
                         rounds=args.rounds, dsc_target=args.dsc_target, refine_config=refine,
                         seed=args.seed)
    cols = ["reader_id", "case_id", "method", "skill", "n_strokes", "time_s", "dsc_initial",
            "dsc_final"]
    print(sim.tasks[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if not args.no_report:
        files = write_study_report(analyse_study(args.out), Path(args.out) / "report")
        print(f"study report written to {files['markdown']}")
    return 0


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``iunet-nb simulate-study`` on an argparse subparsers object; returns its parser.

    ``iunet-nb simulate-study --readers 3 --data phantom:4 --out runs/simstudy`` designs the
    plan (or follows ``--plan``), simulates every task, and writes the study report to
    ``OUT/report`` (``--no-report`` skips it; ``iunet-nb study analyse OUT`` does it later).
    """
    p = subparsers.add_parser("simulate-study",
                              help="Experiment 2 headless: simulated readers follow a study plan")
    p.add_argument("--out", required=True, help="study folder (must hold no sessions yet)")
    p.add_argument("--data", default="phantom:4",
                   help="cases: 'phantom:<n>', a data folder or 'btcv-synth:<folder>'")
    p.add_argument("--structure", default="pancreas")
    p.add_argument("--data-seed", type=int, default=0, help="seed of synthetic cases")
    p.add_argument("--plan", default=None, help="follow this plan.json (else one is designed)")
    p.add_argument("--readers", nargs="+", default=["3"],
                   help="reader ids, or a number of readers (default 3)")
    p.add_argument("--subsets", type=int, default=2)
    p.add_argument("--skills", nargs="+", default=["expert"], choices=sorted(SKILLS),
                   help="robot presets, cycled over the readers (default expert)")
    p.add_argument("--rounds", type=int, default=3, help="correction rounds per task")
    p.add_argument("--dsc-target", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0, help="design and simulation seed")
    p.add_argument("--model", default=None, help="model.pt with its model.json (default bundled)")
    p.add_argument("--refine-config", default=None, help="RefineConfig JSON file")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the config's)")
    p.add_argument("--no-report", action="store_true", help="do not analyse afterwards")
    p.set_defaults(func=_cmd_simulate)
    return p
