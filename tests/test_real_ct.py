"""The shipped defaults on real CT: regression floors a little under the measured figures.

The figures themselves come from ``benchmarks/bench_real.py`` (recorded in
``benchmarks/RESULTS.md``); these tests pin them so that a change that loses real-CT accuracy
fails CI. Skipped with a reason when ``../shared/data`` is absent.
"""

from __future__ import annotations

import numpy as np
import pytest

from iunet_nb.interactive.robot import RobotConfig, run_robot
from iunet_nb.interactive.session import Session
from iunet_nb.io.images import read_dicom_mask_series, read_image, read_mask
from iunet_nb.model.checkpoint import load_bundled_model
from iunet_nb.model.evaluate import dice
from iunet_nb.model.predict import make_box, segment

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

# measured with the bundled model of 2026-12-07 (bench_real.py): see benchmarks/RESULTS.md
PANCREAS_AUTO_FLOOR = 0.62    # measured 0.649
KIDNEY_ROUND1_FLOOR = 0.80    # measured 0.865 (start 0.164)
DILATED_FCN_FLOOR = 0.60      # the shipped dilated FCN of 2026-12-07: measured 0.630
KLOENNE_LIVER_FLOOR = 0.90    # the shipped Kloenne U-Net, 3D-IRCADb 1.17, automatic: 0.922
#: the shipped Roth FCN on 3D-IRCADb 1.7: liver 0.884, spleen 0.748, left kidney 0.836 (the
#: right kidney, 0.350, takes in the liver tumour that touches it: not pinned)
ROTH_FLOORS = {"liver": 0.85, "spleen": 0.72, "leftkidney": 0.80}


@pytest.fixture(scope="module")
def pancreas_0002(shared_data):
    folder = shared_data / "nih_pancreas_ct" / "PANCREAS_0002"
    return read_image(folder / "dicom"), read_mask(folder / "label0002.nii.gz")


def test_bundled_model_on_the_real_nih_pancreas_with_the_expert_box(pancreas_0002):
    ct, ref = pancreas_0002
    model, card = load_bundled_model()
    mask = segment(ct, model, make_box(ct, reference=ref), card.preprocess)
    assert mask.geometry.is_close(ct.geometry)
    assert dice(mask.array, ref.array) >= PANCREAS_AUTO_FLOOR


def test_shipped_dilated_fcn_on_the_real_nih_pancreas_with_the_expert_box(pancreas_0002):
    from importlib import resources

    from iunet_nb.model.checkpoint import load_model

    ct, ref = pancreas_0002
    model, card = load_model(resources.files("iunet_nb") / "assets" / "dilated_pancreas.pt")
    assert card.net.arch == "dilated_fcn"
    mask = segment(ct, model, make_box(ct, reference=ref), card.preprocess)
    assert dice(mask.array, ref.array) >= DILATED_FCN_FLOOR


def test_one_stroke_moves_the_pancreas_model_on_an_unseen_real_kidney(shared_data):
    """The pancreas model knows no kidney (start DSC about 0); one foreground stroke of the
    simulated expert fills it (the stroke fill, RefineConfig.fill_below)."""
    folder = shared_data / "ircadb" / "1.7"
    ct = read_image(folder / "PATIENT_DICOM")
    ref = read_dicom_mask_series(folder / "MASKS_DICOM.zip", "rightkidney")
    model, card = load_bundled_model()
    with Session(ct, model, card, make_box(ct, reference=ref), reference=ref) as session:
        result = run_robot(session, ref, RobotConfig.preset("expert", rounds=1, seed=0),
                           predict=True)
    dsc = result.table["dsc"].to_numpy()
    assert dsc[0] < 0.3                       # the network alone misses it
    assert dsc[1] >= KIDNEY_ROUND1_FLOOR
    assert np.isfinite(result.table["hd95_mm"].iloc[1])


def test_shipped_kloenne_finds_the_real_liver_of_3d_ircadb_1_17_without_a_box(shared_data):
    """Kloenne's system is automatic: every slice of the CT, no box (issue 27's goal 0.90)."""
    from iunet_nb.systems.kloenne import load_bundled_kloenne, predict_kloenne

    folder = shared_data / "ircadb" / "1.17"
    ct = read_image(folder / "PATIENT_DICOM")
    ref = read_dicom_mask_series(folder / "MASKS_DICOM.zip", "liver")
    mask = predict_kloenne(ct, load_bundled_kloenne())
    assert mask.geometry.is_close(ct.geometry)
    assert dice(mask.array, ref.array) >= KLOENNE_LIVER_FLOOR


def test_shipped_roth_finds_the_real_organs_of_3d_ircadb_1_7_without_a_box(shared_data):
    """Roth's multi-organ FCN, automatic on the whole CT: liver, spleen and left kidney (issue
    27's goals 0.90 / 0.85 / 0.85 are not reached; these floors keep what the shipped weights
    do)."""
    from iunet_nb.systems.roth import load_bundled_roth, predict_roth

    folder = shared_data / "ircadb" / "1.7"
    ct = read_image(folder / "PATIENT_DICOM")
    pred = predict_roth(ct, load_bundled_roth())
    for organ, floor in ROTH_FLOORS.items():
        ref = read_dicom_mask_series(folder / "MASKS_DICOM.zip", organ)
        mask = pred.organ_mask({"leftkidney": "left_kidney"}.get(organ, organ))
        assert mask.geometry.is_close(ct.geometry)
        assert dice(mask.array, ref.array) >= floor, organ
