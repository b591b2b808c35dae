"""The latency term of QAT (multispike's addition; QAC's Alg. 1 trains with cross-entropy only) and QAT reporting.

:class:`LatencyRegulariser` adds ``λ·Σ_l w_l·t_l`` to the task loss, with ``w_l = 1`` or the synaptic MACs
feeding layer ``l`` normalised to mean 1 (:func:`quantizer_macs`), and its exact gradient through every
parameterisation of :class:`~multispike.quant.qac.QACQuantizer`. :func:`quantizer_parameters` gives the
learnable pairs their own optimizer group; :func:`fix_timesteps` ends the search for T_l (round, meet a budget on
the mean, freeze); :func:`format_timestep_table` prints the per-epoch ``T_l (t)`` table.
Split from :mod:`multispike.quant.qac` (which re-exports these names, with a deprecation warning).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn

from .qac import QACQuantizer

__all__ = ["LATENCY_WEIGHTINGS", "LatencyRegulariser", "quantizer_macs", "quantizer_parameters",
           "format_timestep_table", "synapse_macs", "fix_timesteps"]

#: How :class:`LatencyRegulariser` weights each layer's timestep: ``uniform`` (w_l = 1, the penalty is λ·Σ t_l,
#: i.e. λ·N·(plain average T)) or ``macs`` (w_l ∝ the MACs of the synaptic op feeding the layer, normalised to
#: mean 1, so the penalty is λ·N·(op-weighted average T) - the layer's share of the SNN's synaptic work).
LATENCY_WEIGHTINGS = ("uniform", "macs")
_SYNAPSE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def quantizer_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable pairs ((t or n), (α or d)) of every :class:`QACQuantizer` in ``model``, each parameter
    once, in module order - the parameters that get their own optimizer settings in QAT."""
    seen: set[int] = set()
    out = []
    for m in model.modules():
        if isinstance(m, QACQuantizer):
            for p in m.learnable_pair():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
    return out


def synapse_macs(module: nn.Module, out: torch.Tensor) -> float:
    """MACs per sample of a ``Conv``/``Linear`` module with output ``out`` (per timestep for time-major
    containers, whose convs see ``[T·B, ...]``). Also the op profile of the mixed-timestep conversion."""
    per_sample = out[0].numel()
    if isinstance(module, nn.Linear):
        return float(per_sample * module.in_features)
    return float(per_sample * (module.in_channels // module.groups) * math.prod(module.kernel_size))


class _MacsRecorder:
    """Forward hooks that charge every conv/linear's MACs to the next QAC quantizer that runs (the same rule as
    :func:`multispike.convert.mixed_timestep.profile_timesteps` uses for the converted SNN's layers)."""

    def __init__(self, model: nn.Module) -> None:
        self.events: list[tuple] = []
        self.hooks = []
        for name, m in model.named_modules():
            if isinstance(m, _SYNAPSE_TYPES):
                self.hooks.append(m.register_forward_hook(
                    lambda mod, inp, out: self.events.append(("ops", synapse_macs(mod, out)))))
            elif isinstance(m, QACQuantizer):
                self.hooks.append(m.register_forward_pre_hook(
                    lambda mod, inp, name=name: self.events.append(("q", name))))

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []

    def result(self) -> dict[str, float]:
        macs: dict[str, float] = {}
        acc = 0.0
        for ev in self.events:
            if ev[0] == "ops":
                acc += ev[1]
            else:
                macs[ev[1]] = macs.get(ev[1], 0.0) + acc
                acc = 0.0
        return macs


@torch.no_grad()
def quantizer_macs(model: nn.Module, example_input: torch.Tensor) -> dict[str, float]:
    """MACs (per sample) of the synaptic operations feeding each :class:`QACQuantizer`, from one forward pass.

    The MACs of every conv/linear (shortcut convs included) are charged to the next quantizer that runs, i.e. the
    layer whose synaptic op they are in the converted SNN (§6.2: conv ``H·W·C_out·C_in/g·k²``, linear
    ``in·out``); the classifier after the last quantizer is not charged. A quantizer that did not run is absent.
    """
    from ..neurons.base import reset_net

    rec = _MacsRecorder(model)
    was_training = model.training
    model.eval()
    try:
        reset_net(model)
        model(example_input)
    finally:
        rec.remove()
        reset_net(model)
        model.train(was_training)
    return rec.result()


class LatencyRegulariser:
    """Latency/energy penalty ``R = λ·Σ_l w_l·t_l`` on the continuous timesteps of a model's QAC quantizers.

    Why: QAC (Alg. 1, algorithms.md §4.2) trains t with cross-entropy only, whose gradient ∂L/∂t (eq. 10) is
    small and, measured, points upward (every layer 4.00 -> 4.04-4.26, rounding back to 4), so the learned T_l
    never differ. QAC takes its parameterisation from Uhlich et al. 2019 ("Mixed precision DNNs"), who drive
    bit widths down with a size penalty; this is the analogous latency term, **multispike's addition** (the QAC
    paper states no such term). Each ``t_l`` is the continuous level count of layer l as a differentiable
    function of its learnable pair (:meth:`QACQuantizer.continuous_t`), so the term's gradient is exact:

    ========  ==============  ======================================================
    case      t_l             ∂R/∂(p1), ∂R/∂(p2)
    ========  ==============  ======================================================
    t_alpha   t               (λ·w_l, 0)
    n_alpha   2ⁿ              (λ·w_l·ln2·2ⁿ, 0)
    n_d       2ⁿ              (λ·w_l·ln2·2ⁿ, 0)
    d_alpha   α/d             (−λ·w_l·α/d², λ·w_l/d)       (p1 = d, p2 = α)
    ========  ==============  ======================================================

    The forward pass runs ``T_l = round(t_l)`` and the task gradient is straight-through (§4.2), so the
    penalty's pull on t_l competes with ∂CE/∂t_l; layers whose accuracy needs more levels settle higher.

    Args:
        model: a QAT model (after :func:`prepare_qat`).
        weight: λ ≥ 0 (0 disables the term; :meth:`__call__` then returns 0).
        per_layer: ``"uniform"`` (w_l = 1) or ``"macs"`` (w_l = N·MACs_l / Σ MACs: proportional to the synaptic
            MACs feeding layer l, normalised to mean 1 so λ keeps its meaning). See :data:`LATENCY_WEIGHTINGS`.
        layer_weights: explicit w_l (a mapping from quantizer names, or a sequence in module order); overrides
            ``per_layer``.
        example_input: for ``"macs"``: measure the MACs now with one forward pass of this input. Without it the
            MACs are recorded by hooks during the model's next forward pass (e.g. the first training batch) and
            the hooks removed when the term is first evaluated.

    Example::

        reg = LatencyRegulariser(model, weight=1e-2, per_layer="macs", example_input=x[:2])
        loss = F.cross_entropy(model(x), y) + reg()
    """

    def __init__(self, model: nn.Module, weight: float, per_layer: str = "uniform", *,
                 layer_weights: Mapping[str, float] | Sequence[float] | None = None,
                 example_input: torch.Tensor | None = None) -> None:
        weight = float(weight)
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"LatencyRegulariser: the latency weight λ must be a finite number >= 0, got {weight!r}")
        if per_layer not in LATENCY_WEIGHTINGS:
            raise ValueError(f"LatencyRegulariser: per_layer must be one of {LATENCY_WEIGHTINGS}, got {per_layer!r}")
        self.weight = weight
        self.per_layer = per_layer if layer_weights is None else "given"
        self.quantizers = [(name, m) for name, m in model.named_modules() if isinstance(m, QACQuantizer)]
        if not self.quantizers:
            raise ValueError(f"LatencyRegulariser: {type(model).__name__} has no QACQuantizer; run prepare_qat() "
                             f"first (the latency term acts on the learnable timesteps t_l)")
        names = [n for n, _ in self.quantizers]
        self._weights: list[float] | None = None
        self._recorder: _MacsRecorder | None = None
        if layer_weights is not None:
            if isinstance(layer_weights, Mapping):
                missing = [n for n in names if n not in layer_weights]
                if missing:
                    raise ValueError(f"LatencyRegulariser: layer_weights lacks quantizers {missing}")
                w = [float(layer_weights[n]) for n in names]
            else:
                w = [float(v) for v in layer_weights]
                if len(w) != len(names):
                    raise ValueError(f"LatencyRegulariser: got {len(w)} layer weights for {len(names)} quantizers "
                                     f"({names})")
            self._set_weights(w)
        elif per_layer == "uniform":
            self._weights = [1.0] * len(names)
        elif example_input is not None:
            self._weights_from_macs(quantizer_macs(model, example_input))
        else:
            self._recorder = _MacsRecorder(model)

    def _set_weights(self, w: list[float]) -> None:
        if any(not math.isfinite(v) or v < 0 for v in w):
            raise ValueError(f"LatencyRegulariser: layer weights must be finite and >= 0, got {w}")
        self._weights = w

    def _weights_from_macs(self, macs: Mapping[str, float]) -> None:
        names = [n for n, _ in self.quantizers]
        values = [float(macs.get(n, 0.0)) for n in names]
        total = sum(values)
        if total <= 0:
            raise ValueError("LatencyRegulariser: no conv/linear MACs were charged to any quantizer; use "
                             "per_layer='uniform' for this model")
        self.macs = dict(zip(names, values))
        self._set_weights([len(values) * v / total for v in values])

    @property
    def ready(self) -> bool:
        """Whether the layer weights are known (``macs`` without ``example_input`` needs one forward pass)."""
        return self._weights is not None or (self._recorder is not None and bool(self._recorder.events))

    def _finalise(self) -> None:
        if self._weights is None:
            if self._recorder is None or not self._recorder.events:
                raise RuntimeError("LatencyRegulariser(per_layer='macs') needs one forward pass of the model before "
                                   "the term is evaluated (or pass example_input=...)")
            self._recorder.remove()
            self._weights_from_macs(self._recorder.result())
            self._recorder = None

    @property
    def weights(self) -> dict[str, float]:
        """``{quantizer name: w_l}``."""
        self._finalise()
        return dict(zip((n for n, _ in self.quantizers), self._weights))

    def __call__(self) -> torch.Tensor:
        """``λ·Σ_l w_l·t_l`` as a scalar tensor with the autograd graph to the quantizer parameters."""
        self._finalise()
        terms = [w * q.continuous_t() for w, (_, q) in zip(self._weights, self.quantizers) if w != 0.0]
        if self.weight == 0.0 or not terms:
            ref = self.quantizers[0][1].learnable_pair()[0]
            return ref.new_zeros(())
        return self.weight * torch.stack([t.reshape(()) for t in terms]).sum()

    def close(self) -> None:
        """Remove any forward hooks still waiting for the first forward pass."""
        if self._recorder is not None:
            self._recorder.remove()
            self._recorder = None

    def describe(self) -> dict:
        """JSON-ready settings: λ, the weighting and, once known, w_l (and MACs) per layer."""
        out: dict = {"weight": self.weight, "per_layer": self.per_layer}
        if self._weights is not None:
            out["layer_weights"] = self.weights
            if hasattr(self, "macs"):
                out["macs"] = self.macs
        return out


def fix_timesteps(model: nn.Module, budget: float | None = None,
                  layer_weights: Mapping[str, float] | None = None) -> dict:
    """Fix every QAC quantizer's ``T_l`` (:meth:`QACQuantizer.fix_timesteps`), meeting a budget on the mean T.

    Why: with the latency term, a layer whose accuracy gain from one more level just balances the penalty
    settles on a rounding boundary (t = 2.50 measured: the cross-entropy pulls up while ``T_l = 2``, the penalty
    pulls down while ``T_l = 3``), so which side its ``T_l`` ends on is chance, and four such layers lifted a
    plain mean of continuous t = 2.48 to a mean ``T_l`` of 2.86. Fixing the T_l before the end of training and
    training on lets the weights and clips adapt to the T the SNN will run.

    Each layer starts at ``round(t_l)``. With ``budget`` B, while the weighted mean ``Σ w_l·T_l / Σ w_l`` exceeds
    B, the layer with ``T_l > 1`` whose ``t_l`` lies closest above its lower rounding boundary, per unit weight
    (smallest ``(t_l − (T_l − ½)) / w_l``; ``T_l − 1`` with ``t_to_T="ceil"``), loses one level - the layers the latency term had already pushed
    furthest down go first. Any budget >= 1 can be met (every weighted layer at T = 1).

    Args:
        model: a QAT model (after :func:`~multispike.quant.qat.prepare_qat`).
        budget: the largest allowed weighted mean ``T_l`` (None: only round and fix).
        layer_weights: ``{quantizer name: w_l ≥ 0}`` (default 1 each, the plain mean the QAC paper reports);
            e.g. :attr:`LatencyRegulariser.weights` to weight layers as the latency term does.

    Returns:
        a JSON-ready record: ``layers`` (name -> ``{"t", "T_rounded", "T"}``), ``mean_T`` (weighted, after),
        ``mean_T_rounded`` (before the budget), ``budget`` and ``lowered`` (names, in order).
    """
    quantizers = [(name, m) for name, m in model.named_modules() if isinstance(m, QACQuantizer)]
    if not quantizers:
        raise ValueError(f"fix_timesteps: {type(model).__name__} has no QACQuantizer; run prepare_qat() first")
    if budget is not None and not (math.isfinite(float(budget)) and float(budget) >= 1.0):
        raise ValueError(f"fix_timesteps: budget must be a mean timestep >= 1 (every layer runs at least one step), "
                         f"got {budget!r}")
    weights = {n: 1.0 for n, _ in quantizers} if layer_weights is None else \
        {n: float(layer_weights.get(n, 0.0)) for n, _ in quantizers}
    if any(not math.isfinite(w) or w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"fix_timesteps: layer weights must be finite, >= 0 and not all 0, got {weights}")
    total_w = sum(weights.values())
    t_learned = {n: q.continuous_timesteps for n, q in quantizers}
    t = dict(t_learned)
    T = {n: q.timesteps for n, q in quantizers}
    rounded = dict(T)
    below = {n: 0.5 if q.t_to_T == "round" else 1.0 for n, q in quantizers}   # T_l's lower boundary: T_l − below

    def mean() -> float:
        return sum(weights[n] * T[n] for n in T) / total_w

    lowered = []
    while budget is not None and mean() > float(budget) + 1e-12:
        candidates = [n for n in T if T[n] > 1 and weights[n] > 0]   # never empty: budget >= 1 is reachable
        name = min(candidates, key=lambda n: (max(t[n] - (T[n] - below[n]), 0.0) / weights[n], n))
        T[name] -= 1
        t[name] = min(t[name], T[name] + 1 - below[name])   # the next cut of this layer starts from its new boundary
        lowered.append(name)
    for name, q in quantizers:
        q.fix_timesteps(T[name])
    return {"layers": {n: {"t": t_learned[n], "T_rounded": rounded[n], "T": T[n]} for n, _ in quantizers},
            "mean_T": mean(), "mean_T_rounded": sum(weights[n] * rounded[n] for n in T) / total_w,
            "budget": budget, "lowered": lowered}


def format_timestep_table(epochs: Sequence[Mapping]) -> str:
    """Readable per-layer ``T_l (t)`` table over epochs.

    ``epochs``: one mapping per epoch with ``"epoch"`` and ``"layers"`` (rows of
    :func:`~multispike.quant.qac.quantizer_summary`,
    i.e. dicts with ``layer``, ``T`` and, for QAC quantizers, ``t`` and ``alpha``).
    """
    if not epochs:
        return "no epoch recorded"
    layer_names = [r["layer"] for r in epochs[-1]["layers"]]
    head = ["layer"] + [f"e{e['epoch']} T_l (t)" for e in epochs] + ["alpha (last)"]
    body = []
    for name in layer_names:
        cells = [name]
        for e in epochs:
            r = next((x for x in e["layers"] if x["layer"] == name), None)
            if r is None:
                cells.append("-")
            else:
                cells.append(f"{r['T']} ({r['t']:.3f})" if r.get("t") is not None else str(r["T"]))
        last = next(x for x in epochs[-1]["layers"] if x["layer"] == name)
        cells.append(f"{last['alpha']:.4g}")
        body.append(cells)
    means = ["mean"]
    for e in epochs:
        Ts = [r["T"] for r in e["layers"]]
        ts = [r["t"] for r in e["layers"] if r.get("t") is not None]
        means.append(f"{sum(Ts) / len(Ts):.3f}" + (f" ({sum(ts) / len(ts):.3f})" if len(ts) == len(Ts) else ""))
    means.append("")
    rows = [head, *body, means]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
