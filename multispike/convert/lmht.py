"""LM-HT conversions: the hybrid pipeline (algorithms.md §2.6) and reparameterisation to IF (§2.7).

Models here are time-major: they run on ``[T, B, ...]``, stateless layers wrapped in
:class:`~multispike.layers.SeqToANNContainer`, activations/neurons working on the whole sequence (a
:class:`~multispike.quant.qcfs.QCFS` is elementwise, so the same tree runs as an ANN with any T).

**Hybrid pipeline** (LMHT-P Alg. 1):

1. train a QCFS ANN; 2. optional sanity check :func:`convert_qcfs_to_if` (θ = ϑ, v(0) = θ/2);
3. :func:`convert_qcfs_to_lmht`: every QCFS becomes an :class:`~multispike.neurons.lmht.LMHTNeuron` with
   θ = ϑ, v(0) = φ·θ (φ = ½), uniform Ω (μ = 0), λ = 1 (a = 0); the first one gets ``in_scale = L``;
4. fine-tune with STBP.

*Which parameters ``hybrid_bias_scale = L`` multiplies (§2.6 bias caveat, worked out).* The first LM-HT
layer's current is ``L·z₁`` (in_scale). With uniform Ω every layer's current is constant over t, and the
layer's time-mean payload is ``L·QCFS_{LT}(z)``. The next synaptic layer therefore sees ``L·q`` where the
ANN saw ``q``; its output is ``A·(L·q) + c`` where the ANN's is ``A·q + c``, with ``c`` the affine offset:
``c = b`` for conv/linear and ``c = γ(b − μ_run)/√(σ²+ε) + β`` through an eval-mode BatchNorm. Making it
``L·(A·q + c)`` needs ``c → L·c``, i.e. **every conv/linear bias, BN shift β and BN running_mean of every
synaptic layer executed after the first spiking layer** is multiplied by L, including the readout
classifier (so the time-mean logits are exactly L × the ANN logits; the argmax is the ANN's). The weights,
BN γ and running_var stay. Layers before the first spiking layer (the stem) keep their biases: in_scale
already scales their whole output. Then ``(1/(LT))·Σ_t y_l(t) = QCFS_{LT}(z_l)`` holds at every layer exactly
(BN in eval mode; in train mode BN renormalises by batch statistics and the factor L is not preserved).
Scale-invariant normalisations (LayerNorm, GroupNorm, InstanceNorm) cannot be made exact and are refused.

**Reparameterisation** (LMHT-P §4.5, Thm A.2): :func:`reparameterize_lmht` turns a trained LM-HT/M-HT
network into a single-threshold IF network (:class:`~multispike.neurons.lmht.ReparameterizedIF`) running
``L·T`` steps: expanded T-GIM ``Ω ⊗ (1/L)·1_{L×L}``, λ at window starts, every synaptic bias, BN shift and
BN running_mean after the first neuron divided by L, and the first neuron's input scaled by ``in_scale/L``.
The data stream upstream of the first neuron is expanded from T to L·T steps: a
:class:`~multispike.layers.DirectEncoder` in the model gets ``T ← L·T``; otherwise feed
:func:`expand_time` of the input (``x.repeat_interleave(L, dim=0)``, each step repeated L times), or pass
``wrap_input=True`` to get a model that does it. :func:`reparameterization_report` measures the agreement.

"Order" means module *registration* order (``model.named_modules()``), which is the execution order of
sequential models; pass ``example_input`` to use the order in which modules actually run instead.

Size (over 450 lines): the hybrid conversion (§2.6) and the reparameterisation (§2.7) are inverse views of the
same layer walk and share its ordering, offset scaling and reports.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch
from torch import nn

from ..layers import DirectEncoder, MeanOverTime, ResidualAdd, SeqToANNContainer
from ..neurons.base import MemoryModule, check_positive_int, reset_net
from ..neurons.if_lif import IFNeuron
from ..neurons.lmht import LMHTNeuron, MHTNeuron, ReparameterizedIF
from ..quant.qcfs import QCFS

__all__ = ["lmht_from_qcfs", "convert_qcfs_to_lmht", "convert_qcfs_to_if", "reparameterize_lmht",
           "reparameterization_report", "expand_time", "ExpandTime", "HybridConversionReport",
           "ReparameterizationReport", "LayerAgreement", "AgreementReport", "ReparameterizationError"]

_SYNAPSE = (nn.modules.conv._ConvNd, nn.Linear)
_BN = nn.modules.batchnorm._BatchNorm
_SCALE_INVARIANT = (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm)
# Leaves allowed between spiking layers of a reparameterised network: each commutes with summing the
# L sub-steps of a window (linear in its input, plus a bias that is divided by L).
_LINEAR_LEAVES = (nn.modules.conv._ConvNd, nn.Linear, _BN, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                  nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Flatten, nn.Unflatten,
                  nn.Identity, nn.modules.dropout._DropoutNd, MeanOverTime, ResidualAdd)


class ReparameterizationError(ValueError):
    """An LM-HT network contains something that cannot be folded into an L·T-step IF network."""


# ----------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------
def _ordered_modules(model: nn.Module, example_input: torch.Tensor | None) -> tuple[list[tuple[str, nn.Module]], str]:
    """``(name, module)`` pairs in registration order, or in first-call order when ``example_input`` is given."""
    named = list(model.named_modules())
    if example_input is None:
        return named, "registration"
    order: list[str] = []
    seen: set[str] = set()

    def make_hook(name):
        def hook(_module, _inputs):
            if name not in seen:
                seen.add(name)
                order.append(name)
        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in named]
    try:
        reset_net(model)
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
        reset_net(model)
    lookup = dict(named)
    # Modules that never ran cannot influence the output; keep them at the end in registration order.
    return [(n, lookup[n]) for n in order] + [(n, m) for n, m in named if n not in seen], "execution"


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _replaced(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """``root`` with its submodule ``name`` replaced by ``new``; ``new`` itself when ``name`` is the root ("")."""
    if name == "":
        return new
    _set_submodule(root, name, new)
    return root


def _finish(net: nn.Module, T: int, report, return_report: bool):
    """Give every :class:`DirectEncoder` of the converted ``net`` its ``T`` steps; the converters' return value."""
    for enc in _direct_encoders(net):
        enc.T = T
    return (net, report) if return_report else net


def _check_time_major(model: nn.Module, name: str, what: str) -> None:
    parts = name.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        if isinstance(model.get_submodule(prefix), SeqToANNContainer):
            raise ValueError(f"{what} at {name!r} sits inside the SeqToANNContainer {prefix!r}, which merges T into "
                             f"the batch; a spiking neuron needs the [T, B, ...] sequence. Move the activation out "
                             f"of the container (stateless layers only go inside).")


@torch.no_grad()
def _scale_affine_offset(name: str, module: nn.Module, factor: float, why: str) -> list[str]:
    """Multiply the affine offset of a synaptic layer by ``factor``; return the parameter names scaled."""
    prefix = f"{name}." if name else ""
    done: list[str] = []
    if isinstance(module, _SYNAPSE):
        if module.bias is not None:
            module.bias.mul_(factor)
            done.append(prefix + "bias")
    elif isinstance(module, _BN):
        if module.running_mean is None:
            raise ValueError(f"{why}: BatchNorm {name!r} has no running statistics (track_running_stats=False), so it "
                             f"always normalises by batch statistics and its output cannot be rescaled exactly; "
                             f"train it with running statistics")
        if module.affine:
            module.bias.mul_(factor)
            done.append(prefix + "bias")
        module.running_mean.mul_(factor)
        done.append(prefix + "running_mean")
    elif isinstance(module, _SCALE_INVARIANT):
        raise ValueError(f"{why}: {type(module).__name__} {name!r} is invariant to the scale of its input, so the "
                         f"factor cannot be carried through it exactly; use a BatchNorm network (or "
                         f"hybrid_bias_scale=1 for the hybrid conversion)")
    else:
        own = [n for n, _ in module.named_parameters(recurse=False)]
        own += [n for n, _ in module.named_buffers(recurse=False)]
        if "bias" in own:
            raise ValueError(f"{why}: {type(module).__name__} {name!r} has a bias that this function does not know how "
                             f"to rescale (known: Conv*, Linear, BatchNorm*)")
    return done


def _direct_encoders(model: nn.Module) -> list[DirectEncoder]:
    return [m for m in model.modules() if isinstance(m, DirectEncoder)]


def _table(rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Hybrid pipeline (§2.6) and the IF sanity conversion (§3.2)
# ----------------------------------------------------------------------------------------------------
def lmht_from_qcfs(qcfs: QCFS, levels: int, T: int, first_layer: bool, *, tgim: str = "learnable",
                   learnable_leak: bool = True, detach_temporal: bool = True, detach_reset: bool = True,
                   surrogate_width: float = 0.5, backend: str = "auto") -> LMHTNeuron:
    """The LM-HT neuron that replaces one trained QCFS activation (LMHT-P §4.4, step 3).

    θ = ϑ (the QCFS clip), ``v(0) = φ·θ`` (φ = the QCFS shift, ½), uniform Ω (μ = 0; learnable by default so
    fine-tuning can move it), λ = 1 (a = 0) and ``in_scale = L`` if ``first_layer`` else 1. The neuron has
    the dtype and device of ϑ.

    Example::

        >>> from multispike.quant.qcfs import QCFS
        >>> n = lmht_from_qcfs(QCFS(levels=8, threshold=4.0), levels=2, T=4, first_layer=True)
        >>> float(n.v_threshold), float(n.v_init), n.in_scale, float(n.omega.detach()[0, 0]), float(n.leak.detach())
        (4.0, 2.0, 2.0, 0.25, 1.0)
    """
    if not isinstance(qcfs, QCFS):
        raise TypeError(f"lmht_from_qcfs: expected a QCFS module, got {type(qcfs).__name__}")
    L = check_positive_int(levels, "levels", fix="Use L >= 1.")
    T = check_positive_int(T, "T", fix="Use T >= 1.")
    theta = qcfs.threshold.detach().clone()
    if not bool((theta > 0).all()):
        raise ValueError(f"lmht_from_qcfs: the QCFS clip ϑ={theta.tolist()} must be > 0 to become a threshold; "
                         f"retrain or clamp it")
    neuron = LMHTNeuron(T, levels=L, v_threshold=theta, v_init=qcfs.shift * theta, tgim=tgim,
                        learnable_leak=learnable_leak, in_scale=float(L) if first_layer else 1.0,
                        detach_temporal=detach_temporal, detach_reset=detach_reset,
                        surrogate_width=surrogate_width, step_mode="m", backend=backend)
    return neuron.to(device=theta.device)


@dataclass
class HybridConversionReport:
    """What :func:`convert_qcfs_to_lmht` / :func:`convert_qcfs_to_if` did."""

    target: str
    T: int
    levels: int
    bias_scale: float
    first_layer: str
    replaced: list[dict] = field(default_factory=list)       # {"name", "threshold", "qcfs_levels", "in_scale"}
    scaled_parameters: list[str] = field(default_factory=list)
    order: str = "registration"

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        rows = [("layer", "θ", "QCFS levels", "in_scale")] + [
            (r["name"], f"{r['threshold']:.4g}", r["qcfs_levels"], r["in_scale"]) for r in self.replaced]
        head = (f"QCFS -> {self.target}: T={self.T}, L={self.levels}, bias scale={self.bias_scale:g}, "
                f"{len(self.scaled_parameters)} offset parameter(s) scaled, order={self.order}")
        return head + "\n" + _table(rows)


def _resolve_bias_scale(value, L: int) -> float:
    if isinstance(value, str):
        if value not in ("code", "exact"):
            raise ValueError(f"hybrid_bias_scale must be 1 or L (or 'code' = 1, 'exact' = L), got {value!r}")
        return 1.0 if value == "code" else float(L)
    scale = float(value)
    if not scale > 0:
        raise ValueError(f"hybrid_bias_scale must be > 0 (1 as LMHT-C, or L = {L} for the exact identity), got "
                         f"{value!r}")
    return scale


def _qcfs_modules(net: nn.Module, ordered, what: str) -> list[str]:
    names = [n for n, m in ordered if isinstance(m, QCFS)]
    if not names:
        raise ValueError(f"{what}: the model has no QCFS activation to convert (train a QCFS ANN first, e.g. "
                         f"neuron='qcfs')")
    for n in names:
        _check_time_major(net, n, "QCFS")
    return names


def convert_qcfs_to_lmht(model: nn.Module, levels: int, T: int, hybrid_bias_scale: float | str = "exact", *,
                         example_input: torch.Tensor | None = None, tgim: str = "learnable",
                         learnable_leak: bool = True, detach_temporal: bool = True, detach_reset: bool = True,
                         surrogate_width: float = 0.5, backend: str = "auto", inplace: bool = False,
                         return_report: bool = False):
    """Replace every QCFS of a time-major model by an LM-HT neuron (hybrid initialisation, §2.6).

    The first QCFS (in order, see the module docstring) gets ``in_scale = L``. ``hybrid_bias_scale = L``
    multiplies the conv/linear biases, BN shifts and BN running means of every synaptic layer after the
    first spiking layer (readout included), which makes Theorem 4.4's deterministic identity exact:
    ``(1/(LT))·Σ_t y_l(t) = QCFS_{LT}(z_l)`` at every layer and time-mean logits = L × ANN logits (eval mode,
    QCFS levels = L·T). This exact conversion is the default, because hybrid fine-tuning should start from it:
    measured on a 12k CIFAR-10 subset (ResNet-20, Tq = 8), the ×L init is at 66.6 / 72.4 / 72.4 % for L2T2 /
    L2T4 / L4T2 against 34.3 / 39.3 / 15.6 % for the ×1 one. ``1`` (``"code"``) reproduces LMHT-C's conversion
    (the spec's reproduction setting, algorithms.md §2.6 bias caveat). Every :class:`DirectEncoder` gets ``T``.

    Args:
        model: time-major model with :class:`QCFS` activations outside any ``SeqToANNContainer``.
        levels: L. T: timesteps (size of every T-GIM).
        hybrid_bias_scale: L (``"exact"``, default), 1 (``"code"``, LMHT-C) or another factor > 0. Exact needs
            BatchNorm (or no) normalisation after the first spiking layer; LayerNorm/GroupNorm nets need ``1``.
        example_input: determine the layer order by running this input (default: registration order).
        tgim, learnable_leak, detach_temporal, detach_reset, surrogate_width, backend: LM-HT options.
        inplace: edit ``model`` itself instead of a deep copy.
        return_report: also return a :class:`HybridConversionReport`.

    Returns:
        The LM-HT model, or ``(model, report)``.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> from multispike.layers import SeqToANNContainer
        >>> ann = nn.Sequential(SeqToANNContainer(nn.Linear(3, 4)), QCFS(levels=4, threshold=1.0),
        ...                     SeqToANNContainer(nn.Linear(4, 2)))
        >>> snn = convert_qcfs_to_lmht(ann, levels=2, T=2, hybrid_bias_scale="exact")
        >>> type(snn[1]).__name__, snn[1].in_scale
        ('LMHTNeuron', 2.0)
    """
    L = check_positive_int(levels, "levels", fix="Use L >= 1.")
    T = check_positive_int(T, "T", fix="Use T >= 1.")
    scale = _resolve_bias_scale(hybrid_bias_scale, L)
    net = model if inplace else copy.deepcopy(model)
    ordered, order = _ordered_modules(net, example_input)
    names = _qcfs_modules(net, ordered, "convert_qcfs_to_lmht")
    first = names[0]
    report = HybridConversionReport("lmht", T, L, scale, first, order=order)
    if scale != 1.0:
        after = False
        for name, m in ordered:
            if name == first:
                after = True
            elif after:
                report.scaled_parameters += _scale_affine_offset(name, m, scale, "convert_qcfs_to_lmht")
    for name in names:
        q = net.get_submodule(name)
        neuron = lmht_from_qcfs(q, L, T, first_layer=(name == first), tgim=tgim, learnable_leak=learnable_leak,
                                detach_temporal=detach_temporal, detach_reset=detach_reset,
                                surrogate_width=surrogate_width, backend=backend)
        report.replaced.append({"name": name, "threshold": float(q.threshold.detach().flatten()[0]),
                                "qcfs_levels": q.levels, "in_scale": neuron.in_scale})
        net = _replaced(net, name, neuron)
    return _finish(net, T, report, return_report)


def convert_qcfs_to_if(model: nn.Module, T: int, *, inplace: bool = False, return_report: bool = False):
    """Sanity conversion of a QCFS ANN to IF neurons (§2.6 step 2, §3.2): θ = ϑ, ``v(0) = φ·θ``, soft reset,
    fire on ``m ≥ θ``, payload θ. Every :class:`DirectEncoder` gets ``T`` steps.

    With constant input current the time-mean payload after T steps equals ``QCFS(z; ϑ, Q=T)`` exactly.
    BatchNorm is kept (it runs in eval mode on the merged batch, which is equivalent to folding it).

    Example::

        >>> snn = convert_qcfs_to_if(torch.nn.Sequential(QCFS(levels=4, threshold=1.0)), T=4)
        >>> snn(torch.full((4, 1), 0.3)).mean(0).tolist() == QCFS(levels=4, threshold=1.0)(torch.tensor([0.3])).tolist()
        True
    """
    T = check_positive_int(T, "T", fix="Use T >= 1.")
    net = model if inplace else copy.deepcopy(model)
    ordered, order = _ordered_modules(net, None)
    names = _qcfs_modules(net, ordered, "convert_qcfs_to_if")
    report = HybridConversionReport("if", T, 1, 1.0, names[0], order=order)
    for name in names:
        q = net.get_submodule(name)
        theta = q.threshold.detach().clone()
        if not bool((theta > 0).all()):
            raise ValueError(f"convert_qcfs_to_if: the QCFS clip ϑ={theta.tolist()} at {name!r} must be > 0")
        neuron = IFNeuron(v_threshold=float(theta.flatten()[0]), v_init=0.0, payload="threshold", step_mode="m",
                          fire_ge=True, detach_reset=True)
        # IFNeuron stores float32 buffers; keep ϑ's exact value and dtype (float64 identities stay exact).
        neuron.v_threshold = theta
        neuron.v_init = (q.shift * theta).clone()
        report.replaced.append({"name": name, "threshold": float(theta.flatten()[0]), "qcfs_levels": q.levels,
                                "in_scale": 1.0})
        net = _replaced(net, name, neuron)
    return _finish(net, T, report, return_report)


# ----------------------------------------------------------------------------------------------------
# Reparameterisation (§2.7)
# ----------------------------------------------------------------------------------------------------
def expand_time(x_seq: torch.Tensor, levels: int) -> torch.Tensor:
    """Expand a ``[T, B, ...]`` input to the ``[L·T, B, ...]`` stream of a reparameterised network:
    each step repeated L times in place (``x.repeat_interleave(L, dim=0)``)."""
    L = check_positive_int(levels, "levels", fix="Use L >= 1.")
    if not isinstance(x_seq, torch.Tensor) or x_seq.dim() < 1:
        raise ValueError(f"expand_time: expected a time-major tensor [T, B, ...], got {type(x_seq).__name__}")
    return x_seq.repeat_interleave(L, dim=0)


class ExpandTime(nn.Module):
    """Module form of :func:`expand_time`: ``[T, B, ...] -> [L·T, B, ...]``."""

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.levels = check_positive_int(levels, "levels", fix="Use L >= 1.")

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return expand_time(x_seq, self.levels)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


@dataclass
class ReparameterizationReport:
    """What :func:`reparameterize_lmht` did: one L and T for the network, which neuron is fed by the stem,
    which offsets were divided by L and how the input must be expanded."""

    levels: int
    T: int
    steps: int
    first_neuron: str
    neurons: list[str] = field(default_factory=list)
    scaled_parameters: list[str] = field(default_factory=list)
    input_expansion: str = "repeat_interleave"   # or "direct_encoder" or "wrapped"
    order: str = "registration"

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"LM-HT -> IF reparameterisation: L={self.levels}, T={self.T} -> {self.steps} IF steps; "
                f"{len(self.neurons)} neuron layer(s) (first: {self.first_neuron!r}); "
                f"{len(self.scaled_parameters)} offset parameter(s) divided by L; input: {self.input_expansion}; "
                f"order: {self.order}")


def _validate_for_reparam(name: str, module: nn.Module, after_first: bool) -> None:
    kind = type(module).__name__
    where = f"module {name!r} ({kind})"
    if isinstance(module, _BN) and module.training:
        raise ReparameterizationError(f"{where} is in train mode; BatchNorm folds only with running statistics. "
                                      f"Call model.eval() before reparameterize_lmht.")
    if isinstance(module, nn.modules.dropout._DropoutNd) and module.training:
        raise ReparameterizationError(f"{where} is in train mode and would drop different units in each of the L "
                                      f"sub-steps; call model.eval() first.")
    if isinstance(module, QCFS):
        raise ReparameterizationError(f"{where}: a QCFS activation is left in the network; convert it to LM-HT "
                                      f"(convert_qcfs_to_lmht) or IF before reparameterising.")
    if isinstance(module, MemoryModule) and not isinstance(module, (LMHTNeuron, MHTNeuron)):
        raise ReparameterizationError(f"{where}: only LMHTNeuron/MHTNeuron layers can be reparameterised; this "
                                      f"stateful module cannot be expanded to L·T steps.")
    if not after_first or next(module.children(), None) is not None:
        return  # upstream of the first neuron any stateless per-step layer is fine; containers are checked by leaves
    if isinstance(module, (LMHTNeuron, MHTNeuron)) or isinstance(module, _LINEAR_LEAVES):
        return
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                           nn.AdaptiveMaxPool3d)):
        hint = "replace MaxPool by AvgPool (as the hybrid recipe does) and fine-tune"
    else:
        hint = ("only layers linear in their input (conv, linear, eval BatchNorm, average pooling, flatten, "
                "dropout in eval, ResidualAdd, MeanOverTime) may sit between spiking layers")
    raise ReparameterizationError(f"{where} sits between spiking layers and cannot be folded: the IF network sums "
                                  f"L sub-steps per window, which commutes only with linear layers; {hint}.")


def reparameterize_lmht(model: nn.Module, *, T: int | None = None, example_input: torch.Tensor | None = None,
                        wrap_input: bool = False, inplace: bool = False) -> tuple[nn.Module, ReparameterizationReport]:
    """Turn a trained LM-HT (or M-HT) network into a single-threshold IF network running ``L·T`` steps.

    Edits (LMHT-P §4.5, Thm A.2; algorithms.md §2.7):

    * every :class:`LMHTNeuron`/:class:`MHTNeuron` becomes a :class:`ReparameterizedIF` with the expanded
      T-GIM ``Ω ⊗ (1/L)·1_{L×L}``, λ applied at window starts, the same θ and ``v(0)``;
    * every conv/linear bias, BN shift β and BN running_mean after the first neuron is divided by L (γ and
      running_var stay), so the window sum of a synaptic output equals the LM-HT one;
    * the first neuron (fed by the analog stem, whose biases stay) gets input scale ``in_scale/L``;
    * the input: a :class:`DirectEncoder` gets ``T ← L·T``; otherwise the caller feeds
      :func:`expand_time` of the LM-HT input, or ``wrap_input=True`` returns ``Sequential(ExpandTime(L), net)``.

    Exactness: each window's sub-steps receive ``I(t)/L``; the window spike sums equal the LM-HT counts
    whenever the window currents are non-negative (Lemma 4.1), and the summed readout equals the LM-HT one
    (time-mean logits are 1/L of the LM-HT ones). With signed currents the match is approximate; measure
    it with :func:`reparameterization_report`.

    Args:
        model: LM-HT network in eval mode (BN with running statistics).
        T: timesteps; needed only when the network has M-HT neurons alone (they carry no T-GIM).
        example_input: run it to order the modules by execution (default: registration order).
        wrap_input: prepend :class:`ExpandTime` so the result takes the LM-HT input unchanged.
        inplace: edit ``model`` itself.

    Raises:
        ReparameterizationError: BN/dropout in train mode, a layer between neurons that is not linear
            (MaxPool, ReLU, QCFS, other neurons, temporal alignment...), neurons with different L or T.

    Returns:
        ``(if_model, report)``.
    """
    net = model if inplace else copy.deepcopy(model)
    reset_net(net)
    ordered, order = _ordered_modules(net, example_input)
    neurons = [(n, m) for n, m in ordered if isinstance(m, (LMHTNeuron, MHTNeuron))]
    if not neurons:
        raise ReparameterizationError("reparameterize_lmht: the model has no LMHTNeuron/MHTNeuron layer")
    if any(n == "" for n, _ in neurons):
        raise ReparameterizationError("reparameterize_lmht: pass a network, not a bare neuron (use "
                                      "ReparameterizedIF.from_lmht for a single layer)")
    levels = {m.levels for _, m in neurons}
    if len(levels) != 1:
        raise ReparameterizationError(f"reparameterize_lmht: the layers use different level counts {sorted(levels)}; "
                                      f"one L·T-step IF network needs the same L in every layer")
    L = levels.pop()
    Ts = {m.T for _, m in neurons if isinstance(m, LMHTNeuron)}
    if T is not None:
        Ts.add(check_positive_int(T, "T", fix="Use T >= 1."))
    if len(Ts) != 1:
        raise ReparameterizationError(
            f"reparameterize_lmht: cannot determine one T for the network (found {sorted(Ts) or 'none'}); "
            f"all LM-HT layers must share T, and an M-HT-only network needs T=...")
    T_net = Ts.pop()
    first = neurons[0][0]
    report = ReparameterizationReport(L, T_net, L * T_net, first, [n for n, _ in neurons], order=order)
    after = False
    for name, m in ordered:
        after = after or name == first
        _validate_for_reparam(name, m, after)
    if L > 1:
        after = False
        for name, m in ordered:
            if name == first:
                after = True
            elif after:
                report.scaled_parameters += _scale_affine_offset(name, m, 1.0 / L, "reparameterize_lmht")
    for name, m in neurons:
        is_first = name == first
        new = (ReparameterizedIF.from_lmht(m, is_first) if isinstance(m, LMHTNeuron)
               else ReparameterizedIF.from_mht(m, T_net, is_first))
        _set_submodule(net, name, new)
    encoders = _direct_encoders(net)
    for enc in encoders:
        enc.T = enc.T * L
    if encoders:
        report.input_expansion = "direct_encoder"
    elif wrap_input:
        net = nn.Sequential(ExpandTime(L), net)
        report.input_expansion = "wrapped"
    net.eval()
    return net, report


@dataclass
class LayerAgreement:
    """Window spike-count agreement of one neuron layer."""

    name: str
    count_agreement: float      # fraction of (window, neuron) pairs with equal counts
    max_count_diff: int
    lmht_spikes: float          # Σ s of the LM-HT layer
    if_spikes: float            # Σ of the IF spikes
    elements: int


@dataclass
class AgreementReport:
    """Measured agreement between an LM-HT network and its reparameterised IF network."""

    levels: int
    T: int
    readout: str
    samples: int = 0
    layers: list[LayerAgreement] = field(default_factory=list)
    output_max_abs_diff: float = 0.0
    output_max_abs: float = 0.0
    argmax_agreement: float = 1.0

    @property
    def min_count_agreement(self) -> float:
        return min((a.count_agreement for a in self.layers), default=1.0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["min_count_agreement"] = self.min_count_agreement
        return d

    def __str__(self) -> str:
        rows = [("layer", "count agreement", "max |Δcount|", "LM-HT spikes", "IF spikes")] + [
            (a.name, f"{a.count_agreement:.6f}", a.max_count_diff, f"{a.lmht_spikes:.0f}", f"{a.if_spikes:.0f}")
            for a in self.layers]
        return (f"reparameterisation agreement on {self.samples} samples (L={self.levels}, T={self.T}, readout="
                f"{self.readout}): argmax agreement {self.argmax_agreement:.4f}, output max |Δ| "
                f"{self.output_max_abs_diff:.3g} (max |out| {self.output_max_abs:.3g})\n" + _table(rows))


def _batches(data) -> Iterable[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        yield data
        return
    for item in data:
        yield item[0] if isinstance(item, (tuple, list)) else item


@torch.no_grad()
def reparameterization_report(lmht_model: nn.Module, if_model: nn.Module, data, *, readout: str = "auto",
                              max_batches: int | None = None) -> AgreementReport:
    """Measure how well a reparameterised IF network reproduces its LM-HT network on data.

    Per neuron layer (matched in registration order): the fraction of (window, neuron) pairs whose IF
    spike sum over the L sub-steps equals the LM-HT count ``y/θ``. For the outputs: the max abs difference
    after bringing them to the same scale, and the argmax agreement.

    Args:
        lmht_model, if_model: the network and the result of :func:`reparameterize_lmht`.
        data: the LM-HT input: a tensor, or an iterable of tensors or ``(x, y)`` pairs. It is expanded for
            the IF network with :func:`expand_time` unless that network has a DirectEncoder or ExpandTime.
        readout: how outputs relate: ``"sequence"`` (time-major outputs, the IF one summed per window),
            ``"mean"`` (time-mean readout: LM-HT = L × IF), ``"sum"`` (equal) or ``"auto"`` (``"sequence"``
            when the leading dims are T and L·T, else ``"mean"``, the library's MeanOverTime convention).
        max_batches: stop after this many batches.
    """
    if readout not in ("auto", "sequence", "mean", "sum"):
        raise ValueError(f"readout must be 'auto', 'sequence', 'mean' or 'sum', got {readout!r}")
    lm = [(n, m) for n, m in lmht_model.named_modules() if isinstance(m, (LMHTNeuron, MHTNeuron))]
    rif = [m for m in if_model.modules() if isinstance(m, ReparameterizedIF)]
    if not rif or len(lm) != len(rif):
        raise ValueError(f"reparameterization_report: {len(lm)} LM-HT layer(s) but {len(rif)} ReparameterizedIF "
                         f"layer(s); pass the model and the output of reparameterize_lmht(model)")
    L, T = rif[0].window, rif[0].T
    self_expanding = any(isinstance(m, (DirectEncoder, ExpandTime)) for m in if_model.modules())
    report = AgreementReport(L, T, readout)
    captured: dict[int, torch.Tensor] = {}

    def make_hook(key):
        def hook(_m, _i, out):
            captured[key] = out
        return hook

    handles = [m.register_forward_hook(make_hook(i)) for i, (_, m) in enumerate(lm)]
    handles += [m.register_forward_hook(make_hook(len(lm) + i)) for i, m in enumerate(rif)]
    stats = [[0, 0, 0, 0.0, 0.0] for _ in lm]  # equal, total, max diff, lm spikes, if spikes
    agree = total = 0
    try:
        for b, x in enumerate(_batches(data)):
            if max_batches is not None and b >= max_batches:
                break
            reset_net(lmht_model)
            reset_net(if_model)
            out_lm = lmht_model(x)
            out_if = if_model(x if self_expanding else expand_time(x, L))
            for i, ((_, m_lm), m_if) in enumerate(zip(lm, rif)):
                s_lm = torch.round(m_lm.spike_events(captured[i]))
                y_if = captured[len(lm) + i]
                s_if = torch.round(m_if.spike_events(y_if)).reshape(T, L, *y_if.shape[1:]).sum(1)
                diff = (s_lm - s_if).abs()
                st = stats[i]
                st[0] += int((diff == 0).sum())
                st[1] += diff.numel()
                st[2] = max(st[2], int(diff.max()) if diff.numel() else 0)
                st[3] += float(s_lm.sum())
                st[4] += float(s_if.sum())
            mode = readout
            if mode == "auto":
                seq = (out_lm.dim() >= 1 and out_if.dim() == out_lm.dim() and out_lm.shape[0] == T
                       and out_if.shape[0] == L * T and out_lm.shape[1:] == out_if.shape[1:])
                mode = "sequence" if seq else "mean"
            if mode == "sequence":
                ref_if = out_if.reshape(T, L, *out_if.shape[1:]).sum(1)
                logits_lm, logits_if = out_lm.sum(0), ref_if.sum(0)
            else:
                ref_if = out_if * (L if mode == "mean" else 1)
                logits_lm, logits_if = out_lm, ref_if
            if ref_if.shape != out_lm.shape:
                raise ValueError(f"reparameterization_report: output shapes {tuple(out_lm.shape)} (LM-HT) and "
                                 f"{tuple(out_if.shape)} (IF) do not match for readout={mode!r}")
            report.readout = mode
            report.output_max_abs_diff = max(report.output_max_abs_diff, float((out_lm - ref_if).abs().max()))
            report.output_max_abs = max(report.output_max_abs, float(out_lm.abs().max()))
            a_lm, a_if = logits_lm.argmax(-1), logits_if.argmax(-1)
            agree += int((a_lm == a_if).sum())
            total += a_lm.numel()
    finally:
        for h in handles:
            h.remove()
        reset_net(lmht_model)
        reset_net(if_model)
    report.samples = total
    report.argmax_agreement = agree / total if total else 1.0
    for (name, _), st in zip(lm, stats):
        report.layers.append(LayerAgreement(name, st[0] / st[1] if st[1] else 1.0, st[2], st[3], st[4], st[1]))
    return report
