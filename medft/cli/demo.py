"""run the whole loop on the embedded sample data

Fine-tunes the shipped demo bundle (bundles/hippocampus_demo, whole hippocampus) to the
anterior/posterior task on the embedded sample with configs/demo.yaml, evaluates it on the
sample's test split and exports it: DIR/train is the run folder, DIR/eval the evaluation
and DIR/bundle the exported bundle.

example:
  medft demo --out runs/demo
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from medft.cli import check_data, evaluate, export, train
from medft.cli.common import REPO_ROOT, add_command, count
from medft.errors import MedftError

SAMPLE_MANIFEST = REPO_ROOT / "data_manifests" / "hippocampus_sample.csv"
CONFIG = REPO_ROOT / "configs" / "demo.yaml"
MARKER = ".medft-demo"
PARTS = ("train", "eval", "bundle")


def add_to(commands) -> None:
    command = add_command(commands, "demo", __doc__, run)
    command.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    command.add_argument("--epochs", type=count, default=None, help="train fewer epochs than configs/demo.yaml, for a quick look")


def run(out: Path = Path("runs/demo"), epochs: int | None = None) -> int:
    """The commands one after the other, each printed as it would be typed."""
    if not CONFIG.exists():
        raise MedftError(f"{CONFIG} is not here: the demo runs from a clone of the medft repository")
    manifest = os.path.relpath(SAMPLE_MANIFEST)
    _clear_demo_folder(out)
    print(f"== medft check-data {manifest}")
    if check_data.run(SAMPLE_MANIFEST):
        return 1
    print(f"== medft train {os.path.relpath(CONFIG)} --out {out / 'train'}")
    status = train.run(CONFIG, [f"train.epochs={epochs}"] if epochs else [], out=out / "train")
    if status:
        return status
    print(f"== medft evaluate {out / 'train'} --manifest {manifest} --split test --out {out / 'eval'}")
    evaluate.run(out / "train", SAMPLE_MANIFEST, out / "eval", split="test")
    print(f"== medft export {out / 'train'} --out {out / 'bundle'}")
    export.run(out / "train", out / "bundle")
    print(
        f"\nDone. Run folder (metrics.jsonl, checkpoints, train.log): {out / 'train'}\n"
        f"Evaluation on the test split (per_case.csv, summary.json, predictions/): {out / 'eval'}\n"
        f"  report: {(out / 'eval' / 'report.html').resolve()}\n"
        f"Exported bundle: {out / 'bundle'}"
    )
    return 0


def _clear_demo_folder(out: Path) -> None:
    """The demo starts afresh: it removes what an earlier demo wrote in OUT, and nothing else."""
    if out.exists() and not out.is_dir():
        raise MedftError(f"{out}: is a file, not a folder. Fix: give --out a folder (new, or one an earlier demo wrote)")
    parts = [out / name for name in PARTS if (out / name).exists()]
    if parts and not (out / MARKER).exists():
        raise MedftError(
            f"{out}: holds {', '.join(p.name + '/' for p in parts)}, not marked as a demo's ({MARKER}), "
            "which the demo would replace. Fix: give another --out, or move them away"
        )
    from medft.evaluate.run import REVIEW_FILES

    reviewed = [name for name in REVIEW_FILES if (out / "eval" / name).exists()]
    if reviewed:
        raise MedftError(
            f"{out / 'eval'}: holds {' and '.join(reviewed)}, written by reviewers, which a new demo would delete. "
            f"Fix: move {out / 'eval'} aside to keep them, or give another --out"
        )
    for part in parts:
        shutil.rmtree(part)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by medft demo: its train/, eval/ and bundle/ are replaced by the next demo\n")
