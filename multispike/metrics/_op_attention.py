"""Spike-driven self-attention in :class:`~multispike.metrics.opcount.OpCounter`: finding the blocks and their
q/k/v neurons from the roles they declare (:mod:`multispike.metrics.attention`), and counting ``Q ⊙ N(Σ K ⊙ V)``
as additions and masks (algorithms.md §6.4)."""
from __future__ import annotations

import torch
from torch import nn

from ._tracking import SpikeView
from .attention import declared_spike_roles, guessed_spike_roles, looks_like_attention
from .monitors import is_spiking_neuron

__all__ = ["ANN_ATTENTION_REASON", "attention_roles", "role_hook", "attention_output_view", "attention_pre",
           "attention_hook"]

ANN_ATTENTION_REASON = ("ANN attention (softmax over real-valued scores): no spike-driven attention counter; "
                        "spike-driven blocks declare spike_roles (see multispike.metrics.attention)")


def attention_roles(oc, neurons: dict[str, nn.Module]) -> dict[str, tuple[str, str]]:
    """Map neuron name -> (attention module name, role) for recognised spike-driven attention blocks."""
    roles: dict[str, tuple[str, str]] = {}
    oc._attn_blocks: set[str] = set()      # declared (or, deprecated, name-guessed) attention blocks
    oc._ann_attention: set[str] = set()    # nn.MultiheadAttention: listed as unsupported
    oc._attn_ok: set[str] = set()
    oc._attn_missing: dict[str, str] = {}
    for name, m in oc.model.named_modules():
        if is_spiking_neuron(m):
            continue
        prefix = f"{name}." if name else ""
        declared = declared_spike_roles(m)
        if declared is not None:
            found = {role: prefix + path for role, path in declared.items() if prefix + path in neurons}
            wrong = [f"{role}={path!r}" for role, path in declared.items() if prefix + path not in neurons]
            if wrong:
                # A declaration that names no neuron is a bug in the declaration: say so instead of guessing.
                oc._attn_blocks.add(name)
                oc._attn_missing[name] = "declared but not spiking neurons inside the block: " + ", ".join(wrong)
                continue
        elif isinstance(m, nn.MultiheadAttention):
            oc._ann_attention.add(name)
            continue
        elif looks_like_attention(m):
            found = guessed_spike_roles(m, set(neurons), prefix)
        else:
            continue
        oc._attn_blocks.add(name)
        missing = [r for r in ("q", "k", "v") if r not in found]
        if missing:
            oc._attn_missing[name] = ", ".join(missing)
            continue
        oc._attn_ok.add(name)
        for role, full in found.items():
            roles[full] = (name, role)
    oc._attn_capture: dict[str, dict[str, torch.Tensor]] = {}
    return roles


def role_hook(oc, attn: str, role: str):
    def hook(module, args, y):
        if attn in oc._attn_capture and isinstance(y, torch.Tensor):
            view = oc._spikes.lookup(y)  # registered a moment ago by the neuron hook
            if view is not None:
                oc._attn_capture[attn][role] = y.detach()
                oc._attn_capture[attn][role + "_events"] = view.events
    return hook


def attention_output_view(oc, x: torch.Tensor) -> SpikeView | None:
    """The mask product ``Q ⊙ KV`` of an active attention block, recognised by value.

    SDSA reshapes Q into heads (a copy), so its product is not a view of any neuron output. Its events
    are those of Q where KV fired, laid out like Q; the candidate is accepted only if its non-zeros
    coincide exactly with those of ``x``."""
    for attn, cap in oc._attn_capture.items():
        q, kv = cap.get("q"), cap.get("kv")
        if q is None or kv is None or x.numel() != q.numel():
            continue
        kvb = _broadcast_kv(q, kv)
        if kvb is None:
            continue
        with torch.no_grad():
            ev = (cap["q_events"] * (kvb != 0)).reshape(x.shape)
            if torch.equal(ev != 0, x != 0):
                return SpikeView(ev, (ev != 0).to(ev.dtype), f"{attn} (Q*KV)", q.shape[0], q.shape[1])
    return None


def attention_pre(oc, name: str):
    def pre(module, args):
        oc._attn_capture[name] = {}
    return pre


def attention_hook(oc, name: str, recognised: bool):
    def hook(module, args, out):
        cap = oc._attn_capture.pop(name, {})
        if not recognised:
            oc._flag(name, module, "attention module without spiking q/k/v neurons (declare them with "
                                     "spike_roles or multispike.metrics.register_attention; missing: "
                                     f"{oc._attn_missing.get(name, 'q, k, v')}); its attention "
                                     "products are not counted")
            return
        if not all(r in cap for r in ("q", "k", "v")):
            oc._flag(name, module, "q/k/v neurons did not all run inside the attention forward")
            return
        q, k, v = cap["q"], cap["k"], cap["v"]
        if k.shape != v.shape or q.dim() < 3:
            oc._flag(name, module, f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same time-major "
                                     "shape")
            return
        with torch.no_grad():
            acc = oc._layer(name, module, "attention", "ADD")
            T, B = q.shape[0], q.shape[1]
            kv_nz = (k != 0) & (v != 0)
            kvb = _broadcast_kv(q, cap["kv"]) if "kv" in cap else None
            # Without a KV neuron that lines up with Q, every active q position is counted (an upper bound).
            q_mask = ((q != 0) & (kvb != 0)) if kvb is not None else (q != 0)
            acc.call(T * B, T)
            acc.info.in_elements = k[0, 0].numel()
            acc.add("dense", float(k.numel()))
            acc.add("connections", float(k.numel()))
            acc.add("acs", float((cap["k_events"] * cap["v_events"]).sum(dtype=torch.float64)))
            acc.add("acs_lanes", float(kv_nz.sum()))
            acc.add("events", float(cap["k_events"].sum(dtype=torch.float64)))
            acc.add("active", float((k != 0).sum()))
            acc.add("nonzero", float((k != 0).sum()))
            acc.add("mask_ops_dense", float(k.numel() + q.numel()))
            acc.add("mask_ops", float(kv_nz.sum()) + float(q_mask.sum()))
            acc.sources.update({"q", "k", "v"})
    return hook


def _broadcast_kv(q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor | None:
    """KV laid out to broadcast against Q: per-channel KV (``h·d = C`` values per sample and step, channel
    ``c = head·d + j`` as in SDT) against ``[T, B, C, H, W]`` or ``[T, B, N, C]`` queries."""
    T, B = q.shape[:2]
    per = kv[0, 0].numel() if kv.dim() >= 2 and kv.shape[:2] == q.shape[:2] else -1
    if q.dim() == 5 and per == q.shape[2]:
        return kv.reshape(T, B, per, 1, 1)
    if q.dim() == 4 and per == q.shape[-1]:
        return kv.reshape(T, B, 1, per)
    try:
        torch.broadcast_shapes(q.shape, kv.shape)
        return kv
    except RuntimeError:
        return None
