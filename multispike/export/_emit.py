"""NIR nodes of one spiking layer: the threshold ladder (§3.3(A)), the one-hot lanes (§3.3(B)) and single
``nir.IF``/``nir.LIF`` nodes, from the normal form of :mod:`multispike.export._neurons`.

Shared by the exporter and by the importer, which re-emits a neuron rebuilt from metadata and compares the
result with the graph before trusting the metadata.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._common import _all, _full, _ge, _np, require_nir
from ._neurons import NeuronSpec
from ._trace import NIRExportError

__all__ = ["NeuronEmission", "emit_neuron"]


@dataclass
class NeuronEmission:
    """NIR nodes written for one spiking layer."""

    nodes: dict[str, object]              # name -> nir node (insertion order = emission order)
    edges: list[tuple[str, str]]
    entry: str                            # node that receives the layer's input current
    outputs: list[str]                    # nodes whose (summed) outputs are the layer's events/payload
    payload: torch.Tensor | None          # factor still to apply to the summed outputs downstream
    roles: dict[str, str]                 # node name -> role
    fidelity: str = "exact"
    exact: bool = True
    reason: str = ""
    convention: str = ""


def _membrane(nir, spec: NeuronSpec, shape, dt: float, kind_if: bool, threshold=None, v_reset=None):
    """An I/LI node (kind_if False) or an IF/LIF node with threshold and reset (kind_if True)."""
    beta = _full(spec.beta, shape)
    gain = _full(spec.gain, shape)
    const = _full(spec.const, shape)
    if _all(beta, 1.0):
        if not _all(const, 0.0):
            raise NIRExportError(f"{spec.name}: a constant drive without a leak has no NIR form")
        r = _np(gain.double() / dt)
        conv = f"{'IF' if kind_if else 'I'}(r = g/dt = {_fmt(gain)}/dt): Euler v += dt·r·x = g·x"
        if kind_if:
            return nir.IF(r=r, v_threshold=_np(threshold), v_reset=_np(v_reset)), conv
        return nir.I(r=r), conv
    one_minus = (1.0 - beta.double())
    if bool((one_minus == 0).any()):
        raise NIRExportError(f"{spec.name}: mixed leak (β = 1 for some neurons, < 1 for others) has no single NIR node")
    tau = _np(dt / one_minus)
    r = _np(gain.double() / one_minus)
    v_leak = _np(const.double() / one_minus)
    conv = (f"{'LIF' if kind_if else 'LI'}(τ = dt/(1−β), r = g/(1−β), v_leak = c/(1−β)) with β = {_fmt(beta)}: Euler "
            f"v ← β·v + g·x + c")
    if kind_if:
        return nir.LIF(tau=tau, r=r, v_leak=v_leak, v_threshold=_np(threshold), v_reset=_np(v_reset)), conv
    return nir.LI(tau=tau, r=r, v_leak=v_leak), conv


def _fmt(t: torch.Tensor) -> str:
    t = t.flatten()
    if bool((t == t[0]).all()):
        return f"{float(t[0]):.6g}"
    return f"[{float(t.min()):.4g}..{float(t.max()):.4g}]"


def emit_neuron(spec: NeuronSpec, mode: str, shape: tuple[int, ...], dt: float, base: str) -> NeuronEmission:
    """The NIR nodes of one spiking layer in ``mode`` (``spec`` from :func:`multispike.export._neurons.analyze`)."""
    nir = require_nir()
    shape = tuple(int(s) for s in shape)
    theta = _full(spec.theta, shape)
    u0 = _full(spec.u0, shape)
    binary = spec.family == "unrolled" or (spec.family == "ladder" and spec.levels == 1) or (
        spec.family == "lanes" and spec.lanes == 1)
    use_fused = (mode in ("if", "unrolled")) or not spec.soft
    if use_fused and (binary or mode != "exact"):
        # One nir.IF / nir.LIF node.
        step_dt = dt / spec.window if spec.family == "unrolled" else dt
        v_reset = _full(spec.v_reset if spec.v_reset is not None else 0.0, shape)
        thr = theta
        thr = _ge(thr) if spec.fire_ge else thr.clone()
        node, conv = _membrane(nir, spec, shape, step_dt, True, threshold=thr, v_reset=v_reset)
        name = f"{base}"
        p = spec.payload
        if spec.family == "lanes":
            unit = spec.lane_values[0]
            p = None if unit == 1.0 else torch.tensor(unit)
        if spec.family == "unrolled":
            conv = conv.replace("dt", "dt'") + f" at the sub-step dt' = dt/{spec.window}"
        fidelity, exact, reason = _fused_verdict(spec, mode)
        return NeuronEmission({name: node}, [], name, [name], p, {name: "neuron"}, fidelity, exact, reason, conv)
    if spec.family == "ladder":
        return _emit_ladder(nir, spec, shape, dt, base, theta, u0)
    if spec.family == "lanes":
        return _emit_lanes(nir, spec, shape, dt, base, theta, u0)
    raise NIRExportError(f"{spec.name}: no {mode!r} emission for a {spec.kind}")


def _fused_verdict(spec: NeuronSpec, mode: str) -> tuple[str, bool, str]:
    if spec.family == "unrolled":
        return ("approximate", False, f"unrolled into {spec.window} sub-steps of nir.IF (dt' = dt/{spec.window}); "
                                      f"NIR resets to 0 so the soft reset's residual is lost, and each sub-step gets "
                                      f"its own input instead of the window average (§3.3(C))")
    lost = []
    if spec.has_u0:
        lost.append("v_init is dropped (NIR has no initial membrane)")
    if spec.soft:
        lost.append("the soft reset becomes a reset to 0 (the residual above θ is lost)")
    if spec.family == "ladder" and spec.levels > 1:
        return ("sinabs-multispike", False, f"one nir.{'IF' if not spec.leaky else 'LIF'} for an L = {spec.levels} "
                                            f"layer (§3.3(D)): exact only on a multi-spike, subtractive-reset backend "
                                            f"(sinabs) while the count never exceeds L and v stays ≥ −θ; under NIR "
                                            f"semantics it emits binary spikes" + ("; " + "; ".join(lost[:1]) if
                                                                                  spec.has_u0 else ""))
    if spec.family == "lanes" and spec.lanes and spec.lanes > 1:
        return ("approximate", False, f"one nir.{'IF' if not spec.leaky else 'LIF'} at the lowest lane edge for an "
                                      f"S = {spec.lanes} one-hot M-LIF: binary spikes instead of power-of-two lanes"
                                      + ("; " + "; ".join(lost) if lost else ""))
    if lost:
        return "approximate", False, "; ".join(lost)
    return ("exact", True, f"nir.{'IF' if not spec.leaky else 'LIF'} with v_reset = {spec.v_reset:g} is exactly this "
                           f"hard-reset neuron" + ("; thresholds lowered by one float32 ulp so NIR's '>' equals '≥'"
                                                   if spec.fire_ge else ""))


class _Block:
    """Nodes, roles and edges of one multi-node neuron (ladder or lanes), built around its I/LI membrane.

    Insertion order of ``nodes`` is emission order; every node is named ``{base}_{suffix}``.
    """

    def __init__(self, nir, spec: NeuronSpec, shape, dt: float, base: str) -> None:
        self.nir, self.spec, self.shape, self.base = nir, spec, shape, base
        mem_node, self.conv = _membrane(nir, spec, shape, dt, False)
        self.nodes: dict[str, object] = {}
        self.roles: dict[str, str] = {}
        self.edges: list[tuple[str, str]] = []
        self.mem = self.add("mem", mem_node, "membrane")

    def add(self, suffix: str, node, role: str | None = None) -> str:
        name = f"{self.base}_{suffix}"
        self.nodes[name] = node
        self.roles[name] = suffix if role is None else role
        return name

    def threshold(self, suffix: str, c: torch.Tensor) -> str:
        """A Threshold node at ``c`` that reads the membrane."""
        name = self.add(suffix, self.nir.Threshold(threshold=_np(c)))
        self.edges.append((self.mem, name))
        return name

    def reset_from(self, sources: list[str]) -> None:
        """The Scale(−ρ/g) feedback from ``sources`` into the membrane: the subtractive reset."""
        gain = _full(self.spec.gain, self.shape)
        rho = _full(self.spec.rho, self.shape)
        reset = self.add("reset", self.nir.Scale(scale=_np(-(rho.double() / gain.double()).float())))
        self.edges.extend((s, reset) for s in sources)
        self.edges.append((reset, self.mem))

    def emission(self, outputs: list[str], payload, reason: str) -> NeuronEmission:
        return NeuronEmission(self.nodes, self.edges, self.mem, outputs, payload, self.roles, "exact", True, reason,
                              self.conv)


def _emit_ladder(nir, spec, shape, dt, base, theta, u0) -> NeuronEmission:
    L = spec.levels
    block = _Block(nir, spec, shape, dt, base)
    fold_u0 = not spec.leaky
    levels = []
    for k in range(1, L + 1):
        c = k * theta - u0 if fold_u0 else k * theta
        levels.append(block.threshold(f"level{k}", _ge(c) if spec.fire_ge else c))
    block.reset_from(levels)
    reason = (f"threshold ladder (§3.3(A)): {L} Threshold node(s) at k·θ" + (" − u0" if fold_u0 and spec.has_u0 else "")
              + ", Scale(−ρ) feedback as the subtractive reset" + (", u0 folded into the thresholds" if
                                                                  fold_u0 and spec.has_u0 else "")
              + ("; thresholds lowered by one float32 ulp so NIR's '>' equals '≥'" if spec.fire_ge else "")
              + ("; θ folded into the next layer's weights" if spec.payload is not None else ""))
    return block.emission(levels, spec.payload, reason)


def _emit_lanes(nir, spec, shape, dt, base, theta, u0) -> NeuronEmission:
    S = spec.lanes
    block = _Block(nir, spec, shape, dt, base)
    fold_u0 = not spec.leaky
    edges_names = []
    for s in range(S):
        c = (2.0 ** s) * theta - u0 if fold_u0 else (2.0 ** s) * theta
        ge = spec.fire_ge if s == 0 else spec.upper_ge
        edges_names.append(block.threshold(f"edge{s}", _ge(c) if ge else c))
    ones = torch.ones(shape)
    pays = []
    for s in range(S):
        if s + 1 < S:
            neg = block.add(f"neg{s + 1}", nir.Scale(scale=_np(-ones)))
            block.edges.append((edges_names[s + 1], neg))
        lane = block.add(f"lane{s}", nir.Scale(scale=_np(ones)))
        block.edges.append((edges_names[s], lane))
        if s + 1 < S:
            block.edges.append((f"{base}_neg{s + 1}", lane))
        pay = block.add(f"payload{s}", nir.Scale(scale=_np(torch.full(shape, spec.lane_values[s]))))
        block.edges.append((lane, pay))
        pays.append(pay)
    block.reset_from(pays)
    reason = (f"one-hot lanes (§3.3(B)): {S} Threshold node(s) at 2^s·θ" + (" − u0" if fold_u0 and spec.has_u0 else "")
              + ", one-hot lanes z_s = a_s − a_{s+1} via Scale(±1), Scale(2^s) payloads summed at the next layer, "
                "Scale(−ρ) payload feedback as the soft reset"
              + ("; '≥' edges lowered by one float32 ulp" if (spec.fire_ge or spec.upper_ge) else ""))
    return block.emission(pays, None, reason)
