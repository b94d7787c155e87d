"""search hyperparameters: many short training runs, the poor ones pruned

Tries the values of the config's search section (learning rates, freezing, augmentation...) in
Optuna trials: a TPE sampler picks them, a Hyperband or successive-halving pruner stops poor
trials from their validation Dice after each epoch. Each trial is a run folder OUT/trial_<n>.
The study lives in OUT/study.db (SQLite; several workers on one machine may share it) or in
--storage, any database URL (postgresql://user@host/db for workers on several machines).
Running the same command again resumes the study: only the missing trials run; Ctrl-C marks
the current trial failed and keeps the finished ones. A trial that fails (its config, the data,
out of memory) is recorded with its error and the next one runs; 3 failures in a row stop.
Writes OUT/best_config.yaml (ready for medft train), OUT/trials.csv and plots of the study.

example:
  medft tune configs/tune_demo.yaml --trials 12 --out runs/tune_demo
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from medft.cli.common import add_command, add_overrides, console_logging, count


def add_to(commands) -> None:
    command = add_command(commands, "tune", __doc__, run, distributed=True)  # it refuses torchrun itself, with its fix
    command.add_argument("config", type=Path, help="YAML run config with a search section (see configs/tune_demo.yaml)")
    command.add_argument("--trials", type=count, required=True, metavar="N",
                         help="finished (complete or pruned) trials the study should hold; those already there count")
    command.add_argument("--out", type=Path, default=None, help="folder for the trials and results (default: runs/<config name>)")
    command.add_argument("--storage", default=None, metavar="URL",
                         help="database URL of the study (default: sqlite:///OUT/study.db)")
    command.add_argument("--study", default=None, metavar="NAME",
                         help="study name (default: search.study_name, else the config file's name)")
    add_overrides(command, "train.epochs=10")


def run(config: Path, trials: int, out: Path | None = None, storage: str | None = None, study: str | None = None,
        overrides: list[str] = ()) -> int:
    console = console_logging()
    console.addFilter(lambda record: record.name == "medft.tune" or record.levelno >= logging.WARNING)  # runs log to their train.log
    import optuna

    from medft.tune.study import TuneInterrupted, tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # medft.tune logs each trial; Optuna's own lines repeat them
    try:
        result = tune(config, trials, out=out, storage=storage, study_name=study, overrides=overrides)
    except TuneInterrupted as stop:
        print(f"medft: {stop}", file=sys.stderr)
        return 130
    print(result.summary())
    return 0
