"""medft's own preprocessing in a run: data.spacing auto resolved and recorded, predictions on each input's grid."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import yaml

from medft.config import load_config
from medft.evaluate.run import evaluate
from medft.train.recipe import run_training
from tests.bundle.helpers import UNET3D
from tests.conftest import copy_case, rewrite_nifti, write_csv

CLASSES = {"0": "background", "1": "anterior", "2": "posterior"}


def test_spacing_auto_is_the_training_median_and_predictions_return_to_each_inputs_grid(tmp_path):
    rows = []
    for case_id, slice_mm, split in (("hippocampus_334", 1.0, "train"), ("hippocampus_335", 2.0, "train"),
                                     ("hippocampus_336", 3.0, "train"), ("hippocampus_340", 1.5, "val")):
        image, label = copy_case(case_id, tmp_path / "data")
        for path in (image, label):
            rewrite_nifti(path, affine=np.diag([1.0, 1.0, slice_mm, 1.0]))
        rows.append({"case_id": case_id, "image": image, "label": label, "split": split})
    manifest = write_csv(tmp_path / "m.csv", rows, classes=CLASSES)
    config = {"model": {"network_def": {k: v for k, v in UNET3D.items() if k not in ("in_channels", "out_channels")}},
              "data": {"manifest": str(manifest), "spatial_size": [32, 48, 32], "spacing": "auto",
                       "intensity": "percentiles"},
              "train": {"epochs": 1, "batch_size": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    run_training(load_config(tmp_path / "c.yaml"), tmp_path / "run")

    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["spacing"] == [1.0, 1.0, 2.0] and saved["data"]["preprocessing"] == "medft"
    steps = json.loads((tmp_path / "run" / "preprocessing.json").read_text())["steps"]
    assert steps[0] == {"_target_": "Spacingd", "keys": "image", "pixdim": [1.0, 1.0, 2.0], "mode": "bilinear"}
    assert steps[1]["_target_"] == "ScaleIntensityRangePercentilesd" and (steps[1]["lower"], steps[1]["upper"]) == (0.5, 99.5)
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["val_dice"] >= 0

    out = evaluate(tmp_path / "run", manifest, tmp_path / "eval").folder
    for row in rows:
        prediction, image = nib.load(out / "predictions" / f"{row['case_id']}.nii.gz"), nib.load(row["image"])
        assert prediction.shape == image.shape and np.allclose(prediction.affine, image.affine)
