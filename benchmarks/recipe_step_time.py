"""Training-step time of configs/hippocampus.yaml's network, and what each change to it costs.

A training step as medft runs it (forward under ``torch.autocast`` when ``train.amp``, medft's
loss with deep supervision in float32, backward, AdamW step) on a batch of real patches: two
sample cases loaded, normalised and cropped by medft's own transforms and collated by MONAI, as
the training loader delivers them. Each variant changes one thing: the batch left as MONAI
MetaTensors (what medft passed to the network before it stripped the metadata), weights and
batch in the channels-last memory format (``torch.channels_last_3d``), deep supervision off,
float32, wider filters, a batch of 4. The variants alternate in rounds (``--rounds``), each
timed as the median of its steps after 2 warm-up steps; the table gives ms per step and per
sample, relative to the config's, and the range of that ratio over the rounds (each round's
medians compared, which cancels the drift of the machine's speed between rounds). The config's
row runs as medft trains, with ``torch.use_deterministic_algorithms`` on (``train.deterministic``,
medft's default); one variant turns it off, and every other variant keeps it on. It compares
variants; it does not predict a run's minutes: a training run's epochs also load and augment
their data, and its steps see a new batch each time (see benchmarks/RESULTS.md).

Run: ``.venv/bin/python benchmarks/recipe_step_time.py [--quick] [--steps 6] [--rounds 3] [--out DIR] [--device auto]``
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from functools import partial

from common import (
    REPO,
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

CONFIG = REPO / "configs" / "hippocampus.yaml"
SAMPLE_CASES = ("hippocampus_334", "hippocampus_340", "hippocampus_341", "hippocampus_345")

# name -> (network_def changes, other changes)
VARIANTS: dict[str, tuple[dict, dict]] = {
    "configs/hippocampus.yaml": ({}, {}),
    "deterministic algorithms off": ({}, {"deterministic": False}),
    "batch as MetaTensors": ({}, {"metatensor": True}),
    "channels-last memory format": ({}, {"channels_last": True}),
    "no deep supervision": ({"deep_supervision": False}, {}),
    "float32": ({}, {"amp": False}),
    "filters 20-40-80-160": ({"filters": [20, 40, 80, 160]}, {}),
    "filters 24-48-96-192": ({"filters": [24, 48, 96, 192]}, {}),
    "batch of 4": ({}, {"batch": 4}),
}


def _batch(size: list[int], n: int):
    """n real patches through medft's transforms, collated as the training loader collates them."""
    from monai.data import list_data_collate
    from monai.transforms import Compose
    from monai.utils import set_determinism

    from medft.data.preprocessing import Preprocessing
    from medft.data.transforms import sampling

    set_determinism(0)
    root = REPO / "sample_data" / "hippocampus"
    transform = Compose([*Preprocessing.medft(None, "zscore").training(), *sampling("patch", size)])
    samples = []
    for case in SAMPLE_CASES[:n]:
        out = transform({"case_id": case, "image": [str(root / "imagesTr" / f"{case}.nii.gz")],
                         "label": str(root / "labelsTr" / f"{case}.nii.gz")})
        samples += out if isinstance(out, list) else [out]
    return list_data_collate(samples)


@contextmanager
def _deterministic(on: bool):
    """torch's deterministic algorithms on or off for one step, as ``train.deterministic`` sets them."""
    import torch

    from medft.train.recipe import use_deterministic_algorithms

    if on:
        use_deterministic_algorithms()
    else:
        torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


def _step(job: dict, device) -> float:
    with _deterministic(job["deterministic"]):
        return training_step(device, job["optimizer"], job["amp"], job["forward"], job["loss"])


def step_times(spec: dict) -> dict:
    """Worker task: median ms per training step of each variant."""
    import torch
    from monai.data import MetaTensor

    from medft.config import ModelConfig, TrainConfig, read_raw_config
    from medft.train.network import prepare_network
    from medft.train.recipe import _loss, _plain, _supervised_loss

    device = torch.device(spec["device"])
    raw = read_raw_config(CONFIG, [])
    model, train = ModelConfig(**raw["model"]), TrainConfig(**raw["train"])
    size = raw["data"]["spatial_size"]
    loss_fn = _loss(train)
    batches = {n: _batch(size, n) for n in (2, 4)}
    jobs = {}
    for name, (network_changes, other) in VARIANTS.items():
        torch.manual_seed(0)
        config = model.model_copy(update={"network_def": {**model.network_def, **network_changes}})
        network = prepare_network(config, num_classes=3).network.to(device).train()
        batch = batches[other.get("batch", 2)]
        image, label = batch["image"].to(device), batch["label"].to(device)
        if not other.get("metatensor"):
            image, label = _plain(image), _plain(label)
        assert isinstance(image, MetaTensor) == bool(other.get("metatensor"))
        if other.get("channels_last"):
            network = network.to(memory_format=torch.channels_last_3d)
            image = image.contiguous(memory_format=torch.channels_last_3d)
        jobs[name] = {"optimizer": torch.optim.AdamW(network.parameters(), 1e-3), "forward": partial(network, image),
                      "loss": partial(_supervised_loss, loss_fn, label=label), "amp": other.get("amp", bool(train.amp)),
                      "deterministic": other.get("deterministic", train.deterministic),
                      "batch": image.shape[0], "parameters": sum(p.numel() for p in network.parameters())}

    ms = step_ms({name: partial(_step, job, device) for name, job in jobs.items()}, spec)
    results = [{"variant": name, "parameters": job["parameters"], "batch": job["batch"], "amp": job["amp"],
                "deterministic": job["deterministic"],
                "ms_per_step": ms[name]["median"], "ms_per_sample": ms[name]["median"] / job["batch"],
                "ms_per_sample_rounds": [t / job["batch"] for t in ms[name]["rounds"]]} for name, job in jobs.items()]
    return {"results": results, "threads": torch.get_num_threads(), "patch": size}


def main() -> int:
    bench, spec, result = run_step_benchmark("recipe_step_time", __doc__, __file__, "variant", default_steps=6)
    base = result["results"][0]
    rows = [[r["variant"], f"{r['parameters'] / 1e6:.2f}M", r["batch"], fmt(r["ms_per_step"], 0), fmt(r["ms_per_sample"], 0),
             fmt(r["ms_per_sample"] / base["ms_per_sample"], 2), ratio_range(r["ms_per_sample_rounds"], base["ms_per_sample_rounds"])]
            for r in result["results"]]
    table = markdown_table(["variant", "parameters", "batch", "ms / step", "ms / sample", "x recipe (per sample)",
                            "x recipe, range over rounds"], rows)
    markdown = (f"Training step of configs/hippocampus.yaml's network on real {' x '.join(map(str, result['patch']))} "
                f"patches, median of {spec['steps'] * spec['rounds']} steps per variant, {result['threads']} threads\n\n{table}")
    bench.finish(result, markdown)
    return 0


WORKER_TASKS = {**WORKER_TASKS, "step_times": step_times}

if __name__ == "__main__":
    if is_worker():
        worker_main(WORKER_TASKS)
        sys.exit(0)
    sys.exit(main())
