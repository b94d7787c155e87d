"""The ``medft`` command line: one module per command. Its docstring is the command's help, ``add_to``
declares the options, and ``run`` (a plain function, called with the options as keyword arguments) calls
the library and prints what it returns.

Heavy imports (torch, MONAI) happen inside the handlers so that ``medft --help`` answers at once.
"""
from __future__ import annotations

import argparse
import os
import sys

from medft import __version__
from medft.cli import (
    bundle,
    check_data,
    demo,
    evaluate,
    export,
    interpolate,
    predict,
    review,
    stress,
    train,
    tune,
    validate,
)
from medft.cli.common import PLUMBING
from medft.errors import DISK_FULL_ERRNOS, find_user_error

COMMANDS = (check_data, train, validate, tune, interpolate, evaluate, stress, predict, export, review, bundle, demo)  # in --help's order


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    processes = os.environ.get("WORLD_SIZE", "1")
    if processes not in ("", "1") and not args.distributed:
        print(f"medft: {args.command.removeprefix('medft ')} runs as one process, but torchrun started "
              f"WORLD_SIZE={processes} of them (each would do the whole job). Fix: run it without torchrun; only "
              "medft train trains across processes", file=sys.stderr)
        return 2
    try:
        return args.run(**{key: value for key, value in vars(args).items() if key not in PLUMBING})
    except KeyboardInterrupt:
        print("medft: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout left (medft ... | head): not an error of medft's
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush does not fail again
        return 141
    except Exception as exc:  # no traceback for users unless they ask for it
        return _report_failure(exc, processes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medft",
        description="Fine-tune pretrained MONAI bundle networks on your own medical images.",
        epilog="Run 'medft COMMAND --help' for a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"medft {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for command in COMMANDS:
        command.add_to(commands)
    return parser


def _report_failure(exc: Exception, processes: str) -> int:
    """One line on stderr for a failed command, and its exit status; the traceback with MEDFT_DEBUG=1."""
    user_error = find_user_error(exc)
    if user_error is not None:
        print(f"medft: {user_error}", file=sys.stderr)
        return 1
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        print(
            f"medft: no space left on the device while writing {exc.filename or 'a file'}. "
            "Fix: free space on that disk, or write to another disk (another --out folder, for example)",
            file=sys.stderr,
        )
        return 1
    if os.environ.get("MEDFT_DEBUG"):
        raise exc
    if processes not in ("", "1"):  # a peer's failure reaches the others as a broken connection
        print(f"medft: process {os.environ.get('RANK', '?')} stopped ({type(exc).__name__}: {exc}). When another "
              "process of the run failed first, its error above is the one to read; else run again with "
              "MEDFT_DEBUG=1 for the traceback and report it.", file=sys.stderr)
        return 1
    print(
        f"medft: internal error ({type(exc).__name__}: {exc}). "
        "Run again with MEDFT_DEBUG=1 for the traceback and report it.",
        file=sys.stderr,
    )
    return 1
