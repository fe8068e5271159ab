"""Tests of iunet_nb.model.preprocess: config, boxes, forward pipeline and its exact inverse."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from iunet_nb.errors import ConfigError, GeometryError, InputError, IunetError
from iunet_nb.model.preprocess import (Box, CropRecord, PreprocessConfig, crop_mask,
                                 preprocess_image, restore_mask, restore_probabilities)
from iunet_nb.io.volume import Geometry, Volume

from conftest import make_ellipsoid


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _pancreas_tube(shape=(56, 224, 288), spacing=(2.5, 0.8, 0.8), length=150.0, dy=30.0,
                   dz=25.0, bend=14.0) -> np.ndarray:
    """uint8 curved, tapering tube ~150 x 30 x 25 mm (x, y, z), bent in y and tilted in z."""
    z, y, x = [np.arange(n) * s for n, s in zip(shape, spacing)]
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij", sparse=True)
    cz, cy, cx = [n * s / 2 for n, s in zip(shape, spacing)]
    t = (xx - cx) / (length / 2)  # -1 .. 1 along the tube
    ycen = cy + bend * np.cos(np.pi * t / 2) - bend / 2
    zcen = cz + 0.3 * bend * t
    taper = 1.0 - 0.35 * (t + 1) / 2  # head thicker than the tail
    r = ((yy - ycen) / (dy / 2)) ** 2 + ((zz - zcen) / (dz / 2)) ** 2
    return ((r <= taper ** 2) & (np.abs(t) <= 1)).astype(np.uint8)


# -- config -------------------------------------------------------------------------------------
def test_config_defaults_and_json_round_trip(tmp_path):
    cfg = PreprocessConfig()
    assert cfg.size_zyx == (24, 64, 64) and cfg.hu_window == (-160.0, 240.0)
    other = PreprocessConfig(size_zyx=(48, 128, 128), sigma_vox=0.0)
    path = tmp_path / "pre.json"
    other.to_json(path)
    assert PreprocessConfig.from_json(path) == other
    assert PreprocessConfig.from_json(other.to_json()).size_zyx == (48, 128, 128)


@pytest.mark.parametrize("kwargs, match", [
    ({"sigma_vox": -1.0}, "sigma_vox"),
    ({"sigma_vox": float("nan")}, "sigma_vox"),
    ({"hu_window": (240.0, -160.0)}, "hu_window"),
    ({"hu_window": (0.0,)}, "hu_window"),
    ({"margin_frac": 1.5}, "margin_frac"),
    ({"size_zyx": (24, 64)}, "size_zyx"),
    ({"size_zyx": (0, 64, 64)}, "size_zyx"),
    ({"size_zyx": (24.5, 64, 64)}, "size_zyx"),
    ({"version": 2}, "version"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PreprocessConfig(**kwargs)


def test_margin_is_ceil_of_fraction_of_each_dimension():
    assert PreprocessConfig().margin_zyx((119, 512, 512)) == (6, 26, 26)
    assert PreprocessConfig(margin_frac=0.05).margin_zyx((20, 40, 41)) == (1, 2, 3)
    assert PreprocessConfig(margin_frac=0.0).margin_zyx((20, 40, 41)) == (0, 0, 0)


# -- Box ----------------------------------------------------------------------------------------
def test_box_from_mask_and_size():
    mask = np.zeros((10, 12, 14), np.uint8)
    mask[2:5, 3, 7:11] = 1
    box = Box.from_mask(mask)
    assert box == Box((2, 3, 7), (5, 4, 11))
    assert box.size == (3, 1, 4)
    assert np.count_nonzero(mask[box.slices]) == np.count_nonzero(mask)
    with pytest.raises(InputError, match="empty mask"):
        Box.from_mask(np.zeros((4, 4, 4), np.uint8))


def test_box_dict_round_trip_and_bad_input():
    box = Box((1, 2, 3), (4, 5, 6))
    assert Box.from_dict(json.loads(json.dumps(box.to_dict()))) == box
    with pytest.raises(InputError, match="three integer"):
        Box((1, 2), (3, 4, 5))
    with pytest.raises(InputError, match="lo_zyx"):
        Box.from_dict({"lo": [0, 0, 0]})


def test_box_clip_and_validate():
    shape = (10, 20, 30)
    box = Box((-3, 5, 25), (4, 25, 40))
    assert box.clip(shape) == Box((0, 5, 25), (4, 20, 30))
    with pytest.raises(InputError, match=r"outside the image of shape \[10, 20, 30\]"):
        box.validate(shape)
    with pytest.raises(InputError,
                       match=r"lo=\[5, 5, 5\] hi=\[3, 9, 9\].*empty or inverted.*shape \[10, 20"):
        Box((5, 5, 5), (3, 9, 9)).validate(shape)
    with pytest.raises(InputError, match="empty or inverted"):
        Box((5, 5, 5), (5, 9, 9)).validate(shape)
    assert Box((0, 0, 0), shape).validate(shape) == Box((0, 0, 0), shape)


def test_box_from_physical_flipped_direction_round_trip(geometry):
    """Voxel centres as corners give exactly those voxels, with a flipped y axis."""
    shape = (24, 32, 32)
    box = Box((3, 4, 5), (10, 20, 27))
    a = geometry.index_to_physical(box.lo_zyx)
    b = geometry.index_to_physical(np.array(box.hi_zyx) - 1)
    # y is flipped, so a has the larger physical y: the corners are not (min, max).
    assert a[1] > b[1]
    assert Box.from_physical(a, b, geometry, shape) == box
    assert Box.from_physical(b, a, geometry, shape) == box
    # Every voxel centre inside the physical box is inside the voxel box and vice versa.
    pmin, pmax = np.minimum(a, b), np.maximum(a, b)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    pts = geometry.index_to_physical(idx)
    inside = np.all((pts >= pmin - 1e-6) & (pts <= pmax + 1e-6), axis=-1)
    assert Box.from_mask(inside) == box


def test_box_from_physical_rounds_outward_and_clips():
    geo = Geometry(spacing_mm=(2.0, 1.0, 1.0), origin_mm=(10.0, 0.0, 0.0),
                   direction=(0, 1, 0, 1, 0, 0, 0, 0, -1))  # x<->y swapped, z flipped
    shape = (10, 20, 30)
    # physical x runs along index y, physical y along index x, physical z = -2 * index z.
    box = Box.from_physical((12.4, 3.6, -7.1), (15.2, 9.5, -2.9), geo, shape)
    # index y = x - 10 in [2.4, 5.2] -> [2, 6]; index x = y in [3.6, 9.5] -> [3, 10];
    # index z = -z / 2 in [1.45, 3.55] -> [1, 4]; hi exclusive adds 1.
    assert box == Box((1, 2, 3), (5, 7, 11))
    clipped = Box.from_physical((12.0, -50.0, 0.0), (15.0, 5.0, -100.0), geo, shape)
    assert clipped == Box((0, 2, 0), (10, 6, 6))
    with pytest.raises(InputError, match="lies outside the image"):
        Box.from_physical((500.0, 500.0, 0.0), (600.0, 600.0, 10.0), geo, shape)


# -- forward ------------------------------------------------------------------------------------
def test_preprocess_output_range_dtype_and_record(ellipsoid_case):
    ct, mask = ellipsoid_case
    cfg = PreprocessConfig(size_zyx=(12, 16, 20))
    box = Box.from_mask(mask.array)
    x, record = preprocess_image(ct, box, cfg)
    assert x.dtype == np.float32 and x.shape == (12, 16, 20)
    assert x.min() >= -1.0 and x.max() <= 1.0
    # organ (120 HU) -> 0.4, background (-50 HU) -> -0.45 after the [-160, 240] window.
    assert x.max() > 0.2 and x.min() < -0.3
    margin = cfg.margin_zyx(mask.shape)
    assert record.crop == box.expand(margin).clip(mask.shape)
    assert record.box == box and record.original_shape_zyx == mask.shape
    again = CropRecord.from_json(record.to_json())
    assert again == record


def test_window_is_linear_clip_and_rescale():
    img = np.array([-1000.0, -160.0, -60.0, 40.0, 240.0, 3000.0], np.float32).reshape(1, 1, 6)
    cfg = PreprocessConfig(sigma_vox=0.0, margin_frac=0.0, size_zyx=(1, 1, 6))
    x, _ = preprocess_image(img, Box((0, 0, 0), (1, 1, 6)), cfg)
    np.testing.assert_allclose(x.ravel(), [-1.0, -1.0, -0.5, 0.0, 1.0, 1.0], atol=1e-6)


def test_preprocess_does_not_modify_the_input():
    img = np.linspace(-300, 300, 8 * 9 * 10, dtype=np.float32).reshape(8, 9, 10)
    before = img.copy()
    preprocess_image(img, Box((0, 0, 0), (8, 9, 10)),
                     PreprocessConfig(sigma_vox=0.0, size_zyx=(8, 9, 10)))
    np.testing.assert_array_equal(img, before)


@pytest.mark.parametrize("box", [Box((10, 12, 14), (20, 30, 36)),   # interior
                                 Box((0, 0, 30), (6, 9, 48))])     # touching the borders
def test_smoothing_only_the_padded_crop_equals_smoothing_everything(box):
    rng = np.random.default_rng(1)
    img = rng.integers(-400, 400, size=(30, 40, 48)).astype(np.int16)
    cfg = PreprocessConfig(sigma_vox=1.3, margin_frac=0.0, hu_window=(-1000.0, 1000.0),
                           size_zyx=box.size)  # identity resample: compare voxel by voxel
    x, record = preprocess_image(img, box, cfg)
    full = ndimage.gaussian_filter(img.astype(np.float64), sigma=1.3, mode="nearest")
    expected = (full[record.crop.slices] + 1000.0) / 1000.0 - 1.0
    np.testing.assert_allclose(x, expected, atol=1e-5)
    # and smoothing did happen (the raw noise is far from the smoothed values)
    raw = img[record.crop.slices] / 1000.0
    assert np.abs(raw - expected).max() > 0.05


def test_nan_and_bad_inputs_raise(ellipsoid_case):
    ct, mask = ellipsoid_case
    box = Box.from_mask(mask.array)
    bad = ct.array.copy()
    bad[12, 16, 16] = np.nan
    with pytest.raises(InputError, match="NaN"):
        preprocess_image(bad, box)
    with pytest.raises(InputError, match="3D image"):
        preprocess_image(np.zeros((4, 4)), box)
    with pytest.raises(InputError, match="outside the image"):
        preprocess_image(ct, Box((0, 0, 0), (25, 10, 10)))
    with pytest.raises(IunetError, match="empty or inverted"):
        preprocess_image(ct, Box((5, 5, 5), (5, 9, 9)))


# -- inverse ------------------------------------------------------------------------------------
def test_identity_size_is_exact():
    rng = np.random.default_rng(2)
    img = rng.normal(0, 100, size=(20, 24, 28)).astype(np.float32)
    box = Box((4, 5, 6), (14, 19, 22))
    cfg = PreprocessConfig(sigma_vox=0.0, margin_frac=0.0, size_zyx=box.size)
    x, record = preprocess_image(img, box, cfg)
    expected = (np.clip(img[box.slices], -160, 240) + 160) / 200 - 1
    np.testing.assert_allclose(x, expected, atol=1e-6)
    mask = (rng.random(img.shape) > 0.5).astype(np.uint8)
    np.testing.assert_array_equal(crop_mask(mask, record), mask[box.slices])
    prob = rng.random(box.size).astype(np.float32)
    back = restore_probabilities(prob, record, fill=-1.0)
    np.testing.assert_array_equal(back[box.slices], prob)
    outside = np.ones(img.shape, bool)
    outside[box.slices] = False
    np.testing.assert_array_equal(back[outside], -1.0)


def test_constant_probability_restores_constant_inside_and_fill_outside():
    record = CropRecord((30, 40, 50), Box((8, 10, 12), (20, 30, 40)),
                        Box((6, 7, 9), (23, 33, 43)), (24, 64, 64))
    back = restore_probabilities(np.full((24, 64, 64), 0.37, np.float32), record, fill=0.05)
    assert back.shape == (30, 40, 50) and back.dtype == np.float32
    inside = np.zeros(back.shape, bool)
    inside[record.crop.slices] = True
    np.testing.assert_allclose(back[inside], 0.37, atol=1e-6)
    np.testing.assert_array_equal(back[~inside], np.float32(0.05))
    # two channels
    two = restore_probabilities(np.stack([np.full((24, 64, 64), 0.2, np.float32),
                                          np.full((24, 64, 64), 0.8, np.float32)]), record)
    assert two.shape == (2, 30, 40, 50)
    np.testing.assert_allclose(two[1][inside], 0.8, atol=1e-6)
    labels = restore_mask(np.stack([np.full((24, 64, 64), 0.2, np.float32),
                                    np.full((24, 64, 64), 0.8, np.float32)]), record)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, inside.astype(np.uint8))


def test_ramp_along_x_is_preserved_on_the_original_grid():
    """A linear function of physical position survives the round trip (away from the rim)."""
    record = CropRecord((30, 40, 90), Box((5, 5, 10), (25, 35, 80)),
                        Box((5, 5, 10), (25, 35, 80)), (8, 16, 24))  # crop x 70 -> 24
    # working voxel centre o maps to original index (o + .5) * scale - .5 + lo: a ramp that is
    # linear in the original x index, sampled at the working centres...
    ox = record.working_to_original_index(np.stack(np.meshgrid(
        np.arange(8), np.arange(16), np.arange(24), indexing="ij"), -1))[..., 2]
    ramp = ((ox - 10) / 100.0).astype(np.float32)
    back = restore_probabilities(ramp, record)
    # ...comes back as the same linear function of the original x index.
    xs = np.arange(90)
    expected = np.broadcast_to((xs - 10) / 100.0, (30, 40, 90))
    sx = record.scale_zyx[2]
    inner = (xs >= 10 + sx / 2) & (xs <= 80 - 1 - sx / 2)  # beyond the half-working-voxel rim
    region = back[5:25, 5:35][..., inner]
    np.testing.assert_allclose(region, expected[5:25, 5:35][..., inner], atol=1e-4)
    # the rim is clamped to the edge value, not extrapolated (documented behaviour)
    assert back[10, 10, 10] == pytest.approx(ramp[0, 0, 0], abs=1e-6)


def test_forward_and_backward_maps_are_inverse_and_geometry_consistent(geometry):
    record = CropRecord((24, 32, 32), Box((5, 6, 7), (15, 20, 25)),
                        Box((3, 4, 5), (17, 22, 27)), (7, 9, 11))
    pts = np.random.default_rng(3).uniform(0, 20, size=(50, 3))
    np.testing.assert_allclose(
        record.original_to_working_index(record.working_to_original_index(pts)), pts, atol=1e-9)
    wgeo = record.working_geometry(geometry)
    np.testing.assert_allclose(wgeo.spacing_mm,
                               np.array(geometry.spacing_mm) * np.array((14 / 7, 18 / 9, 22 / 11)))
    np.testing.assert_allclose(wgeo.index_to_physical(pts),
                               geometry.index_to_physical(record.working_to_original_index(pts)),
                               atol=1e-9)


def test_pancreas_sized_round_trip_keeps_dice():
    """The issue's test: crop + resample + inverse of a pancreas-sized object, DSC >= 0.97."""
    mask = _pancreas_tube()
    volume_ml = np.count_nonzero(mask) * 0.8 * 0.8 * 2.5 / 1000.0
    assert 40 < volume_ml < 120  # a pancreas-like volume
    image = np.where(mask > 0, 100.0, -50.0).astype(np.float32)
    box = Box.from_mask(mask)
    scores = {}
    for size in [(24, 64, 64), (48, 128, 128)]:
        cfg = PreprocessConfig(size_zyx=size)
        x, record = preprocess_image(image, box, cfg)
        working = crop_mask(mask, record)
        assert working.min() >= 0.0 and working.max() <= 1.0
        assert 0.0 < np.mean((working > 0) & (working < 1))  # trilinear, not nearest
        scores[size] = _dice(restore_mask(working, record), mask)
    assert scores[(24, 64, 64)] >= 0.97
    assert scores[(48, 128, 128)] > scores[(24, 64, 64)]
    assert scores[(48, 128, 128)] >= 0.99


def test_shape_mismatches_raise():
    record = CropRecord((30, 40, 50), Box((8, 10, 12), (20, 30, 40)),
                        Box((6, 7, 9), (23, 33, 43)), (24, 64, 64))
    with pytest.raises(GeometryError, match="working grid"):
        restore_probabilities(np.zeros((24, 64, 63), np.float32), record)
    with pytest.raises(GeometryError, match="does not match"):
        crop_mask(np.zeros((30, 40, 49), np.uint8), record)
    with pytest.raises(InputError, match="NaN"):
        restore_probabilities(np.full((24, 64, 64), np.nan, np.float32), record)
    with pytest.raises(InputError, match="outside the image"):
        CropRecord((10, 10, 10), Box((0, 0, 0), (5, 5, 5)), Box((0, 0, 0), (11, 5, 5)),
                   (4, 4, 4))
    with pytest.raises(InputError, match="keys"):
        CropRecord.from_dict({"crop": {}})


def test_round_trip_with_volume_input_and_ellipsoid(ellipsoid_case):
    ct, mask = ellipsoid_case
    x, record = preprocess_image(ct, Box.from_mask(mask.array))
    assert x.shape == (24, 64, 64)
    back = restore_mask(crop_mask(mask.array, record), record)
    assert _dice(back, mask.array) > 0.97
    assert np.all(back[:, :, :record.crop.lo_zyx[2]] == 0)
    # a mask from a different grid shape is refused
    with pytest.raises(GeometryError, match="does not match"):
        crop_mask(make_ellipsoid(shape=(20, 32, 32)), record)


def test_restore_mask_is_threshold_or_argmax_of_restored_probabilities():
    rng = np.random.default_rng(4)
    record = CropRecord((20, 30, 40), Box((5, 5, 5), (15, 25, 35)),
                        Box((3, 4, 2), (18, 29, 39)), (6, 8, 10))
    prob = rng.random((6, 8, 10), dtype=np.float32)
    for t in (0.3, 0.5):
        expected = (restore_probabilities(prob, record) >= t).astype(np.uint8)
        np.testing.assert_array_equal(restore_mask(prob, record, threshold=t), expected)
    three = rng.random((3, 6, 8, 10), dtype=np.float32)
    expected = np.argmax(restore_probabilities(three, record), axis=0)
    labels = restore_mask(three, record)
    np.testing.assert_array_equal(labels, expected)
    assert set(np.unique(labels[record.crop.slices])) == {0, 1, 2}


@pytest.mark.realdata
def test_btcv_pancreas_masks_round_trip(shared_data):
    """Real pancreas shapes (BTCV labels, 2 mm isotropic, label 11), five cases.

    Measured on all 30 cases: DSC median 0.921 (min 0.880) at (24, 64, 64), where z is
    downsampled about 3x (the 5 % margin of a 256-slice grid is 13 slices a side), and
    median 0.992 (min 0.981) at (48, 128, 128).
    """
    sitk = pytest.importorskip("SimpleITK")
    files = sorted((shared_data / "btcv_labels").glob("*.nii.gz"))[:5]
    if not files:
        pytest.skip("no BTCV label maps in shared data")
    small, large = [], []
    for path in files:
        mask = (sitk.GetArrayFromImage(sitk.ReadImage(str(path))) == 11).astype(np.uint8)
        image = np.where(mask > 0, 100.0, -50.0).astype(np.float32)
        for size, scores in (((24, 64, 64), small), ((48, 128, 128), large)):
            cfg = PreprocessConfig(size_zyx=size)
            _, record = preprocess_image(image, Box.from_mask(mask), cfg)
            scores.append(_dice(restore_mask(crop_mask(mask, record), record), mask))
    assert min(small) > 0.87 and np.median(small) > 0.9
    assert min(large) >= 0.97
    assert all(b > a for a, b in zip(small, large))


def test_max_smooth_mm_caps_the_voxel_smoothing_of_thick_slices_only():
    cfg = PreprocessConfig(size_zyx=(8, 16, 16), max_smooth_mm=1.5)
    # 0.75 voxel of 5 mm would be 3.75 mm: capped at 1.5 mm = 0.3 voxel; 0.9 mm pixels not
    assert cfg.sigma_zyx((10, 16, 16), spacing_mm=(5.0, 0.9, 0.9)) == pytest.approx(
        (0.3, 0.75, 0.75))
    assert cfg.sigma_zyx((10, 16, 16)) == (0.75, 0.75, 0.75)      # no geometry: no cap
    assert PreprocessConfig().sigma_zyx((10, 16, 16), spacing_mm=(5.0, 1, 1)) == (0.75,) * 3
    # the anti-aliasing prefilter is not capped: 64 / 16 = 4x in x -> 0.5 * 4 = 2 voxels;
    # z is upsampled (4 / 8), so the capped 0.3 stands there
    both = PreprocessConfig(size_zyx=(8, 16, 16), antialias=0.5, max_smooth_mm=1.5)
    assert both.sigma_zyx((4, 16, 64), spacing_mm=(5.0, 0.9, 0.9)) == pytest.approx(
        (0.3, 0.75, 2.0))
    for bad in (-1, float("nan"), "1"):
        with pytest.raises(ConfigError, match="max_smooth_mm"):
            PreprocessConfig(max_smooth_mm=bad)
    assert PreprocessConfig.from_dict({"sigma_vox": 0.75}).max_smooth_mm == 0.0  # older cards
    # end to end: a 5 mm CT keeps more of its z detail with the cap
    rng = np.random.default_rng(0)
    arr = rng.normal(0, 40, (10, 32, 32)).astype(np.float32)
    image = Volume(arr, Geometry(spacing_mm=(5.0, 0.9, 0.9), origin_mm=(0.0, 0.0, 0.0),
                                 direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)))
    box = Box((1, 2, 2), (9, 30, 30))
    plain, _ = preprocess_image(image, box, PreprocessConfig(size_zyx=(8, 16, 16)))
    capped, _ = preprocess_image(image, box, cfg)
    assert capped.std() > 1.2 * plain.std()


def test_antialias_smooths_each_axis_by_its_downsampling_factor():
    cfg = PreprocessConfig(size_zyx=(8, 16, 16), antialias=0.5)
    # 40 / 8 = 5x along z (sigma 2.5), 16 / 16 = 1x in y (sigma_vox), 64 / 16 = 4x in x (2.0)
    assert cfg.sigma_zyx((40, 16, 64)) == pytest.approx((2.5, 0.75, 2.0))
    # the working axis 0 taken from array axis 2 (a transposed storage): its factor follows
    assert cfg.sigma_zyx((64, 16, 40), axes_zyx=(2, 1, 0)) == pytest.approx((2.0, 0.75, 2.5))
    assert PreprocessConfig().sigma_zyx((40, 16, 64)) == (0.75, 0.75, 0.75)   # off by default
    with pytest.raises(ConfigError, match="antialias"):
        PreprocessConfig(antialias=-1)
    # white noise on a fine grid reaches the working grid much weaker with the prefilter
    rng = np.random.default_rng(0)
    image = rng.normal(0, 40, (40, 64, 64)).astype(np.float32)
    box = Box((2, 2, 2), (38, 62, 62))
    plain, _ = preprocess_image(image, box, PreprocessConfig(size_zyx=(8, 16, 16)))
    filtered, _ = preprocess_image(image, box, cfg)
    assert filtered.std() < 0.5 * plain.std()
    assert abs(float(filtered.mean()) - float(plain.mean())) < 0.05
