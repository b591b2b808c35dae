#!/usr/bin/env python
"""Side-by-side CPU benchmark of multi-step neurons: fused kernels, references, SpikingJelly, snnTorch, floor.

    python benchmarks/neurons.py                      # writes benchmarks/results/neurons_cpu.json
    python benchmarks/neurons.py --reps 9 --shape 4,32,128,16,16 --shape 8,32,128,16,16

For each shape ``[T, B, C, H, W]`` (float32) it measures:

* the bandwidth floor: a plain copy of the same bytes into a preallocated buffer - forward reads x and writes y
  (8 B per element-step); forward+backward additionally reads x and dy and writes dx (20 B: the copy plus an
  ``add(x, dy, out=dx)``);
* IF neurons: ``backend="cpp"`` (fused C++), the reference ``lif_multistep``, SpikingJelly 2.0 ``IFNode``
  (multi-step, soft reset, sigmoid surrogate) and snnTorch ``Leaky(beta=1)`` (subtract reset) looped over T;
* one-hot M-LIF with S = 4 lanes and LM-HT with L = 4 levels (with T-GIM, and M-HT without): kernel vs reference.

Each contender runs its repetitions back to back after a warm-up (its steady state, as inside a training loop),
in ``--rounds`` rounds that cycle through all contenders, so that drifts of the background load (the machine may
be shared) are spread over everyone. Forward runs under ``torch.no_grad()``; forward+backward calls
``y.backward(dy)``. Reported: median and min-max over the repetitions, ratios to the floor and, for the IF
kernel, speed-ups over each peer. Results (with hardware, versions, commit, thread count and load averages) go
to JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.bench_common import commit, floor_tasks, hardware, stats, timed_rounds, versions  # noqa: E402


def _commit() -> str:
    return commit("multispike/kernels", "benchmarks/neurons.py", "benchmarks/bench_common.py")


def _contenders(T: int, include_peers: bool) -> dict:
    """name -> (family label, callable x -> y)."""
    from multispike.kernels.lif_cpp import lif_multistep_cpp
    from multispike.kernels.lmht_cpp import lmht_multistep_cpp
    from multispike.kernels.mlif_cpp import mlif_multistep_cpp
    from multispike.neurons import lif_multistep
    from multispike.neurons.lmht import lmht_multistep
    from multispike.neurons.mlif import mlif_multistep

    omega = torch.full((T, T), 1.0 / T)
    c = {
        "if_cpp": ("IF", lambda x: lif_multistep_cpp(x, v_threshold=1.0)[0]),
        "if_reference": ("IF", lambda x: lif_multistep(x, v_threshold=1.0)[0]),
        "mlif_cpp_S4": ("M-LIF S=4", lambda x: mlif_multistep_cpp(x, lanes=4, v_threshold=1.0, leak=0.9)[0]),
        "mlif_reference_S4": ("M-LIF S=4", lambda x: mlif_multistep(x, lanes=4, v_threshold=1.0, leak=0.9)[0]),
        "mht_cpp_L4": ("M-HT L=4", lambda x: lmht_multistep_cpp(x, levels=4, v_threshold=0.5)[0]),
        "mht_reference_L4": ("M-HT L=4", lambda x: lmht_multistep(x, levels=4, v_threshold=0.5)[0]),
        "lmht_cpp_L4_tgim": ("LM-HT L=4", lambda x: lmht_multistep_cpp(x, levels=4, v_threshold=0.5, omega=omega)[0]),
        "lmht_reference_L4_tgim": ("LM-HT L=4",
                                   lambda x: lmht_multistep(x, levels=4, v_threshold=0.5, omega=omega)[0]),
    }
    if include_peers:
        try:
            from spikingjelly.activation_based import functional, neuron, surrogate
            node = neuron.IFNode(v_threshold=1.0, v_reset=None, surrogate_function=surrogate.Sigmoid(alpha=4.0),
                                 step_mode="m")

            def sj(x):
                functional.reset_net(node)
                return node(x)
            c["if_spikingjelly"] = ("IF", sj)
        except Exception as exc:  # optional peer
            c["_skipped_spikingjelly"] = (f"{type(exc).__name__}: {exc}", None)
        try:
            import snntorch as snn
            from snntorch import surrogate as snn_surrogate
            leaky = snn.Leaky(beta=1.0, threshold=1.0, reset_mechanism="subtract",
                              spike_grad=snn_surrogate.sigmoid(slope=4))

            def snt(x):
                mem = leaky.init_leaky()
                out = []
                for t in range(x.shape[0]):
                    spk, mem = leaky(x[t], mem)
                    out.append(spk)
                return torch.stack(out)
            c["if_snntorch"] = ("IF", snt)
        except Exception as exc:
            c["_skipped_snntorch"] = (f"{type(exc).__name__}: {exc}", None)
    return c


def bench_shape(shape, reps: int, warmup: int, include_peers: bool, slow_every: int, rounds: int = 3) -> dict:
    T = shape[0]
    n = 1
    for s in shape:
        n *= s
    torch.manual_seed(0)
    x = torch.randn(shape) * 0.8 + 0.3
    dy = torch.randn(shape)
    contenders = _contenders(T, include_peers)
    skipped = {k[len("_skipped_"):]: v[0] for k, v in contenders.items() if k.startswith("_skipped_")}
    contenders = {k: v for k, v in contenders.items() if not k.startswith("_skipped_")}

    def fwd(fn):
        def run():
            with torch.no_grad():
                fn(x)
        return run

    def fwd_bwd(fn):
        def run():
            xg = x.detach().requires_grad_(True)
            fn(xg).backward(dy)
        return run

    tasks = floor_tasks(x, dy)
    for name, (_, fn) in contenders.items():
        tasks[f"{name}_fwd"] = fwd(fn)
        tasks[f"{name}_fwd_bwd"] = fwd_bwd(fn)
    slow = {k for k in tasks if "reference" in k or "snntorch" in k or "spikingjelly" in k}
    rounds = max(1, min(rounds, reps))
    times = timed_rounds(tasks, lambda k: max(1, (reps if k not in slow else max(1, reps // slow_every)) // rounds),
                         warmup, rounds)
    res = {"shape": list(shape), "elements_per_step": n // T, "element_steps": n, "skipped": skipped,
           "loadavg_after": list(os.getloadavg())}
    for k, ts in times.items():
        res[k] = stats(ts)
    ff, ffb = res["floor_fwd"]["median_ms"], res["floor_fwd_bwd"]["median_ms"]
    res["floor_fwd"]["GBps"] = 8 * n / ff / 1e6
    res["floor_fwd_bwd"]["GBps"] = 20 * n / ffb / 1e6
    ffm, ffbm = res["floor_fwd"]["min_ms"], res["floor_fwd_bwd"]["min_ms"]
    for name in contenders:
        # x_floor: median / median; x_floor_best: min / min (robust when a shared or throttled machine inflates the
        # medians - both are reported, neither is cherry-picked)
        res[f"{name}_fwd"]["x_floor"] = res[f"{name}_fwd"]["median_ms"] / ff
        res[f"{name}_fwd_bwd"]["x_floor"] = res[f"{name}_fwd_bwd"]["median_ms"] / ffb
        res[f"{name}_fwd"]["x_floor_best"] = res[f"{name}_fwd"]["min_ms"] / ffm
        res[f"{name}_fwd_bwd"]["x_floor_best"] = res[f"{name}_fwd_bwd"]["min_ms"] / ffbm
    speedups = {}
    for peer in ("if_reference", "if_spikingjelly", "if_snntorch"):
        if peer in contenders:
            speedups[peer] = {p: res[f"{peer}_{p}"]["median_ms"] / res[f"if_cpp_{p}"]["median_ms"]
                              for p in ("fwd", "fwd_bwd")}
            speedups[peer].update({f"{p}_best": res[f"{peer}_{p}"]["min_ms"] / res[f"if_cpp_{p}"]["min_ms"]
                                   for p in ("fwd", "fwd_bwd")})
    res["if_cpp_speedup_over"] = speedups
    for fam, (kern, ref) in {"mlif": ("mlif_cpp_S4", "mlif_reference_S4"), "mht": ("mht_cpp_L4", "mht_reference_L4"),
                             "lmht": ("lmht_cpp_L4_tgim", "lmht_reference_L4_tgim")}.items():
        res[f"{fam}_speedup_over_reference"] = {p: res[f"{ref}_{p}"]["median_ms"] / res[f"{kern}_{p}"]["median_ms"]
                                                for p in ("fwd", "fwd_bwd")}
        res[f"{fam}_speedup_over_reference"].update(
            {f"{p}_best": res[f"{ref}_{p}"]["min_ms"] / res[f"{kern}_{p}"]["min_ms"] for p in ("fwd", "fwd_bwd")})
    return res


def _print(res: dict) -> None:
    print(f"\n[T,B,C,H,W] = {res['shape']}  (float32; median ms [min-max], x floor)")
    for phase in ("fwd", "fwd_bwd"):
        f = res[f"floor_{phase}"]
        print(f"  {phase:7s} floor (copy): {f['median_ms']:8.3f} [{f['min_ms']:.3f}-{f['max_ms']:.3f}]  "
              f"{f['GBps']:.1f} GB/s")
        for k in res:
            if k.endswith(f"_{phase}") and not k.startswith("floor") and isinstance(res[k], dict) \
                    and (phase == "fwd_bwd" or not k.endswith("_fwd_bwd")):
                r = res[k]
                print(f"    {k[:-len(phase) - 1]:24s} {r['median_ms']:9.3f} [{r['min_ms']:.3f}-{r['max_ms']:.3f}]"
                      f"  {r['x_floor']:6.2f}x floor (best/best {r['x_floor_best']:.2f}x)")
    for peer, sp in res["if_cpp_speedup_over"].items():
        print(f"  IF kernel speed-up over {peer}: fwd {sp['fwd']:.1f}x, fwd+bwd {sp['fwd_bwd']:.1f}x "
              f"(best/best {sp['fwd_best']:.1f}x, {sp['fwd_bwd_best']:.1f}x)")
    for fam in ("mlif", "mht", "lmht"):
        sp = res[f"{fam}_speedup_over_reference"]
        print(f"  {fam} kernel speed-up over its reference: fwd {sp['fwd']:.1f}x, fwd+bwd {sp['fwd_bwd']:.1f}x")
    if res["skipped"]:
        print(f"  skipped: {res['skipped']}")


def main() -> int:
    ap = argparse.ArgumentParser(description="CPU benchmark of multi-step neurons against peers and the memory floor")
    ap.add_argument("--shape", action="append", default=None,
                    help="T,B,C,H,W (repeatable; default 4,32,128,16,16 and 8,32,128,16,16)")
    ap.add_argument("--reps", type=int, default=15, help="timed rounds (default 15)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--slow-every", type=int, default=3,
                    help="the slow contenders (references, peers) run reps/k repetitions")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over all contenders (default 3)")
    ap.add_argument("--no-peers", action="store_true", help="skip SpikingJelly and snnTorch")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's choice)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "neurons_cpu.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.split(",")) for s in (args.shape or ["4,32,128,16,16", "8,32,128,16,16"])]
    from multispike.kernels import build_info
    from multispike.kernels._build import load_library
    load_library()
    result = {"benchmark": "neurons_cpu", "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "commit": _commit(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "hardware": hardware(),
              "versions": versions(), "kernel_build": build_info(), "loadavg_before": list(os.getloadavg()),
              "settings": {"reps": args.reps, "warmup": args.warmup, "slow_every": args.slow_every,
                           "rounds": args.rounds, "dtype": "float32", "threads": torch.get_num_threads()},
              "results": []}
    for shape in shapes:
        res = bench_shape(shape, args.reps, args.warmup, not args.no_peers, args.slow_every, args.rounds)
        result["results"].append(res)
        _print(res)
    result["loadavg_after"] = list(os.getloadavg())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
