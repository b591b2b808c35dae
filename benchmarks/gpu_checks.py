#!/usr/bin/env python
"""All GPU checks of issue 19 in one script, within a wall-clock budget (default 290 s): one JSON.

    OUT=/tmp/gpu_out python benchmarks/gpu_checks.py              # on a CUDA machine (torch + triton)
    python benchmarks/gpu_checks.py --dry-run --out /tmp/g.json   # anywhere: tiny sizes, CUDA-only parts skipped

Steps, each skipped with a recorded reason when the budget runs out or the machine cannot run it:

1. ``triton_tests``: ``pytest -x -q tests/test_kernels_triton.py`` (the Triton kernels' exactness tests against the
   reference functions).
2. ``kernel_timing``: ``benchmarks/gpu_check.py --quick --skip-equivalence`` in a subprocess (the Triton neuron
   kernels and SpikingJelly's ``IFNode`` - Triton and CUDA implementations - against the HBM copy floor); its JSON
   is embedded.
3. ``training``: training throughput (images/s, synthetic CIFAR-shaped batches on the device, so no loader is
   timed) of ``airbench_cifar`` (the speedrun backbone) and ``resnet20_cifar``, ANN (ReLU) and IF SNN at T = 4:
   the shipped :class:`multispike.train.Trainer` (``train_step``: its bookkeeping, the finite-loss check, lr
   schedule, neuron reset) against a plain PyTorch loop of the same network (forward, cross-entropy, backward,
   SGD), plus the plain loop with ``torch.compile`` (``default`` and ``reduce-overhead`` = CUDA graphs) when it
   compiles - the library's trainer has no compile switch, so the compiled rows say what one would gain.
   bf16 autocast rows are measured for the plain loop as well.

``--dry-run`` runs the same code paths on the CPU with tiny batches (step 3 only; steps 1-2 and the compiled
variants are CUDA-only and recorded as skipped) so that a test can smoke-test this script.
Writes ``$OUT/gpu_checks.json`` (or ``--out``); partial results are saved after every step.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


class Budget:
    """Wall-clock budget shared by all steps."""

    def __init__(self, seconds: float) -> None:
        self.t0 = time.monotonic()
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.t0)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def run_triton_tests(budget: Budget, limit: float) -> dict:
    t = min(limit, budget.left() - 5)
    if t < 20:
        return {"skipped": f"not enough budget left ({budget.left():.0f} s)"}
    t0 = time.monotonic()
    try:
        res = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "tests/test_kernels_triton.py"], cwd=ROOT,
                             capture_output=True, text=True, timeout=t)
        return {"returncode": res.returncode, "passed": res.returncode == 0, "seconds": time.monotonic() - t0,
                "tail": (res.stdout + res.stderr)[-3000:]}
    except subprocess.TimeoutExpired as exc:
        return {"passed": None, "timed_out_after_s": t, "tail": str(exc.stdout or "")[-2000:]}


def run_kernel_timing(budget: Budget, limit: float) -> dict:
    t = min(limit, budget.left() - 5)
    if t < 20:
        return {"skipped": f"not enough budget left ({budget.left():.0f} s)"}
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, OUT=d)
        try:
            res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick",
                                  "--skip-equivalence", "--reps", "30"], cwd=ROOT, capture_output=True, text=True,
                                 timeout=t, env=env)
            out = {"returncode": res.returncode, "tail": (res.stdout + res.stderr)[-3000:]}
        except subprocess.TimeoutExpired:
            out = {"timed_out_after_s": t}
        p = Path(d) / "gpu_check.json"
        if p.exists():
            out["result"] = json.loads(p.read_text())  # partial results too
        return out


# ------------------------------------------------------------------------------------------------ training
def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _throughput(step, batch: int, device: str, warmup: int, iters: int, rounds: int = 3) -> dict:
    for _ in range(warmup):
        step()
    _sync(device)
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        _sync(device)
        rates.append(batch * iters / (time.perf_counter() - t0))
    return {"images_per_s": statistics.median(rates), "images_per_s_rounds": rates, "iters": iters,
            "rounds": rounds}


def _make_model(name: str, neuron: str, T: int, device: str, channels_last: bool):
    from multispike.models import create_model
    torch.manual_seed(0)
    m = create_model(name, neuron=neuron, T=T, **({"neuron_kwargs": {"backend": "auto"}} if neuron != "relu" else {}))
    m = m.to(device)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    return m


def _plain_step(model, x, y, amp: torch.dtype | None, device: str, compiled=None):
    from multispike.neurons.base import reset_net
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    net = compiled if compiled is not None else model

    def step():
        reset_net(model)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=amp, enabled=amp is not None):
            out = net(x)
        torch.nn.functional.cross_entropy(out.float(), y).backward()
        opt.step()
    return step


def _trainer_step(model, x, y, amp: str, device: str, tmp: str, T: int, name: str):
    from multispike.train.config import resolve_config
    from multispike.train.engine import Trainer
    cfg = resolve_config(overrides=dict(model=name, epochs=1, out=tmp, lr=0.01, opt="sgd", momentum=0.9,
                                        progress=False, device=device, amp=amp, timesteps=T))
    tr = Trainer(model, [(x, y)], None, cfg)

    def step():
        tr.train_step(x, y)
    return step, {"amp": amp, "opt": "sgd", "loss": tr.loss_name}


def run_training(budget: Budget, dry: bool, models: list[str], T: int, batch: int, iters: int) -> list[dict]:
    device = "cpu" if dry else "cuda"
    rows = []
    # the eager rows of every network first, then the compiled ones (slow to build): a tight budget loses those
    groups = (("trainer", "plain", "plain_bf16"), ("plain_compile", "plain_compile_cudagraphs"))
    cases = [(g, name, neuron, t) for g in groups for name in models for neuron, t in (("relu", 1), ("if", T))]
    for variants, name, neuron, t in cases:
        if True:
            x = torch.randn(batch, 3, 32, 32, device=device)
            y = torch.randint(0, 10, (batch,), device=device)
            for v in variants:
                row = {"model": name, "neuron": neuron, "T": t, "batch": batch, "variant": v, "device": device}
                if budget.left() < 15:
                    row["skipped"] = f"budget exhausted ({budget.left():.0f} s left)"
                    rows.append(row)
                    continue
                if "compile" in v and dry:
                    row["skipped"] = "CUDA-only in this script (dry run on CPU)"
                    rows.append(row)
                    continue
                try:
                    model = _make_model(name, neuron, t, device, channels_last=False)
                    if v == "trainer":
                        with tempfile.TemporaryDirectory() as tmp:
                            step, info = _trainer_step(model, x, y, "none", device, tmp, t, name)
                            row.update(info)
                            row.update(_throughput(step, batch, device, 2, iters))
                    else:
                        compiled = None
                        t0 = time.perf_counter()
                        if v == "plain_compile":
                            compiled = torch.compile(model)
                        elif v == "plain_compile_cudagraphs":
                            compiled = torch.compile(model, mode="reduce-overhead")
                        amp = torch.bfloat16 if v == "plain_bf16" else None
                        step = _plain_step(model, x, y, amp, device, compiled)
                        if compiled is not None:
                            step()
                            _sync(device)
                            row["compile_s"] = time.perf_counter() - t0
                        row.update(_throughput(step, batch, device, 3, iters))
                except Exception as exc:  # one failing variant must not stop the others
                    row["error"] = f"{type(exc).__name__}: {exc}"[:2000]
                    row["trace"] = traceback.format_exc()[-1500:]
                rows.append(row)
                _log(f"training {name} {neuron} T={t} {v}: "
                     + (f"{row['images_per_s']:.0f} img/s" if "images_per_s" in row else
                        row.get("skipped") or row.get("error", "")[:200]))
    # ratios: trainer / plain, compiled / plain, SNN per-timestep cost vs ANN
    by = {(r["model"], r["neuron"], r["variant"]): r for r in rows if "images_per_s" in r}
    for (model, neuron, variant), r in by.items():
        plain = by.get((model, neuron, "plain"))
        if plain and variant != "plain":
            r["vs_plain"] = r["images_per_s"] / plain["images_per_s"]
        ann = by.get((model, "relu", variant))
        if neuron != "relu" and ann:
            r["time_per_timestep_vs_ann"] = ann["images_per_s"] / (r["images_per_s"] * r["T"])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Issue-19 GPU checks in one budgeted run (one JSON)")
    ap.add_argument("--dry-run", action="store_true", help="CPU smoke test: tiny sizes, CUDA-only parts skipped")
    ap.add_argument("--budget-s", type=float, default=290.0, help="wall-clock budget of the whole script")
    ap.add_argument("--models", default="airbench_cifar,resnet20_cifar")
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--iters", type=int, default=10, help="timed steps per round (3 rounds)")
    ap.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_checks.json)")
    args = ap.parse_args(argv)
    budget = Budget(args.budget_s)
    if args.dry_run:
        args.batch, args.iters, args.T = 2, 1, 2
    elif not torch.cuda.is_available():
        print("gpu_checks: no CUDA device (use --dry-run for a CPU smoke test)", file=sys.stderr)
        return 2
    out = Path(args.out or Path(os.environ.get("OUT", "gpu_checks_out")) / "gpu_checks.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    result = {"benchmark": "gpu_checks", "issue": 19, "dry_run": args.dry_run, "commit": _commit(),
              "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "python": platform.python_version(),
              "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda,
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.dry_run else "cpu",
              "settings": {k: v for k, v in vars(args).items()}, "loadavg_before": list(os.getloadavg())}

    def save():
        result["elapsed_s"] = args.budget_s - budget.left()
        out.write_text(json.dumps(result, indent=2, default=str))

    save()
    if args.dry_run:
        msg = "skipped: CUDA-only (dry run on CPU)"
        result["triton_tests"] = {"skipped": msg}
        result["kernel_timing"] = {"skipped": msg}
        _log(f"triton_tests, kernel_timing {msg}")
    else:
        _log("triton exactness tests")
        result["triton_tests"] = run_triton_tests(budget, limit=90)
        _log(f"triton tests: {result['triton_tests'].get('passed')}")
        save()
        _log("kernel timing vs HBM floor and SpikingJelly")
        result["kernel_timing"] = run_kernel_timing(budget, limit=80)
        save()
        # the training rows use backend="auto", i.e. the Triton kernels: only trust them if the tests passed
        if result["triton_tests"].get("passed") is False:
            os.environ["MULTISPIKE_AUTO_BACKEND"] = "torch"
            result["training_backend_note"] = "Triton tests failed: training rows use the torch reference backend"
    _log("training throughput")
    result["training"] = run_training(budget, args.dry_run, args.models.split(","), args.T, args.batch, args.iters)
    result["loadavg_after"] = list(os.getloadavg())
    save()
    print(f"\n{'model':15s} {'neuron':6s} {'variant':26s} {'img/s':>9s} {'vs plain':>8s} {'/step vs ANN':>12s}")
    for r in result["training"]:
        if "images_per_s" in r:
            print(f"{r['model']:15s} {r['neuron']:6s} {r['variant']:26s} {r['images_per_s']:9.0f} "
                  f"{r.get('vs_plain', float('nan')):8.2f} {r.get('time_per_timestep_vs_ann', float('nan')):12.2f}")
        else:
            print(f"{r['model']:15s} {r['neuron']:6s} {r['variant']:26s} {r.get('skipped') or r.get('error', '')[:60]}")
    print(f"wrote {out} ({result['elapsed_s']:.0f} s)")
    failed = result.get("triton_tests", {}).get("passed") is False
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
