"""multispike reparam: reparameterise an LM-HT network into a single-threshold IF network running L·T steps.

Takes an LM-HT checkpoint (``multispike convert --to lmht``, a fine-tune of it with ``multispike train --mode snn
--init-from``, or a network trained directly with ``--neuron lmht``) and applies LM-HT's reparameterisation
(algorithms.md §2.7: expanded T-GIM, leak at window starts, offsets after the first neuron divided by L, input
expanded to L·T steps). Prints the per-layer window spike-count agreement measured on the test images, the
accuracy of both networks at every prefix, and saves the IF network as a checkpoint for ``multispike eval``.
"""
from __future__ import annotations

import argparse

from ._workflow_args import add_output_arguments, workflow_run

EPILOG = """\
examples:
  multispike reparam --checkpoint runs/lmht_L2T2 --out runs/lmht_L2T2_if
  multispike reparam --checkpoint runs/lmht_finetune --limit 1000 --out runs/lmht_ft_if
  multispike eval --checkpoint runs/lmht_L2T2_if --out runs/lmht_L2T2_if/eval

Agreement: per spiking layer, the fraction of (window, neuron) pairs whose IF spike sum over the L sub-steps
equals the LM-HT spike count; it is 1 wherever the window currents are non-negative (Lemma 4.1).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "reparam", help="reparameterise an LM-HT network to an L·T-step IF network; per-layer agreement on data",
        description=__doc__.split("\n\n")[0], epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="an LM-HT run directory or checkpoint file")
    data = p.add_argument_group("data")
    from ...data.provenance import add_data_arguments
    add_data_arguments(data, limit_help="measure on a class-stratified subset of N test images (seeded)")
    data.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    add_output_arguments(p, "output directory (checkpoints/, reparam.json, report.txt)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ...data.provenance import data_opts
    from ..workflows import reparameterize_checkpoint

    with workflow_run(args):
        reparameterize_checkpoint(args.checkpoint, out=args.out, dataset=args.dataset, data_dir=args.data_dir,
                                  data_opts=data_opts(args),
                                  limit=args.limit, batch_size=args.batch_size, overwrite=args.overwrite)
    return 0
