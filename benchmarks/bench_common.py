"""Helpers shared by the CPU benchmark scripts (:mod:`benchmarks.neurons`, :mod:`benchmarks.perf_goals`).

Provenance of a result file (versions, hardware, commit, load averages) and the round-robin timing loop both
scripts use, so that their numbers are taken and recorded the same way.
"""
from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]


def versions() -> dict:
    """Python, torch and the peers' installed versions (``None`` where a package is missing)."""
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("spikingjelly", "snntorch", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def hardware() -> dict:
    """CPU model, core and thread counts, memory and GPU (if any) of this machine."""
    info = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads()}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as fh:
            info["mem_total_kB"] = int(fh.readline().split()[1])
    except OSError:
        pass
    info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def commit(*paths: str) -> str:
    """``git rev-parse HEAD``, with ``+dirty`` when any of ``paths`` (relative to the repository) has uncommitted
    changes; ``"unknown"`` without git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *paths],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return (rev or "unknown") + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded to 0.01."""
    return [round(v, 2) for v in os.getloadavg()]


def stats(times: list[float]) -> dict:
    """Median, min and max in milliseconds of timings given in seconds."""
    ms = [t * 1e3 for t in times]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "reps": len(ms)}


def floor_tasks(x: torch.Tensor, dy: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The bandwidth floor on the bytes of ``x``: a copy (forward: read x, write y) and copy + add
    (forward+backward: also read x and dy, write dx), into warm preallocated buffers."""
    dst, dx = torch.empty_like(x), torch.empty_like(x)
    return {"floor_fwd": lambda: dst.copy_(x), "floor_fwd_bwd": lambda: (dst.copy_(x), torch.add(x, dy, out=dx))}


def timed_rounds(tasks: dict[str, Callable[[], object]], per_round: Callable[[str], int], warmup: int,
                 rounds: int) -> dict[str, list[float]]:
    """Seconds per call of every task: ``rounds`` rounds that cycle through all tasks; in each round a task runs
    ``warmup`` untimed calls, then ``per_round(name)`` timed calls back to back.

    Back to back after a warm-up is each task's steady state (as inside a training loop: allocator caches and
    buffer pools warm); cycling through all tasks spreads slow drifts of the background load over everyone.
    """
    times: dict[str, list[float]] = {k: [] for k in tasks}
    for _ in range(rounds):
        for k, f in tasks.items():
            for _ in range(warmup):
                f()
            for _ in range(per_round(k)):
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
            gc.collect()
    return times


def with_spikingjelly_containers(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every multispike ``SeqToANNContainer`` swapped for SpikingJelly's ``layer.SeqToANNContainer``
    holding the same layers: the network as a SpikingJelly user builds it, so the peer rows measure SpikingJelly's
    containers as well as its neurons (ours keep no activation for a leading average pool, for instance)."""
    from spikingjelly.activation_based import layer

    from multispike.layers import SeqToANNContainer

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is SeqToANNContainer:
                setattr(parent, name, layer.SeqToANNContainer(*child))
    return model


def build_network_variant(model: str, variant: str, T: int):
    """``(network, reset function)`` of one benchmark variant of a zoo network: ``ann`` (ReLU, T = 1), ``snn``
    (multispike IF, C++ kernel), ``snn_bytes`` (spikes saved for backward as uint8), ``snn_rbn`` (BN outputs
    rebuilt by the next neuron's backward, :func:`multispike.layers.set_recompute_bn`), ``snn_bytes_rbn`` (both),
    ``snn_spikingjelly`` (SpikingJelly 2.0's ``IFNode``, soft reset, sigmoid surrogate, in SpikingJelly's own
    containers). A ``_pool_off`` suffix builds the same network (the buffer pool is switched off by the
    environment)."""
    import functools

    from multispike.layers import set_recompute_bn, set_spike_storage
    from multispike.models import create_model
    from multispike.neurons.base import reset_net
    torch.manual_seed(0)
    if variant == "ann":
        return create_model(model, neuron="relu", T=1), lambda m: None
    if variant == "snn_spikingjelly":
        from spikingjelly.activation_based import functional, neuron, surrogate
        spec = functools.partial(neuron.IFNode, v_reset=None, surrogate_function=surrogate.Sigmoid(alpha=4.0),
                                 step_mode="m")
        return with_spikingjelly_containers(create_model(model, neuron=spec, T=T)), functional.reset_net
    m = create_model(model, neuron="if", T=T, neuron_kwargs={"backend": "cpp"})
    base = variant[:-len("_pool_off")] if variant.endswith("_pool_off") else variant
    if base not in ("snn", "snn_bytes", "snn_rbn", "snn_bytes_rbn"):
        raise ValueError(f"unknown variant {variant!r}")
    if "_bytes" in base:
        set_spike_storage(m, "bytes")
    if base.endswith("_rbn"):
        set_recompute_bn(m)
    return m, reset_net


def save_result(result: dict, out: str | None) -> None:
    """Write a benchmark's JSON to ``out`` (when given) and say where."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")
