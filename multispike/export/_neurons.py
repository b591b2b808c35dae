"""What each multispike neuron computes at inference, in one normal form the NIR emitters share.

Every exportable neuron is written as a membrane ``m`` with a multiplicative leak β, an input gain g and a
constant drive c (hard-reset LIF only), read by a staircase and reset either by subtraction or to a value::

    m(t) = β·m(t−1) + g·x(t) + c − ρ·n(t−1)          soft reset: ρ = amount removed per unit event
    n(t) = staircase(m(t))                            L equidistant levels θ, 2θ, … or S one-hot lanes 2^s·θ
    m(t) ← v_reset where fired                        hard reset (then ρ is unused and n ∈ {0, 1})

with the start value ``m(0) = u0`` folded into the thresholds when β = 1 (``H + u0`` stays offset by u0
through every subtractive reset, ecosystem.md §3.3(A)). :func:`analyze` derives (β, g, c, ρ, θ, u0, …) from a
neuron module, checks what cannot be written in NIR, and :func:`neuron_record` / :func:`rebuild_neuron`
serialise a neuron for the exact round trip (metadata only; the graph never depends on it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..neurons.if_lif import IFNeuron, LIFNeuron
from ..neurons.lmht import LMHTNeuron, MHTNeuron, ReparameterizedIF
from ..neurons.mlif import OneHotMLIF
from ..neurons.surrogate import Triangle

__all__ = ["NeuronSpec", "analyze", "unwrap", "neuron_record", "rebuild_neuron", "NEURON_CLASSES"]

NEURON_CLASSES: dict[str, type] = {"IFNeuron": IFNeuron, "LIFNeuron": LIFNeuron, "MHTNeuron": MHTNeuron,
                                   "LMHTNeuron": LMHTNeuron, "OneHotMLIF": OneHotMLIF}


def _t(value) -> torch.Tensor:
    """A detached float32 CPU tensor (thresholds and leaks of neurons are float32 buffers or parameters)."""
    t = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    return t.to(device="cpu", dtype=torch.float32)


def _all_equal(t: torch.Tensor, value: float) -> bool:
    return bool((t == value).all())


@dataclass
class NeuronSpec:
    """Normal form of one spiking layer (see the module docstring).

    Attributes:
        name: module name of the layer (the wrapper's name when wrapped).
        core: the neuron module itself (unwrapped from ``MergedTimeNeuron``/``AlignedNeuron``).
        family: ``"ladder"`` (L equidistant levels: IF, LIF, M-HT, LM-HT), ``"lanes"`` (one-hot M-LIF) or
            ``"unrolled"`` (a reparameterised IF running L sub-steps per logical step).
        levels: L (ladder) or 1; lanes: S (lanes) or None.
        theta: θ; for lanes the edge unit ``θ·unit`` (``unit = 2^{−(S−1)}`` when scaled, else 1).
        u0: initial membrane ``v(0)``.
        beta, gain, const: leak β, input gain g and constant drive c of the membrane.
        rho: reset removed per unit event (soft reset), or None for a hard reset.
        v_reset: hard-reset value, or None.
        fire_ge: lowest edge fires on ``>=`` (else ``>``); upper_ge: lanes' upper edges on ``>=`` (floor bounds).
        payload: factor of the neuron's output over its event count (θ for payload θ·s), or None (output = events).
        lane_values: payload of each lane (M-LIF: ``unit·2^s``).
        problems: ``{mode: reason}`` for modes that cannot export this layer.
        notes: fidelity notes (what is approximate in which mode).
    """

    name: str
    core: nn.Module
    family: str
    levels: int = 1
    lanes: int | None = None
    theta: torch.Tensor = field(default_factory=lambda: torch.tensor(1.0))
    u0: torch.Tensor = field(default_factory=lambda: torch.tensor(0.0))
    beta: torch.Tensor = field(default_factory=lambda: torch.tensor(1.0))
    gain: torch.Tensor = field(default_factory=lambda: torch.tensor(1.0))
    const: torch.Tensor = field(default_factory=lambda: torch.tensor(0.0))
    rho: torch.Tensor | None = None
    v_reset: float | None = None
    fire_ge: bool = True
    upper_ge: bool = False
    payload: torch.Tensor | None = None
    lane_values: list[float] = field(default_factory=list)
    steps: int | None = None
    window: int = 1
    problems: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return type(self.core).__name__

    @property
    def soft(self) -> bool:
        return self.v_reset is None

    @property
    def leaky(self) -> bool:
        return not _all_equal(self.beta, 1.0)

    @property
    def has_u0(self) -> bool:
        return not _all_equal(self.u0, 0.0)


def unwrap(module: nn.Module) -> tuple[nn.Module, dict]:
    """The neuron inside ``MergedTimeNeuron`` / ``AlignedNeuron`` wrappers, and what the wrapper adds."""
    info: dict = {}
    for _ in range(4):
        cls = type(module).__name__
        if cls == "MergedTimeNeuron":
            info["merged_T"] = int(module.T)
            module = module.neuron
        elif cls == "AlignedNeuron":
            info["aligned_T"] = int(module.T)
            info["align"] = module.align
            module = module.neuron
        else:
            break
    return module, info


def _omega_scalar(omega: torch.Tensor) -> float | None:
    """c when Ω = c·I (a T-GIM that is only an input gain), else None."""
    om = omega.detach().to("cpu", torch.float64)
    diag = torch.diagonal(om)
    off = om - torch.diag_embed(diag)
    if bool((off == 0).all()) and bool((diag == diag[0]).all()):
        return float(diag[0])
    return None


def analyze(module: nn.Module, name: str) -> NeuronSpec:
    """Normal form of the spiking layer ``module`` (a neuron or a wrapper around one)."""
    core, wrap = unwrap(module)
    cls = type(core).__name__
    if isinstance(core, ReparameterizedIF):
        return _analyze_reparameterized(core, name)
    if isinstance(core, (MHTNeuron, LMHTNeuron)):
        spec = _analyze_mht(core, name)
    elif isinstance(core, OneHotMLIF):
        spec = _analyze_mlif(core, name)
    elif isinstance(core, LIFNeuron):
        spec = _analyze_lif(core, name)
    elif isinstance(core, IFNeuron):
        spec = _analyze_if(core, name)
    else:
        spec = NeuronSpec(name=name, core=core, family="unknown")
        reason = (f"{cls} has no NIR mapping; supported neurons: IFNeuron, LIFNeuron, MHTNeuron, LMHTNeuron "
                  f"(identity T-GIM), OneHotMLIF, ReparameterizedIF (mode='unrolled')")
        spec.problems = {m: reason for m in ("exact", "if", "unrolled")}
        return spec
    if spec.family == "lanes" and spec.lanes and spec.lanes > 1:
        spec.problems.setdefault("unrolled", "mode='unrolled' is the LM-HT reparameterisation path; a one-hot "
                                             "M-LIF layer has no sub-step form. Use mode='exact' or 'if'")
    return spec


def _common_theta(core) -> torch.Tensor:
    return _t(core.v_threshold)


def _analyze_if(core: IFNeuron, name: str) -> NeuronSpec:
    theta = _common_theta(core)
    spec = NeuronSpec(name=name, core=core, family="ladder", theta=theta, u0=_t(core.v_init),
                      fire_ge=bool(core.fire_ge), payload=theta if core.payload == "threshold" else None)
    if core.v_reset is None:
        spec.rho = theta
    else:
        spec.v_reset = float(core.v_reset)
    return _finish_binary(spec)


def _analyze_lif(core: LIFNeuron, name: str) -> NeuronSpec:
    theta = _common_theta(core)
    p = _t(core.leak_param)
    spec = NeuronSpec(name=name, core=core, family="ladder", theta=theta, u0=_t(core.v_init),
                      fire_ge=bool(core.fire_ge), payload=theta if core.payload == "threshold" else None)
    vr = core.v_reset
    if core.leak_mode == "post_reset":
        spec.beta = p
        if vr is None:
            spec.rho = p * theta if core.reset_leak else theta
    elif core.leak_mode == "decay_input":     # m = v + (x − (v − V_r))/τ
        spec.beta, spec.gain = 1.0 - 1.0 / p, 1.0 / p
        if vr is None:
            spec.rho = spec.beta * theta
        else:
            spec.const = torch.tensor(float(vr)) / p
    else:                                     # decay_state: m = v − (v − V_r)/τ + x
        spec.beta = 1.0 - 1.0 / p
        if vr is None:
            spec.rho = spec.beta * theta
        else:
            spec.const = torch.tensor(float(vr)) / p
    if vr is not None:
        spec.v_reset = float(vr)
    return _finish_binary(spec)


def _finish_binary(spec: NeuronSpec) -> NeuronSpec:
    """Mode verdicts for a binary (L = 1) neuron."""
    if spec.soft:
        if spec.leaky and spec.has_u0:
            spec.problems["exact"] = ("v_init ≠ 0 with a leak cannot be folded into the thresholds (the offset "
                                      "decays) and NIR has no initial membrane; set v_init=0 or use mode='if' "
                                      "(approximate)")
        spec.notes.append("mode='if': nir.IF/LIF reset to v_reset = 0, so the soft reset's residual above θ is lost"
                          + (" and v_init is dropped (NIR has no initial state)" if spec.has_u0 else ""))
    else:
        if spec.has_u0:
            spec.problems["exact"] = ("v_init ≠ 0 with a hard reset cannot be expressed (NIR has no initial "
                                      "membrane); set v_init=0 or use mode='if' (approximate)")
    return spec


def _analyze_mht(core, name: str) -> NeuronSpec:
    theta = _common_theta(core)
    beta = _t(core.leak)
    gain = float(core.in_scale)
    spec = NeuronSpec(name=name, core=core, family="ladder", levels=int(core.levels), theta=theta,
                      u0=_t(core.v_init), beta=beta, rho=beta * theta, fire_ge=True, payload=theta)
    if isinstance(core, LMHTNeuron):
        spec.steps = int(core.T)
        omega = core.omega
        if omega is not None:
            c = _omega_scalar(omega)
            if c is None:
                reason = (f"LM-HT T-GIM Ω (tgim={core.tgim!r}) mixes the inputs of all {core.T} steps (non-causal, "
                          f"time-varying weights); a NIR graph is causal and step-invariant, and the "
                          f"reparameterisation (§2.7) keeps Ω ⊗ (1/L). Fine-tune with tgim='identity' (or a "
                          f"diagonal Ω = c·I, which folds into the input gain) before exporting")
                spec.problems = {"exact": reason, "if": reason, "unrolled": reason}
            else:
                gain *= c
                spec.notes.append(f"T-GIM Ω = {c:.6g}·I folded into the input gain")
    spec.gain = torch.tensor(gain)
    if spec.leaky and spec.has_u0:
        spec.problems.setdefault("exact", "v_init ≠ 0 with a leak λ ≠ 1 cannot be folded into the thresholds and NIR "
                                          "has no initial membrane; set v_init=0 or λ=1, or use mode='if'")
    spec.notes.append("mode='if': one nir.IF/LIF per layer emits binary spikes; it equals this layer only on a "
                      "multi-spike, subtractive-reset backend (sinabs: floor(v/θ) spikes, v ≥ −θ) when the count "
                      "never exceeds L")
    return spec


def _analyze_mlif(core: OneHotMLIF, name: str) -> NeuronSpec:
    S = int(core.lanes)
    unit = float(core.unit)
    theta = _common_theta(core)
    beta = _t(core.leak)
    # A payload scale c multiplies what every lane sends (not the edges or the reset).
    c = core.payload_scale
    send = 1.0 if c is None or c.numel() != 1 else float(c.detach())
    spec = NeuronSpec(name=name, core=core, family="lanes", lanes=S, theta=theta * unit if core.scaled else theta,
                      u0=_t(core.v_init), beta=beta, fire_ge=bool(core.fire_ge),
                      upper_ge=core.lane_bounds == "floor", payload=None,
                      lane_values=[send * unit * 2.0 ** s for s in range(S)])
    if c is not None and c.numel() != 1:
        reason = "a per-channel payload scale has no NIR form (lane values are per layer)"
        spec.problems = {m: reason for m in ("exact", "if", "unrolled")}
    if core.decay_input:
        spec.gain = 1.0 - beta
    if core.reset_mode == "soft":
        # paper form: u(t) = β·u(t−1) + I − θ·o(t−1); code form: the reset is leaked as well.
        spec.rho = beta * theta if core.reset_leak else theta
    else:
        spec.v_reset = 0.0
        if spec.has_u0:
            spec.problems["exact"] = ("v_init ≠ 0 with a hard reset cannot be expressed (NIR has no initial "
                                      "membrane); set v_init=0 or use mode='if' (approximate)")
        if S > 1:
            spec.problems["exact"] = ("a hard reset of a multi-lane membrane (v = m·(1 − any lane fired)) is "
                                      "multiplicative and has no NIR primitive; use reset='soft', or mode='if' "
                                      "(one nir.LIF, approximate)")
    if core.dropout > 0 and core.training:
        reason = "lane dropout is active (train mode); call model.eval() before exporting"
        spec.problems = {m: reason for m in ("exact", "if", "unrolled")}
    if spec.leaky and spec.has_u0:
        spec.problems.setdefault("exact", "v_init ≠ 0 with a leak cannot be folded and NIR has no initial membrane; "
                                          "set v_init=0 or use mode='if'")
    if S > 1:
        spec.notes.append("mode='if': a single nir.IF/LIF at the lowest lane edge emits binary spikes, not the one-hot "
                          "power-of-two payload (approximate)")
    elif spec.soft:
        spec.notes.append("mode='if': nir.IF/LIF reset to 0, losing the soft reset's residual")
    return spec


def _analyze_reparameterized(core: ReparameterizedIF, name: str) -> NeuronSpec:
    L, T = int(core.window), int(core.T)
    theta = _common_theta(core)
    spec = NeuronSpec(name=name, core=core, family="unrolled", levels=1, theta=theta, u0=_t(core.v_init),
                      gain=torch.tensor(float(core.in_scale)), rho=theta, payload=theta, steps=L * T, window=L,
                      fire_ge=True)
    omega = core.omega_hat.detach().to("cpu", torch.float64)
    block = torch.kron(torch.eye(T, dtype=torch.float64), torch.full((L, L), 1.0 / L, dtype=torch.float64))
    c = None
    if L == 1:
        c = _omega_scalar(omega)
    elif torch.allclose(omega / omega[0, 0] * (1.0 / L), block, rtol=0, atol=1e-12) and omega[0, 0] > 0:
        c = float(omega[0, 0]) * L
    if c is None:
        reason = ("the reparameterised layer keeps a non-identity T-GIM Ω ⊗ (1/L) (its LM-HT Ω mixes steps); NIR "
                  "cannot express step mixing. Fine-tune the LM-HT network with tgim='identity' first")
        spec.problems = {m: reason for m in ("exact", "if", "unrolled")}
    else:
        spec.gain = spec.gain * c
    sched = core.leak_schedule.detach().cpu()
    if not bool((sched == 1).all()):
        reason = ("the LM-HT leak λ ≠ 1 applies only at window starts after reparameterisation; nir.IF has no leak and "
                  "nir.LIF would leak at every sub-step. Use λ = 1 (learnable_leak=False) to export unrolled")
        spec.problems = {m: reason for m in ("exact", "if", "unrolled")}
    spec.problems.setdefault("exact", "a reparameterised IF layer is approximate by construction; export the LM-HT "
                                      "network itself with mode='exact'")
    spec.notes.append("unrolled: L sub-steps of nir.IF per step; NIR resets to 0 (the residual is lost) and each "
                      "sub-step receives its own input instead of the window average (exact only for non-negative "
                      "currents with a subtractive-reset backend)")
    if spec.has_u0:
        spec.notes.append("v_init is dropped (NIR has no initial membrane)")
    return spec


# ----------------------------------------------------------------------------------------------------
# Serialisation for the exact round trip (node metadata; the graph itself never depends on it)
# ----------------------------------------------------------------------------------------------------
def _surrogate_config(core: OneHotMLIF) -> dict:
    shape = core.surrogate_function
    if isinstance(shape, Triangle):
        return {"surrogate_shape": "triangle", "gamma": float(shape.alpha)}
    return {"surrogate_shape": "sigmoid", "alpha": float(getattr(shape, "alpha", 4.0))}


def neuron_record(core: nn.Module) -> tuple[str, dict, dict[str, np.ndarray]]:
    """``(class name, constructor config, state arrays)`` of a neuron, enough to rebuild it bit for bit."""
    cls = type(core).__name__
    if cls not in NEURON_CLASSES:
        raise TypeError(f"neuron_record: {cls} is not serialisable")
    if isinstance(core, (IFNeuron, LIFNeuron)):
        cfg = {"v_reset": core.v_reset, "fire_ge": bool(core.fire_ge), "payload": core.payload,
               "surrogate_form": core.surrogate_form, "detach_reset": bool(core.detach_reset),
               "learnable_threshold": isinstance(core.v_threshold, nn.Parameter)}
        if isinstance(core, LIFNeuron):
            cfg.update(leak_mode=core.leak_mode, reset_leak=bool(core.reset_leak),
                       learnable_leak=isinstance(core.leak_param, nn.Parameter))
    elif isinstance(core, LMHTNeuron):
        cfg = {"T": int(core.T), "levels": int(core.levels), "tgim": core.tgim,
               "learnable_leak": bool(core.learnable_leak), "in_scale": float(core.in_scale),
               "detach_temporal": bool(core.detach_temporal), "detach_reset": bool(core.detach_reset),
               "surrogate_width": float(core.surrogate_width)}
    elif isinstance(core, MHTNeuron):
        cfg = {"levels": int(core.levels), "in_scale": float(core.in_scale),
               "detach_temporal": bool(core.detach_temporal), "detach_reset": bool(core.detach_reset),
               "surrogate_width": float(core.surrogate_width)}
    else:
        cfg = {"lanes": int(core.lanes), "learnable_threshold": isinstance(core.v_threshold, nn.Parameter),
               "learnable_leak": isinstance(core.leak, nn.Parameter), "reset": core.reset_mode,
               "reset_leak": bool(core.reset_leak), "lane_bounds": core.lane_bounds, "scaled": bool(core.scaled),
               "surrogate": core.surrogate, "fire_ge": bool(core.fire_ge), "detach_reset": bool(core.detach_reset),
               "dropout": float(core.dropout), "decay_input": bool(core.decay_input), **_surrogate_config(core)}
    state = {k: v.detach().cpu().numpy().copy() for k, v in core.state_dict().items()}
    return cls, cfg, state


def rebuild_neuron(cls: str, config: dict | str, state: dict[str, np.ndarray]) -> nn.Module:
    """Inverse of :func:`neuron_record` (raises ``ValueError`` on anything unexpected)."""
    if cls not in NEURON_CLASSES:
        raise ValueError(f"unknown multispike neuron class {cls!r}")
    cfg = json.loads(config) if isinstance(config, str) else dict(config)
    shapes = cfg.pop("state_shapes", {})
    tensors = {}
    for k, v in state.items():
        t = torch.from_numpy(np.array(v))
        if k in shapes:
            t = t.reshape(shapes[k])
        tensors[k] = t
    klass = NEURON_CLASSES[cls]
    kw = dict(cfg)
    if "v_threshold" in tensors:
        kw["v_threshold"] = tensors["v_threshold"].clone()
    if "v_init" in tensors:
        kw["v_init"] = tensors["v_init"].clone()
    if klass is OneHotMLIF and "leak" in tensors:
        kw["leak"] = tensors["leak"].clone()
    if klass is MHTNeuron and "leak_value" in tensors:
        kw["leak"] = float(tensors["leak_value"])
    kw["step_mode"] = "m"
    module = klass(**kw)
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    if missing or extra:
        raise ValueError(f"{cls} state does not fit: missing {missing}, unexpected {extra}")
    with torch.no_grad():
        for k, v in tensors.items():
            target = own[k]
            if tuple(target.shape) != tuple(v.shape):
                raise ValueError(f"{cls} state {k!r} has shape {tuple(v.shape)}, expected {tuple(target.shape)}")
            target.copy_(v.to(target.dtype))
    module.eval()
    return module
