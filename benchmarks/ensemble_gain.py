"""What an ensemble adds: trained runs of one fold, alone and with their probabilities averaged.

Each ``--members`` template names one trained run folder per fold, ``{fold}`` standing for the
fold number (e.g. ``runs/bench/hippo_e36_f134/runs/recipe_fold{fold}``). On the validation
cases of ``data_manifests/hippocampus_fold{fold}.csv`` every member predicts from its last
checkpoint with left-right test-time flipping, as ``medft evaluate --checkpoint last --tta``
does; the ensemble's label map is the argmax of the members' mean class probabilities. Printed:
each member's and the ensemble's mean Dice per class, and the ensemble minus the first member,
the best member and the ``--reference`` run (a model outside the ensemble, e.g. one training of
the same total time), per case paired, with a paired bootstrap 95% interval
(``medft.evaluate.summary.paired_difference``). An ensemble of k members costs k trainings.

Run::

    .venv/bin/python benchmarks/ensemble_gain.py --folds 1 3
        --members runs/bench/hippo_e36_f134/runs/recipe_fold{fold} runs/bench/hippo_lr4/runs/lr_4e-3_fold{fold}
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import MANIFESTS, N_FOLDS, fmt_difference, markdown_table
from tqdm.auto import tqdm

from medft.data.manifest import load_manifest
from medft.errors import MedftError
from medft.evaluate.inference import load_model, predict
from medft.evaluate.summary import MEAN_FOREGROUND, paired_difference, summarize
from medft.metrics import confusion_counts, dice

ENSEMBLE = "ensemble"
REFERENCE = "reference"


def case_rows(case_id: str, class_names: list[str], probs: torch.Tensor, target: torch.Tensor) -> list[dict]:
    """per_case.csv-like rows (Dice only) of one case's argmax label map."""
    scores = dice(confusion_counts(probs.argmax(0)[None], target[None], len(class_names)))[0]
    return [{"case_id": case_id, "class_index": c, "class_name": name, "dice": float(scores[c])}
            for c, name in enumerate(class_names)]


def member_label(template: str) -> str:
    """``runs/bench/hippo_lr4/runs/lr_4e-3_fold{fold}`` -> ``lr_4e-3``."""
    return Path(template).name.replace("_fold{fold}", "").replace("{fold}", "") or template


def fold_rows(fold: int, members: list[str], labels: list[str], reference: str | None = None
              ) -> tuple[dict[str, list[dict]], list[str]]:
    """Rows per member (by label), for the ensemble and for the reference run, on the fold's validation cases."""
    models = [load_model(template.format(fold=fold), device=torch.device("cpu"), checkpoint="last")
              for template in members]
    names = models[0].class_names
    if any(m.class_names != names for m in models):
        raise SystemExit(f"fold {fold}: the members predict different classes. Fix: ensemble runs of one task")
    rows: dict[str, list[dict]] = {label: [] for label in [*labels, ENSEMBLE]}
    outside = None
    if reference:
        outside = load_model(reference.format(fold=fold), device=torch.device("cpu"), checkpoint="last")
        rows[REFERENCE] = []
    prep = models[0].preprocess()
    cases = load_manifest(MANIFESTS / f"hippocampus_fold{fold}.csv").split("val")
    for case in tqdm(cases, desc=f"fold {fold}", unit="case", disable=None):
        data = prep(case.record())
        target = data["label"][0].long()
        probs = [model.preprocessing.to_input_grid(predict(model, data["image"], tta=True), data["image"]).as_tensor()
                 for model in models]
        for label, p in zip(labels, probs, strict=True):
            rows[label] += case_rows(case.case_id, names, p, target)
        rows[ENSEMBLE] += case_rows(case.case_id, names, torch.stack(probs).mean(0), target)
        if outside is not None:
            reference_probs = outside.preprocessing.to_input_grid(predict(outside, data["image"], tta=True), data["image"])
            rows[REFERENCE] += case_rows(case.case_id, names, reference_probs.as_tensor(), target)
    return rows, names


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", nargs="+", required=True, metavar="RUN_TEMPLATE",
                   help="run folders, {fold} standing for the fold number; the first is the reference")
    p.add_argument("--reference", metavar="RUN_TEMPLATE",
                   help="a run outside the ensemble to compare it with, {fold} as in --members")
    p.add_argument("--folds", type=int, nargs="+", choices=range(N_FOLDS), default=[1, 3])
    p.add_argument("--json", type=Path, help="also write the per-case rows and differences here")
    args = p.parse_args()
    if len(args.members) < 2:
        p.error("an ensemble needs at least two --members")
    if any("{fold}" not in m for m in [*args.members, args.reference or "{fold}"]):
        p.error("every --members template needs {fold}, e.g. runs/x/runs/recipe_fold{fold}")
    labels = [member_label(m) for m in args.members]
    if len(set(labels)) < len(labels):
        labels = list(args.members)
    merged: dict[str, list[dict]] = {label: [] for label in [*labels, ENSEMBLE, *([REFERENCE] if args.reference else [])]}
    for fold in args.folds:
        try:
            rows, names = fold_rows(fold, args.members, labels, args.reference)
        except MedftError as exc:
            raise SystemExit(f"fold {fold}: {exc}") from None
        for label in merged:
            merged[label] += rows[label]
    means = {label: summarize(rows, names, metrics=["dice"])["overall"] for label, rows in merged.items()}
    print(markdown_table(["model", "cases", *[f"{n} Dice" for n in names[1:]], "mean Dice"],
                         [[label, len(rows) // len(names),
                           *[f"{means[label][n]['dice']['mean']:.4f}" for n in [*names[1:], MEAN_FOREGROUND]]]
                          for label, rows in merged.items()]))
    members = [label for label in merged if label not in (ENSEMBLE, REFERENCE)]
    best = max(members, key=lambda label: means[label][MEAN_FOREGROUND]["dice"]["mean"])
    table, differences = [], {}
    for reference in dict.fromkeys([members[0], best, *([REFERENCE] if args.reference else [])]):
        diff = paired_difference(merged[reference], merged[ENSEMBLE], names)
        differences[reference] = diff
        table.append([f"{ENSEMBLE} - {reference}", diff["n_common_cases"],
                      *[fmt_difference(diff["differences"][n]) for n in [*names[1:], MEAN_FOREGROUND]]])
    print()
    print(markdown_table(["difference", "cases", *[f"{n} Dice" for n in names[1:]], "mean Dice"], table))
    if args.json:
        args.json.write_text(json.dumps({"members": args.members, "reference": args.reference, "folds": args.folds, "rows": merged,
                                         "differences": differences}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
