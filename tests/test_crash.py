"""Crash safety: a process killed (SIGKILL) in the middle of an autosave or of a mask export.

A forked child (a separate process, like a notebook kernel) works in a loop: painting,
scribbling and refining with autosave after every action, or exporting the mask over and
over. The parent kills it at seeded random moments, then checks that the last good state is
intact: ``Session.load`` resumes exactly the state after the last action the child reported
done (or the one after, when the kill came between the autosave and the report), verified
against an independent replay; an exported file is always one whole version, never a mix.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from iunet_nb.interactive.locking import LOCK_NAME
from iunet_nb.interactive.session import RefineConfig, Session
from iunet_nb.io.images import read_mask, write_mask
from iunet_nb.io.volume import Volume
from iunet_nb.model.checkpoint import ModelCard
from iunet_nb.model.nets import NetConfig, build_network
from iunet_nb.model.preprocess import Box, PreprocessConfig

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")


@pytest.fixture
def parts(ellipsoid_case):
    ct, ref = ellipsoid_case
    card = ModelCard(net=NetConfig(base_channels=4),
                     preprocess=PreprocessConfig(size_zyx=(8, 16, 16)))
    torch.manual_seed(0)
    model = build_network(card.net).eval()
    return ct, model, card, Box.from_mask(ref.array), RefineConfig(device="cpu", iterations=2)


def _action(s: Session, i: int, refine: bool = True) -> None:
    """Action ``i`` of the deterministic script (every third one a scribble + refine).

    Paint strokes land outside the crop the network sees (slices 0-3 and 20-23), each at a
    new place, so every action changes the mask and makes one history entry.
    """
    if i % 3 == 2:
        k = 6 + (i * 7) % 12
        r, c = 8 + (i * 5) % 16, 8 + (i * 11) % 16
        s.add_scribble("fg" if i % 2 else "bg", [(r, c), (r + 2, c + 3)], view="axial",
                       slice_index=k, radius_vox=1.5)
        if refine:
            s.refine()
    else:
        j = i - i // 3
        k = (0, 1, 2, 3, 20, 21, 22, 23)[j % 8]
        r, c = 3 + 5 * ((j // 8) % 6), 3 + 5 * ((j // 48) % 6)
        s.paint(1, [(r, c)], view="axial", slice_index=k, radius_vox=2)


def _n_actions(s: Session) -> int:
    """Script actions in a session's history (predict excluded; scribble + refine = one)."""
    h = s.history[1:]
    return len(h) - h.count("refine")


def _fork_worker(work) -> tuple[int, int]:
    """Fork a child that runs ``work(report)`` forever; ``report(n)`` sends n to the parent."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(r)
            work(lambda n: os.write(w, f"{n}\n".encode()))
        except BaseException as exc:  # noqa: BLE001
            os.write(w, f"E {type(exc).__name__}: {exc}\n".encode()[:800])
        finally:
            os._exit(1)
    os.close(w)
    return pid, r


def _kill_after(pid: int, r: int, min_reports: int, delay_s: float) -> list[str]:
    """Wait for ``min_reports`` reports, then ``delay_s`` more, then SIGKILL; all reports."""
    lines: list[str] = []
    buf = b""
    deadline = time.monotonic() + 120
    while len(lines) < min_reports and time.monotonic() < deadline:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        buf += chunk
        *done, buf = buf.split(b"\n")
        lines += [d.decode() for d in done]
        errors = [x for x in lines if x.startswith("E ")]
        assert not errors, errors
    time.sleep(delay_s)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.set_blocking(r, False)
    try:
        while chunk := os.read(r, 4096):
            buf += chunk
    except BlockingIOError:
        pass
    os.close(r)
    lines += [d.decode() for d in buf.split(b"\n") if d]
    assert not [x for x in lines if x.startswith("E ")], lines
    assert len(lines) >= min_reports, f"the child reported only {lines}"
    return lines


def _replay(parts, n: int, interrupted: bool = False) -> Session:
    """A fresh session after ``n`` script actions; ``interrupted``: the last one's refine
    never ran (the scribble was saved, then the process died)."""
    ct, model, card, box, cfg = parts
    s = Session(ct, model, card, box, config=cfg)
    s.predict()
    for i in range(n):
        _action(s, i, refine=not (interrupted and i == n - 1))
    return s


def _crash_cycles(parts, folder: Path, delays: list[float]) -> list[dict]:
    ct, model, card, box, cfg = parts
    records = []
    for cycle, delay in enumerate(delays):
        def work(report, first=(cycle == 0)):
            if first:
                s = Session(ct, model, card, box, config=cfg, folder=folder, case_id="c")
                s.predict()
            else:
                s = Session.load(folder, ct, model, card)
                if s.history[-1] == "scribble":
                    s.refine()  # the refine the crash interrupted, as a user would redo it
            i = _n_actions(s)
            report(i)
            while True:
                _action(s, i)
                i += 1
                report(i)

        pid, r = _fork_worker(work)
        reported = int(_kill_after(pid, r, 2, delay)[-1])
        leftovers = sorted(p.name for p in folder.rglob(".*") if p.name != LOCK_NAME)
        events_tail_cut = not (folder / "events.jsonl").read_bytes().endswith(b"\n")
        loaded = Session.load(folder, ct, model, card)
        n = _n_actions(loaded)
        assert n in (reported, reported + 1), (n, reported)
        interrupted = loaded.history[-1] == "scribble"
        expected = _replay(parts, n, interrupted)
        np.testing.assert_array_equal(loaded.mask.array, expected.mask.array)
        np.testing.assert_array_equal(loaded.scribbles.array, expected.scribbles.array)
        assert loaded.history == expected.history
        assert loaded.refine_round == expected.refine_round
        # what the crash left half-written is gone; every event line is whole JSON
        assert not [p for p in folder.rglob(".*") if p.name != LOCK_NAME]
        lines = (folder / "events.jsonl").read_text().splitlines()
        assert [json.loads(x)["event"] for x in lines][-1] == "load"
        loaded.close()
        records.append({"delay_s": round(delay, 3), "reported": reported, "loaded": n,
                        "refine_lost": interrupted,
                        "temporaries_left": len(leftovers), "partial_event": events_tail_cut})
    return records


def test_sigkill_during_autosave_loses_nothing_saved(parts, tmp_path):
    rng = np.random.default_rng(20240607)
    records = _crash_cycles(parts, tmp_path / "session", list(rng.uniform(0.0, 0.3, 1)))
    # the resumed session goes on: one more action, then it loads again identically
    ct, model, card, *_ = parts
    s = Session.load(tmp_path / "session", ct, model, card)
    n = _n_actions(s)
    _action(s, n)
    s.close()
    again = Session.load(tmp_path / "session", ct, model, card)
    np.testing.assert_array_equal(again.mask.array, _replay(parts, n + 1).mask.array)
    again.close()
    assert len(records) == 1


@pytest.mark.slow
def test_sigkill_during_autosave_many_times(parts, tmp_path, capsys):
    rng = np.random.default_rng(7)
    records = _crash_cycles(parts, tmp_path / "session", list(rng.uniform(0.0, 0.5, 10)))
    with capsys.disabled():
        print("\ncrash cycles:", json.dumps(records))
    assert records[-1]["loaded"] >= 10


def _masks(shape=(24, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    a = (rng.random(shape) < 0.3).astype(np.uint8)
    return a, 1 - a


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".dcm"])
def test_sigkill_during_mask_export_leaves_a_whole_file(tmp_path, geometry, ext):
    if ext == ".dcm":
        pytest.importorskip("highdicom")
        from test_reliability_dicomseg import write_series

        from iunet_nb.io.dicomseg import read_dicom_seg, write_dicom_seg
        from iunet_nb.io.images import read_image

        write_series(tmp_path / "CT", np.zeros((9, 14, 12), np.int16))
        ct = read_image(tmp_path / "CT")
        a, b = _masks(ct.shape)

        def write(m, path):
            return write_dicom_seg(Volume(m, ct.geometry), ct, path)

        def read(path):
            return read_dicom_seg(path, ct).array
    else:
        a, b = _masks()

        def write(m, path):
            return write_mask(Volume(m, geometry), path)

        def read(path):
            return read_mask(path).array
    path = tmp_path / f"mask{ext}"
    rng = np.random.default_rng(11)
    seen = set()
    for _ in range(3):
        def work(report):
            k = 0
            while True:
                write(a if k % 2 == 0 else b, path)
                k += 1
                report(k)

        pid, r = _fork_worker(work)
        _kill_after(pid, r, 1, float(rng.uniform(0.0, 0.2)))
        back = read(path)
        is_a, is_b = np.array_equal(back, a), np.array_equal(back, b)
        assert is_a or is_b
        seen.add("a" if is_a else "b")
        for p in tmp_path.glob(".mask*"):
            p.unlink()  # temporaries of the interrupted write (never the file itself)
    assert seen
