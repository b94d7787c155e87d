"""Hospital-size volumes: memory of training with the cache budget, and evaluation against inference alone.

The data are made by the benchmark: CT-like volumes of 512 x 512 x 160 voxels (int16, 0.78 x 0.78 x 2.5 mm,
noise of 20 HU) with two labelled ellipsoids, one bright (+200 HU) and one dark (-150 HU), placed at
random; ``--cases`` of them, the last ``--val`` for validation. A small MONAI UNet (8-16-32 filters,
96^3 patches, CT window -300..400 HU) is trained from random weights for ``--epochs``, once with the
default cache budget and once with ``--budget`` GB (the rest of the cases cached on disk): peak resident
memory and training seconds of each. The trained model (default budget) then:

- ``medft evaluate`` of the validation cases (``medft.evaluate.run.evaluate``: predictions, metrics with
  surface distances, report);
- ``medft predict`` of the same images (``predict_files``);
- plain MONAI: ``LoadImage``, ``ScaleIntensityRange``, ``sliding_window_inference`` (same window, overlap
  0.25, Gaussian), argmax, ``nib.save``: what inference alone costs.

Seconds per case of each, and the ratios evaluate / plain and predict / plain.

Run: ``.venv/bin/python benchmarks/ct_scale.py [--cases 8] [--val 4] [--epochs 60] [--budget 0.5] [--quick]``
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from common import Benchmark, fmt, is_worker, markdown_table, parser, peak_rss_mb, worker_main

SHAPE = (512, 512, 160)
SPACING = (0.78, 0.78, 2.5)
CLASSES = {"0": "background", "1": "bright", "2": "dark"}
STRUCTURES = ((40.0, 200), (25.0, -150))  # (radius in mm, HU added) of classes 1 and 2


def make_cases(folder: Path, n: int, shape: tuple[int, int, int], seed: int = 0) -> None:
    """``n`` CT-like cases and their labels in ``folder`` (kept when already there)."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(seed)
    affine = np.diag([*SPACING, 1.0])
    grid = np.ogrid[: shape[0], : shape[1], : shape[2]]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image_path, label_path = folder / f"ct_{i}.nii.gz", folder / f"ct_{i}_seg.nii.gz"
        centres = [[rng.integers(s // 4, 3 * s // 4) for s in shape] for _ in STRUCTURES]
        noise_seed = int(rng.integers(2**31))
        if image_path.exists() and label_path.exists():
            continue
        image = np.random.default_rng(noise_seed).normal(0, 20, shape).astype(np.int16)
        label = np.zeros(shape, np.uint8)
        for cls, ((radius, hu), centre) in enumerate(zip(STRUCTURES, centres, strict=True), start=1):
            inside = sum(((g - c) * s / radius) ** 2 for g, c, s in zip(grid, centre, SPACING, strict=True)) <= 1
            label[inside] = cls
            image[inside] += hu
        nib.save(nib.Nifti1Image(image, affine), image_path)
        nib.save(nib.Nifti1Image(label, affine), label_path)


def write_config(out: Path, n: int, n_val: int, epochs: int, patch: int) -> Path:
    rows = [f"ct_{i},ct_{i}.nii.gz,ct_{i}_seg.nii.gz,{'val' if i >= n - n_val else 'train'}" for i in range(n)]
    (out / "data" / "manifest.csv").write_text("case_id,image,label,split\n" + "\n".join(rows) + "\n")
    (out / "data" / "manifest.classes.json").write_text(json.dumps(CLASSES))
    config = {
        "seed": 0,
        "model": {"network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                                  "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}},
        "data": {"manifest": str(out / "data" / "manifest.csv"), "spatial_size": [patch] * 3, "intensity": "ct_window",
                 "intensity_range": [-300, 400], "samples_per_volume": 2, "foreground_ratio": 0.9},
        "train": {"epochs": epochs, "batch_size": 2, "amp": False, "val_every": epochs},
        "optim": {"lr": 0.01, "warmup_epochs": 0},
        "validation": {"sw_batch_size": 4},
    }
    path = out / "config.json"
    path.write_text(json.dumps(config, indent=1))
    return path


def train(spec: dict) -> dict:
    import torch

    from medft.config import load_config
    from medft.train.recipe import run_training

    torch.set_num_threads(spec["threads"])
    overrides = [f"data.cache_memory={spec['budget']}", f"data.cache_dir={spec['cache_dir']}"] if spec["budget"] else []
    started = time.perf_counter()
    summary = run_training(load_config(spec["config"], overrides), Path(spec["run_dir"]))
    cached = next((line.split(" cached: ", 1)[-1] for line in (Path(spec["run_dir"]) / "train.log").read_text().splitlines()
                   if " cached: " in line), "")
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb(), "val_dice": summary.best_val_dice,
            "cached": cached}


def evaluate_cases(spec: dict) -> dict:
    import torch

    from medft.evaluate.run import evaluate

    torch.set_num_threads(spec["threads"])
    started = time.perf_counter()
    result = evaluate(spec["run_dir"], spec["manifest"], spec["eval_dir"], split="val")
    seconds = time.perf_counter() - started
    dice = {name: result.summary["overall"][name]["dice"]["mean"] for name in result.summary["classes"]}
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "dice": dice}


def predict_cases(spec: dict) -> dict:
    import torch

    from medft.evaluate.run import predict_files

    torch.set_num_threads(spec["threads"])
    started = time.perf_counter()
    predict_files(spec["run_dir"], [Path(p) for p in spec["images"]], Path(spec["pred_dir"]), overwrite=True)
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}


def plain_monai(spec: dict) -> dict:
    """Inference alone, as a MONAI user writes it, with the trained network."""
    import nibabel as nib
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import LoadImage, ScaleIntensityRange

    from medft.evaluate.inference import load_model

    torch.set_num_threads(spec["threads"])
    network = load_model(spec["run_dir"]).network
    out = Path(spec["pred_dir"])
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for path in spec["images"]:
        image = ScaleIntensityRange(-300, 400, 0.0, 1.0, clip=True)(LoadImage(image_only=True, ensure_channel_first=True)(path))
        with torch.no_grad():
            logits = sliding_window_inference(image[None].as_tensor(), [spec["patch"]] * 3, 4, network, overlap=0.25,
                                              mode="gaussian")
        labels = logits[0].permute(1, 2, 3, 0).argmax(-1).numpy().astype(np.uint8)  # channels last: argmax is fast
        nib.save(nib.Nifti1Image(labels, np.asarray(image.affine)), out / Path(path).name)
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}


def main() -> int:
    p = parser("ct_scale", __doc__)
    p.add_argument("--cases", type=int, default=8, help="CT-like cases made (default 8)")
    p.add_argument("--val", type=int, default=4, help="of them, validation cases (default 4)")
    p.add_argument("--epochs", type=int, default=60, help="training epochs (default 60)")
    p.add_argument("--budget", type=float, default=0.5, help="GB of the bounded cache run (default 0.5)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of each job (default 2)")
    p.add_argument("--parts", nargs="+", choices=("train", "inference"), default=["train", "inference"],
                   help="train: the two trainings; inference: evaluate, predict and plain MONAI with the model that the "
                        "default training wrote (default: both)")
    args = p.parse_args()
    bench = Benchmark("ct_scale", args)
    out = bench.out
    shape, patch = ((128, 128, 40), 32) if args.quick else (SHAPE, 96)
    cases, n_val, epochs = (4, 2, 2) if args.quick else (args.cases, args.val, args.epochs)
    make_cases(out / "data", cases, shape)
    config = write_config(out, cases, n_val, epochs, patch)
    common = {"config": str(config), "threads": args.threads, "cache_dir": str(out / "disk_cache")}
    trained, jobs = {}, {}
    for name, budget in (("default budget", None), (f"{args.budget:g} GB budget", args.budget)) if "train" in args.parts else ():
        run_dir = out / ("run" if budget is None else "run_bounded")
        trained[name] = bench.isolated(__file__, {**common, "task": "train", "budget": budget, "run_dir": str(run_dir)},
                                       f"train_{'default' if budget is None else 'bounded'}", timing=True)
    images = [str(out / "data" / f"ct_{i}.nii.gz") for i in range(cases - n_val, cases)]
    model = {**common, "run_dir": str(out / "run"), "images": images, "patch": patch, "manifest": str(out / "data" / "manifest.csv")}
    tasks = {"medft evaluate": ("evaluate", {"eval_dir": str(out / "eval")}),
             "medft predict": ("predict", {"pred_dir": str(out / "pred")}),
             "plain MONAI": ("plain", {"pred_dir": str(out / "plain")})}
    if "inference" in args.parts:
        jobs = {name: bench.isolated(__file__, {**model, "task": task, **folders}, task, timing=True)
                for name, (task, folders) in tasks.items()}
    train_table = markdown_table(["training", "peak RSS MB", "training s", "validation Dice", "cache"],
                                 [[name, fmt(r["peak_rss_mb"], 0), fmt(r["seconds"], 0), fmt(r["val_dice"], 3), r["cached"]]
                                  for name, r in trained.items()])
    markdown = (f"{cases} cases of {' x '.join(map(str, shape))} voxels ({n_val} validation), {epochs} epochs, "
                f"{args.threads} torch threads" + (f"\n\n{train_table}" if trained else ""))
    if jobs:
        plain = jobs["plain MONAI"]["seconds"]
        markdown += "\n\n" + markdown_table(
            ["job", "s per case", "x plain MONAI", "peak RSS MB"],
            [[name, fmt(r["seconds"] / n_val, 1), fmt(r["seconds"] / plain, 2), fmt(r["peak_rss_mb"], 0)] for name, r in jobs.items()])
        markdown += "\n\nevaluated Dice: " + ", ".join(f"{name} {fmt(v, 3)}" for name, v in jobs["medft evaluate"]["dice"].items())
    bench.finish({"train": trained, "inference": jobs, "cases": cases, "val": n_val, "epochs": epochs}, markdown)
    return 0


if __name__ == "__main__":
    if is_worker():
        worker_main({"train": train, "evaluate": evaluate_cases, "predict": predict_cases, "plain": plain_monai})
    else:
        sys.exit(main())
