"""Helpers shared by the seed papers' systems: working grids, windowing, saving, seeding.

Private to :mod:`iunet_nb.systems`; every public name of a system lives in its own module.

Grid convention (the same as :mod:`iunet_nb.model.preprocess`): resampling a ``(z, y, x)`` array of
``n`` voxels to ``m`` voxels uses ``torch.nn.functional.interpolate(..., align_corners=False)``
with an explicit size, so the first and last voxel *edges* of both grids coincide and the
inverse resampling maps every voxel centre back to the same physical point.

Orientation: every system trains and predicts on volumes brought to patient (LPS) array order
first (:func:`_lps` / :func:`_lps_pair`, exact transposes and flips from the direction matrix,
:func:`iunet_nb.model.preprocess.reorient_to_lps`), and maps its outputs back to the CT's own array
order, so a CT stored in another axis order (a NIfTI stored right-to-left, a DICOM series,
...) is sliced along the same anatomical views and gives the same result in physical space.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CheckpointError, ConfigError, InputError
from ..io._atomic import atomic_path, atomic_write_text
from ..io.volume import Volume
from ..model.checkpoint import load_state_checked, machine_description, read_weights_file, select_device
from ..model.preprocess import lps_orientation, reorient_to_lps

__all__: list[str] = []


def _check_volume(image: Any, what: str = "image") -> Volume:
    if not isinstance(image, Volume):
        raise InputError(f"{what} must be an iunet_nb.Volume (array + geometry), got "
                         f"{type(image).__name__}; read it with iunet_nb.read_image")
    arr = image.array
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"{what} must be real-valued, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{what} holds NaN or infinite values; fill them (e.g. with -1024 HU) "
                         "first")
    return image


def _check_pair(ct: Any, mask: Any, i: int) -> tuple[Volume, Volume]:
    _check_volume(ct, f"case {i} CT")
    if not isinstance(mask, Volume):
        raise InputError(f"case {i}: the mask must be a Volume, got {type(mask).__name__}")
    if ct.shape != mask.shape:
        raise InputError(f"case {i}: CT shape {ct.shape} != mask shape {mask.shape}; give "
                         "each CT with the mask drawn on its own grid")
    return ct, mask


class _Orientation:
    """Maps arrays and boxes of a CT's LPS-ordered copy back to the CT's own array order."""

    def __init__(self, geometry: Any) -> None:
        self.axes, self.flips = lps_orientation(geometry)
        self.identity = self.axes == (0, 1, 2) and not any(self.flips)

    def array_back(self, array: np.ndarray) -> np.ndarray:
        """``(..., Z, Y, X)`` in LPS order -> the CT's array order (contiguous)."""
        arr = np.asarray(array)
        if self.identity:
            return arr
        lead = arr.ndim - 3
        flip_axes = tuple(lead + w for w in range(3) if self.flips[w])
        out = np.flip(arr, flip_axes) if flip_axes else arr
        inverse = [0, 0, 0]
        for w, a in enumerate(self.axes):
            inverse[a] = w
        return np.ascontiguousarray(np.transpose(out, tuple(range(lead))
                                                 + tuple(lead + w for w in inverse)))

    def box_back(self, lo: Sequence[int], hi: Sequence[int], shape: Sequence[int],
                 ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """A box ``[lo, hi)`` on an LPS-ordered grid of ``shape`` -> the same voxels' box on
        that grid in the CT's array order."""
        out_lo, out_hi = [0, 0, 0], [0, 0, 0]
        for w, a in enumerate(self.axes):
            n = int(shape[w])
            out_lo[a], out_hi[a] = ((n - int(hi[w]), n - int(lo[w])) if self.flips[w]
                                    else (int(lo[w]), int(hi[w])))
        return tuple(out_lo), tuple(out_hi)


def _lps(ct: Volume) -> tuple[Volume, _Orientation]:
    """``ct`` in LPS array order and the map back (see the module docstring)."""
    return reorient_to_lps(ct), _Orientation(ct.geometry)


def _lps_pair(ct: Volume, mask: Volume) -> tuple[Volume, Volume]:
    """A training pair in LPS order; the mask follows the CT voxel by voxel (CT's direction)."""
    lps = reorient_to_lps(ct)
    if lps is ct:
        return ct, mask
    moved = reorient_to_lps(Volume(mask.array, ct.geometry, dict(mask.meta)))
    return lps, moved


def _working_shape(shape: Sequence[int], spacing_mm: Sequence[float],
                   voxel_mm: Sequence[float] | None,
                   scale: Sequence[float] | None = None) -> tuple[int, int, int]:
    """Shape of the working grid: ``voxel_mm`` (z, y, x) spacing, or ``scale`` per axis."""
    if voxel_mm is not None:
        out = [max(1, int(round(n * s / v))) for n, s, v in zip(shape, spacing_mm, voxel_mm)]
    elif scale is not None:
        out = [max(1, int(round(n * f))) for n, f in zip(shape, scale)]
    else:
        out = [int(n) for n in shape]
    return (out[0], out[1], out[2])


def _resample(array: np.ndarray | torch.Tensor, size: Sequence[int],
              mode: str = "trilinear") -> torch.Tensor:
    """Resample the last 3 axes of a float array to ``size`` (align_corners=False)."""
    t = torch.as_tensor(np.ascontiguousarray(array) if isinstance(array, np.ndarray) else array)
    t = t.float()
    size = tuple(int(s) for s in size)
    lead = t.shape[:-3]
    if tuple(t.shape[-3:]) == size:
        return t.clone()
    x = t.reshape(1, -1, *t.shape[-3:])
    kw = {"align_corners": False} if mode == "trilinear" else {}
    out = F.interpolate(x, size=size, mode=mode, **kw)
    return out.reshape(*lead, *size)


def _window(array: np.ndarray, hu_window: Sequence[float]) -> np.ndarray:
    """Clip HU to ``hu_window`` and map it linearly to [-1, 1] (float32)."""
    low, high = float(hu_window[0]), float(hu_window[1])
    out = np.clip(np.asarray(array, dtype=np.float32), low, high)
    return (out - low) * np.float32(2.0 / (high - low)) - np.float32(1.0)


def _check_window(name: str, window: Sequence[float]) -> None:
    w = tuple(window)
    if len(w) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in w) \
            or not w[0] < w[1]:
        raise ConfigError(f"{name} must be two finite numbers (low, high) with low < high, "
                          f"got {window!r}")


def _check_version(owner: str, version: int) -> None:
    if version != 1:
        raise ConfigError(f"{owner}.version {version} is not supported (1 only)")


def _check_positive_int(owner: str, **values: Any) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{owner}.{name} must be a positive integer, got {value!r}")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    """DSC of two binary arrays; 1.0 when both are empty."""
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def _bbox(mask: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """``(lo, hi)`` (hi exclusive) of the non-zero voxels, or None when empty."""
    nz = np.nonzero(mask)
    if nz[0].size == 0:
        return None
    return tuple(int(a.min()) for a in nz), tuple(int(a.max()) + 1 for a in nz)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generator inside the block only (initial weights), then restore."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def _now() -> float:
    return time.perf_counter()


def _save_system(system: str, model: torch.nn.Module, config: Any, path: str | os.PathLike,
                 extra: dict[str, Any] | None = None) -> Path:
    """``path`` (state dict) + ``path.with_suffix('.json')`` (config + provenance), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    card = {"system": system, "config": config.to_dict(), **(extra or {})}
    if "machine" not in card:
        card["machine"] = machine_description()
    atomic_write_text(path.with_suffix(".json"), json.dumps(card, indent=2, sort_keys=True) + "\n")
    return path


def _load_card(system: str, path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    path = Path(path)
    card_path = path.with_suffix(".json")
    if not path.is_file():
        raise CheckpointError(f"{system} weights not found: {path}")
    if not card_path.is_file():
        raise CheckpointError(f"{system} card {card_path} is missing; it must sit next to the "
                              ".pt file (it records the configuration the weights belong to)")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"card {card_path} is not valid JSON: {exc}") from exc
    if card.get("system") != system:
        raise CheckpointError(f"{path} holds a {card.get('system')!r} model, not a {system!r} "
                              "one; load it with the matching system's loader")
    return path, card


def _load_state(model: torch.nn.Module, path: Path, system: str) -> None:
    state = read_weights_file(path, f"{system} weights")
    load_state_checked(model, state,
                       f"weights {path} do not match the {system} configuration in its card",
                       "load them with the card they were saved with")


def _load_system(system: str, model_type: type, config_type: Any, path: str | os.PathLike,
                 device: str | torch.device | None) -> Any:
    """A system's model from ``path`` and its card (``weights_only=True``), in eval mode."""
    path, card = _load_card(system, path)
    model = model_type(config_type.from_dict(card["config"]))
    _load_state(model, path, system)
    return model.to(_device(device)).eval()


def _device(device: str | torch.device | None) -> torch.device:
    return select_device(device)


def _bundled_asset(file_name: str) -> Path:
    """Path of a shipped system's weights file in ``iunet_nb/assets``."""
    from importlib import resources

    return Path(str(resources.files("iunet_nb") / "assets" / file_name))


def _checked_bundled(path: Path, sha256: str, what: str, remedy: str) -> Path:
    """``path``, the shipped weights, SHA-256-checked like the bundled iUnet (no download).

    Raises:
        CheckpointError: the file is missing or not the one shipped.
    """
    from ..model.checkpoint import file_sha256

    if not path.is_file():
        raise CheckpointError(f"the bundled {what} {path} is missing from this installation; "
                              f"reinstall iunet-nb or {remedy}")
    digest = file_sha256(path)
    if digest != sha256:
        raise CheckpointError(f"{path} is not the shipped {what} (SHA-256 {digest[:12]}..., "
                              f"expected {sha256[:12]}...); reinstall iunet-nb")
    return path


# ----------------------------------------------------------------------------------- training
def _check_training(system: str, config: Any, config_type: type, cases: Sequence[Any],
                    what: str = "(CT, mask)") -> None:
    """The checks every ``train_<system>`` makes before it reads any case."""
    if not isinstance(config, config_type):
        raise ConfigError(f"expected a {config_type.__name__}, got {type(config).__name__}")
    if len(cases) == 0:
        raise InputError(f"train_{system} needs at least one {what} case")


def _fit(model: torch.nn.Module, batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
         loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], iterations: int,
         lr: float, device: torch.device, desc: str, progress: bool, *, leave: bool = True,
         lr_final: float | None = None,
         on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """The systems' one training loop: Adam on ``model`` for ``iterations`` steps.

    Each step draws ``(x, y) = batch()`` (CPU tensors; every random draw is the caller's, so
    a seeded generator gives the same run), moves them to ``device`` and minimises
    ``loss_of(x, y)``. The learning rate is ``lr`` throughout, or, with ``lr_final``, falls
    from ``lr`` at the first step to ``lr_final`` at the last along a half cosine (a high rate
    learns fast early, a low one settles the weights late). The model ends in eval mode on
    the CPU. ``on_step(i, loss)`` (if given) is called after step ``i`` (0-based), e.g. to
    save intermediate weights.

    Returns:
        The loss of every step.
    """
    from tqdm.auto import tqdm

    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses: list[float] = []
    for i in tqdm(range(iterations), desc=desc, unit="it", disable=not progress, leave=leave):
        if lr_final is not None:
            t = i / max(1, iterations - 1)
            for group in opt.param_groups:
                group["lr"] = lr_final + 0.5 * (lr - lr_final) * (1.0 + math.cos(math.pi * t))
        x, y = batch()
        loss = loss_of(x.to(device), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(i, losses[-1])
    model.cpu().eval()
    return losses


def _write_training(model: Any, out_dir: str | os.PathLike | None, losses: Any,
                    **card: Any) -> Path | None:
    """``out_dir/model.pt`` + its card (``card`` plus the machine) + ``losses.json``; None
    (nothing written) when ``out_dir`` is None."""
    if out_dir is None:
        return None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.pt", machine=machine_description(), **card)
    atomic_write_text(out / "losses.json", json.dumps(losses) + "\n")
    return out


# ------------------------------------------------------------------- training scripts' runs
class TrainingRun:
    """What the systems' training scripts (``scripts/train_roth.py``, ``train_kloenne.py``)
    record around :func:`train_roth` / :func:`train_kloenne`: the clock, the code version at
    the start (before anyone can commit past it), periodic snapshots and the final card.

    Args:
        out: the run's folder (``model.pt``, ``model.json``, ``losses.json``, ``snapshot.pt``).
        script: the command line as a user would type it again.
        data: the training data's description (the card's ``data``).
        threads: torch threads, for the card's budget line.
        save_every: steps between snapshots (0: none).
    """

    def __init__(self, out: Path, script: str, data: str, threads: int, save_every: int) -> None:
        import datetime

        from ..model.checkpoint import code_version

        self.out, self.script, self.data = Path(out), script, data
        self.threads, self.save_every = threads, save_every
        self.t0, self.cpu0 = time.perf_counter(), time.process_time()
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.commit = code_version()

    def on_step(self, iterations: int) -> Callable[[int, float, torch.nn.Module], None]:
        """The ``on_step`` callback: every ``save_every`` steps but the last, the model in
        training is written to ``out/snapshot.pt`` with its card."""
        def snapshot(i: int, _loss: float, model: torch.nn.Module) -> None:
            if self.save_every and (i + 1) % self.save_every == 0 and i + 1 < iterations:
                model.save(self.out / "snapshot.pt", data=self.data, iterations_done=i + 1,
                           elapsed_s=round(time.perf_counter() - self.t0, 1))
                print(f"step {i + 1}: {time.perf_counter() - self.t0:.0f} s, snapshot written",
                      flush=True)
        return snapshot

    def finish(self, model: torch.nn.Module, losses: Sequence[float], iterations: int,
               cases: int, ship_to: Path | None = None, **extra: Any) -> Path:
        """Write ``model.pt`` with its card (data, date, code version, command, budget, times;
        ``extra`` too) and ``losses.json``; with ``ship_to``, copy both files there. Returns
        the model's path."""
        import shutil

        elapsed = round(time.perf_counter() - self.t0, 1)
        cpu = round(time.process_time() - self.cpu0, 1)
        _write_training(
            model, self.out, list(losses), data=self.data,
            date=self.started.date().isoformat(), commit=self.commit, script=self.script,
            budget=f"{cpu / 60:.1f} CPU min ({elapsed / 60:.1f} min wall on a shared machine) "
                   f"of {self.threads} thread(s), synthesis included, {iterations} steps",
            train_time_s=elapsed, train_cpu_s=cpu, cases=cases, **extra)
        path = self.out / "model.pt"
        print(f"trained {iterations} steps on {cases} cases in {elapsed:.0f} s ({cpu:.0f} CPU "
              f"s); last 100 losses {np.mean(losses[-100:]):.4f}; written {path}")
        if ship_to is not None:
            shutil.copyfile(path, ship_to)
            shutil.copyfile(path.with_suffix(".json"), ship_to.with_suffix(".json"))
            print(f"shipped: {ship_to}")
        return path
