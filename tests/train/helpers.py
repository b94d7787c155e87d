"""A tiny fine-tuning config on real sample cases, for the tests of training and evaluation."""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from medft.data.dicom import scan_folder
from tests.bundle.helpers import UNET3D, make_bundle
from tests.conftest import SAMPLE, sample_case, write_csv

TRAIN_IDS = ["hippocampus_334", "hippocampus_335", "hippocampus_336", "hippocampus_338"]
VAL_IDS = ["hippocampus_340", "hippocampus_341"]


def make_config(root: Path, **changes) -> Path:
    """A tiny fine-tuning config on six sample cases; ``changes`` maps dotted keys to values."""
    bundle = root / "bundle"
    if not bundle.exists():
        make_bundle(bundle, UNET3D)
    manifest = root / "manifest.csv"
    if not manifest.exists():
        rows = [{"case_id": c, "image": sample_case(c)[0], "label": sample_case(c)[1], "split": s}
                for ids, s in ((TRAIN_IDS, "train"), (VAL_IDS, "val")) for c in ids]
        write_csv(manifest, rows, classes={"0": "background", "1": "anterior", "2": "posterior"})
    config = {
        "seed": 0,
        "model": {"bundle": str(bundle)},
        "data": {"manifest": str(manifest), "spatial_size": [32, 48, 32]},
        "freeze": [{"epoch": 0, "preset": "all_but_head"}, {"epoch": 1, "preset": "encoder"}, {"epoch": 2, "preset": "none"}],
        "optim": {"lr": 0.01},
        "train": {"epochs": 4, "batch_size": 2},
        "early_stopping": {"patience": 10},
    }
    for key, value in changes.items():
        node = config
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = root / f"config_{len(list(root.glob('config_*.yaml')))}.yaml"
    path.write_text("# Run: medft train (test config)\n" + yaml.safe_dump(config))
    return path


def two_series_image(root: Path) -> tuple[Path, list[str]]:
    """In make_config's manifest, the image of TRAIN_IDS[1] becomes a folder of two DICOM series (an
    error that names the series); returns the folder and the series' UIDs."""
    folder = root / "two_series"
    for study in ("study1/13_HCropVolume", "study2/14_HCropVolume"):
        shutil.copytree(SAMPLE / "dicom" / study, folder / study.split("/")[0])
    manifest = root / "manifest.csv"
    manifest.write_text(manifest.read_text().replace(str(sample_case(TRAIN_IDS[1])[0]), str(folder)))
    return folder, [series.uid for series in scan_folder(folder).series]


def lora_config(root: Path, epochs: int = 2):
    """make_config's run with finetune.method lora, rank 2, no freezing, loaded."""
    from medft.config import load_config

    return load_config(make_config(root, freeze=[], **{"finetune.method": "lora", "finetune.lora": {"rank": 2},
                                                       "train.epochs": epochs}))
