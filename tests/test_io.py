"""Tests of iunet_nb.io.images: geometry-preserving round trips, DICOM series, bad input."""

from __future__ import annotations

import gzip
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from iunet_nb.errors import GeometryError, InputError, IunetError
from iunet_nb.io.images import (WRITE_EXTENSIONS, check_same_grid, list_dicom_mask_organs,
                         read_dicom_mask_series, read_image, read_label_map, read_mask,
                         write_image, write_mask)
from iunet_nb.io.volume import Geometry, Volume

from conftest import make_ellipsoid

# DICOM is right-handed (slice normal = row x column cosines), so the DICOM tests use a
# proper rotation (180 degrees about x): y and z flipped, anisotropic, off-origin.
DICOM_GEOMETRY = Geometry(spacing_mm=(2.5, 0.8, 0.7), origin_mm=(-120.0, 35.5, 410.0),
                          direction=(1, 0, 0, 0, -1, 0, 0, 0, -1))
STUDY_UID = "1.2.826.0.1.3680043.2.1125.99.1"
FOR_UID = "1.2.826.0.1.3680043.2.1125.99.2"


def _write_dicom_series(folder: Path, array: np.ndarray, geometry: Geometry, series_uid: str,
                        names: list[str] | None = None,
                        rescale: tuple[float, float] | None = None) -> None:
    """One DICOM file per slice (SimpleITK's DicomSeriesFromArray example), names as given."""
    folder.mkdir(parents=True, exist_ok=True)
    image = geometry.apply_to(sitk.GetImageFromArray(array))
    d = geometry.direction
    tags = [("0008|0060", "CT"), ("0020|000e", series_uid), ("0020|000d", STUDY_UID),
            ("0020|0052", FOR_UID), ("0008|0008", "ORIGINAL\\PRIMARY\\AXIAL"),
            ("0020|0037", "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))),
            ("0018|0050", f"{geometry.spacing_mm[0]:.4f}")]
    if rescale is not None:
        tags += [("0028|1053", str(rescale[0])), ("0028|1052", str(rescale[1])),
                 ("0028|0100", "16"), ("0028|0101", "16"), ("0028|0102", "15"),
                 ("0028|0103", "1")]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")
    names = names or [f"image_{i}" for i in range(array.shape[0])]
    for i in range(array.shape[0]):
        slice_ = image[:, :, i]
        for key, value in tags:
            slice_.SetMetaData(key, value)
        slice_.SetMetaData("0008|0018", f"{series_uid}.{i + 1}")
        slice_.SetMetaData("0020|0013", str(i + 1))
        slice_.SetMetaData("0020|0032", "\\".join(
            f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, i))))
        writer.SetFileName(str(folder / names[i]))
        writer.Execute(slice_)


def _ct_array(shape=(7, 12, 10), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1500, size=shape).astype(np.int16)


# Names whose sorted (and numeric) order differs from the slice position order.
_PERM = [4, 0, 6, 2, 5, 1, 3]
_NAMES = [f"image_{p}" for p in _PERM]


@pytest.fixture
def dicom_series(tmp_path: Path) -> tuple[Path, np.ndarray]:
    array = _ct_array()
    folder = tmp_path / "PATIENT_DICOM"
    _write_dicom_series(folder, array, DICOM_GEOMETRY, "1.2.826.0.1.3680043.2.1125.99.10",
                        names=_NAMES)
    return folder, array


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("ext", WRITE_EXTENSIONS)
def test_image_round_trip_keeps_geometry_and_values(tmp_path, geometry, ext):
    ct = Volume(_ct_array((5, 6, 7)), geometry)
    path = write_image(ct, tmp_path / f"ct{ext}")
    assert path == tmp_path / f"ct{ext}" and path.is_file()
    back = read_image(path)
    assert back.shape == (5, 6, 7)
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, ct.array)
    np.testing.assert_allclose(back.geometry.spacing_mm, (2.5, 0.8, 0.7), atol=1e-5)
    np.testing.assert_allclose(back.geometry.origin_mm, (-120.0, 35.5, 410.0), atol=1e-4)
    np.testing.assert_allclose(back.geometry.direction, (1, 0, 0, 0, -1, 0, 0, 0, 1), atol=1e-6)
    assert back.meta["source"] == str(path) and back.meta["format"] in {"nifti", "nrrd",
                                                                        "metaimage"}
    # no temporary file left behind by the atomic write
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"ct{ext}"]


@pytest.mark.parametrize("ext", WRITE_EXTENSIONS)
def test_mask_round_trip_same_physical_points(tmp_path, ellipsoid_case, ext):
    ct, mask = ellipsoid_case
    path = write_mask(mask, tmp_path / f"mask{ext}")
    back = read_mask(path)
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, mask.array)
    check_same_grid(ct, back)
    idx = np.array([[0, 0, 0], [23, 31, 31], [12, 5, 30]])
    np.testing.assert_allclose(back.geometry.index_to_physical(idx),
                               ct.geometry.index_to_physical(idx), atol=1e-4)
    # SimpleITK itself (not our Geometry) agrees on where voxel (z=12, y=5, x=30) is
    img = sitk.ReadImage(str(path))
    np.testing.assert_allclose(img.TransformIndexToPhysicalPoint((30, 5, 12)),
                               ct.geometry.index_to_physical([12, 5, 30]), atol=1e-4)


@pytest.mark.parametrize("ext,fmt", [(".nhdr", "nrrd"), (".mhd", "metaimage")])
def test_header_plus_data_formats_read(tmp_path, geometry, ext, fmt):
    array = _ct_array((3, 5, 4), seed=4)
    sitk.WriteImage(geometry.apply_to(sitk.GetImageFromArray(array)), str(tmp_path / f"ct{ext}"))
    assert len(list(tmp_path.iterdir())) == 2  # header and a separate data file
    back = read_image(tmp_path / f"ct{ext}")
    np.testing.assert_array_equal(back.array, array)
    assert back.geometry.is_close(geometry) and back.meta["format"] == fmt


def test_float_image_round_trip_is_float32(tmp_path, ellipsoid_case):
    ct, _ = ellipsoid_case
    back = read_image(write_image(ct, tmp_path / "ct.nii.gz"))
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, ct.array)


def test_write_image_is_compressed(tmp_path, geometry):
    vol = Volume(np.zeros((20, 30, 30), np.int16), geometry)
    path = write_image(vol, tmp_path / "zeros.nii.gz")
    assert path.stat().st_size < 20 * 30 * 30 * 2 / 10
    with gzip.open(path) as fh:  # really gzip, not plain NIfTI with a .gz name
        assert struct.unpack("<i", fh.read(4))[0] == 348


def test_integer_valued_float_ct_becomes_int16_and_large_ints_float32(tmp_path, geometry):
    floats = Volume(np.arange(24, dtype=np.float64).reshape(2, 3, 4) - 1024, geometry)
    assert read_image(write_image(floats, tmp_path / "f.nrrd")).array.dtype == np.int16
    big = Volume(np.full((2, 3, 4), 40000, np.int32), geometry)
    back = read_image(write_image(big, tmp_path / "big.mha"))
    assert back.array.dtype == np.float32 and back.array[0, 0, 0] == 40000


def test_label_map_and_masks_from_labels(tmp_path, geometry):
    labels = np.zeros((4, 5, 6), np.int16)
    labels[1, 1:3, 1:4] = 11
    labels[2, 2, 2] = 6
    path = write_image(Volume(labels, geometry), tmp_path / "labels.nii.gz")
    lm = read_label_map(path)
    assert lm.array.dtype == np.uint8
    np.testing.assert_array_equal(lm.array, labels)
    assert int(read_mask(path, label=11).array.sum()) == 6
    assert int(read_mask(path).array.sum()) == 7
    assert read_mask(path, label=3).array.sum() == 0
    neg = write_image(Volume(labels - 5, geometry), tmp_path / "neg.nrrd")
    assert read_label_map(neg).array.dtype == np.int16
    assert read_label_map(neg).array.min() == -5


def test_write_mask_from_bool_and_rejects_bad_values(tmp_path, geometry):
    bool_mask = Volume(make_ellipsoid((6, 8, 8), radii=(2, 3, 3)).astype(bool), geometry)
    back = read_mask(write_mask(bool_mask, tmp_path / "m.mha"))
    np.testing.assert_array_equal(back.array, bool_mask.array.astype(np.uint8))
    with pytest.raises(InputError, match=r"do not fit uint8"):
        write_mask(Volume(np.full((2, 2, 2), 300, np.int16), geometry), tmp_path / "x.nii")
    with pytest.raises(InputError, match=r"non-integer values"):
        write_mask(Volume(np.full((2, 2, 2), 0.3, np.float32), geometry), tmp_path / "x.nii")


@pytest.mark.parametrize("name", ["mask.png", "mask.nhdr", "mask.mhd", "mask"])
def test_write_rejects_other_extensions(tmp_path, geometry, name):
    vol = Volume(np.zeros((2, 2, 2), np.uint8), geometry)
    with pytest.raises(InputError, match=r"\.nii, \.nrrd, \.mha"):
        write_mask(vol, tmp_path / name)
    assert not any(tmp_path.iterdir())


def test_check_same_grid(geometry):
    a = Volume(np.zeros((4, 5, 6), np.int16), geometry)
    check_same_grid(a, Volume(np.zeros((4, 5, 6), np.uint8), geometry))
    with pytest.raises(GeometryError,
                       match=r"shape \(4, 5, 6\).*reference mask has shape \(4, 5, 7\)"):
        check_same_grid(a, Volume(np.zeros((4, 5, 7), np.uint8), geometry), what="reference mask")
    shifted = Geometry(geometry.spacing_mm, (-120.0, 35.5, 411.0), geometry.direction)
    with pytest.raises(GeometryError, match=r"origin \(-120.0, 35.5, 411.0\)"):
        check_same_grid(a, Volume(np.zeros((4, 5, 6), np.uint8), shifted))
    flipped = Geometry(geometry.spacing_mm, geometry.origin_mm, (1, 0, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(GeometryError, match="direction"):
        check_same_grid(a, Volume(np.zeros((4, 5, 6), np.uint8), flipped))


# ----------------------------------------------------------------------------- DICOM
def test_dicom_series_read_in_position_order(dicom_series):
    folder, array = dicom_series
    assert sorted(p.name for p in folder.iterdir()) != _NAMES  # name order != position order
    ct = read_image(folder)
    assert ct.array.dtype == np.int16
    np.testing.assert_array_equal(ct.array, array)
    assert ct.geometry.is_close(DICOM_GEOMETRY, atol=1e-4)
    assert ct.meta["format"] == "dicom"
    assert ct.meta["series_uid"] == "1.2.826.0.1.3680043.2.1125.99.10"
    assert ct.meta["study_uid"] == STUDY_UID
    assert ct.meta["frame_of_reference_uid"] == FOR_UID
    assert ct.meta["modality"] == "CT"
    # SOP instance UIDs follow the array's slice order
    assert ct.meta["sop_instance_uids"] == [
        f"1.2.826.0.1.3680043.2.1125.99.10.{i + 1}" for i in range(7)]


def test_dicom_series_from_zip_same_volume(dicom_series, tmp_path):
    folder, array = dicom_series
    zpath = tmp_path / "ct.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"case1/{folder.name}/{f.name}")
    from_zip = read_image(zpath)
    from_dir = read_image(folder)
    np.testing.assert_array_equal(from_zip.array, from_dir.array)
    assert from_zip.geometry == from_dir.geometry
    assert from_zip.meta["source"] == str(zpath)
    assert from_zip.meta["sop_instance_uids"] == from_dir.meta["sop_instance_uids"]


def test_dicom_rescale_slope_intercept_applied(tmp_path):
    hu = _ct_array((4, 6, 5), seed=1)
    _write_dicom_series(tmp_path / "int", hu.astype(np.float64), DICOM_GEOMETRY, "1.2.3.91",
                        rescale=(1, -1024))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(tmp_path / "int" / "image_0"))
    reader.ReadImageInformation()
    assert float(reader.GetMetaData("0028|1052")) == -1024.0
    ct = read_image(tmp_path / "int")
    assert ct.array.dtype == np.int16
    np.testing.assert_array_equal(ct.array, hu)
    halves = hu.astype(np.float64) + 0.5
    _write_dicom_series(tmp_path / "half", halves, DICOM_GEOMETRY, "1.2.3.92",
                        rescale=(0.5, -1024))
    ct = read_image(tmp_path / "half")
    assert ct.array.dtype == np.float32
    np.testing.assert_array_equal(ct.array, halves.astype(np.float32))


def test_two_series_in_one_folder(tmp_path):
    a, b = _ct_array((5, 6, 7), seed=2), _ct_array((3, 6, 7), seed=3)
    _write_dicom_series(tmp_path / "mixed", a, DICOM_GEOMETRY, "1.2.3.100",
                        names=[f"a{i}" for i in range(5)])
    _write_dicom_series(tmp_path / "mixed", b, DICOM_GEOMETRY, "1.2.3.200",
                        names=[f"b{i}" for i in range(3)])
    with pytest.raises(InputError, match=r"2 DICOM series: 1\.2\.3\.100 \(5 slices\); "
                                         r"1\.2\.3\.200 \(3 slices\)\. Pass series_uid"):
        read_image(tmp_path / "mixed")
    np.testing.assert_array_equal(read_image(tmp_path / "mixed", series_uid="1.2.3.200").array, b)
    np.testing.assert_array_equal(read_image(tmp_path / "mixed", series_uid="1.2.3.100").array, a)
    with pytest.raises(InputError, match=r"series '9\.9' is not in"):
        read_image(tmp_path / "mixed", series_uid="9.9")


def test_mask_written_for_dicom_ct_overlays(dicom_series, tmp_path):
    folder, _ = dicom_series
    ct = read_image(folder)
    mask = ct.with_array((ct.array > 500).astype(np.uint8))
    back = read_mask(write_mask(mask, tmp_path / "seg.nii.gz"))
    check_same_grid(ct, back, what="segmentation")
    np.testing.assert_array_equal(back.array, mask.array)
    # the same voxel is the same physical point, and it is where the DICOM header says
    np.testing.assert_allclose(back.geometry.index_to_physical([6, 11, 9]),
                               ct.geometry.index_to_physical([6, 11, 9]), atol=1e-4)
    position_of_slice_6 = (-120.0, 35.5, 410.0 - 6 * 2.5)  # z axis flipped
    np.testing.assert_allclose(back.geometry.index_to_physical([6, 0, 0]), position_of_slice_6,
                               atol=1e-4)
    np.testing.assert_allclose(back.geometry.index_to_physical([0, 1, 1]),
                               (-120.0 + 0.7, 35.5 - 0.8, 410.0), atol=1e-4)


def test_dicom_mask_series_from_folder_and_zip(tmp_path, dicom_series):
    folder, _ = dicom_series
    ct = read_image(folder)
    organ = make_ellipsoid((7, 12, 10), radii=(2, 4, 3)).astype(np.int16) * 255
    masks = tmp_path / "MASKS_DICOM"
    _write_dicom_series(masks / "liver", organ, DICOM_GEOMETRY, "1.2.3.300", names=_NAMES)
    _write_dicom_series(masks / "spleen", (organ[:, ::-1] > 0).astype(np.int16),
                        DICOM_GEOMETRY, "1.2.3.301")
    zpath = tmp_path / "MASKS_DICOM.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(masks.rglob("*")):
            zf.write(f, str(f.relative_to(tmp_path)))
    for source in (masks, tmp_path, zpath):
        assert list_dicom_mask_organs(source) == ["liver", "spleen"]
        liver = read_dicom_mask_series(source, "Liver")
        assert liver.array.dtype == np.uint8 and liver.meta["organ"] == "liver"
        np.testing.assert_array_equal(liver.array, (organ > 0).astype(np.uint8))
        check_same_grid(ct, liver)
        spleen = read_dicom_mask_series(source, "spleen")
        np.testing.assert_array_equal(spleen.array, (organ[:, ::-1] > 0).astype(np.uint8))
        with pytest.raises(InputError, match=r"no mask series 'pancreas'.*\['liver', 'spleen'\]"):
            read_dicom_mask_series(source, "pancreas")


def test_single_dicom_file_points_to_folder(dicom_series):
    folder, _ = dicom_series
    with pytest.raises(InputError, match="single DICOM file; pass the folder"):
        read_image(folder / "image_0")


def test_dicom_missing_slice_is_geometry_error(tmp_path):
    _write_dicom_series(tmp_path / "gap", _ct_array((6, 4, 5)), DICOM_GEOMETRY, "1.2.3.400")
    (tmp_path / "gap" / "image_3").unlink()
    with pytest.raises(GeometryError, match="uneven slice spacing.*a slice may be missing"):
        read_image(tmp_path / "gap")


@pytest.mark.parametrize("keep", [0.9, 0.1, 0.0], ids=["cut in the pixels", "cut in the "
                                                       "preamble", "empty"])
def test_dicom_truncated_slice_is_named(keep, tmp_path):
    _write_dicom_series(tmp_path / "s", _ct_array(), DICOM_GEOMETRY, "1.2.3.95")
    cut = tmp_path / "s" / "image_3"
    data = cut.read_bytes()
    cut.write_bytes(data[: int(len(data) * keep)])
    size = cut.stat().st_size
    with pytest.raises(InputError) as info:
        read_image(tmp_path / "s")
    assert str(info.value) == (
        f"{tmp_path / 's'}: slice file image_3 ({size} bytes) looks truncated or damaged: it "
        "cannot be read as DICOM, and the series has a gap where a slice belongs; copy the "
        "series again from its source")
    assert cut.stat().st_size == size   # the input is left as it was


def test_dicom_truncated_end_slice_is_named_in_a_warning(tmp_path, caplog):
    array = _ct_array()
    _write_dicom_series(tmp_path / "s", array, DICOM_GEOMETRY, "1.2.3.96")
    last = tmp_path / "s" / "image_6"
    last.write_bytes(last.read_bytes()[:500])   # no gap: the series just ends one slice early
    with caplog.at_level("WARNING", logger="iunet_nb.io.images"):
        volume = read_image(tmp_path / "s")
    assert volume.shape == (6, 12, 10)
    assert "image_6 (500 bytes) in the series' folder cannot be read as DICOM" in caplog.text


def test_dicom_single_slice_is_2d(tmp_path):
    _write_dicom_series(tmp_path / "one", _ct_array((1, 4, 5)), DICOM_GEOMETRY, "1.2.3.500")
    with pytest.raises(InputError, match="single slice"):
        read_image(tmp_path / "one")


# ----------------------------------------------------------------------------- bad input
def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "nope.nii.gz")
    with pytest.raises(InputError, match="does not exist"):
        read_mask(tmp_path / "nope.nrrd")
    with pytest.raises(InputError, match="does not exist"):
        list_dicom_mask_organs(tmp_path / "MASKS_DICOM.zip")


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nrrd", "ct.txt", "ct"])
def test_non_image_file(tmp_path, name):
    (tmp_path / name).write_text("this is not an image\n" * 50)
    with pytest.raises(InputError, match=r"(cannot read .* as an image|damaged)"):
        read_image(tmp_path / name)


@pytest.mark.parametrize("ext", WRITE_EXTENSIONS)
def test_truncated_file(tmp_path, geometry, ext):
    path = write_image(Volume(_ct_array((8, 20, 20)), geometry), tmp_path / f"ct{ext}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"truncated|damaged"):
        read_image(path)


def test_2d_and_4d_images_say_their_shape(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((30, 40), np.int16)), str(tmp_path / "a.nii"))
    with pytest.raises(InputError, match=r"2D image with shape \(30, 40\)"):
        read_image(tmp_path / "a.nii")
    vols = [sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16)) for _ in range(2)]
    sitk.WriteImage(sitk.JoinSeries(vols), str(tmp_path / "b.nii.gz"))
    with pytest.raises(InputError, match=r"4D image with shape \(2, 3, 4, 5\)"):
        read_image(tmp_path / "b.nii.gz")


def test_colour_image_rejected(tmp_path):
    rgb = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.nrrd"))
    with pytest.raises(InputError, match="3 values per voxel"):
        read_image(tmp_path / "rgb.nrrd")


@pytest.mark.parametrize("ext", WRITE_EXTENSIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_voxels_counted(tmp_path, geometry, ext, dtype):
    # ITK's NIfTI reader silently turns NaN/inf into 0: io checks the raw voxels itself
    array = np.zeros((3, 4, 5), dtype)
    array[0, 0, :2] = np.nan
    array[2, 3, 4] = -np.inf
    path = write_image(Volume(array, geometry), tmp_path / f"nan{ext}")
    with pytest.raises(InputError, match=r"has 3 NaN or infinite voxel\(s\) of 60"):
        read_image(path)


def test_nan_count_spans_several_read_chunks(tmp_path, geometry):
    array = np.zeros((40, 160, 170), np.float32)  # 4.35 MB: the NaN scan reads 4 MiB chunks
    array.flat[[0, 1_048_000, 1_048_600, array.size - 1]] = np.nan
    path = write_image(Volume(array, geometry), tmp_path / "big.nii.gz")
    with pytest.raises(InputError, match=r"has 4 NaN or infinite voxel\(s\) of 1088000"):
        read_image(path)


def _mha_with(tmp_path: Path, name: str, old: bytes, new: bytes) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16)), str(tmp_path / "ok.mha"),
                    False)
    data = (tmp_path / "ok.mha").read_bytes()
    assert old in data
    (tmp_path / name).write_bytes(data.replace(old, new))
    return tmp_path / name


def test_zero_spacing_is_geometry_error(tmp_path):
    path = _mha_with(tmp_path, "zero.mha", b"ElementSpacing = 1 1 1", b"ElementSpacing = 1 0 1")
    with pytest.raises(GeometryError, match=r"spacing of zero or not a number in its header \(ElementSpacing = 1 0 1\)"):
        read_image(path)


def test_negative_spacing_in_header_becomes_a_flip(tmp_path):
    # ITK moves a negative spacing into the direction; the physical grid is unchanged.
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16)),
                    str(tmp_path / "ok.nrrd"), False)
    data = (tmp_path / "ok.nrrd").read_bytes().replace(b"(1,0,0) (0,1,0)", b"(-2,0,0) (0,1,0)")
    (tmp_path / "neg.nrrd").write_bytes(data)
    vol = read_image(tmp_path / "neg.nrrd")
    assert vol.spacing_mm == (1.0, 1.0, 2.0)
    np.testing.assert_allclose(vol.geometry.index_to_physical([0, 0, 4]), (-8.0, 0.0, 0.0))


def test_non_orthonormal_direction_is_geometry_error(tmp_path):
    path = _mha_with(tmp_path, "shear.mha", b"TransformMatrix = 1 0 0 0 1 0 0 0 1",
                     b"TransformMatrix = 1 0 0 0.5 1 0 0 0 1")
    with pytest.raises(GeometryError, match=r"shear\.mha: the direction matrix is not orthonormal"):
        read_image(path)


def test_empty_folder_and_folder_without_dicom(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="is empty"):
        read_image(tmp_path / "empty")
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "notes.txt").write_text("hello")
    (tmp_path / "docs" / "sub" / "image_0").write_bytes(b"\x00" * 300)
    with pytest.raises(InputError, match="no DICOM image series found"):
        read_image(tmp_path / "docs")
    zpath = tmp_path / "docs.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("docs/notes.txt", "hello")
    with pytest.raises(InputError, match="no DICOM image series found"):
        read_image(zpath)
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(InputError, match="not a readable .zip"):
        read_image(tmp_path / "bad.zip")


def test_unsafe_zip_member_refused(tmp_path):
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("../outside/image_0", "x")
    with pytest.raises(InputError, match="unsafe member"):
        read_image(zpath)
    assert not (tmp_path.parent / "outside").exists()


def test_float_probabilities_are_not_a_mask(tmp_path, geometry):
    path = write_image(Volume(np.full((2, 3, 4), 0.25, np.float32), geometry), tmp_path / "p.mha")
    with pytest.raises(InputError, match="not a label map"):
        read_mask(path)
    with pytest.raises(InputError, match="not a label map"):
        read_label_map(path)


def test_errors_share_the_base_class():
    assert issubclass(InputError, IunetError) and issubclass(GeometryError, InputError)


# ----------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def ircadb_17(shared_data):
    """3D-IRCADb 1.7 CT, read once for the module (about half a second)."""
    return read_image(shared_data / "ircadb" / "1.7" / "PATIENT_DICOM")


@pytest.mark.realdata
def test_real_ircadb_ct(ircadb_17):
    ct = ircadb_17
    assert ct.shape == (151, 512, 512)
    np.testing.assert_allclose(ct.spacing_mm, (1.6, 0.782, 0.782), atol=1e-4)
    assert ct.array.dtype == np.int16
    assert (int(ct.array.min()), int(ct.array.max())) == (-1023, 1024)
    assert ct.meta["modality"] == "CT" and len(ct.meta["sop_instance_uids"]) == 151
    assert ct.meta["study_uid"]


@pytest.mark.realdata
def test_real_ircadb_masks_from_zip(ircadb_17, shared_data):
    zpath = shared_data / "ircadb" / "1.7" / "MASKS_DICOM.zip"
    organs = list_dicom_mask_organs(zpath)
    assert len(organs) == 13 and {"liver", "spleen", "leftkidney"} <= set(organs)
    spleen = read_dicom_mask_series(zpath, "spleen")
    check_same_grid(ircadb_17, spleen, what="spleen mask")
    assert int(spleen.array.sum()) == 211_716
    liver = read_dicom_mask_series(zpath, "liver")
    check_same_grid(ircadb_17, liver, what="liver mask")
    assert int(liver.array.sum()) == 1_461_944
    # the spleen is soft tissue on the CT: median HU inside it in a plausible range
    assert 20 < float(np.median(ircadb_17.array[spleen.array > 0])) < 200
