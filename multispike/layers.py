"""Containers that run ordinary layers on time-major data, encoders and readouts.

* :class:`SeqToANNContainer` runs stateless layers (conv, BN, linear, pooling) once on the merged
  ``[T·B, ...]`` batch and restores ``[T, B, ...]`` - the fast path for multi-step networks.
* :class:`MultiStepContainer` loops a single-step module over T.
* :class:`DirectEncoder` repeats a static image over T (direct encoding); :class:`MeanOverTime` is the
  usual readout.
"""
from __future__ import annotations

import torch
from torch import nn

from .neurons.base import StepModule, check_positive_int, check_sequence

__all__ = ["SeqToANNContainer", "MultiStepContainer", "DirectEncoder", "MeanOverTime", "to_time_major",
           "flatten_time", "unflatten_time"]


def flatten_time(x_seq: torch.Tensor) -> torch.Tensor:
    """``[T, B, ...] -> [T·B, ...]`` (a view when possible)."""
    return x_seq.flatten(0, 1)


def unflatten_time(x: torch.Tensor, T: int) -> torch.Tensor:
    """``[T·B, ...] -> [T, B, ...]``."""
    if x.shape[0] % T:
        raise ValueError(f"cannot split a merged batch of {x.shape[0]} into T={T} steps")
    return x.view(T, x.shape[0] // T, *x.shape[1:])


def to_time_major(x: torch.Tensor, layout: str) -> torch.Tensor:
    """Convert an input to time-major ``[T, B, ...]``.

    Args:
        layout: ``"TB"`` (already time-major), ``"BT"`` (batch-first, as tonic and NeuroBench emit).
            There is no default: guessing a layout silently is a classic source of wrong results.
    """
    if layout == "TB":
        return x
    if layout == "BT":
        if x.dim() < 2:
            raise ValueError(f"to_time_major: a [B, T, ...] tensor needs >= 2 dims, got shape {tuple(x.shape)}")
        return x.transpose(0, 1).contiguous()
    raise ValueError(f"to_time_major: layout must be 'TB' or 'BT', got {layout!r}")


class SeqToANNContainer(nn.Sequential):
    """Run stateless modules on the merged ``T·B`` batch: ``[T, B, ...] -> [T, B, ...]``."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        check_sequence(x_seq, "SeqToANNContainer")
        T, B = x_seq.shape[:2]
        y = super().forward(x_seq.flatten(0, 1))
        return y.view(T, B, *y.shape[1:])


class MultiStepContainer(StepModule):
    """Apply a single-step module at every step of a ``[T, B, ...]`` sequence."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.step_mode = "m"

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        check_sequence(x_seq, "MultiStepContainer")
        return torch.stack([self.module(x) for x in x_seq])


class DirectEncoder(nn.Module):
    """Direct encoding: repeat a static input ``[B, ...]`` over ``T`` steps -> ``[T, B, ...]`` (a view)."""

    def __init__(self, T: int) -> None:
        super().__init__()
        self.T = check_positive_int(T, "T", fix="Use T >= 1 timesteps.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(0).expand(self.T, *x.shape)

    def extra_repr(self) -> str:
        return f"T={self.T}"


class MeanOverTime(nn.Module):
    """Readout: mean over the time axis, ``[T, B, ...] -> [B, ...]``."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        check_sequence(x_seq, "MeanOverTime")
        return x_seq.mean(0)
