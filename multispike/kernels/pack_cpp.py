"""Exact uint8 copies of spike tensors in one pass of the C++ library (``csrc/pack.cpp``).

:func:`multispike.layers.pack_exact_uint8` (``spike_storage="bytes"``) packs the spike inputs that conv/linear
layers save for the backward. In PyTorch that check takes four passes (convert, convert back, compare); the kernel
converts and checks in one. Same contract: the uint8 tensor, with the input's strides, if every element
round-trips bit for bit, else None (tests/test_layers_spike_storage.py runs both paths on the same cases).
"""
from __future__ import annotations

import ctypes

import torch

from . import _build
from ._abi import QuantArgs

__all__ = ["pack_kernel_available", "pack_exact_uint8_cpu"]

_DTYPES = {torch.float32: 0, torch.float64: 2}


def pack_kernel_available(t: torch.Tensor) -> bool:
    """Whether :func:`pack_exact_uint8_cpu` can take ``t``: a float32/float64 CPU tensor, library built."""
    return t.device.type == "cpu" and t.dtype in _DTYPES and _build.load_library() is not None


def pack_exact_uint8_cpu(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` as uint8 with ``t``'s strides if exact, else None. ``t`` must be dense (contiguous, channels_last or
    another dense layout) and :func:`pack_kernel_available`; the kernel walks input and output in memory order."""
    q = torch.empty_like(t, dtype=torch.uint8)   # preserve_format: a dense tensor's strides
    if q.stride() != t.stride():
        raise ValueError("pack_exact_uint8_cpu needs a dense tensor")
    args = QuantArgs(x=t.data_ptr(), g=None, out=q.data_ptr(), sums=None, n=t.numel(),
                     p=(ctypes.c_double * 3)(0.0, 0.0, 0.0), dtype=_DTYPES[t.dtype], nthreads=torch.get_num_threads())
    rc = _build.load_library().ms_pack_exact_u8(ctypes.byref(args))
    if rc < 0:
        raise RuntimeError(f"multispike: kernel ms_pack_exact_u8 failed with code {rc}")
    return q if rc == 0 else None
