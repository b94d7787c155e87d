"""report.html: one self-contained page from an evaluation folder made of real sample cases."""
from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medft.data.dicom import scan_folder
from medft.errors import MedftError
from medft.evaluate.report import write_report
from medft.formats.evaluation import Evaluation
from tests.conftest import evaluation_json
from tests.evaluate.helpers import CLASS_NAMES, DICOM_SERIES, make_evaluation

DATA_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


def _images(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in DATA_URI.findall(text)]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _section(text: str, anchor: str) -> str:
    start = text.index(f'<section id="{anchor}">')
    return text[start:text.index("</section>", start)]


def _assert_self_contained(text: str) -> None:
    # Base64 picture data may spell "hTTp" by chance: look for links in everything else.
    assert "http" not in DATA_URI.sub("data:image/png;base64,", text).lower()
    assert not re.search(r"<(script|link|iframe|object|embed)\b", text, re.I)
    assert not re.search(r"@import|url\(", text, re.I)
    for attribute in re.findall(r"""\b(?:src|srcset|href|poster|data)\s*=\s*["']?([^"'\s>]*)""", text, re.I):
        assert attribute.startswith(("data:", "#")), attribute


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    folder = make_evaluation(tmp_path_factory.mktemp("eval"))
    path = write_report(folder)
    return folder, path.read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------
def test_report_is_one_self_contained_file(report):
    folder, text = report
    assert (folder / "report.html").is_file()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    _assert_self_contained(text)


def test_report_shows_the_summary_numbers_as_printed(report):
    folder, text = report
    summary = json.loads((folder / "summary.json").read_text())
    for name in ["anterior", "posterior"]:
        dice = summary["overall"][name]["dice"]
        assert f"{dice['mean']:.3f} ± {dice['sd']:.3f}" in text
        assert f"95% CI {dice['ci95'][0]:.3f} – {dice['ci95'][1]:.3f}" in text
        assert f"{summary['overall'][name]['hd95']['mean']:.2f}" in text
    fg = summary["overall"]["mean_foreground"]["dice"]
    assert f"<strong>{fg['mean']:.3f}</strong>" in _section(text, "overview")
    # posterior is absent from the DICOM case's truth and prediction: its NaN Dice is counted.
    assert summary["overall"]["posterior"]["dice"]["n_nan"] == 1
    assert "n = 3, 1 NaN" in _section(text, "summary")
    # The header: model, split, counts of cases by status, warnings.
    overview = _section(text, "overview")
    for fact in ["hippo_ft, version 0.2.0", "fine-tuned run", "hospital_test.csv", "test", "2025-03-04 10:15",
                 "4 evaluated against ground truth", "1 prediction-only", "1 failed", "Warnings (2)"]:
        assert fact in overview, fact


def test_worst_cases_are_shown_worst_first_each_with_its_picture(report):
    folder, text = report
    rows = [r for r in _read_csv(folder / "per_case.csv") if r["class_index"] != "0"]
    means: dict[str, list[float]] = {}
    for row in rows:
        if row["dice"] not in ("", "nan"):
            means.setdefault(row["case_id"], []).append(float(row["dice"]))
    expected = sorted(means, key=lambda c: np.mean(means[c]))[:6]
    assert expected[0] == "hippocampus_335"  # the shifted and swapped prediction
    worst = _section(text, "worst")
    positions = [worst.index(f"{rank}. {case_id}</strong>") for rank, case_id in enumerate(expected, start=1)]
    assert positions == sorted(positions)
    for case_id in expected:
        assert f"Dice {np.mean(means[case_id]):.3f}" in worst
    figures = re.findall(r"<figure>(.*?)</figure>", worst, re.S)
    assert len(figures) == len(expected)
    assert all("<img" in f and "Picture not drawn" not in f for f in figures)
    dicom_figure = next(f for f in figures if "dicom_13" in f)
    assert "Axial slice" in dicom_figure
    # The slice is the one medft.slices picks (the review app opens the same one): most labelled voxels.
    from medft.slices import best_slice

    truth = np.asarray(nib.load(folder / "truth" / "dicom_13.nii.gz").dataobj)
    pred = np.asarray(nib.load(folder / "predictions" / "dicom_13.nii.gz").dataobj)
    z = best_slice(truth, pred, "axial", by="label")
    assert f"Axial slice {z + 1} of {truth.shape[2]}" in dicom_figure


def test_report_embeds_the_expected_images(report):
    _, text = report
    images = _images(text)
    # distributions, confusion matrix, ROC, per-site Dice, and the 4 scored cases
    assert len(images) == 4 + 4
    assert len(re.findall(r"<img\b", text)) == len(images)
    for data in images:
        width, height = _png_size(data)
        assert 150 <= width <= 3000 and 100 <= height <= 3000, (width, height)
    from PIL import Image

    picture = Image.open(io.BytesIO(images[-1]))
    picture.load()  # decodes every pixel
    assert picture.mode in ("RGB", "RGBA")
    pixels = np.asarray(picture.convert("RGB"))
    assert pixels.std() > 10  # an image, not a blank canvas


def test_unscored_cases_are_listed(report):
    _, text = report
    other = _section(text, "other")
    assert "hippocampus_338" in other and "EOFError: Compressed file ended" in other
    assert "hippocampus_336" in other and "Prediction only (1)" in other
    assert "hippocampus_336" not in _section(text, "worst")


def test_no_patient_data_from_dicom_headers(report):
    _, text = report
    header = pydicom.dcmread(next(DICOM_SERIES.glob("*.dcm")), stop_before_pixels=True)
    name = str(header.PatientName)
    assert name and header.PatientID
    for secret in [name, *re.split(r"[\^ ]+", name), str(header.PatientID)]:
        if len(secret) >= 3:
            assert secret.lower() not in text.lower(), secret
    assert str(DICOM_SERIES) not in text  # no image paths either
    assert "dicom_13" in text


def test_no_file_paths_whose_folders_may_name_the_patient(tmp_path):
    """Hospital exports often name folders after the patient: messages that name files show "[path]"."""
    folder = make_evaluation(tmp_path / "eval")
    patient = tmp_path / "Doe Jane MRN4711"
    patient.mkdir()
    evaluation = json.loads((folder / "evaluation.json").read_text())
    evaluation["manifest"] = str(patient / "manifest.csv")
    failed = next(c for c in evaluation["cases"] if c["status"] == "failed")
    failed["image"] = [str(patient / "t1 scan.nii.gz")]
    failed["message"] = (f"ERROR case hippocampus_338: {patient}/t1 scan.nii.gz: cannot be read (ImageFileError: "
                         f'Cannot work out file type of "{patient}/t1 scan.nii.gz"). Fix: copy it again')
    evaluation["warnings"].append("case hippocampus_336: label file /data/Roe_Richard/seg.nii.gz not found: "
                                  "evaluated as prediction-only")
    (folder / "evaluation.json").write_text(json.dumps(evaluation))
    (folder / "predictions" / "hippocampus_333.nii.gz").unlink()  # its "Picture not drawn" names the file
    text = DATA_URI.sub("data:image/png;base64,", write_report(folder).read_text())  # pictures may spell anything
    for secret in ["Doe", "Jane", "MRN4711", "Roe_Richard", str(tmp_path), "/data/"]:
        assert secret not in text, secret
    assert ("hippocampus_338: [path]: cannot be read (ImageFileError: Cannot work out file type of "
            "&quot;[path]&quot;). Fix: copy it again") in _section(text, "other")
    assert "label file [path] not found" in _section(text, "overview")
    assert "<td>manifest.csv</td>" in _section(text, "overview")
    assert "Picture not drawn: " in _section(text, "worst") and "[path]" in _section(text, "worst")


def test_a_picture_not_drawn_for_a_folder_of_two_dicom_series_names_no_series(tmp_path):
    folder = make_evaluation(tmp_path / "eval")
    two = tmp_path / "two_series"
    shutil.copytree(DICOM_SERIES, two / "a")
    shutil.copytree(DICOM_SERIES.parents[1] / "study2" / "14_HCropVolume", two / "b")
    evaluation = json.loads((folder / "evaluation.json").read_text())
    next(c for c in evaluation["cases"] if c["case_id"] == "dicom_13")["image"] = [str(two)]
    (folder / "evaluation.json").write_text(json.dumps(evaluation))
    worst = _section(write_report(folder).read_text(), "worst")
    assert "Picture not drawn: ERROR [path]: holds 2 DICOM series and medft does not merge series" in worst
    assert not [s.uid for s in scan_folder(two).series if s.uid in worst] and "HippoCrop" not in worst


def test_how_to_read_gives_the_nan_conventions_of_the_distances_and_the_nsd_tolerance(report):
    _, text = report
    notes = _section(text, "notes")
    assert "a structure the model missed makes HD95 NaN, not large" in notes
    assert "within 1 mm of each other" in notes
    assert "0 when only one of ground truth and prediction has the structure, NaN when neither has it" in notes


def test_how_to_read_says_that_few_cases_make_the_percentile_interval_too_narrow(report):
    """With few cases the percentile bootstrap of a mean covers less than its level: checked, and said on the page."""
    from medft.evaluate.summary import bootstrap_ci

    rng = np.random.default_rng(1)
    samples = rng.beta(8, 2, size=(400, 3))  # Dice-like values, true mean 0.8
    covered = np.mean([lo <= 0.8 <= hi for lo, hi in (bootstrap_ci(v, 500, seed=k) for k, v in enumerate(samples))])
    assert 0.65 < covered < 0.85
    notes = _section(report[1], "notes")
    assert "with fewer than about 10 cases it holds the true mean less often than 95% of the time" in notes


def test_report_without_roc_sites_or_a_prediction_file(tmp_path):
    folder = make_evaluation(tmp_path / "eval", sites=False, roc=False)
    (folder / "predictions" / "hippocampus_334.nii.gz").unlink()
    text = write_report(folder).read_text()
    _assert_self_contained(text)
    assert "No ROC curves" in _section(text, "roc")
    assert "no per-site comparison" in _section(text, "sites")
    worst = _section(text, "worst")  # a missing file is said, not fatal
    assert "Picture not drawn" in worst and "hippocampus_334" in worst
    assert len(_images(text)) == 2 + 3  # distributions, confusion matrix, 3 of the 4 scored cases


def test_report_without_any_labelled_case(tmp_path):
    folder = make_evaluation(tmp_path / "eval", labelled=False)
    text = write_report(folder).read_text()
    _assert_self_contained(text)
    assert _images(text) == []
    assert "No case with ground truth was evaluated" in text
    assert "hippocampus_336" in _section(text, "other") and "hippocampus_338" in _section(text, "other")
    for anchor in ["summary", "distributions", "confusion", "roc", "sites", "worst"]:
        assert 'class="note"' in _section(text, anchor), anchor


def test_not_an_evaluation_folder(tmp_path):
    with pytest.raises(MedftError, match="evaluation.json"):
        write_report(tmp_path)


def test_a_damaged_evaluation_file_says_to_evaluate_into_a_new_folder(tmp_path):
    (tmp_path / "evaluation.json").write_text("{cut sh")
    with pytest.raises(MedftError, match=r"evaluation.json: not valid JSON .*Fix: evaluate the model again into a new "
                                         r"folder \(`medft evaluate MODEL --manifest MANIFEST --out NEW_EVAL_DIR`\)"):
        write_report(tmp_path)


def _read_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_worst_cases_are_at_most_six_and_skip_cases_without_a_defined_dice(tmp_path):
    from medft.evaluate.folder import EvaluationFolder
    from medft.evaluate.report import worst_cases

    dice = {f"c{k}": (0.9 - 0.1 * k, 0.8 - 0.1 * k) for k in range(8)}
    dice["one_nan"] = (0.05, math.nan)  # foreground mean over the defined class only: 0.05
    dice["all_nan"] = (math.nan, math.nan)  # nothing to rank
    rows = [{"case_id": case_id, "site": "", "class_index": c, "class_name": CLASS_NAMES[c],
             "dice": 0.99 if c == 0 else values[c - 1]}
            for case_id, values in dice.items() for c in range(3)]
    folder = EvaluationFolder(tmp_path, Evaluation(**evaluation_json(class_names=CLASS_NAMES)), None, rows)
    worst = worst_cases(folder)
    assert [c for c, _ in worst] == ["one_nan", "c7", "c6", "c5", "c4", "c3"]
    assert worst[0][1] == pytest.approx(0.05) and worst[1][1] == pytest.approx(0.15)


def test_the_headline_counts_the_cases_whose_dice_is_undefined(tmp_path):
    """It said "on 9 cases with ground truth" where 11 had ground truth and 2 had nothing to score."""
    from medft.evaluate.folder import EvaluationFolder
    from medft.evaluate.report import _headline

    dice = {"mean": 0.5, "ci95": [0.4, 0.6], "n": 9, "n_nan": 2}
    summary = {"overall": {"mean_foreground": {"dice": dice}, "anterior": {"dice": dice}}}
    folder = EvaluationFolder(tmp_path, Evaluation(**evaluation_json(class_names=["background", "anterior"])), summary)
    assert ("on 9 cases with ground truth (and 2 more whose Dice is undefined: no structure in either the ground "
            "truth or the prediction); per class: anterior 0.500") in _headline(folder)
    dice["n_nan"] = 0
    assert "on 9 cases with ground truth; per class" in _headline(folder)
