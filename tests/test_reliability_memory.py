"""Memory guard: estimates, limits, and refusals that give the numbers and what to do."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from iunet_nb.errors import ConfigError, InputError
from iunet_nb.io.images import read_image, write_image
from iunet_nb.io.volume import Volume
from iunet_nb.memory import (
    ENV_LIMIT,
    available_bytes,
    check_memory,
    estimate_preprocess_bytes,
    estimate_read_bytes,
    estimate_session_bytes,
    format_bytes,
    parse_bytes,
    peak_rss_bytes,
    rss_bytes,
)


@pytest.mark.parametrize("text, n", [("6GiB", 6 * 2 ** 30), ("500MB", 500 * 10 ** 6),
                                     ("2e9", 2 * 10 ** 9), ("1.5 KiB", 1536), ("12", 12),
                                     ("3g", 3 * 10 ** 9)])
def test_parse_bytes(text, n):
    assert parse_bytes(text) == n


@pytest.mark.parametrize("bad", ["", "lots", "-1GB", "5 parsecs", "1,5G"])
def test_parse_bytes_refuses(bad):
    with pytest.raises(ConfigError, match="not a memory size; write e.g. '6GiB'"):
        parse_bytes(bad)


@pytest.mark.parametrize("n, text", [(512, "512 B"), (1536, "1.5 KiB"), (10 * 2 ** 30, "10 GiB"),
                                     (3 * 2 ** 40, "3 TiB"), (2 ** 20 - 1, "1.02e+03 KiB")])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_estimates_are_per_voxel_sums():
    assert estimate_read_bytes((10, 20, 30), 2) == 6000 * (2 * 2 + 4 + 2)
    assert estimate_session_bytes((10, 20, 30)) == 36000
    assert estimate_preprocess_bytes((10, 20, 30), (2, 4, 4)) == 6000 * 24 + 32 * 16
    with pytest.raises(InputError, match="non-negative"):
        estimate_session_bytes((-1, 2, 3))


def test_check_memory_refuses_with_the_numbers():
    check_memory(2 ** 30, "small job", available=2 * 2 ** 30)
    with pytest.raises(InputError, match=r"reading big\.nii needs about 10 GiB of memory, but "
                                         r"only 4 GiB is available.*crop the CT"):
        check_memory(10 * 2 ** 30, "reading big.nii", available=4 * 2 ** 30)
    with pytest.raises(InputError, match="draw a tighter box"):
        check_memory(900, "x", available=1000, hint="draw a tighter box")
    check_memory(900, "x", available=1000, fraction=1.0)
    with pytest.raises(ConfigError, match=r"fraction must be in \(0, 1\]"):
        check_memory(1, "x", available=10, fraction=0)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_measurements_and_the_environment_cap(monkeypatch):
    rss, peak = rss_bytes(), peak_rss_bytes()
    assert rss is not None and peak is not None and 0 < rss <= peak
    free = available_bytes()
    assert free is not None and free > 0
    monkeypatch.setenv(ENV_LIMIT, str(rss + 10 ** 6))
    assert available_bytes() <= 10 ** 6
    monkeypatch.setenv(ENV_LIMIT, "plenty")
    with pytest.raises(ConfigError, match="not a memory size"):
        available_bytes()


def test_read_image_refuses_an_image_too_big(tmp_path, monkeypatch):
    path = write_image(Volume(np.zeros((20, 100, 100), np.int16)), tmp_path / "ct.nii.gz")
    monkeypatch.setattr("iunet_nb.memory.available_bytes", lambda: 2 * 10 ** 6)
    # 200000 voxels x (2 + 2 + 4 + 2) bytes = 2.0e6 > 0.8 x 2e6
    with pytest.raises(InputError, match=r"reading ct\.nii\.gz \(20 x 100 x 100 voxels, z y x\) "
                                         r"needs about 1\.91 MiB of memory, but only 1\.91 MiB"):
        read_image(path)
    monkeypatch.setattr("iunet_nb.memory.available_bytes", lambda: 10 ** 7)
    assert read_image(path).shape == (20, 100, 100)


def test_dicom_series_and_session_are_guarded(tmp_path, monkeypatch, ellipsoid_case):
    from test_reliability_dicomseg import write_series

    from iunet_nb.interactive.session import RefineConfig, Session
    from iunet_nb.model.checkpoint import ModelCard
    from iunet_nb.model.nets import NetConfig, build_network
    from iunet_nb.model.preprocess import Box, PreprocessConfig

    write_series(tmp_path / "CT", np.zeros((9, 14, 12), np.int16))
    monkeypatch.setattr("iunet_nb.memory.available_bytes", lambda: 1000)
    with pytest.raises(InputError, match=r"reading CT \(9 x 14 x 12 voxels.*needs about"):
        read_image(tmp_path / "CT")
    ct, ref = ellipsoid_case
    card = ModelCard(net=NetConfig(base_channels=4),
                     preprocess=PreprocessConfig(size_zyx=(8, 16, 16)))
    model = build_network(card.net).eval()
    with pytest.raises(InputError, match=r"an interactive session on a CT of \(24, 32, 32\)"):
        Session(ct, model, card, Box.from_mask(ref.array), config=RefineConfig(device="cpu"))
    # memory runs short after the session opened, before the crop is preprocessed
    monkeypatch.setattr("iunet_nb.memory.available_bytes", lambda: 24 * 32 * 32 * 8)
    s = Session(ct, model, card, Box.from_mask(ref.array), config=RefineConfig(device="cpu"))
    monkeypatch.setattr("iunet_nb.memory.available_bytes", lambda: 10_000)
    with pytest.raises(InputError, match=r"preprocessing the crop .*draw a tighter box"):
        s.predict()
    assert s.history == []


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_read_estimate_bounds_the_measured_peak(tmp_path):
    a = np.random.default_rng(0).normal(0, 100, (40, 128, 128)).astype(np.float32)
    path = write_image(Volume(a), tmp_path / "f.mha")
    del a
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM)
    except OSError:
        pytest.skip("cannot reset the peak RSS here")
    before = rss_bytes()
    vol = read_image(path)
    grown = peak_rss_bytes() - before
    assert vol.array.dtype == np.float32
    assert grown <= estimate_read_bytes(vol.shape, 4), (grown, os.getpid())
