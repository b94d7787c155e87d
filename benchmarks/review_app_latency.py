"""How long the review app takes to show a case after it is chosen, and to redraw its viewer after a slider move.

First picture: what the app does when a reviewer chooses a case (``apps/review.py``, ``draw_viewer``):
``medft.review.volumes.load_case`` (read image, ground truth and prediction, to RAS, prepare the
SliceRenderer; once per case and server, then cached by the app), the first window (CT soft
tissue for a CT, else the case's percentile window), the axial slice with the most error, the two
"Most error" / "Most label" slices of the buttons, then the ground truth, prediction and difference
panels rendered, framed with orientation letters and encoded as PNG: the time until the last of them.
Slider move: what the viewer fragment does per move: the buttons' two slices, then the three panels.

Without an argument it builds a synthetic CT-like case (``review_slice_latency.phantom``: 512 x 512 x
DEPTH voxels, ``--depth``, default 300; ``.nii`` files, ``--gzip`` for ``.nii.gz``) in a temporary
evaluation folder; with EVAL_DIR it times that evaluation's cases. Each case is opened ``--opens``
times (each as a server opening it first, the files in the page cache); slider moves jump across the
volume, ``--moves`` per plane. Prints markdown tables with the median and 95th percentile in ms.

Run: ``.venv/bin/python benchmarks/review_app_latency.py [EVAL_DIR] [--depth 300] [--gzip] [--moves 20] [--opens 3]``
(about a minute).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from review_slice_latency import DEPTH


def synthetic_eval(folder: Path, depth: int = DEPTH, gzip: bool = False) -> Path:
    import nibabel as nib
    from review_slice_latency import SPACING, phantom

    import medft
    from medft.evaluate.summary import write_per_case
    from medft.formats.evaluation import CaseRecord, Evaluation, ModelInfo, write_evaluation

    image, truth, pred = phantom(depth=depth)
    affine = np.diag([*SPACING, 1.0])
    (folder / "predictions").mkdir(parents=True)
    suffix = ".nii.gz" if gzip else ".nii"
    nib.save(nib.Nifti1Image(image, affine), folder / f"ct{suffix}")
    nib.save(nib.Nifti1Image(truth, affine), folder / f"ct_seg{suffix}")
    nib.save(nib.Nifti1Image(pred, affine), folder / "predictions" / f"ct{suffix}")
    n = int(max(truth.max(), pred.max())) + 1
    names = ["background"] + [f"organ {c}" for c in range(1, n)]
    rows = [{"case_id": "ct", "site": "", "class_index": c, "class_name": name, "dice": 0.8, "sensitivity": 0.8,
             "specificity": 0.99, "hd95": float("nan"), "nsd": float("nan"), "tp": 0, "fp": 0, "fn": 0, "tn": 0}
            for c, name in enumerate(names)]
    write_per_case(folder / "per_case.csv", rows)
    case = CaseRecord(case_id="ct", image=[str(folder / f"ct{suffix}")], label=str(folder / f"ct_seg{suffix}"),
                      prediction=f"predictions/ct{suffix}")
    write_evaluation(folder, Evaluation(
        evaluation_id=uuid.uuid4().hex, model=ModelInfo(path="synthetic", kind="run", name="synthetic"),
        manifest="synthetic", class_names=names, created=datetime.now(timezone.utc).isoformat(),
        medft_version=medft.__version__, cases=[case]))
    return folder


def percentiles(times: list[float]) -> str:
    ms = np.array(times) * 1000
    return f"{np.median(ms):.1f} | {np.percentile(ms, 95):.1f}"


def choose_case(table, case_id: str) -> tuple[object, dict[str, float], list[bytes]]:
    """What the app does from choosing a case to its first picture: (case, seconds per step, the PNGs)."""
    from medft.review import app_support as support
    from medft.review.volumes import load_case

    steps = {}
    start = time.perf_counter()
    case = load_case(table, case_id)
    opened = time.perf_counter()
    steps["open (load_case)"] = opened - start
    window = support.window_for(support.first_window_choice(case.looks_like_ct), case.auto_window)
    plane = "axial"
    has_both = "difference" in case.views
    index = case.best_slice(plane, "error" if has_both else "label")
    case.best_slice(plane, "error")  # the buttons' slices
    case.best_slice(plane, "label")
    chosen = time.perf_counter()
    steps["best slices: the shown one, the buttons' (best_slice)"] = chosen - opened
    pngs = [support.panel_png(case, plane, index, view, window) for view in support.viewer_views(case.views)]
    done = time.perf_counter()
    steps["panels: render + frame + PNG"] = done - chosen
    steps["first picture"] = done - start
    return case, steps, pngs


def slider_move(case, plane: str, index: int, window: tuple[float, float]) -> list[bytes]:
    """One rerun of the viewer fragment after a slider move (the case comes from the app's cache)."""
    from medft.review import app_support as support

    case.best_slice(plane, "error")
    case.best_slice(plane, "label")
    return [support.panel_png(case, plane, index, view, window) for view in support.viewer_views(case.views)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dir", nargs="?", type=Path, help="an evaluation folder (default: a synthetic CT case)")
    parser.add_argument("--depth", type=int, default=DEPTH,
                        help=f"axial slices of the synthetic case, 512 x 512 x DEPTH (default {DEPTH})")
    parser.add_argument("--gzip", action="store_true",
                        help="write the synthetic case as .nii.gz, as medft evaluate writes predictions (default .nii)")
    parser.add_argument("--moves", type=int, default=20, help="slider moves timed per case and plane")
    parser.add_argument("--opens", type=int, default=3, help="times each case is opened (first picture)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    import medft.data.loading  # noqa: F401  (the app imports the image stack while the reviewer logs in)
    from medft.review import app_support as support
    from medft.review.cases import CaseTable
    from medft.slices import PLANES

    with tempfile.TemporaryDirectory() as tmp:
        eval_dir = args.eval_dir or synthetic_eval(Path(tmp) / "eval", args.depth, args.gzip)
        table = CaseTable.from_eval_dir(eval_dir)
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
              f"{platform.python_version()}, numpy {np.__version__}, torch threads 1\n")
        first_rows, move_rows = [], []
        for entry in table.entries:
            if not entry.viewable:
                continue
            openings = []
            for _ in range(max(1, args.opens)):
                case = None  # the previous opening's arrays go first, as a server's cache evicting them
                case, steps, _ = choose_case(table, entry.case_id)
                openings.append(steps)
            shape = " x ".join(map(str, case.shape))
            for step in openings[0]:
                ms = [o[step] * 1000 for o in openings]
                first_rows.append(f"| {entry.case_id} | {shape} | {step} | {np.median(ms):.0f} | {max(ms):.0f} |")
            window = support.window_for(support.first_window_choice(case.looks_like_ct), case.auto_window)
            for plane in PLANES:
                count = case.slice_count(plane)
                times = []
                for index in np.linspace(0, count - 1, args.moves).astype(int):
                    start = time.perf_counter()
                    slider_move(case, plane, int(index), window)
                    times.append(time.perf_counter() - start)
                move_rows.append(f"| {entry.case_id} | {shape} | {plane} | {percentiles(times)} |")
        print(f"First picture after choosing a case ({args.opens} openings; ms):\n")
        print("| case | shape | step | median | max |")
        print("| --- | --- | --- | ---: | ---: |")
        print("\n".join(first_rows))
        print(f"\nSlice change: one slider move, the three panels ({args.moves} moves per plane, jumping across the "
              "volume; ms):\n")
        print("| case | shape | plane | median | p95 |")
        print("| --- | --- | --- | ---: | ---: |")
        print("\n".join(move_rows))
    return 0


if __name__ == "__main__":
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    sys.exit(main())
