"""The command line: the same engine calls, errors as messages with exit code 2."""

from __future__ import annotations

import json

import pytest

from iunet_nb.cli import main
from iunet_nb.io.images import read_mask, write_image, write_mask
from iunet_nb.model.checkpoint import ModelCard, save_model
from iunet_nb.model.nets import NetConfig, build_network
from iunet_nb.model.preprocess import PreprocessConfig


@pytest.fixture
def files(tmp_path, ellipsoid_case):
    ct, ref = ellipsoid_case
    net = NetConfig(base_channels=4)
    model_path = save_model(build_network(net), ModelCard(
        net=net, preprocess=PreprocessConfig(size_zyx=(8, 16, 16))), tmp_path / "model.pt")
    return {"ct": write_image(ct, tmp_path / "ct.nrrd"), "ref": write_mask(ref, tmp_path / "ref.nii.gz"),
            "model": model_path, "tmp": tmp_path, "geometry": ct.geometry}


def test_predict_writes_a_mask_in_the_ct_geometry(files, capsys):
    out = files["tmp"] / "pred.mha"
    png = files["tmp"] / "overview.png"
    rc = main(["predict", str(files["ct"]), "--model", str(files["model"]), "--box-from",
               str(files["ref"]), "--out", str(out), "--png", str(png), "--reference",
               str(files["ref"])])
    assert rc == 0
    mask = read_mask(out)
    assert mask.geometry.is_close(files["geometry"]) and mask.shape == (24, 32, 32)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    metrics = json.loads(printed[printed.index("{"):])
    assert 0.0 <= metrics["dice"] <= 1.0


def test_predict_edge_weight_zero_is_the_plain_threshold_and_bad_weights_are_refused(
        files, capsys):
    from iunet_nb.io.images import read_image
    from iunet_nb.model.checkpoint import load_model
    from iunet_nb.model.predict import make_box, predict_probabilities

    out = files["tmp"] / "plain.nii.gz"
    args = ["predict", str(files["ct"]), "--model", str(files["model"]), "--box-from",
            str(files["ref"])]
    assert main(args + ["--out", str(out), "--edge-weight", "0"]) == 0
    ct = read_image(files["ct"])
    model, card = load_model(files["model"])
    prob = predict_probabilities(model, ct, make_box(ct, reference=read_mask(files["ref"])),
                                 card.preprocess, "cpu")
    assert (read_mask(out).array == (prob >= 0.5)).all()
    capsys.readouterr()
    bad = files["tmp"] / "bad.nii.gz"
    assert main(args + ["--out", str(bad), "--edge-weight", "-1"]) == 2
    assert "weight must be a finite number >= 0" in capsys.readouterr().err
    assert not bad.exists()


def test_evaluate_prints_metrics_of_identical_masks(files, capsys):
    assert main(["evaluate", str(files["ref"]), str(files["ref"])]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["dice"] == pytest.approx(1.0) and metrics["hd95_mm"] == pytest.approx(0.0)


def test_errors_become_messages_and_exit_code_2(files, capsys):
    rc = main(["predict", str(files["tmp"] / "missing.nii.gz"), "--box", "0", "0", "0", "4", "4",
               "4", "--out", str(files["tmp"] / "x.nii.gz")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "missing.nii.gz" in err
    rc = main(["predict", str(files["ct"]), "--model", str(files["model"]), "--box", "0", "0", "0",
               "99", "4", "4", "--out", str(files["tmp"] / "x.nii.gz")])
    assert rc == 2 and "box" in capsys.readouterr().err.lower()
    assert not (files["tmp"] / "x.nii.gz").exists()


def test_train_from_phantoms_then_predict(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--data", "phantom:2", "--out", str(out), "--iterations", "2", "--batch",
               "1", "--base-channels", "4", "--size", "8", "16", "16"])
    assert rc == 0
    card = json.loads((out / "model.json").read_text())
    assert card["iterations"] == 2 and "phantom" in card["data"]
    assert len((out / "loss.jsonl").read_text().splitlines()) == 2


def test_train_init_from_fine_tunes_a_model_with_its_own_network_and_grid(tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["train", "--data", "phantom:1", "--out", str(first), "--iterations", "1",
                 "--batch", "1", "--base-channels", "4", "--size", "8", "16", "16"]) == 0
    tuned = tmp_path / "tuned"
    assert main(["train", "--data", "phantom:1", "--out", str(tuned), "--iterations", "1",
                 "--batch", "1", "--init-from", str(first / "model.pt"),
                 "--precision", "bfloat16"]) == 0
    card = json.loads((tuned / "model.json").read_text())
    assert card["net"]["base_channels"] == 4 and card["preprocess"]["size_zyx"] == [8, 16, 16]
    capsys.readouterr()
    rc = main(["train", "--data", "phantom:1", "--out", str(tmp_path / "x"), "--iterations",
               "1", "--init-from", str(first / "model.pt"), "--size", "8", "32", "32"])
    assert rc == 2 and "--size" in capsys.readouterr().err
    assert not (tmp_path / "x" / "model.pt").exists()


def test_predict_auto_box_segments_the_bundled_sample_without_a_box(tmp_path, capsys):
    from iunet_nb.model.evaluate import dice
    from iunet_nb.synth.generator import load_sample

    ct, ref = load_sample()
    ct_path = write_image(ct, tmp_path / "sample.nii.gz")
    out = tmp_path / "pred.nii.gz"
    assert main(["predict", str(ct_path), "--auto-box", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "automatic box" in printed.out
    assert "probably wrong" not in printed.err   # a box that works raises no doubt
    mask = read_mask(out)
    assert mask.geometry.is_close(ct.geometry)
    # measured: 0.956 (0.931 in the detector's own box, 0.955 with the reference box)
    assert dice(mask.array, ref.array) > 0.94


def test_predict_auto_box_refuses_a_model_for_another_structure(files, capsys):
    net = NetConfig(base_channels=4)
    liver = save_model(build_network(net), ModelCard(
        net=net, preprocess=PreprocessConfig(size_zyx=(8, 16, 16)), structure="liver"),
        files["tmp"] / "liver.pt")
    out = files["tmp"] / "x.nii.gz"
    assert main(["predict", str(files["ct"]), "--model", str(liver), "--auto-box",
                 "--out", str(out)]) == 2
    assert "pancreas" in capsys.readouterr().err and not out.exists()
