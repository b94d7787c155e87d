"""Fine-tuning methods, measured in distribution and under site shifts the training never saw (issue 30).

From a pretrained bundle (``--bundle demo``: bundles/hippocampus_demo, a UNet pretrained by medft on 85
other cases; ``--bundle meshnet``: ../shared/bundles/meshnet_brainchop_18cls, brainchop's MeshNet trained by
others on whole brains), fine-tuned to the anterior/posterior hippocampus (a new 3-class head) on the first
10 and on all 50 training cases of the benchmark split (``data_manifests/bench_train{n}.csv``), with:

- ``full``: every layer trains (lr 1e-3, new head 1e-2: configs/demo.yaml's rates, for every method);
- ``encoder``: the encoder frozen (the UNet's contracting path; MeshNet, which has none, its first five of
  nine convolutions);
- ``lora_r4``, ``lora_r16``: ``finetune.method: lora`` with rank 4 and 16 (alpha = rank);
- ``bitfit``: ``finetune.method: bitfit``;
- ``lp_ft``: ``finetune.linear_probe_epochs``: the head alone for the first quarter of the epochs;
- ``wise_a25``, ``wise_a50``, ``wise_a75``: WiSE-FT, ``medft interpolate`` of the ``full`` run with the bundle
  at alpha 0.25, 0.5, 0.75 (the new head is the run's).

Every run trains ``--steps`` steps of batch 2 (5 steps an epoch whatever the number of cases, so the cases
take turns and both sizes get the same budget), standard augmentation, no early stopping, one validation
after the last epoch on 3 of the validation cases (so best.pt is the final model), seed 0. Each model is scored by ``medft evaluate`` on
the 30 fixed validation cases (none trained either bundle's fine-tuning or the demo bundle) at three sites:

- ``A``: the cases as they are (the training site);
- ``gamma``: the same cases through a different scanner (``domain_shift.py``'s gamma site: gamma 2.0
  contrast curve, a smooth bias field up to exp(+-0.4), 3-slice slabs, Rician noise 0.04), labels unchanged;
- ``thick``: the same cases acquired with 4 mm slices along the third stored axis (slabs of 4 slices
  averaged) and resampled back to the 1 mm grid, intensities unchanged, labels unchanged.

Reported per method: Dice per class with 95% bootstrap intervals at each site; the paired difference against
``full`` on the same cases (``medft.evaluate.summary.paired_difference``, paired bootstrap); trainable
parameters (adapters included) and their share of the network; training seconds per step (mean over the
epochs after the first; LP-FT mixes head-only and full steps); the resident-set peak while training; and
what must be stored per site besides the shared bundle: the bytes of the tensors ``medft export --adapter`` writes
(those that differ from the bundle: every tensor for full and LP-FT, the unfrozen ones for encoder freezing,
adapters and head for LoRA, biases and head for BitFit; a WiSE-FT model differs in every tensor).

Run::

    .venv/bin/python benchmarks/finetune_methods.py --bundle demo --out runs/bench/finetune_methods_demo
    .venv/bin/python benchmarks/finetune_methods.py --bundle meshnet --steps 60 --out runs/bench/finetune_methods_meshnet
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

import numpy as np
from common import (
    BUNDLE,
    CLASSES,
    MANIFESTS,
    REPO,
    Benchmark,
    check_manifests,
    dice_of,
    fmt,
    fmt_dice,
    fmt_difference,
    fresh_folder,
    is_worker,
    markdown_table,
    parser,
    read_rows,
    run_config,
    subset_manifest,
    train_and_evaluate,
    worker_main,
    write_manifest,
)
from domain_shift import SHIFTS, _thick_slices, shift_image

MESHNET = (REPO / ".." / "shared" / "bundles" / "meshnet_brainchop_18cls").resolve()
BUNDLES = {"demo": BUNDLE, "meshnet": MESHNET}
ENCODER = {"demo": [{"epoch": 0, "preset": "encoder"}],
           "meshnet": [{"epoch": 0, "patterns": [r"^features\.(0|2|4|6|8)\."]}]}
STEPS = {"demo": 400, "meshnet": 60}
STEPS_PER_EPOCH = 5
SIZES = (10, 50)
TRAINED = ("full", "encoder", "lora_r4", "lora_r16", "bitfit", "lp_ft")
ALPHAS = (0.25, 0.5, 0.75)
SITES = ("A", "gamma", "thick")
THICK_SLAB = 4
SEED = 11


def method_changes(method: str, bundle: str, epochs: int) -> dict:
    """The config keys a method sets on top of the common recipe."""
    if method == "encoder":
        return {"freeze": ENCODER[bundle]}
    if method.startswith("lora_r"):
        return {"finetune": {"method": "lora", "lora": {"rank": int(method.removeprefix("lora_r"))}}}
    if method == "bitfit":
        return {"finetune": {"method": "bitfit"}}
    if method == "lp_ft":
        return {"finetune": {"linear_probe_epochs": max(1, epochs // 4)}}
    return {}


def make_sites(out: Path, n_val: int | None) -> dict[str, Path]:
    """Manifests of the validation cases at each site (the shifted images written under ``out``)."""
    import nibabel as nib

    source = MANIFESTS / "bench_val.csv"
    rows = [r for r in read_rows(source) if r["split"] == "val"][:n_val]
    manifests = {"A": write_manifest(out / "site_A.csv", [(r["case_id"], source.parent / r["image"],
                                                           source.parent / r["label"], "val", "A") for r in rows])}
    from scipy.ndimage import zoom

    for site in ("gamma", "thick"):
        folder = out / f"site_{site}"
        folder.mkdir(parents=True, exist_ok=True)
        site_rows = []
        for row in rows:
            case_id = row["case_id"]
            image = nib.load(source.parent / row["image"])
            data = np.asarray(image.dataobj).astype(np.float64)
            if site == "gamma":
                shifted = shift_image(data, np.random.default_rng([SEED, int(case_id.rsplit("_", 1)[1])]), **SHIFTS["gamma"])
            else:
                shifted = _thick_slices(data, THICK_SLAB, zoom).astype(np.float32)
            written = nib.Nifti1Image(shifted, image.affine, image.header)
            written.set_data_dtype(np.float32)
            path = folder / f"{case_id}.nii.gz"
            nib.save(written, path)
            site_rows.append((case_id, path, source.parent / row["label"], "val", site))
        manifests[site] = write_manifest(out / f"site_{site}.csv", site_rows)
    return manifests


def train_and_score(spec: dict) -> dict:
    """Worker task: train (``common.train_and_evaluate``), then ``medft evaluate`` at every site."""
    result = train_and_evaluate({**spec, "eval_manifest": None})
    result["sites"] = _evaluate_sites(spec["run_dir"], spec["sites"], spec["eval_dir"])
    result["stored_bytes"] = _stored_bytes(spec["run_dir"])
    return result


def interpolate_and_score(spec: dict) -> dict:
    """Worker task: ``medft interpolate`` of a run at the alphas, each folder evaluated at every site."""
    from medft.train.interpolate import interpolate_run

    folders = interpolate_run(spec["run_dir"], spec["alphas"], fresh_folder(spec["out"])).folders
    return {"alphas": {str(alpha): {"sites": _evaluate_sites(folder, spec["sites"], f"{spec['eval_dir']}_a{alpha}")}
                       for alpha, folder in folders.items()}}


def _evaluate_sites(model: str | Path, sites: dict[str, str], eval_dir: str) -> dict:
    from medft.evaluate.run import evaluate

    return {site: {"summary": evaluate(model, manifest, fresh_folder(f"{eval_dir}_{site}"), split="val").summary,
                   "eval_dir": f"{eval_dir}_{site}"} for site, manifest in sites.items()}


def _stored_bytes(run_dir: str | Path) -> dict:
    """Bytes a site stores besides the shared bundle: what ``medft export --adapter`` writes of the run (the
    tensors that differ from the bundle: adapters and head for LoRA, biases and head for BitFit, ...)."""
    from medft.train.adapter_export import export_adapter

    exported = export_adapter(run_dir, fresh_folder(Path(run_dir).with_name(Path(run_dir).name + "_adapter")))
    return {"adapter": exported.info.stored.bytes, "adapter_file": (exported.folder / "adapter.pt").stat().st_size,
            "parent": exported.info.parent.bytes}


WORKER_TASKS = {"train_and_score": train_and_score, "interpolate_and_score": interpolate_and_score}


def main() -> int:
    p = parser("finetune_methods", __doc__)
    p.add_argument("--bundle", choices=tuple(BUNDLES), default="demo")
    p.add_argument("--sizes", type=int, nargs="+", choices=(5, 10, 20, 50), default=None,
                   help=f"training set sizes (default {' '.join(map(str, SIZES))}; quick: 10)")
    p.add_argument("--steps", type=int, default=None, help="steps of every run (default: demo 400, meshnet 60; quick: 10)")
    p.add_argument("--methods", nargs="+", choices=TRAINED, default=list(TRAINED), help="methods to train (WiSE-FT needs full)")
    args = p.parse_args()
    bundle = BUNDLES[args.bundle]
    if not bundle.is_dir():
        raise SystemExit(f"{bundle}: not here (the benchmarks need ../shared beside the repository)")
    bench = Benchmark("finetune_methods", args)
    check_manifests()
    steps = args.steps or (10 if args.quick else STEPS[args.bundle])
    sizes = args.sizes or ((10,) if args.quick else SIZES)
    epochs = max(1, steps // STEPS_PER_EPOCH)
    sites = {site: str(path) for site, path in make_sites(bench.out / "sites", 3 if args.quick else None).items()}

    runs = []
    for n in sizes:
        # the in-training validation (once, at the end) on 3 cases: every score comes from medft evaluate at the sites
        manifest = subset_manifest(MANIFESTS / f"bench_train{n}.csv", bench.out / "manifests" / f"train{n}.csv", n_val=3)
        for method in args.methods:
            name = f"{method}_n{n}"
            config = run_config(manifest, "finetune", epochs, bench.device, max_steps=STEPS_PER_EPOCH)
            config["model"] = {"bundle": str(bundle)}
            if args.bundle == "meshnet":
                config["train"]["channels_last"] = True
            config.update(method_changes(method, args.bundle, epochs))
            result = bench.isolated(__file__, {
                "task": "train_and_score", "name": name, "config": config, "run_dir": str(bench.out / "runs" / name),
                "sites": sites, "eval_dir": str(bench.out / "eval" / name),
            }, name, timing=True)
            runs.append({"n_train": n, "method": method, **_digest(result)})
        if "full" in args.methods:
            name = f"wise_n{n}"
            result = bench.isolated(__file__, {
                "task": "interpolate_and_score", "name": name, "run_dir": str(bench.out / "runs" / f"full_n{n}"),
                "alphas": list(ALPHAS), "out": str(bench.out / "wise" / f"n{n}"), "sites": sites,
                "eval_dir": str(bench.out / "eval" / name),
            }, name)
            full = next(r for r in runs if r["n_train"] == n and r["method"] == "full")
            for alpha, scored in result["alphas"].items():
                runs.append({"n_train": n, "method": f"wise_a{round(float(alpha) * 100)}", "alpha": float(alpha),
                             "sites": _site_digest(scored["sites"]), "trainable_parameters": full["trainable_parameters"],
                             "total_parameters": full["total_parameters"], "stored_bytes": full["stored_bytes"]})
    _add_paired_differences(runs)
    bench.finish({"bundle": str(bundle), "steps": steps, "epochs": epochs, "sizes": list(sizes), "sites": sites,
                  "runs": runs}, _markdown(runs, args.bundle, steps, epochs))
    return 0


def _site_digest(sites: dict) -> dict:
    return {site: {"dice": {cls: dice_of(value["summary"], cls) for cls in ("anterior", "posterior", "mean_foreground")},
                   "eval_dir": value["eval_dir"]} for site, value in sites.items()}


def _digest(result: dict) -> dict:
    train_s = result["timing"]["train_seconds"]
    steady = train_s[1:] or train_s
    summary = result["summary"]
    return {
        "sites": _site_digest(result["sites"]),
        "trainable_parameters": summary["trainable_parameters"],
        "total_parameters": summary["total_parameters"],
        "seconds_per_step": statistics.mean(steady) / result["steps_per_epoch"],
        "train_peak_rss_mb": result["memory"]["train_peak_rss_mb"],
        "cuda_peak_mb": result["memory"]["cuda_peak_mb"],
        "stored_bytes": result["stored_bytes"],
        "disturbed": result.get("disturbed", False),
        "run_dir": result["run_dir"],
    }


def _add_paired_differences(runs: list[dict]) -> None:
    """Each run's paired difference against ``full`` (same size, same site, same cases)."""
    from medft.evaluate.folder import read_evaluation
    from medft.evaluate.summary import MEAN_FOREGROUND, paired_difference

    names = list(CLASSES.values())
    for run in runs:
        full = next((r for r in runs if r["n_train"] == run["n_train"] and r["method"] == "full"), None)
        if full is None or run is full:
            continue
        for site, value in run["sites"].items():
            rows_a = read_evaluation(Path(full["sites"][site]["eval_dir"])).rows
            rows_b = read_evaluation(Path(value["eval_dir"])).rows
            diff = paired_difference(rows_a, rows_b, names)["differences"]
            value["minus_full"] = {name: diff[name] for name in [*names[1:], MEAN_FOREGROUND]}


def _stored(run: dict) -> int:
    """What a site stores: the adapter export (a WiSE-FT model, like its full run, differs from the bundle everywhere)."""
    return run["stored_bytes"]["adapter"]


def _markdown(runs: list[dict], bundle: str, steps: int, epochs: int) -> str:
    cost_rows, dice_rows = [], []
    for r in runs:
        share = r["trainable_parameters"] / r["total_parameters"] if r.get("total_parameters") else None
        if "alpha" in r:  # trained as full; stored whole
            cost_rows.append([r["n_train"], r["method"], "(full's run)", "", "", "", fmt(_stored(r) / 1e3, 1, " kB")])
        else:
            cost_rows.append([r["n_train"], r["method"], f"{r['trainable_parameters']:,}", fmt(100 * share, 1, "%"),
                              fmt(r["seconds_per_step"] * 1000, 0), fmt(r["train_peak_rss_mb"], 0),
                              fmt(_stored(r) / 1e3, 1, " kB")])
        for site in SITES:
            if site not in r["sites"]:
                continue
            d = r["sites"][site]["dice"]
            vs = r["sites"][site].get("minus_full")
            dice_rows.append([r["n_train"], r["method"], site, fmt_dice(d["anterior"]), fmt_dice(d["posterior"]),
                              fmt_dice(d["mean_foreground"]), fmt_difference(vs["mean_foreground"]) if vs else "(reference)"])
    costs = markdown_table(["train cases", "method", "trainable parameters", "share of the network", "ms / step",
                            "peak RSS training MiB", "stored per site"], cost_rows)
    dice = markdown_table(["train cases", "method", "site", "anterior Dice [95% CI]", "posterior Dice [95% CI]",
                           "mean Dice [95% CI]", "mean Dice - full [paired 95% CI]"], dice_rows)
    return (f"Fine-tuning methods from the {bundle} bundle: {steps} steps ({epochs} epochs of {STEPS_PER_EPOCH}), Dice on the "
            f"validation cases at each site\n\n{dice}\n\nCosts\n\n{costs}")


if __name__ == "__main__":
    if is_worker():
        worker_main(WORKER_TASKS)
        sys.exit(0)
    sys.exit(main())
