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


def qcfs(z: torch.Tensor, threshold: torch.Tensor | float, levels: int, shift: float = 0.5) -> torch.Tensor:
    """Functional QCFS: ``ϑ · clamp(⌊z·Q/ϑ + φ⌋ / Q, 0, 1)`` with a straight-through floor."""
    q = floor_ste(z / threshold * levels + shift) / levels
    return torch.clamp(q, 0.0, 1.0) * threshold


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
