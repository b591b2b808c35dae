"""Operation counting for multi-level spiking networks (algorithms.md §6.2, §6.3, §6.6; ecosystem.md §4).

``with OpCounter(model) as oc: model(x)`` hooks every layer and returns a per-layer table. Three conventions
are reported side by side, each named:

* **multispike** (value-weighted events): a layer whose input is a spike train costs
  ``Σ_inputs events(i) · fanout(i)`` accumulates, where ``events(i)`` is what input i costs downstream - the
  neuron's ``spike_events`` for a count neuron (a spike of count k is k accumulates; a θ-payload IF spike is
  one) and its ``active_lanes`` for a lane neuron (``lanes > 1``: a fired one-hot M-LIF lane is one
  accumulate with pre-scaled weights) - and ``fanout(i)`` is the exact number of connections of input i (a
  transposed convolution of ones, so borders are exact, as in sinabs). A layer whose input is not a spike
  train costs dense MACs at every step it runs: ``MACs·T`` when the image is repeated before the first
  conv, ``MACs·1`` when a model runs its stem once and repeats the result (the zoo does; the DIET energy
  convention still costs that layer at every step, see :func:`~multispike.metrics.diet_energy`).
* **neurobench** (``SynapticOperations`` of NeuroBench 2.x): an input counts as spiking only if every value
  is in {−1, 0, 1}; non-zero inputs are binarised and multiplied by the binarised weights, so a count of 3
  costs one operation and a θ-payload IF layer with θ ≠ 1 is counted as MACs. ``Dense`` counts every real
  connection (padding taps excluded).
* **diet** (MLIF-P eq. (11)): ``#SNN_ops = r_l · #ANN_ops``, with ``r_l`` the non-zero inputs over all
  steps per input element (MLIF-C's ``nnz`` of the merged input, i.e. the active lanes of binary or one-hot
  spikes) and ``#ANN_ops`` the per-step dense MACs ``H_out·W_out·C_out·C_in·k²``. The per-step dense MACs
  are the reference counts of §6.2 (VGG16-DIET 338.4 M).

Which tensors are spike trains is decided by tracking, not guessed from values: every spiking neuron's
output is registered (with its events), views of it are recognised by storage, and average pooling,
max pooling, dropout, flatten, temporal alignment and residual additions of spike trains carry the events
forward. Counted per layer type: Conv1d, Conv2d, Linear (synaptic); AvgPool1d/2d, AdaptiveAvgPool1d/2d,
:class:`~multispike.layers.ResidualAdd` and spike-driven self-attention (additions and masks). Every other
module that runs is listed either as *not counted* (with the reason: folded BN, dropout, data movement,
comparisons) or as *unsupported* - never skipped silently. Residual additions written as a bare ``x + y``
inside a module's ``forward`` are invisible to hooks; zoo models route them through ``ResidualAdd``.

All counts are reported per sample (averaged over every sample seen) and, where it applies, per step.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Iterable

import torch
from torch import nn

from ..layers import DirectEncoder, MeanOverTime, MultiStepContainer, ResidualAdd, SeqToANNContainer, TemporalAlign
from ..layers import align_time
from ..models.base import TimeSharedDropout
from ._tracking import SpikeRegistry, SpikeView
from .attention import declared_spike_roles, guessed_spike_roles, looks_like_attention
from .optable import CONVENTIONS, LayerOps, NeuronOps, OpCountResult, format_count
from .fanout import adaptive_fanout, adaptive_sum_pool, avgpool_fanout, conv_fanout, sum_pool
from .monitors import check_statistics_shape, is_spiking_neuron, spiking_layers

__all__ = ["OpCounter", "OpCountResult", "LayerOps", "NeuronOps", "count_ops", "CONVENTIONS", "format_count"]

_SYNAPTIC = (nn.Conv1d, nn.Conv2d, nn.Linear)
_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
_SHAPE_ONLY = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_MAXPOOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)


def _dropout_types() -> tuple[type, ...]:
    # The zoo's time-shared dropout draws one mask for all steps; like nn.Dropout it is free at inference.
    return (nn.Dropout, nn.Dropout1d, nn.Dropout2d, TimeSharedDropout)


def _free_reason(m: nn.Module) -> str | None:
    """Why a module costs no counted operation, or ``None`` if it is not a known free module."""
    from ..quant.qcfs import QCFS
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return "batch norm: folded into the preceding conv/linear at inference"
    if isinstance(m, _dropout_types()):
        return "dropout: identity at inference"
    if isinstance(m, (nn.Identity, nn.Flatten, nn.Unflatten)):
        return "data movement"
    if isinstance(m, _MAXPOOLS):
        return "max pooling: comparisons, no accumulate"
    if isinstance(m, (nn.ReLU, nn.ReLU6, QCFS)):
        return "elementwise ANN activation"
    if isinstance(m, TemporalAlign):
        return "temporal alignment: data movement (averaging adds not counted)"
    if isinstance(m, DirectEncoder):
        return "direct encoding: repetition of the input"
    if isinstance(m, MeanOverTime):
        return "readout time-mean (T-1 adds per output, not counted)"
    return None


_ANN_ATTENTION_REASON = ("ANN attention (softmax over real-valued scores): no spike-driven attention counter; "
                         "spike-driven blocks declare spike_roles (see multispike.metrics.attention)")


class _Acc:
    """Raw accumulators of one layer across calls and forwards."""

    def __init__(self, name: str, module: nn.Module, kind: str, op: str, order: int) -> None:
        self.info = LayerOps(name=name, type=type(module).__name__, kind=kind, op=op, order=order)
        self.raw: dict[str, float] = {}
        self.cur_S = 0
        self.cur_T: float | None = 0.0
        self.touched = False
        self.sample_steps = 0.0
        self.all_spiking = True
        self.nb_all_spiking = True
        self.nb_seen = False
        self.sources: set[str] = set()

    def add(self, key: str, value: float) -> None:
        self.raw[key] = self.raw.get(key, 0.0) + float(value)

    def call(self, S: int, T: float | None) -> None:
        self.info.calls += 1
        self.touched = True
        self.cur_S += S
        self.cur_T = None if (T is None or self.cur_T is None) else self.cur_T + T


class OpCounter:
    """Count the operations of every layer during forward passes (see the module docstring).

    Args:
        model: the network (time-major ``[T, B, ...]`` conventions).
        T: timesteps to assume for a layer whose T cannot be observed (no ``SeqToANNContainer``, no spike
            input, no spiking neuron in the model). Usually not needed: T is read from containers, from the
            spike trains a layer consumes, or from the batch size the neurons report.
        input_events: treat the model input as a spike train: ``"count"`` (values are non-negative event
            counts, e.g. multi-level event frames) or ``"binary"`` (every non-zero is one event). ``None``
            (default) treats the input as analog, so the first layer is a MAC layer (direct encoding).
        neurobench: also compute the NeuroBench-compatible numbers (one extra binary convolution per call for
            layers whose weights contain exact zeros; otherwise free).

    Cost: one reduction per tracked tensor per layer, and the spike tensors of the current pass (with an
    events copy) stay alive until the pass ends - so ``no_grad`` inference uses up to about twice its usual
    activation memory while counting. Counting is driven by calls of ``model`` itself (its pre/post hooks);
    around ``model.forward_sequence`` or other entry points call :meth:`begin_forward`/:meth:`end_forward`.

    Example::

        >>> import torch, multispike as ms
        >>> net = torch.nn.Sequential(ms.SeqToANNContainer(torch.nn.Linear(4, 3)), ms.IFNeuron(step_mode='m'),
        ...                           ms.SeqToANNContainer(torch.nn.Linear(3, 2)))
        >>> with OpCounter(net) as oc:
        ...     _ = net(torch.rand(4, 2, 4))
        >>> [l.dense_per_step for l in oc.result().layers], oc.result().layers[0].analog
        ([12.0, 6.0], 48.0)
    """

    def __init__(self, model: nn.Module, T: int | None = None, input_events: str | None = None,
                 neurobench: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"OpCounter: expected an nn.Module, got {type(model).__name__}")
        if T is not None and (isinstance(T, bool) or not isinstance(T, int) or T < 1):
            raise ValueError(f"OpCounter: T must be an integer >= 1 or None, got {T!r}")
        if input_events not in (None, "count", "binary"):
            raise ValueError(f"OpCounter: input_events must be None, 'count' or 'binary', got {input_events!r}")
        self.model = model
        self.T = T
        self.input_events = input_events
        self.neurobench = bool(neurobench)
        self._handles: list = []
        self._spikes = SpikeRegistry()
        self._fanouts: dict[tuple, torch.Tensor] = {}
        self._time_stack: list[int] = []
        self._depth = 0
        self.reset()

    # ------------------------------------------------------------------ lifecycle
    def reset(self) -> None:
        """Forget everything counted so far (hooks stay attached)."""
        self._acc: dict[str, _Acc] = {}
        self._neurons: dict[str, NeuronOps] = {}
        self._neuron_raw: dict[str, dict[str, float]] = {}
        self._unsupported: dict[str, dict[str, str]] = {}
        self._not_counted: dict[str, dict[str, Any]] = {}
        self._order = 0
        self._fwd_B: int | None = None
        self._fwd_netT = 0
        self._root_batch: int | None = None
        self._spikes.clear()

    def __enter__(self) -> "OpCounter":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def attach(self) -> "OpCounter":
        """Register the hooks (idempotent)."""
        if self._handles:
            return self
        h = self._handles
        h.append(self.model.register_forward_pre_hook(lambda m, a: self.begin_forward(a)))
        neurons = dict(spiking_layers(self.model))
        # Sub-modules of a neuron (its surrogate function) are part of the neuron, never layers of their own.
        inside_neuron = {f"{name}.{c}" if name else c for name, m in neurons.items() for c, _ in m.named_modules() if c}
        roles = self._attention_roles(neurons)
        for name, m in self.model.named_modules():
            if name in inside_neuron:
                continue
            if name in neurons:
                h.append(m.register_forward_hook(self._neuron_hook(name)))
                if name in roles:
                    h.append(m.register_forward_hook(self._role_hook(*roles[name])))
            elif is_spiking_neuron(m):  # a wrapper around a neuron (e.g. mixed-timestep alignment)
                h.append(m.register_forward_hook(self._wrapper_hook(name)))
            elif isinstance(m, (SeqToANNContainer, MultiStepContainer)):
                h.append(m.register_forward_pre_hook(self._push_time))
                h.append(m.register_forward_hook(self._pop_time))
            elif isinstance(m, _SYNAPTIC):
                h.append(m.register_forward_hook(self._synaptic_hook(name)))
            elif isinstance(m, _POOLS):
                h.append(m.register_forward_hook(self._pool_hook(name)))
            elif isinstance(m, ResidualAdd):
                h.append(m.register_forward_hook(self._residual_hook(name)))
            elif name in self._ann_attention:
                h.append(m.register_forward_hook(self._unsupported_hook(name, _ANN_ATTENTION_REASON)))
            elif name in self._attn_blocks:
                h.append(m.register_forward_pre_hook(self._attention_pre(name)))
                h.append(m.register_forward_hook(self._attention_hook(name, name in self._attn_ok)))
            if not isinstance(m, _SYNAPTIC + _POOLS + (ResidualAdd,)) and name not in neurons \
                    and not is_spiking_neuron(m):
                reason = _free_reason(m)
                if reason is not None:
                    h.append(m.register_forward_hook(self._free_hook(name, reason)))
                    if isinstance(m, _SHAPE_ONLY + _MAXPOOLS + _dropout_types() + (TemporalAlign,)):
                        h.append(m.register_forward_hook(self._propagate_hook(name)))
                elif name not in self._attn_blocks and name not in self._ann_attention and (
                        not any(True for _ in m.children()) or any(True for _ in m.parameters(recurse=False))):
                    if not isinstance(m, (SeqToANNContainer, MultiStepContainer, nn.Sequential)):
                        h.append(m.register_forward_hook(self._unsupported_hook(
                            name, "no operation counter for this layer type")))
        # Registered last, so it runs after the root module's own hooks (e.g. a root attention block).
        h.append(self.model.register_forward_hook(lambda m, a, o: self.end_forward()))
        return self

    def detach(self) -> None:
        """Remove every hook. Counts are kept until :meth:`reset`."""
        for hd in self._handles:
            hd.remove()
        self._handles.clear()
        self._spikes.clear()
        self._time_stack.clear()
        self._depth = 0

    # ------------------------------------------------------------------ forward bookkeeping
    def begin_forward(self, args: tuple | torch.Tensor | None = None) -> None:
        """Start a forward pass (called by the root pre-hook; call it yourself around ``model.forward_sequence``)."""
        self._depth += 1
        if self._depth > 1:
            return
        self._spikes.clear()
        self._fwd_B = None
        self._fwd_netT = 0
        x = args[0] if isinstance(args, tuple) and args else args
        self._root_batch = int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() >= 1 else None
        if self.input_events is not None:
            if not isinstance(x, torch.Tensor) or x.dim() < 2:
                raise ValueError("OpCounter(input_events=...): the model input must be a time-major [T, B, ...] "
                                 f"tensor, got {tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
            with torch.no_grad():
                lanes = (x != 0).to(x.dtype)
                events = lanes if self.input_events == "binary" else x.abs()
                if self.input_events == "count" and bool((x < 0).any()):
                    raise ValueError("OpCounter(input_events='count'): event counts must be >= 0; use 'binary' for "
                                     "signed (polarity-coded) inputs")
                self._spikes.register(x, events, lanes, "input", x.shape[0], x.shape[1])
            self._fwd_B = int(x.shape[1])

    def end_forward(self) -> None:
        """Finish a forward pass: resolve each layer's T and sample count, release tracked tensors."""
        self._depth = max(self._depth - 1, 0)
        if self._depth > 0:
            return
        B = self._fwd_B
        if B is None and self.T is None:
            B = self._root_batch
        for acc in self._acc.values():
            if not acc.touched:
                continue
            if acc.cur_T is not None and acc.cur_T > 0:
                T = acc.cur_T
            elif B:
                T = acc.cur_S / B
            else:
                T = float(self.T or 1)
            acc.info.T = int(T) if float(T).is_integer() else T
            acc.info.network_T = max(acc.info.network_T, self._fwd_netT)
            acc.info.samples += acc.cur_S / T
            acc.sample_steps += acc.cur_S
            acc.cur_S, acc.cur_T, acc.touched = 0, 0.0, False
        self._spikes.clear()
        self._time_stack.clear()

    def _push_time(self, module, args) -> None:
        x = args[0] if args else None
        if isinstance(module, MultiStepContainer):
            self._time_stack.append(1)  # each call of the inner module is one step
        elif isinstance(x, torch.Tensor) and x.dim() >= 2:
            self._time_stack.append(int(x.shape[0]))
        else:
            self._time_stack.append(0)

    def _pop_time(self, module, args, output) -> None:
        if self._time_stack:
            self._time_stack.pop()

    def _layer(self, name: str, module: nn.Module, kind: str, op: str) -> _Acc:
        if name not in self._acc:
            self._acc[name] = _Acc(name, module, kind, op, self._order)
            self._order += 1
        return self._acc[name]

    def _context_T(self, view) -> int | None:
        if self._time_stack and self._time_stack[-1] > 0:
            return self._time_stack[-1]
        if view is not None:
            return view.T
        return None

    # ------------------------------------------------------------------ neurons
    def _neuron_hook(self, name: str):
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
                if self._fwd_B is None:
                    self._fwd_B = int(B)
                self._fwd_netT = max(self._fwd_netT, int(T))
                cost = _ac_events(module, ev, ln)
                self._spikes.register(y, cost, cost if torch.equal(cost, ln) else ln, name, T, B)
                st = self._neurons.get(name)
                if st is None:
                    st = self._neurons[name] = NeuronOps(name, type(module).__name__,
                                                         levels=int(getattr(module, "levels", 1) or 1),
                                                         lanes=int(getattr(module, "lanes", 1) or 1))
                    self._neuron_raw[name] = {"events": 0.0, "lanes": 0.0, "elements": 0.0, "steps": 0.0}
                raw = self._neuron_raw[name]
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

    def _wrapper_hook(self, name: str):
        def hook(module, args, y):
            if not isinstance(y, torch.Tensor) or self._spikes.lookup(y) is not None or y.dim() < 2:
                return
            with torch.no_grad():
                ev, ln = module.spike_events(y), module.active_lanes(y)
                if isinstance(ev, torch.Tensor) and ev.shape == y.shape and ln.shape == y.shape:
                    self._spikes.register(y, _ac_events(module, ev, ln), ln, name, y.shape[0], y.shape[1])
        return hook

    # ------------------------------------------------------------------ synaptic layers
    def _fanout(self, name: str, module: nn.Module, in_shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        key = (name, in_shape, str(device))
        fan = self._fanouts.get(key)
        if fan is None:
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                fan = conv_fanout(module, in_shape).to(device)
            elif isinstance(module, (nn.AvgPool1d, nn.AvgPool2d)):
                fan = avgpool_fanout(module, in_shape, device=device)
            else:
                fan = adaptive_fanout(module, in_shape, device=device)
            self._fanouts[key] = fan
        return fan

    def _synaptic_hook(self, name: str):
        def hook(module, args, out):
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor):
                self._flag(name, module, "called without a tensor input")
                return
            with torch.no_grad():
                self._count_synaptic(name, module, x, out)
        return hook

    def _count_synaptic(self, name: str, module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> None:
        acc = self._layer(name, module, "linear" if isinstance(module, nn.Linear) else "conv", "MAC")
        view = self._spikes.lookup(x)
        if view is None and self._attn_capture:
            view = self._attention_output_view(x)
        w = module.weight
        if isinstance(module, nn.Linear):
            in_f, out_f = module.in_features, module.out_features
            if x.dim() >= 3 and not self._time_stack:
                S, T_call = x.shape[0] * x.shape[1], x.shape[0]   # time-major [T, B, ..., C]
            else:
                S, T_call = (x.shape[0] if x.dim() >= 2 else 1), self._context_T(view)
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
            S, T_call = x.shape[0], self._context_T(view)
            fold = lambda t: t  # noqa: E731
            fan = self._fanout(name, module, tuple(x.shape[1:]), x.device)
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
        if self.neurobench:
            eff = acs_nz
            if bool((w == 0).any()):  # NeuroBench also binarises the weights: zero weights are no operation
                nzx = (x != 0).to(w.dtype)
                if isinstance(module, nn.Linear):
                    eff = float((nz_map * (w != 0).sum(0).to(torch.float64)).sum())
                else:
                    eff = float(module._conv_forward(nzx, (w != 0).to(w.dtype), None).sum(dtype=torch.float64))
            self._neurobench(acc, x, eff, conn)
        acc.call(S, T_call)

    def _neurobench(self, acc: _Acc, x: torch.Tensor, effective: float, dense: float) -> None:
        # NeuroBench's test: every value in {-1, 0, 1}. A range check first settles analog inputs in one pass.
        lo, hi = torch.aminmax(x)
        spiking = bool(lo >= -1) and bool(hi <= 1) and bool((x == x.trunc()).all())
        acc.nb_seen = True
        acc.nb_all_spiking &= spiking
        acc.add("nb_ac" if spiking else "nb_mac", effective)
        acc.add("nb_dense", dense)

    # ------------------------------------------------------------------ pools, residuals, propagation
    def _pool_hook(self, name: str):
        def hook(module, args, out):
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor):
                return
            with torch.no_grad():
                acc = self._layer(name, module, "pool", "ADD")
                view = self._spikes.lookup(x)
                nd = 1 if isinstance(module, (nn.AvgPool1d, nn.AdaptiveAvgPool1d)) else 2
                xb = x.unsqueeze(0) if x.dim() == nd + 1 else x
                fan = self._fanout(name, module, tuple(xb.shape[1:]), x.device)
                S = xb.shape[0]
                dense = float(fan.sum()) * S
                acc.add("dense", dense)
                acc.add("connections", dense)
                acc.info.in_elements = xb[0].numel()
                nz = (xb != 0)
                acc.add("nonzero", float(nz.sum()))
                acc.call(S, self._context_T(view))
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
                self._spikes.register(out, ev_out, ln_out, view.source, view.T, view.B)
        return hook

    def _residual_hook(self, name: str):
        def hook(module, args, out):
            if len(args) < 2 or not all(isinstance(a, torch.Tensor) for a in args[:2]):
                self._flag(name, module, "ResidualAdd called without two tensor inputs")
                return
            x, sc = args[0], args[1]
            with torch.no_grad():
                acc = self._layer(name, module, "residual", "ADD")
                if x.dim() < 2 or not isinstance(out, torch.Tensor) or out.dim() != x.dim():
                    self._flag(name, module, f"expected time-major [T, B, ...] operands, got {tuple(x.shape)}")
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
                    v = self._spikes.lookup(operand)
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
                    self._spikes.register(out, ev, ln, views[0].source, T, B)
        return hook

    def _propagate_hook(self, name: str):
        def hook(module, args, out):
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor):
                return
            if self._spikes.lookup(out) is not None:
                return
            view = self._spikes.lookup(x)
            if view is None:
                return
            with torch.no_grad():
                ev, ln, T = view.events, view.lanes, view.T
                if isinstance(module, TemporalAlign):
                    ev, ln, T = align_time(ev, module.T, module.mode), align_time(ln, module.T, module.mode), module.T
                elif isinstance(module, _MAXPOOLS):
                    ev = _apply_like(module, ev)
                    ln = ev if view.lanes is view.events else _apply_like(module, ln)
                elif isinstance(module, _dropout_types()):
                    keep = (out != 0).to(ev.dtype)
                    ev, ln = ev * keep, ln * keep
                if ev.numel() != out.numel():
                    return
                self._spikes.register(out, ev.reshape(out.shape),
                                      (ev if ln is ev else ln).reshape(out.shape), view.source, T, view.B)
        return hook

    # ------------------------------------------------------------------ spike-driven attention
    def _attention_roles(self, neurons: dict[str, nn.Module]) -> dict[str, tuple[str, str]]:
        """Map neuron name -> (attention module name, role) for recognised spike-driven attention blocks."""
        roles: dict[str, tuple[str, str]] = {}
        self._attn_blocks: set[str] = set()      # declared (or, deprecated, name-guessed) attention blocks
        self._ann_attention: set[str] = set()    # nn.MultiheadAttention: listed as unsupported
        self._attn_ok: set[str] = set()
        self._attn_missing: dict[str, str] = {}
        for name, m in self.model.named_modules():
            if is_spiking_neuron(m):
                continue
            prefix = f"{name}." if name else ""
            declared = declared_spike_roles(m)
            if declared is not None:
                found = {role: prefix + path for role, path in declared.items() if prefix + path in neurons}
                wrong = [f"{role}={path!r}" for role, path in declared.items() if prefix + path not in neurons]
                if wrong:
                    # A declaration that names no neuron is a bug in the declaration: say so instead of guessing.
                    self._attn_blocks.add(name)
                    self._attn_missing[name] = "declared but not spiking neurons inside the block: " + ", ".join(wrong)
                    continue
            elif isinstance(m, nn.MultiheadAttention):
                self._ann_attention.add(name)
                continue
            elif looks_like_attention(m):
                found = guessed_spike_roles(m, set(neurons), prefix)
            else:
                continue
            self._attn_blocks.add(name)
            missing = [r for r in ("q", "k", "v") if r not in found]
            if missing:
                self._attn_missing[name] = ", ".join(missing)
                continue
            self._attn_ok.add(name)
            for role, full in found.items():
                roles[full] = (name, role)
        self._attn_capture: dict[str, dict[str, torch.Tensor]] = {}
        return roles

    def _role_hook(self, attn: str, role: str):
        def hook(module, args, y):
            if attn in self._attn_capture and isinstance(y, torch.Tensor):
                view = self._spikes.lookup(y)  # registered a moment ago by the neuron hook
                if view is not None:
                    self._attn_capture[attn][role] = y.detach()
                    self._attn_capture[attn][role + "_events"] = view.events
        return hook

    def _attention_output_view(self, x: torch.Tensor) -> SpikeView | None:
        """The mask product ``Q ⊙ KV`` of an active attention block, recognised by value.

        SDSA reshapes Q into heads (a copy), so its product is not a view of any neuron output. Its events
        are those of Q where KV fired, laid out like Q; the candidate is accepted only if its non-zeros
        coincide exactly with those of ``x``."""
        for attn, cap in self._attn_capture.items():
            q, kv = cap.get("q"), cap.get("kv")
            if q is None or kv is None or x.numel() != q.numel():
                continue
            kvb = _broadcast_kv(q, kv)
            if kvb is None:
                continue
            with torch.no_grad():
                ev = (cap["q_events"] * (kvb != 0)).reshape(x.shape)
                if torch.equal(ev != 0, x != 0):
                    return SpikeView(ev, (ev != 0).to(ev.dtype), f"{attn} (Q*KV)", q.shape[0], q.shape[1])
        return None

    def _attention_pre(self, name: str):
        def pre(module, args):
            self._attn_capture[name] = {}
        return pre

    def _attention_hook(self, name: str, recognised: bool):
        def hook(module, args, out):
            cap = self._attn_capture.pop(name, {})
            if not recognised:
                self._flag(name, module, "attention module without spiking q/k/v neurons (declare them with "
                                         "spike_roles or multispike.metrics.register_attention; missing: "
                                         f"{self._attn_missing.get(name, 'q, k, v')}); its attention "
                                         "products are not counted")
                return
            if not all(r in cap for r in ("q", "k", "v")):
                self._flag(name, module, "q/k/v neurons did not all run inside the attention forward")
                return
            q, k, v = cap["q"], cap["k"], cap["v"]
            if k.shape != v.shape or q.dim() < 3:
                self._flag(name, module, f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same time-major "
                                         "shape")
                return
            with torch.no_grad():
                acc = self._layer(name, module, "attention", "ADD")
                T, B = q.shape[0], q.shape[1]
                kv_nz = (k != 0) & (v != 0)
                kvb = _broadcast_kv(q, cap["kv"]) if "kv" in cap else None
                # Without a KV neuron that lines up with Q, every active q position is counted (an upper bound).
                q_mask = ((q != 0) & (kvb != 0)) if kvb is not None else (q != 0)
                acc.call(T * B, T)
                acc.info.in_elements = k[0, 0].numel()
                acc.add("dense", float(k.numel()))
                acc.add("connections", float(k.numel()))
                acc.add("acs", float((cap["k_events"] * cap["v_events"]).sum(dtype=torch.float64)))
                acc.add("acs_lanes", float(kv_nz.sum()))
                acc.add("events", float(cap["k_events"].sum(dtype=torch.float64)))
                acc.add("active", float((k != 0).sum()))
                acc.add("nonzero", float((k != 0).sum()))
                acc.add("mask_ops_dense", float(k.numel() + q.numel()))
                acc.add("mask_ops", float(kv_nz.sum()) + float(q_mask.sum()))
                acc.sources.update({"q", "k", "v"})
        return hook

    # ------------------------------------------------------------------ not counted / unsupported
    def _free_hook(self, name: str, reason: str):
        def hook(module, args, out):
            entry = self._not_counted.setdefault(type(module).__name__, {"count": 0, "reason": reason, "names": []})
            if name not in entry["names"]:
                entry["names"].append(name)
                entry["count"] = len(entry["names"])
        return hook

    def _unsupported_hook(self, name: str, reason: str):
        def hook(module, args, out):
            self._flag(name, module, reason)
        return hook

    def _flag(self, name: str, module: nn.Module, reason: str) -> None:
        self._unsupported.setdefault(name, {"name": name, "type": type(module).__name__, "reason": reason})

    # ------------------------------------------------------------------ results
    def result(self) -> OpCountResult:
        """The per-layer table (per-sample averages over every forward pass seen so far)."""
        if self._depth > 0:
            raise RuntimeError("OpCounter.result() called inside a forward pass; call it after the forward returns")
        if any(a.touched for a in self._acc.values()):
            # Sub-modules were called directly (no root forward): close the pending pass now.
            self._depth = 1
            self.end_forward()
        layers = []
        for acc in sorted(self._acc.values(), key=lambda a: a.info.order):
            info = acc.info
            n = info.samples
            if not n:
                continue
            r = acc.raw
            per = lambda k: r.get(k, 0.0) / n  # noqa: E731
            info.dense = per("dense")
            info.dense_per_step = r.get("dense", 0.0) / acc.sample_steps
            info.connections_per_step = r.get("connections", 0.0) / acc.sample_steps
            info.input_nonzero = per("nonzero")
            info.input_events = per("events")
            info.input_active = per("active")
            info.acs = per("acs")
            info.acs_lanes = per("acs_lanes")
            info.acs_nonzero = per("acs_nonzero")
            info.analog = per("analog")
            info.input_spiking = acc.all_spiking
            info.input_source = ", ".join(sorted(acc.sources)) if acc.sources else None
            if acc.nb_seen:
                info.nb_spiking = acc.nb_all_spiking
                info.nb_effective = per("nb_ac") + per("nb_mac")
                info.nb_dense = per("nb_dense")
            if "mask_ops" in r:
                info.extra = {"mask_ops": per("mask_ops"), "mask_ops_dense": per("mask_ops_dense")}
            layers.append(replace(info, extra=dict(info.extra)))
        neurons = []
        for name, st in self._neurons.items():
            raw = self._neuron_raw[name]
            samples = raw["elements"] / (st.neurons * st.T) if st.neurons and st.T else 0
            neurons.append(NeuronOps(name, st.type, st.neurons, st.T, samples, st.levels, st.lanes,
                                     raw["events"] / samples if samples else 0.0,
                                     raw["lanes"] / samples if samples else 0.0))
        samples = max((l.samples for l in layers), default=0)
        return OpCountResult(layers, neurons, list(self._unsupported.values()),
                             {k: dict(v) for k, v in self._not_counted.items()}, samples)


def _ac_events(neuron: nn.Module, events: torch.Tensor, lanes: torch.Tensor) -> torch.Tensor:
    """Accumulates one output element costs downstream: its unit events for a count neuron (a spike of
    count k is k accumulates), its active lanes for a lane neuron (``lanes > 1``: each one-hot lane has
    pre-scaled weights, so a fired lane is one accumulate whatever its weight 2^s)."""
    return lanes if int(getattr(neuron, "lanes", 1) or 1) > 1 else events


def _broadcast_kv(q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor | None:
    """KV laid out to broadcast against Q: per-channel KV (``h·d = C`` values per sample and step, channel
    ``c = head·d + j`` as in SDT) against ``[T, B, C, H, W]`` or ``[T, B, N, C]`` queries."""
    T, B = q.shape[:2]
    per = kv[0, 0].numel() if kv.dim() >= 2 and kv.shape[:2] == q.shape[:2] else -1
    if q.dim() == 5 and per == q.shape[2]:
        return kv.reshape(T, B, per, 1, 1)
    if q.dim() == 4 and per == q.shape[-1]:
        return kv.reshape(T, B, 1, per)
    try:
        torch.broadcast_shapes(q.shape, kv.shape)
        return kv
    except RuntimeError:
        return None


def _apply_like(module: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """Apply a stateless module (max pooling) to an events map; ``forward`` directly, so no hook fires."""
    return module.forward(t)


def count_ops(model: nn.Module, inputs: torch.Tensor | Iterable[torch.Tensor], **kwargs) -> OpCountResult:
    """One-call helper: run ``model`` on ``inputs`` (a tensor or an iterable of batches) under an
    :class:`OpCounter` in ``eval``/``no_grad`` mode, resetting neuron state before every batch."""
    from ..neurons.base import reset_net
    batches = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    if not batches:
        raise ValueError("count_ops: no input batches given; pass a tensor or a non-empty iterable of tensors")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), OpCounter(model, **kwargs) as oc:
            for x in batches:
                reset_net(model)
                model(x)
        return oc.result()
    finally:
        model.train(was_training)
