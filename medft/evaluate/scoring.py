"""A predicted case scored against its label: what ``medft evaluate`` and ``medft stress`` both compute, one way."""
from __future__ import annotations

import torch

from medft.evaluate.inference import keep_largest_components
from medft.metrics import argmax_classes, confusion_matrix, counts_from_matrix, dice, sensitivity, specificity, surface_metrics


def label_map(probs: torch.Tensor, largest_component: bool) -> torch.Tensor:
    """Each voxel's class from class probabilities (C, ...), each class's largest component kept when asked."""
    labels = argmax_classes(probs)
    return keep_largest_components(labels, probs.shape[0]) if largest_component else labels


def case_rows(case_id: str, site: str, class_names: list[str], pred: torch.Tensor, target: torch.Tensor,
              spacing: list[float], matrix: torch.Tensor | None = None) -> list[dict]:
    """A case's rows of per_case.csv, one per class: Dice, sensitivity, specificity, HD95, NSD and the voxel counts of
    the label maps ``pred`` and ``target`` (x, y, z), from their confusion ``matrix`` when it is at hand."""
    n = len(class_names)
    matrix = confusion_matrix(pred, target, n) if matrix is None else matrix
    counts = counts_from_matrix(matrix)[None]
    values = {"dice": dice(counts)[0], "sensitivity": sensitivity(counts)[0], "specificity": specificity(counts)[0]}
    hd95, nsd = surface_metrics(pred[None], target[None], n, spacing)
    values.update(hd95=hd95[0], nsd=nsd[0])
    rows = []
    for c in range(n):
        tp, fp, fn, tn = (int(v) for v in counts[0, c])
        rows.append({"case_id": case_id, "site": site, "class_index": c, "class_name": class_names[c],
                     **{k: float(v[c]) for k, v in values.items()}, "tp": tp, "fp": fp, "fn": fn, "tn": tn})
    return rows
