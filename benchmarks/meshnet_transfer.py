"""What real pretraining by others brings: brainchop's MeshNet against the same network from random weights.

``../shared/bundles/meshnet_brainchop_18cls`` (MIT) was trained by others on whole-brain T1 scans to
parcellate 17 FreeSurfer regions; medft fine-tunes it to the anterior/posterior hippocampus on the
inputs it was trained on (its own preprocessing, replayed: RAS, 1 mm, intensities min-max scaled to
0..1). The baseline is the same bundle with its weights replaced by a random initialisation (seed 0):
the same network, preprocessing, data and loop, only the weights differ. Both train on whole volumes
(padded to 48 x 64 x 48: MeshNet has no downsampling and a receptive field of 93 voxels, so patches
would show it mostly padding), channels-last (``train.channels_last``: MeshNet's dilated convolutions
take oneDNN's path on CPU, 1.6x faster), batch 2. The pretrained network trains the new head alone for
the first tenth of the run, then everything (lr 1e-3, new head 1e-2: configs/demo.yaml's rates; MeshNet
has no encoder to unfreeze apart); the random one trains everything at 3e-3
(configs/pretrain_hippocampus_demo.yaml's rate). Standard augmentation, no early stopping.

Two parts (``--parts``):

- ``sizes``: the nested training sets of 5, 10 and 20 cases (``data_manifests/bench_train{n}.csv``),
  every run ``--steps`` steps whatever the number of cases (a fixed 2 steps an epoch, so the cases take
  turns). Dice per class on the fixed 30 validation cases (``bench_val``) from ``medft evaluate`` of the
  final checkpoint, 95% bootstrap intervals, the paired difference pretrained minus random; and, from
  the validation (on the first 10 of those cases) every ``--val-every`` epochs, the training steps and
  seconds the pretrained run needed to reach the random run's final validation Dice.
- ``recipe``: accuracy within the 20-minute CPU budget: the 160 training cases of fold 0
  (``hippocampus_fold0.csv``), ``--recipe-steps`` steps (about 20 minutes on 2 cores), scored on the
  fold's 40 validation cases by ``medft evaluate --tta`` of the final checkpoint: the split and scoring
  of configs/hippocampus.yaml's figures in RESULTS.md item 6 (0.907 / 0.890, a UNet from scratch).

Steps do not depend on what else the machine runs; seconds do (``interference`` in results.json).

Run::

    .venv/bin/python benchmarks/meshnet_transfer.py [--quick] [--parts sizes recipe] [--steps 60] [--sizes 5 10 20]
        [--recipe-steps 240] [--out DIR] [--device auto]
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from common import (
    MANIFESTS,
    REPO,
    WORKER_TASKS,
    Benchmark,
    check_manifests,
    dice_of,
    fmt,
    fmt_dice,
    is_worker,
    markdown_table,
    parser,
    run_config,
    subset_manifest,
    worker_main,
)

MESHNET = (REPO / ".." / "shared" / "bundles" / "meshnet_brainchop_18cls").resolve()
STEPS = 60  # per run of the sizes part
STEPS_PER_EPOCH = 2
VAL_EVERY = 5  # epochs: a validation every 10 steps
CURVE_CASES = 10  # validation cases of the in-training curve
SIZES = (5, 10, 20)
RECIPE_STEPS = 240  # about 20 minutes on 2 cores at 5 s a step
RECIPE_STEPS_PER_EPOCH = 20
INITS = ("pretrained", "random")
LEARNED = 0.05  # a final validation Dice below this: the random run never segmented (it predicts background)


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


def meshnet_config(manifest: Path, init: str, bundle: Path, epochs: int, steps_per_epoch: int, val_every: int,
                   device: str) -> dict:
    config = run_config(manifest, "finetune" if init == "pretrained" else "scratch", epochs, device,
                        val_every=val_every, max_steps=steps_per_epoch,
                        freeze=head_first(epochs) if init == "pretrained" else None)
    config["model"] = {"bundle": str(bundle)}
    config["train"]["channels_last"] = True
    return config


def main() -> int:
    p = parser("meshnet_transfer", __doc__)
    p.add_argument("--parts", nargs="+", choices=("sizes", "recipe"), default=["sizes", "recipe"], help="what to measure (default both)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help=f"training set sizes (default {' '.join(map(str, SIZES))})")
    p.add_argument("--steps", type=int, default=None, help=f"steps of every run of the sizes part (default {STEPS}; quick: 4)")
    p.add_argument("--recipe-steps", type=int, default=None, help=f"steps of the recipe part (default {RECIPE_STEPS}; quick: 4)")
    args = p.parse_args()
    if not MESHNET.is_dir():
        raise SystemExit(f"{MESHNET}: not here (the benchmarks need ../shared beside the repository)")
    bench = Benchmark("meshnet_transfer", args)
    check_manifests()
    bundles = {"pretrained": MESHNET, "random": random_copy(bench.out)}
    results, text = {}, []
    if "sizes" in args.parts:
        results["sizes"] = _sizes(bench, args, bundles)
        text.append(_sizes_markdown(results["sizes"]))
    if "recipe" in args.parts:
        results["recipe"] = _recipe(bench, args, bundles)
        text.append(_recipe_markdown(results["recipe"]))
    bench.finish(results, "\n\n".join(text))
    return 0


def _sizes(bench: Benchmark, args, bundles: dict) -> dict:
    steps = args.steps or (4 if args.quick else STEPS)
    epochs = max(1, steps // STEPS_PER_EPOCH)
    val_every = 1 if args.quick else VAL_EVERY
    sizes = args.sizes or ((5,) if args.quick else SIZES)
    runs = []
    for n in sizes:
        manifest = MANIFESTS / f"bench_train{n}.csv"
        if args.quick:
            manifest = subset_manifest(manifest, bench.out / "manifests" / f"train{n}.csv", n_val=3)
        curve_manifest = subset_manifest(manifest, bench.out / "manifests" / f"train{n}_curve.csv", n_val=CURVE_CASES)
        for init in INITS:
            name = f"{init}_n{n}"
            config = meshnet_config(curve_manifest, init, bundles[init], epochs, STEPS_PER_EPOCH, val_every, bench.device)
            result = bench.isolated(__file__, {
                "task": "train_and_evaluate", "name": name, "config": config, "run_dir": str(bench.out / "runs" / name),
                "eval_manifest": str(manifest), "eval_dir": str(bench.out / "eval" / name), "eval_split": "val",
                "eval_checkpoint": "last",
            }, name, timing=True)
            runs.append({"n_train": n, "init": init, **_digest(result)})
    return {"epochs": epochs, "steps_per_epoch": STEPS_PER_EPOCH, "val_every": val_every, "sizes": list(sizes),
            "runs": runs, "differences": _differences(bench.out, [f"n{n}" for n in sizes]),
            "catch_up": {n: _catch_up(runs, n) for n in sizes}}


def _recipe(bench: Benchmark, args, bundles: dict) -> dict:
    steps = args.recipe_steps or (4 if args.quick else RECIPE_STEPS)
    per_epoch = 2 if args.quick else RECIPE_STEPS_PER_EPOCH
    epochs = max(1, steps // per_epoch)
    manifest = MANIFESTS / "hippocampus_fold0.csv"
    if args.quick:
        manifest = subset_manifest(manifest, bench.out / "manifests" / "fold0.csv", n_train=8, n_val=3)
    runs = []
    for init in INITS:
        name = f"{init}_fold0"
        config = meshnet_config(manifest, init, bundles[init], epochs, per_epoch, max(1, epochs // 4), bench.device)
        result = bench.isolated(__file__, {
            "task": "train_and_evaluate", "name": name, "config": config, "run_dir": str(bench.out / "runs" / name),
            "eval_manifest": str(manifest), "eval_dir": str(bench.out / "eval" / name),
            "eval_tta_dir": str(bench.out / "eval_tta" / name), "eval_split": "val", "eval_checkpoint": "last",
        }, name, timing=True)
        runs.append({"init": init, **_digest(result, tta=True)})
    return {"epochs": epochs, "steps_per_epoch": per_epoch, "runs": runs,
            "differences": _differences(bench.out, ["fold0"], folder="eval_tta")}


def _digest(result: dict, tta: bool = False) -> dict:
    evaluation = result["eval_tta" if tta else "eval"]
    timing = result["timing"]
    curve, seconds = [], 0.0
    for record, train_s in zip(result["metrics"], timing["train_seconds"], strict=True):
        seconds += train_s
        if "val_dice" in record:
            curve.append({"epoch": record["epoch"], "val_dice": record["val_dice"], "train_seconds": round(seconds, 1),
                          "steps": (record["epoch"] + 1) * result["steps_per_epoch"]})
    return {
        "dice": {cls: dice_of(evaluation, cls) for cls in ("anterior", "posterior", "mean_foreground")},
        "n_val_cases": evaluation["n_cases"], "curve": curve, "tta": tta,
        "steps": result["steps_per_epoch"] * len(timing["train_seconds"]),
        "train_seconds": sum(timing["train_seconds"]), "memory": result["memory"], "run_dir": result["run_dir"],
    }


def _differences(out: Path, suffixes: list[str], folder: str = "eval") -> dict:
    from medft.evaluate.summary import paired_difference, read_per_case

    return {suffix: paired_difference(read_per_case(out / folder / f"random_{suffix}" / "per_case.csv"),
                                      read_per_case(out / folder / f"pretrained_{suffix}" / "per_case.csv"),
                                      ["background", "anterior", "posterior"])["differences"] for suffix in suffixes}


def _catch_up(runs: list[dict], n: int) -> dict:
    """The random run's final validation Dice, and the training seconds the pretrained run took to reach it
    (None when the random run never segmented anything: every network "reaches" a Dice of 0)."""
    by_init = {run["init"]: run for run in runs if run["n_train"] == n}
    target = by_init["random"]["curve"][-1]["val_dice"]
    learned = target >= LEARNED
    reached = next((point for point in by_init["pretrained"]["curve"] if point["val_dice"] >= target), None) if learned else None
    return {"target": target, "random_learned": learned, "random_seconds": by_init["random"]["train_seconds"],
            "random_steps": by_init["random"]["steps"], "pretrained_epoch": reached["epoch"] if reached else None,
            "pretrained_steps": reached["steps"] if reached else None,
            "pretrained_seconds": reached["train_seconds"] if reached else None}


def _dice_rows(runs: list[dict], first: list[str]) -> list[list]:
    return [[run[key] for key in first] + [fmt_dice(run["dice"]["anterior"]), fmt_dice(run["dice"]["posterior"]),
            fmt_dice(run["dice"]["mean_foreground"]), run["steps"], fmt(run["train_seconds"], 0)] for run in runs]


def _difference_table(differences: dict, label: str) -> str:
    rows = [[key] + [f"{d[c]['mean_diff']:+.3f} [{d[c]['ci95'][0]:+.3f}, {d[c]['ci95'][1]:+.3f}]"
                     if d[c]["mean_diff"] is not None and d[c]["ci95"][0] is not None else "n/a"
                     for c in ("anterior", "posterior", "mean_foreground")] for key, d in differences.items()]
    return markdown_table([label, "anterior: pretrained - random", "posterior", "mean"], rows)


DICE_HEADERS = ["anterior Dice [95% CI]", "posterior Dice [95% CI]", "mean Dice [95% CI]", "steps", "train s"]


def _sizes_markdown(part: dict) -> str:
    runs = part["runs"]
    table = markdown_table(["train cases", "weights", *DICE_HEADERS], _dice_rows(runs, ["n_train", "init"]))
    catch_rows = [[n, fmt(c["target"], 3), f"{c['random_steps']} ({c['random_seconds']:.0f} s)",
                   "the random run never segmented" if not c["random_learned"]
                   else "not reached" if c["pretrained_steps"] is None
                   else f"{c['pretrained_steps']} ({c['pretrained_seconds']:.0f} s, epoch {c['pretrained_epoch']})"]
                  for n, c in part["catch_up"].items()]
    catch_table = markdown_table(["train cases", "random: final val Dice", "random: steps (train s)",
                                  "pretrained: steps (train s) to reach it"], catch_rows)
    n_val = runs[0]["n_val_cases"] if runs else 0
    return (f"Sizes: MeshNet pretrained by others vs random weights, {part['epochs'] * part['steps_per_epoch']} steps each; "
            f"Dice of the final checkpoint on {n_val} validation cases (mean over cases, 95% bootstrap interval)\n\n{table}"
            f"\n\nPaired difference, pretrained minus random (same cases, 95% paired bootstrap interval)\n\n"
            f"{_difference_table(part['differences'], 'train cases')}\n\nSteps to the random run's final validation Dice "
            f"(validation on {CURVE_CASES} of the cases; training time only)\n\n{catch_table}")


def _recipe_markdown(part: dict) -> str:
    runs = part["runs"]
    table = markdown_table(["weights", *DICE_HEADERS], _dice_rows(runs, ["init"]))
    n_val = runs[0]["n_val_cases"] if runs else 0
    return (f"Recipe: fold 0 (160 training cases), {part['epochs'] * part['steps_per_epoch']} steps; Dice with left-right "
            f"test-time flips of the final checkpoint on the fold's {n_val} validation cases\n\n{table}\n\n"
            f"Paired difference, pretrained minus random\n\n{_difference_table(part['differences'], 'split')}")


if __name__ == "__main__":
    if is_worker():
        worker_main(WORKER_TASKS)
        sys.exit(0)
    sys.exit(main())
