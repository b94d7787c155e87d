"""stress.html: the stress test's page from a stress.json content made by hand, and the pictures it shows."""
from __future__ import annotations

import base64
import copy
import io
import re

import numpy as np
import pytest
import torch

from medft.slices import percentile_window
from medft.stress.report import StressPicture, stress_picture, write_stress_report

CLASSES = ["background", "anterior", "posterior"]
DATA_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")
PATIENT = "Doe_Jane"  # in the paths of stress.json only: the page must not show it


def _d(mean, lo=None, hi=None, n=5, n_nan=0) -> dict:
    return {"mean": mean, "sd": None if mean is None else 0.05, "median": mean, "ci95": [lo, hi], "n": n,
            "n_nan": n_nan}


def _level(anterior: dict, posterior: dict, mean: dict, hd95: dict | None = None) -> dict:
    hd95 = hd95 or _d(None, n=0, n_nan=5)
    blocks = {"anterior": anterior, "posterior": posterior, "mean_foreground": mean}
    return {name: {"dice": d, "sensitivity": d, "specificity": _d(0.9991, 0.9987, 0.9995), "hd95": hd95}
            for name, d in blocks.items()}


def _p1(mean_a, mean_b, lo, hi, n=4) -> dict:
    return {"n_common": n, "mean_a": mean_a, "mean_b": mean_b, "mean_diff": mean_b - mean_a, "ci95": [lo, hi]}


def _stress(comparison: bool = False) -> dict:
    level0 = _level(_d(0.861, 0.82, 0.9), _d(0.841, 0.8, 0.88), _d(0.851, 0.812, 0.889), _d(3.25, 2.5, 4.0))
    results = {  # not in the ranking's order: the page must follow the ranking
        "noise": {"levels": {"0": level0,
                             "1": _level(_d(0.81, 0.77, 0.85), _d(0.794, 0.75, 0.83), _d(0.802, 0.761, 0.84)),
                             "3": _level(_d(0.66, 0.6, 0.72), _d(0.65, 0.58, 0.7), _d(0.655, 0.59, 0.712))},
                  "overall": _d(0.781, 0.744, 0.815), "degradation": _d(0.107, 0.081, 0.133),
                  "most_affected": {"case_id": "case_003", "level": 3, "dice_level0": 0.874, "dice": 0.412}},
        "motion": {"levels": {"0": level0,
                              "1": _level(_d(0.62, 0.55, 0.69), _d(0.604, 0.53, 0.67), _d(0.612, 0.547, 0.671)),
                              "3": _level(_d(0.21), _d(0.19), _d(0.2, n=1, n_nan=4))},
                   "overall": _d(0.612, 0.566, 0.653), "degradation": _d(0.301, 0.244, 0.359),
                   "most_affected": {"case_id": "case_005", "level": 3, "dice_level0": 0.9, "dice": 0.05}},
    }
    stress = {
        "stress_id": "ab12", "created": "2025-05-06T14:30:00+00:00", "medft_version": "0.9.0",
        "model": {"path": f"/home/{PATIENT}/runs/hippo_ft", "kind": "run", "name": "hippo_ft"},
        "manifest": f"/data/{PATIENT}/hospital.csv", "split": "test", "modality": "mr", "seed": 0,
        "tta": False, "tta_flip_axes": [], "largest_component": False,
        "class_names": CLASSES, "levels": [1, 3],
        "perturbations": {
            "noise": {"title": "Rician noise", "spatial": False, "describe": "std: noise sd over the image's range",
                      "parameters": {"1": {"std": 0.04}, "3": {"std": 0.16}}},
            "motion": {"title": "Motion", "spatial": True, "describe": "degrees and mm of the movements",
                       "parameters": {"1": {"degrees": 2.5, "translation": [1, 2]}, "3": {"degrees": 10.0,
                                                                                          "translation": [4, 8]}}},
        },
        "cases": {"n": 6, "scored": 5, "failed": [{"case_id": "case_007", "message": "image unreadable: truncated"}]},
        "bootstrap": {"resamples": 2000, "seed": 0, "level": 0.95, "method": "percentile bootstrap of the mean"},
        "score_alpha": 0.6667, "results": results, "ranking": ["motion", "noise"], "wall_seconds": 754.2,
        "comparison": None,
    }
    if comparison:
        stress["comparison"] = {"other": f"/home/{PATIENT}/stress_a", "label_a": "bundle", "label_b": "hippo_ft",
                                "n_common_cases": 4, "results": {
            "noise": {"levels": {"0": {"mean_foreground": _p1(0.84, 0.851, -0.01, 0.03)},
                                 "1": {"mean_foreground": _p1(0.8, 0.802, -0.02, 0.025)},
                                 "3": {"mean_foreground": _p1(0.73, 0.655, -0.12, -0.03)}},
                      "degradation": _p1(0.05, 0.107, 0.02, 0.09), "overall": _p1(0.79, 0.781, -0.03, 0.01)},
            "motion": {"levels": {"0": {"mean_foreground": _p1(0.84, 0.851, -0.01, 0.03)},
                                  "1": {"mean_foreground": _p1(0.56, 0.612, 0.02, 0.09)},
                                  "3": {"mean_foreground": _p1(0.21, 0.2, None, None, n=1)}},
                       "degradation": _p1(0.33, 0.301, -0.06, 0.01), "overall": _p1(0.6, 0.612, -0.01, 0.03)}}}
    return stress


def _section(text: str, anchor: str) -> str:
    start = text.index(f'<section id="{anchor}">')
    return text[start:text.index("</section>", start)]


def _cells(row_html: str) -> list[str]:
    return [re.sub(r"<[^>]+>", " ", c).split() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row_html, re.S)]


def _pngs(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in DATA_URI.findall(text)]


def _arrays(shape=(8, 9, 7)) -> tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
    """An image, its perturbed copy, a cube of truth over z 2..4, and a prediction largest at z = 4."""
    rng = np.random.default_rng(0)
    image = rng.normal(100, 20, shape).astype(np.float32)
    perturbed = (image * 3 + rng.normal(0, 40, shape)).astype(np.float32)
    truth = torch.zeros(shape, dtype=torch.long)
    truth[2:5, 2:5, 2:5] = 1
    prediction = torch.zeros(shape, dtype=torch.long)
    prediction[1:6, 1:7, 4] = 2
    prediction[3, 3, 1] = 1
    return image, perturbed, truth, prediction


AFFINE = np.diag([-0.8, -0.8, -2.0, 1.0])  # LPI-like: RAS flips x, y and z


@pytest.fixture(scope="module")
def picture() -> StressPicture:
    image, perturbed, truth, prediction = _arrays()
    return stress_picture("case_003", 3, image, perturbed, AFFINE, truth, prediction)


@pytest.fixture(scope="module")
def page(tmp_path_factory, picture) -> str:
    folder = tmp_path_factory.mktemp("stress")
    path = write_stress_report(folder, _stress(), {"noise": picture})
    assert path == folder / "stress.html"
    return path.read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------
def test_stress_picture_keeps_the_slice_with_most_labelled_voxels_in_ras(picture):
    image, perturbed, truth, prediction = _arrays()
    # z = 4 holds 30 labelled voxels (truth or prediction), z = 2 and 3 nine, z = 1 one; the z flip makes it RAS
    # slice 7 - 1 - 4 = 2.
    assert (picture.index, picture.count, picture.level, picture.case_id) == (2, 7, 3, "case_003")
    ras = (slice(None, None, -1),) * 3
    for kept, whole, dtype in [(picture.image, image, np.float32), (picture.perturbed, perturbed, np.float32),
                               (picture.truth, truth.numpy(), np.int16),
                               (picture.prediction, prediction.numpy(), np.int16)]:
        assert kept.shape == (8, 9, 1) and kept.dtype == dtype
        np.testing.assert_array_equal(kept, whole[ras][:, :, 2:3])
    assert np.count_nonzero(picture.prediction == 2) == 30
    assert not np.array_equal(picture.image, picture.perturbed)
    # Both images are drawn with the unperturbed image's window.
    assert picture.window == pytest.approx(percentile_window(image))
    assert picture.window != pytest.approx(percentile_window(perturbed))
    np.testing.assert_allclose(np.diag(picture.affine), [0.8, 0.8, 2.0, 1.0])


def test_page_is_self_contained_and_names_no_patient(page):
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"<(script|link|iframe)\b", page, re.I)
    assert PATIENT not in page and "/home/" not in page
    overview = _section(page, "overview")
    for fact in ["hippo_ft", "fine-tuned run", "hospital.csv", "test", "MR", "0 (unperturbed), 1, 3",
                 "6 in total: 5 scored, 1 failed", "12 min 34 s", "2025-05-06 14:30"]:
        assert fact in overview, fact
    # The failed case with its message.
    assert re.search(r"<td>case_007</td><td>image unreadable: truncated</td>", overview)
    assert "Weakest: <strong>Motion</strong>, degradation 0.301" in overview


def test_ranking_follows_the_ranking_with_numbers_and_intervals(page):
    ranking = _section(page, "ranking")
    assert ranking.index("Motion") < ranking.index("Rician noise")
    rows = re.findall(r"<tr>(.*?)</tr>", ranking, re.S)
    # The level columns are exactly those run, with level 0.
    assert [" ".join(c) for c in _cells(rows[1])] == ["0", "1", "3"]
    motion, noise = _cells(rows[2]), _cells(rows[3])
    assert motion[0] == ["Motion", "(motion)"]
    assert " ".join(motion[1]) == "0.301 95% CI 0.244 – 0.359 n = 5"  # degradation
    assert " ".join(motion[2]) == "0.612 95% CI 0.566 – 0.653 n = 5"  # overall
    assert [c[0] for c in motion[3:]] == ["0.851", "0.612", "0.200"]
    # Level 3 of motion: one case scored, no interval, and the page says why.
    assert " ".join(motion[5]) == "0.200 95% CI n/a (too few cases) n = 1, 4 NaN"
    assert " ".join(noise[1]) == "0.107 95% CI 0.081 – 0.133 n = 5"
    assert [c[0] for c in noise[3:]] == ["0.851", "0.802", "0.655"]


def test_curves_parameters_and_metrics(page):
    curves = _section(page, "curves")
    assert len(_pngs(curves)) == 1 and "thick line" in curves
    parameters = _section(page, "parameters")
    assert "<th>Level 1</th><th>Level 3</th></tr>" in parameters and "Level 2" not in parameters
    assert "<td>std = 0.04</td><td>std = 0.16</td>" in parameters
    assert "degrees = 10, translation = (4, 8)" in parameters and "moves the label with the image" in parameters
    assert "std: noise sd over the image&#x27;s range" in parameters
    assert "α = 0.6667 (level 1: 0.667, level 3: 0.296)" in parameters
    metrics = _section(page, "metrics")
    assert "3.25" in metrics and "95% CI 2.50 – 4.00" in metrics  # HD95 at level 0, in mm
    assert "n/a" in metrics and "5 NaN" in metrics  # HD95 undefined at the other levels


def test_pictures_show_the_most_affected_case_and_say_which_are_missing(page):
    pictures = _section(page, "pictures")
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", pictures, re.S)
    assert len(captions) == 1 and len(_pngs(pictures)) == 1
    assert captions[0].startswith("<strong>case_003</strong> — Rician noise at level 3 (std = 0.16)")
    assert "Dice (mean of classes) 0.874 at level 0 → 0.412 at level 3" in captions[0]
    assert "Axial slice 3 of 7" in captions[0]
    assert "case_005" not in pictures  # motion's most affected case has no picture:
    assert "No picture for Motion" in pictures
    from PIL import Image

    drawn = np.asarray(Image.open(io.BytesIO(_pngs(pictures)[0])).convert("RGB"))
    assert drawn.shape[1] > 2 * drawn.shape[0] and drawn.std() > 10  # four panels side by side, not blank


def test_comparison_only_with_a_comparison(page, tmp_path):
    assert 'id="comparison"' not in page and "#comparison" not in page
    text = write_stress_report(tmp_path, _stress(comparison=True), {}).read_text(encoding="utf-8")
    comparison = _section(text, "comparison")
    sentences = dict(re.findall(r"<li><strong>(.*?)</strong>: (.*?)</li>", comparison))
    assert sentences["Rician noise"] == ("Dice lower with hippo_ft than with bundle at level 3 (the 95% CI of the "
                                         "difference excludes 0); no clear difference at levels 0 and 1 (the 95% CI "
                                         "includes 0).")
    assert sentences["Motion"] == ("Dice higher with hippo_ft than with bundle at level 1 (the 95% CI of the "
                                   "difference excludes 0); no clear difference at level 0 (the 95% CI includes 0); "
                                   "too few common cases for an interval at level 3.")
    assert "<th>hippo_ft − bundle</th>" in comparison
    table = comparison[comparison.index("<table>"):]
    noise_3 = re.search(r"<td>3</td>(.*?)</tr>", table[table.index("Rician noise"):], re.S).group(1)
    assert [" ".join(c) for c in _cells(noise_3)] == ["0.730", "0.655", "-0.075 95% CI -0.120 to -0.030", "4"]
    assert "95% CI n/a (too few cases)" in comparison
    assert comparison.index("Motion") < comparison.index("Rician noise")
    assert "No picture for Motion, Rician noise" in text


def test_curves_of_another_model_and_a_perturbation_without_scores(tmp_path):
    stress, other = _stress(comparison=True), _stress()
    other["levels"] = [3]  # the other model ran level 3 only
    for level in ("1", "3"):
        for name in CLASSES[1:] + ["mean_foreground"]:
            stress["results"]["motion"]["levels"][level][name]["dice"] = _d(None, n=0, n_nan=5)
    stress["results"]["motion"]["degradation"] = _d(None, n=0)
    text = write_stress_report(tmp_path, stress, {}, other).read_text(encoding="utf-8")
    curves = _section(text, "curves")
    assert "with hippo_ft and with bundle" in curves and len(_pngs(curves)) == 1
    motion = next(r for r in re.findall(r"<tr>(.*?)</tr>", _section(text, "ranking"), re.S) if "(motion)" in r)
    assert [" ".join(c) for c in _cells(motion)[1:]] == ["n/a", "0.612 95% CI 0.566 – 0.653 n = 5",
                                                         "0.851 95% CI 0.812 – 0.889 n = 5", "n/a 5 NaN", "n/a 5 NaN"]
    assert "Weakest: <strong>Rician noise</strong>" in text  # the first of the ranking with a score


def test_a_picture_that_cannot_be_drawn_does_not_stop_the_page(tmp_path, picture):
    broken = StressPicture(**{**picture.__dict__, "perturbed": picture.perturbed[:4]})
    text = write_stress_report(tmp_path, copy.deepcopy(_stress()), {"noise": broken}).read_text(encoding="utf-8")
    pictures = _section(text, "pictures")
    assert "Picture not drawn" in pictures and "<strong>case_003</strong>" in pictures


def test_both_images_are_drawn_with_the_unperturbed_window(tmp_path, picture, monkeypatch):
    from medft.stress import report

    made = []
    case_renderer = report.case_renderer

    def recording(image, truth, prediction, affine, n_classes, window, scale):
        made.append((image, truth, window))
        return case_renderer(image, truth, prediction, affine, n_classes, window, scale)

    monkeypatch.setattr(report, "case_renderer", recording)
    write_stress_report(tmp_path, _stress(), {"noise": picture})
    (image, no_truth, window), (perturbed, truth, perturbed_window) = made
    assert image is picture.image and no_truth is None  # the image at level 0, without labels
    assert perturbed is picture.perturbed and truth is picture.truth  # the others on the perturbed image
    assert window == perturbed_window == picture.window
