"""Hospital-size volumes: memory of training with the cache budget, and evaluation against inference alone.

The data are made by the benchmark: CT-like volumes of 512 x 512 x 160 voxels (int16, 0.78 x 0.78 x 2.5 mm,
noise of 20 HU) with two labelled ellipsoids, one bright (+200 HU, 40 mm) and one dark (-250 HU, 35 mm),
placed at random; ``--cases`` of them, the last ``--val`` for validation. A small MONAI UNet (8-16-32 filters,
96^3 patches, CT window -300..400 HU) is trained from random weights for ``--epochs``, once with the
default cache budget and once with ``--budget`` GB (the rest of the cases cached on disk): peak resident
memory and training seconds of each. The trained model (default budget) then:

- ``medft evaluate`` of the validation cases (``medft.evaluate.run.evaluate``: predictions, metrics with
  surface distances, report);
- ``medft predict`` of the same images (``predict_files``);
- plain MONAI: ``LoadImage``, ``ScaleIntensityRange``, ``sliding_window_inference`` (same window, overlap
  0.25, Gaussian), argmax, ``nib.save``: what inference alone costs.

Seconds per case of each, and the ratios evaluate / plain and predict / plain.

``--parts scale``: peak memory of ``medft train`` with the default budget against the number of training
cases (``--scale-cases``, default 10 40 160; one epoch of 4 steps, 2 validation cases). The cases beyond the
``--cases`` made are hard links to them under their own names: each is loaded, preprocessed and cached as
a case of its own (the disk cache keys a case by its path), while the disk holds the made files once.

``--parts steps``: training steps per second of medft (``augmentation: none``) against a plain MONAI loop
on the same cases, patches and network (``CacheDataset``, ``RandCropByPosNegLabeld``, ``DiceCELoss``,
AdamW), over the epochs after the first; the loop as MONAI's tutorials write it (the batch's MetaTensors
into the network) and with plain tensors.

Run: ``.venv/bin/python benchmarks/ct_scale.py [--cases 8] [--val 4] [--epochs 80] [--budget 0.5]
[--parts train inference scale steps] [--quick]``
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from common import Benchmark, fmt, is_worker, markdown_table, parser, peak_rss_mb, worker_main

SHAPE = (512, 512, 160)
SPACING = (0.78, 0.78, 2.5)
CLASSES = {"0": "background", "1": "bright", "2": "dark"}
STRUCTURES = ((40.0, 200), (35.0, -250))  # (radius in mm, HU added) of classes 1 and 2
STEPS_EPOCHS = 6  # epochs of the steps part: the first warms up, the others are timed
SCALE_VAL = 2  # validation cases of the scale part


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
    rows = [(f"ct_{i}", f"ct_{i}.nii.gz", f"ct_{i}_seg.nii.gz", "val" if i >= n - n_val else "train") for i in range(n)]
    return config_for(out / "data", rows, epochs, patch, out / "config.json")


def config_for(data: Path, rows: list[tuple], epochs: int, patch: int, path: Path, **train) -> Path:
    """A manifest of ``rows`` (case_id, image, label, split) in ``data`` and the run config at ``path``."""
    (data / "manifest.csv").write_text("case_id,image,label,split\n" + "\n".join(",".join(r) for r in rows) + "\n")
    (data / "manifest.classes.json").write_text(json.dumps(CLASSES))
    config = {
        "seed": 0,
        "model": {"network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                                  "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}},
        "data": {"manifest": str(data / "manifest.csv"), "spatial_size": [patch] * 3, "intensity": "ct_window",
                 "intensity_range": [-300, 400], "sampling": "patch", "samples_per_volume": 2,
                 "foreground_ratio": 0.9},
        "train": {"epochs": epochs, "batch_size": 2, "amp": False, "val_every": epochs, **train},
        "optim": {"lr": 0.01, "warmup_epochs": 0},
        "validation": {"sw_batch_size": 4},
    }
    path.write_text(json.dumps(config, indent=1))
    return path


def scale_data(out: Path, made: Path, n_made: int, n_train: int, patch: int) -> Path:
    """A set of ``n_train`` training and SCALE_VAL validation cases under ``out``: hard links to the made cases."""
    data = out / f"data_{n_train}"
    data.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_train + SCALE_VAL):
        source = i % n_made
        for suffix in ("", "_seg"):
            link = data / f"case_{i}{suffix}.nii.gz"
            if not link.exists():
                link.hardlink_to(made / f"ct_{source}{suffix}.nii.gz")
        rows.append((f"case_{i}", f"case_{i}.nii.gz", f"case_{i}_seg.nii.gz", "val" if i >= n_train else "train"))
    return config_for(data, rows, 1, patch, data / "config.json", max_steps_per_epoch=4)


def train(spec: dict) -> dict:
    import torch
    from common import fresh_folder

    from medft.config import load_config
    from medft.train.recipe import run_training

    torch.set_num_threads(spec["threads"])
    if spec.get("clear_cache"):  # every case preprocessed and written again, as on a first run
        shutil.rmtree(spec["cache_dir"], ignore_errors=True)
    overrides = [f"data.cache_dir={spec['cache_dir']}"] + ([f"data.cache_memory={spec['budget']}"] if spec["budget"] else [])
    started = time.perf_counter()
    summary = run_training(load_config(spec["config"], overrides), fresh_folder(spec["run_dir"]))
    cached = next((line.split(" cached: ", 1)[-1] for line in (Path(spec["run_dir"]) / "train.log").read_text().splitlines()
                   if " cached: " in line), "")
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb(), "val_dice": summary.best_val_dice,
            "cached": cached}


def train_steps(spec: dict) -> dict:
    """medft's training of the steps part: seconds of each epoch's steps (data loading included)."""
    import torch
    from common import fresh_folder, timed_recipe_class

    from medft.config import load_config

    torch.set_num_threads(spec["threads"])
    recipe = timed_recipe_class()(load_config(spec["config"], ["data.augmentation=none"]), fresh_folder(spec["run_dir"]))
    try:
        recipe.setup()
        recipe.train()
    finally:
        recipe.cleanup()
    return {"epoch_seconds": recipe.timing["train_seconds"], "steps_per_epoch": recipe.steps_per_epoch}


def plain_training(spec: dict) -> dict:
    """The same training as a MONAI user writes it: seconds of each epoch's steps (data loading included)."""
    import torch
    from monai.data import CacheDataset, DataLoader
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        RandCropByPosNegLabeld,
        ScaleIntensityRanged,
    )

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    keys = ["image", "label"]
    prepare = Compose([LoadImaged(keys), EnsureChannelFirstd(keys), Orientationd(keys, axcodes="RAS"),
                       ScaleIntensityRanged("image", -300, 400, 0.0, 1.0, clip=True)])
    crop = RandCropByPosNegLabeld(keys, "label", [spec["patch"]] * 3, pos=0.9, neg=0.1, num_samples=2)
    loader = DataLoader(CacheDataset(spec["cases"], Compose([*prepare.transforms, crop]), progress=False),
                        batch_size=2, shuffle=True)
    network = UNet(3, 1, 3, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
    optimizer = torch.optim.AdamW(network.parameters(), lr=0.01)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    epoch_seconds = []
    for _ in range(spec["epochs"]):
        started = time.perf_counter()
        for batch in loader:
            image, label = batch["image"], batch["label"]
            if spec["plain_tensors"]:  # without MONAI's metadata: every operation on a MetaTensor also tracks it
                image, label = image.as_tensor(), label.as_tensor()
            optimizer.zero_grad(set_to_none=True)
            loss_fn(network(image), label).backward()
            optimizer.step()
        epoch_seconds.append(time.perf_counter() - started)
    return {"epoch_seconds": epoch_seconds, "steps_per_epoch": len(loader)}


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


def steps_part(bench, common: dict, out: Path, n_train: int, patch: int, epochs: int) -> dict:
    """medft's and plain MONAI's training steps per second on the training cases of the made set."""
    data = out / "data"
    cases = [{"image": str(data / f"ct_{i}.nii.gz"), "label": str(data / f"ct_{i}_seg.nii.gz")} for i in range(n_train)]
    rows = [(f"ct_{i}", c["image"], c["label"], "train") for i, c in enumerate(cases)]
    rows.append((f"ct_{n_train}", str(data / f"ct_{n_train}.nii.gz"), str(data / f"ct_{n_train}_seg.nii.gz"), "val"))
    (data / "steps").mkdir(exist_ok=True)
    config = config_for(data / "steps", rows, min(epochs, STEPS_EPOCHS), patch, data / "steps" / "config.json")
    plain = {"task": "plain_training", "cases": cases, "patch": patch, "epochs": min(epochs, STEPS_EPOCHS)}
    specs = {"medft train": {"task": "train_steps", "config": str(config), "run_dir": str(out / "run_steps")},
             "plain MONAI": {**plain, "plain_tensors": False},
             "plain MONAI, plain tensors into the network": {**plain, "plain_tensors": True}}
    results = {}
    for name, spec in specs.items():
        result = bench.isolated(__file__, {**common, **spec}, name.replace(" ", "_").replace(",", ""), timing=True)
        timed = result["epoch_seconds"][1:] or result["epoch_seconds"]
        result["steps_per_second"] = result["steps_per_epoch"] * len(timed) / sum(timed)
        results[name] = result
    return results


def main() -> int:
    p = parser("ct_scale", __doc__)
    p.add_argument("--cases", type=int, default=8, help="CT-like cases made (default 8)")
    p.add_argument("--val", type=int, default=4, help="of them, validation cases (default 4)")
    p.add_argument("--epochs", type=int, default=80, help="training epochs (default 80)")
    p.add_argument("--budget", type=float, default=0.5, help="GB of the bounded cache run (default 0.5)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of each job (default 2)")
    p.add_argument("--parts", nargs="+", choices=("train", "inference", "scale", "steps"), default=["train", "inference"],
                   help="train: the two trainings; inference: evaluate, predict and plain MONAI with the model that the "
                        "default training wrote; scale: memory against the number of cases; steps: training steps "
                        "per second against plain MONAI (default: train inference)")
    p.add_argument("--scale-cases", type=int, nargs="+", default=[10, 40, 160],
                   help="training cases of the scale part (default 10 40 160)")
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
    scaled = {n: bench.isolated(__file__, {**common, "task": "train", "budget": None, "cache_dir": str(out / "scale_cache"),
                                           "config": str(scale_data(out, out / "data", cases, n, patch)),
                                           "run_dir": str(out / f"run_scale_{n}"), "clear_cache": True},
                                f"scale_{n}") for n in (args.scale_cases if "scale" in args.parts else ())}
    if scaled:
        markdown += "\n\n" + markdown_table(
            ["training cases (+2 validation)", "peak RSS MB", "seconds", "cache"],
            [[n, fmt(r["peak_rss_mb"], 0), fmt(r["seconds"], 0), r["cached"]] for n, r in scaled.items()])
    steps = steps_part(bench, common, out, cases - n_val, patch, epochs) if "steps" in args.parts else {}
    if steps:
        markdown += "\n\n" + markdown_table(
            ["training loop", "steps per epoch", "steps per second (epochs after the first)", "x plain MONAI"],
            [[name, r["steps_per_epoch"], fmt(r["steps_per_second"], 3), fmt(r["steps_per_second"] /
              steps["plain MONAI"]["steps_per_second"], 2)] for name, r in steps.items()])
    bench.finish({"train": trained, "inference": jobs, "scale": scaled, "steps": steps, "cases": cases, "val": n_val,
                  "epochs": epochs}, markdown)
    return 0


if __name__ == "__main__":
    if is_worker():
        worker_main({"train": train, "evaluate": evaluate_cases, "predict": predict_cases, "plain": plain_monai,
                     "train_steps": train_steps, "plain_training": plain_training})
    else:
        sys.exit(main())
