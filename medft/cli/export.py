"""export a fine-tuned run as a MONAI bundle

Writes the run's best checkpoint as a Model Zoo bundle (metadata with the new labels and
validation metrics, inference config, weights) that plain MONAI loads.

example:
  medft export runs/demo/train --out runs/demo/bundle
"""
from __future__ import annotations

from pathlib import Path

from medft.cli.common import add_command


def add_to(commands) -> None:
    command = add_command(commands, "export", __doc__, run)
    command.add_argument("run_dir", type=Path, help="run folder written by medft train")
    command.add_argument("--out", type=Path, required=True, help="new bundle folder")


def run(run_dir: Path, out: Path) -> int:
    from medft.bundle.export import export_run

    print(f"exported {run_dir} as a MONAI bundle: {export_run(run_dir, out)}")
    return 0
