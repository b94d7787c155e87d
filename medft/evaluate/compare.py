"""Two evaluations side by side: ``comparison.html`` (self-contained) and ``comparison.json``.

Typical use: A is the pretrained bundle as it is, B the fine-tuned run, both evaluated on the
same held-out cases. Each side's mean Dice and 95% CI come from its own ``summary.json`` (all of
its scored cases). The difference B − A has one of two designs, named in ``comparison.json``
(``"design"``, with ``"design_reason"``) and on the page:

- ``"paired"``, when some case is scored in both: per case, on the cases scored in both, with a
  paired bootstrap interval (cases resampled with both their values,
  ``medft.evaluate.summary.paired_difference``). A case whose value is NaN in either evaluation
  (or that has no row for the class in one) is left out of that class's difference. The
  differences are under ``dice[class]["paired"]`` and ``paired_differences``.
- ``"unpaired"``, when no case is scored in both (e.g. one model evaluated on two sites'
  held-out sets): the difference of the two means, each over its own scored cases, with a
  bootstrap interval that resamples each evaluation's cases independently
  (``medft.evaluate.summary.unpaired_difference``); NaN values are left out on each side. It
  reflects the difference between the two case populations as well as between the models. The
  differences are under ``dice[class]["unpaired"]`` and ``unpaired_differences``; there is no
  per-case pair (``cases`` is empty).

Each side (``"a"``, ``"b"``) states its inference options as its evaluation.json recorded them
(``"inference"``: ``tta``, ``tta_flip_axes``, ``largest_component``); the page warns when they differ.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from medft.atomic_files import atomic_write_text
from medft.errors import MedftError
from medft.evaluate.folder import EvaluationFolder, case_mean_dice, read_evaluation
from medft.evaluate.html import MEAN_LABEL, METRIC_NAMES, describe_tta, escape, figure, format_metric, number_cell, page
from medft.evaluate.summary import MEAN_FOREGROUND, METRICS, paired_difference, summarize, unpaired_difference

N_RESAMPLES = 2000
SEED = 0
INFERENCE_OPTIONS = ("tta", "tta_flip_axes", "largest_component")  # from evaluation.json, into each side


def compare_evaluations(eval_a: Path, eval_b: Path, out: Path | None = None, labels: tuple[str, str] | None = None,
                        n_resamples: int = N_RESAMPLES, seed: int = SEED) -> Path:
    """Write the comparison of evaluation folders A and B; return the path of ``comparison.html``.

    ``out``: a ``.html`` file, or a folder to hold ``comparison.html``; by default ``eval_b``.
    ``comparison.json`` is written next to the page (same name, ``.json``). ``labels`` name A
    and B on the page (default: the model names, else the folder names).
    The difference is paired on the cases scored in both when there are any, else unpaired (the
    two case sets compared as wholes; see the module docstring).
    Raises MedftError, naming both folders, when their classes differ or one has no scored case.
    """
    a, b = read_evaluation(eval_a), read_evaluation(eval_b)
    names = _common_classes(a, b)
    common = _common_cases(a, b)
    labels = tuple(labels) if labels else _default_labels(a, b)
    if len(labels) != 2:
        raise MedftError(f"labels must name A and B (two texts), got {labels!r}")
    result = _comparison(a, b, names, common, labels, n_resamples, seed)

    out = Path(out) if out is not None else Path(eval_b)
    html_path = out if out.suffix.lower() in (".html", ".htm") else out / "comparison.html"
    html_path.parent.mkdir(parents=True, exist_ok=True)
    page = _page(result, a, b)  # before writing: a failure leaves neither file
    atomic_write_text(json.dumps(result, indent=1, allow_nan=False) + "\n", html_path.with_suffix(".json"))
    atomic_write_text(page, html_path)  # the page last: it appears with its numbers
    return html_path


def read_comparison(page: Path) -> dict:
    """The comparison.json beside the page ``compare_evaluations`` wrote."""
    return json.loads(Path(page).with_suffix(".json").read_text())


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------
def check_comparable(other_dir: str | Path, class_names: list[str]) -> None:
    """Before an evaluation that ``--compare other_dir`` will set beside: MedftError naming
    ``other_dir`` when it is not an evaluation folder, has no scored case, or has other classes
    than ``class_names`` (the evaluated model's)."""
    other_dir = Path(other_dir)
    if not other_dir.is_dir():
        raise MedftError(f"--compare {other_dir}: no such folder. Fix: give an evaluation folder that `medft evaluate` "
                         "wrote (evaluate the other model first)")
    other = read_evaluation(other_dir)
    if other.class_names != class_names:
        raise MedftError(
            f"--compare {other_dir}: its classes {_list(other.class_names)} differ from the model's {_list(class_names)}. "
            "Fix: compare with an evaluation of a model that predicts the same classes, in the same order"
        )
    if not other.rows:
        raise MedftError(f"--compare {other_dir}: it has no scored case (per_case.csv is missing or empty: no case had "
                         "ground truth). Fix: compare with an evaluation on cases with labels")


def _common_classes(a: EvaluationFolder, b: EvaluationFolder) -> list[str]:
    if a.class_names != b.class_names:
        raise MedftError(
            f"cannot compare {a.path} with {b.path}: their classes differ ({_list(a.class_names)} in A, "
            f"{_list(b.class_names)} in B). Fix: compare evaluations of models that predict the same classes, "
            "in the same order"
        )
    return a.class_names


def _common_cases(a: EvaluationFolder, b: EvaluationFolder) -> list[str]:
    for folder in (a, b):
        if not folder.rows:
            raise MedftError(
                f"cannot compare {a.path} with {b.path}: {folder.path} has no scored case (per_case.csv is missing "
                "or empty: no case had ground truth). Fix: evaluate on cases with labels"
            )
    ids_a, ids_b = {r["case_id"] for r in a.rows}, {r["case_id"] for r in b.rows}
    return sorted(ids_a & ids_b)  # empty: the comparison is unpaired


def _list(names: list[str]) -> str:
    return "[" + ", ".join(names) + "]"


def _default_labels(a: EvaluationFolder, b: EvaluationFolder) -> tuple[str, str]:
    """The model names, else the evaluation folders' names, else the model's name numbered ("train (1)",
    "train (2)"): own names only, never a parent folder's (it may be named after a patient or a project)."""
    for pair in ((a.model_name, b.model_name), (a.path.name, b.path.name)):
        if pair[0] and pair[1] and pair[0] != pair[1]:
            return pair
    name = a.model_name or a.path.name
    return (f"{name} (1)", f"{name} (2)") if name else ("A", "B")


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------
def _overall(folder: EvaluationFolder, names: list[str], n_resamples: int, seed: int) -> dict:
    overall = (folder.summary or {}).get("overall")
    if overall and all(n in overall for n in names[1:]):
        return overall
    return summarize(folder.rows, names, metrics=["dice"], n_resamples=n_resamples, seed=seed)["overall"]


def _comparison(a: EvaluationFolder, b: EvaluationFolder, names: list[str], common: list[str], labels: tuple[str, str],
                n_resamples: int, seed: int) -> dict:
    metrics = [m for m in METRICS if _has_values(a, m) and _has_values(b, m)]
    design = "paired" if common else "unpaired"
    compare = paired_difference if common else unpaired_difference
    diffs = {m: compare(a.rows, b.rows, names, m, n_resamples, seed) for m in metrics}
    overall_a, overall_b = _overall(a, names, n_resamples, seed), _overall(b, names, n_resamples, seed)
    dice = {}
    for key in [*names[1:], MEAN_FOREGROUND]:
        dice[key] = {
            "a": _brief((overall_a.get(key) or {}).get("dice")),
            "b": _brief((overall_b.get(key) or {}).get("dice")),
            design: diffs["dice"]["differences"][key],
        }
    ids_a, ids_b = {r["case_id"] for r in a.rows}, {r["case_id"] for r in b.rows}
    return {
        "a": _side(a, labels[0]),
        "b": _side(b, labels[1]),
        "class_names": names,
        "difference": "b - a",
        "design": design,
        "design_reason": _design_reason(design, len(common)),
        "common_cases": common,
        "only_in_a": sorted(ids_a - ids_b),
        "only_in_b": sorted(ids_b - ids_a),
        "bootstrap": diffs["dice"]["bootstrap"],
        "dice": dice,
        f"{design}_differences": {m: diffs[m]["differences"] for m in metrics},
        "cases": _case_pairs(a, b, names, common),
    }


def _design_reason(design: str, n_common: int) -> str:
    if design == "paired":
        return (f"The two evaluations share {n_common} scored case{'s' if n_common != 1 else ''}: each of them is "
                "compared with itself, its Dice under B minus its Dice under A, which removes the case-to-case "
                "variation and gives the more precise comparison.")
    return ("The two evaluations share no scored case (for example two sites' held-out sets), so no case can be "
            "compared with itself: the difference is that of the two means, each over its own cases, with a "
            "bootstrap interval that resamples each evaluation's cases independently. It reflects the difference "
            "between the two case populations (patients, scanners, labelling) as well as any difference between "
            "the models, and its interval is wider than a paired one on common cases would be. To compare two models "
            "alone, evaluate both on the same cases.")


def _has_values(folder: EvaluationFolder, metric: str) -> bool:
    return any(int(r["class_index"]) > 0 and math.isfinite(r[metric]) for r in folder.rows)


def _brief(stats: dict | None) -> dict:
    stats = stats or {}
    return {"mean": stats.get("mean"), "ci95": stats.get("ci95") or [None, None], "n": stats.get("n", 0)}


def _side(folder: EvaluationFolder, label: str) -> dict:
    evaluation = folder.evaluation
    return {"label": label, "path": str(folder.path), "model": evaluation.model.model_dump(),
            "manifest": evaluation.manifest, "split": evaluation.split,
            "inference": {k: getattr(evaluation, k) for k in INFERENCE_OPTIONS},
            "created": evaluation.created, "n_scored_cases": len({r["case_id"] for r in folder.rows})}


def _inference_text(options: dict) -> str:
    """An evaluation's inference options (``--tta``, ``--largest-component``)."""
    return (f"test-time augmentation: {describe_tta(options['tta'], options['tta_flip_axes'])}; "
            + ("largest connected component per class" if options["largest_component"] else "no post-processing"))


def _case_pairs(a: EvaluationFolder, b: EvaluationFolder, names: list[str], common: list[str]) -> list[dict]:
    """Per common case: its site and Dice per class and foreground mean, under A and under B (None for NaN)."""
    def table(folder: EvaluationFolder) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for row in folder.rows:
            if int(row["class_index"]) > 0:
                out.setdefault(row["case_id"], {"site": row.get("site") or ""})[row["class_name"]] = row["dice"]
        return out

    table_a, table_b = table(a), table(b)
    means_a, means_b = case_mean_dice(a.rows), case_mean_dice(b.rows)
    cases = []
    for case_id in common:
        entry = {"case_id": case_id, "site": table_a[case_id]["site"] or table_b[case_id]["site"]}
        for side, values, means in (("a", table_a, means_a), ("b", table_b, means_b)):
            entry[f"dice_{side}"] = {n: _safe(values[case_id].get(n)) for n in names[1:]}
            entry[f"dice_{side}"][MEAN_FOREGROUND] = _safe(means[case_id])
        cases.append(entry)
    return cases


def _safe(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------
def format_signed(value: float | None, metric: str = "dice") -> str:
    if value is None:
        return "n/a"
    text = format_metric(metric, value)
    return text if text.startswith("-") or text == "n/a" else "+" + text


def format_interval(ci: list | None, metric: str = "dice", signed: bool = False) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "n/a (too few cases)"
    f = (lambda v: format_signed(v, metric)) if signed else (lambda v: format_metric(metric, v))
    return f"{f(ci[0])} to {f(ci[1])}"


def _verdict(diff: dict, labels: tuple[str, str], metric: str = "dice") -> str:
    ci = diff.get("ci95") or [None, None]
    if diff.get("mean_diff") is None:
        return "no case to compare"
    if ci[0] is None:
        return "too few cases for an interval"
    higher_is_better = metric != "hd95"
    if ci[0] > 0:
        return f"higher with {labels[1]}" + ("" if higher_is_better else " (worse)")
    if ci[1] < 0:
        return f"lower with {labels[1]}" + (" (better)" if not higher_is_better else "")
    return "no clear difference (the interval includes 0)"


def _page(result: dict, a: EvaluationFolder, b: EvaluationFolder) -> str:
    labels = (result["a"]["label"], result["b"]["label"])
    names = result["class_names"][1:]
    keys = [*names, MEAN_FOREGROUND]
    shown = {**{n: n for n in names}, MEAN_FOREGROUND: MEAN_LABEL}
    parts = [*_opening(result, labels), *_dice_per_class(result, labels, keys, shown),
             *_case_by_case(result, labels, keys, shown)]
    others = [m for m in result[f"{result['design']}_differences"] if m != "dice"]
    if others:
        parts.append(_other_metrics(result, others, names, shown, labels))
    title = f"Comparison: {labels[0]} vs {labels[1]}"
    return page(title, "\n".join(parts))


def _opening(result: dict, labels: tuple[str, str]) -> list[str]:
    """The headline difference, the two evaluations, and which design compares them."""
    paired_design = result["design"] == "paired"
    fg = result["dice"][MEAN_FOREGROUND][result["design"]]
    if paired_design:
        how = f'paired over {fg["n_common"]} cases scored in both'
    else:
        how = (f'unpaired: the mean over {escape(labels[1])}\'s {fg["n_b"]} cases against that over '
               f'{escape(labels[0])}\'s {fg["n_a"]} cases, no case being scored in both')
    parts = [
        f'<p class="lead">Dice, mean over the foreground classes: <strong>{format_signed(fg["mean_diff"])}</strong> with '
        f'{escape(labels[1])} compared with {escape(labels[0])} (95% CI {format_interval(fg["ci95"], signed=True)}), {how}: '
        f'{escape(_verdict(fg, labels))}.</p>',
        _sides_table(result),
    ]
    if paired_design:
        parts.append(f'<p><strong>Paired comparison.</strong> {escape(result["design_reason"])}</p>')
    else:
        parts.append(f'<div class="box warn"><strong>Unpaired comparison.</strong> {escape(result["design_reason"])}</div>')
    if paired_design and (result["only_in_a"] or result["only_in_b"]):
        parts.append(f'<div class="box warn">Only the {len(result["common_cases"])} cases scored in both enter the '
                     f'paired differences. Scored only in {escape(labels[0])}: '
                     f'{escape(", ".join(result["only_in_a"]) or "none")}. '
                     f'Scored only in {escape(labels[1])}: {escape(", ".join(result["only_in_b"]) or "none")}.</div>')
    return parts


def _dice_per_class(result: dict, labels: tuple[str, str], keys: list[str], shown: dict) -> list[str]:
    """Each side's mean Dice per class and their difference: how it is computed, a table, a plot."""
    from medft.evaluate import plots

    design = result["design"]
    rows = "".join(_dice_row(key, result["dice"][key], design, shown, labels) for key in keys)
    uri = plots.compare_means([shown[k] for k in keys], [result["dice"][k]["a"] for k in keys],
                              [result["dice"][k]["b"] for k in keys],
                              [{"mean": result["dice"][k][design]["mean_diff"],
                                "ci95": result["dice"][k][design]["ci95"]}
                               if result["dice"][k][design]["ci95"][0] is not None else {} for k in keys], labels,
                              diff_title=f"{design.capitalize()} difference, 95% CI")
    return [
        f'<h2>Dice per class</h2><p>{escape(labels[0])} and {escape(labels[1])}: mean Dice over each one\'s scored '
        f'cases with its 95% bootstrap CI (from its summary.json). Difference: {_difference_method(result, labels)}</p>',
        f"<table><tr><th>Class</th><th>{escape(labels[0])}</th><th>{escape(labels[1])}</th>"
        f"<th>{escape(labels[1])} − {escape(labels[0])}</th><th>Reading</th></tr>{rows}</table>",
        figure(uri, f"Left: mean Dice with 95% CI of each evaluation. Right: the {design} difference with its 95% CI; "
                    "an interval that does not cross 0 is a difference the data support.",
               "Mean Dice of A and B per class, and their difference"),
    ]


def _difference_method(result: dict, labels: tuple[str, str]) -> str:
    """How the difference of the design was computed, in words."""
    boot = result["bootstrap"]
    if result["design"] == "paired":
        return (f'mean of the per-case differences {escape(labels[1])} − {escape(labels[0])} on the cases scored in '
                f'both, with a paired bootstrap 95% CI ({escape(boot.get("resamples"))} resamples of the cases, seed '
                f'{escape(boot.get("seed"))}); a case whose Dice is NaN in either is left out of that class.')
    return (f'mean Dice of {escape(labels[1])} minus mean Dice of {escape(labels[0])}, each over its own scored cases '
            f'(unpaired), with a 95% bootstrap CI of the difference of means ({escape(boot.get("resamples"))} '
            f'resamples, each evaluation\'s cases resampled independently, seed {escape(boot.get("seed"))}); a case '
            f'whose Dice is NaN is left out of that class on its side.')


def _dice_row(key: str, entry: dict, design: str, shown: dict, labels: tuple[str, str]) -> str:
    diff = entry[design]
    cls = ' class="mean"' if key == MEAN_FOREGROUND else ""
    return (f"<tr{cls}><th>{escape(shown[key])}</th>{_mean_cell(entry['a'])}{_mean_cell(entry['b'])}"
            + number_cell(format_signed(diff["mean_diff"]), f'95% CI {format_interval(diff["ci95"], signed=True)}', _count(diff))
            + f"<td>{escape(_verdict(diff, labels))}</td></tr>")


def _case_by_case(result: dict, labels: tuple[str, str], keys: list[str], shown: dict) -> list[str]:
    """Paired: each case's Dice under A and under B, as a plot and a table; unpaired: why there is none."""
    from medft.evaluate import plots

    if result["design"] != "paired":
        return ["<h2>Case by case</h2>",
                f'<p>No per-case plot: the two evaluations share no case, so no case has a Dice under both '
                f'{escape(labels[0])} and {escape(labels[1])} to compare. Each evaluation\'s own report.html shows its '
                f'cases.</p>']
    pairs = [[(c["case_id"], c["dice_a"][k], c["dice_b"][k]) for c in result["cases"]
              if c["dice_a"][k] is not None and c["dice_b"][k] is not None] for k in keys]
    uri = plots.paired_cases([shown[k] for k in keys], pairs, labels)
    return ["<h2>Case by case</h2>",
            figure(uri, f"Each line is one case: its Dice with {escape(labels[0])} on the left, with "
                        f"{escape(labels[1])} on the right.", "Paired Dice per case"),
            _case_table(result, labels)]


def _count(diff: dict) -> str:
    """The cases behind one difference: pairs (paired design) or each side's cases (unpaired)."""
    if "n_common" in diff:
        return f'n = {diff["n_common"]} pairs'
    return f'n = {diff["n_a"]} (A), {diff["n_b"]} (B)'


def _mean_cell(stats: dict) -> str:
    if stats.get("mean") is None:
        return '<td class="num">n/a</td>'
    return number_cell(format_metric("dice", stats["mean"]), f'95% CI {format_interval(stats["ci95"])}', f'n = {stats["n"]}')


def _sides_table(result: dict) -> str:
    rows = []
    for letter in ("a", "b"):
        side = result[letter]
        model = side.get("model") or {}
        what = " ".join(str(v) for v in (model.get("name"), model.get("version")) if v) or "n/a"
        kind = {"run": "fine-tuned run", "bundle": "MONAI bundle",
                "adapter": f"adapter on {model.get('parent')}"}.get(model.get("kind"), model.get("kind") or "")
        manifest = Path(side["manifest"]).name if side.get("manifest") else "n/a"  # names only: no paths on the page
        rows.append(f"<tr><th>{letter.upper()}: {escape(side['label'])}</th><td>{escape(what)}</td><td>{escape(kind)}</td>"
                    f"<td>{escape(manifest)}</td><td>{escape(side.get('split') or 'all')}</td>"
                    f"<td>{escape(_inference_text(side['inference']))}</td>"
                    f'<td class="num">{side["n_scored_cases"]}</td><td>{escape(Path(side["path"]).name)}</td></tr>')
    table = ("<table><tr><th>Evaluation</th><th>Model</th><th>Kind</th><th>Manifest</th><th>Split</th><th>Inference</th>"
             f"<th>Scored cases</th><th>Evaluation folder</th></tr>{''.join(rows)}</table>")
    a, b = result["a"]["inference"], result["b"]["inference"]
    if any(a[k] != b[k] for k in a.keys() & b.keys()):
        table += ('<div class="box warn">The two evaluations used different inference options (see the table): the '
                  "difference reflects them as well as the models.</div>")
    return table


def _case_table(result: dict, labels: tuple[str, str]) -> str:
    def diff(case: dict) -> float | None:
        va, vb = case["dice_a"][MEAN_FOREGROUND], case["dice_b"][MEAN_FOREGROUND]
        return None if va is None or vb is None else vb - va

    order = sorted(result["cases"], key=lambda c: (diff(c) is None, diff(c) or 0.0, c["case_id"]))
    lines = "".join(
        f"<tr><td>{escape(c['case_id'])}</td><td>{escape(c['site'])}</td>"
        f'<td class="num">{format_metric("dice", c["dice_a"][MEAN_FOREGROUND])}</td>'
        f'<td class="num">{format_metric("dice", c["dice_b"][MEAN_FOREGROUND])}</td>'
        f'<td class="num"><strong>{format_signed(diff(c))}</strong></td></tr>' for c in order)
    return (f"<h3>Dice per case, mean over the foreground classes (largest drop first)</h3><table><tr><th>Case</th>"
            f"<th>Site</th><th>{escape(labels[0])}</th><th>{escape(labels[1])}</th>"
            f"<th>{escape(labels[1])} − {escape(labels[0])}</th></tr>{lines}</table>")


def _other_metrics(result: dict, metrics: list[str], names: list[str], shown: dict, labels: tuple[str, str]) -> str:
    design = result["design"]
    head = "".join(f"<th>{escape(METRIC_NAMES.get(m, m))}</th>" for m in metrics)
    rows = []
    for key in [*names, MEAN_FOREGROUND]:
        cells = []
        for m in metrics:
            d = result[f"{design}_differences"][m][key]
            n = f'n = {d["n_common"]}' if design == "paired" else _count(d)
            cells.append(number_cell(format_signed(d["mean_diff"], m), f'95% CI {format_interval(d["ci95"], m, signed=True)}', n))
        cls = ' class="mean"' if key == MEAN_FOREGROUND else ""
        rows.append(f"<tr{cls}><th>{escape(shown[key])}</th>{''.join(cells)}</tr>")
    return (f"<h2>Other metrics</h2><p>{design.capitalize()} differences {escape(labels[1])} − {escape(labels[0])}, as "
            f"for Dice. For HD95 (mm) a negative difference is an improvement.</p><table><tr><th>Class</th>{head}</tr>"
            f"{''.join(rows)}</table>")
