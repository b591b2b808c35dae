"""Hybrid initialisation of a one-hot M-LIF SNN from a trained ANN (algorithms.md §5.6, §9 item 5).

Recipe (MLIF-P §5.1.1, A.3.1; MLIF-C ``absorb_bn.py`` + ``find_threshold``):

1. fold BN into the preceding conv/linear (:func:`multispike.convert.fuse.fold_bn`, exact in eval mode);
2. replace every ``nn.ReLU`` by a :class:`~multispike.neurons.mlif.OneHotMLIF` (β = 1 learnable, θ learnable,
   dropout p = 0.2 with a mask fixed over time);
3. set the thresholds **layer by layer in execution order, each from the input current of that layer with
   every earlier layer already spiking**:

   * ``threshold_init="percentile"`` (paper, default): the lowest edge at ``scale·P_q`` of the layer's input
     current, q = 90: ``θ = scale·P_90`` (for the scaled variant ``θ = 2^{S−1}·scale·P_90``);
   * ``threshold_init="percentile_topedge"`` (MLIF-C): the top edge at ``scale·P_q``, q = 99.7, with the code's
     global factor s_f (0.2-0.6 in MLIF-C runs): ``θ = s_f·P_99.7 / 2^{S−1}`` (scaled variant: ``θ = s_f·P_99.7``).

   Percentiles use the MLIF-C rule ``k = 1 + round(0.01·q·(n−1))`` (``kthvalue``) over all elements of the input
   current of the calibration batches (MLIF-C uses one batch).

Models are time-major (``[T, B, ...]``): stateless layers inside :class:`~multispike.layers.SeqToANNContainer`,
ReLUs as modules. A ReLU that sits *inside* a ``SeqToANNContainer`` (it sees the merged ``[T·B, ...]`` batch) is
replaced by the neuron wrapped in :class:`~multispike.convert.converter.MergedTimeNeuron`, which needs ``T``.
"""
from __future__ import annotations

import copy
import itertools
import math
import warnings
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

from ..layers import SeqToANNContainer
from ..neurons.base import check_positive_int, reset_net
from ..neurons.mlif import OneHotMLIF
from ..quant.logquant import kth_percentile
from .converter import MergedTimeNeuron
from .fuse import fold_bn

__all__ = ["mlif_hybrid_init", "MLIFInitReport", "threshold_from_percentile", "THRESHOLD_INITS"]

THRESHOLD_INITS = ("percentile", "percentile_topedge")
_DEFAULT_Q = {"percentile": 90.0, "percentile_topedge": 99.7}
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class _StopForward(Exception):
    """Raised by the capture hook: the layers after the one being calibrated are not needed."""


@dataclass
class MLIFInitReport:
    """What :func:`mlif_hybrid_init` did: folded BNs and, per neuron, the percentile and the threshold."""

    threshold_init: str
    q: float
    scale: float
    lanes: int
    num_batches: int
    folded: list[dict] = field(default_factory=list)
    unfolded_bn: list[str] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)

    @property
    def thresholds(self) -> dict[str, float]:
        """``{module name: θ}`` in execution order."""
        return {e["name"]: e["theta"] for e in self.layers}

    def to_dict(self) -> dict:
        return {"threshold_init": self.threshold_init, "q": self.q, "scale": self.scale, "lanes": self.lanes,
                "num_batches": self.num_batches, "folded": list(self.folded), "unfolded_bn": list(self.unfolded_bn),
                "layers": [dict(e) for e in self.layers]}

    def __str__(self) -> str:
        head = (f"M-LIF hybrid init: {self.threshold_init} (q={self.q:g}, scale={self.scale:g}), S={self.lanes}, "
                f"{self.num_batches} batch(es); {len(self.folded)} BN folded")
        rows = [f"  {e['index']:>3}  {e['name']:<40} P{self.q:g}={e['percentile']:.5g}  θ={e['theta']:.5g}"
                + (f"  [{e['fallback']}]" if e.get("fallback") else "") for e in self.layers]
        tail = [f"  unfolded BN (kept as an affine op): {', '.join(self.unfolded_bn)}"] if self.unfolded_bn else []
        return "\n".join([head, *rows, *tail])


def threshold_from_percentile(p: float, threshold_init: str, lanes: int, scale: float = 1.0,
                              scaled: bool = False) -> float:
    """θ that puts the lowest (``"percentile"``) or the top (``"percentile_topedge"``) lane edge at ``scale·p``.

    Unscaled lanes have edges ``2^s·θ`` (lowest θ, top ``2^{S−1}θ``); scaled lanes ``2^{s−S+1}·θ`` (top θ).

    Example::

        >>> threshold_from_percentile(8.0, "percentile_topedge", lanes=3, scale=0.5)   # 0.5·8/2^2
        1.0
    """
    if threshold_init not in THRESHOLD_INITS:
        raise ValueError(f"threshold_init must be one of {THRESHOLD_INITS}, got {threshold_init!r}")
    top = 2.0 ** (check_positive_int(lanes, "lanes", fix="Use S >= 1 lanes.") - 1)
    edge = scale * p
    if threshold_init == "percentile":
        return edge * top if scaled else edge
    return edge if scaled else edge / top


def _batch_input(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _parent_and_attr(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return (root.get_submodule(parent_name) if parent_name else root), attr


@torch.no_grad()
def _execution_order(net: nn.Module, relus: dict[str, nn.Module], batch) -> list[str]:
    calls: dict[str, int] = {n: 0 for n in relus}
    order: list[str] = []

    def make_hook(name):
        def hook(mod, inputs):
            calls[name] += 1
            if calls[name] == 1:
                order.append(name)
        return hook

    hooks = [m.register_forward_pre_hook(make_hook(n)) for n, m in relus.items()]
    try:
        reset_net(net)
        net(_batch_input(batch))
    finally:
        for h in hooks:
            h.remove()
    shared = {n: c for n, c in calls.items() if c > 1}
    if shared:
        raise ValueError(f"mlif_hybrid_init: ReLU module(s) {shared} are called several times per forward; a "
                         f"stateful neuron cannot be shared - give every activation its own nn.ReLU")
    unused = [n for n, c in calls.items() if c == 0]
    if unused:
        raise ValueError(f"mlif_hybrid_init: ReLU module(s) {unused} are never called by forward(); remove them or "
                         f"check the calibration input")
    return order


@torch.no_grad()
def _capture_input(net: nn.Module, neuron: nn.Module, batches: list) -> torch.Tensor:
    captured: list[torch.Tensor] = []

    def hook(mod, inputs):
        captured.append(inputs[0].detach().reshape(-1).float().cpu())
        raise _StopForward

    handle = neuron.register_forward_pre_hook(hook)
    try:
        for batch in batches:
            reset_net(net)
            try:
                net(_batch_input(batch))
            except _StopForward:
                continue
    finally:
        handle.remove()
        reset_net(net)
    if len(captured) != len(batches):
        raise RuntimeError("mlif_hybrid_init: a calibration batch never reached the neuron being calibrated")
    return torch.cat(captured)


def mlif_hybrid_init(
    model: nn.Module,
    data: Iterable,
    *,
    lanes: int = 3,
    threshold_init: str = "percentile",
    q: float | None = None,
    scale: float = 1.0,
    num_batches: int = 1,
    T: int | None = None,
    dropout: float = 0.2,
    fold_batchnorm: bool = True,
    neuron_kwargs: dict | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, MLIFInitReport]:
    """Turn a trained time-major ANN into a one-hot M-LIF SNN with data-driven thresholds (§5.6).

    Args:
        model: time-major ANN (``[T, B, ...]`` in, ReLU modules, BN after conv/linear in the same sequential).
        data: iterable of input batches (or ``(input, label)`` pairs) in the model's input format; the first
            ``num_batches`` are used (materialised once, then replayed for every layer).
        lanes: S of every neuron.
        threshold_init: ``"percentile"`` (paper, q = 90) or ``"percentile_topedge"`` (MLIF-C, q = 99.7).
        q: percentile (default by mode); scale: the factor s_f (MLIF-C: 0.2-0.6 for the top-edge rule).
        num_batches: calibration batches (MLIF-C: 1); their input currents are pooled.
        T: timesteps, needed only for ReLUs inside a ``SeqToANNContainer`` (defaults to ``model.T``).
        dropout: dropout of every neuron (0.2 in MLIF-P; the mask is fixed over time).
        fold_batchnorm: fold BN first (MLIF-C ``absorb_bn.py``).
        neuron_kwargs: further :class:`OneHotMLIF` arguments (reset, leak, surrogate, ...).
        inplace: modify ``model`` instead of a deep copy.

    Returns:
        ``(snn, report)``: the SNN in the training mode ``model`` had, and a :class:`MLIFInitReport`.

    Example::

        >>> import torch, torch.nn as nn
        >>> from multispike.layers import SeqToANNContainer
        >>> ann = nn.Sequential(SeqToANNContainer(nn.Linear(4, 8)), nn.ReLU(), SeqToANNContainer(nn.Linear(8, 2)))
        >>> snn, rep = mlif_hybrid_init(ann, [torch.randn(1, 16, 4)], lanes=3)
        >>> type(snn[1]).__name__, list(rep.thresholds)
        ('OneHotMLIF', ['1'])
    """
    if threshold_init not in THRESHOLD_INITS:
        raise ValueError(f"mlif_hybrid_init: threshold_init must be one of {THRESHOLD_INITS}, got {threshold_init!r}")
    q = _DEFAULT_Q[threshold_init] if q is None else float(q)
    if not (0.0 < q <= 100.0):
        raise ValueError(f"mlif_hybrid_init: q must be a percentile in (0, 100], got {q}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"mlif_hybrid_init: scale must be a finite number > 0, got {scale!r}")
    num_batches = check_positive_int(num_batches, "num_batches", fix="Use at least one calibration batch.")
    kwargs = dict(neuron_kwargs or {})
    for key in ("lanes", "v_threshold", "step_mode"):
        if key in kwargs:
            raise ValueError(f"mlif_hybrid_init: {key!r} is set by mlif_hybrid_init itself (lanes=... is its own "
                             f"argument); remove it from neuron_kwargs")
    kwargs.setdefault("dropout", dropout)

    batches = list(itertools.islice(iter(data), num_batches))
    if not batches:
        raise ValueError("mlif_hybrid_init: the calibration data yielded no batch")
    net = model if inplace else copy.deepcopy(model)
    was_training = net.training
    net.eval()
    report = MLIFInitReport(threshold_init=threshold_init, q=q, scale=float(scale), lanes=int(lanes),
                            num_batches=len(batches))
    if fold_batchnorm:
        report.folded = [dict(r) for r in fold_bn(net)]
    report.unfolded_bn = [n for n, m in net.named_modules() if isinstance(m, _BN)]
    if report.unfolded_bn and fold_batchnorm:
        warnings.warn(f"mlif_hybrid_init: {len(report.unfolded_bn)} BatchNorm layer(s) could not be folded (not "
                      f"directly after a conv/linear in one nn.Sequential): {report.unfolded_bn[:5]}", stacklevel=2)

    relus = {n: m for n, m in net.named_modules() if isinstance(m, nn.ReLU)}
    if not relus:
        raise ValueError(f"mlif_hybrid_init: {type(model).__name__} has no nn.ReLU module to replace (functional "
                         f"relu calls are not seen; use nn.ReLU modules)")
    order = _execution_order(net, relus, batches[0])

    T = T if T is not None else getattr(net, "T", None)
    ref = next(itertools.chain(net.parameters(), net.buffers()), None)
    neurons: list[tuple[str, OneHotMLIF]] = []
    for name in order:
        parent, attr = _parent_and_attr(net, name)
        neuron = OneHotMLIF(lanes=lanes, step_mode="m", **kwargs)
        if ref is not None:
            neuron.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
        replacement: nn.Module = neuron
        if isinstance(parent, SeqToANNContainer):
            if T is None:
                raise ValueError(f"mlif_hybrid_init: ReLU {name!r} sits inside a SeqToANNContainer (merged T·B "
                                 f"batch); pass T= so the neuron can unfold time, or move the ReLU out of the "
                                 f"container")
            replacement = MergedTimeNeuron(neuron, check_positive_int(T, "T", fix="Use T >= 1 timesteps."))
        setattr(parent, attr, replacement)
        neurons.append((name, neuron))
    net.eval()

    for index, (name, neuron) in enumerate(neurons):
        current = _capture_input(net, neuron, batches)
        p = kth_percentile(current, q)
        theta = threshold_from_percentile(p, threshold_init, neuron.lanes, scale, neuron.scaled)
        fallback = ""
        if not (math.isfinite(theta) and theta > 0):
            peak = float(current.max())
            if peak > 0:
                theta, fallback = peak, "percentile <= 0: θ = max input"
            else:
                theta, fallback = 1.0, "layer input never positive: θ = 1"
            warnings.warn(f"mlif_hybrid_init: {name}: P{q:g} of the input current is {p:.4g}; {fallback}",
                          stacklevel=2)
        with torch.no_grad():
            neuron.v_threshold.fill_(theta)
        report.layers.append({"index": index, "name": name, "percentile": p,
                              "theta": float(neuron.v_threshold.detach().flatten()[0]), "numel": current.numel(),
                              "fallback": fallback})
    reset_net(net)
    net.train(was_training)
    return net, report
