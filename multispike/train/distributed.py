"""Plain ``torch.distributed`` (DDP) plumbing: the same command runs alone or under ``torchrun``.

``torchrun --nproc_per_node=N -m multispike train ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`init_distributed` reads them (nanoGPT/timm style) and initialises the ``env://`` process group with
``gloo`` on CPU and ``nccl`` on CUDA. Without those variables it returns a single-process
:class:`DistInfo` and nothing else changes.

Conventions (ecosystem.md §6):

* Rank 0 alone logs, shows progress bars and writes checkpoints (:attr:`DistInfo.is_primary`).
* ``batch_size`` is per process; the global batch is ``batch_size · world_size``. DDP averages gradients, so
  with a mean-reduced loss one step equals a single-process step on the global batch.
* Neuron state lives in plain attributes, never in buffers, so DDP never broadcasts it; models are wrapped
  with ``broadcast_buffers=False`` anyway, so BatchNorm running statistics are not overwritten by rank 0's at
  every forward either. Each rank's BN statistics therefore drift apart during an epoch; at the end of every
  epoch :func:`sync_bn_stats` averages them (``dist_bn="reduce"``, timm's default) or copies rank 0's
  (``"broadcast"``) so evaluation and checkpoints see one consistent set. Batch statistics during training
  are per rank (``B`` samples times T for a multi-step net) unless ``sync_bn`` converts BatchNorm to
  ``SyncBatchNorm`` (CUDA only - PyTorch's SyncBatchNorm rejects CPU tensors).
* Each rank seeds its generators with ``seed + rank`` (different dropout masks per rank); the data order is
  the loader's business (it shards one ``(seed, epoch)`` permutation by rank).
* A script of your own that trains under ``torchrun`` should end with :func:`exit_process` (the CLI does): with
  torch's gloo group still alive after DDP, interpreter finalization can abort a rank after a finished run.
"""
from __future__ import annotations

import atexit
import datetime
import logging
import os
import random
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .._errors import ParameterError

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "exit_process", "seed_everything", "wrap_model",
           "unwrap_model", "all_reduce_sum", "all_gather_object", "broadcast_object", "sync_bn_stats", "barrier"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, its ``local_rank``, device and backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_primary(self) -> bool:
        """True on rank 0: the one process that logs and writes files."""
        return self.rank == 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={value!r} must be an integer (set by torchrun)") from exc


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ParameterError(f"{{device}} {device!r} requested but CUDA is not available; use {{device}} cpu",
                                 "device")
        if device == "cuda":
            return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        return torch.device(device)
    if device != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {device!r}")
    return torch.device("cpu")


_group_started = False   # init_distributed started a process group in this process (see exit_process)


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Detect ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``) and initialise the process group.

    Args:
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` (the local-rank GPU) or ``"cuda:i"``.
        timeout_s: collective timeout.

    Returns:
        A :class:`DistInfo`; ``world_size == 1`` when not launched by torchrun (or with ``WORLD_SIZE=1``).
    """
    rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    if rank is None or world is None or world <= 1:
        return DistInfo(device=_pick_device(device, 0))
    local = rank if local is None else local
    dev = _pick_device(device, local)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    global _group_started
    _group_started = True
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev, backend=backend)


def cleanup_distributed() -> None:
    """Destroy the process group if one was initialised.

    After a model was wrapped in DDP this does not stop a gloo group's worker threads (torch keeps the group
    alive; pytorch/pytorch#107298): end a distributed script with :func:`exit_process`.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int = 0) -> None:
    """End this process with ``code``; after a distributed run, without Python's interpreter finalization.

    When :func:`init_distributed` started a process group in this process, the group is destroyed, the
    ``atexit`` handlers run, ``logging`` and the standard streams are flushed, and the process leaves with
    ``os._exit(code)``. Why: once DDP has wrapped a model, torch keeps a gloo group's worker threads running
    after ``destroy_process_group`` (pytorch/pytorch#107298). A worker still releasing a finished collective
    whose tensors Python has already let go of must take the GIL; during finalization that thread is
    terminated and the process aborts (SIGABRT, "terminate called without an active exception") after a run
    that succeeded - seen in 2 of 12 and 1 of 40 two-rank runs on a loaded 2-core machine, and torchrun then
    reports the whole job as failed. Skipping finalization is the one exit that cannot meet that worker.

    Without a process group this is ``sys.exit(code)``. ``multispike`` (the CLI) ends this way.
    """
    if not _group_started:
        sys.exit(code)
    cleanup_distributed()
    atexit._run_exitfuncs()   # what finalization would have run, while the interpreter is whole
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # a closed or broken pipe: nothing left to save
            pass
    os._exit(code)


def seed_everything(seed: int, rank: int = 0, deterministic: bool = False) -> int:
    """Seed Python, NumPy and torch (CPU and CUDA) with ``seed + rank``; returns the seed used.

    Args:
        deterministic: also ask PyTorch for deterministic kernels (``use_deterministic_algorithms``, cuDNN
            benchmark off). CPU training is already deterministic for a fixed thread count.
    """
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % (2 ** 32))
    torch.manual_seed(s)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(s)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return s


def wrap_model(model: nn.Module, info: DistInfo, sync_bn: bool = False, find_unused_parameters: bool = False
               ) -> nn.Module:
    """Move ``model`` to ``info.device`` and wrap it in DDP when distributed.

    No buffer sync at every forward (``broadcast_buffers=False``, called ``forward_sync_buffers=False`` in
    newer torch): neuron state is not in buffers in any case, and BN statistics are reconciled once per epoch by
    :func:`sync_bn_stats` instead of being overwritten by rank 0's at every forward.
    """
    if sync_bn:
        if info.device.type != "cuda":
            raise ParameterError("{sync_bn} needs CUDA: PyTorch's SyncBatchNorm rejects CPU tensors. Drop {sync_bn} "
                                 "on CPU (BN statistics are averaged across ranks each epoch, see {dist_bn})",
                                 "sync_bn", "dist_bn")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(info.device)
    if not info.distributed:
        return model
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    # newer torch renames the switch (the old name then warns); both keep buffers out of the per-forward sync.
    # Buffers are still synced once at construction, which only copies rank 0's identical initial values.
    no_buffer_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters \
        else {"broadcast_buffers": False}
    return DDP(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters, **no_buffer_sync)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or ``model`` itself)."""
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) \
        else model


def all_reduce_sum(values: Sequence[float] | torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a vector of float64 metrics over ranks (identity when not distributed)."""
    t = torch.as_tensor(values, dtype=torch.float64).clone()   # never alias the caller's accumulator
    if info.distributed:
        t = t.to(info.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t = t.cpu()
    return t


def all_gather_object(obj: Any, info: DistInfo) -> list:
    """Gather a picklable object from every rank (``[obj]`` when not distributed)."""
    if not info.distributed:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def sync_bn_stats(model: nn.Module, info: DistInfo, mode: str = "reduce") -> None:
    """Make BatchNorm running statistics equal on every rank.

    Args:
        mode: ``"reduce"`` (average over ranks), ``"broadcast"`` (copy rank 0's) or ``""``/``"none"`` (leave).
    """
    if mode in ("", "none") or not info.distributed:
        return
    if mode not in ("reduce", "broadcast"):
        raise ValueError(f"dist_bn must be 'reduce', 'broadcast' or 'none', got {mode!r}")
    for module in unwrap_model(model).modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm) or not module.track_running_stats:
            continue
        for buf in (module.running_mean, module.running_var):
            if buf is None:
                continue
            if mode == "reduce":
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                buf.div_(info.world_size)
            else:
                dist.broadcast(buf, src=0)
