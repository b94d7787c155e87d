"""The review app's case table and case loading, on an evaluation folder made of real sample cases.

``make_review_eval`` is shared with the app tests (``test_app.py``, ``test_browser.py``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medft.errors import MedftError
from medft.evaluate.summary import write_per_case
from medft.review.cases import CaseTable, UnknownCaseError, check_eval_dir, format_score
from tests.conftest import SAMPLE, sample_case

CLASS_NAMES = ["background", "anterior", "posterior"]
DICOM_SERIES = SAMPLE / "dicom" / "study1" / "13_HCropVolume"


# --------------------------------------------------------------------------------------------
# An evaluation folder as `medft evaluate` writes it
# --------------------------------------------------------------------------------------------
def _perturb(label: np.ndarray, how: str) -> np.ndarray:
    if how == "shift1":
        return np.roll(label, 1, axis=0)
    if how == "shift3_swap":  # bad: shifted, and every other slice of posterior called anterior
        out = np.roll(label, 3, axis=1)
        out[(out == 2) & (np.arange(out.shape[2])[None, None, :] % 2 == 0)] = 1
        return out
    if how == "posterior_missed":  # anterior right, posterior mostly missed
        out = label.copy()
        out[(label == 2) & (np.arange(label.shape[1])[None, :, None] % 8 != 0)] = 0
        return out
    return label.copy()


def _rows(case_id: str, site: str, truth: np.ndarray, pred: np.ndarray) -> list[dict]:
    rows = []
    for c, name in enumerate(CLASS_NAMES):
        t, p = truth == c, pred == c
        tp, fp, fn = int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum())
        tn = int(t.size - tp - fp - fn)
        ratio = lambda a, b: a / b if b else math.nan  # noqa: E731
        rows.append({"case_id": case_id, "site": site, "class_index": c, "class_name": name,
                     "dice": ratio(2 * tp, 2 * tp + fp + fn), "sensitivity": ratio(tp, tp + fn),
                     "specificity": ratio(tn, tn + fp), "hd95": math.nan, "nsd": math.nan,
                     "tp": tp, "fp": fp, "fn": fn, "tn": tn})
    return rows


def _lps(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """The same voxels stored left-right and front-back flipped (an LPS file): RAS loading undoes it."""
    data = np.asanyarray(img.dataobj)[::-1, ::-1, :]
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = data.shape[0] - 1, data.shape[1] - 1
    return nib.Nifti1Image(np.ascontiguousarray(data), img.affine @ flip)


def make_review_eval(folder: Path) -> Path:
    """An evaluation folder of real sample cases.

    Scored: hippocampus_333 (north, one voxel shift), hippocampus_334 (north, posterior mostly
    missed, stored as an LPS file), hippocampus_335 (south, the worst), dicom_13 (south, a DICOM
    series, only anterior in the truth: posterior's Dice is NaN). hippocampus_336: prediction
    only; hippocampus_338: failed.
    """
    folder = Path(folder)
    (folder / "predictions").mkdir(parents=True)
    (folder / "truth").mkdir()
    cases, rows = [], []
    for case_id, site, how in (("hippocampus_333", "north", "shift1"), ("hippocampus_334", "north", "posterior_missed"),
                               ("hippocampus_335", "south", "shift3_swap")):
        image_path, label_path = sample_case(case_id)
        label = nib.load(label_path)
        truth = np.asarray(label.dataobj).astype(np.uint8)
        pred = _perturb(truth, how)
        pred_img = nib.Nifti1Image(pred, label.affine)
        if case_id == "hippocampus_334":  # image, label and prediction as LPS files
            image_path, label_path = folder / "truth" / "334_img.nii.gz", folder / "truth" / "334_seg.nii.gz"
            nib.save(_lps(nib.load(sample_case(case_id)[0])), image_path)
            nib.save(_lps(label), label_path)
            pred_img = _lps(pred_img)
        nib.save(pred_img, folder / "predictions" / f"{case_id}.nii.gz")
        cases.append({"case_id": case_id, "site": site, "image": [str(image_path)], "series_uid": None,
                      "label": str(label_path), "prediction": f"predictions/{case_id}.nii.gz", "status": "ok",
                      "message": None})
        rows += _rows(case_id, site, truth, pred)

    from medft.data.loading import load_image

    image = load_image([DICOM_SERIES])
    affine = np.asarray(image.affine, dtype=np.float64)
    truth = np.zeros(image.shape[1:], dtype=np.uint8)
    x, y, z = (s // 2 for s in truth.shape)
    truth[x - 6:x + 6, y - 8:y + 4, z - 5:z + 5] = 1
    pred = np.roll(truth, 2, axis=1)
    nib.save(nib.Nifti1Image(truth, affine), folder / "truth" / "dicom_13.nii.gz")
    nib.save(nib.Nifti1Image(pred, affine), folder / "predictions" / "dicom_13.nii.gz")
    cases.append({"case_id": "dicom_13", "site": "south", "image": [str(DICOM_SERIES)], "series_uid": None,
                  "label": str(folder / "truth" / "dicom_13.nii.gz"), "prediction": "predictions/dicom_13.nii.gz",
                  "status": "ok", "message": None})
    rows += _rows("dicom_13", "south", truth, pred)

    image_path, label_path = sample_case("hippocampus_336")
    label = nib.load(label_path)
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj).astype(np.uint8), label.affine),
             folder / "predictions" / "hippocampus_336.nii.gz")
    cases.append({"case_id": "hippocampus_336", "site": "south", "image": [str(image_path)], "series_uid": None,
                  "label": None, "prediction": "predictions/hippocampus_336.nii.gz", "status": "prediction_only",
                  "message": None})
    cases.append({"case_id": "hippocampus_338", "site": "north", "image": [str(sample_case("hippocampus_338")[0])],
                  "series_uid": None, "label": None, "prediction": None, "status": "failed",
                  "message": "cannot be read (EOFError: Compressed file ended before the end-of-stream marker)"})
    write_per_case(folder / "per_case.csv", rows)
    (folder / "summary.json").write_text("{}")
    evaluation = {"model": {"name": "hippo_ft", "kind": "run"}, "class_names": CLASS_NAMES, "split": "test",
                  "cases": cases, "warnings": []}
    (folder / "evaluation.json").write_text(json.dumps(evaluation, indent=1))
    return folder


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory) -> Path:
    return make_review_eval(tmp_path_factory.mktemp("eval"))


@pytest.fixture(scope="module")
def table(eval_dir) -> CaseTable:
    return CaseTable.from_eval_dir(eval_dir)


# --------------------------------------------------------------------------------------------
# The case table
# --------------------------------------------------------------------------------------------
def test_one_entry_per_case_with_metrics_per_foreground_class(table):
    assert table.case_ids == ["hippocampus_333", "hippocampus_334", "hippocampus_335", "dicom_13",
                              "hippocampus_336", "hippocampus_338"]
    assert table.class_names == CLASS_NAMES and table.foreground == ["anterior", "posterior"]
    case = table.get("hippocampus_333")
    assert case.site == "north" and case.status == "ok" and case.viewable
    assert set(case.dice) == {"anterior", "posterior"}
    assert case.mean_dice == pytest.approx((case.dice["anterior"] + case.dice["posterior"]) / 2)
    assert 0 < case.sensitivity["anterior"] < 1 and 0.9 < case.specificity["posterior"] <= 1
    dicom = table.get("dicom_13")
    assert math.isnan(dicom.dice["posterior"]) and dicom.mean_dice == dicom.dice["anterior"]  # NaN left out
    only = table.get("hippocampus_336")
    assert only.viewable and not only.scored and math.isnan(only.dice["anterior"])
    failed = table.get("hippocampus_338")
    assert not failed.viewable and "EOFError" in failed.message
    assert [r["class"] for r in case.metrics_rows()] == ["anterior", "posterior"]
    assert table.sites == ["north", "south"]
    assert format_score(0.12345) == "0.123" and format_score(math.nan) == "\u2013"


def test_worst_first_by_default_unscored_then_failed_last(table):
    order = table.select()
    scored = [e for e in order if e.scored]
    assert [e.mean_dice for e in scored] == sorted(e.mean_dice for e in scored)
    assert order[0].case_id == "hippocampus_335"
    assert [e.case_id for e in order[-2:]] == ["hippocampus_336", "hippocampus_338"]
    best = table.select(sort="best")
    assert [e.case_id for e in best if e.scored] == [e.case_id for e in reversed(scored)]
    assert [e.case_id for e in table.select(sort="case_id")][:4] == sorted(e.case_id for e in scored)


def test_worst_on_one_class(table):
    order = table.select(by_class="posterior")
    assert order[0].case_id == "hippocampus_334"  # its posterior is mostly missed
    # dicom_13 has no posterior in its truth: unscored for that class, after the scored ones
    ids = [e.case_id for e in order]
    assert ids.index("dicom_13") > ids.index("hippocampus_333")
    values = [e.dice["posterior"] for e in order if not math.isnan(e.score("posterior"))]
    assert values == sorted(values)
    with pytest.raises(ValueError, match="foreground"):
        table.select(by_class="background")


def test_filters_by_site_and_review_status_and_progress(table):
    assert {e.case_id for e in table.select(site="north")} == {"hippocampus_333", "hippocampus_334", "hippocampus_338"}
    done = {"hippocampus_335", "dicom_13", "not_a_case"}
    assert {e.case_id for e in table.select(review="reviewed", reviewed=done)} == {"hippocampus_335", "dicom_13"}
    not_done = table.select(review="not reviewed", reviewed=done)
    assert "hippocampus_335" not in {e.case_id for e in not_done} and len(not_done) == 4
    assert [e.case_id for e in table.select(site="south", review="not reviewed", reviewed=done)] == ["hippocampus_336"]
    progress = table.progress(done)
    assert (progress.reviewed, progress.total) == (2, 5)  # the failed case has nothing to review
    assert str(progress) == "2 of 5 reviewed"
    order = table.select()
    prev, nxt = table.neighbours(order, order[1].case_id)
    assert (prev, nxt) == (order[0].case_id, order[2].case_id)
    assert table.neighbours(order, order[0].case_id)[0] is None


def test_case_ids_outside_the_table_are_refused(table, eval_dir):
    for bad in ("../evaluation", str(eval_dir / "per_case.csv"), "/etc/passwd", "", None, 3):
        with pytest.raises(UnknownCaseError):
            table.get(bad)
        with pytest.raises(UnknownCaseError):
            table.files(bad)
        assert bad not in table
    files = table.files("hippocampus_335")
    assert files.prediction == eval_dir.resolve() / "predictions" / "hippocampus_335.nii.gz"
    assert files.image == (sample_case("hippocampus_335")[0],)


def test_a_prediction_outside_the_folder_or_a_missing_file_is_an_error(tmp_path):
    with pytest.raises(MedftError, match="not an evaluation folder"):
        check_eval_dir(tmp_path)
    with pytest.raises(MedftError, match="no such folder"):
        check_eval_dir(tmp_path / "nope")
    folder = make_review_eval(tmp_path / "eval")
    evaluation = json.loads((folder / "evaluation.json").read_text())
    evaluation["cases"][0]["prediction"] = "../../secret.nii.gz"
    (folder / "evaluation.json").write_text(json.dumps(evaluation))
    with pytest.raises(MedftError, match="outside the evaluation folder"):
        CaseTable.from_eval_dir(folder)


# --------------------------------------------------------------------------------------------
# Loading one case for viewing
# --------------------------------------------------------------------------------------------
def test_nifti_case_loads_in_ras_whatever_the_file_orientation(table):
    from medft.review.volumes import load_case

    stored = nib.load(table.files("hippocampus_334").image[0])
    assert nib.aff2axcodes(stored.affine) == ("L", "P", "S")
    case = load_case(table, "hippocampus_334")
    original = np.asarray(nib.load(sample_case("hippocampus_334")[0]).dataobj)  # the sample file is RAS
    truth = np.asarray(nib.load(sample_case("hippocampus_334")[1]).dataobj)
    np.testing.assert_allclose(case.image, original)
    np.testing.assert_array_equal(case.truth, truth)
    np.testing.assert_array_equal(case.prediction, _perturb(truth.astype(np.uint8), "posterior_missed"))
    assert nib.aff2axcodes(case.affine) == ("R", "A", "S")
    assert case.spacing == pytest.approx((1.0, 1.0, 1.0))
    assert case.class_names == CLASS_NAMES
    assert case.image.dtype == np.float32 and case.truth.dtype == case.prediction.dtype


def test_dicom_case_loads_in_ras_with_no_header_data(table):
    from medft.review.volumes import load_case

    case = load_case(table, "dicom_13")
    assert case.image.shape == case.truth.shape == case.prediction.shape == (35, 51, 32)
    assert nib.aff2axcodes(case.affine) == ("R", "A", "S")
    assert type(case.image) is np.ndarray and type(case.truth) is np.ndarray  # arrays, not MetaTensors
    text = repr(vars(case))
    assert "series" not in text.lower() and "13_HCropVolume" not in text
    only = load_case(table, "hippocampus_336")
    assert only.truth is None and only.prediction is not None
    with pytest.raises(MedftError):
        load_case(table, "hippocampus_338")  # failed: no prediction
    with pytest.raises(UnknownCaseError):
        load_case(table, "../../etc")
