"""Multi-organ 3D FCN of Roth et al. (seed 002): seven abdominal organs and the kidneys in one
network.

* **Organs** (label values of the output, :attr:`RothConfig.organs`): the seed's seven
  (:data:`SEED_ORGANS`) 1 artery, 2 vein, 3 liver, 4 spleen, 5 stomach, 6 gallbladder,
  7 pancreas, then 8 right kidney, 9 left kidney (:data:`ROTH_ORGANS`; the kidneys are not the
  seed's, issue 27 asks for them). :data:`BTCV_TO_ROTH` maps the BTCV labels: artery = aorta
  (8), vein = IVC (9) + portal/splenic vein (10), liver 6, spleen 1, stomach 7, gallbladder 4,
  pancreas 11, right kidney 2, left kidney 3; the other BTCV structures (adrenals,
  oesophagus), and any organ a config leaves out, become background. A model card written
  before the kidneys were added has no ``organs`` field and loads as the seed's seven.
* **Network**: a 3D U-Net-like FCN with same-size 3x3x3 convolutions and concatenation skips:
  :class:`iunet_nb.model.nets.CicekUNet3D` with ``base_channels=32``, ``depth=4`` has 19.07 M
  parameters, the seed's "~19M".
* **Grid**: images downsampled by 4 (``downsample``; the seed: 512 x 512 -> 128 x 128 and
  slices / 4), trilinear; predictions are resampled back to the CT's grid per class and the
  label is the arg-max there.
* **Training**: random ``patch_size`` (64^3) subvolumes, a batch of ``batch_size`` (3) from
  *different* patients; every patch gets a smooth cubic B-spline deformation (control
  displacements uniform in +-``bspline_max_disp`` = 4 voxels on a ``bspline_spacing`` = 24
  voxel grid), a rotation in -20..+20 degrees about the z axis and a translation of
  -20..+20 voxels per axis, all in one resampling (image trilinear, labels nearest).
  Loss: multi-class soft Dice ``L = 1/L sum_l w_l L_l`` with per-class weights
  ``class_weights`` (seed: all 1). Adam, lr 1e-2, 50,000 iterations (seed).
  Cases that draw only some organs (real CT with masks of a few organs) train with
  ``train_roth(unlabelled=)``: their unlabelled organs' probabilities join the background's
  (the marginal loss of Shi et al., 2021; not in the seed, whose data label all seven).
* **Inference**: the whole in-plane extent at once, overlapping tiles along z
  (``tile_z`` slices, ``tile_overlap`` fraction), softmax averaged where tiles overlap.

Choices the seed leaves open: HU window ``hu_window`` = iUnet's [-160, 240] mapped to [-1, 1]
(every target organ, contrast-enhanced vessels included, lies inside it); outside the image the
patch sampler reads air (-1) and background; the B-spline uses the control displacements as
coefficients (so the displacement never exceeds the maximum: cubic B-spline weights are
non-negative and sum to one).

Example:
    >>> cfg = RothConfig.reduced()                                      # doctest: +SKIP
    >>> result = train_roth([(ct, btcv_labels), ...], cfg)              # doctest: +SKIP
    >>> pred = predict_roth(ct, result.model)                           # doctest: +SKIP
    >>> pancreas = pred.organ_mask("pancreas")                          # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn

from .._config import JsonConfig
from ..errors import CheckpointError, ConfigError, InputError
from ..io.volume import Volume
from ..model.nets import NetConfig, build_network
from ._common import (_bundled_asset, _check_positive_int, _check_training, _check_version,
                      _check_volume, _check_window, _checked_bundled, _device, _fit,
                      _load_system, _lps, _lps_pair, _now, _resample, _save_system, _seeded,
                      _window, _working_shape, _write_training)

__all__ = [
    "BTCV_TO_ROTH",
    "ROTH_ORGANS",
    "SEED_ORGANS",
    "RothConfig",
    "RothModel",
    "RothPrediction",
    "RothTrainResult",
    "bspline_displacement",
    "bundled_roth_path",
    "load_bundled_roth",
    "load_roth",
    "map_labels",
    "predict_roth",
    "train_roth",
    "weighted_dice_loss",
]

logger = logging.getLogger(__name__)

#: The seed's seven organs, output labels 1..7 in this order.
SEED_ORGANS: tuple[str, ...] = ("artery", "vein", "liver", "spleen", "stomach", "gallbladder",
                                "pancreas")
#: Every organ a Roth network may have (the default :attr:`RothConfig.organs`): the seed's
#: seven, then the kidneys, which issue 27 measures on 3D-IRCADb 1.7.
ROTH_ORGANS: tuple[str, ...] = SEED_ORGANS + ("right_kidney", "left_kidney")
#: Roth organ -> the BTCV label values that make it up.
BTCV_TO_ROTH: dict[str, tuple[int, ...]] = {
    "artery": (8,), "vein": (9, 10), "liver": (6,), "spleen": (1,), "stomach": (7,),
    "gallbladder": (4,), "pancreas": (11,), "right_kidney": (2,), "left_kidney": (3,)}
_SYSTEM = "roth"
#: The shipped model (``scripts/train_roth.py``) and the SHA-256 it is checked against.
BUNDLED_ROTH = "roth_multiorgan.pt"
BUNDLED_ROTH_SHA256 = "88cb0cbbe29451ff41210ae3d00636da13dc32f413c888a8ffc0e2f338ef36bf"


@dataclass(frozen=True)
class RothConfig(JsonConfig):
    """Settings of the multi-organ FCN (defaults: the seed's full scale, for GPUs; the organs: the
    seed's seven and the kidneys).

    Args:
        version: schema version (1).
        hu_window: HU clipped to ``(low, high)`` and mapped to [-1, 1].
        downsample: factor ``(z, y, x)`` by which the CT is downsampled (seed: 4, 4, 4).
        voxel_mm: if given, a fixed working voxel size ``(z, y, x)`` mm instead of
            ``downsample`` (for data sets with mixed resolutions).
        base_channels: width of :class:`~iunet_nb.model.nets.CicekUNet3D` (32 = 19 M parameters).
        depth: U-Net levels (4 = 3 poolings; patch and tile sizes must be multiples of
            ``2**(depth-1)``).
        patch_size: training subvolume ``(z, y, x)`` (seed: 64^3).
        batch_size: subvolumes per step, each from a different patient when possible (3).
        iterations: optimiser steps (seed: 50,000).
        lr: Adam learning rate (seed: 1e-2).
        lr_final: None keeps ``lr`` throughout (seed); a rate here makes it fall from ``lr``
            to ``lr_final`` along a half cosine over the iterations.
        dice_over_batch: False (seed) takes each subvolume's Dice per class and averages
            them; True sums each class over the whole batch first. Per subvolume, a class
            absent from it scores a perfect Dice only when it predicts none of it, which on
            small patches rewards predicting no organ at all.
        ce_weight: weight of a cross-entropy term added to the Dice loss (0: the seed's Dice
            alone). Cross-entropy keeps every voxel's true class in the gradient, so the
            network cannot settle on "background everywhere".
        organs: the network's organs, output labels 1.. in this order (a subset of
            :data:`ROTH_ORGANS` in its order). Default: all of them, the kidneys included
            (issue 27); the seed's seven are :data:`SEED_ORGANS`.
        class_weights: ``w_l`` for background + each organ; None: all 1 (the seed).
        bspline_max_disp: maximum B-spline control displacement in voxels (4).
        bspline_spacing: B-spline control grid spacing in voxels (24).
        rotation_deg: rotations drawn in ``-rotation_deg..+rotation_deg`` about z (20).
        translation_vox: translations drawn in ``-t..+t`` voxels per axis (20).
        tile_z: slices per inference tile (a multiple of ``2**(depth-1)``).
        tile_overlap: overlap of consecutive tiles as a fraction of ``tile_z`` (0 <= f < 1).
        seed: seeds initial weights, patch positions and augmentation.
    """

    version: int = 1
    hu_window: tuple[float, float] = (-160.0, 240.0)
    downsample: tuple[float, float, float] = (4.0, 4.0, 4.0)
    voxel_mm: tuple[float, float, float] | None = None
    base_channels: int = 32
    depth: int = 4
    patch_size: tuple[int, int, int] = (64, 64, 64)
    batch_size: int = 3
    iterations: int = 50000
    lr: float = 1e-2
    lr_final: float | None = None
    dice_over_batch: bool = False
    ce_weight: float = 0.0
    organs: tuple[str, ...] = ROTH_ORGANS
    class_weights: tuple[float, ...] | None = None
    bspline_max_disp: float = 4.0
    bspline_spacing: int = 24
    rotation_deg: float = 20.0
    translation_vox: float = 20.0
    tile_z: int = 64
    tile_overlap: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        _check_version("RothConfig", self.version)
        _check_window("RothConfig.hu_window", self.hu_window)
        _check_positive_int("RothConfig", base_channels=self.base_channels, depth=self.depth,
                            batch_size=self.batch_size, iterations=self.iterations,
                            bspline_spacing=self.bspline_spacing, tile_z=self.tile_z)
        m = 2 ** (self.depth - 1)
        ps = tuple(self.patch_size)
        if len(ps) != 3 or not all(isinstance(p, int) and p >= m and p % m == 0 for p in ps):
            raise ConfigError(f"RothConfig.patch_size must be three multiples of {m} "
                              f"(2**(depth-1)), got {self.patch_size!r}")
        if self.tile_z % m:
            raise ConfigError(f"RothConfig.tile_z must be a multiple of {m}, got {self.tile_z}")
        if len(self.downsample) != 3 or min(self.downsample) <= 0:
            raise ConfigError(f"RothConfig.downsample must be three positive factors (z, y, x), "
                              f"got {self.downsample!r}")
        if self.voxel_mm is not None and (len(self.voxel_mm) != 3 or min(self.voxel_mm) <= 0):
            raise ConfigError(f"RothConfig.voxel_mm must be None or three positive sizes, got "
                              f"{self.voxel_mm!r}")
        organs = tuple(self.organs)
        if (not organs or isinstance(self.organs, str) or len(set(organs)) != len(organs)
                or not set(organs) <= set(ROTH_ORGANS)
                or list(organs) != sorted(organs, key=ROTH_ORGANS.index)):
            raise ConfigError(f"RothConfig.organs must be distinct organs of {list(ROTH_ORGANS)} "
                              f"in that order, got {self.organs!r}")
        if self.class_weights is not None and (len(self.class_weights) != len(organs) + 1
                                               or min(self.class_weights) < 0):
            raise ConfigError(f"RothConfig.class_weights must be None or {len(organs) + 1} "
                              f"non-negative weights (background + {list(organs)}), got "
                              f"{self.class_weights!r}")
        if not 0 <= self.tile_overlap < 1:
            raise ConfigError(f"RothConfig.tile_overlap must be in [0, 1), got "
                              f"{self.tile_overlap!r}")
        if not 0 < self.lr < 1:
            raise ConfigError(f"RothConfig.lr must be in (0, 1), got {self.lr!r}")
        if self.lr_final is not None and not 0 < self.lr_final < 1:
            raise ConfigError(f"RothConfig.lr_final must be None or in (0, 1), got "
                              f"{self.lr_final!r}")
        if not isinstance(self.dice_over_batch, bool):
            raise ConfigError(f"RothConfig.dice_over_batch must be true or false, got "
                              f"{self.dice_over_batch!r}")
        for name in ("bspline_max_disp", "rotation_deg", "translation_vox", "ce_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"RothConfig.{name} must be >= 0, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RothConfig:
        """As :meth:`JsonConfig.from_dict`; a card without ``organs`` (written before the
        kidneys were added, 2026-12-07) holds the seed's seven."""
        if isinstance(data, dict) and "organs" not in data:
            data = {**data, "organs": list(SEED_ORGANS)}
        return super().from_dict(data)

    @property
    def weights(self) -> tuple[float, ...]:
        """``class_weights``, or all 1 when None."""
        return tuple(self.class_weights or (1.0,) * (len(self.organs) + 1))

    @property
    def net_config(self) -> NetConfig:
        """The :class:`~iunet_nb.model.nets.NetConfig` of the FCN (Cicek 3D U-Net, one class
        per organ plus background)."""
        return NetConfig(arch="cicek", in_channels=1, n_classes=len(self.organs) + 1,
                         base_channels=self.base_channels, depth=self.depth, norm="batch")

    @classmethod
    def reduced(cls, **changes: Any) -> RothConfig:
        """The documented CPU scale (270 s of training for 20 BTCV cases on one core).

        4 mm voxels (for 2 mm BTCV maps: the seed's factor 4 would give 8 mm), 32^3 patches,
        ``base_channels=8`` and ``depth=3`` (0.29 M parameters), 600 steps, the seed's Adam
        lr 1e-2 (1e-3 learned only the liver in 400 steps; 1e-2 and 600 steps also the
        stomach: liver DSC 0.72, stomach 0.29, the small organs 0 at this scale),
        B-spline spacing 12 and maximum displacement 2 voxels (the seed's 24 and 4, halved
        with the patch), translations +-8 voxels (the seed's +-20 on 64^3, scaled down),
        tiles of 32 slices. Any field can be overridden.
        """
        base = dict(voxel_mm=(4.0, 4.0, 4.0), base_channels=8, depth=3,
                    patch_size=(32, 32, 32), iterations=600, lr=1e-2, bspline_max_disp=2.0,
                    bspline_spacing=12, translation_vox=8.0, tile_z=32)
        base.update(changes)
        return cls(**base)


# ----------------------------------------------------------------------------------- labels
def map_labels(labels: np.ndarray, table: Mapping[str, Sequence[int]] = BTCV_TO_ROTH,
               organs: Sequence[str] = ROTH_ORGANS) -> np.ndarray:
    """A source label map -> Roth labels (0 background, 1.. in ``organs`` order).

    Args:
        labels: integer ``(z, y, x)`` label map (e.g. BTCV).
        table: Roth organ name -> source label values; organs may be missing from the table.
        organs: the network's organs (:attr:`RothConfig.organs`); table organs not among
            them become background.

    Returns:
        uint8 ``(z, y, x)``.

    Raises:
        InputError: non-integer labels, or a table entry that is not a Roth organ.
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"map_labels expects an integer label map, got dtype {labels.dtype}")
    unknown = sorted(set(table) - set(ROTH_ORGANS))
    if unknown:
        raise InputError(f"unknown organ(s) {unknown} in the label table; Roth organs are "
                         f"{list(ROTH_ORGANS)}")
    if labels.size and labels.min() < 0:
        raise InputError("map_labels: negative label values; labels must be >= 0")
    top = max([int(labels.max()) if labels.size else 0]
              + [int(v) for values in table.values() for v in values])
    lut = np.zeros(top + 1, dtype=np.uint8)
    for organ, values in table.items():
        if organ in organs:
            for v in values:
                lut[int(v)] = list(organs).index(organ) + 1
    return lut[labels]


# ----------------------------------------------------------------------------------- loss
def weighted_dice_loss(probs: Tensor, target: Tensor, weights: Sequence[float] | Tensor,
                       eps: float = 1e-6) -> Tensor:
    """Multi-class soft Dice of the seed, eqs. (1)-(2): ``1/L sum_l w_l L_l``.

    ``L_l = -(2 sum p r + eps) / (sum p + sum r + eps)`` per item (sums over its voxels),
    then the weighted mean over classes (divided by ``L``, not by the weights' sum, as in
    eq. 2) and the mean over items. With all weights 1 it equals
    :func:`iunet_nb.model.losses.soft_dice_loss`.

    Args:
        probs: float ``(N, L, *spatial)`` softmax probabilities.
        target: float one-hot ``(N, L, *spatial)``.
        weights: ``L`` non-negative class weights.

    Raises:
        InputError: mismatched shapes or weights.
    """
    if probs.shape != target.shape or probs.ndim < 3:
        raise InputError(f"weighted_dice_loss: probs {tuple(probs.shape)} and target "
                         f"{tuple(target.shape)} must both be (N, L, *spatial)")
    w = torch.as_tensor(weights, dtype=probs.dtype, device=probs.device)
    if w.shape != (probs.shape[1],):
        raise InputError(f"weighted_dice_loss: {probs.shape[1]} classes need {probs.shape[1]} "
                         f"weights, got {tuple(w.shape)}")
    dims = tuple(range(2, probs.ndim))
    inter = (probs * target).sum(dims)
    denom = probs.sum(dims) + target.sum(dims)
    per_class = -(2.0 * inter + eps) / (denom + eps)
    return (per_class * w).mean()


def _loss(logits: Tensor, target: Tensor, cfg: RothConfig) -> Tensor:
    """The training loss of :func:`train_roth`: the weighted soft Dice, per subvolume (seed)
    or over the batch (``dice_over_batch``), plus ``ce_weight`` x cross-entropy.

    ``target`` is one-hot ``(N, L, *spatial)``; a channel filled with -1 marks an organ that
    subvolume's case does not label (``train_roth(unlabelled=)``). For such a subvolume the
    loss is the marginal loss of Shi et al. (2021): the probabilities of its unlabelled organs
    are added to the background's (what its label map calls background may be any of them),
    and those organs' Dice terms leave it out.
    """
    known = (target.flatten(2)[:, :, :1] >= 0).to(logits.dtype)          # (N, L, 1)
    known = known.reshape(*known.shape[:2], *([1] * (logits.ndim - 2)))
    target = target.clamp(min=0.0)
    probs = torch.softmax(logits, 1)
    if bool((known == 0).any()):
        unknown = 1.0 - known
        background = probs[:, :1] + (probs * unknown).sum(1, keepdim=True)
        probs = torch.cat([background, probs[:, 1:]], 1) * known
        logp = torch.log(probs.clamp_min(1e-8))
    else:
        logp = torch.log_softmax(logits, 1)
    if cfg.dice_over_batch:
        flat_p = probs.movedim(0, 1).flatten(1)[None]
        flat = target.movedim(0, 1).flatten(1)[None]
        loss = weighted_dice_loss(flat_p, flat, cfg.weights)
    else:
        loss = weighted_dice_loss(probs, target, cfg.weights)
    if cfg.ce_weight > 0:
        loss = loss + cfg.ce_weight * F.nll_loss(logp, target.argmax(1))
    return loss


# ----------------------------------------------------------------------------------- augmentation
def bspline_displacement(shape: Sequence[int], spacing: int, max_disp: float,
                         rng: np.random.Generator) -> np.ndarray:
    """A smooth random displacement field (voxels) from a cubic B-spline control grid.

    Control displacements are drawn uniformly in ``[-max_disp, max_disp]`` per component on a
    grid of ``spacing`` voxels that covers ``shape`` (plus the cubic support); the field is
    the B-spline with these coefficients, so ``|d| <= max_disp`` everywhere.

    Args:
        shape: ``(z, y, x)`` of the patch.
        spacing: control point spacing in voxels.
        max_disp: maximum displacement in voxels per component.
        rng: NumPy generator.

    Returns:
        float32 ``(3, z, y, x)`` displacements along z, y, x.
    """
    shape = tuple(int(s) for s in shape)
    ctrl = tuple(int(math.ceil(s / spacing)) + 3 for s in shape)
    coeffs = rng.uniform(-max_disp, max_disp, size=(3, *ctrl))
    coords = np.meshgrid(*[np.arange(s) / spacing + 1.0 for s in shape], indexing="ij")
    return np.stack([ndimage.map_coordinates(c, coords, order=3, prefilter=False,
                                             mode="nearest") for c in coeffs]).astype(np.float32)


def _patch_grid(vol_shape: Sequence[int], cfg: RothConfig, rng: np.random.Generator
                ) -> np.ndarray:
    """Source voxel coordinates ``(z, y, x, 3)`` of one augmented random patch."""
    p = np.array(cfg.patch_size, dtype=float)
    centre = np.array([rng.uniform(0, n - 1) for n in vol_shape])
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in cfg.patch_size], indexing="ij"), -1)
    local = grid - (p - 1) / 2                                   # patch-centred, voxels
    angle = math.radians(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])          # about z, in the (y, x) plane
    shift = rng.uniform(-cfg.translation_vox, cfg.translation_vox, size=3)
    disp = bspline_displacement(cfg.patch_size, cfg.bspline_spacing, cfg.bspline_max_disp, rng)
    return local @ rot.T + centre + shift + np.moveaxis(disp, 0, -1)


def _sample(image: Tensor, labels: Tensor, coords: np.ndarray) -> tuple[Tensor, Tensor]:
    """Image (trilinear, air outside) and labels (nearest, 0 outside) at voxel coords."""
    shape = torch.tensor(image.shape[-3:], dtype=torch.float64)
    norm = torch.from_numpy(coords) * 2.0 / (shape - 1).clamp_min(1) - 1.0
    grid = norm.flip(-1).float()[None]                           # grid_sample wants (x, y, z)
    img = F.grid_sample(image[None, None] + 1.0, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=True)[0, 0] - 1.0
    lab = F.grid_sample(labels[None, None].float(), grid, mode="nearest", padding_mode="zeros",
                        align_corners=True)[0, 0].round().long()
    return img, lab


# ----------------------------------------------------------------------------------- model
def _organ_index(organ: str, organs: Sequence[str]) -> int:
    """Output label of ``organ`` in a network with ``organs``.

    Raises:
        ConfigError: not a Roth organ, or not one of this network's.
    """
    if organ not in ROTH_ORGANS:
        raise ConfigError(f"organ must be one of {list(ROTH_ORGANS)}, got {organ!r}")
    if organ not in organs:
        raise ConfigError(f"this Roth model has no {organ!r} output (its organs: "
                          f"{list(organs)}); train one that has it, e.g. "
                          "`python scripts/train_roth.py`")
    return list(organs).index(organ) + 1


def _carry_weights(model: RothModel, start: RothModel) -> list[str]:
    """Load ``start``'s weights into ``model``; the output layer's rows go by organ name, so
    a model with other organs starts from the shared ones (new organs keep their fresh
    initial rows). Returns the organs that start fresh."""
    state = dict(start.state_dict())
    new, old = list(model.config.organs), list(start.config.organs)
    if new != old:
        rows = [0] + [old.index(o) + 1 for o in new if o in old]
        mine = [0] + [new.index(o) + 1 for o in new if o in old]
        for key in ("net.head.weight", "net.head.bias"):
            fresh = model.state_dict()[key].clone()
            fresh[mine] = state[key][rows]
            state[key] = fresh
    model.load_state_dict(state)
    return [o for o in new if o not in old]


class RothModel(nn.Module):
    """The FCN plus its config; :meth:`organ_probability` makes it a box detector."""

    def __init__(self, config: RothConfig = RothConfig()) -> None:
        super().__init__()
        if not isinstance(config, RothConfig):
            raise ConfigError(f"expected a RothConfig, got {type(config).__name__}")
        self.config = config
        self.net = build_network(config.net_config)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def organ_label(self, organ: str) -> int:
        """The output label of ``organ`` (1.., :attr:`RothConfig.organs` order).

        Raises:
            ConfigError: not a Roth organ, or not one of this model's.
        """
        return _organ_index(organ, self.config.organs)

    def organ_probability(self, image: Volume, device: str | torch.device | None = None, *,
                          organ: str = "pancreas") -> np.ndarray:
        """float32 ``(z, y, x)`` probability of one organ on ``image``'s grid (computed in LPS
        array order, mapped back to ``image``'s)."""
        k = self.organ_label(organ)
        _check_volume(image, "ct")
        lps, orientation = _lps(image)
        prob = _predict_working(self, lps, _device(device))
        out = _resample(prob[k], lps.shape).numpy().clip(0, 1).astype(np.float32)
        return orientation.array_back(out)

    def save(self, path: str | os.PathLike, **provenance: Any) -> Path:
        """Write ``path`` (state dict) and its ``.json`` card."""
        return _save_system(_SYSTEM, self, self.config, path, provenance)


def bundled_roth_path() -> Path:
    """Path of the shipped multi-organ model (``iunet_nb/assets``; its card says how it was
    trained and what it measures on real CT)."""
    return _bundled_asset(BUNDLED_ROTH)


def load_bundled_roth(device: str | torch.device | None = "cpu") -> RothModel:
    """The shipped multi-organ model, SHA-256-checked like the bundled iUnet (no download).

    Raises:
        CheckpointError: the file is missing or not the one shipped.
    """
    path = _checked_bundled(bundled_roth_path(), BUNDLED_ROTH_SHA256, "Roth model",
                            "train one with `python scripts/train_roth.py`")
    return load_roth(path, device)


def load_roth(path: str | os.PathLike, device: str | torch.device | None = "cpu") -> RothModel:
    """Load a :class:`RothModel` saved by :meth:`RothModel.save` (``weights_only=True``).

    Raises:
        CheckpointError: missing/corrupt files, another system's card, mismatched weights.
    """
    return _load_system(_SYSTEM, RothModel, RothConfig, path, device)


def _working(ct: Volume, cfg: RothConfig) -> np.ndarray:
    if cfg.voxel_mm is not None:
        shape = _working_shape(ct.shape, ct.spacing_mm, cfg.voxel_mm)
    else:
        shape = _working_shape(ct.shape, ct.spacing_mm, None,
                               scale=[1.0 / f for f in cfg.downsample])
    return _resample(_window(ct.array, cfg.hu_window), shape).numpy()


def _labels_working(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(labels.astype(np.float32)))
    return _resample(t, shape, mode="nearest-exact").round().to(torch.uint8).numpy()


# ----------------------------------------------------------------------------------- training
@dataclass
class RothTrainResult:
    """What :func:`train_roth` returns: the model (eval, CPU), losses, time, output folder."""

    model: RothModel
    losses: list[float] = field(default_factory=list)
    train_time_s: float = 0.0
    out_dir: Path | None = None


def train_roth(cases: Sequence[tuple[Volume, Volume]], config: RothConfig = RothConfig(),
               out_dir: str | os.PathLike | None = None, *,
               label_table: Mapping[str, Sequence[int]] | None = BTCV_TO_ROTH,
               device: str | torch.device | None = None, progress: bool = True,
               data_description: str = "",
               on_step: Callable[[int, float, RothModel], None] | None = None,
               init_from: str | os.PathLike | None = None,
               unlabelled: Sequence[Sequence[str]] | None = None,
               ) -> RothTrainResult:
    """Train the multi-organ FCN from scratch (or on from saved weights) on random augmented
    subvolumes.

    Args:
        cases: ``(CT in HU, label map)`` pairs on the same grid.
        config: settings; :meth:`RothConfig.reduced` for a CPU.
        out_dir: if given, ``model.pt`` + ``model.json`` + ``losses.json`` are written.
        label_table: maps the label maps' values to the Roth organs (default BTCV); None if
            the label maps already hold Roth labels 0..7.
        device: None for CUDA when available.
        progress: tqdm bar.
        data_description: recorded in the card.
        on_step: called as ``on_step(i, loss, model)`` after step ``i`` (0-based), the model
            in training mode, e.g. to save intermediate weights of a long run.
        init_from: a saved Roth model (:func:`load_roth`) whose weights start the training
            (its network settings must be ``config``'s; the learning-rate schedule, the
            sampling and the augmentation start afresh from ``config``).
        unlabelled: per case, the Roth organs its label map does not draw (a real CT with
            masks of some organs only, e.g. 3D-IRCADb without stomach, gallbladder and
            pancreas); their voxels count as "background or one of these" (the marginal
            loss, see :func:`_loss`). None: every case draws all of ``config.organs``.

    Returns:
        :class:`RothTrainResult`.

    Raises:
        InputError: no cases, mismatched grids, label maps without any Roth organ, or
            ``unlabelled`` not one entry of Roth organs per case.
    """
    _check_training(_SYSTEM, config, RothConfig, cases, "(CT, label map)")
    organs = list(config.organs)
    n_classes = len(organs) + 1
    known = torch.ones(len(cases), n_classes)
    if unlabelled is not None:
        if len(unlabelled) != len(cases):
            raise InputError(f"unlabelled has {len(unlabelled)} entries for {len(cases)} cases")
        for i, missing in enumerate(unlabelled):
            wrong = sorted(set(missing) - set(ROTH_ORGANS))
            if wrong or isinstance(missing, str):
                raise InputError(f"unlabelled[{i}]: {missing!r} must be a list of Roth organs "
                                 f"{list(ROTH_ORGANS)}")
            for organ in set(missing) & set(organs):
                known[i, organs.index(organ) + 1] = 0.0
    t0 = _now()
    dev = _device(device)
    images, labels = [], []
    for i, (ct, lab) in enumerate(cases):
        _check_volume(ct, f"case {i} CT")
        if not isinstance(lab, Volume) or lab.shape != ct.shape:
            raise InputError(f"case {i}: the label map must be a Volume of the CT's shape "
                             f"{ct.shape}")
        ct, lab = _lps_pair(ct, lab)  # z tiles and patches in patient order
        roth = (map_labels(lab.array, label_table, organs) if label_table is not None
                else lab.array)
        if roth.max() > len(organs):
            raise InputError(f"case {i}: labels above {len(organs)}; pass label_table to "
                             "map them to the Roth organs")
        img = _working(ct, config)
        images.append(torch.from_numpy(img))
        labels.append(torch.from_numpy(_labels_working(roth, img.shape)))
    if not any(bool(lab.any()) for lab in labels):
        raise InputError("no case contains any of the Roth organs; check label_table")
    with _seeded(config.seed):
        model = RothModel(config)
    if init_from is not None:
        start = load_roth(init_from)
        # the network and what it sees must be the same; schedule and augmentation may change
        differ = [f for f in ("base_channels", "depth", "hu_window", "voxel_mm", "downsample")
                  if getattr(start.config, f) != getattr(config, f)]
        if differ:
            raise ConfigError(f"init_from {init_from}: its {', '.join(differ)} differ from the "
                              "config's; start from a model with the same network and input")
        fresh = _carry_weights(model, start)
        if fresh:
            logger.info("init_from %s: output rows of %s start fresh", init_from, fresh)
    rng = np.random.default_rng(config.seed)

    def batch() -> tuple[Tensor, Tensor]:
        n = len(images)
        who = rng.choice(n, size=config.batch_size, replace=config.batch_size > n)
        pairs = [_sample(images[c], labels[c], _patch_grid(images[c].shape, config, rng))
                 for c in who]
        x = torch.stack([p[0] for p in pairs])[:, None]
        y = F.one_hot(torch.stack([p[1] for p in pairs]), n_classes).movedim(-1, 1).float()
        mark = known[torch.as_tensor(who)].reshape(len(who), n_classes, *([1] * (y.ndim - 2)))
        return x, torch.where(mark > 0, y, torch.full_like(y, -1.0))   # -1: not labelled

    losses = _fit(model, batch, lambda x, y: _loss(model(x), y, config),
                  config.iterations, config.lr, dev, "Roth FCN", progress,
                  lr_final=config.lr_final,
                  on_step=None if on_step is None else lambda i, v: on_step(i, v, model))
    elapsed = round(_now() - t0, 1)
    out = _write_training(model, out_dir, losses, data=data_description, train_time_s=elapsed,
                          cases=len(images))
    return RothTrainResult(model=model, losses=losses, train_time_s=elapsed, out_dir=out)


# ----------------------------------------------------------------------------------- inference
def _tiles(n: int, tile: int, overlap: float) -> list[int]:
    """Start indices of tiles of ``tile`` slices covering ``0..n`` (last one flush with n)."""
    if n <= tile:
        return [0]
    step = max(1, int(round(tile * (1.0 - overlap))))
    starts = list(range(0, n - tile + 1, step))
    if starts[-1] != n - tile:
        starts.append(n - tile)
    return starts


@torch.no_grad()
def _predict_working(model: RothModel, ct: Volume, dev: torch.device) -> Tensor:
    """Softmax ``(1 + organs, D, H, W)`` on the working grid, z tiles averaged where they
    overlap."""
    _check_volume(ct, "ct")
    cfg = model.config
    vol = torch.from_numpy(_working(ct, cfg))
    d, h, w = vol.shape
    m = 2 ** (cfg.depth - 1)
    tile = cfg.tile_z
    pad_z = max(0, tile - d)
    pad_y, pad_x = (-h) % m, (-w) % m
    x = F.pad(vol[None, None] + 1.0, (0, pad_x, 0, pad_y, 0, pad_z)) - 1.0   # air padding
    dz = x.shape[2]
    total = torch.zeros(len(cfg.organs) + 1, dz, x.shape[3], x.shape[4])
    count = torch.zeros(dz)
    model = model.to(dev).eval()
    for z0 in _tiles(dz, tile, cfg.tile_overlap):
        prob = torch.softmax(model(x[:, :, z0:z0 + tile].to(dev)), 1)[0].cpu()
        total[:, z0:z0 + tile] += prob
        count[z0:z0 + tile] += 1
    return (total / count.view(1, -1, 1, 1))[:, :d, :h, :w]


@dataclass
class RothPrediction:
    """Labels 0.. (``organs`` order, 0 background) on the CT's grid, and the time taken."""

    labels: Volume
    elapsed_s: float
    organs: tuple[str, ...] = ROTH_ORGANS

    def organ_mask(self, organ: str) -> Volume:
        """uint8 {0, 1} mask of one organ.

        Raises:
            ConfigError: not one of :data:`ROTH_ORGANS`, or not one of the model's.
        """
        k = _organ_index(organ, self.organs)
        return self.labels.with_array((self.labels.array == k).astype(np.uint8))


def predict_roth(ct: Volume, model: RothModel, *,
                 device: str | torch.device | None = None) -> RothPrediction:
    """Segment the model's organs on a CT; labels on ``ct``'s grid and geometry.

    The CT is brought to patient (LPS) array order first (exact transposes/flips), so the z
    tiles run along the patient's axis whatever the storage order; the labels are mapped back
    to ``ct``'s own array. The working-grid softmax is resampled to the CT's grid one class at a time (trilinear)
    and the label is the arg-max, so memory stays at a few full-size arrays.

    Raises:
        InputError: ``ct`` is not a finite real Volume or ``model`` not a RothModel.
    """
    if not isinstance(model, RothModel):
        raise InputError(f"predict_roth needs a RothModel, got {type(model).__name__}")
    t0 = _now()
    _check_volume(ct, "ct")
    lps, orientation = _lps(ct)
    prob = _predict_working(model, lps, _device(device))
    best = np.full(lps.shape, -1.0, dtype=np.float32)
    label = np.zeros(lps.shape, dtype=np.uint8)
    for k in range(prob.shape[0]):
        p = _resample(prob[k], lps.shape).numpy()
        better = p > best
        best[better] = p[better]
        label[better] = k
    organs = tuple(model.config.organs)
    meta = {"source": "iunet_nb.systems.roth", "organs": list(organs)}
    return RothPrediction(Volume(orientation.array_back(label), ct.geometry, meta),
                          round(_now() - t0, 3), organs)
