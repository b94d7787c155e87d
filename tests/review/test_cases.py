"""The review app's case table and case loading, on an evaluation folder made of real sample cases
(``make_review_eval`` in ``tests/evaluate/helpers.py``)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medft.errors import MedftError
from medft.review.cases import CaseTable, UnknownCaseError, check_eval_dir, format_score
from tests.conftest import sample_case
from tests.evaluate.helpers import CLASS_NAMES, make_review_eval, perturb


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


def test_a_broken_evaluation_json_says_to_evaluate_again_into_a_new_folder(tmp_path):
    """medft evaluate refuses a folder that is not empty, and this one may hold reviews: the fix is a
    new evaluation in a new folder, with a command that medft accepts, and the reviews stay."""
    from medft.cli import build_parser
    from medft.review.store import ReviewStore

    folder = make_review_eval(tmp_path / "eval")
    evaluation = folder / "evaluation.json"
    evaluation_id = json.loads(evaluation.read_text())["evaluation_id"]
    messages = []
    for reviewed in (False, True):
        if reviewed:
            with ReviewStore(f"sqlite:///{folder / 'reviews.sqlite'}", evaluation_id) as store:
                store.submit("hippocampus_335", "alice", 3)
        for content in ("{not json", json.dumps({"class_names": CLASS_NAMES})):  # unreadable; no cases
            evaluation.write_text(content, encoding="utf-8")
            with pytest.raises(MedftError) as caught:
                CaseTable.from_eval_dir(folder)
            messages.append((reviewed, str(caught.value)))
    for reviewed, message in messages:
        assert f"{evaluation}: " in message
        assert ("Fix: evaluate again into a new folder "
                "(`medft evaluate MODEL --manifest MANIFEST --out NEW_EVAL_DIR`)") in message
        command = re.search(r"`medft (evaluate [^`]+)`", message).group(1).split()
        assert str(build_parser().parse_args(command).out) == "NEW_EVAL_DIR"
        kept = "keep this folder: the reviews in its reviews.sqlite stay there, tied to this evaluation"
        assert (kept in message) == reviewed


def test_a_table_knows_when_its_folder_holds_another_evaluation(tmp_path):
    import shutil

    folder = make_review_eval(tmp_path / "eval")
    table = CaseTable.from_eval_dir(folder)
    assert not table.replaced(folder)
    evaluation = json.loads((folder / "evaluation.json").read_text())
    evaluation["evaluation_id"] = "another"
    (folder / "evaluation.json").write_text(json.dumps(evaluation))
    assert table.replaced(folder)  # evaluation.json rewritten with another id

    table = CaseTable.from_eval_dir(folder)
    folder.rename(tmp_path / "old")
    assert table.replaced(folder)  # gone
    shutil.copytree(tmp_path / "old", folder)
    assert table.replaced(folder)  # a copy of the same evaluation in its place: its reviews.sqlite is another file


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
    np.testing.assert_array_equal(case.prediction, perturb(truth.astype(np.uint8), "posterior_missed"))
    assert nib.aff2axcodes(case.affine) == ("R", "A", "S")
    assert case.spacing == pytest.approx((1.0, 1.0, 1.0))
    assert case.class_names == CLASS_NAMES
    assert case.image.dtype == nib.load(table.files("hippocampus_334").image[0]).get_data_dtype()  # as stored
    assert case.truth.dtype == case.prediction.dtype == np.uint8


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


def test_a_file_changed_after_the_evaluation_is_named_with_a_fix_that_works(tmp_path):
    from medft.review.volumes import load_case

    folder = make_review_eval(tmp_path / "eval")
    table = CaseTable.from_eval_dir(folder)
    prediction = table.files("hippocampus_333").prediction
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), dtype=np.uint8), np.eye(4)), prediction)  # overwritten
    with pytest.raises(MedftError) as caught:
        load_case(table, "hippocampus_333")
    message = str(caught.value)
    assert f"case hippocampus_333: {prediction}: prediction shape (4, 4, 4) differs from image shape" in message
    assert ("the image or the prediction changed after the evaluation. Fix: put back the files that were "
            "evaluated, or evaluate again into a new folder (`medft evaluate MODEL") in message


def _pictures_as_before(table: CaseTable, case_id: str):
    """The case's renderer, window and best slices made as the review app made them before its volumes were
    read as stored: float32 and C order from the loaders, label maps as int16, the window from the float32 volume."""
    from medft.case_pictures import case_renderer, class_values, image_values
    from medft.data.loading import load_image, load_label
    from medft.review.volumes import _sample, display_scale
    from medft.slices import percentile_window, voxel_spacing

    files = table.files(case_id)
    image = load_image(list(files.image), files.series_uid)
    truth = class_values(load_label(files.label), table.label_map).astype(np.int16) if files.label else None
    prediction = class_values(load_label(files.prediction), {}).astype(np.int16)
    first, affine = image_values(image), np.asarray(image.affine, dtype=np.float64)
    auto = percentile_window(_sample(first))
    n_classes = max(len(table.class_names), 2)
    return case_renderer(first, truth, prediction, affine, n_classes, auto,
                         display_scale(first.shape, voxel_spacing(affine))), auto


@pytest.mark.parametrize("case_id", ["hippocampus_334", "dicom_13", "hippocampus_336"])
def test_the_pictures_of_a_case_are_those_drawn_before_pixel_for_pixel(table, case_id):
    """load_case reads NIfTI files as stored and windows slice by slice: the same window, slices and pictures."""
    from medft.review.volumes import load_case
    from medft.slices import PLANES, WINDOW_PRESETS

    case = load_case(table, case_id)
    before, auto = _pictures_as_before(table, case_id)
    assert case.auto_window == auto and case.views == before.views
    for plane in PLANES:
        for by in ("error", "label"):
            assert case.best_slice(plane, by) == before.best_slice(plane, by), (plane, by)
        count = case.slice_count(plane)
        for index in sorted({0, case.best_slice(plane), count // 3, count - 1}):
            for window in (auto, WINDOW_PRESETS["CT soft tissue"]):
                before.set_window(*window)
                for view in case.views:
                    for mode in ("filled", "contour"):
                        np.testing.assert_array_equal(case.render(plane, index, view, window, 0.4, mode),
                                                      before.render(plane, index, view, 0.4, mode),
                                                      err_msg=f"{plane} {index} {view} {mode}")


def test_label_maps_are_mapped_to_classes_as_before(tmp_path):
    """The ground truth's file values through the evaluation's label_map, as class_values maps them, in
    any integer type and as floats; values outside the classes refused alike."""
    import torch

    from medft.case_pictures import class_values
    from medft.errors import DataError
    from medft.review.volumes import _classes

    rng = np.random.default_rng(0)
    stored = np.asfortranarray(rng.choice([0, 3, 7], size=(6, 7, 8)))
    label_map = {3: 1, 7: 2, 9: 5}
    for volume in (stored.astype(np.uint8), stored.astype(np.int16), stored.astype(np.float32) + 0.2,
                   stored.astype(np.uint8)[::-1, :, ::-1]):
        expected = class_values(torch.from_numpy(np.ascontiguousarray(volume))[None], label_map)
        got = _classes(volume, 3, "ground truth", "c1", "fix it", label_map)
        np.testing.assert_array_equal(got, expected)
        assert got.dtype.kind in "iu"
    mask = stored > 0  # a label map stored as booleans
    np.testing.assert_array_equal(_classes(mask, 3, "ground truth", "c1", "fix it", {1: 2}), 2 * mask)
    shifted = stored.astype(np.int16) - 1  # -1, 2 and 6: 6 is outside the 3 classes
    with pytest.raises(DataError, match=re.escape("the ground truth holds values -1..6, outside the 3 classes")):
        _classes(shifted, 3, "ground truth", "c1", "fix it", {2: 1})
