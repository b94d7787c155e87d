"""Export a fine-tuned run as a MONAI Model Zoo bundle that plain MONAI loads.

The bundle holds ``configs/metadata.json`` (new labels, validation metrics, the parent bundle),
``configs/inference.json`` (``network_def`` plus a MONAI inference pipeline), ``models/model.pt``
(a plain state_dict), ``docs/README.md`` and the parent's ``LICENSE`` and ``scripts/``.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import monai
import numpy as np
import torch

from medft import __version__
from medft.bundle.reader import load_bundle
from medft.config import RunConfig, read_yaml, validate_config
from medft.errors import MedftError

EXPORT_VERSION = "0.1.0"
_REFERENCE = re.compile(r"@([A-Za-z_][\w#]*)")


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the best checkpoint of ``run_dir`` (else its last) as a bundle in ``out_dir``."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    config = validate_config(read_yaml(run_dir / "config.yaml"), source=str(run_dir / "config.yaml"))
    checkpoint_path = next((p for p in (run_dir / "checkpoints" / n for n in ("best.pt", "last.pt")) if p.is_file()), None)
    if checkpoint_path is None:
        raise MedftError(f"{run_dir}: no checkpoints/best.pt or last.pt. Fix: export a run folder that `medft train` wrote")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise MedftError(f"{out_dir} exists and is not empty. Fix: give a new folder to --out")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    parent = load_bundle(config.model.bundle, version=config.model.bundle_version) if config.model.bundle else None

    for sub in ("configs", "models", "docs"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint["model"], out_dir / "models" / "model.pt")
    inference = _inference_config(config, checkpoint["network_def"], parent.config if parent else {})
    (out_dir / "configs" / "inference.json").write_text(json.dumps(inference, indent=2) + "\n")
    metadata = _metadata(config, checkpoint, run_dir, parent)
    (out_dir / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    (out_dir / "docs" / "README.md").write_text(_readme(metadata))
    if parent is not None:
        for name in ("LICENSE", "scripts"):
            source = parent.root / name
            if source.is_dir():
                shutil.copytree(source, out_dir / name, ignore=shutil.ignore_patterns("__pycache__"))
            elif source.is_file():
                shutil.copyfile(source, out_dir / name)
    return out_dir


def _inference_config(config: RunConfig, network_def: dict, parent_config: dict) -> dict:
    """network_def (with the parent config entries it refers to) and a MONAI inference pipeline."""
    inference: dict = {"imports": ["$import torch"] + [i for i in parent_config.get("imports", []) if i != "$import torch"]}
    for key in _referenced_keys(network_def, parent_config):
        inference[key] = parent_config[key]
    preprocessing = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
    ]
    if config.data.intensity == "zscore":
        preprocessing.append({"_target_": "NormalizeIntensityd", "keys": "image", "channel_wise": True})
    inference.update({
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
        "inferer": {
            "_target_": "SlidingWindowInferer", "roi_size": config.data.spatial_size,
            "sw_batch_size": config.validation.sw_batch_size, "overlap": config.validation.overlap, "mode": "gaussian",
        },
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        ]},
    })
    return inference


def _referenced_keys(node: object, config: dict, found: list[str] | None = None) -> list[str]:
    """Top-level keys of ``config`` that ``node`` refers to with @key, transitively."""
    found = [] if found is None else found
    if isinstance(node, dict):
        for value in node.values():
            _referenced_keys(value, config, found)
    elif isinstance(node, list):
        for value in node:
            _referenced_keys(value, config, found)
    elif isinstance(node, str):
        for name in _REFERENCE.findall(node):
            key = name.split("#")[0]
            if key in config and key not in found:
                found.append(key)
                _referenced_keys(config[key], config, found)
    return found


def _metadata(config: RunConfig, checkpoint: dict, run_dir: Path, parent) -> dict:
    class_names = checkpoint["class_names"]
    metadata = dict(parent.metadata) if parent else {}
    parent_name = f"{parent.name} {parent.version}".strip() if parent else "none (trained from random weights)"
    history = dict(metadata.get("changelog", {}))
    metadata.update({
        "version": EXPORT_VERSION,
        "changelog": {EXPORT_VERSION: f"fine-tuned with medft {__version__} from {parent_name}", **history},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "name": f"{parent.name} (fine-tuned)" if parent else "medft network",
        "task": f"Segmentation of {', '.join(class_names[1:])}",
        "description": f"Fine-tuned by medft from {parent_name} to {len(class_names)} classes.",
    })
    metadata["network_data_format"] = {
        "inputs": {"image": {
            "type": "image", "format": "magnitude", "modality": metadata.get("network_data_format", {}).get("inputs", {}).get("image", {}).get("modality", "MR"),
            "num_channels": int(checkpoint["network_def"].get("in_channels", 1)),
            "spatial_shape": list(config.data.spatial_size), "dtype": "float32", "value_range": [], "is_patch_data": True,
            "channel_def": {"0": "image"},
        }},
        "outputs": {"pred": {
            "type": "image", "format": "segmentation", "num_channels": len(class_names),
            "spatial_shape": list(config.data.spatial_size), "dtype": "float32", "value_range": [0, 1],
            "is_patch_data": True, "channel_def": {str(i): name for i, name in enumerate(class_names)},
        }},
    }
    early = checkpoint["early_stopping"]
    metadata["medft"] = {
        "parent_bundle": {"name": parent.name, "version": parent.version, "source": str(config.model.bundle)} if parent else None,
        "evaluation": {"split": "val", "metric": "mean Dice over foreground classes", "val_dice": early["best"], "best_epoch": early["best_epoch"],
                       "val_dice_per_class": _best_per_class(run_dir, early["best_epoch"])},
        "class_names": class_names,
        "preprocessing": {"orientation": "RAS", "intensity": config.data.intensity, "spatial_size": list(config.data.spatial_size),
                          "flip_axes": config.data.mirrored_axes},
        "medft_version": __version__,
    }
    return metadata


def _best_per_class(run_dir: Path, epoch: int) -> dict:
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        record = json.loads(line)
        if record["epoch"] == epoch:
            return record.get("val_dice_per_class", {})
    return {}


def _readme(metadata: dict) -> str:
    info = metadata["medft"]
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in info["evaluation"]["val_dice_per_class"].items())
    return f"""# {metadata['name']}

{metadata['description']}

Classes: {', '.join(f'{i} {n}' for i, n in enumerate(info['class_names']))}.

## Validation (split `val`, epoch {info['evaluation']['best_epoch']})
| class | Dice |
| --- | --- |
{rows}

## Use with MONAI
```python
import torch
from monai.bundle import ConfigParser

parser = ConfigParser()
parser.read_config("configs/inference.json")
network = parser.get_parsed_content("network_def")
network.load_state_dict(torch.load("models/model.pt", map_location="cpu"))
```
Images are brought to RAS orientation and normalised as in `preprocessing`; predict with the
sliding-window `inferer`.
"""
