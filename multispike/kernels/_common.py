"""Helpers shared by the fused kernels: memory layouts, scalar parameters, output buffers, fallbacks.

Layout convention of every fused kernel: a time-major sequence ``[T, B, ...]`` is addressed as
``base[t * stride_t + i]`` where ``i`` runs over the ``N`` elements of one step *in memory order*. This works
for any step layout that is non-overlapping and dense (contiguous, channels_last, any permutation), so
channels_last activations are processed without a copy; outputs get the same per-step layout as the input.
"""
from __future__ import annotations

import numbers
import os
import threading
from typing import Callable

import torch

from .registry import get_kernel

__all__ = ["is_dense", "step_layout", "time_stride", "match_layout", "empty_seq", "empty_step",
           "scalar_param", "reference", "FLOAT_CODES", "BufferPool", "POOL", "empty_cache"]

FLOAT_CODES = {torch.float32: 0, torch.float64: 1}


def reference(family: str) -> Callable:
    """The registered reference function of ``family`` (looked up lazily to avoid import cycles)."""
    return get_kernel(family, "torch")


def is_dense(t: torch.Tensor) -> bool:
    """True when ``t`` covers a contiguous block of memory without overlap (some permutation of a contiguous
    tensor), so that its elements can be walked as ``base[0 .. numel)``."""
    expected = 1
    for size, stride in sorted(((s, st) for s, st in zip(t.shape, t.stride()) if s != 1), key=lambda p: p[1]):
        if stride != expected:
            return False
        expected *= size
    return True


def step_layout(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Return ``(x', strides)``: ``x'`` is ``x`` (or a contiguous copy when one step is not dense) and
    ``strides`` the strides of one step ``x'[0]``, which every per-step tensor of the kernel then shares."""
    if x.dim() == 0:
        raise ValueError("a time-major sequence needs at least one dimension")
    if not x.is_contiguous() and not is_dense(x[0]):
        x = x.contiguous()
    return x, tuple(x.stride()[1:])   # == x[0].stride(), without building the view


def time_stride(t: torch.Tensor) -> int:
    """The distance between consecutive steps of a ``[T, ...]`` tensor with dense steps (``t.stride(0)``, or one
    step's element count when T = 1, where the stride is arbitrary)."""
    T = t.shape[0]
    return t.stride(0) if T > 1 else t.numel() // max(T, 1)


def _same_layout(t: torch.Tensor, strides: tuple[int, ...]) -> bool:
    return all(s == 1 or a == b for s, a, b in zip(t.shape, t.stride(), strides))


def match_layout(t: torch.Tensor, strides: tuple[int, ...], seq: bool) -> torch.Tensor:
    """``t`` itself if each step (``seq=True``) or the tensor (``seq=False``) has ``strides``, else a copy in
    that layout. Used for incoming gradients and states, which may arrive expanded or transposed."""
    # the common case first, without building a view: already in the kernel's (dense) layout
    if (t.is_contiguous() and t.stride()[1:] == strides) if seq else t.stride() == strides:
        return t
    step = t[0] if seq else t
    if _same_layout(step, strides) and is_dense(step):
        return t
    if seq:
        out = empty_seq(t.shape, strides, t.dtype, t.device)
    else:
        out = torch.empty_strided(t.shape, strides, dtype=t.dtype, device=t.device)
    return out.copy_(t)


class BufferPool:
    """Reuses the large CPU output buffers of the fused kernels across calls (training steps, timesteps).

    A fresh allocation of tens of MiB costs page faults on first touch (measured 9-17 ms for >= 32 MiB on a
    2-core machine, several times the kernel itself), so outputs of at least ``min_bytes`` come from cached
    blocks. A block is handed out again only when no tensor refers to its storage any more - the storage's
    reference count is back to the pool's own reference - so a buffer still held by a caller or saved for
    backward is never overwritten. Outputs are ordinary tensors sharing the block's storage (``Tensor.set_``),
    not views. Freshly handed-out buffers follow ``torch.empty`` semantics, including NaN poisoning under
    ``torch.utils.deterministic.fill_uninitialized_memory``.

    The total cached size is bounded by ``MULTISPIKE_KERNEL_POOL_MB`` (default 1024; 0 disables the pool);
    :func:`empty_cache` releases every unused block. A request takes the smallest unused block of at least its
    size and at most ``reuse_factor`` times it (``MULTISPIKE_KERNEL_POOL_FIT``, default 4; 1 = exact sizes only):
    measured (benchmarks/perf_goals.py, T = 4, batch 32) -12 MiB peak training memory of ``airbench_cifar``, no
    slower.
    """

    def __init__(self, limit_bytes: int, min_bytes: int = 1 << 20, reuse_factor: int = 1) -> None:
        self.limit = limit_bytes
        self.min_bytes = min_bytes
        self.reuse_factor = reuse_factor
        self._blocks: dict[int, list[torch.Tensor]] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self._use_count = getattr(torch._C, "_storage_Use_Count", None)
        self._baseline = None
        if self._use_count is not None:
            try:
                self._baseline = self._count(torch.empty(8, dtype=torch.uint8))
            except Exception:  # pragma: no cover - private API changed: no pooling
                self._use_count = None

    @property
    def enabled(self) -> bool:
        return self._use_count is not None and self.limit > 0

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    def _count(self, block: torch.Tensor) -> int:
        return self._use_count(block.untyped_storage()._cdata)

    def _free(self, block: torch.Tensor) -> bool:
        return self._count(block) <= self._baseline

    @staticmethod
    def _intact(block: torch.Tensor, nbytes: int) -> bool:
        # a caller may have resized a handed-out tensor (which resizes the shared storage): never reuse such a block
        return block.untyped_storage().nbytes() == nbytes

    def _block(self, nbytes: int) -> torch.Tensor | None:
        with self._lock:
            # best fit: the smallest unused block of at least nbytes (and at most reuse_factor x nbytes), so the
            # outputs a forward frees early (spikes an average pool or uint8 storage no longer needs) serve its
            # later, smaller outputs instead of the pool growing by new blocks
            sizes = [nbytes] + sorted(sz for sz in self._blocks if nbytes < sz <= nbytes * self.reuse_factor)
            for size in sizes:
                blocks = self._blocks.get(size, [])
                for block in list(blocks):
                    if self._free(block):
                        if self._intact(block, size):
                            return block
                        blocks.remove(block)
                        self._bytes -= size
            if self._bytes + nbytes > self.limit:
                self._evict(self._bytes + nbytes - self.limit)
                if self._bytes + nbytes > self.limit:
                    return None
            block = torch.empty(nbytes, dtype=torch.uint8)
            self._blocks.setdefault(nbytes, []).append(block)
            self._bytes += nbytes
            return block

    def _evict(self, need: int) -> None:
        for size in list(self._blocks):
            keep = []
            for block in self._blocks[size]:
                if need > 0 and self._free(block):
                    need -= size
                    self._bytes -= size
                else:
                    keep.append(block)
            if keep:
                self._blocks[size] = keep
            else:
                del self._blocks[size]

    def empty(self, shape, strides, dtype: torch.dtype) -> torch.Tensor:
        """``torch.empty_strided(shape, strides, dtype=dtype)`` for a dense CPU layout, from the pool when large."""
        numel = 1
        for s in shape:
            numel *= s
        nbytes = numel * dtype.itemsize
        block = self._block(nbytes) if self.enabled and nbytes >= self.min_bytes else None
        if block is None:
            return torch.empty_strided(tuple(shape), tuple(strides), dtype=dtype)
        out = torch.empty(0, dtype=dtype).set_(block.untyped_storage(), 0, tuple(shape), tuple(strides))
        if torch.are_deterministic_algorithms_enabled() and torch.utils.deterministic.fill_uninitialized_memory:
            out.fill_(float("nan") if dtype.is_floating_point else 0)
        return out

    def clear(self) -> None:
        with self._lock:
            self._evict(self._bytes)


POOL = BufferPool(int(float(os.environ.get("MULTISPIKE_KERNEL_POOL_MB", "1024")) * (1 << 20)),
                  reuse_factor=int(os.environ.get("MULTISPIKE_KERNEL_POOL_FIT", "4")))


def empty_cache() -> None:
    """Release the unused cached output buffers of the CPU kernels (like ``torch.cuda.empty_cache``)."""
    POOL.clear()


def empty_seq(shape, step_strides: tuple[int, ...], dtype: torch.dtype, device="cpu") -> torch.Tensor:
    """A new ``[T, ...]`` tensor whose steps have ``step_strides`` and follow each other densely."""
    n = 1
    for s in shape[1:]:
        n *= s
    return empty_step(shape, (n, *step_strides), dtype, device)


def empty_step(shape, strides: tuple[int, ...], dtype: torch.dtype, device="cpu") -> torch.Tensor:
    """A new tensor with the given dense ``strides`` (pooled on CPU, see :class:`BufferPool`)."""
    if device == "cpu" or torch.device(device).type == "cpu":  # the string test first: no device object per call
        return POOL.empty(shape, strides, dtype)
    return torch.empty_strided(tuple(shape), tuple(strides), dtype=dtype, device=device)


def initial_state(x_seq: torch.Tensor, state, v_init, *, first: torch.Tensor | None = None,
                  dtype: torch.dtype | None = None, want_last_reset: bool = False):
    """The starting state of a fused kernel, resolved exactly as the reference functions do.

    Args:
        x_seq: the input sequence (device, and default dtype and step shape).
        state: the state passed in (``None`` = start from ``v_init``); its ``v`` (and ``last_reset`` when
            ``want_last_reset``) must be tensors of one step's shape, dtype and device.
        v_init: the initial membrane of a fresh start.
        first: the tensor whose first-step shape ``v(0)`` takes (default ``x_seq[0]``).
        dtype: the state dtype (default ``x_seq.dtype``).

    Returns:
        ``(v0, last_reset0, v_init_value)``: ``v0`` is a tensor when the kernel must read a per-element initial
        membrane (a carried state, or a per-element / learnable ``v_init`` materialised as the reference does),
        else ``None`` and the kernel starts from the scalar ``v_init_value``. ``None`` when a fused kernel cannot
        reproduce the reference (the caller then runs the reference).
    """
    dtype = x_seq.dtype if dtype is None else dtype
    if state is None:
        vi = scalar_param(v_init, x_seq)
        if vi is None or vi[1] is not None and vi[1].requires_grad:
            # a per-element or learnable initial membrane: materialise it exactly as the reference does
            first = x_seq[0] if first is None else first
            step_shape = first.shape
            v0 = torch.zeros_like(first) + v_init
            if v0.shape != step_shape or v0.dtype != dtype:
                return None
            return v0, None, 0.0
        return None, None, vi[0]
    step_shape = (x_seq[0] if first is None else first).shape

    def usable(t) -> bool:
        return (isinstance(t, torch.Tensor) and t.shape == step_shape and t.dtype == dtype
                and t.device == x_seq.device)

    v0 = getattr(state, "v", None)
    if not usable(v0):
        return None
    lr0 = getattr(state, "last_reset", None) if want_last_reset else None
    if lr0 is not None and not usable(lr0):
        return None
    return v0, lr0, 0.0


def scalar_param(value, x: torch.Tensor, allow_grad: bool = True):
    """Classify a scalar-like parameter (θ, λ, τ, v_init) for a fused kernel.

    Returns ``(value, tensor_or_None)`` when the kernel can take it as one scalar with exactly the reference's
    arithmetic, else ``None``. ``value`` is a Python float, or for a tensor its detached 0-d view (so that
    building the kernel arguments of a CUDA tensor needs no device synchronisation; CPU kernels call
    ``float()`` on it). A tensor must hold one element, be floating point, live on
    ``x``'s device, broadcast with one step without changing its shape, and - unless it is 0-d (0-d tensors do
    not take part in type promotion) - have ``x``'s dtype.
    """
    if type(value) is float:   # the common case first: this runs several times per kernel call
        return value, None
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, torch.Tensor):
        return float(value), None
    if not isinstance(value, torch.Tensor):
        return None
    if value.numel() != 1 or not value.is_floating_point() or value.device != x.device:
        return None
    if value.dim() > 0 and value.dtype != x.dtype:
        return None
    if value.requires_grad and not allow_grad:
        return None
    if value.dim() == 0:
        return value.detach(), value
    if value.dim() > x.dim() - 1 or any(s != 1 for s in value.shape):
        return None
    return value.detach().reshape(()), value
