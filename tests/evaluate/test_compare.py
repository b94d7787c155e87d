"""comparison.html / comparison.json: two evaluations side by side, paired (or, with no common case, unpaired)
differences with CIs."""
from __future__ import annotations

import base64
import json
import math
import re
import struct
import uuid
from pathlib import Path

import numpy as np
import pytest

from medft.errors import MedftError
from medft.evaluate.compare import compare_evaluations
from medft.evaluate.summary import METRICS, summarize, write_per_case

CLASSES = ["background", "anterior", "posterior"]


def _rows(dice: dict[str, list[float]], case_ids: list[str], sites: list[str]) -> list[dict]:
    rows = []
    for k, case_id in enumerate(case_ids):
        for c, name in enumerate(CLASSES):
            d = 0.99 if c == 0 else dice[name][k]
            hd = math.nan if c == 0 or math.isnan(d) else 1 + 10 * (1 - d)
            rows.append({"case_id": case_id, "site": sites[k], "class_index": c, "class_name": name, "dice": d,
                         "sensitivity": d, "specificity": 0.999, "hd95": hd, "nsd": d,
                         "tp": 10, "fp": 1, "fn": 1, "tn": 1000})
    return rows


def _folder(path: Path, rows: list[dict], name: str, classes: list[str] = CLASSES) -> Path:
    path.mkdir(parents=True)
    write_per_case(path / "per_case.csv", rows)
    (path / "summary.json").write_text(json.dumps(summarize(rows, classes, n_resamples=200), allow_nan=False))
    cases = sorted({r["case_id"] for r in rows})
    (path / "evaluation.json").write_text(json.dumps({
        "evaluation_id": uuid.uuid4().hex,
        "model": {"path": f"/models/{name}", "kind": "bundle" if name == "pretrained" else "run", "name": name,
                  "version": None},
        "manifest": "/data/test.csv", "split": "test", "class_names": classes, "tta": False,
        "created": "2025-03-04T10:15:00+00:00", "medft_version": "0.1.0",
        "cases": [{"case_id": c, "site": "north", "image": [f"/data/{c}.nii.gz"], "series_uid": None,
                   "label": f"/data/{c}_seg.nii.gz", "prediction": f"predictions/{c}.nii.gz", "status": "ok",
                   "message": None} for c in cases],
        "confusion_matrix": None, "roc": {}, "warnings": [],
    }))
    return path


@pytest.fixture
def shifted_pair(tmp_path) -> tuple[Path, Path, list[str]]:
    """B = A + 0.05 Dice on every case and class; A has one extra case, anterior NaN in case_03."""
    rng = np.random.default_rng(1)
    ids = [f"case_{i:02d}" for i in range(12)]
    a = {n: list(rng.uniform(0.5, 0.9, len(ids))) for n in CLASSES[1:]}
    a["anterior"][3] = math.nan
    b = {n: [v + 0.05 for v in values] for n, values in a.items()}
    sites = ["north"] * 6 + ["south"] * 6
    rows_a = _rows({n: v + [0.3] for n, v in a.items()}, ids + ["case_extra"], sites + ["south"])
    rows_b = _rows(b, ids, sites)
    return _folder(tmp_path / "eval_pretrained", rows_a, "pretrained"), _folder(tmp_path / "eval_ft", rows_b, "finetuned"), ids


def test_a_constant_shift_gives_that_difference_and_a_zero_width_interval(shifted_pair):
    eval_a, eval_b, ids = shifted_pair
    page = compare_evaluations(eval_a, eval_b)
    assert page == eval_b / "comparison.html"
    result = json.loads((eval_b / "comparison.json").read_text())
    assert result["design"] == "paired" and "share 12 scored cases" in result["design_reason"]
    assert result["common_cases"] == ids and result["only_in_a"] == ["case_extra"] and result["only_in_b"] == []
    assert result["a"]["label"] == "pretrained" and result["b"]["label"] == "finetuned"
    for key, n in [("anterior", 11), ("posterior", 12), ("mean_foreground", 12)]:
        paired = result["dice"][key]["paired"]
        assert paired["n_common"] == n, key
        assert paired["mean_diff"] == pytest.approx(0.05, abs=1e-12)
        assert paired["ci95"] == pytest.approx([0.05, 0.05], abs=1e-12)
        assert paired["mean_b"] - paired["mean_a"] == pytest.approx(0.05, abs=1e-12)
    # Each side's own mean and CI are those of its summary.json (all of its scored cases).
    summary_a = json.loads((eval_a / "summary.json").read_text())["overall"]
    assert result["dice"]["posterior"]["a"]["mean"] == summary_a["posterior"]["dice"]["mean"]
    assert result["dice"]["posterior"]["a"]["n"] == 13
    # HD95 = 1 + 10 (1 - Dice): B's is lower by 0.5 mm.
    assert result["paired_differences"]["hd95"]["posterior"]["mean_diff"] == pytest.approx(-0.5, abs=1e-9)
    text = page.read_text()
    assert "+0.050" in text and "higher with finetuned" in text


def test_paired_interval_matches_the_normal_approximation(tmp_path):
    """Many cases, varied differences: the bootstrap CI is close to mean ± 1.96 sd / sqrt(n)."""
    rng = np.random.default_rng(2)
    ids = [f"c{i:03d}" for i in range(150)]
    a = {n: list(rng.uniform(0.4, 0.8, len(ids))) for n in CLASSES[1:]}
    shift = {n: rng.normal(0.03, 0.05, len(ids)) for n in CLASSES[1:]}
    b = {n: list(np.asarray(a[n]) + shift[n]) for n in CLASSES[1:]}
    sites = [""] * len(ids)
    eval_a = _folder(tmp_path / "a", _rows(a, ids, sites), "m")
    eval_b = _folder(tmp_path / "b", _rows(b, ids, sites), "m")
    out = compare_evaluations(eval_a, eval_b, out=tmp_path / "cmp", labels=("bundle", "fine-tuned"))
    assert out == tmp_path / "cmp" / "comparison.html"
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    for name in CLASSES[1:]:
        d = shift[name]
        paired = result["dice"][name]["paired"]
        assert paired["mean_diff"] == pytest.approx(d.mean(), abs=1e-12)
        half = 1.96 * d.std(ddof=1) / math.sqrt(d.size)
        lo, hi = paired["ci95"]
        assert lo < d.mean() < hi
        assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
        assert (lo + hi) / 2 == pytest.approx(d.mean(), abs=0.2 * half)
    assert result["a"]["label"] == "bundle"


def _assert_self_contained(text: str, n_images: int) -> None:
    """Nothing loaded from elsewhere; n_images inline PNGs of a sensible size."""
    assert "http" not in text.lower()
    assert not re.search(r"<(script|link|iframe)\b|@import|url\(", text, re.I)
    for value in re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", text, re.I):
        assert value.startswith(("data:", "#")), value
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert len(images) == n_images
    for data in map(base64.b64decode, images):
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])
        assert 300 <= width <= 3000 and 150 <= height <= 3000


def test_each_side_states_the_inference_options_its_evaluation_recorded(shifted_pair):
    eval_a, eval_b, _ = shifted_pair
    evaluation = json.loads((eval_b / "evaluation.json").read_text())
    evaluation.update(tta=True, tta_flip_axes=[0, 2], largest_component=True)
    (eval_b / "evaluation.json").write_text(json.dumps(evaluation))
    page = compare_evaluations(eval_a, eval_b).read_text()
    result = json.loads((eval_b / "comparison.json").read_text())
    assert result["a"]["inference"] == {"tta": False, "tta_flip_axes": [], "largest_component": False}
    assert result["b"]["inference"] == {"tta": True, "tta_flip_axes": [0, 2], "largest_component": True}
    assert "<td>test-time augmentation: no; no post-processing</td>" in page
    assert ("<td>test-time augmentation: yes: 4 mirrorings averaged (left-right, up-down); largest connected component "
            "per class</td>") in page
    assert "used different inference options" in page


def test_comparison_page_is_self_contained_with_its_plots(shifted_pair):
    eval_a, eval_b, _ = shifted_pair
    text = compare_evaluations(eval_a, eval_b, out=eval_a / "vs.html").read_text()
    assert (eval_a / "vs.json").is_file()
    _assert_self_contained(text, 2)  # means with CIs and differences; paired per-case lines
    assert "Paired comparison" in text and "unpaired" not in text.lower()
    assert "case_extra" in text  # named as scored in A only
    for case_id in ["case_00", "case_11"]:
        assert case_id in text
    # the manifest and the folders by name, no path (a folder may be named after the patient)
    words = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert "<td>test.csv</td>" in words and "<td>eval_ft</td>" in words
    assert "/data/" not in words and str(eval_a.parent) not in words


def test_different_classes_are_refused_naming_both_folders(tmp_path):
    ids, sites = ["c1", "c2"], ["", ""]
    rows = _rows({"anterior": [0.5, 0.6], "posterior": [0.7, 0.8]}, ids, sites)
    eval_a = _folder(tmp_path / "a", rows, "m1")
    other = ["background", "left", "right"]
    renamed = [dict(r, class_name=other[r["class_index"]]) for r in rows]
    eval_b = _folder(tmp_path / "b", renamed, "m2", classes=other)
    with pytest.raises(MedftError, match="classes differ") as error:
        compare_evaluations(eval_a, eval_b)
    assert str(eval_a) in str(error.value) and str(eval_b) in str(error.value)


def test_no_common_case_is_compared_unpaired(tmp_path):
    dice = {"anterior": [0.5, 0.6], "posterior": [0.7, 0.8]}
    eval_a = _folder(tmp_path / "a", _rows(dice, ["c1", "c2"], ["", ""]), "m1")
    eval_b = _folder(tmp_path / "b", _rows(dice, ["c3", "c4"], ["", ""]), "m2")
    assert compare_evaluations(eval_a, eval_b) == eval_b / "comparison.html"
    result = json.loads((eval_b / "comparison.json").read_text())
    assert result["design"] == "unpaired" and "share no scored case" in result["design_reason"]
    assert (result["common_cases"], result["only_in_a"], result["only_in_b"]) == ([], ["c1", "c2"], ["c3", "c4"])
    assert result["dice"]["anterior"]["unpaired"]["mean_diff"] == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------------------------
# Two sites: the same model on two held-out sets that share no case
# --------------------------------------------------------------------------------------------
def _two_sites(tmp_path: Path, noise: float = 0.0, same_ids: bool = False) -> tuple[Path, Path]:
    """A: 12 cases of site north; B: A's Dice + 0.05 (+ per-case noise of mean exactly 0) under site south's ids,
    or under A's own ids with same_ids (the equivalent paired construction)."""
    rng = np.random.default_rng(4)
    ids_a = [f"north_{i:02d}" for i in range(12)]
    ids_b = ids_a if same_ids else [f"south_{i:02d}" for i in range(12)]
    a = {n: rng.uniform(0.5, 0.9, 12) for n in CLASSES[1:]}
    jitter = {n: rng.normal(0, noise, 12) if noise else np.zeros(12) for n in CLASSES[1:]}
    b = {n: list(a[n] + 0.05 + jitter[n] - jitter[n].mean()) for n in CLASSES[1:]}
    name = "paired" if same_ids else "sites"
    eval_a = _folder(tmp_path / f"{name}_north", _rows({n: list(v) for n, v in a.items()}, ids_a, ["north"] * 12), "m")
    eval_b = _folder(tmp_path / f"{name}_south", _rows(b, ids_b, ["north" if same_ids else "south"] * 12), "m")
    return eval_a, eval_b


@pytest.mark.parametrize("noise", [0.0, 0.01])
def test_two_sites_are_compared_unpaired_and_the_interval_is_wider_than_paired(tmp_path, noise):
    eval_a, eval_b = _two_sites(tmp_path, noise)
    compare_evaluations(eval_a, eval_b, out=tmp_path / "sites.html")
    result = json.loads((tmp_path / "sites.json").read_text())
    assert result["design"] == "unpaired"
    assert result["a"]["label"] == "sites_north" and result["b"]["label"] == "sites_south"
    assert result["common_cases"] == [] and result["cases"] == [] and len(result["only_in_b"]) == 12
    assert result["bootstrap"]["method"] == (
        "percentile bootstrap of the difference of means, each evaluation's cases resampled independently")
    assert "paired_differences" not in result and set(result["unpaired_differences"]) == set(METRICS)
    compare_evaluations(*_two_sites(tmp_path, noise, same_ids=True), out=tmp_path / "paired.html")
    paired = json.loads((tmp_path / "paired.json").read_text())
    assert paired["design"] == "paired"
    for key in ("anterior", "posterior", "mean_foreground"):
        d = result["dice"][key]["unpaired"]
        assert "paired" not in result["dice"][key]
        assert (d["n_a"], d["n_b"]) == (12, 12)
        assert d["mean_diff"] == pytest.approx(0.05, abs=1e-12)
        assert d["mean_b"] - d["mean_a"] == pytest.approx(0.05, abs=1e-12)
        # each side's own mean (its summary.json) is the mean that enters the difference
        assert d["mean_a"] == pytest.approx(result["dice"][key]["a"]["mean"], abs=1e-12)
        lo, hi = d["ci95"]
        assert lo < 0.05 < hi
        p = paired["dice"][key]["paired"]
        assert p["mean_diff"] == pytest.approx(0.05, abs=1e-12)
        assert hi - lo > 5 * (p["ci95"][1] - p["ci95"][0])
    # HD95 = 1 + 10 (1 - Dice): B's is lower by 0.5 mm on average.
    assert result["unpaired_differences"]["hd95"]["posterior"]["mean_diff"] == pytest.approx(-0.5, abs=1e-9)


def test_two_sites_page_is_self_contained_and_says_unpaired(tmp_path):
    eval_a, eval_b = _two_sites(tmp_path)
    text = compare_evaluations(eval_a, eval_b, labels=("north", "south")).read_text()
    _assert_self_contained(text, 1)  # means with CIs and the difference; no per-case pairs
    assert "Unpaired comparison" in text and "unpaired" in text.lower()
    assert "share no scored case" in text and "case populations" in text
    assert "No per-case plot" in text and "Paired Dice per case" not in text
    assert "+0.050" in text and "n = 12 (A), 12 (B)" in text
    assert "north_00" not in text and "south_00" not in text  # no per-case table


def test_two_runs_of_the_same_name_are_numbered_not_named_by_their_parents(tmp_path):
    rows = _rows({"anterior": [0.8, 0.7], "posterior": [0.6, 0.5]}, ["c1", "c2"], ["", ""])
    eval_a = _folder(tmp_path / "jane_doe" / "eval", rows, "train")  # parents named after a patient, a project
    eval_b = _folder(tmp_path / "project_x" / "eval", rows, "train")
    page = compare_evaluations(eval_a, eval_b).read_text()
    result = json.loads((eval_b / "comparison.json").read_text())
    assert (result["a"]["label"], result["b"]["label"]) == ("train (1)", "train (2)")
    assert "jane_doe" not in page and "project_x" not in page


def test_the_console_table_gives_each_class_with_the_difference_and_its_interval(shifted_pair, capsys):
    from medft.cli.evaluate import print_comparison
    from medft.evaluate.compare import read_comparison

    eval_a, eval_b, _ = shifted_pair
    print_comparison(read_comparison(compare_evaluations(eval_a, eval_b)))
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == ["  A: pretrained", "  B: finetuned", " " * 24 + "A      B  B - A (paired, 95% interval)"]
    result = json.loads((eval_b / "comparison.json").read_text())
    for line, (name, entry) in zip(lines[3:], result["dice"].items(), strict=True):
        shown = "mean of classes" if name == "mean_foreground" else name
        assert line == f"  {shown:<16} {entry['a']['mean']:>6.3f} {entry['b']['mean']:>6.3f}  +0.050 [+0.050, +0.050]"
