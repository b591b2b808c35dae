"""Merge per-flavour runs of ``run_cpu.py`` (``--flavours ann`` / ``qcfs`` / ``qac`` run one after another, each
writing its own JSON) into the one summary ``benchmarks/results/speedrun_cpu.json``.

Each flavour keeps its own commit, commands, date, step times and load averages under ``runs``; the top level has
the keys of issue 15 (``ann_top1``, ``quantized_top1``, ``snn_top1``, ``snn_T``, ``qac_snn_top1``, ``qac_avg_T``,
``wall_seconds``, ``commit``, ``commands``, ``cpu``). ``complete`` is true only if every part was a full-recipe run.

    PYTHONPATH=. python benchmarks/speedrun/combine.py runs/sr_ann.json runs/sr_qcfs.json runs/sr_qac.json \\
        --out benchmarks/results/speedrun_cpu.json

A warm-start run (recipes v3/v4: ``run_cpu.py --flavours warm,warm_qac`` writes one JSON) becomes the summary with
``--warm FILE``; its ``wall_seconds`` is the issue's (quantized training through SNN evaluation) and
``pipeline_wall_seconds`` adds the float ANN it starts from:

    PYTHONPATH=. python benchmarks/speedrun/combine.py --warm benchmarks/results/speedrun_cpu_v4_kd.json

Flip test-time augmentation (``multispike eval --tta-flip``) of the same checkpoints is added under ``tta_flip`` with
``--tta KEY=EVAL_DIR`` (keys: ann, quantized, snn, qac_quantized, qac_snn); ``--update`` adds it to an existing
summary instead of rebuilding it from the parts:

    PYTHONPATH=. python benchmarks/speedrun/combine.py --update benchmarks/results/speedrun_cpu.json \\
        --tta ann=runs/speedrun/ann_eval_tta snn=runs/speedrun/lmht_L2T2_eval_tta ...
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


def from_warm(warm: dict, source: str) -> dict:
    """The issue-15 summary from a warm-start run of ``run_cpu.py`` (``--flavours warm,warm_qac``; recipe v3/v4).

    ``wall_seconds`` follows the issue's definition (quantized ANN training through SNN evaluation);
    ``pipeline_wall_seconds`` adds the float ANN's training and evaluation, which a warm start depends on."""
    steps = warm.get("step_seconds", {})
    missing = [k for k in ("warm_ann_top1", "warm_quantized_top1", "warm_snn_top1", "warm_qac_snn_top1",
                           "warm_qac_avg_T") if k not in warm]
    if missing:
        raise ValueError(f"{source} is not a complete warm + warm_qac run: it lacks {', '.join(missing)}")
    out = {"recipe": "warm start (float ANN -> QCFS / QAC twins)", "source": source,
           "ann_top1": warm["warm_ann_top1"], "quantized_top1": warm["warm_quantized_top1"],
           "snn_top1": warm["warm_snn_top1"], "snn_T": warm.get("warm_snn_T"), "snn_L": warm.get("warm_snn_L"),
           "snn_eval": warm.get("warm_snn_eval"), "qac_quantized_top1": warm.get("warm_qac_quantized_top1"),
           "qac_snn_top1": warm["warm_qac_snn_top1"], "qac_avg_T": warm["warm_qac_avg_T"],
           "qac_avg_T_detail": warm.get("warm_qac_avg_T_detail"), "qac_snn_eval": warm.get("warm_qac_snn_eval"),
           "snn_top1_tta": warm.get("warm_snn_top1_tta"), "qac_snn_top1_tta": warm.get("warm_qac_snn_top1_tta"),
           "tta": warm.get("tta"),
           "wall_seconds": round(sum(steps.get(k, 0.0) for k in ("warm_train_s", "warm_convert_s", "warm_eval_s")), 1),
           "wall_seconds_definition": "QCFS twin training + LM-HT conversion + SNN evaluation (issue 15's definition)",
           "qac_wall_seconds": round(sum(steps.get(k, 0.0) for k in ("warm_qac_train_s", "warm_qac_convert_s",
                                                                       "warm_qac_eval_s")), 1),
           "pipeline_wall_seconds": warm.get("warm_wall_seconds"),
           "pipeline_wall_seconds_definition": warm.get("warm_wall_seconds_definition"),
           "qac_pipeline_wall_seconds": warm.get("warm_qac_wall_seconds")}
    for key in ("commit", "step_commits", "commands", "cpu", "complete", "date", "configs", "step_seconds",
                "load_average", "ann_from", "distill", "torch_threads_per_run", "scale"):
        if key in warm:
            out[key] = warm[key]
    return out


TTA_KEYS = ("ann", "quantized", "snn", "qac_quantized", "qac_snn")


def tta_summary(results: dict[str, dict], commit: str, commands: list[str]) -> dict:
    """The ``tta_flip`` block: top-1 (last prefix) of each ``multispike eval --tta-flip`` result, with provenance.

    Raises ValueError for an unknown key or a result that was not evaluated with flip TTA."""
    block: dict = {"commit": commit, "commands": commands, "eval_seconds": {},
                   "note": "same checkpoints as the main run, evaluated with `multispike eval --tta-flip` (mean logits "
                           "of each image and its mirror image: two forward passes per inference)"}
    for key, res in results.items():
        if key not in TTA_KEYS:
            raise ValueError(f"unknown TTA key {key!r}; expected one of {', '.join(TTA_KEYS)}")
        if not res.get("meta", {}).get("tta_flip"):
            raise ValueError(f"the {key} result was not evaluated with --tta-flip")
        block[f"{key}_top1"] = res["accuracy"]
        block["eval_seconds"][key] = res["meta"].get("elapsed_s")
    return block


def _run_dir(result: dict) -> str:
    """The run folder an eval result's checkpoint file belongs to (``<run>/checkpoints/<step>.json``)."""
    ckpt = Path(str(result.get("meta", {}).get("checkpoint", "?")))
    return str(ckpt.parent.parent) if ckpt.parent.name == "checkpoints" else str(ckpt)


def _git_commit() -> str:
    import subprocess
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="*", type=Path, help="run_cpu.py result files, in the order they ran")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/speedrun_cpu.json"))
    ap.add_argument("--update", type=Path, default=None, help="add --tta to this existing summary (written to --out "
                                                                   "if given, else in place)")
    ap.add_argument("--warm", type=Path, default=None,
                    help="build the summary from one warm-start run (run_cpu.py --flavours warm,warm_qac) instead")
    ap.add_argument("--tta", nargs="+", default=[], metavar="KEY=EVAL_DIR",
                    help=f"flip-TTA eval directories (result.json inside); keys: {', '.join(TTA_KEYS)}")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    files = list(args.parts) + ([args.update] if args.update else []) + ([args.warm] if args.warm else [])
    tta_files = {}
    for item in args.tta:
        key, _, path = item.partition("=")
        tta_files[key] = Path(path) / "result.json" if Path(path).is_dir() else Path(path)
    missing = [str(p) for p in [*files, *tta_files.values()] if not p.is_file()]
    if missing or not files:
        print(f"error: no such result file: {', '.join(missing) or '(none given)'}", file=sys.stderr)
        return 2
    if args.warm:
        try:
            res = from_warm(json.loads(args.warm.read_text()), str(args.warm))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    elif args.update:
        res = json.loads(args.update.read_text())
        if "--out" not in argv:
            args.out = args.update
    else:
        res = combine([json.loads(p.read_text()) for p in args.parts])
    if tta_files:
        try:
            results = {k: json.loads(p.read_text()) for k, p in tta_files.items()}
            commands = [f"multispike eval --checkpoint {_run_dir(r)} --op-batches 2 --tta-flip --out {tta_files[k].parent}"
                        for k, r in results.items()]
            res["tta_flip"] = tta_summary(results, _git_commit(), commands)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    print(json.dumps({k: res.get(k) for k in ("ann_top1", "quantized_top1", "snn_top1", "qac_snn_top1", "qac_avg_T",
                                              "wall_seconds", "complete")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
