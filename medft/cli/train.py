"""fine-tune a pretrained bundle network from a YAML config

Loads the bundle, adapts its head to the config's classes, checks the data and a dummy batch,
then trains with the config's freezing schedule and early stopping. The run folder gets
config.yaml, metrics.jsonl, checkpoints/last.pt and best.pt, train.log and TensorBoard logs.
Ctrl-C saves the state; --resume continues a stopped or killed run exactly. Launched by
torchrun (torchrun --nproc_per_node N -m medft train ...) it trains data-parallel on N
processes (GPUs), train.batch_size volumes each; rank 0 writes the run folder.

example:
  medft train configs/demo.yaml --set train.epochs=5 --out runs/demo5
"""
from __future__ import annotations

import sys
from pathlib import Path

from medft.cli.common import add_command, add_overrides, console_logging
from medft.errors import MedftError


def add_to(commands) -> None:
    command = add_command(commands, "train", __doc__, run, distributed=True)
    command.add_argument("config", type=Path, help="YAML run config (see configs/)")
    add_overrides(command, "optim.lr=3e-4", "; a relative data.manifest or model.bundle starts at the working directory")
    command.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<config name>)")
    command.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt")


def run(config: Path, overrides: list[str] = (), out: Path | None = None, resume: bool = False) -> int:
    """Train and print the outcome (rank 0 speaks for all processes); 130 when Ctrl-C stopped it."""
    from medft.config import load_config
    from medft.formats import run as run_folder

    run_config = load_config(config, overrides)
    console_logging()
    from medft.train.distributed import is_main
    from medft.train.recipe import TrainingInterrupted, run_training

    run_dir = out or Path("runs") / config.stem
    saved = run_dir / run_folder.CONFIG
    if not resume and saved.is_file() and saved.samefile(config):
        raise MedftError(f"{config}: --out {run_dir} is the config's own folder, and the run would replace this "
                         f"file with its resolved {run_folder.CONFIG}. Fix: give --out another folder, such as runs/NAME")
    try:
        summary = run_training(run_config, run_dir, resume=resume)
    except TrainingInterrupted as stop:
        if is_main():
            print(f"medft: {stop}", file=sys.stderr)
        return 130
    if is_main():
        best = (f"best validation Dice {summary.best_val_dice:.4f} at epoch {summary.best_epoch}"
                if summary.best_epoch is not None else "no validation gave a Dice, so there is no best.pt (evaluation takes last.pt)")
        print(f"{best}; run folder: {run_dir}")
    return 0
