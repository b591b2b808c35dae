"""Data-driven initialisation of QCFS clips ϑ and QAC clips α (the default of ``multispike train`` for QCFS from
scratch and of ``multispike qat`` / ``train --mode qat`` for the quantizers ``prepare_qat`` makes from ReLUs).

A clip that starts far above a layer's activations (the QCFS codes' constant ϑ = 8) leaves almost every
activation in the lowest quantization steps: with Adam at lr 2e-3 ϑ barely moves in a short run, the network
learns to live on a few coarse levels, and evaluated at more levels - which is what an IF neuron run for more
timesteps approximates - it collapses (the converted SNN's accuracy then *falls* as T grows). Starting each ϑ at a
high percentile of its layer's pre-activations puts the quantization grid where the values are.

Layers are initialised in order, each on the inputs it receives once the layers before it have their new clips
(a clip changes what the next layer sees). BatchNorm runs in training mode (the statistics training will see)
and every buffer is restored afterwards, so only the clips change.

Example::

    rows = init_qcfs_clips(model, batches, percentile=99.9)   # [{"layer", "before", "after"}, ...]
    rows = init_qac_alphas(model, batches, percentile=99.9)   # QACQuantizer α, same rule
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from .qac import QACQuantizer
from .qcfs import QCFS

__all__ = ["init_qcfs_clips", "init_qac_alphas", "set_qac_alpha_", "parse_clip_init"]

#: Most pre-activation values kept per layer for the percentile (a random sample beyond this).
_MAX_VALUES = 1 << 22


def parse_clip_init(text: str | None) -> float | None:
    """``"none"``/``None`` -> ``None``; ``"99.9%"`` / ``"99.9"`` -> 99.9; ``"max"`` -> 100.

    Raises:
        ValueError: not a percentile in (0, 100], ``max`` or ``none``.
    """
    if text is None or str(text).strip().lower() in ("none", "off", "no"):
        return None
    s = str(text).strip().lower()
    if s == "max":
        return 100.0
    try:
        q = float(s[:-1] if s.endswith("%") else s)
    except ValueError:
        q = float("nan")
    if not (0 < q <= 100):
        raise ValueError(f"clip_init must be a percentile such as 99.9% (in (0, 100]), max or none; got {text!r}")
    return q


@torch.no_grad()
def set_qac_alpha_(q: QACQuantizer, alpha: float) -> None:
    """Set the clip α of a :class:`~multispike.quant.qac.QACQuantizer` in place, keeping its timestep.

    ``t_alpha``/``n_alpha`` set the learnable clip; ``n_d`` sets the step ``d = α/T_l`` (so ``q.alpha == α``);
    ``d_alpha`` sets the clip and ``d = α/t`` with the continuous level count ``t`` it had (so ``T_l`` is unchanged).
    """
    alpha = float(alpha)
    if not (alpha > 0 and alpha < float("inf")):
        raise ValueError(f"set_qac_alpha_: alpha must be a finite number > 0, got {alpha!r}")
    if q.param in ("t_alpha", "n_alpha"):
        q.clip.data.fill_(alpha)
    elif q.param == "n_d":
        q.d.data.fill_(alpha / q.timesteps)
    else:   # d_alpha: T = α/d, so d moves with α
        t = q.continuous_timesteps
        q.clip.data.fill_(alpha)
        q.d.data.fill_(alpha / t)


class _Measured(Exception):
    """Raised by the measuring hook to end a forward pass once the layer's input is recorded."""


def _percentile_init(model: nn.Module, layers: list[tuple[str, nn.Module]], batches, percentile: float,
                     minimum: float, read, write, who: str) -> list[dict]:
    """Layer by layer: ``write(layer, percentile of its inputs)`` with the earlier layers already set."""
    if not (0 < float(percentile) <= 100):
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    xs = [b for b in batches]
    if not xs:
        raise ValueError(f"{who}: no batch to measure the pre-activations on")
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    was_training = model.training
    model.train()
    rows = []
    gen = torch.Generator().manual_seed(0)
    try:
        for name, layer in layers:
            seen: list[torch.Tensor] = []
            stop_early = [False]

            def record(mod, args, seen=seen, stop_early=stop_early):
                seen.append(args[0].detach().flatten().float())
                if stop_early[0]:
                    raise _Measured   # the rest of the network cannot change this layer's input: skip it

            handle = layer.register_forward_pre_hook(record)
            try:
                for i, x in enumerate(xs):
                    try:
                        model(x)
                    except _Measured:
                        pass
                    # a module called once per forward (not shared, not stepped) ends the later passes at itself
                    if i == 0:
                        stop_early[0] = len(seen) == 1
            finally:
                handle.remove()
            if not seen:
                raise ValueError(f"{who}: layer {name!r} did not run in the forward pass, so its input cannot be "
                                 f"measured")
            values = torch.cat(seen)
            if values.numel() > _MAX_VALUES:
                values = values[torch.randint(values.numel(), (_MAX_VALUES,), generator=gen)]
            if percentile >= 100:
                clip = float(values.max())
            else:
                k = max(1, min(values.numel(), int(round(values.numel() * percentile / 100))))
                clip = float(values.kthvalue(k).values)
            clip = max(clip, minimum)
            before = read(layer)
            write(layer, clip)
            rows.append({"layer": name, "before": before, "after": clip})
            for k, v in model.named_buffers():   # BN statistics of this pass are not training's
                if k in buffers:
                    v.copy_(buffers[k])
    finally:
        for k, v in model.named_buffers():
            if k in buffers:
                v.copy_(buffers[k])
        model.train(was_training)
    return rows


@torch.no_grad()
def init_qcfs_clips(model: nn.Module, batches: Sequence[torch.Tensor] | Iterable[torch.Tensor],
                    percentile: float = 99.9, minimum: float = 1e-3) -> list[dict]:
    """Set every QCFS clip ϑ of ``model`` to the ``percentile`` of its layer's pre-activations on ``batches``.

    Args:
        model: a network with :class:`~multispike.quant.qcfs.QCFS` activations (called as ``model(x)``).
        batches: input tensors (normalised as in training); a few batches suffice.
        percentile: in (0, 100]; 100 = the maximum.
        minimum: lower bound of a clip (a layer whose inputs are all <= 0 would otherwise get ϑ = 0).

    Returns:
        One ``{"layer", "before", "after"}`` row per QCFS layer, in order.
    """
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QCFS)]
    return _percentile_init(model, layers, batches, percentile, minimum,
                            lambda m: float(m.threshold.detach()), lambda m, c: m.threshold.data.fill_(c),
                            "init_qcfs_clips")


@torch.no_grad()
def init_qac_alphas(model: nn.Module, batches: Sequence[torch.Tensor] | Iterable[torch.Tensor],
                    percentile: float = 99.9, names: Iterable[str] | None = None,
                    minimum: float = 1e-3) -> list[dict]:
    """Set the clip α of QAC quantizers to the ``percentile`` of their layer's pre-activations on ``batches``.

    The same rule as :func:`init_qcfs_clips` (layer by layer, BN buffers restored); each quantizer's timestep
    is kept (:func:`set_qac_alpha_`).

    Args:
        model: a network with :class:`~multispike.quant.qac.QACQuantizer` modules (after ``prepare_qat``).
        batches: input tensors (normalised as in training).
        percentile: in (0, 100]; 100 = the maximum.
        names: only these quantizers (module names, e.g. those ``prepare_qat`` made from ReLUs); default all.
        minimum: lower bound of α.

    Returns:
        One ``{"layer", "before", "after"}`` row per initialised quantizer, in model order.

    Raises:
        ValueError: a name in ``names`` is not a QACQuantizer of ``model``.
    """
    quant = {n: m for n, m in model.named_modules() if isinstance(m, QACQuantizer)}
    if names is not None:
        names = list(names)
        bad = [n for n in names if n not in quant]
        if bad:
            raise ValueError(f"init_qac_alphas: {bad} are not QACQuantizer modules of {type(model).__name__}")
        keep = set(names)
        quant = {n: m for n, m in quant.items() if n in keep}
    return _percentile_init(model, list(quant.items()), batches, percentile, minimum,
                            lambda m: m.alpha, set_qac_alpha_, "init_qac_alphas")
