"""Data-parallel training over several processes: torchrun, DistributedDataParallel, synced BN.

Launch one process per GPU (or a few CPU processes) with PyTorch's own launcher::

    torchrun --nproc_per_node 4 -m iunet_nb.cli train --data ... --out runs/x

``torchrun`` gives each process ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`distributed` reads them, starts the process group (``nccl`` when the
process trains on CUDA, ``gloo`` on the CPU) and puts each process on the GPU
``cuda:LOCAL_RANK``. Without those variables (or with ``WORLD_SIZE=1``) nothing is started
and the context describes a single process, so code written against it runs unchanged in a
notebook.

Batch normalisation under data parallelism normalises every process's slice of the batch with
that slice's statistics unless it is synchronised. :func:`convert_sync_batchnorm` swaps every
batch-norm layer for :class:`torch.nn.SyncBatchNorm` (CUDA), or, on the CPU where PyTorch's
SyncBatchNorm refuses to run, for a small batch norm that computes the same global statistics
with two differentiable ``all_reduce`` calls, so an N-process run normalises exactly as one process
with the whole batch does.
"""

from __future__ import annotations

import datetime
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import ConfigError
from .checkpoint import select_device

__all__ = ["DistContext", "check_divisible", "convert_sync_batchnorm", "distributed", "get_rank",
           "get_world_size", "init_distributed", "is_main", "teardown_distributed"]

logger = logging.getLogger(__name__)

_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
_BACKENDS = ("gloo", "nccl")
_owned_group = False  # True while a process group started by init_distributed is alive


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly single-process) training job.

    Args:
        rank: global rank, 0 .. world_size - 1.
        world_size: number of processes (1: no process group).
        local_rank: rank on this node (picks the GPU).
        backend: ``"nccl"``, ``"gloo"`` or ``""`` for a single process.
        device: the device this process computes on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ConfigError(f"DistContext: need world_size >= 1, 0 <= rank < world_size and "
                              f"local_rank >= 0, got {self.world_size}, {self.rank}, "
                              f"{self.local_rank}")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files, logs progress and shows progress bars."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """More than one process takes part."""
        return self.world_size > 1

    def describe(self) -> str:
        """One line for model cards: ``"DistributedDataParallel, 2 processes, gloo"``."""
        if not self.is_distributed:
            return "single process"
        return f"DistributedDataParallel, {self.world_size} processes, {self.backend}"

    def shard(self, batch: Tensor) -> Tensor:
        """This process's contiguous share of a global batch (first axis).

        Args:
            batch: ``(B, ...)`` with ``B`` divisible by ``world_size``.

        Returns:
            rows ``rank * B / world_size`` up to ``(rank + 1) * B / world_size``.

        Raises:
            ConfigError: ``B`` is not divisible by the world size.
        """
        n = batch.shape[0]
        check_divisible(n, self.world_size)
        per = n // self.world_size
        return batch[self.rank * per:(self.rank + 1) * per]

    def mean(self, value: Tensor) -> float:
        """The mean of a scalar over the processes (the value itself for one process)."""
        if not self.is_distributed:
            return float(value)
        buf = value.detach().reshape(1).to(self.device, torch.float64)
        dist.all_reduce(buf)
        return float(buf) / self.world_size

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process (picklable objects; ``obj`` itself for one)."""
        if not self.is_distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait until every process gets here (no-op for one process)."""
        if self.is_distributed:
            dist.barrier()


def check_divisible(batch_size: int, world_size: int) -> None:
    """Raise :class:`ConfigError` unless a global batch splits evenly over the processes."""
    if batch_size % world_size:
        raise ConfigError(
            f"the batch size {batch_size} cannot be split evenly over {world_size} processes: "
            "each process trains on batch_size / world_size samples of every global batch; "
            f"use a batch size that is a multiple of {world_size} or start a number of "
            "processes that divides it (torchrun --nproc_per_node / --nnodes)")


def _env_world() -> tuple[int, int, int] | None:
    """``(world_size, rank, local_rank)`` from torchrun's environment, or None when absent."""
    present = [k for k in _ENV if k in os.environ]
    if not present:
        return None
    if len(present) < len(_ENV):
        missing = [k for k in _ENV if k not in os.environ]
        raise ConfigError(f"distributed launch: {present} are set but {missing} are not; launch "
                          "with torchrun (which sets them all) or unset them for one process")
    try:
        ws, rank, local = (int(os.environ[k]) for k in _ENV)
    except ValueError:
        raise ConfigError("distributed launch: WORLD_SIZE, RANK and LOCAL_RANK must be "
                          f"integers, got {[os.environ[k] for k in _ENV]}") from None
    if ws < 1 or not 0 <= rank < ws or local < 0:
        raise ConfigError(f"distributed launch: need WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE "
                          f"and LOCAL_RANK >= 0, got {ws}, {rank}, {local}")
    return ws, rank, local


def get_world_size() -> int:
    """Processes in this job: the live process group's size, else ``WORLD_SIZE``, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    env = _env_world()
    return env[0] if env else 1


def get_rank() -> int:
    """This process's global rank: the live process group's, else ``RANK``, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    env = _env_world()
    return env[1] if env else 0


def is_main() -> bool:
    """True on rank 0 (and in a single process): the process that writes files."""
    return get_rank() == 0


def init_distributed(device: str | torch.device | None = None, *, backend: str | None = None,
                     timeout_s: float = 1800.0) -> DistContext:
    """Join the torchrun job described by the environment, or describe a single process.

    Args:
        device: ``"cpu"``, ``"cuda"`` or None (CUDA when available). Under torchrun the
            device type comes from here and the GPU index from ``LOCAL_RANK``.
        backend: ``"nccl"`` or ``"gloo"``; None: nccl on CUDA, gloo on the CPU.
        timeout_s: how long a collective may wait for the other processes.

    Returns:
        The :class:`DistContext`. A process group that was already started (by the caller)
        is used as it is.

    Raises:
        ConfigError: inconsistent environment variables, an unknown backend, or more
            processes on a node than it has GPUs.
    """
    global _owned_group
    base = select_device(device)
    if dist.is_available() and dist.is_initialized():
        env = _env_world()
        local = env[2] if env else 0
        dev = _rank_device(base, local)
        return DistContext(dist.get_rank(), dist.get_world_size(), local,
                           str(dist.get_backend()), dev)
    env = _env_world()
    if env is None or env[0] == 1:
        return DistContext(device=base)
    ws, rank, local = env
    if not dist.is_available():  # pragma: no cover - every official build has it
        raise ConfigError("this PyTorch build has no torch.distributed; train in one process")
    dev = _rank_device(base, local)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if backend not in _BACKENDS:
        raise ConfigError(f"distributed backend must be one of {list(_BACKENDS)}, got {backend!r}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, init_method="env://", world_size=ws, rank=rank,
                            timeout=datetime.timedelta(seconds=timeout_s))
    _owned_group = True
    logger.info("rank %d of %d (local rank %d) on %s, backend %s", rank, ws, local, dev, backend)
    return DistContext(rank, ws, local, backend, dev)


def _rank_device(base: torch.device, local_rank: int) -> torch.device:
    if base.type != "cuda":
        return base
    n = torch.cuda.device_count()
    if local_rank >= n:
        raise ConfigError(f"LOCAL_RANK is {local_rank} but this node has {n} CUDA device(s); "
                          f"start at most {n} processes per node (torchrun --nproc_per_node)")
    return torch.device("cuda", local_rank)


def teardown_distributed() -> None:
    """Destroy the process group :func:`init_distributed` started (nothing else)."""
    global _owned_group
    if _owned_group and dist.is_initialized():
        dist.destroy_process_group()
    _owned_group = False


@contextmanager
def distributed(device: str | torch.device | None = None, *, backend: str | None = None,
                timeout_s: float = 1800.0) -> Iterator[DistContext]:
    """:func:`init_distributed` on entry, :func:`teardown_distributed` on exit (if it started one).

    Nested uses share the outer process group, which only the outermost exit destroys.

    Example:
        >>> with distributed("cpu") as ctx:   # no torchrun variables: one process
        ...     (ctx.world_size, ctx.is_main)
        (1, True)
    """
    owned_before = _owned_group
    ctx = init_distributed(device, backend=backend, timeout_s=timeout_s)
    try:
        yield ctx
    finally:
        if not owned_before:
            teardown_distributed()


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; the gradient of each input is the sum of the output gradients.

    (``torch.distributed.nn.functional.all_reduce`` does the same but is deprecated.)
    """

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are the global batch's, on the CPU (gloo).

    What :class:`torch.nn.SyncBatchNorm` does on GPUs (it refuses CPU tensors, and DDP refuses
    it in CPU modules). Mean and biased variance are computed in two passes like
    :func:`torch.nn.functional.batch_norm`, each with one differentiable ``all_reduce``
    (:class:`_AllReduceSum`, whose backward all-reduces the gradients), so the backward pass
    is that of batch norm over the global batch. Running statistics are updated as BatchNorm
    does (unbiased variance). In eval mode, or without a process group of more than one
    process, it is plain batch norm.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        if (not self.training or not dist.is_initialized() or dist.get_world_size() <= 1
                or input.device.type != "cpu"):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.ndim)]
        shape = (1, -1) + (1,) * (input.ndim - 2)
        count = input.new_tensor([input.numel() // input.shape[1]])
        sums = _AllReduceSum.apply(torch.cat([input.sum(dims), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        centred = input - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (self.momentum if self.momentum is not None
                     else 1.0 / float(self.num_batches_tracked))
                n_f = float(n)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n_f / max(n_f - 1, 1)),
                                                  alpha=m)
        return out


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every batch-norm layer by a synchronised one (parameters and buffers shared).

    Args:
        module: a network; it is modified in place where possible and returned.
        device: the training device: CUDA gets :class:`torch.nn.SyncBatchNorm`, the CPU a
            gloo-capable equivalent. State-dict keys do not change, so checkpoints load into
            the plain network.

    Returns:
        The converted module (``module`` itself if it has no batch norm).
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        out = _CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out
