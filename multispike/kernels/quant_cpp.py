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

__all__ = ["quantizer_kernels_available", "qcfs_forward", "qcfs_backward", "qac_forward", "qac_backward"]

_DTYPES = {torch.float32: 0, torch.bfloat16: 1}


def quantizer_kernels_available(x: torch.Tensor) -> bool:
    """True when the fused kernels can process ``x`` (dense float32/bfloat16 CPU tensor, library built)."""
    return (x.device.type == "cpu" and x.dtype in _DTYPES and x.is_contiguous() and x.numel() > 0
            and _build.load_library() is not None)


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _check(rc: int, name: str) -> None:
    if rc != 0:
        raise RuntimeError(f"multispike: kernel {name} failed with code {rc}")


def qcfs_forward(z: torch.Tensor, threshold: float, levels: int, shift: float) -> torch.Tensor:
    """``clamp(⌊z/ϑ·Q + φ⌋/Q, 0, 1)·ϑ`` in one pass."""
    out = torch.empty_like(z)
    _check(_build.load_library().ms_qcfs_forward(_DTYPES[z.dtype], _ptr(z), _ptr(out), z.numel(), float(threshold),
                                                 float(levels), float(shift), torch.get_num_threads()), "qcfs_forward")
    return out


def qcfs_backward(z: torch.Tensor, grad: torch.Tensor, threshold: float, levels: int, shift: float
                  ) -> tuple[torch.Tensor, float]:
    """(∂L/∂z, ∂L/∂ϑ) of QCFS for the upstream gradient ``grad`` (same shape and dtype as ``z``)."""
    grad = grad.to(z.dtype).contiguous()
    gz = torch.empty_like(z)
    sums = (ctypes.c_double * 2)()
    _check(_build.load_library().ms_qcfs_backward(_DTYPES[z.dtype], _ptr(z), _ptr(grad), _ptr(gz), z.numel(),
                                                  float(threshold), float(levels), float(shift), sums,
                                                  torch.get_num_threads()), "qcfs_backward")
    return gz, sums[0] - sums[1]


def qac_forward(x: torch.Tensor, alpha: float, T: int) -> torch.Tensor:
    """``clamp(⌊x·T/α + ½⌋, 0, T)·α/T`` in one pass."""
    out = torch.empty_like(x)
    _check(_build.load_library().ms_qac_forward(_DTYPES[x.dtype], _ptr(x), _ptr(out), x.numel(), float(alpha),
                                                float(T), torch.get_num_threads()), "qac_forward")
    return out


def qac_backward(x: torch.Tensor, grad: torch.Tensor, alpha: float, T: int
                 ) -> tuple[torch.Tensor, float, float]:
    """(∂L/∂x, Σ_inside g·(q − x), Σ_above g) of the QAC quantizer: every parameterisation's gradients follow."""
    grad = grad.to(x.dtype).contiguous()
    gx = torch.empty_like(x)
    sums = (ctypes.c_double * 2)()
    _check(_build.load_library().ms_qac_backward(_DTYPES[x.dtype], _ptr(x), _ptr(grad), _ptr(gx), x.numel(),
                                                 float(alpha), float(T), sums, torch.get_num_threads()), "qac_backward")
    return gx, sums[0], sums[1]
