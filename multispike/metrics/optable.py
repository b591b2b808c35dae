"""Result types of operation counting: per-layer rows, neuron activity and the network table.

The counting conventions are defined in :mod:`multispike.metrics.opcount`; ``CONVENTIONS`` names them in
every saved result so a number never travels without its definition.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["CONVENTIONS", "LayerOps", "NeuronOps", "OpCountResult", "format_count"]

CONVENTIONS = {
    "multispike": "value-weighted events x exact fan-out (a spike of count k = k accumulates; a fired one-hot lane "
                  "= 1); layers fed by non-spike tensors cost dense MACs at every step they run",
    "neurobench": "NeuroBench SynapticOperations: input is spiking only if all values are in {-1,0,1}; non-zero "
                  "inputs binarised, times non-zero weights; Dense = all real connections",
    "diet": "MLIF-P eq. (11): #SNN_ops = r_l * #ANN_ops, r_l = non-zero inputs over all steps per input element "
            "(= active lanes for binary or one-hot spikes, as MLIF-C counts nnz of the merged input)",
}


def format_count(v: float | None) -> str:
    """Human-readable count: 338.4M, 1.77M, 12.3k."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    a = abs(v)
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:.4g}{suf}"
    return f"{v:.4g}"


@dataclass
class LayerOps:
    """Operations of one counted layer, per sample (averaged over all samples seen).

    ``op`` is ``"MAC"`` for synaptic layers (conv, linear) and ``"ADD"`` for pools, residual additions and
    attention. ``dense_per_step`` is the ANN count at one step (``#ANN_ops`` of §6.2 for synaptic layers);
    ``acs`` are value-weighted accumulates (only when the input is a spike train); ``analog`` are dense
    operations of a layer fed by a non-spike tensor (MACs·T for a direct-encoding first layer).
    """

    name: str
    type: str
    kind: str
    op: str
    order: int
    T: float = 0
    network_T: float = 0                 # largest T of any spiking layer in the same forward passes
    calls: int = 0
    samples: float = 0
    input_spiking: bool = True
    input_source: str | None = None
    in_elements: int = 0                 # input elements per sample and step
    dense_per_step: float = 0.0
    dense: float = 0.0
    connections_per_step: float = 0.0    # real connections (padding taps excluded)
    input_nonzero: float = 0.0
    input_events: float = 0.0
    input_active: float = 0.0           # active lanes (spike input) or non-zeros (analog input), all steps
    acs: float = 0.0
    acs_lanes: float = 0.0
    acs_nonzero: float = 0.0            # non-zero inputs x fan-out (one weight read per active input)
    analog: float = 0.0
    nb_spiking: bool | None = None
    nb_effective: float | None = None
    nb_dense: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def r(self) -> float:
        """DIET firing ratio ``r_l``: non-zero inputs over all steps per input element (can exceed 1).

        This is what MLIF-C counts (``nnz`` of the merged input per step); for binary or one-hot spikes fed
        directly it equals the active input lanes of §6.2, and for the analog first layer it is
        ``T·(fraction of non-zero pixels)``."""
        return self.input_nonzero / self.in_elements if self.in_elements else float("nan")

    @property
    def diet_ops(self) -> float:
        """``#SNN_ops = r_l · #ANN_ops`` (MLIF-P eq. (11))."""
        return self.r * self.dense_per_step

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["r"] = None if math.isnan(self.r) else self.r
        d["diet_ops"] = None if math.isnan(self.diet_ops) else self.diet_ops
        return d


@dataclass
class NeuronOps:
    """Activity of one spiking layer as the op counter saw it (per sample)."""

    name: str
    type: str
    neurons: int = 0
    T: float = 0
    samples: float = 0
    levels: int = 1
    lanes: int = 1
    events: float = 0.0
    active_lanes: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class OpCountResult:
    """Per-layer operation table plus what was not counted and why."""

    layers: list[LayerOps]
    neurons: list[NeuronOps]
    unsupported: list[dict[str, str]]
    not_counted: dict[str, dict[str, Any]]
    samples: float
    conventions: dict[str, str] = field(default_factory=lambda: dict(CONVENTIONS))

    @property
    def synaptic(self) -> list[LayerOps]:
        return [l for l in self.layers if l.op == "MAC"]

    def totals(self) -> dict[str, float]:
        """Network totals per sample, one entry per convention."""
        syn = self.synaptic
        adds = [l for l in self.layers if l.op == "ADD"]
        nb = [l for l in syn if l.nb_effective is not None]
        return {
            "dense_macs_per_step": sum(l.dense_per_step for l in syn),
            "first_layer_macs_per_step": syn[0].dense_per_step if syn else 0.0,
            "dense_macs": sum(l.dense for l in syn),
            "analog_macs": sum(l.analog for l in syn),
            "acs": sum(l.acs for l in syn),
            "acs_lanes": sum(l.acs_lanes for l in syn),
            "additions_dense": sum(l.dense for l in adds),
            "additions": sum(l.acs + l.analog for l in adds),
            "diet_snn_ops": sum(l.diet_ops for l in syn if not math.isnan(l.diet_ops)),
            "neurobench_effective_macs": sum(l.nb_effective for l in nb if not l.nb_spiking),
            "neurobench_effective_acs": sum(l.nb_effective for l in nb if l.nb_spiking),
            "neurobench_dense": sum(l.nb_dense or 0.0 for l in nb),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (``OpCountResult.from_dict`` reads it back)."""
        return {"samples": self.samples, "conventions": self.conventions, "totals": self.totals(),
                "layers": [l.to_dict() for l in self.layers], "neurons": [n.to_dict() for n in self.neurons],
                "unsupported": self.unsupported, "not_counted": self.not_counted}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OpCountResult":
        fields_l = LayerOps.__dataclass_fields__
        layers = [LayerOps(**{k: v for k, v in l.items() if k in fields_l}) for l in d["layers"]]
        fields_n = NeuronOps.__dataclass_fields__
        neurons = [NeuronOps(**{k: v for k, v in n.items() if k in fields_n}) for n in d.get("neurons", [])]
        return cls(layers, neurons, list(d.get("unsupported", [])), dict(d.get("not_counted", {})),
                   d.get("samples", 0), dict(d.get("conventions", CONVENTIONS)))

    def table(self) -> str:
        """Markdown table, one row per counted layer, with the totals and the unsupported list."""
        head = ("| layer | type | T | input | dense/step | ACs (value-weighted) | analog MACs | r_l | "
                "NeuroBench | NB effective |")
        rows = [head, "|" + "---|" * 10]
        for l in self.layers:
            src = ("spikes" if l.input_spiking else "analog")
            nb = "-" if l.nb_spiking is None else ("AC" if l.nb_spiking else "MAC")
            rows.append(f"| {l.name} | {l.type} ({l.op}) | {_fmt_T(l.T)} | {src} | {format_count(l.dense_per_step)} | "
                        f"{format_count(l.acs)} | {format_count(l.analog)} | "
                        f"{'-' if math.isnan(l.r) else f'{l.r:.3g}'} | {nb} | {format_count(l.nb_effective)} |")
        t = self.totals()
        rows.append("")
        rows.append(f"Totals per sample: dense MACs/step {format_count(t['dense_macs_per_step'])} "
                    f"(first layer {format_count(t['first_layer_macs_per_step'])}), analog MACs "
                    f"{format_count(t['analog_macs'])}, value-weighted ACs {format_count(t['acs'])}, additions "
                    f"{format_count(t['additions'])}; NeuroBench effective MACs "
                    f"{format_count(t['neurobench_effective_macs'])} / ACs "
                    f"{format_count(t['neurobench_effective_acs'])}"
                    f" / dense {format_count(t['neurobench_dense'])}.")
        if self.unsupported:
            rows.append("")
            rows.append("Unsupported (not counted): " + ", ".join(f"{u['name']} ({u['type']}: {u['reason']})"
                                                              for u in self.unsupported))
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


def _fmt_T(T: float) -> str:
    return str(int(T)) if float(T).is_integer() else f"{T:.3g}"
