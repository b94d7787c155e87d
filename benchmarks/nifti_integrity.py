"""What the integrity check of a .nii.gz costs (issue 33): reading a hospital-size CT to its end, so that gzip checks
its checksum, on top of the voxel read that loading does anyway; and that a case loaded again is not read twice.

One synthetic CT of 512 x 512 x 300 int16 voxels (``ct_scale.make_cases``: noise and two structures, about 150 MB
uncompressed), timed in one process, each step ``--repeats`` times (the median is reported):
- ``voxels``: MONAI's LoadImage with nibabel, what medft's loader did before the check;
- ``check``: the check alone (header, vox_offset, the stream read to its end, keeping nothing) on a file not yet seen;
- ``load cold``: ``medft.data.loading.load_image`` on a file not yet seen (check, voxel read, RAS);
- ``load again``: the same file loaded again in the same process (the check remembered).
Peak memory of the check alone: Python's allocations during it (tracemalloc), against the file's size.

Run: ``.venv/bin/python benchmarks/nifti_integrity.py [--quick] [--repeats N]`` (about a minute on 2 CPU cores).
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from common import Benchmark, is_worker, markdown_table, parser, worker_main
from ct_scale import make_cases

SHAPE = (512, 512, 300)


def time_loading(spec: dict) -> dict:
    """Worker task: each way of reading the CT, ``repeats`` times, seconds."""
    import tracemalloc

    import torch
    from monai.data import NibabelReader
    from monai.transforms import LoadImage

    from medft.data import loading

    torch.set_num_threads(1)
    path = Path(spec["path"])
    seconds: dict[str, list[float]] = {"voxels": [], "check": [], "load cold": [], "load again": []}
    peak = 0
    for _ in range(spec["repeats"]):
        started = time.perf_counter()
        LoadImage(image_only=True)(str(path), reader=NibabelReader())
        seconds["voxels"].append(time.perf_counter() - started)
        loading._SOUND_GZIP.clear()
        tracemalloc.start()
        started = time.perf_counter()
        loading._require_complete_nifti(path)
        seconds["check"].append(time.perf_counter() - started)
        peak = max(peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        loading._SOUND_GZIP.clear()
        started = time.perf_counter()
        loading.load_image([path])
        seconds["load cold"].append(time.perf_counter() - started)
        started = time.perf_counter()
        loading.load_image([path])
        seconds["load again"].append(time.perf_counter() - started)
    return {"seconds": seconds, "check_peak_bytes": peak, "file_bytes": path.stat().st_size}


def main() -> int:
    p = parser("nifti_integrity", __doc__)
    p.add_argument("--repeats", type=int, default=5, help="times each step is timed (default 5)")
    args = p.parse_args()
    bench = Benchmark("nifti_integrity", args)
    shape = (128, 128, 60) if args.quick else SHAPE
    make_cases(bench.out / "data", 1, shape)
    spec = {"task": "time_loading", "path": str(bench.out / "data" / "ct_0.nii.gz"), "repeats": 1 if args.quick else args.repeats}
    timed = bench.isolated(__file__, spec, "time_loading", timing=True)
    median = {name: statistics.median(values) for name, values in timed["seconds"].items()}
    rows = [[name, f"{median[name]:.2f}", f"{median[name] / median['voxels']:.2f}"] for name in median]
    markdown = (f"One CT of {' x '.join(map(str, shape))} int16 voxels ({timed['file_bytes'] / 1e6:.0f} MB compressed), median "
                f"of {spec['repeats']}:\n\n" + markdown_table(["step", "seconds", "x voxels"], rows)
                + f"\n\nPeak Python memory of the check: {timed['check_peak_bytes'] / 1e6:.1f} MB.")
    return 0 if bench.finish({"median_seconds": median, **timed}, markdown) else 1


if __name__ == "__main__":
    if is_worker():
        worker_main({"time_loading": time_loading})
    else:
        sys.exit(main())
