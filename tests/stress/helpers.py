"""The demo bundle (a UNet pretrained on the whole hippocampus) and sample cases labelled for it."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from tests.conftest import REPO, sample_case, write_csv

DEMO_BUNDLE = REPO / "bundles" / "hippocampus_demo"
CASES = ("hippocampus_333", "hippocampus_340", "hippocampus_367")


def whole_hippocampus_manifest(folder: Path, cases=CASES) -> Path:
    """A manifest of sample cases whose labels are the whole hippocampus (anterior and posterior as one class)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for case_id in cases:
        image, label = sample_case(case_id)
        stored = nib.load(label)
        merged = folder / f"{case_id}_whole.nii.gz"
        nib.save(nib.Nifti1Image((np.asarray(stored.dataobj) > 0).astype(np.uint8), stored.affine), merged)
        rows.append({"case_id": case_id, "image": image, "label": merged, "split": "test"})
    return write_csv(folder / "manifest.csv", rows, classes={"0": "background", "1": "hippocampus"})
