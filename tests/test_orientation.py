"""The working grid follows the patient axes (LPS), whatever order a file stores its axes in.

Every "stored differently" copy here is made with SimpleITK (Flip, PermuteAxes, DICOMOrient),
which keeps each voxel at its physical point; results on the copy are brought back to the
original grid with SimpleITK's nearest-neighbour resampling (voxel centres coincide), so the
comparison does not go through the code under test.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import back_on, make_ellipsoid

from iunet_nb.errors import InputError
from iunet_nb.interactive.session import RefineConfig, Session
from iunet_nb.io.volume import Geometry, Volume
from iunet_nb.model.preprocess import (
    Box,
    CropRecord,
    PreprocessConfig,
    crop_mask,
    lps_orientation,
    preprocess_image,
    reorient_from_lps,
    reorient_to_lps,
    restore_mask,
    restore_probabilities,
)

CFG = PreprocessConfig(size_zyx=(8, 16, 16))

#: SimpleITK operations that store the same physical image in another array order.
STORAGES = {
    "flip_x": lambda im: sitk.Flip(im, [True, False, False]),
    "flip_yz": lambda im: sitk.Flip(im, [False, True, True]),
    "permute": lambda im: sitk.PermuteAxes(im, [2, 0, 1]),
    "permute_flip": lambda im: sitk.Flip(sitk.PermuteAxes(im, [1, 2, 0]), [True, False, True]),
    "dicom_orient_RAI": lambda im: sitk.DICOMOrient(im, "RAI"),
    "dicom_orient_ASL": lambda im: sitk.DICOMOrient(im, "ASL"),
}


def _case() -> tuple[Volume, Volume]:
    """An off-centre, asymmetric organ on an identity-direction, anisotropic grid."""
    g = Geometry(spacing_mm=(2.5, 0.8, 0.7), origin_mm=(-40.0, 12.0, 300.0))
    mask = make_ellipsoid((20, 28, 30), center=(8.0, 12.0, 17.0), radii=(5.0, 7.0, 9.0))
    mask[6:9, 10:13, 24:27] = 1                        # a knob: no mirror symmetry
    rng = np.random.default_rng(3)
    ct = np.where(mask > 0, 110.0, -60.0) + rng.normal(0, 15, mask.shape)
    ct += np.linspace(-40, 40, mask.shape[2])[None, None, :]   # a gradient along x
    return Volume(ct.astype(np.float32), g), Volume(mask, g)


def _stored(volume: Volume, op) -> Volume:
    return Volume.from_sitk(op(volume.to_sitk()))


# ------------------------------------------------------------------------------ orientation
@pytest.mark.parametrize("direction, axes, flips", [
    ((1, 0, 0, 0, 1, 0, 0, 0, 1), (0, 1, 2), (False, False, False)),
    ((-1, 0, 0, 0, -1, 0, 0, 0, 1), (0, 1, 2), (False, True, True)),      # NIfTI RAS header
    ((1, 0, 0, 0, -1, 0, 0, 0, 1), (0, 1, 2), (False, True, False)),      # true BTCV axes
    # index x -> physical z, index y -> physical x, index z -> physical y (x-first storage):
    # working z <- array x (axis 2), working y <- array z (axis 0), working x <- array y
    ((0, 1, 0, 0, 0, 1, 1, 0, 0), (2, 0, 1), (False, False, False)),
    # index x -> +y, index y -> -z, index z -> -x: working z <- array y reversed, working y
    # <- array x, working x <- array z reversed
    ((0, 0, -1, 1, 0, 0, 0, -1, 0), (1, 2, 0), (True, False, True)),
])
def test_lps_orientation_by_hand(direction, axes, flips):
    got = lps_orientation(Geometry(direction=direction))
    assert got == (axes, flips)
    assert lps_orientation(None) == ((0, 1, 2), (False, False, False))


def test_reorient_to_lps_matches_simpleitk_and_inverts():
    ct, _ = _case()
    for name, op in STORAGES.items():
        copy = _stored(ct, op)
        lps = reorient_to_lps(copy)
        np.testing.assert_allclose(lps.geometry.direction, np.eye(3).ravel(), atol=1e-12)
        np.testing.assert_array_equal(lps.array, ct.array, err_msg=name)
        assert lps.geometry.is_close(ct.geometry, atol=1e-6), name
        # SimpleITK's own reorientation agrees
        ref = sitk.GetArrayFromImage(sitk.DICOMOrient(copy.to_sitk(), "LPS"))
        np.testing.assert_array_equal(lps.array, ref)
        np.testing.assert_array_equal(reorient_from_lps(lps.array, copy.geometry), copy.array)
    assert reorient_to_lps(ct) is ct


def test_oblique_direction_snaps_to_the_nearest_axes_with_a_warning(caplog):
    a = np.deg2rad(20.0)   # 20 degrees about z, then x and y index axes swapped
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    d = rot @ np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]])
    with caplog.at_level(logging.WARNING, logger="iunet_nb.model.preprocess"):
        axes, flips = lps_orientation(Geometry(direction=tuple(d.ravel())))
    # index x ~ -physical y, index y ~ +physical x: working y <- array x (flipped),
    # working x <- array y
    assert (axes, flips) == ((0, 2, 1), (False, True, False))
    assert "oblique direction" in caplog.text and "20.0 degrees" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="iunet_nb.model.preprocess"):
        lps_orientation(Geometry(direction=(1, 0, 0, 0, -1, 0, 0, 0, 1)))
    assert caplog.text == ""


# ------------------------------------------------------------------------------ preprocess
@pytest.mark.parametrize("name", sorted(STORAGES))
def test_same_working_array_and_same_restored_mask_in_physical_space(name):
    ct, ref = _case()
    copy_ct, copy_ref = _stored(ct, STORAGES[name]), _stored(ref, STORAGES[name])
    assert copy_ct.array.shape != ct.array.shape or not np.array_equal(copy_ct.array, ct.array)
    x, rec = preprocess_image(ct, Box.from_mask(ref.array), CFG)
    x2, rec2 = preprocess_image(copy_ct, Box.from_mask(copy_ref.array), CFG)
    assert rec.axes_zyx == (0, 1, 2) and rec.flip_zyx == (False, False, False)
    assert (rec2.axes_zyx, rec2.flip_zyx) != ((0, 1, 2), (False, False, False))
    np.testing.assert_allclose(x2, x, atol=2e-5)
    np.testing.assert_allclose(crop_mask(copy_ref.array, rec2), crop_mask(ref.array, rec),
                               atol=1e-6)
    # any working-grid prediction comes back to the same physical voxels
    prob = np.random.default_rng(0).random(CFG.size_zyx).astype(np.float32)
    m, m2 = restore_mask(prob, rec), restore_mask(prob, rec2)
    assert 0 < m.sum() < m.size
    np.testing.assert_array_equal(back_on(ct, copy_ct.with_array(m2)), m)
    p, p2 = restore_probabilities(prob, rec), restore_probabilities(prob, rec2)
    np.testing.assert_allclose(back_on(ct, copy_ct.with_array(p2)), p, atol=1e-6)
    # the working grid sits at the same physical place
    assert rec2.working_geometry(copy_ct.geometry).is_close(rec.working_geometry(ct.geometry),
                                                            atol=1e-6)


def test_index_maps_are_inverse_and_match_the_working_geometry():
    ct, ref = _case()
    copy = _stored(ct, STORAGES["permute_flip"])
    _, rec = preprocess_image(copy, Box.from_mask(_stored(ref, STORAGES["permute_flip"]).array),
                              CFG)
    w = np.random.default_rng(1).uniform(-0.5, 7.5, size=(50, 3)) * [1, 2, 2]
    a = rec.working_to_original_index(w)
    np.testing.assert_allclose(rec.original_to_working_index(a), w, atol=1e-9)
    wg = rec.working_geometry(copy.geometry)
    np.testing.assert_allclose(wg.index_to_physical(w), copy.geometry.index_to_physical(a),
                               atol=1e-9)
    np.testing.assert_allclose(wg.direction, np.eye(3).ravel(), atol=1e-12)   # LPS order


def test_a_linear_ramp_in_mm_is_reproduced_on_the_working_grid():
    # value = physical x + 2 y - 0.5 z (mm), stored permuted and flipped: preprocessing without
    # smoothing must give the same linear function of the working voxels' physical positions
    g = Geometry(spacing_mm=(2.0, 1.5, 1.0), origin_mm=(10.0, -20.0, 5.0),
                 direction=(0, 0, -1, 1, 0, 0, 0, -1, 0))
    shape = (12, 14, 16)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    p = g.index_to_physical(idx)
    ct = Volume((p @ np.array([1.0, 2.0, -0.5])).astype(np.float32), g)
    cfg = PreprocessConfig(sigma_vox=0.0, hu_window=(-1000.0, 1000.0), margin_frac=0.0,
                           size_zyx=(6, 8, 10))
    x, rec = preprocess_image(ct, Box((2, 3, 1), (11, 12, 15)), cfg)
    wg = rec.working_geometry(g)
    widx = np.stack(np.meshgrid(*[np.arange(n) for n in cfg.size_zyx], indexing="ij"), -1)
    expect = (wg.index_to_physical(widx) @ np.array([1.0, 2.0, -0.5])) / 1000.0
    inner = (slice(1, -1),) * 3   # the half-voxel rim takes edge values (module docstring)
    np.testing.assert_allclose(x[inner], expect[inner], atol=1e-4)


def test_round_trip_is_exact_when_the_working_grid_is_the_crop():
    ct, ref = _case()
    copy = _stored(ct, STORAGES["permute_flip"])
    box = Box.from_mask(_stored(ref, STORAGES["permute_flip"]).array)
    crop = box.expand(CFG.margin_zyx(copy.shape)).clip(copy.shape)
    _, probe = preprocess_image(copy, box, CFG)
    cfg = PreprocessConfig(sigma_vox=0.0, hu_window=(-1e4, 1e4), size_zyx=probe.crop_size_working)
    x, rec = preprocess_image(copy, box, cfg)
    back = restore_probabilities(x, rec, fill=np.nan)
    expect = np.asarray(copy.array, np.float64)[crop.slices] / 1e4
    np.testing.assert_allclose(back[crop.slices], expect, atol=1e-6)
    assert np.isnan(back).sum() == back.size - np.prod(crop.size)
    mask = (np.asarray(copy.array) > 0).astype(np.uint8)
    np.testing.assert_array_equal(restore_mask(crop_mask(mask, rec), rec)[crop.slices],
                                  mask[crop.slices])


def test_plain_arrays_and_identity_directions_are_unchanged_bit_for_bit():
    ct, ref = _case()
    box = Box.from_mask(ref.array)
    x_vol, rec_vol = preprocess_image(ct, box, CFG)
    x_arr, rec_arr = preprocess_image(ct.array, box, CFG)
    assert x_vol.tobytes() == x_arr.tobytes() and rec_vol == rec_arr
    # a plain array of a flipped copy is NOT reoriented (no geometry to read)
    flipped = _stored(ct, STORAGES["flip_x"])
    _, rec = preprocess_image(flipped.array, box, CFG)
    assert rec.axes_zyx == (0, 1, 2) and rec.flip_zyx == (False, False, False)


# ------------------------------------------------------------------------------ CropRecord
def test_a_crop_record_saved_before_orientation_existed_still_loads():
    old = json.dumps({"version": 1, "original_shape_zyx": [20, 28, 30],
                      "box": {"lo_zyx": [3, 5, 8], "hi_zyx": [14, 20, 27]},
                      "crop": {"lo_zyx": [2, 3, 6], "hi_zyx": [15, 22, 29]},
                      "size_zyx": [8, 16, 16]})
    rec = CropRecord.from_json(old)
    assert rec.axes_zyx == (0, 1, 2) and rec.flip_zyx == (False, False, False)
    # and it means what it meant: working index -> crop index along the same array axes
    np.testing.assert_allclose(rec.working_to_original_index((0, 0, 0)),
                               [(0.5 * 13 / 8) - 0.5 + 2, (0.5 * 19 / 16) - 0.5 + 3,
                                (0.5 * 23 / 16) - 0.5 + 6])
    new = CropRecord(rec.original_shape_zyx, rec.box, rec.crop, rec.size_zyx,
                     axes_zyx=(2, 0, 1), flip_zyx=(True, False, True))
    assert CropRecord.from_json(new.to_json()) == new


@pytest.mark.parametrize("kwargs, match", [
    ({"axes_zyx": (0, 0, 1)}, "permutation of"),
    ({"axes_zyx": (0, 1)}, "permutation of"),
    ({"flip_zyx": (1, 0, 0)}, "three booleans"),
    ({"flip_zyx": (True, False)}, "three booleans"),
])
def test_bad_orientation_fields_are_refused(kwargs, match):
    with pytest.raises(InputError, match=match):
        CropRecord((10, 10, 10), Box((0, 0, 0), (5, 5, 5)), Box((0, 0, 0), (5, 5, 5)),
                   (4, 4, 4), **kwargs)


def test_a_record_with_unknown_keys_is_refused():
    with pytest.raises(InputError, match="optional"):
        CropRecord.from_dict({"original_shape_zyx": [4, 4, 4], "size_zyx": [2, 2, 2],
                              "box": {"lo_zyx": [0, 0, 0], "hi_zyx": [2, 2, 2]},
                              "crop": {"lo_zyx": [0, 0, 0], "hi_zyx": [2, 2, 2]},
                              "transpose": [0, 1, 2]})


# ------------------------------------------------------------------------------ session
def test_session_on_a_copy_stored_otherwise_predicts_and_scribbles_the_same(model, card):
    ct, ref = _case()
    op = STORAGES["permute_flip"]
    copy_ct, copy_ref = _stored(ct, op), _stored(ref, op)
    cfg = RefineConfig(device="cpu", iterations=2, lr=1e-2, box_fallback="error")
    s1 = Session(ct, model, card, Box.from_mask(ref.array), config=cfg)
    s2 = Session(copy_ct, model, card, Box.from_mask(copy_ref.array), config=cfg)
    m1, m2 = s1.predict(), s2.predict()
    np.testing.assert_allclose(back_on(ct, s2.probabilities()), s1.probabilities().array,
                               atol=1e-4)
    disagree = np.count_nonzero(back_on(ct, m2) != m1.array)
    assert disagree <= 2, disagree      # thresholding at 0.5 of values equal to 1e-6
    # the same physical scribble lands on the same working voxels
    pts = np.argwhere(ref.array > 0)[::40]
    phys = ct.geometry.index_to_physical(pts)
    pts2 = np.rint(copy_ct.geometry.physical_to_index(phys)).astype(int)
    s1.add_scribble("fg", points=pts)
    s2.add_scribble("fg", points=pts2)
    w1 = s1._scribbles_on_working_grid(s1._working_grid(s1.box)[2])
    w2 = s2._scribbles_on_working_grid(s2._working_grid(s2.box)[2])
    assert w1.any()
    np.testing.assert_array_equal(w2, w1)
    r1, r2 = s1.refine(), s2.refine()
    changed = np.count_nonzero(back_on(ct, r2) != r1.array)
    assert changed <= 0.001 * r1.array.size, changed
