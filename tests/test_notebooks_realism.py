"""Execute notebooks/realism.ipynb headless with papermill on the shared data.

Skipped with a reason when ../shared/data is absent or no ``python3`` Jupyter kernel exists.
One real patient (1.7: liver, spleen, kidneys, bone) and one synthetic case keep it to
~30-60 s on a 2-core CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

papermill = pytest.importorskip("papermill")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "realism.ipynb"


@pytest.fixture(scope="module", autouse=True)
def _kernel():
    from jupyter_client.kernelspec import KernelSpecManager

    if "python3" not in KernelSpecManager().find_kernel_specs():
        pytest.skip("no 'python3' Jupyter kernel: pip install ipykernel")


@pytest.mark.realdata
@pytest.mark.slow
def test_realism_notebook_writes_its_tables(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "out"
    papermill.execute_notebook(
        str(NOTEBOOK), str(tmp_path / "realism.out.ipynb"), kernel_name="python3",
        cwd=str(tmp_path), progress_bar=False,
        parameters={"ircadb_folder": str(shared_data / "ircadb"), "ircadb_patients": ["1.7"],
                    "btcv_folder": str(shared_data / "btcv_labels"), "btcv_cases": ["0001"],
                    "seed": 0, "out_dir": str(out)})
    per_volume = pd.read_csv(out / "tissue_stats.csv", dtype={"case": str})
    assert set(per_volume["source"]) == {"real", "synthetic"}
    assert set(per_volume["case"]) == {"1.7", "0001"}
    compare = pd.read_csv(out / "realism_compare.csv", index_col="tissue")
    assert list(compare.index) == ["liver", "spleen", "kidneys", "fat", "bone"]
    # one volume per source: the pooled means are that volume's means
    for src, col in (("real", "mean_real"), ("synthetic", "mean_synth")):
        own = per_volume[per_volume["source"] == src].set_index("tissue")
        np.testing.assert_allclose(compare[col], own.loc[compare.index, "mean_hu"], atol=2e-3)
    np.testing.assert_allclose(compare["mean_diff_hu"], compare["mean_synth"] - compare["mean_real"],
                               atol=2e-3)
    assert compare["overlap"].between(0.3, 1.0).all(), compare["overlap"]
    # portal-venous liver, real and synthetic, within 40 HU of each other
    assert abs(compare.loc["liver", "mean_diff_hu"]) < 40
    noise = pd.read_csv(out / "noise_texture.csv", dtype={"case": str})
    assert noise["source"].tolist() == ["real", "synthetic"]
    assert (noise["local_sd_hu"] > 1).all() and (noise["n_patches"] > 0).all()
    resampled = pd.read_csv(out / "noise_texture_resampled.csv", dtype={"case": str})
    assert resampled["case"].tolist() == ["1.7"] and (resampled["grid_mm"] == 2.0).all()
    # resampled to 2 mm the real noise is lower than on its own 0.78 mm grid
    assert resampled["local_sd_hu"].iloc[0] < noise.loc[noise["source"] == "real", "local_sd_hu"].iloc[0]
    # the edge offsets (docs/realism.md, section 5): real 1.7 liver +1.20 mm, spleen +0.53 mm;
    # the synthetic ones on the 2 mm grid within a voxel of them
    edges = pd.read_csv(out / "edge_offsets.csv", dtype={"case": str}).set_index(["source", "organ"])
    assert edges.loc[("real", "liver"), "offset_mm"] == pytest.approx(1.20, abs=0.05)
    assert edges.loc[("real", "spleen"), "offset_mm"] == pytest.approx(0.53, abs=0.05)
    assert edges.loc["synthetic", "offset_mm"].between(-0.5, 1.7).all(), edges
    for name in ("histograms.png", "nps.png", "slices.png", "edge_offsets.png"):
        assert (out / name).stat().st_size > 1000
