"""What stress.csv adds up to: per perturbation and level, each class's metrics over the cases with 95% bootstrap
intervals; ROOD-MRI's severity-weighted overall and degradation scores; and, against another model's stress run on
the same perturbed images, paired differences.

Scores (Boone et al. 2023, ROOD-MRI), of each case's mean foreground Dice D_s at level s, weights w_s = alpha**s,
alpha = 2/3 (the lower levels, the likelier scans, weigh most):
overall = (D_0 + sum_s w_s D_s) / (1 + sum_s w_s), degradation = sum_s w_s (D_0 - D_s) / sum_s w_s.
Both are computed per case and then described over the cases (mean, bootstrap interval), so that a comparison
can pair them case by case.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from medft.evaluate.folder import case_mean_dice
from medft.evaluate.summary import describe, json_safe, paired_difference, paired_stats, summarize
from medft.stress.files import UNPERTURBED

ALPHA = 2 / 3
SUMMARY_METRICS = ("dice", "sensitivity", "specificity", "hd95")


def level_rows(rows: list[dict], perturbation: str, level: int) -> list[dict]:
    """The rows of one perturbation at one level; level 0 is the unperturbed case, shared by every perturbation."""
    name = UNPERTURBED if level == 0 else perturbation
    return [r for r in rows if r["perturbation"] == name and r["level"] == level]


def case_scores(rows: list[dict], perturbation: str, levels: Sequence[int], alpha: float = ALPHA) -> dict[str, tuple[float, float]]:
    """(overall, degradation) of each case scored at level 0 and every level in ``levels``."""
    by_level = {level: case_mean_dice(level_rows(rows, perturbation, level)) for level in (0, *levels)}
    weights = {level: alpha**level for level in levels}
    total = sum(weights.values())
    scores = {}
    for case_id, clean in by_level[0].items():
        dice = [by_level[level].get(case_id, math.nan) for level in levels]
        if math.isnan(clean) or any(math.isnan(d) for d in dice):
            continue
        weighted = sum(weights[level] * d for level, d in zip(levels, dice, strict=True))
        scores[case_id] = ((clean + weighted) / (1 + total),
                           sum(weights[level] * (clean - d) for level, d in zip(levels, dice, strict=True)) / total)
    return scores


def summarize_stress(rows: list[dict], class_names: list[str], perturbations: Sequence[str], levels: Sequence[int],
                     n_resamples: int = 2000, seed: int = 0) -> dict:
    """stress.json's ``results`` (per perturbation: ``levels`` {level: per class and the mean of classes: metric
    statistics}, ``overall``, ``degradation``) and ``ranking`` (weakest first: the largest mean degradation)."""
    results = {}
    for name in perturbations:
        per_level = {str(level): summarize(level_rows(rows, name, level), class_names, SUMMARY_METRICS, n_resamples,
                                           seed)["overall"] for level in (0, *levels)}
        scores = case_scores(rows, name, levels)
        results[name] = {"levels": per_level,
                         "overall": json_safe(describe([s[0] for s in scores.values()], n_resamples, seed)),
                         "degradation": json_safe(describe([s[1] for s in scores.values()], n_resamples, seed))}
    ranking = sorted(perturbations, key=lambda n: -_number(results[n]["degradation"]["mean"]))
    return {"results": results, "ranking": ranking}


def compare_stress(rows_a: list[dict], rows_b: list[dict], class_names: list[str], perturbations: Sequence[str],
                   levels: Sequence[int], n_resamples: int = 2000, seed: int = 0) -> dict:
    """B against A on the cases both scored, the same perturbed images: per perturbation and level the paired
    difference of Dice per class and of the mean of classes, and of the overall and degradation scores."""
    results = {}
    for name in perturbations:
        per_level = {}
        for level in (0, *levels):
            diff = paired_difference(level_rows(rows_a, name, level), level_rows(rows_b, name, level), class_names,
                                     "dice", n_resamples, seed)
            per_level[str(level)] = diff["differences"]
        a, b = case_scores(rows_a, name, levels), case_scores(rows_b, name, levels)
        common = sorted(set(a) & set(b))
        results[name] = {"levels": per_level, **{
            score: json_safe(paired_stats(np.array([a[c][i] for c in common]), np.array([b[c][i] for c in common]),
                                          n_resamples, seed))
            for i, score in enumerate(("overall", "degradation"))}}
    common_cases = set(case_mean_dice(level_rows(rows_a, UNPERTURBED, 0))) & set(
        case_mean_dice(level_rows(rows_b, UNPERTURBED, 0)))
    return {"n_common_cases": len(common_cases), "results": results}


def _number(value: float | None) -> float:
    return -math.inf if value is None else value

