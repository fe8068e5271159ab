"""Training augmentation of Boers et al. 2020: random translation, rotation and CT noise.

Every sample of a batch gets ONE random affine transform, applied alike to the image
(trilinear, border padding) and to its mask (trilinear, then threshold at 0.5), followed by
Gaussian noise on the image only. Everything random is drawn from the ``torch.Generator``
passed in, so the same seed gives the same batch.

Choices (the paper, section 2.4, only says "fractional translations -3..+3 voxels,
trilinear; random rotations -10..+10 degrees; Gaussian noise with sigma uniform in 0..3 HU"):

* **Voxel units, no spacing.** The transform lives in the voxel space of the preprocessed
  working grid (24 x 64 x 64, anisotropic: roughly 3.3-4.7 mm along z and 0.8-2.7 mm in
  plane). Translations are drawn independently along z, y and x in voxels; the rotation is
  in the voxel (y, x) plane, i.e. about the z axis, as the paper does. Because in-plane
  spacings differ, this is not a rigid rotation in millimetres; the paper works the same way.
* **In-plane rotation only by default.** A 10 degree tilt out of the plane would move the
  corners of a 64-voxel-wide slice by about 5 slices of a 24-slice volume, far more
  anatomy change than the paper's rotations imply. ``tilt_deg`` (default 0) adds optional
  rotations about the x and y axes, drawn uniformly in ``-tilt_deg..+tilt_deg``.
* **Noise in image units.** The preprocessed image maps [-160, 240] HU to [-1, 1], so one
  unit is ``hu_per_unit = 200`` HU and a sigma of 3 HU is 0.015 units.
* ``p`` is the probability that a sample is augmented at all (transform and noise).

Transform convention: with ``t`` the translation (z, y, x) in voxels, ``c`` the grid centre
and ``R`` the rotation, output voxel ``p`` reads the input at ``R^-1 (p - c - t) + c``: the
content moves by ``+t`` and turns by ``+angle``; a positive in-plane angle turns the +x axis
towards +y.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> image = torch.zeros(2, 1, 24, 64, 64)
    >>> mask = torch.zeros(2, 24, 64, 64, dtype=torch.uint8)
    >>> out_image, out_mask = augment_batch(image, mask, AugmentConfig(), g)
    >>> out_image.shape, out_mask.dtype
    (torch.Size([2, 1, 24, 64, 64]), torch.uint8)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .._config import JsonConfig
from ..errors import ConfigError, InputError

__all__ = [
    "AugmentConfig",
    "AugmentParams",
    "augment_batch",
    "draw_augment_params",
    "warp_batch",
]

# Number of uniform numbers drawn per sample (apply flag, 3 angles, 3 shifts, noise sigma).
_DRAWS_PER_SAMPLE = 8


@dataclass(frozen=True)
class AugmentConfig(JsonConfig):
    """Ranges of the random augmentation (defaults: the paper's).

    Args:
        version: schema version; only 1 exists.
        translate_vox: shifts uniform in ``-translate_vox..+translate_vox`` voxels, along
            each of z, y, x independently (fractional).
        rotate_deg: in-plane rotation (about z) uniform in ``-rotate_deg..+rotate_deg``.
        tilt_deg: rotations about the y and x axes uniform in ``-tilt_deg..+tilt_deg``
            (default 0: in-plane only, see the module notes).
        noise_sigma_hu: ``(low, high)``: the noise sigma of each sample is uniform in this
            range, in HU.
        hu_per_unit: HU per image unit after preprocessing (400 HU window over [-1, 1]).
        p: probability that a sample is augmented at all.
        scale: each axis is zoomed by a factor uniform in ``1 - scale .. 1 + scale``,
            independently (0, the paper's: none): organs of other sizes and proportions.
        elastic_vox: a smooth random displacement of up to about this many voxels (a
            Gaussian field on a 4 x 4 x 4 control grid, upsampled; 0: none): pancreas shapes
            beyond the training label maps' (30 BTCV maps hold 30 glands).

    Raises:
        ConfigError: negative or non-finite ranges, ``low > high``, ``p`` outside [0, 1].
    """

    version: int = 1
    translate_vox: float = 3.0
    rotate_deg: float = 10.0
    tilt_deg: float = 0.0
    noise_sigma_hu: tuple[float, float] = (0.0, 3.0)
    hu_per_unit: float = 200.0
    p: float = 1.0
    scale: float = 0.0
    elastic_vox: float = 0.0

    def __post_init__(self) -> None:
        if self.version != 1:
            raise ConfigError(f"AugmentConfig.version {self.version!r} is not supported; "
                              "this iunet_nb reads version 1")
        for name, upper in (("translate_vox", math.inf), ("rotate_deg", 180.0),
                            ("tilt_deg", 90.0), ("hu_per_unit", math.inf), ("p", 1.0),
                            ("scale", 0.5), ("elastic_vox", 16.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"AugmentConfig.{name} must be a number, got {value!r}")
            if not (0.0 <= value <= upper) or math.isnan(value) or value == math.inf:
                raise ConfigError(f"AugmentConfig.{name} must be finite and in [0, {upper}], "
                                  f"got {value}")
            object.__setattr__(self, name, float(value))
        if self.hu_per_unit <= 0:
            raise ConfigError(f"AugmentConfig.hu_per_unit must be > 0, got {self.hu_per_unit}")
        sigma = self.noise_sigma_hu
        if (not isinstance(sigma, (tuple, list)) or len(sigma) != 2
                or not all(isinstance(s, (int, float)) and not isinstance(s, bool)
                           for s in sigma)):
            raise ConfigError("AugmentConfig.noise_sigma_hu must be a pair (low, high) in HU, "
                              f"got {sigma!r}")
        lo, hi = float(sigma[0]), float(sigma[1])
        if not (0.0 <= lo <= hi < math.inf):
            raise ConfigError("AugmentConfig.noise_sigma_hu needs 0 <= low <= high (finite), "
                              f"got ({lo}, {hi})")
        object.__setattr__(self, "noise_sigma_hu", (lo, hi))


@dataclass(frozen=True, eq=False)
class AugmentParams:
    """The random draws of one batch (CPU float64 tensors, one row per sample).

    Args:
        applied: bool ``(N,)``, whether the sample is augmented at all.
        angles_deg: ``(N, 3)``: rotation about z (in-plane), about y, about x, in degrees.
        translation_vox: ``(N, 3)``: shift of the content along (z, y, x), in voxels.
        noise_sigma: ``(N,)``: noise sigma in image units (HU / hu_per_unit).
        zoom: ``(N, 3)`` zoom factors along (z, y, x) (None: 1).
        displacement_vox: ``(N, 3, 4, 4, 4)``: the elastic field's control points, voxels
            along (z, y, x) (None: no field).
    """

    applied: Tensor
    angles_deg: Tensor
    translation_vox: Tensor
    noise_sigma: Tensor
    zoom: Tensor | None = None
    displacement_vox: Tensor | None = None

    def is_identity(self) -> Tensor:
        """bool ``(N,)``: samples whose geometric transform does nothing."""
        still = (self.angles_deg == 0).all(dim=1) & (self.translation_vox == 0).all(dim=1)
        if self.zoom is not None:
            still &= (self.zoom == 1).all(dim=1)
        if self.displacement_vox is not None:
            still &= (self.displacement_vox == 0).flatten(1).all(dim=1)
        return ~self.applied | still

    def select(self, idx: Tensor) -> "AugmentParams":
        """The parameters of the samples ``idx``."""
        return AugmentParams(self.applied[idx], self.angles_deg[idx], self.translation_vox[idx],
                             self.noise_sigma[idx],
                             None if self.zoom is None else self.zoom[idx],
                             None if self.displacement_vox is None else self.displacement_vox[idx])


def draw_augment_params(n: int, cfg: AugmentConfig, generator: torch.Generator) -> AugmentParams:
    """Draw the transforms of ``n`` samples from ``generator`` (8 uniforms per sample).

    The number of draws does not depend on ``cfg``, so changing a range does not shift the
    random stream of what follows.

    Raises:
        InputError: ``generator`` is not a torch.Generator or ``n < 0``.
    """
    _check_generator(generator)
    if n < 0:
        raise InputError(f"number of samples must be >= 0, got {n}")
    u = torch.rand((n, _DRAWS_PER_SAMPLE), generator=generator, dtype=torch.float64,
                   device=generator.device).cpu()
    sym = 2.0 * u - 1.0
    applied = u[:, 0] < cfg.p
    angles = torch.stack([sym[:, 1] * cfg.rotate_deg, sym[:, 2] * cfg.tilt_deg,
                          sym[:, 3] * cfg.tilt_deg], dim=1)
    shift = sym[:, 4:7] * cfg.translate_vox
    lo, hi = cfg.noise_sigma_hu
    sigma = (lo + (hi - lo) * u[:, 7]) / cfg.hu_per_unit
    zero = torch.zeros((), dtype=torch.float64)
    zoom = displacement = None
    # drawn only when asked for, after the 8 uniforms: older configs keep their stream
    if cfg.scale > 0:
        z = 1.0 + cfg.scale * (2.0 * torch.rand((n, 3), generator=generator, dtype=torch.float64,
                                                device=generator.device).cpu() - 1.0)
        zoom = torch.where(applied[:, None], z, torch.ones((), dtype=torch.float64))
    if cfg.elastic_vox > 0:
        d = torch.randn((n, 3, 4, 4, 4), generator=generator, dtype=torch.float64,
                        device=generator.device).cpu() * (cfg.elastic_vox / 2.0)
        displacement = torch.where(applied[:, None, None, None, None], d, zero)
    return AugmentParams(applied=applied,
                         angles_deg=torch.where(applied[:, None], angles, zero),
                         translation_vox=torch.where(applied[:, None], shift, zero),
                         noise_sigma=torch.where(applied, sigma, zero),
                         zoom=zoom, displacement_vox=displacement)


def _rotation_zyx(angles_deg: Tensor) -> Tensor:
    """``(N, 3, 3)`` rotations acting on (z, y, x) voxel vectors: R = Rz @ Ry @ Rx."""
    a = torch.deg2rad(angles_deg)
    n = a.shape[0]

    def plane(i: int, j: int, theta: Tensor) -> Tensor:
        # Rotation in the (j -> i) plane: turns axis j towards axis i for theta > 0.
        r = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
        c, s = torch.cos(theta), torch.sin(theta)
        r[:, j, j] = c
        r[:, j, i] = -s
        r[:, i, j] = s
        r[:, i, i] = c
        return r

    rz = plane(1, 2, a[:, 0])   # in-plane: +x towards +y
    ry = plane(0, 2, a[:, 1])   # about y: +x towards +z
    rx = plane(0, 1, a[:, 2])   # about x: +y towards +z
    return rz @ ry @ rx


def _theta(params: AugmentParams, spatial: tuple[int, int, int]) -> Tensor:
    """``(N, 3, 4)`` float64 matrices for ``F.affine_grid`` (align_corners=True, x-y-z order)."""
    half = torch.tensor([(s - 1) / 2.0 for s in spatial], dtype=torch.float64)
    r_inv = _rotation_zyx(params.angles_deg).transpose(1, 2)
    if params.zoom is not None:   # input = Z^-1 R^-1 (p - c - t) + c
        r_inv = torch.diag_embed(1.0 / params.zoom) @ r_inv
    # Normalised coords n = p / half - 1 (voxel p). Input n_in = S^-1 R^-1 S n - S^-1 R^-1 t.
    s_mat = torch.diag(half)
    s_inv = torch.diag(1.0 / half)
    lin = s_inv @ r_inv @ s_mat
    off = -(s_inv @ r_inv @ params.translation_vox[:, :, None])[:, :, 0]
    rev = [2, 1, 0]  # (z, y, x) -> (x, y, z)
    lin = lin[:, rev][:, :, rev]
    off = off[:, rev]
    return torch.cat([lin, off[:, :, None]], dim=2)


def _check_generator(generator: object) -> None:
    if not isinstance(generator, torch.Generator):
        raise InputError("augmentation needs a torch.Generator (e.g. "
                         f"torch.Generator().manual_seed(0)), got {type(generator).__name__}")


def _check_batch(image: Tensor, mask: Tensor) -> tuple[int, int, int]:
    if not isinstance(image, Tensor) or not image.is_floating_point() or image.ndim != 5:
        raise InputError("image must be a float tensor (N, C, D, H, W), got "
                         f"{getattr(image, 'dtype', type(image).__name__)} "
                         f"{tuple(getattr(image, 'shape', ()))}")
    if not isinstance(mask, Tensor):
        raise InputError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    n, spatial = image.shape[0], tuple(image.shape[2:])
    ok = (mask.ndim == 4 and tuple(mask.shape) == (n, *spatial)) or (
        mask.ndim == 5 and tuple(mask.shape) == (n, 1, *spatial))
    if not ok:
        raise InputError(f"mask {tuple(mask.shape)} must be (N, D, H, W) or (N, 1, D, H, W) "
                         f"matching image {tuple(image.shape)}")
    if min(spatial) < 2:
        raise InputError(f"each of D, H, W must be >= 2 to resample, got {spatial}")
    if mask.numel() and bool(((mask != 0) & (mask != 1)).any()):
        raise InputError("mask must be binary {0, 1}; augment one label at a time")
    return spatial  # type: ignore[return-value]


def warp_batch(image: Tensor, mask: Tensor, params: AugmentParams) -> tuple[Tensor, Tensor]:
    """Apply the geometric part of ``params`` to image and mask (no noise).

    Args:
        image: float ``(N, C, D, H, W)``, every channel moved alike.
        mask: binary ``(N, D, H, W)`` or ``(N, 1, D, H, W)``, any dtype (uint8, bool, float).
        params: from :func:`draw_augment_params` (or built by hand: any angles/shifts).

    Returns:
        ``(image, mask)``: new tensors of the input shapes, dtypes and device. Samples whose
        transform is the identity are copied exactly, without resampling.

    Raises:
        InputError: bad shapes or dtypes, or a mask with values other than 0 and 1.
    """
    spatial = _check_batch(image, mask)
    n = image.shape[0]
    if params.applied.shape != (n,):
        raise InputError(f"params describe {params.applied.shape[0]} samples, image has {n}")
    out_image = image.clone()
    out_mask = mask.clone()
    moving = torch.nonzero(~params.is_identity()).flatten()
    if moving.numel() == 0:
        return out_image, out_mask
    sub = params.select(moving)
    theta = _theta(sub, spatial).to(device=image.device, dtype=image.dtype)
    idx = moving.to(image.device)
    grid = F.affine_grid(theta, [len(moving), 1, *spatial], align_corners=True)
    if sub.displacement_vox is not None:
        # control-point field -> full grid (trilinear), voxels -> normalised (x, y, z) units
        field = F.interpolate(sub.displacement_vox.to(image.dtype), size=spatial,
                              mode="trilinear", align_corners=True)
        half = torch.tensor([(s - 1) / 2.0 for s in spatial], dtype=image.dtype)
        field = field / half.view(1, 3, 1, 1, 1)
        grid = grid + field.flip(1).permute(0, 2, 3, 4, 1).to(image.device)
    out_image[idx] = F.grid_sample(image[idx], grid, mode="bilinear", padding_mode="border",
                                   align_corners=True)
    m = mask[idx].reshape(len(moving), 1, *spatial).to(image.dtype)
    warped = F.grid_sample(m, grid, mode="bilinear", padding_mode="border",
                           align_corners=True) > 0.5
    out_mask[idx] = warped.reshape(mask[idx].shape).to(mask.dtype)
    return out_image, out_mask


def augment_batch(image: Tensor, mask: Tensor, cfg: AugmentConfig,
                  generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Randomly translate, rotate and add noise to a training batch.

    One transform per sample, drawn from ``generator``, moves image and mask alike; then
    Gaussian noise with the sample's sigma (HU / ``cfg.hu_per_unit``) is added to the image.

    Args:
        image: float32 ``(N, C, D, H, W)`` preprocessed image (units: 1 = ``hu_per_unit`` HU).
        mask: binary ``(N, D, H, W)`` or ``(N, 1, D, H, W)`` (uint8, bool or float).
        cfg: the ranges.
        generator: the only source of randomness (CPU or on the image's device).

    Returns:
        ``(image, mask)`` with the input shapes and dtypes.

    Raises:
        InputError: bad shapes, a non-binary mask, or no torch.Generator.

    Example:
        >>> g = torch.Generator().manual_seed(1)
        >>> img, msk = augment_batch(torch.zeros(1, 1, 8, 16, 16),
        ...                          torch.zeros(1, 8, 16, 16), AugmentConfig(), g)
    """
    _check_generator(generator)
    if not isinstance(cfg, AugmentConfig):
        raise ConfigError(f"expected an AugmentConfig, got {type(cfg).__name__}")
    _check_batch(image, mask)
    params = draw_augment_params(image.shape[0], cfg, generator)
    out_image, out_mask = warp_batch(image, mask, params)
    noise = torch.randn(image.shape, generator=generator, dtype=image.dtype,
                        device=generator.device).to(image.device)
    sigma = params.noise_sigma.to(device=image.device, dtype=image.dtype)
    noisy = params.noise_sigma > 0
    if bool(noisy.any()):
        out_image = out_image + noise * sigma.view(-1, *([1] * (image.ndim - 1)))
    return out_image, out_mask
