"""An uncertain automatic box is said, never shown silently: Session, CLI, annotator."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from iunet_nb.cli import main
from iunet_nb.interactive.session import RefineConfig, Session
from iunet_nb.io.images import read_mask, write_image
from iunet_nb.model import checkpoint
from iunet_nb.model.preprocess import Box


@pytest.fixture
def unsure_detector(monkeypatch, ellipsoid_case):
    """The bundled detector replaced by one that finds the organ at probability 0.6 (< 0.9)."""
    _ct, ref = ellipsoid_case
    prob = ref.array.astype(np.float32) * np.float32(0.6)
    monkeypatch.setattr(checkpoint, "load_bundled_detector", lambda: (lambda v: prob))
    return Box.from_mask(ref.array)


def test_session_predict_without_a_box_logs_and_records_an_uncertain_box(
        ellipsoid_case, model, card, unsure_detector, caplog):
    ct, _ref = ellipsoid_case
    cfg = RefineConfig(device="cpu", iterations=2, box_fallback="detector")
    with Session(ct, model, card, config=cfg) as s, caplog.at_level(logging.WARNING):
        s.predict()
        check = s.box_check
        assert check is not None and check.unsure and check.detected == unsure_detector
        assert "highest probability is 0.60 (< 0.9)" in check.summary()
        assert "automatic box is probably wrong" in caplog.text
        assert "highest probability is 0.60" in caplog.text
        details = s.events[-1]["details"]
        assert s.events[-1]["event"] == "predict" and details["auto_box"]["unsure"] is True
        assert details["auto_box"]["reasons"] == list(check.reasons)
        assert details["auto_box"]["peak_probability"] == pytest.approx(0.6)
        s.predict(unsure_detector)            # a given box: nothing automatic to doubt
        assert s.box_check is None and "auto_box" not in s.events[-1]["details"]


def test_cli_auto_box_warns_in_one_line_and_still_writes_the_mask(
        ellipsoid_case, unsure_detector, tmp_path, capsys):
    ct, _ref = ellipsoid_case
    path = write_image(ct, tmp_path / "ct.nii.gz")
    out = tmp_path / "pred.nii.gz"
    assert main(["predict", str(path), "--auto-box", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1
    assert "automatic box is probably wrong" in lines[0] and "--box" in lines[0]
    assert "highest probability is 0.60" in lines[0]
    assert read_mask(out).shape == ct.shape


def test_annotator_status_asks_for_a_box_when_the_automatic_one_is_uncertain(
        ellipsoid_case, model, card, unsure_detector):
    from iunet_nb.widgets.annotator import Annotator

    ct, _ref = ellipsoid_case
    cfg = RefineConfig(device="cpu", iterations=2, box_fallback="detector")
    app = Annotator(ct, model=(model, card), config=cfg, view3d="none", view_size_px=300)
    app.segment()
    assert "box uncertain: draw a box" in app.status.value
    assert "automatic box is probably wrong" in app.message.value
    assert any("highest probability is 0.60" in m for m in app.messages)
    app.handle_box(view="axial", slice_index=12, rows=(5, 25), cols=(5, 25))
    assert "box uncertain" not in app.status.value
    app.handle_box(view="coronal", slice_index=16, rows=(4, 20), cols=(5, 25))
    app.segment()                               # the drawn box: no doubt left
    assert "box uncertain" not in app.status.value and app.session.box_check is None
