"""Model weights on disk: a ``torch.save`` state dict plus a JSON :class:`ModelCard` sidecar.

Weights are always loaded with ``weights_only=True`` (no pickled code runs), and a card that
does not match the weights gives a :class:`~iunet_nb.errors.CheckpointError` that names both.
The package ships pretrained iUnet weights for the pancreas; :func:`load_bundled_model`
loads them without any download.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import platform
import re
import sys
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .._config import JsonConfig
from ..errors import CheckpointError, ConfigError
from ..io._atomic import atomic_path
from .nets import NetConfig, build_network
from .preprocess import PreprocessConfig

__all__ = ["ModelCard", "save_model", "load_model", "load_bundled_model", "bundled_model_path",
           "select_device", "machine_description", "file_sha256", "BUNDLED_SHA256",
           "load_bundled_detector", "bundled_detector_path", "read_weights_file",
           "load_state_checked", "autocast_dtype", "native_bfloat16", "PRECISIONS",
           "MIN_BFLOAT16_DEEPEST"]

BUNDLED_MODEL = "iunet_pancreas.pt"
BUNDLED_DETECTOR = "zhou_pancreas_detector.pt"
BUNDLED_DETECTOR_SHA256 = "67e6bcef9eceffa8807be3f49ac539e5071423ce4b185b1d4868f184baaeff3d"
# SHA-256 of the shipped weights: a damaged or swapped file is refused before it is loaded.
# Update it (and the card) whenever scripts/train_bundled_model.py retrains them.
BUNDLED_SHA256 = "402d1d108cd74d162f530e838af2871954e9e0480b45986080660e7dbe73fd16"


@dataclass(frozen=True)
class ModelCard(JsonConfig):
    """What a set of weights is: the network, its input pipeline and how it was made.

    Written as ``model.json`` next to ``model.pt``; the network and preprocessing configs are
    what :func:`load_model` needs to rebuild the model, the rest is provenance.
    ``ema_decay`` > 0: the weights are the moving average of the training iterates with that
    decay (:class:`iunet_nb.model.train.TrainConfig`); 0, and every card written before the field
    existed: the last iterate.
    """

    version: int = 1
    net: NetConfig = NetConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    structure: str = "pancreas"
    data: str = ""
    iterations: int = 0
    seed: int = 0
    train_time_s: float = 0.0
    machine: str = ""
    validation_dsc: float | None = None
    notes: str = ""
    ema_decay: float = 0.0



def select_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA when available (or when asked for and present), else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was requested but is not available; use device='cpu' or 'auto'")
    return device


#: what :func:`autocast_dtype` accepts
PRECISIONS = ("auto", "float32", "bfloat16")


def native_bfloat16(device: torch.device) -> bool:
    """True for a CPU with bfloat16 arithmetic in hardware (AVX512-BF16 or AMX)."""
    if device.type != "cpu":
        return False
    probes = [getattr(torch.cpu, name, None) for name in
              ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(p()) for p in probes if p is not None)


#: bfloat16 only where the network's deepest level has at least this many voxels along
#: every axis: with 2 or 1 (inputs of 16 or 8 voxels along an axis through a depth-4 U-Net)
#: torch 2.13's CPU kernels gave different gradients from run to run and, in training, NaN
#: within a few steps; with 3 or more (24 x 48 x 48 and larger) the same runs were
#: bit-identical and finite (measured on a 2-core AMD EPYC with AVX512-BF16).
MIN_BFLOAT16_DEEPEST = 3


def autocast_dtype(device: torch.device, precision: str = "auto",
                   deepest_zyx: Sequence[int] | None = None) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``, or None for plain float32.

    ``"auto"``: bfloat16 on a CPU that has it in hardware (:func:`native_bfloat16`; there a
    convolution runs 3-4x faster than in float32), float32 elsewhere (on a CPU without it
    bfloat16 is emulated and much slower; CUDA keeps float32). ``"float32"`` /
    ``"bfloat16"``: that, on any device. ``deepest_zyx``: the size of the network's deepest
    feature map for the input at hand; below :data:`MIN_BFLOAT16_DEEPEST` voxels along any
    axis the answer is float32 whatever ``precision`` says.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if deepest_zyx is not None and min(int(n) for n in deepest_zyx) < MIN_BFLOAT16_DEEPEST:
        return None
    if precision == "bfloat16" or (precision == "auto" and native_bfloat16(device)):
        return torch.bfloat16
    return None


def machine_description() -> str:
    """A short description of the machine for cards and benchmark records."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA), torch {torch.__version__}"
    return (f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")


def code_version(folder: str | os.PathLike | None = None) -> str:
    """``git describe --always --dirty`` of the checkout holding ``folder`` (default: this
    package), for a training card: the code that trained a model. "unknown" outside git."""
    import subprocess

    where = Path(folder) if folder is not None else Path(__file__).resolve().parent
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                              text=True, check=True, cwd=where).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def save_model(model: torch.nn.Module, card: ModelCard, path: str | os.PathLike) -> Path:
    """Write ``path`` (state dict) and ``path.with_suffix('.json')`` (the card), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    card.to_json(path.with_suffix(".json"))
    return path


def load_model(path: str | os.PathLike, device: str | torch.device | None = "cpu",
               ) -> tuple[torch.nn.Module, ModelCard]:
    """Rebuild a network from ``model.pt`` + ``model.json`` (``weights_only=True``).

    Raises:
        CheckpointError: a file is missing or corrupt, or the weights do not fit the card's
            architecture (e.g. weights of another network or channel count).
    """
    path = Path(path)
    card_path = path.with_suffix(".json")
    if not path.is_file():
        raise CheckpointError(f"model weights not found: {path}")
    if not card_path.is_file():
        raise CheckpointError(f"model card {card_path} is missing; it records the architecture "
                              "the weights belong to and must sit next to the .pt file")
    try:
        card = ModelCard.from_json(card_path)
    except Exception as exc:
        raise CheckpointError(f"model card {card_path} is not valid: {exc}") from exc
    model = build_network(card.net)
    state = read_weights_file(path, "weights")
    if isinstance(state, dict) and "model" in state and "optimizer" in state:
        state = state["model"]  # a training checkpoint
    load_state_checked(
        model, state,
        f"weights {path} do not match the architecture in {card_path} "
        f"({card.net.arch}, base_channels={card.net.base_channels})",
        "load them with the card they were saved with, or retrain for this architecture")
    return model.to(select_device(device)).eval(), card


def read_weights_file(path: str | os.PathLike, what: str = "weights") -> Any:
    """``torch.load(path, weights_only=True)`` with a one-line :class:`CheckpointError`.

    torch's own messages run to several lines and advise loading with pickled code enabled;
    this says which file, what is wrong with it (empty, truncated, not a PyTorch file, holds
    Python objects other than tensors) and what to do, never that advice.

    Args:
        path: a file written by ``torch.save``.
        what: how the message names the file ("weights", "zhou weights", "checkpoint").

    Raises:
        CheckpointError: the file cannot be read as plain tensors.
    """
    path = Path(path)
    again = "save or copy it again from its source"
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if size == 0:
        raise CheckpointError(f"cannot read {what} {path}: the file is empty (0 bytes); {again}")
    if head == b"PK\x03\x04":   # torch.save's zip format
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"cannot read {what} {path}: the file is truncated or damaged "
                                  f"({size} bytes, its zip index is missing); {again}")
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            names = []
        if not any(n.endswith("/data.pkl") for n in names):
            raise CheckpointError(f"cannot read {what} {path}: it is a zip archive but not a "
                                  "PyTorch file (no data.pkl in it); give the .pt file of a "
                                  "saved model")
    try:
        with warnings.catch_warnings():   # e.g. "Detected pickle protocol 4": ours is the word
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found and not _names_nothing(found.group(1)):
            raise CheckpointError(
                f"cannot read {what} {path}: it holds Python objects other than tensors "
                f"({found.group(1)}), which could run code when loaded, so it is refused; "
                "save only the state dict (torch.save(model.state_dict(), path))") from None
        if found:
            raise CheckpointError(f"cannot read {what} {path}: the file is truncated or damaged "
                                  f"({size} bytes); {again}") from None
        raise CheckpointError(f"cannot read {what} {path}: it is not a PyTorch file (torch.save "
                              "did not write it); give the .pt file of a saved model") from None
    except (EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"cannot read {what} {path}: the file is truncated or damaged "
                              f"({size} bytes); {again}") from exc
    except RuntimeError as exc:
        if "unexpected EOF" in str(exc) or head == b"PK\x03\x04":   # cut short
            raise CheckpointError(f"cannot read {what} {path}: the file is truncated or damaged "
                                  f"({size} bytes); {again}") from None
        raise CheckpointError(f"cannot read {what} {path}: it is not a PyTorch file (torch.save "
                              "did not write it); give the .pt file of a saved model") from None
    except Exception:   # a text file, random bytes: torch fails in arbitrary ways
        raise CheckpointError(f"cannot read {what} {path}: it is not a PyTorch file (torch.save "
                              "did not write it); give the .pt file of a saved model") from None


def load_state_checked(model: torch.nn.Module, state: Any, mismatch: str, todo: str) -> None:
    """``model.load_state_dict(state)`` with a one-line :class:`CheckpointError`.

    Args:
        model: the network the weights should fit.
        state: what :func:`read_weights_file` returned.
        mismatch: the start of the message ("weights X do not match ...").
        todo: what the user should do, appended after the counts.
    """
    if not isinstance(state, dict):
        raise CheckpointError(f"{mismatch}: the file holds {type(state).__name__} rather than a "
                              f"state dict of tensors; {todo}")
    mine = model.state_dict()
    missing = [k for k in mine if k not in state]
    unexpected = [k for k in state if k not in mine]
    shaped = [k for k in mine if isinstance(state.get(k), torch.Tensor)
              and tuple(state[k].shape) != tuple(mine[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} of {len(mine)} tensors missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if shaped:
        k = shaped[0]
        parts.append(f"{len(shaped)} of another shape (e.g. {k}: "
                     f"{'x'.join(map(str, state[k].shape))} in the file, "
                     f"{'x'.join(map(str, mine[k].shape))} here)")
    if parts:
        raise CheckpointError(f"{mismatch}: {', '.join(parts)}; {todo}")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:  # dtypes or anything the counts above miss
        reason = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{mismatch}: {reason}; {todo}") from exc


def _names_nothing(name: str) -> bool:
    """Whether ``module.attr`` names nothing in a module already imported (as a pickle cut
    short inside a name does, e.g. ``torch._utils._rebuild_tens``). Nothing is imported: a
    name in a hostile file must not run a module's code."""
    module, _, attr = name.rpartition(".")
    loaded = sys.modules.get(module)
    return loaded is not None and not hasattr(loaded, attr)


def bundled_model_path() -> Path:
    """Path of the pretrained pancreas iUnet shipped in ``iunet_nb/assets``."""
    return Path(str(resources.files("iunet_nb") / "assets" / BUNDLED_MODEL))


def bundled_detector_path() -> Path:
    """Path of the shipped automatic-box detector (Zhou coarse stage) for the pancreas."""
    return Path(str(resources.files("iunet_nb") / "assets" / BUNDLED_DETECTOR))


@functools.lru_cache(maxsize=2)
def load_bundled_detector(device: str = "cpu") -> Any:
    """The shipped automatic-box detector (a :class:`iunet_nb.systems.zhou.ZhouModel`), loaded
    once per process; SHA-256-checked like the bundled iUnet. Like every Zhou model it slices
    the CT in patient (LPS) order whatever the file's storage order
    (:func:`iunet_nb.systems.zhou.predict_zhou`) and returns probabilities on the CT's grid."""
    from ..systems.zhou import load_zhou

    path = bundled_detector_path()
    if not path.is_file():
        raise CheckpointError(
            f"the bundled box detector {path} is missing from this installation; draw a box, "
            "or retrain it with `python scripts/train_bundled_detector.py`")
    _check_sha256(path, BUNDLED_DETECTOR_SHA256)
    return load_zhou(path, device)


def load_bundled_model(device: str | torch.device | None = "cpu",
                       ) -> tuple[torch.nn.Module, ModelCard]:
    """The shipped pancreas iUnet and its card (no download, ever)."""
    path = bundled_model_path()
    if not path.is_file():
        raise CheckpointError(
            f"the bundled weights {path} are missing from this installation; reinstall iunet-nb "
            "or retrain them with `python scripts/train_bundled_model.py`")
    _check_sha256(path, BUNDLED_SHA256)
    return load_model(path, device)


def _check_sha256(path: Path, expected: str) -> None:
    digest = file_sha256(path)
    if digest != expected:
        raise CheckpointError(
            f"the bundled weights {path} do not have the SHA-256 this release shipped "
            f"({digest[:12]}... instead of {expected[:12]}...): the file is damaged or was "
            "replaced; reinstall iunet-nb, or load your own weights with load_model(path)")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
