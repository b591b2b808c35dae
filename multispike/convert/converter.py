"""ANN -> SNN conversion with an explicit report (algorithms.md §3.2; ecosystem.md §5 themes (a), (b)).

Stages (each inspectable through the returned :class:`ConversionReport`):

1. **trace** - plain ANNs are traced with ``torch.fx`` so functional activations (``F.relu``, ``torch.relu``,
   ``x.relu()``) are seen as well as ``nn.ReLU`` modules (SpikingJelly #517 was a silent no-op on ``F.relu``).
   Time-major models (``model.time_major`` is True, e.g. the zoo) are converted by module replacement.
2. **validate** - every op is classified as *replaced*, *folded*, *swapped*, *kept* (linear/structural) or
   *unsupported*. Unsupported constructs raise :class:`ConversionError` listing them; never a silent no-op.
3. **fold** - BatchNorm folded into the preceding conv/linear; MaxPool -> AvgPool (same kernel/stride/padding).
4. **calibrate** - thresholds from the quantizer clip (``"qcfs"``: QCFS ϑ or QAC α) or from activation
   statistics on calibration data (``"max"``, ``"99.9%"`` or a float percentile in (0, 100]).
5. **replace** - each activation becomes a spiking neuron (default: IF, soft reset, ``θ`` from stage 4,
   ``v(0) = θ/2``, payload θ), built by a pluggable ``neuron_factory``.

Plain ANNs come back wrapped in :class:`TimeMergedSNN`, which runs the converted graph on the merged
``[T·B, ...]`` batch (every stateless op is per-sample, so this is exact) and hands each neuron its
``[T, B, ...]`` view.
"""
from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import ResidualAdd
from ..neurons.base import MemoryModule, check_positive_int
from ..neurons.if_lif import IFNeuron
from ..quant.qac import QACQuantizer
from ..quant.qcfs import QCFS
from .fuse import fold_bn, swap_maxpool

__all__ = ["ConversionError", "ConversionReport", "TimeMergedSNN", "MergedTimeNeuron", "convert_to_snn",
           "activation_thresholds", "is_time_major", "ACTIVATION_FUNCTIONS"]


class ConversionError(ValueError):
    """A model contains constructs the converter cannot turn into an exact SNN."""


@dataclass
class ConversionReport:
    """What the converter did to every module and function it saw."""

    entries: list[dict] = field(default_factory=list)
    T: int | None = None
    target: str = "if"

    def add(self, name: str, op: str, action: str, detail: str = "") -> None:
        self.entries.append({"name": name, "op": op, "action": action, "detail": detail})

    def by_action(self, action: str) -> list[dict]:
        return [e for e in self.entries if e["action"] == action]

    @property
    def replaced(self) -> list[dict]:
        return self.by_action("replaced")

    @property
    def unsupported(self) -> list[dict]:
        return self.by_action("unsupported")

    def to_dict(self) -> dict:
        counts: dict[str, int] = {}
        for e in self.entries:
            counts[e["action"]] = counts.get(e["action"], 0) + 1
        return {"target": self.target, "T": self.T, "counts": counts, "entries": self.entries}

    def __str__(self) -> str:
        rows = [("name", "op", "action", "detail")] + [(e["name"], e["op"], e["action"], e["detail"])
                                                      for e in self.entries]
        widths = [min(48, max(len(str(r[i])) for r in rows)) for i in range(4)]
        lines = ["  ".join(str(c)[:w].ljust(w) for c, w in zip(r, widths)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        counts = self.to_dict()["counts"]
        summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        return f"Conversion report (target={self.target}, T={self.T}): {summary}\n" + "\n".join(lines)


# ------------------------------------------------------------------------------------------------ op tables
ACTIVATION_FUNCTIONS = (torch.relu, F.relu, torch.relu_, torch.nn.functional.relu_)
_ACTIVATION_METHODS = ("relu", "relu_")
_QUANT_TYPES: tuple[type, ...] = (QCFS, QACQuantizer)

_KEEP_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
                 nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveAvgPool3d, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout2d, nn.Identity,
                 nn.ZeroPad2d, nn.ConstantPad2d, ResidualAdd)
_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
# Functions that are linear or purely structural per sample, so running them on the merged T·B batch is exact.
_KEEP_FUNCTIONS = {operator.add, operator.sub, operator.neg, operator.getitem, operator.mul, operator.truediv,
                   torch.add, torch.sub, torch.flatten, torch.cat, torch.reshape, torch.mean, torch.sum,
                   F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                   F.adaptive_avg_pool3d, F.linear, F.conv1d, F.conv2d, F.dropout, F.pad, getattr}
_KEEP_METHODS = {"view", "reshape", "flatten", "size", "permute", "transpose", "contiguous", "mean", "sum", "add",
                 "unsqueeze", "squeeze", "chunk", "split", "__getitem__", "dim", "add_", "mul", "div", "neg"}
_MAXPOOL_FUNCTIONS = {F.max_pool1d: F.avg_pool1d, F.max_pool2d: F.avg_pool2d, F.max_pool3d: F.avg_pool3d}


def is_time_major(model: nn.Module) -> bool:
    """True for models that run natively on ``[T, B, ...]`` (the zoo); these are converted in place."""
    return bool(getattr(model, "time_major", False))


def _fn_name(target) -> str:
    return getattr(target, "__name__", None) or getattr(target, "__qualname__", None) or str(target)


def _is_activation_module(m: nn.Module) -> bool:
    return isinstance(m, nn.ReLU) or isinstance(m, _QUANT_TYPES)


# ------------------------------------------------------------------------------------------------ runtime
class MergedTimeNeuron(nn.Module):
    """Adapter placing a multi-step neuron inside a graph that runs on the merged ``[T·B, ...]`` batch."""

    def __init__(self, neuron: nn.Module, T: int) -> None:
        super().__init__()
        self.neuron = neuron
        self.T = T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] % self.T:
            raise ValueError(f"MergedTimeNeuron: merged batch {x.shape[0]} is not a multiple of T={self.T}")
        y = self.neuron(x.view(self.T, x.shape[0] // self.T, *x.shape[1:]))
        return y.flatten(0, 1)


class TimeMergedSNN(nn.Module):
    """A converted plain ANN: runs ``T`` steps of direct encoding on the merged batch.

    ``forward(x)`` takes a static ``[B, ...]`` input (repeated over T) or a time-major ``[T, B, ...]`` input
    (``input_layout="TB"``) and returns the time-mean output; ``forward_sequence`` returns all steps.
    """

    time_major = True

    def __init__(self, graph: nn.Module, T: int, input_layout: str = "static") -> None:
        super().__init__()
        self.graph = graph
        self.T = check_positive_int(T, "T", fix="Use T >= 1 timesteps.")
        if input_layout not in ("static", "TB"):
            raise ValueError(f"input_layout must be 'static' or 'TB', got {input_layout!r}")
        self.input_layout = input_layout

    def set_timesteps(self, T: int) -> None:
        self.T = check_positive_int(T, "T", fix="Use T >= 1 timesteps.")
        for m in self.graph.modules():
            if isinstance(m, MergedTimeNeuron):
                m.T = self.T

    def forward_sequence(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_layout == "static":
            merged = x.unsqueeze(0).expand(self.T, *x.shape).flatten(0, 1)
        else:
            if x.shape[0] != self.T:
                raise ValueError(f"TimeMergedSNN: input has T={x.shape[0]} but the network runs T={self.T}")
            merged = x.flatten(0, 1)
        y = self.graph(merged)
        return y.view(self.T, y.shape[0] // self.T, *y.shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_sequence(x).mean(0)


# ------------------------------------------------------------------------------------------------ statistics
@torch.no_grad()
def activation_thresholds(model: nn.Module, data: Iterable, mode: str | float = "99.9%",
                          max_batches: int = 8, sample_per_batch: int = 1 << 18) -> dict[str, float]:
    """Per-activation thresholds from the pre-activation statistics of ``model`` on ``data``.

    Args:
        mode: ``"max"``, a percentile string like ``"99.9%"`` or a float percentile in (0, 100].
        data: an iterable of input batches (or ``(input, label)`` pairs).
    Returns:
        ``{module name: threshold}`` for every ``nn.ReLU`` module (functional ReLUs must be turned into
        modules first, which :func:`convert_to_snn` does).
    """
    q = _percentile(mode)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    if not names:
        raise ConversionError("activation_thresholds: the model has no nn.ReLU modules to calibrate")
    samples: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    maxima: dict[str, float] = {n: 0.0 for n in names}
    gen = torch.Generator().manual_seed(0)
    hooks = []
    for name, module in model.named_modules():
        if name in samples:
            def hook(mod, inputs, output, name=name):
                x = inputs[0].detach().flatten().float().cpu()
                maxima[name] = max(maxima[name], float(x.max()))
                if x.numel() > sample_per_batch:
                    x = x[torch.randint(0, x.numel(), (sample_per_batch,), generator=gen)]
                samples[name].append(x)
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for i, batch in enumerate(data):
            if i >= max_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x)
            seen += 1
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if seen == 0:
        raise ConversionError("activation_thresholds: the calibration data yielded no batch")
    out = {}
    for name in names:
        if q is None:
            thr = maxima[name]
        else:
            values = torch.cat(samples[name])
            k = max(1, min(values.numel(), 1 + round(0.01 * q * (values.numel() - 1))))
            thr = float(values.kthvalue(k).values)
        if not (thr > 0 and math.isfinite(thr)):
            thr = 1.0  # a dead layer (never positive): any threshold gives zero spikes
        out[name] = thr
    return out


def _percentile(mode: str | float) -> float | None:
    if isinstance(mode, str):
        if mode == "max":
            return None
        if mode.endswith("%"):
            try:
                q = float(mode[:-1])
            except ValueError:
                q = float("nan")
        else:
            raise ValueError(f"threshold mode must be 'qcfs', 'max', 'NN.N%' or a float percentile, got {mode!r}")
    else:
        q = float(mode)
    if not (0 < q <= 100):
        raise ValueError(f"threshold percentile must be in (0, 100], got {mode!r}")
    return q


# ------------------------------------------------------------------------------------------------ conversion
def _default_if_factory(act: nn.Module, theta: float, index: int, name: str, v_init: str) -> nn.Module:
    v0 = theta / 2 if v_init == "half" else 0.0
    return IFNeuron(v_threshold=theta, v_init=v0, payload="threshold", fire_ge=True, step_mode="m")


class _LeafTracer(torch.fx.Tracer):
    """Keeps quantizers, neurons and residual adders as single graph nodes (FX would trace into them)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _QUANT_TYPES + (ResidualAdd, MemoryModule)) or super().is_leaf_module(m, qualname)


def _trace_plain(model: nn.Module, report: ConversionReport, maxpool: str) -> torch.fx.GraphModule:
    try:
        gm = torch.fx.GraphModule(model, _LeafTracer().trace(model), type(model).__name__)
    except Exception as exc:  # noqa: BLE001 - re-raised with advice
        raise ConversionError(
            f"could not trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}). Make the "
            f"forward free of data-dependent Python control flow, or build the model time-major (see "
            f"multispike.models) so it can be converted by module replacement.") from exc
    modules = dict(gm.named_modules())
    graph = gm.graph
    counter = 0
    for node in list(graph.nodes):
        if node.op == "call_module":
            mod = modules[node.target]
            if _is_activation_module(mod):
                continue
            if isinstance(mod, _MAXPOOL):
                if maxpool != "avg":
                    report.add(node.target, type(mod).__name__, "unsupported",
                               "MaxPool has no exact spiking form; pass maxpool='avg'")
                continue
            if not isinstance(mod, _KEEP_MODULES):
                report.add(node.target, type(mod).__name__, "unsupported",
                           "no spiking equivalent; replace it in the ANN (e.g. by ReLU/AvgPool) or convert by hand")
        elif node.op in ("call_function", "call_method"):
            target = node.target
            is_act = (node.op == "call_function" and target in ACTIVATION_FUNCTIONS) or (
                node.op == "call_method" and target in _ACTIVATION_METHODS)
            if is_act:
                # Functional ReLU -> an nn.ReLU module, so it is replaced like any other activation.
                if node.kwargs.get("inplace") is not None or len(node.args) > 1:
                    pass  # inplace flag is irrelevant after conversion
                name = f"functional_relu_{counter}"
                counter += 1
                gm.add_submodule(name, nn.ReLU())
                with graph.inserting_after(node):
                    new = graph.call_module(name, (node.args[0],))
                node.replace_all_uses_with(new)
                graph.erase_node(node)
                report.add(name, f"{node.op}:{_fn_name(target)}", "rewritten",
                           "functional ReLU turned into a module before replacement")
                continue
            if node.op == "call_function" and target in _MAXPOOL_FUNCTIONS:
                if maxpool == "avg":
                    node.target = _MAXPOOL_FUNCTIONS[target]
                    node.kwargs = {k: v for k, v in node.kwargs.items() if k not in ("dilation", "return_indices")}
                    report.add(node.name, _fn_name(target), "swapped", f"-> {_fn_name(node.target)}")
                else:
                    report.add(node.name, _fn_name(target), "unsupported",
                               "max pooling has no exact spiking form; pass maxpool='avg'")
                continue
            ok = target in _KEEP_FUNCTIONS if node.op == "call_function" else target in _KEEP_METHODS
            if not ok:
                report.add(node.name, f"{node.op}:{_fn_name(target)}", "unsupported",
                           "not known to be linear per sample; remove it or convert by hand")
            else:
                report.add(node.name, f"{node.op}:{_fn_name(target)}", "kept", "runs on the merged T·B batch")
    graph.lint()
    gm.recompile()
    return gm


def _replace_child(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def convert_to_snn(
    model: nn.Module,
    T: int,
    *,
    threshold: str | float = "qcfs",
    calibration_data: Iterable | None = None,
    fold_batchnorm: bool = True,
    maxpool: str = "avg",
    v_init: str = "half",
    neuron_factory: Callable[..., nn.Module] | None = None,
    target: str = "if",
    inplace: bool = False,
) -> tuple[nn.Module, ConversionReport]:
    """Convert an ANN (ReLU, QCFS or QAC activations) into a spiking network.

    Args:
        model: a plain ANN on ``[B, ...]`` inputs or a time-major model (``model.time_major``).
        T: timesteps of the SNN.
        threshold: ``"qcfs"`` (θ = the quantizer's clip ϑ/α; needs QCFS/QAC activations), ``"max"``,
            ``"99.9%"``-style percentile string or a float percentile (needs ``calibration_data``).
        calibration_data: iterable of input batches (or ``(x, y)``) for statistics-based thresholds.
        fold_batchnorm: fold BN into the preceding conv/linear (exact in eval mode).
        maxpool: ``"avg"`` swaps max pooling for average pooling; ``"error"`` reports it as unsupported.
        v_init: ``"half"`` (v(0) = θ/2, matches QCFS's ½ shift) or ``"zero"``.
        neuron_factory: ``f(activation_module, theta, index, name, v_init) -> nn.Module`` building each neuron
            (default: soft-reset IF with payload θ). Used by LM-HT and M-LIF conversion.
        target: label recorded in the report.
        inplace: modify ``model`` instead of a deep copy.

    Returns:
        ``(snn, report)``. Plain ANNs come back as :class:`TimeMergedSNN`; time-major models are returned
        with their activations replaced and ``T`` set.

    Raises:
        ConversionError: unsupported constructs (listed), no activation found, or missing calibration data.
    """
    T = check_positive_int(T, "T", fix="Use T >= 1 timesteps.")
    if v_init not in ("half", "zero"):
        raise ValueError(f"v_init must be 'half' or 'zero', got {v_init!r}")
    if maxpool not in ("avg", "error"):
        raise ValueError(f"maxpool must be 'avg' or 'error', got {maxpool!r}")
    report = ConversionReport(T=T, target=target)
    net = model if inplace else copy.deepcopy(model)
    net.eval()
    time_major = is_time_major(net)

    if time_major:
        for name, mod in net.named_modules():
            if name and not list(mod.children()) and not _is_activation_module(mod) and not isinstance(
                    mod, _KEEP_MODULES + _MAXPOOL) and not isinstance(mod, MemoryModule):
                if type(mod).__module__.startswith("torch.nn"):
                    report.add(name, type(mod).__name__, "unsupported",
                               "no spiking equivalent; replace it in the ANN or convert by hand")
        graph = net
        if maxpool == "avg":
            for name in swap_maxpool(net):
                report.add(name, "MaxPool", "swapped", "-> AvgPool (same kernel/stride/padding; changes the function: train the ANN with AvgPool)")
    else:
        if maxpool == "avg":
            for name in swap_maxpool(net):
                report.add(name, "MaxPool", "swapped", "-> AvgPool (same kernel/stride/padding; changes the function: train the ANN with AvgPool)")
        graph = _trace_plain(net, report, maxpool)

    if report.unsupported:
        listing = "\n".join(f"  - {e['name']} ({e['op']}): {e['detail']}" for e in report.unsupported)
        raise ConversionError(f"cannot convert {type(model).__name__}: {len(report.unsupported)} unsupported "
                              f"construct(s):\n{listing}\n\n{report}")

    if fold_batchnorm:
        for rec in fold_bn(graph):
            report.add(rec["bn"], "BatchNorm", "folded", f"into {rec['synapse']}")

    acts = [(n, m) for n, m in graph.named_modules() if _is_activation_module(m)]
    if not acts:
        raise ConversionError(f"{type(model).__name__} has no ReLU/QCFS/QAC activation to convert; is it already "
                              f"spiking?")
    if threshold == "qcfs":
        missing = [n for n, m in acts if not isinstance(m, _QUANT_TYPES)]
        if missing:
            raise ConversionError(f"threshold='qcfs' needs QCFS/QAC activations, but {missing[:5]} are plain ReLU; "
                                  f"use threshold='99.9%' (with calibration_data) or train a QCFS ANN first")
        thresholds = {n: float(getattr(m, "threshold", getattr(m, "alpha", None)).detach()) for n, m in acts}
    else:
        if calibration_data is None:
            raise ConversionError(f"threshold={threshold!r} needs calibration_data (an iterable of input batches)")
        thresholds = activation_thresholds(graph if time_major else graph, calibration_data, threshold)
        missing = [n for n, _ in acts if n not in thresholds]
        if missing:
            raise ConversionError(f"threshold={threshold!r} works on ReLU activations only; {missing[:5]} are "
                                  f"quantizers - use threshold='qcfs'")

    factory = neuron_factory or _default_if_factory
    for index, (name, act) in enumerate(acts):
        theta = thresholds[name]
        neuron = factory(act, theta, index, name, v_init)
        _replace_child(graph, name, neuron if time_major else MergedTimeNeuron(neuron, T))
        report.add(name, type(act).__name__, "replaced", f"-> {type(neuron).__name__} θ={theta:.4g}")

    if time_major:
        if hasattr(graph, "set_timesteps"):
            graph.set_timesteps(T)
        else:
            graph.T = T
        return graph, report
    return TimeMergedSNN(graph, T), report
