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

Layout: this module holds the counter (hooks, bookkeeping, results); each module type is counted by a small
handler in :mod:`multispike.metrics._op_layers` (dispatch table ``LAYER_HANDLERS``), and spike-driven attention,
found through the roles its blocks declare, in :mod:`multispike.metrics._op_attention`.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable

import torch
from torch import nn

from ..layers import MultiStepContainer, SeqToANNContainer
from ._op_attention import ANN_ATTENTION_REASON, attention_hook, attention_pre, attention_roles, role_hook
from ._op_layers import (_dropout_types, free_hook, free_reason, layer_handler,  # noqa: F401
                         moves_spikes, neuron_hook, propagate_hook, unsupported_hook, wrapper_hook)
from ._tracking import SpikeRegistry
from .optable import CONVENTIONS, LayerOps, NeuronOps, OpCountResult, format_count
from .monitors import is_spiking_neuron, spiking_layers

__all__ = ["OpCounter", "OpCountResult", "LayerOps", "NeuronOps", "count_ops", "CONVENTIONS", "format_count"]


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
        roles = attention_roles(self, neurons)
        for name, m in self.model.named_modules():
            if name not in inside_neuron:
                h.extend(self._attach_module(name, m, name in neurons, roles.get(name)))
        # Registered last, so it runs after the root module's own hooks (e.g. a root attention block).
        h.append(self.model.register_forward_hook(lambda m, a, o: self.end_forward()))
        return self

    def _attach_module(self, name: str, m: nn.Module, is_neuron: bool, role: tuple[str, str] | None) -> list:
        """The hooks that count ``m``: chosen by what it is (a neuron, a time container, a counted layer type, an
        attention block) and, for the rest, whether it is free (with the reason) or unsupported."""
        hooks = []
        if is_neuron:
            hooks.append(m.register_forward_hook(neuron_hook(self, name)))
            if role is not None:
                hooks.append(m.register_forward_hook(role_hook(self, *role)))
            return hooks
        if is_spiking_neuron(m):  # a wrapper around a neuron (e.g. mixed-timestep alignment)
            return [m.register_forward_hook(wrapper_hook(self, name))]
        if isinstance(m, (SeqToANNContainer, MultiStepContainer)):
            return [m.register_forward_pre_hook(self._push_time), m.register_forward_hook(self._pop_time)]
        handler = layer_handler(m)
        if handler is not None:
            return [m.register_forward_hook(handler(self, name))]
        if name in self._ann_attention:
            hooks.append(m.register_forward_hook(unsupported_hook(self, name, ANN_ATTENTION_REASON)))
        elif name in self._attn_blocks:
            hooks.append(m.register_forward_pre_hook(attention_pre(self, name)))
            hooks.append(m.register_forward_hook(attention_hook(self, name, name in self._attn_ok)))
        reason = free_reason(m)
        if reason is not None:
            hooks.append(m.register_forward_hook(free_hook(self, name, reason)))
            if moves_spikes(m):
                hooks.append(m.register_forward_hook(propagate_hook(self, name)))
        elif name not in self._attn_blocks and name not in self._ann_attention and (
                not any(True for _ in m.children()) or any(True for _ in m.parameters(recurse=False))):
            if not isinstance(m, (SeqToANNContainer, MultiStepContainer, nn.Sequential)):
                hooks.append(m.register_forward_hook(unsupported_hook(self, name,
                                                                      "no operation counter for this layer type")))
        return hooks

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


    # ------------------------------------------------------------------ synaptic layers




    # ------------------------------------------------------------------ pools, residuals, propagation



    # ------------------------------------------------------------------ spike-driven attention





    # ------------------------------------------------------------------ not counted / unsupported


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
