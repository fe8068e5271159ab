"""Memory guard: estimate what an operation needs and refuse early, with the numbers.

Opening a 2000-slice whole-body CT on a 4 GiB JupyterHub pod should not kill the kernel
(and the annotator's unsaved state) with an out-of-memory signal. Before the big
allocations (reading an image, opening a session, preprocessing a crop) the engine
estimates the bytes it will need and compares them with what the machine can give:

* ``MemAvailable`` from ``/proc/meminfo``;
* the container's limit (cgroup v2 ``memory.max - memory.current``, or v1
  ``memory.limit_in_bytes - memory.usage_in_bytes``), as on JupyterHub / Kubernetes;
* the environment variable ``IUNET_NB_MEMORY_LIMIT`` (e.g. ``"6GiB"``, ``"500M"``,
  ``"2e9"``), a cap an administrator can set.

When the estimate exceeds :data:`DEFAULT_FRACTION` of the smallest of these,
:func:`check_memory` raises :class:`~iunet_nb.errors.InputError` giving the estimate, what
is available and what to do. Where nothing can be measured (no ``/proc``) it lets the
operation run.

The estimates are upper bounds of the peak *extra* memory, per voxel, from the code paths
(``benchmarks/bench_soak.py`` and ``tests/test_reliability_memory.py`` measure them).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

from .errors import ConfigError, InputError

__all__ = [
    "DEFAULT_FRACTION",
    "ENV_LIMIT",
    "available_bytes",
    "check_memory",
    "estimate_preprocess_bytes",
    "estimate_read_bytes",
    "estimate_session_bytes",
    "format_bytes",
    "parse_bytes",
    "peak_rss_bytes",
    "rss_bytes",
]

logger = logging.getLogger(__name__)

#: Refuse when an operation needs more than this fraction of the available memory.
DEFAULT_FRACTION = 0.8
#: Environment variable capping the memory iunet_nb assumes it may use.
ENV_LIMIT = "IUNET_NB_MEMORY_LIMIT"

_UNITS = {"": 1, "b": 1, "k": 10 ** 3, "kb": 10 ** 3, "m": 10 ** 6, "mb": 10 ** 6,
          "g": 10 ** 9, "gb": 10 ** 9, "t": 10 ** 12, "tb": 10 ** 12, "kib": 2 ** 10,
          "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*")
_HINT = ("crop the CT to the region of interest (e.g. 3D Slicer's Crop Volume) or downsample "
         "it, close other sessions and notebooks, or use a machine with more memory")


def parse_bytes(text: str) -> int:
    """``"6GiB"`` -> 6442450944; units B, k/kB, M/MB, G/GB, T/TB (powers of 10), KiB..TiB.

    Raises:
        ConfigError: not a non-negative size.
    """
    m = _SIZE.fullmatch(str(text))
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise ConfigError(f"{text!r} is not a memory size; write e.g. '6GiB', '500MB' or "
                          "'2e9' (bytes)")
    return int(float(m.group(1)) * _UNITS[unit])


def format_bytes(n: float) -> str:
    """``1536 * 2**20`` -> ``'1.5 GiB'`` (binary units, 3 significant digits)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is None:  # cgroup v1
        limit = _read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes")
        used = _read_int("/sys/fs/cgroup/memory/memory.usage_in_bytes")
    if limit is None or limit >= 2 ** 60:  # "max" or v1's "no limit" sentinel
        return None
    return max(limit - (used or 0), 0)


def available_bytes() -> int | None:
    """Bytes this process may still allocate: the least of ``MemAvailable``, the container
    room and ``IUNET_NB_MEMORY_LIMIT`` minus this process's RSS; None when unknown.

    Raises:
        ConfigError: ``IUNET_NB_MEMORY_LIMIT`` is set but not a size.
    """
    candidates = [v for v in (_meminfo("MemAvailable"), _cgroup_room()) if v is not None]
    env = os.environ.get(ENV_LIMIT)
    if env:
        cap = parse_bytes(env)
        candidates.append(max(cap - (rss_bytes() or 0), 0))
    return min(candidates) if candidates else None


def _status(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_bytes() -> int | None:
    """Resident set size of this process now (``VmRSS``), or None where unknown."""
    return _status("VmRSS")


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process (``VmHWM``; ``ru_maxrss`` elsewhere)."""
    peak = _status("VmHWM")
    if peak is None:
        try:
            import resource
        except ImportError:  # pragma: no cover - Windows
            return None
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return peak


def _voxels(shape_zyx: Sequence[int]) -> int:
    try:
        dims = [int(s) for s in shape_zyx]
    except (TypeError, ValueError) as exc:
        raise InputError(f"shape must be integers, got {shape_zyx!r}") from exc
    if any(d < 0 for d in dims):
        raise InputError(f"shape must be non-negative, got {tuple(dims)}")
    return math.prod(dims)


def estimate_read_bytes(shape_zyx: Sequence[int], itemsize: int) -> int:
    """Peak extra bytes of :func:`iunet_nb.io.images.read_image` for an image of ``shape_zyx``.

    SimpleITK's buffer and NumPy's copy (``itemsize`` each), a possible float32 conversion
    (4 bytes) and boolean temporaries of the finite-value and integer checks (2 bytes).
    """
    return _voxels(shape_zyx) * (2 * int(itemsize) + 4 + 2)


def estimate_session_bytes(shape_zyx: Sequence[int]) -> int:
    """Peak extra bytes of a :class:`~iunet_nb.interactive.session.Session` on a CT of ``shape_zyx``.

    The mask and scribble maps (uint8), the new mask of an action, the replayed scribble
    map, the copy handed to the caller and a boolean difference map: 6 bytes per voxel.
    """
    return _voxels(shape_zyx) * 6


def estimate_preprocess_bytes(crop_shape_zyx: Sequence[int],
                              working_shape_zyx: Sequence[int] = (24, 64, 64)) -> int:
    """Peak extra bytes of preprocessing a crop and restoring its probabilities.

    float32 padded crop, its smoothed copy, the finite-check temporaries and the restored
    probability map at crop resolution (about 14 bytes per crop voxel), the edge snapping's
    smoothed HU and masks (:func:`iunet_nb.interactive.edges.snap_to_edges`, about 10 more), plus a few
    float32 working-grid arrays.
    """
    return _voxels(crop_shape_zyx) * 24 + _voxels(working_shape_zyx) * 16


def check_memory(needed_bytes: int, what: str, *, hint: str = _HINT,
                 available: int | None = None, fraction: float = DEFAULT_FRACTION) -> None:
    """Raise before an operation that would need more memory than the machine can give.

    Args:
        needed_bytes: the estimate (one of the ``estimate_*`` functions).
        what: the operation, for the message (``"reading ct.nii.gz (512 x 512 x 2000)"``).
        hint: what to do instead; the default suggests cropping or downsampling.
        available: bytes available; None measures them with :func:`available_bytes`.
        fraction: refuse above this fraction of ``available`` (0 < fraction <= 1).

    Raises:
        InputError: the estimate exceeds ``fraction * available``; the message gives both
            numbers and ``hint``.
        ConfigError: ``fraction`` out of range.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction!r}")
    if available is None:
        available = available_bytes()
    if available is None:
        logger.debug("memory guard: cannot measure available memory; letting %s run", what)
        return
    if needed_bytes > fraction * available:
        raise InputError(
            f"{what} needs about {format_bytes(needed_bytes)} of memory, but only "
            f"{format_bytes(available)} is available; refusing rather than crashing the "
            f"kernel. What to do: {hint} (the limit comes from the machine, its container, or "
            f"{ENV_LIMIT})")
    logger.debug("memory guard: %s needs ~%s of %s available", what,
                 format_bytes(needed_bytes), format_bytes(available))
