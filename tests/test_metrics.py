"""medft.metrics against independent computations: by hand, numpy/scipy, and MONAI's own metric classes."""
import math
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import ConfusionMatrixMetric, DiceMetric, HausdorffDistanceMetric, SurfaceDiceMetric
from monai.networks.utils import one_hot
from scipy import ndimage
from skimage.morphology import ball, erosion

from medft.metrics import (
    confusion_counts,
    dice,
    foreground_mean,
    sensitivity,
    specificity,
    structure_region,
    surface_metrics,
)
from tests.conftest import sample_case

NAN = float("nan")
CLASSES = 3  # the hippocampus sample: 0 background, 1 anterior, 2 posterior


# --------------------------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------------------------
def _counts_by_hand(pred: np.ndarray, target: np.ndarray, c: int) -> list[int]:
    p, t = pred == c, target == c
    return [int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum()), int((~p & ~t).sum())]


def _boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def _directed_distances(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    """Distance in mm from each boundary voxel of a to the nearest boundary voxel of b."""
    return ndimage.distance_transform_edt(~_boundary(b), sampling=spacing)[_boundary(a)]


def _hd95_by_hand(pred: np.ndarray, target: np.ndarray, spacing) -> float:
    return max(np.percentile(_directed_distances(pred, target, spacing), 95),
               np.percentile(_directed_distances(target, pred, spacing), 95))


def _nsd_by_hand(pred: np.ndarray, target: np.ndarray, spacing, tolerance: float) -> float:
    d_pt, d_tp = _directed_distances(pred, target, spacing), _directed_distances(target, pred, spacing)
    return ((d_pt <= tolerance).sum() + (d_tp <= tolerance).sum()) / (d_pt.size + d_tp.size)


# --------------------------------------------------------------------------------------------
# Real label maps: hippocampus_334 and two predictions made from it
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_case():
    """Target: the label of hippocampus_334. Predictions: (a) shifted by one voxel, some voxels
    swapped between the two classes and a few background voxels called anterior; (b) each class
    eroded (scikit-image), the eroded rim becoming background."""
    label_img = nib.load(sample_case("hippocampus_334")[1])
    target = np.asanyarray(label_img.dataobj).astype(np.int64)
    spacing = tuple(float(s) for s in np.linalg.norm(label_img.affine[:3, :3], axis=0))
    assert set(np.unique(target)) == {0, 1, 2}

    shifted = np.zeros_like(target)
    shifted[1:] = target[:-1]
    rng = np.random.default_rng(0)
    foreground = np.flatnonzero(shifted > 0)
    swap = rng.choice(foreground, size=foreground.size // 10, replace=False)
    flat = shifted.reshape(-1)
    flat[swap] = 3 - flat[swap]
    background = np.flatnonzero(flat == 0)
    flat[rng.choice(background, size=200, replace=False)] = 1

    eroded = np.zeros_like(target)
    for c in (1, 2):
        eroded[erosion(target == c, footprint=ball(1))] = c
    assert all((eroded == c).any() for c in (1, 2))  # the classes survive the erosion

    pred = np.stack([shifted, eroded])
    return pred, np.stack([target, target]), spacing


def test_counts_equal_numpy_counts_on_real_label_maps(real_case):
    pred, target, _ = real_case
    counts = confusion_counts(torch.from_numpy(pred), torch.from_numpy(target), CLASSES)
    assert counts.shape == (2, CLASSES, 4) and counts.dtype == torch.int64
    for case in range(2):
        for c in range(CLASSES):
            assert counts[case, c].tolist() == _counts_by_hand(pred[case], target[case], c)
    assert (counts.sum(-1) == target[0].size).all()
    # a channel axis of size 1 gives the same counts
    with_channel = confusion_counts(torch.from_numpy(pred)[:, None], torch.from_numpy(target)[:, None], CLASSES)
    assert torch.equal(with_channel, counts)


def test_dice_sensitivity_specificity_equal_monai_on_real_label_maps(real_case):
    pred, target, _ = real_case
    counts = confusion_counts(torch.from_numpy(pred), torch.from_numpy(target), CLASSES)
    p1h, t1h = one_hot(torch.from_numpy(pred)[:, None], CLASSES), one_hot(torch.from_numpy(target)[:, None], CLASSES)

    monai_dice = DiceMetric(include_background=False, reduction="none")
    monai_dice(y_pred=p1h, y=t1h)
    ours = dice(counts)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours[:, 1:], monai_dice.aggregate().double(), rtol=1e-6, atol=1e-7)

    monai_cm = ConfusionMatrixMetric(include_background=True, metric_name=["sensitivity", "specificity"], reduction="none")
    monai_cm(y_pred=p1h, y=t1h)
    monai_sens, monai_spec = monai_cm.aggregate()
    torch.testing.assert_close(sensitivity(counts), monai_sens.double(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(specificity(counts), monai_spec.double(), rtol=1e-6, atol=1e-7)

    # and the formulas by hand, for one class of one case
    tp, fp, fn, tn = _counts_by_hand(pred[0], target[0], 2)
    assert ours[0, 2].item() == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert sensitivity(counts)[0, 2].item() == pytest.approx(tp / (tp + fn))
    assert specificity(counts)[0, 2].item() == pytest.approx(tn / (tn + fp))
    assert 0.3 < ours[0, 1].item() < 0.95  # a real, imperfect prediction, not a trivial one


@pytest.mark.parametrize("spacing", [None, (0.8, 1.0, 2.5)], ids=["affine", "anisotropic"])
def test_surface_metrics_equal_an_independent_scipy_computation_on_real_label_maps(real_case, spacing):
    pred, target, affine_spacing = real_case
    spacing = spacing or affine_spacing
    for tolerance in (0.5, 1.5):
        hd95, nsd = surface_metrics(torch.from_numpy(pred), torch.from_numpy(target), CLASSES, spacing, tolerance)
        assert hd95.shape == nsd.shape == (2, CLASSES) and hd95.dtype == nsd.dtype == torch.float64
        for case in range(2):
            assert math.isnan(hd95[case, 0]) and math.isnan(nsd[case, 0])
            for c in (1, 2):
                p, t = pred[case] == c, target[case] == c
                assert hd95[case, c].item() == pytest.approx(_hd95_by_hand(p, t, spacing), rel=1e-5)
                assert nsd[case, c].item() == pytest.approx(_nsd_by_hand(p, t, spacing, tolerance), rel=1e-6)
        assert (hd95[:, 1:] > 0).all()  # imperfect predictions
        if tolerance < min(spacing):
            assert (nsd[:, 1:] < 1).all()  # within half a voxel only where the boundaries coincide


# --------------------------------------------------------------------------------------------
# Synthetic cases with known answers; spacing (1, 1, 2.5): a step along the last axis is 2.5 mm
# --------------------------------------------------------------------------------------------
SPACING = (1.0, 1.0, 2.5)


def _volume(*parts: tuple[int, tuple]) -> torch.Tensor:
    volume = torch.zeros(12, 12, 12, dtype=torch.long)
    for c, index in parts:
        volume[index] = c
    return volume


def test_hd95_and_nsd_of_two_plates_two_voxels_apart_along_the_coarse_axis():
    # every boundary voxel lies exactly 2 x 2.5 = 5 mm from the other plate
    target = _volume((1, (slice(0, 10), slice(0, 10), 2)))
    pred = _volume((1, (slice(0, 10), slice(0, 10), 4)))
    hd95, nsd_below = surface_metrics(pred[None], target[None], 2, SPACING, nsd_tolerance_mm=4.9)
    _, nsd_at = surface_metrics(pred[None], target[None], 2, SPACING, nsd_tolerance_mm=5.0)
    assert hd95[0, 1].item() == pytest.approx(5.0, rel=1e-6)
    assert nsd_below[0, 1].item() == 0.0 and nsd_at[0, 1].item() == 1.0
    # the same plates two voxels apart along a 1 mm axis are 2 mm apart: spacing follows the axes
    hd95_x, _ = surface_metrics(pred.permute(2, 1, 0)[None], target.permute(2, 1, 0)[None], 2, SPACING)
    assert hd95_x[0, 1].item() == pytest.approx(2.0, rel=1e-6)


def test_nsd_counts_the_share_of_both_boundaries_within_the_tolerance():
    # pred: one plate at z=2. target: the same plate for x < 5, lifted to z=4 (5 mm up) for x >= 5.
    # pred -> target: 50 voxels at 0 mm, then 10 each at 1, 2, 3, 4, 5 mm (x = 5..9, the step edge);
    # target -> pred: 50 at 0 mm, 50 at 5 mm. 200 boundary voxels in all.
    pred = _volume((1, (slice(0, 10), slice(0, 10), 2)))
    target = _volume((1, (slice(0, 5), slice(0, 10), 2)), (1, (slice(5, 10), slice(0, 10), 4)))
    expected = {0.5: 100 / 200, 1.0: 110 / 200, 2.5: 120 / 200, 4.99: 140 / 200, 5.0: 1.0}
    for tolerance, share in expected.items():
        hd95, nsd = surface_metrics(pred[None], target[None], 2, SPACING, nsd_tolerance_mm=tolerance)
        assert nsd[0, 1].item() == pytest.approx(share, abs=1e-6), tolerance
    assert hd95[0, 1].item() == pytest.approx(5.0, rel=1e-6)


def test_hd95_ignores_an_outlier_that_the_maximum_would_not():
    # 100 plate voxels agree; one stray predicted voxel lies 5 x 2.5 = 12.5 mm away: 1% of the boundary
    target = _volume((1, (slice(0, 10), slice(0, 10), 2)))
    pred = _volume((1, (slice(0, 10), slice(0, 10), 2)), (1, (0, 0, 7)))
    hd95, nsd = surface_metrics(pred[None], target[None], 2, SPACING, nsd_tolerance_mm=1.0)
    assert hd95[0, 1].item() == pytest.approx(0.0, abs=1e-6)
    assert nsd[0, 1].item() == pytest.approx(200 / 201)
    assert _directed_distances(pred.numpy() == 1, target.numpy() == 1, SPACING).max() == pytest.approx(12.5)


def test_hd95_of_two_offset_cubes_matches_scipy():
    target = _volume((1, (slice(2, 8), slice(2, 8), slice(2, 6))))
    pred = _volume((1, (slice(4, 10), slice(2, 8), slice(3, 7))))
    hd95, nsd = surface_metrics(pred[None], target[None], 2, SPACING, nsd_tolerance_mm=2.0)
    p, t = pred.numpy() == 1, target.numpy() == 1
    assert hd95[0, 1].item() == pytest.approx(_hd95_by_hand(p, t, SPACING), rel=1e-6)
    assert nsd[0, 1].item() == pytest.approx(_nsd_by_hand(p, t, SPACING, 2.0), rel=1e-6)
    # the offset is 2 voxels (2 mm) along x and 1 voxel (2.5 mm) along z: no boundary is further
    # than both offsets together, and some of it lies that far
    assert 2.0 < hd95[0, 1].item() <= math.hypot(2.0, 2.5) + 1e-6


def test_one_voxel_and_border_touching_structures_equal_monais_metric_classes():
    # (pred, target): one voxel found; one voxel a slice (2.5 mm) off; a block on three borders, grown by one voxel
    cases = [
        (_volume((1, (5, 5, 5))), _volume((1, (5, 5, 5)))),
        (_volume((1, (5, 5, 6))), _volume((1, (5, 5, 5)))),
        (_volume((1, (slice(0, 7), slice(0, 5), slice(0, 3)))), _volume((1, (slice(0, 6), slice(0, 5), slice(0, 3))))),
    ]
    pred, target = (torch.stack(side) for side in zip(*cases, strict=True))
    hd95, nsd = surface_metrics(pred, target, 2, SPACING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onehot = [one_hot(v[:, None], 2) for v in (pred, target)]
        monai_hd95 = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
        monai_nsd = SurfaceDiceMetric([1.0], include_background=False, reduction="none")
        monai_hd95, monai_nsd = (metric(*onehot, spacing=SPACING) for metric in (monai_hd95, monai_nsd))
    torch.testing.assert_close(hd95[:, 1], monai_hd95[:, 0].double())
    torch.testing.assert_close(nsd[:, 1], monai_nsd[:, 0].double())
    assert hd95[:, 1].tolist() == pytest.approx([0.0, 2.5, 1.0]) and nsd[:2, 1].tolist() == [1.0, 0.0]


# --------------------------------------------------------------------------------------------
# Edge cases: empty ground truth, empty prediction, both empty, a class absent, a class everywhere
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def edge_cases():
    cube = (slice(2, 6),) * 3
    other = (slice(7, 10),) * 3
    target = torch.stack([
        _volume((1, cube)),             # case 0: class 1 in both, class 2 in neither
        _volume((1, cube)),             # case 1: class 1 only in the ground truth ...
        torch.ones(12, 12, 12, dtype=torch.long),  # case 2: class 1 fills the volume in both
    ])
    pred = torch.stack([
        _volume((1, cube)),
        _volume((2, other)),            # ... class 2 only in the prediction
        torch.ones(12, 12, 12, dtype=torch.long),
    ])
    return pred, target


def test_ratio_metrics_are_nan_exactly_where_the_denominator_is_zero(edge_cases):
    pred, target = edge_cases
    counts = confusion_counts(pred, target, CLASSES)
    for metric, denominator in ((dice, lambda tp, fp, fn, tn: 2 * tp + fp + fn),
                                (sensitivity, lambda tp, fp, fn, tn: tp + fn),
                                (specificity, lambda tp, fp, fn, tn: tn + fp)):
        values = metric(counts)
        for case in range(3):
            for c in range(CLASSES):
                tp, fp, fn, tn = _counts_by_hand(pred[case].numpy(), target[case].numpy(), c)
                assert math.isnan(values[case, c]) == (denominator(tp, fp, fn, tn) == 0), (metric.__name__, case, c)
    nan = float("nan")
    torch.testing.assert_close(dice(counts)[:, 1:], torch.tensor([[1.0, nan], [0.0, 0.0], [1.0, nan]], dtype=torch.float64),
                               equal_nan=True)
    torch.testing.assert_close(sensitivity(counts)[:, 1:], torch.tensor([[1.0, nan], [0.0, nan], [1.0, nan]], dtype=torch.float64),
                               equal_nan=True)
    assert math.isnan(specificity(counts)[2, 1])  # class 1 everywhere: no negatives
    assert specificity(counts)[1, 2].item() == pytest.approx(1 - 27 / (12**3))


def test_surface_conventions_for_empty_classes_without_warnings(edge_cases):
    pred, target = edge_cases
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hd95, nsd = surface_metrics(pred, target, CLASSES, SPACING)
    assert [str(w.message) for w in caught] == []
    nan = float("nan")
    # rows: cases; columns: background, class 1, class 2
    expected_hd95 = torch.tensor([[nan, 0.0, nan],    # identical / both empty
                                  [nan, nan, nan],    # prediction empty / ground truth empty
                                  [nan, 0.0, nan]], dtype=torch.float64)
    expected_nsd = torch.tensor([[nan, 1.0, nan],
                                 [nan, 0.0, 0.0],
                                 [nan, 1.0, nan]], dtype=torch.float64)
    torch.testing.assert_close(hd95, expected_hd95, equal_nan=True)
    torch.testing.assert_close(nsd, expected_nsd, equal_nan=True)


def test_surface_metrics_options_and_input_checks(edge_cases):
    pred, target = edge_cases
    plain = surface_metrics(pred, target, CLASSES, SPACING)
    with_channel = surface_metrics(pred[:, None], target[:, None], CLASSES, SPACING)
    for a, b in zip(plain, with_channel, strict=True):
        torch.testing.assert_close(a, b, equal_nan=True)
    # one tolerance per foreground class, or per class with the background's ignored
    a = torch.zeros(1, 12, 12, 12, dtype=torch.long)
    b = a.clone()
    a[0, :10, :10, 2], a[0, :10, :10, 6] = 1, 2
    b[0, :10, :10, 4], b[0, :10, :10, 8] = 1, 2  # both classes 5 mm off
    _, nsd = surface_metrics(b, a, CLASSES, SPACING, nsd_tolerance_mm=[1.0, 5.0])
    assert nsd[0, 1:].tolist() == [0.0, 1.0]
    _, nsd = surface_metrics(b, a, CLASSES, SPACING, nsd_tolerance_mm=[123.0, 5.0, 1.0])
    assert nsd[0, 1:].tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="spacing must hold 3"):
        surface_metrics(pred, target, CLASSES, (1.0, 1.0))
    with pytest.raises(ValueError, match="one value per foreground class"):
        surface_metrics(pred, target, CLASSES, SPACING, nsd_tolerance_mm=[1.0])
    with pytest.raises(ValueError, match="same shape"):
        surface_metrics(pred, target[:, :5], CLASSES, SPACING)
    with pytest.raises(ValueError, match="outside 0..1"):
        surface_metrics(pred, target, 2, SPACING)


def test_foreground_mean_leaves_out_nan_and_background():
    values = torch.tensor([[0.0, 1.0, NAN],
                           [0.0, 0.5, 0.25],
                           [0.0, NAN, 0.75]], dtype=torch.float64)
    torch.testing.assert_close(foreground_mean(values), torch.tensor([0.75, 0.5], dtype=torch.float64))


def test_argmax_classes_is_torchs_argmax_ties_included():
    from medft.metrics import argmax_classes

    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (5, 9, 8, 7), generator=generator).float()  # many ties: the first class wins
    assert torch.equal(argmax_classes(scores), scores.argmax(0))
    probs = torch.softmax(torch.randn(3, 6, 6, 6, generator=generator), 0)
    assert torch.equal(argmax_classes(probs), probs.argmax(0)) and argmax_classes(probs).dtype == torch.int64


def test_confusion_counts_match_torchmetrics_stat_scores_case_by_case():
    from torchmetrics.functional.classification import multiclass_stat_scores

    generator = torch.Generator().manual_seed(1)
    pred, target = (torch.randint(0, CLASSES, (3, 10, 9, 8), generator=generator) for _ in range(2))
    scores = multiclass_stat_scores(pred.flatten(1), target.flatten(1), CLASSES, average=None,
                                    multidim_average="samplewise")  # tp, fp, tn, fn, support
    assert torch.equal(confusion_counts(pred, target, CLASSES), scores[..., [0, 1, 3, 2]])
    assert confusion_counts(pred[:0], target[:0], CLASSES).shape == (0, CLASSES, 4)


def _monai_whole_volume(pred: torch.Tensor, target: torch.Tensor, classes: int, spacing, tolerance: float):
    """MONAI's metric classes on the uncropped one-hot volumes: (hd95, nsd), (cases, classes - 1) float64."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onehot = [one_hot(v[:, None], classes) for v in (pred, target)]
        hd95 = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(*onehot, spacing=spacing)
        nsd = SurfaceDiceMetric([tolerance] * (classes - 1), include_background=False, reduction="none")(
            *onehot, spacing=spacing)
    return hd95.double(), nsd.double()


def test_surface_metrics_on_the_structures_region_equal_the_whole_volume_values():
    # scattered predictions far from the truth, structures on the volume's faces and corners, in a volume
    # much larger than the structures: the case that cropping to the structures' region could get wrong
    rng = np.random.default_rng(7)
    shape = (40, 36, 24)
    cases = []
    for _ in range(4):
        target = np.zeros(shape, dtype=np.int64)
        x, y, z = (rng.integers(0, s - 6) for s in shape)
        target[x:x + 6, y:y + 5, z:z + 4] = 1
        target[:4, -3:, rng.integers(0, 20):] = 2  # on three faces
        pred = np.where(rng.random(shape) < 0.92, target, 0)  # holes
        pred[rng.random(shape) < 0.0005] = 1  # specks anywhere, up to the far corners
        pred[-1, -1, -1] = 2
        cases.append((torch.from_numpy(pred), torch.from_numpy(target)))
    pred, target = (torch.stack(side) for side in zip(*cases, strict=True))
    spacing = (0.78, 0.78, 2.5)
    hd95, nsd = surface_metrics(pred, target, 3, spacing, nsd_tolerance_mm=1.5)
    whole_hd95, whole_nsd = _monai_whole_volume(pred, target, 3, spacing, 1.5)
    assert torch.equal(hd95[:, 1:], whole_hd95) and torch.equal(nsd[:, 1:], whole_nsd)
    assert (hd95[:, 1] > 5).all()  # the specks are far: the region is most of the volume, not the truth's box


def test_structure_region_is_the_bounding_box_grown_by_the_margin_within_the_volume():
    mask = torch.zeros(10, 8, 6, dtype=torch.bool)
    mask[3, 2:5, 5] = True
    mask[6, 4, 5] = True
    assert structure_region(mask) == (slice(2, 8), slice(1, 6), slice(4, 6))
    assert structure_region(mask, margin=3) == (slice(0, 10), slice(0, 8), slice(2, 6))
