"""Fine-tuning recipe check for the exact M-LIF init (evidence table 3's ``mlif-cpu-small`` data and ANN;
that profile was called ``cpu-small`` when the committed sweep ran).

From the calibrated 2-bit LQ-ANN, the S = 3 M-LIF net starts *equal* to it (algorithms.md §5.4); this script
fine-tunes that start with Adam at several (γ, lr) and records the first conv's gradient norm at the start for each
γ next to the LQ-ANN's straight-through gradient, so the recipe of ``mlif_table.py`` (γ, lr) rests on a measurement.

Run: ``PYTHONPATH=. python3 benchmarks/evidence/mlif_recipe_sweep.py --out DIR [--epochs 2]`` (about 8 minutes on
one CPU core); writes ``DIR/mlif_recipe_sweep.json`` with the command, commit and hardware.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.evidence import common as C  # noqa: E402
from benchmarks.evidence import mlif_table as M  # noqa: E402

GRID = ((0.3, 1e-4), (0.5, 1e-4), (0.7, 1e-4), (1.0, 1e-4), (1.0, 1e-3), (0.3, 1e-3))


def main(argv: list[str] | None = None) -> int:
    from multispike.convert import mlif_hybrid_init
    from multispike.quant.logquant import calibrate_log_quant

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=float, default=2.0, help="fine-tuning epochs per (γ, lr)")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--cache-dir", type=Path, default=None, help="reuse the float ANN (as the evidence suite does)")
    args = ap.parse_args(argv)
    M.register_profiles()
    ns = argparse.Namespace(profile=M.CPU_SMALL.name, dry_run=False, max_seconds=None, data=args.data, out=args.out,
                            device=None, commit=None, cache_dir=args.cache_dir, quiet=False, hard_seconds=None)
    ctx = C.make_context(ns, None if argv is None else [sys.argv[0], *argv])
    t0 = time.perf_counter()
    table = C.TableRun("mlif", M.TITLE, ctx, 3600, M.weights(ctx.profile))
    data = ctx.cifar
    train, test = C.loaders(ctx, data.train_x, data.train_y, data.test_x, data.test_y, seed=ctx.seed("mlif_loader"))
    plain, _ = C.loaders(ctx, data.train_x, data.train_y, data.test_x, data.test_y, seed=ctx.seed("mlif_calib"),
                         augment=False)
    calib = [b for _, b in zip(range(16), plain)]
    ann, rec = C.float_ann(table)
    lq = M._lq_model(ann, M.SOURCE_BITS).to(ctx.device)
    calibrate_log_quant(lq, calib, num_batches=16)
    lq_acc = C.test_accuracy(lq, test, ctx)["accuracy"]
    batch = next(iter(plain))
    grads = {"lq_ann_ste": M._first_conv_grad(copy.deepcopy(lq), batch, ctx)}
    runs = []
    for gamma, lr in GRID:
        ctx.seed("mlif_S3")
        snn, _ = mlif_hybrid_init(lq, calib[:1], lanes=2 ** M.SOURCE_BITS - 1, T=1, neuron_kwargs=dict(gamma=gamma))
        snn.to(ctx.device)
        key = f"gamma{gamma:g}"
        if key not in grads:
            grads[key] = M._first_conv_grad(copy.deepcopy(snn), batch, ctx)
        acc0 = C.test_accuracy(snn, test, ctx)["accuracy"]
        ctx.seed("mlif_S3_train")
        r = C.train_phase(snn, train, C.TrainSpec(epochs=args.epochs, lr=lr, opt="adam", weight_decay=0.0),
                          name=f"S3_gamma{gamma:g}_lr{lr:g}", ctx=ctx, allot_s=1e9, table="mlif_recipe_sweep")
        runs.append({"gamma": gamma, "lr": lr, "init_accuracy": acc0,
                     "accuracy": C.test_accuracy(snn, test, ctx)["accuracy"], "epochs_run": r["epochs_run"],
                     "epoch_loss": r["epoch_loss"], "seconds": r.get("seconds"), "trainer_log": r["trainer_log"]})
        ctx.log(f"  γ {gamma:g}, lr {lr:g}: init {acc0:.2f} -> {runs[-1]['accuracy']:.2f}")
    n = len(data.test_y)
    out = {"what": __doc__.splitlines()[0], "trainer": C.TRAINER,
           "command": C.command_line(None if argv is None else [sys.argv[0], *argv]),
           "environment": C.environment(ctx.device), "profile": ctx.profile.to_dict(),
           "ann_accuracy": rec["test_accuracy"], "lq_b2_calibrated_accuracy": lq_acc, "n_test": n,
           "stderr_pp_at_44": round(C.stderr_pp(44.0, n), 3),
           "first_conv_grad_norm": grads, "runs": runs, "wall_time_s": round(time.perf_counter() - t0, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mlif_recipe_sweep.json").write_text(json.dumps(out, indent=1))
    ctx.log(f"wrote {args.out / 'mlif_recipe_sweep.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
