"""mix a fine-tuned run with its bundle's weights (WiSE-FT)

Writes OUT/alpha_A for each alpha, a run folder whose weights are (1 - alpha) x the bundle's +
alpha x the run's for each tensor the two share; a new head, which the bundle has no counterpart
for, keeps the run's. alpha 0 is the bundle's body under the run's head (the bundle itself when the
run kept its classes), alpha 1 the run. medft evaluate, predict and export take each folder as they
take a run. With --manifest, each alpha is evaluated on --split (val by default) into
OUT/alpha_A/eval_SPLIT, and a table of the Dice per class picks the alpha.

example:
  medft interpolate runs/demo-ft --alpha 0.25 0.5 0.75 1 --out runs/demo-wise --manifest data_manifests/hippocampus_sample.csv
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from medft.cli.common import add_command, console_logging
from medft.errors import MedftError


def add_to(commands) -> None:
    command = add_command(commands, "interpolate", __doc__, run)
    command.add_argument("run_dir", type=Path, help="run folder fine-tuned from a bundle (medft train)")
    command.add_argument("--alpha", type=_alpha, nargs="+", required=True, metavar="A",
                         help="the run's weights, from 0 (the bundle's body) to 1 (the run); one folder each")
    command.add_argument("--out", type=Path, required=True, help="new or empty folder for the alpha_A run folders")
    command.add_argument("--checkpoint", choices=("best", "last"), default="best",
                         help="the run's checkpoint to interpolate: best (default) or last")
    command.add_argument("--manifest", type=Path, default=None,
                         help="evaluate each alpha on this manifest's --split and print a table to choose alpha by")
    command.add_argument("--split", default="val", help="the split that --manifest evaluates (default: val)")


def run(run_dir: Path, alpha: list[float], out: Path, checkpoint: str = "best", manifest: Path | None = None,
        split: str = "val") -> int:
    console_logging()
    from medft.train.interpolate import interpolate_run

    if manifest is not None:
        _require_cases(manifest, split)  # before any folder is written
    result = interpolate_run(run_dir, alpha, out, checkpoint=checkpoint)
    kept = f": {', '.join(result.kept[:4])}{', ...' if len(result.kept) > 4 else ''}" if result.kept else ""
    print(f"{run_dir} ({result.parent_checkpoint.name}) with its bundle: {len(result.interpolated)} tensors interpolated, "
          f"{len(result.kept)} kept as the run's{kept}")
    for value, folder in result.folders.items():
        print(f"  alpha {value:g}: {folder}")
    if manifest is not None:
        _choose(result.folders, manifest, split)
    return 0


def _choose(folders: dict[float, Path], manifest: Path, split: str) -> None:
    """Evaluate each folder on ``split`` and print the mean Dice per class and alpha; the best mean marked."""
    from medft.evaluate.run import evaluate
    from medft.evaluate.summary import MEAN_FOREGROUND

    rows = {}
    for value, folder in folders.items():
        result = evaluate(folder, manifest, folder / f"eval_{split}", split=split)
        overall = result.summary["overall"]
        rows[value] = {name: overall[name]["dice"]["mean"] for name in [*result.summary["classes"], MEAN_FOREGROUND]
                       if name in overall}
    names = list(next(iter(rows.values())))
    best = max(rows, key=lambda a: _number(rows[a].get(MEAN_FOREGROUND)))
    where = next(iter(folders.values())).parent
    print(f"mean Dice on split {split} (evaluations in {where}/alpha_A/eval_{split}):")
    print("  " + f"{'alpha':>6} " + " ".join(f"{'mean' if n == MEAN_FOREGROUND else n:>12.12}" for n in names))
    for value, row in rows.items():
        cells = " ".join(f"{'n/a' if row[n] is None else format(row[n], '.3f'):>12}" for n in names)
        print(f"  {value:>6g} {cells}{'  <- best mean' if value == best else ''}")


def _require_cases(manifest: Path, split: str) -> None:
    from medft.data.manifest import load_manifest

    if not load_manifest(manifest).split(split):
        raise MedftError(f"{manifest}: no cases in split {split!r} to choose alpha on. Fix: give another --split, or a "
                         "manifest with such cases")


def _number(value: float | None) -> float:
    return -math.inf if value is None or math.isnan(value) else value


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"give the run's weight, a number from 0 to 1, not {text!r}")
    return value
