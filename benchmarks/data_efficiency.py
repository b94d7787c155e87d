"""Data efficiency: fine-tuning the demo bundle against the same network from random weights.

On the anterior/posterior task, both are trained on the nested training sets of 5, 10, 20 and
50 cases (``data_manifests/bench_train{n}.csv``) for the same fixed budget of epochs, then
evaluated by ``medft.evaluate.run.evaluate`` on the one fixed validation set of 30 cases
(``data_manifests/bench_val.csv``, no case of it pretrained the bundle). Reported: mean Dice per
class and over both classes with medft's 95% bootstrap interval over cases, and the paired
difference (fine-tuned minus scratch, same cases) with its interval.

Each side is trained the way medft ships it: fine-tuning with configs/demo.yaml's recipe
(gradual unfreezing, lr 1e-3, new head 1e-2), from scratch with
configs/pretrain_hippocampus_demo.yaml's (no freezing, lr 3e-3). Both: batch 2, whole volumes
padded to 48 x 64 x 48, standard augmentation, no early stopping, validation only after the last
epoch (so the evaluated checkpoint is the final one, not one picked on the validation set).
A fixed budget of epochs means that 5 cases get a tenth of the optimiser steps of 50 cases.

Run: ``.venv/bin/python benchmarks/data_efficiency.py [--quick] [--epochs 40] [--out DIR] [--device auto]``
"""
from __future__ import annotations

import sys
from pathlib import Path

from common import (
    MANIFESTS,
    TRAIN_SIZES,
    WORKER_TASKS,
    Benchmark,
    check_manifests,
    dice_of,
    fmt,
    fmt_dice,
    gradual_freeze,
    is_worker,
    markdown_table,
    parser,
    run_config,
    subset_manifest,
    worker_main,
)

FULL_EPOCHS = 40
INITS = ("finetune", "scratch")


def main() -> int:
    p = parser("data_efficiency", __doc__)
    p.add_argument("--epochs", type=int, default=None, help=f"epochs of every run (default {FULL_EPOCHS}; quick: 2)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help=f"training set sizes (default {' '.join(map(str, TRAIN_SIZES))})")
    args = p.parse_args()
    bench = Benchmark("data_efficiency", args)
    check_manifests()
    epochs = args.epochs or (2 if args.quick else FULL_EPOCHS)
    sizes = args.sizes or ((5,) if args.quick else TRAIN_SIZES)
    max_steps = 2 if args.quick else None
    val_manifest = MANIFESTS / "bench_val.csv"
    if args.quick:
        val_manifest = subset_manifest(val_manifest, bench.out / "manifests" / "val.csv", n_val=4)

    runs = []
    for n in sizes:
        manifest = MANIFESTS / f"bench_train{n}.csv"
        if args.quick:
            manifest = subset_manifest(manifest, bench.out / "manifests" / f"train{n}.csv", n_val=4)
        for init in INITS:
            name = f"{init}_n{n}"
            config = run_config(manifest, init, epochs, bench.device, max_steps=max_steps,
                                freeze=gradual_freeze(epochs) if init == "finetune" else None)
            result = bench.isolated(__file__, {
                "task": "train_and_evaluate", "name": name, "config": config,
                "run_dir": str(bench.out / "runs" / name), "eval_manifest": str(val_manifest),
                "eval_dir": str(bench.out / "eval" / name), "eval_split": "val",
            }, name)
            runs.append({"n_train": n, "init": init, **_digest(result)})

    differences = _differences(bench.out, sizes)
    markdown = _markdown(runs, differences, epochs)
    bench.finish({"epochs": epochs, "sizes": list(sizes), "runs": runs, "differences": differences}, markdown)
    return 0


def _digest(result: dict) -> dict:
    evaluation = result["eval"]
    return {
        "dice": {cls: dice_of(evaluation, cls) for cls in ("anterior", "posterior", "mean_foreground")},
        "n_val_cases": evaluation["n_cases"],
        "steps": result["steps_per_epoch"] * len(result["timing"]["train_seconds"]),
        "train_seconds": sum(result["timing"]["train_seconds"]),
        "setup_seconds": result["setup_seconds"],
        "eval_seconds": result["eval_seconds"],
        "final_val_dice_in_training": result["metrics"][-1].get("val_dice"),
        "run_dir": result["run_dir"],
        "memory": result["memory"],
    }


def _differences(out: Path, sizes) -> dict:
    """Fine-tuned minus scratch, paired on the validation cases (medft's paired bootstrap)."""
    from medft.evaluate.summary import paired_difference, read_per_case

    differences = {}
    for n in sizes:
        scratch = read_per_case(out / "eval" / f"scratch_n{n}" / "per_case.csv")
        finetune = read_per_case(out / "eval" / f"finetune_n{n}" / "per_case.csv")
        diff = paired_difference(scratch, finetune, ["background", "anterior", "posterior"])
        differences[str(n)] = diff["differences"]
    return differences


def _markdown(runs: list[dict], differences: dict, epochs: int) -> str:
    rows = []
    for run in runs:
        d = run["dice"]
        rows.append([run["n_train"], run["init"], fmt_dice(d["anterior"]), fmt_dice(d["posterior"]),
                     fmt_dice(d["mean_foreground"]), run["steps"], fmt(run["train_seconds"], 0)])
    table = markdown_table(["train cases", "init", "anterior Dice [95% CI]", "posterior Dice [95% CI]",
                            "mean Dice [95% CI]", "steps", "train s"], rows)
    diff_rows = []
    for n, diff in differences.items():
        diff_rows.append([n] + [f"{diff[c]['mean_diff']:+.3f} [{diff[c]['ci95'][0]:+.3f}, {diff[c]['ci95'][1]:+.3f}]"
                                if diff[c]["mean_diff"] is not None and diff[c]["ci95"][0] is not None else "n/a"
                                for c in ("anterior", "posterior", "mean_foreground")])
    diff_table = markdown_table(["train cases", "anterior: fine-tuned - scratch", "posterior", "mean"], diff_rows)
    n_val = runs[0]["n_val_cases"] if runs else 0
    return (f"Data efficiency: {epochs} epochs each, Dice on {n_val} validation cases (mean over cases, "
            f"95% bootstrap interval)\n\n{table}\n\nPaired difference, fine-tuned minus scratch "
            f"(same validation cases, 95% paired bootstrap interval)\n\n{diff_table}")


if __name__ == "__main__":
    if is_worker():
        worker_main(WORKER_TASKS)
        sys.exit(0)
    sys.exit(main())
