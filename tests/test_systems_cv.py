"""The seed papers' systems inside Experiment 1: same folds, same rows, no box, coverage."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest
from conftest import make_ellipsoid
from test_crossval import TINY, _paired_dataset

from iunet_nb.errors import ConfigError, InputError
from iunet_nb.io.images import read_image, read_mask, write_mask
from iunet_nb.io.volume import Geometry, Volume
from iunet_nb.model.evaluate import evaluate_case
from iunet_nb.studies.crossval import (
    CVConfig,
    add_cli,
    merge_folds,
    run_fold,
    validate_cv_parameters,
)
from iunet_nb.studies.cv_report import cv_tables, write_cv_report
from iunet_nb.systems.cv import (
    SYSTEMS,
    check_system,
    compute_description,
    load_trained_system,
    roth_organ,
    system_config,
    train_system,
)
from iunet_nb.systems.kloenne import KloenneConfig
from iunet_nb.systems.roth import RothConfig, load_roth, predict_roth
from iunet_nb.systems.zhou import ZhouConfig, load_zhou, predict_zhou

ZHOU_TINY = {"voxel_mm": None, "base_channels": 2, "depth": 3, "coarse_iterations": 2,
             "fine_iterations": 2, "batch_size": 2, "fine_margin_px": [1, 2],
             "test_frame_px": 2, "max_iterations": 2}
ROTH_TINY = {"voxel_mm": None, "downsample": [1.0, 2.0, 2.0], "base_channels": 2, "depth": 2,
             "patch_size": [8, 8, 8], "batch_size": 2, "iterations": 2, "bspline_spacing": 4,
             "bspline_max_disp": 1.0, "translation_vox": 2.0, "tile_z": 8}
KLOENNE_TINY = {"slice_size": 16, "base_channels": 2, "depth": 2, "msd_layers": 3,
                "n_slices": 4, "batch_size": 4, "iterations": 2, "stats_volumes": 2,
                "stats_voxels": 500}


@pytest.fixture
def dataset(tmp_path):
    return _paired_dataset(tmp_path / "data", 4)


def _btcv_folder(root, n=4):
    """``n`` tiny BTCV-style label maps: liver (6), spleen (1), pancreas (11), left kidney (3)."""
    root.mkdir(parents=True)
    shape = (16, 32, 32)
    for i in range(n):
        lab = np.zeros(shape, np.uint8)
        lab[make_ellipsoid(shape, center=(8, 12, 10), radii=(5, 8, 7 + i % 2)) > 0] = 6
        lab[make_ellipsoid(shape, center=(8, 10, 25), radii=(4, 4, 4)) > 0] = 1
        lab[make_ellipsoid(shape, center=(8, 22, 20 + i % 2), radii=(3, 3, 6)) > 0] = 11
        lab[make_ellipsoid(shape, center=(8, 26, 26), radii=(3, 3, 2)) > 0] = 3
        write_mask(Volume(lab, Geometry(spacing_mm=(2.0, 2.0, 2.0))), root / f"000{i + 1}.nii.gz")
    return root


def _cfg(data, **kw) -> CVConfig:
    args = {"k": 2, "architectures": ("dilated_fcn",), "baseline": "dilated_fcn", **TINY, **kw}
    return validate_cv_parameters(str(data), args.pop("structure", "pancreas"), args.pop("k"),
                                  **args)


# ----------------------------------------------------------------------------- one fold
def test_fold_with_zhou_writes_rows_for_the_same_test_cases_without_a_box(dataset, tmp_path):
    cfg = _cfg(dataset, systems=["zhou"], system_overrides={"zhou": ZHOU_TINY})
    out = tmp_path / "cv"
    table = run_fold(cfg, 0, out, progress=False)
    test_ids = json.loads((out / "folds.json").read_text())["folds"][0]["test"]
    assert set(table["architecture"]) == {"dilated_fcn", "zhou"}
    for method, box in (("dilated_fcn", "reference"), ("zhou", "none")):
        rows = table[table["architecture"] == method]
        assert sorted(rows["case_id"]) == sorted(test_ids)  # the same test cases
        assert set(rows["box"]) == {box} and set(rows["structure"]) == {"pancreas"}
    zrows = table[table["architecture"] == "zhou"]
    assert set(zrows["compute"]) == {"2 coarse + 2 fine steps x 3 views, batch 2"}
    assert (zrows["train_s"] > 0).all() and (zrows["predict_s"] > 0).all()
    # the row is evaluate_case of the saved model's automatic segmentation (no box)
    model = load_zhou(out / "fold_0" / "zhou" / "model.pt")
    assert model.config == ZhouConfig.reduced(seed=0, **{**ZHOU_TINY, "fine_margin_px": (1, 2)})
    card = json.loads((out / "fold_0" / "zhou" / "model.json").read_text())
    assert "fold 0 of 2" in card["data"] and "2 training cases" in card["data"]
    cid = test_ids[0]
    ct = read_image(dataset / "images" / f"{cid}.nii.gz")
    ref = read_mask(dataset / "labels" / f"{cid}.nii.gz")
    expected = evaluate_case(predict_zhou(ct, model).mask.array, ref.array, ct.spacing_mm,
                             cfg.tolerance_mm, case_id=cid)
    row = zrows[zrows["case_id"] == cid].iloc[0]
    assert row["dice"] == pytest.approx(expected["dice"], abs=1e-9)
    # a rerun of the fold (preempted after training) reloads the system, does not retrain it
    mtime = (out / "fold_0" / "zhou" / "model.pt").stat().st_mtime_ns
    (out / "fold_0.csv").unlink()
    again = run_fold(cfg, 0, out, progress=False)
    assert (out / "fold_0" / "zhou" / "model.pt").stat().st_mtime_ns == mtime
    z2 = again[again["architecture"] == "zhou"]
    np.testing.assert_allclose(z2["dice"], zrows["dice"])
    assert list(z2["train_s"]) == pytest.approx(list(zrows["train_s"]), abs=0.051)


def test_systems_only_all_folds_merge_and_tables(dataset, tmp_path):
    cfg = _cfg(dataset, architectures=[], systems=["kloenne"], baseline="kloenne",
               system_overrides={"kloenne": KLOENNE_TINY})
    out = tmp_path / "cv"
    for fold in (0, 1):
        run_fold(cfg, fold, out, progress=False)
    merged = merge_folds(out)
    assert sorted(merged["case_id"]) == [f"case{i}" for i in range(4)]
    assert set(merged["architecture"]) == {"kloenne"} and set(merged["box"]) == {"none"}
    # the ensemble's members: the reduced scale's 2D U-Net and 2D MS-D Net, seeds 0 and 1
    members = sorted(p.parent.name for p in (out / "fold_1" / "kloenne").glob("*/model.pt"))
    assert members == ["member0_unet2d", "member1_msd2d"]
    tables = cv_tables(merged, baseline="kloenne")
    comp = tables.comparison.set_index("architecture").loc["kloenne"]
    assert comp["box"] == "none" and comp["n"] == 4 and comp["structure"] == "pancreas"
    assert comp["training per fold"] == "unet2d 2 steps (batch 4) + msd2d 2 steps (batch 4)"
    assert float(comp["median (%)"]) == pytest.approx(100 * np.median(merged["dice"]), abs=0.05)
    assert comp["train s per fold"] == pytest.approx(
        merged.groupby("fold")["train_s"].first().mean(), abs=0.051)


def test_roth_trains_on_the_label_maps_and_scores_the_organ_asked_for(tmp_path):
    root = _btcv_folder(tmp_path / "btcv")
    cfg = _cfg(f"btcv-synth:{root}", structure="liver", systems=["roth"],
               system_overrides={"roth": ROTH_TINY})
    out = tmp_path / "cv"
    table = run_fold(cfg, 1, out, progress=False)
    rows = table[table["architecture"] == "roth"]
    assert len(rows) == 2 and set(rows["box"]) == {"none"}
    model = load_roth(out / "fold_1" / "roth" / "model.pt")
    assert model.config == RothConfig.reduced(seed=0, **{
        k: tuple(v) if isinstance(v, list) else v for k, v in ROTH_TINY.items()})
    # scored: the liver output (label 3) against the liver of the BTCV map (label 6)
    from iunet_nb import synth
    from iunet_nb.io.datasets import BTCV_DIRECTION, find_cases
    cid = rows.iloc[0]["case_id"]
    labels = {c.case_id: c for c in find_cases(root, "liver", layout="btcv")}[cid].read_labels()
    assert labels.geometry.direction == BTCV_DIRECTION  # the maps' true direction
    ct = synth.synthesize_ct(labels, rng=cfg.seed + int(cid) - 1)
    pred = predict_roth(ct, model)
    liver = (pred.labels.array == 3).astype(np.uint8)
    expected = evaluate_case(liver, labels.array == 6, ct.spacing_mm, cfg.tolerance_mm)
    assert rows.iloc[0]["dice"] == pytest.approx(expected["dice"], abs=1e-9)


def test_train_system_reloads_only_the_same_config(dataset, tmp_path):
    cases = [(read_image(p), read_mask(dataset / "labels" / p.name))
             for p in sorted((dataset / "images").glob("*.nii.gz"))[:2]]
    first = train_system("zhou", cases, "pancreas", overrides=ZHOU_TINY, out_dir=tmp_path / "z",
                         progress=False)
    assert not first.reloaded and first.compute.startswith("2 coarse + 2 fine")
    again = train_system("zhou", cases, "pancreas", overrides=ZHOU_TINY,
                         out_dir=tmp_path / "z", progress=False)
    assert again.reloaded and again.train_s == first.train_s
    np.testing.assert_array_equal(again.predict(cases[0][0]).array,
                                  first.predict(cases[0][0]).array)
    other = system_config("zhou", overrides={**ZHOU_TINY, "coarse_iterations": 3})
    assert load_trained_system("zhou", "pancreas", tmp_path / "z", other) is None
    with pytest.raises(InputError, match="at least one training case"):
        train_system("kloenne", [], "pancreas", overrides=KLOENNE_TINY)


# ----------------------------------------------------------------------------- coverage
@pytest.mark.parametrize("system, structure, data, match", [
    ("roth", "esophagus", "btcv-synth:/d", r"roth system does not cover 'esophagus'"),
    ("roth", "inferior_vena_cava", "btcv-synth:/d", r"does not cover 'inferior_vena_cava'"),
    ("roth", 13, "btcv-synth:/d", r"does not cover 13"),
    ("roth", "pancreas", "phantom:4", r"btcv-synth:<folder of BTCV label maps>"),
    ("roth", "liver", "/data/ircadb", r"multi-organ label maps"),
    ("zhuo", "pancreas", "phantom:4", r"unknown system 'zhuo' \(did you mean 'zhou'\?\)"),
])
def test_a_system_that_cannot_do_the_structure_is_refused(system, structure, data, match):
    with pytest.raises(ConfigError, match=match):
        check_system(system, structure, data)


def test_coverage_of_each_system():
    assert roth_organ("aorta") == "artery" and roth_organ(11) == "pancreas"
    assert roth_organ("Pancreas") == "pancreas" and roth_organ("6") == "liver"
    assert roth_organ(3) == "left_kidney" and roth_organ("right kidney") == "right_kidney"
    assert roth_organ("rightkidney") == "right_kidney"          # the 3D-IRCADb folder name
    for system in ("zhou", "kloenne"):  # binary systems: any structure, any source
        check_system(system, "left_kidney", "/data/ircadb")
    check_system("roth", "spleen", "btcv-synth:/d")


@pytest.mark.parametrize("kwargs, error, match", [
    ({"structure": "esophagus", "systems": ["roth"]}, ConfigError,
     "roth system does not cover 'esophagus'"),
    ({"systems": ["kloene"]}, ConfigError, "did you mean 'kloenne'"),
    ({"architectures": ["zhou"]}, ConfigError, "'zhou' is a system: list it in systems"),
    ({"systems": ["zhou"], "system_overrides": {"zhou": {"coarse_iteration": 5}}}, ConfigError,
     "unknown zhou config field 'coarse_iteration' \\(did you mean 'coarse_iterations'\\?\\)"),
    ({"systems": ["zhou"], "system_overrides": {"roth": {"iterations": 5}}}, ConfigError,
     "names 'roth', which is not among the systems"),
    ({"systems": ["zhou"], "system_scale": "tiny"}, ConfigError, "system_scale must be one of"),
    ({"architectures": [], "systems": ["zhou"]}, ConfigError,
     "baseline 'dilated_fcn' is not among the methods \\['zhou'\\]"),
    ({"systems": ["kloenne"], "system_overrides": {"kloenne": {"members": []}}}, ConfigError,
     "members' must be a non-empty list"),
])
def test_validate_cv_parameters_refuses_bad_systems(dataset, kwargs, error, match):
    with pytest.raises(error, match=match):
        _cfg(dataset, **kwargs)


def test_system_config_scales_and_overrides():
    assert system_config("zhou") == ZhouConfig.reduced()
    assert system_config("zhou", "full", seed=4) == ZhouConfig(seed=4)
    assert system_config("roth", overrides={"iterations": 7}).iterations == 7
    full = system_config("kloenne", "full", seed=10)
    assert [c.kind for c in full] == ["unet2d", "msd2d", "unet3d", "msd3d"]
    assert [c.seed for c in full] == [10, 11, 12, 13] and full[0] == KloenneConfig(seed=10)
    red = system_config("kloenne", overrides={"iterations": 50, "members": [
        {"arch": "msd", "dims": 3, "iterations": 20}]})
    assert red == (KloenneConfig.reduced(arch="msd", dims=3, iterations=20, seed=0),)
    assert compute_description("kloenne", red) == "msd3d 20 steps (batch 1)"
    assert compute_description("roth", system_config("roth")) == \
        "600 steps, batch 3 x 32x32x32 patches"
    with pytest.raises(ConfigError, match="scale must be one of"):
        system_config("roth", "huge")
    with pytest.raises(ConfigError, match="JSON object of config fields"):
        system_config("roth", overrides=[("iterations", 3)])


# ----------------------------------------------------------------------------- config, CLI
def test_an_old_cv_config_without_the_system_fields_still_loads(dataset, tmp_path):
    cfg = _cfg(dataset)
    old = cfg.to_dict()
    for name in ("systems", "system_scale", "system_overrides"):
        del old[name]
    loaded = CVConfig.from_dict(old)
    assert loaded == cfg and loaded.systems == () and loaded.system_scale == "reduced"
    assert loaded.methods == ("dilated_fcn",)
    # a folder claimed by the old version is still recognised as this experiment
    out = tmp_path / "cv"
    out.mkdir()
    (out / "cv_config.json").write_text(json.dumps(old))
    table = run_fold(cfg, 0, out, progress=False)
    assert set(table["architecture"]) == {"dilated_fcn"}
    # an old fold CSV without box/structure/compute columns: the tables fill them in
    old_rows = pd.DataFrame({"fold": [0, 0], "architecture": ["iunet", "iunet"],
                             "case_id": ["a", "b"], "dice": [0.8, 0.6], "train_s": [5.0, 5.0]})
    comp = cv_tables(old_rows).comparison.iloc[0]
    assert comp["box"] == "reference" and comp["train s per fold"] == 5.0
    assert comp["paper (their data)"] == "78.1 ± 8.7 (D1 pancreas, 90 CTs)"
    liver = cv_tables(old_rows.assign(structure="liver")).comparison.iloc[0]
    assert liver["paper (their data)"] == ""  # the paper's D1 numbers are pancreas only


def test_overrides_round_trip_through_cv_config_json(dataset):
    cfg = _cfg(dataset, systems=["zhou"], system_overrides={"zhou": {
        "fine_margin_px": (1, 2), "coarse_iterations": 3}})
    again = CVConfig.from_json(cfg.to_json())
    assert again == cfg and again.system_config("zhou").fine_margin_px == (1, 2)
    assert again.compute("zhou").startswith("3 coarse") and again.compute("dilated_fcn") == \
        "2 iterations, batch 2"


def test_cli_systems_flag_runs_a_fold_and_merges(dataset, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    out = tmp_path / "cv"
    args = parser.parse_args(["cv", "--out", str(out), "--data", str(dataset), "--k", "2",
                              "--arch", "--systems", "zhou", "roth", "--system-scale", "full"])
    assert args.arch == [] and args.systems == ["zhou", "roth"] and args.system_scale == "full"
    with pytest.raises(ConfigError, match="roth system learns its organs"):
        args.func(args)  # a paired folder has no multi-organ label maps
    with pytest.raises(SystemExit):
        parser.parse_args(["cv", "--out", str(out), "--systems", "zhuo"])
    assert "invalid choice: 'zhuo'" in capsys.readouterr().err
    common = ["cv", "--out", str(out), "--data", str(dataset), "--k", "2", "--arch",
              "dilated_fcn", "--baseline", "dilated_fcn", "--iterations", "1", "--batch", "1",
              "--base-channels", "2", "--size", "8", "16", "16", "--systems", "zhou",
              "--system-config", json.dumps({"zhou": ZHOU_TINY})]
    for fold in ("0", "1"):
        args = parser.parse_args(common + ["--fold", fold])
        assert args.func(args) == 0
    args = parser.parse_args(["cv", "--out", str(out), "--merge"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "| Zhou coarse-to-fine (2D FCN x 3 views) | 4 |" in printed
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 8 and set(results["architecture"]) == {"dilated_fcn", "zhou"}
    # --merge writes the whole report, the comparison table with its box column included
    comparison = pd.read_csv(out / "comparison.csv")
    assert list(comparison["box"]) == ["reference", "none"] and (out / "table1.md").is_file()
    saved = CVConfig.from_json(out / "cv_config.json")
    assert saved.systems == ("zhou",) and saved.system_overrides == {"zhou": ZHOU_TINY}
    bad = parser.parse_args(common + ["--system-config", "{zhou"])
    with pytest.raises(ConfigError, match="--system-config must be a JSON object"):
        bad.func(bad)


def test_report_has_the_box_column_and_the_comparison(tmp_path):
    rows = []
    for method, box, vals, train in (("iunet", "reference", [0.8, 0.7, 0.9], 10.0),
                                     ("zhou", "none", [0.5, 0.6, 0.4], 20.0)):
        for i, v in enumerate(vals):
            rows.append({"fold": i % 2, "architecture": method, "case_id": f"c{i}", "dice": v,
                         "train_s": train + i % 2, "box": box, "structure": "pancreas",
                         "compute": "x"})
    tables = cv_tables(pd.DataFrame(rows))
    t1 = tables.table1.set_index("architecture")
    assert t1.loc["zhou", "box"] == "none" and t1.loc["iunet", "box"] == "reference"
    assert t1.loc["zhou", "DSC (%)"] == "50.0 ± 10.0"
    comp = tables.comparison.set_index("architecture")
    assert comp.loc["zhou", "train s per fold"] == pytest.approx(20.5)  # folds: 20 and 21 s
    assert comp.loc["zhou", "median (%)"] == "50.0" and comp.loc["iunet", "median (%)"] == "80.0"
    assert comp.loc["zhou", "paper (their data)"].startswith("82.4 ± 5.7 (NIH")
    files = write_cv_report(tables, tmp_path)
    md = files["comparison_md"].read_text()
    assert "| Zhou coarse-to-fine (2D FCN x 3 views) | none | pancreas | 3 | 50.0 ± 10.0 | 50.0 |" \
        in md and "DSC mean ± sd (%) | median (%) |" in md
    assert "| none |" in (tmp_path / "table1.md").read_text()
    saved = json.loads(files["json"].read_text())
    assert [r["box"] for r in saved["comparison"]] == ["reference", "none"]
    assert saved["comparison"][1]["DSC mean ± sd (%)"] == "50.0 ± 10.0"


def test_every_system_is_named():
    from iunet_nb.studies.cv_report import METHOD_NAMES
    assert all(s in METHOD_NAMES for s in SYSTEMS)
