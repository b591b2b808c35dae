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


def _membrane_graph(nir, spec, shape, dt, base: str):
    """The start of a multi-node neuron graph: ``(nodes, roles, edges, membrane node name, conversion, gain, ρ)``
    holding only the membrane node (the threshold ladder and the M-LIF lanes add their nodes to it); gain and ρ
    broadcast to ``shape``."""
    mem_node, conv = _membrane(nir, spec, shape, dt, False)
    mem = f"{base}_mem"
    nodes: dict[str, object] = {mem: mem_node}
    roles: dict[str, str] = {mem: "membrane"}
    edges: list[tuple[str, str]] = []
    return nodes, roles, edges, mem, conv, _full(spec.gain, shape), _full(spec.rho, shape)


def _add_reset(nir, nodes, roles, edges, base: str, mem: str, sources, rho, gain) -> None:
    """The subtractive reset of a multi-node neuron: a ``Scale(−ρ/gain)`` node fed by every spike source (the
    ladder's levels, the lanes' payloads) and feeding back into the membrane."""
    reset = f"{base}_reset"
    nodes[reset] = nir.Scale(scale=_np(-(rho.double() / gain.double()).float()))
    roles[reset] = "reset"
    edges.extend((src, reset) for src in sources)
    edges.append((reset, mem))


def _emit_ladder(nir, spec, shape, dt, base, theta, u0) -> NeuronEmission:
    L = spec.levels
    nodes, roles, edges, mem, conv, gain, rho = _membrane_graph(nir, spec, shape, dt, base)
    fold_u0 = not spec.leaky
    levels = []
    for k in range(1, L + 1):
        c = k * theta - u0 if fold_u0 else k * theta
        c = _ge(c) if spec.fire_ge else c
        name = f"{base}_level{k}"
        nodes[name] = nir.Threshold(threshold=_np(c))
        roles[name] = f"level{k}"
        edges.append((mem, name))
        levels.append(name)
    _add_reset(nir, nodes, roles, edges, base, mem, levels, rho, gain)
    reason = (f"threshold ladder (§3.3(A)): {L} Threshold node(s) at k·θ" + (" − u0" if fold_u0 and spec.has_u0 else "")
              + ", Scale(−ρ) feedback as the subtractive reset" + (", u0 folded into the thresholds" if
                                                                  fold_u0 and spec.has_u0 else "")
              + ("; thresholds lowered by one float32 ulp so NIR's '>' equals '≥'" if spec.fire_ge else "")
              + ("; θ folded into the next layer's weights" if spec.payload is not None else ""))
    return NeuronEmission(nodes, edges, mem, levels, spec.payload, roles, "exact", True, reason, conv)


def _emit_lanes(nir, spec, shape, dt, base, theta, u0) -> NeuronEmission:
    S = spec.lanes
    nodes, roles, edges, mem, conv, gain, rho = _membrane_graph(nir, spec, shape, dt, base)
    fold_u0 = not spec.leaky
    edges_names = []
    for s in range(S):
        c = (2.0 ** s) * theta - u0 if fold_u0 else (2.0 ** s) * theta
        ge = spec.fire_ge if s == 0 else spec.upper_ge
        c = _ge(c) if ge else c
        name = f"{base}_edge{s}"
        nodes[name] = nir.Threshold(threshold=_np(c))
        roles[name] = f"edge{s}"
        edges.append((mem, name))
        edges_names.append(name)
    ones = torch.ones(shape)
    pays = []
    for s in range(S):
        if s + 1 < S:
            neg = f"{base}_neg{s + 1}"
            nodes[neg] = nir.Scale(scale=_np(-ones))
            roles[neg] = f"neg{s + 1}"
            edges.append((edges_names[s + 1], neg))
        lane = f"{base}_lane{s}"
        nodes[lane] = nir.Scale(scale=_np(ones))
        roles[lane] = f"lane{s}"
        edges.append((edges_names[s], lane))
        if s + 1 < S:
            edges.append((f"{base}_neg{s + 1}", lane))
        pay = f"{base}_payload{s}"
        nodes[pay] = nir.Scale(scale=_np(torch.full(shape, spec.lane_values[s])))
        roles[pay] = f"payload{s}"
        edges.append((lane, pay))
        pays.append(pay)
    _add_reset(nir, nodes, roles, edges, base, mem, pays, rho, gain)
    # Reorder so the reset node follows the lanes in the dict (readability of the file only).
    reason = (f"one-hot lanes (§3.3(B)): {S} Threshold node(s) at 2^s·θ" + (" − u0" if fold_u0 and spec.has_u0 else "")
              + ", one-hot lanes z_s = a_s − a_{s+1} via Scale(±1), Scale(2^s) payloads summed at the next layer, "
                "Scale(−ρ) payload feedback as the soft reset"
              + ("; '≥' edges lowered by one float32 ulp" if (spec.fire_ge or spec.upper_ge) else ""))
    return NeuronEmission(nodes, edges, mem, pays, None, roles, "exact", True, reason, conv)
