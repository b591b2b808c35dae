#!/usr/bin/env python
"""Where an SNN's training memory goes: the tensors autograd saves for backward, by the op that saves them.

For a zoo network at T timesteps (``airbench_cifar`` and ``resnet20_cifar`` by default, T = 4, batch 32) one
training forward runs, then its autograd graph is walked from the loss: every tensor a node keeps for backward
(built-in nodes' ``_saved_*``, custom Functions' ``saved_tensors`` and tensor attributes of their ``ctx``). Each
distinct storage is counted once (an op that saves its input and the op before it that saves the same tensor as its
output share it), attributed to the first node met from the loss, and summed by node type. Variants as in
``perf_goals.py``: ``ann`` (ReLU, T = 1), ``snn`` (multispike IF, C++ kernel),
``snn_bytes`` (``set_spike_storage(model, "bytes")``) and ``snn_spikingjelly`` (SpikingJelly 2.0's ``IFNode``, soft
reset, sigmoid surrogate; needs an interpreter with SpikingJelly).

This is the deterministic part of the peak-memory goal (issue 19: peak training memory <= 0.7x SpikingJelly's):
it counts live saved bytes, not the allocator's or the kernel buffer pool's caching, which ``perf_goals.py
--sections memory`` measures as the resident-set peak.

    python benchmarks/memory_breakdown.py                      # -> benchmarks/results/memory_breakdown_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Storages are counted whole. With the kernels' buffer pool on, a small tensor may live in a larger cached block
# (best fit up to 4x), and the block would be counted: the pool's caching is perf_goals.py's resident-set
# measurement, not this count. Off unless the caller sets it (read when multispike is imported).
os.environ.setdefault("MULTISPIKE_KERNEL_POOL_MB", "0")

import torch  # noqa: E402

from benchmarks.bench_common import build_network_variant, commit, hardware, versions  # noqa: E402
from multispike.kernels import empty_cache  # noqa: E402


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _node_saved(node) -> list[torch.Tensor]:
    """The tensors one autograd node keeps: ``_saved_*`` of built-in nodes; ``saved_tensors`` and tensor attributes
    of custom Functions (the node is their ``ctx``, so tensors kept as ``ctx.x = ...`` count too)."""
    out: list[torch.Tensor] = []
    for name in dir(node):
        if name.startswith("_saved_"):
            try:
                out += _tensors(getattr(node, name))
            except RuntimeError:      # already freed / not available
                pass
    if hasattr(node, "saved_tensors"):
        try:
            out += _tensors(node.saved_tensors)
        except RuntimeError:
            pass
    out += [t for v in getattr(node, "__dict__", {}).values() for t in _tensors(v)]
    return out


class _PackedSizes:
    """Reading a saved tensor runs its unpack hook, which for multispike's containers rebuilds it (uint8 spikes
    -> float; a pool input's shape -> a zero-stride view). This wraps those hooks so that every rebuilt tensor
    is counted at the size actually kept: the uint8 copy, or nothing for a shape."""

    def __init__(self) -> None:
        import multispike.layers as layers
        self.layers, self.sizes, self.keep = layers, {}, []
        self.orig = (layers._unpack_exact_uint8, layers._unpack_shape_only)

    def __enter__(self):
        exact, shape_only = self.orig

        def unpack_exact(packed):
            t = exact(packed)
            if not isinstance(packed, torch.Tensor):      # (uint8 copy, dtype)
                self._note(t, packed[0].untyped_storage().nbytes())
            return t

        def unpack_shape(packed):
            t = shape_only(packed)
            if isinstance(packed, self.layers._ShapeStub):
                self._note(t, 0)
            return t
        self.layers._unpack_exact_uint8, self.layers._unpack_shape_only = unpack_exact, unpack_shape
        return self

    def _note(self, t: torch.Tensor, nbytes: int) -> None:
        self.keep.append(t)                   # alive until the walk ends: no address is reused meanwhile
        self.sizes[t.untyped_storage().data_ptr()] = nbytes

    def __exit__(self, *exc) -> None:
        self.layers._unpack_exact_uint8, self.layers._unpack_shape_only = self.orig


def saved_bytes(model: torch.nn.Module, reset, batch: int) -> dict:
    """Bytes the autograd graph of one training forward keeps for backward: total, by node type, by dtype.

    Every distinct storage counts once (the first node met from the loss owns it); parameters do not count;
    tensors multispike's containers keep packed count at their packed size (:class:`_PackedSizes`)."""
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    model.train()
    reset(model)
    with _PackedSizes() as packed:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        return _walk(model, x, loss, packed)


def _walk(model, x, loss, packed: _PackedSizes) -> dict:
    seen = {p.untyped_storage().data_ptr() for p in model.parameters()} | {x.untyped_storage().data_ptr()}
    by_op: dict[str, int] = defaultdict(int)
    by_dtype: dict[str, int] = defaultdict(int)
    stack, visited = [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in visited:
            continue
        visited.add(id(node))
        for t in _node_saved(node):
            key = t.untyped_storage().data_ptr()
            if key in seen or key == 0:
                continue
            seen.add(key)
            nbytes = packed.sizes.get(key, t.untyped_storage().nbytes())
            dtype = "uint8" if key in packed.sizes and nbytes else str(t.dtype).replace("torch.", "")
            by_op[type(node).__name__] += nbytes
            by_dtype[dtype] += nbytes
        stack += [n for n, _ in node.next_functions]
    loss.backward()
    total = sum(by_op.values())
    return {"saved_mib": total / 2 ** 20,
            "by_op_mib": {k: v / 2 ** 20 for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
            "by_dtype_mib": {k: v / 2 ** 20 for k, v in by_dtype.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="airbench_cifar,resnet20_cifar")
    ap.add_argument("--variants", default="ann,snn,snn_bytes,snn_rbn,snn_bytes_rbn,snn_spikingjelly")
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", default="benchmarks/results/memory_breakdown_cpu.json")
    args = ap.parse_args(argv)
    res: dict = {"benchmark": "memory_breakdown", "issue": 19, "command": "python " + " ".join(sys.argv),
                 "kernel_pool_mb": os.environ.get("MULTISPIKE_KERNEL_POOL_MB"),
                 "commit": commit(), "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                 "hardware": hardware(), "versions": versions(), "T": args.T, "batch": args.batch, "models": {},
                 "skipped": {}}
    for model in args.models.split(","):
        rows = {}
        for variant in args.variants.split(","):
            empty_cache()   # if the pool is on (set by the caller): no blocks left by the previous network
            try:
                m, reset = build_network_variant(model, variant, args.T)
            except ImportError as exc:
                res["skipped"][f"{model}/{variant}"] = f"{type(exc).__name__}: {exc}"
                continue
            rows[variant] = saved_bytes(m, reset, args.batch)
        sj = rows.get("snn_spikingjelly", {}).get("saved_mib")
        for variant, row in rows.items():
            row["vs_spikingjelly"] = row["saved_mib"] / sj if sj else None
        res["models"][model] = rows
        print(f"\n{model}, T = {args.T}, batch {args.batch}: saved for backward (MiB)")
        for variant, row in rows.items():
            ratio = f"  {row['vs_spikingjelly']:.2f}x SpikingJelly" if row["vs_spikingjelly"] else ""
            top = ", ".join(f"{k} {v:.1f}" for k, v in list(row["by_op_mib"].items())[:5])
            print(f"  {variant:18s} {row['saved_mib']:8.1f}{ratio}   [{top}]")
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
