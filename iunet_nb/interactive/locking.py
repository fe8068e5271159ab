"""A lock on a session folder: one process writes it at a time.

Two people on one JupyterHub, or one person with the same case open in two notebooks, must
not write one session folder at once (autosaves would interleave and each would delete the
other's files). :class:`FolderLock` creates ``<folder>/session.lock`` holding who owns it
(host, pid, user, time) and keeps an exclusive ``flock`` on it while held:

* a second **process** gets a :class:`~iunet_nb.errors.SessionError` naming the holder and
  what to do (close it there, or break a lock whose holder is gone with :func:`break_lock`);
* a lock left by a process that **died** (kernel killed, machine rebooted) is taken over with
  a warning: the kernel drops a dead process's ``flock``; where ``flock`` is not available
  (Windows, some network file systems) the holder's pid is checked instead (same host: the
  pid no longer runs, or runs a newer process started after the lock was taken);
* within **one process** too there is one writer: a second ``FolderLock`` on a folder this
  process holds (e.g. a notebook's load cell run twice, so two ``Session`` objects would
  autosave one folder and each one's clean-up would delete the other's files) gets a
  :class:`~iunet_nb.errors.SessionError` saying to close the first one. One object shown in
  two browser tabs is one writer; :meth:`FolderLock.io` serialises its threads' writes.

Example:
    >>> with FolderLock("sessions/case07"):          # doctest: +SKIP
    ...     ...                                       # write the folder
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import getpass
import json
import logging
import os
import socket
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from ..errors import SessionError

try:  # POSIX
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - Windows
    _fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "FolderLock", "LockInfo", "break_lock", "read_lock"]

logger = logging.getLogger(__name__)

#: Name of the lock file inside a locked folder.
LOCK_NAME = "session.lock"


@dataclass(frozen=True)
class LockInfo:
    """Who holds a folder lock.

    Attributes:
        host: host name of the holder's machine.
        pid: the holder's process id on that host.
        user: the holder's login name.
        time: when the lock was taken (ISO 8601, UTC).
        start_ticks: the holder process's start time (``/proc/<pid>/stat`` field 22), or
            None where unknown; tells a reused pid from the original process.
    """

    host: str
    pid: int
    user: str
    time: str
    start_ticks: int | None = None

    def describe(self) -> str:
        """``"user@host, pid N, since TIME"``."""
        return f"{self.user}@{self.host}, pid {self.pid}, since {self.time}"

    @classmethod
    def mine(cls) -> LockInfo:
        """The info of the current process, now."""
        try:
            user = getpass.getuser()
        except Exception:  # noqa: BLE001 - no user name in some containers
            user = "unknown"
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return cls(socket.gethostname(), os.getpid(), user, now, _start_ticks(os.getpid()))


def _start_ticks(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: split after it
        return int(text[text.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def _process_state(pid: int) -> str | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return text[text.rindex(")") + 2:].split()[0]
    except (OSError, ValueError, IndexError):
        return None


def _holder_alive(info: LockInfo) -> bool | None:
    """True/False when the holder is known to run/not run on this host; None: cannot tell."""
    if info.host != socket.gethostname():
        return None
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # runs, as another user
    except OSError:
        return None
    if _process_state(info.pid) in ("Z", "X"):
        return False  # a zombie: dead, not yet reaped by its parent
    ticks = _start_ticks(info.pid)
    # a different start time: the pid was reused by a newer process
    return info.start_ticks is None or ticks is None or ticks == info.start_ticks


def _same_process(a: LockInfo, b: LockInfo) -> bool:
    return (a.host, a.pid, a.start_ticks) == (b.host, b.pid, b.start_ticks)


def _parse(text: str) -> LockInfo | None:
    try:
        d = json.loads(text)
        return LockInfo(str(d["host"]), int(d["pid"]), str(d.get("user", "unknown")),
                        str(d.get("time", "?")), d.get("start_ticks"))
    except (ValueError, KeyError, TypeError):
        return None


def read_lock(folder: str | os.PathLike) -> LockInfo | None:
    """Who holds the lock of ``folder`` according to its lock file (None: no lock file)."""
    path = Path(folder) / LOCK_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    info = _parse(text)
    return info if info is not None else LockInfo("?", -1, "?", "?")


def break_lock(folder: str | os.PathLike) -> LockInfo | None:
    """Delete the lock file of ``folder`` whoever holds it; returns the holder it named.

    Only for a lock whose holder is gone but cannot be checked from here (another machine
    that crashed). Breaking the lock of a live session lets two writers corrupt the folder.
    """
    info = read_lock(folder)
    with contextlib.suppress(FileNotFoundError):
        (Path(folder) / LOCK_NAME).unlink()
    if info is not None:
        logger.warning("broke the lock of %s held by %s", folder, info.describe())
    return info


class _Held:
    """A lock this process holds: its file descriptor, users and the write lock."""

    def __init__(self, fd: int | None, info: LockInfo, path: Path) -> None:
        self.fd, self.info, self.path = fd, info, path
        self.count = 0
        self.io = threading.RLock()


_REGISTRY: dict[str, _Held] = {}
_REGISTRY_LOCK = threading.Lock()


def _forget_in_child() -> None:
    # A forked child is another process: it holds none of its parent's locks.
    for held in _REGISTRY.values():
        if held.fd is not None:
            with contextlib.suppress(OSError):
                os.close(held.fd)
    _REGISTRY.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


class FolderLock:
    """Hold the lock of one folder until :meth:`release` (or garbage collection).

    Args:
        folder: the folder (must exist).
        what: what the folder is, for messages (``"session"``).

    Raises:
        SessionError: another live process holds the lock (the message names its host, pid,
            user and start time, and what to do); another object of this process holds it
            (one that is no longer referenced anywhere is collected first and its lock
            released); or the lock file cannot be created.

    Thread-safe. Not reentrant: one holder per folder, in this process as in any other.
    """

    def __init__(self, folder: str | os.PathLike, *, what: str = "session") -> None:
        self.folder = Path(folder)
        self.what = what
        if not self.folder.is_dir():
            raise SessionError(f"cannot lock {self.folder}: it is not a folder")
        self._key = os.path.realpath(self.folder)
        with _REGISTRY_LOCK:
            taken = self._key in _REGISTRY
        if taken:  # a holder nobody references any more releases the lock when collected
            gc.collect()
        with _REGISTRY_LOCK:
            if self._key in _REGISTRY:
                raise SessionError(
                    f"the {what} in {self.folder} is already open in this process (another "
                    f"{what.capitalize()} object; a cell run twice?); two writers would delete "
                    f"each other's files. Close the other one first (its close()), or use the "
                    f"object you already have")
            held = self._acquire()
            _REGISTRY[self._key] = held
            held.count += 1
        self._held: _Held | None = held
        self._finalizer = weakref.finalize(self, FolderLock._drop, self._key, held)

    # -- public ----------------------------------------------------------------------------
    @property
    def held(self) -> bool:
        """True until :meth:`release`."""
        return self._held is not None

    @property
    def info(self) -> LockInfo:
        """This process's lock info."""
        if self._held is None:
            raise SessionError(f"the lock of {self.folder} was released")
        return self._held.info

    @contextlib.contextmanager
    def io(self) -> Iterator[None]:
        """Serialise the writes of the holder's threads to the folder."""
        if self._held is None:
            raise SessionError(f"the {self.what} in {self.folder} is closed (its lock was "
                               "released); reopen it to write")
        with self._held.io:
            yield

    def release(self) -> None:
        """Give the lock up and remove the lock file (idempotent)."""
        if self._held is not None:
            self._held = None
            self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- internals ---------------------------------------------------------------------------
    @staticmethod
    def _drop(key: str, held: _Held) -> None:
        with _REGISTRY_LOCK:
            held.count -= 1
            if held.count > 0:
                return
            _REGISTRY.pop(key, None)
            # remove the file first (while still holding the flock), then let go
            with contextlib.suppress(OSError):
                if read_lock(held.path.parent) == held.info:
                    held.path.unlink()
            if held.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(held.fd)
            logger.debug("released the lock of %s", held.path.parent)

    def _refuse(self, info: LockInfo | None) -> SessionError:
        who = info.describe() if info is not None else "an unknown process"
        return SessionError(
            f"the {self.what} in {self.folder} is open elsewhere ({who}); two writers would "
            f"corrupt it. Close it there first (Session.close(), or shut that kernel down), or "
            f"open a copy of the folder. If that process is gone for good (a crashed machine), "
            f"break the lock with iunet_nb.interactive.locking.break_lock({str(self.folder)!r})")

    def _acquire(self) -> _Held:
        path = self.folder / LOCK_NAME
        mine = LockInfo.mine()
        for _ in range(20):  # retried only when the file was replaced under us
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise SessionError(f"cannot create the lock file {path} ({exc}); check that "
                                   "the folder is writable") from exc
            try:
                locked = self._flock(fd)
                if locked is False:
                    raise self._refuse(read_lock(self.folder))
                if os.fstat(fd).st_ino != os.stat(path).st_ino:
                    os.close(fd)  # released and removed by its holder meanwhile: start over
                    continue
                previous = _parse(os.pread(fd, 65536, 0).decode("utf-8", "replace"))
                if previous is not None and not _same_process(previous, mine):
                    alive = _holder_alive(previous)
                    # a live holder on this host without the flock: flock does not work on
                    # this file system; without flock the pid check is all there is
                    if alive or (locked is None and alive is None):
                        raise self._refuse(previous)
                    logger.warning("took over the stale lock of %s %s left by %s (that "
                                   "process is gone; its last autosave is intact)", self.what,
                                   self.folder, previous.describe())
                data = (json.dumps(mine.__dict__, sort_keys=True) + "\n").encode("utf-8")
                os.ftruncate(fd, 0)
                os.pwrite(fd, data, 0)
                os.fsync(fd)
            except FileNotFoundError:
                os.close(fd)  # removed between open and stat: start over
                continue
            except OSError as exc:  # e.g. a full disk while writing who holds it
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise SessionError(f"cannot write the lock file {path} ({exc.strerror or exc}); "
                                   "free disk space or check that the folder is writable") from exc
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
            logger.debug("locked %s (%s)", self.folder, mine.describe())
            return _Held(fd, mine, path)
        raise SessionError(f"could not lock {self.folder}: its lock file keeps changing; "
                           "another process is opening and closing it; try again")

    @staticmethod
    def _flock(fd: int) -> bool | None:
        """True: got the exclusive flock; False: someone holds it; None: flock unavailable."""
        if _fcntl is None:
            return None
        try:
            _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:  # ENOLCK etc.: a file system without locks
            return None
        return True

    def __repr__(self) -> str:
        state = "held" if self.held else "released"
        return f"FolderLock({str(self.folder)!r}, {state})"
