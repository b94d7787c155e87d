"""Accuracy: configs/hippocampus.yaml on MSD hippocampus, and what each of its levers adds.

Each variant is configs/hippocampus.yaml with one or more keys changed (``VARIANTS``, applied
like ``medft train --set``), trained in its own process on the 160 training cases of a
cross-validation fold and validated on its 40 (``data_manifests/hippocampus_fold{k}.csv``,
written by ``benchmarks/make_manifests.py``). The trained run is then evaluated by
``medft.evaluate.run.evaluate`` on the fold's 40 validation cases, without and with test-time
flips (``medft evaluate --tta``: left-right, or every mirroring of ``data.flip_axes``), from the run's last checkpoint
(``--checkpoint last``: the model after the fixed budget of epochs, not one picked on the
validation cases): Dice per class with medft's 95% bootstrap interval over cases. Also reported: the training wall time
(``train()`` from start to end:
steps, validations, checkpoints; setup, i.e. reading and caching the data, listed apart), the
epochs, the epoch of the best validation Dice during training (for the record: it does not
choose the evaluated model), and peak memory.

The recipe trains from random weights (the demo bundle's pretraining cases are among the
folds' validation cases, so fine-tuning it would validate on cases it has seen).

Run: ``.venv/bin/python benchmarks/hippocampus_recipe.py [--variants recipe baseline ...] [--folds 0] [--quick] [--out DIR]``

A full run of the recipe takes 13-19 minutes of training on 2 CPU cores; each variant about as
long again, so ablations are chosen with ``--variants``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from common import (
    MANIFESTS,
    N_FOLDS,
    REPO,
    WORKER_TASKS,
    Benchmark,
    cv_folds,
    dice_of,
    fmt,
    fmt_dice,
    is_worker,
    markdown_table,
    parser,
    read_rows,
    subset_manifest,
    worker_main,
)

CONFIG = REPO / "configs" / "hippocampus.yaml"

# nnU-Net's augmentation (the strong preset's ranges, mirroring on all three axes), for the long variants
NNUNET_AUGMENTATION = {"data.augmentation": "strong", "data.flip_axes": [0, 1, 2], "train.val_every": 36}

# name -> (what changes, overrides of configs/hippocampus.yaml)
VARIANTS: dict[str, tuple[str, dict]] = {
    "recipe": ("configs/hippocampus.yaml as it is", {}),
    "baseline": ("the issue's plain setup in medft: UNet 16-32-64-128 (2 residual units, 1.2M parameters), "
                 "whole volumes 48 x 64 x 48, standard augmentation, float32, batch 2, lr 1e-3, 68 epochs",
                 {"model.network_def": {"_target_": "UNet", "spatial_dims": 3, "channels": [16, 32, 64, 128],
                                        "strides": [2, 2, 2], "num_res_units": 2},
                  "data.sampling": "whole", "data.spatial_size": [48, 64, 48], "data.augmentation": "standard",
                  "train.amp": False, "optim.lr": 1e-3, "optim.head_lr": 1e-3, "train.epochs": 68, "train.val_every": 10}),
    "unet32": ("the previous recipe's network: MONAI UNet 32-64-128-256 (2 residual units, PReLU, 4.7M parameters; "
               "its first convolution already halves the resolution), no deep supervision, 68 epochs",
               {"model.network_def": {"_target_": "UNet", "spatial_dims": 3, "channels": [32, 64, 128, 256],
                                      "strides": [2, 2, 2], "num_res_units": 2},
                "train.epochs": 68, "train.val_every": 10}),
    "dynunet_48": ("48 epochs instead of 36, validation every 24", {"train.epochs": 48, "train.val_every": 24}),
    "nnunet_dice": ("nnU-Net's Dice term: over the whole batch and the structures only "
                    "(train.dice_batch true, train.dice_background false)",
                    {"train.dice_batch": True, "train.dice_background": False}),
    "epochs_40": ("40 epochs instead of 36 (the recipe until 2026-11-27), validation every 20",
                  {"train.epochs": 40, "train.val_every": 20}),
    "fp32": ("float32 instead of mixed precision (bfloat16 on CPU, float16 on CUDA; same epochs)", {"train.amp": False}),
    "width_24": ("filters 24-48-96-192 instead of 16-32-64-128 (3.2M parameters) and 20 epochs instead of 36, "
                 "validation every 10: more capacity for fewer epochs in about the same time",
                 {"model.network_def.filters": [24, 48, 96, 192], "train.epochs": 20, "train.val_every": 10}),
    "width_32": ("nnU-Net's widths 32-64-128-256 instead of 16-32-64-128 (5.6M parameters, 4x the arithmetic: "
                 "for a GPU)", {"model.network_def.filters": [32, 64, 128, 256]}),
    "res_block": ("residual blocks (DynUNet res_block: a shortcut around each pair of convolutions, encoder and "
                  "decoder; nnU-Net's residual-encoder presets have them in the encoder only)",
                  {"model.network_def.res_block": True}),
    "lr_4e-3": ("peak learning rate 4e-3 instead of 2e-3", {"optim.lr": 4e-3, "optim.head_lr": 4e-3}),
    "sgd": ("nnU-Net's optimizer instead of AdamW: SGD with Nesterov momentum 0.99, lr 0.01, weight decay 3e-5 "
            "(same warm-up and cosine schedule)",
            {"optim.name": "sgd", "optim.lr": 0.01, "optim.head_lr": 0.01, "optim.weight_decay": 3e-5}),
    "no_deep_supervision": ("no deep supervision: the loss on the full-resolution output only, instead of also on the "
                            "heads at 1/2 and 1/4 resolution (upsampled by DynUNet; weights 1/2 and 1/4)",
                            {"model.network_def.deep_supervision": False}),
    "half_data": ("80 of the fold's 160 training cases (the manifest's first 80) and 72 epochs instead of 36: "
                  "the same 2,880 steps on half the cases; validated on the same 40 cases",
                  {"train.epochs": 72, "train.val_every": 36}),
    "epochs_18": ("18 epochs instead of 36, validation every 9: half the budget, a member of a two-model ensemble "
                  "(benchmarks/ensemble_gain.py)", {"train.epochs": 18, "train.val_every": 9}),
    "epochs_18_seed1": ("as epochs_18, seed 1 instead of 0: the ensemble's second member",
                        {"train.epochs": 18, "train.val_every": 9, "seed": 1}),
    "light_aug": ("light augmentation (left-right flips only) instead of standard", {"data.augmentation": "light"}),
    "strong_aug": ("strong augmentation (nnU-Net's ranges) instead of standard", {"data.augmentation": "strong"}),
    "mirror_all": ("mirrored along all three axes (nnU-Net's choice for this task), each with probability 0.5, "
                   "instead of left-right only; test-time augmentation then averages 8 mirrorings instead of 2",
                   {"data.flip_axes": [0, 1, 2]}),
    "no_flip": ("no mirroring in training (data.flip_axes []) instead of left-right: the crops are all in one "
                "orientation (199 of the 200 label maps match the mean of the others better as stored than "
                "mirrored left-right), so a mirrored crop is anatomy the validation cases never show; test-time "
                "augmentation then has no mirroring to average", {"data.flip_axes": []}),
    "elastic": ("a mild elastic deformation in 30% of the training samples (data.elastic 0.3: displacements of "
                "1-2 voxels on average, smooth over 5-7 voxels) on top of the standard augmentation: more shapes, "
                "as the left-right flip gives, without mirrored anatomy", {"data.elastic": 0.3}),
    "nnunet_aug_108": ("nnU-Net's augmentation (the strong preset's ranges, mirroring on all three axes) for 3x the "
                       "recipe's epochs (108, validation every 36): over the budget, to see whether a longer training "
                       "(as on a GPU) lets the harder augmentation pay",
                       {**NNUNET_AUGMENTATION, "train.epochs": 108}),
    "nnunet_aug_288": ("nnU-Net's augmentation as in nnunet_aug_108 for 8x the recipe's epochs (288, validation every "
                       "36): far over the budget, to see whether the harder augmentation overtakes the recipe once it "
                       "is trained long enough",
                       {**NNUNET_AUGMENTATION, "train.epochs": 288}),
    "whole_48": ("whole volumes padded to 48 x 64 x 48 instead of 40 x 56 x 40 patches",
                 {"data.sampling": "whole", "data.spatial_size": [48, 64, 48]}),
}
TRAIN_SUBSETS = {"half_data": 80}  # variants trained on the first n training cases of their fold's manifest


def variant_config(name: str, manifest: Path, quick: bool, settings: list[str] = ()) -> dict:
    """configs/hippocampus.yaml with the variant's keys set, as ``medft train --set`` sets them,
    then ``settings`` (``--set KEY=VALUE`` of this script, for every variant)."""
    from medft.config import read_raw_config, validate_config

    overrides = {**VARIANTS[name][1], "data.manifest": str(Path(manifest).resolve())}
    if quick:
        overrides.update({"train.epochs": 2, "train.max_steps_per_epoch": 2, "train.val_every": 1})
    raw = read_raw_config(CONFIG, [f"{key}={json.dumps(value)}" for key, value in overrides.items()] + list(settings))
    return validate_config(raw, source=f"{CONFIG} ({name})", base=CONFIG.parent).model_dump(mode="json")


def main() -> int:
    p = parser("hippocampus_recipe", __doc__)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["recipe"],
                   help="what to train (default: recipe)")
    p.add_argument("--folds", type=int, nargs="+", choices=range(N_FOLDS), default=[0],
                   help="cross-validation folds to train each variant on (default: 0, the fold of configs/hippocampus.yaml)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="set a config value in every variant, as medft train --set does, e.g. --set "
                        "data.num_workers=8 on a GPU machine (repeatable; the run's settings are in its results)")
    args = p.parse_args()
    bench = Benchmark("hippocampus_recipe", args)
    folds = cv_folds()
    runs = []
    for fold in args.folds:
        manifest = MANIFESTS / f"hippocampus_fold{fold}.csv"
        if sorted(r["case_id"] for r in read_rows(manifest) if r["split"] == "val") != folds[fold]:
            raise SystemExit(f"{manifest} differs from the folds. Fix: .venv/bin/python benchmarks/make_manifests.py")
        if args.quick:
            manifest = subset_manifest(manifest, bench.out / "manifests" / f"fold{fold}.csv", n_train=4, n_val=2)
        for variant in args.variants:
            name = f"{variant}_fold{fold}"
            train_manifest = manifest
            if variant in TRAIN_SUBSETS:
                train_manifest = subset_manifest(manifest, bench.out / "manifests" / f"{name}.csv", n_train=TRAIN_SUBSETS[variant])
            result = bench.isolated(__file__, {
                "task": "train_and_evaluate", "name": name, "config": variant_config(variant, train_manifest, args.quick, args.settings),
                "run_dir": str(bench.out / "runs" / name), "eval_manifest": str(manifest), "eval_split": "val",
                "eval_dir": str(bench.out / "eval" / name), "eval_tta_dir": str(bench.out / "eval_tta" / name),
                "eval_checkpoint": "last",
            }, name, timing=True)
            runs.append({"variant": variant, "fold": fold, **_digest(result)})
    bench.finish({"runs": runs, "variants": {v: VARIANTS[v] for v in args.variants}, "settings": args.settings},
                 _markdown(runs, args.settings))
    return 0


def _digest(result: dict) -> dict:
    metrics = result["metrics"]
    validated = [m for m in metrics if "val_dice" in m]
    return {
        "epochs": len(metrics),
        "best_val_epoch": result["summary"]["best_epoch"],
        "setup_seconds": result["setup_seconds"],
        "train_wall_seconds": result["train_wall_seconds"],
        "train_step_seconds": sum(result["timing"]["train_seconds"]),
        # (epoch, seconds of training from its start to the end of that epoch, validation Dice)
        "val_curve": [(m["epoch"], result["timing"]["epoch_end_wall"][m["epoch"]], m["val_dice"]) for m in validated],
        "memory": result["memory"],
        "dice": {cls: dice_of(result["eval"], cls) for cls in ("anterior", "posterior", "mean_foreground")},
        "dice_tta": {cls: dice_of(result["eval_tta"], cls) for cls in ("anterior", "posterior", "mean_foreground")},
        "run_dir": result["run_dir"],
    }


def _markdown(runs: list[dict], settings: list[str]) -> str:
    rows = []
    for run in runs:
        for tta in (False, True):
            dice = run["dice_tta" if tta else "dice"]
            rows.append([run["variant"], run["fold"], "yes" if tta else "no", fmt_dice(dice["anterior"]),
                         fmt_dice(dice["posterior"]), fmt_dice(dice["mean_foreground"]), run["epochs"],
                         run["best_val_epoch"], fmt(run["train_wall_seconds"] / 60, 1), fmt(run["setup_seconds"], 0),
                         fmt(run["memory"]["process_peak_rss_mb"], 0)])
    headers = ["variant", "fold", "TTA", "anterior Dice [95% CI]", "posterior Dice [95% CI]", "mean Dice [95% CI]",
               "epochs", "best validation epoch", "training min", "setup s", "peak RSS MiB"]
    return ("configs/hippocampus.yaml and variants, each trained on a fold's 160 training cases (half_data: 80) and evaluated on its 40 "
            "validation cases (medft evaluate --checkpoint last: the final model; TTA: the mirrorings of data.flip_axes, left-right in "
            "the recipe)"
            + (f"; every variant with --set {', '.join(settings)}" if settings else "")
            + f"\n\n{markdown_table(headers, rows)}")


if __name__ == "__main__":
    if is_worker():
        worker_main(WORKER_TASKS)
        sys.exit(0)
    sys.exit(main())
