"""``medft train``: fine-tune a pretrained bundle network from a YAML config (also under torchrun)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medft.cli.common import add_command, add_overrides, console_logging
from medft.errors import MedftError


def add_to(commands) -> None:
    command = add_command(
        commands,
        "train",
        "fine-tune a pretrained bundle network from a YAML config",
        "Loads the bundle, adapts its head to the config's classes, checks the data and a dummy batch,\n"
        "then trains with the config's freezing schedule and early stopping. The run folder gets\n"
        "config.yaml, metrics.jsonl, checkpoints/last.pt and best.pt, train.log and TensorBoard logs.\n"
        "Ctrl-C saves the state; --resume continues a stopped or killed run exactly. Launched by\n"
        "torchrun (torchrun --nproc_per_node N -m medft train ...) it trains data-parallel on N\n"
        "processes (GPUs), train.batch_size volumes each; rank 0 writes the run folder.",
        "medft train configs/demo.yaml --set train.epochs=5 --out runs/demo5",
    )
    command.add_argument("config", type=Path, help="YAML run config (see configs/)")
    add_overrides(command, "optim.lr=3e-4", "; a relative data.manifest or model.bundle starts at the working directory")
    command.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<config name>)")
    command.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt")
    command.set_defaults(run=run, distributed=True)


def run(args: argparse.Namespace) -> int:
    from medft.config import load_config
    from medft.formats import run as run_folder

    config = load_config(args.config, args.overrides)
    run_dir = args.out or Path("runs") / args.config.stem
    saved = run_dir / run_folder.CONFIG
    if not args.resume and saved.is_file() and saved.samefile(args.config):
        raise MedftError(f"{args.config}: --out {run_dir} is the config's own folder, and the run would replace this "
                         f"file with its resolved {run_folder.CONFIG}. Fix: give --out another folder, such as runs/NAME")
    return train_and_print(config, run_dir, resume=args.resume)


def train_and_print(config, run_dir: Path, resume: bool = False) -> int:
    """Train ``config`` (a RunConfig) into ``run_dir`` and print the outcome (rank 0); the exit status."""
    console_logging()
    from medft.train.distributed import is_main
    from medft.train.recipe import TrainingInterrupted, run_training

    try:
        summary = run_training(config, run_dir, resume=resume)
    except TrainingInterrupted as stop:
        if is_main():  # under torchrun, rank 0 speaks for all processes
            print(f"medft: {stop}", file=sys.stderr)
        return 130
    if is_main():
        best = (f"best validation Dice {summary.best_val_dice:.4f} at epoch {summary.best_epoch}"
                if summary.best_epoch is not None else "no validation gave a Dice, so there is no best.pt (evaluation takes last.pt)")
        print(f"{best}; run folder: {run_dir}")
    return 0
