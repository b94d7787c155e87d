"""What real pretraining by others brings: brainchop's MeshNet against the same network from random weights.

``../shared/bundles/meshnet_brainchop_18cls`` (MIT) was trained by others on whole-brain T1 scans to
parcellate 17 FreeSurfer regions; medft fine-tunes it to the anterior/posterior hippocampus on the
nested training sets of 5, 10 and 20 cases (``data_manifests/bench_train{n}.csv``), on the inputs it
was trained on (its own preprocessing, replayed: RAS, 1 mm, intensities min-max scaled to 0..1). The
baseline is the same bundle with its weights replaced by a random initialisation (seed 0): the same
network, preprocessing, data and loop, only the weights differ. Recipes as in data_efficiency.py:
the pretrained network with configs/demo.yaml's (the new head alone first, then everything: MeshNet has no
encoder to unfreeze apart; lr 1e-3, new head 1e-2), the random one with configs/pretrain_hippocampus_demo.yaml's
(lr 3e-3); standard augmentation, no early stopping. MeshNet's nine dilated convolutions at full resolution
take about 14 s per step of two whole 48 x 64 x 48 volumes on 2 CPU cores, so every run trains on patches of
``PATCH`` (batch 2, 4 per volume, foreground oversampled) for the same number of steps, ``--epochs`` x
``--steps`` whatever the number of training cases (5 cases give 10 steps of fresh patches an epoch).

Reported: Dice per class on the fixed 30 validation cases (``bench_val.csv``) from ``medft evaluate``
of each run's final checkpoint, with 95% bootstrap intervals, the paired difference pretrained minus
random; and, from the validation after every ``--val-every`` epochs, the training steps (and seconds) the
pretrained run needed to reach the random run's final validation Dice. Steps do not depend on what else
the machine runs; seconds do (``interference`` in results.json).

Run: ``.venv/bin/python benchmarks/meshnet_transfer.py [--quick] [--epochs 8] [--steps 10] [--sizes 5 10 20] [--out DIR] [--device auto]``
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from common import (
    MANIFESTS, REPO, WORKER_TASKS, Benchmark, check_manifests, dice_of, fmt, fmt_dice, is_worker,
    markdown_table, parser, run_config, subset_manifest, worker_main,
)

MESHNET = (REPO / ".." / "shared" / "bundles" / "meshnet_brainchop_18cls").resolve()
FULL_EPOCHS = 8
STEPS = 10  # per epoch: 5 cases x 4 patches / batch 2
PATCH = [32, 32, 32]
SIZES = (5, 10, 20)
INITS = ("pretrained", "random")


def random_copy(out: Path) -> Path:
    """The MeshNet bundle with its weights replaced by the network's own random initialisation (seed 0)."""
    import torch

    from medft.bundle.reader import load_bundle

    target = out / "meshnet_random_weights"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(MESHNET, target, ignore=shutil.ignore_patterns("__pycache__"))
    torch.manual_seed(0)
    torch.save(load_bundle(target).build_network().state_dict(), target / "models" / "model.pt")
    return target


def head_first(epochs: int) -> list[dict]:
    """configs/demo.yaml's gradual unfreezing without its encoder stage (MeshNet is one stack of dilated
    convolutions, no encoder): the new head alone for the first tenth of the epochs, then everything."""
    return [{"epoch": 0, "preset": "all_but_head"}, {"epoch": max(1, round(epochs * 0.1)), "preset": "none"}]


def main() -> int:
    p = parser("meshnet_transfer", __doc__)
    p.add_argument("--epochs", type=int, default=None, help=f"epochs of every run (default {FULL_EPOCHS}; quick: 2)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help=f"training set sizes (default {' '.join(map(str, SIZES))})")
    p.add_argument("--steps", type=int, default=None, help=f"steps per epoch (default {STEPS}; quick: 2)")
    p.add_argument("--val-every", type=int, default=None, help="validate every this many epochs (default 2; quick: 1)")
    args = p.parse_args()
    if not MESHNET.is_dir():
        raise SystemExit(f"{MESHNET}: not here (the benchmarks need ../shared beside the repository)")
    bench = Benchmark("meshnet_transfer", args)
    check_manifests()
    epochs = args.epochs or (2 if args.quick else FULL_EPOCHS)
    val_every = args.val_every or (1 if args.quick else 2)
    steps = args.steps or (2 if args.quick else STEPS)
    sizes = args.sizes or ((5,) if args.quick else SIZES)
    bundles = {"pretrained": MESHNET, "random": random_copy(bench.out)}

    runs = []
    for n in sizes:
        manifest = MANIFESTS / f"bench_train{n}.csv"
        if args.quick:
            manifest = subset_manifest(manifest, bench.out / "manifests" / f"train{n}.csv", n_val=3)
        for init in INITS:
            name = f"{init}_n{n}"
            config = run_config(manifest, "finetune" if init == "pretrained" else "scratch", epochs, bench.device,
                                val_every=val_every, max_steps=steps, freeze=head_first(epochs) if init == "pretrained" else None,
                                data={"sampling": "patch", "spatial_size": PATCH, "samples_per_volume": 4})
            config["model"] = {"bundle": str(bundles[init])}
            result = bench.isolated(__file__, {
                "task": "train_and_evaluate", "name": name, "config": config, "run_dir": str(bench.out / "runs" / name),
                "eval_manifest": str(manifest), "eval_dir": str(bench.out / "eval" / name), "eval_split": "val",
                "eval_checkpoint": "last",
            }, name, timing=True)
            runs.append({"n_train": n, "init": init, **_digest(result)})

    differences = _differences(bench.out, sizes)
    catch_up = {n: _catch_up(runs, n) for n in sizes}
    bench.finish({"epochs": epochs, "val_every": val_every, "sizes": list(sizes), "runs": runs,
                  "differences": differences, "catch_up": catch_up}, _markdown(runs, differences, catch_up, epochs))
    return 0


def _digest(result: dict) -> dict:
    evaluation = result["eval"]
    timing = result["timing"]
    curve, seconds = [], 0.0
    for record, train_s in zip(result["metrics"], timing["train_seconds"]):
        seconds += train_s
        if "val_dice" in record:
            curve.append({"epoch": record["epoch"], "val_dice": record["val_dice"], "train_seconds": round(seconds, 1),
                          "steps": (record["epoch"] + 1) * result["steps_per_epoch"]})
    return {
        "dice": {cls: dice_of(evaluation, cls) for cls in ("anterior", "posterior", "mean_foreground")},
        "n_val_cases": evaluation["n_cases"], "curve": curve,
        "steps": result["steps_per_epoch"] * len(timing["train_seconds"]),
        "train_seconds": sum(timing["train_seconds"]), "memory": result["memory"], "run_dir": result["run_dir"],
    }


def _differences(out: Path, sizes) -> dict:
    from medft.evaluate.summary import paired_difference, read_per_case

    return {str(n): paired_difference(read_per_case(out / "eval" / f"random_n{n}" / "per_case.csv"),
                                      read_per_case(out / "eval" / f"pretrained_n{n}" / "per_case.csv"),
                                      ["background", "anterior", "posterior"])["differences"] for n in sizes}


def _catch_up(runs: list[dict], n: int) -> dict:
    """The random run's final validation Dice, and the training seconds the pretrained run took to reach it."""
    by_init = {run["init"]: run for run in runs if run["n_train"] == n}
    target = by_init["random"]["curve"][-1]["val_dice"]
    reached = next((point for point in by_init["pretrained"]["curve"] if point["val_dice"] >= target), None)
    return {"target": target, "random_seconds": by_init["random"]["train_seconds"],
            "random_steps": by_init["random"]["steps"], "pretrained_epoch": reached["epoch"] if reached else None,
            "pretrained_steps": reached["steps"] if reached else None,
            "pretrained_seconds": reached["train_seconds"] if reached else None}


def _markdown(runs: list[dict], differences: dict, catch_up: dict, epochs: int) -> str:
    rows = [[run["n_train"], run["init"], fmt_dice(run["dice"]["anterior"]), fmt_dice(run["dice"]["posterior"]),
             fmt_dice(run["dice"]["mean_foreground"]), run["steps"], fmt(run["train_seconds"], 0)] for run in runs]
    table = markdown_table(["train cases", "weights", "anterior Dice [95% CI]", "posterior Dice [95% CI]",
                            "mean Dice [95% CI]", "steps", "train s"], rows)
    diff_rows = [[n] + [f"{d[c]['mean_diff']:+.3f} [{d[c]['ci95'][0]:+.3f}, {d[c]['ci95'][1]:+.3f}]"
                        if d[c]["mean_diff"] is not None and d[c]["ci95"][0] is not None else "n/a"
                        for c in ("anterior", "posterior", "mean_foreground")] for n, d in differences.items()]
    diff_table = markdown_table(["train cases", "anterior: pretrained - random", "posterior", "mean"], diff_rows)
    catch_rows = [[n, fmt(c["target"], 3), f"{c['random_steps']} ({c['random_seconds']:.0f} s)",
                   "not reached" if c["pretrained_steps"] is None
                   else f"{c['pretrained_steps']} ({c['pretrained_seconds']:.0f} s, epoch {c['pretrained_epoch']})"]
                  for n, c in catch_up.items()]
    catch_table = markdown_table(["train cases", "random: final val Dice", "random: steps (train s)",
                                  "pretrained: steps (train s) to reach it"], catch_rows)
    n_val = runs[0]["n_val_cases"] if runs else 0
    return (f"MeshNet, pretrained by others vs random weights: {epochs} epochs each, Dice of the final checkpoint on "
            f"{n_val} validation cases (mean over cases, 95% bootstrap interval)\n\n{table}\n\nPaired difference, "
            f"pretrained minus random (same cases, 95% paired bootstrap interval)\n\n{diff_table}\n\nTime to the random "
            f"run's final validation Dice (training steps only, validation excluded)\n\n{catch_table}")


if __name__ == "__main__":
    if is_worker():
        worker_main(WORKER_TASKS)
        sys.exit(0)
    sys.exit(main())
