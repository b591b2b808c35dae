"""Energy models on top of an :class:`~multispike.metrics.opcount.OpCountResult` (algorithms.md §6).

Each function names the convention it implements; all energies are per sample, in µJ.

* :func:`diet_energy` - M-LIF/DIET eq. (11), §6.2: ``E_ANN = E_MAC·Σ #ANN_ops``,
  ``E_SNN = E_MAC·#SNN_ops,1 + E_AC·Σ_{l≥2} #SNN_ops,l`` for static images (direct encoding) or
  ``E_AC·Σ_l #SNN_ops,l`` for event data, and ``δ = E_ANN / E_SNN``.
* :func:`sop_energy` - LM-HT / Spikformer SOPs, §6.3: ``E = E_AC · SOPs`` over every synaptic layer but the
  first, with a spike of count k costing k (spike counts, not θ-weighted payloads).
* :func:`sdt_energy` - spike-driven transformer, §6.4 (structure recalled, **[verify]** against the paper):
  ``E = E_MAC·FL¹ + E_AC·(Σ_{n≥2} T·fr_n·FL_n) + E_SDSA``.
* :func:`value_weighted_energy` - multispike's own count: analog MACs at ``E_MAC``, value-weighted accumulates
  with exact fan-out at ``E_AC``, additions (pooling, residuals, attention) at ``E_AC``.
* :func:`neurobench_energy` - NeuroBench's effective MACs/ACs priced with the same constants.
* :func:`memory_energy` - a configurable memory-access model, §6.5. **multispike model, not the paper's**:
  MLIF-P's App. A.5 is cut off in our copy and this does not reproduce its Table 6.

Constants (Horowitz ISSCC 2014, 45 nm, 0.9 V): FP32 MAC 4.6 pJ, FP32 add (AC) 0.9 pJ; presets ``fp16``
(1.5 / 0.4 pJ) and ``int8`` (0.23 / 0.03 pJ) match SpikingJelly's ``ComputeEnergyCostConfig``.

Example::

    >>> from multispike.metrics import OpCounter, diet_energy
    >>> # with OpCounter(model) as oc: model(x)
    >>> # diet_energy(oc.result())["delta"]
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from .opcount import LayerOps, OpCountResult

__all__ = ["EnergyConstants", "ENERGY_PRESETS", "get_constants", "MemoryModel", "diet_energy", "sop_energy",
           "sdt_energy", "value_weighted_energy", "neurobench_energy", "memory_energy", "energy_report",
           "PJ_PER_UJ"]

PJ_PER_UJ = 1e6


@dataclass(frozen=True)
class EnergyConstants:
    """Energy per operation in picojoules."""

    name: str
    e_mac: float
    e_ac: float
    source: str = ""

    def __post_init__(self) -> None:
        for k in ("e_mac", "e_ac"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"EnergyConstants.{k} must be a finite number >= 0 (pJ), got {v!r}")


ENERGY_PRESETS: dict[str, EnergyConstants] = {
    "45nm": EnergyConstants("45nm", 4.6, 0.9, "Horowitz ISSCC 2014, 45 nm FP32: MAC = 3.7 mult + 0.9 add; AC = add"),
    "fp16": EnergyConstants("fp16", 1.5, 0.4, "45 nm FP16 (SpikingJelly ComputeEnergyCostConfig preset)"),
    "int8": EnergyConstants("int8", 0.23, 0.03, "45 nm INT8: 0.2 mult + 0.03 add (SpikingJelly preset)"),
}


def get_constants(spec: str | EnergyConstants | Mapping[str, float] | tuple[float, float] = "45nm") -> EnergyConstants:
    """Resolve a preset name (``45nm``, ``fp16``, ``int8``), an :class:`EnergyConstants`, a mapping with
    ``e_mac``/``e_ac`` or a ``(e_mac, e_ac)`` pair (pJ)."""
    if isinstance(spec, EnergyConstants):
        return spec
    if isinstance(spec, str):
        key = spec.lower()
        if key not in ENERGY_PRESETS:
            raise ValueError(f"unknown energy preset {spec!r}; choose one of {', '.join(ENERGY_PRESETS)} or pass "
                             f"(e_mac_pJ, e_ac_pJ)")
        return ENERGY_PRESETS[key]
    if isinstance(spec, Mapping):
        return EnergyConstants(str(spec.get("name", "custom")), float(spec["e_mac"]), float(spec["e_ac"]),
                               str(spec.get("source", "user-supplied")))
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return EnergyConstants("custom", float(spec[0]), float(spec[1]), "user-supplied")
    raise TypeError(f"energy constants must be a preset name, EnergyConstants, mapping or (e_mac, e_ac), got {spec!r}")


def _ops(ops: OpCountResult | Mapping[str, Any]) -> OpCountResult:
    if isinstance(ops, OpCountResult):
        return ops
    if isinstance(ops, Mapping) and "layers" in ops:
        return OpCountResult.from_dict(dict(ops))
    raise TypeError(f"expected an OpCountResult or its to_dict() form, got {type(ops).__name__}")


def _uj(pj: float) -> float:
    return pj / PJ_PER_UJ


def _synaptic(res: OpCountResult) -> list[LayerOps]:
    syn = sorted(res.synaptic, key=lambda l: l.order)
    if not syn:
        raise ValueError("no conv/linear layer was counted; run a forward pass inside the OpCounter first")
    return syn


def _finite(v: float) -> float:
    return 0.0 if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def diet_energy(ops: OpCountResult | Mapping, constants: Any = "45nm", encoding: str = "static") -> dict[str, Any]:
    """MLIF-P eq. (11) (algorithms.md §6.2).

    Args:
        ops: an op count.
        constants: energy preset or constants.
        encoding: ``"static"`` (direct encoding: the first layer is costed as MACs) or ``"dvs"`` (event input:
            every layer is costed as ACs, as MLIF-P §5.2.3 does even for resized, non-binary frames).

    Returns:
        ``{"e_ann_uj", "e_snn_uj", "delta", "layers": [...]}`` with ``#ANN_ops``, ``r_l``, ``#SNN_ops`` and
        the energy of every synaptic layer.
    """
    if encoding not in ("static", "dvs"):
        raise ValueError(f"encoding must be 'static' (direct encoding) or 'dvs' (event input), got {encoding!r}")
    c = get_constants(constants)
    res = _ops(ops)
    rows, e_ann, e_snn = [], 0.0, 0.0
    for i, l in enumerate(_synaptic(res)):
        r = _finite(l.r)
        mac = encoding == "static" and i == 0
        repeated = mac and not l.input_spiking and 0 < float(l.T) < float(l.network_T)
        if repeated:
            # The implementation ran the encoding layer once and repeated its output (zoo stem); MLIF-P costs
            # it at every step (r_1 = T·non-zero fraction), so scale to the network's T.
            r *= float(l.network_T) / float(l.T)
        snn_ops = r * l.dense_per_step
        e = (c.e_mac if mac else c.e_ac) * snn_ops
        e_ann += c.e_mac * l.dense_per_step
        e_snn += e
        rows.append({"name": l.name, "ann_ops": l.dense_per_step, "r": r, "snn_ops": snn_ops,
                     "cost": "MAC" if mac else "AC", "repeated_encoding": repeated,
                     "e_ann_uj": _uj(c.e_mac * l.dense_per_step), "e_snn_uj": _uj(e)})
    return {"convention": "diet", "encoding": encoding, "constants": asdict(c), "e_ann_uj": _uj(e_ann),
            "e_snn_uj": _uj(e_snn), "delta": _ratio(e_ann, e_snn), "layers": rows}


def sop_energy(ops: OpCountResult | Mapping, constants: Any = "45nm") -> dict[str, Any]:
    """LM-HT / Spikformer SOPs (algorithms.md §6.3): ``E = E_AC · SOPs``.

    SOPs are the value-weighted accumulates (spike counts times exact fan-out) of every synaptic layer except
    the first, which LMHT-C skips (``conv1``). A later layer whose input is not a spike train is listed in
    ``analog_layers`` and its MACs are priced at ``E_MAC`` in ``e_analog_uj`` (LMHT-C would count its input
    values as if they were spikes).
    """
    c = get_constants(constants)
    syn = _synaptic(_ops(ops))
    sops = sum(l.acs for l in syn[1:] if l.input_spiking)
    analog = [l for l in syn[1:] if not l.input_spiking]
    e_analog = c.e_mac * sum(l.analog for l in analog)
    return {"convention": "lmht_sop", "constants": asdict(c), "sops": sops, "e_uj": _uj(c.e_ac * sops),
            "first_layer": syn[0].name, "first_layer_excluded": True,
            "analog_layers": [l.name for l in analog], "e_analog_uj": _uj(e_analog),
            "layers": [{"name": l.name, "sops": l.acs, "e_uj": _uj(c.e_ac * l.acs)}
                       for l in syn[1:] if l.input_spiking]}


def sdt_energy(ops: OpCountResult | Mapping, constants: Any = "45nm") -> dict[str, Any]:
    """Spike-driven transformer energy (algorithms.md §6.4; structure recalled - **[verify]**).

    ``E = E_MAC·FL_conv¹ + E_AC·(Σ_{n≥2} FL_conv^n·T·fr^n + Σ_m FL_linear^m·T·fr^m) + E_SDSA``, with ``FL`` the
    per-step dense MACs, ``T·fr = r_l`` the input firing ratio over all steps, and
    ``E_SDSA = E_AC·(token-sum accumulates + mask operations)`` of every spike-driven attention block.
    The first layer is costed once (one step), as the SDT paper does for the repeated static image.
    """
    c = get_constants(constants)
    res = _ops(ops)
    syn = _synaptic(res)
    e_first = c.e_mac * syn[0].dense_per_step
    e_rest = c.e_ac * sum(_finite(l.r) * l.dense_per_step for l in syn[1:])
    attn = [l for l in res.layers if l.kind == "attention"]
    sdsa_ops = sum(l.acs + l.extra.get("mask_ops", 0.0) for l in attn)
    e_sdsa = c.e_ac * sdsa_ops
    return {"convention": "sdt", "constants": asdict(c), "e_first_uj": _uj(e_first), "e_synaptic_uj": _uj(e_rest),
            "sdsa_ops": sdsa_ops, "e_sdsa_uj": _uj(e_sdsa), "e_uj": _uj(e_first + e_rest + e_sdsa),
            "attention_blocks": len(attn), "status": "structure recalled from the SDT paper; verify before publishing"}


def value_weighted_energy(ops: OpCountResult | Mapping, constants: Any = "45nm",
                          include_additions: bool = True) -> dict[str, Any]:
    """multispike's count: ``E = E_MAC·analog MACs + E_AC·(value-weighted ACs [+ additions])``.

    Analog MACs are the dense MACs of layers fed by non-spike tensors, at every step they ran (MACs·T for a
    direct-encoding first layer). Additions are pooling windows, residual additions and spike-driven attention
    token sums, event-driven when their input is a spike train.
    """
    c = get_constants(constants)
    res = _ops(ops)
    rows, e_mac, e_ac, e_add = [], 0.0, 0.0, 0.0
    for l in sorted(res.layers, key=lambda l: l.order):
        if l.op == "MAC":
            em, ea = c.e_mac * l.analog, c.e_ac * l.acs
            e_mac += em
            e_ac += ea
            rows.append({"name": l.name, "type": l.type, "input_source": l.input_source, "e_mac_uj": _uj(em),
                         "e_ac_uj": _uj(ea), "e_add_uj": 0.0})
        elif include_additions:
            ed = c.e_ac * (l.acs + l.analog)
            e_add += ed
            rows.append({"name": l.name, "type": l.type, "input_source": l.input_source, "e_mac_uj": 0.0,
                         "e_ac_uj": 0.0, "e_add_uj": _uj(ed)})
    syn = _synaptic(res)
    e_ann = c.e_mac * sum(l.dense_per_step for l in syn)
    total = e_mac + e_ac + e_add
    return {"convention": "multispike", "constants": asdict(c), "e_mac_uj": _uj(e_mac), "e_ac_uj": _uj(e_ac),
            "e_add_uj": _uj(e_add), "e_uj": _uj(total), "e_ann_uj": _uj(e_ann), "delta": _ratio(e_ann, total),
            "include_additions": include_additions, "layers": rows}


def neurobench_energy(ops: OpCountResult | Mapping, constants: Any = "45nm") -> dict[str, Any]:
    """NeuroBench's ``Effective_MACs``/``Effective_ACs`` priced with the same constants (layers counted with
    ``neurobench=False`` are left out)."""
    c = get_constants(constants)
    t = _ops(ops).totals()
    e = c.e_mac * t["neurobench_effective_macs"] + c.e_ac * t["neurobench_effective_acs"]
    return {"convention": "neurobench", "constants": asdict(c), "effective_macs": t["neurobench_effective_macs"],
            "effective_acs": t["neurobench_effective_acs"], "dense": t["neurobench_dense"], "e_uj": _uj(e)}


@dataclass(frozen=True)
class MemoryModel:
    """multispike memory-access model (ours, not the paper's; algorithms.md §6.5 [inferred]).

    Accesses per sample, each priced at ``e_access_pj`` per ``word_bits``-bit word (H14: a 64-bit read from
    an 8 kB SRAM costs 10 pJ; 32 kB: 20 pJ; 1 MB: 100 pJ [verify]):

    * weight reads: SNN - one weight per (non-zero input, connection), i.e. event-driven; analog layers one
      per MAC. ANN - one per MAC.
    * membrane: one read and one write of ``state_bits`` per neuron per step (SNN only).
    * outputs: SNN - ``spike_bits`` per neuron per step (default ``ceil(log2(levels+1))`` for a count neuron,
      ``lanes`` bits for a lane neuron); ANN - ``activation_bits`` per neuron.
    """

    e_access_pj: float = 10.0
    word_bits: int = 64
    weight_bits: int = 32
    state_bits: int = 32
    activation_bits: int = 32
    spike_bits: int | None = None
    label: str = "multispike memory-access model (ours, not the paper's)"

    def __post_init__(self) -> None:
        if not math.isfinite(self.e_access_pj) or self.e_access_pj < 0:
            raise ValueError(f"MemoryModel.e_access_pj must be >= 0 (pJ per word), got {self.e_access_pj}")
        for k in ("word_bits", "weight_bits", "state_bits", "activation_bits"):
            if getattr(self, k) < 1:
                raise ValueError(f"MemoryModel.{k} must be >= 1, got {getattr(self, k)}")


def memory_energy(ops: OpCountResult | Mapping, model: MemoryModel | None = None) -> dict[str, Any]:
    """Apply :class:`MemoryModel` to an op count (SNN and iso-architecture ANN, per sample, µJ)."""
    mm = model or MemoryModel()
    res = _ops(ops)
    syn = _synaptic(res)
    words = lambda bits: bits / mm.word_bits  # noqa: E731
    snn_w = sum((l.acs_nonzero if l.input_spiking else l.analog) for l in syn) * mm.weight_bits
    ann_w = sum(l.dense_per_step for l in syn) * mm.weight_bits
    snn_state = snn_out = ann_out = 0.0
    for n in res.neurons:
        steps = n.neurons * float(n.T)
        bits = mm.spike_bits or (n.lanes if n.lanes > 1 else max(1, math.ceil(math.log2(n.levels + 1))))
        snn_state += 2 * steps * mm.state_bits
        snn_out += steps * bits
        ann_out += n.neurons * mm.activation_bits
    e = lambda bits: _uj(words(bits) * mm.e_access_pj)  # noqa: E731
    snn = {"weights_uj": e(snn_w), "membrane_uj": e(snn_state), "outputs_uj": e(snn_out)}
    ann = {"weights_uj": e(ann_w), "outputs_uj": e(ann_out)}
    snn["e_uj"] = sum(snn.values())
    ann["e_uj"] = sum(ann.values())
    return {"convention": "memory", "label": mm.label, "model": asdict(mm), "snn": snn, "ann": ann}


def energy_report(ops: OpCountResult | Mapping, constants: Any = "45nm", encoding: str = "static",
                  memory: MemoryModel | None | bool = None) -> dict[str, Any]:
    """Every convention side by side (JSON-serialisable). ``memory=False`` leaves the memory model out;
    ``None`` uses the default :class:`MemoryModel`."""
    res = _ops(ops)
    out = {"constants": asdict(get_constants(constants)), "encoding": encoding,
           "diet": diet_energy(res, constants, encoding),
           "multispike": value_weighted_energy(res, constants),
           "lmht_sop": sop_energy(res, constants),
           "neurobench": neurobench_energy(res, constants)}
    if any(l.kind == "attention" for l in res.layers):
        out["sdt"] = sdt_energy(res, constants)
    if memory is not False:
        out["memory"] = memory_energy(res, memory if isinstance(memory, MemoryModel) else None)
    return out
