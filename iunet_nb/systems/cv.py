"""The seed papers' systems as methods of Experiment 1 (same folds, same metrics as iUnet).

:mod:`iunet_nb.studies.crossval` trains iUnet, Cicek's 3D U-Net and the dilated FCN on a fold's
training cases and tests them inside the *reference* bounding box. This module lets the same
fold train and test the other seed papers' systems, which are **fully automatic** (no box):

* ``"zhou"`` — coarse-to-fine 2D FCNs on three views (:mod:`.zhou`); organ-agnostic (a binary
  target), evaluated in its paper on the pancreas only;
* ``"roth"`` — the multi-organ 3D FCN (:mod:`.roth`): it learns its organs from full
  multi-organ label maps with BTCV label values, so it needs a ``btcv-synth:`` training source;
  it covers only the structures that are one of its organs (:data:`ROTH_STRUCTURES`) and the
  fold scores the organ asked for;
* ``"kloenne"`` — the stacked ensemble of Kloenne's nnU-Net-style U-Net and MS-D Net
  (:mod:`.kloenne`); organ-agnostic (binary target).

:func:`train_system` trains one of them on ``(CT, mask)`` pairs (``(CT, BTCV label map)`` for
Roth) and returns a :class:`TrainedSystem` whose ``predict(ct) -> mask`` runs on the CT's own
grid, so :func:`iunet_nb.model.evaluate.evaluate_case` scores it exactly like iUnet. Trained models
are written to ``out_dir`` and reloaded (not retrained) by a later call, so a preempted fold
job resumes. The scale is ``"reduced"`` (each config's documented ``reduced()`` CPU scale)
or ``"full"`` (the papers' settings, for GPUs); ``overrides`` change single fields.

Kloenne's ensemble: the seed stacks the top-5 models of each kind by validation DSC. Here the
members are listed by ``overrides["members"]`` (default: a 2D U-Net and a 2D MS-D Net at the
reduced scale; the four kinds 2D/3D U-Net/MS-D at full scale), one model per kind, so the
top-k selection keeps all of them; the ensemble is the mean of their probabilities.

Example:
    >>> check_system("roth", "esophagus", "btcv-synth:/data/btcv")     # doctest: +SKIP
    ConfigError: the roth system does not cover 'esophagus' ...
    >>> trained = train_system("zhou", cases, "pancreas", seed=0)      # doctest: +SKIP
    >>> mask = trained.predict(ct)                                     # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError
from ..io.volume import Volume

__all__ = [
    "PAPER_RESULTS",
    "ROTH_STRUCTURES",
    "SCALES",
    "SYSTEMS",
    "SYSTEM_COVERAGE",
    "SYSTEM_NAMES",
    "TrainedSystem",
    "check_system",
    "compute_description",
    "load_trained_system",
    "roth_organ",
    "system_config",
    "train_system",
    "validate_system_parameters",
]

logger = logging.getLogger(__name__)

#: The systems a cross-validation can run besides ``nets.ARCHITECTURES``.
SYSTEMS: tuple[str, ...] = ("zhou", "roth", "kloenne")
#: ``"reduced"``: the configs' documented CPU scale; ``"full"``: the papers' settings.
SCALES: tuple[str, ...] = ("reduced", "full")
#: Display names (tables and plots).
SYSTEM_NAMES: dict[str, str] = {
    "zhou": "Zhou coarse-to-fine (2D FCN x 3 views)",
    "roth": "Roth multi-organ 3D FCN",
    "kloenne": "Kloenne U-Net + MS-D ensemble",
}
#: What each system segments, in words (shown in error messages and docs).
SYSTEM_COVERAGE: dict[str, str] = {
    "zhou": "any single structure (binary target; its paper evaluates the pancreas only)",
    "roth": "its organs artery, vein, liver, spleen, stomach, gallbladder, pancreas, right and "
            "left kidney; as structures: aorta (its artery), liver, spleen, stomach, "
            "gallbladder, pancreas, right_kidney, left_kidney",
    "kloenne": "any single structure (binary target; its paper: liver, kidney, kidney tumour)",
}
#: Structure name (as in :data:`iunet_nb.io.datasets.BTCV_LABELS`) -> the Roth organ scored.
#: Roth's "vein" merges the IVC and the portal/splenic vein, so neither alone is covered.
ROTH_STRUCTURES: dict[str, str] = {
    "aorta": "artery", "artery": "artery", "liver": "liver", "spleen": "spleen",
    "stomach": "stomach", "gallbladder": "gallbladder", "pancreas": "pancreas",
    "right_kidney": "right_kidney", "left_kidney": "left_kidney"}
#: The papers' own results (their data, not ours): structure -> text, for reference only.
PAPER_RESULTS: dict[str, dict[str, str]] = {
    "zhou": {"pancreas": "82.4 ± 5.7 (NIH pancreas, 82 CTs, 4-fold; coarse stage 75.7 ± 10.5)"},
    "roth": {"pancreas": "84.9 ± 9.1 (37 test CTs of their own)",
             "liver": "97.1 ± 1.0 (37 test CTs of their own)",
             "spleen": "97.7 ± 0.8 (37 test CTs of their own)"},
    "kloenne": {"liver": "98.0 ± 0.1 (stacked CNN, 5-fold by slice count)"},
}

_KLOENNE_REDUCED_MEMBERS: tuple[dict[str, Any], ...] = (
    {"arch": "unet", "dims": 2}, {"arch": "msd", "dims": 2})
_KLOENNE_FULL_MEMBERS: tuple[dict[str, Any], ...] = (
    {"arch": "unet", "dims": 2}, {"arch": "msd", "dims": 2},
    {"arch": "unet", "dims": 3}, {"arch": "msd", "dims": 3})


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _structure_name(structure: str | int) -> str:
    """A BTCV label value or any spelling the data readers accept (``"Right Kidney"``, the
    3D-IRCADb folder name ``"rightkidney"`` ...) -> the canonical structure name."""
    from ..io.datasets import BTCV_LABELS, _canonical

    if isinstance(structure, (int, np.integer)) or str(structure).isdigit():
        by_value = {v: k for k, v in BTCV_LABELS.items()}
        return by_value.get(int(structure), str(structure))
    return _canonical(str(structure))


def roth_organ(structure: str | int) -> str:
    """The Roth organ (one of :data:`~iunet_nb.systems.roth.ROTH_ORGANS`) scored for a structure.

    Args:
        structure: a structure name (``"pancreas"``, ``"liver"``, ``"aorta"`` ...) or a BTCV
            label value (11 is the pancreas).

    Raises:
        ConfigError: Roth's network has no output for this structure (adrenal glands,
            oesophagus, or the IVC / portal vein alone, which Roth merges into one "vein").
    """
    name = _structure_name(structure)
    if name not in ROTH_STRUCTURES:
        raise ConfigError(f"the roth system does not cover {structure!r}: its network segments "
                          f"{SYSTEM_COVERAGE['roth']}{_did_you_mean(name, list(ROTH_STRUCTURES))}."
                          " Leave 'roth' out of the systems for this structure")
    return ROTH_STRUCTURES[name]


def check_system(system: str, structure: str | int, data: str | None = None) -> None:
    """Refuse a system that cannot be trained or scored for ``structure`` on ``data``.

    Args:
        system: one of :data:`SYSTEMS`.
        structure: the target structure of the cross-validation.
        data: the *training* source string; Roth needs ``btcv-synth:<folder>`` (multi-organ
            label maps with BTCV values). None skips that check.

    Raises:
        ConfigError: an unknown system (with a "did you mean"), a structure the system does
            not cover, or a training source Roth cannot learn its organs from.
    """
    if not isinstance(system, str) or system not in SYSTEMS:
        raise ConfigError(f"unknown system {system!r}{_did_you_mean(str(system), SYSTEMS)}; "
                          f"choose from {list(SYSTEMS)}")
    if system == "roth":
        roth_organ(structure)
        if data is not None and not str(data).startswith("btcv-synth:"):
            raise ConfigError(f"the roth system learns its organs from multi-organ label "
                              f"maps with BTCV label values, which the training source {data!r} "
                              "does not give; train on data='btcv-synth:<folder of BTCV label "
                              "maps>' (test_data may be any source)")


def _coerce(changes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(_coerce_list(v)) if isinstance(v, list) else v for k, v in changes.items()}


def _coerce_list(values: list[Any]) -> list[Any]:
    return [tuple(v) if isinstance(v, list) else v for v in values]


def _check_fields(cls: type, system: str, changes: Mapping[str, Any], extra: Sequence[str] = ()
                  ) -> None:
    known = [f.name for f in dataclasses.fields(cls)] + list(extra)
    for key in changes:
        if key not in known:
            raise ConfigError(f"unknown {system} config field {key!r}"
                              f"{_did_you_mean(key, known)}; known fields are {sorted(known)}")


def system_config(system: str, scale: str = "reduced", overrides: Mapping[str, Any] | None = None,
                  seed: int = 0) -> Any:
    """The configuration a system is trained with.

    Args:
        system: one of :data:`SYSTEMS`.
        scale: ``"reduced"`` (the config class's ``reduced()``, documented CPU scale) or
            ``"full"`` (the class defaults: the paper's settings).
        overrides: config fields to change (JSON-native values; lists become tuples). For
            ``"kloenne"`` they apply to every member, and ``"members"`` (a list of objects
            such as ``{"arch": "msd", "dims": 3, "iterations": 100}``) sets the ensemble.
        seed: the config's ``seed`` unless ``overrides`` sets one (member ``i`` of Kloenne's
            ensemble gets ``seed + i``).

    Returns:
        A :class:`~iunet_nb.systems.zhou.ZhouConfig`, a
        :class:`~iunet_nb.systems.roth.RothConfig`, or for Kloenne a tuple of
        :class:`~iunet_nb.systems.kloenne.KloenneConfig` (one per ensemble member).

    Raises:
        ConfigError: an unknown system, scale or field, or a value the config refuses.
    """
    from .kloenne import KloenneConfig
    from .roth import RothConfig
    from .zhou import ZhouConfig

    check_system(system, "pancreas")
    if scale not in SCALES:
        raise ConfigError(f"system scale must be one of {list(SCALES)}, got {scale!r}")
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ConfigError(f"overrides of {system} must be a JSON object of config fields, got "
                          f"{type(overrides).__name__}")
    changes = dict(overrides or {})
    if system == "kloenne":
        _check_fields(KloenneConfig, system, changes, extra=("members",))
        members = changes.pop("members", None)
        if members is None:
            members = _KLOENNE_REDUCED_MEMBERS if scale == "reduced" else _KLOENNE_FULL_MEMBERS
        if not isinstance(members, (list, tuple)) or not members or not all(
                isinstance(m, Mapping) for m in members):
            raise ConfigError(f"kloenne 'members' must be a non-empty list of objects such as "
                              f'{{"arch": "unet", "dims": 2}}, got {members!r}')
        base_seed = changes.pop("seed", seed)
        configs = []
        for i, member in enumerate(members):
            _check_fields(KloenneConfig, system, member)
            fields = {"seed": base_seed + i, **_coerce(changes), **_coerce(member)}
            configs.append(KloenneConfig.reduced(**fields) if scale == "reduced"
                           else KloenneConfig(**fields))
        return tuple(configs)
    cls = ZhouConfig if system == "zhou" else RothConfig
    _check_fields(cls, system, changes)
    fields = {"seed": seed, **_coerce(changes)}
    return cls.reduced(**fields) if scale == "reduced" else cls(**fields)


def compute_description(system: str, config: Any) -> str:
    """Training compute of one system's config in words (steps and batch), for the tables."""
    if system == "zhou":
        return (f"{config.coarse_iterations} coarse + {config.fine_iterations} fine steps x 3 "
                f"views, batch {config.batch_size}")
    if system == "roth":
        return (f"{config.iterations} steps, batch {config.batch_size} x "
                f"{'x'.join(str(p) for p in config.patch_size)} patches")
    if system == "kloenne":
        return " + ".join(f"{c.kind} {c.iterations} steps (batch {c.effective_batch})"
                          for c in config)
    raise ConfigError(f"unknown system {system!r}")


@dataclass
class TrainedSystem:
    """A trained system, ready to segment test cases of a fold.

    Attributes:
        name: the system (one of :data:`SYSTEMS`).
        structure: the structure it is scored on.
        predict: ``ct -> uint8 {0, 1} mask Volume`` on the CT's own grid and geometry; no box.
        train_s: training time in seconds (the time recorded when the model was trained, if
            it was reloaded from ``out_dir``).
        compute: training compute in words (:func:`compute_description`).
        config: the config(s) as JSON-native dicts.
        reloaded: True when the model came from ``out_dir`` instead of being trained now.
    """

    name: str
    structure: str
    predict: Callable[[Volume], Volume]
    train_s: float
    compute: str
    config: Any
    reloaded: bool = False


def _card_time(path: Path) -> float:
    card = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    return float(card.get("train_time_s", 0.0))


def _binary(cases: Sequence[tuple[Volume, Volume]]) -> list[tuple[Volume, Volume]]:
    return [(ct, mask if int(np.max(mask.array, initial=0)) <= 1
             else mask.with_array((mask.array != 0).astype(np.uint8))) for ct, mask in cases]


def _predictor(system: str, model: Any, organ: str | None, device: str | None
               ) -> Callable[[Volume], Volume]:
    if system == "zhou":
        from .zhou import predict_zhou

        return lambda ct: predict_zhou(ct, model, device=device).mask
    if system == "roth":
        from .roth import predict_roth

        return lambda ct: predict_roth(ct, model, device=device).organ_mask(str(organ))
    from .kloenne import predict_kloenne

    return lambda ct: predict_kloenne(ct, model, device=device)


def _model_paths(system: str, config: Any, out: Path) -> list[Path]:
    if system != "kloenne":
        return [out / "model.pt"]
    return [out / f"member{i}_{c.kind}" / "model.pt" for i, c in enumerate(config)]


def _to_dict(system: str, config: Any) -> Any:
    return [c.to_dict() for c in config] if system == "kloenne" else config.to_dict()


def load_trained_system(system: str, structure: str | int, out_dir: str | os.PathLike,
                        config: Any, *, device: str | None = None) -> TrainedSystem | None:
    """Reload what :func:`train_system` wrote in ``out_dir`` for ``config``, or None.

    None when a model file is missing or its card holds another config (then the system must
    be trained again).
    """
    from .kloenne import KloenneEnsemble, load_kloenne
    from .roth import load_roth
    from .zhou import load_zhou

    out = Path(out_dir)
    paths = _model_paths(system, config, out)
    if not all(p.is_file() and p.with_suffix(".json").is_file() for p in paths):
        return None
    loader = {"zhou": load_zhou, "roth": load_roth, "kloenne": load_kloenne}[system]
    models = [loader(p, "cpu") for p in paths]
    wanted = list(config) if system == "kloenne" else [config]
    if [m.config for m in models] != wanted:
        logger.info("%s in %s was trained with another config; training again", system, out)
        return None
    organ = roth_organ(structure) if system == "roth" else None
    model = KloenneEnsemble(models) if system == "kloenne" else models[0]
    return TrainedSystem(system, str(structure), _predictor(system, model, organ, device),
                         round(sum(_card_time(p) for p in paths), 1),
                         compute_description(system, config), _to_dict(system, config),
                         reloaded=True)


def train_system(system: str, cases: Sequence[tuple[Volume, Volume]], structure: str | int,
                 *, scale: str = "reduced", overrides: Mapping[str, Any] | None = None,
                 seed: int = 0, out_dir: str | os.PathLike | None = None, resume: bool = True,
                 device: str | None = None, progress: bool = True,
                 data_description: str = "") -> TrainedSystem:
    """Train one system on a fold's training cases (or reload it) and return its predictor.

    Args:
        system: one of :data:`SYSTEMS`.
        cases: ``(CT in HU, mask)`` pairs on the CT's own grid: a binary mask of
            ``structure`` for Zhou and Kloenne; the **full BTCV label map** for Roth (its
            training needs all of its organs).
        structure: the structure scored (Roth: which of its organs ``predict`` returns).
        scale: ``"reduced"`` or ``"full"`` (see :func:`system_config`).
        overrides: config fields to change (see :func:`system_config`).
        seed: seed of the weights and sampling (Kloenne member ``i``: ``seed + i``).
        out_dir: if given, the models and cards are written there; with ``resume`` a model
            already there with the same config is reloaded instead of retrained.
        resume: reload a finished model from ``out_dir`` (False: always train).
        device: None for CUDA when available.
        progress: tqdm bars.
        data_description: recorded in the model cards.

    Returns:
        :class:`TrainedSystem`.

    Raises:
        ConfigError: an unknown system, scale or field, or a structure it does not cover.
        InputError: no cases, or masks without the target.
    """
    from .kloenne import KloenneEnsemble, train_kloenne
    from .roth import train_roth
    from .zhou import train_zhou

    check_system(system, structure)
    config = system_config(system, scale, overrides, seed)
    if len(cases) == 0:
        raise InputError(f"train_system({system!r}) needs at least one training case")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and resume:
        found = load_trained_system(system, structure, out, config, device=device)
        if found is not None:
            logger.info("%s: reloaded the model trained earlier in %s", system, out)
            return found
    organ = roth_organ(structure) if system == "roth" else None
    if system == "zhou":
        result = train_zhou(_binary(cases), config, out, device=device,
                            progress=progress, data_description=data_description)
        model, train_s = result.model, result.train_time_s
    elif system == "roth":
        result_r = train_roth(cases, config, out, device=device, progress=progress,
                              data_description=data_description)
        model, train_s = result_r.model, result_r.train_time_s
    else:
        members, train_s = [], 0.0
        for path, cfg in zip(_model_paths(system, config, out or Path(".")), config):
            r = train_kloenne(_binary(cases), cfg,
                              path.parent if out is not None else None, device=device,
                              progress=progress, data_description=data_description)
            members.append(r.model)
            train_s += r.train_time_s
        model = KloenneEnsemble(members)
    logger.info("%s: trained on %d cases in %.1f s (%s)", system, len(cases), train_s,
                compute_description(system, config))
    return TrainedSystem(system, str(structure), _predictor(system, model, organ, device),
                         round(float(train_s), 1), compute_description(system, config),
                         _to_dict(system, config))


def validate_system_parameters(system: str, data: str, structure: str | int = "pancreas", *,
                               scale: str = "reduced",
                               overrides: Mapping[str, Any] | None = None, seed: int = 0,
                               layout: str = "auto", limit: int | None = None) -> Any:
    """Check the training notebook's parameters for a system and build its config.

    The same checks as ``iunet-nb train-system`` makes when it runs, made before any case is
    loaded: the system's name ("did you mean"), that it covers ``structure``, the scale and
    the override fields, and that ``data`` holds cases (Roth: not ``phantom:``, whose cases
    have no multi-organ label map).

    Returns:
        The config :func:`system_config` builds (a tuple of configs for Kloenne).

    Raises:
        ConfigError: an unknown system, scale or field; a structure the system does not
            cover; phantom data for Roth.
        InputError: a missing folder, an unknown structure, no cases.
    """
    from ..studies.crossval import case_ids

    check_system(system, structure)
    if not isinstance(data, str) or not data:
        raise ConfigError(f"data must be a source string (a data folder, 'btcv-synth:<folder>' "
                          f"or 'phantom:<n>'), got {data!r}")
    if system == "roth" and data.startswith("phantom:"):
        raise ConfigError("phantom cases have only a pancreas mask, and the roth system learns "
                          "its organs from multi-organ label maps: use "
                          "data='btcv-synth:<folder of BTCV label maps>'")
    config = system_config(system, scale, overrides, seed)
    n = len(case_ids(data, structure, layout, limit))
    if n == 0:
        raise InputError(f"no training cases in {data}")
    logger.info("training %s (%s scale) on %d case(s) from %s", system, scale, n, data)
    return config
