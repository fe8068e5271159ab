"""Session reliability: CUDA out-of-memory falls back to CPU, DICOM-SEG export, odd grids."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import make_ellipsoid

import iunet_nb.interactive.refine as refine_mod
from iunet_nb.errors import InputError
from iunet_nb.interactive.session import RefineConfig, Session
from iunet_nb.io.images import read_image, read_mask
from iunet_nb.io.volume import Geometry, Volume
from iunet_nb.model.preprocess import Box

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device")])]


def _oom() -> torch.cuda.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def _scribbled(ct, ref, model, card, device, **kw) -> Session:
    s = Session(ct, model, card, Box.from_mask(ref.array),
                config=RefineConfig(device=device, iterations=3), **kw)
    s.predict()
    s.add_scribble("fg", [(16, 10), (16, 20)], view="axial", slice_index=12, radius_mm=2)
    return s


@pytest.mark.parametrize("device", DEVICES)
def test_cuda_oom_in_refine_continues_on_cpu(ellipsoid_case, model, card, device, monkeypatch,
                                             caplog, tmp_path):
    ct, ref = ellipsoid_case
    control = _scribbled(ct, ref, model, card, "cpu")
    expected = control.refine().array
    original = refine_mod.fine_tune
    calls = []

    def flaky(m, *args, **kwargs):
        calls.append(next(m.parameters()).device.type)
        if len(calls) == 1:
            if device == "cuda":  # fail after real GPU work, as a real OOM would
                original(m, *args, **{**kwargs, "should_stop": None})
            raise _oom()
        return original(m, *args, **kwargs)

    s = _scribbled(ct, ref, model, card, device, folder=tmp_path / "s")
    monkeypatch.setattr(refine_mod, "fine_tune", flaky)
    with caplog.at_level(logging.WARNING, logger="iunet_nb.interactive.session"):
        mask = s.refine().array
    assert calls == [device, "cpu"]
    assert "GPU ran out of memory during refine" in caplog.text
    assert "continues on the CPU" in caplog.text
    assert s._device.type == "cpu" and next(s._model.parameters()).device.type == "cpu"
    fallback = [e for e in s.events if e["event"] == "device_fallback"]
    assert len(fallback) == 1 and fallback[0]["details"]["to"] == "cpu"
    assert fallback[0]["details"]["during"] == "refine"
    # the retried round is the round the CPU would have computed (same seed, same weights)
    if device == "cpu":
        np.testing.assert_array_equal(mask, expected)
    else:
        assert abs(int(mask.sum()) - int(expected.sum())) <= 0.02 * max(int(expected.sum()), 50)
    assert s.history[-1] == "refine" and s.refine_round == 1
    s.add_scribble("bg", [(3, 3)], view="axial", slice_index=2)
    s.refine()  # and the session goes on, on the CPU
    assert calls[-1] == "cpu"
    s.close()


def test_cuda_oom_in_predict_continues_on_cpu(ellipsoid_case, model, card, monkeypatch, caplog):
    ct, ref = ellipsoid_case
    expected = Session(ct, model, card, Box.from_mask(ref.array),
                       config=RefineConfig(device="cpu")).predict().array
    original = Session._forward_on_device
    calls = []

    def flaky(self, x):
        calls.append(1)
        if len(calls) == 1:
            raise _oom()
        return original(self, x)

    monkeypatch.setattr(Session, "_forward_on_device", flaky)
    s = Session(ct, model, card, Box.from_mask(ref.array), config=RefineConfig(device="cpu"))
    with caplog.at_level(logging.WARNING, logger="iunet_nb.interactive.session"):
        np.testing.assert_array_equal(s.predict().array, expected)
    assert "GPU ran out of memory during predict" in caplog.text and len(calls) == 2


def test_export_dcm_writes_dicom_seg_for_a_dicom_ct(tmp_path, model, card):
    pytest.importorskip("highdicom")
    from test_reliability_dicomseg import SERIES_UID, write_series

    from iunet_nb.io.dicomseg import read_dicom_seg

    shape = (9, 14, 12)
    organ = make_ellipsoid(shape, center=(4.0, 6.0, 5.0), radii=(2.5, 4.0, 3.0))
    array = np.where(organ > 0, 120, -50).astype(np.int16)
    write_series(tmp_path / "CT", array)
    ct = read_image(tmp_path / "CT")
    s = Session(ct, model, card, Box.from_mask(organ), config=RefineConfig(device="cpu"),
                reader_id="Doe^Jane", folder=tmp_path / "session")
    s.paint(1, points=np.argwhere(organ))
    seg_path = s.export(tmp_path / "out" / "pancreas.dcm")
    nii_path = s.export(tmp_path / "out" / "pancreas.nii.gz")
    back = read_dicom_seg(seg_path, ct)
    np.testing.assert_array_equal(back.array, organ)
    np.testing.assert_array_equal(read_mask(nii_path).array, organ)
    import pydicom
    ds = pydicom.dcmread(str(seg_path))
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES_UID
    assert str(ds.ContentCreatorName) == "Doe^Jane"
    exports = [e["details"] for e in s.events if e["event"] == "export"]
    assert [e["format"] for e in exports] == ["dicom-seg", "mask"]
    s.close()


def test_export_dcm_of_a_nifti_ct_says_what_to_do(ellipsoid_case, model, card, tmp_path):
    ct, ref = ellipsoid_case
    s = Session(ct, model, card, Box.from_mask(ref.array), config=RefineConfig(device="cpu"))
    s.paint(1, points=np.argwhere(ref.array))
    with pytest.raises(InputError, match=r"DICOM-SEG needs a CT read from a DICOM series.*"
                                         r"Export the mask as \.nii\.gz"):
        s.export(tmp_path / "m.dcm")
    assert not (tmp_path / "m.dcm").exists()


def test_extremely_anisotropic_ct_segments_on_its_own_grid(model, card):
    # 4 slices 40 mm apart, 0.3 mm pixels: a ratio of 133; nothing is resampled to
    # isotropic, so nothing blows up; the mask comes back on the CT's grid.
    geometry = Geometry(spacing_mm=(40.0, 0.3, 0.3), origin_mm=(0.0, 0.0, 0.0))
    organ = np.zeros((4, 64, 64), np.uint8)
    organ[1:3, 20:44, 16:48] = 1
    ct = Volume(np.where(organ > 0, 100.0, -60.0).astype(np.float32), geometry)
    s = Session(ct, model, card, Box.from_mask(organ), config=RefineConfig(device="cpu",
                                                                           iterations=2))
    mask = s.predict()
    assert mask.shape == ct.shape and mask.geometry.is_close(geometry)
    s.add_scribble("fg", [(30, 30)], view="axial", slice_index=1, radius_mm=3)
    refined = s.refine().array
    assert refined[1, 30, 30] == 1  # the forced scribble, 10 x 10 voxels of 0.3 mm
    assert np.count_nonzero(refined[1, 20:41, 20:41]) >= 300
