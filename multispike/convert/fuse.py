"""Structural ANN edits that conversion needs: BatchNorm folding and MaxPool -> AvgPool.

BN folding (algorithms.md §3.2), per output channel::

    W' = W·γ/√(σ²+ε)          b' = γ·(b − μ)/√(σ²+ε) + β

It must not change the ANN's eval-mode outputs (a test). Folding handles a BN that directly follows a
conv/linear inside the same ``nn.Sequential`` (which includes ``SeqToANNContainer``) and, for torch.fx
graphs, a BN whose single input is a conv/linear used nowhere else.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["fold_bn_into", "fold_bn", "swap_maxpool", "FoldRecord"]

_SYNAPSE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class FoldRecord(dict):
    """One folded pair: ``{"synapse": name, "bn": name}``."""


@torch.no_grad()
def fold_bn_into(synapse: nn.Module, bn: nn.Module) -> nn.Module:
    """Fold ``bn`` (eval statistics) into ``synapse`` in place; returns the synapse (now with a bias)."""
    if not isinstance(synapse, _SYNAPSE) or not isinstance(bn, _BN):
        raise TypeError(f"fold_bn_into: expected (Conv/Linear, BatchNorm), got ({type(synapse).__name__}, "
                        f"{type(bn).__name__})")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_bn_into: BatchNorm without running statistics (track_running_stats=False) cannot be "
                         "folded; train with running stats or keep the BN")
    out_features = synapse.weight.shape[0]
    if bn.num_features != out_features:
        raise ValueError(f"fold_bn_into: BN has {bn.num_features} features but the layer has {out_features} outputs")
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    scale = gamma / std
    w = synapse.weight
    synapse.weight.copy_(w * scale.view(-1, *([1] * (w.dim() - 1))))
    bias = synapse.bias if synapse.bias is not None else torch.zeros(out_features, device=w.device, dtype=w.dtype)
    new_bias = (bias - bn.running_mean) * scale + beta
    if synapse.bias is None:
        synapse.bias = nn.Parameter(new_bias)
    else:
        synapse.bias.copy_(new_bias)
    return synapse


def fold_bn(model: nn.Module) -> list[FoldRecord]:
    """Fold every BN that directly follows a conv/linear in the same ``nn.Sequential`` (in place).

    The BN is replaced by ``nn.Identity``. For torch.fx ``GraphModule``s, BN nodes whose input is a
    conv/linear node with no other user are folded as well. Returns the list of folded pairs.
    """
    records: list[FoldRecord] = []
    for parent_name, parent in list(model.named_modules()):
        if isinstance(parent, nn.Sequential):
            children = list(parent._modules.items())
            for (name_a, a), (name_b, b) in zip(children, children[1:]):
                if isinstance(a, _SYNAPSE) and isinstance(b, _BN):
                    fold_bn_into(a, b)
                    parent._modules[name_b] = nn.Identity()
                    prefix = f"{parent_name}." if parent_name else ""
                    records.append(FoldRecord(synapse=prefix + name_a, bn=prefix + name_b))
    if isinstance(model, torch.fx.GraphModule):
        records.extend(_fold_bn_fx(model))
    return records


def _fold_bn_fx(gm: torch.fx.GraphModule) -> list[FoldRecord]:
    records = []
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BN):
            continue
        src = node.args[0]
        if not isinstance(src, torch.fx.Node) or src.op != "call_module":
            continue
        synapse = modules.get(src.target)
        if not isinstance(synapse, _SYNAPSE) or len(src.users) != 1:
            continue
        fold_bn_into(synapse, modules[node.target])
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        records.append(FoldRecord(synapse=src.target, bn=node.target))
    gm.graph.lint()
    gm.recompile()
    return records


def swap_maxpool(model: nn.Module) -> list[str]:
    """Replace every ``nn.MaxPool1d/2d/3d`` by the average pool with the same kernel, stride and padding."""
    swapped = []
    mapping = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d}
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent._modules.items()):
            if type(child) in mapping:
                if child.dilation not in (1, (1,), (1, 1), (1, 1, 1)):
                    raise ValueError(f"swap_maxpool: {parent_name}.{name} has dilation {child.dilation}; AvgPool has "
                                     f"no dilation - remove it or replace the pool by hand")
                kw = dict(kernel_size=child.kernel_size, stride=child.stride, padding=child.padding,
                          ceil_mode=child.ceil_mode)
                if type(child) is not nn.MaxPool1d:
                    kw["count_include_pad"] = True
                parent._modules[name] = mapping[type(child)](**kw)
                swapped.append(f"{parent_name}.{name}" if parent_name else name)
    return swapped
