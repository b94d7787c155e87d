"""Export a fine-tuned run as a MONAI Model Zoo bundle that plain MONAI loads.

The bundle holds ``configs/metadata.json`` (new labels, validation metrics, the fine-tuning data
as case counts, the parent bundle's metadata verbatim under ``medft.parent_bundle``),
``configs/inference.json`` (``network_def`` plus a MONAI inference pipeline), ``models/model.pt``
(a plain state_dict), ``docs/README.md``, a ``LICENSE`` that names the parent and quotes its
licence, and the parent's ``scripts/``. What medft cannot know (the terms of the user's data, who
fine-tuned the model, what for) is left as ``FILL IN`` for the user.
"""
from __future__ import annotations

import json
import logging
import math
import re
import shutil
import textwrap
from pathlib import Path

import monai
import numpy as np
import torch

from medft import __version__
from medft.atomic_files import new_folder
from medft.bundle.reader import load_bundle
from medft.components import IMPORTS
from medft.config import RunConfig
from medft.data.manifest import read_manifest
from medft.data.preprocessing import Preprocessing
from medft.errors import MedftError
from medft.formats import run as run_folder
from medft.formats.checkpoint import Checkpoint, find_checkpoint, read_checkpoint
from medft.sliding_window import CPU_WINDOWS

EXPORT_VERSION = "0.1.0"
FILL_IN = "FILL IN"  # marks what only the user can state (data terms, authors, intended use)
# Keys of the parent's metadata that stay true of the fine-tuned bundle: what it needs to run.
KEPT_PARENT_KEYS = ("schema", "required_packages_version", "optional_packages_version")
_REFERENCE = re.compile(r"@([A-Za-z_][\w#]*)")
log = logging.getLogger("medft.bundle")


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the best checkpoint of ``run_dir`` (else its last) as a bundle in ``out_dir``, a new or
    empty folder: written under a partial name, renamed to ``out_dir`` once complete (``new_folder``)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    config = run_folder.read_config(run_dir)
    checkpoint_path = find_checkpoint(run_dir)
    if checkpoint_path is None:
        raise MedftError(f"{run_dir}: no checkpoints/best.pt or last.pt. Fix: export a run folder that `medft train` wrote")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise MedftError(f"{out_dir} exists and is not an empty folder. Fix: give a new folder to --out")
    checkpoint = read_checkpoint(checkpoint_path)
    parent = load_bundle(config.model.bundle, version=config.model.bundle_version) if config.model.bundle else None
    preprocessing = Preprocessing.from_dict(checkpoint.preprocessing, str(checkpoint_path))
    metadata = _metadata(config, checkpoint, run_dir, parent, preprocessing)

    with new_folder(out_dir) as bundle:  # a kill leaves no folder that MONAI would load with parts missing
        for sub in ("configs", "models", "docs"):
            (bundle / sub).mkdir()
        torch.save(checkpoint.model, bundle / "models" / "model.pt")
        inference = _inference_config(config, checkpoint.network_def, preprocessing, parent.config if parent else {})
        (bundle / "configs" / "inference.json").write_text(json.dumps(inference, indent=2) + "\n")
        (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2, allow_nan=False) + "\n")
        (bundle / "docs" / "README.md").write_text(_readme(metadata))
        (bundle / "LICENSE").write_text(_license(parent))
        if parent is not None and (parent.root / "scripts").is_dir():
            shutil.copytree(parent.root / "scripts", bundle / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    log.warning("%s: before you share it, replace each %s placeholder in configs/metadata.json, LICENSE and "
                "docs/README.md with the terms of your data, the authors and the intended use", out_dir, FILL_IN)
    return out_dir


def _inference_config(config: RunConfig, network_def: dict, preprocessing: Preprocessing, parent_config: dict) -> dict:
    """network_def (with the parent config entries it refers to) and a MONAI inference pipeline: the preprocessing
    the network was trained on, the sliding window, and the postprocessing that inverts the spatial steps, so that
    the prediction lands on the input's grid."""
    imports = [*IMPORTS, *parent_config.get("imports", []), *preprocessing.imports]
    inference: dict = {"imports": list(dict.fromkeys(imports))}
    for key in _referenced_keys(network_def, parent_config):
        inference[key] = parent_config[key]
    transforms = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
    ]
    if preprocessing.reorient:  # medft's loader brought the images to RAS
        # labels as medft reads images (MONAI's default for them is changing: a FutureWarning without them)
        transforms.append({"_target_": "Orientationd", "keys": "image", "axcodes": "RAS",
                           "labels": [["L", "R"], ["P", "A"], ["I", "S"]]})
    transforms += preprocessing.steps
    inference.update({
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": transforms},
        "inferer": {
            "_target_": "SlidingWindowInferer", "roi_size": config.data.spatial_size,
            "sw_batch_size": config.validation.sw_batch_size or CPU_WINDOWS, "overlap": config.validation.overlap, "mode": "gaussian",
        },
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
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


def _metadata(config: RunConfig, checkpoint: Checkpoint, run_dir: Path, parent, preprocessing: Preprocessing) -> dict:
    """The fine-tuned bundle's own metadata; the parent's, verbatim, under ``medft.parent_bundle``."""
    class_names = checkpoint.class_names
    parent_meta = parent.metadata if parent else {}
    interpolation = run_folder.read_interpolation(run_dir)  # a folder that medft interpolate wrote
    parent_name = f"{parent.name} {parent.version}".strip() if parent else "none (trained from random weights)"
    early = checkpoint.early_stopping
    validated = early["best_epoch"] >= 0  # a run with no validation epoch has no best (-inf at epoch -1)
    metadata = {key: parent_meta[key] for key in KEPT_PARENT_KEYS if key in parent_meta}
    metadata.update({
        "version": EXPORT_VERSION,
        "changelog": {EXPORT_VERSION: f"fine-tuned with medft {__version__} from {parent_name}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "name": f"{parent.name} (fine-tuned)" if parent else "medft network",
        "task": f"Segmentation of {', '.join(class_names[1:])}",
        "description": f"Fine-tuned by medft from {parent_name} to {len(class_names)} classes." + (
            f" Weights interpolated with the parent's (WiSE-FT): {interpolation.alpha:g} x the fine-tuned ones + "
            f"{1 - interpolation.alpha:g} x the parent's, for the tensors they share." if interpolation else ""),
        "authors": f"{FILL_IN}: who trained this model with medft",
        "copyright": _copyright(parent),
        "data_source": _data_source(config, fine_tuned=parent is not None),
        "intended_use": _intended_use(parent_meta),
        "eval_metrics": {"val_mean_dice": early["best"]} if validated else {},
        "network_data_format": _network_data_format(config, checkpoint, parent_meta),
    })
    metadata["medft"] = {
        "parent_bundle": _parent_entry(config, parent),
        "evaluation": {"split": "val", "metric": "mean Dice over foreground classes", "val_dice": early["best"],
                       "best_epoch": early["best_epoch"],
                       "val_dice_per_class": _best_per_class(run_dir, early["best_epoch"])} if validated else None,
        "class_names": class_names,
        "preprocessing": {**preprocessing.to_dict(public=True), "spatial_size": list(config.data.spatial_size),
                          "flip_axes": config.data.mirrored_axes,
                          # label value -> class index, as training remapped the ground truth (JSON keys are strings)
                          "label_map": {str(k): v for k, v in sorted(config.data.label_map.items())}},
        "medft_version": __version__,
    }
    if interpolation is not None:
        metadata["medft"]["interpolation"] = {"alpha": interpolation.alpha, "checkpoint": interpolation.parent_checkpoint,
                                              "interpolated_tensors": len(interpolation.interpolated),
                                              "kept_tensors": interpolation.kept}
    return metadata


def _parent_entry(config: RunConfig, parent) -> dict | None:
    """The parent's name, version and origin (a Model Zoo name, or a local folder without its path),
    then the rest of its metadata verbatim: its data source, copyright and own fields."""
    if parent is None:
        return None
    local = Path(config.model.bundle).expanduser().is_dir()  # as load_bundle decides
    entry = {"name": parent.name, "version": parent.version,
             "source": "a local bundle folder" if local else f"MONAI Model Zoo bundle {parent.name}"}
    entry.update((key, value) for key, value in parent.metadata.items() if key not in entry)
    return entry


def _data_source(config: RunConfig, fine_tuned: bool) -> str:
    """The training data without paths or identifiers: its case counts and the manifest's file name."""
    name = Path(config.data.manifest).name
    try:
        manifest, _ = read_manifest(config.data.manifest)
        cases = f"{len(manifest.split('train'))} training and {len(manifest.split('val'))} validation cases of the manifest {name}"
    except MedftError:
        cases = f"the cases of the manifest {name} (not readable at export)"
    verb = "Fine-tuned" if fine_tuned else "Trained"
    return f"{verb} on {cases}. {FILL_IN}: where these images come from and the terms under which they may be used."


def _copyright(parent) -> str:
    if parent is None:
        return f"{FILL_IN}: the terms of this model and of the data it was trained on."
    return (f"The weights derive from the bundle {parent.name} {parent.version} and remain under its licence "
            f"(quoted in LICENSE; its copyright is under medft.parent_bundle). {FILL_IN}: the terms of the fine-tuning data.")


def _intended_use(parent_meta: dict) -> str:
    text = f"{FILL_IN}: what this model is for; medft has not validated it for clinical use."
    return f"{text} The parent bundle's intended use: {parent_meta['intended_use']}" if parent_meta.get("intended_use") else text


def _network_data_format(config: RunConfig, checkpoint: Checkpoint, parent_meta: dict) -> dict:
    """Inputs and outputs of the fine-tuned network: its channels, classes and training size."""
    class_names = checkpoint.class_names
    channels = int(checkpoint.network_def.get("in_channels", 1))
    modality = parent_meta.get("network_data_format", {}).get("inputs", {}).get("image", {}).get("modality", "MR")
    return {
        "inputs": {"image": {
            "type": "image", "format": "magnitude", "modality": modality, "num_channels": channels,
            "spatial_shape": list(config.data.spatial_size), "dtype": "float32", "value_range": [], "is_patch_data": True,
            "channel_def": {"0": "image"} if channels == 1 else {str(i): f"image channel {i}" for i in range(channels)},
        }},
        "outputs": {"pred": {
            "type": "image", "format": "segmentation", "num_channels": len(class_names),
            "spatial_shape": list(config.data.spatial_size), "dtype": "float32", "value_range": [0, 1],
            "is_patch_data": True, "channel_def": {str(i): name for i, name in enumerate(class_names)},
        }},
    }


def _license(parent) -> str:
    """Where the weights come from, the FILL IN for the data's terms, then the parent's licence verbatim."""
    terms = f"{FILL_IN}: the terms of the data these weights were trained on, and any terms you add for this model."
    if parent is None:
        return _paragraphs("The weights in models/model.pt were trained by medft from random initial weights.", terms)
    source = parent.root / "LICENSE"
    quoted = (source.read_text(encoding="utf-8", errors="replace") if source.is_file()
              else f"(The bundle has no LICENSE file; its metadata gives the copyright: {parent.metadata.get('copyright', 'none')}.)\n")
    scripts = " Its scripts/ folder is copied here unchanged." if (parent.root / "scripts").is_dir() else ""
    origin = (f"The weights in models/model.pt were fine-tuned with medft from the MONAI bundle {parent.name}, version "
              f"{parent.version}. They derive from that bundle's weights and remain subject to its licence, which "
              f"follows verbatim.{scripts}")
    return _paragraphs(origin, terms) + f"\n----- Licence of {parent.name} {parent.version} (verbatim) -----\n{quoted}"


def _paragraphs(*texts: str) -> str:
    return "\n\n".join(textwrap.fill(text, 96) for text in texts) + "\n"


def _best_per_class(run_dir: Path, epoch: int) -> dict:
    """Each class's validation Dice at ``epoch``; None (JSON null) for a class with no Dice (NaN: in no
    validation label map and never predicted), which metadata.json, strict JSON, cannot hold as NaN."""
    record = next((r for r in run_folder.read_epochs(run_dir) if r.epoch == epoch), None)
    per_class = record.val_dice_per_class or {} if record is not None else {}
    return {name: value if math.isfinite(value) else None for name, value in per_class.items()}


def _readme(metadata: dict) -> str:
    info = metadata["medft"]
    return f"""# {metadata['name']}

{metadata['description']}

Classes: {', '.join(f'{i} {n}' for i, n in enumerate(info['class_names']))}.

## Data and licence
- Data: {metadata['data_source']}
- Parent: {_parent_line(info['parent_bundle'])}
- Licence: {metadata['copyright']}

{_validation_section(info['evaluation'])}

## Use with MONAI
```python
import torch
from monai.bundle import ConfigParser

parser = ConfigParser()
parser.read_config("configs/inference.json")
network = parser.get_parsed_content("network_def")
network.load_state_dict(torch.load("models/model.pt", map_location="cpu"))
```
Feed it what it was trained on: `preprocessing` (the voxel spacing, orientation and intensity
scaling of its training), then the sliding-window `inferer`; `postprocessing` inverts the spatial
steps, so that the prediction lands on the input's own grid.
"""


def _validation_section(evaluation: dict | None) -> str:
    if evaluation is None:
        return ("## Validation\nNone: the run never validated (no `val` cases, or `train.val_every` beyond its epochs). "
                "Evaluate the model with `medft evaluate` before relying on it.\n")
    rows = "\n".join(f"| {name} | {'n/a (in no validation case, never predicted)' if value is None else f'{value:.4f}'} |"
                     for name, value in evaluation["val_dice_per_class"].items())
    return f"## Validation (split `val`, epoch {evaluation['best_epoch']})\n| class | Dice |\n| --- | --- |\n{rows}\n"


def _parent_line(parent: dict | None) -> str:
    if parent is None:
        return "none, trained from random weights."
    return (f"{parent['name']} {parent['version']} ({parent['source']}); its metadata (data source, copyright, ...) "
            "is kept verbatim under `medft.parent_bundle` in `configs/metadata.json`.")
