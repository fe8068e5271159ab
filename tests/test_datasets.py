"""Tests of iunet_nb.io.datasets: folder layouts, case loading, seeded folds."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from iunet_nb.io.datasets import (BTCV_DIRECTION, BTCV_LABELS, LAYOUTS, Case, find_cases, load_folds,
                               make_folds, save_folds, with_true_direction)
from iunet_nb.errors import ConfigError, GeometryError, InputError
from iunet_nb.io.images import write_image, write_mask
from iunet_nb.io.volume import Geometry, Volume

from conftest import make_ellipsoid

SHAPE = (6, 8, 9)


def _labels(seed: int) -> np.ndarray:
    """Label map with organ 1 (an ellipsoid) and organ 2 (a small block)."""
    labels = make_ellipsoid(SHAPE, radii=(2, 3, 3)).astype(np.uint8)
    labels[0, :2, : 2 + seed] = 2
    return labels


def _ct(labels: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (labels * 100 - 50 + rng.integers(-5, 5, labels.shape)).astype(np.int16)


@pytest.fixture
def msd_root(tmp_path: Path, geometry: Geometry) -> Path:
    root = tmp_path / "Task07_Pancreas"
    training = []
    for i in (3, 1, 2):  # listed out of order on purpose
        name = f"pancreas_{i:03d}.nii.gz"
        labels = _labels(i)
        write_image(Volume(_ct(labels, i), geometry), root / "imagesTr" / name)
        write_mask(Volume(labels, geometry), root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (root / "imagesTr" / "._pancreas_001.nii.gz").write_bytes(b"macOS junk")
    (root / "dataset.json").write_text(json.dumps({
        "name": "Pancreas", "labels": {"0": "background", "1": "pancreas", "2": "cancer"},
        "training": training, "test": []}))
    return root


@pytest.fixture
def paired_root(tmp_path: Path, geometry: Geometry) -> Path:
    root = tmp_path / "paired"
    for cid, ext in (("caseB", ".nrrd"), ("caseA", ".nii.gz"), ("caseC", ".mha")):
        labels = _labels(len(cid))
        write_image(Volume(_ct(labels, 0), geometry), root / "images" / f"{cid}{ext}")
        write_mask(Volume((labels == 1).astype(np.uint8), geometry),
                   root / "labels" / f"{cid}.nii.gz")
    write_mask(Volume(_labels(0), geometry), root / "labels" / "orphan.nii.gz")
    return root


# ----------------------------------------------------------------------------- msd
def test_msd_by_name_and_value(msd_root):
    cases = find_cases(msd_root, "pancreas")
    assert [c.case_id for c in cases] == ["pancreas_001", "pancreas_002", "pancreas_003"]
    assert all(c.source == "msd" and c.label_value == 1 and c.structure == "pancreas"
               for c in cases)
    assert find_cases(msd_root, "Cancer", layout="msd")[0].label_value == 2
    assert find_cases(msd_root, 2)[0].structure == "cancer"
    image, mask = cases[1].load()
    assert mask.array.dtype == np.uint8 and set(np.unique(mask.array)) == {0, 1}
    np.testing.assert_array_equal(mask.array, (_labels(2) == 1).astype(np.uint8))
    np.testing.assert_array_equal(image.array, _ct(_labels(2), 2))
    assert image.geometry == mask.geometry and mask.meta["case_id"] == "pancreas_002"
    _, cancer = find_cases(msd_root, "cancer")[2].load()
    assert int(cancer.array.sum()) == int((_labels(3) == 2).sum()) == 2 * 5


def test_msd_unknown_structure_lists_labels(msd_root):
    with pytest.raises(InputError, match=r"'liver' is not among the labels.*\['background', "
                                         r"'pancreas', 'cancer'\]"):
        find_cases(msd_root, "liver")


def test_msd_absent_structure_is_empty_reference(msd_root, geometry):
    write_mask(Volume(np.zeros(SHAPE, np.uint8), geometry),
               msd_root / "labelsTr" / "pancreas_002.nii.gz")
    case = find_cases(msd_root, "pancreas")[1]
    with pytest.raises(InputError, match=r"case pancreas_002: empty reference mask"):
        case.load()


def test_nnunet_v2_layout_without_training_list(tmp_path, geometry):
    root = tmp_path / "Dataset007"
    for cid in ("b", "a"):
        labels = _labels(1)
        write_image(Volume(_ct(labels, 1), geometry), root / "imagesTr" / f"{cid}_0000.nii.gz")
        write_mask(Volume(labels, geometry), root / "labelsTr" / f"{cid}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "pancreas": 1}}))
    cases = find_cases(root)
    assert [(c.case_id, Path(c.image_path).name) for c in cases] == [
        ("a", "a_0000.nii.gz"), ("b", "b_0000.nii.gz")]
    assert int(cases[0].load()[1].array.sum()) == int((_labels(1) == 1).sum())


def test_msd_missing_file_reported(msd_root):
    (msd_root / "imagesTr" / "pancreas_003.nii.gz").unlink()
    with pytest.raises(InputError, match=r"1 case\(s\) whose files are missing"):
        find_cases(msd_root)


# ----------------------------------------------------------------------------- paired
def test_paired_matches_names_across_formats(paired_root):
    cases = find_cases(paired_root, "pancreas")
    assert [c.case_id for c in cases] == ["caseA", "caseB", "caseC"]  # orphan label skipped
    assert [Path(c.image_path).suffix for c in cases] == [".gz", ".nrrd", ".mha"]
    assert all(c.source == "paired" and c.label_value is None for c in cases)
    image, mask = cases[1].load()
    np.testing.assert_array_equal(mask.array, (_labels(5) == 1).astype(np.uint8))
    assert image.shape == mask.shape == SHAPE


def test_paired_multilabel_needs_a_value(paired_root, geometry):
    write_mask(Volume(_labels(5), geometry), paired_root / "labels" / "caseB.nii.gz")
    case = find_cases(paired_root, "pancreas")[1]
    with pytest.raises(InputError, match=r"several labels \[1, 2\]; give the target's value"):
        case.load()
    _, mask = find_cases(paired_root, 2)[1].load()
    assert int(mask.array.sum()) == 2 * 7


def test_paired_mask_on_other_grid_is_geometry_error(paired_root, geometry):
    other = Geometry((1.0, 1.0, 1.0), geometry.origin_mm, geometry.direction)
    write_mask(Volume((_labels(5) == 1).astype(np.uint8), other),
               paired_root / "labels" / "caseB.nii.gz")
    with pytest.raises(GeometryError, match=r"reference mask of case caseB is not on the image"):
        find_cases(paired_root)[1].load()


def test_paired_image_as_dicom_folder(tmp_path, geometry):
    root = tmp_path / "paired"
    ct_geometry = Geometry((2.0, 0.9, 0.8), (10.0, -20.0, 30.0))
    labels = _labels(1)
    _write_dicom(root / "images" / "p1", _ct(labels, 1), ct_geometry)
    write_mask(Volume(labels, ct_geometry), root / "labels" / "p1.nrrd")
    (case,) = find_cases(root, 1)
    image, mask = case.load()
    np.testing.assert_array_equal(image.array, _ct(labels, 1))
    assert image.meta["format"] == "dicom" and mask.meta["case_id"] == "p1"


def _write_dicom(folder: Path, array: np.ndarray, geometry: Geometry, uid: str = "1.2.3.7"
                 ) -> None:
    """Minimal DICOM series (one file per slice, no extension), positions from ``geometry``."""
    folder.mkdir(parents=True, exist_ok=True)
    image = geometry.apply_to(sitk.GetImageFromArray(array))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")
    d = geometry.direction
    for i in range(array.shape[0]):
        s = image[:, :, i]
        for key, value in (("0008|0060", "CT"), ("0020|000e", uid), ("0008|0018", f"{uid}.{i}"),
                           ("0020|0013", str(i + 1)),
                           ("0020|0037", "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4],
                                                                    d[7]))),
                           ("0020|0032", "\\".join(
                               str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, i))))):
            s.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"image_{i}"))
        writer.Execute(s)


# ----------------------------------------------------------------------------- ircadb
@pytest.fixture
def ircadb_root(tmp_path: Path) -> Path:
    """Two synthetic patients: p1 with liver + leftkidney (zipped), p2 with liver (folder)."""
    root = tmp_path / "ircadb"
    g = Geometry((1.6, 0.78, 0.78))
    labels = _labels(1)
    for patient in ("p1", "p2"):
        _write_dicom(root / patient / "PATIENT_DICOM", _ct(labels, 3), g, uid=f"1.2.3.{patient[1]}")
    _write_dicom(root / "p1" / "MASKS_DICOM" / "liver", (labels == 1).astype(np.int16) * 255, g,
                 uid="1.2.3.10")
    _write_dicom(root / "p1" / "MASKS_DICOM" / "leftkidney", (labels == 2).astype(np.int16),
                 g, uid="1.2.3.11")
    with zipfile.ZipFile(root / "p1" / "MASKS_DICOM.zip", "w") as zf:
        for f in sorted((root / "p1" / "MASKS_DICOM").rglob("*")):
            zf.write(f, str(f.relative_to(root / "p1")))
    for f in sorted((root / "p1" / "MASKS_DICOM").rglob("image_*")):
        f.unlink()
    for d in sorted((root / "p1" / "MASKS_DICOM").iterdir()):
        d.rmdir()
    (root / "p1" / "MASKS_DICOM").rmdir()
    _write_dicom(root / "p2" / "MASKS_DICOM" / "liver", np.zeros(SHAPE, np.int16), g,
                 uid="1.2.3.20")
    return root


def test_ircadb_layout_and_aliases(ircadb_root):
    liver = find_cases(ircadb_root, "liver")
    assert [(c.case_id, c.source, c.structure) for c in liver] == [
        ("p1", "ircadb", "liver"), ("p2", "ircadb", "liver")]
    assert liver[0].label_path.endswith("MASKS_DICOM.zip")
    assert liver[1].label_path.endswith("MASKS_DICOM")
    image, mask = liver[0].load()
    np.testing.assert_array_equal(mask.array, (_labels(1) == 1).astype(np.uint8))
    assert image.shape == SHAPE
    for alias in ("kidney_left", "leftkidney", "Left Kidney", "left_kidney"):
        (case,) = find_cases(ircadb_root, alias)
        assert case.case_id == "p1" and case.structure == "leftkidney"
    _, kidney = case.load()
    assert int(kidney.array.sum()) == int((_labels(1) == 2).sum())
    with pytest.raises(InputError, match=r"empty reference mask: liver"):
        liver[1].load()
    with pytest.raises(InputError, match=r"no 3D-IRCADb patient .* 'spleen'.*\['leftkidney', "
                                         r"'liver'\]"):
        find_cases(ircadb_root, "spleen")
    # a single patient folder works too
    assert [c.case_id for c in find_cases(ircadb_root / "p1", "liver")] == ["p1"]


# ----------------------------------------------------------------------------- detection
def test_auto_detection(msd_root, paired_root, ircadb_root, tmp_path):
    assert {find_cases(msd_root)[0].source, find_cases(paired_root)[0].source,
            find_cases(ircadb_root, "liver")[0].source} == {"msd", "paired", "ircadb"}
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"cannot tell the layout.*msd \(dataset.json.*paired "
                                         r"\(images/.*ircadb.*btcv"):
        find_cases(tmp_path / "junk")
    with pytest.raises(InputError, match="does not exist"):
        find_cases(tmp_path / "nothing")
    with pytest.raises(ConfigError, match=r"unknown layout 'decathlon'.*'msd', 'paired'"):
        find_cases(msd_root, layout="decathlon")
    assert LAYOUTS == ("msd", "paired", "ircadb", "btcv")


def test_btcv_layout_synthetic(tmp_path, geometry):
    root = tmp_path / "btcv"
    for cid in ("0002", "0001"):
        pancreas_only = np.where(_labels(int(cid)) == 1, 11, 0).astype(np.uint8)
        write_mask(Volume(pancreas_only, geometry), root / f"{cid}.nii.gz")
    (root / "README.txt").write_text("not a label map")
    cases = find_cases(root)
    assert [(c.case_id, c.label_value, c.image_path) for c in cases] == [
        ("0001", 11, None), ("0002", 11, None)]
    image, mask = cases[0].load()
    assert image is None and int(mask.array.sum()) == int((_labels(1) == 1).sum())
    with pytest.raises(InputError, match="empty reference mask: spleen"):
        find_cases(root, "spleen")[0].load()
    with pytest.raises(InputError, match=r"'kidney' is not among the labels of BTCV"):
        find_cases(root, "kidney")


def _btcv_header_geometry() -> Geometry:
    # what SimpleITK reads from the shared BTCV maps' header (NIfTI RAS affine diag(2, 2, 2))
    return Geometry(spacing_mm=(2.0, 2.0, 2.0), origin_mm=(0.0, 0.0, 0.0),
                    direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))


def test_btcv_maps_are_read_in_their_true_orientation(tmp_path, caplog):
    root = tmp_path / "btcv"
    labels = np.where(_labels(1) == 1, 11, 0).astype(np.uint8)
    header = _btcv_header_geometry()
    write_mask(Volume(labels, header), root / "0001.nii.gz")
    with caplog.at_level("INFO", logger="iunet_nb.io.datasets"):
        (case,) = find_cases(root)
    assert "instead of their header's" in caplog.text and "btcv_direction=None" in caplog.text
    assert case.direction == BTCV_DIRECTION == (1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)
    _, mask = case.load()
    np.testing.assert_array_equal(mask.array, (labels == 11).astype(np.uint8))  # array as stored
    np.testing.assert_allclose(mask.geometry.direction, BTCV_DIRECTION)
    assert mask.geometry.spacing_mm == (2.0, 2.0, 2.0)
    # the origin moves so the grid's centre, hence its physical bounding box, stays put:
    # x spans -(9 - 1) * 2 .. 0 mm in both, but voxel x = 0 now sits at -16 mm instead of 0
    np.testing.assert_allclose(mask.geometry.origin_mm, (-16.0, 0.0, 0.0), atol=1e-9)
    corners = np.array([[z, y, x] for z in (0, 5) for y in (0, 7) for x in (0, 8)])
    for g in (header, mask.geometry):
        p = g.index_to_physical(corners)
        np.testing.assert_allclose([p.min(0), p.max(0)], [[-16, -14, 0], [0, 0, 10]], atol=1e-9)
    assert case.read_labels().array.max() == 11
    # overridable: None trusts the header, any other orthonormal matrix is applied
    (trusting,) = find_cases(root, btcv_direction=None)
    assert trusting.direction is None
    np.testing.assert_allclose(trusting.load()[1].geometry.direction, header.direction)
    assert Case(**json.loads(json.dumps(case.to_dict()))) == case


def test_btcv_image_gets_the_same_direction_as_its_label_map(tmp_path):
    root = tmp_path / "btcv_full"
    labels = np.where(_labels(1) == 1, 11, 0).astype(np.uint8)
    write_mask(Volume(labels, _btcv_header_geometry()), root / "label" / "label0001.nii.gz")
    write_image(Volume(_ct(labels, 0), _btcv_header_geometry()), root / "img" / "img0001.nii.gz")
    image, mask = find_cases(root)[0].load()
    assert image is not None and image.geometry.is_close(mask.geometry, atol=1e-6)
    np.testing.assert_allclose(image.geometry.direction, BTCV_DIRECTION)


@pytest.mark.parametrize("bad", [(1, 0, 0), (2, 0, 0, 0, 1, 0, 0, 0, 1), "diag"])
def test_bad_btcv_direction_is_a_config_error(tmp_path, bad):
    root = tmp_path / "btcv"
    write_mask(Volume(np.ones((2, 2, 2), np.uint8) * 11, _btcv_header_geometry()),
               root / "0001.nii.gz")
    with pytest.raises(ConfigError, match="btcv_direction must be None .* orthonormal"):
        find_cases(root, btcv_direction=bad)


def test_with_true_direction_keeps_the_array_and_the_centre(geometry):
    v = Volume(np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4), geometry, {"k": 1})
    out = with_true_direction(v, (-1, 0, 0, 0, 1, 0, 0, 0, -1))
    assert out.array is v.array and out.meta == {"k": 1}
    centre = (np.array(v.shape) - 1) / 2
    np.testing.assert_allclose(out.geometry.index_to_physical(centre),
                               geometry.index_to_physical(centre), atol=1e-9)
    assert with_true_direction(v, geometry.direction) is v
    with pytest.raises(GeometryError, match="not orthonormal"):
        with_true_direction(v, (1, 1, 0, 0, 1, 0, 0, 0, 1))


def test_btcv_label_table():
    assert BTCV_LABELS["pancreas"] == 11 and BTCV_LABELS["spleen"] == 1
    assert sorted(BTCV_LABELS.values()) == list(range(1, 14))
    assert BTCV_LABELS["left_kidney"] == 3 and BTCV_LABELS["right_adrenal_gland"] == 12


def test_case_is_frozen_and_json_native(msd_root):
    case = find_cases(msd_root)[0]
    with pytest.raises(AttributeError):
        case.case_id = "x"  # type: ignore[misc]
    assert Case(**json.loads(json.dumps(case.to_dict()))) == case


# ----------------------------------------------------------------------------- folds
def test_make_folds_partition_and_golden():
    ids = [f"case{i:02d}" for i in range(11)]
    folds = make_folds(ids, k=3, seed=7)
    assert [f["fold"] for f in folds] == [0, 1, 2]
    tests = [c for f in folds for c in f["test"]]
    assert sorted(tests) == ids and len(tests) == 11
    assert sorted(len(f["test"]) for f in folds) == [3, 4, 4]
    for f in folds:
        assert sorted(f["train"] + f["test"]) == ids and not set(f["train"]) & set(f["test"])
    # golden: the documented recipe, computed here without make_folds
    perm = np.random.default_rng(7).permutation(11)
    assert folds[0]["test"] == sorted(ids[j] for j in perm[:4])
    assert folds[2]["test"] == sorted(ids[j] for j in perm[8:])


def test_make_folds_deterministic_and_seeded():
    ids = [str(i) for i in range(20)]
    assert make_folds(ids, 5, seed=1) == make_folds(list(reversed(ids)), 5, seed=1)
    assert make_folds(ids, 5, seed=1) != make_folds(ids, 5, seed=2)


@pytest.mark.parametrize("k", [0, 1, 4, 2.5])
def test_make_folds_bad_k(k):
    with pytest.raises(ConfigError, match=r"k must be an integer from 2 to the number of cases "
                                          r"\(3\)"):
        make_folds(["a", "b", "c"], k=k)


def test_make_folds_duplicates():
    with pytest.raises(ConfigError, match=r"unique, these repeat: \['a'\]"):
        make_folds(["a", "b", "a"], k=2)


def test_save_and_load_folds(tmp_path):
    folds = make_folds([f"c{i}" for i in range(7)], k=3, seed=5)
    path = save_folds(folds, tmp_path / "folds.json", seed=5)
    data = json.loads(path.read_text())
    assert data["k"] == 3 and data["seed"] == 5 and data["version"] == 1
    assert load_folds(path) == folds
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folds.json"]


def test_load_folds_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist; create it with save_folds"):
        load_folds(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_folds(tmp_path / "bad.json")
    folds = make_folds(["a", "b", "c", "d"], k=2)
    broken = [dict(folds[0]), dict(folds[1])]
    broken[1]["test"] = broken[1]["test"] + [broken[0]["test"][0]]
    (tmp_path / "dup.json").write_text(json.dumps({"k": 2, "seed": 0, "folds": broken}))
    with pytest.raises(ConfigError, match="both train and test|more than one test fold"):
        load_folds(tmp_path / "dup.json")
    (tmp_path / "k.json").write_text(json.dumps({"k": 3, "seed": 0, "folds": folds}))
    with pytest.raises(ConfigError, match="k is 3 but the file holds 2 folds"):
        load_folds(tmp_path / "k.json")
    with pytest.raises(ConfigError, match="some ids are in more than one test fold"):
        save_folds([folds[0], {**folds[1], "test": folds[1]["test"] + folds[0]["test"][:1],
                               "train": folds[1]["train"][1:]}], tmp_path / "x.json", seed=0)


# ----------------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_real_btcv(shared_data):
    cases = find_cases(shared_data / "btcv_labels", "pancreas")
    assert len(cases) == 30 and cases[0].case_id == "0001" and cases[-1].case_id == "0040"
    assert all(c.source == "btcv" and c.label_value == 11 and c.image_path is None
               for c in cases)
    image, mask = cases[0].load()
    assert image is None and mask.shape == (256, 160, 192)
    assert int(mask.array.sum()) == 17105
    # read with the true direction, the anatomy sits where LPS says: liver (6) on the
    # patient's right (smaller x) of the spleen (1), aorta (8) behind (larger y) the pancreas
    # (11), liver above (larger z) the right kidney (2); the header alone mirrors x
    for case in cases[:3]:
        for direction, right_ok in ((BTCV_DIRECTION, True), (None, False)):
            labels = (case if direction else Case(**{**case.to_dict(), "direction": None})
                      ).read_labels()
            c = {k: labels.geometry.index_to_physical(np.argwhere(labels.array == k).mean(0))
                 for k in (1, 2, 6, 8, 11)}
            assert (c[6][0] < c[1][0]) == right_ok, case.case_id
            assert c[8][1] > c[11][1] and c[6][2] > c[2][2], case.case_id
    gallbladder = {c.case_id: c for c in find_cases(shared_data / "btcv_labels", "gallbladder")}
    with pytest.raises(InputError, match="case 0023: empty reference mask"):
        gallbladder["0023"].load()


@pytest.mark.realdata
def test_real_ircadb(shared_data):
    root = shared_data / "ircadb"
    assert [c.case_id for c in find_cases(root, "liver")] == ["1.17", "1.7"]
    (spleen,) = find_cases(root, "spleen")
    assert spleen.case_id == "1.7" and spleen.structure == "spleen"
    assert [c.structure for c in find_cases(root, "kidney_left")] == ["leftkidney"]


@pytest.mark.realdata
def test_real_ircadb_case_load(shared_data):
    (case,) = [c for c in find_cases(shared_data / "ircadb", "liver") if c.case_id == "1.17"]
    image, mask = case.load()  # includes check_same_grid of the zipped mask series vs. CT
    assert image.shape == mask.shape == (119, 512, 512)
    assert int(mask.array.sum()) == 2_106_497
    assert mask.meta["case_id"] == "1.17" and mask.meta["organ"] == "liver"
