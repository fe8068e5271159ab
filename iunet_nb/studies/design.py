"""Experiment 2, the reader study: its design (who segments which case, with which method,
in which order) and the plan file the annotator follows.

**Design** (Boers et al. 2020, section 2.9): readers x cases, the cases split at random into
subsets; every reader segments every case once, each subset with one method, and "the
subsets and the segmentation method alternate per reader" to balance the learning effect.
:func:`design_study` makes that plan for any numbers of readers, cases and subsets: reader
``r`` visits the subsets starting at subset ``(r // M) % S`` and uses the methods starting
at method ``r % M`` (``S`` subsets, ``M`` methods, both cycling). The paper's 3 readers, 10
cases in 2 subsets (A, B) of 5 give::

    reader 0: A manual,      B interactive
    reader 1: A interactive, B manual
    reader 2: B manual,      A interactive

so every subset is done with both methods, and the first method alternates per reader (a
fourth reader would do B interactive, then A manual, completing the balance).

The plan is a JSON file (:meth:`StudyPlan.to_json`, written atomically) that the annotator's
reader mode follows: :meth:`StudyPlan.tasks_for` gives a reader's tasks in order, and each
task's ``folder`` (``<reader>/<method>/<case>``, relative to the study folder) is where that
session's autosave folder and ``events.jsonl`` go. Reader and case ids become folder names,
so they are restricted to letters, digits, ``.``, ``_`` and ``-``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError, InputError
from ..io._atomic import atomic_write_text

__all__ = [
    "METHODS",
    "StudyPlan",
    "StudyTask",
    "design_study",
    "validate_design_parameters",
    "validate_id",
]

logger = logging.getLogger(__name__)

#: Methods a study can compare.
METHODS: tuple[str, ...] = ("manual", "interactive")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PLAN_VERSION = 1


def validate_id(value: Any, what: str = "id") -> str:
    """Check a reader or case id that will become a folder name; return it.

    Raises:
        ConfigError: not a string, empty, a path separator, ``..``, or another character
            than letters, digits, ``.``, ``_``, ``-`` (or not starting with a letter/digit).
    """
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a non-empty string, got {value!r}")
    if "/" in value or "\\" in value or ".." in value:
        raise ConfigError(f"{what} {value!r} contains a path separator or '..'; ids become "
                          "folder names, use letters, digits, '.', '_' and '-' only")
    if not _ID.match(value):
        raise ConfigError(f"{what} {value!r} is not a valid id: use letters, digits, '.', '_' and "
                          "'-' only, starting with a letter or digit (it becomes a folder name)")
    return value


@dataclass(frozen=True)
class StudyTask:
    """One reader segmenting one case with one method.

    Attributes:
        reader_id: the reader.
        position: 0-based place in the reader's sequence of tasks.
        case_id: the case.
        method: ``"manual"`` or ``"interactive"``.
        subset: index of the case's subset.
        block: 0-based index of the subset visit in the reader's sequence (tasks of one block
            share subset and method).
    """

    reader_id: str
    position: int
    case_id: str
    method: str
    subset: int
    block: int

    @property
    def folder(self) -> str:
        """Session folder relative to the study folder: ``<reader>/<method>/<case>``."""
        return f"{self.reader_id}/{self.method}/{self.case_id}"

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "folder": self.folder}


@dataclass(frozen=True)
class StudyPlan:
    """A reader-study plan: who segments which case with which method, in which order.

    Attributes:
        readers: reader ids, in design order.
        cases: case ids (sorted).
        methods: the methods compared.
        subsets: the case subsets (each sorted).
        seed: seed of the split into subsets.
        tasks: every task, by reader then position.
        version: format version.
    """

    readers: tuple[str, ...]
    cases: tuple[str, ...]
    methods: tuple[str, ...]
    subsets: tuple[tuple[str, ...], ...]
    seed: int
    tasks: tuple[StudyTask, ...]
    version: int = _PLAN_VERSION

    def tasks_for(self, reader_id: str) -> list[StudyTask]:
        """The reader's tasks in the order they are to be done.

        Raises:
            InputError: the reader is not in the plan.
        """
        if reader_id not in self.readers:
            close = difflib.get_close_matches(str(reader_id), list(self.readers), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(f"reader {reader_id!r} is not in the study plan{hint}; readers are "
                             f"{list(self.readers)}")
        return sorted((t for t in self.tasks if t.reader_id == reader_id),
                      key=lambda t: t.position)

    def method_of(self, reader_id: str, case_id: str) -> str | None:
        """The method the plan gives ``reader_id`` for ``case_id`` (None if not planned)."""
        for t in self.tasks:
            if t.reader_id == reader_id and t.case_id == case_id:
                return t.method
        return None

    def table(self) -> pd.DataFrame:
        """One row per task (reader, position, case, method, subset, block, folder)."""
        return pd.DataFrame([t.to_dict() for t in self.tasks])

    def overview(self) -> pd.DataFrame:
        """Reader x block table of ``"<subset letter> <method>"``, e.g. ``"A manual"``."""
        rows = {}
        for r in self.readers:
            blocks = {}
            for t in self.tasks_for(r):
                blocks[f"block {t.block + 1}"] = f"{_subset_name(t.subset)} {t.method}"
            rows[r] = blocks
        return pd.DataFrame.from_dict(rows, orient="index")

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "readers": list(self.readers), "cases": list(self.cases),
                "methods": list(self.methods), "subsets": [list(s) for s in self.subsets],
                "seed": self.seed, "tasks": [t.to_dict() for t in self.tasks]}

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The plan as JSON; written atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudyPlan:
        """Rebuild a plan, checking it (ids, methods, every reader x case planned once).

        Raises:
            ConfigError: not a plan, a newer version, or an inconsistent plan.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a study plan is a JSON object, got {type(data).__name__}")
        missing = [k for k in ("readers", "cases", "methods", "subsets", "seed", "tasks")
                   if k not in data]
        if missing:
            raise ConfigError(f"not a study plan: missing {missing}")
        if data.get("version", _PLAN_VERSION) != _PLAN_VERSION:
            raise ConfigError(f"study plan version {data.get('version')} is not supported (this "
                              f"iunet_nb reads version {_PLAN_VERSION})")
        try:
            tasks = tuple(StudyTask(str(t["reader_id"]), int(t["position"]), str(t["case_id"]),
                                    str(t["method"]), int(t["subset"]), int(t["block"]))
                          for t in data["tasks"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"study plan: a task lacks a field or has a bad value ({exc})") \
                from exc
        plan = cls(readers=tuple(data["readers"]), cases=tuple(data["cases"]),
                   methods=tuple(data["methods"]),
                   subsets=tuple(tuple(s) for s in data["subsets"]), seed=int(data["seed"]),
                   tasks=tasks)
        _check_plan(plan)
        return plan

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike) -> StudyPlan:
        """Read a plan from a JSON string or a file.

        Raises:
            InputError: the file does not exist.
            ConfigError: not valid JSON or not a valid plan.
        """
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            path = Path(text_or_path)
            if not path.is_file():
                raise InputError(f"study plan {path} does not exist; make one with design_study "
                                 "or `iunet-nb study design`")
            text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"study plan is not valid JSON ({exc})") from exc
        return cls.from_dict(data)


def _subset_name(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else f"S{i + 1}"


def _check_plan(plan: StudyPlan) -> None:
    for r in plan.readers:
        validate_id(r, "reader id")
    for c in plan.cases:
        validate_id(c, "case id")
    for m in plan.methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r}; a study compares {list(METHODS)}")
    seen = set()
    for t in plan.tasks:
        if t.reader_id not in plan.readers or t.case_id not in plan.cases \
                or t.method not in plan.methods:
            raise ConfigError(f"study plan: task {t} names a reader, case or method that is not "
                              "in the plan")
        if (t.reader_id, t.case_id) in seen:
            raise ConfigError(f"study plan: reader {t.reader_id} has case {t.case_id} twice")
        seen.add((t.reader_id, t.case_id))
    if len(seen) != len(plan.readers) * len(plan.cases):
        raise ConfigError("study plan: not every reader has every case once")


def design_study(readers: Sequence[str], cases: Sequence[str], n_subsets: int = 2,
                 methods: Sequence[str] = ("manual", "interactive"), seed: int = 0
                 ) -> StudyPlan:
    """The paper's crossover design for any numbers of readers, cases and subsets.

    The cases are shuffled with ``np.random.default_rng(seed)`` and cut into ``n_subsets``
    subsets whose sizes differ by at most one (each sorted). Reader ``r`` (in the given
    order) visits the subsets starting at ``(r // M) % S`` and the methods starting at
    ``r % M`` (``S = n_subsets``, ``M = len(methods)``); the cases of a subset are done in
    sorted order. See the module docstring for the paper's 3 x 10 plan.

    Args:
        readers: reader ids (become folder names).
        cases: case ids (become folder names).
        n_subsets: number of subsets, a multiple of ``len(methods)`` so that every reader
            uses every method equally often.
        methods: methods to compare, from :data:`METHODS`.
        seed: seed of the split.

    Returns:
        The :class:`StudyPlan`.

    Raises:
        ConfigError: bad or duplicate ids, unknown methods, ``n_subsets`` not a multiple of
            the number of methods or larger than the number of cases.

    Example:
        >>> plan = design_study(["r1", "r2", "r3"], [f"c{i:02d}" for i in range(10)])
        >>> [(t.case_id in plan.subsets[0], t.method) for t in plan.tasks_for("r1")][::5]
        [(True, 'manual'), (False, 'interactive')]
    """
    if isinstance(readers, str) or isinstance(cases, str):
        raise ConfigError("readers and cases must be lists of ids, not a single string")
    readers = [validate_id(r, "reader id") for r in readers]
    cases = [validate_id(c, "case id") for c in cases]
    for what, ids in (("reader", readers), ("case", cases)):
        if not ids:
            raise ConfigError(f"a study needs at least one {what}")
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ConfigError(f"{what} ids must be unique, these repeat: {dupes}")
    if isinstance(methods, str):
        methods = [methods]
    methods = list(methods)
    if not methods or len(set(methods)) != len(methods):
        raise ConfigError(f"methods must be distinct names from {list(METHODS)}, got {methods}")
    for m in methods:
        if m not in METHODS:
            close = difflib.get_close_matches(str(m), list(METHODS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown method {m!r}{hint}; choose from {list(METHODS)}")
    if isinstance(n_subsets, bool) or not isinstance(n_subsets, (int, np.integer)) \
            or n_subsets < 1:
        raise ConfigError(f"n_subsets must be a positive integer, got {n_subsets!r}")
    if n_subsets % len(methods):
        raise ConfigError(f"n_subsets ({n_subsets}) must be a multiple of the number of methods "
                          f"({len(methods)}) so that each reader uses each method equally often")
    if n_subsets > len(cases):
        raise ConfigError(f"n_subsets ({n_subsets}) is larger than the number of cases "
                          f"({len(cases)}); every subset needs at least one case")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    ordered = sorted(cases)
    perm = np.random.default_rng(int(seed)).permutation(len(ordered))
    subsets = tuple(tuple(sorted(ordered[i] for i in part))
                    for part in np.array_split(perm, int(n_subsets)))
    n_s, n_m = int(n_subsets), len(methods)
    tasks = []
    for r, reader in enumerate(readers):
        s0, m0 = (r // n_m) % n_s, r % n_m
        position = 0
        for block in range(n_s):
            s, method = (block + s0) % n_s, methods[(block + m0) % n_m]
            for case in subsets[s]:
                tasks.append(StudyTask(reader, position, case, method, s, block))
                position += 1
    plan = StudyPlan(readers=tuple(readers), cases=tuple(ordered), methods=tuple(methods),
                     subsets=subsets, seed=int(seed), tasks=tuple(tasks))
    _check_plan(plan)
    logger.info("study plan: %d readers x %d cases, %d subsets of sizes %s, seed %d",
                len(readers), len(cases), n_s, [len(s) for s in subsets], seed)
    return plan


def validate_design_parameters(readers: Any, cases: Any, n_subsets: Any = 2,
                               methods: Any = ("manual", "interactive"), seed: Any = 0, *,
                               structure: str = "pancreas") -> tuple[list[str], list[str]]:
    """Check the design notebook's parameters; stop with a clear message on the first problem.

    Args:
        readers: list of reader ids, or an integer n (readers ``reader1`` .. ``reader<n>``).
        cases: list of case ids, or a data source string (``"phantom:10"``, a data folder,
            ``"btcv-synth:<folder>"``) whose case ids are used.
        n_subsets, methods, seed: as :func:`design_study`.
        structure: structure used to list the cases of a data source.

    Returns:
        ``(readers, cases)`` as lists of ids.

    Raises:
        ConfigError / InputError: as :func:`design_study`, plus a missing data folder.
    """
    from .crossval import case_ids

    if isinstance(readers, (int, np.integer)) and not isinstance(readers, bool):
        if readers < 1:
            raise ConfigError(f"readers must be a positive number or a list of ids, got {readers}")
        readers = [f"reader{i + 1}" for i in range(int(readers))]
    if isinstance(readers, str) or not isinstance(readers, (list, tuple)):
        raise ConfigError(f"readers must be a list of ids (e.g. ['r1', 'r2', 'r3']) or a number, "
                          f"got {readers!r}")
    if isinstance(cases, str):
        cases = case_ids(cases, structure)
    if not isinstance(cases, (list, tuple)):
        raise ConfigError(f"cases must be a list of ids or a data source string, got {cases!r}")
    design_study(list(readers), list(cases), n_subsets, methods, seed)  # all the checks
    return list(readers), list(cases)
