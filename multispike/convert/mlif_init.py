"""Hybrid initialisation of a one-hot M-LIF SNN from a trained ANN (algorithms.md §5.4, §5.6, §9 item 5).

Recipe (MLIF-P §5.1.1, A.3.1; MLIF-C ``absorb_bn.py`` + ``find_threshold``):

1. fold BN into the preceding conv/linear (:func:`multispike.convert.fuse.fold_bn`, exact in eval mode);
2. replace every activation by a :class:`~multispike.neurons.mlif.OneHotMLIF` (β = 1 learnable, θ learnable).
   The activations are the :class:`~multispike.quant.logquant.LogQuant` modules of a log-quantized ANN (a ReLU
   right before one becomes an identity: θ > 0 already rectifies), else every ``nn.ReLU``;
3. dropout only where the architecture has it: the model's own dropout modules (the zoo's ``D`` positions,
   ``nn.Dropout`` / :class:`~multispike.models.TimeSharedDropout`) get ``p = dropout`` (MLIF-P: 0.2). The
   neurons themselves get lane dropout only if ``neuron_dropout > 0`` (before, every neuron got it, including the
   one after ResNet20-DIET's residual add, where the paper's network has none);
4. set θ and the payload scale ``c`` (a spike on lane s is worth ``c·2^s``) per layer:

   * ``threshold_init="logquant"`` (default): the exact T = 1 mapping of §5.4. A log quantizer of scale α with S
     non-zero levels ``α·2^{1−S}, …, α`` equals an M-LIF layer with ``θ = α·2^{1/2−S}``, ``c = α·2^{1−S} = √2·θ``,
     ``lane_bounds="floor"``, ``fire_ge=True``; for a b-bit :class:`~multispike.quant.logquant.LogQuant` that is
     ``S = 2^b − 1`` lanes (``θ = α·2^{3/2−2^b}``), value by value (``lanes=None`` picks that S per layer).
     Derivation: LQ level ``α·2^e`` (e = 1−S..0) is output on ``[α·2^{e−½}, α·2^{e+½})`` (half-up rounding of
     ``log₂``, the top level open above, 0 below ``α·2^{½−S}``); with ``e = 1−S+s`` these are the lanes
     ``[θ·2^s, θ·2^{s+1})`` and the value is ``α·2^{1−S}·2^s = √2·θ·2^s``. α is the calibrated ``LogQuant.alpha``
     of an LQ-ANN; for a ReLU ANN it is calibrated here like an LQ-ANN's (``scale·P_q`` of the rectified input
     current, q = 99.7, layer by layer with the earlier layers spiking);
   * ``threshold_init="percentile"`` (paper text): the lowest edge at ``scale·P_q`` of the layer's input current,
     q = 90: ``θ = scale·P_90`` (scaled variant ``θ = 2^{S−1}·scale·P_90``). Then only 10 % of every layer's inputs
     fire at all (measured: the demo's digits CNN starts near chance);
   * ``threshold_init="percentile_topedge"`` (MLIF-C): the top edge at ``scale·P_q``, q = 99.7, with the code's
     global factor s_f (0.2-0.6 in MLIF-C runs): ``θ = s_f·P_99.7 / 2^{S−1}`` (scaled variant: ``θ = s_f·P_99.7``).

   ``payload_scale="auto"`` gives ``c = √2·θ`` for ``logquant`` and ``c = θ`` (a spike worth what its reset
   removes, the conversion convention) for the percentile rules, so the copied weights, folded biases and identity
   shortcuts see ANN-scale values; ``"unit"`` keeps the bare payload ``2^s`` (the paper's direct-training
   convention, and this module's behaviour before payload scales existed); a number fixes c.

   Percentiles use the MLIF-C rule ``k = 1 + round(0.01·q·(n−1))`` (``kthvalue``) over all elements of the input
   current of the calibration batches (MLIF-C uses one batch).

Models are time-major (``[T, B, ...]``): stateless layers inside :class:`~multispike.layers.SeqToANNContainer`,
activations as modules. An activation *inside* a ``SeqToANNContainer`` (it sees the merged ``[T·B, ...]`` batch)
is replaced by the neuron wrapped in :class:`~multispike.convert.converter.MergedTimeNeuron`, which needs ``T``.

Size (over 450 lines): one recipe (the M-LIF hybrid initialisation, §5.6) with its per-layer report and the
percentile threshold rule it depends on.
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
from ..quant.logquant import LogQuant, kth_percentile, log_quant_lanes, mlif_lq_parameters
from .converter import MergedTimeNeuron
from .fuse import fold_bn

__all__ = ["mlif_hybrid_init", "MLIFInitReport", "threshold_from_percentile", "THRESHOLD_INITS",
           "PAYLOAD_SCALES"]

THRESHOLD_INITS = ("logquant", "percentile", "percentile_topedge")
PAYLOAD_SCALES = ("auto", "unit", "threshold", "logquant")
_DEFAULT_Q = {"logquant": 99.7, "percentile": 90.0, "percentile_topedge": 99.7}
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class _StopForward(Exception):
    """Raised by the capture hook: the layers after the one being calibrated are not needed."""


@dataclass
class MLIFInitReport:
    """What :func:`mlif_hybrid_init` did: folded BNs, dropout, and per neuron the statistic, θ and payload scale.

    ``layers`` entries: ``index``, ``name``, ``lanes``, ``percentile`` (the measured statistic, ``None`` when α came
    from a LogQuant), ``alpha`` and ``bits`` (logquant), ``theta``, ``payload_scale`` (``None``: bare payload),
    ``exact`` (the layer equals its log quantizer value by value at T = 1), ``numel``, ``fallback``.
    """

    threshold_init: str
    q: float
    scale: float
    lanes: int | None
    num_batches: int
    source: str = "ReLU"
    payload: str = "auto"
    dropout: float = 0.0
    neuron_dropout: float = 0.0
    dropout_modules: list[str] = field(default_factory=list)
    folded: list[dict] = field(default_factory=list)
    unfolded_bn: list[str] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)

    @property
    def thresholds(self) -> dict[str, float]:
        """``{module name: θ}`` in execution order."""
        return {e["name"]: e["theta"] for e in self.layers}

    @property
    def exact(self) -> bool:
        """Every layer is an exact image of its log quantizer (``threshold_init="logquant"`` from an LQ-ANN with
        ``S = 2^b − 1``); False for the percentile rules and for truncated pairings such as S = 2 vs b = 2."""
        return bool(self.layers) and all(e.get("exact") for e in self.layers)

    def to_dict(self) -> dict:
        return {"threshold_init": self.threshold_init, "q": self.q, "scale": self.scale, "lanes": self.lanes,
                "num_batches": self.num_batches, "source": self.source, "payload": self.payload,
                "dropout": self.dropout, "neuron_dropout": self.neuron_dropout,
                "dropout_modules": list(self.dropout_modules), "exact": self.exact,
                "folded": list(self.folded), "unfolded_bn": list(self.unfolded_bn),
                "layers": [dict(e) for e in self.layers]}

    def __str__(self) -> str:
        from_lq = self.source == "LogQuant" and self.threshold_init == "logquant"
        stat = "α from LogQuant" if from_lq else f"q={self.q:g}, scale={self.scale:g}"
        head = (f"M-LIF hybrid init: {self.threshold_init} ({stat}) from a {self.source} ANN, payload {self.payload}, "
                f"{self.num_batches} batch(es); {len(self.folded)} BN folded; dropout {self.dropout:g} on "
                f"{len(self.dropout_modules)} module(s), lane dropout {self.neuron_dropout:g}"
                + ("; exact LQ mapping" if self.exact else ""))
        rows = []
        for e in self.layers:
            if e.get("bits"):
                stat = f"α={e['alpha']:.5g} (b={e['bits']})"
            elif e.get("alpha") is not None:
                stat = f"α={e['alpha']:.5g} (P{self.q:g} of the rectified input)"
            else:
                stat = f"P{self.q:g}={e['percentile']:.5g}"
            c = "1" if e.get("payload_scale") is None else f"{e['payload_scale']:.5g}"
            rows.append(f"  {e['index']:>3}  {e['name']:<40} S={e['lanes']}  {stat}  θ={e['theta']:.5g}  c={c}"
                        + ("  exact" if e.get("exact") else "") + (f"  [{e['fallback']}]" if e.get("fallback") else ""))
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
    if threshold_init not in ("percentile", "percentile_topedge"):
        raise ValueError(f"threshold_init must be 'percentile' or 'percentile_topedge', got {threshold_init!r}")
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
    """Names of the activation modules ``relus`` in the order forward() calls them (each exactly once)."""
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
        raise ValueError(f"mlif_hybrid_init: activation module(s) {shared} are called several times per forward; "
                         f"a stateful neuron cannot be shared - give every activation its own module")
    unused = [n for n, c in calls.items() if c == 0]
    if unused:
        raise ValueError(f"mlif_hybrid_init: activation module(s) {unused} are never called by forward(); remove "
                         f"them or check the calibration input")
    return order


def _fallback_scale(current: torch.Tensor, symbol: str) -> tuple[float, str]:
    """(scale, reason) when the percentile statistic is not a usable scale ``symbol`` (θ or α): the largest input
    current, or 1 when the layer's input is never positive."""
    peak = float(current.max())
    if peak > 0:
        return peak, f"percentile <= 0: {symbol} = max input"
    return 1.0, f"layer input never positive: {symbol} = 1"


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


def _sites(net: nn.Module) -> tuple[str, dict[str, nn.Module], list[str]]:
    """``(source, {name: activation}, [names of ReLUs that become identities])``.

    A log-quantized ANN (any :class:`LogQuant`): the LogQuant modules are the activations; a ReLU right before a
    LogQuant in the same ``nn.Sequential`` is redundant in front of a neuron (θ > 0 rectifies) and becomes
    ``nn.Identity``. Any other ReLU there is an un-quantized activation with no exact M-LIF image: an error.
    Otherwise every ``nn.ReLU`` is an activation.
    """
    quants = {n: m for n, m in net.named_modules() if isinstance(m, LogQuant)}
    relus = {n: m for n, m in net.named_modules() if isinstance(m, nn.ReLU)}
    if not quants:
        return "ReLU", relus, []
    quant_ids = {id(m) for m in quants.values()}
    redundant, stray = [], []
    for name in relus:
        parent, attr = _parent_and_attr(net, name)
        follows = None
        if isinstance(parent, nn.Sequential):
            keys = list(parent._modules)
            pos = keys.index(attr)
            follows = parent._modules[keys[pos + 1]] if pos + 1 < len(keys) else None
        (redundant if follows is not None and id(follows) in quant_ids else stray).append(name)
    if stray:
        raise ValueError(f"mlif_hybrid_init: this log-quantized ANN also has un-quantized ReLU(s) {stray[:5]} (not "
                         f"directly followed by a LogQuant in the same nn.Sequential); they have no exact M-LIF "
                         f"image. Quantize every activation, or convert the ReLU ANN instead")
    return "LogQuant", quants, redundant


def _inside_merged(root: nn.Module, name: str) -> bool:
    """Is the module ``name`` inside a SeqToANNContainer (it then sees the merged ``[T·B, ...]`` batch)?"""
    parts = name.split(".")
    return any(isinstance(root.get_submodule(".".join(parts[:i])), SeqToANNContainer) for i in range(1, len(parts)))


def _set_dropout(net: nn.Module, p: float) -> list[str]:
    """Set ``p`` on the architecture's own dropout modules; returns their names."""
    from ..models.blocks import TimeSharedDropout

    names = []
    for name, m in net.named_modules():
        if isinstance(m, _DROPOUTS + (TimeSharedDropout,)):
            m.p = float(p)
            names.append(name)
    return names


def _check_probability(p, name: str) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) < 1.0:
        raise ValueError(f"mlif_hybrid_init: {name} must be a probability in [0, 1), got {p!r}")
    return float(p)


def mlif_hybrid_init(
    model: nn.Module,
    data: Iterable,
    *,
    lanes: int | None = None,
    threshold_init: str = "logquant",
    q: float | None = None,
    scale: float = 1.0,
    num_batches: int = 1,
    T: int | None = None,
    dropout: float = 0.2,
    neuron_dropout: float = 0.0,
    payload_scale: str | float = "auto",
    fold_batchnorm: bool = True,
    neuron_kwargs: dict | None = None,
    inplace: bool = False,
    calibrate: bool = True,
) -> tuple[nn.Module, MLIFInitReport]:
    """Turn a trained time-major ANN (ReLU or log-quantized) into a one-hot M-LIF SNN (§5.4, §5.6).

    Args:
        model: time-major ANN (``[T, B, ...]`` in; activations as modules: ``nn.ReLU``, or :class:`LogQuant`
            (optionally right after a ReLU) for an LQ-ANN; BN after conv/linear in the same sequential).
        data: iterable of input batches (or ``(input, label)`` pairs) in the model's input format; the first
            ``num_batches`` are used (materialised once, then replayed for every layer).
        lanes: S of every neuron; ``None``: ``2^b − 1`` per layer for an LQ-ANN (the exact pairing), else 3.
        threshold_init: ``"logquant"`` (default: the exact LQ mapping; α from the LQ-ANN or calibrated at P99.7),
            ``"percentile"`` (paper text, q = 90) or ``"percentile_topedge"`` (MLIF-C, q = 99.7).
        q: percentile (default by mode; unused when α comes from a LogQuant); scale: the factor s_f on the
            statistic (MLIF-C: 0.2-0.6 for the top-edge rule; keep 1 for the exact mapping).
        num_batches: calibration batches (MLIF-C: 1); their input currents are pooled.
        T: timesteps, needed only for activations inside a ``SeqToANNContainer`` (defaults to ``model.T``).
        dropout: p of the architecture's own dropout modules (MLIF-P: 0.2); a model without any gets none.
        neuron_dropout: lane dropout inside every neuron (mask fixed over time). 0 by default: the paper's
            networks have dropout at their ``D`` positions only. ``neuron_kwargs["dropout"]`` is the same knob.
        payload_scale: ``"auto"`` (``√2·θ`` for logquant, θ for the percentile rules), ``"logquant"``,
            ``"threshold"`` (θ), ``"unit"`` (bare payload ``2^s``) or a number > 0.
        fold_batchnorm: fold BN first (MLIF-C ``absorb_bn.py``).
        neuron_kwargs: further :class:`OneHotMLIF` arguments (reset, leak, surrogate, gamma, ...). For
            ``logquant`` the defaults ``lane_bounds="floor"``, ``fire_ge=True`` make the mapping exact.
        inplace: modify ``model`` instead of a deep copy.
        calibrate: ``False`` builds the structure only (what rebuilding a saved hybrid run needs, whose saved
            thresholds and payload scales are loaded afterwards): ``data`` is only run once to find the layer
            order, no input current is captured, the data-driven α/θ are placeholders (1, recorded as
            ``fallback = "not calibrated"``) and no fallback warning is emitted. α read from a LogQuant is still
            exact.

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
    if isinstance(scale, bool) or not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"mlif_hybrid_init: scale must be a finite number > 0, got {scale!r}")
    if isinstance(payload_scale, str):
        if payload_scale not in PAYLOAD_SCALES:
            raise ValueError(f"mlif_hybrid_init: payload_scale must be one of {PAYLOAD_SCALES} or a number > 0, got "
                             f"{payload_scale!r}")
    elif isinstance(payload_scale, bool) or not (isinstance(payload_scale, (int, float))
                                                 and math.isfinite(payload_scale) and payload_scale > 0):
        raise ValueError(f"mlif_hybrid_init: payload_scale must be one of {PAYLOAD_SCALES} or a number > 0, got "
                         f"{payload_scale!r}")
    payload = payload_scale
    if payload == "auto":
        payload = "logquant" if threshold_init == "logquant" else "threshold"
    num_batches = check_positive_int(num_batches, "num_batches", fix="Use at least one calibration batch.")
    if not isinstance(calibrate, bool):
        raise TypeError(f"mlif_hybrid_init: calibrate must be True or False, got {calibrate!r}")
    if lanes is not None:
        lanes = check_positive_int(lanes, "mlif_hybrid_init: lanes (S)", fix="Use S >= 1 lanes.")
    dropout = _check_probability(dropout, "dropout")
    kwargs = dict(neuron_kwargs or {})
    for key in ("lanes", "v_threshold", "step_mode", "payload_scale"):
        if key in kwargs:
            raise ValueError(f"mlif_hybrid_init: {key!r} is set by mlif_hybrid_init itself ({key}=... is its own "
                             f"argument or the init's result); remove it from neuron_kwargs")
    neuron_dropout = _check_probability(kwargs.pop("dropout", neuron_dropout), "neuron_dropout")
    kwargs["dropout"] = neuron_dropout
    if threshold_init == "logquant":
        kwargs.setdefault("lane_bounds", "floor")   # LQ's level e covers [α·2^{e−½}, α·2^{e+½}): closed below
        kwargs.setdefault("fire_ge", True)          # half-up rounding: a tie on an edge goes up
    learnable_c = bool(kwargs.pop("learnable_payload_scale", False))

    batches = list(itertools.islice(iter(data), num_batches))
    if not batches:
        raise ValueError("mlif_hybrid_init: the calibration data yielded no batch")
    net = model if inplace else copy.deepcopy(model)
    was_training = net.training
    net.eval()
    source, sites, redundant = _sites(net)
    if not sites:
        raise ValueError(f"mlif_hybrid_init: {type(model).__name__} has no nn.ReLU (or LogQuant) module to replace "
                         f"(functional relu calls are not seen; use nn.ReLU modules)")
    report = MLIFInitReport(threshold_init=threshold_init, q=q, scale=float(scale), lanes=lanes,
                            num_batches=len(batches), source=source,
                            payload=payload if isinstance(payload, str) else f"{payload:g}",
                            dropout=dropout, neuron_dropout=neuron_dropout)
    if fold_batchnorm:
        report.folded = [dict(r) for r in fold_bn(net)]
    report.unfolded_bn = [n for n, m in net.named_modules() if isinstance(m, _BN)]
    if report.unfolded_bn and fold_batchnorm:
        warnings.warn(f"mlif_hybrid_init: {len(report.unfolded_bn)} BatchNorm layer(s) could not be folded (not "
                      f"directly after a conv/linear in one nn.Sequential): {report.unfolded_bn[:5]}", stacklevel=2)
    report.dropout_modules = _set_dropout(net, dropout)
    order = _execution_order(net, sites, batches[0])

    T = T if T is not None else getattr(net, "T", None)
    ref = next(itertools.chain(net.parameters(), net.buffers()), None)
    neurons: list[tuple[str, OneHotMLIF, LogQuant | None]] = []
    for name in redundant:
        parent, attr = _parent_and_attr(net, name)
        setattr(parent, attr, nn.Identity())
    for name in order:
        parent, attr = _parent_and_attr(net, name)
        quant = sites[name] if isinstance(sites[name], LogQuant) else None
        S = lanes if lanes is not None else (log_quant_lanes(quant.bits) if quant is not None else 3)
        neuron = OneHotMLIF(lanes=S, step_mode="m", **kwargs)
        if ref is not None:
            neuron.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
        replacement: nn.Module = neuron
        if _inside_merged(net, name):
            if T is None:
                raise ValueError(f"mlif_hybrid_init: activation {name!r} sits inside a SeqToANNContainer (merged T·B "
                                 f"batch); pass T= so the neuron can unfold time, or move it out of the container")
            replacement = MergedTimeNeuron(neuron, check_positive_int(T, "T", fix="Use T >= 1 timesteps."))
        setattr(parent, attr, replacement)
        neurons.append((name, neuron, quant))
    net.eval()

    for index, (name, neuron, quant) in enumerate(neurons):
        entry = {"index": index, "name": name, "lanes": neuron.lanes, "percentile": None, "alpha": None,
                 "bits": None, "exact": False, "numel": None, "fallback": ""}
        if threshold_init == "logquant" and quant is not None:
            # α of the LQ-ANN, θ and c computed exactly as LogQuant computes its own edge (bitwise-equal decisions).
            alpha = quant.alpha.detach().to(device=neuron.v_threshold.device, dtype=neuron.v_threshold.dtype) * scale
            entry.update(alpha=float(alpha), bits=quant.bits,
                         exact=(neuron.lanes == log_quant_lanes(quant.bits) and scale == 1.0
                                and neuron.lane_bounds == "floor" and neuron.fire_ge))
            theta_t, c_t = mlif_lq_parameters(alpha, neuron.lanes, neuron.scaled)
        elif not calibrate:
            # Structure only: same modules, buffers and payload kind as a calibrated init, placeholder values.
            entry["fallback"] = "not calibrated"
            if threshold_init == "logquant":
                alpha = torch.ones((), dtype=neuron.v_threshold.dtype, device=neuron.v_threshold.device)
                entry["alpha"] = 1.0
                theta_t, c_t = mlif_lq_parameters(alpha, neuron.lanes, neuron.scaled)
            else:
                theta_t = torch.tensor(1.0, dtype=neuron.v_threshold.dtype)
                c_t = theta_t
        else:
            current = _capture_input(net, neuron, batches)
            entry["numel"] = current.numel()
            if threshold_init == "logquant":
                p = kth_percentile(current.clamp(min=0), q)     # LQ calibration statistic (post-ReLU)
                entry["percentile"] = p
                if not (math.isfinite(p) and p > 0):
                    p, entry["fallback"] = _fallback_scale(current, "α")
                    warnings.warn(f"mlif_hybrid_init: {name}: P{q:g} of the rectified input current is "
                                  f"{entry['percentile']:.4g}; {entry['fallback']}", stacklevel=2)
                alpha = torch.tensor(p * scale, dtype=neuron.v_threshold.dtype, device=neuron.v_threshold.device)
                entry["alpha"] = float(alpha)
                theta_t, c_t = mlif_lq_parameters(alpha, neuron.lanes, neuron.scaled)
            else:
                p = kth_percentile(current, q)
                entry["percentile"] = p
                theta = threshold_from_percentile(p, threshold_init, neuron.lanes, scale, neuron.scaled)
                if not (math.isfinite(theta) and theta > 0):
                    theta, entry["fallback"] = _fallback_scale(current, "θ")
                    warnings.warn(f"mlif_hybrid_init: {name}: P{q:g} of the input current is {p:.4g}; "
                                  f"{entry['fallback']}", stacklevel=2)
                theta_t = torch.tensor(theta, dtype=neuron.v_threshold.dtype)
                c_t = theta_t
        with torch.no_grad():
            neuron.v_threshold.copy_(theta_t.expand_as(neuron.v_threshold))
        c = {"logquant": c_t, "threshold": neuron.v_threshold.detach().clone(), "unit": None}.get(payload, payload) \
            if isinstance(payload, str) else payload
        if payload == "logquant" and threshold_init != "logquant":
            c = neuron.v_threshold.detach() * math.sqrt(2.0)
        if payload != "logquant" or threshold_init != "logquant":
            entry["exact"] = False
        if c is not None:
            neuron.set_payload_scale(c, learnable=learnable_c)
        entry["theta"] = float(neuron.v_threshold.detach().flatten()[0])
        entry["payload_scale"] = None if c is None else float(neuron.payload_scale.detach().flatten()[0])
        report.layers.append(entry)
    reset_net(net)
    net.train(was_training)
    return net, report
