"""Shared pieces of the benchmarks: case split, manifests, run configs, isolated workers, memory, tables.

Every training or measuring job runs in its own Python process (``run_isolated``), so that its
peak memory is its own: the child resets the kernel's resident-set high-water mark after setup
(``/proc/self/clear_refs``) and reports ``VmHWM`` (and ``torch.cuda.max_memory_allocated`` on
CUDA). The parent only starts children, reads their JSON results and writes tables.

The split (``bench_split``) and the manifests built from it (``data_manifests/bench_*.csv``,
written by ``benchmarks/make_manifests.py``) keep every case that pretrained the demo bundle out
of every validation set; ``check_manifests`` verifies that before any benchmark runs.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data" / "hippocampus").resolve()
MANIFESTS = REPO / "data_manifests"
BUNDLE = REPO / "bundles" / "hippocampus_demo"
PRETRAIN_MANIFEST = MANIFESTS / "hippocampus_pretrain.csv"

CLASSES = {"0": "background", "1": "anterior", "2": "posterior"}
WHOLE_CLASSES = {"0": "background", "1": "hippocampus"}
SPATIAL_SIZE = [48, 64, 48]  # every hippocampus crop fits (largest: 42 x 59 x 47), as configs/demo.yaml
SPLIT_SEED = 20240606
N_VAL = 30
TRAIN_SIZES = (5, 10, 20, 50)
N_SITE_B_TRAIN = 20
N_FOLDS = 5  # cross-validation folds of the 200 cases (configs/hippocampus.yaml trains on fold 0)
DISTURBED_SHARE = 0.05  # other processes using more than this share of the CPUs invalidate a timing

# The fine-tuning recipe of configs/demo.yaml and the from-scratch recipe of
# configs/pretrain_hippocampus_demo.yaml: each initialisation trained the way medft ships it.
FINETUNE_OPTIM = {"lr": 1e-3, "head_lr": 1e-2, "warmup_epochs": 1}
SCRATCH_OPTIM = {"lr": 3e-3, "head_lr": 3e-3, "warmup_epochs": 1}


# --------------------------------------------------------------------------------------------
# Cases and manifests
# --------------------------------------------------------------------------------------------
def pretraining_cases() -> set[str]:
    """Cases that trained (or validated) the demo bundle, from its metadata."""
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    cases = meta["pretraining_cases"]
    return set(cases["train"]) | set(cases["val"])


def all_cases() -> list[str]:
    return sorted(p.name[: -len(".nii.gz")] for p in (DATA / "imagesTr").glob("*.nii.gz"))


def bench_split() -> dict[str, list[str]]:
    """The benchmark's split of the 100 cases that did not pretrain the demo bundle.

    ``val``: 30 cases, the one validation set of every site-A benchmark; ``train_pool``: 50
    cases in a fixed order, whose first 5, 10, 20, 50 are the nested training sets; ``site_b``:
    the remaining 20 cases, held back for the shifted second site (its training cases).
    """
    pretrain = pretraining_cases()
    pool = [c for c in all_cases() if c not in pretrain]
    if len(pool) < N_VAL + max(TRAIN_SIZES) + N_SITE_B_TRAIN:
        raise SystemExit(f"{DATA}: {len(pool)} cases outside the pretraining set, need "
                         f"{N_VAL + max(TRAIN_SIZES) + N_SITE_B_TRAIN}")
    order = [pool[i] for i in np.random.default_rng(SPLIT_SEED).permutation(len(pool))]
    val = sorted(order[:N_VAL])
    train_pool = order[N_VAL:N_VAL + max(TRAIN_SIZES)]
    site_b = sorted(order[N_VAL + max(TRAIN_SIZES):N_VAL + max(TRAIN_SIZES) + N_SITE_B_TRAIN])
    return {"val": val, "train_pool": train_pool, "site_b": site_b}


def cv_folds() -> list[list[str]]:
    """``N_FOLDS`` disjoint validation folds of all the cases (seed ``SPLIT_SEED``), for the
    accuracy recipe: fold k validates on ``folds[k]`` and trains on the rest. Unlike the
    benchmark split these include the bundle's pretraining cases, so a fold is only a fair
    validation set for networks trained from random weights."""
    cases = all_cases()
    order = [cases[i] for i in np.random.default_rng(SPLIT_SEED + 1).permutation(len(cases))]
    return [sorted(order[k::N_FOLDS]) for k in range(N_FOLDS)]


def fold_rows(folds: list[list[str]]) -> dict[str, list[tuple]]:
    """(case_id, image, label, split, site) rows of ``hippocampus_fold{k}.csv``: fold k val, the rest train."""
    manifests = {}
    for k, val in enumerate(folds):
        held = set(val)
        split = {c: ("val" if c in held else "train") for c in all_cases()}
        manifests[f"hippocampus_fold{k}"] = [(c, image_path(c), label_path(c), split[c], "A") for c in all_cases()]
    return manifests


def image_path(case_id: str) -> Path:
    return DATA / "imagesTr" / f"{case_id}.nii.gz"


def label_path(case_id: str) -> Path:
    return DATA / "labelsTr" / f"{case_id}.nii.gz"


def manifest_rows(split: dict[str, list[str]]) -> dict[str, list[tuple]]:
    """(case_id, image, label, split, site) rows of each committed benchmark manifest."""
    def rows(cases, name, site="A"):
        return [(c, image_path(c), label_path(c), name, site) for c in cases]

    manifests = {"bench_val": rows(split["val"], "val")}
    for n in TRAIN_SIZES:
        manifests[f"bench_train{n}"] = rows(sorted(split["train_pool"][:n]), "train") + rows(split["val"], "val")
    manifests["bench_site_b_source"] = rows(split["site_b"], "train", "B") + rows(split["val"], "val", "B")
    return manifests


def write_manifest(path: Path, rows: list[tuple], classes: dict[str, str] = CLASSES) -> Path:
    """A medft CSV manifest (paths relative to its folder) and its ``.classes.json``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(["case_id", "image", "label", "split", "site", "patient_id"])
        for case_id, image, label, split, site in rows:
            writer.writerow([case_id, _relative(image, path.parent), _relative(label, path.parent) if label else "",
                             split, site, ""])
    path.with_name(path.stem + ".classes.json").write_text(json.dumps(classes, indent=1) + "\n")
    return path


def _relative(target: Path, start: Path) -> str:
    return os.path.relpath(Path(target).resolve(), start.resolve())


def read_rows(manifest: Path) -> list[dict]:
    with manifest.open() as file:
        return list(csv.DictReader(file))


def check_manifests() -> dict[str, list[str]]:
    """The committed manifests match ``bench_split`` and no validation case pretrained the bundle."""
    split = bench_split()
    pretrain = pretraining_cases()
    with PRETRAIN_MANIFEST.open() as file:
        in_pretrain_csv = {row["case_id"] for row in csv.DictReader(file)}
    if in_pretrain_csv != pretrain:
        raise SystemExit(f"{PRETRAIN_MANIFEST} and {BUNDLE}/configs/metadata.json disagree on the pretraining cases")
    for name, rows in manifest_rows(split).items():
        path = MANIFESTS / f"{name}.csv"
        if not path.is_file():
            raise SystemExit(f"{path} is missing. Fix: .venv/bin/python benchmarks/make_manifests.py")
        found = [(r["case_id"], r["split"]) for r in read_rows(path)]
        if found != [(r[0], r[3]) for r in rows]:
            raise SystemExit(f"{path} differs from the benchmark split. Fix: .venv/bin/python benchmarks/make_manifests.py")
        leaked = sorted({c for c, s in found if s == "val"} & pretrain)
        if leaked:
            raise SystemExit(f"{path}: validation cases {leaked} pretrained the demo bundle")
        overlap = {c for c, s in found if s == "train"} & {c for c, s in found if s == "val"}
        if overlap:
            raise SystemExit(f"{path}: cases {sorted(overlap)} are in both train and val")
    return split


def subset_manifest(source: Path, out: Path, n_train: int | None = None, n_val: int | None = None,
                    classes: dict[str, str] = CLASSES) -> Path:
    """A smaller copy of a manifest (first n train and n val rows), for --quick runs."""
    rows = read_rows(source)
    train = [r for r in rows if r["split"] == "train"][:n_train]
    val = [r for r in rows if r["split"] == "val"][:n_val]
    base = source.parent
    return write_manifest(out, [(r["case_id"], base / r["image"], base / r["label"] if r["label"] else None,
                                 r["split"], r["site"]) for r in train + val], classes)


# --------------------------------------------------------------------------------------------
# Run configs
# --------------------------------------------------------------------------------------------
def network_def() -> dict:
    """The demo bundle's network definition: the same network, for training from random weights."""
    return json.loads((BUNDLE / "configs" / "inference.json").read_text())["network_def"]


def run_config(manifest: Path, init: str, epochs: int, device: str, *, freeze: list | None = None,
               optim: dict | None = None, val_every: int | None = None, seed: int = 0,
               max_steps: int | None = None, batch_size: int = 2, data: dict | None = None) -> dict:
    """A medft run config (as a dict). ``init``: ``finetune`` (the demo bundle) or ``scratch``.

    Early stopping is off: every run trains for its fixed budget of epochs. ``val_every``
    defaults to ``epochs`` (validate once, after the last epoch), so ``best.pt`` is the final
    model and the evaluation is not biased by picking a checkpoint on the validation set.
    """
    model = {"bundle": str(BUNDLE)} if init == "finetune" else {"network_def": network_def()}
    return {
        "seed": seed,
        "model": model,
        "data": {"manifest": str(manifest), "sampling": "whole", "spatial_size": SPATIAL_SIZE,
                 "augmentation": "standard", **(data or {})},
        "freeze": freeze or [],
        "optim": optim or (FINETUNE_OPTIM if init == "finetune" else SCRATCH_OPTIM),
        "train": {"epochs": epochs, "batch_size": batch_size, "val_every": val_every or epochs, "device": device,
                  "max_steps_per_epoch": max_steps},
        "early_stopping": {"enabled": False},
    }


def gradual_freeze(epochs: int) -> list[dict]:
    """configs/demo.yaml's gradual unfreezing (head only, then the decoder, then all) scaled to
    ``epochs``: at 40 epochs exactly the demo's stages at epochs 0, 2 and 4."""
    second = max(1, round(epochs * 0.05))
    third = max(second + 1, round(epochs * 0.1))
    return [{"epoch": 0, "preset": "all_but_head"}, {"epoch": second, "preset": "encoder"}, {"epoch": third, "preset": "none"}]


# --------------------------------------------------------------------------------------------
# Workers: one process per measured job
# --------------------------------------------------------------------------------------------
def busy_cpu_seconds() -> float | None:
    """CPU-seconds the whole machine has spent busy since boot (``/proc/stat``), or None."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_seconds: float = 120, window: float = 5) -> bool:
    """Wait (at most ``max_seconds``) for a ``window`` of seconds in which the machine is almost idle."""
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        before = busy_cpu_seconds()
        time.sleep(window)
        after = busy_cpu_seconds()
        if before is None or after is None or (after - before) / (window * (os.cpu_count() or 1)) < DISTURBED_SHARE:
            return True
    return False


def run_isolated(script: str | Path, spec: dict, workdir: Path, device: str, name: str) -> dict:
    """Run ``script --worker SPEC`` in a fresh process and return the JSON it wrote.

    Its output goes to ``workdir/logs/<name>.log``; a failure raises with the end of that log.
    On CPU the child sees no GPU (``CUDA_VISIBLE_DEVICES=``), so evaluation runs on CPU too.
    ``result["interference"]``: the CPU-seconds the machine spent busy while the child ran, less
    the child's own (``wait4``), as a share of the machine's capacity: other processes competing
    for the cores, which makes timings invalid.
    """
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    token = f"{name}-{uuid.uuid4().hex[:8]}"
    spec_path, result_path = logs / f"{token}.spec.json", logs / f"{token}.result.json"
    spec_path.write_text(json.dumps({**spec, "result": str(result_path), "device": device}, indent=1))
    env = dict(os.environ, PYTHONUNBUFFERED="1", MEDFT_BENCH_WORKER="1")
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    started, busy_before = time.perf_counter(), busy_cpu_seconds()
    with (logs / f"{name}.log").open("w") as log:
        process = subprocess.Popen([sys.executable, str(script), "--worker", str(spec_path)], cwd=REPO, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall, busy_after = time.perf_counter() - started, busy_cpu_seconds()
    if process.returncode != 0 or not result_path.is_file():
        tail = "\n".join((logs / f"{name}.log").read_text().splitlines()[-30:])
        raise SystemExit(f"worker {name} failed (exit {process.returncode}); log {logs / f'{name}.log'}:\n{tail}")
    result = json.loads(result_path.read_text())
    result["process_seconds"] = round(wall, 2)
    own = usage.ru_utime + usage.ru_stime
    interference = {"own_cpu_seconds": round(own, 2), "foreign_cpu_seconds": None, "foreign_share": None}
    if busy_before is not None and busy_after is not None:
        foreign = max(0.0, busy_after - busy_before - own)
        interference.update(foreign_cpu_seconds=round(foreign, 2),
                            foreign_share=round(foreign / (wall * (os.cpu_count() or 1)), 4))
    result["interference"] = interference
    return result


def run_step_benchmark(name: str, description: str, script: str, what: str, default_steps: int):
    """The command line and the run of a step-time benchmark: its options (``--steps``,
    ``--rounds`` beside the common ones), then its ``step_times`` task in an isolated worker.
    Returns the Benchmark, the task's spec and its result."""
    p = parser(name, description)
    p.add_argument("--steps", type=int, default=None,
                   help=f"timed steps per {what} and round (default {default_steps}; quick: 1)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3; quick: 1)")
    args = p.parse_args()
    bench = Benchmark(name, args)
    spec = {"task": "step_times", "steps": args.steps or (1 if args.quick else default_steps),
            "rounds": args.rounds or (1 if args.quick else 3)}
    return bench, spec, bench.isolated(script, spec, "step_times", timing=True)


def training_step(device, optimizer, amp: bool, forward, loss) -> float:
    """Seconds of one training step: ``forward()`` under autocast when ``amp``, ``loss(output)``
    outside it, backward, optimizer step (CUDA synchronised at both ends)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.autocast(device.type, enabled=amp):
        output = forward()
    loss(output).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def step_ms(steps_of: dict, spec: dict) -> dict:
    """Milliseconds of each step function in ``steps_of``, the functions alternating in
    ``spec["rounds"]`` rounds of ``spec["steps"]`` timed steps, after 2 warm-up steps at each switch:
    ``{key: {"median": of all its steps, "rounds": [median of each round]}}``. Comparing keys round
    by round cancels what drifts between rounds (this machine's speed does, by 20-50%)."""
    import statistics

    times = {key: [] for key in steps_of}
    for _ in range(spec["rounds"]):
        for key, step in steps_of.items():
            for _ in range(2):
                step()
            times[key].append([step() for _ in range(spec["steps"])])
    return {key: {"median": 1000 * statistics.median(t for r in rounds for t in r),
                  "rounds": [1000 * statistics.median(r) for r in rounds]} for key, rounds in times.items()}


def ratio_range(numerators: list[float], denominators: list[float]) -> str:
    """The smallest and the largest of the round-by-round ratios, as 'low-high'."""
    ratios = [n / d for n, d in zip(numerators, denominators, strict=True)]
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def worker_main(tasks: dict) -> None:
    """Entry point of a worker process: run ``tasks[spec['task']](spec)`` and write its result."""
    spec = json.loads(Path(sys.argv[sys.argv.index("--worker") + 1]).read_text())
    result = tasks[spec["task"]](spec)
    Path(spec["result"]).write_text(json.dumps(result, indent=1, default=float))


def is_worker() -> bool:
    return "--worker" in sys.argv


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------
def _status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark (since start or the last reset), MiB."""
    value = _status_mb("VmHWM")
    if value is None:  # not Linux: ru_maxrss (kB on Linux, bytes on macOS), never reset
        import resource

        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    return round(value, 1)


def rss_mb() -> float | None:
    return _status_mb("VmRSS")


def reset_peak_memory() -> bool:
    """Restart the high-water marks (RSS, and CUDA's allocator); False when RSS cannot be reset."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cuda_peak_mb() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None


# --------------------------------------------------------------------------------------------
# The training worker shared by the benchmarks
# --------------------------------------------------------------------------------------------
def timed_recipe_class():
    """FineTuneRecipe that records, per epoch, the seconds of training steps and of validation,
    and the wall time since ``train()`` began at the end of each epoch (after its checkpoints).

    It only wraps methods: the steps, the data and the schedule are medft's own.
    """
    from medft.train.recipe import FineTuneRecipe

    class TimedRecipe(FineTuneRecipe):
        def setup(self):
            super().setup()
            self.timing = {"train_seconds": [], "val_seconds": [], "epoch_end_wall": [], "checkpoint_seconds": 0.0}

        def train(self):
            self._train_started = time.perf_counter()
            return super().train()

        def _train_epoch(self, epoch, frozen):
            started = time.perf_counter()
            loss = super()._train_epoch(epoch, frozen)
            self._sync()
            self.timing["train_seconds"].append(time.perf_counter() - started)
            self.timing["val_seconds"].append(0.0)
            return loss

        def _validate(self):
            started = time.perf_counter()
            result = super()._validate()
            self.timing["val_seconds"][-1] = time.perf_counter() - started
            return result

        def _save_epoch(self, epochs_done, improved):  # the last thing of an epoch
            started = time.perf_counter()
            super()._save_epoch(epochs_done, improved)
            self.timing["checkpoint_seconds"] += time.perf_counter() - started
            self.timing["epoch_end_wall"].append(time.perf_counter() - self._train_started)

        def _sync(self):
            import torch

            if self.device.type == "cuda":
                torch.cuda.synchronize()

    return TimedRecipe


def fresh_folder(path: str | Path) -> Path:
    """A benchmark's output folder, emptied: a rerun replaces what the previous run of it wrote
    (``medft evaluate`` writes only into a new or empty folder)."""
    import shutil

    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    return path


def train_and_evaluate(spec: dict, recipe_class=None) -> dict:
    """Worker task: train ``spec['config']`` into ``spec['run_dir']`` and evaluate it on
    ``spec['eval_manifest']`` (into ``eval_dir``; also with test-time flips into ``eval_tta_dir`` when given),
    from the run's ``eval_checkpoint`` (best, the default, or last). ``recipe_class``: a subclass
    of ``timed_recipe_class()`` that does more while it trains (default: that class)."""
    import torch

    from medft.config import validate_config

    started = time.perf_counter()
    run_dir = fresh_folder(spec["run_dir"])
    config = validate_config(spec["config"], source=spec.get("name", "benchmark config"))
    recipe = (recipe_class or timed_recipe_class())(config, run_dir)
    try:
        t0 = time.perf_counter()
        recipe.setup()
        setup_seconds = time.perf_counter() - t0
        setup_peak = peak_rss_mb()
        reset_ok = reset_peak_memory()
        t0 = time.perf_counter()
        summary = recipe.train()
        train_wall = time.perf_counter() - t0
        memory = {"setup_peak_rss_mb": setup_peak, "train_peak_rss_mb": peak_rss_mb() if reset_ok else None,
                  "cuda_peak_mb": cuda_peak_mb()}
        memory["process_peak_rss_mb"] = max(setup_peak, memory["train_peak_rss_mb"] or 0)
        timing = recipe.timing
    finally:
        recipe.cleanup()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    result = {
        "name": spec.get("name"), "run_dir": str(run_dir), "device": str(recipe.device), "threads": torch.get_num_threads(),
        "summary": summary.model_dump(), "setup_seconds": setup_seconds, "train_wall_seconds": train_wall,
        "steps_per_epoch": recipe.steps_per_epoch, "timing": timing, "memory": memory, "metrics": metrics,
    }
    if spec.get("eval_manifest"):
        from medft.evaluate.run import evaluate

        t0 = time.perf_counter()
        checkpoint = spec.get("eval_checkpoint", "best")
        result["eval"] = evaluate(run_dir, spec["eval_manifest"], fresh_folder(spec["eval_dir"]),
                                  split=spec.get("eval_split"), checkpoint=checkpoint).summary
        result["eval_seconds"] = time.perf_counter() - t0
        if spec.get("eval_tta_dir"):  # the same model again, with test-time flips (medft evaluate --tta)
            t0 = time.perf_counter()
            result["eval_tta"] = evaluate(run_dir, spec["eval_manifest"], fresh_folder(spec["eval_tta_dir"]),
                                          split=spec.get("eval_split"), tta=True, checkpoint=checkpoint).summary
            result["eval_tta_seconds"] = time.perf_counter() - t0
    result["worker_seconds"] = time.perf_counter() - started
    return result


def evaluate_model(spec: dict) -> dict:
    """Worker task: ``medft.evaluate.run.evaluate`` of a run or bundle folder."""
    from medft.evaluate.run import evaluate

    t0 = time.perf_counter()
    summary = evaluate(spec["model"], spec["manifest"], fresh_folder(spec["eval_dir"]), split=spec.get("split")).summary
    return {"name": spec.get("name"), "eval_seconds": time.perf_counter() - t0, "eval": summary}


WORKER_TASKS = {"train_and_evaluate": train_and_evaluate, "evaluate_model": evaluate_model}


# --------------------------------------------------------------------------------------------
# Reading results
# --------------------------------------------------------------------------------------------
def dice_of(evaluation: dict, cls: str) -> dict:
    """{"mean", "ci95"} of the Dice of one class (or ``mean_foreground``) in a summary.json."""
    value = evaluation["overall"][cls]["dice"]
    return {"mean": value["mean"], "ci95": value["ci95"], "n": value["n"], "n_nan": value["n_nan"]}


def fmt_dice(value: dict | None) -> str:
    if value is None or value.get("mean") is None:
        return "n/a"
    lo, hi = value.get("ci95") or (None, None)
    interval = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
    return f"{value['mean']:.3f}{interval}"


def fmt_difference(difference: dict) -> str:
    """A paired difference (``paired_difference``'s per-class entry) as ``+0.0012 [-0.0003, +0.0027]``."""
    lo, hi = difference["ci95"]
    return f"{difference['mean_diff']:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def fmt(value, digits: int = 2, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}{suffix}"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The command line every benchmark shares, the machine, the results file
# --------------------------------------------------------------------------------------------
def parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"benchmarks/{name}.py", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a tiny version (about a minute) that checks the script works; its numbers mean "
                                                        "nothing")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / name, help=f"output folder (default runs/bench/{name})")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when present, else CPU")
    p.add_argument("--retries", type=int, default=2,
                   help="run a timing job again, up to this many times, when other processes disturbed it (default 2)")
    return p


def resolve_device(name: str) -> str:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return "cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu"


def machine(device: str) -> dict:
    import monai
    import torch

    import medft

    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu_model = platform.processor() or "unknown"
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gb = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "unknown", None
    info = {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": mem_gb,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "medft": medft.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "os": platform.platform(),
    }
    return info


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


class Benchmark:
    """Bookkeeping of one benchmark run: machine, command, load, duration, results.json."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name, self.args = name, args
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(args.device)
        self.retries = 0 if args.quick else args.retries
        self.jobs: list[dict] = []
        self.started = time.perf_counter()
        self.record = {
            "benchmark": name,
            "mode": "quick" if args.quick else "full",
            "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", f"benchmarks/{name}.py", *sys.argv[1:]]),
            "machine": machine(self.device),
            "load_average_at_start": load_average(),
        }
        print(f"# {name} ({self.record['mode']}), device {self.device}, load average {self.record['load_average_at_start']}",
              flush=True)
        load, cores = (self.record["load_average_at_start"] or [0])[0], os.cpu_count() or 1
        if load > 0.5 * cores:
            print(f"  warning: load average {load} on {cores} cores: other work is running, timings will not be valid",
                  flush=True)

    def isolated(self, script: str | Path, spec: dict, name: str, timing: bool = False) -> dict:
        """One job in its own process. A ``timing`` job that other processes disturbed (they used
        more than ``DISTURBED_SHARE`` of the CPUs while it ran) is run again, up to ``retries``
        times; the least disturbed attempt is kept and flagged when still disturbed."""
        attempts = []
        for attempt in range(1 + (self.retries if timing else 0)):
            print(f"  running {name} ...", end=" ", flush=True)
            result = run_isolated(script, spec, self.out, self.device, name)
            share = result["interference"]["foreign_share"]
            disturbed = share is not None and share > DISTURBED_SHARE
            result["disturbed"] = disturbed
            print(f"{result['process_seconds']:.0f} s" + (f" (disturbed: other processes used {share:.0%} of the CPUs)"
                                                          if disturbed else ""), flush=True)
            attempts.append(result)
            if not disturbed or not timing or attempt == self.retries:
                break
            wait_for_quiet()
        best = min(attempts, key=lambda r: r["interference"]["foreign_share"] or 0)
        best["attempts"] = len(attempts)
        self.jobs.append({"name": name, "timing": timing, "attempts": len(attempts), "disturbed": best["disturbed"],
                          **best["interference"], "process_seconds": best["process_seconds"]})
        return best

    def finish(self, results: dict, markdown: str) -> Path:
        disturbed = [job["name"] for job in self.jobs if job["disturbed"]]
        markdown += (f"\n\nOther processes used more than {DISTURBED_SHARE:.0%} of the CPUs during: {', '.join(disturbed)}"
                     " (their timings are not valid)"
                     if disturbed else f"\n\nNo job was disturbed by other processes (each under {DISTURBED_SHARE:.0%} of the CPUs).")
        self.record.update(results=results, markdown=markdown, load_average_at_end=load_average(), jobs=self.jobs,
                           disturbed_jobs=disturbed, duration_seconds=round(time.perf_counter() - self.started, 1))
        path = self.out / "results.json"
        path.write_text(json.dumps(self.record, indent=1, default=float) + "\n")
        (self.out / "results.md").write_text(markdown + "\n")
        print()
        print(markdown)
        print(f"\n{self.name}: {self.record['duration_seconds']:.0f} s, load average at end "
              f"{self.record['load_average_at_end']}; {path}")
        return path
