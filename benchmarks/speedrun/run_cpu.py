"""Run the CPU speedrun's documented commands (configs/speedrun/) and write benchmarks/results/speedrun_cpu.json.

Each step is the exact `multispike` command a user copies (train -> convert -> eval), run as a subprocess and
timed. ``--time-budget-s``/``--limit``/``--subset`` shorten the run; the JSON then says ``"complete": false`` and
records the scale, so a shortened run is never mistaken for the full recipe.

    PYTHONPATH=. python benchmarks/speedrun/run_cpu.py --out runs/speedrun               # the full recipe
    PYTHONPATH=. python benchmarks/speedrun/run_cpu.py --out runs/sr --time-budget-s 600 --limit 2000   # shortened
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# recipe v2 (airbench94's network and tricks); v1 (configs/speedrun/airbench_*.yaml) stays reachable via --config
CONFIGS = {"ann": "configs/speedrun/airbench94_ann_cifar10.yaml", "qcfs": "configs/speedrun/airbench94_qcfs4_cifar10.yaml",
           "qac": "configs/speedrun/airbench94_qac_cifar10.yaml",
           # recipe v3: the float ANN, then its QCFS twin warm-started from it (train --init-weights)
           "warm_ann": "configs/speedrun/airbench94_warm_ann_cifar10.yaml",
           "warm_qcfs": "configs/speedrun/airbench94_warm_qcfs4_cifar10.yaml",
           "warm_qac": "configs/speedrun/airbench94_warm_qac_cifar10.yaml"}
FLAVOURS = ("ann", "qcfs", "qac", "warm", "warm_qac")
TTA_FLAGS = "--tta-flip --tta-translate"


def _cpu() -> str:
    name = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} logical CPUs visible"


def _commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/speedrun")
    ap.add_argument("--results", default="benchmarks/results/speedrun_cpu.json")
    ap.add_argument("--flavours", default="qcfs,qac,ann", help="comma-separated subset of ann,qcfs,qac,warm,warm_qac (in order; warm = recipe v3: "
                         "float ANN -> QCFS warm start -> LM-HT; warm_qac: QAC warm start from warm's ANN -> "
                         "mixed-timestep SNN, after warm or with --merge into warm's JSON)")
    ap.add_argument("--merge", action="store_true",
                    help="update --results instead of replacing it (e.g. warm_qac after an earlier warm run): this "
                         "run's keys win, and its commands, timings, loads and commits are added to the earlier ones")
    ap.add_argument("--time-budget-s", type=float, default=None, help="override every config's time_budget_s")
    ap.add_argument("--epochs", type=int, default=None, help="override every config's epochs")
    ap.add_argument("--subset", type=int, default=None, help="train on N images (default: all 50,000)")
    ap.add_argument("--limit", type=int, default=None, help="convert/eval on the first N test images (default 10,000)")
    ap.add_argument("--op-batches", type=int, default=2, help="multispike eval: count operations on N batches")
    ap.add_argument("--prefix", default="", help="command prefix, e.g. 'nice -n 10'")
    ap.add_argument("--config", nargs="+", default=[], metavar="FLAVOUR=YAML",
                    help="train a flavour from another recipe, e.g. qcfs=configs/speedrun/airbench_qcfs4_cifar10.yaml")
    ap.add_argument("--ann-from", default=None, metavar="RUN",
                    help="warm / warm_qac: start from this trained float ANN run (e.g. an earlier warm run's "
                         "warm_ann) instead of training one; its recorded training time counts in the pipeline's "
                         "wall clock, its evaluation is rerun")
    ap.add_argument("--distill", action="store_true",
                    help="warm / warm_qac: train the quantized twins with knowledge distillation from the float ANN "
                         "(adds --distill-from ANN; weight and temperature come from the config)")
    ap.add_argument("--no-tta", action="store_true",
                    help=f"skip the second evaluation of each network with test-time augmentation ({TTA_FLAGS})")
    args = ap.parse_args()
    configs = dict(CONFIGS)
    for item in args.config:
        flavour, _, path = item.partition("=")
        if flavour not in CONFIGS or not (REPO / path).is_file():
            ap.error(f"--config {item!r}: expected FLAVOUR=PATH with FLAVOUR in {', '.join(CONFIGS)} and an existing "
                     f"file (relative to {REPO})")
        configs[flavour] = path
    out = Path(args.out)
    ms = f"{sys.executable} -m multispike.cli.main"
    pre = (args.prefix + " ") if args.prefix else ""
    train_extra, data_extra = "", ""
    if args.time_budget_s is not None:
        train_extra += f" --time-budget-s {args.time_budget_s:g}"
    if args.epochs is not None:
        train_extra += f" --epochs {args.epochs}"
    if args.subset is not None:
        train_extra += f" --subset {args.subset}"
    if args.limit is not None:
        train_extra += f" --eval-subset {args.limit}"
        data_extra += f" --limit {args.limit}"
    ann = Path(args.ann_from) if args.ann_from else out / "warm_ann"
    if args.ann_from and not (ann / "summary.json").is_file():
        ap.error(f"--ann-from {ann}: no finished training run there (summary.json missing)")
    warm_extra = train_extra + (f" --distill-from {ann}" if args.distill else "")
    plan: dict[str, list[tuple[str, str]]] = {
        "qcfs": [("train", f"train --config {configs['qcfs']} --out {out}/qcfs --overwrite --no-progress{train_extra}"),
                 ("convert", f"convert --checkpoint {out}/qcfs --to lmht --levels 2 --timesteps 2 --hybrid-bias-scale L "
                             f"--no-sanity --overwrite --out {out}/lmht_L2T2{data_extra}"),
                 ("eval", f"eval --checkpoint {out}/lmht_L2T2 --op-batches {args.op_batches} --no-plots --no-progress "
                          f"--out {out}/lmht_L2T2_eval{data_extra}")],
        "qac": [("train", f"train --config {configs['qac']} --out {out}/qac --overwrite --no-progress{train_extra}"),
                ("convert", f"convert --checkpoint {out}/qac --to mixed --align aver+aver --overwrite "
                            f"--out {out}/qac_mixed{data_extra}"),
                ("eval", f"eval --checkpoint {out}/qac_mixed --op-batches {args.op_batches} --no-plots --no-progress "
                         f"--out {out}/qac_mixed_eval{data_extra}")],
        "ann": [("train", f"train --config {configs['ann']} --out {out}/ann --overwrite --no-progress{train_extra}"),
                ("eval", f"eval --checkpoint {out}/ann --op-batches 1 --no-plots --no-progress "
                         f"--out {out}/ann_eval{data_extra}")],
        "warm": [("train_ann", f"train --config {configs['warm_ann']} --out {out}/warm_ann --overwrite --no-progress"
                               f"{train_extra}"),
                 ("eval_ann", f"eval --checkpoint {ann} --op-batches 1 --no-plots --no-progress "
                              f"--out {out}/warm_ann_eval{data_extra}"),
                 ("train", f"train --config {configs['warm_qcfs']} --init-weights {ann} --out {out}/warm_qcfs "
                           f"--overwrite --no-progress{warm_extra}"),
                 ("convert", f"convert --checkpoint {out}/warm_qcfs --to lmht --levels 2 --timesteps 2 "
                             f"--hybrid-bias-scale L --no-sanity --overwrite --out {out}/warm_lmht_L2T2{data_extra}"),
                 ("eval", f"eval --checkpoint {out}/warm_lmht_L2T2 --op-batches {args.op_batches} --no-plots "
                          f"--no-progress --out {out}/warm_lmht_L2T2_eval{data_extra}")],
        "warm_qac": [("train", f"train --config {configs['warm_qac']} --init-weights {ann} "
                               f"--out {out}/warm_qac --overwrite --no-progress{warm_extra}"),
                     ("convert", f"convert --checkpoint {out}/warm_qac --to mixed --align aver+aver --overwrite "
                                 f"--out {out}/warm_qac_mixed{data_extra}"),
                     ("eval", f"eval --checkpoint {out}/warm_qac_mixed --op-batches {args.op_batches} --no-plots "
                              f"--no-progress --out {out}/warm_qac_mixed_eval{data_extra}")],
    }
    if args.ann_from:   # the ANN is not trained again: its recorded training time stands in for the step
        plan["warm"] = [st for st in plan["warm"] if st[0] != "train_ann"]
    if not args.no_tta:   # a second, timed evaluation with airbench94's TTA (6 passes per inference)
        for fl, net in (("qcfs", "lmht_L2T2"), ("qac", "qac_mixed"), ("ann", "ann"), ("warm", "warm_lmht_L2T2"),
                        ("warm_qac", "warm_qac_mixed")):
            plan[fl].append(("eval_tta", f"eval --checkpoint {out}/{net} {TTA_FLAGS} --op-batches 1 --no-plots "
                                         f"--no-progress --out {out}/{net}_eval_tta{data_extra}"))
    flavours = [f.strip() for f in args.flavours.split(",") if f.strip()]
    if not set(flavours) <= set(FLAVOURS):
        ap.error(f"--flavours {args.flavours!r}: expected a comma-separated subset of {', '.join(FLAVOURS)}")
    if "warm_qac" in flavours and "warm" not in flavours and not (ann / "summary.json").is_file():
        ap.error(f"--flavours warm_qac starts from the float ANN of the warm flavour, {ann}, which is not "
                 f"there: run --flavours warm,warm_qac (or warm first), or name a trained ANN with --ann-from")
    commands, timings, loads, step_commits = [], {}, {}, {}
    commit = _commit()       # the code that runs, taken before anything else can change the checkout
    t_all = time.perf_counter()
    for fl in flavours:
        for step, cmd in plan[fl]:
            full = pre + ms + " " + cmd
            print(f"$ {full}", flush=True)
            # the checkout each step ran from: a long pipeline may span commits (e.g. a config tuned while the
            # ANN trains); the JSON then says so instead of claiming one commit for all of it
            step_commits[f"{fl}_{step}"] = _commit()
            t0 = time.perf_counter()
            load_before = os.getloadavg()
            rc = subprocess.run(shlex.split(full), cwd=REPO).returncode
            dt = time.perf_counter() - t0
            commands.append("multispike " + cmd)
            timings[f"{fl}_{step}_s"] = round(dt, 1)
            # 1/5/15-minute load averages before and after: the run's share of the 2 cores, for the reader
            loads[f"{fl}_{step}"] = {"before": [round(v, 2) for v in load_before],
                                     "after": [round(v, 2) for v in os.getloadavg()]}
            if rc != 0:
                print(f"step {fl}/{step} failed with exit code {rc}", file=sys.stderr)
                return rc
    if args.ann_from and "warm" in flavours:
        # the pipeline's wall clock still includes the ANN's training: the time that run recorded (its summary)
        timings["warm_train_ann_s"] = round(json.loads((ann / "summary.json").read_text())["elapsed_s"], 1)
    res: dict = {"commit": commit, "step_commits": step_commits, "cpu": _cpu(), "torch_threads_per_run": 2, "commands": commands,
                 "configs": {k: configs[k] for fl in flavours for k in (("warm_ann", "warm_qcfs") if fl == "warm"
                                                                          else (fl,))}, "step_seconds": timings, "load_average": loads,
                 "flavours": flavours, "tta": None if args.no_tta else TTA_FLAGS,
                 "ann_from": None if not args.ann_from else {
                     "run": str(ann), "note": "float ANN reused from this earlier run, not trained again; "
                     "step_seconds.warm_train_ann_s is the training time its summary.json records"},
                 "distill": f"--distill-from {ann}" if args.distill else None,
                 "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def load(p: Path) -> dict:
        return json.loads(p.read_text())

    def train_info(run: Path) -> dict:
        s = load(run / "summary.json")
        recs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
        ep = [r for r in recs if r.get("event") == "epoch"]
        imgs = sum(r["train_samples"] for r in ep)
        secs = sum(r["train_time_s"] for r in ep)
        return {"top1": s["final_acc"], "steps": s["steps"], "epochs_completed": s["epochs_completed"],
                "stop_reason": s["stop_reason"], "train_seconds": round(secs, 1),
                "train_images_per_s": round(imgs / secs, 1) if secs else None, "eval_samples": ep[-1].get("eval_samples")}

    def eval_info(run: Path) -> dict:
        r = load(run / "result.json")
        e = r["energy"]
        return {"top1": r["accuracy"], "accuracy_vs_T": r["accuracy_vs_T"], "T": r["T"], "samples": r["samples"],
                "spike_rate": r["spikes"]["total"]["spike_rate"], "energy_delta_diet": e["diet"]["delta"],
                "energy_uj_multispike": e["multispike"]["e_uj"], "energy_uj_ann": e["diet"]["e_ann_uj"],
                "layer_timesteps": r.get("layer_timesteps")}

    if "qcfs" in flavours:
        tq = train_info(out / "qcfs")
        conv = load(out / "lmht_L2T2" / "conversion.json")
        ev = eval_info(out / "lmht_L2T2_eval")
        res.update(quantized_top1=conv["ann"]["acc"], quantized_train=tq, snn_top1=ev["top1"], snn_T=2, snn_L=2,
                   snn_eval=ev, snn_convert_top1=conv["snn"]["acc"])
        if not args.no_tta:
            res["snn_top1_tta"] = eval_info(out / "lmht_L2T2_eval_tta")["top1"]
        res["wall_seconds"] = round(sum(v for k, v in timings.items() if k.startswith("qcfs_")), 1)
        res["wall_seconds_definition"] = ("QCFS ANN training + LM-HT conversion + SNN evaluation (one network)"
                                          + ("" if args.no_tta else " + its TTA evaluation"))
    if "qac" in flavours:
        tqa = train_info(out / "qac")
        conv = load(out / "qac_mixed" / "conversion.json")
        ev = eval_info(out / "qac_mixed_eval")
        res.update(qac_quantized_top1=conv["ann"]["acc"], qac_train=tqa, qac_snn_top1=ev["top1"],
                   qac_avg_T=(conv.get("average_T") or {}).get("plain"), qac_avg_T_detail=conv.get("average_T"),
                   qac_snn_eval=ev, qac_convert_top1=conv["snn"]["acc"])
        if not args.no_tta:
            res["qac_snn_top1_tta"] = eval_info(out / "qac_mixed_eval_tta")["top1"]
        res["qac_wall_seconds"] = round(sum(v for k, v in timings.items() if k.startswith("qac_")), 1)
    if "ann" in flavours:
        ta = train_info(out / "ann")
        ev = eval_info(out / "ann_eval")
        res.update(ann_top1=ev["top1"], ann_train=ta)
        if not args.no_tta:
            res["ann_top1_tta"] = eval_info(out / "ann_eval_tta")["top1"]
    if "warm" in flavours:
        ta = train_info(ann)
        tq = train_info(out / "warm_qcfs")
        conv = load(out / "warm_lmht_L2T2" / "conversion.json")
        ev = eval_info(out / "warm_lmht_L2T2_eval")
        res.update(warm_ann_top1=eval_info(out / "warm_ann_eval")["top1"], warm_ann_train=ta,
                   warm_quantized_top1=conv["ann"]["acc"], warm_quantized_train=tq, warm_snn_top1=ev["top1"],
                   warm_snn_T=2, warm_snn_L=2, warm_snn_eval=ev, warm_snn_convert_top1=conv["snn"]["acc"])
        if not args.no_tta:
            res["warm_snn_top1_tta"] = eval_info(out / "warm_lmht_L2T2_eval_tta")["top1"]
        res["warm_wall_seconds"] = round(sum(v for k, v in timings.items() if k.startswith("warm_")
                                             and not k.startswith("warm_qac_") and k != "warm_eval_tta_s"), 1)
        res["warm_wall_seconds_definition"] = ("float ANN training + its evaluation + QCFS warm-start training + "
                                               "LM-HT conversion + SNN evaluation (the TTA evaluation is not included)")
    if "warm_qac" in flavours:
        tq = train_info(out / "warm_qac")
        conv = load(out / "warm_qac_mixed" / "conversion.json")
        ev = eval_info(out / "warm_qac_mixed_eval")
        res.update(warm_qac_quantized_top1=conv["ann"]["acc"], warm_qac_train=tq, warm_qac_snn_top1=ev["top1"],
                   warm_qac_avg_T=(conv.get("average_T") or {}).get("plain"), warm_qac_avg_T_detail=conv.get("average_T"),
                   warm_qac_snn_eval=ev, warm_qac_convert_top1=conv["snn"]["acc"])
        if not args.no_tta:
            res["warm_qac_snn_top1_tta"] = eval_info(out / "warm_qac_mixed_eval_tta")["top1"]
        res["warm_qac_steps_wall_seconds"] = round(sum(v for k, v in timings.items() if k.startswith("warm_qac_")
                                                       and k != "warm_qac_eval_tta_s"), 1)
    res["total_wall_seconds"] = round(time.perf_counter() - t_all, 1)
    shortened = any(x is not None for x in (args.time_budget_s, args.epochs, args.subset, args.limit))
    res["complete"] = not shortened
    res["scale"] = {"time_budget_s_per_network": args.time_budget_s or "config", "epochs": args.epochs or "config",
                    "train_images": args.subset or 50000, "test_images": args.limit or 10000,
                    "note": "shortened run of the recipe: NOT the full recipe's numbers" if shortened else "full recipe"}
    path = REPO / args.results
    path.parent.mkdir(parents=True, exist_ok=True)
    if args.merge and path.is_file():
        earlier = load(path)
        for key in ("step_seconds", "load_average", "step_commits", "configs"):
            res[key] = {**earlier.get(key, {}), **res[key]}
        res["commands"] = earlier.get("commands", []) + res["commands"]
        res["flavours"] = earlier.get("flavours", []) + [f for f in res["flavours"] if f not in earlier.get("flavours", [])]
        res["complete"] = bool(earlier.get("complete")) and res["complete"]
        res["total_wall_seconds"] = round(earlier.get("total_wall_seconds", 0) + res["total_wall_seconds"], 1)
        res = {**earlier, **res}
    if "warm_qac" in res.get("flavours", []) and "warm_qac_steps_wall_seconds" in res:
        ann_steps = [res["step_seconds"].get(k) for k in ("warm_train_ann_s", "warm_eval_ann_s")]
        if all(v is not None for v in ann_steps):
            res["warm_qac_wall_seconds"] = round(sum(ann_steps) + res["warm_qac_steps_wall_seconds"], 1)
            res["warm_qac_wall_seconds_definition"] = ("float ANN training + its evaluation (shared with warm) + QAC "
                                                       "warm-start training + mixed conversion + SNN evaluation")
    path.write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    print(json.dumps({k: res.get(k) for k in ("ann_top1", "ann_top1_tta", "quantized_top1", "snn_top1", "snn_top1_tta",
                                              "qac_snn_top1", "qac_snn_top1_tta", "qac_avg_T", "wall_seconds",
                                              "warm_ann_top1", "warm_quantized_top1", "warm_snn_top1",
                                              "warm_snn_top1_tta", "warm_wall_seconds", "warm_qac_snn_top1",
                                              "warm_qac_avg_T", "warm_qac_wall_seconds", "complete")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
