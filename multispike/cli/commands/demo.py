"""``multispike demo``: train a small ANN on the embedded digits, convert it, compare accuracies."""
from __future__ import annotations

import argparse

_ROWS = ("if", "lmht", "qac", "mlif")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo",
                       help="end-to-end demo on the embedded 8x8 digits: IF, LM-HT, QAC, M-LIF (about a minute on CPU)",
                       description="Train a small CNN on scikit-learn's embedded digits, convert it to IF neurons, "
                                   "and compare LM-HT (hybrid QCFS -> LM-HT, reparameterised to IF), QAC (learned "
                                   "per-layer timesteps, mixed-timestep SNN, calibration) and one-hot M-LIF (S=3 "
                                   "vs LIF at T=1) on the same data. Prints accuracy per method and timestep, "
                                   "per-layer spike statistics and energy ratios; every number is measured in "
                                   "the run. No data download is needed.")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs of the ReLU ANN, trained from scratch; the QCFS ANN and the QAC network "
                        "start from it (default 20, 6 with --quick)")
    p.add_argument("--finetune-epochs", type=int, default=None,
                   help="SNN fine-tuning epochs of the LM-HT and M-LIF/LIF rows (default 4, 2 with --quick)")
    p.add_argument("--timesteps", type=int, nargs="+", default=None,
                   help="timesteps at which the converted IF network is evaluated (default 1 2 4 8 16 32)")
    p.add_argument("--threshold", default="99.9%", help="IF threshold rule: 'max', a percentile like '99.9%%'")
    p.add_argument("--rows", nargs="+", default=list(_ROWS), choices=_ROWS, metavar="ROW",
                   help="which comparison rows to run: if, lmht, qac, mlif (default: all)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads while the demo runs (default 1: these tiny layers run fastest on one)")
    p.add_argument("--quick", action="store_true",
                   help="reduced setting for smoke tests (fewer epochs; the numbers are not for reading)")
    p.add_argument("--out", default="runs/demo", help="output folder for results.json (default runs/demo)")
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ...demo import DemoConfig, run_demo

    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    if args.finetune_epochs is not None and args.finetune_epochs < 0:
        raise ValueError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    if args.timesteps is not None and any(t < 1 for t in args.timesteps):
        raise ValueError(f"--timesteps must all be >= 1, got {args.timesteps}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    overrides = dict(threshold=args.threshold, rows=tuple(dict.fromkeys(args.rows)), seed=args.seed, out=args.out,
                     progress=not args.no_progress, threads=args.threads)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.finetune_epochs is not None:
        overrides["finetune_epochs"] = args.finetune_epochs
    if args.timesteps is not None:
        overrides["timesteps"] = tuple(sorted(set(args.timesteps)))
    cfg = DemoConfig.quick_config(**overrides) if args.quick else DemoConfig(**overrides)
    from ...train.guards import ensure_writable_dir
    ensure_writable_dir(args.out, "--out")   # before the work, not after it
    run_demo(cfg)
    return 0
