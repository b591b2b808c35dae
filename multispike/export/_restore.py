"""Restoration of original multispike modules from node metadata, trusted only where re-exporting them
reproduces the graph's nodes exactly (the graph never depends on the metadata)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torch import nn

from ._common import _meta, _meta_str
from ._emit import emit_neuron
from ._neurons import analyze, rebuild_neuron
from ._records import fold_input_scale, modules_from_metadata, synapse_from_modules

__all__ = ["apply_restoration"]


def _arrays_equal(a, b) -> bool:
    a = np.asarray(a)
    b = np.asarray(b)
    return a.shape == b.shape and np.array_equal(a.astype(np.float64), b.astype(np.float64))


_PARAMS = {"I": ("r",), "LI": ("tau", "r", "v_leak"), "IF": ("r", "v_threshold", "v_reset"),
           "LIF": ("tau", "r", "v_leak", "v_threshold", "v_reset"), "Threshold": ("threshold",), "Scale": ("scale",)}


def _restore_neuron(unit_nodes: dict[str, object], entry: str, dt: float) -> tuple[nn.Module | None, str | None]:
    """Rebuild the neuron recorded on ``entry`` and check that exporting it gives exactly ``unit_nodes``."""
    meta = _meta(unit_nodes[entry])
    cls = _meta_str(meta, "multispike.class")
    if cls is None:
        return None, None
    layer = _meta_str(meta, "multispike.layer", entry)
    try:
        state = {k[len("multispike.state."):]: np.asarray(v) for k, v in meta.items()
                 if k.startswith("multispike.state.")}
        neuron = rebuild_neuron(cls, _meta_str(meta, "multispike.config"), state)
        spec = analyze(neuron, layer)
        shape = tuple(int(s) for s in np.asarray(unit_nodes[entry].input_type["input"]).reshape(-1))
        em = emit_neuron(spec, "exact", shape, dt, "x")
    except Exception as exc:  # noqa: BLE001 - any failure means: do not trust the metadata
        return None, f"{layer}: metadata could not be rebuilt ({type(exc).__name__}: {exc}); ran the literal graph"
    by_role = {_meta_str(_meta(n), "multispike.role"): n for n in unit_nodes.values()}
    if len(em.nodes) != len(unit_nodes):
        return None, (f"{layer}: metadata describes {len(em.nodes)} node(s), the graph has {len(unit_nodes)}; ran "
                      f"literally")
    for name, node in em.nodes.items():
        other = by_role.get(em.roles[name])
        if other is None or type(other).__name__ != type(node).__name__:
            return None, f"{layer}: node role {em.roles[name]!r} missing or of another type; ran literally"
        for attr in _PARAMS.get(type(node).__name__, ()):
            if not _arrays_equal(getattr(node, attr), getattr(other, attr)):
                return None, (f"{layer}: {em.roles[name]}.{attr} differs from what the metadata's {cls} exports; ran "
                              f"the literal graph")
    return neuron, None


def _restore_synapse(node, in_shape: tuple[int, ...]) -> tuple[nn.Module | None, str | None, str | None]:
    """Original modules of a weighted node (conv/linear + BN, unfolded) if they re-export to exactly its weights."""
    meta = _meta(node)
    if "multispike.modules" not in meta:
        return None, None, None
    layer = _meta_str(meta, "multispike.layer", "?")
    try:
        mods = modules_from_metadata(meta)
        syn, _ = synapse_from_modules(mods, in_shape, layer)
        w = syn.weight.detach().float()
        if "multispike.fold_scale" in meta:
            w = fold_input_scale(w, torch.from_numpy(np.asarray(meta["multispike.fold_scale"], np.float32)),
                                 getattr(syn, "groups", 1))
        bias = syn.bias.detach().float() if syn.bias is not None else torch.zeros(w.shape[0])
    except Exception as exc:  # noqa: BLE001
        return None, None, f"{layer}: layer metadata could not be rebuilt ({type(exc).__name__}: {exc})"
    if not _arrays_equal(w.numpy(), node.weight):
        return None, None, f"{layer}: recorded weights do not re-export to the graph's weights; ran literally"
    graph_bias = getattr(node, "bias", None)
    if graph_bias is not None and not _arrays_equal(bias.numpy(), np.asarray(graph_bias).reshape(-1)):
        return None, None, f"{layer}: recorded bias does not re-export to the graph's bias; ran literally"
    fold_layer = _meta_str(meta, "multispike.fold_layer") if "multispike.fold_scale" in meta else None
    return nn.Sequential(*mods), fold_layer, None


def apply_restoration(graph, adj, groups, order, blocks, stateful, dt: float, notes: list[str]) -> list[str]:
    """Swap literal blocks for original multispike modules where the metadata re-exports to the graph exactly."""
    neurons: dict[str, nn.Module] = {}
    layer_of_unit: dict[str, str] = {}
    for u in order:
        if u in groups:
            members = {n: graph.nodes[n] for n in groups[u]["members"]}
            entry = u
        elif type(graph.nodes[u]).__name__ in ("IF", "LIF"):
            members = {u: graph.nodes[u]}
            entry = u
        else:
            continue
        neuron, note = _restore_neuron(members, entry, dt)
        if note:
            notes.append(note)
        if neuron is not None:
            neurons[u] = neuron
            layer_of_unit[u] = _meta_str(_meta(graph.nodes[entry]), "multispike.layer", u)
    synapses: dict[str, tuple[nn.Module, str | None]] = {}
    for u in order:
        node = graph.nodes.get(u)
        if node is None or type(node).__name__ not in ("Conv1d", "Conv2d", "Affine", "Linear"):
            continue
        in_shape = tuple(int(s) for s in np.asarray(node.input_type["input"]).reshape(-1))
        mods, fold_layer, note = _restore_synapse(node, in_shape)
        if note:
            notes.append(note)
        if mods is not None:
            synapses[u] = (mods, fold_layer)
    # A restored neuron emits its original payload, so every site that absorbed its payload factor must be
    # restored too (and vice versa); iterate to a consistent set.
    restored_layers = set(layer_of_unit.values())
    while True:
        changed = False
        for u, (_, fold_layer) in list(synapses.items()):
            if fold_layer and fold_layer not in restored_layers:
                del synapses[u]
                changed = True
        needed: dict[str, list[str]] = defaultdict(list)
        for u in order:
            node = graph.nodes.get(u)
            meta = _meta(node) if node is not None else {}
            if "multispike.fold_scale" in meta:
                needed[_meta_str(meta, "multispike.fold_layer", "")].append(u)
        for u, layer in list(layer_of_unit.items()):
            if any(site not in synapses for site in needed.get(layer, [])):
                del layer_of_unit[u]
                del neurons[u]
                restored_layers.discard(layer)
                notes.append(f"{layer}: a layer that absorbed its payload could not be restored; ran the layer "
                             f"literally")
                changed = True
        if not changed:
            break
    restored = []
    for u, neuron in neurons.items():
        blocks[u] = neuron
        stateful[u] = True
        restored.append(u)
    for u, (mods, _) in synapses.items():
        blocks[u] = mods
        stateful[u] = False
        restored.append(u)
    for u in order:
        node = graph.nodes.get(u)
        if node is None or type(node).__name__ != "Scale":
            continue
        meta = _meta(node)
        if _meta_str(meta, "multispike.role") == "payload" and _meta_str(meta, "multispike.layer") in restored_layers:
            blocks[u] = nn.Identity()
            stateful[u] = False
            restored.append(u)
    return restored
