"""``report.html``: one self-contained page that a clinician can read, print or mail.

Everything the page shows comes from the evaluation folder (``evaluation.json``,
``summary.json``, ``per_case.csv``, ``predictions/``; read by ``medft.evaluate.folder``) and the
images the cases point to. The page is built of ``medft.evaluate.html``'s pieces; plots are inline
PNG data URIs; the page fetches nothing (no fonts, scripts, style sheets or links).

Cases are named by their case ID only: nothing from image headers (DICOM patient names, IDs,
dates) and no file paths (a folder or file name may be a patient's name or ID; ``hide_paths``)
appear on the page. ``evaluation.json`` keeps the paths for the researcher.
"""
from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

import numpy as np

from medft.case_pictures import ReportSlice, class_values, image_values, report_figure, report_slice
from medft.errors import MedftError
from medft.evaluate.folder import EvaluationFolder, case_mean_dice, read_evaluation
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
from medft.evaluate.summary import MEAN_FOREGROUND, UNKNOWN_SITE
from medft.formats.evaluation import CaseRecord, CaseStatus

METRICS = ["dice", "sensitivity", "specificity", "hd95", "nsd"]
MAX_WORST_CASES = 6


def write_report(eval_dir: str | Path, pictures: dict[str, ReportSlice] | None = None) -> Path:
    """Write ``eval_dir/report.html`` from the evaluation folder and return its path.

    ``pictures``: the report slices of cases that the evaluation kept in memory (``report_slice``); the files of
    the other cases shown are read."""
    folder = read_evaluation(eval_dir)
    sections = [
        _overview(folder),
        _summary_section(folder),
        _distribution_section(folder),
        _confusion_section(folder),
        _roc_section(folder),
        _site_section(folder),
        _worst_section(folder, pictures or {}),
        _other_cases_section(folder),
        _per_case_section(folder),
        _notes_section(folder),
    ]
    out = folder.path / "report.html"
    title = f"Evaluation of {folder.model_name}"
    out.write_text(page(title, "\n".join(s for s in sections if s)), encoding="utf-8")
    return out


# ---- overview ---------------------------------------------------------------------------------
def _status_counts(folder: EvaluationFolder) -> dict[CaseStatus, int]:
    return {status: sum(case.status is status for case in folder.cases) for status in CaseStatus}


def _overview(folder: EvaluationFolder) -> str:
    evaluation = folder.evaluation
    model = evaluation.model
    counts = _status_counts(folder)
    kind = {"run": "fine-tuned run (medft)", "bundle": "MONAI bundle",
            "adapter": f"adapter (medft) on the bundle {model.parent} {model.parent_version or ''}".rstrip()}[model.kind]
    facts = [
        ("Model", model.name + (f", version {model.version}" if model.version else "")),
        ("Model kind", kind),
        ("Data manifest", Path(evaluation.manifest).name),
        ("Split", evaluation.split or "all cases of the manifest"),
        ("Classes", ", ".join(f"{i} {n}" for i, n in enumerate(folder.class_names))),
        ("Test-time augmentation", describe_tta(evaluation.tta, evaluation.tta_flip_axes)),
        ("Post-processing", "largest connected component per class" if evaluation.largest_component else "none"),
        ("Evaluated on", format_date(evaluation.created)),
        ("medft version", evaluation.medft_version),
        ("Cases", f"{len(folder.cases)} in total: {counts[CaseStatus.OK]} evaluated against ground truth, "
                  f"{counts[CaseStatus.PREDICTION_ONLY]} prediction-only (no ground truth), {counts[CaseStatus.FAILED]} failed"),
    ]
    rows = "\n".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in facts)
    parts = [_headline(folder), _nav(folder), f'<table class="facts">{rows}</table>']
    warnings = evaluation.warnings
    if warnings:
        items = "".join(f"<li>{escape(folder.hide_paths(w))}</li>" for w in warnings)
        parts.append(f'<div class="box warn"><strong>Warnings ({len(warnings)})</strong><ul>{items}</ul></div>')
    return '<section id="overview">' + "\n".join(parts) + "</section>"


def _headline(folder: EvaluationFolder) -> str:
    stats = (((folder.summary or {}).get("overall") or {}).get(MEAN_FOREGROUND) or {}).get("dice") or {}
    if stats.get("mean") is None:
        return '<p class="lead">No case with ground truth was evaluated: this report shows no accuracy figures.</p>'
    ci = stats.get("ci95") or [None, None]
    per_class = []
    for _, name in folder.foreground:
        class_stats = ((folder.summary["overall"].get(name) or {}).get("dice")) or {}
        per_class.append(f"{name} {format_metric('dice', class_stats.get('mean'))}")
    return (f'<p class="lead">Mean Dice over the foreground classes: <strong>{format_metric("dice", stats["mean"])}</strong> '
            f'(95% CI {format_metric("dice", ci[0])} to {format_metric("dice", ci[1])}) on {stats.get("n", "n/a")} cases'
            f' with ground truth{_undefined(stats.get("n_nan"))}; per class: {escape(", ".join(per_class))}.</p>')


def _undefined(n_nan: int | None) -> str:
    """The cases left out of a mean because their Dice is undefined (no structure in truth or prediction)."""
    if not n_nan:
        return ""
    return f" (and {n_nan} more whose Dice is undefined: no structure in either the ground truth or the prediction)"


def _nav(folder: EvaluationFolder) -> str:
    links = [("summary", "Summary"), ("distributions", "Distributions"), ("confusion", "Confusion matrix"),
             ("roc", "ROC"), ("sites", "Sites"), ("worst", "Worst cases"), ("other", "Unscored cases"),
             ("cases", "All cases"), ("notes", "How to read")]
    return "<nav>" + "".join(f'<a href="#{a}">{escape(t)}</a>' for a, t in links) + "</nav>"


def format_date(text: str | None) -> str:
    if not text:
        return "n/a"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    zone = moment.strftime(" %Z") if moment.tzinfo else ""
    return moment.strftime("%Y-%m-%d %H:%M") + zone


# ---- summary ----------------------------------------------------------------------------------
def _metrics(folder: EvaluationFolder) -> list[str]:
    listed = (folder.summary or {}).get("metrics") or METRICS
    return [m for m in listed if m in METRICS]


def _stat_cell(metric: str, stats: dict | None) -> str:
    stats = stats or {}
    if stats.get("mean") is None:
        n_nan = stats.get("n_nan")
        return number_cell("n/a", *([f"{n_nan} NaN"] if n_nan else []))
    f = lambda v: format_metric(metric, v)  # noqa: E731
    nan = f", {stats['n_nan']} NaN" if stats.get("n_nan") else ""
    spread = f" ± {f(stats['sd'])}" if stats.get("sd") is not None else ""
    return number_cell(f"{f(stats['mean'])}{spread}", f"median {f(stats.get('median'))}",
                       ci_text(metric, stats.get("ci95")), f"n = {stats.get('n', 'n/a')}{nan}")


def _stats_table(block: dict, folder: EvaluationFolder, metrics: list[str]) -> str:
    head = "".join(f"<th>{escape(METRIC_NAMES[m])}</th>" for m in metrics)
    lines = []
    for _, name in folder.foreground:
        cells = "".join(_stat_cell(m, (block.get(name) or {}).get(m)) for m in metrics)
        lines.append(f"<tr><th>{escape(name)}</th>{cells}</tr>")
    cells = "".join(_stat_cell(m, (block.get(MEAN_FOREGROUND) or {}).get(m)) for m in metrics)
    lines.append(f'<tr class="mean"><th>{escape(MEAN_LABEL)}</th>{cells}</tr>')
    return f"<table><tr><th>Class</th>{head}</tr>{''.join(lines)}</table>"


def _summary_section(folder: EvaluationFolder) -> str:
    overall = (folder.summary or {}).get("overall")
    if not overall or not (folder.summary.get("n_cases") or folder.rows):
        reason = "summary.json is missing" if folder.summary is None else "no case had ground truth"
        return section("summary", "Summary", note(f"No summary table: {reason}."))
    boot = folder.summary.get("bootstrap") or {}
    level = boot.get("level", 0.95)
    how = (f"<p>Each cell: mean ± standard deviation over cases, the median, the {_pct(level)} confidence interval of "
           f"the mean (bootstrap over cases: {escape(boot.get('resamples', 'n/a'))} resamples, "
           f"{escape(boot.get('method', 'n/a'))}, seed {escape(boot.get('seed', 'n/a'))}), and n, the number of cases "
           f"with a defined value. NaN values (undefined, e.g. a structure absent from both ground truth and "
           f"prediction) are left out and counted. Cases evaluated: {escape(folder.summary.get('n_cases', 'n/a'))}.</p>")
    return section("summary", "Summary", how, _stats_table(overall, folder, _metrics(folder)))


def _pct(level: float) -> str:
    try:
        return f"{100 * float(level):g}%"
    except (TypeError, ValueError):
        return "95%"


# ---- plots: distributions, confusion matrix, ROC ----------------------------------------------
def _plot_section(anchor: str, title: str, uri: str | None, missing: str, caption: str, alt: str) -> str:
    """A section of one plot (``uri``), or of the note ``missing`` when there is nothing to plot (None)."""
    return section(anchor, title, note(missing) if uri is None else figure(uri, caption, alt))


def _sites(folder: EvaluationFolder) -> list[str]:
    """Sites of the scored cases; cases without one are "unknown" (as in summary.json) when others have one."""
    if not any(r.get("site") for r in folder.rows):
        return []
    return sorted({_site(r) for r in folder.rows})


def _site(row: dict) -> str:
    return row.get("site") or UNKNOWN_SITE


def _distribution_section(folder: EvaluationFolder) -> str:
    from medft.evaluate import plots

    uri = None
    if folder.rows:
        metrics = _metrics(folder)
        values = {m: {name: [] for _, name in folder.foreground} for m in metrics}
        for row in folder.rows:
            if int(row.get("class_index", 0)) == 0 or row["class_name"] not in values[metrics[0]]:
                continue
            for m in metrics:
                values[m][row["class_name"]].append((row[m], _site(row)))
        uri = plots.distributions(values, folder.foreground, metrics, _sites(folder))
    return _plot_section(
        "distributions", "Distributions per class", uri,
        "No per-case results (no case with ground truth): no distributions to show.",
        "Each point is one case; the box spans the middle half of the cases with the median as a line, whiskers "
        "reach the furthest case within 1.5 box lengths. n under each class: cases with a defined value.",
        "Box plots of the metrics per class")


def _confusion_section(folder: EvaluationFolder) -> str:
    from medft.evaluate import plots

    matrix = folder.evaluation.confusion_matrix
    names = folder.class_names
    drawn = matrix and np.asarray(matrix).sum() != 0 and np.asarray(matrix).shape == (len(names), len(names))
    return _plot_section(
        "confusion", "Confusion matrix of voxel classes",
        plots.confusion(np.asarray(matrix, dtype=float), names) if drawn else None,
        "No confusion matrix: evaluation.json holds none (no case with ground truth).",
        "Voxels of all cases with ground truth. Each row is a true class: the diagonal cell is the fraction of its "
        "voxels predicted right (the voxel sensitivity), the other cells where the rest went. Counts under the "
        "percentages.", "Confusion matrix heat map")


def _roc_section(folder: EvaluationFolder) -> str:
    from medft.evaluate import plots

    curves = {k: v for k, v in folder.evaluation.roc.items() if v and v.get("fpr") and v.get("tpr")}
    index = {name: i for i, name in enumerate(folder.class_names)}
    return _plot_section(
        "roc", "ROC curves", plots.roc(curves, index) if curves else None,
        "No ROC curves: evaluation.json holds none (the voxel probabilities were not kept, or no case had ground "
        "truth).",
        "One class against all others, from the voxel probabilities of all cases with ground truth; AUC in the "
        "legend. Background voxels far outnumber the structures, so the right panel shows the low false-positive "
        "range on a log scale.", "ROC curves per class")


# ---- sites ------------------------------------------------------------------------------------
def _site_section(folder: EvaluationFolder) -> str:
    from medft.evaluate import plots

    per_site = (folder.summary or {}).get("per_site") or {}
    if len(per_site) < 2:
        sites = _sites(folder) or sorted(per_site)
        reason = ("No case with ground truth" if not folder.rows else
                  f"All cases come from one site ({sites[0]})" if len(sites) == 1 else
                  "The manifest gives no site for the cases" if not sites else
                  "summary.json has no per-site results")
        return section("sites", "Sites", note(f"{reason}: no per-site comparison."))
    uri = plots.site_dice(per_site, folder.foreground, MEAN_LABEL)
    head = "".join(f"<th>{escape(n)}</th>" for _, n in folder.foreground) + f"<th>{escape(MEAN_LABEL)}</th>"
    lines = []
    for site, block in per_site.items():
        cells = "".join(_dice_cell((block.get(n) or {}).get("dice")) for _, n in folder.foreground)
        cells += _dice_cell((block.get(MEAN_FOREGROUND) or {}).get("dice"))
        lines.append(f"<tr><th>{escape(site)}</th>{cells}</tr>")
    return section(
        "sites", "Sites",
        figure(uri, "Mean Dice per class at each site with its 95% bootstrap confidence interval. Wide intervals mean "
                    "few cases at that site; a hollow marker, one case: no interval.", "Dice per site"),
        f"<h3>Mean Dice per site</h3><table><tr><th>Site</th>{head}</tr>{''.join(lines)}</table>")


def _dice_cell(stats: dict | None) -> str:
    stats = stats or {}
    if stats.get("mean") is None:
        return '<td class="num">n/a</td>'
    return number_cell(format_metric("dice", stats["mean"]), ci_text("dice", stats.get("ci95")),
                       f"n = {stats.get('n', 'n/a')}")


def ci_text(metric: str, ci: list | None) -> str:
    """'95% CI lo – hi', or why there is none (an interval needs two cases or more)."""
    if not ci or ci[0] is None or ci[1] is None:
        return "95% CI n/a (too few cases)"
    return f"95% CI {format_metric(metric, ci[0])} – {format_metric(metric, ci[1])}"


# ---- worst cases ------------------------------------------------------------------------------
def worst_cases(folder: EvaluationFolder, limit: int = MAX_WORST_CASES) -> list[tuple[str, float]]:
    """Case IDs with the lowest foreground-mean Dice, worst first (cases whose Dice is all NaN left out)."""
    means = case_mean_dice(folder.rows)
    ranked = sorted(((c, d) for c, d in means.items() if math.isfinite(d)), key=lambda item: (item[1], item[0]))
    return ranked[:limit]


def _worst_section(folder: EvaluationFolder, pictures: dict[str, ReportSlice]) -> str:
    worst = worst_cases(folder)
    if not worst:
        return section("worst", "Worst cases", note("No case with ground truth and a defined Dice: no worst cases to show."))
    parts = [f"<p>The {len(worst)} case{'s' if len(worst) > 1 else ''} with the lowest Dice averaged over the "
             "foreground classes, worst first. Each picture shows the axial slice with the most voxels labelled "
             "in the ground truth or the prediction, in radiological convention (patient's right on the left, "
             "anterior at the top); the last panel marks where the prediction disagrees with the ground truth.</p>"]
    dice_by_case: dict[str, dict[str, float]] = {}
    for row in folder.rows:
        if int(row.get("class_index", 0)) > 0:
            dice_by_case.setdefault(row["case_id"], {})[row["class_name"]] = row["dice"]
    by_id = {c.case_id: c for c in folder.cases}
    for rank, (case_id, mean) in enumerate(worst, start=1):
        per_class = ", ".join(f"{n} {format_metric('dice', d)}" for n, d in dice_by_case.get(case_id, {}).items())
        case = by_id.get(case_id)
        site = f", site {escape(case.site)}" if case and case.site else ""
        caption = (f"<strong>{rank}. {escape(case_id)}</strong> — Dice {format_metric('dice', mean)} "
                   f"(mean of foreground classes; {escape(per_class)}){site}")
        parts.append(_worst_case_figure(folder, case_id, case, mean, caption, pictures.get(case_id)))
    return section("worst", "Worst cases", *parts)


def _worst_case_figure(folder: EvaluationFolder, case_id: str, case: CaseRecord | None, mean: float,
                       caption: str, picture: ReportSlice | None) -> str:
    """The case's picture under ``caption`` (from ``picture``, else from its files), or why it was not drawn: a
    missing or unreadable file must not stop the report."""
    try:
        if case is None:
            raise MedftError("evaluation.json does not list this case")
        title = f"{case_id}: Dice {format_metric('dice', mean)}"
        uri, where = report_figure(picture or _report_slice(folder, case), folder.class_names, title)
    except Exception as exc:
        return (f'<figure><div class="box bad">Picture not drawn: {escape(folder.hide_paths(failure_reason(exc)))}</div>'
                f"<figcaption>{caption}</figcaption></figure>")
    return figure(uri, f"{caption}. {where}.", f"Case {case_id}: image, ground truth, prediction")


def failure_reason(exc: Exception) -> str:
    return (exc.public if isinstance(exc, MedftError) else str(exc)) or type(exc).__name__


def _report_slice(folder: EvaluationFolder, case: CaseRecord) -> ReportSlice:
    """The case's report slice from its files; raises when a file is missing or grids differ. Drawn by
    ``medft.case_pictures``, as the review app draws: a case looks the same in the report and in the app."""
    from medft.data.loading import dicom_source, geometry_mismatch, load_image, load_label

    if case.status is not CaseStatus.OK or not case.label or not case.prediction or not case.image:
        raise MedftError("evaluation.json gives no image, ground truth and prediction for this case")
    images = [folder.resolve(p) for p in case.image]
    image = load_image(images, case.series_uid)
    truth = load_label(folder.resolve(case.label), series=dicom_source(images, case.series_uid),
                       segments=folder.evaluation.segment_names)
    prediction = load_label(folder.resolve(case.prediction))
    for name, other in (("ground truth", truth), ("prediction", prediction)):
        mismatch = geometry_mismatch(image, other)
        if mismatch:
            raise MedftError(f"the {name} does not lie on the image's voxel grid: {mismatch}")
    return report_slice(image_values(image), image.affine, class_values(truth, folder.label_map).astype(np.int16),
                        class_values(prediction, {}).astype(np.int16))


# ---- failed and prediction-only cases ---------------------------------------------------------
def _other_cases_section(folder: EvaluationFolder) -> str:
    failed = [c for c in folder.cases if c.status is CaseStatus.FAILED]
    only = [c for c in folder.cases if c.status is CaseStatus.PREDICTION_ONLY]
    parts = []
    if not failed and not only:
        parts.append(note("Every case was predicted and scored against its ground truth."))
    if failed:
        lines = "".join(f"<tr><td>{escape(c.case_id)}</td><td>{escape(c.site or '')}</td>"
                        f"<td>{escape(folder.hide_paths(c.message or 'no message'))}</td></tr>" for c in failed)
        parts.append(f'<h3>Failed ({len(failed)})</h3><div class="box bad">These cases were not predicted; fix the '
                     f"problem and evaluate again.</div><table><tr><th>Case</th><th>Site</th><th>Problem</th></tr>"
                     f"{lines}</table>")
    if only:
        lines = "".join(f"<tr><td>{escape(c.case_id)}</td><td>{escape(c.site or '')}</td>"
                        f"<td>{'written' if c.prediction else 'none'}</td>"
                        f"<td>{escape(folder.hide_paths(c.message or 'no ground truth in the manifest'))}</td></tr>" for c in only)
        parts.append(f"<h3>Prediction only ({len(only)})</h3><p>Predicted but not scored: there is no ground truth. "
                     f"Review them in the review app.</p><table><tr><th>Case</th><th>Site</th><th>Prediction</th>"
                     f"<th>Note</th></tr>{lines}</table>")
    return section("other", "Cases without scores", *parts)


# ---- every case -------------------------------------------------------------------------------
def _per_case_section(folder: EvaluationFolder) -> str:
    if not folder.rows:
        return section("cases", "All cases with ground truth", note("No case with ground truth."))
    means = case_mean_dice(folder.rows)
    table: dict[str, dict] = {}
    for row in folder.rows:
        if int(row.get("class_index", 0)) > 0:
            entry = table.setdefault(row["case_id"], {"site": row.get("site") or ""})
            entry[row["class_name"]] = row
    order = sorted(table, key=lambda c: (not math.isfinite(means[c]), means[c] if math.isfinite(means[c]) else 0, c))
    names = [n for _, n in folder.foreground]
    head = ("<tr><th rowspan=2>Case</th><th rowspan=2>Site</th><th rowspan=2>Dice, mean</th>"
            + "".join(f"<th colspan=2>{escape(n)}</th>" for n in names) + "</tr><tr>"
            + "<th>Dice</th><th>HD95 mm</th>" * len(names) + "</tr>")
    lines = []
    for case_id in order:
        entry = table[case_id]
        cells = "".join(f'<td class="num">{format_metric("dice", (entry.get(n) or {}).get("dice"))}</td>'
                        f'<td class="num">{format_metric("hd95", (entry.get(n) or {}).get("hd95"))}</td>' for n in names)
        lines.append(f"<tr><td>{escape(case_id)}</td><td>{escape(entry['site'])}</td>"
                     f'<td class="num"><strong>{format_metric("dice", means[case_id])}</strong></td>{cells}</tr>')
    return section("cases", "All cases with ground truth",
                   "<p>Worst first. Every metric of every class is in per_case.csv in the evaluation folder.</p>",
                   f"<table>{head}{''.join(lines)}</table>")


# ---- how to read ------------------------------------------------------------------------------
def _notes_section(folder: EvaluationFolder) -> str:
    from medft.metrics import NSD_TOLERANCE_MM

    items = [
        ("Dice", "overlap of prediction and ground truth, 2·TP / (2·TP + FP + FN): 1 is a perfect match, 0 no overlap."),
        ("Sensitivity", "fraction of the true structure that the prediction found, TP / (TP + FN)."),
        ("Specificity", "fraction of the voxels outside the structure that the prediction left out, TN / (TN + FP). "
                        "Small structures in large images make it close to 1 almost always: read Dice first."),
        ("HD95", "95th percentile of the distances between the surfaces of prediction and ground truth, in mm: "
                 "how far the outline strays, ignoring the worst 5%. Lower is better. It is undefined (NaN) when the "
                 "structure is missing from the ground truth or from the prediction: a structure the model missed "
                 "makes HD95 NaN, not large, so read HD95 with its NaN count and the Dice."),
        ("NSD", f"normalised surface Dice: fraction of both surfaces lying within {NSD_TOLERANCE_MM:g} mm of each "
                "other. 0 when only one of ground truth and prediction has the structure, NaN when neither has it."),
        ("NaN / n/a", "a value whose denominator is zero (e.g. a structure absent from both ground truth and "
                      "prediction) is undefined: it is left out of the means and counted as NaN."),
        ("95% CI", "bootstrap confidence interval of the mean (percentile method, the cases resampled with "
                   "replacement): the uncertainty of the mean, not the spread of cases. With few cases it is wide, yet "
                   "still too narrow: with fewer than about 10 cases it holds the true mean less often than 95% of "
                   "the time (about 75% with 3 cases and 85% with 5, in simulations of Dice-like values); with one "
                   "case there is none."),
        ("Background", "class 0 is left out of every mean."),
        (MEAN_LABEL, "per case, the mean over its foreground classes whose value is defined; then summarised over "
                     "cases like a class. A case is NaN here only when all its classes are."),
    ]
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in items)
    return section("notes", "How to read this report", f'<table class="facts">{rows}</table>')
