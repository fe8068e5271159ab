"""Tests of iunet_nb.model.augment: exact identity, exact integer shifts, rotation, noise, coupling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_ellipsoid

from iunet_nb.errors import ConfigError, InputError
from iunet_nb.model.augment import (
    AugmentConfig,
    AugmentParams,
    augment_batch,
    draw_augment_params,
    warp_batch,
)

SHAPE = (24, 64, 64)
NO_AUG = AugmentConfig(translate_vox=0.0, rotate_deg=0.0, noise_sigma_hu=(0.0, 0.0))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _params(angles, shifts, sigma=0.0) -> AugmentParams:
    a = torch.tensor(angles, dtype=torch.float64).reshape(-1, 3)
    t = torch.tensor(shifts, dtype=torch.float64).reshape(-1, 3)
    n = a.shape[0]
    return AugmentParams(applied=torch.ones(n, dtype=torch.bool), angles_deg=a,
                         translation_vox=t, noise_sigma=torch.full((n,), sigma,
                                                                   dtype=torch.float64))


def _com(x: np.ndarray) -> np.ndarray:
    idx = np.indices(x.shape).reshape(3, -1)
    w = x.reshape(-1).astype(float)
    return (idx * w).sum(axis=1) / w.sum()


def _case(n=2, center=(11.5, 30.0, 36.0)):
    mask = torch.from_numpy(make_ellipsoid(SHAPE, center=center, radii=(4.0, 7.0, 9.0)))
    mask = mask[None].repeat(n, 1, 1, 1)
    image = torch.rand((n, 1, *SHAPE), generator=_gen(9)) * 0.1 + mask[:, None].float()
    return image, mask


def test_zero_range_config_is_the_exact_identity():
    image, mask = _case()
    out_image, out_mask = augment_batch(image, mask, NO_AUG, _gen(0))
    assert torch.equal(out_image, image) and torch.equal(out_mask, mask)
    assert out_mask.dtype == torch.uint8 and out_image.dtype == torch.float32
    assert out_image.data_ptr() != image.data_ptr()  # a copy, not the input


def test_p_zero_is_the_identity_even_with_default_ranges():
    image, mask = _case()
    out_image, out_mask = augment_batch(image, mask, AugmentConfig(p=0.0), _gen(0))
    assert torch.equal(out_image, image) and torch.equal(out_mask, mask)


@pytest.mark.parametrize("shift", [(2, -3, 1), (0, 3, -2), (-1, 0, 0)])
def test_integer_translation_moves_mask_exactly(shift):
    image, mask = _case(n=1)
    out_image, out_mask = warp_batch(image, mask, _params([0, 0, 0], shift))
    expected = torch.roll(mask, shifts=shift, dims=(1, 2, 3))  # object is away from borders
    assert torch.equal(out_mask, expected)
    # The image moves by the same amount (compare the interior, away from the border pad).
    rolled = torch.roll(image, shifts=shift, dims=(2, 3, 4))
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    torch.testing.assert_close(out_image[inner], rolled[inner], atol=1e-5, rtol=0)


def test_fractional_translation_interpolates_trilinearly():
    image = torch.zeros(1, 1, 4, 4, 8)
    image[..., 3] = 1.0
    out, _ = warp_batch(image, torch.zeros(1, 4, 4, 8), _params([0, 0, 0], [0, 0, 0.25]))
    row = out[0, 0, 1, 1].numpy()
    np.testing.assert_allclose(row[2:6], [0.0, 0.75, 0.25, 0.0], atol=1e-6)


def test_rotation_keeps_volume_and_turns_x_towards_y():
    image, mask = _case(n=1, center=(11.5, 31.5, 41.5))
    vol0 = int(mask.sum())
    _, rot10 = warp_batch(image, mask, _params([10, 0, 0], [0, 0, 0]))
    assert not torch.equal(rot10, mask)
    assert abs(int(rot10.sum()) - vol0) / vol0 < 0.03
    # +90 degrees in-plane: an object 10 voxels along +x from the centre ends up along +y.
    _, rot90 = warp_batch(image, mask, _params([90, 0, 0], [0, 0, 0]))
    com = _com(rot90[0].numpy())
    np.testing.assert_allclose(com, [11.5, 31.5 + 10.0, 31.5], atol=0.05)
    assert abs(int(rot90.sum()) - vol0) / vol0 < 0.03


def test_tilt_rotations_move_content_out_of_plane():
    image, mask = _case(n=1, center=(11.5, 31.5, 41.5))
    _, tilted = warp_batch(image, mask, _params([0, 20, 0], [0, 0, 0]))  # about y: +x -> +z
    com = _com(tilted[0].numpy())
    # centre (11.5, 31.5, 31.5); offset +10 along x turns to (10 sin20, ., 10 cos20)
    np.testing.assert_allclose(com, [11.5 + 10 * math.sin(math.radians(20)), 31.5,
                                     31.5 + 10 * math.cos(math.radians(20))], atol=0.15)


def test_noise_sd_matches_sigma():
    cfg = AugmentConfig(translate_vox=0.0, rotate_deg=0.0, noise_sigma_hu=(3.0, 3.0))
    image = torch.zeros(2, 1, *SHAPE)
    mask = torch.zeros(2, *SHAPE, dtype=torch.uint8)
    out, out_mask = augment_batch(image, mask, cfg, _gen(5))
    sd = out.std(dim=(1, 2, 3, 4))
    np.testing.assert_allclose(sd.numpy(), [3.0 / 200.0] * 2, rtol=0.01)
    assert abs(float(out.mean())) < 1e-4
    assert torch.equal(out_mask, mask)  # noise never touches the mask


def test_noise_sigma_is_drawn_uniformly_in_range():
    params = draw_augment_params(4000, AugmentConfig(noise_sigma_hu=(1.0, 3.0)), _gen(6))
    hu = params.noise_sigma.numpy() * 200.0
    assert hu.min() >= 1.0 and hu.max() <= 3.0
    assert abs(hu.mean() - 2.0) < 0.05
    angles = params.angles_deg.numpy()
    assert np.abs(angles[:, 0]).max() <= 10.0 and np.abs(angles[:, 0]).max() > 9.9
    assert np.all(angles[:, 1:] == 0.0)  # no tilts by default
    shifts = params.translation_vox.numpy()
    assert np.abs(shifts).max() <= 3.0 and abs(shifts.std() - 3.0 / math.sqrt(3.0)) < 0.05


def test_image_and_mask_move_together():
    image, mask = _case(n=3)
    cfg = AugmentConfig(translate_vox=3.0, rotate_deg=10.0, noise_sigma_hu=(0.0, 0.0))
    out_image, out_mask = augment_batch(image, mask, cfg, _gen(11))
    params = draw_augment_params(3, cfg, _gen(11))  # the same draws again
    c0 = _com(mask[0].numpy())
    centre = (np.array(SHAPE) - 1) / 2.0
    for i in range(3):
        bright = np.clip(out_image[i, 0].numpy() - 0.1, 0, None)  # the blob, not the texture
        com_img = _com(bright)
        com_mask = _com(out_mask[i].numpy())
        assert np.abs(com_img - com_mask).max() < 0.3
        a = math.radians(float(params.angles_deg[i, 0]))
        r = np.array([[1, 0, 0], [0, math.cos(a), math.sin(a)], [0, -math.sin(a), math.cos(a)]])
        expected = r @ (c0 - centre) + centre + params.translation_vox[i].numpy()
        np.testing.assert_allclose(com_mask, expected, atol=0.3)
        assert np.abs(com_mask - c0).max() > 0.05  # it really moved


def test_same_seed_same_output_different_seed_different():
    image, mask = _case()
    a = augment_batch(image, mask, AugmentConfig(), _gen(42))
    b = augment_batch(image, mask, AugmentConfig(), _gen(42))
    c = augment_batch(image, mask, AugmentConfig(), _gen(43))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0][0], a[0][1])  # one transform per sample, not per batch


@pytest.mark.parametrize("kind", ["channel_uint8", "bool", "float"])
def test_mask_layouts_and_dtypes_are_kept(kind):
    image, mask = _case(n=2)
    if kind == "channel_uint8":
        mask = mask[:, None]
    elif kind == "bool":
        mask = mask.bool()
    else:
        mask = mask.float()
    _, out = augment_batch(image, mask, AugmentConfig(), _gen(1))
    assert out.shape == mask.shape and out.dtype == mask.dtype
    assert set(torch.unique(out.float()).tolist()) <= {0.0, 1.0}
    assert abs(float(out.float().sum()) - float(mask.float().sum())) / float(mask.sum()) < 0.05


def test_p_half_augments_about_half_and_leaves_the_rest_exact():
    image, mask = _case(n=8)
    cfg = AugmentConfig(p=0.5)
    params = draw_augment_params(8, cfg, _gen(3))
    out_image, _ = augment_batch(image, mask, cfg, _gen(3))
    untouched = [torch.equal(out_image[i], image[i]) for i in range(8)]
    assert untouched == (~params.applied).tolist()
    frac = float(draw_augment_params(2000, cfg, _gen(4)).applied.double().mean())
    assert abs(frac - 0.5) < 0.05


def test_config_json_round_trip_and_validation(tmp_path):
    cfg = AugmentConfig(translate_vox=2, rotate_deg=5.0, tilt_deg=2.0, noise_sigma_hu=(0.5, 2.0),
                        p=0.8)
    assert cfg.translate_vox == 2.0 and isinstance(cfg.translate_vox, float)
    cfg.to_json(tmp_path / "aug.json")
    assert AugmentConfig.from_json(tmp_path / "aug.json") == cfg
    for kwargs, match in [({"translate_vox": -1.0}, "translate_vox must be finite"),
                          ({"rotate_deg": float("nan")}, "rotate_deg must be finite"),
                          ({"p": 1.5}, r"p must be finite and in \[0, 1.0\]"),
                          ({"hu_per_unit": 0.0}, "hu_per_unit must be > 0"),
                          ({"noise_sigma_hu": (3.0, 1.0)}, "0 <= low <= high"),
                          ({"noise_sigma_hu": (1.0,)}, "pair"),
                          ({"version": 2}, "version 2")]:
        with pytest.raises(ConfigError, match=match):
            AugmentConfig(**kwargs)


def test_input_errors():
    image, mask = _case(n=1)
    with pytest.raises(InputError, match="torch.Generator"):
        augment_batch(image, mask, AugmentConfig(), 0)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="binary"):
        augment_batch(image, mask * 2, AugmentConfig(), _gen(0))
    with pytest.raises(InputError, match=r"must be \(N, D, H, W\) or \(N, 1, D, H, W\)"):
        augment_batch(image, mask[:, :10], AugmentConfig(), _gen(0))
    with pytest.raises(InputError, match=r"float tensor \(N, C, D, H, W\)"):
        augment_batch(image[0], mask, AugmentConfig(), _gen(0))
    with pytest.raises(ConfigError, match="expected an AugmentConfig"):
        augment_batch(image, mask, {"p": 1.0}, _gen(0))  # type: ignore[arg-type]


def test_scale_zooms_each_axis_and_elastic_moves_the_shape_smoothly():
    mask = torch.zeros(1, 16, 32, 32)
    mask[0, 6:10, 12:20, 12:20] = 1
    image = mask[:, None].clone()
    g = lambda: torch.Generator().manual_seed(5)   # noqa: E731
    plain = draw_augment_params(1, AugmentConfig(), g())
    zoomed = draw_augment_params(1, AugmentConfig(scale=0.3, elastic_vox=3.0), g())
    # the new draws come after the old ones: older configs keep their random stream
    assert torch.equal(plain.angles_deg, zoomed.angles_deg)
    assert torch.equal(plain.translation_vox, zoomed.translation_vox)
    assert zoomed.zoom.shape == (1, 3) and ((zoomed.zoom >= 0.7) & (zoomed.zoom <= 1.3)).all()
    # a pure zoom of 1.5 along x (no rotation, shift or field) widens the box 8 -> 12 voxels
    only = AugmentParams(applied=torch.ones(1, dtype=torch.bool),
                         angles_deg=torch.zeros(1, 3, dtype=torch.float64),
                         translation_vox=torch.zeros(1, 3, dtype=torch.float64),
                         noise_sigma=torch.zeros(1, dtype=torch.float64),
                         zoom=torch.tensor([[1.0, 1.0, 1.5]], dtype=torch.float64))
    _, out = warp_batch(image, mask, only)
    cols = torch.nonzero(out[0].sum(dim=(0, 1))).flatten()
    rows = torch.nonzero(out[0].sum(dim=(0, 2))).flatten()
    assert len(cols) == 12 and len(rows) == 8
    # an elastic field alone: the shape moves and deforms, and stays where it was
    field = AugmentParams(applied=torch.ones(1, dtype=torch.bool),
                          angles_deg=torch.zeros(1, 3, dtype=torch.float64),
                          translation_vox=torch.zeros(1, 3, dtype=torch.float64),
                          noise_sigma=torch.zeros(1, dtype=torch.float64),
                          displacement_vox=torch.randn(1, 3, 4, 4, 4, generator=g(),
                                                       dtype=torch.float64) * 2)
    assert not bool(field.is_identity()[0])
    _, moved = warp_batch(image, mask, field)
    assert not torch.equal(moved, mask)
    assert 0.5 < float(moved.sum() / mask.sum()) < 2.0
    com = lambda m: torch.nonzero(m[0]).double().mean(dim=0)   # noqa: E731
    assert float((com(moved) - com(mask)).norm()) < 4.0
    # the same generator gives the same batch
    a = augment_batch(image, mask, AugmentConfig(scale=0.2, elastic_vox=2.0), g())
    b = augment_batch(image, mask, AugmentConfig(scale=0.2, elastic_vox=2.0), g())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ConfigError, match="scale"):
        AugmentConfig(scale=0.9)
