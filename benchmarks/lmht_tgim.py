#!/usr/bin/env python3
"""LM-HT with the T-GIM mixing fused into the C++ kernel, against M-HT and against the unfused path.

Goal (issue 19): LM-HT costs <= 1.3x M-HT (forward, and forward+backward). Measured in one process with warm
buffers, tasks interleaved over several rounds (medians), on ``[T, 32, 128, 16, 16]`` float32, L = 4, θ = 0.5:

* ``mht``             M-HT (:class:`MHTNeuron`, fused kernel, no mixing)
* ``lmht``            LM-HT, trained-like T-GIM (random μ: every row different), fused mixing
* ``lmht_init``       LM-HT at initialisation (μ = 0: all rows equal, the kernel mixes one row per block)
* ``lmht_unfused``    what the kernel did before the fusion: ``torch.einsum`` mixing, then the level kernel on
                      the mixed current (``lmht_multistep_cpp`` without Ω), same μ and leak as ``lmht``
* ``mix_einsum`` / ``mix_fixed``  the PyTorch mixing alone (forward): the old reference's einsum and the
                      fixed-order :func:`~multispike.neurons.lmht.tgim_mix` of the reference now

Usage::

    python benchmarks/lmht_tgim.py                      # T = 2, 4, 8; prints a table
    python benchmarks/lmht_tgim.py --json out.json      # also writes the numbers (with load average, commit)
    python benchmarks/lmht_tgim.py --threads 1 --cpu-time   # CPU time per call, for a loaded machine

Timings on a shared machine are disturbed by other processes: the load average before and after is printed
and saved; compare ratios measured in the same run.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from multispike.kernels.lmht_cpp import lmht_multistep_cpp
from multispike.neurons.lmht import LMHTNeuron, MHTNeuron, tgim_leak, tgim_mix, tgim_omega


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()
    except OSError:
        return "unknown"


def bench(T: int, rest=(32, 128, 16, 16), reps: int = 12, rounds: int = 4, warmup: int = 2,
          clock=time.perf_counter) -> dict:
    torch.manual_seed(0)
    x = torch.randn(T, *rest) * 0.8 + 0.3
    dy = torch.randn(T, *rest)
    mht = MHTNeuron(levels=4, v_threshold=0.5, backend="cpp")
    lmht = LMHTNeuron(T=T, levels=4, v_threshold=0.5, tgim="learnable", backend="cpp")
    with torch.no_grad():
        lmht.tgim_mu.copy_(torch.randn(T, T))  # trained-like: every row of Ω different
    lmht_init = LMHTNeuron(T=T, levels=4, v_threshold=0.5, tgim="learnable", backend="cpp")
    mu, a = lmht.tgim_mu, lmht.leak_a

    def unfused(xs):  # the pre-fusion path: einsum mixing, then the level kernel on the current
        current = torch.einsum("tj,j...->t...", tgim_omega(mu), xs)
        return lmht_multistep_cpp(current, levels=4, v_threshold=0.5, leak=tgim_leak(a))[0]

    def module(m):
        def f(xs):
            m.reset()
            return m(xs)
        return f

    fns = {"mht": module(mht), "lmht": module(lmht), "lmht_init": module(lmht_init), "lmht_unfused": unfused}
    params = {"mht": [], "lmht": [mu, a], "lmht_init": list(lmht_init.parameters()), "lmht_unfused": [mu, a]}
    tasks = {}
    for name, f in fns.items():
        def fwd(f=f):
            with torch.no_grad():
                f(x)

        def fwd_bwd(f=f, ps=params[name]):
            for p in ps:
                p.grad = None
            xg = x.detach().requires_grad_(True)
            f(xg).backward(dy)
        tasks[f"{name}_fwd"] = fwd
        tasks[f"{name}_fwd_bwd"] = fwd_bwd
    om = tgim_omega(mu).detach()
    tasks["mix_einsum_fwd"] = lambda: torch.einsum("tj,j...->t...", om, x)
    tasks["mix_fixed_fwd"] = lambda: tgim_mix(om, x)
    times = {k: [] for k in tasks}
    for _ in range(rounds):
        for k, f in tasks.items():
            for _ in range(warmup):
                f()
            for _ in range(max(1, reps // rounds)):
                t0 = clock()
                f()
                times[k].append((clock() - t0) * 1e3)
            gc.collect()
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {}
    for ph in ("fwd", "fwd_bwd"):
        for name in ("lmht", "lmht_init", "lmht_unfused"):
            ratios[f"{name}_vs_mht_{ph}"] = med[f"{name}_{ph}"] / med[f"mht_{ph}"]
    return {"T": T, "shape": [T, *rest], "median_ms": med, "min_ms": {k: min(v) for k, v in times.items()},
            "ratios": ratios}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="*", default=[2, 4, 8])
    ap.add_argument("--reps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads (default: torch's)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with process CPU time instead of wall time (less disturbed by other processes on a "
                         "shared machine; use with --threads 1)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = _load()
    clock = time.process_time if args.cpu_time else time.perf_counter
    runs = [bench(T, reps=args.reps, clock=clock) for T in args.T]
    out = {"benchmark": "lmht_tgim", "goal": "LM-HT / M-HT <= 1.3", "commit": _commit(),
           "clock": "process_time" if args.cpu_time else "perf_counter",
           "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
           "loadavg_before": load_before, "loadavg_after": _load(), "runs": runs}
    print(f"load average before {load_before}, after {out['loadavg_after']}; threads {out['threads']}; "
          f"clock {out['clock']}")
    print(f"{'T':>2} {'task':<16} {'fwd ms':>8} {'fwd+bwd ms':>11} {'fwd /MHT':>9} {'f+b /MHT':>9}")
    for r in runs:
        m = r["median_ms"]
        for name in ("mht", "lmht", "lmht_init", "lmht_unfused"):
            rf = r["ratios"].get(f"{name}_vs_mht_fwd", 1.0)
            rb = r["ratios"].get(f"{name}_vs_mht_fwd_bwd", 1.0)
            print(f"{r['T']:>2} {name:<16} {m[name + '_fwd']:8.2f} {m[name + '_fwd_bwd']:11.2f} {rf:9.2f} {rb:9.2f}")
        print(f"{r['T']:>2} {'mix: einsum':<16} {m['mix_einsum_fwd']:8.2f}")
        print(f"{r['T']:>2} {'mix: tgim_mix':<16} {m['mix_fixed_fwd']:8.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
