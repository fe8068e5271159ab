"""Session folder lock: a second process is refused with the holder named; dead holders are
taken over; one process may share; a closed session stops writing."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket

import numpy as np
import pytest
import torch

from iunet_nb.errors import SessionError
from iunet_nb.interactive import locking
from iunet_nb.interactive.locking import LOCK_NAME, FolderLock, LockInfo, break_lock, read_lock
from iunet_nb.interactive.session import RefineConfig, Session
from iunet_nb.model.checkpoint import ModelCard
from iunet_nb.model.nets import NetConfig, build_network
from iunet_nb.model.preprocess import Box, PreprocessConfig

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")


def _fork(child) -> tuple[int, int]:
    """Run ``child()`` in a forked process; returns (pid, read end of its 'ready' pipe)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            os.close(r)
            child()
            os.write(w, b"R")
            while True:
                signal.pause()
        except BaseException as exc:  # noqa: BLE001
            os.write(w, f"E{exc}".encode()[:500])
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _wait_ready(r: int) -> None:
    msg = os.read(r, 600)
    assert msg == b"R", msg.decode(errors="replace")


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def test_second_process_refused_then_dead_holder_taken_over(tmp_path, caplog):
    folder = tmp_path / "s"
    folder.mkdir()
    holder: list[FolderLock] = []
    pid, r = _fork(lambda: holder.append(FolderLock(folder)))
    try:
        _wait_ready(r)
        info = read_lock(folder)
        assert info is not None and info.pid == pid and info.host == socket.gethostname()
        with pytest.raises(SessionError, match=rf"open elsewhere \(.*@{socket.gethostname()}, "
                           rf"pid {pid}, since {re.escape(info.time)}\).*Close it there first"):
            FolderLock(folder)
    finally:
        _kill(pid)
    with caplog.at_level(logging.WARNING, logger="iunet_nb.interactive.locking"):
        lock = FolderLock(folder)
    assert f"pid {pid}" in caplog.text and "took over the stale lock" in caplog.text
    assert read_lock(folder).pid == os.getpid()
    lock.release()
    assert not (folder / LOCK_NAME).exists()


def test_without_flock_the_pid_decides(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(FolderLock, "_flock", staticmethod(lambda fd: None))
    folder = tmp_path / "s"
    folder.mkdir()
    holder: list[FolderLock] = []
    pid, r = _fork(lambda: holder.append(FolderLock(folder)))
    try:
        _wait_ready(r)
        with pytest.raises(SessionError, match=f"pid {pid}"):
            FolderLock(folder)
    finally:
        _kill(pid)
    with caplog.at_level(logging.WARNING, logger="iunet_nb.interactive.locking"):
        FolderLock(folder).release()
    assert "took over the stale lock" in caplog.text


def _plant(folder, **kw) -> None:
    info = {**LockInfo.mine().__dict__, **kw}
    (folder / LOCK_NAME).write_text(json.dumps(info))


def test_reused_pid_and_other_host(tmp_path, monkeypatch):
    monkeypatch.setattr(FolderLock, "_flock", staticmethod(lambda fd: None))
    folder = tmp_path / "s"
    folder.mkdir()
    parent = os.getppid()  # a live process that is not us
    real_ticks = locking._start_ticks(parent)
    if real_ticks is None:
        pytest.skip("no /proc here")
    _plant(folder, pid=parent, start_ticks=real_ticks)       # the live holder itself
    with pytest.raises(SessionError, match=f"pid {parent}"):
        FolderLock(folder)
    _plant(folder, pid=parent, start_ticks=real_ticks + 1)   # same pid, a newer process
    FolderLock(folder).release()
    _plant(folder, host="another-node.example", pid=parent)   # cannot be checked from here
    with pytest.raises(SessionError, match=r"another-node\.example.*break_lock\("):
        FolderLock(folder)
    assert break_lock(folder).host == "another-node.example"
    assert read_lock(folder) is None
    FolderLock(folder).release()


def test_one_process_holds_once_and_release_removes_the_file(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    a = FolderLock(folder)
    with pytest.raises(SessionError, match=r"already open in this process .*Close the other "
                                           r"one first"):
        FolderLock(folder)
    with pytest.raises(SessionError, match="already open in this process"):
        FolderLock(tmp_path / "." / "s")  # the same folder by another spelling
    assert a.held and (folder / LOCK_NAME).exists()
    with a.io():
        pass
    a.release()
    a.release()  # idempotent
    assert not a.held and not (folder / LOCK_NAME).exists()
    with pytest.raises(SessionError, match="closed"), a.io():
        pass
    b = FolderLock(folder)  # free again
    b.release()
    assert not (folder / LOCK_NAME).exists()
    with pytest.raises(SessionError, match="not a folder"):
        FolderLock(tmp_path / "missing")


def test_garbage_collected_lock_is_released(tmp_path):
    import gc

    folder = tmp_path / "s"
    folder.mkdir()
    FolderLock(folder)  # dropped at once
    gc.collect()
    assert not (folder / LOCK_NAME).exists()


# ----------------------------------------------------------------------------- Session
@pytest.fixture
def parts(ellipsoid_case):
    ct, ref = ellipsoid_case
    card = ModelCard(net=NetConfig(base_channels=4), preprocess=PreprocessConfig(size_zyx=(8, 16, 16)))
    torch.manual_seed(0)
    model = build_network(card.net).eval()
    return ct, model, card, Box.from_mask(ref.array), RefineConfig(device="cpu", iterations=2)


def test_session_in_another_process_is_refused_then_resumed(parts, tmp_path, caplog):
    ct, model, card, box, cfg = parts
    folder = tmp_path / "case07"
    holder: list[Session] = []

    def child() -> None:
        s = Session(ct, model, card, box, config=cfg, folder=folder, case_id="case07")
        s.predict()
        s.paint(1, [(16, 16)], view="axial", slice_index=12, radius_vox=2)
        holder.append(s)

    pid, r = _fork(child)
    try:
        _wait_ready(r)
        with pytest.raises(SessionError, match=rf"session in .*case07 is open elsewhere .*pid "
                                               rf"{pid}, since .*Session\.close\(\)"):
            Session.load(folder, ct, model, card)
        with pytest.raises(SessionError, match=f"pid {pid}"):
            Session(ct, model, card, box, config=cfg, folder=folder)
        files = sorted(p.name for p in folder.iterdir())
    finally:
        _kill(pid)  # the kernel dies without closing
    assert sorted(p.name for p in folder.iterdir()) == files  # the refusals wrote nothing
    with caplog.at_level(logging.WARNING):
        s = Session.load(folder, ct, model, card)
    assert "took over the stale lock" in caplog.text
    assert s.history == ["predict", "paint"] and s.mask.array[12, 16, 16] == 1
    assert read_lock(folder).pid == os.getpid()
    s.close()
    assert not (folder / LOCK_NAME).exists()
    with pytest.raises(SessionError, match=r"closed.*Session\.load"):
        s.paint(0, [(16, 16)], view="axial", slice_index=12)
    # a failed open leaves no lock behind
    with pytest.raises(SessionError, match="already holds a session"):
        Session(ct, model, card, box, config=cfg, folder=folder)
    assert not (folder / LOCK_NAME).exists()
    with Session.load(folder, ct, model, card) as again:
        assert np.array_equal(again.mask.array, s.mask.array)
    assert not (folder / LOCK_NAME).exists()


def test_lock_file_names_the_holder(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    with FolderLock(folder) as lock:
        data = json.loads((folder / LOCK_NAME).read_text())
        assert data["pid"] == os.getpid() and data["host"] == socket.gethostname()
        assert data["time"] == lock.info.time and "user" in data
        assert repr(lock).endswith("held)")
    assert repr(lock).endswith("released)")
