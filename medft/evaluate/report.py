"""``report.html``: one self-contained page that a clinician can read, print or mail.

Everything the page shows comes from the evaluation folder (``evaluation.json``,
``summary.json``, ``per_case.csv``, ``predictions/``) and the images the cases point to. Plots
are inline PNG data URIs; the page fetches nothing (no fonts, scripts, style sheets or links).

Cases are named by their case ID only: nothing from image headers (DICOM patient names, IDs,
dates) and no file paths (a folder or file name may be a patient's name or ID; ``hide_paths``)
appear on the page. ``evaluation.json`` keeps the paths for the researcher.
"""
from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from medft.errors import MedftError
from medft.evaluate.hidden_paths import hide_paths
from medft.evaluate.summary import MEAN_FOREGROUND, UNKNOWN_SITE, read_per_case
from medft.formats.evaluation import EVALUATE_AGAIN, CaseRecord, CaseStatus, Evaluation, read_evaluation_file

METRICS = ["dice", "sensitivity", "specificity", "hd95", "nsd"]
METRIC_NAMES = {"dice": "Dice", "sensitivity": "Sensitivity", "specificity": "Specificity", "hd95": "HD95 (mm)",
                "nsd": "NSD"}
MEAN_LABEL = "mean of classes"
MAX_WORST_CASES = 6
_DECIMALS = {"dice": 3, "sensitivity": 3, "specificity": 4, "hd95": 2, "nsd": 3}


# --------------------------------------------------------------------------------------------
# Reading an evaluation folder (compare.py reads through here too)
# --------------------------------------------------------------------------------------------
@dataclass
class EvaluationFolder:
    """What an evaluation folder holds, read once. ``summary`` is None when the file is absent."""

    path: Path
    evaluation: Evaluation
    summary: dict | None
    rows: list[dict] = field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        """All class names, background first."""
        return list(self.evaluation.class_names)

    @property
    def foreground(self) -> list[tuple[int, str]]:
        return self.evaluation.foreground

    @property
    def cases(self) -> list[CaseRecord]:
        return self.evaluation.cases

    def hide_paths(self, text: str) -> str:
        """``text`` without the paths that evaluation.json records, nor any other absolute path (``hide_paths``)."""
        known = [self.evaluation.manifest, self.evaluation.model.path]
        for case in self.cases:
            known += [*case.image, case.label]
        return hide_paths(text, known)

    @property
    def label_map(self) -> dict[int, int]:
        return self.evaluation.label_map

    @property
    def model_name(self) -> str:
        return self.evaluation.model.display_name


def read_evaluation(eval_dir: str | Path) -> EvaluationFolder:
    """Read an evaluation folder; a MedftError when ``evaluation.json`` is missing or unreadable."""
    eval_dir = Path(eval_dir)
    evaluation = read_evaluation_file(eval_dir)
    summary_path = eval_dir / "summary.json"
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedftError(f"{summary_path}: not valid JSON ({exc}). Fix: {EVALUATE_AGAIN}") from None
    per_case = eval_dir / "per_case.csv"
    rows = read_per_case(per_case) if per_case.is_file() else []
    return EvaluationFolder(eval_dir, evaluation, summary, rows)


def format_metric(metric: str, value: float | None) -> str:
    """A metric value as the report prints it (Dice 0.842, specificity 0.9991, HD95 3.25)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "∞"
    return f"{value:.{_DECIMALS.get(metric, 3)}f}"


def case_mean_dice(rows: list[dict]) -> dict[str, float]:
    """Foreground-mean Dice per case (classes whose Dice is NaN left out; NaN when all are)."""
    values: dict[str, list[float]] = {}
    for row in rows:
        if int(row.get("class_index", 0)) == 0:
            continue
        values.setdefault(row["case_id"], []).append(row["dice"])
    return {case: _nanmean(v) for case, v in values.items()}


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------
def write_report(eval_dir: str | Path) -> Path:
    """Write ``eval_dir/report.html`` from the evaluation folder and return its path."""
    folder = read_evaluation(eval_dir)
    sections = [
        _overview(folder),
        _summary_section(folder),
        _distribution_section(folder),
        _confusion_section(folder),
        _roc_section(folder),
        _site_section(folder),
        _worst_section(folder),
        _other_cases_section(folder),
        _per_case_section(folder),
        _notes_section(folder),
    ]
    out = folder.path / "report.html"
    title = f"Evaluation of {folder.model_name}"
    out.write_text(page(title, "\n".join(s for s in sections if s)), encoding="utf-8")
    return out


def page(title: str, body: str) -> str:
    """A complete HTML page with the shared style sheet; nothing is loaded from elsewhere."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<main>
<h1>{_e(title)}</h1>
{body}
<footer>Written by medft. Cases are named by case ID only; no patient names, header data or file paths are shown
(evaluation.json lists the files).</footer>
</main>
</body>
</html>
"""


STYLE = """
:root { --ink: #1d2327; --muted: #5b6770; --line: #d5dbe0; --soft: #f4f6f8; --warn: #fff4d6; --bad: #fde8e4; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: white;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1060px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.25em; margin: 34px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 1.05em; margin: 18px 0 6px; }
p { margin: 6px 0 10px; }
.muted, figcaption, .note { color: var(--muted); }
.lead { font-size: 1.1em; background: var(--soft); border-left: 4px solid #0072B2; padding: 10px 14px; }
.note { font-style: italic; }
nav { margin: 10px 0 6px; font-size: 0.9em; }
nav a { color: #0072B2; margin-right: 12px; text-decoration: none; }
table { border-collapse: collapse; margin: 8px 0 14px; width: 100%; font-size: 0.92em; }
th, td { border: 1px solid var(--line); padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.facts { width: auto; }
table.facts th { width: 210px; }
.cell-main { font-weight: 600; font-variant-numeric: tabular-nums; white-space: nowrap; }
.cell-sub { display: block; font-size: 0.82em; color: var(--muted); white-space: nowrap; }
tr.mean td, tr.mean th { background: #eef4fa; }
.box { padding: 8px 12px; margin: 10px 0; border-radius: 4px; }
.box.warn { background: var(--warn); }
.box.bad { background: var(--bad); }
.box ul { margin: 4px 0; padding-left: 20px; }
figure { margin: 12px 0 20px; }
figure img { max-width: 100%; height: auto; display: block; border: 1px solid var(--line); }
figcaption { font-size: 0.9em; margin-top: 4px; }
figcaption strong { color: var(--ink); }
footer { margin-top: 40px; font-size: 0.82em; color: var(--muted); border-top: 1px solid var(--line); padding-top: 8px; }
@media print {
  body { font-size: 11pt; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  table { font-size: 9pt; }
  td.num, .cell-main, .cell-sub { white-space: normal; }
  main { max-width: none; padding: 0; }
  nav { display: none; }
  h2 { break-after: avoid; }
  figure, table.facts, .box, tr { break-inside: avoid; }
}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _figure(uri: str, caption: str, alt: str) -> str:
    return f'<figure><img src="{uri}" alt="{_e(alt)}"><figcaption>{caption}</figcaption></figure>'


def _absent(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


# ---- overview ---------------------------------------------------------------------------------
def _status_counts(folder: EvaluationFolder) -> dict[CaseStatus, int]:
    return {status: sum(case.status is status for case in folder.cases) for status in CaseStatus}


def _overview(folder: EvaluationFolder) -> str:
    evaluation = folder.evaluation
    model = evaluation.model
    counts = _status_counts(folder)
    kind = {"run": "fine-tuned run (medft)", "bundle": "MONAI bundle"}[model.kind]
    facts = [
        ("Model", model.name + (f", version {model.version}" if model.version else "")),
        ("Model kind", kind),
        ("Data manifest", Path(evaluation.manifest).name),
        ("Split", evaluation.split or "all cases of the manifest"),
        ("Classes", ", ".join(f"{i} {n}" for i, n in enumerate(folder.class_names))),
        ("Test-time augmentation", describe_tta(evaluation.tta, evaluation.tta_flip_axes)),
        ("Post-processing", "largest connected component per class" if evaluation.largest_component else "none"),
        ("Evaluated on", _date(evaluation.created)),
        ("medft version", evaluation.medft_version),
        ("Cases", f"{len(folder.cases)} in total: {counts[CaseStatus.OK]} evaluated against ground truth, "
                  f"{counts[CaseStatus.PREDICTION_ONLY]} prediction-only (no ground truth), {counts[CaseStatus.FAILED]} failed"),
    ]
    rows = "\n".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    parts = [_headline(folder), _nav(folder), f'<table class="facts">{rows}</table>']
    warnings = evaluation.warnings
    if warnings:
        items = "".join(f"<li>{_e(folder.hide_paths(w))}</li>" for w in warnings)
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
            f' with ground truth{_undefined(stats.get("n_nan"))}; per class: {_e(", ".join(per_class))}.</p>')


def _undefined(n_nan: int | None) -> str:
    """The cases left out of a mean because their Dice is undefined (no structure in truth or prediction)."""
    if not n_nan:
        return ""
    return f" (and {n_nan} more whose Dice is undefined: no structure in either the ground truth or the prediction)"


def _nav(folder: EvaluationFolder) -> str:
    links = [("summary", "Summary"), ("distributions", "Distributions"), ("confusion", "Confusion matrix"),
             ("roc", "ROC"), ("sites", "Sites"), ("worst", "Worst cases"), ("other", "Unscored cases"),
             ("cases", "All cases"), ("notes", "How to read")]
    return "<nav>" + "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in links) + "</nav>"


AXIS_NAMES = ("left-right", "front-back", "up-down")  # RAS


def describe_tta(tta: bool, axes: list[int]) -> str:
    """Whether and how an evaluation averaged mirrored predictions (test-time augmentation)."""
    if not tta:
        return "no"
    if not axes:
        return "yes, but the model was trained without flips: nothing mirrored"
    return f"yes: {2 ** len(axes)} mirrorings averaged ({', '.join(AXIS_NAMES[a] for a in axes)})"


def _date(text: str | None) -> str:
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
        return '<td class="num"><span class="cell-main">n/a</span>' + (
            f'<span class="cell-sub">{n_nan} NaN</span>' if n_nan else "") + "</td>"
    f = lambda v: format_metric(metric, v)  # noqa: E731
    nan = f", {stats['n_nan']} NaN" if stats.get("n_nan") else ""
    spread = f" ± {f(stats['sd'])}" if stats.get("sd") is not None else ""
    return (f'<td class="num"><span class="cell-main">{f(stats["mean"])}{spread}</span>'
            f'<span class="cell-sub">median {f(stats.get("median"))}</span>'
            f'<span class="cell-sub">{_ci_text(metric, stats.get("ci95"))}</span>'
            f'<span class="cell-sub">n = {stats.get("n", "n/a")}{nan}</span></td>')


def _stats_table(block: dict, folder: EvaluationFolder, metrics: list[str]) -> str:
    head = "".join(f"<th>{_e(METRIC_NAMES[m])}</th>" for m in metrics)
    lines = []
    for _, name in folder.foreground:
        cells = "".join(_stat_cell(m, (block.get(name) or {}).get(m)) for m in metrics)
        lines.append(f"<tr><th>{_e(name)}</th>{cells}</tr>")
    cells = "".join(_stat_cell(m, (block.get(MEAN_FOREGROUND) or {}).get(m)) for m in metrics)
    lines.append(f'<tr class="mean"><th>{_e(MEAN_LABEL)}</th>{cells}</tr>')
    return f"<table><tr><th>Class</th>{head}</tr>{''.join(lines)}</table>"


def _summary_section(folder: EvaluationFolder) -> str:
    parts = ['<section id="summary"><h2>Summary</h2>']
    overall = (folder.summary or {}).get("overall")
    if not overall or not (folder.summary.get("n_cases") or folder.rows):
        reason = "summary.json is missing" if folder.summary is None else "no case had ground truth"
        parts.append(_absent(f"No summary table: {reason}."))
        return "".join(parts) + "</section>"
    boot = folder.summary.get("bootstrap") or {}
    level = boot.get("level", 0.95)
    parts.append(
        f"<p>Each cell: mean ± standard deviation over cases, the median, the {_pct(level)} confidence interval of the "
        f"mean (bootstrap over cases: {_e(boot.get('resamples', 'n/a'))} resamples, {_e(boot.get('method', 'n/a'))}, "
        f"seed {_e(boot.get('seed', 'n/a'))}), and n, the number of cases with a defined value. NaN values (undefined, "
        f"e.g. a structure absent from both ground truth and prediction) are left out and counted. "
        f"Cases evaluated: {_e(folder.summary.get('n_cases', 'n/a'))}.</p>")
    parts.append(_stats_table(overall, folder, _metrics(folder)))
    return "".join(parts) + "</section>"


def _pct(level: float) -> str:
    try:
        return f"{100 * float(level):g}%"
    except (TypeError, ValueError):
        return "95%"


# ---- distributions ----------------------------------------------------------------------------
def _sites(folder: EvaluationFolder) -> list[str]:
    """Sites of the scored cases; cases without one are "unknown" (as in summary.json) when others have one."""
    if not any(r.get("site") for r in folder.rows):
        return []
    return sorted({_site(r) for r in folder.rows})


def _site(row: dict) -> str:
    return row.get("site") or UNKNOWN_SITE


def _distribution_section(folder: EvaluationFolder) -> str:
    from medft.evaluate import plots

    parts = ['<section id="distributions"><h2>Distributions per class</h2>']
    if not folder.rows:
        parts.append(_absent("No per-case results (no case with ground truth): no distributions to show."))
        return "".join(parts) + "</section>"
    metrics = _metrics(folder)
    values = {m: {name: [] for _, name in folder.foreground} for m in metrics}
    for row in folder.rows:
        if int(row.get("class_index", 0)) == 0 or row["class_name"] not in values[metrics[0]]:
            continue
        for m in metrics:
            values[m][row["class_name"]].append((row[m], _site(row)))
    uri = plots.distributions(values, folder.foreground, metrics, _sites(folder))
    parts.append(_figure(uri, "Each point is one case; the box spans the middle half of the cases with the median as a "
                              "line, whiskers reach the furthest case within 1.5 box lengths. n under each class: cases "
                              "with a defined value.", "Box plots of the metrics per class"))
    return "".join(parts) + "</section>"


# ---- confusion matrix -------------------------------------------------------------------------
def _confusion_section(folder: EvaluationFolder) -> str:
    from medft.evaluate import plots

    parts = ['<section id="confusion"><h2>Confusion matrix of voxel classes</h2>']
    matrix = folder.evaluation.confusion_matrix
    names = folder.class_names
    if not matrix or np.asarray(matrix).sum() == 0 or np.asarray(matrix).shape != (len(names), len(names)):
        parts.append(_absent("No confusion matrix: evaluation.json holds none (no case with ground truth)."))
        return "".join(parts) + "</section>"
    uri = plots.confusion(np.asarray(matrix, dtype=float), names)
    parts.append(_figure(uri, "Voxels of all cases with ground truth. Each row is a true class: the diagonal cell is the "
                              "fraction of its voxels predicted right (the voxel sensitivity), the other cells where the "
                              "rest went. Counts under the percentages.", "Confusion matrix heat map"))
    return "".join(parts) + "</section>"


# ---- ROC --------------------------------------------------------------------------------------
def _roc_section(folder: EvaluationFolder) -> str:
    from medft.evaluate import plots

    parts = ['<section id="roc"><h2>ROC curves</h2>']
    curves = {k: v for k, v in folder.evaluation.roc.items() if v and v.get("fpr") and v.get("tpr")}
    if not curves:
        parts.append(_absent("No ROC curves: evaluation.json holds none (the voxel probabilities were not kept, "
                             "or no case had ground truth)."))
        return "".join(parts) + "</section>"
    index = {name: i for i, name in enumerate(folder.class_names)}
    uri = plots.roc(curves, index)
    parts.append(_figure(uri, "One class against all others, from the voxel probabilities of all cases with ground "
                              "truth; AUC in the legend. Background voxels far outnumber the structures, so the right "
                              "panel shows the low false-positive range on a log scale.", "ROC curves per class"))
    return "".join(parts) + "</section>"


# ---- sites ------------------------------------------------------------------------------------
def _site_section(folder: EvaluationFolder) -> str:
    from medft.evaluate import plots

    parts = ['<section id="sites"><h2>Sites</h2>']
    per_site = (folder.summary or {}).get("per_site") or {}
    if len(per_site) < 2:
        sites = _sites(folder) or sorted(per_site)
        reason = ("No case with ground truth" if not folder.rows else
                  f"All cases come from one site ({sites[0]})" if len(sites) == 1 else
                  "The manifest gives no site for the cases" if not sites else
                  "summary.json has no per-site results")
        parts.append(_absent(f"{reason}: no per-site comparison."))
        return "".join(parts) + "</section>"
    uri = plots.site_dice(per_site, folder.foreground, MEAN_LABEL)
    parts.append(_figure(uri, "Mean Dice per class at each site with its 95% bootstrap confidence interval. Wide "
                              "intervals mean few cases at that site; a hollow marker, one case: no interval.", "Dice per site"))
    head = "".join(f"<th>{_e(n)}</th>" for _, n in folder.foreground) + f"<th>{_e(MEAN_LABEL)}</th>"
    lines = []
    for site, block in per_site.items():
        cells = "".join(_dice_cell((block.get(n) or {}).get("dice")) for _, n in folder.foreground)
        cells += _dice_cell((block.get(MEAN_FOREGROUND) or {}).get("dice"))
        lines.append(f"<tr><th>{_e(site)}</th>{cells}</tr>")
    parts.append(f"<h3>Mean Dice per site</h3><table><tr><th>Site</th>{head}</tr>{''.join(lines)}</table>")
    return "".join(parts) + "</section>"


def _dice_cell(stats: dict | None) -> str:
    stats = stats or {}
    if stats.get("mean") is None:
        return '<td class="num">n/a</td>'
    return (f'<td class="num"><span class="cell-main">{format_metric("dice", stats["mean"])}</span>'
            f'<span class="cell-sub">{_ci_text("dice", stats.get("ci95"))}</span>'
            f'<span class="cell-sub">n = {stats.get("n", "n/a")}</span></td>')


def _ci_text(metric: str, ci: list | None) -> str:
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


def _worst_section(folder: EvaluationFolder) -> str:
    parts = ['<section id="worst"><h2>Worst cases</h2>']
    worst = worst_cases(folder)
    if not worst:
        parts.append(_absent("No case with ground truth and a defined Dice: no worst cases to show."))
        return "".join(parts) + "</section>"
    parts.append(f"<p>The {len(worst)} case{'s' if len(worst) > 1 else ''} with the lowest Dice averaged over the "
                 "foreground classes, worst first. Each picture shows the axial slice with the most voxels labelled "
                 "in the ground truth or the prediction, in radiological convention (patient's right on the left, "
                 "anterior at the top); the last panel marks where the prediction disagrees with the ground truth.</p>")
    by_id = {c.case_id: c for c in folder.cases}
    dice_by_case: dict[str, dict[str, float]] = {}
    for row in folder.rows:
        if int(row.get("class_index", 0)) > 0:
            dice_by_case.setdefault(row["case_id"], {})[row["class_name"]] = row["dice"]
    for rank, (case_id, mean) in enumerate(worst, start=1):
        per_class = ", ".join(f"{n} {format_metric('dice', d)}" for n, d in dice_by_case.get(case_id, {}).items())
        case = by_id.get(case_id)
        site = f", site {_e(case.site)}" if case and case.site else ""
        caption = (f"<strong>{rank}. {_e(case_id)}</strong> — Dice {format_metric('dice', mean)} "
                   f"(mean of foreground classes; {_e(per_class)}){site}")
        try:
            if case is None:
                raise MedftError("evaluation.json does not list this case")
            uri, where = _case_picture(folder, case, f"{case_id}: Dice {format_metric('dice', mean)}")
        except Exception as exc:  # a missing or unreadable file must not stop the report
            parts.append(f'<figure><div class="box bad">Picture not drawn: {_e(folder.hide_paths(_reason(exc)))}</div>'
                         f"<figcaption>{caption}</figcaption></figure>")
            continue
        parts.append(_figure(uri, f"{caption}. {where}.", f"Case {case_id}: image, ground truth, prediction"))
    return "".join(parts) + "</section>"


def _reason(exc: Exception) -> str:
    return (exc.public if isinstance(exc, MedftError) else str(exc)) or type(exc).__name__


def _resolve(folder: EvaluationFolder, text: str) -> Path:
    """A path from evaluation.json: absolute, or relative to the evaluation folder, the manifest's folder or here."""
    path = Path(text)
    if path.is_absolute():
        return path
    for base in (folder.path, Path(folder.evaluation.manifest).parent, Path.cwd()):
        if (base / path).exists():
            return base / path
    return folder.path / path


def _case_picture(folder: EvaluationFolder, case: CaseRecord, title: str) -> tuple[str, str]:
    """The case's picture and where its slice lies; raises when a file is missing or grids differ.

    Slice choice, orientation, windowing and overlay colours come from ``medft.slices``, which
    the review app draws with too: a case looks the same in the report and in the app.
    """
    from medft import slices
    from medft.data.loading import geometry_mismatch, load_image, load_label
    from medft.data.transforms import map_label_values

    if case.status is not CaseStatus.OK or not case.label or not case.prediction or not case.image:
        raise MedftError("evaluation.json gives no image, ground truth and prediction for this case")
    image = load_image([_resolve(folder, p) for p in case.image], case.series_uid)
    truth = load_label(_resolve(folder, case.label))
    prediction = load_label(_resolve(folder, case.prediction))
    for name, other in (("ground truth", truth), ("prediction", prediction)):
        mismatch = geometry_mismatch(image, other)
        if mismatch:
            raise MedftError(f"the {name} does not lie on the image's voxel grid: {mismatch}")
    volume = np.asarray(image[0].detach().cpu(), dtype=np.float32)
    truth_map = map_label_values(np.rint(np.asarray(truth[0].detach().cpu())).astype(np.int16), folder.label_map)
    prediction_map = np.rint(np.asarray(prediction[0].detach().cpu())).astype(np.int16)
    z = slices.best_slice(truth_map, prediction_map, "axial", by="label")
    n_classes = max(len(folder.class_names), int(max(truth_map.max(), prediction_map.max())) + 1)
    image_slice = slices.extract_slice(volume, "axial", z)
    truth_slice = slices.extract_slice(truth_map, "axial", z)
    prediction_slice = slices.extract_slice(prediction_map, "axial", z)
    spacing = slices.pixel_spacing(slices.voxel_spacing(image.affine), "axial")
    # Small images are magnified here (not by the figure) so that outlines stay one fine pixel wide.
    scale = max(1, math.ceil(_PANEL_PIXELS / max(slices.display_shape(image_slice.shape, spacing))))
    draw = {"window": slices.percentile_window(volume), "spacing": spacing, "scale": scale}
    colours = slices.class_colors(n_classes)
    panels = [
        ("Image", slices.render(image_slice, **draw)),
        ("Ground truth", slices.render(image_slice, truth_slice, class_colors=colours, opacity=0.35, mode="both",
                                       **draw)),
        ("Prediction", slices.render(image_slice, prediction_slice, class_colors=colours, opacity=0.35, mode="both",
                                     **draw)),
        ("Difference", slices.render_difference(image_slice, truth_slice, prediction_slice, opacity=0.6, **draw)),
    ]
    legend = [(slices.class_hex(c), folder.class_names[c] if c < len(folder.class_names) else f"class {c}")
              for c in range(1, n_classes)]
    legend += [(slices.DIFFERENCE_HEX[k], label) for k, label in
               ((slices.FALSE_POSITIVE, "false positive"), (slices.FALSE_NEGATIVE, "false negative"),
                (slices.WRONG_CLASS, "wrong class"))]
    uri = _slice_figure(panels, slices.orientation_letters("axial"), legend, title)
    return uri, f"Axial slice {z + 1} of {volume.shape[2]} (counted {slices.SLICE_DIRECTION['axial']})"


_PANEL_PIXELS = 300  # about the width of one panel in the figure


def _slice_figure(panels: list[tuple[str, np.ndarray]], letters: dict[str, str], legend: list[tuple[str, str]],
                  title: str) -> str:
    """Pictures drawn by medft.slices side by side, each with its orientation letters, one legend below."""
    from matplotlib import patheffects, rc_context
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from medft.evaluate import plots

    height, width = panels[0][1].shape[:2]
    panel_width = 2.5
    panel_height = min(max(0.92 * panel_width * height / width, 1.4), 4.0)
    with rc_context({"font.size": 9, "axes.titlesize": 10, "savefig.facecolor": "white"}):
        fig = Figure(figsize=(len(panels) * panel_width, panel_height + 0.9), layout="constrained")
        axes = fig.subplots(1, len(panels))
        for ax, (name, rgb) in zip(axes, panels, strict=True):
            ax.imshow(rgb, interpolation="nearest")
            ax.set_title(name)
            ax.set_xticks([])
            ax.set_yticks([])
            for edge, (x, y, ha, va) in {"left": (0.02, 0.5, "left", "center"), "right": (0.98, 0.5, "right", "center"),
                                         "top": (0.5, 0.98, "center", "top"),
                                         "bottom": (0.5, 0.02, "center", "bottom")}.items():
                ax.text(x, y, letters[edge], transform=ax.transAxes, color="white", fontsize=9, fontweight="bold",
                        ha=ha, va=va, path_effects=[patheffects.withStroke(linewidth=2.2, foreground="black")])
        handles = [Patch(facecolor=colour, edgecolor=colour, label=label) for colour, label in legend]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 7), fontsize=8)
        fig.suptitle(title, fontsize=10)
        return plots.to_data_uri(fig)


# ---- failed and prediction-only cases ---------------------------------------------------------
def _other_cases_section(folder: EvaluationFolder) -> str:
    parts = ['<section id="other"><h2>Cases without scores</h2>']
    failed = [c for c in folder.cases if c.status is CaseStatus.FAILED]
    only = [c for c in folder.cases if c.status is CaseStatus.PREDICTION_ONLY]
    if not failed and not only:
        parts.append(_absent("Every case was predicted and scored against its ground truth."))
    if failed:
        lines = "".join(f"<tr><td>{_e(c.case_id)}</td><td>{_e(c.site or '')}</td>"
                        f"<td>{_e(folder.hide_paths(c.message or 'no message'))}</td></tr>" for c in failed)
        parts.append(f'<h3>Failed ({len(failed)})</h3><div class="box bad">These cases were not predicted; fix the '
                     f"problem and evaluate again.</div><table><tr><th>Case</th><th>Site</th><th>Problem</th></tr>"
                     f"{lines}</table>")
    if only:
        lines = "".join(f"<tr><td>{_e(c.case_id)}</td><td>{_e(c.site or '')}</td>"
                        f"<td>{'written' if c.prediction else 'none'}</td>"
                        f"<td>{_e(folder.hide_paths(c.message or 'no ground truth in the manifest'))}</td></tr>" for c in only)
        parts.append(f"<h3>Prediction only ({len(only)})</h3><p>Predicted but not scored: there is no ground truth. "
                     f"Review them in the review app.</p><table><tr><th>Case</th><th>Site</th><th>Prediction</th>"
                     f"<th>Note</th></tr>{lines}</table>")
    return "".join(parts) + "</section>"


# ---- every case -------------------------------------------------------------------------------
def _per_case_section(folder: EvaluationFolder) -> str:
    parts = ['<section id="cases"><h2>All cases with ground truth</h2>']
    if not folder.rows:
        parts.append(_absent("No case with ground truth."))
        return "".join(parts) + "</section>"
    means = case_mean_dice(folder.rows)
    table: dict[str, dict] = {}
    for row in folder.rows:
        if int(row.get("class_index", 0)) > 0:
            entry = table.setdefault(row["case_id"], {"site": row.get("site") or ""})
            entry[row["class_name"]] = row
    order = sorted(table, key=lambda c: (not math.isfinite(means[c]), means[c] if math.isfinite(means[c]) else 0, c))
    names = [n for _, n in folder.foreground]
    head = ("<tr><th rowspan=2>Case</th><th rowspan=2>Site</th><th rowspan=2>Dice, mean</th>"
            + "".join(f"<th colspan=2>{_e(n)}</th>" for n in names) + "</tr><tr>"
            + "<th>Dice</th><th>HD95 mm</th>" * len(names) + "</tr>")
    lines = []
    for case_id in order:
        entry = table[case_id]
        cells = "".join(f'<td class="num">{format_metric("dice", (entry.get(n) or {}).get("dice"))}</td>'
                        f'<td class="num">{format_metric("hd95", (entry.get(n) or {}).get("hd95"))}</td>' for n in names)
        lines.append(f"<tr><td>{_e(case_id)}</td><td>{_e(entry['site'])}</td>"
                     f'<td class="num"><strong>{format_metric("dice", means[case_id])}</strong></td>{cells}</tr>')
    parts.append("<p>Worst first. Every metric of every class is in per_case.csv in the evaluation folder.</p>")
    parts.append(f"<table>{head}{''.join(lines)}</table>")
    return "".join(parts) + "</section>"


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
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in items)
    return f'<section id="notes"><h2>How to read this report</h2><table class="facts">{rows}</table></section>'
