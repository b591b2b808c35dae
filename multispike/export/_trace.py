"""Front end of the exporters: run a network once and recover its dataflow graph of modules.

The tracer hooks every *atomic* module (spiking neurons and their wrappers, residual adders, encoders,
readouts and every stateless ``torch.nn`` leaf), runs the model on an example input, and links each call
to the call that produced its input by **storage identity** (a view such as ``x.flatten(0, 1)`` or
``y.view(T, B, ...)`` shares the producer's storage). This works for time-major models built from
:class:`~multispike.layers.SeqToANNContainer` and neurons, for the zoo's ``TimeMajorModel`` (stem run once
and repeated by a :class:`~multispike.layers.DirectEncoder`), for converted plain ANNs
(:class:`~multispike.convert.converter.TimeMergedSNN`, merged ``T·B`` batch) and for residual networks that
add through :class:`~multispike.layers.ResidualAdd`. A tensor that was computed outside any module (a
functional op in ``forward``) has no producer and is reported, so nothing is exported silently wrong.

Shapes are recorded *per sample*: the leading time and batch dimensions are stripped (two for a module that
sees ``[T, B, ...]``, one for a module on the merged ``[T·B, ...]`` batch), which is what NIR node types
describe.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..convert.converter import MergedTimeNeuron, TimeMergedSNN
from ..convert.lmht import ExpandTime
from ..convert.mixed_timestep import AlignedNeuron
from ..layers import DirectEncoder, MeanOverTime, MultiStepContainer, ResidualAdd, SeqToANNContainer, TemporalAlign
from ..neurons.base import MemoryModule, StepModule, reset_net

__all__ = ["TracedCall", "TracedNetwork", "Problem", "trace_network", "NIRExportError"]


class NIRExportError(ValueError):
    """The model contains constructs that NIR cannot express in the requested mode (the message lists them)."""


@dataclass
class Problem:
    """One construct the exporter cannot handle, with the fix."""

    name: str
    op: str
    detail: str

    def __str__(self) -> str:
        return f"  - {self.name or '<model>'} ({self.op}): {self.detail}"


@dataclass
class TracedCall:
    """One call of an atomic module during the traced forward pass.

    Attributes:
        index: position in call order (a topological order of the dataflow graph).
        name: qualified module name (``model.get_submodule(name)``).
        kind: ``"layer"`` (stateless leaf), ``"neuron"``, ``"add"`` (residual), ``"encoder"`` (direct
            encoding, T-repeat), ``"expand"`` (sub-step expansion, ``repeat_interleave``), ``"readout"``
            (time mean) or ``"transparent"`` (identity at inference: eval dropout, ``nn.Identity``).
        inputs: for every tensor argument, the index of the producing call or ``-1`` for the model input.
        reshapes: for every input, ``None`` or the per-sample ``(start_dim, end_dim)`` of an implicit flatten
            between producer and consumer (``x.view(B, -1)`` written in ``forward``).
        in_shapes / out_shape: per-sample shapes.
        steps: number of time steps the call saw (``None`` when it ran on a static input).
    """

    index: int
    name: str
    module: nn.Module
    kind: str
    inputs: list[int] = field(default_factory=list)
    reshapes: list = field(default_factory=list)
    in_shapes: list[tuple[int, ...]] = field(default_factory=list)
    out_shape: tuple[int, ...] = ()
    steps: int | None = None
    consumers: list[int] = field(default_factory=list)
    lead_out: int = 2
    in_steps: list[int] = field(default_factory=list)


@dataclass
class TracedNetwork:
    """The dataflow graph of one forward pass (see :func:`trace_network`)."""

    calls: list[TracedCall]
    input_shape: tuple[int, ...]
    input_layout: str           # "static" ([B, ...], repeated T times) or "sequence" ([T, B, ...])
    T: int                      # graph steps per sample (L·T for an unrolled network)
    batch: int
    output_call: int
    readout: str                # "sequence" (per-step outputs) or "mean" (time mean)
    substeps: int = 1           # L when the network expands its input L-fold (ExpandTime)
    input_consumers: list[int] = field(default_factory=list)

    def neurons(self) -> list[TracedCall]:
        return [c for c in self.calls if c.kind == "neuron"]


# ----------------------------------------------------------------------------------------------- classification
def _wrapper_types() -> tuple[type, ...]:
    """Neuron wrappers made by the converters (traced through to the neuron they wrap)."""
    return (MergedTimeNeuron, AlignedNeuron)


def _expand_type() -> tuple[type, ...]:
    return (ExpandTime,)


def _merged_graph_types() -> tuple[type, ...]:
    return (TimeMergedSNN,)


def _is_transparent_layer(m: nn.Module) -> bool:
    if isinstance(m, nn.Identity):
        return True
    if isinstance(m, nn.modules.dropout._DropoutNd) and not m.training:
        return True
    return type(m).__name__ == "TimeSharedDropout" and (not m.training or getattr(m, "p", 0.0) == 0.0)


def _kind(m: nn.Module, wrappers: tuple[type, ...]) -> str | None:
    """The kind of an atomic module, or None for a container the tracer looks into."""
    if isinstance(m, wrappers) or isinstance(m, MemoryModule):
        return "neuron"
    if isinstance(m, ResidualAdd):
        return "add"
    if isinstance(m, DirectEncoder):
        return "encoder"
    if isinstance(m, _expand_type()):
        return "expand"
    if isinstance(m, MeanOverTime):
        return "readout"
    if isinstance(m, (TemporalAlign, MultiStepContainer)):
        return "layer"  # reported as unsupported by the emitter unless trivially equivalent
    if _is_transparent_layer(m):
        return "transparent"
    if type(m).__name__ == "TimeSharedDropout":
        return "layer"
    if next(m.children(), None) is None:
        return "layer"
    return None


def _atomic_modules(model: nn.Module) -> dict[str, tuple[nn.Module, str, bool]]:
    """``{name: (module, kind, merged)}`` for the modules to hook; ``merged``: runs on the ``T·B`` batch."""
    wrappers = _wrapper_types()
    merged_types = (SeqToANNContainer, *_merged_graph_types())
    out: dict[str, tuple[nn.Module, str, bool]] = {}

    def visit(module: nn.Module, prefix: str, merged: bool) -> None:
        kind = _kind(module, wrappers) if prefix or next(module.children(), None) is None else None
        if kind is not None:
            out[prefix] = (module, kind, merged)
            return
        inner = merged or isinstance(module, merged_types)
        for child_name, child in module.named_children():
            visit(child, f"{prefix}.{child_name}" if prefix else child_name, inner)

    visit(model, "", False)
    return out


def _key(t: torch.Tensor) -> tuple[int, int]:
    return (t.untyped_storage().data_ptr(), t.storage_offset())


def _tensors(args) -> list[torch.Tensor]:
    return [a for a in args if isinstance(a, torch.Tensor)]


def _flatten_span(src: tuple[int, ...], dst: tuple[int, ...]) -> tuple[int, int] | None:
    """``(start, end)`` such that flattening dims ``start..end`` of ``src`` gives ``dst`` (per-sample), or None."""
    if src == dst:
        return None
    if math.prod(src) != math.prod(dst):
        raise ValueError("element count differs")
    pre = 0
    while pre < min(len(src), len(dst)) and src[pre] == dst[pre]:
        pre += 1
    suf = 0
    while suf < min(len(src), len(dst)) - pre and src[len(src) - 1 - suf] == dst[len(dst) - 1 - suf]:
        suf += 1
    if len(dst) - pre - suf == 1 and len(src) - pre - suf >= 1:
        return (pre, len(src) - 1 - suf)
    raise ValueError(f"{src} -> {dst} is not a flatten")


# ----------------------------------------------------------------------------------------------- tracing
@torch.no_grad()
def trace_network(model: nn.Module, example_input: torch.Tensor) -> tuple[TracedNetwork, list[Problem], torch.Tensor]:
    """Run ``model(example_input)`` once with hooks and return ``(network, problems, model_output)``.

    ``problems`` lists dataflow the exporter cannot represent (tensors made outside modules, stateful modules
    called twice, mixed timesteps, ...); the caller adds construct-specific problems and raises.
    """
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"export: example_input must be a torch.Tensor, got {type(example_input).__name__}")
    atomic = _atomic_modules(model)
    records: list[dict] = []
    problems: list[Problem] = []
    handles = []

    def make_hook(name: str, module: nn.Module, kind: str, merged: bool):
        def hook(_m, args, output):
            records.append({"name": name, "module": module, "kind": kind, "merged": merged,
                            "args": _tensors(args), "out": output})
        return hook

    for name, (module, kind, merged) in atomic.items():
        handles.append(module.register_forward_hook(make_hook(name, module, kind, merged)))
    try:
        reset_net(model)
        out = model(example_input)
    finally:
        for h in handles:
            h.remove()
        reset_net(model)
    if not isinstance(out, torch.Tensor):
        raise NIRExportError(f"export: the model returned {type(out).__name__}; only models returning one tensor "
                             f"can be exported")
    if not records:
        raise NIRExportError(f"export: {type(model).__name__} ran no module during the example forward pass; nothing "
                             f"to export")

    # --- time and batch sizes from the neurons -------------------------------------------------------
    wrappers = _wrapper_types()
    merged_neuron = wrappers[0] if wrappers else ()
    seen_T: dict[str, int] = {}
    B = None
    for r in records:
        if r["kind"] != "neuron" or not r["args"]:
            continue
        x = r["args"][0]
        if merged_neuron and isinstance(r["module"], merged_neuron):
            T_r = int(r["module"].T)
            B_r = x.shape[0] // T_r
        else:
            if isinstance(r["module"], StepModule) and getattr(r["module"], "step_mode", "m") == "s":
                problems.append(Problem(r["name"], type(r["module"]).__name__,
                                        "neuron is in single-step mode; call multispike.set_step_mode(model, 'm') "
                                        "before exporting"))
                continue
            out_r = r["out"]
            T_r = int(out_r.shape[0]) if isinstance(out_r, torch.Tensor) else int(x.shape[0])
            B_r = int(x.shape[1]) if x.dim() > 1 else 1
        seen_T[r["name"]] = T_r
        B = B_r if B is None else B
    if seen_T and len(set(seen_T.values())) > 1:
        listing = ", ".join(f"{n}: T={t}" for n, t in seen_T.items())
        problems.append(Problem("", "mixed timesteps",
                                f"the spiking layers run different numbers of timesteps ({listing}). One NIR graph "
                                f"runs at one dt, so per-layer timesteps cannot be expressed; convert with one T for "
                                f"every layer (multispike.convert.mixed_timestep.to_uniform_snn) and export that"))
    if B is None:
        B = int(example_input.shape[0])
    T = next(iter(seen_T.values())) if seen_T else 1

    # --- per-call shapes and producers --------------------------------------------------------------
    calls: list[TracedCall] = []
    producers: dict[tuple[int, int], list[int]] = {}
    in_key = _key(example_input)
    input_shape: tuple[int, ...] | None = None
    input_layout = "static"
    substeps = 1
    stateful_calls: dict[int, str] = {}

    def leading(kind: str, module: nn.Module, merged: bool, t: torch.Tensor, side: str) -> int:
        if kind == "neuron":
            return 1 if (merged_neuron and isinstance(module, merged_neuron)) or merged else 2
        if kind == "encoder":
            return 1 if side == "in" else 2
        if kind == "readout":
            return 2 if side == "in" else 1
        return 1 if merged else 2

    for idx, r in enumerate(records):
        module, kind, name = r["module"], r["kind"], r["name"]
        if kind == "neuron" or isinstance(module, MemoryModule):
            prev = stateful_calls.get(id(module))
            if prev is not None:
                problems.append(Problem(name, type(module).__name__,
                                        f"this stateful module is called more than once in one forward pass (also "
                                        f"as {prev!r}); give every spiking layer its own module"))
            stateful_calls[id(module)] = name
        call = TracedCall(index=idx, name=name, module=module, kind=kind)
        out_t = r["out"]
        if not isinstance(out_t, torch.Tensor):
            problems.append(Problem(name, type(module).__name__, "returns something other than one tensor"))
            calls.append(call)
            continue
        for a in r["args"]:
            lead = leading(kind, module, r["merged"], a, "in")
            lead = min(lead, a.dim())
            per = tuple(a.shape[lead:])
            call.in_shapes.append(per)
            call.in_steps.append(int(a.shape[0]) if lead == 2 else 1)
            producer, reshape = _find_producer(a, lead, per, producers, calls, in_key, example_input, T, B)
            if producer is None:
                problems.append(Problem(name, type(module).__name__,
                                        "its input was computed outside any module (a functional operation in "
                                        "forward, e.g. x + y, torch.cat, F.relu or slicing). Express it with modules "
                                        "(ResidualAdd for residual sums, nn.Flatten, neurons) so it can be exported"))
                call.inputs.append(-2)
                call.reshapes.append(None)
                continue
            if producer == -1:
                if input_shape is None:
                    input_shape = per
                    input_layout = "sequence" if example_input.dim() == len(per) + 2 else "static"
                    if input_layout == "sequence" and example_input.shape[0] == 1:
                        input_layout = "static"  # one analog step that the network repeats (e.g. AlignedNeuron)
            call.inputs.append(producer)
            call.reshapes.append(reshape)
        lead_out = min(leading(kind, module, r["merged"], out_t, "out"), out_t.dim())
        call.out_shape = tuple(out_t.shape[lead_out:])
        call.lead_out = lead_out
        if kind == "neuron":
            call.steps = seen_T.get(name)
        if kind == "expand":
            substeps = int(getattr(module, "levels", 1))
        calls.append(call)
        producers.setdefault(_key(out_t), []).append((idx, out_t.numel()))

    for c in calls:
        for p in c.inputs:
            if p >= 0:
                calls[p].consumers.append(c.index)
    input_consumers = [c.index for c in calls if -1 in c.inputs]
    if input_shape is None:
        per = tuple(example_input.shape[1:])
        input_shape = per

    # --- the output: one call's output itself, or its time mean --------------------------------------
    output_call, readout = _find_output(out, calls, records, producers, T, B, problems)
    net = TracedNetwork(calls=calls, input_shape=input_shape, input_layout=input_layout, T=T, batch=B,
                        output_call=output_call, readout=readout, substeps=substeps,
                        input_consumers=input_consumers)
    return net, problems, out


def _find_producer(a: torch.Tensor, lead: int, per: tuple[int, ...], producers, calls, in_key, example_input,
                   T: int, B: int):
    """``(producer index or -1 for the model input or None, implicit flatten span or None)``."""
    key = _key(a)
    expanded = a.dim() >= 1 and a.shape[0] > 1 and a.stride(0) == 0
    # A consumer sees a producer's output whole, or repeated over time by an expand() in forward (stride 0).
    sizes = (a.numel(), a[0].numel()) if expanded else (a.numel(),)
    for idx, total in reversed(producers.get(key, [])):
        if total not in sizes:
            continue
        # Same storage, offset and size: the consumer sees a view of this output (possibly regrouped
        # T·B <-> T, B, or flattened per sample by a view in forward).
        try:
            span = _flatten_span(calls[idx].out_shape, per)
        except ValueError:
            continue
        return idx, span
    if key == in_key and example_input.numel() in sizes:
        return -1, None
    # A copy of the (T-repeated) input, e.g. x.unsqueeze(0).expand(T, ...).flatten(0, 1) in TimeMergedSNN.
    x = example_input
    if x.numel() > 0 and a.numel() % x.numel() == 0:
        reps = a.numel() // x.numel()
        try:
            if torch.equal(a.reshape(reps, *x.shape), x.unsqueeze(0).expand(reps, *x.shape)):
                return -1, None
        except RuntimeError:
            pass
    return None, None


def _find_output(out: torch.Tensor, calls: list[TracedCall], records, producers, T: int, B: int,
                 problems: list[Problem]) -> tuple[int, str]:
    key = _key(out)
    for idx, total in reversed(producers.get(key, [])):
        if total == out.numel():
            return idx, "sequence" if calls[idx].kind != "readout" else "mean"
    sinks = [c for c in calls if not c.consumers and c.kind not in ("transparent",)]
    for c in reversed(sinks):
        y = records[c.index]["out"]
        if not isinstance(y, torch.Tensor) or y.numel() != out.numel() * T:
            continue
        try:
            seq = y.reshape(T, *out.shape)
        except RuntimeError:
            continue
        if torch.equal(seq.mean(0), out):
            return c.index, "mean"
    problems.append(Problem("", "output", "the model's output is neither the output of a module nor the time mean of "
                                          "one (a functional readout in forward?); end the network with a module, or "
                                          "with multispike.layers.MeanOverTime"))
    return (sinks[-1].index if sinks else len(calls) - 1), "sequence"
