"""NIR -> multispike: run a NIR graph as a time-major module on ``[T, B, ...]``.

:func:`import_from_nir` reads a graph (object or ``.nir`` file), recognises the threshold-ladder and one-hot-lane
decompositions (ecosystem.md §3.3 (A)/(B)) by their *structure* - a membrane ``I``/``LI`` whose only
successors are ``Threshold`` nodes and a ``Scale`` feedback edge into it - and runs every node with literal
NIR semantics (:mod:`multispike.export._literal`). With ``restore=True`` (default) it also rebuilds the
original multispike neurons and synaptic layers from the node metadata written by
:func:`~multispike.export.nir.export_to_nir`, **after checking** that re-exporting them reproduces the
graph's nodes exactly; metadata that does not match the graph is ignored (with a note), so the graph never
depends on it.
"""
from __future__ import annotations

import os
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._common import DEFAULT_DT, _as_str, _int, _meta, _meta_str, _pair, require_nir
from ._literal import (IF_SEMANTICS, IntegratorBlock, LadderBlock, LaneBlock, MembraneSpec, ScaleLayer,
                       SpikingBlock, SumPool2d, ThresholdLayer)
from ._restore import apply_restoration
from .network import NIRNetwork

__all__ = ["import_from_nir", "NIRNetwork", "NIRImportError", "read_nir"]


_SUPPORTED = ("Input", "Output", "Affine", "Linear", "Scale", "Conv1d", "Conv2d", "Flatten", "AvgPool2d", "SumPool2d",
              "Threshold", "I", "LI", "IF", "LIF")


class NIRImportError(ValueError):
    """A NIR graph is malformed or uses structure this importer cannot run (the message says which)."""


def read_nir(path: str | os.PathLike):
    """``nir.read`` with errors that name the file and the problem."""
    nir = require_nir()
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"NIR file {str(p)!r} does not exist")
    if p.is_dir():
        raise NIRImportError(f"{str(p)!r} is a directory, not a NIR file")
    try:
        import h5py
        with h5py.File(p, "r") as f:
            if "node" not in f:
                raise NIRImportError(f"{str(p)!r} is an HDF5 file but not a NIR graph (no 'node' group); write it with "
                                     f"nir.write or multispike.export.export_to_nir")
    except OSError as exc:
        raise NIRImportError(f"{str(p)!r} is not a NIR file: it cannot be opened as HDF5 ({exc}). NIR graphs are "
                             f"HDF5 files written by nir.write") from exc
    try:
        return nir.read(str(p))
    except NIRImportError:
        raise
    except Exception as exc:  # noqa: BLE001 - nir raises KeyError/AssertionError/ValueError on bad content
        raise NIRImportError(f"malformed NIR file {str(p)!r}: {type(exc).__name__}: {exc}. The file is truncated, "
                             f"was written by an incompatible tool, or a node is missing a field") from exc


class _Adj:
    def __init__(self, graph) -> None:
        self.nodes = graph.nodes
        self.preds: dict[str, list[str]] = defaultdict(list)
        self.succs: dict[str, list[str]] = defaultdict(list)
        for a, b in graph.edges:
            self.succs[a].append(b)
            self.preds[b].append(a)

    def type(self, name: str) -> str:
        return type(self.nodes[name]).__name__


def _common_consumers(adj, outputs, fb, what: str, each: str) -> list | None:
    """The nodes every output of a multi-node neuron feeds (besides its reset ``fb``); they must be the same for
    all outputs, else the decomposition cannot be run as one neuron."""
    consumers = None
    for out in outputs:
        c = [n for n in adj.succs[out] if n != fb]
        if consumers is None:
            consumers = c
        elif sorted(c) != sorted(consumers):
            raise NIRImportError(f"{what} feed different nodes ({sorted(c)} vs {sorted(consumers)}); every {each} "
                                 f"must reach the same consumers")
    return consumers


def _match_group(adj: _Adj, mem: str) -> dict | None:
    """A ladder or lane decomposition around membrane ``mem`` (I/LI), or None if it feeds no Threshold."""
    succ = adj.succs[mem]
    ths = [s for s in succ if adj.type(s) == "Threshold"]
    if not ths:
        return None
    where = f"membrane node {mem!r} ({adj.type(mem)})"
    if set(succ) != set(ths) or len(set(succ)) != len(succ):
        raise NIRImportError(f"{where} feeds Threshold nodes and other nodes {sorted(set(succ) - set(ths))}; this is "
                             f"not a threshold-ladder or one-hot-lane decomposition and cannot be run")
    fbs = [p for p in adj.preds[mem] if adj.type(p) == "Scale" and _reaches(adj, mem, p)]
    if len(fbs) != 1:
        raise NIRImportError(f"{where}: expected exactly one Scale feedback edge into the membrane (the subtractive "
                             f"reset), found {len(fbs)}")
    fb = fbs[0]
    for t in ths:
        if adj.preds[t] != [mem]:
            raise NIRImportError(f"Threshold {t!r} reads more than the membrane {mem!r}")
    if set(adj.preds[fb]) == set(ths):
        order = sorted(ths, key=lambda t: float(np.mean(adj.nodes[t].threshold)))
        consumers = _common_consumers(adj, order, fb, f"the levels of the ladder at {mem!r}", "level")
        return {"type": "ladder", "membrane": mem, "feedback": fb, "levels": order, "outputs": order,
                "members": {mem, fb, *order}, "consumers": consumers or []}
    # one-hot lanes: thresholds -> (neg) -> lane -> payload -> feedback
    pays = list(adj.preds[fb])
    order = sorted(ths, key=lambda t: float(np.mean(adj.nodes[t].threshold)))
    if len(pays) != len(order) or any(adj.type(p) != "Scale" for p in pays):
        raise NIRImportError(f"{where}: the feedback Scale {fb!r} reads {pays}; expected the thresholds (ladder) or "
                             f"one payload Scale per lane (one-hot lanes)")
    lanes, negs, pay_of = [], [], {}
    for p in pays:
        if len(adj.preds[p]) != 1 or adj.type(adj.preds[p][0]) != "Scale":
            raise NIRImportError(f"payload node {p!r} of {mem!r} must read exactly one lane Scale node")
        pay_of[adj.preds[p][0]] = p
    lane_by_th = {}
    for lane in pay_of:
        th_in = [q for q in adj.preds[lane] if q in ths]
        neg_in = [q for q in adj.preds[lane] if q not in ths]
        if len(th_in) != 1 or len(neg_in) > 1:
            raise NIRImportError(f"lane node {lane!r} of {mem!r} must read one Threshold and at most one negation")
        lane_by_th[th_in[0]] = (lane, neg_in[0] if neg_in else None)
    if set(lane_by_th) != set(ths):
        raise NIRImportError(f"the lanes of {mem!r} do not cover its thresholds")
    S = len(order)
    neg_scales, lane_scales, payloads, outs = [], [], [], []
    for s, th in enumerate(order):
        lane, neg = lane_by_th[th]
        if s + 1 < S:
            if neg is None or adj.preds[neg] != [order[s + 1]] or adj.type(neg) != "Scale":
                raise NIRImportError(f"lane {lane!r} of {mem!r} must subtract the next edge {order[s + 1]!r} through a "
                                     f"Scale node")
            negs.append(neg)
            neg_scales.append(adj.nodes[neg].scale)
        elif neg is not None:
            raise NIRImportError(f"the top lane {lane!r} of {mem!r} must read only its Threshold")
        lanes.append(lane)
        lane_scales.append(adj.nodes[lane].scale)
        payloads.append(adj.nodes[pay_of[lane]].scale)
        outs.append(pay_of[lane])
    consumers = _common_consumers(adj, outs, fb, f"the lanes of {mem!r}", "lane")
    return {"type": "lanes", "membrane": mem, "feedback": fb, "levels": order, "outputs": outs, "negs": negs,
            "lanes": lanes, "neg_scales": neg_scales, "lane_scales": lane_scales, "payload_scales": payloads,
            "members": {mem, fb, *order, *negs, *lanes, *outs}, "consumers": consumers or []}


def _reaches(adj: _Adj, start: str, goal: str) -> bool:
    seen, stack = set(), [start]
    while stack:
        n = stack.pop()
        if n == goal:
            return True
        if n in seen:
            continue
        seen.add(n)
        stack.extend(adj.succs[n])
    return False


def _membrane_spec(node, dt: float) -> MembraneSpec:
    kind = type(node).__name__
    if kind in ("I", "IF"):
        return MembraneSpec("I", dt, node.r)
    return MembraneSpec("LI", dt, node.r, tau=node.tau, v_leak=node.v_leak)


def _literal_block(node, dt: float, if_semantics: str) -> tuple[nn.Module, bool]:
    kind = type(node).__name__
    if kind == "Affine":
        w = np.asarray(node.weight, np.float32)
        if w.ndim != 2:
            raise NIRImportError(f"Affine with a {w.ndim}-D weight is not supported (expected [out, in])")
        m = nn.Linear(w.shape[1], w.shape[0], bias=True)
        m.weight.data = torch.from_numpy(w.copy())
        m.bias.data = torch.from_numpy(np.asarray(node.bias, np.float32).copy())
        return m, False
    if kind == "Linear":
        w = np.asarray(node.weight, np.float32)
        m = nn.Linear(w.shape[1], w.shape[0], bias=False)
        m.weight.data = torch.from_numpy(w.copy())
        return m, False
    if kind in ("Conv1d", "Conv2d"):
        w = np.asarray(node.weight, np.float32)
        pad = node.padding
        pad = _as_str(pad) if isinstance(pad, (str, bytes)) or (isinstance(pad, np.ndarray) and pad.dtype.kind in
                                                                 "SOU") else pad
        groups = _int(node.groups, 1)
        if kind == "Conv2d":
            padding = pad if isinstance(pad, str) else _pair(pad)
            m = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=_pair(node.stride),
                          padding=padding, dilation=_pair(node.dilation), groups=groups, bias=True)
        else:
            padding = pad if isinstance(pad, str) else _int(pad)
            m = nn.Conv1d(w.shape[1] * groups, w.shape[0], w.shape[2], stride=_int(node.stride),
                          padding=padding, dilation=_int(node.dilation), groups=groups, bias=True)
        m.weight.data = torch.from_numpy(w.copy())
        m.bias.data = torch.from_numpy(np.asarray(node.bias, np.float32).reshape(-1).copy())
        return m, False
    if kind == "Flatten":
        start, end = _int(node.start_dim), _int(node.end_dim)
        # NIR dims exclude the batch; at run time the merged T·B batch is dim 0.
        return nn.Flatten(start + 1 if start >= 0 else start, end + 1 if end >= 0 else end), False
    if kind == "AvgPool2d":
        return nn.AvgPool2d(_pair(node.kernel_size), _pair(node.stride), _pair(node.padding)), False
    if kind == "SumPool2d":
        return SumPool2d(_pair(node.kernel_size), _pair(node.stride), _pair(node.padding)), False
    if kind == "Scale":
        return ScaleLayer(node.scale), False
    if kind == "Threshold":
        return ThresholdLayer(node.threshold), False
    if kind in ("I", "LI"):
        return IntegratorBlock(_membrane_spec(node, dt)), True
    if kind in ("IF", "LIF"):
        return SpikingBlock(_membrane_spec(node, dt), node.v_threshold, node.v_reset, if_semantics), True
    raise NIRImportError(f"node type {kind} is not supported")  # pragma: no cover - filtered earlier


def _group_block(group: dict, adj: _Adj, dt: float) -> nn.Module:
    mem = adj.nodes[group["membrane"]]
    spec = _membrane_spec(mem, dt)
    fb = adj.nodes[group["feedback"]].scale
    thresholds = [adj.nodes[t].threshold for t in group["levels"]]
    if group["type"] == "ladder":
        return LadderBlock(spec, thresholds, fb)
    return LaneBlock(spec, thresholds, group["neg_scales"], group["lane_scales"], group["payload_scales"], fb)


def import_from_nir(graph_or_path, *, restore: bool = True, if_semantics: str = "nir",
                    dt: float | None = None) -> NIRNetwork:
    """Build a time-major multispike module that runs a NIR graph on ``[T, B, ...]``.

    Args:
        graph_or_path: a ``nir.NIRGraph`` or the path of a ``.nir`` (HDF5) file.
        restore: rebuild the original multispike neurons (IF/LIF/M-HT/LM-HT/M-LIF) and layers (conv/linear
            with their BatchNorm, unfolded weights) from node metadata written by ``export_to_nir`` - only where
            re-exporting them reproduces the graph's nodes exactly; everything else runs literally. With
            ``False`` the whole graph runs with literal NIR semantics.
        if_semantics: how ``nir.IF``/``nir.LIF`` nodes run: ``"nir"`` (binary spike, reset to ``v_reset``; the
            NIR definition), ``"subtract"`` (binary spike, subtract θ) or ``"sinabs"`` (``floor(v/θ)`` spikes,
            subtract, ``v ≥ −θ``).
        dt: the graph's step in seconds. Default: the graph's ``"dt"`` metadata (multispike's exports write it);
            for a graph without it, snnTorch's ``1e-4`` (what ``snntorch.export_to_nir`` assumes when it writes
            ``τ = dt/(1 − β)``, ``r = τ/dt``) with a ``UserWarning`` naming that choice. Pass ``dt=1.0`` for graphs
            whose ``r`` and ``1/τ`` are per-step rates.

    Returns:
        :class:`NIRNetwork` (``forward_sequence`` -> per-step outputs; ``forward`` -> the recorded readout).

    Example::

        >>> import torch, torch.nn as nn
        >>> from multispike.layers import SeqToANNContainer
        >>> from multispike.neurons import IFNeuron
        >>> from multispike.export import export_to_nir
        >>> snn = nn.Sequential(SeqToANNContainer(nn.Linear(16, 4)),
        ...                     IFNeuron(v_threshold=0.5, v_init=0.25, step_mode='m'))
        >>> graph, _ = export_to_nir(snn, torch.rand(4, 2, 16), measure=False)
        >>> net = import_from_nir(graph)             # multispike neurons restored: bit-identical to snn
        >>> net(torch.rand(4, 2, 16)).shape          # per-step outputs [T, B, 4]
        torch.Size([4, 2, 4])

    Raises:
        NIRImportError: malformed graph, unsupported node types (``Delay``, ``CubaLIF``, nested graphs ...), or
            recurrent structure other than the ladder/lane decompositions.
        FileNotFoundError: the path does not exist.
    """
    nir = require_nir()
    if if_semantics not in IF_SEMANTICS:
        raise ValueError(f"import_from_nir: if_semantics must be one of {IF_SEMANTICS}, got {if_semantics!r}")
    if isinstance(graph_or_path, (str, os.PathLike)):
        graph = read_nir(graph_or_path)
    else:
        graph = graph_or_path
    if not isinstance(graph, nir.NIRGraph):
        raise TypeError(f"import_from_nir: expected a nir.NIRGraph or a path, got {type(graph_or_path).__name__}")
    notes: list[str] = []
    gmeta = _meta(graph)
    dt_warning = None
    if dt is None:
        if "dt" in gmeta:
            dt = float(np.asarray(gmeta["dt"]))
        else:
            # NIR graphs carry no step of their own; snnTorch (the most common writer of such graphs) exports
            # and imports nir.LIF/IF/CubaLIF with a hard-coded dt = 1e-4, so that is the least surprising choice.
            dt = DEFAULT_DT
            msg = (f"import_from_nir: the graph records no dt (metadata key 'dt'); using dt = {DEFAULT_DT:g} s, "
                   f"snnTorch's export/import step. Pass dt= explicitly for graphs from other tools (e.g. dt=1.0 "
                   f"when r and 1/τ are per-step rates)")
            dt_warning = msg  # warned once the graph is known to import (a rejected graph gets only its error)
            notes.append(f"the graph records no dt; using snnTorch's dt = {DEFAULT_DT:g} (pass dt= to choose)")
    dt = float(dt)
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"import_from_nir: dt must be > 0, got {dt}")

    bad = sorted({f"{n} ({type(v).__name__})" for n, v in graph.nodes.items() if type(v).__name__ not in _SUPPORTED})
    if bad:
        raise NIRImportError(f"unsupported NIR node(s): {', '.join(bad)}. multispike imports {', '.join(_SUPPORTED)}; "
                             f"nested subgraphs, Delay and CubaLI/CubaLIF are not supported")
    inputs = [n for n, v in graph.nodes.items() if type(v).__name__ == "Input"]
    outputs = [n for n, v in graph.nodes.items() if type(v).__name__ == "Output"]
    if len(inputs) != 1 or len(outputs) != 1:
        raise NIRImportError(f"the graph must have exactly one Input and one Output node, found {len(inputs)} input(s) "
                             f"{inputs} and {len(outputs)} output(s) {outputs}")
    names = set(graph.nodes)
    for a, b in graph.edges:
        if a not in names or b not in names:
            raise NIRImportError(f"edge ({a!r}, {b!r}) references a node that does not exist")
    adj = _Adj(graph)
    in_name, out_name = inputs[0], outputs[0]
    if adj.preds[in_name]:
        raise NIRImportError(f"the Input node {in_name!r} has incoming edges")
    if not adj.preds[out_name]:
        raise NIRImportError(f"the Output node {out_name!r} is not connected")

    # --- decompositions ---
    groups: dict[str, dict] = {}
    owner: dict[str, str] = {}
    for name, node in graph.nodes.items():
        if type(node).__name__ in ("I", "LI"):
            g = _match_group(adj, name)
            if g is not None:
                for m in g["members"]:
                    if m in owner:
                        raise NIRImportError(f"node {m!r} belongs to two decompositions")
                    owner[m] = name
                groups[name] = g

    def unit(n: str) -> str:
        return owner.get(n, n)

    # --- unit-level edges (in graph edge order, without duplicates) ---
    unit_inputs: dict[str, list[str]] = defaultdict(list)
    for a, b in graph.edges:
        ua, ub = unit(a), unit(b)
        if ua == ub and ua in groups:
            continue  # inside a decomposition
        if a in owner and a not in groups[owner[a]]["outputs"]:
            raise NIRImportError(f"node {a!r} inside the decomposition at {owner[a]!r} feeds {b!r} outside it")
        if b in owner and b != owner[b]:
            raise NIRImportError(f"node {b!r} inside the decomposition at {owner[b]!r} is fed from outside by {a!r}")
        src = "input" if a == in_name else ua
        if src not in unit_inputs[ub]:
            unit_inputs[ub].append(src)

    units = [u for u in dict.fromkeys(unit(n) for n in graph.nodes) if u not in (in_name, out_name)]
    # --- topological order ---
    order: list[str] = []
    placed = {"input"}
    pending = list(units)
    while pending:
        progressed = False
        for u in list(pending):
            if all(s in placed for s in unit_inputs[u]):
                order.append(u)
                placed.add(u)
                pending.remove(u)
                progressed = True
        if not progressed:
            raise NIRImportError(f"recurrent structure that is not a threshold-ladder/one-hot-lane decomposition "
                                 f"involves {sorted(pending)[:8]}; multispike runs feed-forward graphs of neurons. Use "
                                 f"nirtorch.nir_to_torch for general recurrent graphs")
    unreachable = [u for u in order if not unit_inputs[u]]
    if unreachable:
        raise NIRImportError(f"node(s) {unreachable[:5]} have no input; the graph is malformed")

    # --- blocks: literal first, then restoration where the metadata checks out ---
    blocks: dict[str, nn.Module] = {}
    stateful: dict[str, bool] = {}
    for u in order:
        if u in groups:
            blocks[u] = _group_block(groups[u], adj, dt)
            stateful[u] = True
        else:
            blocks[u], stateful[u] = _literal_block(graph.nodes[u], dt, if_semantics)
    restored: list[str] = []
    if restore:
        restored = apply_restoration(graph, adj, groups, order, blocks, stateful, dt, notes)

    in_shape = tuple(int(s) for s in np.asarray(graph.nodes[in_name].input_type["input"]).reshape(-1))
    out_shape = tuple(int(s) for s in np.asarray(graph.nodes[out_name].output_type["output"]).reshape(-1))
    T = _int(gmeta["T"]) if "T" in gmeta else None
    substeps = _int(gmeta.get("substeps", 1), 1) or 1
    readout = _meta_str(gmeta, "readout", "sequence")
    encoding = _meta_str(gmeta, "input_encoding", "sequence")
    plan = [(u, unit_inputs[u], stateful[u]) for u in order]
    unit_map = {n: owner.get(n, n) for n in graph.nodes}
    net = NIRNetwork(blocks, plan, unit_inputs[out_name], in_shape, out_shape, T=T, substeps=substeps,
                     input_encoding=encoding, readout=readout if readout in ("mean", "sequence") else "sequence",
                     units=unit_map, restored=restored, notes=notes)
    if dt_warning is not None:
        warnings.warn(dt_warning, UserWarning, stacklevel=2)
    return net.eval()
