"""Baseline training of a segmentation network on cropped, resampled cases (iUnet, SPEC.md).

The paper's schedule is the default: Adam with lr 1e-4, 2000 iterations, batch 8, a fresh
augmentation (translation, rotation, noise) of every sample at every iteration, soft Dice loss.
One measured departure: the saved weights are a moving average of the iterates
(``TrainConfig.ema_decay`` 0.99; 0 saves the last iterate, as the paper).
Training is seeded end to end (batch order, augmentation, initial weights) and can be resumed
from its last checkpoint with the identical continuation.

Outputs in ``out_dir``:

* ``checkpoint.pt`` — ``torch.save`` of a dict of tensors/state dicts (model, optimizer,
  random generator state, iteration, and the weight average when ``ema_decay`` > 0); loaded
  with ``weights_only=True``;
* ``checkpoint.json`` — the :class:`TrainConfig` and the iteration reached (the sidecar);
* ``model.pt`` + ``model.json`` — the final weights (the moving average of the weights when
  ``ema_decay`` > 0, else the last iteration's) and their :class:`ModelCard` (what
  :func:`iunet_nb.model.checkpoint.load_model` reads);
* ``loss.jsonl`` — one JSON line per iteration: iteration, loss, elapsed_s.

Under ``torchrun`` (:mod:`iunet_nb.model.distributed`) the same call trains one model with
DistributedDataParallel: every process draws the whole global batch (``batch_size``) from the
same seeded generator and trains on its slice, DDP averages the gradients, batch norm is
synchronised, and only rank 0 writes the files above; the result equals the one-process run up
to floating-point summation order.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np
import torch

from .._config import JsonConfig
from ..io._atomic import atomic_path, atomic_write_text
from ..io.datasets import BTCV_DIRECTION
from .augment import AugmentConfig, augment_batch
from .checkpoint import (PRECISIONS, ModelCard, autocast_dtype, load_model, machine_description,
                         read_weights_file, save_model)
from .distributed import (DistContext, check_divisible, convert_sync_batchnorm, distributed,
                          get_world_size, is_main)
from ..errors import CheckpointError, ConfigError, InputError
from ..io.volume import Volume
from .losses import one_hot, soft_dice_loss
from .nets import NetConfig, build_network
from .preprocess import Box, PreprocessConfig, _is_real, crop_mask, preprocess_image

if TYPE_CHECKING:
    from ..io.datasets import Case
    from ..synth.generator import SynthConfig

__all__ = ["TrainConfig", "TrainResult", "load_training_cases", "parse_phases", "prepare_cases",
           "randomised_cases", "train"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """Everything that defines a training run (saved beside its outputs).

    Args:
        net: architecture (iUnet by default).
        preprocess: crop/resample/window settings; the working size is ``preprocess.size_zyx``.
        augment: per-iteration augmentation.
        iterations: optimiser steps (paper: 2000).
        batch_size: samples per step (paper: 8).
        lr: Adam learning rate (paper: 1e-4).
        seed: seeds the initial weights, the batch order and the augmentation.
        checkpoint_every: write ``checkpoint.pt`` every so many iterations (and at the end).
        structure: name of the target structure (recorded in the model card).
        ema_decay: decay of an exponential moving average of the weights and batch-norm
            statistics, updated after every step and debiased (as Adam's moments); the saved
            model is the average. 0: the weights of the last step (the paper's). Default
            0.99, measured (``docs/realism.md`` section 8; 400 steps at lr 1e-3, the same run
            averaged and not): real 3D-IRCADb spleen, three seeds, 0.874 / 0.879 / 0.851 ->
            0.883 / 0.874 / 0.863 (mean 0.868 -> 0.874), liver 0.908 -> 0.906, and the
            held-out synthetic DSC of all four up by 0-0.008; the last step's real DSC swings
            by up to 0.03 between checkpoints 25 steps apart. A cosine learning-rate decay
            instead gave 0.867 / 0.864 (seeds 1, 2).
        precision: arithmetic of the forward and backward passes
            (:func:`iunet_nb.model.checkpoint.autocast_dtype`): ``"float32"`` (default, the
            same numbers on every machine), ``"bfloat16"`` (autocast; the weights, Adam's
            state and the loss stay float32) or ``"auto"`` (bfloat16 on a CPU that has it in
            hardware, float32 elsewhere). Measured on a 2-core AMD EPYC with AVX512-BF16:
            an iUnet training step at 32 x 64 x 64, batch 4, 1 thread, 1.7-2.4 s -> 0.78 s.
    """

    version: int = 1
    net: NetConfig = NetConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    augment: AugmentConfig = AugmentConfig()
    iterations: int = 2000
    batch_size: int = 8
    lr: float = 1e-4
    seed: int = 0
    checkpoint_every: int = 100
    structure: str = "pancreas"
    ema_decay: float = 0.99
    precision: str = "float32"

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise ConfigError(f"TrainConfig.lr must be in (0, 1), got {self.lr!r}")
        if not (_is_real(self.ema_decay) and 0 <= self.ema_decay < 1):
            raise ConfigError(f"TrainConfig.ema_decay must be in [0, 1) (0: no averaging), "
                              f"got {self.ema_decay!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"TrainConfig.precision must be one of {list(PRECISIONS)}, "
                              f"got {self.precision!r}")


@dataclass
class TrainResult:
    """The trained model and its history."""

    model: torch.nn.Module
    card: ModelCard
    losses: list[float]
    out_dir: Path | None


def prepare_cases(cases: Iterable[tuple[Volume, Volume]], cfg: PreprocessConfig,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop every case to its reference box (+ margin) and resample to the working grid.

    As in the paper's training, the box comes from the reference mask. The working grid is in
    patient (LPS) order (:func:`iunet_nb.model.preprocess.preprocess_image`): the *image's* direction
    decides the transpose/flips, and the mask, taken voxel by voxel on the image's array, goes
    through the same ones, so cases stored in different axis orders train one consistent
    network.

    Args:
        cases: ``(image, mask)`` pairs; image in HU (a :class:`Volume` with its true
            direction), mask uint8 {0, 1} on the image's grid.
        cfg: preprocessing settings.

    Returns:
        images ``float32 (N, 1, D, H, W)`` in [-1, 1] and masks ``float32 (N, D, H, W)`` in {0, 1}.

    Raises:
        InputError: no cases, or a case with an empty mask or a mismatching grid.
    """
    images, masks = [], []
    for i, (image, mask) in enumerate(cases):
        if image.shape != mask.shape:
            raise InputError(f"case {i}: image shape {image.shape} != mask shape {mask.shape}")
        box = Box.from_mask(mask.array)
        x, record = preprocess_image(image, box, cfg)
        y = crop_mask(mask.array, record)
        images.append(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        masks.append(torch.from_numpy((y >= 0.5).astype(np.float32)))
    if not images:
        raise InputError("no training cases were given")
    return torch.stack(images)[:, None], torch.stack(masks)


def train(images: torch.Tensor, masks: torch.Tensor, config: TrainConfig = TrainConfig(),
          out_dir: str | os.PathLike | None = None, *, resume: bool = False,
          continue_from: str | os.PathLike | None = None,
          init_from: str | os.PathLike | None = None,
          device: str | torch.device | None = None, progress: bool = True,
          data_description: str = "") -> TrainResult:
    """Train a network from scratch (or resume) on prepared working-grid cases.

    Args:
        images: ``float32 (N, 1, D, H, W)`` from :func:`prepare_cases`.
        masks: ``float32 (N, D, H, W)`` in {0, 1}.
        config: the run's settings.
        out_dir: where checkpoints, the loss log and the final model go (None: nothing written).
        resume: continue from ``out_dir/checkpoint.pt`` if it exists; the continuation is the
            same as an uninterrupted run (the random generator state is restored too).
        continue_from: another run's ``checkpoint.pt`` to start from when there is nothing to
            resume: its weights, optimizer, averaged weights, random state, iteration count
            and loss history carry over, as with ``resume``, but into ``out_dir`` (the source
            folder is not touched) and with this config's working size
            (``preprocess.size_zyx``), which may differ from the source's: progressive
            resizing, a network trained on a coarse grid continued on a finer one. Every other
            setting must match the source's.
        init_from: a trained model (``model.pt`` with its card) whose weights start this run
            when there is nothing to resume (fine-tuning): only the weights carry over, the
            optimizer, iteration count and random state start afresh. Its architecture must be
            ``config.net``.
        device: "cpu", "cuda" or None for automatic. Under torchrun each process uses
            ``cuda:LOCAL_RANK`` (nccl) or the CPU (gloo).
        progress: show a tqdm progress bar (rank 0 only).
        data_description: recorded in the model card.

    Returns:
        A :class:`TrainResult`; the model is in eval mode on the CPU (on every rank). Its card's
        ``machine`` names the world size and backend of a distributed run.

    Raises:
        InputError: badly shaped images or masks.
        ConfigError: the working size differs from the config's, or (under torchrun) the
            batch size is not divisible by the number of processes.
        CheckpointError: resuming or continuing from a checkpoint of other settings, or an
            unreadable one.
    """
    if images.ndim != 5 or masks.ndim != 4 or images.shape[0] != masks.shape[0]:
        raise InputError(f"expected images (N, 1, D, H, W) and masks (N, D, H, W), got "
                         f"{tuple(images.shape)} and {tuple(masks.shape)}")
    if tuple(images.shape[2:]) != tuple(config.preprocess.size_zyx):
        raise ConfigError(f"images are {tuple(images.shape[2:])} but the config's working size is "
                          f"{tuple(config.preprocess.size_zyx)}; prepare them with the same config")
    check_divisible(config.batch_size, get_world_size())
    with distributed(device) as ctx:
        return _train(images, masks, config, out_dir, ctx, resume=resume,
                      continue_from=continue_from, init_from=init_from, progress=progress,
                      data_description=data_description)


def _train(images: torch.Tensor, masks: torch.Tensor, config: TrainConfig,
           out_dir: str | os.PathLike | None, ctx: DistContext, *, resume: bool,
           continue_from: str | os.PathLike | None, progress: bool,
           init_from: str | os.PathLike | None = None,
           data_description: str) -> TrainResult:
    from tqdm.auto import tqdm

    dev = ctx.device
    torch.manual_seed(config.seed)  # initial weights; the rest uses `gen`
    model = build_network(config.net).to(dev)
    if init_from is not None:   # every rank reads the same file: same start weights
        source, card = load_model(init_from, device="cpu")
        if card.net != config.net:
            raise ConfigError(f"init_from {init_from} is a {card.net} network, but this run "
                              f"trains {config.net}")
        model.load_state_dict(source.state_dict())
    if ctx.is_distributed:  # batch statistics of the global batch, not of each slice
        model = convert_sync_batchnorm(model, dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    average = _weight_average(model, config.ema_decay)
    gen = torch.Generator().manual_seed(config.seed)
    start, losses, elapsed_before = 0, [], 0.0
    out = Path(out_dir) if out_dir is not None and ctx.is_main else None  # rank 0 writes
    resumed = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        config.to_json(out / "train_config.json")
        ckpt_path = out / "checkpoint.pt"
        if resume and ckpt_path.exists():
            resumed = _resume_payload(ckpt_path, config)
        elif (out / "loss.jsonl").exists():
            (out / "loss.jsonl").unlink()
    if resumed is None and continue_from is not None and ctx.is_main:
        resumed = _resume_payload(Path(continue_from), config, resize=True)
        if out is not None and "losses" in resumed:   # the new folder holds the whole curve
            atomic_write_text(out / "loss.jsonl", "".join(
                json.dumps({"iteration": i + 1, "loss": v}) + "\n"
                for i, v in enumerate(resumed["losses"])))
    resumed = ctx.broadcast(resumed)  # every rank continues from rank 0's checkpoint
    if resumed is not None:
        if "error" in resumed:
            raise CheckpointError(resumed["error"])
        state = resumed["state"]
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if average is not None:
            average.load_state_dict(state["average"])
        gen.set_state(state["generator"])
        start = int(state["iteration"])
        elapsed_before = float(state["elapsed_s"])
        losses = resumed["losses"]
        logger.info("resumed from %s at iteration %d", resumed["path"], start)
    net = model
    if ctx.is_distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    n = images.shape[0]
    low = autocast_dtype(dev, config.precision, deepest_zyx=model.deepest_zyx(images.shape[2:]))
    model.train()
    t0 = time.perf_counter() - elapsed_before
    bar = tqdm(range(start, config.iterations), total=config.iterations, initial=start,
               desc="Training", unit="it", disable=not (progress and ctx.is_main))
    log = open(out / "loss.jsonl", "a", encoding="utf-8") if out is not None else None
    try:
        for it in bar:
            # every rank draws the whole global batch from the same generator and keeps its
            # slice, so N processes see the same samples and augmentations as one
            idx = torch.randint(0, n, (config.batch_size,), generator=gen)
            x, y = augment_batch(images[idx], masks[idx], config.augment, gen)
            x, y = ctx.shard(x).to(dev), ctx.shard(y).to(dev)
            if y.ndim == 5:
                y = y[:, 0]
            if low is None:
                logits = net(x)
            else:
                with torch.autocast(dev.type, dtype=low):
                    logits = net(x).float()
            probs = torch.softmax(logits, dim=1)
            loss = soft_dice_loss(probs, one_hot(y.long(), config.net.n_classes))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients over the ranks
            optimizer.step()
            if average is not None:
                average.update_parameters(model)
            value = ctx.mean(loss.detach())  # the global batch's loss
            losses.append(value)
            bar.set_postfix(loss=f"{value:.4f}")
            if log is not None:
                log.write(json.dumps({"iteration": it + 1, "loss": value,
                                      "elapsed_s": round(time.perf_counter() - t0, 3)}) + "\n")
                log.flush()
                if (it + 1) % config.checkpoint_every == 0 or it + 1 == config.iterations:
                    _save_checkpoint(out, model, optimizer, average, gen, it + 1,
                                     time.perf_counter() - t0, config)
    finally:
        if log is not None:
            log.close()
        bar.close()
    if average is not None:
        model = average.module
    if ctx.is_distributed:  # back to plain batch norm (same state-dict keys)
        plain = build_network(config.net)
        plain.load_state_dict(model.state_dict())
        model = plain
    model = model.cpu().eval()
    machine = machine_description()
    if ctx.is_distributed:
        machine = f"{machine}; {ctx.describe()}"
    card = ModelCard(net=config.net, preprocess=config.preprocess, structure=config.structure,
                     data=data_description, iterations=config.iterations, seed=config.seed,
                     ema_decay=config.ema_decay,
                     train_time_s=round(time.perf_counter() - t0, 1), machine=machine)
    if out is not None:
        save_model(model, card, out / "model.pt")
    ctx.barrier()  # the model is on disk before any rank returns
    return TrainResult(model=model, card=card, losses=losses,
                       out_dir=Path(out_dir) if out_dir is not None else None)


def _resume_payload(path: Path, config: TrainConfig, *, resize: bool = False) -> dict[str, Any]:
    """Rank 0's checkpoint and loss history, or the reason it cannot be used (for every rank).

    ``resize``: another run's checkpoint (``continue_from``): its working size may differ and
    its loss log is read, not rewritten."""
    try:
        state = _load_checkpoint(path, config, resize=resize)
    except CheckpointError as exc:
        return {"error": str(exc)}
    return {"state": state, "losses": _read_losses(path.parent / "loss.jsonl",
                                                   int(state["iteration"]), rewrite=not resize),
            "path": str(path)}


# what a run saved before a TrainConfig field existed did in its place
_BEFORE_FIELD: dict[str, Any] = {"ema_decay": 0.0}


def _weight_average(model: torch.nn.Module,
                    decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """torch's AveragedModel as a debiased exponential moving average (None when ``decay`` is
    0), over the parameters and the batch-norm buffers (use_buffers: the average's running
    statistics then belong to its own weights, as nearly as an average allows, and no extra
    pass over the data is needed).

    Debiased as Adam debiases its moments: after ``t`` steps the average is
    ``sum_i (1 - d) d**(t - i) w_i / (1 - d**t)``, so the first iterate is not over-weighted
    (a plain EMA started from it keeps ``d**t`` of it: 45 % after 400 steps at 0.998)."""
    if not decay:
        return None

    def ema(averaged: torch.Tensor, current: torch.Tensor,
            n_averaged: torch.Tensor | int) -> torch.Tensor:
        if not averaged.is_floating_point():   # num_batches_tracked: a count, not averaged
            return current
        t = float(n_averaged) + 1.0             # this iterate's number
        return averaged + (current - averaged) * ((1.0 - decay) / (1.0 - decay ** t))

    return torch.optim.swa_utils.AveragedModel(model, avg_fn=ema, use_buffers=True)


def _save_checkpoint(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     average: torch.optim.swa_utils.AveragedModel | None, gen: torch.Generator,
                     iteration: int, elapsed_s: float, config: TrainConfig) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "generator": gen.get_state(), "iteration": iteration, "elapsed_s": elapsed_s}
    if average is not None:
        state["average"] = average.state_dict()
    with atomic_path(out / "checkpoint.pt") as tmp:
        torch.save(state, tmp)
    atomic_write_text(out / "checkpoint.json", json.dumps(
        {"iteration": iteration, "config": config.to_dict()}, indent=2) + "\n")


def _load_checkpoint(path: Path, config: TrainConfig, *, resize: bool = False) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: give a run's checkpoint.pt")
    sidecar = path.with_suffix(".json")
    if sidecar.exists():
        saved = json.loads(sidecar.read_text(encoding="utf-8"))["config"]
        mine = config.to_dict()
        if resize:   # the working size may change; the rest of the preprocessing may not
            saved = {**saved, "preprocess": {**saved.get("preprocess", {}),
                                             "size_zyx": mine["preprocess"]["size_zyx"]}}
        differ = sorted(k for k in mine if k not in ("iterations", "checkpoint_every")
                        and saved.get(k, _BEFORE_FIELD.get(k)) != mine[k])
        if differ:
            raise CheckpointError(
                f"cannot resume from {path}: it was trained with different settings ({differ}); "
                "use the same config, or a new output folder to start afresh")
    return read_weights_file(path, "checkpoint")


def _read_losses(path: Path, upto: int, *, rewrite: bool = True) -> list[float]:
    """Losses of the first ``upto`` iterations; later lines (after the checkpoint) are dropped
    (from the file too, when ``rewrite``)."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    rows = [r for r in rows if r["iteration"] <= upto]
    if rewrite:
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return [r["loss"] for r in rows]


def _generator(config: "SynthConfig") -> str:
    """How a training-data description names the generator: version and any departure from
    the default ranges (a reader of a card must be able to make the same data again)."""
    from .. import synth

    default = synth.SynthConfig()
    named = ("organ_contact_fraction", "liver_lesion_fraction", "pancreas_lobulation_fraction")
    changed = sorted(f for f in config.__dataclass_fields__ if f not in named
                     and getattr(config, f) != getattr(default, f))
    return (f"generator {synth.GENERATOR_VERSION}, soft tissue against the organs "
            f"{config.organ_contact_fraction:g}"
            + (f", liver lesions {config.liver_lesion_fraction:g}"
               if config.liver_lesion_fraction else "")
            + (f", lobulated pancreas {config.pancreas_lobulation_fraction:g}"
               if config.pancreas_lobulation_fraction else "")
            + (f", changed: {', '.join(changed)}" if changed else ""))


def load_training_cases(data: str, *, structure: str | int = "pancreas", layout: str = "auto",
                        limit: int | None = None, seed: int = 0,
                        btcv_direction: tuple[float, ...] | None = BTCV_DIRECTION,
                        liver_spleen_contact: float = 0.0, augment_first: int | None = None,
                        liver_cover_mm: tuple[float, float] | None = None,
                        synth_config: SynthConfig | None = None,
                        ) -> tuple[list[tuple[Volume, Volume]], str]:
    """Training cases ``(CT, mask)`` from a data source string, and a description of it.

    Sources:
        ``<folder>``: a data set in a layout :func:`iunet_nb.io.datasets.find_cases` reads.
        ``btcv-synth:<folder>``: synthetic CT made from each BTCV label map in the folder
        (:func:`iunet_nb.synth.generator.synthesize_ct`, case ``i`` seeded with ``seed + i``), on the
        label map's grid with its true direction (``btcv_direction``).
        ``phantom:<n>``: ``n`` procedural phantoms (:func:`iunet_nb.synth.phantom.make_phantom`).

    Args:
        btcv_direction: direction BTCV label maps (and images) are read with instead of their
            header's (:func:`iunet_nb.io.datasets.find_cases`); default
            :data:`~iunet_nb.io.datasets.BTCV_DIRECTION`, the shared maps' true orientation
            (their header mirrors x); None trusts the header.
        liver_spleen_contact: ``btcv-synth`` only: probability per label map of
            :func:`iunet_nb.synth.phantom.grow_liver_to_spleen` before synthesis (an anatomical
            augmentation; its draw is seeded with ``10_000 + seed + i``, apart from the CT's).
            Default 0 (off).
        augment_first: apply it only to the first ``augment_first`` maps (None: all), so
            held-out cases keep their anatomy.
        liver_cover_mm: with ``liver_spleen_contact``, the grown liver also spreads over the
            spleen's surface this far (range in mm) from the contact
            (``grow_liver_to_spleen(cover_mm=)``); None: the bridge alone.
        synth_config: ``btcv-synth`` only: the generator's parameter ranges (None:
            :class:`iunet_nb.synth.generator.SynthConfig` defaults).
    """
    from tqdm.auto import tqdm

    from .. import synth
    from ..io import datasets

    if not (isinstance(liver_spleen_contact, (int, float)) and 0 <= liver_spleen_contact <= 1):
        raise ConfigError(f"liver_spleen_contact must be a probability in [0, 1], got "
                          f"{liver_spleen_contact!r}")
    if data.startswith("phantom:"):
        try:
            n = int(data.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"'phantom:<n>' needs a number of cases, got {data!r}") from None
        cfg = synth_config or synth.SynthConfig()
        cases = [synth.make_phantom(rng=seed + i, config=cfg) for i in range(n)]
        return cases, (f"{n} procedural phantoms ({_generator(cfg)}, seeds {seed}.."
                       f"{seed + n - 1})")
    if data.startswith("btcv-synth:"):
        root = data.split(":", 1)[1]
        label_cases = datasets.find_cases(root, structure=structure, layout="btcv",
                                          btcv_direction=btcv_direction)[:limit]
        value = label_cases[0].label_value if label_cases else None
        cfg = synth_config or synth.SynthConfig()
        cases = []
        for i, case in enumerate(tqdm(label_cases, desc="Synthesising CT", unit="case",
                                          disable=not is_main())):
            labels = case.read_labels()  # the true direction, not the header's
            if liver_spleen_contact > 0 and (augment_first is None or i < augment_first):
                grow_rng = np.random.default_rng(10_000 + seed + i)
                if grow_rng.random() < liver_spleen_contact:
                    labels = synth.grow_liver_to_spleen(labels, grow_rng,
                                                        cover_mm=liver_cover_mm)
            ct = synth.synthesize_ct(labels, rng=seed + i, config=cfg)
            mask = labels.with_array((labels.array == value).astype(np.uint8))
            cases.append((ct, mask))
        ids = [c.case_id for c in label_cases]
        extra = (f", liver grown to the spleen with probability {liver_spleen_contact:g}"
                 + ("" if liver_cover_mm is None else
                    " and spread over it {:g}-{:g} mm from the contact".format(*liver_cover_mm))
                 + ("" if augment_first is None else f" in the first {augment_first}")
                 if liver_spleen_contact > 0 else "")
        return cases, (f"synthetic CT ({_generator(cfg)}) from {len(ids)} BTCV label maps "
                       f"({ids[0]}..{ids[-1]}), "
                       f"seeds {seed}..{seed + len(ids) - 1}, target label {value}{extra}")
    found = datasets.find_cases(data, structure=structure, layout=layout,
                                btcv_direction=btcv_direction)[:limit]
    cases = []
    for case in tqdm(found, desc="Loading cases", unit="case", disable=not is_main()):
        image, mask = case.load()
        if image is None:
            raise InputError(f"case {case.case_id} has no image (label maps only); use "
                             f"'btcv-synth:{data}' to synthesise CT from its label maps")
        cases.append((image, mask))
    return cases, f"{len(cases)} cases from {data} ({found[0].source if found else layout})"


def parse_phases(text: str) -> tuple[list[str], np.ndarray]:
    """``"portal_venous:0.4,arterial:0.2"`` -> (names, normalised weights); a missing weight is 1.

    Raises:
        ConfigError: an unknown phase or a weight that is not a positive number.
    """
    from ..synth.phases import PHASES

    names, weights = [], []
    for part in text.split(","):
        name, _, w = part.partition(":")
        name = name.strip()
        if name not in PHASES:
            raise ConfigError(f"unknown contrast phase {name!r} in {text!r}; known: "
                              f"{', '.join(PHASES)}")
        try:
            weight = float(w or 1)
        except ValueError:
            weight = -1.0
        if not weight > 0:
            raise ConfigError(f"the weight of phase {name!r} must be a positive number, got {w!r}")
        names.append(name)
        weights.append(weight)
    p = np.asarray(weights, float)
    return names, p / p.sum()


def randomised_cases(maps: "list[Case]", syntheses: int, phantoms: int, seed: int,
                     phases: tuple[list[str], np.ndarray], wide_quality: bool,
                     counts: dict[str, int] | None = None,
                     base: "SynthConfig | None" = None,
                     ) -> "Iterator[tuple[Volume, Volume]]":
    """Synthetic training cases ``(CT, mask)`` with randomised appearance, made one at a time.

    Each label map is synthesised ``syntheses`` times (seed ``seed + 100 * (j + 1) + i`` for
    synthesis ``j`` of map ``i``), then ``phantoms`` procedural phantoms (seeds ``seed + 1000
    + k``), each in a contrast phase drawn from ``phases`` (:func:`parse_phases`; the draws
    come from ``seed + 7``) with :func:`iunet_nb.synth.phases.phase_config` (``wide_quality``: wide
    noise, blur and slice ranges) on top of ``base`` (default ``SynthConfig()``: e.g. a
    lobulated pancreas). ``counts`` (if given) tallies the phases drawn.

    Args:
        maps: BTCV label-map cases (:func:`iunet_nb.io.datasets.find_cases`, layout ``btcv``);
            the target is each case's ``label_value``.
    """
    from tqdm.auto import tqdm

    from .. import synth

    rng = np.random.default_rng(seed + 7)
    names, p = phases
    jobs = [("map", i, j) for j in range(syntheses) for i in range(len(maps))]
    jobs += [("phantom", k, 0) for k in range(phantoms)]
    for kind, i, j in tqdm(jobs, desc="Synthesising CT", unit="case", disable=not is_main()):
        phase = names[rng.choice(len(names), p=p)]
        if counts is not None:
            counts[phase] = counts.get(phase, 0) + 1
        cfg = synth.phase_config(phase, wide_quality=wide_quality, base=base)
        if kind == "phantom":
            yield synth.make_phantom(rng=seed + 1000 + i, config=cfg)
            continue
        labels = maps[i].read_labels()
        ct = synth.synthesize_ct(labels, rng=seed + 100 * (j + 1) + i, config=cfg)
        yield ct, labels.with_array((labels.array == maps[i].label_value).astype(np.uint8))
