"""Export to and import from NIR (Neuromorphic Intermediate Representation, ``nir`` 1.0.x) with a stated,
measured fidelity (ecosystem.md §3, §8).

NIR has no subtractive reset, no initial membrane and no graded spike payload, so a multi-level neuron
needs care. Three modes:

``mode="exact"`` - lossless interchange, for our importer and for runtimes that import ``I``/``Threshold``/
``Scale`` (Spyx; any nirtorch runtime given those three nodes):

* **threshold ladder** (§3.3(A)) for IF / LIF with soft reset and multi-level M-HT / LM-HT (identity T-GIM)::

      prev ──► Conv/Affine (W·θ_prev) ──► I (r = g/dt)  or  LI (τ = dt/(1−β), r = g/(1−β))
      I ──► Threshold_k (k·θ − u0, k = 1..L) ──► Scale(−ρ/g) ──► I      (recurrent edge = subtractive reset)
      Threshold_k ──► next Conv/Affine (θ folded into its weights; the L edges are summed on arrival)

  The count ``Σ_k [H ≥ kθ]`` clips at L by itself; u0 folds into the thresholds (no leak); NIR's strict ``>``
  reproduces our ``≥`` exactly in float32 because each threshold is lowered by one ulp.
* **one-hot lanes** (§3.3(B)) for one-hot M-LIF with soft reset: ``Threshold`` nodes at ``2^s·θ``,
  lanes ``z_s = a_s − a_{s+1}`` built with ``Scale(±1)``, ``Scale(2^s)`` payloads summed at the next layer, and
  ``Scale(−ρ)`` feedback of the payload. Paper bounds ``(2^s, 2^{s+1}]`` need no adjustment.
* hard-reset binary neurons (IF / LIF / M-LIF with S = 1): ``nir.IF`` / ``nir.LIF`` with ``v_reset``, which
  is exactly their dynamics.

``mode="if"`` - one ``nir.IF`` / ``nir.LIF`` per layer, what chips import (Loihi via Lava, SpiNNaker2,
Speck via sinabs, snnTorch, Norse). Exact for hard-reset binary neurons; soft reset becomes reset-to-0 and
u0 is dropped (approximate); for L > 1 it is the sinabs multi-spike route (§3.3(D)), whose two conditions
are measured per layer.

``mode="unrolled"`` - the reparameterisation path (§3.3(C), algorithms.md §2.7): an LM-HT/M-HT network is
reparameterised into a single-threshold IF network running L sub-steps per step
(:func:`multispike.convert.lmht.reparameterize_lmht`: biases divided by L, first layer scaled by 1/L) and
written as ``nir.IF`` nodes at ``dt' = dt/L``. Approximate: NIR resets to 0 and sub-steps receive their own
input; the error is measured.

dt/r convention (SpikingJelly's): an ``I``/``IF`` node gets ``r = g/dt`` so the Euler step with the
graph's ``dt`` reproduces ``v += g·x`` (``g = 1`` almost always); an ``LI``/``LIF`` node gets
``τ = dt/(1−β)``, ``r = g/(1−β)`` and ``v_leak = c/(1−β)`` so Euler gives ``v ← β·v + g·x + c``. ``dt`` is
written to the graph metadata (key ``"dt"``). snnTorch reads ``nir.LIF`` with the same convention at its
hard-coded dt = 1e−4 (so export with the default dt for it), but it rejects ``nir.IF`` with ``r ≠ 1`` and reads
it as a *leaky* neuron; sinabs ignores ``r``.

Every export returns a :class:`~multispike.export.report.FidelityReport` with the *measured* output error of
the exported graph (run by :func:`import_from_nir`, literally and with restoration) on sample inputs.

Size (over 450 lines): NIR export and import with the measured-fidelity report; the import half mirrors the
export node by node, so they change together.
"""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..convert.lmht import reparameterize_lmht
from ._common import DEFAULT_DT, _full, _np, _sanitize, require_nir
from ._emit import NeuronEmission, emit_neuron
from ._measure import measure_fidelity
from ._neurons import NeuronSpec, analyze, neuron_record, unwrap
from ._records import BN_TYPES as _BN_TYPES
from ._records import SYN_TYPES as _SYN_TYPES
from ._records import fold_input_scale, modules_metadata, synapse_from_modules
from ._trace import NIRExportError, Problem, TracedCall, trace_network
from .report import FidelityReport, LayerFidelity

__all__ = ["export_to_nir", "MODES", "NIRExportError", "require_nir", "emit_neuron", "DEFAULT_DT"]

MODES = ("exact", "if", "unrolled")


@dataclass
class _Term:
    sources: tuple[str, ...]
    p: torch.Tensor | None = None       # per-sample factor still to apply (None = 1)
    layer: str | None = None            # neuron layer the factor comes from


class _Builder:
    def __init__(self, nir, dt: float, mode: str, exact_roundtrip: bool) -> None:
        self.nir = nir
        self.dt = dt
        self.mode = mode
        self.exact_roundtrip = exact_roundtrip
        self.nodes: dict[str, object] = {}
        self.edges: list[tuple[str, str]] = []
        self._edge_set: set[tuple[str, str]] = set()
        self.values: dict[int, list[_Term]] = {}
        self.layers: list[LayerFidelity] = []
        self.layer_nodes: dict[str, str] = {}      # layer name -> membrane/IF node (for measurements)
        self.layer_specs: dict[str, NeuronSpec] = {}
        self.notes: list[str] = []

    def unique(self, base: str) -> str:
        name = _sanitize(base)
        if name in ("input", "output"):
            name = f"{name}_"
        cand, i = name, 1
        while cand in self.nodes:
            cand = f"{name}_{i}"
            i += 1
        return cand

    def add(self, name: str, node, meta: dict | None = None) -> str:
        if meta:
            node.metadata = {**(node.metadata or {}), **meta}
        self.nodes[name] = node
        return name

    def edge(self, a: str, b: str) -> None:
        if (a, b) not in self._edge_set:
            self._edge_set.add((a, b))
            self.edges.append((a, b))

    # --- value handling ---
    def materialize(self, value: list[_Term], shape: tuple[int, ...]) -> list[str]:
        """Sources whose summed outputs equal the value (a Scale node per term that still carries a factor)."""
        out: list[str] = []
        for term in value:
            if term.p is None:
                out.extend(term.sources)
                continue
            name = self.unique(f"{term.layer or 'payload'}_payload")
            self.add(name, self.nir.Scale(scale=_np(_full(term.p, shape))),
                     {"multispike.role": "payload", "multispike.layer": term.layer or ""})
            for s in term.sources:
                self.edge(s, name)
            out.append(name)
        return out

    def connect(self, sources: list[str], target: str) -> None:
        for s in sources:
            self.edge(s, target)


def _single_factor(value: list[_Term]) -> _Term | None:
    if len(value) == 1 and value[0].p is not None:
        return value[0]
    return None


def _channel_factor(p: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor | None:
    """``p`` as one factor per channel of a ``(C, ...)`` per-sample shape, or None if it varies within a channel."""
    full = _full(p, shape)
    if len(shape) == 1:
        return full
    flat = full.reshape(shape[0], -1)
    if bool((flat == flat[:, :1]).all()):
        return flat[:, 0].clone()
    return None


def _layer_problem(call: TracedCall) -> str | None:
    m = call.module
    shape = call.in_shapes[0] if call.in_shapes else ()
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        if m.padding_mode != "zeros":
            return f"padding_mode={m.padding_mode!r} has no NIR form; use zero padding"
        if isinstance(m, nn.Conv2d) and len(shape) != 3:
            return f"Conv2d on a per-sample shape {shape}; expected (C, H, W)"
        return None
    if isinstance(m, nn.Linear):
        if len(shape) != 1:
            return (f"Linear on a per-sample shape {shape}: nir.Affine maps vectors; flatten first (token "
                    f"layouts [T, B, N, C] are not exportable)")
        return None
    if isinstance(m, _BN_TYPES):
        if m.training:
            return "BatchNorm in train mode; call model.eval() (exports use running statistics)"
        if m.running_mean is None:
            return "BatchNorm without running statistics cannot be folded"
        return None
    if isinstance(m, nn.AvgPool2d):
        if m.ceil_mode:
            return "AvgPool2d(ceil_mode=True) has no NIR form"
        if m.divisor_override is not None:
            return "AvgPool2d(divisor_override=...) has no NIR form"
        pad = m.padding if isinstance(m.padding, tuple) else (m.padding, m.padding)
        if any(pad) and not m.count_include_pad:
            return "AvgPool2d with padding and count_include_pad=False has no NIR form"
        return None
    if isinstance(m, nn.AdaptiveAvgPool2d):
        if len(shape) != 3:
            return f"AdaptiveAvgPool2d on per-sample shape {shape}"
        out = m.output_size if isinstance(m.output_size, tuple) else (m.output_size, m.output_size)
        out = tuple(shape[1 + i] if o is None else o for i, o in enumerate(out))
        if shape[1] % out[0] or shape[2] % out[1]:
            return (f"AdaptiveAvgPool2d({out}) on {shape[1:]} does not tile evenly; use an AvgPool2d with a fixed "
                    f"kernel")
        return None
    if isinstance(m, nn.Flatten):
        start, _ = _flatten_dims(m, call.lead_out, len(shape))
        if start < 0:
            return ("this Flatten merges the time/batch dimension into the features; NIR shapes are per sample. "
                    "Flatten from the first feature dim (nn.Flatten() inside SeqToANNContainer)")
        return None
    if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool2d)):
        return ("max pooling has no spiking NIR form; train with AvgPool2d (convert_to_snn(maxpool='avg') swaps it, "
                "which changes the function)")
    if isinstance(m, (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardtanh)) or type(m).__name__ in (
            "QCFS", "QACQuantizer"):
        return ("an analog activation is left in the network; convert it to spiking neurons first "
                "(multispike.convert.converter.convert_to_snn, convert_qcfs_to_lmht or the M-LIF initialiser)")
    if type(m).__name__ == "TimeSharedDropout":
        return "TimeSharedDropout in train mode; call model.eval()"
    if type(m).__name__ in ("TemporalAlign", "MultiStepContainer"):
        return (f"{type(m).__name__} changes the time axis or wraps a single-step module; NIR runs one step at a "
                f"time. Use uniform timesteps and multi-step neurons")
    return (f"{type(m).__name__} has no NIR mapping (supported: Conv1d, Conv2d, Linear, BatchNorm1d/2d (folded), "
            f"AvgPool2d, AdaptiveAvgPool2d (even tiling), Flatten, Identity, Dropout (eval), ResidualAdd, neurons)")


def _flatten_dims(m: nn.Flatten, lead: int, rank_in: int) -> tuple[int, int]:
    """Per-sample (batch-free) dims of ``nn.Flatten`` applied to a tensor with ``lead`` leading time/batch dims."""
    full_rank = rank_in + lead
    start = m.start_dim if m.start_dim >= 0 else full_rank + m.start_dim
    end = m.end_dim if m.end_dim >= 0 else full_rank + m.end_dim
    return start - lead, end - lead


def _emit_flatten(b: _Builder, value: list[_Term], in_shape, start: int, end: int, base: str,
                  meta: dict | None = None) -> list[_Term]:
    nir = b.nir
    end_n = -1 if end == len(in_shape) - 1 else end
    name = b.unique(base)
    b.add(name, nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=start, end_dim=end_n), meta)
    term = _single_factor(value)
    if term is not None:
        p_full = _full(term.p, tuple(in_shape)).flatten(start, end)
        b.connect(list(term.sources), name)
        return [_Term((name,), p_full, term.layer)]
    b.connect(b.materialize(value, tuple(in_shape)), name)
    return [_Term((name,))]


def _emit_synapse(b: _Builder, call: TracedCall, modules: list[nn.Module], value: list[_Term]) -> list[_Term]:
    """Conv/Linear (+ folded BN), or a standalone BN, with a pending payload factor folded into its weights."""
    nir = b.nir
    in_shape = call.in_shapes[0]
    syn, folded_bn = synapse_from_modules(modules, tuple(in_shape), call.name)
    weight = syn.weight.detach().to("cpu", torch.float32)
    has_bias = syn.bias is not None
    bias = syn.bias.detach().to("cpu", torch.float32) if has_bias else torch.zeros(weight.shape[0])
    term = _single_factor(value)
    fold_scale = None
    sources: list[str]
    if term is not None:
        p_in = _channel_factor(term.p, tuple(in_shape))
        if p_in is not None:
            groups = getattr(syn, "groups", 1)
            weight = fold_input_scale(weight, p_in, groups)
            fold_scale = p_in
            sources = list(term.sources)
        else:
            sources = b.materialize(value, tuple(in_shape))
    else:
        sources = b.materialize(value, tuple(in_shape))
    name = b.unique(call.name)
    if isinstance(syn, nn.Conv2d):
        node = nir.Conv2d(input_shape=tuple(int(s) for s in in_shape[1:]), weight=_np(weight),
                          stride=tuple(syn.stride), padding=syn.padding if isinstance(syn.padding, str) else
                          tuple(syn.padding), dilation=tuple(syn.dilation), groups=int(syn.groups), bias=_np(bias))
    elif isinstance(syn, nn.Conv1d):
        node = nir.Conv1d(input_shape=int(in_shape[1]), weight=_np(weight), stride=int(syn.stride[0]),
                          padding=syn.padding if isinstance(syn.padding, str) else int(syn.padding[0]),
                          dilation=int(syn.dilation[0]), groups=int(syn.groups), bias=_np(bias))
    elif has_bias:
        node = nir.Affine(weight=_np(weight), bias=_np(bias))
    else:
        node = nir.Linear(weight=_np(weight))
    meta: dict = {"multispike.layer": call.name}
    needs_record = fold_scale is not None or folded_bn or (isinstance(syn, (nn.Conv1d, nn.Conv2d)) and not has_bias)
    if b.exact_roundtrip and needs_record:
        meta.update(modules_metadata(modules))
        if fold_scale is not None:
            meta["multispike.fold_layer"] = term.layer or ""
            meta["multispike.fold_scale"] = _np(fold_scale)
    b.add(name, node, meta)
    b.connect(sources, name)
    return [_Term((name,))]


def _emit_avgpool(b: _Builder, call: TracedCall, value: list[_Term]) -> list[_Term]:
    nir = b.nir
    m = call.module
    in_shape = call.in_shapes[0]
    if isinstance(m, nn.AdaptiveAvgPool2d):
        out = m.output_size if isinstance(m.output_size, tuple) else (m.output_size, m.output_size)
        out = tuple(in_shape[1 + i] if o is None else o for i, o in enumerate(out))
        k = (in_shape[1] // out[0], in_shape[2] // out[1])
        s, pad = k, (0, 0)
    else:
        def pair(v):
            return tuple(v) if isinstance(v, (tuple, list)) else (v, v)
        k = pair(m.kernel_size)
        s = pair(m.stride if m.stride is not None else m.kernel_size)
        pad = pair(m.padding)
    name = b.unique(call.name)
    b.add(name, nir.AvgPool2d(kernel_size=np.array(k), stride=np.array(s), padding=np.array(pad)),
          {"multispike.layer": call.name})
    term = _single_factor(value)
    if term is not None and _channel_factor(term.p, tuple(in_shape)) is not None:
        p_c = _channel_factor(term.p, tuple(in_shape))
        b.connect(list(term.sources), name)
        return [_Term((name,), p_c.view(-1, 1, 1), term.layer)]
    b.connect(b.materialize(value, tuple(in_shape)), name)
    return [_Term((name,))]


def _prepare_unrolled(model: nn.Module, example_input: torch.Tensor, T: int):
    """Reparameterise LM-HT/M-HT layers into an L·T-step IF network (algorithms.md §2.7)."""
    from ..neurons.lmht import LMHTNeuron, MHTNeuron

    has_mht = any(isinstance(unwrap(m)[0], (LMHTNeuron, MHTNeuron)) for m in model.modules())
    if not has_mht:
        return model, None, ""
    try:
        net, rep = reparameterize_lmht(model, T=T, example_input=example_input, wrap_input=True)
    except ValueError as exc:
        raise NIRExportError(f"mode='unrolled': the LM-HT network cannot be reparameterised: {exc}") from exc
    # wrap_input=True returns Sequential(ExpandTime(L), net): module names gain the prefix "1.".
    return net, rep, ("1." if rep.input_expansion == "wrapped" else "")


def export_to_nir(model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike | None = None,
                  dt: float = DEFAULT_DT, mode: str = "exact", *, sample_inputs=None, exact_roundtrip: bool = True,
                  measure: bool = True, nirtorch_check: bool = False):
    """Export a multispike network to a NIR graph and measure how faithful the graph is.

    Args:
        model: a time-major network (``[T, B, ...]``; stateless layers in ``SeqToANNContainer``; neurons in
            ``'m'`` mode), a zoo ``TimeMajorModel``, or a converted ANN (``TimeMergedSNN``). Residual networks
            must add through :class:`~multispike.layers.ResidualAdd`. It is deep-copied to the CPU and put in
            eval mode (the original is not modified).
        example_input: what ``model(...)`` takes (static ``[B, ...]`` or time-major ``[T, B, ...]``); one
            forward pass with it recovers the dataflow graph.
        path: if given, the graph is written there with ``nir.write`` (HDF5).
        dt: the step the graph is written for (seconds). ``I``/``IF`` get ``r = g/dt``, ``LI``/``LIF`` get
            ``τ = dt/(1−β)`` so Euler with this dt reproduces our update (see the module docstring).
        mode: ``"exact"`` (threshold ladder / one-hot lanes; lossless), ``"if"`` (one ``nir.IF``/``nir.LIF`` per
            layer; chips) or ``"unrolled"`` (LM-HT reparameterised into L sub-steps of ``nir.IF``).
        sample_inputs: inputs (a tensor or an iterable of tensors / ``(x, y)`` pairs) on which the report
            measures the exported graph; default: ``example_input``.
        exact_roundtrip: store in node metadata what rebuilds the original neurons and layers bit for bit (the
            unfolded weights of layers that absorbed θ or a BatchNorm). Costs one extra copy of those weights.
        measure: run the exported graph and fill in the measured agreement (default True).
        nirtorch_check: also run the graph with nirtorch's executor (literal node semantics, one step per call;
            :mod:`multispike.export.nirtorch_ref`) and report its output agreement as semantics ``"nirtorch"``.

    Returns:
        ``(graph, report)``: a ``nir.NIRGraph`` and a :class:`~multispike.export.report.FidelityReport`.

    Raises:
        NIRExportError: the model contains constructs NIR cannot express in ``mode``; the message lists every
            offending module with the fix.

    Example::

        >>> import torch, torch.nn as nn
        >>> from multispike.layers import SeqToANNContainer
        >>> from multispike.neurons import IFNeuron
        >>> snn = nn.Sequential(SeqToANNContainer(nn.Linear(16, 4)),
        ...                     IFNeuron(v_threshold=0.5, v_init=0.25, step_mode='m'))
        >>> graph, report = export_to_nir(snn, torch.rand(4, 2, 16), mode="exact")
        >>> sorted(type(n).__name__ for n in graph.nodes.values())
        ['Affine', 'I', 'Input', 'Output', 'Scale', 'Threshold']
        >>> report.exact, report.output("multispike").bitwise
        (True, True)
    """
    nir = require_nir()
    if mode not in MODES:
        raise ValueError(f"export_to_nir: mode must be one of {MODES}, got {mode!r}")
    try:
        dt = float(dt)
    except (TypeError, ValueError):
        raise ValueError(f"export_to_nir: dt must be a positive number of seconds, got {dt!r}") from None
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"export_to_nir: dt must be a finite number > 0 (seconds per step), got {dt!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_to_nir: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"export_to_nir: example_input must be a torch.Tensor, got {type(example_input).__name__}")
    # NIR parameters are numpy arrays and the imported graph runs on the CPU: trace and measure there too.
    original = copy.deepcopy(model).cpu().eval()
    example_input = example_input.detach().cpu()
    work = original
    rep_report = None
    prefix = ""
    if mode == "unrolled":
        with torch.no_grad():
            pre, _, _ = trace_network(original, example_input)
        work, rep_report, prefix = _prepare_unrolled(original, example_input, pre.T)
        work = work.eval()
    with torch.no_grad():
        traced, problems, _ = trace_network(work, example_input)

    # --- neuron analysis and per-construct problems --------------------------------------------------
    specs: dict[int, NeuronSpec] = {}
    for call in traced.calls:
        if call.kind == "neuron":
            spec = analyze(call.module, call.name)
            spec.steps = call.steps
            specs[call.index] = spec
            wrap = unwrap(call.module)[1]
            if wrap.get("align") and "aver" in str(wrap["align"]) and call.in_steps and max(call.in_steps) > 1:
                problems.append(Problem(call.name, "AlignedNeuron",
                                        f"temporal averaging (align={wrap['align']!r}) mixes all T steps (non-causal); "
                                        f"convert with align=None or 'repl+trunc' at one uniform T"))
            reason = spec.problems.get(mode)
            if reason is None and mode == "unrolled" and spec.family == "ladder" and spec.levels > 1:
                reason = "internal: LM-HT layer left after reparameterisation"
            if reason:
                problems.append(Problem(call.name, spec.kind, reason))
        elif call.kind == "layer":
            reason = _layer_problem(call)
            if reason:
                problems.append(Problem(call.name, type(call.module).__name__, reason))
        elif call.kind == "readout" and call.index != traced.output_call:
            problems.append(Problem(call.name, "MeanOverTime", "a time mean inside the network (not at the output) "
                                                               "has no NIR form"))
        elif call.kind == "encoder" and any(c.kind == "neuron" and c.index < call.index for c in traced.calls):
            problems.append(Problem(call.name, "DirectEncoder", "direct encoding after a spiking layer"))
    if not specs:
        problems.append(Problem("", type(model).__name__, "no spiking neuron found; convert the network first "
                                                          "(convert_to_snn) - an ANN has no NIR spiking form"))
    if problems:
        listing = "\n".join(str(p) for p in problems)
        raise NIRExportError(f"cannot export {type(model).__name__} to NIR with mode={mode!r}: {len(problems)} "
                             f"unsupported construct(s):\n{listing}")

    # --- emission -------------------------------------------------------------------------------------
    b = _Builder(nir, dt, mode, exact_roundtrip)
    b.nodes["input"] = nir.Input(input_type={"input": np.array(traced.input_shape)})
    fused_bn: dict[int, int] = {}
    for call in traced.calls:
        if isinstance(call.module, _BN_TYPES) and len(call.inputs) == 1 and call.inputs[0] >= 0:
            src = traced.calls[call.inputs[0]]
            if isinstance(src.module, _SYN_TYPES) and src.consumers == [call.index] and call.reshapes[0] is None:
                fused_bn[src.index] = call.index
    skip = set(fused_bn.values())

    def value_of(idx: int) -> list[_Term]:
        return [_Term(("input",))] if idx == -1 else b.values[idx]

    for call in traced.calls:
        if call.index in skip:
            continue
        value: list[_Term] = []
        for pos, (src, span) in enumerate(zip(call.inputs, call.reshapes)):
            v = value_of(src)
            if span is not None:
                src_shape = traced.input_shape if src == -1 else traced.calls[src].out_shape
                v = _emit_flatten(b, v, src_shape, span[0], span[1], f"{call.name}_flatten{pos}")
            value.extend(v)
        kind = call.kind
        m = call.module
        if kind in ("transparent", "encoder", "expand", "readout", "add"):
            b.values[call.index] = value
            continue
        if kind == "neuron":
            spec = specs[call.index]
            shape = call.in_shapes[0]
            lname = call.name[len(prefix):] if prefix and call.name.startswith(prefix) else call.name
            base = b.unique(lname)
            em = emit_neuron(spec, mode, shape, dt, base)
            sources = b.materialize(value, tuple(shape))
            for name, node in em.nodes.items():
                meta = {"multispike.role": em.roles[name], "multispike.layer": lname}
                if name == em.entry:
                    meta.update(_neuron_meta(spec, mode, em, exact_roundtrip))
                b.add(name, node, meta)
            for e in em.edges:
                b.edge(*e)
            b.connect(sources, em.entry)
            b.values[call.index] = [_Term(tuple(em.outputs), em.payload, lname)]
            b.layer_nodes[lname] = em.entry
            b.layer_specs[lname] = spec
            b.layers.append(LayerFidelity(name=lname, neuron=spec.kind, nodes=list(em.nodes), mode=mode,
                                          convention=em.convention, exact=em.exact, fidelity=em.fidelity,
                                          reason=em.reason))
            continue
        if isinstance(m, _SYN_TYPES) or isinstance(m, _BN_TYPES):
            mods = [m] if call.index not in fused_bn else [m, traced.calls[fused_bn[call.index]].module]
            out = _emit_synapse(b, call, mods, value)
            b.values[call.index] = out
            if call.index in fused_bn:
                b.values[fused_bn[call.index]] = out
            continue
        if isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            b.values[call.index] = _emit_avgpool(b, call, value)
            continue
        if isinstance(m, nn.Flatten):
            start, end = _flatten_dims(m, call.lead_out, len(call.in_shapes[0]))
            b.values[call.index] = _emit_flatten(b, value, call.in_shapes[0], start, end, call.name,
                                                 {"multispike.layer": call.name})
            continue
        raise NIRExportError(f"internal: no emitter for {call.name} ({type(m).__name__})")  # pragma: no cover

    out_call = traced.calls[traced.output_call]
    final = b.values[traced.output_call]
    out_shape = out_call.out_shape if out_call.kind != "readout" else out_call.in_shapes[0]
    srcs = b.materialize(final, tuple(out_shape))
    if len(srcs) != 1:
        name = b.unique("output_sum")
        b.add(name, nir.Scale(scale=np.ones(out_shape, np.float32)), {"multispike.role": "sum"})
        b.connect(srcs, name)
        srcs = [name]
    b.nodes["output"] = nir.Output(output_type={"output": np.array(out_shape)})
    b.connect(srcs, "output")

    T_graph = traced.T
    L_sub = traced.substeps if mode == "unrolled" else 1
    step = "dt'" if L_sub > 1 else "dt"
    convention = (f"dt = {dt:g} s per step" + (f"; sub-step dt' = dt/{L_sub} = {dt / L_sub:g} s" if L_sub > 1 else "")
                  + f"; I/IF: r = g/{step} so Euler v += {step}·r·x = g·x; LI/LIF: τ = {step}/(1−β), r = g/(1−β), "
                    "v_leak = c/(1−β) so Euler v ← β·v + g·x + c; NIR fires on '>' (thresholds of '≥' neurons "
                    "lowered by one float32 ulp); several edges into a node are summed")
    timesteps = {c.name[len(prefix):] if prefix and c.name.startswith(prefix) else c.name: c.steps
                 for c in traced.neurons()}
    metadata = {"producer": "multispike", "multispike.version": _version(), "multispike.mode": mode,
                "dt": dt / L_sub, "logical_dt": dt, "T": int(T_graph), "substeps": int(L_sub),
                "readout": traced.readout, "input_encoding": traced.input_layout,
                "multispike.timesteps": json.dumps(timesteps), "multispike.convention": convention}
    try:
        graph = nir.NIRGraph(nodes=b.nodes, edges=b.edges, metadata=metadata, type_check=True)
    except Exception as exc:  # noqa: BLE001 - nir raises assorted errors on inconsistent types
        raise NIRExportError(f"internal: the emitted NIR graph does not type-check ({type(exc).__name__}: {exc}); "
                             f"please report this with the model") from exc
    report = FidelityReport(mode=mode, dt=dt, convention=convention, T=int(T_graph), substeps=int(L_sub),
                            readout=traced.readout, input_layout=traced.input_layout, layers=b.layers,
                            nodes=len(graph.nodes), edges=len(graph.edges))
    report.notes.append("exported in eval mode (BatchNorm running statistics, dropout off)")
    if mode == "exact":
        report.notes.append("'exact' means equal in real arithmetic; in float32 the literal graph rounds differently "
                            "(θ folded into weights, u0 into thresholds, products instead of divisions), so a membrane "
                            "within rounding distance of a threshold can flip - see the measured 'nir' agreement. "
                            "import_from_nir restores the original modules and is bit-identical")
    if any(isinstance(c.module, _BN_TYPES) for c in traced.calls):
        report.notes.append("BatchNorm folded into the preceding conv/linear (exact in real arithmetic; the literal "
                            "graph rounds differently)")
    if mode == "exact" and not exact_roundtrip and any(lf.neuron for lf in b.layers):
        report.notes.append("exact_roundtrip=False: no restoration metadata was written, so import_from_nir runs the "
                            "literal graph (exact in real arithmetic; float rounding of θ·W differs)")
    if rep_report is not None:
        report.notes.append(str(rep_report))
    if L_sub > 1:
        report.notes.append(f"feed {L_sub} sub-steps per logical step: a static input is repeated T = {T_graph} "
                            f"times; a time-major input has each step repeated {L_sub} times (expand_time)")
    if path is not None:
        path = Path(path)
        if path.parent and not path.parent.exists():
            raise FileNotFoundError(f"export_to_nir: the folder {path.parent} of path={str(path)!r} does not exist")
        nir.write(str(path), graph)
        report.path = str(path)
    if measure:
        measure_fidelity(report, graph, original, work, traced, b, mode, sample_inputs if sample_inputs is not None
                 else example_input, nirtorch_check)
    return graph, report


def _version() -> str:
    from .. import __version__
    return __version__


def _neuron_meta(spec: NeuronSpec, mode: str, em: NeuronEmission, exact_roundtrip: bool) -> dict:
    meta = {"multispike.neuron": spec.kind, "multispike.fidelity": em.fidelity}
    if spec.levels > 1:
        meta["multispike.levels"] = int(spec.levels)
    if spec.lanes:
        meta["multispike.lanes"] = int(spec.lanes)
    if mode == "exact" and em.exact and exact_roundtrip and spec.kind in ("IFNeuron", "LIFNeuron", "MHTNeuron",
                                                                         "LMHTNeuron", "OneHotMLIF"):
        cls, cfg, state = neuron_record(spec.core)
        cfg["state_shapes"] = {k: list(v.shape) for k, v in state.items()}
        meta["multispike.class"] = cls
        meta["multispike.config"] = json.dumps(cfg)
        for k, v in state.items():
            meta[f"multispike.state.{k}"] = np.atleast_1d(v)  # HDF5 cannot compress 0-d datasets
    return meta


# The importer lives in its own module; re-exported here so ``multispike.export.nir`` is the one NIR entry point.
from ._import import NIRImportError, NIRNetwork, import_from_nir, read_nir  # noqa: E402

__all__ += ["import_from_nir", "NIRNetwork", "NIRImportError", "read_nir"]
