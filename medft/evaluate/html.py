"""The HTML of medft's pages (``report.html``, ``comparison.html``): one page shell and style sheet, the pieces
both pages are built of, and numbers and options worded as the pages print them.

Every text from data goes through ``escape``; arguments named ``caption``, ``title`` (of a section) and
``main``/``notes`` (of a cell) are HTML already. The page loads nothing from elsewhere: no fonts, scripts,
style sheets or links; pictures are inline data URIs.
"""
from __future__ import annotations

import html
import math

METRIC_NAMES = {"dice": "Dice", "sensitivity": "Sensitivity", "specificity": "Specificity", "hd95": "HD95 (mm)",
                "nsd": "NSD"}
MEAN_LABEL = "mean of classes"
_DECIMALS = {"dice": 3, "sensitivity": 3, "specificity": 4, "hd95": 2, "nsd": 3}
AXIS_NAMES = ("left-right", "front-back", "up-down")  # RAS


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------
def page(title: str, body: str, files: str = "evaluation.json") -> str:
    """A complete HTML page with the shared style sheet; nothing is loaded from elsewhere. ``files``: the file of the
    folder that lists the input files."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<main>
<h1>{escape(title)}</h1>
{body}
<footer>Written by medft. Cases are named by case ID only; no patient names, header data or file paths are shown
({escape(files)} lists the files).</footer>
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


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------
def escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def section(anchor: str, title: str, *parts: str) -> str:
    """A section that the page's navigation links to (``#anchor``), headed ``title``."""
    return f'<section id="{anchor}"><h2>{title}</h2>' + "".join(parts) + "</section>"


def figure(uri: str, caption: str, alt: str) -> str:
    return f'<figure><img src="{uri}" alt="{escape(alt)}"><figcaption>{caption}</figcaption></figure>'


def note(text: str) -> str:
    """Why a part of the page shows nothing (no data for it)."""
    return f'<p class="note">{escape(text)}</p>'


def number_cell(main: str, *notes: str) -> str:
    """A table cell of one number in bold with smaller lines under it (its interval, its n)."""
    return (f'<td class="num"><span class="cell-main">{main}</span>'
            + "".join(f'<span class="cell-sub">{n}</span>' for n in notes) + "</td>")


# --------------------------------------------------------------------------------------------
# Numbers and options in words
# --------------------------------------------------------------------------------------------
def format_metric(metric: str, value: float | None) -> str:
    """A metric value as the pages print it (Dice 0.842, specificity 0.9991, HD95 3.25)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "∞"
    return f"{value:.{_DECIMALS.get(metric, 3)}f}"


def describe_tta(tta: bool, axes: list[int]) -> str:
    """Whether and how an evaluation averaged mirrored predictions (test-time augmentation)."""
    if not tta:
        return "no"
    if not axes:
        return "yes, but the model was trained without flips: nothing mirrored"
    return f"yes: {2 ** len(axes)} mirrorings averaged ({', '.join(AXIS_NAMES[a] for a in axes)})"
