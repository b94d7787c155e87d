"""Two `medft tune` workers on one SQLite study against one worker.

Writes a small search config (the shipped demo bundle fine-tuned on cases of the embedded
sample, a few epochs a trial, no pruning so that every setup does the same work), then runs:
- one worker, one torch thread: ``medft tune CONFIG --trials N``;
- two workers at once on the same ``--out`` (one ``study.db``), one torch thread each;
- (not with --quick) one worker with as many torch threads as the two workers together.
The trials of a study are start-up trials of the sampler (random, drawn from (seed, trial
number)), so trial n has the same values in every setup and, training being deterministic,
the same validation Dice: the table checks it. It reports the wall time of each setup (from
launching the workers until the last one exits, process start included), the trials the study
holds, how many each worker ran, and the speed-up over one single-threaded worker.

Run: ``.venv/bin/python benchmarks/tune_workers.py [--quick] [--trials 8] [--epochs 3]``
(--quick: 4 trials of 1 epoch, 2 steps each; about a minute on 2 cores).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data_manifests" / "hippocampus_sample.csv"
BUNDLE = REPO / "bundles" / "hippocampus_demo"
N_TRAIN, N_VAL = 8, 2


def write_config(folder: Path, epochs: int, steps: int | None, trials: int) -> Path:
    """A search config on a few cases of the embedded sample (its train and val splits)."""
    lines = SAMPLE.read_text().splitlines()
    header, rows = lines[0], [row.split(",") for row in lines[1:] if row]
    split = header.split(",").index("split")
    image, label = header.split(",").index("image"), header.split(",").index("label")
    chosen = [r for r in rows if r[split] == "train"][:N_TRAIN] + [r for r in rows if r[split] == "val"][:N_VAL]
    for row in chosen:  # the manifest moves: make its paths absolute
        row[image], row[label] = (str((SAMPLE.parent / row[i]).resolve()) for i in (image, label))
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join([header, *(",".join(r) for r in chosen)]) + "\n")
    shutil.copyfile(SAMPLE.with_name(SAMPLE.stem + ".classes.json"), folder / "manifest.classes.json")
    config = {
        "seed": 0,
        "model": {"bundle": str(BUNDLE)},
        "data": {"manifest": str(manifest), "spatial_size": [48, 64, 48], "augmentation": "light"},
        "optim": {"lr": 1e-3, "head_lr": 1e-2},
        "train": {"epochs": epochs, "batch_size": 2, "max_steps_per_epoch": steps},
        "search": {
            "params": {
                "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                "freeze.preset": {"type": "categorical", "choices": ["none", "all_but_head", "encoder"]},
                "freeze.unfreeze_epoch": {"type": "int", "low": 0, "high": max(epochs - 1, 1)},
            },
            "pruner": "none",  # the same work in every setup
            "n_startup_trials": trials,  # random start-up trials: trial n has the same values everywhere
            "sampler_seed": 0,
        },
    }
    path = folder / "tune_workers.yaml"
    path.write_text("# Run: medft tune tune_workers.yaml --trials N (written by benchmarks/tune_workers.py)\n"
                    + yaml.safe_dump(config, sort_keys=False))
    return path


def run_setup(config: Path, out: Path, trials: int, workers: int, threads: int) -> dict:
    if out.exists():
        shutil.rmtree(out)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "medft", "tune", str(config), "--trials", str(trials), "--out", str(out),
               "--study", "bench"]
    out.mkdir(parents=True)
    started = time.perf_counter()
    processes = []
    for worker in range(workers):
        log = (out / f"worker_{worker}.log").open("w")
        processes.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO), log))
        time.sleep(0.5 if worker == 0 else 0)  # the first creates the study file; the second joins it
    codes = [process.wait() for process, _ in processes]
    wall = time.perf_counter() - started
    for _, log in processes:
        log.close()
    if any(codes):
        tail = (out / "worker_0.log").read_text()[-2000:]
        raise SystemExit(f"a worker failed (exit codes {codes}); see {out}/worker_*.log:\n{tail}")
    study = optuna.load_study(study_name="bench", storage=f"sqlite:///{out / 'study.db'}")
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    span = (max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)).total_seconds()
    return {"wall": wall, "span": span, "trials": {t.number: t.value for t in finished},
            "per_worker": sorted(Counter(t.user_attrs["worker"] for t in finished).values(), reverse=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 trials of 1 epoch, 2 steps each")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="cap on steps per epoch")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_tune_workers")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.epochs, args.steps = 4, 1, 2
    config = write_config(args.out, args.epochs, args.steps, args.trials)
    setups = [("1 worker x 1 thread", 1, 1), ("2 workers x 1 thread, one SQLite study", 2, 1)]
    if not args.quick:
        setups.append(("1 worker x 2 threads", 1, 2))
    results = []
    for name, workers, threads in setups:
        print(f"running: {name} ...", file=sys.stderr, flush=True)
        results.append((name, run_setup(config, args.out / f"{workers}w{threads}t", args.trials, workers, threads)))

    reference = results[0][1]
    print(f"# `medft tune` workers on one SQLite study: {args.trials} trials of {args.epochs} epoch(s)"
          f"{f', {args.steps} steps each' if args.steps else ''}, {N_TRAIN} training and {N_VAL} validation cases\n")
    print(f"Machine: {platform.platform()}, {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
          f"Python {platform.python_version()}, optuna {optuna.__version__}.\n")
    print("| setup | wall (s) | first trial start to last trial end (s) | trials in the study | trials per worker | "
          "trials / min (wall) | speed-up (wall) | speed-up (trials) | same trials and Dice as 1 worker |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---|")
    for name, result in results:
        same = all(_close(result["trials"].get(n), v) for n, v in reference["trials"].items())
        print(f"| {name} | {result['wall']:.1f} | {result['span']:.1f} | {len(result['trials'])} | "
              f"{' + '.join(map(str, result['per_worker']))} | {60 * len(result['trials']) / result['wall']:.2f} | "
              f"{reference['wall'] / result['wall']:.2f} | {reference['span'] / result['span']:.2f} | {'yes' if same else 'no'} |")
    print("\nWall: from launching the workers until the last exits, so it includes starting each process (Python,\n"
          "torch and MONAI imports, several seconds) and writing the results; the trial span leaves those out.\n"
          "Tiny trials (--quick) are dominated by those fixed costs; a real search's trials take minutes.")


def _close(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and abs(a - b) <= 1e-6


if __name__ == "__main__":
    main()
