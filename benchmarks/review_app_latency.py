"""How long the review app takes to open a case and to redraw its viewer after a slider move.

Opening: ``medft.review.volumes.load_case`` (read image, ground truth and prediction through
medft's loaders, to RAS, prepare the SliceRenderer), once per case and server (then cached).
Slider move: what the viewer fragment does per move: the ground truth, prediction and
difference panels rendered, framed with orientation letters and encoded as PNG.

Without an argument it builds a synthetic CT-like case (``review_slice_latency.phantom``:
512 x 512 x 200 voxels) in a temporary evaluation folder; with EVAL_DIR it times that
evaluation's cases. Prints a markdown table with median and 95th percentile in ms.

Run: ``.venv/bin/python benchmarks/review_app_latency.py [EVAL_DIR] [--moves 20]`` (about a minute).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def synthetic_eval(folder: Path) -> Path:
    import nibabel as nib
    from review_slice_latency import SPACING, phantom

    from medft.evaluate.summary import write_per_case

    image, truth, pred = phantom()
    affine = np.diag([*SPACING, 1.0])
    (folder / "predictions").mkdir(parents=True)
    nib.save(nib.Nifti1Image(image, affine), folder / "ct.nii")
    nib.save(nib.Nifti1Image(truth, affine), folder / "ct_seg.nii")
    nib.save(nib.Nifti1Image(pred, affine), folder / "predictions" / "ct.nii")
    n = int(max(truth.max(), pred.max())) + 1
    names = ["background"] + [f"organ {c}" for c in range(1, n)]
    rows = [{"case_id": "ct", "site": "", "class_index": c, "class_name": name, "dice": 0.8, "sensitivity": 0.8,
             "specificity": 0.99, "hd95": float("nan"), "nsd": float("nan"), "tp": 0, "fp": 0, "fn": 0, "tn": 0}
            for c, name in enumerate(names)]
    write_per_case(folder / "per_case.csv", rows)
    case = {"case_id": "ct", "site": None, "image": [str(folder / "ct.nii")], "series_uid": None,
            "label": str(folder / "ct_seg.nii"), "prediction": "predictions/ct.nii", "status": "ok", "message": None}
    (folder / "evaluation.json").write_text(json.dumps({"class_names": names, "cases": [case]}))
    return folder


def percentiles(times: list[float]) -> str:
    ms = np.array(times) * 1000
    return f"{np.median(ms):.1f} | {np.percentile(ms, 95):.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dir", nargs="?", type=Path, help="an evaluation folder (default: a synthetic CT case)")
    parser.add_argument("--moves", type=int, default=20, help="slider moves timed per case and plane")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from medft.review.app_support import frame_with_letters
    from medft.review.cases import CaseTable
    from medft.review.volumes import load_case
    from medft.slices import PLANES, orientation_letters, to_png

    with tempfile.TemporaryDirectory() as tmp:
        eval_dir = args.eval_dir or synthetic_eval(Path(tmp) / "eval")
        table = CaseTable.from_eval_dir(eval_dir)
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
              f"{platform.python_version()}\n")
        print("| case | shape | open (ms) | plane | slider move: median (ms) | p95 (ms) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for entry in table.entries:
            if not entry.viewable:
                continue
            start = time.perf_counter()
            case = load_case(table, entry.case_id)
            opened = (time.perf_counter() - start) * 1000
            views = [v for v in ("truth", "prediction", "difference") if v in case.views]
            for plane in PLANES:
                count = case.slice_count(plane)
                times = []
                for index in np.linspace(0, count - 1, args.moves).astype(int):
                    start = time.perf_counter()
                    for view in views:
                        rgb = case.render(plane, int(index), view, case.auto_window)
                        to_png(frame_with_letters(rgb, orientation_letters(plane)))
                    times.append(time.perf_counter() - start)
                shape = " x ".join(map(str, case.shape))
                print(f"| {entry.case_id} | {shape} | {opened:.0f} | {plane} | {percentiles(times)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
