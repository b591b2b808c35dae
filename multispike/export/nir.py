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
"""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..neurons.base import reset_net
from ._neurons import NeuronSpec, analyze, neuron_record, unwrap
from ._trace import NIRExportError, Problem, TracedCall, TracedNetwork, trace_network
from .report import FidelityReport, LayerFidelity, OutputAgreement

__all__ = ["export_to_nir", "MODES", "NIRExportError", "require_nir", "module_record", "rebuild_module",
           "emit_neuron", "DEFAULT_DT"]

MODES = ("exact", "if", "unrolled")
DEFAULT_DT = 1e-4
_SEMANTICS = {"exact": ("multispike", "nir"), "if": ("nir", "sinabs"), "unrolled": ("nir", "subtract")}


def require_nir():
    """Import ``nir`` or raise an ``ImportError`` that names the optional extra."""
    try:
        import nir  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("NIR export/import needs the optional dependencies nir, nirtorch and h5py: "
                          "pip install 'multispike[nir]'") from exc
    return nir


# ----------------------------------------------------------------------------------------------------
# Numeric helpers
# ----------------------------------------------------------------------------------------------------
def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())


def _full(value, shape: tuple[int, ...]) -> torch.Tensor:
    t = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    t = t.to("cpu", torch.float32)
    try:
        return torch.broadcast_to(t, shape).clone()
    except RuntimeError:
        raise NIRExportError(f"a neuron parameter of shape {tuple(t.shape)} does not broadcast to the layer's "
                             f"per-sample shape {shape}") from None


def _ge(c: torch.Tensor) -> torch.Tensor:
    """Largest float32 below ``c``: ``x > _ge(c)`` equals ``x >= c`` for every float32 ``x``."""
    return torch.nextafter(c.to(torch.float32), torch.tensor(-math.inf, dtype=torch.float32))


def _all(t: torch.Tensor, value: float) -> bool:
    return bool((t == value).all())


def _sanitize(name: str) -> str:
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    return out or "node"


# ----------------------------------------------------------------------------------------------------
# Module records for the exact round trip (node metadata; the graph itself never depends on it)
# ----------------------------------------------------------------------------------------------------
def module_record(m: nn.Module) -> dict:
    """Constructor config of a synaptic/normalisation module (Conv1d/2d, Linear, BatchNorm1d/2d)."""
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return {"class": type(m).__name__, "in_channels": m.in_channels, "out_channels": m.out_channels,
                "kernel_size": list(m.kernel_size), "stride": list(m.stride),
                "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
                "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None,
                "padding_mode": m.padding_mode}
    if isinstance(m, nn.Linear):
        return {"class": "Linear", "in_features": m.in_features, "out_features": m.out_features,
                "bias": m.bias is not None}
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return {"class": type(m).__name__, "num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
                "affine": m.affine, "track_running_stats": m.track_running_stats}
    raise TypeError(f"module_record: {type(m).__name__} is not recorded")


_MODULE_CLASSES = {"Conv1d": nn.Conv1d, "Conv2d": nn.Conv2d, "Linear": nn.Linear, "BatchNorm1d": nn.BatchNorm1d,
                   "BatchNorm2d": nn.BatchNorm2d}


def rebuild_module(record: dict, state: dict[str, np.ndarray]) -> nn.Module:
    """Inverse of :func:`module_record` plus ``state_dict`` arrays (raises ``ValueError`` if they do not fit)."""
    rec = dict(record)
    cls = rec.pop("class", None)
    if cls not in _MODULE_CLASSES:
        raise ValueError(f"unknown module class {cls!r} in metadata")
    if "padding" in rec and isinstance(rec["padding"], list):
        rec["padding"] = tuple(rec["padding"])
    for key in ("kernel_size", "stride", "dilation"):
        if key in rec:
            rec[key] = tuple(rec[key])
    module = _MODULE_CLASSES[cls](**rec)
    own = module.state_dict()
    if set(own) != set(state):
        raise ValueError(f"{cls} state keys {sorted(state)} do not match {sorted(own)}")
    with torch.no_grad():
        for k, v in state.items():
            t = torch.from_numpy(np.array(v))
            if t.numel() == own[k].numel() and t.dim() != own[k].dim():
                t = t.reshape(own[k].shape)  # 0-d states are stored as 1-element arrays
            if tuple(t.shape) != tuple(own[k].shape):
                raise ValueError(f"{cls} state {k!r} has shape {tuple(t.shape)}, expected {tuple(own[k].shape)}")
            own[k].copy_(t.to(own[k].dtype))
    module.eval()
    return module


def _state_arrays(m: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in m.state_dict().items()}


def modules_metadata(modules: list[nn.Module], prefix: str = "multispike") -> dict:
    """Node metadata that rebuilds ``modules`` (applied in order) bit for bit."""
    meta = {f"{prefix}.modules": json.dumps([module_record(m) for m in modules])}
    for i, m in enumerate(modules):
        for k, v in _state_arrays(m).items():
            # HDF5 cannot compress 0-d datasets; the module's own state shapes restore the rank on rebuild.
            meta[f"{prefix}.state.{i}.{k}"] = np.atleast_1d(v)
    return meta


def modules_from_metadata(meta: dict, prefix: str = "multispike") -> list[nn.Module]:
    records = json.loads(_as_str(meta[f"{prefix}.modules"]))
    mods = []
    for i, rec in enumerate(records):
        head = f"{prefix}.state.{i}."
        state = {k[len(head):]: np.asarray(v) for k, v in meta.items() if k.startswith(head)}
        mods.append(rebuild_module(rec, state))
    return mods


def _as_str(v) -> str:
    if isinstance(v, bytes):
        return v.decode("utf8")
    if isinstance(v, np.ndarray) and v.dtype.kind in "SOU":
        v = v.item()
        return v.decode("utf8") if isinstance(v, bytes) else str(v)
    return str(v)


@torch.no_grad()
def effective_affine(modules: list[nn.Module]) -> tuple[nn.Module, bool]:
    """One conv/linear equal to ``modules`` (a synapse optionally followed by its BatchNorm, folded)."""
    from ..convert.fuse import fold_bn_into

    syn = copy.deepcopy(modules[0])
    if len(modules) == 2:
        fold_bn_into(syn, copy.deepcopy(modules[1]))
        return syn, True
    return syn, False


@torch.no_grad()
def fold_input_scale(weight: torch.Tensor, p_in: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """``W`` with input channel/feature ``j`` multiplied by ``p_in[j]`` (conv weights ``[O, I/groups, ...]``)."""
    w = weight.detach().to("cpu", torch.float32).clone()
    O, Ig = w.shape[0], w.shape[1]
    if p_in.numel() == 1:
        return w * p_in.reshape(())
    if groups == 1:
        return w * p_in.reshape(1, Ig, *([1] * (w.dim() - 2)))
    per_out = torch.stack([p_in[(o // (O // groups)) * Ig:(o // (O // groups) + 1) * Ig] for o in range(O)])
    return w * per_out.reshape(O, Ig, *([1] * (w.dim() - 2)))


# ----------------------------------------------------------------------------------------------------
# Neuron emission (shared with the importer, which re-emits restored neurons to check them)
# ----------------------------------------------------------------------------------------------------
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


def _emit_ladder(nir, spec, shape, dt, base, theta, u0) -> NeuronEmission:
    L = spec.levels
    mem_node, conv = _membrane(nir, spec, shape, dt, False)
    gain = _full(spec.gain, shape)
    rho = _full(spec.rho, shape)
    fold_u0 = not spec.leaky
    nodes: dict[str, object] = {}
    roles: dict[str, str] = {}
    edges: list[tuple[str, str]] = []
    mem = f"{base}_mem"
    nodes[mem] = mem_node
    roles[mem] = "membrane"
    levels = []
    for k in range(1, L + 1):
        c = k * theta - u0 if fold_u0 else k * theta
        c = _ge(c) if spec.fire_ge else c
        name = f"{base}_level{k}"
        nodes[name] = nir.Threshold(threshold=_np(c))
        roles[name] = f"level{k}"
        edges.append((mem, name))
        levels.append(name)
    reset = f"{base}_reset"
    nodes[reset] = nir.Scale(scale=_np(-(rho.double() / gain.double()).float()))
    roles[reset] = "reset"
    for name in levels:
        edges.append((name, reset))
    edges.append((reset, mem))
    reason = (f"threshold ladder (§3.3(A)): {L} Threshold node(s) at k·θ" + (" − u0" if fold_u0 and spec.has_u0 else "")
              + ", Scale(−ρ) feedback as the subtractive reset" + (", u0 folded into the thresholds" if
                                                                  fold_u0 and spec.has_u0 else "")
              + ("; thresholds lowered by one float32 ulp so NIR's '>' equals '≥'" if spec.fire_ge else "")
              + ("; θ folded into the next layer's weights" if spec.payload is not None else ""))
    return NeuronEmission(nodes, edges, mem, levels, spec.payload, roles, "exact", True, reason, conv)


def _emit_lanes(nir, spec, shape, dt, base, theta, u0) -> NeuronEmission:
    S = spec.lanes
    mem_node, conv = _membrane(nir, spec, shape, dt, False)
    gain = _full(spec.gain, shape)
    rho = _full(spec.rho, shape)
    fold_u0 = not spec.leaky
    nodes: dict[str, object] = {}
    roles: dict[str, str] = {}
    edges: list[tuple[str, str]] = []
    mem = f"{base}_mem"
    nodes[mem] = mem_node
    roles[mem] = "membrane"
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
    reset = f"{base}_reset"
    nodes[reset] = nir.Scale(scale=_np(-(rho.double() / gain.double()).float()))
    roles[reset] = "reset"
    for pay in pays:
        edges.append((pay, reset))
    edges.append((reset, mem))
    # Reorder so the reset node follows the lanes in the dict (readability of the file only).
    reason = (f"one-hot lanes (§3.3(B)): {S} Threshold node(s) at 2^s·θ" + (" − u0" if fold_u0 and spec.has_u0 else "")
              + ", one-hot lanes z_s = a_s − a_{s+1} via Scale(±1), Scale(2^s) payloads summed at the next layer, "
                "Scale(−ρ) payload feedback as the soft reset"
              + ("; '≥' edges lowered by one float32 ulp" if (spec.fire_ge or spec.upper_ge) else ""))
    return NeuronEmission(nodes, edges, mem, pays, None, roles, "exact", True, reason, conv)


# ----------------------------------------------------------------------------------------------------
# Graph assembly
# ----------------------------------------------------------------------------------------------------
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


_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)
_SYN_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)


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
    full_rank = rank_in + lead
    start = m.start_dim if m.start_dim >= 0 else full_rank + m.start_dim
    end = m.end_dim if m.end_dim >= 0 else full_rank + m.end_dim
    if start < lead:
        raise NIRExportError("flatten")
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


@torch.no_grad()
def synapse_from_modules(modules: list[nn.Module], in_shape: tuple[int, ...], name: str = "") -> tuple[nn.Module, bool]:
    """The one conv/linear module NIR stores for ``modules``: a synapse with its BatchNorm folded in, or a
    standalone eval BatchNorm as a depthwise 1×1 conv (``(C, H, W)``) or a diagonal linear map (``(N,)``)."""
    head = modules[0]
    if not isinstance(head, _BN_TYPES):
        return effective_affine(modules)
    bn = head
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    scale = (gamma / std).detach().float()
    bias = (beta - bn.running_mean * gamma / std).detach().float()
    C = scale.numel()
    if len(in_shape) == 3:
        syn = nn.Conv2d(C, C, 1, groups=C, bias=True)
        syn.weight.data = scale.view(C, 1, 1, 1).clone()
    elif len(in_shape) == 1:
        syn = nn.Linear(C, C, bias=True)
        syn.weight.data = torch.diag(scale)
    else:
        raise NIRExportError(f"{name}: BatchNorm on per-sample shape {in_shape} has no NIR form")
    syn.bias.data = bias.clone()
    return syn, True


def _emit_synapse(b: _Builder, call: TracedCall, modules: list[nn.Module], value: list[_Term],
                  out_call: int) -> list[_Term]:
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


# ----------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------
def _prepare_unrolled(model: nn.Module, example_input: torch.Tensor, T: int):
    """Reparameterise LM-HT/M-HT layers into an L·T-step IF network (algorithms.md §2.7)."""
    from ..neurons.lmht import LMHTNeuron, MHTNeuron, ReparameterizedIF

    has_mht = any(isinstance(unwrap(m)[0], (LMHTNeuron, MHTNeuron)) for m in model.modules())
    has_rep = any(isinstance(m, ReparameterizedIF) for m in model.modules())
    if not has_mht:
        return model, None, ""
    try:
        from ..convert.lmht import reparameterize_lmht
    except ImportError as exc:  # pragma: no cover - sibling module absent
        raise NIRExportError("mode='unrolled' needs multispike.convert.lmht.reparameterize_lmht to fold the LM-HT "
                             "T-GIM and leak first; it is not available in this installation") from exc
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
            must add through :class:`~multispike.layers.ResidualAdd`. It is deep-copied and put in eval mode.
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

        >>> graph, report = export_to_nir(snn, torch.rand(4, 2, 16), mode="exact")   # doctest: +SKIP
        >>> print(report)                                                               # doctest: +SKIP
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
    original = copy.deepcopy(model).eval()
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
            out = _emit_synapse(b, call, mods, value, call.index)
            b.values[call.index] = out
            if call.index in fused_bn:
                b.values[fused_bn[call.index]] = out
            continue
        if isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            b.values[call.index] = _emit_avgpool(b, call, value)
            continue
        if isinstance(m, nn.Flatten):
            start, end = _flatten_dims(m, 1 if call.lead_out == 1 else 2, len(call.in_shapes[0]))
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
    convention = (f"dt = {dt:g} s per graph step" + (f" (sub-step dt' = dt/{L_sub} = {dt / L_sub:g} s)" if L_sub > 1
                                                     else "")
                  + "; I/IF: r = g/dt' so Euler v += dt·r·x = g·x; LI/LIF: τ = dt/(1−β), r = g/(1−β), "
                    "v_leak = c/(1−β) so Euler v ← β·v + g·x + c; NIR fires on '>' (thresholds of '≥' neurons "
                    "lowered by one float32 ulp); several edges into a node are summed")
    if L_sub > 1:
        convention = convention.replace("dt'", "dt'")
    else:
        convention = convention.replace("dt'", "dt")
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
        _measure(report, graph, original, work, traced, b, mode, sample_inputs if sample_inputs is not None
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


# ----------------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------------
def _batches(data):
    if isinstance(data, torch.Tensor):
        yield data
        return
    for item in data:
        yield item[0] if isinstance(item, (tuple, list)) else item


class _NirtorchRunner:
    """Adapter giving :func:`run_with_nirtorch` the ``run_with_events`` interface (output only, no events)."""

    def __init__(self, graph, literal) -> None:
        self.graph = graph
        self.literal = literal

    def run_with_events(self, x, _layers):
        from .nirtorch_ref import run_with_nirtorch

        return {}, run_with_nirtorch(self.graph, self.literal._prepare(x))


@torch.no_grad()
def _run_original(model: nn.Module, traced: TracedNetwork, layer_names: list[str], x: torch.Tensor,
                  sinabs_levels: dict[str, int]):
    """Per-layer events ``[T, B, ...]``, sinabs conditions and the final per-step output of the original."""
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    handles = []
    cores = {}
    for name in layer_names:
        core = unwrap(modules[name])[0]
        cores[name] = core
        if name in sinabs_levels and hasattr(core, "store_v_seq"):
            core.store_v_seq = True

        def hook(_m, _i, out, name=name):
            captured[name] = out
        handles.append(modules[name].register_forward_hook(hook))
    out_call = traced.calls[traced.output_call]
    target = out_call if out_call.kind != "readout" else traced.calls[out_call.inputs[0]]

    def final_hook(_m, _i, out):
        captured["__final__"] = out
    handles.append(modules[target.name].register_forward_hook(final_hook))
    try:
        reset_net(model)
        model(x)
    finally:
        for h in handles:
            h.remove()
    T = traced.T
    leads = {c.name: c.lead_out for c in traced.calls}
    events = {}
    conditions = {}
    for name in layer_names:
        y = captured[name]
        core = cores[name]
        y_seq = y.reshape(T, y.shape[0] // T, *y.shape[1:]) if leads.get(name, 2) == 1 else y
        events[name] = core.spike_events(y_seq).detach()
        if name in sinabs_levels and getattr(core, "v_seq", None) is not None:
            v = core.v_seq.reshape(y_seq.shape)
            theta = core.v_threshold.detach().to(v.dtype)
            conditions[name] = {"count_above_L": float((v >= theta).float().mean()),
                                "v_below_minus_theta": float((v < -theta).float().mean())}
        if name in sinabs_levels and hasattr(core, "store_v_seq"):
            core.store_v_seq = False
            core.v_seq = None
    fin = captured["__final__"]
    fin = fin.reshape(T, fin.shape[0] // T, *fin.shape[1:]) if target.lead_out == 1 else fin
    reset_net(model)
    return events, conditions, fin.detach()


def _measure(report: FidelityReport, graph, original: nn.Module, work: nn.Module, traced: TracedNetwork,
             b: _Builder, mode: str, data, nirtorch_check: bool = False) -> None:
    from ._import import import_from_nir

    layer_names = [lf.name for lf in report.layers]
    L_sub = report.substeps
    # For an unrolled export the reference is the original (LM-HT) network at the logical rate.
    ref_model = original
    ref_traced = traced
    if mode == "unrolled" and work is not original:
        ref_traced, _, _ = trace_network(original, next(iter(_batches(data))))
    sinabs_levels = {n: s.levels for n, s in b.layer_specs.items()
                     if mode == "if" and s.family == "ladder" and s.soft}
    nets = {}
    for sem in _SEMANTICS[mode]:
        if sem == "multispike":
            nets[sem] = import_from_nir(graph, restore=True)
        else:
            nets[sem] = import_from_nir(graph, restore=False, if_semantics=("nir" if sem == "nir" else sem))
    runners = dict(nets)
    if nirtorch_check:
        literal = nets.get("nir") or import_from_nir(graph, restore=False)
        runners["nirtorch"] = _NirtorchRunner(graph, literal)
    nets = runners
    stats = {sem: {"agree": {n: [0, 0] for n in layer_names}, "maxdiff": {n: 0.0 for n in layer_names},
                   "out_max": 0.0, "out_absmax": 0.0, "arg": [0, 0], "bitwise": True} for sem in nets}
    cond_acc: dict[str, list[float]] = {}
    for x in _batches(data):
        ref_events, conditions, ref_out = _run_original(ref_model, ref_traced, layer_names, x, sinabs_levels)
        for name, c in conditions.items():
            acc = cond_acc.setdefault(name, [0.0, 0.0, 0])
            acc[0] += c["count_above_L"]
            acc[1] += c["v_below_minus_theta"]
            acc[2] += 1
        for sem, net in nets.items():
            ev, out_seq = net.run_with_events(x, {n: b.layer_nodes[n] for n in layer_names})
            st = stats[sem]
            for n in (layer_names if ev else []):
                e = ev[n]
                r = ref_events[n]
                if L_sub > 1:
                    e = e.reshape(e.shape[0] // L_sub, L_sub, *e.shape[1:]).sum(1)
                if e.shape != r.shape:
                    raise RuntimeError(f"internal: layer {n} events {tuple(e.shape)} vs {tuple(r.shape)}")
                d = (e - r).abs()
                st["agree"][n][0] += int((d == 0).sum())
                st["agree"][n][1] += d.numel()
                st["maxdiff"][n] = max(st["maxdiff"][n], float(d.max()) if d.numel() else 0.0)
            o = out_seq
            if L_sub > 1:
                o = o.reshape(o.shape[0] // L_sub, L_sub, *o.shape[1:]).sum(1)
            if o.shape != ref_out.shape:
                raise RuntimeError(f"internal: output {tuple(o.shape)} vs reference {tuple(ref_out.shape)}")
            st["bitwise"] = st["bitwise"] and torch.equal(o, ref_out)
            st["out_max"] = max(st["out_max"], float((o - ref_out).abs().max()))
            st["out_absmax"] = max(st["out_absmax"], float(ref_out.abs().max()))
            ref_logits = ref_out.sum(0) if ref_out.dim() >= 2 else ref_out
            logits = o.sum(0) if o.dim() >= 2 else o
            if ref_logits.dim() >= 2:
                a, c = ref_logits.argmax(-1), logits.argmax(-1)
                st["arg"][0] += int((a == c).sum())
                st["arg"][1] += a.numel()
    for lf in report.layers:
        for sem, st in stats.items():
            agree, total = st["agree"][lf.name]
            if total == 0:
                continue
            lf.agreement[sem] = agree / total if total else 1.0
            lf.max_event_diff[sem] = st["maxdiff"][lf.name]
        if lf.name in cond_acc:
            acc = cond_acc[lf.name]
            lf.conditions = {"count_above_L": acc[0] / acc[2], "v_below_minus_theta": acc[1] / acc[2]}
    for sem, st in stats.items():
        n_arg = st["arg"][1]
        report.outputs.append(OutputAgreement(semantics=sem, samples=n_arg, max_abs_diff=st["out_max"],
                                              max_abs=st["out_absmax"],
                                              argmax_agreement=st["arg"][0] / n_arg if n_arg else 1.0,
                                              bitwise=bool(st["bitwise"])))


# The importer lives in its own module; re-exported here so ``multispike.export.nir`` is the one NIR entry point.
from ._import import NIRImportError, NIRNetwork, import_from_nir, read_nir  # noqa: E402

__all__ += ["import_from_nir", "NIRNetwork", "NIRImportError", "read_nir"]
