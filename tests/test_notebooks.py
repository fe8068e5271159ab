"""Execute the research notebooks headless with papermill and check the files they write.

Needs a Jupyter kernel named ``python3`` (ipykernel, a dependency, provides it; check with
``jupyter kernelspec list``). Each notebook runs on tiny data (4 ellipsoid cases of
12 x 24 x 24 voxels, 2 iterations, 4 base channels, an 8 x 16 x 16 working grid). A notebook
run costs ~6 s of kernel start-up and imports, so the cross-validation run and most bad-input
cases are marked ``slow``.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from test_crossval import _paired_dataset
from test_study import known_study

from iunet_nb.model.checkpoint import load_model
from iunet_nb.studies.study import StudyPlan, design_study

papermill = pytest.importorskip("papermill")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TINY = {"iterations": 2, "batch": 2, "base_channels": 4, "size_zyx": [8, 16, 16]}


@pytest.fixture(scope="module", autouse=True)
def _kernel():
    from jupyter_client.kernelspec import KernelSpecManager

    if "python3" not in KernelSpecManager().find_kernel_specs():
        pytest.skip("no 'python3' Jupyter kernel: pip install ipykernel (or run "
                    "`python -m ipykernel install --user --name python3`)")




@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _paired_dataset(tmp_path_factory.mktemp("nbdata") / "data", 4)


def _run(name: str, tmp_path: Path, **parameters) -> nbformat.NotebookNode:
    out = tmp_path / f"{name}.out.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(out), parameters=parameters,
                               kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    return nbformat.read(out, as_version=4)


# ----------------------------------------------------------------------------- structure
@pytest.mark.parametrize("name", ["train", "cross_validation", "reader_study_design",
                                  "reader_study_analysis"])
def test_notebooks_are_clean_and_parameterised(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert all(not c.outputs and c.execution_count is None for c in code)
    # the cell after the parameters validates them (bad input stops there)
    assert "validate_" in code[1].source
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 4


# ----------------------------------------------------------------------------- runs
def test_train_notebook_writes_model_card_and_loss(tmp_path, data):
    _run("train", tmp_path, data=str(data), arch="dilated_fcn", seed=3,
         out_dir=str(tmp_path / "run"), **TINY)
    run = tmp_path / "run"
    _, card = load_model(run / "model.pt")
    assert card.net.arch == "dilated_fcn" and card.net.base_channels == 4
    assert card.iterations == 2 and card.seed == 3 and card.preprocess.size_zyx == (8, 16, 16)
    assert "4 cases from" in card.data
    losses = [json.loads(line) for line in (run / "loss.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in losses] == [1, 2]
    assert all(-1.0 <= r["loss"] <= 0.0 for r in losses)  # soft Dice loss is -mean(Dice)
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # a notebook run with a Zhou training: ~12 s on 2 shared cores
def test_train_notebook_trains_a_system(tmp_path, data):
    from test_systems_cv import ZHOU_TINY

    from iunet_nb.systems.zhou import ZhouConfig, load_zhou

    nb = _run("train", tmp_path, data=str(data), system="zhou", system_overrides=ZHOU_TINY,
              seed=2, out_dir=str(tmp_path / "zhou"))
    model = load_zhou(tmp_path / "zhou" / "model.pt")
    assert model.config == ZhouConfig.reduced(seed=2, **{**ZHOU_TINY, "fine_margin_px": (1, 2)})
    card = json.loads((tmp_path / "zhou" / "model.json").read_text())
    assert card["system"] == "zhou" and "4 cases from" in card["data"]
    losses = json.loads((tmp_path / "zhou" / "losses.json").read_text())
    assert sorted(losses) == sorted(f"{s}/{v}" for s in ("coarse", "fine")
                                    for v in ("coronal", "sagittal", "axial"))
    assert all(len(v) == 2 for v in losses.values())
    assert not (tmp_path / "zhou" / "loss.png").exists()  # the iUnet-only cells were skipped
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                   for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "2 coarse + 2 fine steps x 3 views" in text and "zhou: no crop" in text


@pytest.mark.slow  # one notebook run, 2 folds x (1 network + 1 system): ~15 s
def test_cross_validation_notebook_with_a_system(tmp_path, data):
    from test_systems_cv import ZHOU_TINY

    out = tmp_path / "cv"
    _run("cross_validation", tmp_path, data=str(data), k=2, architectures=["dilated_fcn"],
         baseline="dilated_fcn", systems=["zhou"], system_overrides={"zhou": ZHOU_TINY},
         out_dir=str(out), **TINY)
    results = pd.read_csv(out / "results.csv", dtype={"case_id": str})
    assert len(results) == 8
    assert dict(results.groupby("architecture")["box"].first()) == {"dilated_fcn": "reference",
                                                                   "zhou": "none"}
    comparison = pd.read_csv(out / "comparison.csv")
    assert list(comparison["architecture"]) == ["dilated_fcn", "zhou"]
    assert (out / "fold_1" / "zhou" / "model.pt").is_file()


@pytest.mark.slow  # two notebook runs, 4 trainings: ~20 s on 2 shared cores
def test_cross_validation_notebook_one_fold_per_job_then_merge(tmp_path, data):
    out = tmp_path / "cv"
    common = dict(data=str(data), k=2, architectures=["iunet", "dilated_fcn"], out_dir=str(out),
                  **TINY)
    _run("cross_validation", tmp_path, folds=0, merge=False, **common)
    assert (out / "fold_0.csv").is_file() and not (out / "fold_1.csv").exists()
    assert not (out / "results.csv").exists()
    mtime = (out / "fold_0.csv").stat().st_mtime_ns
    _run("cross_validation", tmp_path, folds=None, merge=True, **common)
    assert (out / "fold_0.csv").stat().st_mtime_ns == mtime  # reused, not rerun
    results = pd.read_csv(out / "results.csv", dtype={"case_id": str})
    assert len(results) == 8 and sorted(set(results["case_id"])) == [f"case{i}" for i in range(4)]
    table1 = pd.read_csv(out / "table1.csv")
    assert list(table1["architecture"]) == ["iunet", "dilated_fcn"]
    fcn = results[results["architecture"] == "dilated_fcn"]["dice"]
    assert table1.loc[1, "mean_pct"] == pytest.approx(100 * fcn.mean())
    saved = json.loads((out / "results.json").read_text())
    assert saved["wilcoxon"][0]["n_pairs"] == 4
    assert (out / "dsc_plot.png").is_file()


def test_reader_study_design_notebook_writes_the_plan(tmp_path):
    cases = [f"case{i}" for i in range(6)]
    _run("reader_study_design", tmp_path, readers=["ann", "bob", "cy"], cases=cases, seed=4,
         out_dir=str(tmp_path / "study"))
    plan = StudyPlan.from_json(tmp_path / "study" / "plan.json")
    assert plan == design_study(["ann", "bob", "cy"], cases, 2, ("manual", "interactive"), 4)
    assert len(plan.tasks) == 18 and [len(s) for s in plan.subsets] == [3, 3]
    assert [t.method for t in plan.tasks_for("bob")][::3] == ["interactive", "manual"]


def test_reader_study_analysis_notebook_reads_generated_logs(tmp_path):
    known_study(tmp_path / "study")  # 3 readers x 4 cases: manual 900 s, interactive 450 s
    _run("reader_study_analysis", tmp_path, study_dir=str(tmp_path / "study"),
         out_dir=str(tmp_path / "report"))
    stats = json.loads((tmp_path / "report" / "stats.json").read_text())
    assert stats["median_time_reduction_pct"] == pytest.approx(50.0)
    assert stats["per_method"]["manual"]["median_time_s"] == pytest.approx(900.0)
    assert stats["wilcoxon_time"]["p_value"] == pytest.approx(2 / 16)
    inter = pd.read_csv(tmp_path / "report" / "interobserver.csv", index_col=0)
    assert inter.loc["r1", "r2"] == pytest.approx(1.0) and inter.loc["r1", "r3"] < 0.8
    assert "**50.0 %**" in (tmp_path / "report" / "summary.md").read_text()
    assert (tmp_path / "report" / "summary.html").is_file()


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name, parameters, error, message", [
    ("train", {"data": "phantom:2", "structure": "liver"}, "ConfigError", "only have a pancreas"),
    pytest.param("train", {"data": "/no/such/folder"}, "InputError", "does not exist",
                 marks=pytest.mark.slow),
    ("cross_validation", {"data": "phantom:3", "k": 5}, "ConfigError", "only 3 case"),
    pytest.param("cross_validation", {"data": "phantom:3", "architectures": ["iunte"]},
                 "ConfigError", "did you mean 'iunet'", marks=pytest.mark.slow),
    pytest.param("cross_validation", {"data": "phantom:3", "k": 2, "systems": ["roth"]},
                 "ConfigError", "btcv-synth", marks=pytest.mark.slow),
    pytest.param("cross_validation", {"data": "phantom:3", "k": 2, "systems": ["zhuo"]},
                 "ConfigError", "did you mean 'zhou'", marks=pytest.mark.slow),
    pytest.param("train", {"data": "phantom:2", "system": "rot"}, "ConfigError",
                 "did you mean 'roth'", marks=pytest.mark.slow),
    pytest.param("reader_study_design", {"readers": ["a/b", "c"]}, "ConfigError",
                 "path separator", marks=pytest.mark.slow),
    pytest.param("reader_study_analysis", {"study_dir": "/no/such/study"}, "InputError",
                 "does not exist", marks=pytest.mark.slow),
])
def test_bad_parameters_stop_in_the_validation_cell(tmp_path, name, parameters, error, message):
    with pytest.raises(papermill.PapermillExecutionError) as info:
        _run(name, tmp_path, **parameters)
    exc = info.value
    assert exc.ename == error and message in exc.evalue
    assert "validate_" in exc.source  # stopped in the first cell after the parameters
    nb = nbformat.read(tmp_path / f"{name}.out.ipynb", as_version=4)
    later = [c for c in nb.cells if c.cell_type == "code"][3:]
    assert all(c.execution_count is None for c in later)  # nothing after it ran
