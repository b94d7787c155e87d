"""The ``medft`` command line: parses arguments and calls one function per command.

Heavy imports (torch, MONAI) happen inside the commands so that ``medft --help`` answers at once.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from medft import __version__
from medft.errors import MedftError

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_MANIFESTS = ("hippocampus_sample.csv", "dicom_sample.csv")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except MedftError as exc:
        print(f"medft: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("medft: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # no traceback for users unless they ask for it
        if os.environ.get("MEDFT_DEBUG"):
            raise
        print(
            f"medft: internal error ({type(exc).__name__}: {exc}). "
            "Run again with MEDFT_DEBUG=1 for the traceback and report it.",
            file=sys.stderr,
        )
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medft",
        description="Fine-tune pretrained MONAI bundle networks on your own medical images.",
        epilog="Run 'medft COMMAND --help' for a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"medft {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    check = _command(
        commands,
        "check-data",
        "check a manifest and its files before training",
        "Reads every case of a manifest (CSV, MSD dataset.json or nnU-Net raw folder) and prints one line\n"
        "per problem: the case, the file, what is wrong and how to fix it. Exit 0 when clean (warnings\n"
        "allowed), 1 when there are errors, 2 for a usage error.",
        "medft check-data data_manifests/hippocampus_sample.csv",
    )
    check.add_argument("manifest", type=Path, help="CSV manifest, MSD dataset.json or nnU-Net raw folder")
    check.add_argument("--workers", type=int, default=None, help="volumes read in parallel (default: CPU count, at most 8)")
    check.set_defaults(run=_check_data)

    demo = _command(
        commands,
        "demo",
        "run the whole loop on the embedded sample data",
        "Runs medft on the sample data shipped in the repository. Today this checks the sample\n"
        "manifests; fine-tuning, evaluation and export join it as they are built.",
        "medft demo --out runs/demo",
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    demo.set_defaults(run=_demo)
    return parser


def _command(commands, name: str, summary: str, description: str, example: str) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _check_data(args: argparse.Namespace) -> int:
    from medft.data.checks import check_manifest

    problems = check_manifest(args.manifest, workers=args.workers)
    for problem in problems:
        print(problem)
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    print(f"{args.manifest}: {errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0


def _demo(args: argparse.Namespace) -> int:
    manifests = [REPO_ROOT / "data_manifests" / name for name in SAMPLE_MANIFESTS]
    missing = [m for m in manifests if not m.exists()]
    if missing:
        raise MedftError(
            f"the sample manifests are not here ({missing[0]}): the demo runs from a clone of the medft repository"
        )
    status = 0
    for manifest in manifests:
        print(f"== medft check-data {manifest.relative_to(REPO_ROOT)}")
        status |= _check_data(argparse.Namespace(manifest=manifest, workers=None))
    print(
        "\nThe demo today runs the pre-flight data checks only: fine-tuning, evaluation and export of\n"
        f"the sample are not built yet, so nothing was written to {args.out}."
    )
    return status
