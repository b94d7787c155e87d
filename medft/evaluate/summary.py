"""Summaries of per-case metrics: means with bootstrap confidence intervals, per site, paired and unpaired comparisons.

Input rows follow the evaluation folder's ``per_case.csv`` contract, one per case and class:
``case_id, site, class_index, class_name, dice, sensitivity, specificity, hd95, nsd, tp, fp, fn, tn``.

Conventions:

- Background (``class_index`` 0) rows are left out of every summary. ``class_names`` is the full
  list of the model's classes indexed by ``class_index`` (``class_names[0]`` is the background);
  rows are matched to classes by ``class_index``, and named by ``class_names``.
- NaN values (a metric whose denominator is 0, or an undefined distance) are left out of means,
  standard deviations, medians and intervals, and counted in ``n_nan``.
- The "mean_foreground" value of a case is the mean of its foreground classes, its NaN classes
  left out (NaN when all are NaN).
- Confidence intervals: percentile bootstrap of the mean over cases (cases resampled with
  replacement, numpy ``default_rng(seed)``), so the same input and seed give the same interval.
  Cases are put in ``case_id`` order first: the row order of the input does not matter.
  Two evaluations of the same cases are compared per case (``paired_difference``), of different
  cases (e.g. two sites) by the difference of their means with each side resampled on its own
  (``unpaired_difference``).
- Summaries are JSON-safe: NaN (and any other non-finite float) becomes None (``null``), so
  ``json.dumps(..., allow_nan=False)`` works.

``per_case.csv``: exactly the contract columns in that order; floats as plain decimals (the
shortest text that reads back to the same float64, never an exponent); NaN as an empty field;
``class_index`` and ``tp, fp, fn, tn`` as integers. ``read_per_case(write_per_case(rows))``
gives back the same values, and rewriting a file read this way gives the same bytes.
"""
from __future__ import annotations

import csv
import math
import operator
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from medft.errors import DataError

PER_CASE_COLUMNS = (
    "case_id", "site", "class_index", "class_name",
    "dice", "sensitivity", "specificity", "hd95", "nsd",
    "tp", "fp", "fn", "tn",
)
METRICS = ("dice", "sensitivity", "specificity", "hd95", "nsd")
COUNTS = ("tp", "fp", "fn", "tn")
BOOTSTRAP_METHOD = "percentile bootstrap of the mean, cases resampled"
UNPAIRED_BOOTSTRAP_METHOD = (
    "percentile bootstrap of the difference of means, each evaluation's cases resampled independently"
)
UNKNOWN_SITE = "unknown"
MEAN_FOREGROUND = "mean_foreground"
_CHUNK = 1_000_000  # resampled values drawn at a time: bounds memory for many cases


# --------------------------------------------------------------------------------------------
# Statistics of one list of per-case values
# --------------------------------------------------------------------------------------------
def bootstrap_ci(values: np.ndarray, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over cases; NaN values dropped first.

    Cases are resampled with replacement ``n_resamples`` times with ``numpy.random.default_rng(seed)``;
    the interval holds the central ``level`` share of the resampled means. (nan, nan) with
    fewer than 2 values.
    """
    if n_resamples < 1:
        raise ValueError(f"bootstrap_ci: n_resamples must be >= 1, got {n_resamples}.")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_ci: level must lie between 0 and 1 (e.g. 0.95), got {level}.")
    v = _drop_nan(values)
    n = v.size
    if n < 2:
        return math.nan, math.nan
    means = _resampled_means(v, n_resamples, np.random.default_rng(seed))
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)


def describe(values: Iterable[float], n_resamples: int = 2000, seed: int = 0) -> dict:
    """``{"mean", "sd", "median", "ci95": [lo, hi], "n", "n_nan"}`` of per-case values.

    NaN values are left out of the statistics and counted in ``n_nan``; ``n`` counts the others.
    ``sd`` uses ddof=1. Statistics that cannot be computed (no values; sd and ci95 with one
    value) are float NaN here; ``summarize`` turns them into None.
    """
    all_values = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).ravel()
    v = _drop_nan(all_values)
    n = int(v.size)
    lo, hi = bootstrap_ci(v, n_resamples=n_resamples, seed=seed, level=0.95)
    return {
        "mean": float(v.mean()) if n else math.nan,
        "sd": float(v.std(ddof=1)) if n > 1 else math.nan,
        "median": float(np.median(v)) if n else math.nan,
        "ci95": [lo, hi],
        "n": n,
        "n_nan": int(all_values.size - n),
    }


def _drop_nan(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[~np.isnan(v)]


# --------------------------------------------------------------------------------------------
# Summaries of per_case rows
# --------------------------------------------------------------------------------------------
def summarize(
    rows: list[dict],
    class_names: Sequence[str],
    metrics: Sequence[str] = METRICS,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """The ``summary.json`` content: per foreground class and metric, over cases, overall and per site.

    ``{"classes", "n_cases", "metrics", "bootstrap", "overall": {class_name: {metric: describe},
    "mean_foreground": {metric: describe}}, "per_site": {site: <as overall>}}``; ``per_site``
    only when some case has a site (cases without one are grouped under "unknown").
    """
    metrics = _check_metrics(metrics)
    table = _Table(rows, class_names)
    summary = {
        "classes": table.foreground_names,
        "n_cases": len(table.case_ids),
        "metrics": list(metrics),
        "bootstrap": _bootstrap_info(n_resamples, seed),
        "overall": _group_summary(table, table.case_ids, metrics, n_resamples, seed),
    }
    if any(table.sites[c] for c in table.case_ids):
        groups: dict[str, list[str]] = {}
        for case_id in table.case_ids:
            groups.setdefault(table.sites[case_id] or UNKNOWN_SITE, []).append(case_id)
        summary["per_site"] = {
            site: _group_summary(table, groups[site], metrics, n_resamples, seed) for site in sorted(groups)
        }
    return json_safe(summary)


def paired_difference(rows_a: list[dict], rows_b: list[dict], class_names: Sequence[str], metric: str = "dice",
                      n_resamples: int = 2000, seed: int = 0) -> dict:
    """Compare two evaluations of the same cases (e.g. the pretrained bundle A and the fine-tuned run B).

    For the cases present in both (by ``case_id``) whose value is not NaN in either, per
    foreground class and for the per-case foreground mean: ``{"n_common", "mean_a", "mean_b",
    "mean_diff" (b - a), "ci95"}``, the interval by a paired bootstrap (common cases resampled,
    each with its two values). A case without a row for a class in one evaluation counts as NaN
    there: it is left out of that class, never paired with another case's value. Returns ``{"metric", "difference": "b - a", "bootstrap",
    "n_cases_a", "n_cases_b", "n_common_cases", "classes", "differences": {class_name: ...,
    "mean_foreground": ...}}``, JSON-safe (NaN as None).
    """
    (metric,) = _check_metrics([metric])
    return _difference(rows_a, rows_b, class_names, metric, n_resamples, seed, paired=True)


def paired_stats(a: np.ndarray, b: np.ndarray, n_resamples: int, seed: int) -> dict:
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    n = int(a.size)
    diff = b - a
    lo, hi = bootstrap_ci(diff, n_resamples=n_resamples, seed=seed, level=0.95)
    return {
        "n_common": n,
        "mean_a": float(a.mean()) if n else math.nan,
        "mean_b": float(b.mean()) if n else math.nan,
        "mean_diff": float(diff.mean()) if n else math.nan,
        "ci95": [lo, hi],
    }


def unpaired_difference(rows_a: list[dict], rows_b: list[dict], class_names: Sequence[str], metric: str = "dice",
                        n_resamples: int = 2000, seed: int = 0) -> dict:
    """Compare two evaluations of different cases (e.g. two sites' held-out sets): difference of means.

    Per foreground class and for the per-case foreground mean, all of A's cases against all of
    B's (case ids need not match; NaN values are dropped on each side separately):
    ``{"n_a", "n_b", "mean_a", "mean_b", "mean_diff" (mean_b - mean_a), "ci95"}``. The interval is
    a percentile bootstrap of the difference of means, A's and B's cases resampled independently
    (A's first, then B's, from one ``numpy.random.default_rng(seed)``; cases in ``case_id``
    order), (nan, nan) when a side has fewer than 2 values. The difference reflects the two case
    populations as well as the models: prefer ``paired_difference`` when the cases are the same.
    Returns ``{"metric", "difference": "b - a", "bootstrap", "n_cases_a", "n_cases_b", "classes",
    "differences": {class_name: ..., "mean_foreground": ...}}``, JSON-safe (NaN as None).
    """
    (metric,) = _check_metrics([metric])
    if n_resamples < 1:
        raise ValueError(f"unpaired_difference: n_resamples must be >= 1, got {n_resamples}.")
    return _difference(rows_a, rows_b, class_names, metric, n_resamples, seed, paired=False)


def _difference(rows_a: list[dict], rows_b: list[dict], class_names: Sequence[str], metric: str, n_resamples: int,
                seed: int, paired: bool) -> dict:
    """What paired_difference (``paired``: the cases in both, ``paired_stats``) and unpaired_difference (each side's
    cases, ``_unpaired``) return: B against A per foreground class and for the per-case foreground mean."""
    table_a, table_b = _Table(rows_a, class_names), _Table(rows_b, class_names)
    if paired:
        ids_a = ids_b = sorted(set(table_a.case_ids) & set(table_b.case_ids))
        compare, method = paired_stats, BOOTSTRAP_METHOD
    else:
        ids_a, ids_b = table_a.case_ids, table_b.case_ids
        compare, method = _unpaired, UNPAIRED_BOOTSTRAP_METHOD
    differences = {name: compare(table_a.values(ids_a, c, metric, missing_as_nan=paired),
                                 table_b.values(ids_b, c, metric, missing_as_nan=paired), n_resamples, seed)
                   for c, name in table_a.foreground}
    differences[MEAN_FOREGROUND] = compare(table_a.foreground_means(ids_a, metric),
                                           table_b.foreground_means(ids_b, metric), n_resamples, seed)
    counts = {"n_cases_a": len(table_a.case_ids), "n_cases_b": len(table_b.case_ids)}
    if paired:
        counts["n_common_cases"] = len(ids_a)
    return json_safe({"metric": metric, "difference": "b - a", "bootstrap": _bootstrap_info(n_resamples, seed, method),
                       **counts, "classes": table_a.foreground_names, "differences": differences})


def _unpaired(a: np.ndarray, b: np.ndarray, n_resamples: int, seed: int, level: float = 0.95) -> dict:
    a, b = _drop_nan(a), _drop_nan(b)
    n_a, n_b = int(a.size), int(b.size)
    mean_a = float(a.mean()) if n_a else math.nan
    mean_b = float(b.mean()) if n_b else math.nan
    lo = hi = math.nan
    if n_a >= 2 and n_b >= 2:
        rng = np.random.default_rng(seed)
        means_a = _resampled_means(a, n_resamples, rng)  # A's resamples first, then B's: independent draws
        diffs = _resampled_means(b, n_resamples, rng) - means_a
        tail = (1.0 - level) / 2.0
        lo, hi = (float(q) for q in np.quantile(diffs, [tail, 1.0 - tail]))
    return {"n_a": n_a, "n_b": n_b, "mean_a": mean_a, "mean_b": mean_b, "mean_diff": mean_b - mean_a,
            "ci95": [lo, hi]}


def _resampled_means(v: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_resamples`` resamples of v (cases drawn with replacement), chunked to bound memory."""
    n = v.size
    per_chunk = max(1, _CHUNK // n)
    means = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, per_chunk):
        stop = min(start + per_chunk, n_resamples)
        means[start:stop] = v[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return means


def _group_summary(table: _Table, case_ids: list[str], metrics: Sequence[str], n_resamples: int, seed: int) -> dict:
    group = {
        name: {m: describe(table.values(case_ids, c, m), n_resamples, seed) for m in metrics}
        for c, name in table.foreground
    }
    group[MEAN_FOREGROUND] = {m: describe(table.foreground_means(case_ids, m), n_resamples, seed) for m in metrics}
    return group


def _bootstrap_info(n_resamples: int, seed: int, method: str = BOOTSTRAP_METHOD) -> dict:
    return {"resamples": int(n_resamples), "seed": int(seed), "level": 0.95, "method": method}


def _check_metrics(metrics: Sequence[str]) -> list[str]:
    if isinstance(metrics, str):
        metrics = [metrics]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}: the per-case metrics are {', '.join(METRICS)}.")
    return list(metrics)


class _Table:
    """Foreground rows indexed by (case_id, class_index), cases in case_id order."""

    def __init__(self, rows: list[dict], class_names: Sequence[str]):
        names = list(class_names)
        if len(names) < 2:
            raise ValueError(
                f"class_names must list all classes, background first (index 0), got {names}. "
                "Fix: pass e.g. ['background', 'anterior', 'posterior']."
            )
        self.foreground = list(enumerate(names))[1:]
        self.foreground_names = names[1:]
        self.sites: dict[str, str] = {}
        self.cells: dict[tuple[str, int], dict] = {}
        for row in rows:
            case_id, site, c = str(row["case_id"]), str(row.get("site") or ""), int(row["class_index"])
            if self.sites.setdefault(case_id, site) != site:
                raise ValueError(f"case {case_id}: rows name two sites, {self.sites[case_id]!r} and {site!r}.")
            if not 0 <= c < len(names):
                raise ValueError(
                    f"case {case_id}: class_index {c} is not one of the {len(names)} classes {names}. "
                    "Fix: pass the class names of the model that made these rows."
                )
            if c == 0:
                continue
            if (case_id, c) in self.cells:
                raise ValueError(f"case {case_id}: two rows for class_index {c}.")
            self.cells[(case_id, c)] = row
        self.case_ids = sorted(self.sites)

    def values(self, case_ids: list[str], c: int, metric: str, missing_as_nan: bool = False) -> np.ndarray:
        """One value per case that has a row for class c (missing rows are not cases of that class); with
        ``missing_as_nan``, one per case of ``case_ids``, NaN where the row is missing: two tables' values then stay
        paired case by case."""
        return np.array(
            [parse_float(self.cells[(k, c)].get(metric)) if (k, c) in self.cells else math.nan
             for k in case_ids if missing_as_nan or (k, c) in self.cells], dtype=np.float64
        )

    def foreground_means(self, case_ids: list[str], metric: str) -> np.ndarray:
        means = []
        for k in case_ids:
            v = np.array([parse_float(self.cells[(k, c)].get(metric)) for c, _ in self.foreground if (k, c) in self.cells])
            v = v[~np.isnan(v)]
            means.append(float(v.mean()) if v.size else math.nan)
        return np.array(means, dtype=np.float64)


def parse_float(value) -> float:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return math.nan
    return float(value)


def json_safe(value):
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------------------------
# per_case.csv
# --------------------------------------------------------------------------------------------
def write_per_case(path: str | Path, rows: list[dict]) -> Path:
    """Write ``per_case.csv``: the contract columns in order, keys outside them ignored."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(PER_CASE_COLUMNS)
        for number, row in enumerate(rows):
            missing = [k for k in PER_CASE_COLUMNS if k not in row]
            if missing:
                raise ValueError(f"per_case row {number} ({row.get('case_id')!r}) lacks {', '.join(missing)}.")
            writer.writerow(
                [str(row["case_id"]), str(row["site"] or ""), str(_as_int(row["class_index"], "class_index", row)), str(row["class_name"])]
                + [format_float(row[m]) for m in METRICS]
                + [str(_as_int(row[k], k, row)) for k in COUNTS]
            )
    return path


def read_per_case(path: str | Path) -> list[dict]:
    """Read ``per_case.csv``: strings for ids, site and class name, int index and counts, float metrics (NaN when empty)."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.reader(file)
        header = next(reader, None)
        if header is None or tuple(header) != PER_CASE_COLUMNS:
            raise DataError(
                f"the header is {','.join(header or [])!r}, not the per_case.csv columns",
                f"write the file with medft (columns {','.join(PER_CASE_COLUMNS)})",
                file=path,
            )
        rows = []
        for line, record in enumerate(reader, start=2):
            if not record:
                continue
            if len(record) != len(PER_CASE_COLUMNS):
                raise DataError(
                    f"line {line} has {len(record)} fields, not {len(PER_CASE_COLUMNS)}",
                    "write the file with medft, one field per column", file=path,
                )
            raw = dict(zip(PER_CASE_COLUMNS, record, strict=True))
            try:
                row = {"case_id": raw["case_id"], "site": raw["site"], "class_index": int(raw["class_index"]),
                       "class_name": raw["class_name"]}
                row.update({m: parse_float(raw[m]) for m in METRICS})
                row.update({k: int(raw[k]) for k in COUNTS})
            except ValueError as exc:
                raise DataError(
                    f"line {line} (case {raw['case_id']}) has a value that is not a number: {exc}",
                    "metrics must be decimals or empty (NaN), class_index and tp/fp/fn/tn integers", file=path,
                ) from None
            rows.append(row)
    return rows


def format_float(value) -> str:
    value = parse_float(value)
    if math.isnan(value):
        return ""
    return np.format_float_positional(value, unique=True, trim="0")


def _as_int(value, name: str, row: dict) -> int:
    try:
        return operator.index(value)  # int, numpy integer, integer tensor
    except TypeError:
        number = float(value)
    if not number.is_integer():
        raise ValueError(f"per_case row of case {row.get('case_id')!r}: {name} must be an integer, got {value!r}.")
    return int(number)
