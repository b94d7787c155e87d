"""``stress.html``: how a segmentation model holds up as its input images degrade, one self-contained page.

Everything the page shows comes from ``stress.json``'s content (with ``--compare``, the other model's too) and
the pictures the stress test kept in memory (``StressPicture``: one slice of each perturbation's most affected
case, instead of its volumes). The page is built of ``medft.evaluate.html``'s pieces, as ``report.html`` is;
cases are named by their case ID only, and nothing from image headers or file paths appears on it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medft import slices
from medft.case_pictures import (
    REPORT_PANELS,
    REPORT_PLANE,
    case_renderer,
    class_legend,
    difference_legend,
    report_scale,
    slice_figure,
)
from medft.evaluate.compare import format_interval, format_signed
from medft.evaluate.hidden_paths import hide_paths
from medft.evaluate.html import (
    MEAN_LABEL,
    METRIC_NAMES,
    describe_tta,
    escape,
    figure,
    format_metric,
    note,
    number_cell,
    page,
    section,
)
from medft.evaluate.report import ci_text, failure_reason, format_date
from medft.evaluate.summary import MEAN_FOREGROUND

if TYPE_CHECKING:
    import torch

METRICS = ("dice", "sensitivity", "specificity", "hd95")
PANEL_COLUMNS = 3
_KINDS = {"run": "fine-tuned run (medft)", "bundle": "MONAI bundle", "adapter": "adapter (medft)"}


# --------------------------------------------------------------------------------------------
# The picture of a perturbation's most affected case
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StressPicture:
    """What the picture of a perturbation's most affected case is drawn from: one axial slice of the image before
    and after the perturbation, of the ground truth and of the prediction on the perturbed image, as (x, y, 1)
    RAS arrays; where the slice lies; the unperturbed image's window, used for both images so the change shows."""

    case_id: str
    level: int  # the level pictured (the highest run)
    image: np.ndarray  # float32, unperturbed
    perturbed: np.ndarray  # float32
    truth: np.ndarray  # int16 classes (moved with the image by a spatial perturbation)
    prediction: np.ndarray  # int16 classes, predicted on the perturbed image
    affine: np.ndarray  # of the whole volume's grid (RAS)
    index: int
    count: int  # axial slices of the volume
    window: tuple[float, float]  # (width, level) of the whole unperturbed image

    @property
    def n_classes(self) -> int:
        return int(max(self.truth.max(), self.prediction.max())) + 1


def stress_picture(case_id: str, level: int, image: np.ndarray, perturbed: np.ndarray, affine: np.ndarray,
                   truth: torch.Tensor, prediction: torch.Tensor) -> StressPicture:
    """The picture of a case from its whole arrays on the grid it was loaded on (x, y, z; the images' first
    channel float32, ``affine`` its 4x4), brought to RAS as ``report_slice_in_ras`` brings them: the axial slice
    with the most voxels labelled in ``truth`` or ``prediction``."""
    import torch
    from monai.data import MetaTensor

    from medft.data.loading import to_ras
    from medft.evaluate.run import report_slice_in_ras

    shown = report_slice_in_ras(image, affine, truth, prediction)
    moved = to_ras(MetaTensor(torch.as_tensor(perturbed)[None], affine=torch.as_tensor(affine)))
    values = np.asarray(moved.as_tensor()[0], dtype=np.float32)
    part = np.take(values, [shown.index], axis=slices.PLANE_AXIS[REPORT_PLANE])
    return StressPicture(case_id, level, shown.image, np.ascontiguousarray(part), shown.truth, shown.prediction,
                         shown.affine, shown.index, shown.count, shown.window)


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------
def write_stress_report(folder: Path, stress: dict, pictures: dict[str, StressPicture],
                        other: dict | None = None) -> Path:
    """Write ``folder/stress.html`` from ``stress.json``'s content ``stress``, the pictures by perturbation name,
    and, with ``--compare``, the other model's ``stress.json`` content ``other`` (its curves drawn beside these).
    Returns the path."""
    order = _order(stress)
    sections = [
        _opening(stress, order),
        _ranking_section(stress, order),
        _curves_section(stress, order, other),
        _comparison_section(stress, order),
        _pictures_section(stress, order, pictures),
        _metrics_section(stress, order),
        _parameters_section(stress, order),
    ]
    out = Path(folder) / "stress.html"
    title = f"Stress test of {stress['model']['name']}"
    out.write_text(page(title, "\n".join(s for s in sections if s), files="the manifest named in stress.json"), encoding="utf-8")
    return out


# ---- reading stress.json -------------------------------------------------------------------
def _hidden(stress: dict, message: str | None) -> str:
    """A message without file paths (a folder or file name may be a patient's name or ID)."""
    return hide_paths(message or "no message", [stress.get("manifest"), (stress.get("model") or {}).get("path")])


def _order(stress: dict) -> list[str]:
    """The perturbations in the ranking's order, weakest first (any the ranking lacks after it)."""
    ranked = [name for name in stress["ranking"] if name in stress["results"]]
    return ranked + [name for name in stress["results"] if name not in ranked]


def _levels(stress: dict) -> list[int]:
    """Level 0 (unperturbed) and the levels run."""
    return [0, *sorted(int(level) for level in stress["levels"])]


def _stats(result: dict, level: int, key: str = MEAN_FOREGROUND, metric: str = "dice") -> dict:
    """The statistics of ``metric`` of class ``key`` at ``level`` of one perturbation's results ({} if none)."""
    return ((result["levels"].get(str(level)) or {}).get(key) or {}).get(metric) or {}


def _title(stress: dict, name: str) -> str:
    return (stress["perturbations"].get(name) or {}).get("title") or name


def _parameters(stress: dict, name: str, level: int) -> str:
    """A perturbation's parameters at ``level`` in words: "std = 0.16, ..."."""
    values = ((stress["perturbations"].get(name) or {}).get("parameters") or {}).get(str(level))
    if not values:
        return "n/a"
    return ", ".join(f"{key} = {_value(value)}" for key, value in values.items())


def _value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_value(v) for v in value) + ")"
    return str(value)


def _cell(stats: dict, metric: str = "dice") -> str:
    """A table cell of a mean with its 95% CI (or why there is none) and its n."""
    if stats.get("mean") is None:
        return number_cell("n/a", *([f"{stats['n_nan']} NaN"] if stats.get("n_nan") else []))
    nan = f", {stats['n_nan']} NaN" if stats.get("n_nan") else ""
    return number_cell(format_metric(metric, stats["mean"]), ci_text(metric, stats.get("ci95")),
                       f"n = {stats.get('n', 'n/a')}{nan}")


# ---- opening --------------------------------------------------------------------------------
def _opening(stress: dict, order: list[str]) -> str:
    model = stress["model"]
    kind = _KINDS.get(model.get("kind"), model.get("kind") or "n/a")
    if model.get("parent"):
        kind += f" on the bundle {model['parent']} {model.get('parent_version') or ''}".rstrip()
    cases = stress["cases"]
    failed = cases.get("failed") or []
    facts = [
        ("Model", model["name"] + (f", version {model['version']}" if model.get("version") else "")),
        ("Model kind", kind),
        ("Data manifest", Path(stress["manifest"]).name),
        ("Split", stress.get("split") or "all cases of the manifest"),
        ("Modality", (stress.get("modality") or "n/a").upper()),
        ("Classes", ", ".join(f"{i} {n}" for i, n in enumerate(stress["class_names"]))),
        ("Cases", f"{cases['n']} in total: {cases['scored']} scored, {len(failed)} failed"),
        ("Severity levels", ", ".join(["0 (unperturbed)", *(str(level) for level in _levels(stress)[1:])])),
        ("Seed of the perturbations", str(stress.get("seed", "n/a"))),
        ("Test-time augmentation", describe_tta(stress.get("tta", False), stress.get("tta_flip_axes") or [])),
        ("Post-processing", "largest connected component per class" if stress.get("largest_component") else "none"),
        ("Run on", format_date(stress.get("created"))),
        ("Time taken", _duration(stress.get("wall_seconds"))),
        ("medft version", stress.get("medft_version") or "n/a"),
    ]
    rows = "\n".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in facts)
    parts = [_lead(stress, order), _nav(stress), f'<table class="facts">{rows}</table>']
    if failed:
        lines = "".join(f"<tr><td>{escape(f['case_id'])}</td><td>{escape(_hidden(stress, f.get('message')))}</td></tr>"
                        for f in failed)
        parts.append(f'<div class="box bad"><strong>Failed ({len(failed)})</strong>: these cases were left out of '
                     f"every result.</div><table><tr><th>Case</th><th>Problem</th></tr>{lines}</table>")
    return '<section id="overview">' + "\n".join(parts) + "</section>"


def _lead(stress: dict, order: list[str]) -> str:
    levels = _levels(stress)
    text = (f"How the segmentations of {escape(stress['model']['name'])} hold up as the images degrade: each of "
            f"{len(order)} perturbations applied to every case at severity levels {', '.join(map(str, levels[1:]))} "
            f"(level 0 is the image as it is), and the Dice of the prediction against the ground truth at each level.")
    scored = [name for name in order if stress["results"][name]["degradation"].get("mean") is not None]
    if scored:
        weakest = scored[0]
        text += (f" Weakest: <strong>{escape(_title(stress, weakest))}</strong>, degradation "
                 f"{format_metric('dice', stress['results'][weakest]['degradation']['mean'])}.")
    return f'<p class="lead">{text}</p>'


def _nav(stress: dict) -> str:
    links = [("ranking", "Ranking"), ("curves", "Dice by level"),
             *([("comparison", "Comparison")] if stress.get("comparison") else []),
             ("pictures", "Most affected cases"), ("metrics", "All metrics"), ("parameters", "Parameters and scores")]
    return "<nav>" + "".join(f'<a href="#{a}">{escape(t)}</a>' for a, t in links) + "</nav>"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


# ---- ranking --------------------------------------------------------------------------------
def _ranking_section(stress: dict, order: list[str]) -> str:
    levels = _levels(stress)
    head = ("<tr><th rowspan=2>Perturbation</th><th rowspan=2>Degradation</th><th rowspan=2>Overall</th>"
            f"<th colspan={len(levels)}>Dice, mean of classes, at level</th></tr><tr>"
            + "".join(f"<th>{level}</th>" for level in levels) + "</tr>")
    lines = []
    for name in order:
        result = stress["results"][name]
        cells = _cell(result["degradation"]) + _cell(result["overall"])
        cells += "".join(_cell(_stats(result, level)) for level in levels)
        lines.append(f"<tr><th>{escape(_title(stress, name))} <span class=\"muted\">({escape(name)})</span></th>"
                     f"{cells}</tr>")
    how = ("<p>Weakest first: the perturbation that lowers the Dice most, by the degradation score (the Dice lost at "
           "each level, weighted towards the mild levels; see <a href=\"#parameters\">the scores</a>). Each cell: "
           "the mean over cases with its 95% bootstrap confidence interval and n, the cases with a defined value.</p>")
    return section("ranking", "Ranking of the perturbations", how, f"<table>{head}{''.join(lines)}</table>")


# ---- curves ---------------------------------------------------------------------------------
def _curves_section(stress: dict, order: list[str], other: dict | None) -> str:
    if not order:
        return section("curves", "Dice by severity level", note("No perturbation was run."))
    if other is None:
        how = ("Mean Dice of each foreground class (thin lines) and of the mean of classes (thick line) at each "
               "severity level, with their 95% confidence intervals as bands.")
    else:
        a, b = _labels(stress, other)
        how = (f"Mean Dice of the mean of classes with {escape(b)} and with {escape(a)} at each severity level, with "
               "their 95% confidence intervals as bands (each over its own scored cases; the comparison below pairs "
               "the cases scored in both). The classes' own curves are left out to keep the panels readable.")
    how += " Level 0 is the image as it is; all panels share the scale 0 to 1."
    return section("curves", "Dice by severity level",
                   figure(_curves(stress, order, other), how, "Mean Dice against severity level per perturbation"))


def _labels(stress: dict, other: dict) -> tuple[str, str]:
    """The names of A (the other model) and B (this model)."""
    comparison = stress.get("comparison") or {}
    return (comparison.get("label_a") or other["model"]["name"], comparison.get("label_b") or stress["model"]["name"])


def _curves(stress: dict, order: list[str], other: dict | None) -> str:
    """One panel per perturbation of mean Dice against severity level, as a PNG data URI."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from medft.evaluate.plots import A_COLOUR, B_COLOUR, GREY, STYLE, no_ci_handle, to_data_uri

    if other is None:  # (label, stress.json content, class, colour, line width)
        curves = [(name, stress, name, slices.class_hex(c), 1.2) for c, name in enumerate(stress["class_names"]) if c]
        curves.append((MEAN_LABEL, stress, MEAN_FOREGROUND, "black", 2.4))
    else:
        a, b = _labels(stress, other)
        curves = [(a, other, MEAN_FOREGROUND, A_COLOUR, 2.0), (b, stress, MEAN_FOREGROUND, B_COLOUR, 2.0)]
    ticks = sorted({level for _, source, *_ in curves for level in _levels(source)})
    ncols = min(len(order), PANEL_COLUMNS)
    nrows = math.ceil(len(order) / ncols)
    without_ci = False
    with rc_context(STYLE):
        fig = Figure(figsize=(3.2 * ncols, 2.4 * nrows + 0.8), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for i, (ax, name) in enumerate(zip(axes, order, strict=False)):
            drawn = False
            for _, source, key, colour, width in curves:
                if name in source["results"]:
                    points = [(level, _stats(source["results"][name], level, key)) for level in _levels(source)]
                    drawn |= any(s.get("mean") is not None for _, s in points)
                    without_ci |= _curve(ax, points, colour, width)
            _panel_axes(ax, stress, name, ticks)
            ax.set_xlabel("severity level" if i + ncols >= len(order) else "")  # under the lowest panels only
            ax.set_ylabel("mean Dice" if i % ncols == 0 else "")
            if not drawn:
                ax.text(0.5, 0.5, "no case scored", transform=ax.transAxes, ha="center", va="center", color=GREY)
        for ax in axes[len(order):]:
            ax.axis("off")
        handles = [Line2D([], [], color=colour, linewidth=width, label=label) for label, _, _, colour, width in curves]
        handles.append(Patch(facecolor=GREY, alpha=0.2, label="95% CI"))
        handles += [no_ci_handle()] if without_ci else []
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6))
        return to_data_uri(fig)


def _curve(ax, points: list[tuple[int, dict]], colour: str, width: float) -> bool:
    """One line of means with its 95% CI band; True when a point has no interval (drawn hollow)."""
    from medft.evaluate.plots import mark_without_ci

    def values(pick) -> np.ndarray:
        return np.array([np.nan if pick(s) is None else pick(s) for _, s in points], dtype=float)

    xs = [level for level, _ in points]
    means = values(lambda s: s.get("mean"))
    lows, highs = (values(lambda s, k=k: (s.get("ci95") or [None, None])[k]) for k in (0, 1))
    ax.fill_between(xs, lows, highs, color=colour, alpha=0.15, linewidth=0)
    ax.plot(xs, means, color=colour, linewidth=width, marker="o", markersize=2 + width)
    bare = [(x, m) for x, m, lo, hi in zip(xs, means, lows, highs, strict=True)
            if np.isfinite(m) and not (np.isfinite(lo) and np.isfinite(hi))]
    return mark_without_ci(ax, bare, "o", colour)


def _panel_axes(ax, stress: dict, name: str, levels: list[int]) -> None:
    """A panel's title and axes: the levels run, Dice from 0 to 1 on every panel."""
    degradation = stress["results"][name]["degradation"].get("mean")
    ax.set_title(f"{_title(stress, name)}\ndegradation {format_metric('dice', degradation)}")
    ax.set_xticks(levels)
    ax.set_xlim(-0.3, levels[-1] + 0.3)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(axis="x", visible=False)


# ---- comparison -----------------------------------------------------------------------------
def _comparison_section(stress: dict, order: list[str]) -> str:
    comparison = stress.get("comparison")
    if not comparison:
        return ""
    labels = (comparison["label_a"], comparison["label_b"])
    a, b = (escape(label) for label in labels)
    names = [name for name in order if name in comparison["results"]]
    head = (f"<tr><th>Perturbation</th><th>Level</th><th>{a}</th><th>{b}</th><th>{b} − {a}</th>"
            "<th>Cases</th></tr>")
    lines, sentences = [], []
    for name in names:
        entry = comparison["results"][name]
        rows = [(level, entry["levels"][level].get(MEAN_FOREGROUND) or {}) for level in _compared(entry)]
        rows += [("overall", entry.get("overall") or {}), ("degradation", entry.get("degradation") or {})]
        for k, (level, diff) in enumerate(rows):
            first = f'<th rowspan={len(rows)}>{escape(_title(stress, name))}</th>' if k == 0 else ""
            lines.append(f"<tr>{first}<td>{level}</td>{_difference_cells(diff)}</tr>")
        sentences.append(f"<li>{_verdict_sentence(_title(stress, name), entry, labels)}</li>")
    how = (f"<p>{b} compared with {a} on the {comparison['n_common_cases']} cases scored with both, each meeting the "
           f"same perturbed images: the mean Dice of the mean of classes with each model and the paired difference "
           f"{b} − {a} with its 95% bootstrap confidence interval (the cases resampled with both their values). An "
           "interval that does not include 0 is a difference the data support. Overall and degradation are the "
           "scores of the ranking; a lower degradation is the more robust.</p>")
    return section("comparison", "Comparison with another model", how, f"<ul>{''.join(sentences)}</ul>",
                   f"<table>{head}{''.join(lines)}</table>")


def _difference_cells(diff: dict) -> str:
    means = "".join(f'<td class="num">{format_metric("dice", diff.get(k))}</td>' for k in ("mean_a", "mean_b"))
    return (means + number_cell(format_signed(diff.get("mean_diff")), f"95% CI {format_interval(diff.get('ci95'), signed=True)}")
            + f'<td class="num">{diff.get("n_common", "n/a")}</td>')


def _compared(entry: dict) -> list[str]:
    """The levels of a perturbation's comparison, in order."""
    return sorted(entry["levels"], key=int)


def _verdict_sentence(title: str, entry: dict, labels: tuple[str, str]) -> str:
    """Where the interval of B − A of the mean of classes' Dice excludes 0, where it includes 0, where there is
    none."""
    levels = _compared(entry)
    found: dict[str, list[str]] = {"higher": [], "lower": [], "includes": [], "none": []}
    for level in levels:
        lo, hi = (entry["levels"][level].get(MEAN_FOREGROUND) or {}).get("ci95") or (None, None)
        kind = "none" if lo is None or hi is None else "higher" if lo > 0 else "lower" if hi < 0 else "includes"
        found[kind].append(level)
    a, b = (escape(label) for label in labels)
    clauses = [f"Dice {kind} with {b} than with {a} at {_level_list(found[kind])}" for kind in ("higher", "lower")
               if found[kind]]
    if clauses:
        clauses[-1] += " (the 95% CI of the difference excludes 0)"
    if found["includes"]:
        where = "every level" if len(found["includes"]) == len(levels) else _level_list(found["includes"])
        clauses.append(f"no clear difference at {where} (the 95% CI includes 0)")
    if found["none"]:
        clauses.append(f"too few common cases for an interval at {_level_list(found['none'])}")
    return f"<strong>{escape(title)}</strong>: " + "; ".join(clauses) + "."


def _level_list(levels: list[str]) -> str:
    if len(levels) == 1:
        return f"level {levels[0]}"
    return f"levels {', '.join(levels[:-1])} and {levels[-1]}"


# ---- pictures -------------------------------------------------------------------------------
def _pictures_section(stress: dict, order: list[str], pictures: dict[str, StressPicture]) -> str:
    shown = [name for name in order if name in pictures]
    parts = ["<p>For each perturbation, the case whose Dice (mean of classes) fell most from level 0 to the highest "
             "level, on the axial slice with the most voxels labelled in the ground truth or the prediction, in "
             "radiological convention (patient's right on the left, anterior at the top). Both images are shown "
             "with the unperturbed image's window, so that the change shows; the prediction and its difference "
             "from the ground truth are those on the perturbed image.</p>"]
    parts += [_picture(stress, name, pictures[name]) for name in shown]
    missing = [_title(stress, name) for name in order if name not in pictures]
    if missing:
        parts.append(note(f"No picture for {', '.join(missing)}: no case was scored at both level 0 and the highest "
                          "level, or the picture was not kept."))
    return section("pictures", "Most affected cases", *parts)


def _picture(stress: dict, name: str, picture: StressPicture) -> str:
    """The picture of a perturbation's most affected case with its caption, or why it was not drawn: a picture
    that cannot be drawn must not stop the page."""
    title = _title(stress, name)
    affected = stress["results"][name].get("most_affected") or {}
    dice = ""
    if affected.get("case_id") == picture.case_id:
        dice = (f": Dice (mean of classes) {format_metric('dice', affected.get('dice_level0'))} at level 0 → "
                f"{format_metric('dice', affected.get('dice'))} at level {affected.get('level', picture.level)}")
    caption = (f"<strong>{escape(picture.case_id)}</strong> — {escape(title)} at level {picture.level} "
               f"({escape(_parameters(stress, name, picture.level))}){dice}")
    try:
        uri, where = _picture_figure(picture, stress["class_names"],
                                     f"{picture.case_id}: {title}, level {picture.level}")
    except Exception as exc:
        return (f'<figure><div class="box bad">Picture not drawn: {escape(_hidden(stress, failure_reason(exc)))}</div>'
                f"<figcaption>{caption}</figcaption></figure>")
    return figure(uri, f"{caption}. {where}.",
                  f"Case {picture.case_id}: image, perturbed image, prediction, difference")


def _picture_figure(picture: StressPicture, class_names: list[str], title: str) -> tuple[str, str]:
    """The four panels (image, perturbed image, prediction, difference) as a PNG data URI, and where the slice
    lies."""
    plane = REPORT_PLANE
    n_classes = max(len(class_names), picture.n_classes)
    scale = report_scale(picture.image, picture.affine, plane)
    before = case_renderer(picture.image, None, None, picture.affine, n_classes, picture.window, scale)
    after = case_renderer(picture.perturbed, picture.truth, picture.prediction, picture.affine, n_classes,
                          picture.window, scale)
    style = {view: (opacity, mode) for _, view, opacity, mode in REPORT_PANELS}
    panels = [("Image (level 0)", before, "image"), (f"Perturbed (level {picture.level})", after, "image"),
              ("Prediction", after, "prediction"), ("Difference", after, "difference")]
    drawn = [(name, renderer.render(plane, 0, view=view, opacity=style[view][0], mode=style[view][1]))
             for name, renderer, view in panels]
    uri = slice_figure(drawn, slices.orientation_letters(plane),
                       class_legend(class_names, n_classes) + difference_legend(), title)
    where = f"{plane.title()} slice {picture.index + 1} of {picture.count} (counted {slices.SLICE_DIRECTION[plane]})"
    return uri, where


# ---- all metrics ----------------------------------------------------------------------------
def _metrics_section(stress: dict, order: list[str]) -> str:
    names = stress["class_names"][1:]
    levels = _levels(stress)
    head = ("<tr><th>Perturbation</th><th>Level</th>" + "".join(f"<th>Dice {escape(n)}</th>" for n in names)
            + "".join(f"<th>{escape(METRIC_NAMES[m])}, {escape(MEAN_LABEL)}</th>" for m in METRICS) + "</tr>")
    lines = []
    for name in order:
        result = stress["results"][name]
        for k, level in enumerate(levels):
            first = f"<th rowspan={len(levels)}>{escape(_title(stress, name))}</th>" if k == 0 else ""
            cells = "".join(_cell(_stats(result, level, n)) for n in names)
            cells += "".join(_cell(_stats(result, level, metric=m), m) for m in METRICS)
            lines.append(f"<tr>{first}<td>{level}</td>{cells}</tr>")
    how = ("<p>Every class's Dice and the other metrics of the mean of classes, per perturbation and level: the "
           "mean over cases, its 95% CI and n. HD95 is in mm, lower is better; it is undefined (NaN, left out of the "
           "mean and counted) where a structure is missing from the ground truth or the prediction.</p>")
    return section("metrics", "All metrics", how, f"<table>{head}{''.join(lines)}</table>")


# ---- parameters and scores ------------------------------------------------------------------
def _parameters_section(stress: dict, order: list[str]) -> str:
    levels = _levels(stress)[1:]
    head = "<tr><th>Perturbation</th>" + "".join(f"<th>Level {level}</th>" for level in levels) + "</tr>"
    lines = []
    for name in order:
        described = stress["perturbations"].get(name) or {}
        moves = "; moves the label with the image" if described.get("spatial") else ""
        cells = "".join(f"<td>{escape(_parameters(stress, name, level))}</td>" for level in levels)
        lines.append(f"<tr><td><strong>{escape(_title(stress, name))}</strong> ({escape(name)}{moves})<br>"
                     f'<span class="muted">{escape(described.get("describe") or "")}</span></td>{cells}</tr>')
    return section("parameters", "Parameters and scores", f"<table>{head}{''.join(lines)}</table>",
                   _scores_table(stress))


def _scores_table(stress: dict) -> str:
    alpha = stress["score_alpha"]
    weights = ", ".join(f"level {level}: {alpha ** level:.3f}" for level in _levels(stress)[1:])
    boot = stress.get("bootstrap") or {}
    items = [
        ("Dice", "overlap of prediction and ground truth, 2·TP / (2·TP + FP + FN): 1 is a perfect match, 0 no "
                 "overlap. Per case, the mean over its foreground classes with a defined value; background is left "
                 "out."),
        ("Overall", "per case, (Dice₀ + Σ w_s·Dice_s) / (1 + Σ w_s) over the levels s run: the Dice at every "
                    "level, weighted towards the mild levels. Then the mean over cases."),
        ("Degradation", "per case, Σ w_s·(Dice₀ − Dice_s) / Σ w_s: the Dice lost, weighted towards the mild "
                        "levels. 0: unaffected; higher: less robust; below 0: better on the perturbed images. Then "
                        "the mean over cases."),
        ("Weights", f"w_s = α^s with α = {alpha:.4g} ({weights}), as in ROOD-MRI (Boone et al. 2023): a model that "
                    "fails at a mild level scores worse than one that fails only at a severe one."),
        ("95% CI", f"bootstrap confidence interval of the mean over cases ({boot.get('resamples', 'n/a')} resamples, "
                   f"{boot.get('method', 'n/a')}, seed {boot.get('seed', 'n/a')}); none with fewer than 2 cases. "
                   "With few cases it is wide, and yet too narrow."),
    ]
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in items)
    return f'<h3>Scores</h3><table class="facts">{rows}</table>'
