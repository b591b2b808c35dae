"""multispike calibrate: learn the initial membrane v(0) and threshold θ of a converted SNN (QAC §4.5).

All weights stay frozen. v(0) (per channel or per layer) and θ of every spiking layer are trained with Adam on
½·mean((1/T_L)·Σ_t o_SNN(t) − o_ANN)² over unlabeled training images, where o_ANN is the ANN the SNN was
converted from (its checkpoint is found through the conversion recipe; ``--ann-checkpoint`` overrides it) with
its quantizers (``--target quantized``) or with ReLU instead (``--target float``). Prints the loss and accuracy
before and after, per-layer T_l, θ and v(0), and the average T; saves the calibrated SNN as a checkpoint.
"""
from __future__ import annotations

import argparse

from ._workflow_args import add_output_arguments, workflow_run

EPILOG = """\
examples:
  multispike calibrate --checkpoint runs/qac_mixed --epochs 20 --lr 1e-3 --out runs/qac_mixed_cal
  multispike calibrate --checkpoint runs/qac_mixed --target float --v-init-shape layer --epochs 5 --out runs/cal2

Output: <out>/calibration.json (numbers), <out>/report.txt (the printout), <out>/checkpoints (the calibrated SNN,
loadable by `multispike eval --checkpoint <out>`).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ...convert.calibrate import TARGETS, V_INIT_SHAPES

    p = subparsers.add_parser(
        "calibrate", help="calibrate v(0) and θ of a converted SNN against its ANN (QAC §4.5); before/after report",
        description=__doc__.split("\n\n")[0], epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a converted SNN (output of `multispike convert`)")
    p.add_argument("--ann-checkpoint", default=None,
                   help="the teacher ANN (default: the checkpoint the SNN was converted from)")
    p.add_argument("--epochs", type=int, default=10, help="passes over the calibration images (default 10)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--target", default="quantized", choices=TARGETS,
                   help="match the quantized ANN's logits (default) or the float (ReLU) ANN's")
    p.add_argument("--v-init-shape", default="channel", choices=V_INIT_SHAPES,
                   help="one v(0) per channel (default) or one per layer")
    data = p.add_argument_group("data")
    from ...data.provenance import add_data_arguments
    add_data_arguments(data, limit_help="measure before/after on a class-stratified subset of N test images (seeded)")
    data.add_argument("--calib-samples", type=int, default=512,
                      help="class-balanced training images used, without labels (default 512)")
    data.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    add_output_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ...data.provenance import data_opts
    from ..workflows import calibrate_checkpoint

    with workflow_run(args):
        calibrate_checkpoint(args.checkpoint, out=args.out, epochs=args.epochs, lr=args.lr, target=args.target,
                             v_init_shape=args.v_init_shape, ann_checkpoint=args.ann_checkpoint, dataset=args.dataset,
                             data_dir=args.data_dir, data_opts=data_opts(args), calib_samples=args.calib_samples,
                             limit=args.limit,
                             batch_size=args.batch_size, overwrite=args.overwrite)
    return 0
