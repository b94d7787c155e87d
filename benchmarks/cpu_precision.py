"""Training-step time in float32 against bfloat16 mixed precision (``train.amp``), per network.

For each network (MONAI UNets of the sizes medft's configs use) and input size, a training step
(forward under ``torch.autocast``, loss in float32, backward, AdamW step) on a random batch of 2,
timed as the median of ``--steps`` steps after 2 warm-up steps, float32 and bfloat16 alternating
in rounds. On CUDA, float16 instead of bfloat16 (what ``train.amp`` uses there).

Run: ``.venv/bin/python benchmarks/cpu_precision.py [--quick] [--steps 8] [--rounds 3] [--out DIR] [--device auto]``
"""
from __future__ import annotations

import sys
from functools import partial

from common import (
    WORKER_TASKS,
    fmt,
    is_worker,
    markdown_table,
    ratio_range,
    run_step_benchmark,
    step_ms,
    training_step,
    worker_main,
)

NETWORKS = {  # name -> MONAI UNet channels (strides 2, 2, 2; 2 residual units)
    "UNet 8-16-32-64 (demo bundle)": [8, 16, 32, 64],
    "UNet 16-32-64-128": [16, 32, 64, 128],
    "UNet 32-64-128-256": [32, 64, 128, 256],
}
SIZES = ([48, 64, 48], [40, 56, 40])


def step_times(spec: dict) -> dict:
    """Worker task: median seconds per training step of each network, size and precision."""
    import torch
    from monai.networks.nets import UNet

    device = torch.device(spec["device"])
    results = []
    for name, channels in NETWORKS.items():
        for size in SIZES:
            torch.manual_seed(0)
            network = UNet(3, 1, 3, channels, (2, 2, 2), num_res_units=2).to(device)
            optimizer = torch.optim.AdamW(network.parameters(), 1e-3)
            image = torch.randn(2, 1, *size, device=device)
            ms = step_ms({amp: partial(training_step, device, optimizer, amp, partial(network, image),
                                       lambda output: output.float().mean())
                          for amp in (False, True)}, spec)
            results.append({"network": name, "size": size, "parameters": sum(p.numel() for p in network.parameters()),
                            "fp32_ms": ms[False]["median"], "amp_ms": ms[True]["median"],
                            "fp32_ms_rounds": ms[False]["rounds"], "amp_ms_rounds": ms[True]["rounds"]})
    return {"results": results, "threads": torch.get_num_threads(),
            "amp_dtype": "float16" if device.type == "cuda" else "bfloat16"}


def main() -> int:
    bench, spec, result = run_step_benchmark("cpu_precision", __doc__, __file__, "precision", default_steps=8)
    rows = [[r["network"], f"{r['parameters'] / 1e6:.2f}M", " x ".join(map(str, r["size"])), fmt(r["fp32_ms"], 0),
             fmt(r["amp_ms"], 0), fmt(r["fp32_ms"] / r["amp_ms"], 2), ratio_range(r["fp32_ms_rounds"], r["amp_ms_rounds"])]
            for r in result["results"]]
    table = markdown_table(["network", "parameters", "input (batch 2)", "float32 ms / step",
                            f"{result['amp_dtype']} autocast ms / step", "speed-up", "speed-up, range over rounds"], rows)
    markdown = (f"Training step (forward, backward, AdamW) on a random batch of 2, median of {spec['steps'] * spec['rounds']} "
                f"steps per cell, {result['threads']} threads\n\n{table}")
    bench.finish(result, markdown)
    return 0


WORKER_TASKS = {**WORKER_TASKS, "step_times": step_times}

if __name__ == "__main__":
    if is_worker():
        worker_main(WORKER_TASKS)
        sys.exit(0)
    sys.exit(main())
