"""Fused CPU kernels for the clip-floor activation quantizers of quantization-aware ANN training (QCFS and QAC).

Under bf16 autocast, the autograd form of QCFS (divide, multiply, add, floor, divide, clamp, multiply, and twice as
many ops backwards, each a full pass over the activation that converts bf16 to float and back) cost more than the
convolutions of the speedrun backbone. These kernels do one pass forward and one backward (which recomputes the
level from the saved input and returns the sums that the clip/step parameters' gradients need).

Used by :mod:`multispike.quant.qcfs` and :mod:`multispike.quant.qac` when the input is a dense float32 or bfloat16
CPU tensor and the clip is one number; anything else (and a machine where the library cannot be built) runs the
PyTorch expressions. For float32 the forward is bit-identical to the PyTorch expression (tested); for bfloat16
the kernel computes in float32 and rounds once, where PyTorch rounds after every operation.
"""
from __future__ import annotations

import ctypes

import torch

from . import _build
from ._abi import QuantArgs

__all__ = ["quantizer_kernels_available", "qcfs_forward", "qcfs_backward", "qac_forward", "qac_backward"]

_DTYPES = {torch.float32: 0, torch.bfloat16: 1}


def _dense(x: torch.Tensor) -> bool:
    """Whether ``x``'s elements fill ``numel`` consecutive slots in some dimension order (contiguous,
    channels_last or any other permutation of a dense layout): an elementwise kernel can then walk memory."""
    expected = 1
    for stride, size in sorted((st, s) for s, st in zip(x.shape, x.stride()) if s != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _same_strides(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal strides on every dimension that has more than one element (a size-1 dimension's stride is free)."""
    return a.shape == b.shape and all(sa == sb for n, sa, sb in zip(a.shape, a.stride(), b.stride()) if n != 1)


def _same_layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` in ``like``'s dtype and memory layout (element i of both at the same offset)."""
    if t.dtype == like.dtype and _same_strides(t, like):
        return t
    return torch.empty_like(like).copy_(t)


def quantizer_kernels_available(x: torch.Tensor) -> bool:
    """True when the fused kernels can process ``x`` (a dense float32/bfloat16 CPU tensor in any dense memory
    layout, e.g. contiguous or channels_last; the library is built)."""
    return (x.device.type == "cpu" and x.dtype in _DTYPES and x.numel() > 0 and _dense(x)
            and _build.load_library() is not None)


def _call(name: str, x: torch.Tensor, out: torch.Tensor, params: tuple[float, ...],
          grad: torch.Tensor | None = None) -> tuple[float, float]:
    """Run kernel ``ms_<name>`` on ``x`` (writing ``out``); returns the backward's two sums (zeros forwards).

    ``out`` (and ``grad``) must have ``x``'s dtype and strides: the kernel walks the three buffers in memory order."""
    if not _same_strides(out, x) or (grad is not None and not _same_strides(grad, x)):
        raise AssertionError("multispike: quantizer kernel buffers differ in layout")   # a programming error
    sums = (ctypes.c_double * 2)()
    args = QuantArgs(x=x.data_ptr(), g=grad.data_ptr() if grad is not None else None, out=out.data_ptr(),
                     sums=sums, n=x.numel(), p=(ctypes.c_double * 3)(*params, *[0.0] * (3 - len(params))),
                     dtype=_DTYPES[x.dtype], nthreads=torch.get_num_threads())
    rc = getattr(_build.load_library(), "ms_" + name)(ctypes.byref(args))
    if rc != 0:
        raise RuntimeError(f"multispike: kernel ms_{name} failed with code {rc}")
    return sums[0], sums[1]


def qcfs_forward(z: torch.Tensor, threshold: float, levels: int, shift: float) -> torch.Tensor:
    """``clamp(⌊z/ϑ·Q + φ⌋/Q, 0, 1)·ϑ`` in one pass."""
    out = torch.empty_like(z)
    _call("qcfs_forward", z, out, (float(threshold), float(levels), float(shift)))
    return out


def qcfs_backward(z: torch.Tensor, grad: torch.Tensor, threshold: float, levels: int, shift: float
                  ) -> tuple[torch.Tensor, float]:
    """(∂L/∂z, ∂L/∂ϑ) of QCFS for the upstream gradient ``grad`` (same shape and dtype as ``z``)."""
    grad = _same_layout(grad, z)
    gz = torch.empty_like(z)
    a, b = _call("qcfs_backward", z, gz, (float(threshold), float(levels), float(shift)), grad)
    return gz, a - b


def qac_forward(x: torch.Tensor, alpha: float, T: int) -> torch.Tensor:
    """``clamp(⌊x·T/α + ½⌋, 0, T)·α/T`` in one pass."""
    out = torch.empty_like(x)
    _call("qac_forward", x, out, (float(alpha), float(T)))
    return out


def qac_backward(x: torch.Tensor, grad: torch.Tensor, alpha: float, T: int
                 ) -> tuple[torch.Tensor, float, float]:
    """(∂L/∂x, Σ_inside g·(q − x), Σ_above g) of the QAC quantizer: every parameterisation's gradients follow."""
    grad = _same_layout(grad, x)
    gx = torch.empty_like(x)
    inside, above = _call("qac_backward", x, gx, (float(alpha), float(T)), grad)
    return gx, inside, above
