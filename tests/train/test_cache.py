"""Cached cases within a memory budget: the rest on disk, keyed by the files and the preprocessing."""
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from medft.config import load_config
from medft.data.footprint import case_bytes, footprint, label_itemsize
from medft.data.preprocessing import Preprocessing
from medft.errors import MedftError
from medft.train.cache import GB, case_key, memory_budget
from medft.train.recipe import run_training
from tests.conftest import sample_case
from tests.train.helpers import TRAIN_IDS, VAL_IDS, make_config

TINY = 1e-9  # GB: no case fits in memory


def _losses(run_dir):
    return [json.loads(line)["train_loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _entries(folder):
    return sorted(p.name for p in folder.glob("*.pt"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same run with every case in memory and with every case on disk."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cache")
    memory = make_config(root, **{"train.epochs": 2, "freeze": []})
    disk = make_config(root, **{"train.epochs": 2, "freeze": [], "data.cache_memory": TINY,
                                "data.cache_dir": str(root / "disk_cache")})
    run_training(load_config(memory), root / "memory")
    run_training(load_config(disk), root / "disk")
    return root


def test_cases_over_the_budget_train_from_disk_to_the_same_losses(runs):
    assert _losses(runs / "disk") == _losses(runs / "memory")  # the very same values: nothing else changed
    assert len(_entries(runs / "disk_cache")) == len(TRAIN_IDS) + len(VAL_IDS)
    log = (runs / "disk" / "train.log").read_text()
    assert f"cached: 0 case(s) in memory (0.0 MB of a 0.0 MB budget); {len(TRAIN_IDS) + len(VAL_IDS)} case(s)" in log
    assert str(runs / "disk_cache") in log and "data.cache_memory sets the budget" in log
    assert "cached: 6 case(s) in memory" in (runs / "memory" / "train.log").read_text()


def test_the_disk_cache_holds_labels_as_bytes_and_is_reused_until_a_file_changes(runs, tmp_path):
    cache = runs / "disk_cache"
    stored = [torch.load(p, weights_only=False) for p in cache.glob("*.pt")]
    assert {entry["label"].dtype for entry in stored} == {torch.uint8}
    assert {entry["image"].dtype for entry in stored} == {torch.float32}
    before = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.pt")}
    again = make_config(runs, **{"train.epochs": 1, "freeze": [], "data.cache_memory": TINY, "data.cache_dir": str(cache)})
    run_training(load_config(again), tmp_path / "again")
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.pt")} == before  # read back, not written again

    case = {"case_id": "a", "image": [str(tmp_path / "a.nii.gz")], "label": None}
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), tmp_path / "a.nii.gz")
    key = case_key(case, {"preprocessing": 1})
    assert case_key(case, {"preprocessing": 1}) == key and case_key(case, {"preprocessing": 2}) != key
    os.utime(tmp_path / "a.nii.gz", ns=(0, 0))  # the file changed (its time)
    assert case_key(case, {"preprocessing": 1}) != key


def test_a_case_that_fails_to_load_from_the_disk_part_is_named_before_training(tmp_path):
    config = make_config(tmp_path, **{"train.epochs": 1, "data.cache_memory": TINY, "data.cache_dir": str(tmp_path / "c")})
    manifest = tmp_path / "manifest.csv"
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    manifest.write_text(manifest.read_text().replace(str(sample_case(TRAIN_IDS[2])[0]), str(broken)))
    with pytest.raises(MedftError, match=rf"{TRAIN_IDS[2]}.*broken.nii.gz"):
        run_training(load_config(config), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or not (tmp_path / "run" / "metrics.jsonl").read_text()


def test_the_size_estimate_from_headers_matches_the_preprocessed_case():
    image, label = sample_case(TRAIN_IDS[0])
    record = {"case_id": TRAIN_IDS[0], "image": [str(image)], "label": str(label)}
    for preprocessing in (Preprocessing.medft(None, "zscore"), Preprocessing.medft([0.5, 0.5, 0.5], "zscore")):
        case = preprocessing.training()
        data = record
        for step in case:
            data = step(data)
        actual = data["image"].numel() * 4 + data["label"].numel() * label_itemsize(3)
        estimate = case_bytes(record, preprocessing, classes=3)
        assert abs(estimate - actual) / actual < 0.05, (estimate, actual)
    assert footprint([image]).voxels == np.prod(nib.load(image).shape)


def test_the_default_budget_is_half_the_available_memory_shared_by_the_local_processes(monkeypatch):
    monkeypatch.setattr("medft.train.cache.available_memory", lambda: 16 * GB)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert memory_budget(None) == 8 * GB and memory_budget(2.5) == int(2.5 * GB)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert memory_budget(None) == 2 * GB


def test_a_dicom_case_is_read_back_from_the_disk_cache_without_being_preprocessed_again(tmp_path, recwarn):
    from monai.transforms import Compose

    from medft.train.cache import CaseStore
    from tests.conftest import SAMPLE

    case = {"case_id": "dicom", "image": [str(SAMPLE / "dicom" / "study1" / "13_HCropVolume")]}
    chain = Compose(Preprocessing.medft([1.0, 1.0, 1.0], "zscore").inference())
    first = CaseStore(0, tmp_path, {"x": 1}).dataset([case], chain, [1], "val")[0]
    written = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.pt")}
    again = CaseStore(0, tmp_path, {"x": 1}).dataset([case], chain, [1], "val")[0]
    assert len(written) == 1 and {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.pt")} == written
    assert torch.equal(again["image"], first["image"]) and again["image"].applied_operations  # invertible still
    assert not [w for w in recwarn if "Corrupt cache" in str(w.message)]

