"""scripts/train_roth.py: a real 3D-IRCADb patient as a partly labelled training case."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_script

from iunet_nb.io.images import read_dicom_mask_series
from iunet_nb.systems.roth import BTCV_TO_ROTH, map_labels


@pytest.fixture(scope="module")
def script():
    yield from load_script("train_roth")


@pytest.mark.realdata
@pytest.mark.slow
def test_a_3d_ircadb_patient_is_a_partly_labelled_roth_case(script, shared_data):
    folder = shared_data / "ircadb" / "1.17"
    ct, labels, unlabelled = script.ircadb_case(folder)
    assert labels.shape == ct.shape and labels.geometry.is_close(ct.geometry)
    # 1.17 has no spleen or kidney masks: they, like every stomach, gallbladder and
    # pancreas, are not drawn, so the marginal loss must not call them background
    assert set(unlabelled) == {"stomach", "gallbladder", "pancreas", "spleen", "right_kidney",
                               "left_kidney"}
    roth = map_labels(labels.array, BTCV_TO_ROTH)
    liver = read_dicom_mask_series(folder / "MASKS_DICOM.zip", "liver").array != 0
    assert np.array_equal(roth == 3, liver)                # the liver over the vessels in it
    assert (roth == 1).any() and (roth == 2).any()         # artery, veins
    assert not np.isin(roth, [4, 5, 6, 7, 8, 9]).any()
