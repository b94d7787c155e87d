"""medft evaluate / predict on a run trained for a few steps, with real sample cases."""
import csv
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medft.cli import main
from medft.config import load_config
from medft.data.dicom import read_series, scan_folder, select_series
from medft.errors import MedftError
from medft.evaluate.prefetch import THREAD_NAME
from medft.evaluate.report import write_report
from medft.evaluate.run import evaluate, predict_files
from medft.train.recipe import run_training
from tests.conftest import SAMPLE, copy_case, evaluation_json, sample_case, write_csv
from tests.train.helpers import make_config

CLASSES = {"0": "background", "1": "anterior", "2": "posterior"}
DICOM_CROP = SAMPLE / "dicom" / "study1" / "13_HCropVolume"

DATA_URI = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("trained")
    run_training(load_config(make_config(root, **{"train.epochs": 2, "freeze": []})), root / "run")
    return root / "run"


def _lps_copy(case_id: str, folder: Path) -> tuple[Path, Path]:
    """The same case stored right-to-left and front-to-back (image and label)."""
    out = []
    for path in sample_case(case_id):
        img = nib.load(path)
        nx, ny, _ = img.shape
        flip = np.array([[-1, 0, 0, nx - 1], [0, -1, 0, ny - 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
        target = folder / f"lps_{path.name}"
        nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[::-1, ::-1, :].copy(), img.affine @ flip), target)
        out.append(target)
    return out[0], out[1]


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval")
    missing_label = copy_case("hippocampus_345", root / "nii", "nolabel")
    missing_label[1].unlink()
    broken = copy_case("hippocampus_349", root / "nii", "broken")
    broken[0].write_bytes(broken[0].read_bytes()[:2000])
    lps = _lps_copy("hippocampus_333", root / "nii")
    rows = [
        {"case_id": "a1", "image": sample_case("hippocampus_340")[0], "label": sample_case("hippocampus_340")[1], "site": "A"},
        {"case_id": "a2", "image": sample_case("hippocampus_341")[0], "label": sample_case("hippocampus_341")[1], "site": "A"},
        {"case_id": "b1", "image": lps[0], "label": lps[1], "site": "B"},
        {"case_id": "nolabel", "image": missing_label[0], "label": missing_label[1], "site": "B"},
        {"case_id": "broken", "image": broken[0], "label": broken[1], "site": "B"},
        {"case_id": "dicom", "image": DICOM_CROP, "label": "", "site": "B"},
    ]
    manifest = write_csv(root / "held_out.csv", [{**r, "split": "test"} for r in rows], classes=CLASSES)
    return evaluate(trained, manifest, root / "out", split="test").folder, root


def _per_case(out: Path) -> list[dict]:
    with (out / "per_case.csv").open() as file:
        return list(csv.DictReader(file))


def test_the_folder_holds_the_contract_files(evaluated):
    out, _ = evaluated
    for name in ("per_case.csv", "summary.json", "evaluation.json", "report.html"):
        assert (out / name).is_file(), name
    header = (out / "per_case.csv").read_text().splitlines()[0]
    assert header == "case_id,site,class_index,class_name,dice,sensitivity,specificity,hd95,nsd,tp,fp,fn,tn"
    evaluation = json.loads((out / "evaluation.json").read_text())
    status = {c["case_id"]: c["status"] for c in evaluation["cases"]}
    assert re.fullmatch(r"[0-9a-f]{32}", evaluation["evaluation_id"])  # a uuid4 hex: scopes the reviews
    assert status == {"a1": "ok", "a2": "ok", "b1": "ok", "nolabel": "prediction_only", "broken": "failed", "dicom": "prediction_only"}
    assert sorted(p.name for p in (out / "predictions").iterdir()) == [f"{c}.nii.gz" for c in ("a1", "a2", "b1", "dicom", "nolabel")]


def test_per_case_counts_equal_an_independent_count_from_the_saved_predictions(evaluated):
    out, _ = evaluated
    labels = {"a1": sample_case("hippocampus_340")[1], "a2": sample_case("hippocampus_341")[1]}
    labels["b1"] = evaluated[1] / "nii" / "lps_hippocampus_333.nii.gz"
    rows = _per_case(out)
    for case_id, label_path in labels.items():
        pred = np.asanyarray(nib.load(out / "predictions" / f"{case_id}.nii.gz").dataobj)
        truth = np.asanyarray(nib.load(label_path).dataobj)
        assert pred.shape == truth.shape
        for c in range(3):
            row = next(r for r in rows if r["case_id"] == case_id and int(r["class_index"]) == c)
            p, t = pred == c, truth == c
            counts = [int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum()), int((~p & ~t).sum())]
            assert [int(row[k]) for k in ("tp", "fp", "fn", "tn")] == counts
            expected = 2 * counts[0] / (2 * counts[0] + counts[1] + counts[2]) if (2 * counts[0] + counts[1] + counts[2]) else float("nan")
            assert float(row["dice"]) == pytest.approx(expected, nan_ok=True)


def test_predictions_lie_in_the_geometry_of_their_inputs(evaluated):
    out, root = evaluated
    for case_id, image in (("a1", sample_case("hippocampus_340")[0]), ("b1", root / "nii" / "lps_hippocampus_333.nii.gz")):
        source, pred = nib.load(image), nib.load(out / "predictions" / f"{case_id}.nii.gz")
        assert pred.shape == source.shape
        np.testing.assert_allclose(pred.affine, source.affine, atol=1e-5)
    # The LPS-stored copy of a case gets the prediction of the case itself, stored the same way.
    same = nib.load(out / "predictions" / "b1.nii.gz")
    assert nib.aff2axcodes(same.affine) == ("L", "P", "S")
    volume, affine = read_series(select_series(scan_folder(DICOM_CROP), None))
    dicom = nib.load(out / "predictions" / "dicom.nii.gz")
    assert dicom.shape == volume.shape
    np.testing.assert_allclose(dicom.affine, affine, atol=1e-5)


def test_the_summary_has_sites_and_the_warnings_name_the_cases(evaluated):
    out, _ = evaluated
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == ["anterior", "posterior"] and summary["n_cases"] == 3
    assert set(summary["per_site"]) == {"A", "B"}
    warnings = "\n".join(json.loads((out / "evaluation.json").read_text())["warnings"])
    assert "case nolabel" in warnings and "prediction-only" in warnings
    assert "case broken" in warnings and "broken_img.nii.gz: is truncated" in warnings
    evaluation = json.loads((out / "evaluation.json").read_text())
    confusion = np.array(evaluation["confusion_matrix"])
    rows = _per_case(out)
    assert confusion.sum() == sum(int(r["tp"]) + int(r["fn"]) for r in rows if r["class_index"] == "0") + \
        sum(int(r["fp"]) + int(r["tn"]) for r in rows if r["class_index"] == "0")
    assert confusion.diagonal().sum() == sum(int(r["tp"]) for r in rows)
    for curve in evaluation["roc"].values():
        assert 0 <= curve["auc"] <= 1 and curve["fpr"][0] == 0 and curve["tpr"][-1] == pytest.approx(1)


def test_a_class_mismatch_stops_before_inference(trained, tmp_path):
    manifest = write_csv(tmp_path / "two.csv", [{"case_id": "x", "image": sample_case()[0], "label": sample_case()[1]}],
                         classes={"0": "background", "1": "hippocampus"})
    with pytest.raises(MedftError, match="declares 2 classes .* model predicts 3"):
        evaluate(trained, manifest, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_predict_and_test_time_flips(trained, tmp_path, capsys):
    assert main(["predict", str(trained), str(sample_case("hippocampus_340")[0]), str(DICOM_CROP),
                 "--out", str(tmp_path / "p"), "--tta"]) == 0
    written = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert written == ["13_HCropVolume.nii.gz", "hippocampus_340.nii.gz"]
    pred = np.asanyarray(nib.load(tmp_path / "p" / "hippocampus_340.nii.gz").dataobj)
    assert pred.shape == nib.load(sample_case("hippocampus_340")[0]).shape and set(np.unique(pred)) <= {0, 1, 2}


def test_evaluate_command_on_the_exported_bundle_matches_the_run(trained, tmp_path):
    from medft.bundle.export import export_run

    bundle = export_run(trained, tmp_path / "bundle")
    manifest = write_csv(tmp_path / "m.csv", [{"case_id": "a1", "image": sample_case("hippocampus_340")[0],
                                               "label": sample_case("hippocampus_340")[1]}], classes=CLASSES)
    assert main(["evaluate", str(bundle), "--manifest", str(manifest), "--out", str(tmp_path / "from_bundle")]) == 0
    assert main(["evaluate", str(trained), "--manifest", str(manifest), "--out", str(tmp_path / "from_run")]) == 0
    bundle_pred = nib.load(tmp_path / "from_bundle" / "predictions" / "a1.nii.gz").get_fdata()
    run_pred = nib.load(tmp_path / "from_run" / "predictions" / "a1.nii.gz").get_fdata()
    np.testing.assert_array_equal(bundle_pred, run_pred)


def test_the_mirrored_axes_travel_from_the_config_to_the_exported_bundle(trained, tmp_path):
    import shutil

    import yaml

    from medft.bundle.export import export_run
    from medft.evaluate.inference import load_model

    assert load_model(trained).flip_axes == (0,)
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["flip_axes"] = [0, 2]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert load_model(run).flip_axes == (0, 2)
    assert load_model(export_run(run, tmp_path / "bundle")).flip_axes == (0, 2)
    manifest = write_csv(tmp_path / "m.csv", [{"case_id": "a1", "image": sample_case("hippocampus_340")[0],
                                               "label": sample_case("hippocampus_340")[1]}], classes=CLASSES)
    assert main(["evaluate", str(run), "--manifest", str(manifest), "--out", str(tmp_path / "e"), "--tta"]) == 0
    assert json.loads((tmp_path / "e" / "evaluation.json").read_text())["tta_flip_axes"] == [0, 2]
    assert "yes: 4 mirrorings averaged (left-right, up-down)" in (tmp_path / "e" / "report.html").read_text()

    config["data"]["augmentation"] = "none"  # trained without any flip: nothing to average at test time
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert load_model(run).flip_axes == ()
    assert load_model(export_run(run, tmp_path / "bundle_none")).flip_axes == ()


def test_largest_component_keeps_one_piece_per_class_as_an_independent_labelling_does():
    from skimage.measure import label as connected

    from medft.evaluate.inference import keep_largest_components

    labels = torch.zeros(20, 20, 20, dtype=torch.int64)
    labels[2:8, 2:8, 2:8] = 1          # class 1: a large piece ...
    labels[12:14, 12:14, 12:14] = 1    # ... and an island
    labels[8, 8, 8] = 1                # touches the large piece at a corner only: 26-connected to it
    labels[2:6, 12:18, 2:6] = 2        # class 2: one piece
    labels[16, 2, 16] = 2              # and a single-voxel island
    kept = keep_largest_components(labels, 3)
    for c in (1, 2):
        components = connected(labels.numpy() == c, connectivity=3)
        largest = np.bincount(components.ravel())[1:].argmax() + 1
        np.testing.assert_array_equal(kept.numpy() == c, components == largest)
    assert kept[8, 8, 8] == 1 and kept[12, 12, 12] == 0 and kept[16, 2, 16] == 0
    assert kept.dtype == labels.dtype


def test_evaluate_with_largest_component_records_it(trained, tmp_path):
    manifest = write_csv(tmp_path / "m.csv", [{"case_id": "a1", "image": sample_case("hippocampus_340")[0],
                                               "label": sample_case("hippocampus_340")[1]}], classes=CLASSES)
    assert main(["evaluate", str(trained), "--manifest", str(manifest), "--out", str(tmp_path / "e"),
                 "--largest-component"]) == 0
    assert json.loads((tmp_path / "e" / "evaluation.json").read_text())["largest_component"] is True
    pred = np.asanyarray(nib.load(tmp_path / "e" / "predictions" / "a1.nii.gz").dataobj)
    from skimage.measure import label as connected

    for c in (1, 2):
        assert connected(pred == c, connectivity=3).max() <= 1, "at most one component per class"
    assert "largest connected component" in (tmp_path / "e" / "report.html").read_text()


def test_checkpoint_last_evaluates_the_final_model(trained, tmp_path):
    manifest = write_csv(tmp_path / "m.csv", [{"case_id": "a1", "image": sample_case("hippocampus_340")[0],
                                               "label": sample_case("hippocampus_340")[1]}], classes=CLASSES)
    for choice, expected in (("best", "best.pt"), ("last", "last.pt")):
        assert main(["evaluate", str(trained), "--manifest", str(manifest), "--out", str(tmp_path / choice),
                     "--checkpoint", choice]) == 0
        assert json.loads((tmp_path / choice / "evaluation.json").read_text())["model"]["checkpoint"] == expected
    with pytest.raises(MedftError, match="expected best or last"):
        evaluate(trained, manifest, tmp_path / "x", checkpoint="final")


def test_checkpoint_last_of_a_bundle_is_refused_before_inference(trained, tmp_path, capsys):
    from medft.bundle.export import export_run

    bundle = export_run(trained, tmp_path / "bundle")
    assert main(["evaluate", str(bundle), "--manifest", str(_one_case_manifest(tmp_path)), "--out", str(tmp_path / "e"),
                 "--checkpoint", "last"]) == 1
    assert (f"{bundle}: --checkpoint last applies to a run folder, and this is a bundle: it holds one set of weights "
            "(models/model.pt). Fix: leave out --checkpoint") in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_the_reports_pictures_are_made_in_memory_as_its_files_draw_them(evaluated, trained, tmp_path, monkeypatch):
    out, _ = evaluated  # a1, a2 and b1 (stored LPS) scored
    in_memory = (out / "report.html").read_text()
    try:
        from_files = write_report(out).read_text()  # drawn again from the files: image, label, saved prediction
    finally:
        (out / "report.html").write_text(in_memory)
    assert from_files == in_memory and len(DATA_URI.findall(_worst_section(in_memory))) == 3

    def no_files(*args):
        raise AssertionError("a case's files were read again")

    monkeypatch.setattr("medft.evaluate.report._report_slice", no_files)
    text = evaluate(trained, _one_case_manifest(tmp_path), tmp_path / "eval").folder.joinpath("report.html").read_text()
    assert "Picture not drawn" not in text and len(DATA_URI.findall(_worst_section(text))) == 1


def test_the_pictures_kept_in_memory_are_those_of_the_cases_the_report_shows():
    from medft.evaluate.report import MAX_WORST_CASES, worst_cases
    from medft.evaluate.run import _WorstPictures

    means = {"c0": 0.9, "c1": 0.2, "c2": float("nan"), "c3": 0.5, "c4": 0.2, "c6": 0.1, "c7": 0.7, "c8": 0.3,
             "c9": 0.6, "c5": 0.95}
    kept, made = _WorstPictures(MAX_WORST_CASES), []
    for case_id, mean in means.items():
        kept.offer(case_id, mean, lambda c=case_id: made.append(c) or c)
    rows = [{"case_id": c, "class_index": 1, "dice": d} for c, d in means.items()]
    shown = [case_id for case_id, _ in worst_cases(type("Folder", (), {"rows": rows})())]
    assert sorted(kept.slices) == sorted(shown) and len(shown) == MAX_WORST_CASES
    assert "c2" not in made and "c5" not in made  # no picture made for a NaN Dice, nor for one above the six kept


def _worst_section(text: str) -> str:
    start = text.index('<section id="worst">')
    return text[start:text.index("</section>", start)]


def _one_case_manifest(folder: Path, case_id: str = "hippocampus_340") -> Path:
    image, label = sample_case(case_id)
    return write_csv(folder / "one.csv", [{"case_id": "a1", "image": image, "label": label}], classes=CLASSES)


def test_evaluate_refuses_a_folder_that_holds_an_evaluation_and_leaves_it_as_it_was(trained, tmp_path, capsys):
    manifest = _one_case_manifest(tmp_path)
    out = evaluate(trained, manifest, tmp_path / "eval").folder
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert main(["evaluate", str(trained), "--manifest", str(manifest), "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert f"{out} exists and is not an empty folder" in error
    assert f"Fix: give a new folder to --out, or delete {out} first" in error and "Traceback" not in error
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # same evaluation_id: reviews stay valid
    (out / "reviews.sqlite").write_bytes(b"")  # once clinicians have reviewed it, deleting is no advice to give
    with pytest.raises(MedftError, match=r"Fix: give a new folder to --out \(it holds reviews.sqlite: deleting it would "
                                         r"lose the reviews\)$"):
        evaluate(trained, manifest, out)


def test_evaluate_checks_the_out_folder_before_loading_the_model(tmp_path):
    (tmp_path / "eval" / "predictions").mkdir(parents=True)  # stale predictions of another split
    with pytest.raises(MedftError, match="exists and is not an empty folder"):
        evaluate(tmp_path / "no_model", tmp_path / "no_manifest.csv", tmp_path / "eval")
    (tmp_path / "file").write_text("x")
    with pytest.raises(MedftError, match="file exists and is not an empty folder"):
        evaluate(tmp_path / "no_model", tmp_path / "no_manifest.csv", tmp_path / "file")


def test_evaluate_writes_into_an_empty_existing_folder(trained, tmp_path):
    (tmp_path / "eval").mkdir()
    out = evaluate(trained, _one_case_manifest(tmp_path), tmp_path / "eval").folder
    assert (out / "predictions" / "a1.nii.gz").is_file()


def _two_channel_copy(case_id: str, folder: Path) -> tuple[Path, Path]:
    """The case's image stored twice along a 4th axis (2 channels) beside its label."""
    image, label = sample_case(case_id)
    img = nib.load(image)
    data = np.asanyarray(img.dataobj)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"two_channel_{image.name}"
    nib.save(nib.Nifti1Image(np.stack([data, data], axis=-1), img.affine), target)
    return target, label


def test_a_case_with_the_wrong_channel_count_fails_alone_with_the_reason(trained, tmp_path):
    two, label = _two_channel_copy("hippocampus_341", tmp_path / "nii")
    rows = [{"case_id": "a1", "image": sample_case("hippocampus_340")[0], "label": sample_case("hippocampus_340")[1]},
            {"case_id": "two", "image": two, "label": label}]
    out = evaluate(trained, write_csv(tmp_path / "m.csv", rows, classes=CLASSES), tmp_path / "eval").folder
    evaluation = json.loads((out / "evaluation.json").read_text())
    cases = {c["case_id"]: c for c in evaluation["cases"]}
    assert cases["a1"]["status"] == "ok" and cases["two"]["status"] == "failed"
    assert "the image has 2 channel(s) but the network takes 1" in cases["two"]["message"]
    assert str(two) in cases["two"]["message"] and "Fix:" in cases["two"]["message"]
    assert any("case two" in w and "2 channel(s)" in w for w in evaluation["warnings"])
    assert {r["case_id"] for r in _per_case(out)} == {"a1"}
    assert [p.name for p in (out / "predictions").iterdir()] == ["a1.nii.gz"]


def test_a_folder_of_two_dicom_series_fails_with_the_series_named_on_the_console_only(trained, tmp_path, caplog):
    folder = tmp_path / "two_series"
    shutil.copytree(DICOM_CROP, folder / "a")
    shutil.copytree(SAMPLE / "dicom" / "study2" / "14_HCropVolume", folder / "b")
    series = scan_folder(folder).series
    rows = [{"case_id": "a1", "image": sample_case("hippocampus_340")[0], "label": sample_case("hippocampus_340")[1]},
            {"case_id": "two", "image": folder, "label": ""}]
    with caplog.at_level("WARNING", logger="medft"):
        out = evaluate(trained, write_csv(tmp_path / "m.csv", rows, classes=CLASSES), tmp_path / "eval").folder
    console = "\n".join(r.getMessage() for r in caplog.records)
    assert "case two: not evaluated" in console and all(s.uid in console for s in series)
    evaluation = json.loads((out / "evaluation.json").read_text())
    message = next(c for c in evaluation["cases"] if c["case_id"] == "two")["message"]
    assert "holds 2 DICOM series and medft does not merge series. Fix: " in message
    assert any("case two: not evaluated" in w for w in evaluation["warnings"])
    for stored in ((out / "evaluation.json").read_text(), (out / "report.html").read_text()):
        assert "holds 2 DICOM series" in stored
        identifying = [s.uid for s in series] + [s.description for s in series] + [".dcm"]
        assert not [text for text in identifying if text in stored]


def test_predict_names_the_input_whose_channel_count_is_wrong(trained, tmp_path, capsys):
    two, _ = _two_channel_copy("hippocampus_341", tmp_path / "nii")
    assert main(["predict", str(trained), str(two), "--out", str(tmp_path / "p")]) == 1
    error = capsys.readouterr().err
    assert f"{two}: the image has 2 channel(s) but the network takes 1" in error
    assert "internal error" not in error and "model.in_channels=2" in error


def _edited_copy(case: str, folder: Path, name: str, edit) -> Path:
    """A copy of a sample case's image (edit(image) -> array) or label (edit(None, label) -> array)."""
    folder.mkdir(parents=True, exist_ok=True)
    image, label = (nib.load(p) for p in sample_case(case))
    data = edit(np.asarray(image.dataobj, dtype=np.float32), np.asarray(label.dataobj, dtype=np.float32))
    path = folder / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(data, image.affine), path)
    return path


def test_cases_with_nan_voxels_or_labels_outside_the_classes_fail_alone_as_check_data_words_it(trained, tmp_path):
    def with_nan(image, label):
        image[5, 5, 5] = np.nan
        return image

    def with_value(value):
        def edit(image, label):
            label[0, 0, 0] = value
            return label
        return edit

    image, label = sample_case("hippocampus_341")
    rows = [{"case_id": "a1", "image": sample_case("hippocampus_340")[0], "label": sample_case("hippocampus_340")[1]},
            {"case_id": "nan", "image": _edited_copy("hippocampus_341", tmp_path, "nan", with_nan), "label": label},
            {"case_id": "three", "image": image, "label": _edited_copy("hippocampus_341", tmp_path, "three", with_value(3))},
            {"case_id": "half", "image": image, "label": _edited_copy("hippocampus_341", tmp_path, "half", with_value(0.5))}]
    out = evaluate(trained, write_csv(tmp_path / "m.csv", rows, classes=CLASSES), tmp_path / "eval").folder
    cases = {c["case_id"]: c for c in json.loads((out / "evaluation.json").read_text())["cases"]}
    assert [cases[c]["status"] for c in ("a1", "nan", "three", "half")] == ["ok", "failed", "failed", "failed"]
    assert "voxel(s) of the image are NaN or infinite" in cases["nan"]["message"]
    assert "label values [3] are outside the declared classes 0..2" in cases["three"]["message"]
    fix = 'Fix: declare those classes (in the "labels" of dataset.json, or in the .classes.json beside a CSV'
    assert fix in cases["three"]["message"]
    assert "label values are not whole numbers (e.g. 0.5)" in cases["half"]["message"]
    assert {r["case_id"] for r in _per_case(out)} == {"a1"}


def test_predict_writes_the_good_inputs_and_names_each_that_failed(trained, tmp_path):
    def with_nan(image, label):
        image[5, 5, 5] = np.nan
        return image

    nan = _edited_copy("hippocampus_341", tmp_path / "nii", "nan", with_nan)
    good = sample_case("hippocampus_340")[0]
    with pytest.raises(MedftError, match=r"predicted 1 of 2 inputs into .*; not predicted:\n  .*nan.nii.gz: 1 voxel\(s\) "
                                         r"of the image are NaN or infinite"):
        predict_files(trained, [nan, good], tmp_path / "p")
    assert [p.name for p in (tmp_path / "p").iterdir()] == ["hippocampus_340.nii.gz"]


def _check_failing_on(name: str):
    """check_channels, raising an error that is no user's (a bug) for the image whose path holds ``name``."""
    from medft.evaluate.inference import check_channels

    def check(expected, image, source):
        if name in str(source):
            raise RuntimeError(f"a bug while loading {source}")
        check_channels(expected, image, source)

    return check


def _loading_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]


def test_an_error_that_is_no_users_while_loading_a_case_stops_the_evaluation_and_the_loading(trained, tmp_path, monkeypatch):
    rows = [{"case_id": case_id, "image": sample_case(source)[0], "label": sample_case(source)[1]}
            for case_id, source in (("a1", "hippocampus_340"), ("a2", "hippocampus_341"), ("a3", "hippocampus_340"))]
    manifest = write_csv(tmp_path / "m.csv", rows, classes=CLASSES)
    monkeypatch.setattr("medft.evaluate.run.check_channels", _check_failing_on("hippocampus_341"))
    with pytest.raises(RuntimeError, match="a bug while loading .*hippocampus_341"):
        evaluate(trained, manifest, tmp_path / "eval")
    assert not (tmp_path / "eval").exists() and not _loading_threads()


def test_an_error_that_is_no_users_while_loading_an_input_stops_the_prediction_after_the_inputs_before(trained, tmp_path,
                                                                                                       monkeypatch):
    monkeypatch.setattr("medft.evaluate.run.check_channels", _check_failing_on("hippocampus_341"))
    inputs = [sample_case(case_id)[0] for case_id in ("hippocampus_340", "hippocampus_341", "hippocampus_345")]
    with pytest.raises(RuntimeError, match="a bug while loading .*hippocampus_341"):
        predict_files(trained, inputs, tmp_path / "p")
    assert _listing(tmp_path / "p") == ["hippocampus_340.nii.gz"] and not _loading_threads()


def test_predict_refuses_inputs_that_would_write_one_file_before_loading_the_model(tmp_path):
    import shutil

    nii = tmp_path / "nii"
    nii.mkdir()
    shutil.copy(sample_case("hippocampus_340")[0], nii / "scan.nii.gz")
    nib.save(nib.load(nii / "scan.nii.gz"), nii / "scan.nii")
    a, b = tmp_path / "a" / "13_HCropVolume", tmp_path / "b" / "13_HCropVolume"
    for folder in (a, b):
        shutil.copytree(DICOM_CROP, folder)
    # A model path that does not exist: the collision is found before the model is loaded.
    for first, second in ((nii / "scan.nii", nii / "scan.nii.gz"), (a, b)):
        with pytest.raises(MedftError) as caught:
            predict_files(tmp_path / "no_model", [sample_case("hippocampus_341")[0], first, second], tmp_path / "p")
        message = str(caught.value)
        assert f"{first} and {second} would both be written to {tmp_path / 'p' / second.name.split('.')[0]}.nii.gz" in message
        assert "Fix: predict them into different --out folders" in message
    assert not (tmp_path / "p").exists()


def test_predict_refuses_to_replace_a_file_before_loading_the_model_unless_told_to(trained, tmp_path, capsys):
    scan, out = sample_case("hippocampus_340")[0], tmp_path / "p"
    out.mkdir()
    (out / "hippocampus_340.nii.gz").write_bytes(b"an earlier prediction")
    with pytest.raises(MedftError, match=re.escape(  # a model path that does not exist: found before loading it
            f"{out / 'hippocampus_340.nii.gz'} exists: predicting would replace it. Fix: give a new --out folder, "
            "or add --overwrite to replace the existing files")):
        predict_files(tmp_path / "no_model", [sample_case("hippocampus_341")[0], scan], out)
    assert main(["predict", str(trained), str(scan), "--out", str(out)]) == 1
    assert f"{out / 'hippocampus_340.nii.gz'} exists" in capsys.readouterr().err
    assert _listing(out) == ["hippocampus_340.nii.gz"]
    assert (out / "hippocampus_340.nii.gz").read_bytes() == b"an earlier prediction"
    assert main(["predict", str(trained), str(scan), "--out", str(out), "--overwrite"]) == 0
    assert nib.load(out / "hippocampus_340.nii.gz").shape == nib.load(scan).shape


def test_compare_with_a_folder_that_is_no_evaluation_stops_before_inference(trained, tmp_path):
    manifest = _one_case_manifest(tmp_path)
    with pytest.raises(MedftError, match=r"--compare .*notarun: no such folder\. Fix: give an evaluation folder"):
        evaluate(trained, manifest, tmp_path / "eval", compare=tmp_path / "notarun")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedftError, match=r"empty[/\\]evaluation\.json: not found"):
        evaluate(trained, manifest, tmp_path / "eval", compare=tmp_path / "empty")
    other = tmp_path / "other_classes"
    other.mkdir()
    (other / "evaluation.json").write_text(json.dumps(evaluation_json(class_names=["background", "hippocampus"])))
    with pytest.raises(MedftError, match=r"its classes \[background, hippocampus\] differ from the model's "
                                         r"\[background, anterior, posterior\]"):
        evaluate(trained, manifest, tmp_path / "eval", compare=other)
    assert not (tmp_path / "eval").exists(), "no case was predicted"


def test_compare_writes_the_comparison_with_each_sides_inference_options(trained, tmp_path):
    manifest = _one_case_manifest(tmp_path)
    plain = evaluate(trained, manifest, tmp_path / "plain").folder
    out = evaluate(trained, manifest, tmp_path / "tta", tta=True, largest_component=True, compare=plain).folder
    result = json.loads((out / "comparison.json").read_text())
    assert result["a"]["inference"] == {"tta": False, "tta_flip_axes": [], "largest_component": False}
    assert result["b"]["inference"] == {"tta": True, "tta_flip_axes": [0], "largest_component": True}
    page = (out / "comparison.html").read_text()
    assert "test-time augmentation: yes: 2 mirrorings averaged (left-right); largest connected component per class" in page
    assert "test-time augmentation: no; no post-processing" in page
    assert "used different inference options" in page


def test_the_evaluate_console_names_a_failure_once_counts_it_and_prints_the_comparison(trained, tmp_path, capsys):
    plain = evaluate(trained, _one_case_manifest(tmp_path), tmp_path / "plain").folder
    broken = copy_case("hippocampus_349", tmp_path / "nii", "broken")
    broken[0].write_bytes(broken[0].read_bytes()[:2000])
    rows = [{"case_id": "a1", "image": sample_case("hippocampus_340")[0], "label": sample_case("hippocampus_340")[1]},
            {"case_id": "broken", "image": broken[0], "label": broken[1]}]
    manifest = write_csv(tmp_path / "m.csv", rows, classes=CLASSES)
    capsys.readouterr()
    assert main(["evaluate", str(trained), "--manifest", str(manifest), "--out", str(tmp_path / "tta"), "--tta",
                 "--compare", str(plain)]) == 0
    out, err = capsys.readouterr()
    failure = [line for line in err.splitlines() if "broken" in line]
    assert len(failure) == 1 and failure[0].startswith(f"case broken: not evaluated: {broken[0]}: is truncated")
    assert "ERROR" not in failure[0] and failure[0].count("case broken") == 1
    assert "  1 of 2 cases failed and were not evaluated: the reasons are above, in evaluation.json" in out
    result = json.loads((tmp_path / "tta" / "comparison.json").read_text())
    assert f"  A: {result['a']['label']}\n  B: {result['b']['label']}\n" in out
    for name, shown in (("anterior", "anterior"), ("posterior", "posterior"), ("mean_foreground", "mean of classes")):
        entry = result["dice"][name]
        line = (f"  {shown:<16} {entry['a']['mean']:>6.3f} {entry['b']['mean']:>6.3f}  "
                f"{entry['paired']['mean_diff']:+.3f}\n")  # one case in common: no interval
        assert line in out, name


def test_a_missing_model_folder_and_a_run_without_checkpoint_say_so(trained, tmp_path):
    import shutil

    from medft.evaluate.inference import load_model

    with pytest.raises(MedftError, match=r"nothere: no such folder\. Fix: give the run folder"):
        load_model(tmp_path / "nothere")
    (tmp_path / "file.pt").write_text("x")
    with pytest.raises(MedftError, match=r"file\.pt: not a folder"):
        load_model(tmp_path / "file.pt")
    run = tmp_path / "run"  # a run that failed before its first epoch: config.yaml, no checkpoint
    run.mkdir()
    shutil.copy(trained / "config.yaml", run / "config.yaml")
    for _ in range(2):  # without checkpoints/, then with it empty
        with pytest.raises(MedftError, match=r"no checkpoint yet .*the run has not finished an epoch\. Fix: train it "
                                             rf"\(`medft train {re.escape(str(run / 'config.yaml'))} --out {re.escape(str(run))} "
                                             r"--resume`\)"):
            load_model(run)
        (run / "checkpoints").mkdir(exist_ok=True)


def test_a_run_is_named_by_its_own_folder_not_its_parent_in_the_report(trained, tmp_path):
    patient = tmp_path / "jane_doe_1962"  # a parent folder named after a patient
    patient.mkdir()
    (patient / "train").symlink_to(trained, target_is_directory=True)
    out = evaluate(patient / "train", _one_case_manifest(tmp_path), tmp_path / "eval").folder
    assert json.loads((out / "evaluation.json").read_text())["model"]["name"] == "train"
    report = (out / "report.html").read_text()
    assert "<title>Evaluation of train</title>" in report and "jane_doe_1962" not in report


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_an_interrupted_evaluation_leaves_no_folder_and_the_next_one_writes_it(trained, tmp_path, monkeypatch):
    manifest = _one_case_manifest(tmp_path)
    out, before = tmp_path / "eval", _listing(tmp_path)
    seen = []

    def report_then_interrupt(folder, pictures):  # the report is the last file an evaluation writes
        seen.append(out.exists())
        raise KeyboardInterrupt

    monkeypatch.setattr("medft.evaluate.run.write_report", report_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        evaluate(trained, manifest, out)
    assert seen == [False], "the evaluation folder appeared before it was complete"
    assert _listing(tmp_path) == before, "no evaluation folder, and no partial one, is left"
    monkeypatch.undo()
    assert _listing(evaluate(trained, manifest, out).folder) == ["evaluation.json", "per_case.csv", "predictions", "report.html",
                                                          "summary.json"]


def test_a_killed_evaluation_leaves_no_folder_and_the_next_one_removes_its_partial(trained, tmp_path):
    rows = [{"case_id": f"c{i}", "image": sample_case("hippocampus_340")[0], "label": sample_case("hippocampus_340")[1]}
            for i in range(20)]
    manifest = write_csv(tmp_path / "m.csv", rows, classes=CLASSES)
    out = tmp_path / "eval"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    evaluating = subprocess.Popen([sys.executable, "-m", "medft", "evaluate", str(trained), "--manifest", str(manifest),
                                   "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    others = [tmp_path / f".{socket.gethostname()}.{live.pid}.ab12cd34.partial.eval",  # a live writer's
              tmp_path / ".another-host.1.ab12cd34.partial.eval"]  # a writer's on another machine sharing the folder
    try:
        for folder in others:
            folder.mkdir()
        pattern = f".{socket.gethostname()}.{evaluating.pid}.*.partial.eval"
        deadline = time.monotonic() + 120
        while evaluating.poll() is None and time.monotonic() < deadline:
            if any((p / "predictions").is_dir() for p in tmp_path.glob(pattern)) or (out / "predictions").is_dir():
                evaluating.send_signal(signal.SIGKILL)  # while predicting
            time.sleep(0.01)
        assert evaluating.returncode == -signal.SIGKILL, "killed while predicting"
        assert not out.exists(), "a killed evaluation leaves no folder that looks like one"
        assert len(list(tmp_path.glob(pattern))) == 1, "it left its partial folder"
        evaluate(trained, _one_case_manifest(tmp_path), out)
        assert not list(tmp_path.glob(pattern)), "the next evaluation removes what the killed one left"
        assert all(folder.is_dir() for folder in others), "never the partial of a live writer or another machine's"
    finally:
        for process in (live, evaluating):
            process.kill()
            process.wait()


def test_an_evaluation_keeps_what_appeared_in_its_empty_folder_meanwhile(trained, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    out.mkdir()

    def review_meanwhile(folder, pictures):  # the review app opened on the empty folder while evaluate ran
        (out / "reviews.sqlite").write_bytes(b"reviews")
        return write_report(folder, pictures)

    monkeypatch.setattr("medft.evaluate.run.write_report", review_meanwhile)
    with pytest.raises(MedftError, match=r"eval: the finished output cannot take this name \(.*: something was put there "
                                         r"meanwhile\); it is complete in .*\.partial\.eval\. Fix: rename .*\.partial\.eval "
                                         r"to a new folder and use that$") as caught:
        evaluate(trained, _one_case_manifest(tmp_path), out)
    assert _listing(out) == ["reviews.sqlite"] and (out / "reviews.sqlite").read_bytes() == b"reviews"
    partial = Path(re.search(r"complete in (\S+)\. Fix", str(caught.value)).group(1))
    assert (partial / "report.html").is_file() and (partial / "predictions" / "a1.nii.gz").is_file()


def test_an_interrupted_prediction_leaves_no_file_that_looks_like_one(trained, tmp_path, monkeypatch):
    def write_half_then_interrupt(labels, like, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x1f\x8b half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr("medft.evaluate.run.save_prediction", write_half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        predict_files(trained, [sample_case("hippocampus_340")[0]], tmp_path / "p")
    assert _listing(tmp_path / "p") == []


def test_an_interrupted_comparison_leaves_the_evaluation_whole_and_no_comparison_file(trained, tmp_path, monkeypatch):
    manifest = _one_case_manifest(tmp_path)
    plain = evaluate(trained, manifest, tmp_path / "plain").folder

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("medft.evaluate.compare._page", interrupt)  # while the comparison is made
    with pytest.raises(KeyboardInterrupt):
        evaluate(trained, manifest, tmp_path / "tta", tta=True, compare=plain)
    assert _listing(tmp_path / "tta") == ["evaluation.json", "per_case.csv", "predictions", "report.html", "summary.json"]


def test_a_label_map_travels_to_the_exported_bundle_so_both_evaluate_alike(trained, tmp_path):
    """A run trained with data.label_map scores the ground truth after the map; its exported bundle
    must do the same, or the same manifest scores differently (or fails) through the bundle."""
    import shutil

    import yaml

    from medft.bundle.export import export_run
    from medft.evaluate.inference import load_model

    run = Path(shutil.copytree(trained, tmp_path / "run", ignore=shutil.ignore_patterns("tensorboard")))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["label_map"] = {2: 1}  # posterior scored as anterior
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    bundle = export_run(run, tmp_path / "bundle")
    assert load_model(bundle).label_map == {2: 1}
    manifest = write_csv(tmp_path / "m.csv", [{"case_id": "a1", "image": sample_case("hippocampus_340")[0],
                                               "label": sample_case("hippocampus_340")[1]}], classes=CLASSES)
    assert main(["evaluate", str(run), "--manifest", str(manifest), "--out", str(tmp_path / "from_run")]) == 0
    assert main(["evaluate", str(bundle), "--manifest", str(manifest), "--out", str(tmp_path / "from_bundle")]) == 0
    from_run, from_bundle = _per_case(tmp_path / "from_run"), _per_case(tmp_path / "from_bundle")
    assert from_bundle == from_run
    assert int(next(r for r in from_run if r["class_index"] == "2")["fn"]) == 0  # no posterior left in the truth


def test_label_files_stored_with_other_values_are_drawn_through_the_runs_label_map(trained, tmp_path, monkeypatch):
    """Labels stored as 0/10/20 with data.label_map {10: 1, 20: 2}: the Dice used the map, but the
    report's picture drew "class 10" and "class 20", and the review app refused the case as changed."""
    import yaml

    from medft.review.cases import CaseTable
    from medft.review.volumes import load_case

    run = Path(shutil.copytree(trained, tmp_path / "run", ignore=shutil.ignore_patterns("tensorboard")))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["label_map"] = {10: 1, 20: 2}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    image, label = sample_case("hippocampus_340")
    stored = nib.load(label)
    classes = np.asarray(stored.dataobj).astype(np.int16)
    nib.save(nib.Nifti1Image(classes * 10, stored.affine), tmp_path / "label_x10.nii.gz")
    manifest = write_csv(tmp_path / "m.csv", [{"case_id": "a1", "image": image, "label": tmp_path / "label_x10.nii.gz"}],
                         classes=CLASSES)
    assert main(["evaluate", str(run), "--manifest", str(manifest), "--out", str(tmp_path / "eval")]) == 0
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert evaluation["label_map"] == {"10": 1, "20": 2} and evaluation["cases"][0]["status"] == "ok"
    report = (tmp_path / "eval" / "report.html").read_text()
    assert "Picture not drawn" not in report
    assert write_report(tmp_path / "eval").read_text() == report  # the picture made in memory, as from the files
    from medft import case_pictures
    from medft.evaluate import report as report_module

    drawn = {}
    monkeypatch.setattr(case_pictures, "slice_figure", lambda panels, letters, legend, title: drawn.update(legend=legend))
    folder = report_module.read_evaluation(tmp_path / "eval")
    case_pictures.report_figure(report_module._report_slice(folder, folder.cases[0]), folder.class_names, "a1")
    assert [name for _, name in drawn["legend"]] == ["anterior", "posterior", "false positive", "false negative",
                                                     "wrong class"]
    volumes = load_case(CaseTable.from_eval_dir(tmp_path / "eval"), "a1")
    assert volumes.truth.max() == 2 and volumes.truth.sum() == classes.sum()  # the classes, in RAS


def test_predict_names_a_folder_given_as_dot_by_its_own_name(trained, tmp_path, monkeypatch):
    """`medft predict RUN . --out DIR` from inside a DICOM series folder wrote a hidden DIR/.nii.gz."""
    from medft.evaluate.run import _case_id

    monkeypatch.chdir(DICOM_CROP)
    assert predict_files(trained, [Path(".")], tmp_path / "p") == [tmp_path / "p" / "13_HCropVolume.nii.gz"]
    assert _case_id(Path("sub/..")) == "13_HCropVolume"
    for hidden in (Path("/"), Path(".hidden.nii.gz")):
        with pytest.raises(MedftError, match="cannot name a prediction file"):
            _case_id(hidden)
