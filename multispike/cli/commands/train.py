"""multispike train: train a zoo model (ANN, QAT, direct SNN or hybrid) from a YAML recipe and flags.

Runs alone or under ``torchrun --nproc_per_node=N -m multispike train ...`` (DDP; rank 0 logs and writes
checkpoints). ``--resume`` continues a killed run from ``<out>/checkpoints/last.json``.
"""
from __future__ import annotations

import argparse
import json
import os

EPILOG = """\
examples:
  multispike train --config configs/cpu/vgg_small_if_cifar10.yaml --out runs/vgg_small
  multispike train --config configs/cpu/vgg_small_if_cifar10.yaml --out runs/vgg_small --resume
  torchrun --standalone --nproc_per_node=2 -m multispike train --config configs/cpu/vgg_small_if_cifar10.yaml \\
      --out runs/ddp
  multispike train --model resnet20_cifar --neuron lmht --levels 2 --timesteps 2 --dataset cifar10 --subset 2000 \\
      --epochs 1 --opt sgd --lr 0.025 --nesterov --out runs/lmht

Values resolve as: built-in defaults < the --config YAML file < flags given on the command line. The
resolved config is written to <out>/config.json and <out>/args.yaml; per-epoch metrics to <out>/log.jsonl
(one JSON object per line, then a summary line) and <out>/summary.json.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ...train.config_args import add_config_arguments

    parser = subparsers.add_parser(
        "train", help="train a model (ann / qat / snn / hybrid) from a YAML recipe; resumable, torchrun-ready",
        description=__doc__.split("\n\n")[0], epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as JSON and exit without training")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ...train.config_args import config_from_args
    from ...train.runner import run_training

    cfg = config_from_args(args)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        return 0
    summary = run_training(cfg)
    if os.environ.get("RANK", "0") == "0" and summary.get("final_acc") is not None:   # rank 0 only under torchrun
        per_t = summary.get("final_acc_per_t") or []
        extra = f" (per t: {', '.join(f'{100 * a:.2f}' for a in per_t)})" if len(per_t) > 1 else ""
        print(f"final accuracy {100 * summary['final_acc']:.2f}%{extra}; best {100 * summary['best_acc']:.2f}% at "
              f"epoch {summary['best_epoch']}; results in {cfg.out}")
    return 0
