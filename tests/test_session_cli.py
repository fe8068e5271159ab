"""``iunet-nb session info|export|refine|undo|redo`` on an autosaved session folder."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from iunet_nb import cli
from iunet_nb.errors import InputError, SessionError
from iunet_nb.interactive.session import RefineConfig, Session
from iunet_nb.interactive.session_cli import _cmd_session, saved_mask, session_info
from iunet_nb.io.images import read_image, read_mask, write_image, write_mask
from iunet_nb.model.checkpoint import save_model
from iunet_nb.model.evaluate import dice
from iunet_nb.model.predict import make_box


@pytest.fixture
def saved_session(ellipsoid_case, model, card, tmp_path):
    """A session folder after predict + one foreground scribble, with CT/model/reference files."""
    write_image(ellipsoid_case[0], tmp_path / "ct.nii.gz")
    write_mask(ellipsoid_case[1], tmp_path / "ref.nii.gz")
    # as a user would: the session is made on the CT as read from its file
    ct, ref = read_image(tmp_path / "ct.nii.gz"), read_mask(tmp_path / "ref.nii.gz")
    save_model(model, card, tmp_path / "model.pt")
    folder = tmp_path / "session"
    cfg = RefineConfig(device="cpu", iterations=2, box_fallback="error")
    with Session(ct, model, card, make_box(ct, reference=ref), config=cfg, folder=folder,
                 case_id="c01", reader_id="r1") as s:
        s.predict()
        s.add_scribble("fg", points=np.argwhere(ref.array > 0)[:40])
        mask = s.mask.array.copy()
    return tmp_path, folder, mask, ref


def _run(*argv: str) -> int:
    return cli.main(["session", *argv])


def test_info_reads_the_folder_without_the_ct(saved_session, capsys):
    tmp, folder, mask, ref = saved_session
    info = session_info(folder, reference=read_mask(tmp / "ref.nii.gz"))
    assert info["case_id"] == "c01" and info["reader_id"] == "r1"
    assert info["ct_shape"] == mask.shape
    assert info["predicted"] and info["refine_round"] == 0
    assert info["n_scribbles"] == 1 and info["pending_scribbles"] == 1
    assert info["mask_voxels"] == int(mask.sum())
    assert info["dsc"] == pytest.approx(dice(mask, ref.array))
    assert info["event_counts"]["predict"] == 1 and info["event_counts"]["scribble"] == 1
    assert _run("info", str(folder), "--reference", str(tmp / "ref.nii.gz")) == 0
    out = capsys.readouterr().out
    assert "c01" in out and f"{info['dsc']:.4f}" in out and f"{int(mask.sum())} voxels" in out


def test_export_writes_the_saved_mask_in_the_ct_geometry(saved_session):
    tmp, folder, mask, ref = saved_session
    assert _run("export", str(folder), str(tmp / "out.nrrd")) == 0
    out = read_mask(tmp / "out.nrrd")
    np.testing.assert_array_equal(out.array, mask)
    assert out.geometry.direction == pytest.approx(ref.geometry.direction)
    assert out.geometry.origin_mm == pytest.approx(ref.geometry.origin_mm)


def test_a_damaged_mask_file_is_reported_never_exported(saved_session):
    tmp, folder, mask, _ = saved_session
    manifest = json.loads((folder / "state.json").read_text())
    (folder / manifest["files"]["mask"]["name"]).write_bytes(b"not a mask")
    with pytest.raises(SessionError, match="does not match the session manifest"):
        saved_mask(folder)
    assert _run("export", str(folder), str(tmp / "out.nii.gz")) != 0
    assert not (tmp / "out.nii.gz").exists()
    with pytest.raises(SessionError, match="does not match"):
        session_info(folder)


def test_refine_then_undo_then_redo_from_the_shell(saved_session):
    tmp, folder, mask, _ = saved_session
    common = ["--ct", str(tmp / "ct.nii.gz"), "--model", str(tmp / "model.pt")]
    assert _run("refine", str(folder), *common) == 0
    info = session_info(folder)
    assert info["refine_round"] == 1 and info["pending_scribbles"] == 0
    refined = saved_mask(folder).array
    assert _run("undo", str(folder), *common) == 0
    np.testing.assert_array_equal(saved_mask(folder).array, mask)
    assert session_info(folder)["redo_depth"] == 1
    assert _run("redo", str(folder), *common) == 0
    np.testing.assert_array_equal(saved_mask(folder).array, refined)


def test_clear_errors(saved_session, tmp_path_factory, model, card):
    tmp, folder, _, _ = saved_session
    with pytest.raises(InputError, match="needs the session's CT"):
        _cmd_session(argparse.Namespace(action="refine", folder=str(folder), ct=None,
                                        model=None, reference=None, previous=False,
                                        device=None, steps=1, out=None))
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(SessionError, match="holds no saved session"):
        session_info(empty)
    (empty / "state.json").write_text("{\"format\": ")
    with pytest.raises(SessionError, match="corrupt or truncated"):
        session_info(empty)
    # another CT than the session's: Session.load refuses, the folder is untouched
    other = tmp / "other.nii.gz"
    ct = read_mask(tmp / "ref.nii.gz")
    write_image(ct.with_array(ct.array.astype(np.float32) * 100), other)
    before = (folder / "state.json").read_text()
    assert _run("refine", str(folder), "--ct", str(other), "--model", str(tmp / "model.pt")) != 0
    assert (folder / "state.json").read_text() == before
