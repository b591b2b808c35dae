"""``multispike`` command line. Each module in ``multispike.cli.commands`` adds one sub-command.

A command module defines ``register(subparsers)`` which adds a parser (with ``help=``) and sets
``func=<callable(args) -> int>`` as its default. Modules are discovered automatically, so adding a
command never edits this file.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from .. import __version__
from . import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="multispike",
        description="Low-latency spiking neural networks (LM-HT, QAC, one-hot M-LIF): train, convert, evaluate.")
    parser.add_argument("--version", action="version", version=f"multispike {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, TypeError, KeyError) as exc:
        # Bad input from the user: one clear line, no traceback (set MULTISPIKE_DEBUG=1 for one).
        import os
        if os.environ.get("MULTISPIKE_DEBUG"):
            raise
        print(f"multispike {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
