"""``train-system`` / ``predict-system`` / ``detect-box`` through an argparse parser."""

from __future__ import annotations

import argparse
import importlib
import json

import numpy as np
import pytest
import torch
from conftest import make_ellipsoid

from iunet_nb.errors import ConfigError
from iunet_nb.io.images import read_label_map, read_mask, write_image, write_mask
from iunet_nb.io.volume import Geometry, Volume
from iunet_nb.systems import add_cli, zhou
from iunet_nb.systems.kloenne import KloenneConfig, KloenneModel
from iunet_nb.systems.roth import SEED_ORGANS, RothConfig, RothModel




def _run(argv):
    p = argparse.ArgumentParser(prog="iunet-nb")
    add_cli(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.func(args)


@pytest.fixture
def ct_files(tmp_path):
    g = Geometry(spacing_mm=(2.5, 0.8, 0.7), origin_mm=(-10.0, 20.0, 5.0))
    mask = make_ellipsoid((16, 24, 24), radii=(4, 6, 7))
    ct = Volume(np.where(mask > 0, 150.0, -80.0).astype(np.float32), g)
    write_image(ct, tmp_path / "ct.nii.gz")
    write_mask(Volume(mask, g), tmp_path / "ref.nii.gz")
    return tmp_path / "ct.nii.gz", tmp_path / "ref.nii.gz", mask


class _Thresh(torch.nn.Module):
    min_size = 1

    def forward(self, x):
        return torch.where(x > 0, 50.0, -50.0)


def test_predict_zhou_writes_a_mask_in_the_ct_geometry(tmp_path, ct_files, capsys):
    ct_path, ref_path, mask = ct_files
    model = zhou.ZhouModel(zhou.ZhouConfig(base_channels=2, depth=3))
    model.save(tmp_path / "zhou.pt")
    assert _run(["predict-system", "zhou", str(ct_path), "--model", str(tmp_path / "zhou.pt"),
                 "--out", str(tmp_path / "m.nii.gz"), "--reference", str(ref_path)]) == 0
    out = capsys.readouterr().out
    assert "fine iteration" in out and "mask written" in out
    written = read_mask(tmp_path / "m.nii.gz")
    assert written.shape == mask.shape and written.geometry.is_close(
        Geometry(spacing_mm=(2.5, 0.8, 0.7), origin_mm=(-10.0, 20.0, 5.0)))


def test_detect_box_prints_a_box(tmp_path, ct_files, capsys, monkeypatch):
    ct_path, _, mask = ct_files
    model = zhou.ZhouModel(zhou.ZhouConfig(base_channels=2, depth=3))
    model.save(tmp_path / "zhou.pt")

    def fake_load(path, device=None):
        m = zhou.ZhouModel(zhou.ZhouConfig(base_channels=2, depth=3))
        for v in zhou.VIEWS:
            m.coarse[v] = _Thresh()
        return m

    monkeypatch.setattr(zhou, "load_zhou", fake_load)
    assert _run(["detect-box", str(ct_path), "--model", str(tmp_path / "zhou.pt"),
                 "--threshold", "0.5", "--margin-mm", "2.5"]) == 0
    nz = np.nonzero(mask)
    lo = [int(a.min()) for a in nz]
    hi = [int(a.max()) + 1 for a in nz]
    lo = [lo[0] - 1, lo[1] - 4, lo[2] - 4]      # 2.5 mm: 1 slice, ceil(2.5/0.8)=4, ceil(2.5/0.7)=4
    hi = [hi[0] + 1, hi[1] + 4, hi[2] + 4]
    assert capsys.readouterr().out.split() == [str(v) for v in (*lo, *hi)]


def test_predict_roth_and_kloenne(tmp_path, ct_files, capsys):
    ct_path, _, _ = ct_files
    RothModel(RothConfig(base_channels=2, depth=2, patch_size=(8, 8, 8), tile_z=8,
                         downsample=(1.0, 2.0, 2.0))).save(tmp_path / "roth.pt")
    assert _run(["predict-system", "roth", str(ct_path), "--model", str(tmp_path / "roth.pt"),
                 "--out", str(tmp_path / "r.nii.gz"), "--organ", "all"]) == 0
    labels = read_label_map(tmp_path / "r.nii.gz")
    assert labels.shape == (16, 24, 24) and int(labels.array.max()) <= 9
    # a model with the seed's seven organs has no kidneys: said before predicting, no file
    RothModel(RothConfig(base_channels=2, depth=2, patch_size=(8, 8, 8), tile_z=8,
                         downsample=(1.0, 2.0, 2.0), organs=SEED_ORGANS)).save(tmp_path / "r7.pt")
    with pytest.raises(ConfigError, match="no 'left_kidney' output"):
        _run(["predict-system", "roth", str(ct_path), "--model", str(tmp_path / "r7.pt"),
              "--out", str(tmp_path / "lk.nii.gz"), "--organ", "left_kidney"])
    assert not (tmp_path / "lk.nii.gz").exists()
    KloenneModel(KloenneConfig(slice_size=16, base_channels=2, depth=2)).save(
        tmp_path / "k.pt")
    assert _run(["predict-system", "kloenne", str(ct_path), "--model", str(tmp_path / "k.pt"),
                 "--out", str(tmp_path / "k.nii.gz")]) == 0
    assert (tmp_path / "r.nii.gz").is_file() and (tmp_path / "k.nii.gz").is_file()


def test_train_system_kloenne_with_overrides(tmp_path, capsys, monkeypatch):
    g = Geometry(spacing_mm=(2.5, 0.8, 0.7))
    mask = make_ellipsoid((12, 24, 24), radii=(3, 6, 7))
    ct = Volume(np.where(mask > 0, 150.0, -80.0).astype(np.float32), g)
    train_mod = importlib.import_module("iunet_nb.model.train")  # the package re-exports train()

    monkeypatch.setattr(train_mod, "load_training_cases",
                        lambda data, **kw: ([(ct, Volume(mask, g))], "one ellipsoid"))
    cfg = json.dumps({"iterations": 2, "slice_size": 16, "base_channels": 2, "depth": 2,
                      "n_slices": 4, "batch_size": 4})
    assert _run(["train-system", "kloenne", "--data", "x", "--out", str(tmp_path / "run"),
                 "--config", cfg]) == 0
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert card["config"]["iterations"] == 2 and card["data"] == "one ellipsoid"
    assert "trained kloenne (reduced scale)" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="JSON object"):
        _run(["train-system", "kloenne", "--data", "x", "--out", str(tmp_path / "r2"),
              "--config", "[1, 2]"])


def test_predict_system_without_model_uses_the_shipped_one(tmp_path, ct_files, capsys,
                                                           monkeypatch):
    """zhou: the bundled coarse-to-fine system; roth: the bundled multi-organ model; kloenne:
    the bundled liver model."""
    from iunet_nb.errors import CheckpointError
    from iunet_nb.systems import kloenne, roth

    ct_path, _, _ = ct_files
    assert _run(["predict-system", "zhou", str(ct_path), "--out", str(tmp_path / "z.nii.gz")]) == 0
    assert read_mask(tmp_path / "z.nii.gz").shape == (16, 24, 24)
    assert _run(["predict-system", "kloenne", str(ct_path),
                 "--out", str(tmp_path / "k.nii.gz")]) == 0
    assert read_mask(tmp_path / "k.nii.gz").shape == (16, 24, 24)
    with monkeypatch.context() as mp:
        mp.setattr(kloenne, "bundled_kloenne_path", lambda: tmp_path / "missing.pt")
        with pytest.raises(CheckpointError, match="bundled Kloenne liver model .* is missing"):
            _run(["predict-system", "kloenne", str(ct_path), "--out", str(tmp_path / "k.nii.gz")])
        KloenneModel(KloenneConfig.reduced(slice_size=16, base_channels=2, depth=2)).save(
            tmp_path / "k_other.pt")
        mp.setattr(kloenne, "bundled_kloenne_path", lambda: tmp_path / "k_other.pt")
        with pytest.raises(CheckpointError, match="not the shipped Kloenne liver model"):
            _run(["predict-system", "kloenne", str(ct_path), "--out", str(tmp_path / "k.nii.gz")])
    assert _run(["predict-system", "roth", str(ct_path), "--organ", "liver",
                 "--out", str(tmp_path / "liver.nii.gz")]) == 0
    assert read_mask(tmp_path / "liver.nii.gz").shape == (16, 24, 24)
    monkeypatch.setattr(roth, "bundled_roth_path", lambda: tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="bundled Roth model .* is missing"):
        _run(["predict-system", "roth", str(ct_path), "--out", str(tmp_path / "r.nii.gz")])
    small = RothModel(RothConfig(base_channels=2, depth=2, patch_size=(8, 8, 8), tile_z=8,
                                 downsample=(1.0, 2.0, 2.0)))
    small.save(tmp_path / "other.pt")
    monkeypatch.setattr(roth, "bundled_roth_path", lambda: tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not the shipped Roth model"):
        _run(["predict-system", "roth", str(ct_path), "--out", str(tmp_path / "r.nii.gz")])
