"""Merge per-flavour runs of ``run_cpu.py`` (``--flavours ann`` / ``qcfs`` / ``qac`` run one after another, each
writing its own JSON) into the one summary ``benchmarks/results/speedrun_cpu.json``.

Each flavour keeps its own commit, commands, date, step times and load averages under ``runs``; the top level has
the keys of issue 15 (``ann_top1``, ``quantized_top1``, ``snn_top1``, ``snn_T``, ``qac_snn_top1``, ``qac_avg_T``,
``wall_seconds``, ``commit``, ``commands``, ``cpu``). ``complete`` is true only if every part was a full-recipe run.

    PYTHONPATH=. python benchmarks/speedrun/combine.py runs/sr_ann.json runs/sr_qcfs.json runs/sr_qac.json \\
        --out benchmarks/results/speedrun_cpu.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RUN_KEYS = ("commit", "commands", "date", "step_seconds", "load_average", "scale", "complete", "total_wall_seconds",
            "torch_threads_per_run")


def combine(parts: list[dict]) -> dict:
    """One summary from several ``run_cpu.py`` results (later parts win for a flavour run twice)."""
    out: dict = {"runs": {}, "commands": []}
    for part in parts:
        flavours = part.get("flavours") or [k for k in ("qcfs", "qac", "ann") if any(
            c.startswith(f"multispike train --config configs/speedrun/airbench_{k}") for c in part.get("commands", []))]
        for k, v in part.items():
            if k not in RUN_KEYS and k != "flavours":
                out[k] = v
        for fl in flavours:
            out["runs"][fl] = {k: part.get(k) for k in RUN_KEYS if k in part}
        out["commands"] += [c for c in part.get("commands", []) if c not in out["commands"]]
    commits = sorted({r.get("commit") for r in out["runs"].values() if r.get("commit")})
    out["commit"] = commits[0] if len(commits) == 1 else commits
    out["complete"] = bool(out["runs"]) and all(r.get("complete") for r in out["runs"].values())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="+", type=Path, help="run_cpu.py result files, in the order they ran")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/speedrun_cpu.json"))
    args = ap.parse_args(argv)
    missing = [str(p) for p in args.parts if not p.is_file()]
    if missing:
        print(f"error: no such result file: {', '.join(missing)}", file=sys.stderr)
        return 2
    res = combine([json.loads(p.read_text()) for p in args.parts])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    print(json.dumps({k: res.get(k) for k in ("ann_top1", "quantized_top1", "snn_top1", "qac_snn_top1", "qac_avg_T",
                                              "wall_seconds", "complete")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
