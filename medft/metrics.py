"""Voxel-count metrics, the one implementation that training and evaluation share.

Per case and class, from the confusion counts: Dice = 2TP/(2TP+FP+FN), sensitivity = TP/(TP+FN),
specificity = TN/(TN+FP). A value whose denominator is 0 is NaN: it is left out of means.
Background (class 0) is left out of means.
"""
from __future__ import annotations

import torch
from torchmetrics.functional.classification import multiclass_stat_scores


def confusion_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(cases, classes, 4) int64 counts TP, FP, FN, TN from label maps shaped (cases, *spatial).

    ``pred`` and ``target`` hold class indices (a channel axis of size 1 is allowed).
    """
    if pred.ndim == target.ndim and pred.shape[1:2] == (1,):
        pred, target = pred[:, 0], target[:, 0]
    scores = multiclass_stat_scores(
        pred.long().flatten(1), target.long().flatten(1), num_classes=num_classes,
        average=None, multidim_average="samplewise", validate_args=False,
    )
    tp, fp, tn, fn = scores[..., 0], scores[..., 1], scores[..., 2], scores[..., 3]
    return torch.stack([tp, fp, fn, tn], dim=-1)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    numerator, denominator = numerator.double(), denominator.double()
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1), torch.full_like(numerator, float("nan")))


def dice(counts: torch.Tensor) -> torch.Tensor:
    tp, fp, fn, _ = counts.unbind(-1)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def sensitivity(counts: torch.Tensor) -> torch.Tensor:
    tp, _, fn, _ = counts.unbind(-1)
    return _ratio(tp, tp + fn)


def specificity(counts: torch.Tensor) -> torch.Tensor:
    _, fp, _, tn = counts.unbind(-1)
    return _ratio(tn, tn + fp)


def foreground_mean(values: torch.Tensor) -> torch.Tensor:
    """Per-class means over cases, background left out: (classes - 1,), NaN cases ignored."""
    return values[..., 1:].nanmean(dim=0)
