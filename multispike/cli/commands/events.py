"""multispike events-train: train and evaluate a one-hot M-LIF VGGSNN on event data for S = 1, 2, 3 lanes.

Every recording is integrated once into ``--frame-budget`` (T_F) binary frames. For each lane count S the
multi-level encoding (algorithms.md §5.5) merges ``G = 2^(S-1)`` frames per step, so the network runs
``Q_F = ⌈T_F/G⌉`` steps with S-lane one-hot M-LIF neurons (TET's DVS settings: hard reset, β = 0.5, θ = 1) and is
trained with the TET loss. Writes one training run per S (``<out>/S<S>``: checkpoints, log.jsonl) and the
comparison as ``<out>/results.json`` and ``<out>/report.txt``.
"""
from __future__ import annotations

import argparse

EPILOG = """\
examples:
  multispike events-train --dataset nmnist --lanes 1 2 3 --frame-budget 8 --epochs 3 --out runs/nmnist_mlif
  multispike events-train --lanes 3 --frame-budget 16 --model vggsnn_woap --epochs 10 --out runs/nmnist_woap

Cost: with the defaults (N-MNIST-small: 1,000 train / 100 test recordings, vggsnn_small 2x34x34, 3 epochs,
S = 1, 2, 3 at T_F = 8, so 8, 4 and 2 steps) about 3-4 minutes on one CPU core. vggsnn_woap is the paper's
network (TET's VGGSNN without pooling; at 34x34 its map also ends at 3x3), about 30x more work per step.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "events-train", help="train + evaluate an M-LIF VGGSNN on N-MNIST with multi-level input encoding, S = 1, 2, 3",
        description=__doc__.split("\n\n")[0], epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="nmnist", help="event dataset in the catalog (default nmnist)")
    p.add_argument("--data-dir", default=None, help="data root (default: $MULTISPIKE_DATA, else ../shared/datasets)")
    p.add_argument("--lanes", type=int, nargs="+", default=[1, 2, 3], metavar="S",
                   help="lane counts S to compare (default 1 2 3); input lanes S_i = neuron lanes S")
    p.add_argument("--frame-budget", type=int, default=8, metavar="T_F",
                   help="binary frames per recording (default 8); S lanes run ceil(T_F / 2^(S-1)) steps")
    p.add_argument("--model", default="vggsnn_small",
                   help="zoo model (default vggsnn_small, the CPU-scale VGGSNN; vggsnn_woap is the paper's)")
    p.add_argument("--size", type=int, default=None, help="resize frames to SIZE x SIZE (default: sensor size 34)")
    p.add_argument("--augment", action="store_true", help="random flip + roll of the encoded frames (off: N-MNIST "
                                                          "digits are not flip-invariant)")
    p.add_argument("--train-samples", type=int, default=None, help="class-balanced subset of training recordings")
    p.add_argument("--test-samples", type=int, default=None, help="class-balanced subset of test recordings")
    p.add_argument("--epochs", type=int, default=3, help="epochs per lane count (default 3)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--opt", default="adam", choices=("sgd", "adam", "adamw"), help="optimizer (default adam)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3, cosine schedule)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (default 0)")
    p.add_argument("--tet-lambda", type=float, default=1e-3, help="TET: weight of the MSE regulariser (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--num-threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="discard runs already in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ...train.events import train_events

    for value, flag in ((args.batch_size, "--batch-size"), (args.epochs, "--epochs"),
                        (args.num_threads, "--num-threads"), (args.size, "--size"),
                        (args.train_samples, "--train-samples"), (args.test_samples, "--test-samples")):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    from ...train.guards import ensure_writable_dir
    ensure_writable_dir(args.out, "--out")   # before the work, not after it
    train_events(out=args.out, dataset=args.dataset, lanes=args.lanes, frame_budget=args.frame_budget,
                 epochs=args.epochs, model=args.model, train_samples=args.train_samples,
                 test_samples=args.test_samples, batch_size=args.batch_size, lr=args.lr, opt=args.opt,
                 weight_decay=args.weight_decay, tet_lambda=args.tet_lambda, size=args.size, augment=args.augment,
                 data_dir=args.data_dir, seed=args.seed, num_threads=args.num_threads,
                 progress=not args.no_progress, overwrite=args.overwrite)
    return 0
