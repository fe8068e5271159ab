"""The main job on the bundled default, and the shipped weights against their card."""

from __future__ import annotations

import json

import numpy as np
import pytest

from iunet_nb.cli import main
from iunet_nb.demo import run_demo
from iunet_nb.io.images import read_image, read_mask
from iunet_nb.model.checkpoint import bundled_model_path, load_bundled_model
from iunet_nb.synth.generator import load_sample


def test_bundled_assets_fit_the_size_budget():
    weights = bundled_model_path()
    assert weights.is_file(), "bundled weights missing: run scripts/train_bundled_model.py"
    assert weights.stat().st_size <= 15 * 2**20
    sample = sum(p.stat().st_size for p in weights.parent.glob("sample_*"))
    assert 0 < sample <= 5 * 2**20


def test_shipped_weights_reach_the_card_dsc_on_the_bundled_sample(tmp_path):
    _, card = load_bundled_model()
    assert card.validation_dsc is not None and card.iterations > 0 and card.machine
    result = run_demo(tmp_path)
    assert result["metrics"]["dice"] == pytest.approx(card.validation_dsc, abs=0.02)


def test_demo_writes_mask_in_the_ct_geometry_and_prints_dsc(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert f"DSC {metrics['dice']:.3f}" in printed
    ct_file, mask = read_image(tmp_path / "sample_ct.nii.gz"), read_mask(tmp_path / "sample_ct_pancreas.nii.gz")
    ct, reference = load_sample()
    assert mask.geometry.is_close(ct.geometry) and ct_file.geometry.is_close(ct.geometry)
    assert np.array_equal(ct_file.array, ct.array)
    # the mask overlaps the reference where the metrics say it does
    inter = np.logical_and(mask.array, reference.array).sum()
    assert 2 * inter / (mask.array.sum() + reference.array.sum()) == pytest.approx(metrics["dice"])
    assert (tmp_path / "overview.png").read_bytes()[:4] == b"\x89PNG"


def test_bundled_weights_with_another_hash_are_refused(tmp_path, monkeypatch):
    import shutil

    from iunet_nb.errors import CheckpointError
    from iunet_nb.model import checkpoint

    copy = tmp_path / checkpoint.BUNDLED_MODEL
    shutil.copy(bundled_model_path(), copy)
    shutil.copy(bundled_model_path().with_suffix(".json"), copy.with_suffix(".json"))
    with open(copy, "r+b") as fh:  # flip one byte in the middle
        fh.seek(copy.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(checkpoint, "bundled_model_path", lambda: copy)
    with pytest.raises(CheckpointError, match="SHA-256"):
        checkpoint.load_bundled_model()
