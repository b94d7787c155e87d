"""Time to quality: how long fine-tuning and training from scratch take to reach 95% of the
from-scratch final Dice.

Both train on the 50-case set (``data_manifests/bench_train50.csv``) for the same number of
epochs, validating on the fixed 30-case validation set after every epoch (medft's
sliding-window validation Dice, mean over anterior and posterior, from each run's
``metrics.jsonl``). Target: 95% of the scratch run's validation Dice after its last epoch. For
each run: the first epoch whose validation Dice reaches the target, the seconds of training
steps until then (validation excluded), and the wall time from the start of training to the end
of that epoch (steps, per-epoch validation and checkpoints included; setup listed apart). The
ratio fine-tuned / scratch is the headline figure. It depends on the epoch budget: a longer
scratch run sets a higher target.

Recipes as in data_efficiency.py: fine-tuning with configs/demo.yaml's (gradual unfreezing, lr
1e-3, head 1e-2), scratch with configs/pretrain_hippocampus_demo.yaml's (lr 3e-3); batch 2,
standard augmentation, no early stopping.

Run: ``.venv/bin/python benchmarks/time_to_quality.py [--quick] [--epochs 50] [--train-cases 50] [--out DIR] [--device auto]``
"""
from __future__ import annotations

import sys

from common import (
    MANIFESTS,
    TRAIN_SIZES,
    WORKER_TASKS,
    Benchmark,
    check_manifests,
    fmt,
    gradual_freeze,
    is_worker,
    markdown_table,
    parser,
    run_config,
    subset_manifest,
    worker_main,
)

FULL_EPOCHS = 50
TARGET_SHARE = 0.95


def main() -> int:
    p = parser("time_to_quality", __doc__)
    p.add_argument("--epochs", type=int, default=None, help=f"epochs of both runs (default {FULL_EPOCHS}; quick: 3)")
    p.add_argument("--train-cases", type=int, choices=TRAIN_SIZES, default=50, help="training set (default 50)")
    args = p.parse_args()
    bench = Benchmark("time_to_quality", args)
    check_manifests()
    epochs = args.epochs or (3 if args.quick else FULL_EPOCHS)
    manifest = MANIFESTS / f"bench_train{args.train_cases}.csv"
    if args.quick:
        manifest = subset_manifest(manifest, bench.out / "manifests" / "train.csv", n_train=4, n_val=3)

    runs = {}
    for init in ("scratch", "finetune"):
        config = run_config(manifest, init, epochs, bench.device, val_every=1, max_steps=2 if args.quick else None,
                            freeze=gradual_freeze(epochs) if init == "finetune" else None)
        result = bench.isolated(__file__, {"task": "train_and_evaluate", "name": init, "config": config,
                                           "run_dir": str(bench.out / "runs" / init)}, init, timing=True)
        runs[init] = result

    results = analyse(runs)
    results.update(epochs=epochs, train_cases=args.train_cases if not args.quick else 4)
    bench.finish(results, _markdown(results))
    return 0


def analyse(runs: dict) -> dict:
    scratch_final = runs["scratch"]["metrics"][-1]["val_dice"]
    target = TARGET_SHARE * scratch_final
    out = {"scratch_final_val_dice": scratch_final, "target_val_dice": target, "runs": {}}
    for init, result in runs.items():
        curve = [m["val_dice"] for m in result["metrics"]]
        train_s = result["timing"]["train_seconds"]
        wall = result["timing"]["epoch_end_wall"]
        reached = next((e for e, value in enumerate(curve) if value is not None and value >= target), None)
        out["runs"][init] = {
            "val_dice_curve": curve,
            "final_val_dice": curve[-1],
            "best_val_dice": max(v for v in curve if v is not None),
            "epochs_to_target": None if reached is None else reached + 1,
            "train_seconds_to_target": None if reached is None else sum(train_s[:reached + 1]),
            "wall_seconds_to_target": None if reached is None else wall[reached],
            "setup_seconds": result["setup_seconds"],
            "train_seconds_total": sum(train_s),
            "val_seconds_total": sum(result["timing"]["val_seconds"]),
            "wall_seconds_total": wall[-1],
            "steps_per_epoch": result["steps_per_epoch"],
        }
    ft, sc = out["runs"]["finetune"], out["runs"]["scratch"]
    out["ratio_finetune_over_scratch"] = {
        key: (ft[key] / sc[key] if ft[key] is not None and sc[key] else None)
        for key in ("epochs_to_target", "train_seconds_to_target", "wall_seconds_to_target")
    }
    saved = out["ratio_finetune_over_scratch"]["wall_seconds_to_target"]
    out["time_saved_share"] = None if saved is None else 1 - saved
    return out


def _markdown(results: dict) -> str:
    rows = []
    for init in ("scratch", "finetune"):
        r = results["runs"][init]
        rows.append([init, fmt(r["final_val_dice"], 3), fmt(r["best_val_dice"], 3),
                     r["epochs_to_target"] if r["epochs_to_target"] is not None else "not reached",
                     fmt(r["train_seconds_to_target"], 1), fmt(r["wall_seconds_to_target"], 1),
                     fmt(r["setup_seconds"], 1), fmt(r["wall_seconds_total"], 1)])
    ratio = results["ratio_finetune_over_scratch"]
    rows.append(["**fine-tuned / scratch**", "", "", fmt(ratio["epochs_to_target"], 2),
                 fmt(ratio["train_seconds_to_target"], 2), fmt(ratio["wall_seconds_to_target"], 2), "", ""])
    table = markdown_table(["init", "final val Dice", "best val Dice", "epochs to target", "train s to target",
                            "wall s to target", "setup s", "wall s, all epochs"], rows)
    saved = results["time_saved_share"]
    headline = ("fine-tuning never reached the target" if saved is None
                else f"fine-tuning reaches the target in {ratio['wall_seconds_to_target']:.2f} x the wall time of "
                     f"training from scratch ({saved:.0%} less)")
    return (f"Time to quality: {results['epochs']} epochs each on {results['train_cases']} training cases; target "
            f"= {TARGET_SHARE:.0%} of the scratch final validation Dice {results['scratch_final_val_dice']:.3f} "
            f"= {results['target_val_dice']:.3f}\n\n{table}\n\nHeadline: {headline}.")


if __name__ == "__main__":
    if is_worker():
        worker_main(WORKER_TASKS)
        sys.exit(0)
    sys.exit(main())
