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
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of a failure instead of one error line (allowed anywhere on "
                             "the command line; or set MULTISPIKE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


#: Set to 1 (or pass ``--debug``) to get the full traceback of an expected failure instead of one line.
DEBUG_ENV = "MULTISPIKE_DEBUG"

#: Exit codes: 2 bad input (arguments, data, checkpoints, shapes), 1 a failure while running (file system,
#: divergence, a locked run folder), 128 + N a run stopped by signal N after saving a checkpoint.
EXIT_BAD_INPUT, EXIT_FAILURE = 2, 1


#: Library parameters whose name differs from the ``dest`` of the flag that sets them (first match wins).
PARAM_DESTS: dict[str, tuple[str, ...]] = {"data_opts": ("data_opt", "dataset_kwargs"),
                                            # commands cap the evaluated data by samples, not batches
                                            "max_batches": ("limit",)}


def _flag_for(flags: dict[str, str], param: str) -> str | None:
    for dest in (param, *PARAM_DESTS.get(param, ())):
        if dest in flags:
            return flags[dest]
    return None


def option_flags(parser: argparse.ArgumentParser, command: str | None) -> dict[str, str]:
    """``{dest: "--flag"}`` for every option of sub-command ``command`` (its first long spelling)."""
    sub = None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            sub = action.choices[command]
    if sub is None:
        return {}
    flags = {}
    for action in sub._actions:
        long = [o for o in action.option_strings if o.startswith("--")]
        if long and action.dest != "help":
            flags.setdefault(action.dest, long[0])
    return flags


def _describe(exc: BaseException, flags: dict[str, str] | None = None) -> tuple[str, int]:
    """One line for an expected failure and its exit code; raises ``exc`` again for unexpected ones (bugs).

    A :class:`~multispike._errors.ParameterMessage` error names Python parameters; ``flags`` (:func:`option_flags`) writes
    each as the command's flag that sets it, so the library never has to know the command line.
    """
    from .._errors import ParameterMessage
    from ..train.guards import NonFiniteError, RunLockedError, TrainingInterrupted

    flags = flags or {}
    text = exc.render(lambda p: _flag_for(flags, p)) if isinstance(exc, ParameterMessage) else str(exc)
    # Run failures first: some of them (divergence, an interrupted run) name settings too, but are not bad input.
    if isinstance(exc, TrainingInterrupted):
        return text, 128 + exc.signum
    if isinstance(exc, (NonFiniteError, RunLockedError)):
        return text, EXIT_FAILURE
    if isinstance(exc, ParameterMessage):   # ParameterError, ConfigError, MissingDataError, DataMismatchError
        return text or type(exc).__name__, EXIT_BAD_INPUT
    if isinstance(exc, MemoryError):
        return ("out of memory" + (f" ({exc})" if str(exc) else "") + "; use a smaller --batch-size, --limit/--subset "
                "or fewer --timesteps"), EXIT_FAILURE
    if isinstance(exc, OSError):
        # A missing input is bad input; PermissionError, IsADirectoryError, NotADirectoryError, disk full,
        # read-only file system, ... are failures of the environment.
        code = EXIT_BAD_INPUT if isinstance(exc, FileNotFoundError) else EXIT_FAILURE
        if exc.filename is not None and exc.strerror:
            where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
            return f"{where}: {exc.strerror}", code
        return exc.strerror or str(exc) or type(exc).__name__, code
    if isinstance(exc, (ValueError, TypeError, KeyError, IndexError, EOFError)):
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        return str(text) or type(exc).__name__, EXIT_BAD_INPUT
    try:   # Pillow's DecompressionBombError derives from Exception only
        from PIL.Image import DecompressionBombError
    except ImportError:  # pragma: no cover
        DecompressionBombError = ()  # type: ignore[assignment]
    if DecompressionBombError and isinstance(exc, DecompressionBombError):
        return f"image refused as a decompression bomb: {exc}", EXIT_BAD_INPUT
    if isinstance(exc, RuntimeError) and _is_shape_error(str(exc)):
        return (f"the input does not fit the model ({str(exc).splitlines()[0]}); check --dataset / input size / "
                f"--num-classes / --timesteps against what the model was built for"), EXIT_BAD_INPUT
    raise exc


def _is_shape_error(text: str) -> bool:
    """torch's wording for an input of the wrong size (conv/linear/view), as opposed to an internal bug."""
    keys = ("shapes cannot be multiplied", "size mismatch", "Expected input batch_size", "expected input",
            "must match the size of tensor", "is invalid for input of size", "Given groups=", "out of bounds",
            "Kernel size can't be greater than actual input size", "Calculated padded input size")
    return any(k in text for k in keys)


def main(argv: list[str] | None = None) -> int:
    """Run one command; an expected failure becomes one ``multispike <cmd>: error: ...`` line on stderr.

    Returns the exit code (see :data:`EXIT_BAD_INPUT`, :data:`EXIT_FAILURE`; ``128 + N`` after signal N).
    ``--debug`` anywhere on the command line, or ``MULTISPIKE_DEBUG=1``, re-raises with the full traceback.
    A command that ran under ``torchrun`` (a process group was started) does not return: the process ends
    through :func:`multispike.train.exit_process`, which skips the interpreter finalization that can abort a
    finished gloo run.
    """
    code = _run_command(argv)
    distributed = sys.modules.get("multispike.train.distributed")   # never imported: no group was started
    if distributed is not None and distributed._group_started:
        distributed.exit_process(code)
    return code


def _run_command(argv: list[str] | None) -> int:
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(os.environ.get(DEBUG_ENV))
    if "--debug" in argv:
        argv.remove("--debug")
        debug = True
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"multispike {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - expected failures become one line; _describe re-raises bugs
        if debug:
            raise
        message, code = _describe(exc, option_flags(parser, args.command))
        print(f"multispike {args.command}: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
