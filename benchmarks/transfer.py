"""Transfer of a bundle with foreign preprocessing, and data.spacing auto on mixed slice thickness.

**A. A bundle made by others.** The benchmark writes a Model Zoo bundle with plain MONAI (nothing
of medft): a MONAI ``UNet`` (3D, channels 16-32-64-128, strides 2-2-2, 2 residual units, 3 output
classes: background, anterior, posterior) trained on the 100 cases of
``data_manifests/hippocampus_pretrain.csv`` (none of them is in the validation or training
manifests used below; checked) after ``Orientationd`` RAS, ``Spacingd`` to 1.5 mm isotropic and
``ScaleIntensityRangePercentilesd`` (1st and 99th percentiles to 0..1, clipped), padded to
a multiple of 8 (a batch: to its largest case), with flips, small affine and intensity augmentation; AdamW, warm-up and cosine
decay, Dice + cross-entropy. Its ``configs/inference.json`` holds that preprocessing, a
``SlidingWindowInferer`` and a postprocessing that inverts it (``Invertd``). Then, on the fixed 30
validation cases (``data_manifests/bench_val.csv``):

- zero-shot: ``medft evaluate`` of the bundle (which replays its preprocessing); the same network
  fed z-scored intensities at the native 1 mm spacing (medft's preprocessing before it replayed
  bundles: the bundle loaded by ``medft.evaluate.inference.load_model`` with its preprocessing
  replaced by ``Preprocessing.medft(None, "zscore")``, then the same evaluation); and MONAI's own
  inference of the bundle (``ConfigParser``: preprocessing, network, inferer, postprocessing),
  scored with medft's metrics, to show medft predicts what MONAI predicts;
- fine-tuned on 5, 10 and 20 cases (``data_manifests/bench_train{n}.csv``) with ``medft train``
  from the bundle, ``data.preprocessing: bundle`` (1.5 mm, percentiles; whole volumes padded to
  32 x 48 x 32) against ``data.preprocessing: medft`` with ``data.intensity: zscore`` and no
  resampling (48 x 64 x 48, as configs/demo.yaml); otherwise configs/demo.yaml's recipe (gradual
  unfreezing, lr 1e-3, head lr 1e-2, batch 2, standard augmentation) for a fixed number of epochs,
  no early stopping, the last checkpoint evaluated (``evaluate(..., checkpoint="last")``). The
  recipe's own validation is also run before the first epoch and after it (a subclass calls
  ``_validate`` once more; no randomness is drawn), to show where each fine-tune starts.
  Controls: the same network from random weights at 1 mm (z-score, the from-scratch recipe of
  data_efficiency.py: no freezing, lr 3e-3), and, at the largest size, the bundle-preprocessing
  fine-tune with ``light`` augmentation (flips only: medft's intensity shift and noise are absolute,
  sized for z-scored images, so relatively about 4 times stronger on 0..1 images). And the
  resolution ceiling of the 1.5 mm grid: each validation label put on it and brought back, no network.

**B. data.spacing auto on mixed slice thickness.** Copies of the 20 training cases of
``bench_train20.csv`` and of the 30 validation cases, resampled by MONAI ``Spacingd`` (bilinear
image, nearest label) to 1, 2 and 3 mm along the last (superior) axis, thicknesses assigned
round-robin in manifest order (the thickness is the case's ``site``, so summary.json has a
per-thickness breakdown). The same from-scratch UNet (the bundle's architecture, from
``model.network_def``) is trained twice on them, ``data.spacing: auto`` (the training cases'
median spacing) against none, everything else equal (whole volumes padded to 48 x 64 x 48,
lr 2e-3, weight decay 1e-4, standard augmentation, float32), and evaluated on the 30 resampled
validation cases on each case's own grid (``medft evaluate``); the predictions are also resampled
(nearest neighbour) to the original 1 mm grid and scored against the original labels.

Reported: mean Dice per class with medft's 95% bootstrap interval over cases, and medft's paired
bootstrap differences on the same cases. Each configuration is trained once (seed 0).

Run: ``.venv/bin/python benchmarks/transfer.py [--quick] [--bundle-steps 3000] [--epochs 40]
[--scratch-epochs 60] [--sizes 5 10 20] [--parts A B] [--resume] [--out DIR] [--device auto]``
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from common import (
    CLASSES,
    FINETUNE_OPTIM,
    MANIFESTS,
    PRETRAIN_MANIFEST,
    SCRATCH_OPTIM,
    SPATIAL_SIZE,
    WORKER_TASKS,
    Benchmark,
    check_manifests,
    dice_of,
    fmt,
    fmt_dice,
    fresh_folder,
    gradual_freeze,
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

FULL_BUNDLE_STEPS = 3000
FULL_EPOCHS = 40  # fine-tuning, as data_efficiency.py
FULL_SCRATCH_EPOCHS = 60  # part B: 20 cases, 10 steps an epoch
FULL_SIZES = (5, 10, 20)
CLASS_NAMES = ["background", "anterior", "posterior"]
FOREGROUND = ("anterior", "posterior", "mean_foreground")

# The foreign bundle: its network and preprocessing, as a Model Zoo bundle's inference.json holds them.
FOREIGN_PIXDIM = [1.5, 1.5, 1.5]
FOREIGN_SIZE = [32, 48, 32]  # every case at 1.5 mm fits (largest 28 x 40 x 32)
FOREIGN_NETWORK = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                   "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 2}
RAS = [["L", "R"], ["P", "A"], ["I", "S"]]
INFERENCE = {
    "imports": ["$import torch"],
    "bundle_root": ".",
    "image_key": "image",
    "pixdim": FOREIGN_PIXDIM,
    "device": "$torch.device('cpu')",
    "network_def": FOREIGN_NETWORK,
    "network": "$@network_def.to(@device)",
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "@image_key", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
        {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS", "labels": RAS},
        {"_target_": "Spacingd", "keys": "@image_key", "pixdim": "@pixdim", "mode": "bilinear"},
        {"_target_": "ScaleIntensityRangePercentilesd", "keys": "@image_key", "lower": 1, "upper": 99,
         "b_min": 0.0, "b_max": 1.0, "clip": True},
        {"_target_": "EnsureTyped", "keys": "@image_key", "dtype": "$torch.float32"},
    ]},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": FOREIGN_SIZE, "sw_batch_size": 4, "overlap": 0.25,
                "mode": "gaussian"},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "@image_key",
         "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
    ]},
}
BUNDLE_TRAINING = {"lr": 2e-3, "weight_decay": 1e-4, "warmup_steps": 100, "batch_size": 2, "seed": 0}

# Part B
THICKNESSES = (1.0, 2.0, 3.0)
SCRATCH_SIZE = SPATIAL_SIZE  # 48 x 64 x 48: every case fits, resampled to the median spacing or not
B_OPTIM = {"lr": 2e-3, "head_lr": 2e-3, "weight_decay": 1e-4, "warmup_epochs": 2}  # configs/hippocampus.yaml's


# --------------------------------------------------------------------------------------------
# A: the foreign bundle, made with plain MONAI (a worker task: no medft import)
# --------------------------------------------------------------------------------------------
def make_bundle(spec: dict) -> dict:
    """Train the foreign bundle's network with plain MONAI and write the bundle to ``spec['bundle']``."""
    import math
    import shutil
    import statistics

    import monai
    import torch
    from monai.bundle import ConfigParser
    from monai.data import CacheDataset, DataLoader, pad_list_data_collate
    from monai.losses import DiceCELoss
    from monai.transforms import (
        Compose,
        DivisiblePadd,
        EnsureChannelFirstd,
        EnsureTyped,
        LoadImaged,
        Orientationd,
        RandAffined,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        ScaleIntensityRangePercentilesd,
        Spacingd,
    )
    from monai.utils import set_determinism

    started = time.perf_counter()
    settings = BUNDLE_TRAINING
    set_determinism(seed=settings["seed"])
    device = torch.device(spec["device"] if spec["device"] == "cpu" or torch.cuda.is_available() else "cpu")
    manifest = Path(spec["manifest"])
    rows = read_rows(manifest)[: spec.get("n_cases")]
    cases = [{"image": str(manifest.parent / r["image"]), "label": str(manifest.parent / r["label"])} for r in rows]
    keys = ["image", "label"]
    transform = Compose([
        LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys), Orientationd(keys, axcodes="RAS", labels=RAS),
        Spacingd(keys, pixdim=FOREIGN_PIXDIM, mode=("bilinear", "nearest")),
        ScaleIntensityRangePercentilesd("image", lower=1, upper=99, b_min=0.0, b_max=1.0, clip=True),
        DivisiblePadd(keys, k=8),  # the network halves 3 times; a batch is padded to its largest case (collate)
        EnsureTyped(keys, dtype=torch.float32, track_meta=False),
        # random from here on (CacheDataset caches what comes before)
        RandFlipd(keys, prob=0.5, spatial_axis=0),
        RandAffined(keys, prob=0.3, rotate_range=(0.26, 0.26, 0.26), scale_range=(0.1, 0.1, 0.1),
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandScaleIntensityd("image", factors=0.1, prob=0.3),
        RandShiftIntensityd("image", offsets=0.1, prob=0.3),
    ])
    dataset = CacheDataset(cases, transform, progress=False, num_workers=0)
    shapes = sorted({tuple(item["image"].shape[1:]) for item in dataset._cache})
    if any(any(s > m for s, m in zip(shape, FOREIGN_SIZE, strict=True)) for shape in shapes):
        raise SystemExit(f"a case at {FOREIGN_PIXDIM} mm is larger than {FOREIGN_SIZE}: {shapes}")
    loader = DataLoader(dataset, batch_size=settings["batch_size"], shuffle=True, drop_last=True, num_workers=0,
                        collate_fn=pad_list_data_collate, generator=torch.Generator().manual_seed(settings["seed"]))
    torch.manual_seed(settings["seed"])
    network = ConfigParser({"network_def": json.loads(json.dumps(FOREIGN_NETWORK))}).get_parsed_content("network_def")
    network = network.to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
    steps, warmup = spec["steps"], min(settings["warmup_steps"], max(1, spec["steps"] // 10))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (s + 1) / warmup if s < warmup else
                                                  0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    setup_seconds = time.perf_counter() - started
    network.train()
    done, losses, step_seconds = 0, [], []
    train_started = time.perf_counter()
    while done < steps:
        for batch in loader:
            t0 = time.perf_counter()
            image, label = batch["image"].to(device), batch["label"].to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(network(image), label)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step_seconds.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
            done += 1
            if done % 200 == 0 or done == steps:
                print(f"step {done}/{steps}: loss (last 200) {statistics.fmean(losses[-200:]):.4f}, "
                      f"{time.perf_counter() - train_started:.0f} s", flush=True)
            if done == steps:
                break
    train_seconds = time.perf_counter() - train_started

    root = fresh_folder(spec["bundle"])
    for sub in ("configs", "models", "docs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "configs" / "inference.json").write_text(json.dumps(INFERENCE, indent=1) + "\n")
    metadata = {
        "name": "foreign_hippocampus_1p5mm", "version": "0.1.0", "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "description": "Anterior/posterior hippocampus, trained with plain MONAI at 1.5 mm on percentile-scaled "
                       "intensities (benchmarks/transfer.py)",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "num_channels": 1,
                                 "spatial_shape": FOREIGN_SIZE, "dtype": "float32"}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 3,
                                 "spatial_shape": FOREIGN_SIZE, "dtype": "float32", "channel_def": CLASSES}}},
        "training": {**settings, "steps": steps, "cases": len(cases), "augmentation": "flip x, affine, intensity"},
        "pretraining_cases": [r["case_id"] for r in rows],
    }
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=1) + "\n")
    torch.save({k: v.cpu() for k, v in network.state_dict().items()}, root / "models" / "model.pt")
    (root / "docs" / "README.md").write_text("# foreign_hippocampus_1p5mm\nWritten and trained with plain MONAI by "
                                              "benchmarks/transfer.py.\n")
    (root / "LICENSE").write_text("CC-BY-SA 4.0 (trained on MSD Task04 hippocampus)\n")
    shutil.copy(manifest, root / "docs" / "training_cases.csv")
    return {"bundle": str(root), "steps": steps, "cases": len(cases), "setup_seconds": setup_seconds,
            "train_seconds": train_seconds, "median_step_seconds": statistics.median(step_seconds),
            "loss_first_100": statistics.fmean(losses[:100]), "loss_last_100": statistics.fmean(losses[-100:]),
            "loss_per_200": [statistics.fmean(losses[i:i + 200]) for i in range(0, len(losses), 200)],
            "preprocessed_shapes": [list(s) for s in shapes], "threads": torch.get_num_threads(),
            "parameters": sum(p.numel() for p in network.parameters())}


def monai_predict(bundle: Path, image: Path | str, parser=None):
    """MONAI's own inference of ``bundle`` (ConfigParser, as tests/foreign_bundle.monai_predict): labels on the
    voxel grid of the file as stored."""
    import numpy as np
    import torch
    from monai.bundle import ConfigParser

    if parser is None:
        parser = ConfigParser()
        parser.read_config(bundle / "configs" / "inference.json")
        parser["bundle_root"] = str(bundle)
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    network.eval()
    data = parser.get_parsed_content("preprocessing")({"image": str(image)})
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], network)[0]
    return np.asarray(parser.get_parsed_content("postprocessing")(data)["pred"][0]).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Worker tasks that use medft
# --------------------------------------------------------------------------------------------
def evaluate_zscore(spec: dict) -> dict:
    """``evaluate`` of the bundle with its network fed z-scored intensities at native spacing (medft's own
    preprocessing without resampling, as medft fed every bundle before it replayed their preprocessing)."""
    from medft.data.preprocessing import Preprocessing
    from medft.evaluate import run
    from medft.evaluate.inference import load_model

    def replaced(path, device=None, checkpoint="best"):
        model = load_model(path, device, checkpoint)
        model.preprocessing = Preprocessing.medft(None, "zscore")
        model.info = {**model.info, "name": f"{model.info.get('name')} (z-score, native spacing)"}
        return model

    run.load_model = replaced  # evaluate() looks it up in its module: the rest of the evaluation is medft's own
    t0 = time.perf_counter()
    out = run.evaluate(spec["model"], spec["manifest"], fresh_folder(spec["eval_dir"]))
    return {"name": spec["name"], "eval_seconds": time.perf_counter() - t0,
            "eval": json.loads((out / "summary.json").read_text()),
            "preprocessing": json.loads((out / "evaluation.json").read_text())["preprocessing"]}


def monai_inference(spec: dict) -> dict:
    """MONAI's own inference of the bundle on the manifest's cases, scored as medft scores (per_case.csv and
    summary.json in ``eval_dir``), and compared voxel for voxel with medft's predictions in ``medft_eval``."""
    import nibabel as nib
    import numpy as np
    import torch
    from monai.bundle import ConfigParser

    from medft.evaluate.run import _case_rows
    from medft.evaluate.summary import summarize, write_per_case

    bundle, manifest = Path(spec["model"]), Path(spec["manifest"])
    out = fresh_folder(spec["eval_dir"])
    (out / "predictions").mkdir(parents=True)
    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    parser["bundle_root"] = str(bundle)
    rows, agreement = [], []
    t0 = time.perf_counter()
    for row in read_rows(manifest):
        image, label_file = manifest.parent / row["image"], nib.load(manifest.parent / row["label"])
        pred = monai_predict(bundle, image, parser)
        nib.save(nib.Nifti1Image(pred, label_file.affine), out / "predictions" / f"{row['case_id']}.nii.gz")
        label = np.asarray(label_file.dataobj).astype(np.int64)
        spacing = [float(s) for s in np.linalg.norm(label_file.affine[:3, :3], axis=0)]
        case = type("Case", (), {"case_id": row["case_id"], "site": row["site"] or None})
        rows += _case_rows(case, CLASS_NAMES, torch.as_tensor(pred.astype(np.int64)), torch.as_tensor(label), spacing)
        medft_pred = np.asarray(nib.load(Path(spec["medft_eval"]) / "predictions" / f"{row['case_id']}.nii.gz").dataobj)
        agreement.append({"case_id": row["case_id"], "voxels": int(pred.size),
                          "differing": int((medft_pred.astype(np.int64) != pred).sum())})
    seconds = time.perf_counter() - t0
    write_per_case(out / "per_case.csv", rows)
    summary = summarize(rows, CLASS_NAMES)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    return {"name": spec["name"], "eval_seconds": seconds, "eval": summary, "agreement": agreement}


def probed_recipe_class():
    """The timed recipe, with its own validation (``_validate``) run once before the first epoch and once after it:
    where fine-tuning starts. No randomness is drawn by a validation, so the training is unchanged."""
    from common import timed_recipe_class

    from medft.train.recipe import FineTuneRecipe

    base = timed_recipe_class()

    class ProbedRecipe(base):
        def train(self):
            self.probe = {"before_training": FineTuneRecipe._validate(self).tolist()}
            self.timing["probe"] = self.probe
            return super().train()

        def _train_epoch(self, epoch, frozen):
            loss = super()._train_epoch(epoch, frozen)
            if epoch == 0:
                self.probe["after_epoch_0"] = FineTuneRecipe._validate(self).tolist()
            return loss

    return ProbedRecipe


def train_probed(spec: dict) -> dict:
    result = train_and_evaluate(spec, probed_recipe_class())
    import yaml

    config = yaml.safe_load((Path(spec["run_dir"]) / "config.yaml").read_text())
    result["resolved_spacing"] = config["data"].get("spacing")
    return result


def score_on_original(spec: dict) -> dict:
    """The predictions of an evaluation (on each resampled case's grid) brought to the original 1 mm grid by nearest
    neighbour and scored against the original labels, as medft scores (per_case.csv, summary.json in ``out``)."""
    import nibabel as nib
    import numpy as np
    import torch
    from monai.data import MetaTensor
    from monai.transforms import ResampleToMatch

    from medft.evaluate.run import _case_rows
    from medft.evaluate.summary import summarize, write_per_case

    out = fresh_folder(spec["out"])
    out.mkdir(parents=True)
    rows = []
    resample = ResampleToMatch(mode="nearest", padding_mode="zeros")
    for case in spec["cases"]:
        pred_file, label_file = nib.load(case["prediction"]), nib.load(case["original_label"])
        pred = MetaTensor(torch.as_tensor(np.asarray(pred_file.dataobj).astype(np.float32))[None],
                          affine=torch.as_tensor(pred_file.affine))
        target_grid = MetaTensor(torch.zeros(1, *label_file.shape), affine=torch.as_tensor(label_file.affine))
        on_original = resample(pred, img_dst=target_grid)[0].round().long().as_tensor()
        label = torch.as_tensor(np.asarray(label_file.dataobj).astype(np.int64))
        spacing = [float(s) for s in np.linalg.norm(label_file.affine[:3, :3], axis=0)]
        holder = type("Case", (), {"case_id": case["case_id"], "site": case["site"]})
        rows += _case_rows(holder, CLASS_NAMES, on_original, label, spacing)
    write_per_case(out / "per_case.csv", rows)
    summary = summarize(rows, CLASS_NAMES)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    return {"name": spec["name"], "eval": summary}


def resolution_ceiling(spec: dict) -> dict:
    """What a grid costs by itself: each validation label put on the grid ``pixdim`` (nearest neighbour, the target
    training sees there), one-hot, brought back linearly (as an inversion brings probabilities back), argmax, scored
    against the label as medft scores. A perfect network on that grid scores this."""
    import numpy as np
    import torch
    from monai.transforms import EnsureChannelFirst, LoadImage, ResampleToMatch, Spacing

    from medft.evaluate.run import _case_rows
    from medft.evaluate.summary import summarize, write_per_case

    manifest = Path(spec["manifest"])
    load = LoadImage(image_only=True)
    results = {}
    for pixdim in spec["pixdims"]:
        rows = []
        for row in read_rows(manifest):
            label = EnsureChannelFirst()(load(str(manifest.parent / row["label"])))
            low = Spacing(pixdim=pixdim, mode="nearest")(label)
            onehot = torch.cat([(low == c).float() for c in range(len(CLASS_NAMES))])
            onehot.affine = low.affine
            back = ResampleToMatch(mode="bilinear", padding_mode="border")(onehot, img_dst=label)
            spacing = [float(s) for s in np.linalg.norm(np.asarray(label.affine)[:3, :3], axis=0)]
            holder = type("Case", (), {"case_id": row["case_id"], "site": row["site"] or None})
            rows += _case_rows(holder, CLASS_NAMES, back.as_tensor().argmax(0), label.as_tensor()[0].long(), spacing)
        out = fresh_folder(Path(spec["out"]) / "x".join(f"{p:g}" for p in pixdim))
        out.mkdir(parents=True)
        write_per_case(out / "per_case.csv", rows)
        summary = summarize(rows, CLASS_NAMES)
        (out / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
        results["x".join(f"{p:g}" for p in pixdim)] = summary
    return {"name": spec["name"], "summaries": results}


TASKS = {**WORKER_TASKS, "resolution_ceiling": resolution_ceiling, "make_bundle": make_bundle, "evaluate_zscore": evaluate_zscore,
         "monai_inference": monai_inference, "train_probed": train_probed, "score_on_original": score_on_original}


# --------------------------------------------------------------------------------------------
# B: the cases at 1, 2 and 3 mm slice thickness (written by the parent, as domain_shift.py writes site B)
# --------------------------------------------------------------------------------------------
def make_thick_cases(out: Path, source: Path) -> dict:
    """Copies of ``source``'s cases resampled by Spacingd to THICKNESSES along the last axis (round-robin per split),
    their manifests (the thickness as the site), and where each case's original label is."""
    import nibabel as nib
    import numpy as np
    import torch
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Spacingd

    rows = read_rows(source)
    folder = out / "thick"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    load = Compose([LoadImaged(["image", "label"], image_only=True), EnsureChannelFirstd(["image", "label"])])
    written, originals, counters = [], {}, {"train": 0, "val": 0}
    for row in rows:
        split = row["split"]
        thickness = THICKNESSES[counters[split] % len(THICKNESSES)]
        counters[split] += 1
        data = load({"image": str(source.parent / row["image"]), "label": str(source.parent / row["label"])})
        spacing = [float(s) for s in np.linalg.norm(np.asarray(data["image"].affine)[:3, :3], axis=0)]
        pixdim = spacing[:2] + [thickness]
        data = Spacingd(["image", "label"], pixdim=pixdim, mode=("bilinear", "nearest"))(data)
        paths = []
        for key, dtype in (("image", np.float32), ("label", np.uint8)):
            values = data[key][0].as_tensor() if hasattr(data[key], "as_tensor") else torch.as_tensor(data[key][0])
            array = values.round().numpy().astype(dtype) if key == "label" else values.numpy().astype(dtype)
            image = nib.Nifti1Image(array, np.asarray(data[key].affine, dtype=np.float64))
            image.set_qform(image.affine, code=1)
            image.set_sform(image.affine, code=1)
            path = folder / ("imagesTr" if key == "image" else "labelsTr") / f"{row['case_id']}.nii.gz"
            nib.save(image, path)
            paths.append(path)
        site = f"{thickness:g}mm"
        written.append((row["case_id"], paths[0], paths[1], split, site))
        originals[row["case_id"]] = {"original_label": str(source.parent / row["label"]), "site": site}
    manifests = {"train": write_manifest(folder / "thick_train.csv", written),
                 "val": write_manifest(folder / "thick_val.csv", [r for r in written if r[3] == "val"])}
    return {"manifests": manifests, "originals": originals,
            "thickness": {r[0]: r[4] for r in written}, "n_train": counters["train"], "n_val": counters["val"]}


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------
def main() -> int:
    p = parser("transfer", __doc__)
    p.add_argument("--bundle-steps", type=int, default=None,
                   help=f"training steps of the foreign bundle (default {FULL_BUNDLE_STEPS}; quick: 20)")
    p.add_argument("--epochs", type=int, default=None, help=f"epochs of every fine-tune (default {FULL_EPOCHS}; quick: 2)")
    p.add_argument("--scratch-epochs", type=int, default=None,
                   help=f"epochs of part B's trainings from random weights (default {FULL_SCRATCH_EPOCHS}; quick: 2)")
    p.add_argument("--sizes", type=int, nargs="+", choices=FULL_SIZES, default=None,
                   help=f"fine-tuning set sizes (default {' '.join(map(str, FULL_SIZES))}; quick: 5)")
    p.add_argument("--parts", nargs="+", choices=("A", "B"), default=("A", "B"), help="which parts to run (default both)")
    p.add_argument("--resume", action="store_true",
                   help="keep the jobs that finished in OUT (OUT/done/<job>.json; the bundle with them) and run the others: "
                        "a rerun after the run was stopped")
    args = p.parse_args()
    bench = Benchmark("transfer", args)
    bench.resume = args.resume
    if not args.resume and (bench.out / "done").exists():
        fresh_folder(bench.out / "done")
    check_manifests()
    sizes = args.sizes or ((5,) if args.quick else FULL_SIZES)
    disjoint = _check_disjoint(sizes)
    results: dict = {"disjoint": disjoint}
    if "A" in args.parts:
        results["A"] = part_a(bench, args, sizes)
    if "B" in args.parts:
        results["B"] = part_b(bench, args)
    bench.finish(results, _markdown(results))
    return 0


def _check_disjoint(sizes) -> dict:
    """The bundle's 100 training cases are in no manifest it is evaluated or fine-tuned on."""
    pretrain = {r["case_id"] for r in read_rows(PRETRAIN_MANIFEST)}
    used = {r["case_id"] for name in ["bench_val", *(f"bench_train{n}" for n in FULL_SIZES)]
            for r in read_rows(MANIFESTS / f"{name}.csv")}
    shared = sorted(pretrain & used)
    if shared:
        raise SystemExit(f"{PRETRAIN_MANIFEST}: cases {shared} are also in the benchmark's validation or training manifests")
    return {"pretrain_cases": len(pretrain), "bench_cases": len(used), "shared": 0}


def part_a(bench: Benchmark, args, sizes) -> dict:
    quick = args.quick
    epochs = args.epochs or (2 if quick else FULL_EPOCHS)
    steps = args.bundle_steps or (20 if quick else FULL_BUNDLE_STEPS)
    val_manifest = MANIFESTS / "bench_val.csv"
    if quick:
        val_manifest = subset_manifest(val_manifest, bench.out / "manifests" / "val.csv", n_val=4)
    bundle = bench.out / "foreign_bundle"
    if not (bundle / "models" / "model.pt").is_file():
        (bench.out / "done" / "make_bundle.json").unlink(missing_ok=True)
    made = _job(bench, {"task": "make_bundle", "bundle": str(bundle), "manifest": str(PRETRAIN_MANIFEST),
                        "steps": steps, "n_cases": 6 if quick else None}, "make_bundle")

    zero_shot = {}
    result = _job(bench, {"task": "evaluate_model", "name": "zero_shot_bundle", "model": str(bundle),
                                       "manifest": str(val_manifest), "eval_dir": str(bench.out / "eval" / "zero_shot_bundle")},
                            "zero_shot_bundle")
    zero_shot["bundle"] = {"label": "medft evaluate: the bundle's preprocessing replayed (1.5 mm, percentiles)",
                           **_dice(result["eval"]), "eval_seconds": result["eval_seconds"]}
    result = _job(bench, {"task": "evaluate_zscore", "name": "zero_shot_zscore", "model": str(bundle),
                                       "manifest": str(val_manifest), "eval_dir": str(bench.out / "eval" / "zero_shot_zscore")},
                            "zero_shot_zscore")
    zero_shot["zscore"] = {"label": "the same network fed z-scored intensities at native 1 mm spacing (medft before)",
                           **_dice(result["eval"]), "eval_seconds": result["eval_seconds"]}
    result = _job(bench, {"task": "monai_inference", "name": "zero_shot_monai", "model": str(bundle),
                                       "manifest": str(val_manifest), "eval_dir": str(bench.out / "eval" / "zero_shot_monai"),
                                       "medft_eval": str(bench.out / "eval" / "zero_shot_bundle")}, "zero_shot_monai")
    zero_shot["monai"] = {"label": "MONAI's own inference of the bundle (ConfigParser), scored by medft's metrics",
                          **_dice(result["eval"]), "eval_seconds": result["eval_seconds"]}
    agreement = result["agreement"]
    voxels = sum(a["voxels"] for a in agreement)
    differing = sum(a["differing"] for a in agreement)

    finetunes = []
    bundle_data = {"preprocessing": "bundle", "spatial_size": FOREIGN_SIZE}
    zscore_data = {"preprocessing": "medft", "intensity": "zscore", "spatial_size": SPATIAL_SIZE}
    for n in sizes:
        manifest = MANIFESTS / f"bench_train{n}.csv"
        if quick:
            manifest = subset_manifest(manifest, bench.out / "manifests" / f"train{n}.csv", n_val=4)
        runs = {"bundle": ("finetune", bundle_data), "zscore": ("finetune", zscore_data),
                "scratch": ("scratch", zscore_data)}  # the control: the same network from random weights, at 1 mm
        if n == max(sizes):  # a diagnostic: medft's intensity augmentation is absolute, tuned to z-scored images
            runs["bundle_light"] = ("finetune", {**bundle_data, "augmentation": "light"})
        for prep, (init, data) in runs.items():
            name = f"{prep}_n{n}"
            config = run_config(manifest, init, epochs, bench.device, max_steps=2 if quick else None, data=data,
                                freeze=gradual_freeze(epochs) if init == "finetune" else None,
                                optim=dict(FINETUNE_OPTIM if init == "finetune" else SCRATCH_OPTIM))
            config["model"] = {"bundle": str(bundle)} if init == "finetune" else {"network_def": dict(FOREIGN_NETWORK)}
            result = _job(bench, {
                "task": "train_probed", "name": name, "config": config, "run_dir": str(bench.out / "runs" / name),
                "eval_manifest": str(val_manifest), "eval_dir": str(bench.out / "eval" / name), "eval_split": "val",
                "eval_checkpoint": "last"}, name)
            finetunes.append({"n_train": n, "preprocessing": prep, "init": init, **_run_digest(result)})

    differences = {"zero-shot: replayed - z-score": _paired(bench.out, "zero_shot_zscore", "zero_shot_bundle"),
                   "zero-shot: medft - MONAI": _paired(bench.out, "zero_shot_monai", "zero_shot_bundle")}
    for n in sizes:
        differences[f"fine-tuned on {n}: bundle - z-score"] = _paired(bench.out, f"zscore_n{n}", f"bundle_n{n}")
        differences[f"on {n}: bundle fine-tuned - scratch (1 mm)"] = _paired(bench.out, f"scratch_n{n}", f"bundle_n{n}")
        differences[f"on {n}: z-score fine-tuned - scratch (1 mm)"] = _paired(bench.out, f"scratch_n{n}", f"zscore_n{n}")
    n = max(sizes)
    differences[f"bundle on {n}: light - standard augmentation"] = _paired(bench.out, f"bundle_n{n}", f"bundle_light_n{n}")
    ceiling = _job(bench, {"task": "resolution_ceiling", "name": "resolution_ceiling",
                                        "manifest": str(val_manifest), "pixdims": [FOREIGN_PIXDIM],
                                        "out": str(bench.out / "eval" / "resolution_ceiling")}, "resolution_ceiling")
    return {"resolution_ceiling": {k: _dice(v) for k, v in ceiling["summaries"].items()}, "epochs": epochs, "bundle": made,
            "zero_shot": zero_shot,
            "medft_vs_monai": {"cases": len(agreement), "voxels": voxels, "differing_voxels": differing,
                               "cases_identical": sum(a["differing"] == 0 for a in agreement), "per_case": agreement},
            "finetunes": finetunes, "differences": differences}


def part_b(bench: Benchmark, args) -> dict:
    quick = args.quick
    epochs = args.scratch_epochs or (2 if quick else FULL_SCRATCH_EPOCHS)
    source = MANIFESTS / "bench_train20.csv"
    if quick:
        source = subset_manifest(source, bench.out / "manifests" / "train20_quick.csv", n_train=6, n_val=3)
    made = make_thick_cases(bench.out, source)
    print(f"  {made['n_train']} training and {made['n_val']} validation cases resampled to "
          f"{', '.join(f'{t:g}' for t in THICKNESSES)} mm slices in {bench.out / 'thick'}", flush=True)
    runs = {}
    for spacing in ("auto", None):
        name = f"scratch_spacing_{spacing or 'none'}"
        config = run_config(made["manifests"]["train"], "scratch", epochs, bench.device, optim=dict(B_OPTIM),
                            max_steps=2 if quick else None,
                            data={"preprocessing": "medft", "spacing": spacing, "intensity": "zscore",
                                  "spatial_size": SCRATCH_SIZE})
        config["model"] = {"network_def": dict(FOREIGN_NETWORK)}
        config["train"]["amp"] = False
        result = _job(bench, {
            "task": "train_probed", "name": name, "config": config, "run_dir": str(bench.out / "runs" / name),
            "eval_manifest": str(made["manifests"]["val"]), "eval_dir": str(bench.out / "eval" / name),
            "eval_checkpoint": "last"}, name)
        eval_dir = bench.out / "eval" / name
        cases = [{"case_id": r["case_id"], "prediction": str(eval_dir / "predictions" / f"{r['case_id']}.nii.gz"),
                  **made["originals"][r["case_id"]]} for r in read_rows(made["manifests"]["val"])]
        original = _job(bench, {"task": "score_on_original", "name": f"{name}_on_1mm", "cases": cases,
                                             "out": str(bench.out / "eval" / f"{name}_on_1mm")}, f"{name}_on_1mm")
        digest = _run_digest(result)
        digest["per_thickness"] = {site: {c: dice_of({"overall": group}, c) for c in FOREGROUND}
                                   for site, group in (result["eval"].get("per_site") or {}).items()}
        digest["on_original_1mm"] = _dice(original["eval"])
        digest["on_original_1mm_per_thickness"] = {site: {c: dice_of({"overall": group}, c) for c in FOREGROUND}
                                                   for site, group in (original["eval"].get("per_site") or {}).items()}
        runs[spacing or "none"] = {"spacing": result["resolved_spacing"], **digest}
    differences = {"own grid: auto - none": _paired(bench.out, "scratch_spacing_none", "scratch_spacing_auto"),
                   "original 1 mm labels: auto - none": _paired(bench.out, "scratch_spacing_none_on_1mm",
                                                                "scratch_spacing_auto_on_1mm")}
    for thickness in THICKNESSES:
        site = f"{thickness:g}mm"
        differences[f"own grid, {site} cases: auto - none"] = _paired(bench.out, "scratch_spacing_none",
                                                                      "scratch_spacing_auto", site)
    return {"epochs": epochs, "thicknesses": list(THICKNESSES), "cases": made["thickness"], "runs": runs,
            "differences": differences}


def _job(bench: Benchmark, spec: dict, name: str) -> dict:
    """``bench.isolated`` of one job, its result kept in OUT/done/<name>.json; with --resume a kept result is used
    instead of running the job again (the same spec: a changed spec runs again)."""
    done = bench.out / "done" / f"{name}.json"
    if getattr(bench, "resume", False) and done.is_file():
        kept = json.loads(done.read_text())
        if kept.get("spec") == spec:
            print(f"  kept {name} from an earlier run ({kept['result']['process_seconds']:.0f} s)", flush=True)
            result = kept["result"]
            bench.jobs.append({"name": name, "timing": False, "attempts": result.get("attempts", 1),
                               "disturbed": result.get("disturbed", False), **result["interference"],
                               "process_seconds": result["process_seconds"], "kept_from_earlier_run": True})
            return result
    result = bench.isolated(__file__, spec, name)
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps({"spec": spec, "result": result}, indent=1, default=float) + "\n")
    return result


# --------------------------------------------------------------------------------------------
# Reading results
# --------------------------------------------------------------------------------------------
def _dice(evaluation: dict) -> dict:
    return {"dice": {c: dice_of(evaluation, c) for c in FOREGROUND}, "n_val_cases": evaluation["n_cases"]}


def _run_digest(result: dict) -> dict:
    probe = result["timing"].get("probe", {})
    def named(values):
        return dict(zip(CLASS_NAMES[1:], values, strict=True)) if values is not None else None

    return {
        **_dice(result["eval"]),
        "steps": result["steps_per_epoch"] * len(result["timing"]["train_seconds"]),
        "train_seconds": sum(result["timing"]["train_seconds"]),
        "train_wall_seconds": result["train_wall_seconds"],
        "eval_seconds": result["eval_seconds"],
        "val_before_training": named(probe.get("before_training")),
        "val_after_epoch_0": named(probe.get("after_epoch_0")),
        "final_train_loss": result["metrics"][-1]["train_loss"],
        "first_train_loss": result["metrics"][0]["train_loss"],
        "run_dir": result["run_dir"],
        "memory": result["memory"],
    }


def _paired(out: Path, a: str, b: str, site: str | None = None) -> dict:
    """b - a per class, paired on the validation cases (medft's paired bootstrap); ``site``: its cases only."""
    from medft.evaluate.summary import paired_difference, read_per_case

    def rows(name):
        found = read_per_case(out / "eval" / name / "per_case.csv")
        return [r for r in found if site is None or r["site"] == site]

    diff = paired_difference(rows(a), rows(b), CLASS_NAMES)
    return {"n_common": diff["n_common_cases"], **{c: diff["differences"][c] for c in FOREGROUND}}


def _fmt_diff(d: dict) -> str:
    if d.get("mean_diff") is None or d.get("ci95") is None or d["ci95"][0] is None:
        return "n/a"
    return f"{d['mean_diff']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]"


def _mean(values: dict | None) -> str:
    if not values:
        return "n/a"
    known = [v for v in values.values() if v is not None]
    return f"{sum(known) / len(known):.3f}" if known else "n/a"


RUN_LABELS = {"bundle": "bundle, its preprocessing (1.5 mm, percentiles)", "zscore": "bundle, z-score at 1 mm",
              "scratch": "random weights, z-score at 1 mm", "bundle_light": "bundle, its preprocessing, light augmentation"}


def _markdown(results: dict) -> str:
    parts = []
    if "A" in results:
        a = results["A"]
        made = a["bundle"]
        parts.append(
            f"A. Foreign bundle (plain MONAI: UNet 16-32-64-128, 1.5 mm, percentiles 1-99 to 0..1; {made['steps']} steps "
            f"of batch 2 on {made['cases']} cases in {made['train_seconds'] / 60:.1f} min, median step "
            f"{made['median_step_seconds'] * 1000:.0f} ms; loss {made['loss_first_100']:.3f} (first 100 steps) -> "
            f"{made['loss_last_100']:.3f} (last 100))")
        rows = [[z["label"], fmt_dice(z["dice"]["anterior"]), fmt_dice(z["dice"]["posterior"]),
                 fmt_dice(z["dice"]["mean_foreground"]), fmt(z["eval_seconds"], 0)] for z in a["zero_shot"].values()]
        parts.append("Zero-shot on the validation cases\n\n" + markdown_table(
            ["inference", "anterior Dice [95% CI]", "posterior Dice [95% CI]", "mean [95% CI]", "seconds"], rows))
        for grid, value in a.get("resolution_ceiling", {}).items():
            parts.append(f"Resolution ceiling of the {grid} mm grid (each validation label there and back, no network): "
                         f"anterior {fmt_dice(value['dice']['anterior'])}, posterior {fmt_dice(value['dice']['posterior'])}")
        agree = a["medft_vs_monai"]
        parts.append(f"medft against MONAI's own inference: {agree['differing_voxels']} of {agree['voxels']} voxels differ "
                     f"({agree['cases_identical']} of {agree['cases']} cases identical)")
        rows = []
        for run in a["finetunes"]:
            d = run["dice"]
            rows.append([run["n_train"], RUN_LABELS[run["preprocessing"]], _mean(run["val_before_training"]),
                         _mean(run["val_after_epoch_0"]),
                         " / ".join(fmt(v, 3) for v in (run["val_after_epoch_0"] or {}).values()),
                         fmt_dice(d["anterior"]), fmt_dice(d["posterior"]), fmt_dice(d["mean_foreground"]),
                         run["steps"], fmt(run["train_seconds"], 0)])
        parts.append(f"Fine-tuned from the bundle (and the control from random weights), {a['epochs']} epochs, last "
                     "checkpoint\n\n" + markdown_table(["train cases", "run", "val Dice before training", "after epoch 1", "after epoch 1 "
                                                                                                                           "(ant / post)",
             "final anterior [95% CI]", "final posterior [95% CI]", "final mean [95% CI]", "steps", "train s"], rows))
        rows = [[label, _fmt_diff(d["anterior"]), _fmt_diff(d["posterior"]), _fmt_diff(d["mean_foreground"]), d["n_common"]]
                for label, d in a["differences"].items()]
        parts.append("Paired differences (95% paired bootstrap interval)\n\n" + markdown_table(
            ["difference", "anterior", "posterior", "mean", "cases"], rows))
    if "B" in results:
        b = results["B"]
        rows = []
        for key, run in b["runs"].items():
            d, o = run["dice"], run["on_original_1mm"]["dice"]
            per = " / ".join(f"{site} {fmt(v['mean_foreground']['mean'], 3)}" for site, v in sorted(run["per_thickness"].items()))
            rows.append([key, "x".join(f"{s:g}" for s in run["spacing"]) if run["spacing"] else "none (as stored)",
                         fmt_dice(d["anterior"]), fmt_dice(d["posterior"]), fmt_dice(d["mean_foreground"]), per,
                         fmt_dice(o["anterior"]), fmt_dice(o["posterior"]), run["steps"], fmt(run["train_seconds"], 0)])
        parts.append(f"B. From random weights on 1/2/3 mm slices, {b['epochs']} epochs, last checkpoint\n\n" + markdown_table(
            ["data.spacing", "resolved (mm)", "anterior [95% CI]", "posterior [95% CI]", "mean [95% CI]",
             "mean by thickness", "anterior on 1 mm labels", "posterior on 1 mm labels", "steps", "train s"], rows))
        rows = [[label, _fmt_diff(d["anterior"]), _fmt_diff(d["posterior"]), _fmt_diff(d["mean_foreground"]), d["n_common"]]
                for label, d in b["differences"].items()]
        parts.append("Paired differences, auto - none\n\n" + markdown_table(
            ["scored", "anterior", "posterior", "mean", "cases"], rows))
    return "\n\n".join(parts)


if __name__ == "__main__":
    if is_worker():
        worker_main(TASKS)
        sys.exit(0)
    sys.exit(main())
