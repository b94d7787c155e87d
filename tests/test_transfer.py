"""Faithful transfer: a bundle made by others (plain MONAI, 1.5 mm, percentile scaling, Invertd) gets through
medft the inputs it was trained on, and gives what MONAI's own inference of it gives."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from medft.bundle.export import export_run
from medft.config import load_config
from medft.evaluate.run import evaluate, predict_files
from medft.train.recipe import run_training
from tests.conftest import REPO, SAMPLE, sample_case, write_csv
from tests.foreign_bundle import CLASSES, make_foreign_bundle, monai_predict, stored_otherwise

PRETRAIN = ["hippocampus_349", "hippocampus_351", "hippocampus_353", "hippocampus_354", "hippocampus_355",
            "hippocampus_361", "hippocampus_363", "hippocampus_368"]
TRAIN = ["hippocampus_334", "hippocampus_335"]
VAL = ["hippocampus_340", "hippocampus_345", "hippocampus_370"]
DICOM = SAMPLE / "dicom" / "study1" / "13_HCropVolume"


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return make_foreign_bundle(tmp_path_factory.mktemp("foreign") / "bundle", [sample_case(c) for c in PRETRAIN])


def _dice_by_hand(pred: np.ndarray, truth: np.ndarray, c: int) -> float:
    tp = int(((pred == c) & (truth == c)).sum())
    fp, fn = int(((pred == c) & (truth != c)).sum()), int(((pred != c) & (truth == c)).sum())
    return 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else float("nan")


def test_evaluate_predicts_what_monai_predicts_at_any_spacing_orientation_and_from_dicom(foreign, tmp_path):
    other = [stored_otherwise(*sample_case(c), tmp_path / "other" / c) for c in VAL[:2]]
    rows = [{"case_id": c, "image": sample_case(c)[0], "label": sample_case(c)[1], "split": "test"} for c in VAL]
    rows += [{"case_id": f"{c}_turned", "image": image, "label": label, "split": "test"}
             for c, (image, label) in zip(VAL[:2], other, strict=True)]
    rows.append({"case_id": "dicom_crop", "image": DICOM, "label": "", "split": "test"})
    manifest = write_csv(tmp_path / "manifest.csv", rows, classes=CLASSES)
    out = evaluate(foreign, manifest, tmp_path / "eval").folder

    per_case = list(csv.DictReader((out / "per_case.csv").open()))
    inputs = {row["case_id"]: row for row in rows}
    for case_id, row in inputs.items():
        ours = nib.load(out / "predictions" / f"{case_id}.nii.gz")
        image = nib.load(row["image"]) if case_id != "dicom_crop" else None
        theirs = monai_predict(foreign, row["image"])
        assert ours.shape == theirs.shape
        if image is not None:  # the prediction lies on the input's own grid, in its own axis order
            assert np.allclose(ours.affine, image.affine, atol=1e-4) and ours.shape == image.shape
        assert np.array_equal(np.asanyarray(ours.dataobj), theirs), case_id
        if row["label"]:
            truth = np.asanyarray(nib.load(row["label"]).dataobj)
            for c in (1, 2):
                dice = next(float(r["dice"]) for r in per_case if r["case_id"] == case_id and r["class_index"] == str(c))
                assert dice == pytest.approx(_dice_by_hand(theirs, truth, c), abs=1e-9)
    # the network was not shown noise: the bundle's own Dice on these cases is that of a trained model
    dice = [float(r["dice"]) for r in per_case if r["class_index"] != "0" and r["case_id"] in VAL]
    assert np.mean(dice) > 0.6
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert [s["_target_"] for s in evaluation["preprocessing"]["steps"]] == [
        "Orientationd", "Spacingd", "ScaleIntensityRangePercentilesd", "EnsureTyped"]
    assert "code_root" not in evaluation["preprocessing"]


@pytest.fixture(scope="module")
def lr_zero_run(foreign, tmp_path_factory):
    root = tmp_path_factory.mktemp("lr0")
    rows = [{"case_id": c, "image": sample_case(c)[0], "label": sample_case(c)[1], "split": s}
            for ids, s in ((TRAIN, "train"), (VAL, "val")) for c in ids]
    manifest = write_csv(root / "manifest.csv", rows, classes=CLASSES)
    config = {"model": {"bundle": str(foreign)},
              "data": {"manifest": str(manifest), "spatial_size": [32, 32, 32], "augmentation": "none"},
              "optim": {"lr": 0.0, "warmup_epochs": 0}, "train": {"epochs": 1, "batch_size": 2}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    run_training(load_config(root / "config.yaml"), root / "run")
    return root / "run"


def test_training_at_learning_rate_zero_validates_at_the_bundles_own_dice(foreign, lr_zero_run):
    record = json.loads((lr_zero_run / "metrics.jsonl").read_text().splitlines()[0])
    own = {c: [] for c in (1, 2)}
    for case_id in VAL:
        image, label = sample_case(case_id)
        theirs, truth = monai_predict(foreign, image), np.asanyarray(nib.load(label).dataobj)
        for c in own:
            own[c].append(_dice_by_hand(theirs, truth, c))
    expected = [float(np.nanmean(own[c])) for c in (1, 2)]
    assert list(record["val_dice_per_class"].values()) == pytest.approx(expected, abs=1e-9)
    assert min(expected) > 0.4  # a trained network, fine-tuning starts from what it knows
    config = yaml.safe_load((lr_zero_run / "config.yaml").read_text())
    assert config["data"]["preprocessing"] == "bundle" and config["data"]["intensity"] is None
    recorded = json.loads((lr_zero_run / "preprocessing.json").read_text())
    assert recorded["source"] == "bundle" and recorded["steps"][1]["pixdim"] == [1.5, 1.5, 1.5]


def test_the_export_runs_in_plain_monai_as_medft_predicts(foreign, lr_zero_run, tmp_path):
    bundle = export_run(lr_zero_run, tmp_path / "exported")
    image, _ = stored_otherwise(*sample_case("hippocampus_390"), tmp_path / "turned")
    [ours] = predict_files(lr_zero_run, [image], tmp_path / "pred")
    plain = monai_predict(bundle, image)
    assert np.array_equal(np.asanyarray(nib.load(ours).dataobj), plain)
    assert nib.load(ours).shape == nib.load(image).shape
    # at learning rate 0 the weights are the foreign bundle's: the same network, run as its makers ran it
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    names = [t["_target_"] for t in inference["preprocessing"]["transforms"]]
    assert names == ["LoadImaged", "EnsureChannelFirstd", "Orientationd", "Spacingd", "ScaleIntensityRangePercentilesd",
                     "EnsureTyped"]
    assert any(t["_target_"] == "Invertd" for t in inference["postprocessing"]["transforms"])


def test_a_bundle_without_preprocessing_is_refused_with_the_fix(foreign, tmp_path):
    bundle = shutil.copytree(foreign, tmp_path / "bare")
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    del config["preprocessing"], config["postprocessing"]
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    manifest = write_csv(tmp_path / "m.csv", [{"case_id": "a", "image": sample_case("hippocampus_340")[0], "split": "test"}],
                         classes=CLASSES)
    from medft.errors import MedftError

    with pytest.raises(MedftError, match="declares no preprocessing.*Fix: add its preprocessing"):
        evaluate(bundle, manifest, tmp_path / "eval")


MESHNET = REPO.parent / "shared" / "bundles" / "meshnet_brainchop_18cls"


def test_a_network_pretrained_by_others_fine_tunes_on_the_inputs_it_was_trained_on(tmp_path):
    """brainchop's MeshNet (../shared/bundles, MIT): its own network code in scripts/, its own preprocessing."""
    if not MESHNET.is_dir():
        pytest.skip(f"{MESHNET} is not here (a fresh clone has only the embedded sample)")
    from medft.bundle.inspect import inspect_bundle

    result = inspect_bundle(str(MESHNET), out_channels=3, input_size=24)  # its 96^3 window takes a minute on 2 cores
    assert result["would_train"], result["errors"]
    steps = result["preprocessing"]["steps"]
    assert [s["_target_"] for s in steps] == ["Orientationd", "Spacingd", "ScaleIntensityd", "EnsureTyped"]
    assert steps[1]["pixdim"] == [1.0, 1.0, 1.0] and (steps[2]["minv"], steps[2]["maxv"]) == (0.0, 1.0)
    rows = [{"case_id": c, "image": sample_case(c)[0], "label": sample_case(c)[1], "split": s}
            for ids, s in ((TRAIN, "train"), (VAL[:1], "val")) for c in ids]
    config = {"model": {"bundle": str(MESHNET)},
              "data": {"manifest": str(write_csv(tmp_path / "m.csv", rows, classes=CLASSES)), "spatial_size": [32, 32, 32],
                       "sampling": "patch", "samples_per_volume": 1},
              "freeze": [{"epoch": 0, "preset": "all_but_head"}], "train": {"epochs": 1, "batch_size": 2}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    run_training(load_config(tmp_path / "c.yaml"), tmp_path / "run")
    table = (tmp_path / "run" / "head_adaptation.txt").read_text()
    assert "loaded              18 (90.0%)" in table  # every tensor but the 18-class classifier's weight and bias
    assert json.loads((tmp_path / "run" / "preprocessing.json").read_text())["steps"] == steps
