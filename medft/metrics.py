"""Segmentation metrics, the one implementation that training and evaluation share.

Voxel counts, per case and class, from one confusion matrix per case (a bincount; the tests check it
against torchmetrics, MONAI and counts by hand):
Dice = 2TP/(2TP+FP+FN), sensitivity = TP/(TP+FN), specificity = TN/(TN+FP). A value whose
denominator is 0 is NaN: it is left out of means (and counted as NaN in summaries).
Background (class 0) is left out of means.

Surface distances, per case and class (MONAI), in mm from the voxel spacing that the caller
takes from the image affine:

- HD95: the 95th percentile Hausdorff distance, max of the two directed 95th percentiles of the
  distances between the boundary voxels of the prediction and those of the ground truth.
- NSD: normalised surface distance (surface Dice) at a tolerance of ``nsd_tolerance_mm``: the
  share of both boundaries (prediction and ground truth together) that lies within the
  tolerance of the other boundary.

Edge cases of the surface metrics (medft's convention; MONAI's raw output differs where noted):

======================================  =========  =====  ==========================
class present in ...                    HD95       NSD    MONAI raw (HD95, NSD)
======================================  =========  =====  ==========================
ground truth and prediction             value      value  same
ground truth only (prediction empty)    NaN        0.0    NaN + warning, 0.0
prediction only (ground truth empty)    NaN        0.0    NaN + warning, 0.0
neither                                 NaN        NaN    NaN + warnings, NaN
background (class 0), always            NaN        NaN    a distance (not a class)
======================================  =========  =====  ==========================

HD95 is NaN whenever either side is empty: a distance to nothing is undefined. NSD follows
Dice: its denominator (the size of both boundaries) is 0 only when both are empty, so a missed
or a hallucinated structure scores 0, like its Dice. As with Dice, NaN values are left out of
means, so read HD95 together with its NaN count: a structure the model misses makes HD95 NaN,
not large. MONAI's warnings about empty masks are not emitted: these cases are expected.
"""
from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

import torch

NSD_TOLERANCE_MM = 1.0  # the NSD tolerance of evaluations (surface_metrics' default)


def confusion_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(cases, classes, 4) int64 counts TP, FP, FN, TN from label maps shaped (cases, *spatial).

    ``pred`` and ``target`` hold class indices (a channel axis of size 1 is allowed).
    """
    if pred.ndim == target.ndim and pred.shape[1:2] == (1,):
        pred, target = pred[:, 0], target[:, 0]
    counts = [counts_from_matrix(confusion_matrix(p, t, num_classes)) for p, t in zip(pred, target, strict=True)]
    return torch.stack(counts) if counts else torch.zeros(0, num_classes, 4, dtype=torch.int64)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(classes, classes) int64 voxel counts [truth][prediction] of one case's label maps, by one bincount
    (deterministic on CPU): torchmetrics' stat scores one-hot encode every voxel, and its confusion matrix,
    under deterministic algorithms, compares every voxel with every cell: gigabytes for a CT
    (benchmarks/RESULTS.md)."""
    cells = target.long().flatten() * num_classes + pred.long().flatten()
    return torch.bincount(cells, minlength=num_classes**2).reshape(num_classes, num_classes)


def counts_from_matrix(matrix: torch.Tensor) -> torch.Tensor:
    """(classes, 4) counts TP, FP, FN, TN of each class from a confusion matrix [truth][prediction]."""
    tp = matrix.diagonal()
    fp, fn = matrix.sum(0) - tp, matrix.sum(1) - tp
    return torch.stack([tp, fp, fn, matrix.sum() - tp - fp - fn], dim=-1)


def argmax_classes(scores: torch.Tensor) -> torch.Tensor:
    """Each voxel's class from (classes, *spatial) scores: the first class of the highest score, as
    ``scores.argmax(0)`` gives it, found class by class (torch's argmax over a short first axis is many
    times slower on CPU, benchmarks/RESULTS.md)."""
    scores = scores.as_subclass(torch.Tensor) if isinstance(scores, torch.Tensor) else torch.as_tensor(scores)
    best, classes = scores[0].clone(), torch.zeros(scores.shape[1:], dtype=torch.int64, device=scores.device)
    for c in range(1, scores.shape[0]):
        higher = scores[c] > best
        classes[higher] = c
        best = torch.where(higher, scores[c], best)
    return classes


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


def surface_metrics(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    spacing: Sequence[float],
    nsd_tolerance_mm: float | Sequence[float] = NSD_TOLERANCE_MM,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hd95, nsd), each (cases, classes) float64 in mm, from label maps shaped (cases, *spatial).

    ``pred`` and ``target`` hold class indices (a channel axis of size 1 is allowed), with 2 or 3
    spatial axes. ``spacing`` is the voxel size in mm along those axes, the same for all cases
    (take it from the image affine). ``nsd_tolerance_mm`` is one tolerance for all classes, or
    one per foreground class (``num_classes - 1`` values; ``num_classes`` values are accepted too,
    the background's being ignored). The edge-case conventions are in the module docstring.
    Computed on the CPU on the region around each structure (``structure_region``: the same values as
    on the whole volume) by MONAI's KD-tree path (exact Euclidean distances, which MONAI rounds to
    float32); returned as float64 on the device of ``pred``.
    """
    pred, target, spatial_dims = _label_maps(pred, target)
    spacing_mm = _spacing(spacing, spatial_dims)
    tolerances = _tolerances(nsd_tolerance_mm, num_classes)
    device = pred.device
    pred, target = _class_indices(pred, "pred", num_classes), _class_indices(target, "target", num_classes)
    cases = pred.shape[0]
    hd95 = torch.full((cases, num_classes), float("nan"), dtype=torch.float64)
    nsd = torch.full((cases, num_classes), float("nan"), dtype=torch.float64)
    for c in range(1, num_classes):
        hd95[:, c], nsd[:, c] = _class_surface_metrics(pred == c, target == c, spacing_mm, tolerances[c])
    return hd95.to(device), nsd.to(device)


def _label_maps(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``pred`` and ``target`` without their channel axis of size 1 (when both have one), and their number
    of spatial axes; ValueError when their shapes differ or they have other than 2 or 3 spatial axes."""
    if pred.ndim == target.ndim and pred.ndim >= 2 and pred.shape[1:2] == (1,) and target.shape[1:2] == (1,):
        pred, target = pred[:, 0], target[:, 0]
    if pred.shape != target.shape:
        raise ValueError(
            f"surface_metrics: pred and target must have the same shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}. Fix: resample the prediction onto the label's grid."
        )
    spatial_dims = pred.ndim - 1
    if spatial_dims not in (2, 3):
        raise ValueError(
            f"surface_metrics: label maps must be shaped (cases, *spatial) with 2 or 3 spatial axes, "
            f"got shape {tuple(pred.shape)}. Fix: add the case axis (unsqueeze(0)) for a single case."
        )
    return pred, target, spatial_dims


def _class_indices(labels: torch.Tensor, name: str, num_classes: int) -> torch.Tensor:
    """A label map as a plain CPU long tensor (not a MONAI MetaTensor: its metadata bookkeeping is not
    needed here); ValueError for labels outside 0 .. num_classes - 1."""
    labels = labels.detach().as_subclass(torch.Tensor).cpu()
    labels = labels.long() if labels.is_floating_point() else labels  # integers as they are: a CT's map is 42M voxels
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"surface_metrics: {name} holds labels outside 0..{num_classes - 1} "
            f"(min {int(labels.min())}, max {int(labels.max())}). Fix: pass the right num_classes."
        )
    return labels


def _class_surface_metrics(pred_c: torch.Tensor, target_c: torch.Tensor, spacing_mm: list[float],
                           tolerance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(hd95, nsd) of one class, each (cases,) float64, from its masks in prediction and target (cases, *spatial)."""
    hd95 = torch.full((pred_c.shape[0],), float("nan"), dtype=torch.float64)
    nsd = torch.full((pred_c.shape[0],), float("nan"), dtype=torch.float64)
    in_pred, in_target = pred_c.flatten(1).any(1), target_c.flatten(1).any(1)
    nsd[in_pred ^ in_target] = 0.0  # one side empty: no boundary within tolerance
    for case in torch.nonzero(in_pred & in_target).flatten().tolist():
        region = structure_region(pred_c[case] | target_c[case])
        hd95[case], nsd[case] = _monai_surface_metrics(pred_c[case][region], target_c[case][region], spacing_mm,
                                                       tolerance)
    return hd95, nsd


def structure_region(mask: torch.Tensor, margin: int = 1) -> tuple[slice, ...]:
    """The bounding box of a non-empty ``mask`` grown by ``margin`` voxels (within the volume), as slices.

    The surface distances of masks cropped to the box of both equal those of the whole volumes: the
    boundary voxels and their distances lie inside, and a voxel beyond the box's margin is background
    in both (at the volume's edge, MONAI pads the crop with background as it does the whole volume).
    """
    region = []
    for axis in range(mask.ndim):
        present = torch.nonzero(mask.any(dim=[d for d in range(mask.ndim) if d != axis])).flatten()
        first, last = int(present[0]), int(present[-1])
        region.append(slice(max(0, first - margin), min(mask.shape[axis], last + 1 + margin)))
    return tuple(region)


def _monai_surface_metrics(pred: torch.Tensor, target: torch.Tensor, spacing_mm: list[float],
                           tolerance: float) -> tuple[float, float]:
    """(hd95, nsd) of one case's non-empty masks (*spatial), from one computation of MONAI's boundary distances
    (its HD95 and NSD functions would each compute them): the values of ``compute_hausdorff_distance`` (the larger
    of the two directed 95th percentiles) and ``compute_surface_dice`` (the share of both boundaries within the
    tolerance), which the tests check."""
    from monai.metrics.utils import get_edge_surface_distance

    with warnings.catch_warnings():  # MONAI's own internal use of a deprecated argument of get_mask_edges
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        _, distances, _ = get_edge_surface_distance(pred, target, spacing=spacing_mm, symmetric=True, warn_empty=False)
    hd95 = torch.stack([torch.quantile(d, 0.95) for d in distances]).max().float()  # MONAI's float32
    within = sum((d <= tolerance).sum() for d in distances)
    nsd = (within / sum(len(d) for d in distances)).float()
    return float(hd95), float(nsd)


def _spacing(spacing: Sequence[float], spatial_dims: int) -> list[float]:
    try:
        values = [float(s) for s in spacing]
    except TypeError:
        raise ValueError(
            f"surface_metrics: spacing must be a sequence of {spatial_dims} voxel sizes in mm, got {spacing!r}. "
            "Fix: pass the spacing from the image affine, e.g. nibabel's img.header.get_zooms()[:3]."
        ) from None
    if len(values) != spatial_dims or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(
            f"surface_metrics: spacing must hold {spatial_dims} positive voxel sizes in mm (one per spatial "
            f"axis), got {spacing!r}. Fix: pass the spacing from the image affine."
        )
    return values


def _tolerances(tolerance: float | Sequence[float], num_classes: int) -> list[float]:
    if isinstance(tolerance, numbers.Real):
        values = [float(tolerance)] * num_classes
    else:
        values = [float(t) for t in tolerance]
        if len(values) == num_classes - 1:
            values = [float("nan")] + values
        elif len(values) != num_classes:
            raise ValueError(
                f"surface_metrics: nsd_tolerance_mm needs one value per foreground class ({num_classes - 1}), "
                f"got {len(values)}: {tolerance!r}. Fix: pass one tolerance in mm, or one per class 1..{num_classes - 1}."
            )
    if not all(math.isfinite(t) and t >= 0 for t in values[1:]):
        raise ValueError(
            f"surface_metrics: nsd_tolerance_mm must be finite and >= 0, got {tolerance!r}. "
            "Fix: pass tolerances in mm, e.g. 1.0."
        )
    return values
