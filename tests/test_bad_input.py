"""One table of malformed inputs: each gets its exact error type and a message saying what to do.

Every row builds one bad input in a temporary folder, calls the public function a user (or
a notebook, or the CLI) would call, and checks the exception class (exactly, not just a
base class) and a ``match=`` on the part of the message that tells the user what to do.
"""

from __future__ import annotations

import gzip
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import make_ellipsoid

from iunet_nb.errors import (
    CheckpointError,
    ConfigError,
    GeometryError,
    InputError,
    IunetError,
    SessionError,
)
from iunet_nb.interactive.session import RefineConfig, Session
from iunet_nb.io.images import read_image, read_mask, write_image, write_mask
from iunet_nb.io.volume import Geometry, Volume
from iunet_nb.model.checkpoint import ModelCard, load_model, save_model
from iunet_nb.model.nets import NetConfig, build_network
from iunet_nb.model.preprocess import Box, PreprocessConfig

SHAPE = (6, 10, 12)
GEOM = Geometry(spacing_mm=(2.5, 0.8, 0.7), origin_mm=(-12.0, 3.5, 41.0))
CARD = ModelCard(net=NetConfig(base_channels=4), preprocess=PreprocessConfig(size_zyx=(8, 16, 16)))


# ----------------------------------------------------------------------------- builders
def _ct(shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(0).integers(-1000, 400, size=shape).astype(np.int16)


def _img(tmp: Path, name: str, array: np.ndarray, geometry: Geometry = GEOM) -> Path:
    return write_image(Volume(array, geometry), tmp / name)


def _truncated(tmp: Path, name: str) -> Path:
    path = _img(tmp, name, _ct((12, 40, 40)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def _raw_uncompressed(tmp: Path, name: str, array: np.ndarray) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp / name), False)
    return tmp / name


def _mha_edit(tmp: Path, old: bytes, new: bytes) -> Path:
    path = _raw_uncompressed(tmp, "ok.mha", np.zeros(SHAPE, np.int16))
    data = path.read_bytes()
    assert old in data
    (tmp / "bad.mha").write_bytes(data.replace(old, new))
    return tmp / "bad.mha"


def _dicom(folder: Path, array: np.ndarray, series_uid: str, z_index=None) -> Path:
    from test_reliability_dicomseg import write_series

    write_series(folder, array, Geometry(spacing_mm=(2.5, 0.8, 0.7),
                                         direction=(1, 0, 0, 0, -1, 0, 0, 0, -1)), series_uid)
    if z_index is not None:  # rewrite positions: drop or duplicate slices
        for p in sorted(folder.iterdir()):
            img = sitk.ReadImage(str(p))
            k = int(img.GetMetaData("0020|0013")) - 1
            if z_index(k) is None:
                p.unlink()
    return folder


def _dicom_missing_slice(tmp: Path) -> Path:
    return _dicom(tmp / "gap", _ct((6, 8, 8)), "1.2.3.401", lambda k: None if k == 3 else k)


def _dicom_mixed(tmp: Path) -> Path:
    _dicom(tmp / "mixed", _ct((4, 8, 8)), "1.2.3.100")
    _dicom(tmp / "mixed" / "b", _ct((5, 8, 8)), "1.2.3.200")
    for p in (tmp / "mixed" / "b").iterdir():
        p.rename(tmp / "mixed" / f"b_{p.name}")
    return tmp / "mixed"


def _zip_unsafe(tmp: Path) -> Path:
    path = tmp / "evil.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("../../outside.dcm", b"x")
    return path


def _uint16_wrapped(tmp: Path) -> Path:
    hu = _ct()
    return _raw_uncompressed(tmp, "wrapped.nrrd", hu.astype(np.uint16))  # -1000 -> 64536


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(CARD.net).eval()


def _session(**kw: Any) -> Session:
    ct = Volume(np.where(make_ellipsoid(SHAPE, radii=(2, 3, 4)) > 0, 100.0, -50.0)
                .astype(np.float32), GEOM)
    return Session(ct, _model(), CARD, Box((1, 2, 2), (5, 8, 10)),
                   config=RefineConfig(device="cpu"), **kw)


def _foreign_checkpoint(tmp: Path) -> Path:
    other = ModelCard(net=NetConfig(base_channels=8), preprocess=CARD.preprocess)
    save_model(build_network(other.net), other, tmp / "m.pt")
    CARD.to_json(tmp / "m.json")  # the card says 4 channels, the weights have 8
    return tmp / "m.pt"


def _pickled_checkpoint(tmp: Path) -> Path:
    torch.save({"weights": Path("/etc/passwd")}, tmp / "m.pt")  # an arbitrary object
    CARD.to_json(tmp / "m.json")
    return tmp / "m.pt"


def _huge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("iunet_nb.memory.available_bytes", lambda: 1000)


# ----------------------------------------------------------------------------- the table
Case = tuple[str, Callable[[Path, pytest.MonkeyPatch], Any], type[IunetError], str]

CASES: list[Case] = [
    # --- files that are not images, or damaged
    ("text file named .nii.gz", lambda t, m: read_image(_write(t, "ct.nii.gz", b"hello")),
     InputError, r"Copy it again from its source"),
    ("text file, unknown extension", lambda t, m: read_image(_write(t, "notes.txt", b"hello")),
     InputError, r"supported: NIfTI.*If it is one of these.*copy it again"),
    ("missing path", lambda t, m: read_image(t / "nope.nii.gz"), InputError, r"check the path"),
    ("truncated NIfTI (.nii.gz)", lambda t, m: read_image(_truncated(t, "ct.nii.gz")),
     InputError, r"truncated.*Copy the file again from its source"),
    ("truncated NIfTI (.nii)", lambda t, m: read_image(_truncated(t, "ct.nii")),
     InputError, r"truncated.*Copy the file again from its source"),
    ("truncated NRRD", lambda t, m: read_image(_truncated(t, "ct.nrrd")),
     InputError, r"copy it again"),
    ("truncated MHA", lambda t, m: read_image(_truncated(t, "ct.mha")),
     InputError, r"copy it again"),
    # --- DICOM folders
    ("DICOM folder with two series", lambda t, m: read_image(_dicom_mixed(t)),
     InputError, r"Pass series_uid=<one of these> to choose one"),
    ("DICOM series with a missing slice", lambda t, m: read_image(_dicom_missing_slice(t)),
     GeometryError, r"a slice may be missing\. Resample the series to even spacing"),
    ("DICOM series of one slice", lambda t, m: read_image(_dicom(t / "one", _ct((1, 8, 8)),
                                                                 "1.2.3.5")),
     InputError, r"needs a 3D series of several slices"),
    ("a single DICOM file", lambda t, m: read_image(next((_dicom(
        t / "s", _ct((3, 8, 8)), "1.2.3.6")).iterdir())),
     InputError, r"pass the folder that holds the whole series"),
    ("empty folder", lambda t, m: read_image(_mkdir(t / "empty")),
     InputError, r"point at the folder \(or \.zip\) that holds the DICOM slices"),
    ("folder without DICOM", lambda t, m: read_image(_write(t / "d", "a.txt", b"x").parent),
     InputError, r"expected one DICOM file per slice"),
    ("zip with a path-traversal member", lambda t, m: read_image(_zip_unsafe(t)),
     InputError, r"unsafe member name '\.\./\.\./outside\.dcm'; refusing to extract"),
    # --- dimensions and voxel values
    ("2D image", lambda t, m: read_image(_raw_uncompressed(t, "a.nrrd", np.zeros((8, 9), np.int16))),
     InputError, r"a 2D slice cannot be segmented in 3D; use the whole 3D series"),
    ("4D image", lambda t, m: read_image(_write_sitk(t, "a.nii", sitk.Image([5, 4, 3, 2],
                                                                          sitk.sitkInt16))),
     InputError, r"select one 3D volume of the series"),
    ("colour image", lambda t, m: read_image(_write_sitk(t, "c.nrrd", sitk.Image(
        [4, 5, 6], sitk.sitkVectorUInt8, 3))),
     InputError, r"iunet_nb needs a scalar 3D CT or mask"),
    ("NaN voxels (NIfTI)", lambda t, m: read_image(_img(t, "n.nii.gz", _with(np.nan))),
     InputError, r"has 1 NaN or infinite voxel\(s\).*replace them"),
    ("inf voxels (MHA)", lambda t, m: read_image(_img(t, "n.mha", _with(np.inf))),
     InputError, r"replace them \(e\.g\. with the background value\)"),
    ("NaN voxels in an array given to a session",
     lambda t, m: Session(Volume(_with(np.nan), GEOM), _model(), CARD, Box((0, 0, 0), SHAPE),
                          config=RefineConfig(device="cpu")).predict(),
     InputError, r"fill them \(e\.g\. with -1024 HU\) before preprocessing"),
    ("integer overflow: signed HU stored as uint16", lambda t, m: read_image(_uint16_wrapped(t)),
     InputError, r"integer overflow.*Fix the file's pixel type"),
    # --- geometry
    ("zero spacing in the header", lambda t, m: read_image(_mha_edit(
        t, b"ElementSpacing = 1 1 1", b"ElementSpacing = 1 0 1")),
     GeometryError, r"fix the header \(e\.g\. in 3D Slicer"),
    ("negative spacing", lambda t, m: Geometry(spacing_mm=(-2.5, 0.8, 0.7)),
     GeometryError, r"fix the image header \(e\.g\. in 3D Slicer or with SimpleITK SetSpacing\)"),
    ("NaN spacing", lambda t, m: Geometry(spacing_mm=(np.nan, 0.8, 0.7)),
     GeometryError, r"fix the image header"),
    ("non-orthogonal direction", lambda t, m: read_image(_mha_edit(
        t, b"TransformMatrix = 1 0 0 0 1 0 0 0 1", b"TransformMatrix = 1 0 0 0.5 1 0 0 0 1")),
     GeometryError, r"resample the image to an orthogonal grid first"),
    # --- size: the memory guard
    ("image too big for the memory", lambda t, m: (_huge(m), read_image(_img(t, "big.nii.gz",
                                                                            _ct()))),
     InputError, r"needs about .* of memory, but only .*What to do: crop the CT"),
    ("session too big for the memory", lambda t, m: (_huge(m), _session()),
     InputError, r"an interactive session .*What to do: crop the CT"),
    # --- masks
    ("reference mask of another shape", lambda t, m: _session(
        reference=Volume(np.ones((6, 10, 11), np.uint8), GEOM)),
     GeometryError, r"Resample the reference onto the image \(nearest neighbour\)"),
    ("reference mask on another grid", lambda t, m: _session(
        reference=Volume(np.ones(SHAPE, np.uint8), Geometry(spacing_mm=(2.0, 0.8, 0.7),
                                                           origin_mm=GEOM.origin_mm))),
     GeometryError, r"Resample the reference onto the image"),
    ("mask with label 300", lambda t, m: write_mask(Volume(np.full(SHAPE, 300, np.int16), GEOM),
                                                    t / "m.nii.gz"),
     InputError, r"a mask holds 0/1 \(or small label numbers\)"),
    ("probability map read as a mask", lambda t, m: read_mask(_img(
        t, "p.nii.gz", np.full(SHAPE, 0.3, np.float32))),
     InputError, r"threshold it into labels first"),
    ("mask written with an unknown extension", lambda t, m: write_mask(
        Volume(np.zeros(SHAPE, np.uint8), GEOM), t / "m.png"),
     InputError, r"the extension must be one of \.nii\.gz, \.nii, \.nrrd, \.mha"),
    # --- boxes and scribbles
    ("box outside the image", lambda t, m: _session().predict(Box((0, 0, 0), (7, 10, 12))),
     InputError, r"reaches outside the image of shape \[6, 10, 12\].*use Box\.clip\(shape\)"),
    ("stroke off the slice", lambda t, m: _session().add_scribble(
        "fg", [(3, 3), (3, 40)], view="axial", slice_index=2),
     InputError, r"clip the stroke to the image"),
    ("scribble on a slice that does not exist", lambda t, m: _session().add_scribble(
        "fg", [(3, 3)], view="axial", slice_index=6),
     InputError, r"slice_index 6 is outside the axial slices 0\.\.5"),
    ("scribble voxels outside the image", lambda t, m: _session().add_scribble(
        "fg", points=[(1, 2, 3), (6, 0, 0)]),
     InputError, r"lies outside the image of shape \(6, 10, 12\)"),
    ("unknown view", lambda t, m: _session().add_scribble("fg", [(3, 3)], view="oblique",
                                                           slice_index=0),
     InputError, r"use one of \['axial', 'coronal', 'sagittal'\]"),
    ("unknown scribble label", lambda t, m: _session().add_scribble(7, [(3, 3)],
                                                                    slice_index=0),
     InputError, r"1 / 'fg' \(foreground\) or 2 / 'bg' \(background\)"),
    ("refine without a scribble", lambda t, m: _refine_without_scribble(),
     SessionError, r"add a foreground scribble inside missed organ"),
    # --- papermill / notebook parameters of the wrong type
    ("train: iterations as a string", lambda t, m: _train_params(t, iterations="100"),
     ConfigError, r"iterations must be a positive integer, got '100'"),
    ("train: unknown architecture", lambda t, m: _train_params(t, arch="iunett"),
     ConfigError, r"did you mean 'iunet'\?"),
    ("train: size_zyx not three integers", lambda t, m: _train_params(t, size_zyx="24x64x64"),
     ConfigError, r"size_zyx must be three positive integers \(z, y, x\)"),
    ("cv: data not a string", lambda t, m: _cv_params(data=5),
     ConfigError, r"data must be a source string"),
    ("design: readers as a single string", lambda t, m: _design_params(readers="r1"),
     ConfigError, r"readers must be a list of ids \(e\.g\. \['r1', 'r2', 'r3'\]\) or a number"),
    ("analysis: study_dir a number", lambda t, m: _analysis_params(study_dir=5),
     ConfigError, r"study_dir must be a folder path"),
    ("refine config: lr as a string", lambda t, m: RefineConfig(lr="0.01"),
     ConfigError, r"RefineConfig\.lr must be a finite number"),
    ("refine config: unknown device", lambda t, m: RefineConfig(device="tpu"),
     ConfigError, r"must be 'auto', 'cpu' or 'cuda\[:n\]'"),
    # --- ids that would escape the output folder
    ("case id with ../", lambda t, m: _check_id("../../etc"),
     ConfigError, r"use letters, digits, '\.', '_' and '-' only"),
    ("reader id with a slash", lambda t, m: _safe_join(t, "r1/../../x"),
     ConfigError, r"use letters, digits"),
    # --- checkpoints
    ("checkpoint of another architecture", lambda t, m: load_model(_foreign_checkpoint(t)),
     CheckpointError, r"do not match the architecture in .*m\.json \(iunet, base_channels=4\)"),
    ("checkpoint holding a pickled object", lambda t, m: load_model(_pickled_checkpoint(t)),
     CheckpointError, r"cannot read weights .*m\.pt"),
    ("checkpoint without its card", lambda t, m: load_model(_no_card(t)),
     CheckpointError, r"must sit next to the \.pt file"),
    # --- export and sessions
    ("DICOM-SEG export of a NIfTI CT", lambda t, m: _session().export(t / "m.dcm"),
     InputError, r"Export the mask as \.nii\.gz or \.nrrd instead"),
    ("resume a session with another CT", lambda t, m: _resume_other_ct(t),
     SessionError, r"Open the CT the session was made for"),
    ("resume a damaged session", lambda t, m: _resume_damaged(t),
     SessionError, r"the previous state is intact: load it with use_previous=True"),
]


def _write(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return folder / name


def _write_sitk(folder: Path, name: str, image: Any) -> Path:
    sitk.WriteImage(image, str(folder / name))
    return folder / name


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _with(value: float) -> np.ndarray:
    a = _ct().astype(np.float32)
    a[2, 3, 4] = value
    return a


def _refine_without_scribble() -> None:
    s = _session()
    s.predict()
    s.refine()


def _train_params(tmp: Path, **kw: Any) -> Any:
    from iunet_nb.studies.crossval import validate_train_parameters

    return validate_train_parameters(**{"data": "phantom:4", **kw})


def _cv_params(**kw: Any) -> Any:
    from iunet_nb.studies.crossval import validate_cv_parameters

    return validate_cv_parameters(**kw)


def _design_params(**kw: Any) -> Any:
    from iunet_nb.studies.study import validate_design_parameters

    return validate_design_parameters(cases=["c1", "c2"], **kw)


def _analysis_params(**kw: Any) -> Any:
    from iunet_nb.studies.study import validate_analysis_parameters

    return validate_analysis_parameters(**kw)


def _check_id(value: str) -> Any:
    from iunet_nb.io.paths import check_id

    return check_id(value, "case id")


def _safe_join(tmp: Path, reader: str) -> Any:
    from iunet_nb.io.paths import safe_join

    return safe_join(tmp, reader, "case07", what="reader id")


def _no_card(tmp: Path) -> Path:
    path = _foreign_checkpoint(tmp)
    path.with_suffix(".json").unlink()
    return path


def _resume_other_ct(tmp: Path) -> None:
    s = _session(folder=tmp / "s")
    s.close()
    other = Volume(_ct().astype(np.float32), GEOM)
    Session.load(tmp / "s", other, _model(), CARD)


def _resume_damaged(tmp: Path) -> None:
    s = _session(folder=tmp / "s")
    s.predict()
    s.close()
    state = json.loads((tmp / "s" / "state.json").read_text())
    mask = tmp / "s" / state["files"]["mask"]["name"]
    mask.write_bytes(gzip.compress(b"broken"))
    Session.load(tmp / "s", s.volume, _model(), CARD)




@pytest.mark.parametrize("name, build, error, match", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, build, error, match, tmp_path, monkeypatch):
    with pytest.raises(IunetError, match=match) as info:
        build(tmp_path, monkeypatch)
    assert type(info.value) is error, f"{name}: {type(info.value).__name__}: {info.value}"


def test_the_table_is_large_and_distinct():
    assert len(CASES) >= 50
    assert len({c[0] for c in CASES}) == len(CASES)
