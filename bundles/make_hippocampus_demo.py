"""Rebuild the demo bundle bundles/hippocampus_demo from scratch with medft itself.

Run from the repository root, with the development data in ../shared/data:

    .venv/bin/python bundles/make_hippocampus_demo.py

It trains configs/pretrain_hippocampus_demo.yaml (a small 3D UNet, whole hippocampus as one
class, 100 cases that are not in the embedded sample) into runs/pretrain_hippocampus_demo,
exports the best checkpoint as a Model Zoo bundle, and names and documents it.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "pretrain_hippocampus_demo.yaml"
RUN = REPO / "runs" / "pretrain_hippocampus_demo"
BUNDLE = REPO / "bundles" / "hippocampus_demo"
MANIFEST = REPO / "data_manifests" / "hippocampus_pretrain.csv"

LICENSE = """The weights of this bundle were trained on images and labels of the Medical Segmentation
Decathlon, Task04 Hippocampus (Simpson et al., "A large annotated medical image dataset for the
development and evaluation of segmentation algorithms", arXiv:1902.09063, 2019; images from
Vanderbilt University Medical Center), licensed CC-BY-SA 4.0. The weights are shared under the
same licence: Creative Commons Attribution-ShareAlike 4.0 International,
https://creativecommons.org/licenses/by-sa/4.0/.

For demonstration and testing of medft only; not for clinical use.
"""


def main() -> int:
    from medft.bundle.export import export_run
    from medft.config import load_config
    from medft.data.manifest import load_manifest
    from medft.train.recipe import run_training

    if RUN.exists():
        shutil.rmtree(RUN)
    summary = run_training(load_config(CONFIG), RUN)
    if BUNDLE.exists():
        shutil.rmtree(BUNDLE)
    export_run(RUN, BUNDLE)

    cases = load_manifest(MANIFEST)
    metadata_path = BUNDLE / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata.update({
        "name": "hippocampus_demo",
        "version": "1.0.0",
        "changelog": {"1.0.0": "trained from random weights by bundles/make_hippocampus_demo.py"},
        "task": "Whole-hippocampus segmentation in cropped T1 MRI (demo bundle of medft)",
        "description": "A small 3D UNet that segments the whole hippocampus (anterior and posterior merged) "
                       "in cropped MRI, made for medft's demo and tests.",
        "authors": "medft",
        "copyright": "CC-BY-SA 4.0 (trained on the Medical Segmentation Decathlon Task04 Hippocampus)",
        "data_source": "Medical Segmentation Decathlon, Task04 Hippocampus (Vanderbilt University Medical Center)",
        "data_type": "nibabel",
        "intended_use": "Demonstration and testing of medft only; not for clinical use",
        "pretraining_cases": {split: [c.case_id for c in cases.split(split)] for split in ("train", "val")},
    })
    metadata["medft"]["parent_bundle"] = None
    metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
    (BUNDLE / "LICENSE").write_text(LICENSE)
    readme = BUNDLE / "docs" / "README.md"
    readme.write_text(readme.read_text().replace("# medft network", "# hippocampus_demo").replace(
        "Fine-tuned by medft from none (trained from random weights) to 2 classes.",
        metadata["description"] + f"\n\nTrained by `bundles/make_hippocampus_demo.py` on {len(cases)} cases of the "
        "development data (listed in configs/metadata.json under pretraining_cases), none of which is in "
        "medft's embedded sample. Licence: CC-BY-SA 4.0, see LICENSE.",
    ))
    print(f"best validation Dice {summary['best_val_dice']:.4f}; bundle written to {BUNDLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
