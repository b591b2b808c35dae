#!/usr/bin/env python
"""Where an IF forward call's time goes above the copy floor: the C++ kernel alone and each Python layer on top.

For ``[T, 32, 128, 16, 16]`` float32 (the issue-19 neuron shape), medians of interleaved rounds of:

- ``floor``: a copy of the same bytes into a warm buffer (the goal's denominator);
- ``kernel``: the C++ forward through ctypes with a prepared argument record and warm outputs (the same output
  tensors every call) - the kernel's own cost, including writing the final membrane;
- ``engine``: ``CppEngine.forward`` - the argument record built per call and the outputs taken from the buffer pool;
- ``entry``: ``lif_multistep_cpp`` - the options record, the call plan (parameter classification, initial state,
  step layout) on top;
- ``module``: ``IFNeuron`` in multi-step mode under ``no_grad`` - ``reset()``, the module call and its state.

The difference between consecutive rows is that layer's cost per call. The kernel writes ``(2T + 1) / 2T`` of
the copy's bytes (the spikes and the final membrane), so ``kernel / floor`` cannot go below 1.25 at T = 2.

Example::

    python benchmarks/call_overhead.py --threads 1,2 --out benchmarks/results/call_overhead_cpu.json
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LAYERS = ("floor", "kernel", "engine", "entry", "module")


def kernel_only_task(x: torch.Tensor):
    """A callable that runs the IF forward kernel alone on ``x`` (soft reset, θ = 1): ctypes with a prepared
    argument record and the same warm output tensors every call - the kernel's own cost. None without the
    library. Shared with ``perf_goals.py``, which times it beside the modules as their profile."""
    from multispike.kernels import _build
    from multispike.kernels._common import step_layout
    from multispike.kernels._fused import CppEngine
    from multispike.kernels.lif_cpp import lif_plan
    from multispike.neurons.params import LIFParameters

    lib = _build.load_library()
    if lib is None:
        return None
    plan, v0, lr0 = lif_plan(x, None, LIFParameters())
    xs, _ = step_layout(x)
    args = plan.c_args()
    y, vT = torch.empty_like(x), torch.empty_like(x[0])
    CppEngine._io(args, xs, y=y, v0=v0, lr0=lr0, vT=vT, lrT=None)

    def run(keep=(xs, y, vT, args)):   # the tensors the record points to stay alive with the callable
        return lib.ms_lif_forward(ctypes.byref(args))
    return run


def measure(T: int, reps: int, rounds: int) -> dict:
    from benchmarks.bench_common import timed_rounds
    from multispike.kernels import _build
    from multispike.kernels._fused import Call, CppEngine
    from multispike.kernels._common import step_layout
    from multispike.kernels.lif_cpp import lif_multistep_cpp, lif_plan
    from multispike.neurons.if_lif import IFNeuron
    from multispike.neurons.params import LIFParameters

    torch.manual_seed(0)
    x = torch.randn(T, 32, 128, 16, 16) * 0.8 + 0.3
    kernel = kernel_only_task(x)
    if kernel is None:
        raise SystemExit("the C++ kernel library is not available (no compiler?): nothing to measure")
    lib = _build.load_library()
    dst = torch.empty_like(x)
    plan, v0, lr0 = lif_plan(x, None, LIFParameters())
    xs, strides = step_layout(x)
    engine = CppEngine(lib)
    call = Call(engine, plan, strides)
    module = IFNeuron(v_threshold=1.0, step_mode="m", backend="cpp")

    def module_call():
        module.reset()
        module(x)

    tasks = {"floor": lambda: dst.copy_(x),
             "kernel": kernel,
             "engine": lambda: engine.forward(call, xs, v0, lr0),
             "entry": lambda: lif_multistep_cpp(x, None),
             "module": module_call}
    with torch.no_grad():
        times = timed_rounds(tasks, lambda name: reps, warmup=3, rounds=rounds)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return {"T": T, "shape": list(x.shape), "median_ms": med,
            "x_floor": {k: med[k] / med["floor"] for k in LAYERS},
            "layer_ms": {k: med[k] - med[p] for p, k in zip(LAYERS, LAYERS[1:])},
            "bytes_bound_x_floor": (2 * T + 1) / (2 * T)}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.bench_common import commit, hardware, loadavg, save_result

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--Ts", default="2,4,8")
    ap.add_argument("--threads", default="1,2", help="torch thread counts to measure, comma-separated")
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    load0 = loadavg()
    runs = []
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for T in (int(t) for t in args.Ts.split(",")):
            r = measure(T, args.reps, args.rounds)
            r["threads"] = threads
            runs.append(r)
            print(f"threads {threads} T={T}: " + ", ".join(f"{k} {r['median_ms'][k]:.3f} ms ({r['x_floor'][k]:.2f}x)"
                                                           for k in LAYERS), flush=True)
    result = {"benchmark": "call_overhead", "command": " ".join(["call_overhead.py", *(argv or sys.argv[1:])]),
              "commit": commit(), "hardware": hardware(), "torch": torch.__version__, "loadavg_before": load0,
              "loadavg_after": loadavg(), "runs": runs}
    save_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
