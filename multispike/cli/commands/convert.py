"""multispike convert: turn a trained ANN / QCFS / QAT checkpoint into an IF, LM-HT, mixed-timestep or uniform-T SNN.

Loads the checkpoint (its model and config come from the checkpoint's JSON), converts it with the library's
converters, measures the source ANN and the SNN at every timestep prefix on the test split, prints the
conversion report and saves the SNN as a checkpoint (``<out>/checkpoints``) that ``multispike eval
--checkpoint``, ``multispike train --mode snn --init-from``, ``multispike calibrate`` and ``multispike reparam``
load. ``<out>/conversion.json`` holds the numbers, ``<out>/report.txt`` the printout.
"""
from __future__ import annotations

import argparse

from ._workflow_args import add_output_arguments, workflow_run

EPILOG = """\
targets:
  if       QCFS ANN -> IF (θ = ϑ, v(0) = θ/2; algorithms.md §3.2); a ReLU ANN -> IF with data thresholds
           (--threshold 99.9% or max, from --calib-batches training batches; BN folded, MaxPool -> AvgPool)
  lmht     QCFS ANN -> LM-HT (§2.6 hybrid initialisation: θ = ϑ, v(0) = θ/2, uniform T-GIM, λ = 1, first-layer
           input scale L, biases after it ×L so the net equals the QCFS ANN at L·T levels; --hybrid-bias-scale 1
           for LMHT-C's ×1); also measures IF at T and at L·T from the same ANN (--no-sanity skips it).
           Fine-tune the result with `multispike train --mode snn --init-from OUT`, or pass the QCFS ANN itself:
           `multispike train --mode snn --neuron lmht --levels L --timesteps T --init-from QCFS_RUN`
  mixed    QAT (QAC) ANN -> mixed-timestep IF SNN: each layer runs its learned T_l, --align between layers
           (default aver+aver; §4.3-§4.4); prints per-layer T_l and the average T
  uniform  QCFS/QAC ANN -> IF SNN with one --timesteps T in every layer, without (--align none, default) or
           with averaging (--align aver+aver): QAC's Table 8 baseline; --compare-align runs both

examples:
  multispike convert --checkpoint runs/qcfs_ann --to if --timesteps 4 --out runs/qcfs_if4
  multispike convert --checkpoint runs/qcfs_ann --to lmht --levels 2 --timesteps 2 --out runs/lmht_L2T2
  multispike convert --checkpoint runs/qcfs_ann --to lmht --levels 2 --timesteps 2 --hybrid-bias-scale 1 \\
      --out runs/lmht_L2T2_code
  multispike convert --checkpoint runs/qac --mixed-timestep --align aver+aver --out runs/qac_mixed
  multispike convert --checkpoint runs/qcfs_ann --to uniform --timesteps 4 --compare-align --out runs/table8
  multispike convert --checkpoint runs/relu_ann --to if --threshold 99.9% --timesteps 32 --out runs/relu_if
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..workflows import TARGETS

    p = subparsers.add_parser(
        "convert", help="convert a trained ANN/QCFS/QAT checkpoint to an IF, LM-HT, mixed-timestep or uniform SNN",
        description=__doc__.split("\n\n")[0], epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run directory or checkpoint file of the trained network")
    p.add_argument("--to", choices=TARGETS, default=None, help="conversion target (see below)")
    p.add_argument("--mixed-timestep", action="store_true", help="same as --to mixed (QAC's name for the target)")
    p.add_argument("--timesteps", "-T", type=int, default=None, help="T of every layer (if, lmht, uniform)")
    p.add_argument("--levels", "-L", type=int, default=2, help="LM-HT levels L (default 2)")
    p.add_argument("--hybrid-bias-scale", default=None, metavar="L|1",
                   help="lmht: multiply biases after the first spiking layer by L (default, 'exact': the LM-HT net "
                        "equals the QCFS ANN with L·T levels, the start hybrid fine-tuning should have) or 1 ('code', "
                        "LMHT-C's conversion)")
    p.add_argument("--align", default="default", metavar="MODE",
                   help="mixed: alignment between layers (default aver+aver; also aver+trunc, repl+aver, repl+trunc); "
                        "uniform: none (default, plain QCFS) or a mode such as aver+aver")
    p.add_argument("--compare-align", action="store_true",
                   help="uniform: also convert with the other alignment choice and print both (QAC Table 8)")
    p.add_argument("--threshold", default=None, metavar="qcfs|99.9%|max",
                   help="if: threshold rule - qcfs (the quantizer clip; default for quantized ANNs), max, or a "
                        "percentile such as 99.9%% (default for ReLU ANNs)")
    p.add_argument("--v-init", default="half", choices=("half", "zero"), help="initial membrane θ/2 or 0")
    p.add_argument("--tgim", default=None, choices=("learnable", "identity"),
                   help="lmht: T-GIM of the LM-HT neurons - learnable (the paper's; mixes steps, not exportable to "
                        "NIR) or identity (fixed; `multispike export` writes it). Default: the converter's")
    p.add_argument("--no-sanity", action="store_true", help="lmht: skip the IF sanity conversions")
    data = p.add_argument_group("data")
    from ...data.provenance import add_data_arguments
    add_data_arguments(data, limit_help="evaluate on a class-stratified subset of N test images (seeded)")
    data.add_argument("--batch-size", type=int, default=128, help="evaluation batch size (default 128)")
    data.add_argument("--calib-batches", type=int, default=8,
                      help="training batches for --threshold percentiles (default 8)")
    add_output_arguments(p, "output directory (checkpoints/, conversion.json, report.txt)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..workflows import convert_checkpoint

    to = args.to
    if args.mixed_timestep:
        if to not in (None, "mixed"):
            raise ValueError(f"--mixed-timestep means --to mixed, but --to is {to!r}; give one of them")
        to = "mixed"
    if to is None:
        raise ValueError("choose a target: --to if|lmht|mixed|uniform (or --mixed-timestep)")
    from ...data.provenance import data_opts

    with workflow_run(args):
        convert_checkpoint(args.checkpoint, to, out=args.out, timesteps=args.timesteps, levels=args.levels,
                           hybrid_bias_scale=args.hybrid_bias_scale, align=args.align, threshold=args.threshold,
                           v_init=args.v_init, dataset=args.dataset, data_dir=args.data_dir, data_opts=data_opts(args),
                           limit=args.limit, batch_size=args.batch_size, calib_batches=args.calib_batches,
                           compare_align=args.compare_align, sanity=not args.no_sanity, tgim=args.tgim,
                           overwrite=args.overwrite)
    return 0
