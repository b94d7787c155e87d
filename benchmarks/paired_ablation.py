"""What a lever adds: paired differences between two evaluations of the same cases.

Each ``--pair LABEL_A DIRS_A LABEL_B DIRS_B`` names two models by their ``medft evaluate``
folders (``per_case.csv``); DIRS is one folder or several separated by commas, pooled (the same
model recipe on folds 0 and 1: each case appears once). Printed: B - A per class and for the
per-case foreground mean, over the cases scored in both, with a paired bootstrap 95% interval
(``medft.evaluate.summary.paired_difference``, the computation behind ``medft evaluate --compare``).

Run::

    .venv/bin/python benchmarks/paired_ablation.py
        --pair "UNet" runs/a/eval_tta/f0,runs/a/eval_tta/f1 "DynUNet" runs/b/eval_tta/f0,runs/b/eval_tta/f1
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import fmt_difference, markdown_table

from medft.evaluate.folder import read_evaluation
from medft.evaluate.summary import MEAN_FOREGROUND, paired_difference


def pooled(dirs: str) -> tuple[list[dict], list[str]]:
    """The per-case rows of the comma-separated evaluation folders, and their class names."""
    rows, names = [], None
    for folder in dirs.split(","):
        evaluation = read_evaluation(Path(folder))
        these = evaluation.class_names
        if names is not None and these != names:
            raise SystemExit(f"{folder}: classes {these} differ from {names}. Fix: pool evaluations of one task")
        names = these
        rows += evaluation.rows
    return rows, names


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", nargs=4, action="append", required=True, metavar=("LABEL_A", "DIRS_A", "LABEL_B", "DIRS_B"))
    p.add_argument("--json", type=Path, help="also write the differences here")
    args = p.parse_args()
    table, results = [], []
    for label_a, dirs_a, label_b, dirs_b in args.pair:
        (rows_a, names), (rows_b, names_b) = pooled(dirs_a), pooled(dirs_b)
        if names != names_b:
            raise SystemExit(f"{label_a} and {label_b} have different classes ({names} / {names_b})")
        diff = paired_difference(rows_a, rows_b, names)
        results.append({"a": label_a, "b": label_b, "dirs_a": dirs_a, "dirs_b": dirs_b, **diff})
        cells = []
        for name in [*names[1:], MEAN_FOREGROUND]:
            d = diff["differences"][name]
            cells.append(fmt_difference(d))
        table.append([f"{label_b} - {label_a}", diff["n_common_cases"], *cells])
    print(markdown_table(["B - A", "cases", *[f"{n} Dice" for n in names[1:]], "mean Dice"], table))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
