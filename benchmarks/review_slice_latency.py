"""How long a slice change takes in the review app: extract, window, overlay, PNG.

Builds a synthetic CT-like case of 512 x 512 x DEPTH voxels (default 300, the hospital-size case of
issue 29; 0.7 x 0.7 x 2.5 mm, int16 HU, three
labelled structures, a prediction that is shifted and misses part of one), prepares a
``medft.slices.SliceRenderer`` once, then times slice changes in every plane and view: the
time from (plane, index, view) to PNG bytes, as the app asks for them while scrolling.
Prints a markdown table with the median and 95th percentile in milliseconds, and the machine.

Run: ``.venv/bin/python benchmarks/review_slice_latency.py [--changes 30] [--depth 300]`` (about a minute).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

from medft import slices

DEPTH = 300  # axial slices: 512 x 512 x 300 is the review app's case of issue 29
SPACING = (0.7, 0.7, 2.5)


def shape_of(depth: int = DEPTH) -> tuple[int, int, int]:
    return 512, 512, int(depth)


def phantom(seed: int = 0, depth: int = DEPTH) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image int16 HU, truth uint8, prediction uint8) of a body-like cylinder with three organs.

    The structures are placed in mm from the centre of the volume, so that any depth holds them at the
    same place relative to its middle slice (lungs above it, liver, kidney and lesion below; a depth under
    about 150 slices cuts the lungs and the liver).
    """
    shape = shape_of(depth)
    rng = np.random.default_rng(seed)
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    x = (x.astype(np.float32) - shape[0] / 2) * SPACING[0]  # mm from the centre
    y = (y.astype(np.float32) - shape[1] / 2) * SPACING[1]
    z = (z.astype(np.float32) - shape[2] / 2) * SPACING[2]

    def ellipsoid(cx, cy, cz, rx, ry, rz):
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1

    body = np.broadcast_to(((x / 160) ** 2 + (y / 120) ** 2) <= 1, shape)
    image = np.full(shape, -1000, dtype=np.int16)
    image[body] = 40
    image[ellipsoid(-70, 10, 150, 55, 60, 120)] = -820  # lungs (upper half)
    image[ellipsoid(70, 10, 150, 55, 60, 120)] = -820
    spine = np.broadcast_to(((x / 18) ** 2 + ((y + 90) / 18) ** 2) <= 1, shape)
    image[spine] = 700
    truth = np.zeros(shape, dtype=np.uint8)
    truth[ellipsoid(-60, 20, -40, 70, 55, 90)] = 1  # "liver" on the patient's right
    truth[ellipsoid(60, -50, -60, 25, 25, 45)] = 2  # "kidney" on the left
    truth[ellipsoid(-50, 30, -30, 15, 15, 20)] = 3  # "lesion" inside the liver
    image[truth == 1] = 60
    image[truth == 2] = 150
    image[truth == 3] = 90
    image += rng.normal(0, 12, shape).astype(np.int16)
    prediction = np.roll(truth, (4, -3, 2), axis=(0, 1, 2))
    prediction[(prediction == 3) & (rng.random(shape, dtype=np.float32) < 0.3)] = 1  # part of the lesion missed
    return image, truth, prediction


def timed(function, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return (time.perf_counter() - start) * 1000, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=30, help="slice changes timed per plane and view")
    parser.add_argument("--depth", type=int, default=DEPTH, help=f"axial slices of the case (default {DEPTH})")
    args = parser.parse_args()
    shape = shape_of(args.depth)

    build_ms, (image, truth, prediction) = timed(phantom, depth=args.depth)
    prepare_ms, renderer = timed(slices.SliceRenderer, image, truth, prediction, spacing=SPACING,
                                 window=slices.WINDOW_PRESETS["CT soft tissue"])
    middle = shape[2] // 2
    renderer.render("axial", middle, "truth")

    def window_change() -> None:  # slices are windowed as they are drawn: the change costs the next slice
        renderer.set_window(*slices.WINDOW_PRESETS["CT lung"])
        renderer.render("axial", middle, "truth")

    rewindow_ms, _ = timed(window_change)
    renderer.set_window(*slices.WINDOW_PRESETS["CT soft tissue"])
    percentile_ms, _ = timed(slices.percentile_window, image)
    best_ms, _ = timed(slices.best_slice, truth, prediction, "axial", "error")

    cases = [("image", "filled"), ("truth", "filled"), ("truth", "contour"), ("prediction", "filled"),
             ("difference", "filled")]
    rows = []
    for plane in slices.PLANES:
        count = renderer.slice_count(plane)
        start = renderer.best_slice(plane, by="label") - args.changes // 2
        indices = [min(max(start + k, 0), count - 1) for k in range(args.changes)]  # scrolling, one slice a step
        renderer.png(plane, indices[0], "truth")  # warm the cached index maps and colour tables
        for view, mode in cases:
            render_ms, total_ms, sizes = [], [], []
            for index in indices:
                start_time = time.perf_counter()
                rgb = renderer.render(plane, index, view, 0.4, mode)
                rendered = time.perf_counter()
                png = slices.to_png(rgb)
                done = time.perf_counter()
                render_ms.append((rendered - start_time) * 1000)
                total_ms.append((done - start_time) * 1000)
                sizes.append(len(png))
            rows.append((plane, view, mode, f"{rgb.shape[1]}x{rgb.shape[0]}", np.median(render_ms),
                         np.median(total_ms), np.percentile(total_ms, 95), np.median(sizes) / 1024))

    print(f"# Review slice latency: {shape[0]} x {shape[1]} x {shape[2]} voxels, spacing {SPACING} mm\n")
    print(f"Machine: {platform.platform()}, {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
          f"Python {platform.python_version()}, numpy {np.__version__}, Pillow {_pillow()}. One thread.\n")
    print(f"One slice change ({args.changes} per row, scrolling one slice a step): extract, overlay, PNG "
          "(compress level 1). Milliseconds.\n")
    print("| plane | view | mode | picture (w x h) | render median | render + PNG median | render + PNG p95 "
          "| PNG KiB |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for plane, view, mode, size, render_median, median, p95, kib in rows:
        print(f"| {plane} | {view} | {mode} | {size} | {render_median:.1f} | {median:.1f} | {p95:.1f} | {kib:.0f} |")
    print("\nOnce per case or per window change (milliseconds):\n")
    print("| step | ms |\n|---|---:|")
    for name, value in (("build the synthetic case (not medft)", build_ms),
                        ("SliceRenderer(...) with a preset window", prepare_ms),
                        ("window change: set_window, then the axial slice drawn again (no PNG)", rewindow_ms),
                        ("percentile_window of the whole volume (MR)", percentile_ms),
                        ("best_slice(by='error'), axial", best_ms)):
        print(f"| {name} | {value:.0f} |")


def _pillow() -> str:
    try:
        import PIL

        return PIL.__version__
    except ImportError:
        return "absent (matplotlib writes the PNG)"


if __name__ == "__main__":
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    sys.exit(main())
