"""Shared fixtures: the sample data shipped in the repository, and ../shared when present."""
from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
MANIFESTS = REPO / "data_manifests"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch thread: deterministic numbers, and on a small shared machine two OpenMP threads
    fighting over two busy cores made conv3d backward passes about 50 times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is not here (a fresh clone has only the embedded sample)")
    return SHARED_DATA


def sample_case(case_id: str = "hippocampus_334") -> tuple[Path, Path]:
    """Image and label paths of one embedded hippocampus case."""
    root = SAMPLE / "hippocampus"
    return root / "imagesTr" / f"{case_id}.nii.gz", root / "labelsTr" / f"{case_id}.nii.gz"


def copy_case(case_id: str, folder: Path, new_id: str | None = None) -> tuple[Path, Path]:
    """Copy one sample case into folder as NEW_ID_img.nii.gz and NEW_ID_seg.nii.gz."""
    new_id = new_id or case_id
    image, label = sample_case(case_id)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{new_id}_img.nii.gz", folder / f"{new_id}_seg.nii.gz"
    shutil.copyfile(image, out[0])
    shutil.copyfile(label, out[1])
    return out


def rewrite_nifti(path: Path, data: np.ndarray | None = None, affine: np.ndarray | None = None) -> None:
    """Save path again with other voxels and/or another affine (the header's dtype follows data)."""
    img = nib.load(path)
    data = np.asanyarray(img.dataobj) if data is None else data
    affine = img.affine if affine is None else affine
    out = nib.Nifti1Image(data, affine)
    nib.save(out, path)


def write_csv(path: Path, rows: list[dict], classes: dict | None = None) -> Path:
    columns = ["case_id", "image", "label", "split", "site", "patient_id"]
    if any("series_uid" in r for r in rows):
        columns.append("series_uid")
    lines = [",".join(columns)] + [",".join(str(r.get(c, "")) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    if classes is not None:
        import json

        path.with_name(path.stem + ".classes.json").write_text(json.dumps(classes))
    return path


def evaluation_json(**changes) -> dict:
    """What ``medft evaluate`` writes into evaluation.json (no cases), with ``changes``; a change to None
    leaves the key out."""
    import json

    from medft.formats.evaluation import Evaluation

    fields = {"evaluation_id": "0123456789abcdef0123456789abcdef",
              "model": {"path": "/runs/hippo_ft", "kind": "run", "name": "hippo_ft"}, "manifest": "/data/test.csv",
              "class_names": ["background", "organ"], "created": "2025-03-04T10:15:00+00:00", "medft_version": "0.1.0",
              "cases": []}
    made = json.loads(Evaluation(**fields).model_dump_json())
    for key, value in changes.items():
        if value is None:
            made.pop(key)
        else:
            made[key] = value
    return made
