"""3D segmentation networks: the paper's iUnet, Cicek et al.'s 3D U-Net and a dilated FCN.

Every network maps a float32 batch ``(N, C, D, H, W)`` (``D, H, W`` = z, y, x) to logits
``(N, n_classes, D, H, W)`` of the same spatial size (3x3x3 convolutions with padding, as in
Boers et al. 2020). Softmax is *not* applied; losses and predictors do that.

Interactive refinement contract (used by the Session; nothing else needs to know layer
names):

* :meth:`SegmentationNet.interactive_parameters` returns the weights and biases of exactly
  two convolutions: the last layer (the 1x1x1 classifier) and ONE layer of the deepest
  section (U-Nets: the second bottleneck convolution; dilated FCN: the last convolution of
  the block with the largest dilation).
* :meth:`SegmentationNet.freeze_for_refinement` sets ``requires_grad`` to False on every
  other parameter (True on those two layers) and returns them, ready for an optimiser.
* :meth:`SegmentationNet.encode_frozen` runs everything that comes *before* the trainable
  deep layer once, under ``torch.no_grad``, and returns the cached features (the skip
  connections included); :meth:`SegmentationNet.decode_trainable` runs the rest, so that
  ``decode_trainable(encode_frozen(x))`` equals ``forward(x)`` exactly in eval mode. A
  refinement loop encodes once and decodes at each iteration.

Refine in **eval mode** (``model.eval()``): batch-norm layers then use their running
statistics, which are frozen too, and ``encode_frozen`` does not update them.

Example:
    >>> cfg = NetConfig(arch="iunet", base_channels=4)
    >>> net = build_network(cfg).eval()
    >>> x = torch.zeros(1, 1, 24, 64, 64)
    >>> tuple(net(x).shape)
    (1, 2, 24, 64, 64)
    >>> params = net.freeze_for_refinement()
    >>> state = net.encode_frozen(x)
    >>> torch.equal(net.decode_trainable(state), net(x))
    True
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._config import JsonConfig
from ..errors import ConfigError, InputError

__all__ = [
    "ARCHITECTURES",
    "CicekUNet3D",
    "DilatedFCN3D",
    "EncodedFeatures",
    "IUNet",
    "NetConfig",
    "SegmentationNet",
    "build_network",
    "count_parameters",
]

logger = logging.getLogger(__name__)

ARCHITECTURES: tuple[str, ...] = ("iunet", "cicek", "dilated_fcn")
_NORMS: tuple[str, ...] = ("batch", "instance")
_MAX_DEPTH = 6
# Largest dilation used along z by the dilated FCN (see DilatedFCN3D).
_MAX_Z_DILATION = 4


@dataclass(frozen=True)
class NetConfig(JsonConfig):
    """Which network to build and how wide/deep it is.

    Args:
        version: config schema version; only 1 exists.
        arch: ``"iunet"`` (Boers et al. 2020), ``"cicek"`` (Cicek et al. 2016 3D U-Net) or
            ``"dilated_fcn"`` (Wang et al.'s dilated FCN, the paper's iFCN baseline).
        in_channels: image channels (1 for CT).
        n_classes: output classes including background (>= 2; softmax over classes).
        base_channels: width. iUnet: ``base * 2**level`` channels per level. Cicek: the
            original widths (32-64, 64-128, 128-256, 256-512) scaled by ``base / 32``.
            Dilated FCN: ``base`` channels in every dilated convolution.
        depth: U-Nets: resolution levels including the bottleneck, i.e. ``depth - 1``
            max-pools, so D, H and W must be divisible by ``2**(depth - 1)``. Dilated FCN:
            ``depth + 1`` blocks with dilations ``1, 1, 2, 4, ..., 2**(depth - 1)``.
        norm: ``"batch"`` (BatchNorm3d) or ``"instance"`` (InstanceNorm3d with affine).

    Raises:
        ConfigError: a value of the wrong type or out of range.

    Example:
        >>> NetConfig.from_json(NetConfig(arch="cicek").to_json()).arch
        'cicek'
    """

    version: int = 1
    arch: str = "iunet"
    in_channels: int = 1
    n_classes: int = 2
    base_channels: int = 16
    depth: int = 4
    norm: str = "batch"

    def __post_init__(self) -> None:
        for name in ("version", "in_channels", "n_classes", "base_channels", "depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"NetConfig.{name} must be an integer, got {value!r}")
        if self.version != 1:
            raise ConfigError(f"NetConfig.version {self.version} is not supported; this "
                              "iunet_nb reads version 1 (upgrade iunet_nb to read newer files)")
        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"NetConfig.arch must be one of {list(ARCHITECTURES)}, "
                              f"got {self.arch!r}")
        if self.norm not in _NORMS:
            raise ConfigError(f"NetConfig.norm must be one of {list(_NORMS)}, got {self.norm!r}")
        if self.in_channels < 1:
            raise ConfigError(f"NetConfig.in_channels must be >= 1, got {self.in_channels}")
        if self.n_classes < 2:
            raise ConfigError(f"NetConfig.n_classes must be >= 2 (background + at least one "
                              f"structure), got {self.n_classes}")
        if self.base_channels < 1:
            raise ConfigError(f"NetConfig.base_channels must be >= 1, got {self.base_channels}")
        if not 2 <= self.depth <= _MAX_DEPTH:
            raise ConfigError(f"NetConfig.depth must be between 2 and {_MAX_DEPTH}, "
                              f"got {self.depth}")

    @property
    def size_multiple(self) -> int:
        """D, H and W of the input must be multiples of this (1 for the dilated FCN)."""
        return 1 if self.arch == "dilated_fcn" else 2 ** (self.depth - 1)


@dataclass(frozen=True, eq=False)
class EncodedFeatures:
    """What :meth:`SegmentationNet.encode_frozen` caches for the refinement loop.

    Args:
        skips: frozen features that the trainable tail reads again (U-Nets: the encoder
            outputs per level, finest first; dilated FCN: the outputs of all blocks but the
            last), each float32 ``(N, C_i, D_i, H_i, W_i)``.
        h: input of the trainable deep layer, float32 ``(N, C, D', H', W')``.
    """

    skips: tuple[Tensor, ...]
    h: Tensor


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    return nn.InstanceNorm3d(channels, affine=True)


class _ConvNormReLU(nn.Sequential):
    """Conv3d 3x3x3 (padding = dilation, so sizes keep) -> norm -> ReLU."""

    def __init__(self, c_in: int, c_out: int, norm: str,
                 dilation: tuple[int, int, int] = (1, 1, 1)) -> None:
        super().__init__(
            nn.Conv3d(c_in, c_out, kernel_size=3, padding=dilation, dilation=dilation),
            _norm(norm, c_out),
            nn.ReLU(inplace=True),
        )

    @property
    def conv(self) -> nn.Conv3d:
        return self[0]  # type: ignore[return-value]


class SegmentationNet(nn.Module):
    """Base class: input checks, the refinement contract and the cached encode path.

    Subclasses implement ``_encode(x) -> EncodedFeatures``, ``_decode(state) -> logits`` and
    ``_interactive_layers() -> (deep_conv, last_conv)``; :meth:`forward` is
    ``_decode(_encode(x))``, so the cached path cannot drift from the plain one.
    """

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        if not isinstance(cfg, NetConfig):
            raise ConfigError(f"expected a NetConfig, got {type(cfg).__name__}")
        self.cfg = cfg

    # -- subclass hooks ------------------------------------------------------------------
    def _encode(self, x: Tensor) -> EncodedFeatures:  # pragma: no cover - abstract
        raise NotImplementedError

    def _decode(self, state: EncodedFeatures) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _interactive_layers(self) -> tuple[nn.Module, nn.Module]:  # pragma: no cover
        raise NotImplementedError

    # -- public API ----------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Logits of a batch.

        Args:
            x: float32 ``(N, in_channels, D, H, W)``; D, H, W multiples of
                ``cfg.size_multiple``.

        Returns:
            float32 logits ``(N, n_classes, D, H, W)``.

        Raises:
            InputError: wrong rank, channel count or spatial size.
        """
        self.check_input(x)
        return self._decode(self._encode(x))

    def encode_frozen(self, x: Tensor) -> EncodedFeatures:
        """Run the frozen front once, without autograd, and cache what the tail needs.

        Args:
            x: as for :meth:`forward`.

        Returns:
            :class:`EncodedFeatures` to pass (repeatedly) to :meth:`decode_trainable`.
        """
        self.check_input(x)
        if self.training and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                 for m in self.modules()):
            logger.warning("encode_frozen in training mode updates batch-norm running "
                           "statistics and normalises with batch statistics; call "
                           "model.eval() before refining")
        with torch.no_grad():
            return self._encode(x)

    def decode_trainable(self, state: EncodedFeatures) -> Tensor:
        """Logits ``(N, n_classes, D, H, W)`` from cached features; gradients reach the tail.

        Raises:
            InputError: ``state`` is not an :class:`EncodedFeatures`.
        """
        if not isinstance(state, EncodedFeatures):
            raise InputError("decode_trainable expects the object returned by encode_frozen, "
                             f"got {type(state).__name__}")
        return self._decode(state)

    def deepest_zyx(self, size_zyx: Sequence[int]) -> tuple[int, int, int]:
        """Size of the deepest feature map for an input of ``size_zyx`` voxels."""
        m = self.cfg.size_multiple
        return tuple(int(n) // m for n in size_zyx[-3:])  # type: ignore[return-value]

    def interactive_parameters(self) -> list[nn.Parameter]:
        """Weights and biases of the deep trainable layer, then of the last layer (4 tensors)."""
        deep, last = self._interactive_layers()
        return [deep.weight, deep.bias, last.weight, last.bias]  # type: ignore[list-item]

    def freeze_for_refinement(self) -> list[nn.Parameter]:
        """Freeze all but :meth:`interactive_parameters`; return those (requires_grad True)."""
        for p in self.parameters():
            p.requires_grad_(False)
        params = self.interactive_parameters()
        for p in params:
            p.requires_grad_(True)
        return params

    def unfreeze_all(self) -> None:
        """Undo :meth:`freeze_for_refinement`: every parameter trains again."""
        for p in self.parameters():
            p.requires_grad_(True)

    def check_input(self, x: Tensor) -> None:
        """Raise :class:`InputError` unless ``x`` is a batch this network can take."""
        if not isinstance(x, Tensor):
            raise InputError(f"network input must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 5:
            raise InputError(f"network input must be (N, C, D, H, W), got shape {tuple(x.shape)}; "
                             "add batch/channel axes with x[None, None]")
        if x.shape[1] != self.cfg.in_channels:
            raise InputError(f"network expects {self.cfg.in_channels} input channel(s), got "
                             f"{x.shape[1]} (shape {tuple(x.shape)})")
        m = self.cfg.size_multiple
        bad = [n for n in x.shape[2:] if n < m or n % m]
        if bad:
            raise InputError(
                f"{type(self).__name__} with depth {self.cfg.depth} needs D, H, W that are "
                f"positive multiples of {m} (e.g. 24 x 64 x 64 or 48 x 128 x 128); got "
                f"{tuple(x.shape[2:])}. Resample or pad the crop to such a size.")
        if self.cfg.norm == "instance" and self.cfg.arch != "dilated_fcn" and self.training:
            deepest = [n // m for n in x.shape[2:]]
            if deepest == [1, 1, 1]:
                raise InputError(f"input {tuple(x.shape[2:])} leaves a 1x1x1 bottleneck, which "
                                 "instance norm cannot train on; use an input at least twice "
                                 f"as large ({2 * m}) along one axis")


# -- U-Nets ---------------------------------------------------------------------------------
class _UNet3D(SegmentationNet):
    """Generic 3D U-Net built from a channel plan (see IUNet and CicekUNet3D)."""

    def __init__(self, cfg: NetConfig, enc: Sequence[tuple[int, int]],
                 dec: Sequence[tuple[int, int, int]]) -> None:
        # enc[l] = (c1, c2) of level l (the last one is the bottleneck);
        # dec[l] = (up_in, up_out, c_out) for decoder level l (l = 0 finest).
        super().__init__(cfg)
        norm = cfg.norm
        self.encoder = nn.ModuleList()
        c_prev = cfg.in_channels
        for c1, c2 in enc[:-1]:
            self.encoder.append(nn.Sequential(_ConvNormReLU(c_prev, c1, norm),
                                              _ConvNormReLU(c1, c2, norm)))
            c_prev = c2
        self.pool = nn.MaxPool3d(kernel_size=2, stride=2)
        b1, b2 = enc[-1]
        self.bottleneck1 = _ConvNormReLU(c_prev, b1, norm)
        self.bottleneck2 = _ConvNormReLU(b1, b2, norm)   # trainable in refinement
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level, (up_in, up_out, c_out) in enumerate(dec):
            skip = enc[level][1]
            self.ups.append(nn.ConvTranspose3d(up_in, up_out, kernel_size=2, stride=2))
            self.decoder.append(nn.Sequential(_ConvNormReLU(up_out + skip, c_out, norm),
                                              _ConvNormReLU(c_out, c_out, norm)))
        self.head = nn.Conv3d(dec[0][2], cfg.n_classes, kernel_size=1)  # trainable

    def _encode(self, x: Tensor) -> EncodedFeatures:
        skips = []
        h = x
        for block in self.encoder:
            h = block(h)
            skips.append(h)
            h = self.pool(h)
        h = self.bottleneck1(h)
        return EncodedFeatures(skips=tuple(skips), h=h)

    def _decode(self, state: EncodedFeatures) -> Tensor:
        h = self.bottleneck2(state.h)
        for level in reversed(range(len(self.decoder))):
            h = self.ups[level](h)
            h = self.decoder[level](torch.cat([state.skips[level], h], dim=1))
        return self.head(h)

    def _interactive_layers(self) -> tuple[nn.Module, nn.Module]:
        return self.bottleneck2.conv, self.head


class IUNet(_UNet3D):
    """The iUnet of Boers et al. 2020: a 3D U-Net with same-size convolutions.

    Each level: two (Conv3d 3x3x3 padding 1 -> norm -> ReLU) with ``base * 2**level``
    channels (16, 32, 64, bottleneck 128 by default); 2x2x2 max-pool down;
    ConvTranspose3d 2x2x2 stride 2 up (halving the channels); concatenation skips; a final
    1x1x1 convolution to ``n_classes`` logits. Refinement trains the second bottleneck
    convolution and the final convolution (the paper's Figure 1, black boxes).

    Args:
        cfg: a :class:`NetConfig` (``arch`` is not checked here; use :func:`build_network`).

    Example:
        >>> net = IUNet(NetConfig(base_channels=2)).eval()
        >>> tuple(net(torch.zeros(2, 1, 24, 64, 64)).shape)
        (2, 2, 24, 64, 64)
    """

    def __init__(self, cfg: NetConfig) -> None:
        c = [cfg.base_channels * 2 ** level for level in range(cfg.depth)]
        enc = [(ch, ch) for ch in c]
        dec = [(c[level + 1], c[level], c[level]) for level in range(cfg.depth - 1)]
        super().__init__(cfg, enc, dec)


class CicekUNet3D(_UNet3D):
    """The 3D U-Net of Cicek et al. 2016, as the paper's comparison network.

    Analysis path: per level two (Conv3d 3x3x3 -> BN -> ReLU), the first with half the
    channels of the second: 32-64, 64-128, 128-256 and the bottleneck 256-512, all scaled by
    ``base_channels / 32`` (``base_channels=32`` gives the original widths; the default 16
    gives half). Synthesis path: ConvTranspose3d 2x2x2 stride 2 that keeps the channel count
    (512 -> 512 as in the original), concatenation with the skip, then two convolutions with
    the skip's channel count (256, 128, 64), and a 1x1x1 convolution to ``n_classes``.

    Differences from the original: padding 1 so feature maps keep their size (the original
    uses unpadded convolutions, 132x132x116 in -> 44x44x28 out); ``depth`` levels instead of
    a fixed 4; the normalisation follows ``cfg.norm``; the weighted softmax loss, elastic
    deformation and sparse-annotation training of the original are not part of the network.
    Refinement trains the second bottleneck convolution and the final convolution.

    Args:
        cfg: a :class:`NetConfig`.
    """

    def __init__(self, cfg: NetConfig) -> None:
        b = cfg.base_channels
        enc = [(b * 2 ** level, b * 2 ** (level + 1)) for level in range(cfg.depth)]
        dec = [(b * 2 ** (level + 2), b * 2 ** (level + 2), b * 2 ** (level + 1))
               for level in range(cfg.depth - 1)]
        super().__init__(cfg, enc, dec)


# -- Dilated FCN ----------------------------------------------------------------------------
class DilatedFCN3D(SegmentationNet):
    """The dilated FCN of Wang et al. (P-Net of DeepIGeoS / BIFSeg), the paper's iFCN baseline.

    No down-sampling. ``depth + 1`` blocks (5 by default) of Conv3d 3x3x3 -> norm -> ReLU
    with ``base_channels`` channels each; blocks 1-2 have two convolutions, the others
    three, with dilations ``1, 1, 2, 4, 8`` (``1, 1, 2, ..., 2**(depth-1)``) in-plane. Along
    z the dilation is capped at 4: the working grid has 24 slices that are about twice as
    thick as the in-plane voxels, and a dilation of 8 would make the outer taps of 16 of the
    24 slices read zero padding. The outputs of all blocks are concatenated (P-Net block 6)
    and go through a 1x1x1 convolution to ``2 * base_channels`` + ReLU and a final 1x1x1
    convolution to ``n_classes``. P-Net's dropout before block 6 is left out.

    Refinement trains the last convolution of the largest-dilation block and the final 1x1x1
    convolution.

    Args:
        cfg: a :class:`NetConfig`.
    """

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__(cfg)
        b = cfg.base_channels
        dilations = [1] + [2 ** i for i in range(cfg.depth)]
        self.dilations = tuple(dilations)
        self.blocks = nn.ModuleList()
        c_prev = cfg.in_channels
        for i, d in enumerate(dilations):
            dil = (min(d, _MAX_Z_DILATION), d, d)
            n_convs = 2 if i < 2 else 3
            layers = []
            for _ in range(n_convs):
                layers.append(_ConvNormReLU(c_prev, b, cfg.norm, dilation=dil))
                c_prev = b
            self.blocks.append(nn.Sequential(*layers))
        self.fuse = nn.Sequential(nn.Conv3d(b * len(dilations), 2 * b, kernel_size=1),
                                  nn.ReLU(inplace=True))
        self.head = nn.Conv3d(2 * b, cfg.n_classes, kernel_size=1)

    def _encode(self, x: Tensor) -> EncodedFeatures:
        feats = []
        h = x
        for block in self.blocks[:-1]:
            h = block(h)
            feats.append(h)
        last = self.blocks[-1]
        for layer in last[:-1]:
            h = layer(h)
        return EncodedFeatures(skips=tuple(feats), h=h)

    def _decode(self, state: EncodedFeatures) -> Tensor:
        h = self.blocks[-1][-1](state.h)
        h = self.fuse(torch.cat([*state.skips, h], dim=1))
        return self.head(h)

    def _interactive_layers(self) -> tuple[nn.Module, nn.Module]:
        return self.blocks[-1][-1].conv, self.head


_ARCH_CLASSES: dict[str, type[SegmentationNet]] = {
    "iunet": IUNet,
    "cicek": CicekUNet3D,
    "dilated_fcn": DilatedFCN3D,
}


def build_network(cfg: NetConfig) -> SegmentationNet:
    """Build the network ``cfg.arch`` names (weights initialised by PyTorch's defaults).

    Args:
        cfg: a :class:`NetConfig`.

    Returns:
        an :class:`IUNet`, :class:`CicekUNet3D` or :class:`DilatedFCN3D` in training mode.

    Raises:
        ConfigError: ``cfg`` is not a NetConfig.
    """
    if not isinstance(cfg, NetConfig):
        raise ConfigError(f"build_network expects a NetConfig, got {type(cfg).__name__}; "
                          "use NetConfig.from_json(...) to read one")
    return _ARCH_CLASSES[cfg.arch](cfg)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (only those with requires_grad if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
