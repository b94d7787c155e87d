"""What weight averaging adds: the recipe's last weights against averages of its weights.

One training of configs/hippocampus.yaml per fold keeps, beside the network it trains, an
exponential moving average of the weights after every step for each ``--ema`` decay, and a
uniform average of the weights at the end of each epoch after the first ``--swa-from`` epochs
(stochastic weight averaging on the recipe's own cosine schedule), all with
``torch.optim.swa_utils.AveragedModel``. Each average is evaluated like the last weights, on the
fold's 40 validation cases with left-right test-time flipping (``medft evaluate --checkpoint
last --tta``), so the comparison is paired on the same run. Printed: the mean Dice per class of
each, folds pooled, and each average minus the last weights with a paired bootstrap 95% interval
(``medft.evaluate.summary.paired_difference``). An average costs no extra training.

Run: ``.venv/bin/python benchmarks/weight_averaging.py [--folds 1 3] [--ema 0.99 0.999] [--swa-from 18 27]``
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from common import (
    MANIFESTS,
    N_FOLDS,
    WORKER_TASKS,
    Benchmark,
    dice_of,
    fmt,
    fmt_dice,
    fmt_difference,
    fresh_folder,
    is_worker,
    markdown_table,
    parser,
    subset_manifest,
    timed_recipe_class,
    train_and_evaluate,
    worker_main,
)
from hippocampus_recipe import variant_config

LAST = "last weights"
CLASSES = ("anterior", "posterior", "mean_foreground")


def averaging_recipe_class(ema_decays: list[float], swa_from: list[int]):
    """The timed recipe, also keeping the averages; after training it writes each average's
    weights (the network's state_dict) to ``run_dir/averages/<name>.pt``."""
    import torch
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    class AveragingRecipe(timed_recipe_class()):
        def setup(self):
            super().setup()
            # DynUNet keeps its last deep-supervision outputs in a list shared with its layers;
            # after setup's test forward they are graph tensors, which AveragedModel's deepcopy refuses.
            heads = getattr(self.network, "heads", None)
            if isinstance(heads, list):
                heads[:] = [h.detach() for h in heads]
            self.ema = {f"ema_{d:g}": AveragedModel(self.network, multi_avg_fn=get_ema_multi_avg_fn(d), use_buffers=True)
                        for d in ema_decays}
            self.swa = {f"swa_from_{s}": (s, AveragedModel(self.network, use_buffers=True)) for s in swa_from}

        def _step(self, batch):
            loss = super()._step(batch)
            for average in self.ema.values():
                average.update_parameters(self.network)
            return loss

        def _save_epoch(self, epochs_done, improved):  # the end of an epoch
            super()._save_epoch(epochs_done, improved)
            for start, average in self.swa.values():
                if epochs_done > start:
                    average.update_parameters(self.network)

        def train(self):
            summary = super().train()
            folder = self.run_dir / "averages"
            folder.mkdir(exist_ok=True)
            averages = {**self.ema, **{name: average for name, (_, average) in self.swa.items()}}
            for name, average in averages.items():
                torch.save({"weights": average.module.state_dict(), "n_averaged": int(average.n_averaged)},
                           folder / f"{name}.pt")
            return summary

    return AveragingRecipe


def train_with_averages(spec: dict) -> dict:
    """Worker task: train and evaluate the last weights (``common.train_and_evaluate``), then
    evaluate each average as a run folder of its own (the run's config, the average as last.pt)."""
    import torch

    from medft.evaluate.run import evaluate

    result = train_and_evaluate(spec, averaging_recipe_class(spec["ema"], spec["swa_from"]))
    run_dir = Path(result["run_dir"])
    last = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    result["averages"] = {}
    for path in sorted((run_dir / "averages").glob("*.pt")):
        average = torch.load(path, map_location="cpu", weights_only=False)
        folder = Path(spec["averages_dir"]) / path.stem
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "checkpoints").mkdir(parents=True)
        shutil.copy(run_dir / "config.yaml", folder / "config.yaml")
        torch.save({**last, "model": average["weights"]}, folder / "checkpoints" / "last.pt")
        evaluated = evaluate(folder, spec["eval_manifest"], fresh_folder(Path(spec["eval_tta_dir"]).parent / f"{path.stem}_{spec['name']}"),
                             split="val", tta=True, checkpoint="last")
        result["averages"][path.stem] = {"n_averaged": average["n_averaged"], "eval_dir": str(evaluated.folder),
                                         "eval_tta": evaluated.summary}
    return result


def main() -> int:
    p = parser("weight_averaging", __doc__)
    p.add_argument("--folds", type=int, nargs="+", choices=range(N_FOLDS), default=[1, 3],
                   help="cross-validation folds (default: 1 3, away from the folds the recipe was chosen on)")
    p.add_argument("--ema", type=float, nargs="*", default=[0.99, 0.995, 0.998, 0.999], metavar="DECAY",
                   help="decays of the moving averages, updated every step (default 0.99 0.995 0.998 0.999)")
    p.add_argument("--swa-from", type=int, nargs="*", default=[18, 27], metavar="EPOCH",
                   help="uniform averages of the weights at the end of each epoch after this many (default 18 27)")
    args = p.parse_args()
    if not args.ema and not args.swa_from:
        p.error("nothing to compare: give --ema or --swa-from")
    if any(not 0 < d < 1 for d in args.ema):
        p.error("an --ema decay is between 0 and 1, e.g. 0.999")
    bench = Benchmark("weight_averaging", args)
    runs = []
    for fold in args.folds:
        manifest = MANIFESTS / f"hippocampus_fold{fold}.csv"
        if args.quick:
            manifest = subset_manifest(manifest, bench.out / "manifests" / f"fold{fold}.csv", n_train=4, n_val=2)
        config = variant_config("recipe", manifest, args.quick)
        swa_from = sorted({min(s, config["train"]["epochs"] - 1) for s in args.swa_from})
        name = f"recipe_fold{fold}"
        result = bench.isolated(__file__, {
            "task": "train_with_averages", "name": name, "config": config, "ema": args.ema, "swa_from": swa_from,
            "run_dir": str(bench.out / "runs" / name), "averages_dir": str(bench.out / "averages" / name),
            "eval_manifest": str(manifest), "eval_split": "val", "eval_checkpoint": "last",
            "eval_dir": str(bench.out / "eval" / name), "eval_tta_dir": str(bench.out / "eval_tta" / name),
        }, name)
        runs.append({"fold": fold, "train_wall_seconds": result["train_wall_seconds"],
                     "eval_dirs": {LAST: str(bench.out / "eval_tta" / name),
                                   **{k: v["eval_dir"] for k, v in result["averages"].items()}},
                     "n_averaged": {k: v["n_averaged"] for k, v in result["averages"].items()},
                     "dice_tta": {LAST: {c: dice_of(result["eval_tta"], c) for c in CLASSES},
                                  **{k: {c: dice_of(v["eval_tta"], c) for c in CLASSES} for k, v in result["averages"].items()}}})
    pooled = pooled_differences(runs)
    bench.finish({"runs": runs, "pooled": pooled, "ema": args.ema, "swa_from": args.swa_from}, _markdown(runs, pooled))
    return 0


def pooled_differences(runs: list[dict]) -> dict:
    """Per model: the folds' cases pooled, its mean Dice per class and its paired difference to the last weights."""
    from paired_ablation import pooled as pooled_rows

    from medft.evaluate.summary import MEAN_FOREGROUND, paired_difference, summarize

    rows, names = {}, None
    for model in runs[0]["eval_dirs"]:
        rows[model], names = pooled_rows(",".join(run["eval_dirs"][model] for run in runs))
    pooled = {}
    for model, model_rows in rows.items():
        means = summarize(model_rows, names, metrics=["dice"])["overall"]
        entry = {"cases": len({r["case_id"] for r in model_rows}),
                 "dice": {c: means[c]["dice"]["mean"] for c in [*names[1:], MEAN_FOREGROUND]}}
        if model != LAST:
            entry["minus_last"] = paired_difference(rows[LAST], model_rows, names)["differences"]
        pooled[model] = entry
    return pooled


def _markdown(runs: list[dict], pooled: dict) -> str:
    per_fold = []
    for run in runs:
        for model, dice in run["dice_tta"].items():
            per_fold.append([run["fold"], model, run["n_averaged"].get(model, "-"), fmt_dice(dice["anterior"]),
                             fmt_dice(dice["posterior"]), fmt_dice(dice["mean_foreground"])])
    minutes = ", ".join(fmt(r["train_wall_seconds"] / 60, 1) for r in runs)
    text = ("configs/hippocampus.yaml trained once per fold on its training cases (training minutes, averages kept: "
            f"{minutes}); its last weights and averages of its weights, each evaluated on the fold's validation "
            "cases with TTA\n\n"
            + markdown_table(["fold", "model", "weights averaged", "anterior Dice [95% CI]", "posterior Dice [95% CI]",
                              "mean Dice [95% CI]"], per_fold))
    table = []
    for model, entry in pooled.items():
        diff = entry.get("minus_last")
        table.append([model, entry["cases"], *[f"{entry['dice'][c]:.4f}" for c in entry["dice"]],
                      *([fmt_difference(d) for d in diff.values()] if diff else ["-"] * len(entry["dice"]))])
    classes = list(next(iter(pooled.values()))["dice"])
    return text + "\n\nFolds pooled; minus the last weights, per case paired, 95% bootstrap interval:\n\n" + markdown_table(
        ["model", "cases", *[f"{c} Dice" for c in classes], *[f"{c} - last" for c in classes]], table)


if __name__ == "__main__":
    if is_worker():
        worker_main({**WORKER_TASKS, "train_with_averages": train_with_averages})
        sys.exit(0)
    sys.exit(main())
