"""CT domain cues of Kloenne et al. (seed 003): robust 2D/3D U-Net and MS-D Net, stacked.

Pipeline (Algorithm 1 of the seed):

1. **Windowing** of each volume to its own ``percentiles`` (0.6, 0.99) grey-value range, then
   **z-score** with one mean/sd measured on a random sample of the *training* set
   (``stats_volumes`` volumes, ``stats_voxels`` voxels each); the two numbers are buffers of
   the model, so prediction uses the training statistics.
2. **Slice reduction**: each volume is reduced to ``n_slices`` (16) slices drawn at random,
   redrawn every time the volume is used; slices without the target are excluded in training.
   Slices are resized to ``slice_size`` (128 x 128).
3. **Augmentation** of ``p_augment`` of the batches (seed: 90 % in 2D, 80 % in 3D): Gaussian
   noise map, slice skipping (3D: the 16 slices are drawn from every second slice), slice
   interpolation (a slice becomes the mean of itself and its neighbour), rotation up to
   ``rotation_deg`` (16) degrees; the intensity range shift is applied to ``p_range_shift``
   (20 %) of the samples.
4. **Networks**, 2D (the 16 slices are a batch of images) or 3D (the 16 slices are a
   16 x 128 x 128 volume): ``"unet"`` (nnU-Net style: instance norm, LeakyReLU 0.01, two
   convolutions per level; 3D pools in plane only, the 16 drawn slices being far apart) and
   ``"msd"`` (Pelt & Sethian's mixed-scale dense net: every layer sees all earlier maps,
   3x3 convolutions dilated 1..10 cyclically, width 1, modified like the U-Net).
5. **Loss** 0.6 Tanimoto (smooth 1e-5) + 0.4 cross-entropy
   (:func:`iunet_nb.model.losses.tanimoto_ce_loss`), Adam (Kingma & Ba's defaults, lr 1e-3).
6. **Stacked ensemble**: the top-``k`` models of each kind by validation DSC; their softmax
   outputs are averaged (:class:`KloenneEnsemble`).
7. **Folds by slice count / thickness** (:func:`slice_count_folds`): cases sorted by number of
   slices (then thickness) and cut into contiguous blocks, so each test fold is unlike its
   training data.

Prediction covers every slice: 2D slice by slice; 3D on interleaved subsets of at most 16
slices (``j, j + s, j + 2s, ...``), which spread over the volume like the training draws.

Choices the seed leaves open (documented here): the number of training iterations (it trains
"until convergence"; default 10,000 steps); noise sd uniform in 0..``noise_sd`` (0.1 z-score
units); the range shift multiplies by ``U(1 - r, 1 + r)`` and adds ``U(-r, r)`` (r = 0.1);
slice skipping and interpolation each on half of the augmented samples; the "stacking" is a
mean of the members' probabilities (no learned meta-model is described).

Example:
    >>> cfg = KloenneConfig.reduced(arch="unet", dims=2)            # doctest: +SKIP
    >>> result = train_kloenne(cases, cfg)                          # doctest: +SKIP
    >>> mask = predict_kloenne(ct, result.model)                    # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
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
from ..model.losses import tanimoto_ce_loss
from ._common import (_bundled_asset, _check_pair, _check_positive_int, _check_training,
                      _check_version, _check_volume, _checked_bundled, _device, _dice, _fit,
                      _load_system, _lps, _lps_pair, _now, _save_system, _seeded,
                      _write_training)

__all__ = [
    "KloenneConfig",
    "KloenneEnsemble",
    "KloenneModel",
    "KloenneTrainResult",
    "MSDNet",
    "UNetND",
    "bundled_kloenne_path",
    "load_bundled_kloenne",
    "load_kloenne",
    "percentile_window",
    "predict_kloenne",
    "select_top_k",
    "slice_count_folds",
    "train_kloenne",
]

logger = logging.getLogger(__name__)
_SYSTEM = "kloenne"
_ARCHS = ("unet", "msd")
#: The shipped liver model (``scripts/train_kloenne.py``) and the SHA-256 it is checked against.
BUNDLED_KLOENNE = "kloenne_liver.pt"
BUNDLED_KLOENNE_SHA256 = "aed8be47634736fd58ae1bc4865c48b1c67ba5c530caf88e92880a55f3bef9c5"


@dataclass(frozen=True)
class KloenneConfig(JsonConfig):
    """Settings of one Kloenne model (defaults: the seed's full scale where it gives them).

    Args:
        version: schema version (1).
        arch: ``"unet"`` (nnU-Net style) or ``"msd"`` (MS-D Net).
        dims: 2 or 3.
        percentiles: per-volume window as quantiles in [0, 1] (seed: 0.6, 0.99).
        stats_volumes: training volumes sampled for the z-score statistics.
        stats_voxels: voxels sampled per such volume.
        n_slices: slices each volume is reduced to (16).
        slice_size: in-plane size after resizing (128).
        base_channels: U-Net width of the first level (nnU-Net: 32).
        depth: U-Net levels including the bottleneck (``slice_size`` must be divisible by
            ``2**(depth-1)``).
        msd_layers: MS-D Net depth (Pelt & Sethian: 100).
        msd_max_dilation: dilations cycle through 1..this (10).
        batch_size: 2D: slices per step (seed 28); 3D: volumes per step (seed 1); 0 picks
            the seed's value for ``dims``.
        iterations: optimiser steps (the seed trains until convergence; 10,000 here).
        lr: Adam learning rate (1e-3, Kingma & Ba's default).
        p_augment: fraction of augmented batches; negative picks the seed's (0.9 2D, 0.8 3D).
        p_range_shift: fraction of samples with an intensity range shift (0.2).
        range_shift: r of the shift (scale ``1 +- r``, offset ``+- r`` z-score units).
        noise_sd: largest noise sd (z-score units).
        rotation_deg: largest in-plane rotation (16).
        seed: seeds weights, statistics sample, slice draws and augmentation.
        background_slices: expected share of each draw's slices taken from slices WITHOUT
            the target (each slice independently). The seed: 0 (target slices only, "since
            these are also not considered in the test phase"); a whole CT segmented without
            a slice range has such slices, and a model that never saw one marks some of them.
    """

    version: int = 1
    arch: str = "unet"
    dims: int = 2
    percentiles: tuple[float, float] = (0.6, 0.99)
    stats_volumes: int = 10
    stats_voxels: int = 100000
    n_slices: int = 16
    slice_size: int = 128
    base_channels: int = 32
    depth: int = 5
    msd_layers: int = 100
    msd_max_dilation: int = 10
    batch_size: int = 0
    iterations: int = 10000
    lr: float = 1e-3
    p_augment: float = -1.0
    p_range_shift: float = 0.2
    range_shift: float = 0.1
    noise_sd: float = 0.1
    rotation_deg: float = 16.0
    seed: int = 0
    background_slices: float = 0.0

    def __post_init__(self) -> None:
        _check_version("KloenneConfig", self.version)
        if self.arch not in _ARCHS:
            raise ConfigError(f"KloenneConfig.arch must be one of {list(_ARCHS)}, got "
                              f"{self.arch!r}")
        if self.dims not in (2, 3):
            raise ConfigError(f"KloenneConfig.dims must be 2 or 3, got {self.dims!r}")
        lo, hi = tuple(self.percentiles)
        if not 0 <= lo < hi <= 1:
            raise ConfigError(f"KloenneConfig.percentiles must be quantiles 0 <= low < high <= 1 "
                              f"(the seed's (0.6, 0.99)), got {self.percentiles!r}")
        _check_positive_int("KloenneConfig", stats_volumes=self.stats_volumes,
                            stats_voxels=self.stats_voxels, n_slices=self.n_slices,
                            slice_size=self.slice_size, base_channels=self.base_channels,
                            depth=self.depth, msd_layers=self.msd_layers,
                            msd_max_dilation=self.msd_max_dilation, iterations=self.iterations)
        if self.slice_size % 2 ** (self.depth - 1):
            raise ConfigError(f"KloenneConfig.slice_size {self.slice_size} must be divisible by "
                              f"2**(depth-1) = {2 ** (self.depth - 1)}")
        if not isinstance(self.batch_size, int) or self.batch_size < 0:
            raise ConfigError(f"KloenneConfig.batch_size must be >= 0 (0: the seed's), got "
                              f"{self.batch_size!r}")
        for name in ("p_range_shift", "background_slices"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"KloenneConfig.{name} must be in [0, 1]")
        if self.p_augment > 1:
            raise ConfigError(f"KloenneConfig.p_augment must be <= 1 (negative: the seed's), "
                              f"got {self.p_augment}")
        if not 0 < self.lr < 1:
            raise ConfigError(f"KloenneConfig.lr must be in (0, 1), got {self.lr!r}")

    @property
    def effective_batch(self) -> int:
        """``batch_size``, or the seed's 28 slices (2D) / 1 volume (3D)."""
        return self.batch_size or (28 if self.dims == 2 else 1)

    @property
    def effective_p_augment(self) -> float:
        """``p_augment``, or the seed's 0.9 (2D) / 0.8 (3D)."""
        return self.p_augment if self.p_augment >= 0 else (0.9 if self.dims == 2 else 0.8)

    @property
    def kind(self) -> str:
        """``"unet2d"``, ``"msd3d"``, ...: the ensemble groups members by kind."""
        return f"{self.arch}{self.dims}d"

    @classmethod
    def reduced(cls, **changes: Any) -> KloenneConfig:
        """The documented CPU scale: 64 x 64 slices, U-Net 8 channels / 4 levels, MS-D 12
        layers, 2D batch 8 slices, 300 steps, 3 volumes for the statistics.

        Measured on one core of the shared 2-core machine: a 2D step takes about 0.09 s
        (either network), a 3D step (one 16 x 64 x 64 volume) about 1.4 s, so the
        benchmark gives 3D models 100 steps (``iterations=100``).
        """
        base = dict(slice_size=64, base_channels=8, depth=4, msd_layers=12, batch_size=0,
                    iterations=300, stats_volumes=3, stats_voxels=20000)
        base.update(changes)
        if base.get("batch_size", 0) == 0 and base.get("dims", 2) == 2:
            base["batch_size"] = 8
        return cls(**base)


# ----------------------------------------------------------------------------------- networks
def _conv(dims: int) -> type[nn.Module]:
    return nn.Conv2d if dims == 2 else nn.Conv3d


def _inorm(dims: int, c: int) -> nn.Module:
    return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(c, affine=True)


class UNetND(nn.Module):
    """nnU-Net-style U-Net in 2D or 3D: (conv 3 -> instance norm -> LeakyReLU 0.01) x 2 per
    level, max-pool down (3D: in plane only), transposed conv up, concatenation skips.

    Shapes: ``(N, 1, H, W)`` or ``(N, 1, D, H, W)`` -> logits ``(N, n_classes, ...)``.
    """

    def __init__(self, dims: int = 2, in_channels: int = 1, n_classes: int = 2,
                 base_channels: int = 32, depth: int = 5) -> None:
        super().__init__()
        conv = _conv(dims)
        k = 2 if dims == 2 else (1, 2, 2)

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(conv(c_in, c_out, 3, padding=1), _inorm(dims, c_out),
                                 nn.LeakyReLU(0.01, inplace=True),
                                 conv(c_out, c_out, 3, padding=1), _inorm(dims, c_out),
                                 nn.LeakyReLU(0.01, inplace=True))

        widths = [base_channels * 2 ** level for level in range(depth)]
        self.down = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.down.append(block(c, w))
            c = w
        self.pool = (nn.MaxPool2d if dims == 2 else nn.MaxPool3d)(k)
        up = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
        self.ups = nn.ModuleList([up(widths[i + 1], widths[i], k, stride=k)
                                  for i in range(depth - 1)])
        self.up_blocks = nn.ModuleList([block(2 * widths[i], widths[i])
                                        for i in range(depth - 1)])
        self.head = conv(widths[0], n_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        h = x
        for i, blk in enumerate(self.down):
            h = blk(h)
            if i < len(self.down) - 1:
                skips.append(h)
                h = self.pool(h)
        for i in reversed(range(len(self.ups))):
            h = self.up_blocks[i](torch.cat([skips[i], self.ups[i](h)], 1))
        return self.head(h)


class MSDNet(nn.Module):
    """Mixed-scale dense network (Pelt & Sethian 2018), 2D or 3D, width 1.

    Layer ``i`` convolves the concatenation of the input and all earlier layer outputs with a
    3x3(x3) kernel dilated ``1 + (i mod max_dilation)`` (3D: dilated in plane only), then
    instance norm and LeakyReLU 0.01 (the seed's modification); a 1x1 convolution of all maps
    gives the logits. Every size is kept (padding = dilation).
    """

    def __init__(self, dims: int = 2, in_channels: int = 1, n_classes: int = 2,
                 layers: int = 100, max_dilation: int = 10) -> None:
        super().__init__()
        conv = _conv(dims)
        self.layers = nn.ModuleList()
        for i in range(layers):
            d = 1 + i % max_dilation
            dil, pad = (d, (d, d)) if dims == 2 else ((1, d, d), (1, d, d))
            self.layers.append(nn.Sequential(conv(in_channels + i, 1, 3, padding=pad,
                                                  dilation=dil),
                                             _inorm(dims, 1), nn.LeakyReLU(0.01)))
        self.head = conv(in_channels + layers, n_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        maps = x
        for layer in self.layers:
            maps = torch.cat([maps, layer(maps)], 1)
        return self.head(maps)


class KloenneModel(nn.Module):
    """One network plus its config and the training set's z-score statistics (buffers)."""

    def __init__(self, config: KloenneConfig = KloenneConfig()) -> None:
        super().__init__()
        if not isinstance(config, KloenneConfig):
            raise ConfigError(f"expected a KloenneConfig, got {type(config).__name__}")
        self.config = config
        if config.arch == "unet":
            self.net: nn.Module = UNetND(config.dims, 1, 2, config.base_channels, config.depth)
        else:
            self.net = MSDNet(config.dims, 1, 2, config.msd_layers, config.msd_max_dilation)
        self.register_buffer("stats", torch.tensor([0.0, 1.0]))   # mean, sd

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def save(self, path: str | os.PathLike, **provenance: Any) -> Path:
        """Write ``path`` (state dict incl. statistics) and its ``.json`` card."""
        return _save_system(_SYSTEM, self, self.config, path, provenance)


def load_kloenne(path: str | os.PathLike, device: str | torch.device | None = "cpu"
                 ) -> KloenneModel:
    """Load a :class:`KloenneModel` (``weights_only=True``).

    Raises:
        CheckpointError: missing/corrupt files, another system's card, mismatched weights.
    """
    return _load_system(_SYSTEM, KloenneModel, KloenneConfig, path, device)


def bundled_kloenne_path() -> Path:
    """Path of the shipped liver model (``iunet_nb/assets``; its card says how it was trained
    and what it measures on real CT)."""
    return _bundled_asset(BUNDLED_KLOENNE)


def load_bundled_kloenne(device: str | torch.device | None = "cpu") -> KloenneModel:
    """The shipped liver model, SHA-256-checked like the bundled iUnet (no download).

    Raises:
        CheckpointError: the file is missing or not the one shipped.
    """
    path = _checked_bundled(bundled_kloenne_path(), BUNDLED_KLOENNE_SHA256, "Kloenne liver model",
                            "train one with `python scripts/train_kloenne.py` and give it "
                            "with --model")
    return load_kloenne(path, device)


# ----------------------------------------------------------------------------------- preprocessing
def percentile_window(array: np.ndarray, percentiles: Sequence[float] = (0.6, 0.99),
                      max_samples: int = 2_000_000) -> np.ndarray:
    """Clip a volume to its own quantile range (float32).

    Quantiles are computed on every ``s``-th voxel (``s`` chosen so at most ``max_samples``
    are used), which is deterministic and within a voxel-rank of the exact quantile.
    """
    arr = np.asarray(array, dtype=np.float32)
    step = max(1, int(math.ceil(arr.size / max_samples)))
    lo, hi = np.quantile(arr.ravel()[::step], percentiles)
    return np.clip(arr, lo, hi)


def _resize_slices(arr: np.ndarray | Tensor, size: int, mode: str) -> Tensor:
    """``(Z, H, W)`` -> ``(Z, size, size)`` (bilinear for images, nearest-exact for labels)."""
    t = torch.as_tensor(arr).float()[:, None]
    kw = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(t, size=(size, size), mode=mode, **kw)[:, 0]


def _zscore_stats(volumes: Sequence[np.ndarray], cfg: KloenneConfig,
                  rng: np.random.Generator) -> tuple[float, float]:
    pick = rng.choice(len(volumes), size=min(cfg.stats_volumes, len(volumes)), replace=False)
    samples = [rng.choice(volumes[i].ravel(), size=min(cfg.stats_voxels, volumes[i].size))
               for i in pick]
    values = np.concatenate(samples)
    return float(values.mean()), float(max(values.std(), 1e-6))


@dataclass
class _Vol:
    image: Tensor       # (Z, S, S) z-scored
    label: Tensor       # (Z, S, S) long
    fg: np.ndarray      # slice indices with target
    bg: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))   # without target


# ----------------------------------------------------------------------------------- sampling
def _rotate(x: Tensor, y: Tensor, angles_deg: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate ``(B, S, S)`` images (bilinear) and labels (nearest) in plane."""
    a = angles_deg * math.pi / 180
    c, s = torch.cos(a), torch.sin(a)
    zero = torch.zeros_like(a)
    theta = torch.stack([torch.stack([c, -s, zero], -1), torch.stack([s, c, zero], -1)], 1)
    grid = F.affine_grid(theta, [x.shape[0], 1, *x.shape[-2:]], align_corners=False)
    xr = F.grid_sample(x[:, None], grid, mode="bilinear", padding_mode="border",
                       align_corners=False)[:, 0]
    yr = F.grid_sample(y[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                       align_corners=False)[:, 0].long()
    return xr, yr


def _draw_stack(vol: _Vol, cfg: KloenneConfig, rng: np.random.Generator, augment: bool
                ) -> tuple[Tensor, Tensor]:
    """16 random target slices of one volume, sorted in z, augmented: ``(n, S, S)`` each.

    With ``cfg.background_slices`` > 0, each slice comes from the slices without target with
    that chance (when the volume has such slices)."""
    pool = vol.fg
    if augment and cfg.dims == 3 and rng.random() < 0.5 and len(pool) >= 2 * cfg.n_slices:
        pool = pool[int(rng.integers(2))::2]                      # slice skipping
    n_bg = int(rng.binomial(cfg.n_slices, cfg.background_slices)) \
        if cfg.background_slices > 0 and len(vol.bg) else 0
    idx = rng.choice(pool, size=cfg.n_slices - n_bg, replace=len(pool) < cfg.n_slices - n_bg)
    if n_bg:
        idx = np.concatenate([idx, rng.choice(vol.bg, size=n_bg, replace=len(vol.bg) < n_bg)])
    idx = np.sort(idx)
    x, y = vol.image[idx].clone(), vol.label[idx].clone()
    if not augment:
        return x, y
    if rng.random() < 0.5:                                        # slice interpolation
        nxt = np.minimum(idx + 1, vol.image.shape[0] - 1)
        x = 0.5 * (x + vol.image[nxt])
    if rng.random() < cfg.p_range_shift:                          # intensity range shift
        x = x * float(rng.uniform(1 - cfg.range_shift, 1 + cfg.range_shift)) \
            + float(rng.uniform(-cfg.range_shift, cfg.range_shift))
    sd = float(rng.uniform(0, cfg.noise_sd))
    noise = torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))
    x = x + sd * noise                                            # Gaussian noise map
    if cfg.rotation_deg > 0:
        if cfg.dims == 3:
            angles = torch.full((x.shape[0],), float(rng.uniform(-1, 1) * cfg.rotation_deg))
        else:
            angles = torch.from_numpy(rng.uniform(-1, 1, x.shape[0]) * cfg.rotation_deg).float()
        x, y = _rotate(x, y, angles)
    return x, y


def _batch(vols: list[_Vol], cfg: KloenneConfig, rng: np.random.Generator
           ) -> tuple[Tensor, Tensor]:
    augment = rng.random() < cfg.effective_p_augment
    if cfg.dims == 3:
        pairs = [_draw_stack(vols[int(rng.integers(len(vols)))], cfg, rng, augment)
                 for _ in range(cfg.effective_batch)]
        return (torch.stack([p[0] for p in pairs])[:, None],
                torch.stack([p[1] for p in pairs]))
    xs, ys, n = [], [], 0
    while n < cfg.effective_batch:
        x, y = _draw_stack(vols[int(rng.integers(len(vols)))], cfg, rng, augment)
        xs.append(x)
        ys.append(y)
        n += x.shape[0]
    return (torch.cat(xs)[:cfg.effective_batch, None], torch.cat(ys)[:cfg.effective_batch])


# ----------------------------------------------------------------------------------- training
@dataclass
class KloenneTrainResult:
    """The trained model (eval, CPU), losses, time, and validation DSC if validation was given."""

    model: KloenneModel
    losses: list[float] = field(default_factory=list)
    train_time_s: float = 0.0
    validation_dsc: float | None = None
    out_dir: Path | None = None


def _prepare(ct: Volume, cfg: KloenneConfig) -> np.ndarray:
    return percentile_window(ct.array, cfg.percentiles)


def train_kloenne(cases: Sequence[tuple[Volume, Volume]], config: KloenneConfig = KloenneConfig(),
                  out_dir: str | os.PathLike | None = None, *,
                  validation: Sequence[tuple[Volume, Volume]] = (),
                  device: str | torch.device | None = None, progress: bool = True,
                  data_description: str = "",
                  on_step: Callable[[int, float, KloenneModel], None] | None = None,
                  init: KloenneModel | None = None) -> KloenneTrainResult:
    """Train one Kloenne model from scratch (or on from ``init``).

    Args:
        cases: ``(CT in HU, binary mask)`` pairs.
        config: settings; :meth:`KloenneConfig.reduced` for a CPU.
        out_dir: if given, ``model.pt`` + ``model.json`` + ``losses.json`` are written.
        validation: cases whose mean DSC is stored as ``validation_dsc`` (used by
            :func:`select_top_k`).
        device: None for CUDA when available.
        progress: tqdm bar.
        data_description: recorded in the card.
        on_step: called as ``on_step(i, loss, model)`` after step ``i`` (0-based), e.g. to
            save intermediate weights (the model is in training mode on ``device``).
        init: start from this trained model's weights and z-score statistics (fine-tuning)
            instead of random weights; its network must be ``config``'s.

    Raises:
        InputError: no case, mismatched grids, or no target in any case.
        ConfigError: ``init`` is not a KloenneModel with ``config``'s network.
    """
    _check_training(_SYSTEM, config, KloenneConfig, cases)
    if init is not None:
        net_fields = ("arch", "dims", "base_channels", "depth", "msd_layers", "msd_max_dilation")
        if not isinstance(init, KloenneModel) or any(
                getattr(init.config, f) != getattr(config, f) for f in net_fields):
            raise ConfigError(f"init must be a KloenneModel with the same network as the config "
                              f"(fields {list(net_fields)})")
    t0 = _now()
    dev = _device(device)
    rng = np.random.default_rng(config.seed)
    windowed, masks = [], []
    for i, (ct, mask) in enumerate(cases):
        _check_pair(ct, mask, i)
        ct, mask = _lps_pair(ct, mask)  # axial slices in patient order
        windowed.append(_prepare(ct, config))
        masks.append(np.asarray(mask.array) != 0)
    mean, sd = _zscore_stats(windowed, config, rng)
    if init is not None:   # the statistics the weights were trained with
        mean, sd = (float(v) for v in init.stats)
    vols = []
    for k, (w, m) in enumerate(zip(windowed, masks)):
        windowed[k] = masks[k] = None   # type: ignore[call-overload]  # the resized copy stays
        fg = np.flatnonzero(m.any(axis=(1, 2)))
        if fg.size == 0:
            continue
        image = _resize_slices((w - mean) / sd, config.slice_size, "bilinear")
        label = _resize_slices(m.astype(np.float32), config.slice_size, "nearest-exact").long()
        vols.append(_Vol(image, label, fg, np.flatnonzero(~m.any(axis=(1, 2)))))
    if not vols:
        raise InputError("no training case has a target voxel; check the masks")
    with _seeded(config.seed):
        model = KloenneModel(config)
    if init is not None:
        model.load_state_dict(init.state_dict())
    model.stats.copy_(torch.tensor([mean, sd]))
    losses = _fit(model, lambda: _batch(vols, config, rng),
                  lambda x, y: tanimoto_ce_loss(model(x), y), config.iterations, config.lr, dev,
                  f"Kloenne {config.kind}", progress,
                  on_step=None if on_step is None else lambda i, v: on_step(i, v, model))
    val = None
    if validation:
        val = float(np.mean([_dice(predict_kloenne(ct, model).array, m.array)
                             for ct, m in validation]))
    elapsed = round(_now() - t0, 1)
    out = _write_training(model, out_dir, losses, data=data_description, train_time_s=elapsed,
                          cases=len(vols), validation_dsc=val)
    return KloenneTrainResult(model, losses, elapsed, val, out)


# ----------------------------------------------------------------------------------- inference
@torch.no_grad()
def _probabilities(model: KloenneModel, ct: Volume, dev: torch.device) -> Tensor:
    """Foreground probability ``(Z, S, S)`` on the resized slices."""
    cfg = model.config
    mean, sd = (float(v) for v in model.stats)
    image = _resize_slices((_prepare(ct, cfg) - mean) / sd, cfg.slice_size, "bilinear")
    model = model.to(dev).eval()
    z = image.shape[0]
    out = torch.zeros(z, cfg.slice_size, cfg.slice_size)
    if cfg.dims == 2:
        for s in range(0, z, 32):
            out[s:s + 32] = torch.softmax(model(image[s:s + 32, None].to(dev)), 1)[:, 1].cpu()
        return out
    step = int(math.ceil(z / cfg.n_slices))
    for j in range(step):
        idx = np.arange(j, z, step)
        padded = np.concatenate([idx, np.full(cfg.n_slices - len(idx), idx[-1])])
        prob = torch.softmax(model(image[padded][None, None].to(dev)), 1)[0, 1].cpu()
        out[idx] = prob[:len(idx)]
    return out


class KloenneEnsemble:
    """A stacked ensemble: the mean of its members' foreground probabilities.

    Args:
        members: trained :class:`KloenneModel` objects (any mix of kinds).

    Raises:
        InputError: no members.
    """

    def __init__(self, members: Sequence[KloenneModel]) -> None:
        members = list(members)
        if not members or not all(isinstance(m, KloenneModel) for m in members):
            raise InputError("a KloenneEnsemble needs at least one KloenneModel")
        self.members = members

    @property
    def kinds(self) -> list[str]:
        return [m.config.kind for m in self.members]


def select_top_k(results: Sequence[KloenneTrainResult], k: int = 5) -> KloenneEnsemble:
    """The seed's stacked model: the top-``k`` members of EACH kind by validation DSC.

    Raises:
        InputError: a result without ``validation_dsc`` (train with ``validation=``).
        ConfigError: ``k < 1``.
    """
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    missing = [i for i, r in enumerate(results) if r.validation_dsc is None]
    if missing:
        raise InputError(f"results {missing} have no validation DSC; train them with "
                         "validation=[...] cases to rank them")
    chosen: list[KloenneModel] = []
    for kind in dict.fromkeys(r.model.config.kind for r in results):
        ranked = sorted((r for r in results if r.model.config.kind == kind),
                        key=lambda r: -float(r.validation_dsc))  # type: ignore[arg-type]
        chosen += [r.model for r in ranked[:k]]
    return KloenneEnsemble(chosen)


def predict_kloenne(ct: Volume, model: KloenneModel | KloenneEnsemble, *,
                    device: str | torch.device | None = None, threshold: float = 0.5,
                    z_range: tuple[int, int] | None = None) -> Volume:
    """Binary mask (uint8 {0, 1}) on ``ct``'s grid and geometry.

    The CT is brought to patient (LPS) array order first (exact transposes/flips), so the
    slices are axial whatever the storage order. Probabilities on the resized slices (averaged
    over ensemble members) are resized back to the in-plane size (bilinear), thresholded and
    mapped back to ``ct``'s own array.

    Args:
        ct: CT in HU.
        model: one model or a :class:`KloenneEnsemble`.
        device: None for CUDA when available.
        threshold: foreground threshold.
        z_range: ``(first, last + 1)`` slices along ``ct``'s array axis 0 (axial for an
            axially stored CT; the same index space as a box on ``ct``) to segment; the rest
            is set to 0. The
            seed trains without background slices "since these are also not considered in
            the test phase": give the organ's slice range (from a box, a detector or, for
            an oracle comparison like iUnet's Experiment 1, the reference) to match that.

    Raises:
        InputError: ``ct`` is not a finite real Volume, ``model`` is neither a
            KloenneModel nor a KloenneEnsemble, or ``z_range`` is empty or outside the CT.
    """
    _check_volume(ct, "ct")
    if z_range is not None:
        z0, z1 = (int(v) for v in z_range)
        if not 0 <= z0 < z1 <= ct.shape[0]:
            raise InputError(f"z_range {tuple(z_range)} must satisfy 0 <= first < last <= "
                             f"{ct.shape[0]} (the CT's slices)")
    if isinstance(model, KloenneModel):
        members = [model]
    elif isinstance(model, KloenneEnsemble):
        members = model.members
    else:
        raise InputError(f"predict_kloenne needs a KloenneModel or KloenneEnsemble, got "
                         f"{type(model).__name__}")
    dev = _device(device)
    lps, orientation = _lps(ct)
    prob = sum(_probabilities(m, lps, dev) for m in members) / len(members)
    full = F.interpolate(prob[:, None], size=lps.shape[1:], mode="bilinear",
                         align_corners=False)[:, 0].numpy()
    mask = orientation.array_back((full >= threshold).astype(np.uint8))
    if z_range is not None:
        mask[:z0] = 0
        mask[z1:] = 0
    return Volume(mask, ct.geometry,
                  {"source": "iunet_nb.systems.kloenne", "members": len(members)})


# ----------------------------------------------------------------------------------- folds
def slice_count_folds(cases: Sequence[tuple[str, int, float]], k: int = 5
                      ) -> list[dict[str, Any]]:
    """Worst-case folds: cases sorted by slice count (then thickness), cut into ``k`` blocks.

    Each test fold holds a contiguous range of slice counts, so it is unlike its training
    data (the seed's robustness validation). The format is that of
    :func:`iunet_nb.io.datasets.make_folds`.

    Args:
        cases: ``(case_id, number of slices, slice thickness mm)`` per case.
        k: number of folds, 2..len(cases).

    Returns:
        ``[{"fold": i, "train": [...], "test": [...]}, ...]`` with sorted id lists; fold 0
        holds the fewest slices.

    Raises:
        ConfigError: k out of range or duplicate ids.
    """
    ids = [str(c[0]) for c in cases]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"case ids must be unique, got duplicates in {ids}")
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= len(ids):
        raise ConfigError(f"k must be an integer from 2 to the number of cases ({len(ids)}), "
                          f"got {k!r}")
    order = sorted(cases, key=lambda c: (int(c[1]), float(c[2]), str(c[0])))
    folds = []
    for i, part in enumerate(np.array_split(np.arange(len(order)), k)):
        test = sorted(str(order[j][0]) for j in part)
        folds.append({"fold": i, "train": sorted(set(ids) - set(test)), "test": test})
    return folds
