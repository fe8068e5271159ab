"""DICOM-SEG export: round trips voxel for voxel and in physical space, errors, Session.export."""

from __future__ import annotations

import locale
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("highdicom")
import highdicom as hd
import pydicom
from conftest import make_ellipsoid

from iunet_nb.errors import GeometryError, InputError
from iunet_nb.io.dicomseg import is_dicom_ct, read_dicom_seg, write_dicom_seg
from iunet_nb.io.images import read_image, write_image
from iunet_nb.io.volume import Geometry, Volume

# A proper rotation (DICOM is right-handed): y and z flipped; anisotropic; off-origin.
GEOMETRY = Geometry(spacing_mm=(2.5, 0.8, 0.7), origin_mm=(-120.0, 35.5, 410.0),
                    direction=(1, 0, 0, 0, -1, 0, 0, 0, -1))
SERIES_UID = "1.2.826.0.1.3680043.2.1125.77.10"
STUDY_UID = "1.2.826.0.1.3680043.2.1125.77.1"
FOR_UID = "1.2.826.0.1.3680043.2.1125.77.2"
SHAPE = (9, 14, 12)


def write_series(folder: Path, array: np.ndarray, geometry: Geometry = GEOMETRY,
                 series_uid: str = SERIES_UID) -> None:
    """One DICOM CT file per slice with SimpleITK; names deliberately not in slice order.

    GDCM's writer sets the C locale (Python's default text encoding then becomes ASCII for
    the rest of the test run); the locale is restored afterwards.
    """
    saved = locale.setlocale(locale.LC_ALL)
    try:
        _write_series(folder, array, geometry, series_uid)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_series(folder: Path, array: np.ndarray, geometry: Geometry, series_uid: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image = geometry.apply_to(sitk.GetImageFromArray(array))
    d = geometry.direction
    tags = [("0008|0060", "CT"), ("0020|000e", series_uid), ("0020|000d", STUDY_UID),
            ("0020|0052", FOR_UID), ("0010|0010", "Test^Patient"), ("0010|0020", "P0042"),
            ("0008|0016", "1.2.840.10008.5.1.4.1.1.2"),
            ("0020|0037", "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))),
            ("0018|0050", f"{geometry.spacing_mm[0]:.4f}")]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")
    n = array.shape[0]
    for i in range(n):
        slice_ = image[:, :, i]
        for key, value in tags:
            slice_.SetMetaData(key, value)
        slice_.SetMetaData("0008|0018", f"{series_uid}.{i + 1}")
        slice_.SetMetaData("0020|0013", str(i + 1))
        slice_.SetMetaData("0020|0032", "\\".join(
            f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, i))))
        writer.SetFileName(str(folder / f"IM{(i * 5) % n:04d}"))
        writer.Execute(slice_)


@pytest.fixture
def dicom_ct(tmp_path) -> Volume:
    array = np.random.default_rng(0).integers(-1000, 400, size=SHAPE).astype(np.int16)
    write_series(tmp_path / "CT", array)
    ct = read_image(tmp_path / "CT")
    assert np.array_equal(ct.array, array)
    return ct


def _mask() -> np.ndarray:
    m = make_ellipsoid(SHAPE, center=(4.0, 6.0, 5.0), radii=(2.5, 4.0, 3.0))
    m[4, 0, 11] = 1  # a lone corner voxel: catches row/column and flip mix-ups
    return m


def test_round_trip_voxel_for_voxel_and_in_physical_space(dicom_ct, tmp_path):
    mask = _mask()
    out = write_dicom_seg(Volume(mask, dicom_ct.geometry), dicom_ct, tmp_path / "seg.dcm",
                          structure="pancreas", content_creator_name="Doe^Jane")
    # ours: frames placed by ImagePositionPatient
    back = read_dicom_seg(out, dicom_ct)
    np.testing.assert_array_equal(back.array, mask)
    assert back.geometry.is_close(dicom_ct.geometry)
    # highdicom's own reader, by referenced source instance (independent of positions)
    seg = hd.seg.segread(str(out))
    uids = dicom_ct.meta["sop_instance_uids"]
    nonempty = [k for k in range(SHAPE[0]) if mask[k].any()]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[uids[k] for k in nonempty], segment_numbers=[1],
        combine_segments=True)
    np.testing.assert_array_equal(pixels, mask[nonempty])
    assert seg.NumberOfFrames == len(nonempty)  # empty slices omitted
    # references and frame of reference (pydicom level)
    ds = pydicom.dcmread(str(out))
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.FrameOfReferenceUID == FOR_UID and ds.StudyInstanceUID == STUDY_UID
    assert ds.PatientID == "P0042" and str(ds.PatientName) == "Test^Patient"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES_UID
    assert ds.SeriesInstanceUID != SERIES_UID
    referenced = {i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0]
                  .ReferencedInstanceSequence}
    assert referenced == set(uids)
    seg_desc = ds.SegmentSequence[0]
    assert seg_desc.SegmentedPropertyTypeCodeSequence[0].CodeValue == "15776009"  # SCT pancreas
    # every frame sits where the CT slice it derives from sits, in mm
    for item in ds.PerFrameFunctionalGroupsSequence:
        src = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = uids.index(src)
        np.testing.assert_allclose(
            [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
            dicom_ct.geometry.index_to_physical([k, 0, 0]), atol=1e-3)
    orient = ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    np.testing.assert_allclose([float(v) for v in orient.ImageOrientationPatient],
                               [1, 0, 0, 0, -1, 0], atol=1e-6)
    # the lone voxel is at the physical point the CT says
    k, r, c = 4, 0, 11
    assert back.array[k, r, c] == 1
    np.testing.assert_allclose(dicom_ct.geometry.index_to_physical([k, r, c]),
                               (-120.0 + 11 * 0.7, 35.5, 410.0 - 4 * 2.5), atol=1e-6)


def test_ct_from_zip_exports_too(tmp_path):
    array = np.random.default_rng(1).integers(-1000, 400, size=SHAPE).astype(np.int16)
    write_series(tmp_path / "CT", array)
    zpath = tmp_path / "ct.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for p in sorted((tmp_path / "CT").iterdir()):
            z.write(p, f"series/{p.name}")
    ct = read_image(zpath)
    mask = _mask()
    out = write_dicom_seg(Volume(mask, ct.geometry), ct, tmp_path / "seg.dcm",
                          structure="some new structure")
    np.testing.assert_array_equal(read_dicom_seg(out, ct).array, mask)
    code = pydicom.dcmread(str(out)).SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0]
    assert code.CodingSchemeDesignator == "99IUNETNB"


def test_refusals(dicom_ct, tmp_path, geometry):
    mask = Volume(_mask(), dicom_ct.geometry)
    nifti_ct = Volume(dicom_ct.array, dicom_ct.geometry, {"format": "nifti", "source": "a.nii"})
    assert is_dicom_ct(dicom_ct) and not is_dicom_ct(nifti_ct)
    with pytest.raises(InputError, match=r"Export the mask as \.nii\.gz"):
        write_dicom_seg(mask, nifti_ct, tmp_path / "x.dcm")
    with pytest.raises(GeometryError, match="not on the image's grid"):
        write_dicom_seg(Volume(_mask(), geometry), dicom_ct, tmp_path / "x.dcm")
    with pytest.raises(InputError, match="mask is empty"):
        write_dicom_seg(Volume(np.zeros(SHAPE, np.uint8), dicom_ct.geometry), dicom_ct,
                        tmp_path / "x.dcm")
    with pytest.raises(InputError, match="binary mask"):
        write_dicom_seg(Volume(_mask() * 2, dicom_ct.geometry), dicom_ct, tmp_path / "x.dcm")
    moved = Volume(dicom_ct.array, dicom_ct.geometry,
                   {**dicom_ct.meta, "source": str(tmp_path / "gone")})
    with pytest.raises(InputError, match="no longer at"):
        write_dicom_seg(mask, moved, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()
    # a SEG of another scan (frame of reference) is refused on reading
    out = write_dicom_seg(mask, dicom_ct, tmp_path / "seg.dcm")
    other = Volume(dicom_ct.array, dicom_ct.geometry,
                   {**dicom_ct.meta, "frame_of_reference_uid": "1.2.3.4"})
    with pytest.raises(GeometryError, match="another scan"):
        read_dicom_seg(out, other)
    with pytest.raises(InputError, match="no segment 2"):
        read_dicom_seg(out, dicom_ct, segment_number=2)
    write_image(Volume(_mask(), dicom_ct.geometry), tmp_path / "m.nii.gz")
    with pytest.raises(InputError, match="as a DICOM Segmentation"):
        read_dicom_seg(tmp_path / "m.nii.gz", dicom_ct)


def test_missing_highdicom_gives_install_hint(dicom_ct, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "highdicom" or name.startswith("highdicom."):
            raise ImportError("No module named 'highdicom'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(InputError, match=r"pip install highdicom"):
        write_dicom_seg(Volume(_mask(), dicom_ct.geometry), dicom_ct, tmp_path / "x.dcm")
