"""QCFS activation (quantization clip-floor-shift), algorithms.md §3.1.

``QCFS(z; ϑ, Q, φ=½) = ϑ/Q · clip(⌊z·Q/ϑ + φ⌋, 0, Q)`` with a learnable clip ϑ per layer. The floor is
straight-through (d⌊u⌋/du := 1), so ``∂out/∂z = 1`` inside the clip range and 0 outside, and
``∂out/∂ϑ = q − z/ϑ`` inside, ``1`` when clamped at the top (autograd of the code form).
"""
from __future__ import annotations

import torch
from torch import nn

from ..neurons.base import check_positive_int

__all__ = ["round_half_up", "floor_ste", "qcfs", "QCFS"]


def round_half_up(x: torch.Tensor) -> torch.Tensor:
    """``⌊x + ½⌋`` - the rounding that matches an IF neuron with ``v(0) = θ/2`` (torch.round is half-even)."""
    return torch.floor(x + 0.5)


class _FloorSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.floor(x)

    @staticmethod
    def backward(ctx, g):
        return g


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    """Floor with a straight-through gradient."""
    return _FloorSTE.apply(x)


def _qcfs_forward(z: torch.Tensor, threshold: torch.Tensor | float, levels: int, shift: float) -> torch.Tensor:
    # One allocation, then in place, in the order of the reference formula (so values are bit-identical to it):
    # the converted SNN's exact-equivalence checks compare against exactly these roundings.
    out = z / threshold
    return out.mul_(levels).add_(shift).floor_().div_(levels).clamp_(0.0, 1.0).mul_(threshold)


def _fused_ok(z: torch.Tensor, threshold: torch.Tensor) -> bool:
    """Use the one-pass C++ kernels (dense float32/bf16 CPU input, one clip value, not while compiling)."""
    if threshold.numel() != 1 or threshold.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    from ..kernels import quant_cpp   # lazily: importing the neurons must not import the kernels
    return quant_cpp.quantizer_kernels_available(z)


class _QCFSFunction(torch.autograd.Function):
    """QCFS with a hand-written backward: saves only ``z`` and ``ϑ`` (autograd of the code form keeps five
    intermediates) and recomputes the level index, which makes bf16 training markedly faster on CPUs."""

    @staticmethod
    def forward(ctx, z, threshold, levels, shift):
        ctx.save_for_backward(z, threshold)
        ctx.levels, ctx.shift = levels, shift
        ctx.fused = _fused_ok(z, threshold)
        if ctx.fused:
            from ..kernels import quant_cpp
            return quant_cpp.qcfs_forward(z, threshold.item(), levels, shift)
        return _qcfs_forward(z, threshold, levels, shift)

    @staticmethod
    def backward(ctx, g):
        z, threshold = ctx.saved_tensors
        levels, shift = ctx.levels, ctx.shift
        if ctx.fused:
            from ..kernels import quant_cpp
            grad_z, grad_th = quant_cpp.qcfs_backward(z, g.contiguous(), threshold.item(), levels, shift)
            grad_th = torch.tensor(grad_th, dtype=threshold.dtype).reshape(threshold.shape)
            return (grad_z if ctx.needs_input_grad[0] else None,
                    grad_th if ctx.needs_input_grad[1] else None, None, None)
        q = (z / threshold).mul_(levels).add_(shift).floor_().div_(levels)
        inside = (q >= 0) & (q <= 1)          # clamp passes the gradient at both bounds
        grad_z = grad_th = None
        if ctx.needs_input_grad[0]:
            grad_z = torch.where(inside, g, 0).to(z.dtype)
        if ctx.needs_input_grad[1]:
            # ∂out/∂ϑ = q − z/ϑ inside the clip, 1 above it, 0 below: = clamp(q, 0, 1) − inside·z/ϑ
            term = q.clamp_(0.0, 1.0).sub_(torch.where(inside, z / threshold, 0))
            per_elem = g * term
            if threshold.dim() == 0:
                # accumulate the layer's scalar in float32 at least, whatever the activation dtype
                grad_th = per_elem.sum(dtype=torch.promote_types(threshold.dtype, torch.float32)).to(threshold.dtype)
            else:
                grad_th = per_elem.sum_to_size(threshold.shape).to(threshold.dtype)
        return grad_z, grad_th, None, None


def qcfs(z: torch.Tensor, threshold: torch.Tensor | float, levels: int, shift: float = 0.5) -> torch.Tensor:
    """Functional QCFS: ``ϑ · clamp(⌊z·Q/ϑ + φ⌋ / Q, 0, 1)`` with a straight-through floor.

    ``∂out/∂z = 1`` where ``0 ≤ ⌊z·Q/ϑ + φ⌋/Q ≤ 1`` (else 0); ``∂out/∂ϑ`` as in the module docstring.
    """
    if not torch.is_tensor(threshold):
        if not torch.is_grad_enabled() or not z.requires_grad:
            return _qcfs_forward(z, threshold, levels, shift)
        threshold = torch.tensor(float(threshold), dtype=z.dtype if z.is_floating_point() else torch.float32,
                                 device=z.device)
    if torch.is_grad_enabled() and (z.requires_grad or threshold.requires_grad):
        return _QCFSFunction.apply(z, threshold, levels, shift)
    if _fused_ok(z, threshold):
        from ..kernels import quant_cpp
        return quant_cpp.qcfs_forward(z, threshold.item(), levels, shift)
    return _qcfs_forward(z, threshold, levels, shift)


class QCFS(nn.Module):
    """QCFS activation with a learnable clip ϑ (``threshold``) and ``levels`` quantization levels.

    Args:
        levels: Q >= 1 (QCFS-C default 16, LMHT-C 8).
        threshold: initial ϑ > 0 (8.0 in both codes).
        shift: φ (½ makes it match an IF neuron started at θ/2).
        learnable: learn ϑ.

    Example::

        >>> import torch
        >>> act = QCFS(levels=4, threshold=1.0)
        >>> act(torch.tensor([-0.3, 0.1, 0.2, 0.9, 3.0])).tolist()
        [0.0, 0.0, 0.25, 1.0, 1.0]
    """

    def __init__(self, levels: int = 8, threshold: float = 8.0, shift: float = 0.5, learnable: bool = True) -> None:
        super().__init__()
        self.levels = check_positive_int(levels, "QCFS levels", fix="Use levels >= 1 (e.g. 4, 8 or 16).")
        if not (float(threshold) > 0):
            raise ValueError(f"QCFS: threshold must be > 0, got {threshold!r}")
        t = torch.tensor(float(threshold))
        if learnable:
            self.threshold = nn.Parameter(t)
        else:
            self.register_buffer("threshold", t)
        self.shift = float(shift)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return qcfs(z, self.threshold, self.levels, self.shift)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, threshold={float(self.threshold.detach()):.4g}, shift={self.shift}"
