"""Stress profile (issue 31): how three hippocampus models hold up under ``medft stress``'s perturbations, and
whether augmentation buys robustness here as ROOD-MRI found.

Models, each trained in its own process on the 50 training cases of the benchmark split
(``data_manifests/bench_train50.csv``: none of them pretrained the demo bundle), each scored from its last
checkpoint (the final model of a fixed budget; early stopping off):
- ``recipe``: configs/hippocampus.yaml (a DynUNet from random weights, standard augmentation, 36 x 80 steps);
- ``recipe_no_aug``: the same with ``data.augmentation: none``;
- ``demo_ft``: configs/demo.yaml (the demo bundle fine-tuned to anterior / posterior, 40 epochs).

Stress cases: 40 that no model saw in training or pretraining, the split's 30 validation cases and the first 10 of
its 20 held-back site-B cases (unshifted). Each model is stress-tested with every MR perturbation at the five
levels (``medft stress``, default workers), timed; ``recipe_no_aug`` and ``demo_ft`` are compared with ``recipe``
(``--compare``: the same perturbed images, paired case by case).

Run: ``.venv/bin/python benchmarks/stress_profile.py [--models recipe recipe_no_aug demo_ft] [--quick] [--out DIR]``
(on 2 CPU cores: each recipe model 13-19 minutes of training with bfloat16, 1.2-1.6 times that in float32 on a CPU
without it; demo_ft a few minutes; then about 7 minutes of stress test each).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from common import (
    BUNDLE,
    MANIFESTS,
    REPO,
    WORKER_TASKS,
    Benchmark,
    check_manifests,
    fmt,
    fresh_folder,
    is_worker,
    markdown_table,
    parser,
    pretraining_cases,
    read_rows,
    subset_manifest,
    train_and_evaluate,
    worker_main,
    write_manifest,
)

MODELS = {
    "recipe": (REPO / "configs" / "hippocampus.yaml", {}),
    "recipe_no_aug": (REPO / "configs" / "hippocampus.yaml", {"data.augmentation": "none"}),
    "demo_ft": (REPO / "configs" / "demo.yaml", {"model.bundle": str(BUNDLE),  # the config's paths are relative
                                                 "train.val_every": 40}),  # the last model is scored: validate once
}
COMPARED_WITH = "recipe"
N_SITE_B = 10


def train_model(spec: dict) -> dict:
    """Worker task: the model's config with the benchmark's data and fixed budget, trained (no evaluation)."""
    from medft.config import read_raw_config

    overrides = [f"{key}={json.dumps(value)}" for key, value in spec["overrides"].items()]
    raw = read_raw_config(Path(spec["config_path"]), overrides)
    return train_and_evaluate({**spec, "config": raw, "eval_manifest": None})


def stress_model(spec: dict) -> dict:
    """Worker task: ``medft stress`` of a run's last checkpoint, timed."""
    import time

    from medft.stress.run import stress

    started = time.perf_counter()
    result = stress(spec["run_dir"], spec["manifest"], fresh_folder(spec["out"]), checkpoint="last",
                    levels=spec.get("levels"), perturbations=spec.get("perturbations"),
                    compare=spec.get("compare"))
    return {"seconds": time.perf_counter() - started, "stress": result.stress}


def stress_cases(out: Path, quick: bool) -> Path:
    """The 40 stress cases: the split's validation cases and the first held-back site-B cases."""
    val, site_b = MANIFESTS / "bench_val.csv", MANIFESTS / "bench_site_b_source.csv"
    rows = [r for r in read_rows(val) if r["split"] == "val"][: 2 if quick else None]
    rows_b = [r for r in read_rows(site_b) if r["split"] == "train"][: 1 if quick else N_SITE_B]
    cases = [(r["case_id"], val.parent / r["image"], val.parent / r["label"], "test", "") for r in rows]
    cases += [(r["case_id"], site_b.parent / r["image"], site_b.parent / r["label"], "test", "") for r in rows_b]
    return write_manifest(out / "stress_cases.csv", cases)


def main() -> int:
    p = parser("stress_profile", __doc__)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS),
                   help="the models to train and stress-test (default all; a model compared with recipe needs "
                        "recipe's stress folder in --out)")
    args = p.parse_args()
    args.models = [name for name in MODELS if name in args.models]  # recipe first: the others compare with it
    from medft.train.recipe import cpu_has_bf16

    bench = Benchmark("stress_profile", args)
    split = check_manifests()
    train_manifest = MANIFESTS / "bench_train50.csv"
    if args.quick:
        train_manifest = subset_manifest(train_manifest, bench.out / "quick_train.csv", 4, 2)
    manifest = stress_cases(bench.out, args.quick)
    seen = set(split["train_pool"]) | pretraining_cases()
    if seen & {r["case_id"] for r in read_rows(manifest)}:
        raise SystemExit(f"{manifest}: a stress case trained or pretrained a model")
    budget = {"train.epochs": 2, "train.max_steps_per_epoch": 2} if args.quick else {}
    results = {}
    for name in args.models:
        config, changes = MODELS[name]
        overrides = {"data.manifest": str(train_manifest), "early_stopping.enabled": False, "train.device": bench.device,
                     **changes, **budget}
        if bench.device == "cpu" and not cpu_has_bf16():
            overrides["train.amp"] = False  # emulated bfloat16 is about 30 times slower (RESULTS.md, item 7)
        trained = bench.isolated(__file__, {"task": "train_model", "name": name, "config_path": str(config),
                                            "overrides": overrides, "run_dir": str(bench.out / name / "run")},
                                 f"train_{name}")
        results[name] = {"train_wall_seconds": trained["train_wall_seconds"], "epochs": len(trained["metrics"])}
    for name in args.models:
        spec = {"task": "stress_model", "run_dir": str(bench.out / name / "run"), "manifest": str(manifest),
                "out": str(bench.out / name / "stress")}
        if args.quick:
            spec.update(levels=[1, 5], perturbations=["noise", "affine"])
        if name != COMPARED_WITH and (bench.out / COMPARED_WITH / "stress" / "stress.json").is_file():
            spec["compare"] = str(bench.out / COMPARED_WITH / "stress")
        stressed = bench.isolated(__file__, spec, f"stress_{name}", timing=True)
        results[name].update(stress_seconds=stressed["seconds"], stress=stressed["stress"],
                             disturbed=stressed["disturbed"])
    return 0 if bench.finish(results, _markdown(results)) else 1


def _markdown(results: dict) -> str:
    first = next(iter(results.values()))["stress"]
    levels = [0, *first["levels"]]
    parts = []
    for name, result in results.items():
        stress = result["stress"]
        rows = []
        for pert in stress["ranking"]:
            entry = stress["results"][pert]
            means = [entry["levels"][str(level)]["mean_foreground"]["dice"] for level in levels]
            rows.append([pert, *(_ci(m) for m in means), _ci(entry["degradation"], signed=True), _ci(entry["overall"])])
        parts.append(f"**{name}** ({stress['cases']['scored']} cases, {result['stress_seconds'] / 60:.1f} min for "
                     f"{stress['cases']['scored'] * (1 + len(stress['ranking']) * len(stress['levels']))} inferences; "
                     f"trained {result['train_wall_seconds'] / 60:.1f} min), mean Dice of anterior and posterior, weakest "
                     "first:\n\n" + markdown_table(["perturbation", *(f"level {level}" for level in levels),
                                                   "degradation", "overall"], rows))
    for name, result in results.items():
        comparison = result["stress"].get("comparison")
        if not comparison:
            continue
        rows = []
        for pert in result["stress"]["ranking"]:
            entry = comparison["results"][pert]
            rows.append([pert, *(_diff(entry["levels"][str(level)]["mean_foreground"]) for level in levels),
                         _diff(entry["degradation"])])
        parts.append(f"**{name} - {COMPARED_WITH}** (paired on {comparison['n_common_cases']} cases, the same perturbed "
                     "images):\n\n" + markdown_table(["perturbation", *(f"level {level}" for level in levels),
                                                     "degradation"], rows))
    return "\n\n".join(parts)


def _ci(stats: dict, signed: bool = False) -> str:
    if stats.get("mean") is None:
        return "n/a"
    low, high = stats["ci95"]
    form = "+.3f" if signed else ".3f"
    interval = f" [{low:{form}}, {high:{form}}]" if low is not None else ""
    return f"{stats['mean']:{form}}{interval}"


def _diff(entry: dict) -> str:
    if entry.get("mean_diff") is None:
        return "n/a"
    low, high = entry["ci95"]
    return f"{entry['mean_diff']:+.3f} [{fmt(low, 3)}, {fmt(high, 3)}]"


if __name__ == "__main__":
    if is_worker():
        worker_main({**WORKER_TASKS, "train_model": train_model, "stress_model": stress_model})
    else:
        sys.exit(main())
