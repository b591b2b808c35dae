"""Records of synaptic and normalisation modules for the exact round trip, and the one conv/linear module NIR
stores for them (BatchNorm folded, payload factors folded into the input channels).

The records travel in node metadata only; a graph never depends on them (ecosystem.md §3.1: metadata "must not be
relied on"), and :mod:`multispike.export._restore` re-exports them to check them against the graph.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import torch
from torch import nn

from ._common import _as_str
from ._trace import NIRExportError

__all__ = ["module_record", "rebuild_module", "modules_metadata", "modules_from_metadata", "effective_affine",
           "fold_input_scale", "synapse_from_modules", "BN_TYPES", "SYN_TYPES"]


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


BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


SYN_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)


@torch.no_grad()
def synapse_from_modules(modules: list[nn.Module], in_shape: tuple[int, ...], name: str = "") -> tuple[nn.Module, bool]:
    """The one conv/linear module NIR stores for ``modules``: a synapse with its BatchNorm folded in, or a
    standalone eval BatchNorm as a depthwise 1×1 conv (``(C, H, W)``) or a diagonal linear map (``(N,)``)."""
    head = modules[0]
    if not isinstance(head, BN_TYPES):
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
