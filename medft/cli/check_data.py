"""check a manifest and its files before training

Reads every case of a manifest (CSV, MSD dataset.json or nnU-Net raw folder) and prints one line
per problem: the case, the file, what is wrong and how to fix it. Exit 0 when clean (warnings
allowed), 1 when there are errors, 2 for a usage error.

example:
  medft check-data data_manifests/hippocampus_sample.csv
"""
from __future__ import annotations

from pathlib import Path

from medft.cli.common import add_command, count


def add_to(commands) -> None:
    command = add_command(commands, "check-data", __doc__, run)
    command.add_argument("manifest", type=Path, help="CSV manifest, MSD dataset.json or nnU-Net raw folder")
    command.add_argument("--workers", type=count, default=None, help="volumes read in parallel (default: CPU count, at most 8)")


def run(manifest: Path, workers: int | None = None) -> int:
    """Print each problem and the count; 1 when there is an error."""
    from medft.data.checks import check_manifest

    problems = check_manifest(manifest, workers=workers)
    for problem in problems:
        print(problem)
    errors = sum(p.severity == "error" for p in problems)
    print(f"{manifest}: {errors} error(s), {len(problems) - errors} warning(s)")
    return 1 if errors else 0
