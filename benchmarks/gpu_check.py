#!/usr/bin/env python
"""GPU check of the fused Triton neuron kernels: equivalence with the references, then timings.

Run from the repository root on a CUDA machine (needs ``triton``; SpikingJelly is optional)::

    OUT=/tmp/gpu_out python benchmarks/gpu_check.py            # ~5 min on one H100
    OUT=/tmp/gpu_out python benchmarks/gpu_check.py --quick    # fewer cases, ~2 min

1. Equivalence: every Triton kernel (IF/LIF, one-hot M-LIF, LM-HT level loop) against its reference function
   on many option combinations, shapes (odd sizes, T = 1, long T that uses the scratch path), layouts
   (transposed, channels_last, time-sliced) and both float dtypes, with NaN-poisoned fresh buffers: forward
   outputs and states must be identical, gradients within 1e-9 (float64; relative to the largest gradient) and
   1e-5 (float32, whose rounding order differs from autograd's).
2. Timing (CUDA events, medians and min-max): forward and forward+backward of the kernels, the references and
   SpikingJelly 2.0's ``IFNode`` (its Triton and its native CUDA implementation, each in a fresh subprocess since
   SpikingJelly picks the implementation at import) against the HBM floor measured by a plain copy of the same
   bytes (forward 8 B/element-step: read x, write y; forward+backward 20 B: plus read x and dy, write dx).

Writes ``$OUT/gpu_check.json`` (partial results are written as the run goes) and prints tables. Exit status 1
if any equivalence check failed.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

RESULT: dict = {}
OUT_FILE: Path | None = None
# "cuda" on the GPU machine; "cpu" only for a dry run of this script with TRITON_INTERPRET=1 (--dry-run-cpu)
DEVICE = "cuda"


def _save() -> None:
    if OUT_FILE is not None:
        OUT_FILE.write_text(json.dumps(RESULT, indent=2, default=str))


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ================================================================================================ equivalence
def _inputs(shape, dtype, seed, scale=1.0, offset=0.3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset
    # multiples of 1/8 land exactly on thresholds, lane edges and LM-HT levels: ties are exercised
    x = torch.where(torch.rand(shape, generator=g, dtype=torch.float64) < 0.3, torch.round(x * 8) / 8, x)
    return x.to(dtype=dtype, device=DEVICE)


def _layout(x, kind):
    if kind == "contiguous":
        return x
    if kind == "transposed":
        return x.transpose(-1, -2).contiguous().transpose(-1, -2) if x.dim() >= 3 else x
    if kind == "channels_last" and x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    if kind == "time_sliced":  # T stride 2N: every other step of a longer buffer
        return torch.stack([x, torch.zeros_like(x)], dim=1).flatten(0, 1)[::2]
    return x


def _compare(kernel, ref, x, kw, learn, dtype):
    outs = []
    for fn in (kernel, ref):
        xi = x.detach().clone().requires_grad_(True) if x.is_contiguous() else x.detach().requires_grad_(True)
        kwi = dict(kw)
        leaves = [xi]
        for name in learn:
            v = kwi[name]
            t = v.detach().clone() if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=dtype, device=DEVICE)
            kwi[name] = t.requires_grad_(True)
            leaves.append(kwi[name])
        y, st, _ = fn(xi, None, **kwi)
        g = torch.Generator(device=DEVICE).manual_seed(5)
        loss = (y * torch.randn(y.shape, generator=g, device=DEVICE, dtype=dtype)).sum()
        loss = loss + (st.v * torch.randn(st.v.shape, generator=g, device=DEVICE, dtype=dtype)).sum()
        if getattr(st, "last_reset", None) is not None:
            loss = loss + (st.last_reset * 0.37).sum()
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        outs.append((y, st, grads))
    (y1, s1, g1), (y2, s2, g2) = outs
    fwd_ok = bool(torch.equal(y1, y2)) and bool(torch.equal(s1.v, s2.v))
    if getattr(s2, "last_reset", None) is not None:
        fwd_ok = fwd_ok and bool(torch.equal(s1.last_reset, s2.last_reset))
    # float64 is the strict check; float32 gradients differ from autograd's by rounding in a different order
    # (measured up to ~3e-6 relative after a few steps), so they get 1e-5
    rtol = 1e-9 if dtype == torch.float64 else 1e-5
    worst = 0.0
    grad_ok = True
    for a, b in zip(g1, g2):
        if a is None or b is None:
            grad_ok = grad_ok and (a is None or not bool(a.any())) and (b is None or not bool(b.any()))
            continue
        scale = max(1.0, float(b.abs().max()))
        err = float((a - b).abs().max()) / scale
        worst = max(worst, err)
        grad_ok = grad_ok and err <= rtol
    mismatched = int((y1 != y2).sum()) if not fwd_ok else 0
    return fwd_ok, grad_ok, worst, mismatched


def _lif_cases(quick):
    from multispike.neurons.surrogate import ATan, Rectangular, Sigmoid, Triangle
    modes = [("post_reset", True, None), ("post_reset", True, 0.0), ("post_reset", False, None),
             ("decay_input", True, 0.0), ("decay_state", True, None)]
    surrs = [Sigmoid(4.0), ATan(2.0), Rectangular(0.8), Triangle(0.3, form="diet")]
    cases = []
    for i, ((lm, rl, vr), surr) in enumerate(itertools.product(modes, surrs)):
        form = ("difference", "normalized")[i % 2]
        pay = ("spike", "threshold")[(i // 2) % 2]
        cases.append(dict(v_threshold=0.9, v_init=0.2, leak=0.9, tau=2.5, leak_mode=lm, reset_leak=rl, v_reset=vr,
                          surrogate=surr, surrogate_form=form, payload=pay, detach_reset=i % 3 == 0,
                          fire_ge=i % 4 != 1))
    return cases[::3] if quick else cases


def _mlif_cases(quick):
    resets = [("soft", False, False), ("soft", True, False), ("hard", False, False), ("hard", False, True)]
    cases = []
    for i, ((reset, rl, di), surr) in enumerate(itertools.product(resets, ["paper_difference", "code_sum",
                                                                           "fast_unscaled"])):
        cases.append(dict(lanes=(3, 4, 1)[i % 3], v_threshold=0.6, leak=0.9, v_init=0.1, reset=reset, reset_leak=rl,
                          decay_input=di, lane_bounds=("paper", "floor")[i % 2], scaled=i % 4 == 3, surrogate=surr,
                          shape=("triangle", "sigmoid")[(i // 2) % 2], fire_ge=i % 5 == 0, detach_reset=i % 3 == 1))
    return cases[::3] if quick else cases


def _lmht_cases(quick):
    cases = []
    for levels, tgim, dt, dr in itertools.product((1, 2, 4), (False, True), (True, False), (True, False)):
        if (dt, dr) not in ((True, True), (False, False)):
            continue
        cases.append(dict(levels=levels, tgim=tgim, leak=0.9, v_threshold=0.5, v_init=0.25,
                          in_scale=2.0 if levels == 2 else 1.0, detach_temporal=dt, detach_reset=dr))
    return cases[::2] if quick else cases


def run_equivalence(quick: bool) -> list[dict]:
    from multispike.kernels import triton_kernels as tk
    from multispike.neurons import lif_multistep
    from multispike.neurons.lmht import lmht_multistep
    from multispike.neurons.mlif import mlif_multistep
    shapes = [(4, 3, 7), (1, 5, 33), (8, 2, 33, 17), (4, 4, 16, 8, 8), (3, 1, 1031)]
    if not quick:
        shapes += [(40, 2, 257), (6, 2, 3, 5, 7), (4, 32, 128, 16, 16)]
    layouts = ["contiguous", "transposed", "channels_last", "time_sliced"]
    results = []
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True  # new buffers are NaN: unwritten outputs show up

    def record(family, case_id, kw, shape, layout, dtype, fn):
        t0 = time.time()
        try:
            fwd_ok, grad_ok, err, mism = fn()
            res = dict(family=family, case=case_id, shape=list(shape), layout=layout, dtype=str(dtype),
                       forward_identical=fwd_ok, grads_ok=grad_ok, max_rel_grad_err=err, mismatched_outputs=mism,
                       seconds=round(time.time() - t0, 2))
        except Exception as exc:  # a failure must not stop the other checks
            res = dict(family=family, case=case_id, shape=list(shape), layout=layout, dtype=str(dtype),
                       forward_identical=False, grads_ok=False, error=f"{type(exc).__name__}: {exc}",
                       trace=traceback.format_exc()[-1500:])
        res["options"] = {k: (repr(v) if not isinstance(v, (int, float, str, bool, type(None))) else v)
                          for k, v in kw.items()}
        results.append(res)
        if not (res["forward_identical"] and res["grads_ok"]):
            _log(f"FAIL {family} case {case_id} {shape} {layout} {dtype}: {res.get('error', res)}")

    for dtype in (torch.float32, torch.float64):
        sh = shapes if dtype == torch.float32 else shapes[:3]
        for ci, kw in enumerate(_lif_cases(quick)):
            learn = ["v_threshold", "leak" if kw["leak_mode"] == "post_reset" else "tau"]
            for si, shape in enumerate(sh):
                layout = layouts[(ci + si) % len(layouts)]
                x = _layout(_inputs(shape, dtype, seed=ci * 31 + si, scale=0.8), layout)
                record("lif", ci, kw, shape, layout, dtype,
                       lambda: _compare(tk.lif_multistep_triton, lif_multistep, x, kw, learn, dtype))
        _log(f"lif {dtype} done")
        RESULT["equivalence"] = results
        _save()
        for ci, kw in enumerate(_mlif_cases(quick)):
            for si, shape in enumerate(sh):
                layout = layouts[(ci + si) % len(layouts)]
                x = _layout(_inputs(shape, dtype, seed=ci * 37 + si, scale=1.5, offset=0.8), layout)
                record("mlif", ci, kw, shape, layout, dtype,
                       lambda: _compare(tk.mlif_multistep_triton, mlif_multistep, x, kw, ["v_threshold", "leak"],
                                        dtype))
        _log(f"mlif {dtype} done")
        RESULT["equivalence"] = results
        _save()
        for ci, case in enumerate(_lmht_cases(quick)):
            for si, shape in enumerate(sh):
                layout = layouts[(ci + si) % len(layouts)]
                T = shape[0]
                kw = {k: v for k, v in case.items() if k != "tgim"}
                learn = ["leak"]
                if case["tgim"]:
                    g = torch.Generator().manual_seed(ci)
                    kw["omega"] = (torch.rand(T, T, generator=g, dtype=dtype) * 0.6).to(DEVICE)
                    learn.append("omega")
                x = _layout(_inputs(shape, dtype, seed=ci * 41 + si, scale=1.5, offset=0.8), layout)
                record("lmht", ci, kw, shape, layout, dtype,
                       lambda: _compare(tk.lmht_multistep_triton, lmht_multistep, x, kw, learn, dtype))
        _log(f"lmht {dtype} done")
        RESULT["equivalence"] = results
        _save()
    torch.use_deterministic_algorithms(False)
    return results


# ================================================================================================ timing
def _time_cuda(fn, reps: int, warmup: int = 5) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    if DEVICE != "cuda":  # dry run
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "reps": reps}
    torch.cuda.synchronize()
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "reps": reps}


def _fb(fn, x, g):
    def run():
        y = fn(x)
        y.backward(g)
    return run


def run_timing(shapes, reps: int) -> list[dict]:
    from multispike.kernels import triton_kernels as tk
    from multispike.neurons import lif_multistep
    from multispike.neurons.lmht import lmht_multistep
    from multispike.neurons.mlif import mlif_multistep
    rows = []
    for shape in shapes:
        n = 1
        for s in shape:
            n *= s
        x = torch.randn(shape, device=DEVICE) * 0.8 + 0.3
        g = torch.randn_like(x)
        dst, gx = torch.empty_like(x), torch.empty_like(x)
        xg = x.clone().requires_grad_(True)
        floor_f = _time_cuda(lambda: dst.copy_(x), reps)
        floor_fb = _time_cuda(lambda: (dst.copy_(x), torch.add(x, g, out=gx)), reps)
        row = {"shape": list(shape), "elements": n, "floor_fwd": floor_f, "floor_fwd_bwd": floor_fb,
               "floor_fwd_GBps": 8 * n / floor_f["median_ms"] / 1e6,
               "floor_fwd_bwd_GBps": 20 * n / floor_fb["median_ms"] / 1e6}
        T = shape[0]
        omega = torch.full((T, T), 1.0 / T, device=DEVICE)
        impls = {
            "if_triton": lambda z: tk.lif_multistep_triton(z, v_threshold=1.0)[0],
            "if_reference": lambda z: lif_multistep(z, v_threshold=1.0)[0],
            "mlif_triton_S4": lambda z: tk.mlif_multistep_triton(z, lanes=4, v_threshold=1.0, leak=0.9)[0],
            "mlif_reference_S4": lambda z: mlif_multistep(z, lanes=4, v_threshold=1.0, leak=0.9)[0],
            "mht_triton_L4": lambda z: tk.lmht_multistep_triton(z, levels=4, v_threshold=0.5)[0],
            "lmht_triton_L4_tgim": lambda z: tk.lmht_multistep_triton(z, levels=4, v_threshold=0.5, omega=omega)[0],
            "lmht_reference_L4_tgim": lambda z: lmht_multistep(z, levels=4, v_threshold=0.5, omega=omega)[0],
        }
        for name, fn in impls.items():
            r = max(3, reps // 5) if "reference" in name else reps
            with torch.no_grad():
                row[f"{name}_fwd"] = _time_cuda(lambda: fn(x), r)
            row[f"{name}_fwd_bwd"] = _time_cuda(_fb(fn, xg, g), r)
        for key in list(row):
            if key.endswith("_fwd") and isinstance(row[key], dict) and not key.startswith("floor"):
                row[key]["x_floor"] = row[key]["median_ms"] / floor_f["median_ms"]
            if key.endswith("_fwd_bwd") and isinstance(row[key], dict) and not key.startswith("floor"):
                row[key]["x_floor"] = row[key]["median_ms"] / floor_fb["median_ms"]
        rows.append(row)
        _log(f"timing {shape}: if_triton fwd {row['if_triton_fwd']['median_ms']:.3f} ms "
             f"({row['if_triton_fwd']['x_floor']:.2f}x floor), fwd+bwd {row['if_triton_fwd_bwd']['median_ms']:.3f} ms "
             f"({row['if_triton_fwd_bwd']['x_floor']:.2f}x floor)")
    return rows


def sj_worker(impl: str, shapes, reps: int) -> dict:
    """Time SpikingJelly's IFNode with one CUDA implementation (runs in its own process)."""
    os.environ["SJ_IF_CUDA_IMPLEMENTATION"] = impl
    from spikingjelly.activation_based import functional, neuron, surrogate
    out = {"implementation": impl, "rows": []}
    for shape in shapes:
        x = torch.randn(shape, device="cuda") * 0.8 + 0.3
        g = torch.randn_like(x)
        xg = x.clone().requires_grad_(True)
        node = neuron.IFNode(v_threshold=1.0, v_reset=None, surrogate_function=surrogate.Sigmoid(alpha=4.0),
                             step_mode="m").cuda()

        def fwd(z):
            functional.reset_net(node)
            return node(z)

        with torch.no_grad():
            f = _time_cuda(lambda: fwd(x), reps)
        fb = _time_cuda(_fb(fwd, xg, g), reps)
        out["rows"].append({"shape": list(shape), "fwd": f, "fwd_bwd": fb})
    return out


def main() -> int:
    global OUT_FILE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer equivalence cases and shapes")
    ap.add_argument("--reps", type=int, default=50, help="timed repetitions per measurement")
    ap.add_argument("--skip-equivalence", action="store_true")
    ap.add_argument("--sj-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dry-run-cpu", action="store_true",
                    help="exercise this script without a GPU (needs triton; sets TRITON_INTERPRET=1, tiny shapes)")
    args = ap.parse_args()
    shapes = [(4, 32, 128, 16, 16), (8, 32, 128, 16, 16), (4, 128, 256, 32, 32)]
    if args.quick:
        shapes = shapes[:2]
    if args.dry_run_cpu:
        global DEVICE
        DEVICE = "cpu"
        os.environ["TRITON_INTERPRET"] = "1"
        shapes = [(2, 3, 8, 4, 4)]
    if args.sj_worker:
        print("SJRESULT " + json.dumps(sj_worker(args.sj_worker, shapes, args.reps)))
        return 0
    if not torch.cuda.is_available() and not args.dry_run_cpu:
        print("gpu_check: no CUDA device; nothing to check", file=sys.stderr)
        return 2
    out_dir = Path(os.environ.get("OUT", "gpu_check_out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    OUT_FILE = out_dir / "gpu_check.json"
    import triton
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    gpu = torch.cuda.is_available() and DEVICE == "cuda"
    RESULT.update(device=torch.cuda.get_device_name(0) if gpu else "cpu (dry run, Triton interpreter)",
                  capability=list(torch.cuda.get_device_capability(0)) if gpu else None,
                  torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda, python=platform.python_version(),
                  commit=commit, settings=vars(args), started=time.strftime("%Y-%m-%d %H:%M:%S"))
    _save()
    failures = 0
    if not args.skip_equivalence:
        _log("equivalence checks")
        eq = run_equivalence(args.quick)
        failures = sum(1 for r in eq if not (r["forward_identical"] and r["grads_ok"]))
        RESULT["equivalence_summary"] = {"cases": len(eq), "failures": failures,
                                         "max_rel_grad_err": max((r.get("max_rel_grad_err", 0.0) for r in eq),
                                                                 default=0.0)}
        _log(f"equivalence: {len(eq)} cases, {failures} failures")
        _save()
    _log("timing")
    RESULT["timing"] = run_timing(shapes, args.reps)
    _save()
    RESULT["spikingjelly"] = {}
    for impl in (("triton", "cuda") if DEVICE == "cuda" else ()):
        try:
            res = subprocess.run([sys.executable, __file__, "--sj-worker", impl, "--reps", str(args.reps)]
                                 + (["--quick"] if args.quick else []), capture_output=True, text=True, timeout=600)
            line = [ln for ln in res.stdout.splitlines() if ln.startswith("SJRESULT ")]
            RESULT["spikingjelly"][impl] = (json.loads(line[-1][9:]) if line else
                                            {"error": (res.stderr or res.stdout)[-1500:]})
        except Exception as exc:
            RESULT["spikingjelly"][impl] = {"error": f"{type(exc).__name__}: {exc}"}
        _save()
    _print_table()
    RESULT["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    _save()
    print(f"wrote {OUT_FILE}")
    return 1 if failures else 0


def _print_table() -> None:
    print("\nmedian ms (x HBM-copy floor) -- IF neuron, float32")
    for row in RESULT.get("timing", []):
        shape = tuple(row["shape"])
        line = [f"{str(shape):24s} floor fwd {row['floor_fwd']['median_ms']:.3f} fwd+bwd {row['floor_fwd_bwd']['median_ms']:.3f}"]
        for name in ("if_triton", "if_reference", "mlif_triton_S4", "mht_triton_L4", "lmht_triton_L4_tgim"):
            f, fb = row[f"{name}_fwd"], row[f"{name}_fwd_bwd"]
            line.append(f"  {name}: {f['median_ms']:.3f} ({f['x_floor']:.2f}x) / {fb['median_ms']:.3f} ({fb['x_floor']:.2f}x)")
        for impl, res in RESULT.get("spikingjelly", {}).items():
            for r in res.get("rows", []):
                if tuple(r["shape"]) == shape:
                    line.append(f"  sj_{impl}: {r['fwd']['median_ms']:.3f} / {r['fwd_bwd']['median_ms']:.3f} "
                                f"(ours {r['fwd_bwd']['median_ms'] / row['if_triton_fwd_bwd']['median_ms']:.2f}x "
                                f"faster fwd+bwd)")
        print("\n".join(line))


if __name__ == "__main__":
    sys.exit(main())
