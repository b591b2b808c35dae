"""Options and run set-up shared by the checkpoint workflows (``convert``, ``calibrate``, ``reparam``).

Each of those commands reads a checkpoint, measures on data, and writes one output folder; they take the same
``--threads/--out/--overwrite`` options and start the same way (positive sizes, CPU threads, the run lock on
``--out``), written once here.
"""
from __future__ import annotations

import argparse
import contextlib
from typing import Iterator


def add_output_arguments(parser: argparse.ArgumentParser, out_help: str = "output directory") -> None:
    """``--threads``, ``--out`` and ``--overwrite`` of a workflow command."""
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")


@contextlib.contextmanager
def workflow_run(args: argparse.Namespace) -> Iterator[None]:
    """Check ``--batch-size/--threads/--limit``, set the CPU threads and hold the run lock on ``--out``.

    The lock proves ``--out`` writable before the work and keeps a second run from writing the same folder.
    """
    import torch

    from ...train.guards import RunLock

    for value, flag in ((args.batch_size, "--batch-size"), (args.threads, "--threads"), (args.limit, "--limit")):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    with RunLock(args.out, "--out"):
        yield
