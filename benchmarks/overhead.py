"""Overhead: what medft's training loop, data loading and inference cost against plain PyTorch/MONAI.

1. Training throughput. medft's ``FineTuneRecipe`` against a plain loop written out here
   (MONAI ``CacheDataset`` + ``Dataset`` + ``DataLoader``, AdamW, ``DiceCELoss``,
   ``WarmupCosineSchedule``; mixed precision with a ``GradScaler`` on CUDA, as medft) with the
   same network (the demo bundle's UNet adapted to 3 classes, the bundle's weights copied in
   where shapes match), the same 20 training cases (``data_manifests/bench_train20.csv``), the
   same transforms (``medft.data.transforms``: preprocessing cached, then whole-volume sampling
   and the ``standard`` augmentation per step), batch 2, nothing frozen, lr 1e-3 (new head 1e-2),
   and, like medft and MONAI's tutorials, the loss read back (``.item()``) every step. (The plain
   loop has 2 parameter groups, head and body, weight decay 1e-5 on all; medft has 4, without
   decay on biases and normalisation parameters.) Each runs
   1 warm-up epoch and then ``--epochs`` timed epochs (10 steps each) in its own process; the
   processes alternate (the order rotates), ``--repeats`` times; a process that other programs
   disturbed (``common.run_isolated``) is run again, and left out if it stays disturbed. Reported:
   the median steps/s of each, and the overhead paired within each repeat (below). medft is timed two ways:
   ``loop``: the seconds inside ``_train_epoch`` (data loading, steps, per-step seeding, progress
   bar), the same span as the plain loop's epoch; ``epoch``: from the end of one epoch to the end
   of the next, so also the per-epoch ``last.pt`` checkpoint, ``metrics.jsonl`` and TensorBoard
   (the validation after the last epoch is subtracted). A third row runs medft with
   ``train.deterministic: false`` (its default is ``true``). Overhead = 1 - medft steps/s /
   plain steps/s of the same repeat, median over repeats; the goal is at most 5%. Peak memory: resident-set high-water mark while training
   (reset after setup), and on CUDA ``max_memory_allocated``.
2. Data loading with and without caching: medft's own loaders (``medft.train.data.build_loaders``,
   ``data.cache`` true or false) on the 50-case training set and the 30 validation cases, without
   a network: the time to build them (the cache is filled then), one training epoch (mean over
   ``--loading-epochs``), one pass over the validation loader, peak memory.
3. Inference on the 30 validation volumes, preprocessed in memory: medft's
   ``medft.evaluate.inference.predict`` (sliding window, Gaussian blending, roi 48 x 64 x 48,
   overlap 0.25, 4 windows per batch), the same with left-right TTA, and MONAI's
   ``sliding_window_inference`` + softmax with the same settings; and ``medft predict``'s path
   (``predict_files``: read, preprocess, predict, write NIfTI) end to end. Volumes per second
   after warming up on 3 volumes, from the median of 5 passes over the 30 volumes (the four
   alternate, the order rotating every pass).

Run: ``.venv/bin/python benchmarks/overhead.py [--quick] [--repeats 8] [--epochs 8] [--out DIR] [--device auto]``
"""
from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from common import (
    BUNDLE,
    MANIFESTS,
    SPATIAL_SIZE,
    Benchmark,
    check_manifests,
    cuda_peak_mb,
    fmt,
    is_worker,
    markdown_table,
    network_def,
    parser,
    peak_rss_mb,
    reset_peak_memory,
    run_config,
    subset_manifest,
    timed_recipe_class,
    worker_main,
)

WARMUP_EPOCHS = 1
LR, HEAD_LR, WEIGHT_DECAY = 1e-3, 1e-2, 1e-5
BATCH = 2


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------
# Worker tasks
# --------------------------------------------------------------------------------------------
def medft_train(spec: dict) -> dict:
    """medft's recipe, epochs = warm-up + timed; validation only after the last one."""
    import torch

    from medft.config import validate_config

    run_dir = Path(spec["run_dir"])
    if run_dir.exists():
        shutil.rmtree(run_dir)
    config = validate_config(spec["config"], source="overhead config")
    recipe = timed_recipe_class()(config, run_dir)
    try:
        recipe.setup()
        setup_peak = peak_rss_mb()
        reset_ok = reset_peak_memory()
        recipe.train()
        timing = recipe.timing
        memory = {"setup_peak_rss_mb": setup_peak, "train_peak_rss_mb": peak_rss_mb() if reset_ok else None,
                  "cuda_peak_mb": cuda_peak_mb()}
    finally:
        recipe.cleanup()
    w = spec["warmup_epochs"]
    timed_epochs = len(timing["train_seconds"]) - w
    steps = recipe.steps_per_epoch * timed_epochs
    loop_seconds = sum(timing["train_seconds"][w:])
    epoch_seconds = timing["epoch_end_wall"][-1] - timing["epoch_end_wall"][w - 1] - sum(timing["val_seconds"][w:])
    return {"steps": steps, "loop_seconds": loop_seconds, "epoch_seconds": epoch_seconds,
            "loop_steps_per_s": steps / loop_seconds, "epoch_steps_per_s": steps / epoch_seconds,
            "epoch_train_seconds": timing["train_seconds"], "checkpoint_seconds": timing["checkpoint_seconds"],
            "memory": memory, "threads": torch.get_num_threads(), "device": str(recipe.device)}


def plain_train(spec: dict) -> dict:
    """The same training written as a plain PyTorch/MONAI loop (no medft recipe)."""
    import torch
    from monai.data import CacheDataset, DataLoader, Dataset
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet
    from monai.optimizers import WarmupCosineSchedule
    from monai.transforms import Compose

    from medft.data.manifest import load_manifest
    from medft.data.preprocessing import Preprocessing
    from medft.data.transforms import augmentation, sampling

    torch.manual_seed(0)
    device = torch.device(spec["device"])
    amp = device.type == "cuda"
    cases = load_manifest(spec["manifest"]).records("train")
    cached = CacheDataset(cases, Compose(Preprocessing.medft(None, "zscore").training()), num_workers=None, progress=False)
    train_transform = Compose(sampling("whole", SPATIAL_SIZE) + augmentation("standard"))
    train_transform.set_random_state(seed=0)
    loader = DataLoader(Dataset(cached, train_transform), batch_size=BATCH, shuffle=True, drop_last=len(cases) > BATCH,
                        num_workers=0, generator=torch.Generator().manual_seed(0))

    definition = {k: v for k, v in network_def().items() if k != "_target_"}
    network = UNet(**{**definition, "out_channels": 3}).to(device)
    pretrained = torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    own = network.state_dict()
    own.update({k: v for k, v in pretrained.items() if k in own and own[k].shape == v.shape})
    network.load_state_dict(own)
    two_class = UNet(**{**definition, "out_channels": 2}).state_dict()
    head = {k for k, v in network.named_parameters() if two_class[k].shape != v.shape}
    groups = [
        {"params": [p for k, p in network.named_parameters() if k in head], "lr": HEAD_LR},
        {"params": [p for k, p in network.named_parameters() if k not in head], "lr": LR},
    ]
    optimizer = torch.optim.AdamW(groups, weight_decay=WEIGHT_DECAY)
    epochs = spec["warmup_epochs"] + spec["epochs"]
    scheduler = WarmupCosineSchedule(optimizer, warmup_steps=len(loader), t_total=epochs * len(loader))
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

    setup_peak = peak_rss_mb()
    reset_ok = reset_peak_memory()
    seconds = []
    network.train()
    for _ in range(epochs):
        _sync(device)
        started = time.perf_counter()
        total = 0.0
        for batch in loader:
            image, label = batch["image"].to(device), batch["label"].to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=amp):
                loss = loss_fn(network(image), label)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total += loss.item()
        _sync(device)
        seconds.append(time.perf_counter() - started)
    w = spec["warmup_epochs"]
    steps = len(loader) * spec["epochs"]
    loop_seconds = sum(seconds[w:])
    return {"steps": steps, "loop_seconds": loop_seconds, "loop_steps_per_s": steps / loop_seconds,
            "epoch_train_seconds": seconds,
            "memory": {"setup_peak_rss_mb": setup_peak, "train_peak_rss_mb": peak_rss_mb() if reset_ok else None,
                       "cuda_peak_mb": cuda_peak_mb()},
            "threads": torch.get_num_threads(), "device": str(device)}


def loading(spec: dict) -> dict:
    """medft's loaders alone: build (cache fill), train epochs, one validation pass."""
    import torch

    from medft.config import validate_config
    from medft.data.manifest import load_manifest
    from medft.train.data import build_loaders
    from medft.train.preprocessing import run_preprocessing

    config = validate_config(spec["config"], source="overhead loading config")
    manifest = load_manifest(config.data.manifest)
    started = time.perf_counter()
    generator = torch.Generator()
    train_loader, val_loader, transform = build_loaders(config, manifest, run_preprocessing(config), generator,
                                                       config.model.in_channels or 1)
    build_seconds = time.perf_counter() - started
    epochs = []
    for epoch in range(spec["epochs"]):
        generator.manual_seed(epoch)
        transform.set_random_state(seed=epoch)
        started = time.perf_counter()
        batches = sum(1 for _ in train_loader)
        epochs.append(time.perf_counter() - started)
    started = time.perf_counter()
    val_cases = sum(1 for _ in val_loader)
    val_seconds = time.perf_counter() - started
    return {"build_seconds": build_seconds, "train_epoch_seconds": epochs, "batches_per_epoch": batches,
            "train_cases": len(train_loader.dataset), "val_cases": val_cases, "val_pass_seconds": val_seconds,
            "peak_rss_mb": peak_rss_mb()}


def inference(spec: dict) -> dict:
    """Sliding-window inference: medft's predict (with and without TTA), plain MONAI, medft predict_files."""
    import tempfile

    import torch
    from monai.inferers import sliding_window_inference

    from medft.data.manifest import load_manifest
    from medft.evaluate.inference import load_model, predict
    from medft.evaluate.run import predict_files

    device = torch.device(spec["device"])
    model = load_model(BUNDLE, device)
    cases = load_manifest(spec["manifest"]).split("val")
    prep = model.preprocess()
    volumes = [prep(case.record())["image"] for case in cases]
    warmup = spec["warmup"]

    def one_pass(fn) -> float:
        _sync(device)
        started = time.perf_counter()
        for image in volumes:
            fn(image)
        _sync(device)
        return time.perf_counter() - started

    def plain(image):
        with torch.no_grad(), torch.autocast(device.type, enabled=device.type == "cuda"):
            logits = sliding_window_inference(image.as_tensor()[None].to(device), model.roi_size, model.sw_batch_size,
                                              model.network, overlap=model.overlap, mode="gaussian")
            return torch.softmax(logits.float(), dim=1)[0].cpu()

    paths = [case.image[0] for case in cases]
    folder = Path(tempfile.mkdtemp())
    variants = {
        "monai_sliding_window": plain,
        "medft_predict": lambda image: predict(model, image),
        "medft_predict_tta": lambda image: predict(model, image, tta=True),
    }
    reset_peak_memory()
    for fn in variants.values():  # warm-up
        for image in volumes[:warmup]:
            fn(image)
    predict_files(BUNDLE, paths[:warmup], folder / "warmup")
    passes: dict[str, list[float]] = {name: [] for name in [*variants, "medft_predict_files_end_to_end"]}
    names = list(passes)
    for r in range(spec["rounds"]):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order every round
            if name in variants:
                passes[name].append(one_pass(variants[name]))
            else:  # `medft predict`: loads the model once, then reads, preprocesses, predicts, writes each file
                started = time.perf_counter()
                predict_files(BUNDLE, paths, folder / f"out{r}")
                passes[name].append(time.perf_counter() - started)
    shutil.rmtree(folder, ignore_errors=True)
    results = {"volumes": len(volumes), "roi_size": model.roi_size, "overlap": model.overlap,
               "sw_batch_size": model.sw_batch_size, "rounds": spec["rounds"], "passes_seconds": passes,
               "seconds": {name: statistics.median(v) for name, v in passes.items()}}
    results["volumes_per_s"] = {k: len(volumes) / v for k, v in results["seconds"].items()}
    results["memory"] = {"peak_rss_mb": peak_rss_mb(), "cuda_peak_mb": cuda_peak_mb()}
    return results


TASKS = {"medft_train": medft_train, "plain_train": plain_train, "loading": loading, "inference": inference}


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------
def main() -> int:
    p = parser("overhead", __doc__)
    p.add_argument("--repeats", type=int, default=None, help="alternating repeats of each training variant (default 8; quick: 1)")
    p.add_argument("--epochs", type=int, default=None, help="timed epochs per training process, after 1 warm-up (default 8; quick: 1)")
    p.add_argument("--loading-epochs", type=int, default=None, help="training epochs iterated per loading variant (default 3; quick: 1)")
    p.add_argument("--from-results", type=Path, default=None,
                   help="print the tables of an earlier run's results.json again (recomputed from its raw timings) and exit")
    args = p.parse_args()
    if args.from_results:
        record = json.loads(args.from_results.read_text())
        results = record["results"]
        results["training"] = _training_summary(results["training_runs"])
        print(_markdown(results))
        return 0
    bench = Benchmark("overhead", args)
    check_manifests()
    quick = args.quick
    repeats = args.repeats or (1 if quick else 8)
    epochs = args.epochs or (1 if quick else 8)
    loading_epochs = args.loading_epochs or (1 if quick else 3)
    train_manifest = MANIFESTS / "bench_train20.csv"
    loading_manifest = MANIFESTS / "bench_train50.csv"
    val_manifest = MANIFESTS / "bench_val.csv"
    if quick:
        train_manifest = subset_manifest(train_manifest, bench.out / "manifests" / "train.csv", n_train=6, n_val=1)
        loading_manifest = subset_manifest(loading_manifest, bench.out / "manifests" / "loading.csv", n_train=6, n_val=3)
        val_manifest = subset_manifest(val_manifest, bench.out / "manifests" / "val.csv", n_val=4)

    total_epochs = WARMUP_EPOCHS + epochs
    base = run_config(train_manifest, "finetune", total_epochs, bench.device,
                      optim={"lr": LR, "head_lr": HEAD_LR, "weight_decay": WEIGHT_DECAY, "warmup_epochs": 1})
    variants = {
        "plain": {"task": "plain_train", "manifest": str(train_manifest)},
        "medft": {"task": "medft_train", "config": base},
        "medft_nondeterministic": {"task": "medft_train",
                                   "config": {**base, "train": {**base["train"], "deterministic": False}}},
    }
    training: dict[str, list[dict]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order every repeat
            spec = {**variants[name], "warmup_epochs": WARMUP_EPOCHS, "epochs": epochs,
                    "run_dir": str(bench.out / "runs" / f"{name}_{r}")}
            training[name].append(bench.isolated(__file__, spec, f"{name}_{r}", timing=True))

    loading_results = {}
    for cache in (True, False):
        name = f"loading_cache_{str(cache).lower()}"
        config = run_config(loading_manifest, "finetune", 1, bench.device, data={"cache": cache})
        loading_results[name] = bench.isolated(__file__, {"task": "loading", "config": config, "epochs": loading_epochs}, name,
                                                     timing=True)

    inference_result = bench.isolated(__file__, {"task": "inference", "manifest": str(val_manifest),
                                                 "warmup": 1 if quick else 3, "rounds": 1 if quick else 5},
                                     "inference", timing=True)

    results = {"training": _training_summary(training), "training_runs": training, "loading": loading_results,
               "inference": inference_result, "repeats": repeats, "timed_epochs": epochs, "warmup_epochs": WARMUP_EPOCHS}
    bench.finish(results, _markdown(results))
    return 0


def _training_summary(training: dict) -> dict:
    """Steps/s per variant (median over its undisturbed processes) and the overhead against the
    plain loop: 1 - the median over repeats of (variant steps/s / plain steps/s), each ratio from
    the two processes of one repeat (run one after the other), undisturbed ones only. Pairing
    cancels the slow drifts of a shared machine's speed."""
    def clean(runs):
        kept = [r for r in runs if not r.get("disturbed")]
        return kept or runs

    summary = {}
    plain_runs = training["plain"]
    for name, runs in training.items():
        kept = clean(runs)
        entry = {"loop_steps_per_s": statistics.median(r["loop_steps_per_s"] for r in kept),
                 "loop_steps_per_s_each": [r["loop_steps_per_s"] for r in runs],
                 "disturbed_each": [bool(r.get("disturbed")) for r in runs],
                 "processes_used": len(kept),
                 "steps_per_process": runs[0]["steps"],
                 "train_peak_rss_mb": statistics.median(r["memory"]["train_peak_rss_mb"] or 0 for r in kept),
                 "setup_peak_rss_mb": statistics.median(r["memory"]["setup_peak_rss_mb"] for r in kept),
                 "cuda_peak_mb": runs[0]["memory"]["cuda_peak_mb"]}
        if "epoch_steps_per_s" in runs[0]:
            entry["epoch_steps_per_s"] = statistics.median(r["epoch_steps_per_s"] for r in kept)
            entry["epoch_steps_per_s_each"] = [r["epoch_steps_per_s"] for r in runs]
        if name != "plain":
            pairs = [(r, q) for r, q in zip(runs, plain_runs, strict=True) if not r.get("disturbed") and not q.get("disturbed")]
            pairs = pairs or list(zip(runs, plain_runs, strict=True))
            for kind in ("loop", "epoch"):
                key = f"{kind}_steps_per_s"
                if key in runs[0]:
                    ratios = [r[key] / q["loop_steps_per_s"] for r, q in pairs]
                    entry[f"{kind}_ratio_each"] = ratios
                    entry[f"{kind}_overhead"] = 1 - statistics.median(ratios)
                    entry[f"{kind}_overhead_range"] = [1 - max(ratios), 1 - min(ratios)]
            entry["pairs_used"] = len(pairs)
        summary[name] = entry
    return summary


def _markdown(results: dict) -> str:
    t = results["training"]
    cuda = t["plain"]["cuda_peak_mb"] is not None
    rows = []
    labels = {"plain": "plain PyTorch/MONAI loop", "medft": "medft recipe (train.deterministic: true, the default)",
              "medft_nondeterministic": "medft recipe, train.deterministic: false"}
    def overhead(entry, kind):
        if f"{kind}_overhead" not in entry:
            return ""
        lo, hi = entry[f"{kind}_overhead_range"]
        return f"{entry[f'{kind}_overhead']:+.1%} ({lo:+.1%} to {hi:+.1%})"

    for name, entry in t.items():
        each = entry["loop_steps_per_s_each"]
        spread = [v for v, d in zip(each, entry["disturbed_each"], strict=True) if not d] or each
        rows.append([labels[name], entry["processes_used"], f"{entry['loop_steps_per_s']:.2f} ({min(spread):.2f}-{max(spread):.2f})",
                     overhead(entry, "loop"), f"{entry['epoch_steps_per_s']:.2f}" if "epoch_steps_per_s" in entry else "",
                     overhead(entry, "epoch"),
                     fmt(entry["cuda_peak_mb"], 0) if cuda else fmt(entry["train_peak_rss_mb"], 0),
                     fmt(entry["setup_peak_rss_mb"], 0)])
    training = markdown_table(["training", "processes", "steps/s, loop (median, range)", "overhead, loop (paired median, range)",
                               "steps/s, whole epoch", "overhead, whole epoch (paired median, range)",
                               "CUDA peak MiB" if cuda else "peak RSS training MiB", "peak RSS setup MiB"], rows)
    loading_rows = []
    for name, r in results["loading"].items():
        loading_rows.append(["cached" if name.endswith("true") else "not cached", r["train_cases"], fmt(r["build_seconds"], 2),
                             fmt(statistics.mean(r["train_epoch_seconds"]), 2),
                             fmt(r["batches_per_epoch"] / statistics.mean(r["train_epoch_seconds"]), 1),
                             fmt(r["val_pass_seconds"], 2), fmt(r["peak_rss_mb"], 0)])
    loading = markdown_table(["data", "train cases", "build loaders s", "train epoch s (no network)", "batches/s",
                              "validation pass s", "peak RSS MiB"], loading_rows)
    inf = results["inference"]
    inf_labels = {"monai_sliding_window": "MONAI sliding_window_inference + softmax",
                  "medft_predict": "medft predict()", "medft_predict_tta": "medft predict(), left-right TTA",
                  "medft_predict_files_end_to_end": "medft predict_files (read, preprocess, predict, write NIfTI)"}
    inf_rows = [[inf_labels[k], fmt(v, 1), fmt(inf["seconds"][k], 2),
                 f"{min(inf['passes_seconds'][k]):.2f}-{max(inf['passes_seconds'][k]):.2f}" if "passes_seconds" in inf else ""]
                for k, v in inf["volumes_per_s"].items()]
    inference = markdown_table(["inference", "volumes/s", f"seconds for {inf['volumes']} volumes (median)", "range"], inf_rows)
    return (f"Training throughput: {results['timed_epochs']} timed epochs after {results['warmup_epochs']} warm-up "
            f"({t['plain']['steps_per_process']} steps per process, batch {BATCH}), {results['repeats']} alternating "
            f"repeats; disturbed processes left out; overhead = 1 - medft steps/s / plain steps/s, paired within a "
            f"repeat\n\n{training}\n\nData loading (medft loaders, num_workers 0)\n\n{loading}\n\n"
            f"Inference (sliding window, roi {inf['roi_size']}, overlap {inf['overlap']}, {inf['sw_batch_size']} "
            f"windows per batch; {inf.get('rounds', 1)} alternating passes over the volumes)\n\n{inference}")


if __name__ == "__main__":
    if is_worker():
        worker_main(TASKS)
        sys.exit(0)
    sys.exit(main())
