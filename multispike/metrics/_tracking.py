"""Which tensors of a forward pass are spike trains, and how many unit events each element carries.

A neuron's output is registered by storage: its base address, offset, shape and strides. Any later
tensor that reads the same memory - the output itself, ``flatten(0, 1)`` for a merged-batch conv, ``x[t]``
for a per-step loop, a transpose - is recognised, and the matching view of the events tensor is returned.
The registry keeps a reference to every registered tensor, so its memory cannot be reused by an
unrelated tensor during the pass, and it records the tensor's version counter, so an in-place change
(``x += ...``) invalidates the record instead of silently miscounting.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SpikeRecord", "SpikeView", "SpikeRegistry", "is_dense"]


def is_dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense (a permutation of a contiguous layout)."""
    if t.is_contiguous():
        return True
    dims = sorted(((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1))
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


@dataclass
class SpikeRecord:
    tensor: torch.Tensor     # the spike tensor itself (kept alive on purpose)
    version: int
    events: torch.Tensor     # unit events, same shape and strides as ``tensor``
    lanes: torch.Tensor      # active lanes, same shape and strides as ``tensor``
    source: str              # qualified name of the neuron (or "input")
    T: int                   # timesteps of the source sequence
    B: int                   # samples of the source sequence
    dense: bool


@dataclass
class SpikeView:
    """What a consumer sees: events and lanes shaped like the consumer's input tensor."""

    events: torch.Tensor
    lanes: torch.Tensor
    source: str
    T: int
    B: int


def _like(ref: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A copy of ``values`` laid out exactly like ``ref`` (same strides) so views map one to one."""
    out = torch.empty_like(ref)
    if out.stride() != ref.stride():  # pragma: no cover - empty_like preserves dense strides
        return values.reshape(ref.shape).contiguous()
    out.copy_(values.reshape(ref.shape))
    return out


class SpikeRegistry:
    """Storage-keyed map from spike tensors to their events (cleared at the start and end of a forward)."""

    def __init__(self) -> None:
        self._map: dict[int, list[SpikeRecord]] = {}

    def clear(self) -> None:
        self._map.clear()

    def __len__(self) -> int:
        return sum(len(v) for v in self._map.values())

    def register(self, y: torch.Tensor, events: torch.Tensor, lanes: torch.Tensor, source: str, T: int,
                 B: int) -> None:
        y = y.detach()
        dense = is_dense(y)
        ev = _like(y, events.detach()) if dense else events.detach().reshape(y.shape)
        ln = ev if lanes is events else (_like(y, lanes.detach()) if dense else lanes.detach().reshape(y.shape))
        rec = SpikeRecord(y, y._version, ev, ln, source, int(T), int(B), dense)
        self._map.setdefault(y.untyped_storage().data_ptr(), []).append(rec)

    def lookup(self, x: torch.Tensor) -> SpikeView | None:
        """The events of ``x`` if it reads (a view of) a registered spike tensor, else ``None``."""
        if not isinstance(x, torch.Tensor) or x.numel() == 0:
            return None
        recs = self._map.get(x.untyped_storage().data_ptr())
        if not recs:
            return None
        for rec in reversed(recs):
            y = rec.tensor
            if y.dtype != x.dtype or y._version != rec.version or y.device != x.device:
                continue
            if x.data_ptr() == y.data_ptr() and x.shape == y.shape and x.stride() == y.stride():
                return SpikeView(rec.events, rec.lanes, rec.source, rec.T, rec.B)
            if not rec.dense:
                continue
            rel = x.storage_offset() - y.storage_offset()
            lo = rel + sum(min(0, (n - 1) * s) for n, s in zip(x.shape, x.stride()))
            hi = rel + sum(max(0, (n - 1) * s) for n, s in zip(x.shape, x.stride()))
            if lo < 0 or hi >= y.numel():
                continue
            off = rec.events.storage_offset() + rel
            ev = rec.events.as_strided(x.shape, x.stride(), off)
            ln = ev if rec.lanes is rec.events else rec.lanes.as_strided(x.shape, x.stride(), off)
            return SpikeView(ev, ln, rec.source, rec.T, rec.B)
        return None
