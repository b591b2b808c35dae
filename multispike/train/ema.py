"""Exponential moving average (EMA) of a model's weights, for evaluation and the final checkpoint.

After update ``n`` every floating-point entry of the state dict (parameters and BN running statistics) is::

    ema ← d·ema + (1 - d)·w,        d = min(decay, (1 + n) / (10 + n))  if warmup else decay

and integer buffers (BN's ``num_batches_tracked``) are copied. Lookahead (Zhang et al. 2019, as airbench94 uses
it) is the same average followed by :meth:`ModelEMA.copy_to`, which resets the online weights to it. The averaged network is a separate module
(a deep copy of the model), so evaluation, conversion and export use it like any model.

Example::

    ema = ModelEMA(model, decay=0.99)
    for x, y in loader:
        ...; optimizer.step(); ema.update(model)
    acc = prefix_accuracy(ema.module, test_loader)
"""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModelEMA"]


class ModelEMA:
    """An EMA copy of ``model`` (see the module docstring for the update).

    Args:
        model: the online network (unwrapped from DDP).
        decay: ``d`` in ``(0, 1)``.
        warmup: shrink ``d`` for the first updates (``(1+n)/(10+n)``, as timm and TensorFlow do).

    Attributes:
        module: the averaged network (eval mode, no gradients).
        updates: updates applied so far.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"ModelEMA: decay must be in (0, 1), got {decay!r}")
        self.decay, self.warmup = float(decay), bool(warmup)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    def current_decay(self) -> float:
        """The ``d`` the next update uses."""
        n = self.updates
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        """Blend the online weights of ``model`` into the average (``decay`` overrides :meth:`current_decay`)."""
        d = self.current_decay() if decay is None else float(decay)
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"ModelEMA.update: decay must be in [0, 1], got {decay!r}")
        online = model.state_dict()
        for key, avg in self.module.state_dict().items():
            src = online[key].detach()
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(src.to(avg.dtype), alpha=1.0 - d)
            else:
                avg.copy_(src)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s floating-point state with the average (Lookahead's pull-back of the fast weights)."""
        online = model.state_dict()
        for key, avg in self.module.state_dict().items():
            if avg.dtype.is_floating_point:
                online[key].copy_(avg)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights (a state dict of :attr:`module`)."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        """Restore the average and its update count (resume)."""
        self.module.load_state_dict(state)
        self.updates = int(updates)
