#!/usr/bin/env python
"""End-to-end CPU benchmark: SNN vs the same ANN, inference and training throughput and peak training memory.

    python benchmarks/end_to_end.py          # writes benchmarks/results/end_to_end_cpu.json

Networks from the model zoo: ``vgg_small`` (5 convs, CIFAR 32x32) and ``resnet20_cifar``. For each network:

* ``ann``: ``neuron="relu"``, T = 1 - the reference cost of one timestep;
* ``snn_cpp``: IF neurons with the fused C++ kernel (``backend="cpp"``) at T = 1, 2, 4;
* ``snn_reference``: IF neurons with the reference ``lif_multistep`` (``backend="torch"``) at T = 1, 2, 4;
* ``snn_spikingjelly``: SpikingJelly 2.0 ``IFNode`` (multi-step, soft reset, sigmoid surrogate) in the same
  network at T = 1, 2, 4 (skipped with a note when SpikingJelly is not installed).

Every configuration runs in its own subprocess (so that the peak resident memory of one does not hide
another's): random CIFAR-shaped inputs (batch ``--batch``), ``--warmup`` untimed then ``--iters`` timed
iterations of inference (``eval()``, ``no_grad``) and of training (forward, cross-entropy, backward, SGD step).
Reported: median images/s, the SNN's cost per timestep relative to the ANN (``time / (T * ann_time)``), and the
peak training memory (``ru_maxrss`` after training minus the resident size before the first training step).
The load average is recorded before and after every configuration since the machine may be shared.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_kB() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError):
        return 0


def worker(cfg: dict) -> dict:
    import torch
    from torch import nn

    from multispike.models import create_model
    from multispike.neurons.base import reset_net
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    variant, T = cfg["variant"], cfg["T"]
    sj_reset = None
    if variant == "ann":
        model = create_model(cfg["model"], neuron="relu", T=1)
    elif variant == "snn_spikingjelly":
        from spikingjelly.activation_based import functional, neuron, surrogate
        spec = functools.partial(neuron.IFNode, v_reset=None, surrogate_function=surrogate.Sigmoid(alpha=4.0),
                                 step_mode="m")
        model = create_model(cfg["model"], neuron=spec, T=T)
        sj_reset = functional.reset_net
    else:
        backend = "cpp" if variant == "snn_cpp" else "torch"
        model = create_model(cfg["model"], neuron="if", T=T, neuron_kwargs={"backend": backend})
    if cfg.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    B = cfg["batch"]
    x = torch.randn(B, 3, 32, 32)
    if cfg.get("channels_last"):
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 10, (B,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def reset():
        if sj_reset is not None:
            sj_reset(model)
        else:
            reset_net(model)

    def infer():
        reset()
        with torch.no_grad():
            model(x)

    def train():
        reset()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), target)
        loss.backward()
        opt.step()

    out = dict(cfg)
    model.eval()
    for _ in range(cfg["warmup"]):
        infer()
    ts = []
    for _ in range(cfg["iters"]):
        t0 = time.perf_counter()
        infer()
        ts.append(time.perf_counter() - t0)
    out["infer_ms"] = {"median": statistics.median(ts) * 1e3, "min": min(ts) * 1e3, "max": max(ts) * 1e3}
    out["infer_images_per_s"] = B / statistics.median(ts)
    model.train()
    rss_before = _rss_kB()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(cfg["warmup"]):
        train()
    ts = []
    for _ in range(cfg["iters"]):
        t0 = time.perf_counter()
        train()
        ts.append(time.perf_counter() - t0)
    out["train_ms"] = {"median": statistics.median(ts) * 1e3, "min": min(ts) * 1e3, "max": max(ts) * 1e3}
    out["train_images_per_s"] = B / statistics.median(ts)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["rss_before_training_MiB"] = rss_before / 1024
    out["peak_rss_MiB"] = peak / 1024
    out["peak_training_memory_MiB"] = (peak - rss_before) / 1024
    out["peak_rss_grew_during_training"] = peak > peak_before
    return out


def _versions() -> dict:
    import torch
    v = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        from importlib.metadata import version
        v["spikingjelly"] = version("spikingjelly")
    except Exception:
        v["spikingjelly"] = None
    return v


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description="End-to-end SNN vs ANN CPU benchmark (throughput, memory)")
    ap.add_argument("--models", default="vgg_small,resnet20_cifar")
    ap.add_argument("--T", default="1,2,4")
    ap.add_argument("--variants", default="ann,snn_cpp,snn_reference,snn_spikingjelly")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each worker (0: PyTorch's default)")
    ap.add_argument("--channels-last", action="store_true", help="run models and inputs in channels_last")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "end_to_end_cpu.json"))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("E2ERESULT " + json.dumps(worker(json.loads(args.worker))))
        return 0
    import torch
    try:
        import spikingjelly  # noqa: F401
        have_sj = True
    except ImportError:
        have_sj = False
    result = {"benchmark": "end_to_end_cpu", "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "commit": _commit(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "versions": _versions(),
              "hardware": {"cpus": os.cpu_count(), "torch_threads": args.threads or torch.get_num_threads(),
                           "machine": platform.machine()},
              "settings": {"batch": args.batch, "warmup": args.warmup, "iters": args.iters,
                           "channels_last": args.channels_last, "input": "random CIFAR-shaped tensors",
                           "neuron": "IF (soft reset, theta=1, sigmoid surrogate)"},
              "notes": [], "runs": []}
    if not have_sj:
        result["notes"].append("SpikingJelly not installed: snn_spikingjelly skipped")
    Ts = [int(t) for t in args.T.split(",")]
    variants = [v for v in args.variants.split(",") if v != "snn_spikingjelly" or have_sj]
    for model in args.models.split(","):
        for variant in variants:
            for T in ([1] if variant == "ann" else Ts):
                cfg = dict(model=model, variant=variant, T=T, batch=args.batch, warmup=args.warmup, iters=args.iters,
                           threads=args.threads, channels_last=args.channels_last)
                load_before = list(os.getloadavg())
                res = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True,
                                     text=True, timeout=3600)
                line = [ln for ln in res.stdout.splitlines() if ln.startswith("E2ERESULT ")]
                run = json.loads(line[-1][10:]) if line else dict(cfg, error=(res.stderr or res.stdout)[-2000:])
                run["loadavg_before"], run["loadavg_after"] = load_before, list(os.getloadavg())
                result["runs"].append(run)
                if "error" in run:
                    print(f"{model} {variant} T={T}: ERROR {run['error'][-300:]}")
                else:
                    print(f"{model:15s} {variant:17s} T={T}: infer {run['infer_images_per_s']:8.1f} img/s, "
                          f"train {run['train_images_per_s']:7.1f} img/s, peak train mem "
                          f"{run['peak_training_memory_MiB']:.0f} MiB (load {load_before[0]:.2f})", flush=True)
    _summarise(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


def _summarise(result: dict) -> None:
    """Per-timestep cost ratios against the ANN and the memory ratio against SpikingJelly."""
    runs = [r for r in result["runs"] if "error" not in r]
    summary = {}
    for model in sorted({r["model"] for r in runs}):
        ann = next((r for r in runs if r["model"] == model and r["variant"] == "ann"), None)
        s = {}
        for r in runs:
            if r["model"] != model or r["variant"] == "ann" or ann is None:
                continue
            key = f"{r['variant']}_T{r['T']}"
            s[key] = {
                "train_time_per_timestep_vs_ann": r["train_ms"]["median"] / (r["T"] * ann["train_ms"]["median"]),
                "infer_time_per_timestep_vs_ann": r["infer_ms"]["median"] / (r["T"] * ann["infer_ms"]["median"]),
                "peak_training_memory_MiB": r["peak_training_memory_MiB"],
            }
        ours = next((r for r in runs if r["model"] == model and r["variant"] == "snn_cpp" and r["T"] == 4), None)
        sj = next((r for r in runs if r["model"] == model and r["variant"] == "snn_spikingjelly" and r["T"] == 4), None)
        ref = next((r for r in runs if r["model"] == model and r["variant"] == "snn_reference" and r["T"] == 4), None)
        if ours and sj:
            s["T4_peak_training_memory_cpp_vs_spikingjelly"] = (ours["peak_training_memory_MiB"]
                                                                / max(sj["peak_training_memory_MiB"], 1e-9))
            s["T4_train_speedup_cpp_vs_spikingjelly"] = sj["train_ms"]["median"] / ours["train_ms"]["median"]
        if ours and ref:
            s["T4_train_speedup_cpp_vs_reference"] = ref["train_ms"]["median"] / ours["train_ms"]["median"]
        summary[model] = s
        print(f"\n{model}: per-timestep cost relative to the ANN (train / infer), peak train memory")
        for k, v in s.items():
            if isinstance(v, dict):
                print(f"  {k:24s} {v['train_time_per_timestep_vs_ann']:.2f}x / {v['infer_time_per_timestep_vs_ann']:.2f}x"
                      f"   {v['peak_training_memory_MiB']:.0f} MiB")
            else:
                print(f"  {k}: {v:.2f}")
    result["summary"] = summary


if __name__ == "__main__":
    sys.exit(main())
