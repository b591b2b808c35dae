"""The fidelity report every NIR export returns: per layer what was written, whether it is exact and why, and
the *measured* agreement of the exported graph with the original network on sample inputs."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

__all__ = ["LayerFidelity", "OutputAgreement", "FidelityReport", "SEMANTICS_HELP"]

SEMANTICS_HELP = {
    "multispike": "import_from_nir with restore=True: multispike neurons and layers rebuilt from the node metadata "
                  "after checking it against the graph (the round trip)",
    "nir": "literal NIR semantics (strict '>', reset to v_reset, Euler I/LI) as any conforming runtime computes "
           "them; import_from_nir(restore=False)",
    "sinabs": "nir.IF/LIF read as sinabs does: floor(v/θ) spikes per step, subtractive reset, v ≥ −θ",
    "subtract": "nir.IF/LIF with binary spikes and a subtractive reset (Speck, sinabs SingleSpike)",
    "nirtorch": "nirtorch's own graph executor, one step per call, literal node semantics (an independent check)",
}


@dataclass
class LayerFidelity:
    """One spiking layer of an export.

    Attributes:
        name: module name in the original network.
        neuron: class of the neuron (``IFNeuron``, ``MHTNeuron``, ...).
        nodes: NIR node names written for it.
        mode: export mode.
        convention: the dt/r convention of its nodes.
        exact: whether the written nodes reproduce the layer exactly under NIR semantics.
        fidelity: ``"exact"``, ``"approximate"`` or ``"sinabs-multispike"`` (exact only on a multi-spike,
            subtractive-reset backend when the conditions hold).
        reason: why (what is lost when not exact).
        agreement: per semantics, the fraction of (step, sample, neuron) entries whose event count equals the
            original's, measured on the sample inputs (window sums for an unrolled export).
        max_event_diff: per semantics, the largest absolute event-count difference.
        conditions: measured conditions of the sinabs route (``count_above_L``: fraction of entries whose
            unclipped count would exceed L; ``v_below_minus_theta``: fraction whose membrane drops below −θ).
    """

    name: str
    neuron: str
    nodes: list[str]
    mode: str
    convention: str
    exact: bool
    fidelity: str
    reason: str
    agreement: dict[str, float] = field(default_factory=dict)
    max_event_diff: dict[str, float] = field(default_factory=dict)
    conditions: dict[str, float] = field(default_factory=dict)


@dataclass
class OutputAgreement:
    """Network output of the exported graph under one semantics versus the original network."""

    semantics: str
    samples: int
    max_abs_diff: float
    max_abs: float
    argmax_agreement: float
    bitwise: bool


@dataclass
class FidelityReport:
    """What an NIR export wrote and how faithful it measurably is (see :func:`multispike.export.export_to_nir`)."""

    mode: str
    dt: float
    convention: str
    T: int
    substeps: int
    readout: str
    input_layout: str
    layers: list[LayerFidelity] = field(default_factory=list)
    outputs: list[OutputAgreement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    path: str | None = None
    nodes: int = 0
    edges: int = 0

    @property
    def exact(self) -> bool:
        """True when every spiking layer is exact under NIR semantics."""
        return all(layer.exact for layer in self.layers)

    def output(self, semantics: str) -> OutputAgreement | None:
        return next((o for o in self.outputs if o.semantics == semantics), None)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["exact"] = self.exact
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=float)

    def __str__(self) -> str:
        head = (f"NIR export (mode={self.mode!r}, dt={self.dt:g} s, T={self.T} graph steps"
                + (f" = {self.substeps} sub-steps x {self.T // max(self.substeps, 1)}" if self.substeps > 1 else "")
                + f", readout={self.readout}, input={self.input_layout}): {self.nodes} nodes, {self.edges} edges"
                + (f", written to {self.path}" if self.path else ""))
        lines = [head, f"convention: {self.convention}"]
        sems = [o.semantics for o in self.outputs]
        rows = [["layer", "neuron", "fidelity", *[f"agree[{s}]" for s in sems], "nodes"]]
        for layer in self.layers:
            rows.append([layer.name, layer.neuron, layer.fidelity,
                         *[(f"{layer.agreement[s]:.6f}" if s in layer.agreement else "-") for s in sems],
                         str(len(layer.nodes))])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        table = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        table.insert(1, "  ".join("-" * w for w in widths))
        lines += table
        lines.append("per-layer reasons:")
        for layer in self.layers:
            cond = ""
            if layer.conditions:
                cond = " [measured: " + ", ".join(f"{k}={v:.4g}" for k, v in layer.conditions.items()) + "]"
            lines.append(f"  {layer.name}: {layer.reason}{cond}")
            lines.append(f"    nodes: {', '.join(layer.nodes)}; {layer.convention}")
        lines.append("measured outputs (exported graph vs original network):")
        for o in self.outputs:
            lines.append(f"  {o.semantics:<10} max|Δ| = {o.max_abs_diff:.4g} (max|out| {o.max_abs:.4g}), argmax "
                         f"agreement {o.argmax_agreement:.4f} on {o.samples} samples"
                         + (", bit-identical" if o.bitwise else "") + f"  ({SEMANTICS_HELP.get(o.semantics, '')})")
        for n in self.notes:
            lines.append(f"note: {n}")
        return "\n".join(lines)
