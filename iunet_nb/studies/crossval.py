"""Experiment 1: k-fold cross-validation of iUnet, Cicek's 3D U-Net, the dilated FCN and the
seed papers' systems (Zhou, Roth, Kloenne).

The paper's protocol (Boers et al. 2020, section 2.8): the cases are split at random into
``k`` equally sized folds; each architecture is trained on ``k - 1`` folds and segments the
held-out fold *inside the reference bounding box* (the box comes from the reference mask, as
in training); DSC per case; mean +- sd per method; Wilcoxon signed-rank tests paired by case.

The seed papers' systems (``CVConfig.systems``, :mod:`iunet_nb.systems.cv`) are trained on the
same training cases of the same folds and tested on the same test cases with the same metrics,
but they are **fully automatic**: they get no box. Every row says so in its ``box`` column
(``"reference"`` for the architectures, ``"none"`` for the systems), and the tables carry it,
because it makes the comparison unequal in the architectures' favour.

Scaling out: every fold is an independent job. :func:`run_fold` trains and evaluates one
fold and writes ``fold_<i>.csv``; any scheduler can run the ``k`` jobs on ``k`` machines
(``iunet-nb cv --fold i --out DIR`` or ``papermill cross_validation.ipynb -p fold i``), and
:func:`merge_folds` / :func:`~iunet_nb.studies.cv_report.write_cv_report` combine what they
wrote. :func:`run_cv` does all of it in one process. Jobs sharing ``out_dir`` must share the config: each writes
``cv_config.json`` and refuses to run if the one already there differs.

Output folder::

    cv_config.json           the CVConfig (identical for every fold job)
    folds.json               the seeded split (datasets.save_folds); test_folds.json too
                             when the test cases come from another source
    fold_<i>.csv             per-case metrics of every architecture on fold i
    fold_<i>/<arch>/         model.pt + model.json (card), loss.jsonl, train_config.json
    fold_<i>/<system>/       the system's model(s) + cards (Kloenne: one folder per member)
    results.csv              all folds (merge_folds)
    dsc_per_case.csv         case x method DSC table
    summary.csv              per method: n, mean, sd, median, min, max (DSC)
    table1.csv, table1.md    shaped like the paper's Table 1, p-values vs the baseline
    comparison.csv, .md      per method: box, structure, n, DSC mean +- sd, median, training
                             compute and seconds per fold, the paper's own number
    wilcoxon.csv             every pair of methods
    results.json             all of the above in one file
    dsc_plot.png             box + violin plot of DSC per method

Real-data variant: with ``CVConfig.test_data`` the networks are trained on ``data`` (e.g.
synthetic CT made from BTCV label maps) and tested on a *different* source (e.g. the real
3D-IRCADb livers). Both sources are split into ``k`` folds with the same seed; fold ``i``
trains on the training part of the training source's split and tests on test fold ``i`` of
the test source, so every real case is tested exactly once, by models that saw
``(k - 1) / k`` of the training source and no real case at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._config import JsonConfig
from ..errors import ConfigError, InputError
from ..io._atomic import atomic_path
from ..io.volume import Volume
from ..model.nets import ARCHITECTURES
from ..model.train import TrainConfig
from ..systems.cv import (
    SCALES,
    SYSTEMS,
    check_system,
    compute_description,
    system_config,
)
from .cv_report import CVTables, _markdown_table, cv_tables, write_cv_report

__all__ = [
    "CVConfig",
    "add_cli",
    "case_ids",
    "merge_folds",
    "run_cv",
    "run_fold",
    "select_folds",
    "validate_cv_parameters",
    "validate_train_parameters",
]

logger = logging.getLogger(__name__)

_SOURCE_KINDS = "a data folder, 'btcv-synth:<folder of BTCV label maps>' or 'phantom:<n>'"


# ----------------------------------------------------------------------------------------------
# config and parameter validation
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CVConfig(JsonConfig):
    """One cross-validation experiment (saved as ``cv_config.json`` in its folder).

    Args:
        version: schema version; only 1 exists.
        data: training (and, without ``test_data``, testing) source: a data folder in a
            layout :func:`iunet_nb.io.datasets.find_cases` reads, ``"btcv-synth:<folder>"``
            (synthetic CT from BTCV label maps) or ``"phantom:<n>"``.
        test_data: optional separate test source (same kinds); None: test on held-out folds
            of ``data``.
        structure: target structure (name or label value), e.g. ``"pancreas"``.
        layout: layout of folder sources (``"auto"`` detects it).
        limit: use at most this many cases of each source (None: all).
        k: number of folds (paper: 5).
        seed: seed of the split(s) and of the synthetic CT (case ``i`` gets ``seed + i``).
        architectures: networks to compare (any of ``nets.ARCHITECTURES``), tested inside
            the reference box; may be empty when ``systems`` is not.
        baseline: the method the other methods are tested against in Table 1 (paper: iUnet);
            one of ``architectures`` or ``systems``.
        train: training template; ``train.net.arch`` is replaced by each architecture, the
            rest (iterations, batch, lr, base_channels, working size, seed) is shared.
        device: ``"cpu"``, ``"cuda"`` or None (CUDA when available).
        tolerance_mm: surface-Dice tolerance of :func:`iunet_nb.model.evaluate.evaluate_case`.
        systems: the seed papers' systems to train and test on the same folds (any of
            :data:`iunet_nb.systems.cv.SYSTEMS`: ``"zhou"``, ``"roth"``, ``"kloenne"``); fully
            automatic, no box. A system that does not cover ``structure`` (Roth: only its
            organs) or cannot learn from ``data`` (Roth: ``btcv-synth:`` only) is refused.
        system_scale: ``"reduced"`` (each system's documented CPU scale) or ``"full"`` (the
            papers' settings, for GPUs).
        system_overrides: optional ``{system: {field: value}}`` changes to the systems'
            configs (see :func:`iunet_nb.systems.cv.system_config`), e.g.
            ``{"zhou": {"coarse_iterations": 400}}``. The systems' seed is ``train.seed``.

    Raises:
        ConfigError: a value of the wrong type or out of range.
    """

    version: int = 1
    data: str = "phantom:10"
    test_data: str | None = None
    structure: str = "pancreas"
    layout: str = "auto"
    limit: int | None = None
    k: int = 5
    seed: int = 0
    architectures: tuple[str, ...] = ("iunet", "cicek", "dilated_fcn")
    baseline: str = "iunet"
    train: TrainConfig = TrainConfig()
    device: str | None = None
    tolerance_mm: float = 2.0
    systems: tuple[str, ...] = ()
    system_scale: str = "reduced"
    system_overrides: dict[str, dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.version != 1:
            raise ConfigError(f"CVConfig.version {self.version} is not supported (this iunet_nb "
                              "reads version 1)")
        for name in ("data", "structure", "layout"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"CVConfig.{name} must be a non-empty string, got "
                                  f"{getattr(self, name)!r}")
        if self.test_data is not None and (not isinstance(self.test_data, str)
                                           or not self.test_data):
            raise ConfigError(f"CVConfig.test_data must be None or a source string "
                              f"({_SOURCE_KINDS}), got {self.test_data!r}")
        if not _is_int(self.k) or self.k < 2:
            raise ConfigError(f"CVConfig.k must be an integer >= 2 (number of folds), got "
                              f"{self.k!r}")
        if not _is_int(self.seed):
            raise ConfigError(f"CVConfig.seed must be an integer, got {self.seed!r}")
        if self.limit is not None and (not _is_int(self.limit) or self.limit < 2):
            raise ConfigError(f"CVConfig.limit must be None or an integer >= 2, got "
                              f"{self.limit!r}")
        archs, systems = self.architectures, self.systems
        if not isinstance(systems, tuple):
            raise ConfigError(f"CVConfig.systems must be a tuple of names from {list(SYSTEMS)}, "
                              f"got {systems!r}")
        if not isinstance(archs, tuple) or not (archs or systems):
            raise ConfigError(f"CVConfig.architectures must be a non-empty tuple of names from "
                              f"{list(ARCHITECTURES)} (or empty with systems from "
                              f"{list(SYSTEMS)}), got {archs!r}")
        for arch in archs:
            if arch not in ARCHITECTURES:
                hint = (f"; {arch!r} is a system: list it in systems" if arch in SYSTEMS
                        else _did_you_mean(arch, ARCHITECTURES))
                raise ConfigError(f"unknown architecture {arch!r}{hint}; choose from "
                                  f"{list(ARCHITECTURES)}")
        if len(set(archs)) != len(archs):
            raise ConfigError(f"CVConfig.architectures lists a name twice: {list(archs)}")
        for system in systems:
            if system in ARCHITECTURES:
                raise ConfigError(f"{system!r} is an architecture, not a system: list it in "
                                  f"architectures; systems are {list(SYSTEMS)}")
            check_system(system, self.structure, self.data)
        if len(set(systems)) != len(systems):
            raise ConfigError(f"CVConfig.systems lists a name twice: {list(systems)}")
        if self.baseline not in archs + systems:
            raise ConfigError(f"CVConfig.baseline {self.baseline!r} is not among the "
                              f"methods {list(archs + systems)}")
        if self.system_scale not in SCALES:
            raise ConfigError(f"CVConfig.system_scale must be one of {list(SCALES)}, got "
                              f"{self.system_scale!r}")
        overrides = self.system_overrides
        if overrides is not None:
            if not isinstance(overrides, dict):
                raise ConfigError(f"CVConfig.system_overrides must be None or an object "
                                  f"{{system: {{field: value}}}}, got {overrides!r}")
            try:  # JSON-native (lists, not tuples), so that a saved config compares equal
                object.__setattr__(self, "system_overrides", json.loads(json.dumps(overrides)))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"CVConfig.system_overrides must hold JSON values only: "
                                  f"{exc}") from exc
            for system, fields in self.system_overrides.items():
                if not isinstance(fields, dict):
                    raise ConfigError(f"CVConfig.system_overrides[{system!r}] must be an object "
                                      f"of config fields, got {fields!r}")
                if system not in systems:
                    raise ConfigError(f"CVConfig.system_overrides names {system!r}, which is "
                                      f"not among the systems {list(systems)}"
                                      f"{_did_you_mean(system, SYSTEMS)}")
        for system in systems:  # builds each config once: a bad field stops here
            self.system_config(system)
        if not isinstance(self.train, TrainConfig):
            raise ConfigError(f"CVConfig.train must be a TrainConfig, got "
                              f"{type(self.train).__name__}")
        if self.device not in (None, "auto", "cpu", "cuda") and not str(self.device).startswith(
                "cuda:"):
            raise ConfigError(f"CVConfig.device must be None, 'auto', 'cpu' or 'cuda[:n]', got "
                              f"{self.device!r}")
        if not isinstance(self.tolerance_mm, (int, float)) or not self.tolerance_mm >= 0:
            raise ConfigError(f"CVConfig.tolerance_mm must be a number >= 0, got "
                              f"{self.tolerance_mm!r}")

    def train_config(self, arch: str) -> TrainConfig:
        """The training config of one architecture (the template with ``net.arch`` set)."""
        net = dataclasses.replace(self.train.net, arch=arch)
        return dataclasses.replace(self.train, net=net, structure=str(self.structure))

    def system_config(self, system: str) -> Any:
        """The config a system is trained with (:func:`iunet_nb.systems.cv.system_config`)."""
        return system_config(system, self.system_scale,
                             (self.system_overrides or {}).get(system), int(self.train.seed))

    @property
    def methods(self) -> tuple[str, ...]:
        """Every method of the experiment: the architectures, then the systems."""
        return tuple(self.architectures) + tuple(self.systems)

    def compute(self, method: str) -> str:
        """Training compute of one method in words (steps, batch), for the tables."""
        if method in self.systems:
            return compute_description(method, self.system_config(method))
        return f"{self.train.iterations} iterations, batch {self.train.batch_size}"


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def validate_cv_parameters(data: str, structure: str | int = "pancreas", k: int = 5, *,
                           test_data: str | None = None, layout: str = "auto",
                           limit: int | None = None, seed: int = 0,
                           architectures: Sequence[str] = ("iunet", "cicek", "dilated_fcn"),
                           baseline: str = "iunet", iterations: int = 2000,
                           batch_size: int = 8, lr: float = 1e-4, base_channels: int = 16,
                           size_zyx: Sequence[int] = (24, 64, 64), train_seed: int = 0,
                           device: str | None = None, systems: Sequence[str] = (),
                           system_scale: str = "reduced",
                           system_overrides: dict[str, dict[str, Any]] | None = None
                           ) -> CVConfig:
    """Check notebook / CLI parameters and build the :class:`CVConfig`, or stop with a message.

    Called in the first cell after a papermill ``parameters`` cell, so a typo stops the run
    at once (not after an hour of training). Checks types, that folders exist, that the
    structure is known to the source (with a "did you mean" for typos), that ``k`` is at
    most the number of cases, that the working size suits every architecture, and that each
    system (``systems``: ``"zhou"``, ``"roth"``, ``"kloenne"``, with "did you mean") covers the
    structure and can learn from ``data``. With systems only, pass ``architectures=[]`` and a
    system as ``baseline``.

    Returns:
        The config.

    Raises:
        ConfigError: a value of the wrong type or out of range (e.g. ``k`` larger than the
            number of cases, an unknown architecture, a size the U-Nets cannot pool).
        InputError: a missing folder, an unknown structure, or no cases.
    """
    if not isinstance(data, str) or not data:
        raise ConfigError(f"data must be a source string ({_SOURCE_KINDS}), got {data!r}")
    if isinstance(architectures, str):
        architectures = [architectures]
    if isinstance(systems, str):
        systems = [systems] if systems else []
    if systems is None:
        systems = []
    if not isinstance(systems, (list, tuple)):
        raise ConfigError(f"systems must be a list of names from {list(SYSTEMS)}, got "
                          f"{systems!r}")
    for system in systems:
        if system not in SYSTEMS:
            raise ConfigError(f"unknown system {system!r}{_did_you_mean(str(system), SYSTEMS)}; "
                              f"choose from {list(SYSTEMS)}")
    train_cfg = _build_train_config(structure, iterations, batch_size, lr, base_channels,
                                    size_zyx, train_seed)
    cfg = CVConfig(data=data, test_data=test_data, structure=str(structure), layout=layout,
                   limit=limit, k=k, seed=seed, architectures=tuple(architectures),
                   baseline=baseline, train=train_cfg, device=device, systems=tuple(systems),
                   system_scale=system_scale, system_overrides=system_overrides or None)
    for arch in cfg.architectures:
        _check_size(cfg.train, arch)
    n_train = len(case_ids(cfg.data, cfg.structure, cfg.layout, cfg.limit))
    n_test = n_train if cfg.test_data is None else len(
        case_ids(cfg.test_data, cfg.structure, cfg.layout, cfg.limit))
    n = min(n_train, n_test)
    if cfg.k > n:
        raise ConfigError(f"k = {cfg.k} folds but only {n} case(s) "
                          f"({'in ' + cfg.data if cfg.test_data is None else 'in the smaller source'}"
                          f"); use k <= {n} or more cases")
    logger.info("cross-validation: %d training cases, %d test cases, k = %d, seed %d",
                n_train, n_test, cfg.k, cfg.seed)
    return cfg


def validate_train_parameters(data: str, structure: str | int = "pancreas", arch: str = "iunet",
                              iterations: int = 2000, batch_size: int = 8, seed: int = 0, *,
                              lr: float = 1e-4, base_channels: int = 16,
                              size_zyx: Sequence[int] = (24, 64, 64), layout: str = "auto",
                              limit: int | None = None) -> TrainConfig:
    """Check the training notebook's parameters and build the :class:`TrainConfig`.

    Same checks as :func:`validate_cv_parameters` for one architecture (source string,
    folder, structure with "did you mean", positive sizes that suit the architecture, at
    least one case).

    Raises:
        ConfigError: a value of the wrong type or out of range.
        InputError: a missing folder, an unknown structure, no cases.
    """
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}{_did_you_mean(str(arch), ARCHITECTURES)}"
                          f"; choose from {list(ARCHITECTURES)}")
    if not _is_int(seed):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    probe = _build_train_config(structure, iterations, batch_size, lr, base_channels, size_zyx,
                                seed)
    probe = dataclasses.replace(probe, net=dataclasses.replace(probe.net, arch=arch))
    _check_size(probe, arch)
    if limit is not None and (not _is_int(limit) or limit < 1):
        raise ConfigError(f"limit must be None or a positive integer, got {limit!r}")
    if not isinstance(data, str) or not data:
        raise ConfigError(f"data must be a source string ({_SOURCE_KINDS}), got {data!r}")
    n = len(case_ids(data, structure, layout, limit))
    if n == 0:
        raise InputError(f"no training cases in {data}")
    logger.info("training %s on %d case(s) from %s", arch, n, data)
    return probe


def _build_train_config(structure: Any, iterations: Any, batch_size: Any, lr: Any,
                        base_channels: Any, size_zyx: Any, seed: Any) -> TrainConfig:
    from ..model.augment import AugmentConfig
    from ..model.nets import NetConfig
    from ..model.preprocess import PreprocessConfig

    if isinstance(structure, bool) or not isinstance(structure, (str, int)):
        raise ConfigError(f"structure must be a name such as 'pancreas' or a label value, got "
                          f"{structure!r}")
    for name, value in (("iterations", iterations), ("batch_size", batch_size),
                        ("base_channels", base_channels)):
        if not _is_int(value) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise ConfigError(f"lr must be a number in (0, 1), got {lr!r}")
    size = tuple(size_zyx) if isinstance(size_zyx, (list, tuple)) else ()
    if len(size) != 3 or not all(_is_int(s) and s > 0 for s in size):
        raise ConfigError(f"size_zyx must be three positive integers (z, y, x), got {size_zyx!r}")
    return TrainConfig(
        net=NetConfig(base_channels=int(base_channels)),
        preprocess=PreprocessConfig(size_zyx=tuple(int(s) for s in size)),
        augment=AugmentConfig(), iterations=int(iterations), batch_size=int(batch_size),
        lr=float(lr), seed=int(seed), checkpoint_every=min(100, int(iterations)),
        structure=str(structure))


def _check_size(train_cfg: TrainConfig, arch: str) -> None:
    size = train_cfg.preprocess.size_zyx
    multiple = dataclasses.replace(train_cfg.net, arch=arch).size_multiple
    if any(s % multiple for s in size):
        raise ConfigError(f"size_zyx {tuple(size)} does not suit {arch}: every size must be a "
                          f"multiple of {multiple} (2**(depth-1) max-pools); e.g. "
                          f"{tuple(max(multiple, s // multiple * multiple) for s in size)}")


def select_folds(folds: Any, k: int) -> list[int]:
    """The folds a notebook / job runs: None means all ``0 .. k-1``; else a list of indices.

    Raises:
        ConfigError: not None, an integer or a list of integers in ``0 .. k-1``.
    """
    if folds is None:
        return list(range(k))
    if _is_int(folds):
        folds = [folds]
    if not isinstance(folds, (list, tuple)) or not all(_is_int(f) and 0 <= f < k for f in folds):
        raise ConfigError(f"folds must be None (all), a fold index or a list of fold indices "
                          f"from 0 to {k - 1}, got {folds!r}")
    return sorted({int(f) for f in folds})


# ----------------------------------------------------------------------------------------------
# data sources
# ----------------------------------------------------------------------------------------------
def _parse_source(source: str) -> tuple[str, str]:
    if not isinstance(source, str) or not source:
        raise ConfigError(f"a data source must be {_SOURCE_KINDS}, got {source!r}")
    if source.startswith("phantom:"):
        return "phantom", source.split(":", 1)[1]
    if source.startswith("btcv-synth:"):
        return "btcv-synth", source.split(":", 1)[1]
    if ":" in source.split(os.sep)[0] and not Path(source).exists() and len(
            source.split(":", 1)[0]) > 1:
        kind = source.split(":", 1)[0]
        raise ConfigError(f"unknown data source kind {kind!r}"
                          f"{_did_you_mean(kind, ['phantom', 'btcv-synth'])}; use {_SOURCE_KINDS}")
    return "folder", source


def _find(root: str, structure: str | int, layout: str) -> list[Any]:
    from ..io.datasets import BTCV_LABELS, find_cases

    try:
        return find_cases(root, structure=structure, layout=layout)
    except InputError as exc:
        if isinstance(structure, str) and "structure" in str(exc):
            hint = _did_you_mean(structure, list(BTCV_LABELS))
            raise InputError(f"{exc}{hint}") from exc
        raise


def case_ids(source: str, structure: str | int = "pancreas", layout: str = "auto",
             limit: int | None = None) -> list[str]:
    """Identifiers of the cases of a data source, without reading any image.

    ``phantom:<n>`` cases are ``phantom000`` ... (the seed offset is their index); folder and
    ``btcv-synth:`` sources list their files (:func:`iunet_nb.io.datasets.find_cases`).

    Raises:
        ConfigError: a malformed source string (or ``phantom`` with a structure other than
            the pancreas, the only structure its masks hold).
        InputError: a missing folder, an unknown structure, no cases.
    """
    kind, rest = _parse_source(source)
    if kind == "phantom":
        try:
            n = int(rest)
        except ValueError:
            raise ConfigError(f"'phantom:<n>' needs a number of cases, got {source!r}") from None
        if n < 1:
            raise ConfigError(f"'phantom:<n>' needs n >= 1, got {source!r}")
        if str(structure).lower() != "pancreas":
            raise ConfigError(f"phantom cases only have a pancreas mask; structure {structure!r} "
                              "is not available (use structure='pancreas' or a real data set)")
        ids = [f"phantom{i:03d}" for i in range(n)]
    elif kind == "btcv-synth":
        ids = [c.case_id for c in _find(rest, structure, "btcv")]
    else:
        ids = [c.case_id for c in _find(rest, structure, layout)]
    return ids[:limit] if limit is not None else ids


def _case_loader(source: str, structure: str | int, layout: str, limit: int | None, seed: int,
                 *, full_labels: bool = False) -> tuple[list[str], Callable[[str], Any], str]:
    """(ids, load(id) -> (ct, mask), description); one case at a time (memory stays low).

    The same cases as :func:`iunet_nb.model.train.load_training_cases` makes from the source: case
    ``i`` of a synthetic source is seeded with ``seed + i``. With ``full_labels`` (a
    ``btcv-synth:`` source only) ``load`` returns ``(ct, mask, BTCV label map)``, which the
    multi-organ Roth system trains on.
    """
    kind, rest = _parse_source(source)
    ids = case_ids(source, structure, layout, limit)
    index = {cid: i for i, cid in enumerate(ids)}
    if kind == "phantom":
        from ..synth.phantom import make_phantom

        def load(cid: str) -> tuple[Volume, Volume]:
            return make_phantom(rng=seed + index[cid])
        return ids, load, f"{len(ids)} procedural phantoms (seeds {seed}..{seed + len(ids) - 1})"
    if kind == "btcv-synth":
        from .. import synth

        cases = {c.case_id: c for c in _find(rest, structure, "btcv")}

        def load_full(cid: str) -> tuple[Volume, Volume, Volume]:
            case = cases[cid]
            labels = case.read_labels()  # in the maps' true direction (datasets.BTCV_DIRECTION)
            ct = synth.synthesize_ct(labels, rng=seed + index[cid])
            mask = labels.with_array((labels.array == case.label_value).astype(np.uint8))
            return ct, mask, labels

        def load(cid: str) -> tuple[Volume, Volume]:
            return load_full(cid)[:2]
        return (ids, load_full if full_labels else load,
                f"synthetic CT from {len(ids)} BTCV label maps in {rest}")
    if full_labels:
        raise ConfigError(f"full multi-organ label maps come only from 'btcv-synth:' sources, "
                          f"not {source!r}")
    cases = {c.case_id: c for c in _find(rest, structure, layout)}

    def load(cid: str) -> tuple[Volume, Volume]:
        image, mask = cases[cid].load()
        if image is None:
            raise InputError(f"case {cid} in {rest} has no image (label maps only); use "
                             f"'btcv-synth:{rest}' to synthesise CT from its label maps")
        return image, mask
    return ids, load, f"{len(ids)} cases from {rest}"


def _folds(cfg: CVConfig, out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The seeded split of the training source (and of the test source), saved in ``out``."""
    from ..io.datasets import load_folds, make_folds, save_folds

    def get(name: str, source: str) -> list[dict[str, Any]]:
        folds = make_folds(case_ids(source, cfg.structure, cfg.layout, cfg.limit), cfg.k,
                           cfg.seed)
        path = out / name
        if path.exists() and load_folds(path) != folds:
            raise ConfigError(f"{path} holds a different split than this config makes; the "
                              "data changed since the first fold ran. Use a new output folder")
        if not path.exists():
            save_folds(folds, path, cfg.seed)
        return folds

    train_folds = get("folds.json", cfg.data)
    test_folds = None if cfg.test_data is None else get("test_folds.json", cfg.test_data)
    return train_folds, test_folds


def _claim_folder(cfg: CVConfig, out: Path) -> None:
    """Write ``cv_config.json`` or check that the one there is this config."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "cv_config.json"
    if path.exists():
        saved = CVConfig.from_json(path)
        if saved != cfg:
            mine, theirs = cfg.to_dict(), saved.to_dict()
            differ = sorted(k for k in mine if mine[k] != theirs.get(k))
            raise ConfigError(f"{out} belongs to another cross-validation (cv_config.json differs "
                              f"in {differ}); every fold job of one experiment must use the same "
                              "config. Use another output folder, or the saved config")
    else:
        cfg.to_json(path)


# ----------------------------------------------------------------------------------------------
# one fold
# ----------------------------------------------------------------------------------------------
def run_fold(cfg: CVConfig, fold: int, out_dir: str | os.PathLike, *,
             overwrite: bool = False, progress: bool = True) -> pd.DataFrame:
    """Train every method on one fold's training cases and evaluate its test cases.

    The training cases are loaded and prepared (reference box + margin, resampled to the
    working grid) once and shared by all architectures; each test case is loaded once and
    segmented by every architecture inside its reference bounding box (the paper's protocol),
    then scored with :func:`iunet_nb.model.evaluate.evaluate_case` on the CT's own grid. The
    ``systems`` train on the same training cases (whole CTs; Roth on the full BTCV label maps)
    and segment the same test cases without a box, scored by the same function; their models
    are kept in ``fold_<i>/<system>/`` and reloaded when the fold is run again.

    Args:
        cfg: the experiment.
        fold: fold index, ``0 <= fold < cfg.k``.
        out_dir: the experiment's folder (shared by all fold jobs).
        overwrite: rerun even if ``fold_<fold>.csv`` exists (otherwise it is read and
            returned) and train from scratch. Without it, a training interrupted in an earlier
            run of this fold (a preempted job) resumes from its last checkpoint.
        progress: tqdm progress bars.

    Returns:
        One row per (method, test case): ``fold``, ``architecture`` (the method: an
        architecture or a system), ``case_id``, the metrics of ``evaluate_case`` (``dice``
        ...), ``train_s``, ``predict_s``, ``box`` (``"reference"`` or ``"none"``),
        ``structure`` and ``compute`` (training steps and batch in words).

    Raises:
        ConfigError: ``fold`` out of range, or ``out_dir`` holds another experiment.
        InputError: data problems (missing files, an empty reference mask, ...).
    """
    from tqdm.auto import tqdm

    from ..model.evaluate import evaluate_case
    from ..model.predict import make_box, segment
    from ..model.train import prepare_cases, train
    from ..systems.cv import train_system

    if not _is_int(fold) or not 0 <= fold < cfg.k:
        raise ConfigError(f"fold must be an integer from 0 to {cfg.k - 1} (k = {cfg.k}), got "
                          f"{fold!r}")
    out = Path(out_dir)
    _claim_folder(cfg, out)
    csv_path = out / f"fold_{fold}.csv"
    if csv_path.exists() and not overwrite:
        logger.info("fold %d already done (%s); pass overwrite=True to rerun", fold, csv_path)
        return pd.read_csv(csv_path, dtype={"case_id": str})
    train_folds, test_folds = _folds(cfg, out)
    train_ids = train_folds[fold]["train"]
    test_ids = (train_folds if test_folds is None else test_folds)[fold]["test"]
    need_labels = "roth" in cfg.systems
    _, load_train, description = _case_loader(cfg.data, cfg.structure, cfg.layout, cfg.limit,
                                              cfg.seed, full_labels=need_labels)
    _, load_test, _ = _case_loader(cfg.test_data or cfg.data, cfg.structure, cfg.layout,
                                   cfg.limit, cfg.seed)
    logger.info("fold %d/%d: %d training cases, %d test cases, methods %s", fold + 1,
                cfg.k, len(train_ids), len(test_ids), list(cfg.methods))

    # The systems train on the whole CTs, so with systems every training case is loaded once
    # and kept for the fold; without, the cases stream through the crop (memory stays low).
    kept: list[tuple[Any, ...]] = []

    def training_cases() -> Iterator[tuple[Volume, Volume]]:
        for cid in tqdm(train_ids, desc=f"fold {fold}: preparing", unit="case",
                        disable=not progress):
            case = load_train(cid)
            if cfg.systems:
                kept.append(case)
            yield case[0], case[1]

    if cfg.architectures:
        images, masks = prepare_cases(training_cases(), cfg.train.preprocess)
    else:
        images = masks = None
        for _ in training_cases():
            pass
    models: dict[str, Any] = {}
    train_s: dict[str, float] = {}
    for arch in cfg.architectures:
        t0 = time.perf_counter()
        result = train(images, masks, cfg.train_config(arch), out / f"fold_{fold}" / arch,
                       resume=not overwrite, device=cfg.device, progress=progress,
                       data_description=f"{description}, fold {fold} of {cfg.k} "
                                        f"(seed {cfg.seed}): {len(train_ids)} training cases")
        models[arch], train_s[arch] = result.model, time.perf_counter() - t0
        logger.info("fold %d: trained %s in %.1f s (final loss %.4f)", fold, arch, train_s[arch],
                    result.losses[-1])
    del images, masks
    for system in cfg.systems:
        cases = [(c[0], c[2]) if system == "roth" else (c[0], c[1]) for c in kept]
        trained = train_system(
            system, cases, cfg.structure, scale=cfg.system_scale,
            overrides=(cfg.system_overrides or {}).get(system), seed=int(cfg.train.seed),
            out_dir=out / f"fold_{fold}" / system, resume=not overwrite, device=cfg.device,
            progress=progress, data_description=f"{description}, fold {fold} of {cfg.k} (seed "
                                                f"{cfg.seed}): {len(train_ids)} training cases")
        models[system], train_s[system] = trained.predict, trained.train_s
        del cases
    kept.clear()
    rows = []
    for cid in tqdm(test_ids, desc=f"fold {fold}: testing", unit="case", disable=not progress):
        image, mask = load_test(cid)
        box = make_box(image, reference=mask)
        for method in cfg.methods:
            t0 = time.perf_counter()
            if method in cfg.systems:
                pred = models[method](image)  # fully automatic: no box
            else:
                pred = segment(image, models[method], box, cfg.train.preprocess,
                               device=cfg.device)
            predict_s = time.perf_counter() - t0
            row = {"fold": fold, "architecture": method,
                   **evaluate_case(pred.array, mask.array, image.spacing_mm, cfg.tolerance_mm,
                                   case_id=cid),
                   "train_s": round(train_s[method], 3), "predict_s": round(predict_s, 4),
                   "box": "none" if method in cfg.systems else "reference",
                   "structure": str(cfg.structure), "compute": cfg.compute(method)}
            rows.append(row)
    table = pd.DataFrame(rows)
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    logger.info("fold %d written to %s; mean DSC %s", fold, csv_path,
                {a: round(float(g["dice"].mean()), 4) for a, g in table.groupby("architecture")})
    return table


def merge_folds(out_dir: str | os.PathLike) -> pd.DataFrame:
    """Combine the ``fold_<i>.csv`` of all ``k`` folds into ``results.csv``.

    Args:
        out_dir: the experiment's folder (holding ``cv_config.json``).

    Returns:
        All per-case rows, sorted by architecture and case id.

    Raises:
        InputError: no ``cv_config.json``, or some folds are missing (they are listed, with
            the command that runs them), or a case appears twice for one architecture.
    """
    out = Path(out_dir)
    if not (out / "cv_config.json").is_file():
        raise InputError(f"{out} holds no cv_config.json: it is not a cross-validation folder "
                         "(run the folds first: iunet-nb cv --fold i --out DIR)")
    cfg = CVConfig.from_json(out / "cv_config.json")
    missing = [i for i in range(cfg.k) if not (out / f"fold_{i}.csv").is_file()]
    if missing:
        raise InputError(f"{out}: fold(s) {missing} of {cfg.k} have not finished (no fold_<i>.csv);"
                         f" run them first, e.g. `iunet-nb cv --fold {missing[0]} --out {out}`")
    table = pd.concat([pd.read_csv(out / f"fold_{i}.csv", dtype={"case_id": str})
                       for i in range(cfg.k)], ignore_index=True)
    dupes = table.duplicated(["architecture", "case_id"])
    if dupes.any():
        raise InputError(f"{out}: case(s) {sorted(set(table.loc[dupes, 'case_id']))} appear in "
                         "more than one fold; the fold files come from different splits")
    table = table.sort_values(["architecture", "case_id"], kind="stable").reset_index(drop=True)
    with atomic_path(out / "results.csv") as tmp:
        table.to_csv(tmp, index=False)
    return table


def run_cv(cfg: CVConfig, out_dir: str | os.PathLike, *, overwrite: bool = False,
           progress: bool = True) -> CVTables:
    """All folds in this process, then the merge and the report (see :func:`run_fold`).

    Folds already finished in ``out_dir`` are reused unless ``overwrite``.
    """
    for fold in range(cfg.k):
        run_fold(cfg, fold, out_dir, overwrite=overwrite, progress=progress)
    tables = cv_tables(merge_folds(out_dir), baseline=cfg.baseline)
    write_cv_report(tables, out_dir)
    return tables


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def _cmd_cv(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.merge:
        cfg = CVConfig.from_json(out / "cv_config.json") if (out / "cv_config.json").exists() \
            else None
        tables = cv_tables(merge_folds(out), baseline=cfg.baseline if cfg else "iunet")
        write_cv_report(tables, out)
    else:
        if args.config:
            cfg = CVConfig.from_json(args.config)
        else:
            if not args.data:
                raise ConfigError("give --data (or --config cv_config.json)")
            cfg = validate_cv_parameters(
                args.data, args.structure, args.k, test_data=args.test_data, layout=args.layout,
                limit=args.limit, seed=args.seed, architectures=args.arch,
                baseline=args.baseline, iterations=args.iterations, batch_size=args.batch,
                lr=args.lr, base_channels=args.base_channels, size_zyx=tuple(args.size),
                train_seed=args.train_seed, device=args.device, systems=args.systems,
                system_scale=args.system_scale,
                system_overrides=_parse_overrides(args.system_config))
        if args.fold is not None:
            table = run_fold(cfg, args.fold, out, overwrite=args.overwrite)
            means = table.groupby("architecture")["dice"].mean()
            print(f"fold {args.fold}: mean DSC " + ", ".join(
                f"{m} {100 * v:.1f} %" for m, v in means.items()) + f"; written to {out}")
            return 0
        tables = run_cv(cfg, out, overwrite=args.overwrite)
    print(_markdown_table(tables.table1.drop(columns=["architecture", "mean_pct", "sd_pct",
                                                      "p_value"])), end="")
    print(f"results in {out}")
    return 0


def _parse_overrides(text: str | None) -> dict[str, dict[str, Any]] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--system-config must be a JSON object such as "
                          f"'{{\"zhou\": {{\"coarse_iterations\": 400}}}}': {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"--system-config must be a JSON object {{system: {{field: value}}}}, "
                          f"got {text!r}")
    return value


def add_cli(subparsers: Any) -> None:
    """Register ``iunet-nb cv`` on an ``argparse`` subparsers object.

    ``iunet-nb cv --data D --out DIR`` runs every fold and the merge; ``--fold i`` runs one
    fold (a scheduler runs ``i = 0 .. k-1`` anywhere, sharing DIR); ``--merge`` combines them.
    ``--systems zhou roth kloenne`` adds the seed papers' systems (no box) to the same folds.
    """
    p = subparsers.add_parser("cv", help="k-fold cross-validation of architectures (Experiment 1)",
                              description=add_cli.__doc__)
    p.add_argument("--out", required=True, help="experiment folder (shared by all fold jobs)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--fold", type=int, default=None, help="run only this fold (0-based)")
    what.add_argument("--merge", action="store_true", help="merge finished folds and report")
    p.add_argument("--config", default=None, help="a cv_config.json instead of the flags below")
    p.add_argument("--data", default=None, help=f"training source: {_SOURCE_KINDS}")
    p.add_argument("--test-data", default=None, help="separate test source (default: folds of "
                                                     "--data)")
    p.add_argument("--structure", default="pancreas")
    p.add_argument("--layout", default="auto")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="seed of the split and synthetic CT")
    p.add_argument("--train-seed", type=int, default=0, help="seed of the training runs")
    p.add_argument("--arch", nargs="*", default=["iunet", "cicek", "dilated_fcn"],
                   choices=list(ARCHITECTURES),
                   help="architectures, tested inside the reference box (none: --arch alone)")
    p.add_argument("--systems", nargs="*", default=[], choices=list(SYSTEMS),
                   help="the seed papers' systems, fully automatic (no box)")
    p.add_argument("--system-scale", choices=list(SCALES), default="reduced",
                   help="reduced: each system's documented CPU scale; full: the papers' "
                        "settings (GPU)")
    p.add_argument("--system-config", default=None,
                   help='JSON overrides per system, e.g. \'{"zhou": {"coarse_iterations": 400}}\'')
    p.add_argument("--baseline", default="iunet")
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--size", type=int, nargs=3, default=[24, 64, 64], metavar=("Z", "Y", "X"))
    p.add_argument("--device", default=None)
    p.add_argument("--overwrite", action="store_true", help="rerun folds already finished")
    p.set_defaults(func=_cmd_cv)
