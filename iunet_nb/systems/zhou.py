"""Coarse-to-fine pancreas segmentation of Zhou et al. (seed 004), trained from scratch.

Three 2D FCNs, one per view (coronal, sagittal, axial), each taking **3 neighbouring slices as
channels** and predicting those 3 slices at once (the paper's "3-slice segmentation"; a
slice seen by up to 3 inputs gets the mean of their predictions). Two sets of three:

* **coarse** models see whole slices; training uses only slices where the target covers at
  least ``min_target_fraction`` (1 %) of the slice;
* **fine** models see the slices of the reference 3D bounding box, cropped in plane to the box
  plus a random margin of ``fine_margin_px`` (10..20) pixels on each of the four sides,
  filled with the image (clipped at the image border).

Loss: soft DSC of the foreground (``1 - DSC``, the seed's DSC-loss layer). Test time: the
three coarse views are averaged and thresholded at 0.5 (S0); then, repeatedly, the 3D box of
the last mask plus a ``test_frame_px`` (15) pixel frame is cut out and segmented by the fine
models (three views averaged, threshold 0.5) until the inter-iteration DSC exceeds
``stop_dsc`` (0.95) or ``max_iterations`` (10) is reached.

Departures from the seed, by necessity or for CPU training:

* **No ImageNet weights.** The seed initialises FCN-8s from VGG-16 pretrained on ImageNet,
  which cannot be downloaded here. :class:`FCN2D` is a VGG-16-shaped FCN-8s (5 blocks of
  2-2-3-3-3 convolutions, 64-128-256-512-512 channels at full scale, score layers fused at
  1/8, 1/16 and 1/32) trained **from scratch**; it adds batch norm after each convolution
  (training a 16-layer network from scratch without it is unreliable) and uses 3x3
  convolutions in place of the 7x7/4096-channel fc6/fc7.
* **Adam** instead of SGD (the seed's fixed lr 1e-5 is kept as the default). A mini-batch is
  one slice stack as in the seed (``batch_size=1``); a larger batch holds stacks of ONE
  random case (fine: with one margin draw), so that they have the same size; the soft DSC is
  computed per stack and averaged.
* **Intensity**: HU clipped to ``hu_window`` ([-100, 240], as the authors' released code
  does; the seed text gives no window) and mapped to [-1, 1].
* ``voxel_mm``: the seed works on the native grid (``None``). :meth:`ZhouConfig.reduced`
  resamples to 4 mm voxels, shrinks the networks and the schedules, and scales the pixel
  margins and the frame to keep their size in mm (10..20 px of ~0.7 mm = 7..14 mm).

Example:
    >>> cfg = ZhouConfig.reduced()                              # doctest: +SKIP
    >>> result = train_zhou(cases, cfg)                         # doctest: +SKIP
    >>> pred = predict_zhou(ct, result.model)                   # doctest: +SKIP
    >>> pred.mask.array.dtype, pred.inter_iteration_dsc         # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._config import JsonConfig
from ..errors import ConfigError, InputError
from ..io.volume import Volume
from ..model.losses import soft_dice_loss
from ._common import (_bbox, _bundled_asset, _check_pair, _check_positive_int,
                      _check_training, _check_version, _check_volume, _check_window,
                      _checked_bundled, _device, _dice, _fit, _load_system, _lps, _lps_pair,
                      _now, _resample, _save_system, _seeded, _window, _working_shape,
                      _write_training)

__all__ = [
    "FCN2D",
    "VIEWS",
    "ZhouConfig",
    "ZhouModel",
    "ZhouPrediction",
    "ZhouTrainResult",
    "bundled_zhou_path",
    "load_bundled_zhou",
    "load_zhou",
    "predict_zhou",
    "train_zhou",
]

logger = logging.getLogger(__name__)

#: The three views and the array axis each one slices (arrays are (z, y, x)).
VIEWS: tuple[str, ...] = ("coronal", "sagittal", "axial")
_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}
_SYSTEM = "zhou"
#: The shipped coarse-to-fine pancreas system (``scripts/train_bundled_detector.py
#: --fine-iterations``) and the SHA-256 it is checked against. The automatic-box detector
#: (:func:`iunet_nb.model.checkpoint.load_bundled_detector`) is a separate, coarse-only model.
BUNDLED_ZHOU = "zhou_pancreas.pt"
BUNDLED_ZHOU_SHA256 = "68f584ccfd72a585e0a0936d906eccdb989296ece9c8b244208e37454ae42787"
_PRED_BATCH = 16


@dataclass(frozen=True)
class ZhouConfig(JsonConfig):
    """Settings of the coarse-to-fine system (defaults: the seed's full scale, for GPUs).

    Args:
        version: config schema version (1).
        hu_window: HU clipped to ``(low, high)`` and mapped to [-1, 1].
        voxel_mm: working voxel size ``(z, y, x)`` mm, or None for the CT's own grid (seed).
        base_channels: channels of the first FCN block (VGG-16: 64); later blocks double up
            to ``8 * base_channels``.
        depth: FCN blocks, each ending in a 2x2 max-pool (VGG-16: 5; at least 3, because
            scores are fused from the last three).
        coarse_iterations: optimiser steps per coarse view model (seed: 80,000).
        fine_iterations: optimiser steps per fine view model (seed: 50,000).
        batch_size: slice stacks per step (seed: 1).
        lr: Adam learning rate (seed: fixed 1e-5).
        min_target_fraction: coarse training uses slices where the target covers at least
            this fraction of the slice (seed: 0.01).
        fine_margin_px: ``(low, high)`` inclusive range of the random margin, in working-grid
            pixels, added on each side of the reference box for fine training (seed: 10..20).
        test_frame_px: frame in pixels added around the predicted 3D box at test time (15).
        max_iterations: at most this many fine iterations (10).
        stop_dsc: stop when DSC(S(t-1), S(t)) exceeds this (0.95).
        seed: seeds the initial weights and the sampling of slices and margins.

    Raises:
        ConfigError: a value of the wrong type or out of range.
    """

    version: int = 1
    hu_window: tuple[float, float] = (-100.0, 240.0)
    voxel_mm: tuple[float, float, float] | None = None
    base_channels: int = 64
    depth: int = 5
    coarse_iterations: int = 80000
    fine_iterations: int = 50000
    batch_size: int = 1
    lr: float = 1e-5
    min_target_fraction: float = 0.01
    fine_margin_px: tuple[int, int] = (10, 20)
    test_frame_px: int = 15
    max_iterations: int = 10
    stop_dsc: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        _check_version("ZhouConfig", self.version)
        _check_window("ZhouConfig.hu_window", self.hu_window)
        if self.voxel_mm is not None:
            v = tuple(self.voxel_mm)
            if len(v) != 3 or not all(isinstance(s, (int, float)) and s > 0 for s in v):
                raise ConfigError(f"ZhouConfig.voxel_mm must be None or three positive sizes "
                                  f"(z, y, x) in mm, got {self.voxel_mm!r}")
            object.__setattr__(self, "voxel_mm", tuple(float(s) for s in v))
        _check_positive_int("ZhouConfig", base_channels=self.base_channels, depth=self.depth,
                            coarse_iterations=self.coarse_iterations,
                            fine_iterations=self.fine_iterations, batch_size=self.batch_size,
                            max_iterations=self.max_iterations)
        if self.depth < 3:
            raise ConfigError(f"ZhouConfig.depth must be >= 3 (FCN-8s fuses the last three "
                              f"blocks), got {self.depth}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise ConfigError(f"ZhouConfig.lr must be in (0, 1), got {self.lr!r}")
        if not 0 <= self.min_target_fraction < 1:
            raise ConfigError(f"ZhouConfig.min_target_fraction must be in [0, 1), got "
                              f"{self.min_target_fraction!r}")
        m = tuple(self.fine_margin_px)
        if len(m) != 2 or not all(isinstance(v, int) and v >= 0 for v in m) or m[0] > m[1]:
            raise ConfigError(f"ZhouConfig.fine_margin_px must be two integers 0 <= low <= high, "
                              f"got {self.fine_margin_px!r}")
        if not isinstance(self.test_frame_px, int) or self.test_frame_px < 0:
            raise ConfigError(f"ZhouConfig.test_frame_px must be an integer >= 0, got "
                              f"{self.test_frame_px!r}")
        if not 0 < self.stop_dsc <= 1:
            raise ConfigError(f"ZhouConfig.stop_dsc must be in (0, 1], got {self.stop_dsc!r}")

    @classmethod
    def reduced(cls, **changes: Any) -> ZhouConfig:
        """The documented CPU scale (533 s of training for 20 BTCV cases at 4 mm, one torch
        thread on a busy 2-core machine; see benchmarks/bench_systems.py).

        4 mm voxels; FCN with 4 blocks of 8-16-32-64 channels; 2000 coarse and 1000 fine
        steps per view with 4 slice stacks per step; Adam lr 1e-3; margins 2..4 px and a 3 px frame
        (the seed's 7..14 mm and ~10 mm at 4 mm voxels). Any field can be overridden.
        """
        base = dict(voxel_mm=(4.0, 4.0, 4.0), base_channels=8, depth=4, coarse_iterations=2000,
                    fine_iterations=1000, batch_size=4, lr=1e-3, fine_margin_px=(2, 4),
                    test_frame_px=3)
        base.update(changes)
        return cls(**base)


# ----------------------------------------------------------------------------------- network
class FCN2D(nn.Module):
    """A VGG-shaped FCN-8s for 2D slices of any size (no pretrained weights).

    Blocks of 3x3 convolutions (2, 2, 3, 3, 3, ... per block) with batch norm and ReLU, each
    followed by a 2x2 max-pool (``ceil_mode``, so odd sizes lose nothing); two more
    convolutions stand in for fc6/fc7; 1x1 score layers on the last block and on the outputs
    of the two blocks before it are summed after bilinear upsampling (FCN-8s skips), and the
    sum is upsampled to the input size.

    Args:
        in_channels: input channels (3 neighbouring slices).
        out_channels: output maps (one logit per input slice).
        base_channels: channels of block 1; block ``l`` has ``base * 2**min(l, 3)``.
        depth: number of blocks (>= 3).

    Shapes:
        ``(N, in_channels, H, W)`` float32 -> logits ``(N, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, base_channels: int = 64,
                 depth: int = 5) -> None:
        super().__init__()
        if depth < 3:
            raise ConfigError(f"FCN2D needs depth >= 3, got {depth}")
        widths = [base_channels * 2 ** min(level, 3) for level in range(depth)]
        self.blocks = nn.ModuleList()
        c = in_channels
        for level, w in enumerate(widths):
            layers: list[nn.Module] = []
            for _ in range(2 if level < 2 else 3):
                layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c = w
            self.blocks.append(nn.Sequential(*layers))
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        head = 2 * widths[-1]
        self.fc = nn.Sequential(nn.Conv2d(c, head, 3, padding=1), nn.BatchNorm2d(head),
                                nn.ReLU(inplace=True), nn.Conv2d(head, head, 1),
                                nn.BatchNorm2d(head), nn.ReLU(inplace=True))
        self.score = nn.Conv2d(head, out_channels, 1)
        self.score_skip1 = nn.Conv2d(widths[-2], out_channels, 1)
        self.score_skip2 = nn.Conv2d(widths[-3], out_channels, 1)
        self.depth = depth

    @property
    def min_size(self) -> int:
        """Inputs are padded to at least this size so that the head sees 2 x 2 pixels."""
        return 2 ** (self.depth + 1)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != 4:
            raise InputError(f"FCN2D expects (N, C, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        feats = []
        h = x
        for block in self.blocks:
            h = self.pool(block(h))
            feats.append(h)
        s = self.score(self.fc(h))
        s = _up(s, feats[-2]) + self.score_skip1(feats[-2])
        s = _up(s, feats[-3]) + self.score_skip2(feats[-3])
        return F.interpolate(s, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _up(s: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(s, size=like.shape[-2:], mode="bilinear", align_corners=False)


def _forward_padded(net: FCN2D, x: Tensor) -> Tensor:
    """Logits of ``x`` (N, 3, H, W); inputs smaller than ``net.min_size`` are edge-padded."""
    h, w = x.shape[-2:]
    ph, pw = max(0, net.min_size - h), max(0, net.min_size - w)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return net(x)[..., :h, :w]


class ZhouModel(nn.Module):
    """The six view models of the system plus its config.

    Attributes:
        config: the :class:`ZhouConfig` the models were built for.
        coarse: ``{"coronal", "sagittal", "axial"}`` -> :class:`FCN2D` on whole slices.
        fine: the same views -> :class:`FCN2D` on box crops.
    """

    def __init__(self, config: ZhouConfig = ZhouConfig()) -> None:
        super().__init__()
        if not isinstance(config, ZhouConfig):
            raise ConfigError(f"expected a ZhouConfig, got {type(config).__name__}")
        self.config = config

        def make() -> nn.ModuleDict:
            return nn.ModuleDict({v: FCN2D(3, 3, config.base_channels, config.depth)
                                  for v in VIEWS})

        self.coarse = make()
        self.fine = make()

    def organ_probability(self, image: Volume, device: str | torch.device | None = None, *,
                          stage: str = "coarse") -> np.ndarray:
        """Foreground probability on ``image``'s grid (the box detector interface).

        Args:
            image: CT in HU.
            device: None for CUDA when available.
            stage: ``"coarse"`` (three coarse views fused) or ``"fine"`` (after the
                coarse-to-fine iterations).

        Returns:
            float32 ``(z, y, x)`` probabilities in [0, 1].
        """
        if stage not in ("coarse", "fine"):
            raise ConfigError(f"stage must be 'coarse' or 'fine', got {stage!r}")
        pred = predict_zhou(image, self, device=device, fine=stage == "fine")
        return pred.probability

    def save(self, path: str | os.PathLike, **provenance: Any) -> Path:
        """Write ``path`` (state dict) and its ``.json`` card (config + provenance)."""
        return _save_system(_SYSTEM, self, self.config, path, provenance)


def load_zhou(path: str | os.PathLike, device: str | torch.device | None = "cpu") -> ZhouModel:
    """Load a :class:`ZhouModel` saved by :meth:`ZhouModel.save` (``weights_only=True``).

    Raises:
        CheckpointError: missing/corrupt files, a card of another system, or weights that do
            not fit the card's configuration.
    """
    return _load_system(_SYSTEM, ZhouModel, ZhouConfig, path, device)


def bundled_zhou_path() -> Path:
    """Path of the shipped coarse-to-fine pancreas system (``iunet_nb/assets``; its card says
    how it was trained and what it measures on real CT)."""
    return _bundled_asset(BUNDLED_ZHOU)


def load_bundled_zhou(device: str | torch.device | None = "cpu") -> ZhouModel:
    """The shipped coarse-to-fine pancreas system, SHA-256-checked (no download).

    Raises:
        CheckpointError: the file is missing or not the one shipped.
    """
    path = _checked_bundled(bundled_zhou_path(), BUNDLED_ZHOU_SHA256, "Zhou pancreas system",
                            "train one with `python scripts/train_bundled_detector.py "
                            "--fine-iterations N --out zhou.pt` and give it with --model")
    return load_zhou(path, device)


# ----------------------------------------------------------------------------------- data
def _to_working(ct: Volume, cfg: ZhouConfig) -> np.ndarray:
    shape = _working_shape(ct.shape, ct.spacing_mm, cfg.voxel_mm)
    windowed = _window(ct.array, cfg.hu_window)
    return _resample(windowed, shape).numpy()


def _mask_to_working(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    return (_resample((np.asarray(mask) != 0).astype(np.float32), shape).numpy() >= 0.5
            ).astype(np.float32)


def _slab(vol: np.ndarray, axis: int, i: int) -> np.ndarray:
    """Slices ``i-1, i, i+1`` (clamped at the ends) along ``axis`` as ``(3, A, B)``."""
    n = vol.shape[axis]
    idx = np.clip([i - 1, i, i + 1], 0, n - 1)
    return np.moveaxis(np.take(vol, idx, axis=axis), axis, 0)


def _inplane(axis: int) -> tuple[int, int]:
    return tuple(a for a in range(3) if a != axis)  # type: ignore[return-value]


@dataclass
class _Case:
    image: np.ndarray   # float32 working grid, windowed
    mask: np.ndarray    # float32 {0, 1} working grid
    lo: tuple[int, ...]
    hi: tuple[int, ...]


def _prepare_cases(cases: Sequence[tuple[Volume, Volume]], cfg: ZhouConfig) -> list[_Case]:
    out = []
    for i, (ct, mask) in enumerate(cases):
        _check_pair(ct, mask, i)
        ct, mask = _lps_pair(ct, mask)  # views are anatomical whatever the storage order
        image = _to_working(ct, cfg)
        m = _mask_to_working(mask.array, image.shape)
        bb = _bbox(m)
        if bb is None:
            logger.warning("zhou: case %d has no target voxel on the working grid; skipped", i)
            continue
        out.append(_Case(image, m, bb[0], bb[1]))
    if not out:
        raise InputError("no training case has a target on the working grid; check the masks "
                         "(and voxel_mm: a tiny organ can vanish at coarse voxels)")
    return out


def _coarse_index(cases: list[_Case], axis: int, min_fraction: float) -> list[list[int]]:
    """Per case, the slices along ``axis`` whose target fraction is >= ``min_fraction``."""
    index, any_target = [], []
    for case in cases:
        frac = case.mask.mean(axis=_inplane(axis))
        index.append([int(i) for i in np.flatnonzero(frac >= max(min_fraction, 1e-12))])
        any_target.append([int(i) for i in np.flatnonzero(frac > 0)])
    if not any(index):
        logger.warning("zhou: no slice along axis %d has >= %.1f %% target; using every slice "
                       "with any target", axis, 100 * min_fraction)
        index = any_target
    return index


def _coarse_sample(cases: list[_Case], index: list[list[int]], axis: int, n: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` eligible slice stacks of one random case: ``(n, 3, A, B)`` image and mask."""
    usable = [c for c in range(len(cases)) if index[c]]
    c = usable[int(rng.integers(len(usable)))]
    picks = rng.choice(index[c], size=n)
    return (np.stack([_slab(cases[c].image, axis, int(i)) for i in picks]),
            np.stack([_slab(cases[c].mask, axis, int(i)) for i in picks]))


def _fine_sample(cases: list[_Case], axis: int, margin: tuple[int, int], n: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` slice stacks of one case's reference box plus random margins (one draw)."""
    case = cases[int(rng.integers(len(cases)))]
    picks = rng.integers(case.lo[axis], case.hi[axis], size=n)
    a, b = _inplane(axis)
    m = rng.integers(margin[0], margin[1] + 1, size=4)  # top, bottom, left, right
    sa = slice(max(0, case.lo[a] - int(m[0])), min(case.image.shape[a], case.hi[a] + int(m[1])))
    sb = slice(max(0, case.lo[b] - int(m[2])), min(case.image.shape[b], case.hi[b] + int(m[3])))
    return (np.stack([_slab(case.image, axis, int(i))[:, sa, sb] for i in picks]),
            np.stack([_slab(case.mask, axis, int(i))[:, sa, sb] for i in picks]))


def _dsc_loss(logits: Tensor, target: Tensor) -> Tensor:
    """``1 - soft DSC`` of the foreground over the 3 predicted slices (seed's DSC loss)."""
    probs = torch.sigmoid(logits)
    return 1.0 + soft_dice_loss(probs[:, None], target[:, None])


# ----------------------------------------------------------------------------------- training
@dataclass
class ZhouTrainResult:
    """What :func:`train_zhou` returns.

    Attributes:
        model: the trained :class:`ZhouModel` (eval mode, CPU).
        losses: ``"coarse/axial"`` etc. -> loss per iteration.
        train_time_s: wall-clock training time.
        out_dir: where ``model.pt``/``model.json``/``losses.json`` were written, or None.
    """

    model: ZhouModel
    losses: dict[str, list[float]] = field(default_factory=dict)
    train_time_s: float = 0.0
    out_dir: Path | None = None


def _train_one(net: FCN2D, sample: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]],
               iterations: int, cfg: ZhouConfig, rng: np.random.Generator,
               dev: torch.device, desc: str, progress: bool) -> list[float]:
    def batch() -> tuple[Tensor, Tensor]:
        x, y = sample(rng)
        return (torch.from_numpy(np.ascontiguousarray(x)),
                torch.from_numpy(np.ascontiguousarray(y)))

    return _fit(net, batch, lambda x, y: _dsc_loss(_forward_padded(net, x), y), iterations,
                cfg.lr, dev, desc, progress, leave=False)


def train_zhou(cases: Sequence[tuple[Volume, Volume]], config: ZhouConfig = ZhouConfig(),
               out_dir: str | os.PathLike | None = None, *,
               device: str | torch.device | None = None, progress: bool = True,
               data_description: str = "") -> ZhouTrainResult:
    """Train the six view models (3 coarse, 3 fine) from scratch.

    Args:
        cases: ``(CT in HU, binary mask)`` pairs on the same grid.
        config: settings; :meth:`ZhouConfig.reduced` for a CPU.
        out_dir: if given, ``model.pt`` + ``model.json`` (config, data, time, machine) and
            ``losses.json`` are written there atomically.
        device: None for CUDA when available.
        progress: tqdm bars.
        data_description: recorded in the card.

    Returns:
        :class:`ZhouTrainResult`.

    Raises:
        InputError: no case, mismatched shapes, or no target voxel in any case.
    """
    _check_training(_SYSTEM, config, ZhouConfig, cases)
    t0 = _now()
    dev = _device(device)
    data = _prepare_cases(cases, config)
    with _seeded(config.seed):
        model = ZhouModel(config)
    rng = np.random.default_rng(config.seed)
    losses: dict[str, list[float]] = {}
    n = config.batch_size
    for view in VIEWS:
        axis = _AXIS[view]
        index = _coarse_index(data, axis, config.min_target_fraction)
        losses[f"coarse/{view}"] = _train_one(
            model.coarse[view], lambda g, a=axis, ix=index: _coarse_sample(data, ix, a, n, g),
            config.coarse_iterations, config, rng, dev, f"Zhou coarse {view}", progress)
        losses[f"fine/{view}"] = _train_one(
            model.fine[view], lambda g, a=axis: _fine_sample(data, a, config.fine_margin_px, n, g),
            config.fine_iterations, config, rng, dev, f"Zhou fine {view}", progress)
    elapsed = round(_now() - t0, 1)
    model.eval()
    out = _write_training(model, out_dir, losses, data=data_description, train_time_s=elapsed,
                          cases=len(data),
                          notes="trained from scratch (no ImageNet/VGG-16 weights)")
    logger.info("zhou: trained 6 view models on %d cases in %.1f s", len(data), elapsed)
    return ZhouTrainResult(model=model, losses=losses, train_time_s=elapsed, out_dir=out)


# ----------------------------------------------------------------------------------- inference
@torch.no_grad()
def _predict_view(net: FCN2D, vol: np.ndarray, axis: int, lo: Sequence[int],
                  hi: Sequence[int], dev: torch.device) -> np.ndarray:
    """Mean 3-slice probability inside the box ``[lo, hi)``; 0 outside."""
    a, b = _inplane(axis)
    sa, sb = slice(lo[a], hi[a]), slice(lo[b], hi[b])
    total = np.zeros(vol.shape, dtype=np.float32)
    count = np.zeros(vol.shape[axis], dtype=np.float32)
    idx = list(range(lo[axis], hi[axis]))
    for start in range(0, len(idx), _PRED_BATCH):
        chunk = idx[start:start + _PRED_BATCH]
        x = np.stack([_slab(vol, axis, i)[:, sa, sb] for i in chunk])
        prob = torch.sigmoid(_forward_padded(net, torch.from_numpy(x).to(dev))).cpu().numpy()
        for p, i in zip(prob, chunk):
            for k, j in enumerate((i - 1, i, i + 1)):
                if lo[axis] <= j < hi[axis]:
                    region = [slice(None)] * 3
                    region[axis], region[a], region[b] = j, sa, sb
                    total[tuple(region)] += p[k]
                    count[j] += 1
    shape = [1, 1, 1]
    shape[axis] = -1
    return total / np.maximum(count, 1).reshape(shape)


def _fused(models: nn.ModuleDict, vol: np.ndarray, lo: Sequence[int], hi: Sequence[int],
           dev: torch.device) -> np.ndarray:
    prob = np.zeros(vol.shape, dtype=np.float32)
    for view in VIEWS:
        net = models[view].to(dev).eval()
        prob += _predict_view(net, vol, _AXIS[view], lo, hi, dev)
    return prob / len(VIEWS)


@dataclass
class ZhouPrediction:
    """What :func:`predict_zhou` returns (masks on the CT's own grid and geometry).

    Attributes:
        mask: uint8 {0, 1} final segmentation.
        coarse_mask: uint8 {0, 1} fused coarse segmentation S0.
        probability: float32 probability behind ``mask`` (coarse or last fine iteration).
        inter_iteration_dsc: DSC(S(t-1), S(t)) for t = 1, 2, ... (working grid).
        boxes: the working-grid boxes ``(lo, hi)`` used by each fine iteration, with the axes
            in the CT's array order (the working grid itself is in LPS order: these are the
            same voxels' box on it with axes and flips undone).
        elapsed_s: wall-clock time.
    """

    mask: Volume
    coarse_mask: Volume
    probability: np.ndarray
    inter_iteration_dsc: list[float]
    boxes: list[tuple[tuple[int, ...], tuple[int, ...]]]
    elapsed_s: float

    @property
    def iterations(self) -> int:
        """Fine iterations run (0: coarse only)."""
        return len(self.inter_iteration_dsc)


def predict_zhou(ct: Volume, model: ZhouModel, *, device: str | torch.device | None = None,
                 fine: bool = True) -> ZhouPrediction:
    """Segment a CT: coarse fusion, then iterative fine segmentation in the predicted box.

    The CT is first brought to patient (LPS) array order (exact transposes/flips), so the
    axial, coronal and sagittal views are anatomical whatever the file's storage order; the
    outputs are mapped back to ``ct``'s own array.

    Args:
        ct: CT in HU.
        model: a trained :class:`ZhouModel`.
        device: None for CUDA when available.
        fine: False stops after the coarse stage (S0).

    Returns:
        :class:`ZhouPrediction`; masks are on ``ct``'s grid with its geometry.

    Raises:
        InputError: ``ct`` is not a finite real Volume.
    """
    _check_volume(ct, "ct")
    if not isinstance(model, ZhouModel):
        raise InputError(f"predict_zhou needs a ZhouModel, got {type(model).__name__}")
    t0 = _now()
    cfg = model.config
    dev = _device(device)
    original = ct
    ct, orientation = _lps(ct)
    vol = _to_working(ct, cfg)
    shape = vol.shape
    prob = _fused(model.coarse, vol, (0, 0, 0), shape, dev)
    seg = prob >= 0.5
    coarse = seg.copy()
    history: list[float] = []
    boxes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    if fine:
        for _ in range(cfg.max_iterations):
            bb = _bbox(seg)
            if bb is None:
                logger.warning("zhou: the segmentation is empty; no box for the fine stage")
                break
            f = cfg.test_frame_px
            lo = tuple(max(0, v - f) for v in bb[0])
            hi = tuple(min(n, v + f) for v, n in zip(bb[1], shape))
            boxes.append((lo, hi))
            prob = _fused(model.fine, vol, lo, hi, dev)
            new = prob >= 0.5
            history.append(_dice(seg, new))
            seg = new
            if history[-1] > cfg.stop_dsc:
                break
    full = _resample(prob, ct.shape).numpy().clip(0.0, 1.0).astype(np.float32)
    coarse_full = _resample(coarse.astype(np.float32), ct.shape).numpy() >= 0.5
    full = orientation.array_back(full)
    coarse_full = orientation.array_back(coarse_full)
    meta = {"source": "iunet_nb.systems.zhou", "iterations": len(history)}
    return ZhouPrediction(
        mask=Volume((full >= 0.5).astype(np.uint8), original.geometry, meta),
        coarse_mask=Volume(coarse_full.astype(np.uint8), original.geometry, meta),
        probability=full, inter_iteration_dsc=history,
        boxes=[orientation.box_back(lo, hi, shape) for lo, hi in boxes],
        elapsed_s=round(_now() - t0, 3))
