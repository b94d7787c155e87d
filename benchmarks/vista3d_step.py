"""VISTA3D (the Model Zoo's CT foundation model): what one training step costs, for medft's decision on it.

VISTA3D's network (``monai.networks.nets.vista3d132``, as the vista3d bundle's network_def builds it)
in its automatic-segmentation mode: a forward pass prompted with a class_vector of ``--classes``
classes (one sigmoid map per class, as its train_continual.json fine-tunes it), a binary Dice +
cross-entropy loss on each map, backward, an AdamW step. Random weights (the bundle's weights are
not needed for a time and memory measurement) and a random CT-like patch per size. Each size runs
in its own process (peak memory is the process's own): ``--steps`` timed steps after one warm-up.

Run: ``.venv/bin/python benchmarks/vista3d_step.py [--quick] [--sizes 64 96] [--steps 2] [--out DIR] [--device auto]``
"""
from __future__ import annotations

import sys

from common import Benchmark, fmt, is_worker, markdown_table, parser, peak_rss_mb, reset_peak_memory, worker_main

DEFAULT_SIZES = (64, 96)
CLASSES = 3


def step_time(spec: dict) -> dict:
    import statistics
    import time

    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import vista3d132

    torch.manual_seed(0)
    device = torch.device(spec["device"])
    network = vista3d132(in_channels=1).to(device).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-5)
    loss_fn = DiceCELoss(sigmoid=True)
    size = spec["size"]
    image = torch.randn(1, 1, size, size, size, device=device)
    labels = torch.randint(0, spec["classes"] + 1, (1, 1, size, size, size), device=device)
    classes = torch.arange(1, spec["classes"] + 1, device=device)[:, None]
    reset_peak_memory()

    def step() -> float:
        started = time.perf_counter()
        logits = network(image, class_vector=classes)  # (classes, 1, x, y, z): one map per prompted class
        target = torch.cat([(labels == c).float() for c in classes[:, 0].tolist()])
        loss_fn(logits, target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    step()
    times = [step() for _ in range(spec["steps"])]
    return {"size": size, "seconds": statistics.median(times), "all_seconds": times, "peak_rss_mb": peak_rss_mb(),
            "parameters": sum(p.numel() for p in network.parameters())}


def main() -> int:
    p = parser("vista3d_step", __doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=None, help=f"patch edges (default {DEFAULT_SIZES}; quick: 32)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per size (default 2; quick: 1)")
    args = p.parse_args()
    bench = Benchmark("vista3d_step", args)
    sizes = args.sizes or ([32] if args.quick else list(DEFAULT_SIZES))
    results = [bench.isolated(__file__, {"task": "step_time", "size": size, "classes": CLASSES,
                                         "steps": args.steps or (1 if args.quick else 2), "device": bench.device},
                              f"step_{size}", timing=True) for size in sizes]
    rows = [[f"{r['size']}^3", fmt(r["seconds"], 1, " s"), fmt(r["peak_rss_mb"] / 1024, 1, " GiB")] for r in results]
    markdown = (f"VISTA3D (vista3d132, {results[0]['parameters'] / 1e6:.0f} M parameters), one training step in automatic "
                f"mode ({CLASSES} prompted classes), {bench.device}:\n\n"
                + markdown_table(["patch", "seconds per step (median)", "peak memory"], rows))
    bench.finish({"steps": results}, markdown)
    return 0


if __name__ == "__main__":
    if is_worker():
        worker_main({"step_time": step_time})
    else:
        sys.exit(main())
