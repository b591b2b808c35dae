"""``multispike demo``: train a small ANN on the embedded digits, convert it, compare accuracies."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="end-to-end demo on the embedded 8x8 digits (ANN -> SNN, a few minutes on CPU)",
                       description="Train a small CNN on scikit-learn's embedded digits, convert it to IF neurons "
                                   "(and LM-HT / QAC / M-LIF where available) and print accuracy per timestep "
                                   "and per-layer spike rates. No data download is needed.")
    p.add_argument("--epochs", type=int, default=20, help="ANN training epochs (default 20)")
    p.add_argument("--finetune-epochs", type=int, default=4, help="SNN fine-tuning epochs for hybrid rows")
    p.add_argument("--timesteps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32],
                   help="timesteps at which the converted IF network is evaluated")
    p.add_argument("--threshold", default="99.9%", help="IF threshold rule: 'max', a percentile like '99.9%%'")
    p.add_argument("--rows", nargs="+", default=["if", "lmht", "qac", "mlif"],
                   help="which comparison rows to run (if, lmht, qac, mlif)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", default="runs/demo", help="output folder for results.json (default runs/demo)")
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ...demo import DemoConfig, run_demo

    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    if any(t < 1 for t in args.timesteps):
        raise ValueError(f"--timesteps must all be >= 1, got {args.timesteps}")
    cfg = DemoConfig(epochs=args.epochs, finetune_epochs=args.finetune_epochs, timesteps=tuple(sorted(args.timesteps)),
                     threshold=args.threshold, rows=tuple(args.rows), seed=args.seed, out=args.out,
                     progress=not args.no_progress)
    run_demo(cfg)
    return 0
