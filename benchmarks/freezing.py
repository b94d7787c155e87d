"""Freezing strategies when fine-tuning the demo bundle: Dice, time per epoch, peak memory.

Strategies (medft's ``freeze`` schedule):

- ``none``: every layer trains from the first epoch;
- ``encoder``: the encoder (contracting path and bottleneck) stays frozen, decoder and head train;
- ``gradual``: configs/demo.yaml's schedule scaled to the epochs: head only, then encoder frozen,
  then everything (at 40 epochs: from epochs 0, 2 and 4);
- ``head_only``: ``all_but_head``, only the new 3-class output layer trains.

Each trains on 5 and on 20 cases (``data_manifests/bench_train{n}.csv``) for the same epochs with
configs/demo.yaml's optimiser (lr 1e-3, head 1e-2, batch 2, standard augmentation, no early
stopping, validation after the last epoch only), in its own process, and is evaluated by
``medft.evaluate.run.evaluate`` on the fixed 30-case validation set. Time per epoch: the
seconds of the training steps of an epoch (validation and checkpoints excluded), mean over the
epochs after the first. Peak memory: on CPU the process's resident-set high-water mark while
training (reset after setup, so caching the data and building the network are not counted;
the process peak is listed too); on CUDA ``torch.cuda.max_memory_allocated`` while training.

Run: ``.venv/bin/python benchmarks/freezing.py [--quick] [--epochs 40] [--sizes 5 20] [--out DIR] [--device auto]``
"""
from __future__ import annotations

import statistics
import sys

from common import (
    MANIFESTS,
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
FULL_SIZES = (5, 20)


def strategies(epochs: int) -> dict[str, list[dict]]:
    return {
        "none": [],
        "encoder": [{"epoch": 0, "preset": "encoder"}],
        "gradual": gradual_freeze(epochs),
        "head_only": [{"epoch": 0, "preset": "all_but_head"}],
    }


def main() -> int:
    p = parser("freezing", __doc__)
    p.add_argument("--epochs", type=int, default=None, help=f"epochs of every run (default {FULL_EPOCHS}; quick: 3)")
    p.add_argument("--sizes", type=int, nargs="+", choices=(5, 10, 20, 50), default=None,
                   help=f"training set sizes (default {' '.join(map(str, FULL_SIZES))}; quick: 5)")
    args = p.parse_args()
    bench = Benchmark("freezing", args)
    check_manifests()
    epochs = args.epochs or (3 if args.quick else FULL_EPOCHS)
    sizes = args.sizes or ((5,) if args.quick else FULL_SIZES)
    val_manifest = MANIFESTS / "bench_val.csv"
    if args.quick:
        val_manifest = subset_manifest(val_manifest, bench.out / "manifests" / "val.csv", n_val=3)

    runs = []
    for n in sizes:
        manifest = MANIFESTS / f"bench_train{n}.csv"
        if args.quick:
            manifest = subset_manifest(manifest, bench.out / "manifests" / f"train{n}.csv", n_val=3)
        for strategy, freeze in strategies(epochs).items():
            name = f"{strategy}_n{n}"
            config = run_config(manifest, "finetune", epochs, bench.device, freeze=freeze,
                                max_steps=2 if args.quick else None)
            result = bench.isolated(__file__, {
                "task": "train_and_evaluate", "name": name, "config": config, "run_dir": str(bench.out / "runs" / name),
                "eval_manifest": str(val_manifest), "eval_dir": str(bench.out / "eval" / name), "eval_split": "val",
            }, name, timing=True)
            runs.append({"n_train": n, "strategy": strategy, "freeze": freeze, **_digest(result)})

    bench.finish({"epochs": epochs, "sizes": list(sizes), "runs": runs}, _markdown(runs, epochs))
    return 0


def _digest(result: dict) -> dict:
    train_s = result["timing"]["train_seconds"]
    steady = train_s[1:] or train_s
    frozen = [m["frozen_tensors"] for m in result["metrics"]]
    return {
        "dice": {cls: dice_of(result["eval"], cls) for cls in ("anterior", "posterior", "mean_foreground")},
        "n_val_cases": result["eval"]["n_cases"],
        "seconds_per_epoch": statistics.mean(steady),
        "seconds_per_step": statistics.mean(steady) / result["steps_per_epoch"],
        "seconds_per_epoch_each": train_s,
        "frozen_tensors_each_epoch": frozen,
        "steps_per_epoch": result["steps_per_epoch"],
        "memory": result["memory"],
        "device": result["device"],
        "run_dir": result["run_dir"],
    }


def _markdown(runs: list[dict], epochs: int) -> str:
    cuda = any(r["memory"]["cuda_peak_mb"] is not None for r in runs)
    rows = []
    for r in runs:
        d, m = r["dice"], r["memory"]
        memory = [fmt(m["cuda_peak_mb"], 0)] if cuda else [fmt(m["train_peak_rss_mb"], 0), fmt(m["process_peak_rss_mb"], 0)]
        rows.append([r["n_train"], r["strategy"], fmt_dice(d["anterior"]), fmt_dice(d["posterior"]),
                     fmt_dice(d["mean_foreground"]), fmt(r["seconds_per_epoch"], 2), fmt(r["seconds_per_step"] * 1000, 0)]
                    + memory)
    memory_headers = ["CUDA peak MiB"] if cuda else ["peak RSS training MiB", "peak RSS process MiB"]
    table = markdown_table(["train cases", "freezing", "anterior Dice [95% CI]", "posterior Dice [95% CI]",
                            "mean Dice [95% CI]", "s / epoch", "ms / step"] + memory_headers, rows)
    n_val = runs[0]["n_val_cases"] if runs else 0
    return (f"Freezing strategies: fine-tuning the demo bundle for {epochs} epochs; Dice on {n_val} validation "
            f"cases (95% bootstrap interval); s / epoch: training steps only, mean over epochs after the first\n\n{table}")


if __name__ == "__main__":
    if is_worker():
        worker_main(WORKER_TASKS)
        sys.exit(0)
    sys.exit(main())
