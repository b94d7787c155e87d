"""An evaluation folder as `medft evaluate` writes it, made of real sample cases.

Shared by the report tests (``tests/evaluate/test_report.py``) and the review tests
(``tests/review/test_cases.py``, ``test_app.py``, ``test_browser.py``).
"""
from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from medft.evaluate.summary import summarize, write_per_case
from tests.conftest import SAMPLE, evaluation_json, sample_case

CLASS_NAMES = ["background", "anterior", "posterior"]
DICOM_SERIES = SAMPLE / "dicom" / "study1" / "13_HCropVolume"

# The scored NIfTI cases: (case id, site, how the prediction is made from the truth).
REPORT_CASES = (("hippocampus_333", "north", "shift1"), ("hippocampus_334", "north", "erode"),
                ("hippocampus_335", "south", "shift3_swap"))
REVIEW_CASES = (("hippocampus_333", "north", "shift1"), ("hippocampus_334", "north", "posterior_missed"),
                ("hippocampus_335", "south", "shift3_swap"))
FAILED_MESSAGE = "cannot be read (EOFError: Compressed file ended before the end-of-stream marker)"


def perturb(label: np.ndarray, how: str) -> np.ndarray:
    """A made-up prediction from a label map."""
    if how == "shift1":
        return np.roll(label, 1, axis=0)
    if how == "erode":
        out = np.zeros_like(label)
        for c in (1, 2):
            out[ndimage.binary_erosion(label == c)] = c
        return out
    if how == "shift3_swap":  # a bad prediction: shifted, and every other slice of posterior called anterior
        out = np.roll(label, 3, axis=1)
        out[(out == 2) & (np.arange(out.shape[2])[None, None, :] % 2 == 0)] = 1
        return out
    if how == "posterior_missed":  # anterior right, posterior mostly missed
        out = label.copy()
        out[(label == 2) & (np.arange(label.shape[1])[None, :, None] % 8 != 0)] = 0
        return out
    return label.copy()


def case_rows(case_id: str, site: str, truth: np.ndarray, pred: np.ndarray) -> list[dict]:
    """Plausible per-case rows from numpy counts (distances made up from the overlap)."""
    rows = []
    for c, name in enumerate(CLASS_NAMES):
        t, p = truth == c, pred == c
        tp, fp, fn = int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum())
        tn = int(t.size - tp - fp - fn)
        ratio = lambda a, b: a / b if b else math.nan  # noqa: E731
        dice = ratio(2 * tp, 2 * tp + fp + fn)
        rows.append({
            "case_id": case_id, "site": site, "class_index": c, "class_name": name, "dice": dice,
            "sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp),
            "hd95": math.nan if c == 0 or math.isnan(dice) else round(1 + 10 * (1 - dice), 3),
            "nsd": math.nan if c == 0 or math.isnan(dice) else min(1.0, dice + 0.05),
            "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        })
    return rows


def made_up_roc(truth: list[np.ndarray], pred: list[np.ndarray]) -> dict:
    """One-vs-rest curves from made-up probabilities: the predicted class scores high, plus noise."""
    rng = np.random.default_rng(0)
    curves = {}
    for c, name in list(enumerate(CLASS_NAMES))[1:]:
        positive = np.concatenate([(t == c).ravel() for t in truth])
        score = np.concatenate([(p == c).ravel() * 0.6 for p in pred]) + rng.uniform(0, 0.4, positive.size)
        thresholds = np.linspace(1.0, 0.0, 101)
        tpr = np.array([(score[positive] >= th).mean() for th in thresholds])
        fpr = np.array([(score[~positive] >= th).mean() for th in thresholds])
        curves[name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": float(np.trapezoid(tpr, fpr))}
    return curves


def lps(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """The same voxels stored left-right and front-back flipped (an LPS file): RAS loading undoes it."""
    data = np.asanyarray(img.dataobj)[::-1, ::-1, :]
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = data.shape[0] - 1, data.shape[1] - 1
    return nib.Nifti1Image(np.ascontiguousarray(data), img.affine @ flip)


def _case(case_id: str, site: str | None, image: Path, label: Path | None, prediction: str | None,
          status: str = "ok", message: str | None = None) -> dict:
    return {"case_id": case_id, "site": site, "image": [str(image)], "series_uid": None,
            "label": None if label is None else str(label), "prediction": prediction, "status": status,
            "message": message}


def make_evaluation(folder: Path, *, cases=REPORT_CASES, lps_cases: tuple[str, ...] = (), dicom: bool = True,
                    prediction_only: bool = True, failed: bool = True, sites: bool = True, roc: bool = True,
                    labelled: bool = True, evaluation_id: str | None = None) -> Path:
    """An evaluation folder of real sample cases.

    Scored: ``cases`` ((case id, site, perturbation) of hippocampus samples; those in ``lps_cases``
    have image, label and prediction stored as LPS files under ``truth/``), and with ``dicom``
    dicom_13 (south, a DICOM series, only anterior in the truth: posterior's Dice is NaN).
    ``prediction_only``: hippocampus_336 (south, no label); ``failed``: hippocampus_338 (north).
    ``labelled=False`` scores nothing; ``sites=False`` leaves the sites out; ``roc=False``, no curves.
    ``evaluation.json`` gets ``evaluation_id`` (a new uuid4 hex when None), as ``medft evaluate`` writes.
    """
    from medft.data.loading import load_image

    folder = Path(folder)
    predictions, truths = folder / "predictions", folder / "truth"
    predictions.mkdir(parents=True)
    truths.mkdir()
    site_of = (lambda site: site) if sites else (lambda site: None)
    records, rows, truth_arrays, pred_arrays, warnings = [], [], [], [], []

    def scored(case_id: str, site: str, image_path: Path, label_path: Path, truth, pred) -> None:
        records.append(_case(case_id, site_of(site), image_path, label_path, f"predictions/{case_id}.nii.gz"))
        rows.extend(case_rows(case_id, site if sites else "", truth, pred))
        truth_arrays.append(truth)
        pred_arrays.append(pred)

    for case_id, site, how in cases if labelled else ():
        image_path, label_path = sample_case(case_id)
        label = nib.load(label_path)
        truth = np.asarray(label.dataobj).astype(np.uint8)
        pred = perturb(truth, how)
        pred_img = nib.Nifti1Image(pred, label.affine)
        if case_id in lps_cases:  # image, label and prediction as LPS files
            short = case_id.rsplit("_", 1)[-1]
            stored_image, label_path = truths / f"{short}_img.nii.gz", truths / f"{short}_seg.nii.gz"
            nib.save(lps(nib.load(image_path)), stored_image)
            nib.save(lps(label), label_path)
            image_path, pred_img = stored_image, lps(pred_img)
        nib.save(pred_img, predictions / f"{case_id}.nii.gz")
        scored(case_id, site, image_path, label_path, truth, pred)
    if dicom and labelled:
        # Ground truth and prediction made on the grid of the loaded series (RAS).
        image = load_image([DICOM_SERIES])
        affine = np.asarray(image.affine, dtype=np.float64)
        truth = np.zeros(image.shape[1:], dtype=np.uint8)
        x, y, z = (s // 2 for s in truth.shape)
        truth[x - 6:x + 6, y - 8:y + 4, z - 5:z + 5] = 1  # only class 1: class 2's Dice is NaN
        pred = np.roll(truth, 2, axis=1)
        nib.save(nib.Nifti1Image(truth, affine), truths / "dicom_13.nii.gz")
        nib.save(nib.Nifti1Image(pred, affine), predictions / "dicom_13.nii.gz")
        scored("dicom_13", "south", DICOM_SERIES, truths / "dicom_13.nii.gz", truth, pred)
    if prediction_only:
        image_path, label_path = sample_case("hippocampus_336")
        label = nib.load(label_path)
        nib.save(nib.Nifti1Image(np.asarray(label.dataobj).astype(np.uint8), label.affine),
                 predictions / "hippocampus_336.nii.gz")
        records.append(_case("hippocampus_336", site_of("south"), image_path, None,
                             "predictions/hippocampus_336.nii.gz", "prediction_only"))
        warnings.append("case hippocampus_336: no label, evaluated as prediction-only")
    if failed:
        records.append(_case("hippocampus_338", site_of("north"), sample_case("hippocampus_338")[0], None, None,
                             "failed", FAILED_MESSAGE))
        warnings.append("case hippocampus_338: not evaluated: cannot be read")

    n = len(CLASS_NAMES)
    matrix = np.zeros((n, n), dtype=np.int64)
    for t, p in zip(truth_arrays, pred_arrays, strict=True):
        matrix += np.bincount((t.astype(np.int64) * n + p).ravel(), minlength=n * n).reshape(n, n)
    write_per_case(folder / "per_case.csv", rows)
    summary = summarize(rows, CLASS_NAMES, n_resamples=300)
    (folder / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False))
    evaluation = evaluation_json(
        evaluation_id=evaluation_id or uuid.uuid4().hex,
        model={"path": "/runs/hippo_ft", "kind": "run", "name": "hippo_ft", "version": "0.2.0"},
        manifest="/data/hospital_test.csv", split="test", class_names=CLASS_NAMES, cases=records,
        confusion_matrix=matrix.tolist(), roc=made_up_roc(truth_arrays, pred_arrays) if roc and truth_arrays else {},
        warnings=warnings,
    )
    (folder / "evaluation.json").write_text(json.dumps(evaluation, indent=1))
    return folder


def make_review_eval(folder: Path) -> Path:
    """The review tests' folder: hippocampus_333 (north, one voxel shift), hippocampus_334 (north,
    posterior mostly missed, stored as an LPS file), hippocampus_335 (south, the worst), dicom_13
    (south); hippocampus_336 prediction only, hippocampus_338 failed."""
    return make_evaluation(folder, cases=REVIEW_CASES, lps_cases=("hippocampus_334",))
