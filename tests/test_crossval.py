"""Tests of Experiment 1: cross-validation folds, merge, statistics, report, CLI, validation."""

from __future__ import annotations

import argparse
import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_ellipsoid

from iunet_nb.errors import ConfigError, InputError
from iunet_nb.io.images import read_image, read_mask, write_image, write_mask
from iunet_nb.io.volume import Geometry, Volume
from iunet_nb.model.checkpoint import load_model
from iunet_nb.model.predict import make_box, segment
from iunet_nb.studies.crossval import (
    CVConfig,
    add_cli,
    case_ids,
    merge_folds,
    run_cv,
    run_fold,
    select_folds,
    validate_cv_parameters,
    validate_train_parameters,
)
from iunet_nb.studies.cv_report import cv_tables, paired_wilcoxon, write_cv_report

TINY = {"iterations": 2, "batch_size": 2, "base_channels": 4, "size_zyx": (8, 16, 16)}




def _paired_dataset(root, n, seed=0, prefix="case"):
    """``n`` tiny CT-like ellipsoid cases in the paired layout (images/, labels/)."""
    rng = np.random.default_rng(seed)
    geom = Geometry(spacing_mm=(2.5, 1.2, 1.2), origin_mm=(-20.0, 10.0, 300.0))
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        center = (6 + rng.integers(-1, 2), 12 + rng.integers(-2, 3), 12 + rng.integers(-2, 3))
        mask = make_ellipsoid((12, 24, 24), center=center, radii=(3, 5 + i % 2, 6))
        ct = np.where(mask > 0, 60.0, -40.0).astype(np.float32)
        ct += rng.normal(0, 8, ct.shape).astype(np.float32)
        write_image(Volume(ct, geom), root / "images" / f"{prefix}{i}.nii.gz")
        write_mask(Volume(mask, geom), root / "labels" / f"{prefix}{i}.nii.gz")
    return root


@pytest.fixture
def dataset(tmp_path):
    return _paired_dataset(tmp_path / "data", 4)


def _cfg(data, **kw) -> CVConfig:
    args = {"k": 2, "architectures": ("iunet", "dilated_fcn"), **TINY, **kw}
    return validate_cv_parameters(str(data), "pancreas", args.pop("k"), **args)


# ----------------------------------------------------------------------------- one fold
def test_run_fold_scores_each_test_case_with_each_architecture(dataset, tmp_path):
    cfg = _cfg(dataset)
    out = tmp_path / "cv"
    table = run_fold(cfg, 0, out, progress=False)
    folds = json.loads((out / "folds.json").read_text())
    test_ids = folds["folds"][0]["test"]
    assert folds["k"] == 2 and folds["seed"] == cfg.seed
    assert len(table) == 2 * len(test_ids)
    assert sorted(set(table["case_id"])) == sorted(test_ids)
    assert set(table["architecture"]) == {"iunet", "dilated_fcn"}
    assert table["dice"].between(0, 1).all() and (table["train_s"] > 0).all()
    # the CSV value is the DSC of the saved model's segmentation inside the reference box
    model, card = load_model(out / "fold_0" / "iunet" / "model.pt")
    assert card.net.arch == "iunet" and card.iterations == 2 and "fold 0 of 2" in card.data
    cid = test_ids[0]
    ct = read_image(dataset / "images" / f"{cid}.nii.gz")
    ref = read_mask(dataset / "labels" / f"{cid}.nii.gz")
    pred = segment(ct, model, make_box(ct, reference=ref), card.preprocess, device="cpu").array
    p, r = pred > 0, ref.array > 0
    expected = 2 * np.count_nonzero(p & r) / (p.sum() + r.sum())
    row = table[(table["architecture"] == "iunet") & (table["case_id"] == cid)].iloc[0]
    assert row["dice"] == pytest.approx(expected, abs=1e-9)
    # a finished fold is read back, not retrained
    mtime = (out / "fold_0" / "iunet" / "model.pt").stat().st_mtime_ns
    again = run_fold(cfg, 0, out, progress=False)
    assert (out / "fold_0" / "iunet" / "model.pt").stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(again, pd.read_csv(out / "fold_0.csv", dtype={"case_id": str}))
    # a job preempted after training (no fold CSV) resumes from the checkpoints: same weights
    (out / "fold_0.csv").unlink()
    ckpt_mtime = (out / "fold_0" / "iunet" / "checkpoint.pt").stat().st_mtime_ns
    resumed = run_fold(cfg, 0, out, progress=False)
    # nothing left to train: the checkpoint of the finished run is not rewritten
    assert (out / "fold_0" / "iunet" / "checkpoint.pt").stat().st_mtime_ns == ckpt_mtime
    model_again, _ = load_model(out / "fold_0" / "iunet" / "model.pt")
    for a, b in zip(model.state_dict().values(), model_again.state_dict().values()):
        assert torch.equal(a, b)
    assert len((out / "fold_0" / "iunet" / "loss.jsonl").read_text().splitlines()) == 2
    np.testing.assert_allclose(resumed["dice"], again["dice"])


def test_fold_jobs_must_share_the_config(dataset, tmp_path):
    out = tmp_path / "cv"
    _cfg(dataset).to_json((out.mkdir(), out / "cv_config.json")[1])
    other = _cfg(dataset, seed=5)
    with pytest.raises(ConfigError, match=r"belongs to another cross-validation.*seed"):
        run_fold(other, 0, out, progress=False)
    with pytest.raises(ConfigError, match="fold must be an integer from 0 to 1"):
        run_fold(_cfg(dataset), 2, out, progress=False)


def test_merge_names_the_missing_folds(dataset, tmp_path):
    with pytest.raises(InputError, match="no cv_config.json"):
        merge_folds(tmp_path)
    out = tmp_path / "cv"
    run_fold(_cfg(dataset, architectures=("dilated_fcn",), baseline="dilated_fcn"), 1, out,
             progress=False)
    with pytest.raises(InputError, match=r"fold\(s\) \[0\] of 2 .* --fold 0"):
        merge_folds(out)


def test_run_cv_every_case_once_and_report(dataset, tmp_path):
    out = tmp_path / "cv"
    tables = run_cv(_cfg(dataset), out, progress=False)
    results = pd.read_csv(out / "results.csv", dtype={"case_id": str})
    assert len(results) == 8  # 4 cases x 2 architectures, each case tested once
    assert sorted(results.groupby("architecture")["case_id"].apply(sorted).iloc[0]) == \
        [f"case{i}" for i in range(4)]
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    for arch in ("iunet", "dilated_fcn"):
        v = results.loc[results["architecture"] == arch, "dice"].to_numpy()
        assert summary.loc[arch, "mean"] == pytest.approx(v.mean())
        assert summary.loc[arch, "sd"] == pytest.approx(v.std(ddof=1))
    wil = pd.read_csv(out / "wilcoxon.csv")
    assert len(wil) == 1 and wil.loc[0, "n_pairs"] == 4
    saved = json.loads((out / "results.json").read_text())
    assert saved["baseline"] == "iunet" and len(saved["dsc_per_case"]) == 4
    md = (out / "table1.md").read_text()
    assert "| iUnet |" in md and "78.1 ± 8.7" in md  # the paper's value for reference
    assert (out / "dsc_plot.png").read_bytes()[:4] == b"\x89PNG"
    assert list(tables.table1["architecture"]) == ["iunet", "dilated_fcn"]


def test_train_on_one_source_test_on_another(dataset, tmp_path):
    real = _paired_dataset(tmp_path / "real", 2, seed=9, prefix="real")
    cfg = _cfg(dataset, test_data=str(real), architectures=("dilated_fcn",),
               baseline="dilated_fcn")
    out = tmp_path / "cv"
    for fold in range(2):
        run_fold(cfg, fold, out, progress=False)
    merged = merge_folds(out)
    assert sorted(merged["case_id"]) == ["real0", "real1"]  # each real case tested once
    test_folds = json.loads((out / "test_folds.json").read_text())["folds"]
    assert [f["test"] for f in test_folds] == [[c] for c in merged.sort_values("fold")["case_id"]]
    card = json.loads((out / "fold_0" / "dilated_fcn" / "model.json").read_text())
    assert "2 training cases" in card["data"] and str(dataset) in card["data"]


def test_cli_one_command_per_fold_then_merge(dataset, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    out = tmp_path / "cv"
    common = ["cv", "--out", str(out), "--data", str(dataset), "--k", "2", "--arch",
              "dilated_fcn", "--baseline", "dilated_fcn", "--iterations", "1", "--batch", "1",
              "--base-channels", "2", "--size", "8", "16", "16"]
    for fold in ("1", "0"):  # any order, as a scheduler would
        args = parser.parse_args(common + ["--fold", fold])
        assert args.func(args) == 0
    args = parser.parse_args(["cv", "--out", str(out), "--merge"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "fold 1: mean DSC dilated_fcn" in printed and "| iFCN (dilated FCN) | 4 |" in printed
    assert len(pd.read_csv(out / "results.csv")) == 4


# ----------------------------------------------------------------------------- statistics
def _exact_signed_rank_p(d):
    """Two-sided p of the signed-rank statistic by enumerating every sign pattern."""
    d = np.asarray(d, float)
    d = d[d != 0]
    ranks = pd.Series(np.abs(d)).rank().to_numpy()  # average ranks for ties
    observed = ranks[d > 0].sum()
    stats = np.array([sum(r for r, s in zip(ranks, signs) if s)
                      for signs in itertools.product([0, 1], repeat=len(d))])
    return min(1.0, 2 * min(np.mean(stats >= observed - 1e-9), np.mean(stats <= observed + 1e-9)))


def test_paired_wilcoxon_exact_ties_zeros_and_too_few():
    x = [0.80, 0.70, 0.90, 0.85, 0.75, 0.95]
    y = [a - e for a, e in zip(x, [0.01, 0.02, 0.03, 0.04, 0.05, 0.06])]
    w = paired_wilcoxon(x, y)
    assert w["method"] == "exact" and w["n_used"] == 6
    assert w["p_value"] == pytest.approx(2 / 64) and w["note"] == ""
    # ties and a zero: the zero is dropped, the p-value is the exhaustive permutation one
    d = [1.0, 1.0, 2.0, 0.0, -1.0, 3.0, -0.5]
    w = paired_wilcoxon(d, [0.0] * len(d))
    assert w["n_pairs"] == 7 and w["n_used"] == 6 and w["method"].startswith("permutation")
    assert w["p_value"] == pytest.approx(_exact_signed_rank_p(d))
    assert "1 zero difference(s) dropped" in w["note"] and "ties" in w["note"]
    w = paired_wilcoxon([1, 2, 3], [0, 0, 0])
    assert w["min_p"] == 0.25 and "cannot reach p < 0.05" in w["note"]
    w = paired_wilcoxon([1, 2], [1, 2])
    assert math.isnan(w["p_value"]) and "undefined" in w["note"]
    w = paired_wilcoxon([1, np.nan, 3, 4, 5, 6, 8], [0, 1, 1, 1, 1, 1, 1])
    assert w["n_pairs"] == 6
    with pytest.raises(InputError, match="same length"):
        paired_wilcoxon([1, 2], [1])


def test_cv_tables_golden_numbers(tmp_path):
    iunet = [0.80, 0.70, 0.90, 0.85, 0.75, 0.95]
    cicek = [a - e for a, e in zip(iunet, [0.01, 0.02, 0.03, 0.04, 0.05, 0.06])]
    rows = [{"architecture": arch, "case_id": f"c{i}", "fold": i % 2, "dice": v}
            for arch, vals in (("cicek", cicek), ("iunet", iunet)) for i, v in enumerate(vals)]
    t = cv_tables(pd.DataFrame(rows))
    # mean 0.825; squared deviations sum to 0.04375 -> sd = sqrt(0.04375 / 5) = 0.09354
    assert t.summary.loc["iunet", "mean"] == pytest.approx(0.825)
    assert t.summary.loc["iunet", "sd"] == pytest.approx(math.sqrt(0.04375 / 5))
    row = t.table1.set_index("architecture").loc["iunet"]
    assert row["DSC (%)"] == "82.5 ± 9.4" and row["p vs iUnet"] == "n/a"
    cic = t.table1.set_index("architecture").loc["cicek"]
    assert cic["p_value"] == pytest.approx(2 / 64) and cic["p vs iUnet"] == "0.031"
    assert cic["paper D1 DSC (%)"] == "75.3 ± 8.1"
    assert list(t.dsc.columns) == ["iunet", "cicek"]
    files = write_cv_report(t, tmp_path)
    assert json.loads(files["json"].read_text())["table1"][1]["p_value"] == pytest.approx(2 / 64)
    with pytest.raises(InputError, match="baseline 'dilated_fcn'"):
        cv_tables(pd.DataFrame(rows), baseline="dilated_fcn")
    with pytest.raises(InputError, match="needs rows"):
        cv_tables(pd.DataFrame())


# ----------------------------------------------------------------------------- validation
def _btcv_folder(root):
    root.mkdir()
    lab = np.zeros((8, 16, 16), np.uint8)
    lab[2:6, 4:12, 4:12] = 11
    for i in (1, 2):
        write_mask(Volume(lab, Geometry()), root / f"000{i}.nii.gz")
    return root


@pytest.mark.parametrize("kwargs, error, match", [
    ({"data": "phantom:3", "k": 5}, ConfigError, r"k = 5 folds but only 3 case"),
    ({"data": "phantom:3", "k": "5"}, ConfigError, "k must be an integer >= 2"),
    ({"data": "phantom:3", "k": 2, "architectures": ["iunte"]}, ConfigError,
     "did you mean 'iunet'"),
    ({"data": "phantom:3", "k": 2, "structure": "liver"}, ConfigError, "only have a pancreas"),
    ({"data": "/no/such/folder", "k": 2}, InputError, "does not exist"),
    ({"data": "phantom:3", "k": 2, "size_zyx": (12, 16, 16)}, ConfigError,
     "multiple of 8"),
    ({"data": "phantom:3", "k": 2, "iterations": 0}, ConfigError, "positive integer"),
    ({"data": "phantm:3", "k": 2}, ConfigError, "did you mean 'phantom'"),
])
def test_validate_cv_parameters_stops_with_a_clear_message(kwargs, error, match):
    kwargs = dict(kwargs)
    args = (kwargs.pop("data"), kwargs.pop("structure", "pancreas"), kwargs.pop("k"))
    with pytest.raises(error, match=match):
        validate_cv_parameters(*args, **kwargs)


def test_structure_typo_in_a_labelled_source_suggests_the_name(tmp_path):
    root = _btcv_folder(tmp_path / "btcv")
    assert case_ids(f"btcv-synth:{root}", "pancreas") == ["0001", "0002"]
    with pytest.raises(InputError, match="did you mean 'pancreas'"):
        validate_cv_parameters(f"btcv-synth:{root}", "pancraes", 2)


def test_cv_config_json_round_trip():
    cfg = validate_cv_parameters("phantom:4", "pancreas", 2, **TINY)
    again = CVConfig.from_json(cfg.to_json())
    assert again == cfg and again.train_config("cicek").net.arch == "cicek"
    assert again.train_config("cicek").net.base_channels == 4


def test_validate_train_parameters(dataset):
    cfg = validate_train_parameters(str(dataset), "pancreas", "cicek", 3, 2, 7, base_channels=4,
                                    size_zyx=[8, 16, 16])
    assert (cfg.net.arch, cfg.iterations, cfg.batch_size, cfg.seed) == ("cicek", 3, 2, 7)
    assert cfg.preprocess.size_zyx == (8, 16, 16) and cfg.checkpoint_every == 3
    with pytest.raises(ConfigError, match="did you mean 'dilated_fcn'"):
        validate_train_parameters(str(dataset), arch="dilated-fcn")
    with pytest.raises(ConfigError, match="multiple of 8"):
        validate_train_parameters(str(dataset), arch="iunet", size_zyx=(8, 20, 16))
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        validate_train_parameters(str(dataset), batch_size=2.5)
    with pytest.raises(ConfigError, match="lr must be"):
        validate_train_parameters(str(dataset), lr="fast")


def test_select_folds():
    assert select_folds(None, 3) == [0, 1, 2]
    assert select_folds(2, 3) == [2]
    assert select_folds([2, 0, 2], 3) == [0, 2]
    assert select_folds([], 3) == []
    with pytest.raises(ConfigError, match="from 0 to 2"):
        select_folds([3], 3)
    with pytest.raises(ConfigError, match="from 0 to 2"):
        select_folds("0", 3)
