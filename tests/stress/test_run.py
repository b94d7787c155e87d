"""medft stress on the demo bundle (pretrained on the whole hippocampus) and sample cases."""
import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medft.cli import main
from medft.errors import MedftError
from medft.evaluate.run import evaluate
from medft.evaluate.summary import METRICS
from medft.stress.files import read_rows
from medft.stress.run import detect_modality, stress
from medft.stress.summary import ALPHA
from tests.stress.helpers import CASES, DEMO_BUNDLE, whole_hippocampus_manifest

PERTURBATIONS = ["noise", "affine", "thick_slices"]
LEVELS = [1, 5]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return whole_hippocampus_manifest(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def stressed(manifest, tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("stress") / "bundle"
    stress(DEMO_BUNDLE, manifest, out, perturbations=PERTURBATIONS, levels=LEVELS, workers=0)
    return out


def _rows(folder: Path) -> list[dict]:
    return read_rows(folder / "stress.csv")


def test_level_0_is_what_medft_evaluate_scores(stressed, manifest, tmp_path):
    evaluate(DEMO_BUNDLE, manifest, tmp_path / "eval")
    with (tmp_path / "eval" / "per_case.csv").open() as file:
        evaluated = {(r["case_id"], r["class_name"]): r for r in csv.DictReader(file)}
    with (stressed / "stress.csv").open() as file:
        level0 = [r for r in csv.DictReader(file) if r["level"] == "0"]
    assert {r["perturbation"] for r in level0} == {"none"} and len(level0) == len(evaluated) == 2 * len(CASES)
    for row in level0:
        expected = evaluated[(row["case_id"], row["class_name"])]
        assert {k: row[k] for k in (*METRICS, "tp", "fp", "fn", "tn")} == {
            k: expected[k] for k in (*METRICS, "tp", "fp", "fn", "tn")}


def test_a_rerun_in_worker_processes_is_bit_identical(stressed, manifest, tmp_path):
    stress(DEMO_BUNDLE, manifest, tmp_path / "again", perturbations=PERTURBATIONS, levels=LEVELS, workers=2)
    assert (tmp_path / "again" / "stress.csv").read_bytes() == (stressed / "stress.csv").read_bytes()
    ours, theirs = (json.loads((f / "stress.json").read_text()) for f in (stressed, tmp_path / "again"))
    assert ours["results"] == theirs["results"] and ours["ranking"] == theirs["ranking"]


def test_every_case_perturbation_level_and_class_has_its_row(stressed):
    rows = _rows(stressed)
    keys = {(r["case_id"], r["perturbation"], r["level"], r["class_index"]) for r in rows}
    expected = {(c, "none", 0, k) for c in CASES for k in (0, 1)} | {
        (c, p, level, k) for c in CASES for p in PERTURBATIONS for level in LEVELS for k in (0, 1)}
    assert keys == expected and len(rows) == len(expected)


def test_a_spatial_perturbation_scores_against_the_moved_label_and_the_others_against_the_label(stressed):
    """The label's voxel count (tp + fn) of a case is that of its file under noise and thick slices; the affine
    perturbation moved it (and some of it out of view)."""
    truth = {(r["case_id"], r["perturbation"], r["level"]): r["tp"] + r["fn"] for r in _rows(stressed)
             if r["class_index"] == 1}
    for case_id in CASES:
        unperturbed = truth[(case_id, "none", 0)]
        assert all(truth[(case_id, p, level)] == unperturbed for p in ("noise", "thick_slices") for level in LEVELS)
        assert truth[(case_id, "affine", 5)] != unperturbed


def test_the_scores_are_rood_mri_s_from_the_rows(stressed):
    """Overall and degradation recomputed from stress.csv with numpy, case by case."""
    rows = _rows(stressed)
    stress_json = json.loads((stressed / "stress.json").read_text())
    dice = {(r["case_id"], r["perturbation"], r["level"]): r["dice"] for r in rows if r["class_index"] == 1}
    weights = np.array([ALPHA**level for level in LEVELS])
    for name in PERTURBATIONS:
        clean = np.array([dice[(c, "none", 0)] for c in CASES])
        perturbed = np.array([[dice[(c, name, level)] for level in LEVELS] for c in CASES])
        overall = (clean + perturbed @ weights) / (1 + weights.sum())
        degradation = ((clean[:, None] - perturbed) @ weights) / weights.sum()
        result = stress_json["results"][name]
        assert result["overall"]["mean"] == pytest.approx(overall.mean(), abs=1e-12)
        assert result["degradation"]["mean"] == pytest.approx(degradation.mean(), abs=1e-12)
        level5 = result["levels"]["5"]["hippocampus"]["dice"]
        assert level5["mean"] == pytest.approx(perturbed[:, 1].mean(), abs=1e-12) and level5["n"] == len(CASES)
    degradations = [stress_json["results"][n]["degradation"]["mean"] for n in stress_json["ranking"]]
    assert degradations == sorted(degradations, reverse=True)


def test_stress_json_records_what_ran(stressed):
    stress_json = json.loads((stressed / "stress.json").read_text())
    assert stress_json["modality"] == "mr" and stress_json["levels"] == LEVELS and stress_json["seed"] == 0
    assert list(stress_json["perturbations"]) == PERTURBATIONS
    assert stress_json["perturbations"]["noise"]["parameters"] == {"1": {"std": 0.16}, "5": {"std": 0.8}}
    assert stress_json["cases"] == {"n": 3, "scored": 3, "failed": []}
    affected = stress_json["results"]["affine"]["most_affected"]
    assert affected["case_id"] in CASES and affected["level"] == 5 and affected["dice"] < affected["dice_level0"]
    assert "hippocampus_demo" in (stressed / "stress.html").read_text()


def test_compare_pairs_the_same_perturbed_images(stressed, manifest, tmp_path):
    """The same model against itself: every paired difference is exactly 0; each side's means are its own."""
    stress(DEMO_BUNDLE, manifest, tmp_path / "b", perturbations=PERTURBATIONS, levels=LEVELS, workers=0,
           compare=stressed)
    ours = json.loads((tmp_path / "b" / "stress.json").read_text())
    comparison = ours["comparison"]
    assert comparison["n_common_cases"] == 3 and comparison["other"] == str(stressed)
    for name in PERTURBATIONS:
        for level in ("0", "1", "5"):
            diff = comparison["results"][name]["levels"][level]["mean_foreground"]
            mean = ours["results"][name]["levels"][level]["mean_foreground"]["dice"]["mean"]
            assert diff["n_common"] == 3 and diff["mean_a"] == diff["mean_b"] == pytest.approx(mean)
            assert diff["mean_diff"] == 0 and diff["ci95"] == [0, 0]
        assert comparison["results"][name]["degradation"]["mean_diff"] == 0
    assert "compar" in (tmp_path / "b" / "stress.html").read_text().lower()


def test_compare_pairs_two_models_case_by_case(stressed, manifest, tmp_path):
    """Keeping the largest component changes some predictions: B - A is the difference of the paired rows."""
    stress(DEMO_BUNDLE, manifest, tmp_path / "b", perturbations=["affine"], levels=LEVELS, workers=0,
           largest_component=True, compare=stressed)
    ours, theirs = (json.loads((f / "stress.json").read_text()) for f in (tmp_path / "b", stressed))
    a = {(r["case_id"], r["perturbation"], r["level"]): r["dice"] for r in _rows(stressed) if r["class_index"] == 1}
    b = {(r["case_id"], r["perturbation"], r["level"]): r["dice"] for r in _rows(tmp_path / "b") if r["class_index"] == 1}
    assert set(b) <= set(a)
    for level in ("0", "1", "5"):
        paired = [b[k] - a[k] for k in b if str(k[2]) == level and k[1] in ("affine", "none")]
        diff = ours["comparison"]["results"]["affine"]["levels"][level]["mean_foreground"]
        assert diff["mean_diff"] == pytest.approx(np.mean(paired), abs=1e-12) and diff["n_common"] == 3
        assert diff["mean_a"] == pytest.approx(theirs["results"]["affine"]["levels"][level]["mean_foreground"]["dice"]["mean"])
    assert list(ours["comparison"]["results"]) == ["affine"]


def test_another_perturbation_set_is_refused_before_any_inference(stressed, manifest, tmp_path, monkeypatch):
    import medft.stress.run as run

    monkeypatch.setattr(run, "_run", lambda *a, **k: pytest.fail("inference started"))
    with pytest.raises(MedftError, match=r"does not hold the perturbed images this one would make \(no motion; no "
                                         r"level 2 of noise\)\. Fix: run this one with --perturbations"):
        stress(DEMO_BUNDLE, manifest, tmp_path / "c", perturbations=["motion", "noise"], levels=[2, 5], compare=stressed)
    with pytest.raises(MedftError, match=r"\(seed 0 \(here 1\)\)"):
        stress(DEMO_BUNDLE, manifest, tmp_path / "c", perturbations=PERTURBATIONS, levels=LEVELS, seed=1,
               compare=stressed)
    other_cases = whole_hippocampus_manifest(tmp_path / "other", cases=("hippocampus_345",))
    with pytest.raises(MedftError, match="no case in common with this stress test"):
        stress(DEMO_BUNDLE, other_cases, tmp_path / "c", perturbations=PERTURBATIONS, levels=LEVELS, compare=stressed)
    assert not (tmp_path / "c").exists()


def test_a_case_that_cannot_be_read_is_recorded_and_the_others_go_on(manifest, tmp_path):
    broken = tmp_path / "broken.nii.gz"
    image = next(csv.DictReader(manifest.open()))["image"]
    broken.write_bytes((manifest.parent / image).read_bytes()[:2000] if not Path(image).is_absolute()
                       else Path(image).read_bytes()[:2000])
    lines = manifest.read_text().splitlines()
    first = lines[1].split(",")
    first[1] = str(broken)
    changed = tmp_path / "manifest.csv"
    changed.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    shutil.copyfile(manifest.with_suffix(".classes.json"), changed.with_suffix(".classes.json"))
    result = stress(DEMO_BUNDLE, changed, tmp_path / "out", perturbations=["thick_slices"], levels=[5], workers=0)
    failed = result.stress["cases"]["failed"]
    assert result.stress["cases"]["scored"] == 2 and [f["case_id"] for f in failed] == [CASES[0]]
    assert "broken.nii.gz: is truncated" in failed[0]["message"]
    page = (tmp_path / "out" / "stress.html").read_text()
    assert "[path]: is truncated" in page and str(tmp_path) not in page  # a folder may bear a patient's name
    assert {r["case_id"] for r in _rows(tmp_path / "out")} == set(CASES[1:])


@pytest.mark.parametrize(("arguments", "message"), [
    (["--perturbations", "wobble"], "unknown perturbation(s) wobble. Fix: choose from noise"),
    (["--perturbations", "noise_hu"], "noise_hu do(es) not apply to MR images"),
    (["--modality", "ct", "--perturbations", "motion"], "motion do(es) not apply to CT images"),
])
def test_wrong_perturbations_are_named_with_the_fix(manifest, tmp_path, capsys, arguments, message):
    code = main(["stress", str(DEMO_BUNDLE), "--manifest", str(manifest), "--out", str(tmp_path / "out"), *arguments])
    assert code == 1 and message in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_level_outside_1_to_5_is_a_usage_error(manifest, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["stress", str(DEMO_BUNDLE), "--manifest", str(manifest), "--out", str(tmp_path / "o"), "--levels", "6"])
    assert "give a level from 1 to 5, not '6'" in capsys.readouterr().err


def test_a_manifest_without_labels_is_refused(tmp_path):
    rows = "case_id,image,label,split,site,patient_id\nx," + str(DEMO_BUNDLE / "none.nii.gz") + ",,test,,\n"
    (tmp_path / "m.csv").write_text(rows)
    with pytest.raises(MedftError, match="no labelled case in the manifest"):
        stress(DEMO_BUNDLE, tmp_path / "m.csv", tmp_path / "out")


def test_the_command_prints_the_ranking(stressed, manifest, tmp_path, capsys):
    code = main(["stress", str(DEMO_BUNDLE), "--manifest", str(manifest), "--out", str(tmp_path / "out"),
                 "--perturbations", "thick_slices", "--levels", "5", "--workers", "0"])
    out = capsys.readouterr().out
    assert code == 0 and "thick_slices" in out and "level 0" in out and "level 5" in out
    mean0 = json.loads((tmp_path / "out" / "stress.json").read_text())["results"]["thick_slices"]["levels"]["0"]
    assert f"{mean0['mean_foreground']['dice']['mean']:.3f}" in out


def test_modality_follows_the_preprocessing():
    assert detect_modality([{"_target_": "ScaleIntensityRanged", "a_min": -1000, "a_max": 1000}]) == "ct"
    assert detect_modality([{"_target_": "NormalizeIntensityd"}]) == "mr"
    assert detect_modality([{"_target_": "ScaleIntensityRangePercentilesd", "lower": 0.5}]) == "mr"
    assert detect_modality([{"_target_": "ScaleIntensityRanged", "a_min": 0, "a_max": 255}]) == "mr"


def test_no_nan_reaches_stress_json(stressed):
    text = (stressed / "stress.json").read_text()
    assert "NaN" not in text and math.isfinite(json.loads(text)["wall_seconds"])


def test_a_run_stress_tested_in_a_worker_process_equals_one_in_the_main_process(tmp_path):
    """A run from random weights (medft's preprocessing: no step moves the grid): the image's affine travels from
    the worker with the image (a view of it, not a copy, once pointed at memory freed on the way: the pictures
    failed)."""
    from medft.config import load_config
    from medft.train.recipe import run_training
    from tests.bundle.helpers import UNET3D
    from tests.train.helpers import VAL_IDS, make_config

    torch.set_num_threads(1)
    config = make_config(tmp_path, freeze=[], model={"network_def": UNET3D}, **{"train.epochs": 1})
    run_training(load_config(config), tmp_path / "run")
    manifest = tmp_path / "manifest.csv"
    for workers in (0, 1):
        result = stress(tmp_path / "run", manifest, tmp_path / f"w{workers}", perturbations=["affine"], levels=[5],
                        split="val", workers=workers)
        assert result.stress["cases"]["scored"] == len(VAL_IDS)
        assert "Case " + result.stress["results"]["affine"]["most_affected"]["case_id"] in (
            tmp_path / f"w{workers}" / "stress.html").read_text()
    assert (tmp_path / "w0" / "stress.csv").read_bytes() == (tmp_path / "w1" / "stress.csv").read_bytes()


def test_a_case_that_fails_under_one_perturbation_leaves_no_rows(manifest, tmp_path, monkeypatch):
    """Its level-0 rows were scored before the failure: they go too, so that every level counts the same cases."""
    import medft.stress.run as run
    from medft.errors import DataError

    perturb = run.perturb

    def failing(data, perturbation, level, seed):
        if data["case_id"] == CASES[1] and level == 5:
            raise DataError("cannot be perturbed", "give another case", file="x.nii.gz")
        return perturb(data, perturbation, level, seed)

    monkeypatch.setattr(run, "perturb", failing)
    result = stress(DEMO_BUNDLE, manifest, tmp_path / "out", perturbations=["thick_slices"], levels=[1, 5], workers=0)
    assert [f["case_id"] for f in result.stress["cases"]["failed"]] == [CASES[1]]
    assert {r["case_id"] for r in _rows(tmp_path / "out")} == {CASES[0], CASES[2]}
    assert result.stress["results"]["thick_slices"]["levels"]["0"]["mean_foreground"]["dice"]["n"] == 2
