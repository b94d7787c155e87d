"""DICOM in and out end to end: ground truth given as DICOM SEG or RTSTRUCT trains, evaluates, shows in the review
app and is checked by check-data as the same labels given as NIfTI; predictions come out as DICOM SEG.

The ground truth is the demo bundle's own prediction on the sample DICOM crops, moved by one slice (so Dice is
neither 0 nor 1), written three ways: as NIfTI by SimpleITK (geometry independent of medft's DICOM code), as a
DICOM SEG by highdicom and as an RTSTRUCT traced from it (``tests.dicom_objects``).
"""
from __future__ import annotations

import csv
import gzip
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.conftest import SAMPLE, write_csv
from tests.dicom_objects import make_oblique, write_rtstruct, write_seg
from tests.stress.helpers import DEMO_BUNDLE

SERIES = {"crop_1": SAMPLE / "dicom" / "study1" / "13_HCropVolume", "crop_2": SAMPLE / "dicom" / "study2" / "14_HCropVolume"}
CLASSES = {"0": "background", "1": {"name": "hippocampus", "aliases": ["Hippocampus whole", "HIPPO"],
                                    "code": {"value": "5976007", "scheme": "SCT", "meaning": "Hippocampus"}}}
SEGMENT_NAMES = {1: "Hippocampus whole"}  # the SEG's segment label: an alias
ROI_NAMES = {1: " hippocampus "}  # the RTSTRUCT's ROI name: the class name, other case and spaces


def _patient_particulars() -> set[str]:
    found = set()
    for folder in SERIES.values():
        header = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
        found |= {str(header.PatientID), str(header.PatientName), *header.PatientName.components,
                  header.PatientName.family_name, header.PatientName.given_name}
    return {p for p in found if len(p) > 2}


def _sitk_series(folder: Path):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> dict:
    """Series copies (the two crops and an oblique copy of the first), each with its ground truth as NIfTI, SEG and
    RTSTRUCT, and one manifest per form."""
    import SimpleITK as sitk
    import torch

    from medft.evaluate.run import predict_files

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("dicom_io")
    series = {case_id: shutil.copytree(folder, root / "series" / case_id) for case_id, folder in SERIES.items()}
    series["crop_1_oblique"] = shutil.copytree(SERIES["crop_1"], root / "series" / "crop_1_oblique")
    make_oblique(series["crop_1_oblique"], degrees=30.0, axis="x")
    predicted = predict_files(DEMO_BUNDLE, list(series.values()), root / "predicted")
    rows = {form: [] for form in ("nifti", "seg", "rtstruct")}
    truths = {}
    for (case_id, folder), prediction in zip(series.items(), predicted, strict=True):
        reference = _sitk_series(folder)
        # the prediction on the series' grid, in SimpleITK's (slice, row, column) order, moved by one slice
        on_grid = sitk.Resample(sitk.ReadImage(str(prediction)), reference, sitk.Transform(), sitk.sitkNearestNeighbor)
        truth = np.roll(sitk.GetArrayFromImage(on_grid).astype(np.uint8), 1, axis=0)
        assert 0 < truth.sum() < truth.size
        truths[case_id] = truth
        as_nifti = sitk.GetImageFromArray(truth)
        as_nifti.CopyInformation(reference)
        labels = root / "labels" / case_id
        labels.mkdir(parents=True)
        sitk.WriteImage(as_nifti, str(labels / "truth.nii.gz"))
        files = {"nifti": labels / "truth.nii.gz",
                 "seg": write_seg(folder, truth, SEGMENT_NAMES, labels / "truth_seg.dcm"),
                 "rtstruct": write_rtstruct(folder, truth, ROI_NAMES, labels / "truth_rtstruct.dcm")}
        split = "val" if case_id == "crop_1_oblique" else "train"
        for form, label in files.items():
            rows[form].append({"case_id": case_id, "image": folder, "label": label, "split": split})
    manifests = {form: write_csv(root / f"{form}.csv", form_rows, classes=CLASSES) for form, form_rows in rows.items()}
    return {"root": root, "series": series, "manifests": manifests, "truths": truths}


@pytest.fixture(scope="module")
def evaluations(labelled) -> dict:
    """The demo bundle evaluated on each form of the labels; the SEG form with --dicom-seg."""
    from medft.evaluate.run import evaluate

    return {form: evaluate(DEMO_BUNDLE, manifest, labelled["root"] / f"eval_{form}", dicom_seg=form == "seg").folder
            for form, manifest in labelled["manifests"].items()}


def _per_case(folder: Path) -> list[dict]:
    with open(folder / "per_case.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_check_data_finds_nothing_wrong_with_seg_and_rtstruct_labels(labelled):
    from medft.data.checks import check_manifest

    for form in ("seg", "rtstruct"):
        problems = check_manifest(labelled["manifests"][form], workers=1, progress=False)
        assert [p for p in problems if p.severity == "error"] == [], form


def test_seg_and_rtstruct_labels_load_as_the_nifti_labels_voxel_for_voxel(labelled):
    from medft.data.loading import dicom_source, load_label
    from medft.data.manifest import load_manifest

    forms = {form: load_manifest(path) for form, path in labelled["manifests"].items()}
    for index, case in enumerate(forms["nifti"].cases):
        expected = load_label(case.label).numpy()
        assert expected.sum() > 0
        for form in ("seg", "rtstruct"):
            other = forms[form].cases[index]
            loaded = load_label(other.label, series=dicom_source(other.image), segments=forms[form].segment_names)
            assert np.array_equal(loaded.numpy(), expected), (form, case.case_id)
            assert np.allclose(np.asarray(loaded.affine), np.asarray(load_label(case.label).affine), atol=1e-4)


def test_evaluation_scores_seg_and_rtstruct_labels_as_the_nifti_labels(evaluations):
    nifti = _per_case(evaluations["nifti"])
    dice = [float(row["dice"]) for row in nifti if row["class_index"] == "1"]
    assert len(dice) == 3 and all(0.2 < d < 0.99 for d in dice), dice  # a real overlap, neither none nor all
    for form in ("seg", "rtstruct"):
        assert _per_case(evaluations[form]) == nifti, form


def test_dicom_seg_predictions_read_back_as_the_nifti_predictions(labelled, evaluations):
    import highdicom as hd
    import SimpleITK as sitk

    evaluation = json.loads((evaluations["seg"] / "evaluation.json").read_text())
    for case in evaluation["cases"]:
        seg_path = evaluations["seg"] / case["dicom_seg"]
        assert seg_path.name == f"{case['case_id']}.seg.dcm"
        folder = labelled["series"][case["case_id"]]
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
        uids = [str(pydicom.dcmread(name, stop_before_pixels=True).SOPInstanceUID) for name in names]
        seg = hd.seg.segread(seg_path)
        read_back = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                                      ignore_spatial_locations=True)
        prediction = sitk.Resample(sitk.ReadImage(str(evaluations["seg"] / case["prediction"])), _sitk_series(folder),
                                   sitk.Transform(), sitk.sitkNearestNeighbor)
        assert np.array_equal(read_back, sitk.GetArrayFromImage(prediction)), case["case_id"]
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ["hippocampus"]
        assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "5976007"
        assert "hippocampus_demo" in seg.SegmentSequence[0].SegmentAlgorithmName


def test_nothing_medft_writes_besides_the_seg_names_the_patient(labelled, evaluations, capsys):
    from medft.cli import main

    out = labelled["root"] / "predict_cli"
    assert main(["predict", str(DEMO_BUNDLE), str(labelled["series"]["crop_1"]), "--out", str(out), "--dicom-seg"]) == 0
    assert main(["check-data", str(labelled["manifests"]["seg"]), "--workers", "1"]) == 0
    printed = capsys.readouterr()
    texts = [printed.out, printed.err]
    for folder in (*evaluations.values(), out):
        for path in folder.rglob("*"):
            if path.is_file() and not path.name.endswith(".seg.dcm"):
                data = path.read_bytes()
                texts.append((gzip.decompress(data) if path.suffix == ".gz" else data).decode("latin-1"))
    assert (out / "crop_1.seg.dcm").is_file()
    for particular in _patient_particulars():
        assert not any(particular in text for text in texts), "a patient particular appears"


def test_review_app_draws_seg_and_rtstruct_ground_truth_as_nifti_ground_truth(evaluations):
    from medft.review.cases import CaseTable
    from medft.review.volumes import load_case

    tables = {form: CaseTable.from_eval_dir(folder) for form, folder in evaluations.items()}
    for case_id in tables["nifti"].case_ids:
        expected = load_case(tables["nifti"], case_id)
        assert expected.truth.any()
        for form in ("seg", "rtstruct"):
            shown = load_case(tables[form], case_id)
            assert np.array_equal(shown.truth, expected.truth), (form, case_id)
            assert np.allclose(shown.affine, expected.affine, atol=1e-4)


def test_check_data_names_a_seg_of_another_series(labelled, tmp_path):
    from medft.data.checks import check_manifest

    other_seg = labelled["root"] / "labels" / "crop_2" / "truth_seg.dcm"
    manifest = write_csv(tmp_path / "wrong.csv", [{"case_id": "crop_1", "image": labelled["series"]["crop_1"],
                                                   "label": other_seg, "split": "test"}], classes=CLASSES)
    errors = [p for p in check_manifest(manifest, workers=1, progress=False) if p.severity == "error"]
    assert errors and all(Path(p.file) == other_seg for p in errors)
    assert any("SeriesInstanceUID" in p.problem for p in errors), [str(p) for p in errors]
    assert all(p.case_id == "crop_1" for p in errors)


def test_training_on_seg_labels_gives_the_numbers_of_nifti_labels(labelled, tmp_path):
    from medft.config import load_config
    from medft.train.recipe import run_training
    from tests.train.helpers import make_config

    metrics = {}
    for form in ("nifti", "seg"):
        config = make_config(tmp_path / form, **{"data.manifest": str(labelled["manifests"][form]), "train.epochs": 2,
                                                 "train.batch_size": 1, "data.spatial_size": [32, 32, 32], "freeze": []})
        run_training(load_config(config), tmp_path / form / "run")
        lines = (tmp_path / form / "run" / "metrics.jsonl").read_text().splitlines()
        metrics[form] = [json.loads(line) for line in lines]
    keys = ("train_loss", "val_dice")
    seen = [{k: v for k, v in epoch.items() if any(k.startswith(key) for key in keys)} for epoch in metrics["nifti"]]
    assert len(seen) == 2 and all("train_loss" in epoch for epoch in seen) and any("val_dice" in epoch for epoch in seen)
    written = [path.read_bytes().decode("latin-1") for path in (tmp_path / "seg" / "run").rglob("*") if path.is_file()
               and path.suffix in (".log", ".json", ".jsonl", ".yaml")]
    assert written and not any(particular in text for text in written for particular in _patient_particulars())
    assert seen == [{k: v for k, v in epoch.items() if any(k.startswith(key) for key in keys)} for epoch in metrics["seg"]]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian's dicom3tools) is not installed")
def test_predicted_segs_pass_dciodvfy(evaluations):
    for path in sorted((evaluations["seg"] / "predictions").glob("*.seg.dcm")):
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], errors


def test_predict_writes_no_seg_for_a_nifti_input_and_says_so(tmp_path, caplog):
    from medft.cli import main
    from medft.evaluate.run import predict_files
    from tests.conftest import sample_case

    image, _ = sample_case()
    written = predict_files(DEMO_BUNDLE, [image], tmp_path / "out", dicom_seg=True)
    assert written == [tmp_path / "out" / "hippocampus_334.nii.gz"]
    assert "no DICOM series, so no DICOM SEG of it" in caplog.text
    assert main(["predict", str(DEMO_BUNDLE), str(image), "--out", str(tmp_path / "other"), "--classes",
                 str(tmp_path / "c.json")]) == 1
    assert not (tmp_path / "other").exists()


def test_check_data_warns_of_a_segment_that_names_no_class(labelled, tmp_path):
    from medft.data.checks import check_manifest

    truth = labelled["truths"]["crop_1"].copy()
    truth[0, :2, :2] = 2  # a second segment, named after no class
    seg = write_seg(labelled["series"]["crop_1"], truth, {1: "HIPPO", 2: "Couch"}, tmp_path / "two_segments.dcm")
    manifest = write_csv(tmp_path / "extra.csv", [{"case_id": "crop_1", "image": labelled["series"]["crop_1"],
                                                   "label": seg, "split": "test"}], classes=CLASSES)
    problems = check_manifest(manifest, workers=1, progress=False)
    assert [(p.severity, p.problem) for p in problems] == [("warning", "segment 'Couch' maps to no class; ignored")]
    assert problems[0].file == seg and problems[0].case_id == "crop_1"
