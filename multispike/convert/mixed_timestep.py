"""Mixed-timestep SNNs: per-layer timesteps with temporal alignment between layers (algorithms.md §4.3-§4.4).

A converted QAC network is time-major; every spiking layer is an :class:`AlignedNeuron` that runs its own
``T_l`` steps. Before its neuron runs, the layer aligns the incoming ``[T_in, B, ...]`` sequence to ``T_l``
with :func:`multispike.layers.align_time` (replication / truncation / averaging, named as the paper's
"expansion+reduction" pairs, ``"aver+aver"`` by default). The alignment is applied to the synaptic op's output
rather than its input; the two are the same because conv, linear, eval-mode BN and average pooling act on each
step separately and affinely (they commute with picking steps and with averaging over steps).

**Strong invariant** (§4.4): with ``"aver+aver"``, integer ``T_l``, ``v(0) = θ_l/2`` and the round-half-up
quantizer, every neuron sees a constant current, so its time-averaged payload equals the quantizer output
(§1.4 item 1) and the SNN equals the quantized ANN layer by layer.

Entry points: :func:`to_mixed_timestep_snn` (QAC, per-layer ``T_l``) and :func:`to_uniform_snn` (QCFS or QAC at
one T, with or without averaging; the paper's Table 8 baseline).

Size (over 450 lines): aligned neurons, aligned residuals, BN folding and the two conversions (§4.3-§4.4)
share the per-layer T_l bookkeeping.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from ..layers import DirectEncoder, MultiStepContainer, ResidualAdd, SeqToANNContainer, align_time, parse_align
from ..neurons.base import MemoryModule, StepModule, check_positive_int, check_sequence, reset_net
from ..neurons.if_lif import IFNeuron
from ..neurons.surrogate import Triangle
# one MAC rule for the QAT latency term and the SNN's profile, so the two charge every layer alike
from ..quant.latency import synapse_macs as _synapse_macs
from ..quant.qac import QACQuantizer
from ..quant.qat import UNSUPPORTED_ACTIVATIONS, find_functional_activations
from ..quant.qcfs import QCFS
from .converter import ConversionError
from .fuse import fold_bn as _fold_bn_pairs

__all__ = ["AlignedNeuron", "AlignedResidualAdd", "to_mixed_timestep_snn", "to_uniform_snn", "fold_bn",
           "MixedTimestepReport", "SpikingLayerInfo", "profile_timesteps", "V_INIT_MODES"]

V_INIT_MODES = ("half", "zero")
_QUANTIZERS = (QACQuantizer, QCFS)
_SYNAPSES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_MAXPOOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
             nn.AdaptiveMaxPool3d)
# torch.nn leaves that act on every step separately and affinely: exact on spike trains.
_KEEP = (*_SYNAPSES, *_BN, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
         nn.AdaptiveAvgPool3d, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
         nn.Identity, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
         nn.ConstantPad3d)


# ----------------------------------------------------------------------------------------------------
# Runtime modules
# ----------------------------------------------------------------------------------------------------
class AlignedNeuron(StepModule):
    """A spiking layer with its own timestep count: align the input sequence to ``T``, then run the neuron.

    ``forward(x_seq)`` with ``x_seq: [T_in, B, ...]`` returns ``neuron(align_time(x_seq, T, align))`` of shape
    ``[T, B, ...]``. The neuron is reset at the start of every call: a layer consumes its whole input
    sequence at once (averaging needs all of it - QAC's pipeline stall, App. 7.7).

    Args:
        neuron: a multi-step spiking neuron (set to ``step_mode='m'``).
        T: this layer's timesteps ``T_l >= 1``.
        align: ``"<expansion>+<reduction>"`` with expansion in {repl, aver} and reduction in {trunc, aver}
            (default ``"aver+aver"``), or ``None`` for no alignment: the input must already have ``T`` steps,
            except a single step (the analog image), which is repeated (direct encoding).

    Example::

        >>> import torch
        >>> from multispike.neurons import IFNeuron
        >>> layer = AlignedNeuron(IFNeuron(v_threshold=1.0, v_init=0.5, payload="threshold"), T=4)
        >>> layer(torch.full((1, 1, 1), 0.5)).flatten().tolist()   # one analog step expanded to 4 steps
        [1.0, 0.0, 1.0, 0.0]
    """

    timestep_layer = True  # reported by multispike.quant.qac.quantizer_summary / average_timestep

    def __init__(self, neuron: nn.Module, T: int, align: str | None = "aver+aver") -> None:
        super().__init__()
        self.T = check_positive_int(T, "AlignedNeuron T", fix="Every spiking layer runs at least one timestep "
                                                              "(T_l >= 1); check the quantizer's t.")
        if align is not None:
            parse_align(align)
        self.align = align
        if isinstance(neuron, StepModule):
            neuron.step_mode = "m"
        self.neuron = neuron
        self.step_mode = "m"
        self.source_name: str | None = None  # name of the quantizer this layer came from (for reports)

    def supported_step_modes(self) -> tuple[str, ...]:
        return ("m",)

    @property
    def timesteps(self) -> int:
        return self.T

    @property
    def bit_width(self) -> float:
        return math.log2(self.T)

    @property
    def alpha(self) -> float:
        """The neuron's threshold θ (the quantizer clip α it replaced); the mean if θ is not a scalar."""
        theta = getattr(self.neuron, "v_threshold", None)
        if not isinstance(theta, torch.Tensor):
            raise AttributeError(f"AlignedNeuron: the wrapped {type(self.neuron).__name__} has no v_threshold tensor")
        return float(theta.detach().mean())

    # --- statistics protocol (multispike.metrics): delegated to the wrapped neuron, so monitors count the
    # population once and read this layer's declared T
    def spike_events(self, y: torch.Tensor) -> torch.Tensor:
        return self.neuron.spike_events(y)

    def active_lanes(self, y: torch.Tensor) -> torch.Tensor:
        return self.neuron.active_lanes(y)

    @property
    def levels(self) -> int:
        return int(getattr(self.neuron, "levels", 1))

    @property
    def lanes(self) -> int:
        return int(getattr(self.neuron, "lanes", 1))

    def align_input(self, x_seq: torch.Tensor) -> torch.Tensor:
        """The aligned input current ``[T, B, ...]``."""
        if self.align is not None:
            return align_time(x_seq, self.T, self.align)
        T_in = x_seq.shape[0]
        if T_in == self.T:
            return x_seq
        if T_in == 1:
            return x_seq.expand(self.T, *x_seq.shape[1:])
        raise ValueError(f"AlignedNeuron (T={self.T}, align=None): got an input with T={T_in} steps; without an "
                         f"alignment mode the input must have T={self.T} steps or 1 (the analog image). Use "
                         f"align='aver+aver' (or another '<expansion>+<reduction>' mode) for mixed timesteps.")

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        check_sequence(x_seq, "AlignedNeuron")
        x = self.align_input(x_seq)
        if isinstance(self.neuron, MemoryModule):
            self.neuron.reset()
        return self.neuron(x)

    def reset(self) -> None:
        if isinstance(self.neuron, MemoryModule):
            self.neuron.reset()

    def extra_repr(self) -> str:
        return f"T={self.T}, align={self.align!r}"


class AlignedResidualAdd(ResidualAdd):
    """``x + shortcut`` with both operands aligned to ``T`` - the timesteps of the neuron that consumes the sum
    (§4.4: "residual shortcuts are aligned to the T of the consuming neuron before the addition").

    With ``T=None`` it behaves like :class:`~multispike.layers.ResidualAdd` (the shortcut is aligned to ``x``).
    For averaging modes both placements give the same result (averaging is linear); for replication and
    truncation they differ, and aligning to the consumer is the paper's rule.
    """

    def __init__(self, align: str = "aver+aver", T: int | None = None) -> None:
        super().__init__(align)
        self.T = None if T is None else check_positive_int(T, "AlignedResidualAdd T", fix="Use T >= 1.")

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        if self.T is None:
            return super().forward(x, shortcut)
        if x.shape[0] != self.T:
            x = align_time(x, self.T, self.align)
        if shortcut.shape[0] != self.T:
            shortcut = align_time(shortcut, self.T, self.align)
        return x + shortcut

    def extra_repr(self) -> str:
        return f"align={self.align!r}, T={self.T}"


# ----------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------
@dataclass
class SpikingLayerInfo:
    """One spiking layer of a converted network.

    ``ops``: MACs of the synaptic ops feeding the layer, per sample and timestep (needs ``example_input``);
    ``T_in``: the timesteps of its incoming sequence in the example run; ``uneven_replication``: that input is
    replicated to a T that is not a multiple of ``T_in``.
    """

    name: str
    source: str
    T: int
    bit_width: float
    theta: float
    v_init: float
    align: str | None
    T_in: int | None = None
    ops: float | None = None
    uneven_replication: bool = False


@dataclass
class MixedTimestepReport:
    """What :func:`to_mixed_timestep_snn` / :func:`to_uniform_snn` built (JSON-ready with :meth:`to_dict`).

    ``average_T``: plain mean of T_l over spiking layers (QAC's reported "T");
    ``average_T_op_weighted``: ``Σ T_l·ops_l / Σ ops_l`` (``None`` without ``example_input``);
    ``readout_ops``: MACs after the last spiking layer (the classifier), per sample and step.
    """

    model: str
    mode: str
    align: str | None
    v_init: str | float
    layers: list[SpikingLayerInfo] = field(default_factory=list)
    average_T: float = float("nan")
    average_T_op_weighted: float | None = None
    readout_ops: float | None = None
    replaced: list[dict] = field(default_factory=list)
    folded_bn: list[dict] = field(default_factory=list)
    unfolded_bn: list[str] = field(default_factory=list)
    residual_adds: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        head = ("layer", "T", "bits", "theta", "v_init", "T_in", "MACs")
        rows = [head] + [(l.name, str(l.T), f"{l.bit_width:.2f}", f"{l.theta:.4g}", f"{l.v_init:.4g}",
                          "-" if l.T_in is None else str(l.T_in), "-" if l.ops is None else f"{l.ops:.4g}")
                         for l in self.layers]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        avg = f"average T = {self.average_T:.3f}"
        if self.average_T_op_weighted is not None:
            avg += f" (op-weighted {self.average_T_op_weighted:.3f})"
        out = [f"{self.mode}-timestep SNN from {self.model} (align={self.align}, v_init={self.v_init}): "
               f"{len(self.layers)} spiking layers, {avg}", *lines]
        out += [f"note: {n}" for n in self.notes]
        return "\n".join(out)


# ----------------------------------------------------------------------------------------------------
# Structural helpers
# ----------------------------------------------------------------------------------------------------
def fold_bn(model: nn.Module) -> list[dict]:
    """Fold every BN that directly follows a conv/linear in a ``Sequential``/``SeqToANNContainer`` (in place).

    Delegates to :func:`multispike.convert.fuse.fold_bn` (``W' = W·γ/√(σ²+ε)``,
    ``b' = γ(b−μ)/√(σ²+ε) + β``); returns ``[{"synapse": name, "bn": name}, ...]``.
    """
    return [dict(r) for r in _fold_bn_pairs(model)]


def _v_init_fraction(v_init: str | float) -> float:
    if isinstance(v_init, str):
        if v_init not in V_INIT_MODES:
            raise ValueError(f"v_init must be one of {V_INIT_MODES} or a fraction of θ (float), got {v_init!r}; "
                             f"'half' (θ/2) matches the quantizer's round-half-up")
        return 0.5 if v_init == "half" else 0.0
    if isinstance(v_init, bool) or not isinstance(v_init, (int, float)) or not math.isfinite(v_init):
        raise ValueError(f"v_init must be 'half', 'zero' or a finite fraction of θ, got {v_init!r}")
    return float(v_init)


def _quantizer_theta(q: nn.Module) -> torch.Tensor:
    return q.alpha_tensor() if isinstance(q, QACQuantizer) else q.threshold.detach().clone()


def _make_if_neuron(theta: torch.Tensor, v_frac: float) -> IFNeuron:
    """Soft-reset IF, fire on ``m ≥ θ``, payload θ·s, ``v(0) = v_frac·θ`` (§4.3), in θ's dtype and device."""
    neuron = IFNeuron(v_threshold=1.0, v_init=0.0, v_reset=None, fire_ge=True, payload="threshold",
                      surrogate_function=Triangle(1.0), detach_reset=False, step_mode="m")
    # Assign the buffers directly so a float64 model keeps float64 thresholds (the constructor casts to float32).
    neuron.v_threshold = theta.detach().clone()
    neuron.v_init = theta.detach() * v_frac
    return neuron


def _is_quantizer(m: nn.Module) -> bool:
    return isinstance(m, _QUANTIZERS)


def _replace_quantizers(module: nn.Module, prefix: str, make: Callable[[nn.Module, str], nn.Module]) -> None:
    """Replace every quantizer below ``module`` by ``make(quantizer, name)``.

    A quantizer inside a ``SeqToANNContainer`` (which runs on the merged ``T·B`` batch) splits the container:
    ``SeqToANNContainer(conv, bn, Q, pool) -> Sequential(SeqToANNContainer(conv, bn), AlignedNeuron,
    SeqToANNContainer(pool))``.
    """
    for child_name, child in list(module.named_children()):
        full = f"{prefix}.{child_name}" if prefix else child_name
        if _is_quantizer(child):
            setattr(module, child_name, make(child, full))
        elif isinstance(child, MultiStepContainer) and _is_quantizer(child.module):
            setattr(module, child_name, make(child.module, f"{full}.module"))
        elif isinstance(child, SeqToANNContainer) and any(_is_quantizer(m) for m in child.modules()):
            setattr(module, child_name, _split_container(child, full, make))
        else:
            _replace_quantizers(child, full, make)


def _split_container(container: SeqToANNContainer, name: str, make: Callable[[nn.Module, str], nn.Module]
                     ) -> nn.Sequential:
    parts: list[nn.Module] = []
    segment: list[nn.Module] = []
    for child_name, child in container.named_children():
        if _is_quantizer(child):
            if segment:
                parts.append(SeqToANNContainer(*segment))
                segment = []
            parts.append(make(child, f"{name}.{child_name}"))
        elif any(_is_quantizer(m) for m in child.modules()):
            raise ConversionError(f"{name}.{child_name}: a quantizer nested inside a sub-container of a "
                                  f"SeqToANNContainer cannot be split out; flatten the container so the quantizer is "
                                  f"its direct child")
        else:
            segment.append(child)
    if segment:
        parts.append(SeqToANNContainer(*segment))
    return nn.Sequential(*parts)


def _check_supported(net: nn.Module, model_name: str) -> list[str]:
    """Raise on constructs with no exact spiking form; return notes on user modules that were kept unchecked."""
    bad, notes = [], []
    for name, m in net.named_modules():
        if not name or isinstance(m, (AlignedNeuron, nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            continue  # containers (an empty nn.Sequential is the usual identity shortcut) are checked via children
        inside_aligned = any(isinstance(net.get_submodule(".".join(name.split(".")[:k])), AlignedNeuron)
                             for k in range(1, len(name.split("."))))
        if inside_aligned:
            continue
        if isinstance(m, nn.ReLU):
            bad.append(f"{name} (ReLU): an un-quantized activation; run multispike.quant.qat.prepare_qat() and train")
        elif isinstance(m, UNSUPPORTED_ACTIVATIONS):
            bad.append(f"{name} ({type(m).__name__}): no IF equivalent; replace it by ReLU before QAT")
        elif isinstance(m, _MAXPOOLS):
            bad.append(f"{name} ({type(m).__name__}): max pooling over spikes is not max pooling over rates; "
                       f"prepare_qat() swaps it for AvgPool (retrain afterwards)")
        elif isinstance(m, MemoryModule):
            bad.append(f"{name} ({type(m).__name__}): the model already contains spiking/stateful modules; convert "
                       f"the quantized ANN, not an SNN")
        elif not list(m.children()) and type(m).__module__.startswith("torch.nn") and not isinstance(m, _KEEP):
            bad.append(f"{name} ({type(m).__name__}): not known to act per step and affinely, so it has no exact "
                       f"spiking form; remove it or convert by hand")
        elif not list(m.children()) and not type(m).__module__.startswith(("torch.nn", "multispike.")):
            notes.append(f"{name} ({type(m).__name__}): user module kept as is; it must act on each step separately "
                         f"and linearly for the SNN to match the ANN")
    if bad:
        raise ConversionError(f"cannot convert {model_name} to a mixed-timestep SNN: " + "; ".join(bad))
    return notes


# ----------------------------------------------------------------------------------------------------
# Profiling (ops per layer, incoming T, residual consumers) with one example forward pass
# ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def profile_timesteps(snn: nn.Module, example_input: torch.Tensor) -> dict:
    """Run ``snn`` once on ``example_input`` and attribute work to spiking layers in execution order.

    Returns ``{"ops": {layer: MACs per sample and step}, "T_in": {layer: incoming T}, "consumer":
    {residual add: first AlignedNeuron called after it}, "readout_ops": MACs after the last spiking layer}``.
    The MACs of every conv/linear (shortcut convs included) are charged to the next spiking layer that runs,
    i.e. the layer whose synaptic op they are (§6.2: conv ``H·W·C_out·C_in/g·k²``, linear ``in·out``).
    """
    events: list[tuple] = []
    hooks = []
    for name, m in snn.named_modules():
        if isinstance(m, _SYNAPSES):
            hooks.append(m.register_forward_hook(lambda mod, inp, out: events.append(("ops", _synapse_macs(mod, out)))))
        elif isinstance(m, AlignedNeuron):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, inp, name=name: events.append(("neuron", name, int(inp[0].shape[0])))))
        elif isinstance(m, ResidualAdd):
            hooks.append(m.register_forward_pre_hook(lambda mod, inp, name=name: events.append(("add", name))))
    was_training = snn.training
    snn.eval()
    try:
        reset_net(snn)
        snn(example_input)
    finally:
        for h in hooks:
            h.remove()
        reset_net(snn)
        snn.train(was_training)
    ops: dict[str, float] = {}
    T_in: dict[str, int] = {}
    consumer: dict[str, str] = {}
    pending: list[str] = []
    acc = 0.0
    for ev in events:
        if ev[0] == "ops":
            acc += ev[1]
        elif ev[0] == "add":
            pending.append(ev[1])
        else:
            _, name, t_in = ev
            ops[name] = ops.get(name, 0.0) + acc
            T_in.setdefault(name, t_in)
            acc = 0.0
            for a in pending:
                consumer.setdefault(a, name)
            pending = []
    return {"ops": ops, "T_in": T_in, "consumer": consumer, "readout_ops": acc}


# ----------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------
def _convert(model: nn.Module, *, T_of: Callable[[nn.Module], int], mode: str, align: str | None,
             v_init: str | float, fold: bool, example_input: torch.Tensor | None, inplace: bool,
             encoder_T: int) -> tuple[nn.Module, MixedTimestepReport]:
    model_name = type(model).__name__
    v_frac = _v_init_fraction(v_init)
    if align is not None:
        parse_align(align)
    if not any(_is_quantizer(m) for m in model.modules()):
        raise ConversionError(f"{model_name} has no QACQuantizer or QCFS activation to convert; run "
                              f"multispike.quant.qat.prepare_qat() and train it first (a plain ReLU ANN needs "
                              f"multispike.convert.converter.convert_to_snn with data-based thresholds)")
    sites = find_functional_activations(model)
    if sites:
        listing = ", ".join(f"{s['call']} in {s['module'] or 'forward'}" for s in sites)
        raise ConversionError(f"cannot convert {model_name}: functional ReLU call(s) {listing} were never quantized; "
                              f"make them nn.ReLU modules and run prepare_qat() before training")
    net = model if inplace else copy.deepcopy(model)
    net.eval()
    report = MixedTimestepReport(model=model_name, mode=mode, align=align, v_init=v_init)
    if sites is None:
        report.notes.append(f"{model_name}.forward could not be traced with torch.fx, so functional activations "
                            f"were not checked")

    if fold:
        report.folded_bn = fold_bn(net)
    report.unfolded_bn = [n for n, m in net.named_modules() if isinstance(m, _BN)]
    if report.unfolded_bn:
        report.notes.append("BatchNorm layers not directly after a conv/linear in a Sequential were kept (exact in "
                            "eval mode, but not deployable as IF hardware): " + ", ".join(report.unfolded_bn))

    def make(q: nn.Module, name: str) -> AlignedNeuron:
        T = T_of(q)
        theta = _quantizer_theta(q)
        if isinstance(q, QCFS) and q.shift != 0.5 and v_frac == 0.5:
            report.notes.append(f"{name}: QCFS shift φ={q.shift} but v_init=θ/2; the exact identity needs "
                                f"v_init={q.shift} (pass v_init={q.shift})")
        layer = AlignedNeuron(_make_if_neuron(theta, v_frac), T, align)
        layer.source_name = name
        report.replaced.append({"name": name, "old": type(q).__name__, "new": "AlignedNeuron(IFNeuron)", "T": T,
                                "theta": float(theta)})
        return layer

    _replace_quantizers(net, "", make)
    report.notes += _check_supported(net, model_name)

    # The analog image enters once; each AlignedNeuron expands it to its own T.
    for name, m in net.named_modules():
        if isinstance(m, DirectEncoder) and m.T != encoder_T:
            report.notes.append(f"{name or 'encoder'}: DirectEncoder T {m.T} -> {encoder_T}")
            m.T = encoder_T
    if hasattr(net, "set_timesteps") and getattr(net, "T", None) != encoder_T:
        net.set_timesteps(encoder_T)

    adds = [(n, m) for n, m in net.named_modules() if isinstance(m, ResidualAdd)]
    if align is not None:
        for _, m in adds:
            m.align = align

    prof = None
    if example_input is not None:
        if adds:
            consumers = profile_timesteps(net, example_input)["consumer"]
            layers = dict(net.named_modules())
            for name, m in adds:
                target = consumers.get(name)
                T_c = layers[target].T if target is not None else None
                parent_name, _, attr = name.rpartition(".")
                parent = net.get_submodule(parent_name) if parent_name else net
                setattr(parent, attr, AlignedResidualAdd(m.align, T_c))
        prof = profile_timesteps(net, example_input)
    for name, m in net.named_modules():
        if isinstance(m, ResidualAdd):
            report.residual_adds.append({"name": name, "align": m.align, "T": getattr(m, "T", None)})

    for name, m in net.named_modules():
        if not isinstance(m, AlignedNeuron):
            continue
        info = SpikingLayerInfo(name=name, source=m.source_name or name, T=m.T, bit_width=m.bit_width,
                                theta=m.alpha, v_init=float(m.neuron.v_init.detach().mean()), align=m.align)
        if prof is not None:
            info.ops = prof["ops"].get(name)
            info.T_in = prof["T_in"].get(name)
            expand = parse_align(m.align)[0] if m.align is not None else "repl"
            if info.T_in is not None and m.T > info.T_in and expand == "repl" and m.T % info.T_in:
                info.uneven_replication = True
                msg = (f"{name}: replication from T={info.T_in} to T={m.T} is uneven (some steps are repeated more "
                       f"often than others, QAC §4.4); 'aver+aver' avoids it")
                report.notes.append(msg)
                warnings.warn(msg, stacklevel=3)
        report.layers.append(info)
    report.average_T = sum(l.T for l in report.layers) / len(report.layers)
    if prof is not None:
        report.readout_ops = prof["readout_ops"]
        total = sum(l.ops or 0.0 for l in report.layers)
        if total > 0:
            report.average_T_op_weighted = sum(l.T * (l.ops or 0.0) for l in report.layers) / total
    return net, report


def to_mixed_timestep_snn(qat_model: nn.Module, align: str = "aver+aver", v_init: str | float = "half",
                          fold_bn: bool = True, example_input: torch.Tensor | None = None,
                          inplace: bool = False) -> tuple[nn.Module, MixedTimestepReport]:
    """Convert a trained quantized (QAC) time-major model into a mixed-timestep IF SNN (§4.3-§4.4).

    Each :class:`~multispike.quant.qac.QACQuantizer` (or QCFS, with ``T = levels``) becomes
    ``AlignedNeuron(IFNeuron(θ = α_l, v(0) = α_l/2, soft reset, fire on m ≥ θ, payload θ), T_l, align)``; every
    ``ResidualAdd`` gets ``align``; BN is folded into the preceding conv/linear; every ``DirectEncoder`` is set to
    ``T = 1`` so the analog image enters once and each layer expands it to its own ``T_l``.

    Args:
        qat_model: the quantized ANN (not modified unless ``inplace``).
        align: ``"aver+aver"`` (default, exact), ``"aver+trunc"``, ``"repl+aver"`` or ``"repl+trunc"``.
        v_init: ``"half"`` (θ/2, default), ``"zero"`` or a fraction of θ.
        fold_bn: fold BN into the preceding conv/linear.
        example_input: one input batch (what the model takes, e.g. ``[B, C, H, W]`` for zoo models). When given,
            the report gets per-layer MACs, the op-weighted average T, each layer's incoming T (and an uneven
            replication warning), and every residual addition is aligned to the T of the neuron consuming it.

    Returns:
        ``(snn, report)``; ``report.average_T`` is the plain mean of T_l (the paper's number).

    Raises:
        ConversionError: no quantizer, un-quantized ReLU (module or functional), max pooling, other
            nonlinearities or spiking modules in the model - each named.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> from multispike.layers import SeqToANNContainer, MeanOverTime
        >>> from multispike.quant.qac import QACQuantizer
        >>> qat = nn.Sequential(SeqToANNContainer(nn.Linear(4, 8)), QACQuantizer(alpha=2.0, t=3.0),
        ...                     SeqToANNContainer(nn.Linear(8, 2)), MeanOverTime())
        >>> snn, report = to_mixed_timestep_snn(qat)
        >>> report.layers[0].T, report.average_T
        (3, 3.0)
    """
    def T_of(q: nn.Module) -> int:
        return q.timesteps if isinstance(q, QACQuantizer) else q.levels
    return _convert(qat_model, T_of=T_of, mode="mixed", align=align, v_init=v_init, fold=fold_bn,
                    example_input=example_input, inplace=inplace, encoder_T=1)


def to_uniform_snn(model: nn.Module, T: int, align: str | None = None, v_init: str | float = "half",
                   fold_bn: bool = True, example_input: torch.Tensor | None = None,
                   inplace: bool = False) -> tuple[nn.Module, MixedTimestepReport]:
    """Convert a QCFS (or QAC) time-major model into an IF SNN running the same ``T`` in every layer.

    The paper's Table 8 baseline: ``align=None`` is plain QCFS conversion (each layer consumes the previous
    layer's spike train as it is); ``align="aver+aver"`` averages every layer's input over time first
    ("QCFS + aver"), which makes the SNN equal the quantized ANN exactly when ``T`` equals the levels ``L``.
    Each quantizer becomes ``AlignedNeuron(IFNeuron(θ = ϑ, v(0) = θ/2), T, align)``.

    Args:
        model: the quantized ANN (QCFS or QACQuantizer activations).
        T: timesteps of every layer (>= 1); may differ from the quantizer levels.
        align: ``None`` (plain) or an alignment mode such as ``"aver+aver"``.
        v_init, fold_bn, example_input, inplace: as in :func:`to_mixed_timestep_snn`.
    """
    T = check_positive_int(T, "to_uniform_snn T", fix="Use T >= 1 timesteps.")
    return _convert(model, T_of=lambda q: T, mode="uniform", align=align, v_init=v_init, fold=fold_bn,
                    example_input=example_input, inplace=inplace, encoder_T=1)

