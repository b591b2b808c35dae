"""Helpers shared by the fused kernels: memory layouts, scalar parameters, output buffers, fallbacks.

Layout convention of every fused kernel: a time-major sequence ``[T, B, ...]`` is addressed as
``base[t * stride_t + i]`` where ``i`` runs over the ``N`` elements of one step *in memory order*. This works
for any step layout that is non-overlapping and dense (contiguous, channels_last, any permutation), so
channels_last activations are processed without a copy; outputs get the same per-step layout as the input.
"""
from __future__ import annotations

import numbers
from typing import Callable

import torch

from .registry import get_kernel

__all__ = ["is_dense", "step_layout", "match_layout", "empty_seq", "empty_step", "scalar_param", "reference",
           "FLOAT_CODES"]

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
    if not is_dense(x[0]):
        x = x.contiguous()
    return x, tuple(x[0].stride())


def _same_layout(t: torch.Tensor, strides: tuple[int, ...]) -> bool:
    return all(s == 1 or a == b for s, a, b in zip(t.shape, t.stride(), strides))


def match_layout(t: torch.Tensor, strides: tuple[int, ...], seq: bool) -> torch.Tensor:
    """``t`` itself if each step (``seq=True``) or the tensor (``seq=False``) has ``strides``, else a copy in
    that layout. Used for incoming gradients and states, which may arrive expanded or transposed."""
    step = t[0] if seq else t
    if _same_layout(step, strides) and is_dense(step):
        return t
    if seq:
        out = empty_seq(t.shape, strides, t.dtype)
    else:
        out = torch.empty_strided(t.shape, strides, dtype=t.dtype, device=t.device)
    return out.copy_(t)


def empty_seq(shape, step_strides: tuple[int, ...], dtype: torch.dtype, device="cpu") -> torch.Tensor:
    """A new ``[T, ...]`` tensor whose steps have ``step_strides`` and follow each other densely."""
    n = 1
    for s in shape[1:]:
        n *= s
    return torch.empty_strided(tuple(shape), (n, *step_strides), dtype=dtype, device=device)


def empty_step(shape, step_strides: tuple[int, ...], dtype: torch.dtype, device="cpu") -> torch.Tensor:
    return torch.empty_strided(tuple(shape), step_strides, dtype=dtype, device=device)


def scalar_param(value, x: torch.Tensor, allow_grad: bool = True):
    """Classify a scalar-like parameter (θ, λ, τ, v_init) for a fused kernel.

    Returns ``(float_value, tensor_or_None)`` when the kernel can take it as one scalar with exactly the
    reference's arithmetic, else ``None``. A tensor must hold one element, be floating point, live on
    ``x``'s device, broadcast with one step without changing its shape, and - unless it is 0-d (0-d tensors do
    not take part in type promotion) - have ``x``'s dtype.
    """
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
    if value.dim() > x.dim() - 1 or any(s != 1 for s in value.shape):
        return None
    return float(value.detach().reshape(()).item()), value
