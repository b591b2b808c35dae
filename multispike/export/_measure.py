"""Measured fidelity: run the exported graph (literally, restored, or under a backend's reading of ``nir.IF``)
next to the original network and fill in the :class:`~multispike.export.report.FidelityReport`."""
from __future__ import annotations

import torch
from torch import nn

from ..neurons.base import reset_net
from ._neurons import unwrap
from ._trace import TracedNetwork, trace_network
from .report import FidelityReport, OutputAgreement

__all__ = ["measure_fidelity", "SEMANTICS_BY_MODE"]

_SEMANTICS = {"exact": ("multispike", "nir"), "if": ("nir", "sinabs"), "unrolled": ("nir", "subtract")}


def _batches(data):
    if isinstance(data, torch.Tensor):
        yield data.detach().cpu()
        return
    for item in data:
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"export_to_nir: sample_inputs must yield tensors or (x, y) pairs, got {type(x).__name__}")
        yield x.detach().cpu()


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


def measure_fidelity(report: FidelityReport, graph, original: nn.Module, work: nn.Module, traced: TracedNetwork,
                     b, mode: str, data, nirtorch_check: bool = False) -> None:
    """Fill ``report`` with per-layer event agreement and output agreement of ``graph`` versus ``original``.

    ``b`` is the exporter's builder (layer -> node names and neuron specs); ``work`` is the network that was
    traced (the reparameterised one for ``mode="unrolled"``, whose window sums are compared with ``original``).
    """
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


SEMANTICS_BY_MODE = _SEMANTICS
