"""Data safety: bad conditions never cost the user a file they had.

Each row of :data:`CASES` builds a situation in a temporary folder (a full or read-only file
system, a second writer, an output over an input, an archive that explodes...), then runs
the call a user would make. The harness checks the exact error class, a ``match=`` on the
part of the message that says what to do, that the message is one line, and that every file
that existed before the call is still there, byte for byte (nothing the user had was lost or
overwritten), with no temporary file left behind.

The full-disk and read-only rows use a small ``tmpfs``; they need root (``mount``) and are
skipped with that reason otherwise. The injected-ENOSPC rows run everywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from test_bad_input import CARD, GEOM, SHAPE, _ct, _foreign_checkpoint, _model, _session

import iunet_nb.io.images as io_mod
from iunet_nb.cli import main
from iunet_nb.errors import CheckpointError, GeometryError, InputError, IunetError, SessionError
from iunet_nb.interactive.session import RefineConfig, Session
from iunet_nb.interactive.strokes import check_scribble_size
from iunet_nb.io.images import read_dicom_mask_series, read_image, write_image, write_mask
from iunet_nb.io.volume import Geometry, Volume
from iunet_nb.model.checkpoint import load_model, save_model
from iunet_nb.model.predict import make_box, segment
from iunet_nb.model.preprocess import Box
from iunet_nb.model.train import TrainConfig, _load_checkpoint
from iunet_nb.systems.zhou import ZhouConfig, ZhouModel, load_zhou

_TINY_ZHOU = ZhouConfig(base_channels=2, depth=3)


# ----------------------------------------------------------------------------- helpers
def _files(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root`` (a lock file excluded)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "session.lock":
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _mask(value: int = 1) -> Volume:
    a = np.zeros(SHAPE, np.uint8)
    a[1:5, 2:8, 2 + value:10] = 1
    return Volume(a, GEOM)


def _busy_mask() -> Volume:
    """A mask that compresses badly (bigger than the small file systems below)."""
    return Volume((np.random.default_rng(1).random((40, 64, 64)) > 0.5).astype(np.uint8), GEOM)


@contextlib.contextmanager
def _mounted(where: Path, options: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("a small tmpfs needs root (mount); the injected-ENOSPC rows cover the rest")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(folder: Path) -> None:
    """Fill the file system of ``folder`` to the last byte."""
    with contextlib.suppress(OSError), open(folder / "filler.bin", "wb", buffering=0) as fh:
        while True:
            fh.write(b"\0" * 4096)
    with contextlib.suppress(OSError), open(folder / "filler2.bin", "wb", buffering=0) as fh:
        while True:
            fh.write(b"\0")


@pytest.fixture
def small_fs(tmp_path) -> Iterator[Path]:
    """A 512 KiB tmpfs at ``tmp_path/small`` (skipped unless root)."""
    with _mounted(tmp_path / "small", "size=512k") as where:
        yield where


def _injected_short_write(monkeypatch: pytest.MonkeyPatch, keep: float) -> None:
    """SimpleITK writes, then the file is cut to ``keep`` of its size, as a full disk does to a
    NIfTI or NRRD write without SimpleITK raising."""
    real = sitk.WriteImage

    def short(image: Any, name: str, *args: Any, **kw: Any) -> None:
        real(image, name, *args, **kw)
        os.truncate(name, int(os.path.getsize(name) * keep))

    monkeypatch.setattr(io_mod.sitk, "WriteImage", short)


_OPEN: list[Session] = []


def _keep(s: Session) -> Session:
    """Keep ``s`` referenced (open) until the test ends."""
    _OPEN.append(s)
    return s


@pytest.fixture(autouse=True)
def _close_kept() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


# ----------------------------------------------------------------------------- 1. full disk
def _on_full_disk(fs: Path, ext: str) -> Callable[[], Any]:
    write_mask(_mask(), fs / f"liver{ext}")
    _fill(fs)
    return lambda: write_mask(_busy_mask(), fs / f"liver{ext}")


def _injected(t: Path, m: pytest.MonkeyPatch, name: str, keep: float) -> Callable[[], Any]:
    write_mask(_mask(), t / name)
    _injected_short_write(m, keep)
    return lambda: write_mask(_mask(2), t / name)


def _export_on_full_disk(fs: Path) -> Callable[[], Any]:
    s = _session()
    s.predict()
    write_mask(_mask(), fs / "export.nii")
    _fill(fs)
    return lambda: s.export(fs / "export.nii")


def _autosave_on_full_disk(fs: Path) -> Callable[[], Any]:
    s = _session(folder=fs / "s")
    _fill(fs)
    return lambda: s.add_scribble("fg", points=np.argwhere(np.ones(SHAPE, bool)))


Case = tuple[str, Callable[..., Callable[[], Any]], type[IunetError], str]

# rows whose builder takes (tmp_path, monkeypatch)
CASES: list[Case] = [
    ("0-byte NIfTI write over a good mask (injected ENOSPC)",
     lambda t, m: _injected(t, m, "liver.nii.gz", 0.0),
     InputError, r"writing .*liver\.nii\.gz failed: the file came out empty \(0 bytes\); "
                 r"liver\.nii\.gz was not changed"),
    ("truncated .nii write over a good mask (injected ENOSPC)",
     lambda t, m: _injected(t, m, "liver.nii", 0.5),
     InputError, r"truncated or unreadable after writing .*liver\.nii was not changed"),
    ("truncated .nrrd write over a good mask (injected ENOSPC)",
     lambda t, m: _injected(t, m, "liver.nrrd", 0.7),
     InputError, r"liver\.nrrd failed.*liver\.nrrd was not changed"),
    ("truncated .mha write (injected ENOSPC)",
     lambda t, m: _injected(t, m, "liver.mha", 0.6),
     InputError, r"liver\.mha failed.*liver\.mha was not changed"),
    ("truncated new .nii.gz file (injected ENOSPC)",
     lambda t, m: (_injected_short_write(m, 0.4), lambda: write_mask(_mask(), t / "new.nii.gz")
                   )[1],
     InputError, r"new\.nii\.gz failed: .*; nothing was written"),
]

# rows whose builder takes a small tmpfs folder
FULL_DISK_CASES: list[Case] = [
    ("mask .nii over a good one on a full disk", lambda fs: _on_full_disk(fs, ".nii"),
     InputError, r"liver\.nii was not changed; its file system is full .*write elsewhere"),
    ("mask .nii.gz over a good one on a full disk", lambda fs: _on_full_disk(fs, ".nii.gz"),
     InputError, r"liver\.nii\.gz.*file system is full .*free space or write elsewhere"),
    ("mask .nrrd over a good one on a full disk", lambda fs: _on_full_disk(fs, ".nrrd"),
     InputError, r"liver\.nrrd.*file system is full"),
    ("mask .mha over a good one on a full disk", lambda fs: _on_full_disk(fs, ".mha"),
     InputError, r"liver\.mha.*file system is full"),
    ("Session.export on a full disk", _export_on_full_disk,
     InputError, r"export\.nii was not changed; its file system is full"),
    ("autosave on a full disk", _autosave_on_full_disk,
     SessionError, r"autosave to .* failed .*the change is in memory and the folder still "
                   r"holds the previous state"),
]


def _check(build_call: Callable[[], Callable[[], Any]], root: Path, error: type, match: str):
    call = build_call()
    before = _files(root)
    with pytest.raises(IunetError, match=match) as info:
        call()
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert "\n" not in str(info.value), str(info.value)
    after = _files(root)
    lost = {k: v for k, v in before.items() if after.get(k) != v and not k.startswith("filler")}
    assert not lost, f"changed or lost: {sorted(lost)}"
    assert not [k for k in set(after) - set(before) if Path(k).name.startswith(".")], after
    return info.value


def test_autosave_on_a_full_disk_keeps_a_loadable_session(small_fs):
    s = _session(folder=small_fs / "s")
    s.predict()
    saved = s.mask.array.copy()
    _fill(small_fs)
    with pytest.raises(SessionError, match="autosave"):
        s.add_scribble("fg", points=np.argwhere(np.ones(SHAPE, bool)))
    s.close()
    (small_fs / "filler.bin").unlink()
    again = Session.load(small_fs / "s", s.volume, _model(), CARD)
    np.testing.assert_array_equal(again.mask.array, saved)
    again.close()


# ----------------------------------------------------------------------------- CLI rows
@pytest.fixture
def cli_files(tmp_path):
    ct = Volume(_ct(), GEOM)
    model = save_model(_model(), CARD, tmp_path / "model.pt")
    return {"ct": write_image(ct, tmp_path / "ct.nrrd"), "model": model,
            "ref": write_mask(_mask(), tmp_path / "ref.nii.gz")}


def _run_cli(argv: list[str], root: Path, match: str) -> str:
    before = _files(root)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()) as out:
        rc = main([str(a) for a in argv])
    text = err.getvalue().strip()
    assert rc == 2, f"exit {rc}; stdout {out.getvalue()!r}; stderr {text!r}"
    lines = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, text
    assert __import__("re").search(match, lines[0]), lines[0]
    after = _files(root)
    lost = {k for k, v in before.items() if after.get(k) != v and not k.startswith("filler")}
    assert not lost, f"changed or lost: {sorted(lost)}"
    return lines[0]


def test_cli_predict_onto_a_full_disk_fails_and_keeps_the_old_mask(cli_files, small_fs):
    old = write_mask(_mask(), small_fs / "pred.nii")
    _fill(small_fs)
    _run_cli(["predict", cli_files["ct"], "--model", cli_files["model"], "--box", 0, 0, 0, 6,
              10, 12, "--out", old], small_fs, r"pred\.nii was not changed; its file system is "
                                               r"full")


# ----------------------------------------------------------------------------- 2. two writers
def _open_twice(t: Path) -> Callable[[], Any]:
    first = _keep(_session(folder=t / "s"))
    first.predict()
    return lambda: Session.load(t / "s", first.volume, _model(), CARD)


def _new_session_in_open_folder(t: Path) -> Callable[[], Any]:
    _keep(_session(folder=t / "s"))
    return lambda: _session(folder=t / "s" / ".." / "s")


CASES += [
    ("Session.load of a folder this process has open (a cell run twice)",
     lambda t, m: _open_twice(t),
     SessionError, r"already open in this process \(another Session object; a cell run "
                   r"twice\?\); two writers would delete each other's files\. Close the other"),
    ("new Session in a folder this process has open", lambda t, m: _new_session_in_open_folder(t),
     SessionError, r"already open in this process"),
]


def test_two_session_objects_on_one_folder_never_both_write(tmp_path):
    first = _session(folder=tmp_path / "s")
    first.predict()
    with pytest.raises(SessionError, match="already open in this process"):
        Session.load(tmp_path / "s", first.volume, _model(), CARD)
    # the first one goes on writing, and what it wrote loads once it is closed
    first.paint(1, [(4, 4)], view="axial", slice_index=3, radius_vox=1)
    first.add_scribble("bg", [(1, 1)], view="axial", slice_index=2)
    first.close()
    again = Session.load(tmp_path / "s", first.volume, _model(), CARD)
    assert again.history == ["predict", "paint", "scribble"]
    np.testing.assert_array_equal(again.mask.array, first.mask.array)
    again.close()
    with Session.load(tmp_path / "s", first.volume, _model(), CARD, use_previous=True) as prev:
        assert prev.history == ["predict", "paint", "scribble"]  # the load autosaved once


def test_a_session_nobody_references_gives_its_folder_up(tmp_path):
    s = _session(folder=tmp_path / "s")
    s.predict()
    volume = s.volume
    del s  # e.g. the notebook variable was reassigned; no close() was called
    with Session.load(tmp_path / "s", volume, _model(), CARD) as again:
        assert again.history == ["predict"]


# ----------------------------------------------------------------------------- 3. out over input
def _export_over_own_mask(t: Path) -> Callable[[], Any]:
    s = _keep(_session(folder=t / "s"))
    s.predict()
    own = json.loads((t / "s" / "state.json").read_text())["files"]["mask"]["name"]
    return lambda: s.export(t / "s" / own)


def _export_over_ct(t: Path) -> Callable[[], Any]:
    ct = read_image(write_image(Volume(_ct(), GEOM), t / "ct.nii.gz"))
    s = Session(ct, _model(), CARD, Box((1, 2, 2), (5, 8, 10)), config=RefineConfig(device="cpu"))
    return lambda: s.export(t / "ct.nii.gz")


CASES += [
    ("Session.export over its own autosaved mask", lambda t, m: _export_over_own_mask(t),
     InputError, r"is one of the autosave files of the session .*would damage the session\. "
                 r"Choose another name"),
    ("Session.export over the CT it was read from", lambda t, m: _export_over_ct(t),
     InputError, r"the export path .*ct\.nii\.gz is the CT .*would overwrite your CT\. Choose "
                 r"another file name"),
]


def _hardlink(src: Path, dst: Path) -> Path:
    os.link(src, dst)
    return dst


CLI_OUT_OVER_INPUT = [
    ("--out is the CT", lambda f: ["--out", f["ct"]], r"--out .*ct\.nrrd is the CT \("),
    ("--out is the CT by another spelling",
     lambda f: ["--out", f["ct"].parent / "." / "ct.nrrd"], r"is the CT .*overwrite your CT"),
    ("--out is a symbolic link to the CT",
     lambda f: ["--out", _symlink(f["ct"], f["ct"].parent / "link.nrrd")], r"is the CT"),
    ("--out is a hard link of the CT",
     lambda f: ["--out", _hardlink(f["ct"], f["ct"].parent / "hard.nrrd")], r"is the CT"),
    ("--out is the --reference mask", lambda f: ["--out", f["ref"], "--reference", f["ref"]],
     r"is the reference mask .*Choose another file name for --out"),
    ("--png is the CT", lambda f: ["--out", f["ct"].parent / "m.nii.gz", "--png", f["ct"]],
     r"--png .*is the CT"),
]


def _symlink(src: Path, dst: Path) -> Path:
    dst.symlink_to(src)
    return dst


@pytest.mark.parametrize("name, extra, match", CLI_OUT_OVER_INPUT,
                         ids=[c[0] for c in CLI_OUT_OVER_INPUT])
def test_cli_output_over_an_input_is_refused(name, extra, match, cli_files, tmp_path):
    argv = ["predict", cli_files["ct"], "--model", cli_files["model"], "--box", 0, 0, 0, 6, 10,
            12, *extra(cli_files)]
    _run_cli(argv, tmp_path, match)


def test_cli_box_from_mask_as_out_is_refused(cli_files, tmp_path):
    _run_cli(["predict", cli_files["ct"], "--model", cli_files["model"], "--box-from",
              cli_files["ref"], "--out", cli_files["ref"]], tmp_path,
             r"--out .*ref\.nii\.gz is the --box-from mask")


def test_cli_session_export_over_its_own_files_is_refused(tmp_path):
    s = _session(folder=tmp_path / "s")
    s.predict()
    s.close()
    own = json.loads((tmp_path / "s" / "state.json").read_text())["files"]["mask"]["name"]
    _run_cli(["session", "export", tmp_path / "s", tmp_path / "s" / own], tmp_path,
             r"autosave files of the session .*Choose another name")
    _run_cli(["session", "export", tmp_path / "s", tmp_path / "s" / "history" / "x.nii.gz"],
             tmp_path, r"autosave files of the session")
    assert main(["session", "export", str(tmp_path / "s"),
                 str(tmp_path / "s" / "export.nii.gz")]) == 0  # beside them is fine

# ----------------------------------------------------------------------------- 4. archive bombs
def _zip(t: Path, members: dict[str, bytes], name: str = "series.zip") -> Path:
    with zipfile.ZipFile(t / name, "w", zipfile.ZIP_DEFLATED) as z:
        for member, data in members.items():
            z.writestr(member, data)
    return t / name


def _no_extraction(m: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any) -> None:
        raise AssertionError("extraction started before the size checks")

    m.setattr(io_mod, "_extract_member", refuse)


def _bomb(t: Path, m: pytest.MonkeyPatch, read: Callable[[Path], Any] = read_image, **limits: int
          ) -> Callable[[], Any]:
    for key, value in limits.items():
        m.setattr(io_mod, key, value)
    _no_extraction(m)
    zeros = b"\0" * (4 << 20)
    path = _zip(t, {"MASKS_DICOM/liver/image_0": zeros, "MASKS_DICOM/liver/image_1": zeros})
    return lambda: read(path)


CASES += [
    ("zip bomb: 8 MiB of zeros from a 16 KiB zip",
     lambda t, m: _bomb(t, m, ZIP_RATIO_ABOVE_BYTES=1 << 20),
     InputError, r"would expand \d+-fold, to 8 MiB .*a zip bomb\?\); refusing to extract it\. If it "
                 r"really is one CT series, unzip it yourself and give the folder"),
    ("zip expanding past the size cap", lambda t, m: _bomb(t, m, MAX_ZIP_BYTES=1 << 20),
     InputError, r"would expand to 0\.0 GiB, more than the 0\.0 GiB cap on an archive"),
    ("zip with more files than a series has",
     lambda t, m: (m.setattr(io_mod, "MAX_ZIP_MEMBERS", 3), _no_extraction(m),
                   lambda: read_image(_zip(t, {f"s{i}": b"x" for i in range(4)})))[2],
     InputError, r"holds 4 files, more than the 3 a DICOM series zip may hold"),
    ("zip larger than the free temporary space",
     lambda t, m: (m.setattr(io_mod, "_free_bytes", lambda folder: 1000), _no_extraction(m),
                   lambda: read_image(_zip(t, {"s1": b"x" * 5000})))[2],
     InputError, r"has 0 MiB free; free space there \(or set TMPDIR to a larger disk\)"),
    ("zip bomb as a DICOM mask series",
     lambda t, m: _bomb(t, m, lambda p: read_dicom_mask_series(p, "liver"),
                        ZIP_RATIO_ABOVE_BYTES=1 << 20),
     InputError, r"a zip bomb\?"),
]


def _extract_onto_full_disk(fs: Path, m: pytest.MonkeyPatch) -> Callable[[], Any]:
    m.setattr(tempfile, "tempdir", str(fs))
    m.setattr(io_mod, "_free_bytes", lambda folder: None)  # as on a file system that cannot say
    path = _zip(fs.parent, {f"DICOM/s{i}": os.urandom(64 << 10) for i in range(12)})
    _fill(fs)
    return lambda: read_image(path)


FULL_DISK_M_CASES: list[Case] = [
    ("zip extracted into a full temporary folder", _extract_onto_full_disk,
     InputError, r"ran out of space while extracting .*series\.zip; free space there"),
]

# ----------------------------------------------------------------------------- 5. spacing
def _spaced(spacing: tuple[float, float, float]) -> Volume:
    return Volume(_ct().astype(np.float32), Geometry(spacing_mm=spacing))


def _ct_file_spaced(t: Path, name: str, spacing: tuple[float, float, float]) -> Path:
    return write_image(_spaced(spacing), t / name)


_SPACING = r"outside the 0\.05\.\.50 mm a CT can have .*fix the header"
CASES += [
    ("CT file with 1e-6 mm spacing", lambda t, m: lambda: read_image(
        _ct_file_spaced(t, "ct.nii.gz", (1e-6, 1e-6, 1e-6))), GeometryError, _SPACING),
    ("CT file with 1000 mm slices (metres as mm?)", lambda t, m: lambda: read_image(
        _ct_file_spaced(t, "ct.mha", (1000.0, 0.8, 0.8))), GeometryError,
     r"spacing \(1e\+03, 0\.8, 0\.8\) mm .*micrometres or metres in the header\?"),
    ("Session on a CT of 1e-9 mm spacing", lambda t, m: lambda: Session(
        _spaced((1e-9, 1e-9, 1e-9)), _model(), CARD, Box((1, 2, 2), (5, 8, 10)),
        config=RefineConfig(device="cpu")), GeometryError, _SPACING),
    ("segment() on a CT of 1e-9 mm spacing", lambda t, m: lambda: segment(
        _spaced((1e-9, 0.8, 0.8)), _model(), Box((1, 2, 2), (5, 8, 10)), CARD.preprocess,
        device="cpu"), GeometryError, _SPACING),
]


def test_cli_predict_on_a_tiny_spacing_stops_at_once(tmp_path):
    ct = _ct_file_spaced(tmp_path, "ct.nrrd", (1e-6, 1e-6, 1e-6))
    model = save_model(_model(), CARD, tmp_path / "model.pt")
    t0 = time.perf_counter()
    _run_cli(["predict", ct, "--model", model, "--box", 0, 0, 0, 6, 10, 12, "--out",
              tmp_path / "m.nii.gz"], tmp_path, _SPACING)
    assert time.perf_counter() - t0 < 10
    assert not (tmp_path / "m.nii.gz").exists()

# ----------------------------------------------------------------------------- 6. mask geometry
_SHIFTED = Geometry(spacing_mm=GEOM.spacing_mm, origin_mm=(0.0, 0.0, 0.0))
_RESPACED = Geometry(spacing_mm=(2.0, 0.8, 0.7), origin_mm=GEOM.origin_mm)
_GRID = r"not on the image's grid: image has .*Resample the .* onto the image \(nearest neighbour\)"

CLI_OFF_GRID = [
    ("--box-from mask of another origin", "--box-from", _SHIFTED),
    ("--box-from mask of another spacing", "--box-from", _RESPACED),
    ("--reference mask of another origin", "--reference", _SHIFTED),
    ("--reference mask of another spacing", "--reference", _RESPACED),
]


@pytest.mark.parametrize("name, option, geometry", CLI_OFF_GRID, ids=[c[0] for c in CLI_OFF_GRID])
def test_cli_predict_refuses_a_mask_off_the_ct_grid(name, option, geometry, cli_files, tmp_path):
    off = write_mask(Volume(_mask().array, geometry), tmp_path / "off.nii.gz")
    box = ["--box", 0, 0, 0, 6, 10, 12] if option == "--reference" else []
    _run_cli(["predict", cli_files["ct"], "--model", cli_files["model"], *box, option, off,
              "--out", tmp_path / "pred.nii.gz"], tmp_path, _GRID)
    assert not (tmp_path / "pred.nii.gz").exists()  # refused before any work


CASES += [
    ("make_box from a mask of another origin", lambda t, m: lambda: make_box(
        Volume(_ct(), GEOM), reference=Volume(_mask().array, _SHIFTED)),
     GeometryError, r"the box mask is not on the image's grid"),
]

# ----------------------------------------------------------------------------- 7. not HU
def _not_hu(kind: str) -> np.ndarray:
    hu = _ct().astype(np.int32)
    return {"uint8 0..255": ((hu + 1000) // 6).clip(0, 255).astype(np.uint8),
            "uint16 HU + 1024": (hu + 1024).astype(np.uint16),
            "constant": np.full(SHAPE, -1024, np.int16),
            "1e30 floats": (hu * 1e27).astype(np.float32)}[kind]


NOT_HU = [
    ("uint8 0..255", r"values 0\.\.23\d hold no negative value.*an 8-bit picture .*Export the "
                     r"CT in HU"),
    ("uint16 HU + 1024", r"without the rescale intercept \(HU \+ 1024\?\), not HU"),
    ("constant", r"every voxel is -1024: a blank image, nothing to segment"),
    ("1e30 floats", r"are not Hounsfield units \(a CT lies within -32768\.\.65535\)"),
]


@pytest.mark.parametrize("kind, match", NOT_HU, ids=[c[0] for c in NOT_HU])
def test_cli_predict_refuses_a_ct_not_in_hu(kind, match, cli_files, tmp_path):
    ct = write_image(Volume(_not_hu(kind), GEOM), tmp_path / "ct_not_hu.nrrd")
    _run_cli(["predict", ct, "--model", cli_files["model"], "--box", 0, 0, 0, 6, 10, 12,
              "--out", tmp_path / "pred.nii.gz"], tmp_path, match)
    assert not (tmp_path / "pred.nii.gz").exists()


@pytest.mark.parametrize("kind, match", NOT_HU[:3], ids=[c[0] for c in NOT_HU[:3]])
def test_read_image_warns_of_a_ct_not_in_hu(kind, match, tmp_path, caplog):
    path = write_image(Volume(_not_hu(kind), GEOM), tmp_path / "ct.nii.gz")
    with caplog.at_level("WARNING", logger="iunet_nb.io.images"):
        read_image(path)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert __import__("re").search(match, warnings[0]), warnings[0]


def test_read_image_of_real_hu_says_nothing(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="iunet_nb.io.images"):
        read_image(write_image(Volume(_ct(), GEOM), tmp_path / "ct.nii.gz"))
    assert not caplog.records


CASES += [
    ("CT of 1e30 floats", lambda t, m: lambda: read_image(write_image(
        Volume(_not_hu("1e30 floats"), GEOM), t / "ct.nii.gz")),
     InputError, r"are not Hounsfield units .*convert the image to HU"),
]

# ----------------------------------------------------------------------------- 8. damaged log
DAMAGED_LINES = [
    ("Latin-1 bytes", b'{"event": "caf\xe9"}\n'),
    ("random bytes", bytes(range(256)).replace(b"\n", b"") + b"\n"),
    ("a JSON list", b"[1, 2]\n"),
    ("a JSON number", b"5\n"),
    ("a NUL-filled block (a crash on some file systems)", b"\0" * 512 + b"\n"),
]


@pytest.mark.parametrize("name, garbage", DAMAGED_LINES, ids=[c[0] for c in DAMAGED_LINES])
def test_a_damaged_event_line_costs_that_line_only(name, garbage, tmp_path, caplog):
    s = _session(folder=tmp_path / "s")
    s.predict()
    s.paint(1, [(4, 4)], view="axial", slice_index=3, radius_vox=1)
    s.close()
    log = tmp_path / "s" / "events.jsonl"
    log.write_bytes(log.read_bytes() + garbage)
    before = log.read_bytes()
    with caplog.at_level("WARNING", logger="iunet_nb.interactive.session"):
        again = Session.load(tmp_path / "s", s.volume, _model(), CARD)
    assert "is not a valid event (damaged or interrupted write?); skipped" in caplog.text
    assert again.history == ["predict", "paint"]
    np.testing.assert_array_equal(again.mask.array, s.mask.array)
    assert [e["event"] for e in again.events] == ["open", "predict", "paint", "load"]
    again.close()
    assert log.read_bytes().startswith(before)  # the damaged line is kept, for a person to see
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["session", "info", str(tmp_path / "s")]) == 0
    assert "load 1, open 1, paint 1, predict 1" in out.getvalue()

# ----------------------------------------------------------------------------- 9. read-only
@pytest.fixture
def read_only_fs(tmp_path) -> Iterator[Path]:
    """A tmpfs holding ``old.nii.gz`` (a good mask) and ``s/`` (a session folder), then made
    read-only (skipped unless root)."""
    with _mounted(tmp_path / "ro", "size=2m") as where:
        write_mask(_mask(), where / "old.nii.gz")
        s = _session(folder=where / "s")
        s.predict()
        s.close()
        done = subprocess.run(["mount", "-o", "remount,ro", str(where)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot remount the tmpfs read-only ({done.stderr.decode().strip()})")
        yield where


_RO = r"\(Read-only file system\)"
READ_ONLY_CASES: list[Case] = [
    ("new mask on a read-only file system", lambda fs: lambda: write_mask(_mask(), fs / "m.nrrd"),
     InputError, _RO + r"; choose a folder you can write to"),
    ("mask over one on a read-only file system",
     lambda fs: lambda: write_mask(_mask(2), fs / "old.nii.gz"),
     InputError, r"cannot write .*old\.nii\.gz " + _RO),
    ("Session.export to a read-only file system",
     lambda fs: (lambda s: lambda: s.export(fs / "export.nii.gz"))(_keep(_session())),
     InputError, _RO),
    ("new Session folder on a read-only file system",
     lambda fs: lambda: _session(folder=fs / "new"),
     SessionError, r"cannot use .*new as the session folder " + _RO + "; give a folder you can"),
    ("Session.load of a folder on a read-only file system",
     lambda fs: lambda: Session.load(fs / "s", _session().volume, _model(), CARD),
     SessionError, r"cannot create the lock file .*check that the folder is writable"),
]

CASES += [
    ("Session folder that is an existing file",
     lambda t, m: (t.joinpath("notes.txt").write_text("mine"),
                   lambda: _session(folder=t / "notes.txt"))[1],
     SessionError, r"cannot use .*notes\.txt as the session folder \(File exists\); give a "
                   r"folder you can write to"),
]

FULL_DISK_CASES += [
    ("new Session folder on a full disk",
     lambda fs: (_fill(fs), lambda: _session(folder=fs / "new"))[1],
     SessionError, r"(cannot write the lock file|autosave to) .*(free disk space|Free disk space)"),
]


@pytest.mark.parametrize("name, build, error, match", READ_ONLY_CASES,
                         ids=[c[0] for c in READ_ONLY_CASES])
def test_read_only(name, build, error, match, read_only_fs):
    _check(lambda: build(read_only_fs), read_only_fs, error, match)


def test_cli_writes_to_a_read_only_file_system_fail_in_one_line(cli_files, read_only_fs, tmp_path):
    base = ["predict", cli_files["ct"], "--model", cli_files["model"], "--box", 0, 0, 0, 6, 10, 12]
    _run_cli([*base, "--out", read_only_fs / "old.nii.gz"], read_only_fs, _RO)
    _run_cli([*base, "--out", tmp_path / "m.nii.gz", "--png", read_only_fs / "o.png"],
             read_only_fs, r"cannot write the overview .*o\.png " + _RO + r".*was written\)")
    _run_cli(["session", "export", read_only_fs / "s", read_only_fs / "x.nii.gz"],
             read_only_fs, _RO)

# ----------------------------------------------------------------------------- 10, 16. headers
def _nifti_pixdim(t: Path, name: str, value: float) -> Path:
    """A NIfTI CT whose pixdim[1] (x spacing) is ``value``."""
    import gzip as _gzip
    import struct

    path = write_image(Volume(_ct(), GEOM), t / name)
    gz = name.endswith(".gz")
    data = bytearray(_gzip.decompress(path.read_bytes()) if gz else path.read_bytes())
    data[80:84] = struct.pack("<f", value)
    path.write_bytes(_gzip.compress(bytes(data)) if gz else bytes(data))
    return path


def _mha_header(t: Path, old: bytes, new: bytes) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(_ct()), str(t / "ok.mha"), False)
    data = (t / "ok.mha").read_bytes()
    assert old in data
    (t / "bad.mha").write_bytes(data.replace(old, new))
    return t / "bad.mha"


CASES += [
    ("NIfTI with pixdim 0", lambda t, m: lambda: read_image(_nifti_pixdim(t, "ct.nii", 0.0)),
     GeometryError, r"pixdim = \(0, 0\.8, 2\.5\) .*zero or not a number, which readers silently "
                    r"turn into 1 mm\. Fix the header"),
    ("NIfTI (.nii.gz) with pixdim NaN",
     lambda t, m: lambda: read_image(_nifti_pixdim(t, "ct.nii.gz", float("nan"))),
     GeometryError, r"pixdim = \(nan, 0\.8, 2\.5\)"),
    ("MetaImage with NaN spacing", lambda t, m: lambda: read_image(_mha_header(
        t, b"ElementSpacing = 1 1 1", b"ElementSpacing = 1 nan 1")),
     GeometryError, r"spacing of zero or not a number in its header \(ElementSpacing = 1 nan 1\)"),
    ("MetaImage with a singular direction", lambda t, m: lambda: read_image(_mha_header(
        t, b"TransformMatrix = 1 0 0 0 1 0 0 0 1", b"TransformMatrix = 1 0 0 1 0 0 0 0 1")),
     GeometryError, r"singular direction matrix .*fix the header's orientation"),
]

# ----------------------------------------------------------------------------- 11, 12. manifests
def _manifest_edit(t: Path, edit: Callable[[dict], Any]) -> Path:
    s = _session(folder=t / "s")
    s.predict()
    s.close()
    (t / "secret.nii.gz").write_bytes(write_mask(_mask(), t / "x.nii.gz").read_bytes())
    state = t / "s" / "state.json"
    manifest = json.loads(state.read_text())
    edit(manifest)
    state.write_text(json.dumps(manifest))
    return t / "s"


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            d = d[key]
        d[last] = value
    return edit


BAD_MANIFESTS = [
    ("state a list", _set("state", [1, 2]), r"'state' is not a dict"),
    ("files a string", _set("files", "mask.nii.gz"), r"'files' is not a dict"),
    ("ct.shape a string", _set("ct.shape", "24x32x32"), r"ct\.shape is not a list of integers"),
    ("refine_round a string", _set("state.refine_round", "two"),
     r"state\.refine_round is 'two', not an integer"),
    ("undo an object", _set("undo", {"a": 1}), r"'undo' is not a list"),
    ("mask entry without a name", _set("files.mask", {"sha256": "0"}), r"a file entry is malformed"),
    ("mask named by an absolute path",
     lambda m: m["files"]["mask"].update(name="/etc/hostname"),
     r"file name '/etc/hostname' points outside the session folder"),
    ("mask named ../secret.nii.gz", lambda m: m["files"]["mask"].update(name="../secret.nii.gz"),
     r"file name '\.\./secret\.nii\.gz' points outside the session folder"),
]


@pytest.mark.parametrize("name, edit, match", BAD_MANIFESTS, ids=[c[0] for c in BAD_MANIFESTS])
def test_cli_session_info_and_export_refuse_a_bad_manifest(name, edit, match, tmp_path):
    folder = _manifest_edit(tmp_path, edit)
    _run_cli(["session", "info", folder], tmp_path, r"state\.json is corrupt or truncated \("
             + match)
    _run_cli(["session", "export", folder, tmp_path / "out.nii.gz"], tmp_path, match)
    assert not (tmp_path / "out.nii.gz").exists()

# ----------------------------------------------------------------------------- 14. empty refine
@pytest.mark.parametrize("scribbled", [False, True], ids=["no scribble", "all refined"])
def test_cli_session_refine_without_a_pending_scribble_is_refused(scribbled, cli_files, tmp_path):
    s = _session(folder=tmp_path / "s")
    s.predict()
    if scribbled:
        s.add_scribble("fg", [(4, 4)], view="axial", slice_index=3)
        s.refine()
    s.close()
    t0 = time.perf_counter()
    _run_cli(["session", "refine", tmp_path / "s", "--ct", cli_files["ct"], "--model",
              cli_files["model"]], tmp_path, r"nothing to refine in .*no scribble was added "
                                                r"since the last refine; add one first")
    assert time.perf_counter() - t0 < 5

# ----------------------------------------------------------------------------- model files
def _model_file(tmp: Path, data: bytes | None = None, obj: Any = None) -> Path:
    """``m.pt`` (``data`` bytes, or ``obj`` through torch.save) beside a valid ``m.json``."""
    if obj is not None:
        torch.save(obj, tmp / "m.pt")
    else:
        (tmp / "m.pt").write_bytes(data or b"")
    CARD.to_json(tmp / "m.json")
    return tmp / "m.pt"


def _cut(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _old_format(tmp: Path) -> Path:
    torch.save(_model().state_dict(), tmp / "m.pt", _use_new_zipfile_serialization=False)
    CARD.to_json(tmp / "m.json")
    return tmp / "m.pt"


def _plain_zip(tmp: Path) -> Path:
    with zipfile.ZipFile(tmp / "m.pt", "w") as z:
        z.writestr("notes.txt", "not weights")
    CARD.to_json(tmp / "m.json")
    return tmp / "m.pt"


_AGAIN = r"; save or copy it again from its source$"
_NOT_TORCH = r": it is not a PyTorch file \(torch\.save did not write it\); give the \.pt file"
MODEL_CASES: list[Case] = [
    ("empty .pt", lambda t, m: partial(load_model, _model_file(t)),
     CheckpointError, r"^cannot read weights .*m\.pt: the file is empty \(0 bytes\)" + _AGAIN),
    ("truncated .pt", lambda t, m: partial(
        load_model, _cut(save_model(_model(), CARD, t / "m.pt"))),
     CheckpointError, r"^cannot read weights .*m\.pt: the file is truncated or damaged "
                      r"\(\d+ bytes, its zip index is missing\)" + _AGAIN),
    ("truncated .pt of torch's old format", lambda t, m: partial(load_model, _cut(_old_format(t))),
     CheckpointError, r"^cannot read weights .*m\.pt: the file is truncated or damaged "
                      r"\(\d+ bytes\)" + _AGAIN),
    ("text file as .pt", lambda t, m: partial(load_model, _model_file(t, b"weights: none\n")),
     CheckpointError, r"^cannot read weights .*m\.pt" + _NOT_TORCH),
    ("random bytes as .pt", lambda t, m: partial(
        load_model, _model_file(t, np.random.default_rng(0).bytes(4000))),
     CheckpointError, r"^cannot read weights .*m\.pt" + _NOT_TORCH),
    ("zip archive without data.pkl as .pt", lambda t, m: partial(load_model, _plain_zip(t)),
     CheckpointError, r"^cannot read weights .*m\.pt: it is a zip archive but not a PyTorch file"),
    ("pickle naming os.system", lambda t, m: partial(
        load_model, _model_file(t, obj={"w": os.system})),
     CheckpointError, r"^cannot read weights .*m\.pt: it holds Python objects other than tensors "
                      r"\((posix|nt)\.system\), which could run code when loaded, so it is "
                      r"refused; save only the state dict"),
    ("a whole pickled module", lambda t, m: partial(load_model, _model_file(t, obj=_model())),
     CheckpointError, r"holds Python objects other than tensors \(iunet_nb\.model\.nets\.\w+"),
    ("weights of another architecture", lambda t, m: partial(load_model, _foreign_checkpoint(t)),
     CheckpointError, r"^weights .*m\.pt do not match the architecture in .*m\.json \(iunet, "
                      r"base_channels=4\): \d+ of another shape \(e\.g\. [\w.]+: 8x\w+ in the "
                      r"file, 4x\w+ here\); load them with the card they were saved with"),
    ("a list instead of a state dict", lambda t, m: partial(load_model, _model_file(t, obj=[1, 2])),
     CheckpointError, r"do not match the architecture .*: the file holds list rather than a "
                      r"state dict"),
    ("empty Zhou weights", lambda t, m: partial(
        load_zhou, _cleared(ZhouModel(_TINY_ZHOU).save(t / "z.pt"))),
     CheckpointError, r"^cannot read zhou weights .*z\.pt: the file is empty \(0 bytes\)"),
    ("truncated training checkpoint", lambda t, m: partial(
        _load_checkpoint, _cut(_checkpoint(t)), TrainConfig()),
     CheckpointError, r"^cannot read checkpoint .*checkpoint\.pt: the file is truncated"),
]


def _checkpoint(tmp: Path) -> Path:
    torch.save({"model": _model().state_dict(), "iteration": 3}, tmp / "checkpoint.pt")
    return tmp / "checkpoint.pt"


def _cleared(path: Path) -> Path:
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize("name, build, error, match", MODEL_CASES,
                         ids=[c[0] for c in MODEL_CASES])
def test_a_bad_model_file_is_one_line_in_our_words(name, build, error, match, tmp_path,
                                                    monkeypatch):
    exc = _check(lambda: build(tmp_path, monkeypatch), tmp_path, error, match)
    assert "weights_only" not in str(exc) and "torch.load" not in str(exc), str(exc)


def test_cli_predict_with_an_empty_model_file_is_one_line(cli_files, tmp_path):
    cli_files["model"].write_bytes(b"")
    line = _run_cli(["predict", cli_files["ct"], "--model", cli_files["model"], "--box", 0, 0, 0,
                     6, 10, 12, "--out", tmp_path / "pred.nii.gz"], tmp_path,
                    r"cannot read weights .*model\.pt: the file is empty \(0 bytes\)")
    assert "weights_only" not in line


# ----------------------------------------------------------------------------- stroke caps
@pytest.mark.parametrize("name, kwargs, match", [
    ("10^6-point stroke", dict(stroke=np.zeros((10**6, 2)).tolist(), view="axial", slice_index=3),
     r"^a stroke of 1,000,000 points is more than the 10,000 allowed; draw it as several "
     r"strokes, or thin its points$"),
    ("10,001-point stroke as an array", dict(stroke=np.zeros((10_001, 2)), view="axial",
                                             slice_index=3),
     r"^a stroke of 10,001 points is more than the 10,000 allowed"),
    ("1,000,001 exact points", dict(points=np.zeros((1_000_001, 3), np.int64)),
     r"^1,000,001 points in one scribble is more than the 1,000,000 allowed; split them"),
    ("a brush sweeping the slice 10,000 times", dict(
        stroke=np.tile([[1.0, 1.0], [8.0, 10.0]], (5000, 1)), view="axial", slice_index=3,
        radius_vox=1e6),
     r"^this stroke's brush would pass over 1\.2e\+06 voxels, more than the 1e\+05 allowed; "
     r"use a smaller brush or fewer points$"),
])
def test_an_oversized_scribble_is_refused_at_once(name, kwargs, match, tmp_path, monkeypatch):
    if "radius_vox" in kwargs:   # the sweep cap at the scale of the test image's 120-voxel slice
        monkeypatch.setattr("iunet_nb.interactive.strokes.MAX_BRUSH_SWEEP_VOXELS", 100_000)
    s = _session(folder=tmp_path / "s")
    s.add_scribble("fg", [(4, 4)], view="axial", slice_index=3)
    before = (s.scribbles.array.copy(), s.history, _files(tmp_path / "s"))
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=match) as info:
        s.add_scribble("fg", **kwargs)
    assert time.perf_counter() - t0 < 1.0
    assert "\n" not in str(info.value)
    np.testing.assert_array_equal(s.scribbles.array, before[0])
    assert s.history == before[1] and _files(tmp_path / "s") == before[2]
    s.close()


def test_a_long_hand_drawn_stroke_is_still_accepted(tmp_path):
    s = _session()
    row = np.linspace(0.5, 8.5, 10_000)   # the cap itself, 20 mm brush: accepted
    stroke = np.stack([row, row], axis=1)
    s.add_scribble("bg", stroke, view="axial", slice_index=2, radius_mm=20)
    assert np.count_nonzero(s.scribbles.array[2] == 2) == 10 * 12


def test_the_brush_sweep_cap_on_a_512_slice():
    shape, spacing = (40, 512, 512), (2.5, 0.5, 0.5)
    walk = np.clip(np.cumsum(np.random.default_rng(0).normal(0, 2, (2000, 2)), axis=0) + 256,
                   0, 511)
    check_scribble_size(shape, spacing, walk, view="axial", slice_index=5, radius_mm=20)
    with pytest.raises(InputError, match=r"would pass over 5\.2e\+08 voxels"):  # 2000 x 512^2
        check_scribble_size(shape, spacing, walk, view="axial", slice_index=5, radius_mm=1000)


# ----------------------------------------------------------------------------- the tables
@pytest.mark.parametrize("name, build, error, match", CASES, ids=[c[0] for c in CASES])
def test_bad_condition(name, build, error, match, tmp_path, monkeypatch):
    _check(lambda: build(tmp_path, monkeypatch), tmp_path, error, match)


@pytest.mark.parametrize("name, build, error, match", FULL_DISK_CASES,
                         ids=[c[0] for c in FULL_DISK_CASES])
def test_full_disk(name, build, error, match, small_fs):
    _check(lambda: build(small_fs), small_fs, error, match)


@pytest.mark.parametrize("name, build, error, match", FULL_DISK_M_CASES,
                         ids=[c[0] for c in FULL_DISK_M_CASES])
def test_full_disk_patched(name, build, error, match, small_fs, monkeypatch):
    _check(lambda: build(small_fs, monkeypatch), small_fs, error, match)
