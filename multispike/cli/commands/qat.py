"""multispike qat: quantization-aware training of any zoo model with QAC quantizers (learnable per-layer T_l).

Builds the model with ReLU (or QCFS/QAC) activations, runs ``multispike.quant.qat.prepare_qat`` (every ReLU/QCFS
-> QAC quantizer Q(x) = (α/T)·clip(⌊x·T/α + ½⌋, 0, T), every MaxPool -> AvgPool), then trains weights, α and t
jointly exactly like ``multispike train --mode qat`` (same flags, checkpoints, resume, torchrun). Every epoch
``log.jsonl`` records each layer's T_l and bit width; the table is printed at the end. Convert the result with
``multispike convert --mixed-timestep --align aver+aver``.
"""
from __future__ import annotations

import argparse

EPILOG = """\
examples:
  multispike qat --model vgg_small --dataset cifar10 --subset 5000 --epochs 2 --t-init 4 \\
      --out runs/qac
  multispike qat --model resnet20_cifar --qac-param n_alpha --t-init 4 --epochs 1 --out runs/qac_r20
  multispike qat --init-from runs/qcfs_ann --epochs 1 --out runs/qac_from_qcfs   # QCFS clip/levels -> α/t
  multispike qat --config configs/qac/cifar10_resnet20_qat_latency.yaml --out runs/qac_latency
  multispike qat --model vgg_small --subset 5000 --epochs 2 --opt sgd --lr 0.01 --quant-opt adam --quant-lr 3e-2 \
      --latency-weight 1e-2 --latency-per-layer macs --out runs/qac_lat      # learned T_l that differ per layer

Latency term (multispike's addition; QAC trains t with cross-entropy only, and t then barely moves):
  --latency-weight λ adds λ·Σ_l w_l·t_l to the loss (t_l = each layer's continuous timestep, exact gradient
  through the parameterisation); --latency-per-layer uniform (w_l = 1) or macs (w_l ∝ the MACs feeding layer
  l, mean 1). The quantizers' (t, α) form the "quant" parameter group: --quant-opt (e.g. adam beside sgd for
  the weights), --quant-lr (default --neuron-lr, else --lr), --quant-weight-decay, --quant-lr-scheduled.
  Every epoch log.jsonl records qac_layers (T_l, t, α) and latency_term; <out>/timesteps.txt is the table.

All `multispike train` flags apply (see `multispike train --help`); --mode is qat. Values resolve as:
defaults < --config YAML < explicit flags.
"""

_SPIKING = ("if", "lif", "lmht", "mlif")
#: attribute names of QACQuantizer's learnable parameters (t or n, and clip α or step d)
_QAC_PARAMS = ("t", "n", "clip", "d")


def register(subparsers: argparse._SubParsersAction) -> None:
    from ...quant.qac import PARAMETERISATIONS, T_ROUNDING
    from ...train.config_args import add_config_arguments

    p = subparsers.add_parser(
        "qat", help="quantization-aware training with QAC quantizers (ReLU -> Q, MaxPool -> AvgPool); T_l per epoch",
        description=__doc__.split("\n\n")[0], epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    q = p.add_argument_group("QAC quantizer (prepare_qat)")
    q.add_argument("--qac-param", default="t_alpha", choices=PARAMETERISATIONS,
                   help="learnable pair: t_alpha (default; continuous t and clip α), n_d, n_alpha, d_alpha")
    q.add_argument("--t-init", type=float, default=4.0, help="initial continuous timestep t (levels), >= 1 (default 4)")
    q.add_argument("--alpha-init", type=float, default=None,
                   help="initial clip α = θ of the SNN, > 0, the same for every layer. Default: each layer's α from "
                        "the data (--clip-init, the 99.9th percentile of its pre-activations on 4 training batches); "
                        "8 with --clip-init none. Quantizers made from QCFS start at its ϑ either way")
    q.add_argument("--t-to-T", default="round", choices=T_ROUNDING,
                   help="integer T_l from t: round (half up, default) or ceil")
    q.add_argument("--t-max", type=int, default=64, help="upper bound of T_l (default 64)")
    add_config_arguments(p)
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import os
    from pathlib import Path

    from ...train.config import load_yaml_config
    from ...train.config_args import config_from_args
    from ...train.runner import run_training
    from ..workflows import qat_epoch_table

    if getattr(args, "mode", "qat") != "qat":
        raise ValueError(f"multispike qat always trains with --mode qat (got --mode {args.mode}); use "
                         f"`multispike train` for other modes")
    if not args.t_init >= 1:
        raise ValueError(f"--t-init must be >= 1 (a layer runs at least one timestep), got {args.t_init}")
    if args.alpha_init is not None and not args.alpha_init > 0:
        raise ValueError(f"--alpha-init must be > 0, got {args.alpha_init}")
    if args.t_max < 1:
        raise ValueError(f"--t-max must be >= 1, got {args.t_max}")
    yaml_keys = load_yaml_config(args.config) if args.config else {}
    neuron_given = hasattr(args, "neuron") or "neuron" in yaml_keys
    args.mode = "qat"
    if not neuron_given:
        args.neuron = "relu"
    cfg = config_from_args(args)
    if cfg.neuron in _SPIKING and cfg.init_from is None:
        raise ValueError(f"QAT trains a quantized ANN: --neuron must be relu, qcfs or qac (got {cfg.neuron!r}); "
                         f"prepare_qat turns relu/qcfs into QAC quantizers")
    if "timesteps" not in vars(args) and "timesteps" not in yaml_keys:
        cfg.timesteps = 1           # an ANN: one step (the quantizers carry T_l)
    if "neuron_param_patterns" not in vars(args) and "neuron_param_patterns" not in yaml_keys:
        # the quantizer's learnable pair joins the neuron group, so --neuron-lr / --neuron-weight-decay set its lr
        cfg.neuron_param_patterns = [*cfg.neuron_param_patterns, *_QAC_PARAMS]
    prep = {"param": args.qac_param, "t": args.t_init, "t_to_T": args.t_to_T, "t_max": args.t_max}
    if args.alpha_init is not None:   # given: kept; absent: α from the data (run_training, --clip-init)
        prep["alpha"] = args.alpha_init
    cfg.prepare_qat = {**prep, **(cfg.prepare_qat or {})}
    cfg.validate()
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        return 0
    summary = run_training(cfg)
    if os.environ.get("RANK", "0") == "0":
        timesteps = Path(cfg.out) / "timesteps.txt"
        if timesteps.exists():      # QAC quantizers: T_l with the continuous t, per epoch
            print(timesteps.read_text().rstrip())
        else:
            table, _ = qat_epoch_table(cfg.out)
            print("per-layer T_l at the end of each epoch (bit width = log2 T_l):")
            print(table)
        if summary.get("final_acc") is not None:
            print(f"final accuracy {100 * summary['final_acc']:.2f}%; best {100 * summary['best_acc']:.2f}% at epoch "
                  f"{summary['best_epoch']}; results in {cfg.out} (next: multispike convert --checkpoint {cfg.out} "
                  f"--mixed-timestep --align aver+aver --out DIR)")
    return 0
