"""Per-module-type operation counters of :class:`~multispike.metrics.opcount.OpCounter`.

Each handler is a small function ``handler(counter, name) -> forward hook`` for one kind of module: spiking
neurons (register their output as a spike train with its events), synaptic layers (Conv1d/2d, Linear: MACs or
accumulates), average pools, residual additions, modules that only move spikes (max pooling, dropout, flatten,
temporal alignment) and modules that cost nothing. :data:`LAYER_HANDLERS` dispatches the counted layer types;
:func:`free_reason` says why a module costs nothing. The counting rules are those of the
:mod:`~multispike.metrics.opcount` docstring.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from ..layers import DirectEncoder, MeanOverTime, ResidualAdd, TemporalAlign, align_time
from ..models.base import TimeSharedDropout
from ._op_attention import attention_output_view
from ._tracking import SpikeView
from .fanout import adaptive_fanout, adaptive_sum_pool, avgpool_fanout, conv_fanout, sum_pool
from .monitors import check_statistics_shape
from .optable import NeuronOps

if TYPE_CHECKING:  # pragma: no cover
    from .opcount import OpCounter, _Acc

__all__ = ["LAYER_HANDLERS", "layer_handler", "free_reason", "neuron_hook", "wrapper_hook", "propagate_hook",
           "free_hook", "unsupported_hook", "moves_spikes"]

SYNAPTIC = (nn.Conv1d, nn.Conv2d, nn.Linear)
POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
SHAPE_ONLY = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
MAXPOOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)


def _dropout_types() -> tuple[type, ...]:
    # The zoo's time-shared dropout draws one mask for all steps; like nn.Dropout it is free at inference.
    return (nn.Dropout, nn.Dropout1d, nn.Dropout2d, TimeSharedDropout)


def free_reason(m: nn.Module) -> str | None:
    """Why a module costs no counted operation, or ``None`` if it is not a known free module."""
    from ..quant.qcfs import QCFS
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return "batch norm: folded into the preceding conv/linear at inference"
    if isinstance(m, _dropout_types()):
        return "dropout: identity at inference"
    if isinstance(m, (nn.Identity, nn.Flatten, nn.Unflatten)):
        return "data movement"
    if isinstance(m, MAXPOOLS):
        return "max pooling: comparisons, no accumulate"
    if isinstance(m, (nn.ReLU, nn.ReLU6, nn.GELU, QCFS)):
        return "elementwise ANN activation"
    from ..models.airbench import LogitScale
    if isinstance(m, LogitScale):
        return "readout logit scale: folds into the classifier's weights (fold_logit_scale)"
    if isinstance(m, TemporalAlign):
        return "temporal alignment: data movement (averaging adds not counted)"
    if isinstance(m, DirectEncoder):
        return "direct encoding: repetition of the input"
    if isinstance(m, MeanOverTime):
        return "readout time-mean (T-1 adds per output, not counted)"
    return None


def moves_spikes(m: nn.Module) -> bool:
    """Whether a free module passes a spike train on (data movement, max pooling, dropout, alignment)."""
    return isinstance(m, SHAPE_ONLY + MAXPOOLS + _dropout_types() + (TemporalAlign,))


def _ac_events(neuron: nn.Module, events: torch.Tensor, lanes: torch.Tensor) -> torch.Tensor:
    """Accumulates one output element costs downstream: its unit events for a count neuron (a spike of
    count k is k accumulates), its active lanes for a lane neuron (``lanes > 1``: each one-hot lane has
    pre-scaled weights, so a fired lane is one accumulate whatever its weight 2^s)."""
    return lanes if int(getattr(neuron, "lanes", 1) or 1) > 1 else events


def _apply_like(module: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """Apply a stateless module (max pooling) to an events map; ``forward`` directly, so no hook fires."""
    return module.forward(t)


def neuron_hook(oc: "OpCounter", name: str):
    def hook(module, args, y):
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"OpCounter: spiking layer {name!r} returned {type(y).__name__}, expected a tensor")
        with torch.no_grad():
            ev = module.spike_events(y)
            ln = module.active_lanes(y)
            check_statistics_shape(module, name, y, ev, "spike_events")
            check_statistics_shape(module, name, y, ln, "active_lanes")
            single = getattr(module, "step_mode", "m") == "s"
            T, B = (1, y.shape[0]) if single else (y.shape[0], y.shape[1])
            if oc._fwd_B is None:
                oc._fwd_B = int(B)
            oc._fwd_netT = max(oc._fwd_netT, int(T))
            cost = _ac_events(module, ev, ln)
            oc._spikes.register(y, cost, cost if torch.equal(cost, ln) else ln, name, T, B)
            st = oc._neurons.get(name)
            if st is None:
                st = oc._neurons[name] = NeuronOps(name, type(module).__name__,
                                                     levels=int(getattr(module, "levels", 1) or 1),
                                                     lanes=int(getattr(module, "lanes", 1) or 1))
                oc._neuron_raw[name] = {"events": 0.0, "lanes": 0.0, "elements": 0.0, "steps": 0.0}
            raw = oc._neuron_raw[name]
            st.neurons = y[0].numel() if single else y[0, 0].numel()
            raw["events"] += float(ev.sum(dtype=torch.float64))
            raw["lanes"] += float(ln.sum(dtype=torch.float64))
            raw["elements"] += y.numel()
            if single:
                raw["steps"] += 1
                st.T = max(st.T, 1)
            else:
                st.T = T
    return hook


def wrapper_hook(oc, name: str):
    def hook(module, args, y):
        if not isinstance(y, torch.Tensor) or oc._spikes.lookup(y) is not None or y.dim() < 2:
            return
        with torch.no_grad():
            ev, ln = module.spike_events(y), module.active_lanes(y)
            if isinstance(ev, torch.Tensor) and ev.shape == y.shape and ln.shape == y.shape:
                oc._spikes.register(y, _ac_events(module, ev, ln), ln, name, y.shape[0], y.shape[1])
    return hook


def fanout(oc, name: str, module: nn.Module, in_shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    key = (name, in_shape, str(device))
    fan = oc._fanouts.get(key)
    if fan is None:
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            fan = conv_fanout(module, in_shape).to(device)
        elif isinstance(module, (nn.AvgPool1d, nn.AvgPool2d)):
            fan = avgpool_fanout(module, in_shape, device=device)
        else:
            fan = adaptive_fanout(module, in_shape, device=device)
        oc._fanouts[key] = fan
    return fan


def synaptic_hook(oc, name: str):
    def hook(module, args, out):
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor):
            oc._flag(name, module, "called without a tensor input")
            return
        with torch.no_grad():
            count_synaptic(oc, name, module, x, out)
    return hook


def count_synaptic(oc, name: str, module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> None:
    acc = oc._layer(name, module, "linear" if isinstance(module, nn.Linear) else "conv", "MAC")
    view = oc._spikes.lookup(x)
    if view is None and oc._attn_capture:
        view = attention_output_view(oc, x)
    w = module.weight
    if isinstance(module, nn.Linear):
        in_f, out_f = module.in_features, module.out_features
        if x.dim() >= 3 and not oc._time_stack:
            S, T_call = x.shape[0] * x.shape[1], x.shape[0]   # time-major [T, B, ..., C]
        else:
            S, T_call = (x.shape[0] if x.dim() >= 2 else 1), oc._context_T(view)
        # Every input feature has the same fan-out (out_features), so per-feature sums suffice.
        fold = lambda t: t.reshape(-1, in_f)  # noqa: E731
        fan: torch.Tensor | float = float(out_f)
        dense = float(x.numel() // in_f) * in_f * out_f
        conn = dense
        acc.info.in_elements = x.numel() // S
    else:
        nd = w.dim() - 2
        if x.dim() == nd + 1:  # unbatched input
            x, out = x.unsqueeze(0), out.unsqueeze(0)
            if view is not None:
                view = SpikeView(view.events.unsqueeze(0), view.lanes.unsqueeze(0), view.source, view.T, view.B)
        S, T_call = x.shape[0], oc._context_T(view)
        fold = lambda t: t  # noqa: E731
        fan = fanout(oc, name, module, tuple(x.shape[1:]), x.device)
        dense = float(out.numel()) * (module.in_channels // module.groups) * math.prod(w.shape[2:])
        conn = float(fan.sum()) * S
        acc.info.in_elements = x[0].numel()
    # Per-position totals over the merged batch: one reduction per tensor, then a dot product with the
    # fan-out map. Counts summed in float32 are exact (far below 2^24 per position); the dot is float64.
    nz_map = torch.count_nonzero(fold(x), dim=0).to(torch.float64)
    nonzero = float(nz_map.sum())
    acs_nz = float((nz_map * fan).sum())
    acc.add("dense", dense)
    acc.add("connections", conn)
    acc.add("acs_nonzero", acs_nz)
    acc.add("nonzero", nonzero)
    if view is not None:
        ev_map = fold(view.events).sum(0).to(torch.float64)
        ln_map = ev_map if view.lanes is view.events else fold(view.lanes).sum(0).to(torch.float64)
        acc.add("acs", float((ev_map * fan).sum()))
        acc.add("acs_lanes", float((ln_map * fan).sum()))
        acc.add("events", float(ev_map.sum()))
        acc.add("active", float(ln_map.sum()))
        acc.sources.add(view.source)
    else:
        acc.all_spiking = False
        acc.add("analog", dense)
        acc.add("active", nonzero)
    if oc.neurobench:
        eff = acs_nz
        if bool((w == 0).any()):  # NeuroBench also binarises the weights: zero weights are no operation
            nzx = (x != 0).to(w.dtype)
            if isinstance(module, nn.Linear):
                eff = float((nz_map * (w != 0).sum(0).to(torch.float64)).sum())
            else:
                eff = float(module._conv_forward(nzx, (w != 0).to(w.dtype), None).sum(dtype=torch.float64))
        neurobench(oc, acc, x, eff, conn)
    acc.call(S, T_call)


def neurobench(oc, acc: _Acc, x: torch.Tensor, effective: float, dense: float) -> None:
    # NeuroBench's test: every value in {-1, 0, 1}. A range check first settles analog inputs in one pass.
    lo, hi = torch.aminmax(x)
    spiking = bool(lo >= -1) and bool(hi <= 1) and bool((x == x.trunc()).all())
    acc.nb_seen = True
    acc.nb_all_spiking &= spiking
    acc.add("nb_ac" if spiking else "nb_mac", effective)
    acc.add("nb_dense", dense)


def pool_hook(oc, name: str):
    def hook(module, args, out):
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor):
            return
        with torch.no_grad():
            acc = oc._layer(name, module, "pool", "ADD")
            view = oc._spikes.lookup(x)
            nd = 1 if isinstance(module, (nn.AvgPool1d, nn.AdaptiveAvgPool1d)) else 2
            xb = x.unsqueeze(0) if x.dim() == nd + 1 else x
            fan = fanout(oc, name, module, tuple(xb.shape[1:]), x.device)
            S = xb.shape[0]
            dense = float(fan.sum()) * S
            acc.add("dense", dense)
            acc.add("connections", dense)
            acc.info.in_elements = xb[0].numel()
            nz = (xb != 0)
            acc.add("nonzero", float(nz.sum()))
            acc.call(S, oc._context_T(view))
            if view is None:
                acc.all_spiking = False
                acc.add("analog", dense)
                acc.add("active", float(nz.sum()))
                return
            ev = view.events.reshape(xb.shape)
            ln = view.lanes.reshape(xb.shape)
            acc.sources.add(view.source)
            acc.add("events", float(ev.sum(dtype=torch.float64)))
            acc.add("active", float(ln.sum(dtype=torch.float64)))
            acc.add("acs", float((ev.sum(0, dtype=torch.float64) * fan).sum()))
            acc.add("acs_lanes", float((ln.sum(0, dtype=torch.float64) * fan).sum()))
            pool = sum_pool if isinstance(module, (nn.AvgPool1d, nn.AvgPool2d)) else adaptive_sum_pool
            ev_out = pool(module, ev).reshape(out.shape)
            ln_out = ev_out if view.lanes is view.events else pool(module, ln).reshape(out.shape)
            oc._spikes.register(out, ev_out, ln_out, view.source, view.T, view.B)
    return hook


def residual_hook(oc, name: str):
    def hook(module, args, out):
        if len(args) < 2 or not all(isinstance(a, torch.Tensor) for a in args[:2]):
            oc._flag(name, module, "ResidualAdd called without two tensor inputs")
            return
        x, sc = args[0], args[1]
        with torch.no_grad():
            acc = oc._layer(name, module, "residual", "ADD")
            if x.dim() < 2 or not isinstance(out, torch.Tensor) or out.dim() != x.dim():
                oc._flag(name, module, f"expected time-major [T, B, ...] operands, got {tuple(x.shape)}")
                return
            # Operands are aligned to the output's T (the shortcut to x's T, or both to the consumer's T).
            T, B = out.shape[0], out.shape[1]
            dense = float(out.numel())
            acc.add("dense", dense)
            acc.add("connections", dense)
            acc.info.in_elements = out[0, 0].numel()
            acc.call(T * B, T)
            views = []
            for operand in (x, sc):
                v = oc._spikes.lookup(operand)
                if v is not None and operand.shape[0] != T:
                    v = type(v)(align_time(v.events, T, module.align), align_time(v.lanes, T, module.align),
                                v.source, T, v.B)
                views.append(v)
            spikes = [v for v in views if v is not None]
            acc.add("nonzero", float((x != 0).sum()) + float((sc != 0).sum()))
            if not spikes:
                acc.all_spiking = False
                acc.add("analog", dense)
                acc.add("active", float((x != 0).sum()))
                return
            acc.all_spiking &= len(spikes) == 2
            for v in spikes:
                acc.sources.add(v.source)
                acc.add("acs", float(v.events.sum(dtype=torch.float64)))
                acc.add("acs_lanes", float(v.lanes.sum(dtype=torch.float64)))
                acc.add("events", float(v.events.sum(dtype=torch.float64)))
                acc.add("active", float(v.lanes.sum(dtype=torch.float64)))
            if len(spikes) == 2:  # spike + spike (SEW-style ADD) is a multi-level spike train
                ev = views[0].events + views[1].events
                ln = views[0].lanes + views[1].lanes
                oc._spikes.register(out, ev, ln, views[0].source, T, B)
    return hook


def propagate_hook(oc, name: str):
    def hook(module, args, out):
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor):
            return
        if oc._spikes.lookup(out) is not None:
            return
        view = oc._spikes.lookup(x)
        if view is None:
            return
        with torch.no_grad():
            ev, ln, T = view.events, view.lanes, view.T
            if isinstance(module, TemporalAlign):
                ev, ln, T = align_time(ev, module.T, module.mode), align_time(ln, module.T, module.mode), module.T
            elif isinstance(module, MAXPOOLS):
                ev = _apply_like(module, ev)
                ln = ev if view.lanes is view.events else _apply_like(module, ln)
            elif isinstance(module, _dropout_types()):
                keep = (out != 0).to(ev.dtype)
                ev, ln = ev * keep, ln * keep
            if ev.numel() != out.numel():
                return
            oc._spikes.register(out, ev.reshape(out.shape),
                                  (ev if ln is ev else ln).reshape(out.shape), view.source, T, view.B)
    return hook


def free_hook(oc, name: str, reason: str):
    def hook(module, args, out):
        entry = oc._not_counted.setdefault(type(module).__name__, {"count": 0, "reason": reason, "names": []})
        if name not in entry["names"]:
            entry["names"].append(name)
            entry["count"] = len(entry["names"])
    return hook


def unsupported_hook(oc, name: str, reason: str):
    def hook(module, args, out):
        oc._flag(name, module, reason)
    return hook


# Counted layer types -> the handler that builds their forward hook (first match wins). A new counted layer type
# is one entry here and one small handler above.
LAYER_HANDLERS: tuple[tuple[tuple[type, ...], Callable[["OpCounter", str], Callable]], ...] = (
    (SYNAPTIC, synaptic_hook),
    (POOLS, pool_hook),
    ((ResidualAdd,), residual_hook),
)


def layer_handler(m: nn.Module) -> Callable[["OpCounter", str], Callable] | None:
    """The counting handler for ``m``'s type, or ``None`` if ``m`` is not a counted layer type."""
    for types, handler in LAYER_HANDLERS:
        if isinstance(m, types):
            return handler
    return None
