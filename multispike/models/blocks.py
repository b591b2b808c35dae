"""Building blocks shared by the zoo: time-shared dropout, conv+BN units and weight initialisation."""
from __future__ import annotations

import torch
from torch import nn

from ..layers import SeqToANNContainer
from ..neurons.base import StepModule

__all__ = ["TimeSharedDropout", "make_dropout", "conv3x3", "conv1x1", "conv_bn", "init_weights"]


class TimeSharedDropout(StepModule):
    """Dropout whose mask is drawn once per sample and reused at every timestep (MLIF-C, algorithms.md §5.6).

    Input ``[T, B, ...]``; the mask has shape ``[1, B, ...]``. In ``'s'`` mode (the model fed one step at a
    time) the mask of the first step is kept until :meth:`reset`, so a sequence sees one mask either way.
    Identity in eval mode and for ``p = 0``. At ``T = 1`` it is ordinary (inverted) dropout.
    """

    _is_stateful = True  # reset_net() calls reset() on it

    def __init__(self, p: float = 0.2) -> None:
        super().__init__()
        if not (0.0 <= float(p) < 1.0):
            raise ValueError(f"TimeSharedDropout: p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.step_mode = "m"
        self.mask: torch.Tensor | None = None

    def reset(self) -> None:
        self.mask = None

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x_seq
        shape = (1, *x_seq.shape[1:])
        mask = self.mask if self.step_mode == "s" else None
        if mask is not None and mask.shape != shape:
            raise ValueError(f"TimeSharedDropout: the mask kept for this sequence has shape {tuple(mask.shape)} but "
                             f"this step has {tuple(shape)} (a new batch?). Call multispike.reset_net(model) before "
                             f"feeding a new batch.")
        if mask is None:
            mask = torch.empty(shape, device=x_seq.device, dtype=x_seq.dtype).bernoulli_(1.0 - self.p)
            mask = mask / (1.0 - self.p)
            if self.step_mode == "s":
                self.mask = mask
        return x_seq * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def make_dropout(p: float, mode: str = "independent") -> nn.Module:
    """A dropout module for time-major data.

    Args:
        p: drop probability in [0, 1). ``p = 0`` still returns a module, so the layer indices (and state-dict
            keys) do not depend on the dropout rate: an ANN trained without dropout loads into the SNN with it.
        mode: ``"independent"`` (a fresh mask for every step: ``SeqToANNContainer(nn.Dropout)``, LM-HT/QCFS
            code) or ``"shared"`` (:class:`TimeSharedDropout`, one mask for all steps, MLIF-C).
    """
    if not (0.0 <= float(p) < 1.0):
        raise ValueError(f"dropout must be in [0, 1), got {p!r}")
    if mode == "independent":
        return SeqToANNContainer(nn.Dropout(float(p)))
    if mode == "shared":
        return TimeSharedDropout(p)
    raise ValueError(f"dropout_mode must be 'independent' or 'shared', got {mode!r}")


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """3×3 convolution with padding 1."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=bias)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """1×1 convolution."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=bias)


def conv_bn(in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, bias: bool = False) -> SeqToANNContainer:
    """``SeqToANNContainer(Conv(k, padding k//2), BatchNorm2d)``: the unit converters fold."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=kernel_size, stride=stride, padding=kernel_size // 2, bias=bias)
    return SeqToANNContainer(conv, nn.BatchNorm2d(out_ch))


@torch.no_grad()
def _trunc_normal_(w: torch.Tensor, std: float, bound: float = 2.0) -> torch.Tensor:
    """N(0, std²) truncated to ±bound·std by rejection sampling: the exact truncated normal, several times
    faster than ``nn.init.trunc_normal_``'s inverse-CDF method on large tensors (about 4.6% of draws redrawn)."""
    w.normal_(0.0, std)
    if w.device.type == "meta":
        return w
    flat = w.view(-1)
    bad = flat.abs() > bound * std
    while bool(bad.any()):
        idx = bad.nonzero().squeeze(1)
        flat[idx] = torch.empty(idx.numel(), dtype=w.dtype, device=w.device).normal_(0.0, std)
        bad = torch.zeros_like(bad)
        bad[idx] = flat[idx].abs() > bound * std
    return w


def init_weights(model: nn.Module, scheme: str = "he") -> None:
    """Initialise conv/linear/BN weights.

    Args:
        scheme: ``"he"`` (Kaiming normal: fan-out for convs as in LMHT-C/torchvision, fan-in for linear layers;
            biases 0) or ``"trunc_normal"`` (SDT-C: convs and linears N(0, 0.02²) truncated at ±2σ, biases 0).
            BN always starts at γ = 1, β = 0.
    """
    if scheme not in ("he", "trunc_normal"):
        raise ValueError(f"weight init scheme must be 'he' or 'trunc_normal', got {scheme!r}")
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            if scheme == "he":
                mode = "fan_in" if isinstance(m, nn.Linear) else "fan_out"
                nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            else:
                _trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
