#!/usr/bin/env python
"""Interleaved A/B of the neuron modules (fused C++ kernels) between a base revision and the working tree.

The base revision is checked out into a temporary git worktree; the two trees then run alternately, each in a
fresh process (``--rounds`` times), so that slow drifts of a shared machine's speed hit both sides alike. Each
process times the issue-19 neuron modules (``perf_goals._neuron_modules``: IF, LIF, M-HT, LM-HT with a learnable
T-GIM, M-LIF S = 4; ``[T, 32, 128, 16, 16]`` float32, or ``[T, *--shape]``) forward and forward+backward, median
of ``--reps`` calls. A small ``--shape`` (e.g. ``4,16``) measures the per-call cost of the Python layers.
The JSON keeps every round and the median over rounds of each side, with both commits, hardware and load.

Example::

    python benchmarks/neurons_ab.py --base 5878b12 --threads 1 --rounds 3 \\
        --out benchmarks/results/neurons_ab_cpu.json
    python benchmarks/neurons_ab.py --base 760d85b --shape 4,16 --reps 401 --rounds 5 \
        --out benchmarks/results/neurons_ab_cpu_small.json

``--worker`` is the per-process measurement (prints one JSON line); it is what the driver runs in each tree.
``--render JSON`` prints the Markdown table of a results file (``--update FILE`` puts it between
``<!-- neurons_ab begin -->`` and ``<!-- neurons_ab end -->`` in FILE, e.g. docs/performance.md; ``--marker``
names another block).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(Ts: list[int], reps: int, threads: int, shape: tuple[int, ...] = (32, 128, 16, 16)) -> dict:
    import torch
    sys.path.insert(0, os.getcwd())
    from benchmarks.perf_goals import _neuron_modules

    torch.set_num_threads(threads)

    # its own timing loop, not bench_common.timed_rounds: the worker runs in the base revision's tree, whose
    # benchmarks/ may predate any helper it would import
    def median_ms(fn) -> float:
        for _ in range(3):
            fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3

    out = {}
    for T in Ts:
        torch.manual_seed(0)
        x = torch.randn(T, *shape) * 0.8 + 0.3
        dy = torch.randn_like(x)
        for name, m in _neuron_modules(T).items():
            params = [p for p in m.parameters() if p.requires_grad]

            def fwd(m=m):
                m.reset()
                with torch.no_grad():
                    m(x)

            def fwd_bwd(m=m, params=params):
                m.reset()
                for p in params:
                    p.grad = None
                m(x.detach().requires_grad_(True)).backward(dy)

            out[f"{name}_T{T}_fwd_ms"] = median_ms(fwd)
            out[f"{name}_T{T}_fwd_bwd_ms"] = median_ms(fwd_bwd)
    return out


NAMES = {"if": "IF", "lif": "LIF", "mht": "M-HT L=4", "lmht": "LM-HT L=4 (T-GIM)", "mlif": "M-LIF S=4"}


def render(res: dict, source: str) -> str:
    """Markdown: per T and neuron, base -> new median ms and new/base, forward and forward+backward."""
    med, ratio = res["median_ms"], res["new_over_base"]
    Ts = sorted({int(k.split("_T")[1].split("_")[0]) for k in ratio})
    shape = res.get("shape", [32, 128, 16, 16])
    out = [f"`{res['command']}`: `[T, {', '.join(map(str, shape))}]` float32, base `{res['base_commit'][:12]}`, "
           f"new `{res['new_commit'][:12]}`, "
           f"{res['hardware'].get('cpu', '?')}, {res['threads']} torch thread(s), {len(res['rounds']['new'])} "
           f"interleaved rounds, median of {res['reps']} calls each; load average "
           f"{res['loadavg_before'][0]:.1f} before / {res['loadavg_after'][0]:.1f} after. Cells: base -> new ms "
           f"(new/base).", ""]
    head = "| T | phase | " + " | ".join(NAMES.values()) + " |"
    out += [head, "|" + "---|" * (head.count("|") - 1)]
    for T in Ts:
        for ph, label in (("fwd", "forward"), ("fwd_bwd", "forward+backward")):
            cells = []
            for n in NAMES:
                k = f"{n}_T{T}_{ph}_ms"
                cells.append(f"{med['base'][k]:.2f} -> {med['new'][k]:.2f} ({ratio[k]:.2f})")
            out.append(f"| {T} | {label} | " + " | ".join(cells) + " |")
    out += ["", f"Source: `{source}`."]
    return "\n".join(out)


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _run_tree(tree: Path, args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--Ts", args.Ts, "--reps", str(args.reps),
           "--threads", str(args.threads), "--shape", args.shape]
    res = subprocess.run(cmd, cwd=tree, env=env, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="HEAD~1", help="git revision to compare the working tree against")
    ap.add_argument("--Ts", default="2,4,8")
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shape", default="32,128,16,16", help="one step's shape (the input is [T, *shape])")
    ap.add_argument("--out", default=None, help="JSON path (printed only when omitted)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--render", metavar="JSON", default=None, help="print the Markdown table of a results file")
    ap.add_argument("--update", metavar="FILE", default=None, help="with --render: replace the marked block in FILE")
    ap.add_argument("--marker", default="neurons_ab", help="with --update: the block's marker name")
    args = ap.parse_args(argv)
    if args.render:
        sys.path.insert(0, str(ROOT))
        from benchmarks.perf_readme import replace_block
        md = render(json.loads(Path(args.render).read_text()), args.render)
        if args.update:
            marker = args.marker
            Path(args.update).write_text(replace_block(Path(args.update).read_text(), marker, md,
                                                       marker_pair=(f"<!-- {marker} begin -->",
                                                                    f"<!-- {marker} end -->")))
            print(f"updated {args.update}")
        else:
            print(md)
        return 0
    Ts = [int(t) for t in args.Ts.split(",")]
    try:
        shape = tuple(int(s) for s in args.shape.split(","))
    except ValueError:
        raise SystemExit(f"neurons_ab: --shape must be comma-separated integers, got {args.shape!r}") from None
    if args.worker:
        print(json.dumps(worker(Ts, args.reps, args.threads, shape)))
        return 0

    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_common import commit, hardware, loadavg, save_result

    try:
        base_commit = _git("rev-parse", "--verify", f"{args.base}^{{commit}}")
    except subprocess.CalledProcessError:
        raise SystemExit(f"neurons_ab: --base {args.base!r} is not a commit of this repository "
                         f"(e.g. HEAD~1, a hash or a branch name)") from None
    with tempfile.TemporaryDirectory(prefix="neurons_ab_") as tmp:
        base_tree = Path(tmp) / "base"
        _git("worktree", "add", "--detach", str(base_tree), base_commit)
        try:
            _run_tree(base_tree, args)  # warm-up: the base's kernel library is built (and cached) here
            rounds = {"base": [], "new": []}
            load0 = loadavg()
            for r in range(args.rounds):
                for side, tree in (("base", base_tree), ("new", ROOT)):
                    rounds[side].append(_run_tree(tree, args))
                    print(f"round {r + 1} {side} done", flush=True)
        finally:
            _git("worktree", "remove", "--force", str(base_tree))
    keys = list(rounds["new"][0])
    med = {side: {k: statistics.median(r[k] for r in rounds[side]) for k in keys} for side in rounds}
    ratio = {k: med["new"][k] / med["base"][k] for k in keys}
    result = {"benchmark": "neurons_ab", "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
              "base_commit": base_commit, "new_commit": commit(), "hardware": hardware(), "threads": args.threads,
              "reps": args.reps, "shape": list(shape), "loadavg_before": load0, "loadavg_after": loadavg(),
              "median_ms": med, "new_over_base": ratio, "rounds": rounds}
    for k in keys:
        print(f"{k:22s} base {med['base'][k]:8.2f} ms  new {med['new'][k]:8.2f} ms  new/base {ratio[k]:.2f}")
    save_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
