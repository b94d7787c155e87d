"""MONAI transform pipelines of training: sampling and augmentation; label values mapped to classes."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from monai.transforms import (
    MapLabelValue,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
    RandSpatialCropd,
    SpatialPadd,
)

KEYS = ("image", "label")


def map_label_values(labels: np.ndarray, label_map: dict[int, int]) -> np.ndarray:
    """A label file's values as the run's classes (``data.label_map``), as training maps
    them: for pictures drawn from the files themselves (report, review app)."""
    if not label_map:
        return labels
    return MapLabelValue(**label_pairs(label_map), dtype=labels.dtype)(labels)


def label_pairs(label_map: dict[int, int]) -> dict[str, list[int]]:
    """MONAI's MapLabelValue arguments for ``label_map``."""
    original = sorted(label_map)
    return {"orig_labels": original, "target_labels": [label_map[v] for v in original]}


def sampling(mode: str, spatial_size: Sequence[int], samples_per_volume: int = 1, foreground_ratio: float = 0.67) -> list:
    """Bring training volumes to spatial_size: the whole volume (padded, randomly cropped if larger) or patches."""
    size = list(spatial_size)
    steps: list = [SpatialPadd(keys=KEYS, spatial_size=size)]
    if mode == "whole":
        steps.append(RandSpatialCropd(keys=KEYS, roi_size=size, random_size=False))
    else:
        steps.append(RandCropByPosNegLabeld(
            keys=KEYS, label_key="label", spatial_size=size, pos=foreground_ratio, neg=1 - foreground_ratio,
            num_samples=samples_per_volume,
        ))
    return steps


def augmentation(preset: str, flip_axes: Sequence[int] = (0,), elastic: float = 0.0) -> list:
    """Augmentation presets. Each of ``flip_axes`` is mirrored on its own with probability 0.5;
    by default axis 0 only, left-right (volumes are in RAS): mirroring front-back or up-down
    moves structures such as the anterior hippocampus behind the posterior one, which the
    network must then tell apart by shape alone (nnU-Net mirrors all three axes).

    - ``light``: the flips;
    - ``standard``: + small rotations (up to 15 degrees) and scaling (0.9-1.1) in 30% of the
      samples, intensity scale and shift, mild noise;
    - ``strong``: the ranges nnU-Net trains with, for longer runs on more cases: rotations up to
      30 degrees and scaling 0.7-1.4 in 30% of the samples, noise, blur, brightness, gamma
      contrast and simulated low resolution.

    ``elastic``: with any preset but ``none``, the probability of a smooth 3D deformation
    (displacements of 1-2 voxels on average, Gaussian-smoothed over 5-7 voxels; the parts of a
    structure change volume by up to about a quarter, as scaling by 0.9-1.1 does).
    """
    if preset == "none":
        return []
    steps: list = [RandFlipd(keys=KEYS, prob=0.5, spatial_axis=axis) for axis in flip_axes]
    if elastic:
        steps.append(Rand3DElasticd(
            keys=KEYS, prob=elastic, sigma_range=(5, 7), magnitude_range=(100, 200),
            mode=("bilinear", "nearest"), padding_mode="zeros",
        ))
    if preset == "standard":
        steps += [
            RandAffined(
                keys=KEYS, prob=0.3, rotate_range=[np.pi / 12] * 3, scale_range=[0.1] * 3,
                mode=("bilinear", "nearest"), padding_mode="zeros",
            ),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
            RandGaussianNoised(keys="image", prob=0.2, std=0.05),
        ]
    elif preset == "strong":
        steps += [
            RandAffined(
                keys=KEYS, prob=0.3, rotate_range=[np.pi / 6] * 3, scale_range=[(-0.3, 0.4)] * 3,
                mode=("bilinear", "nearest"), padding_mode="zeros",
            ),
            RandGaussianNoised(keys="image", prob=0.1, std=0.1),
            RandGaussianSmoothd(keys="image", prob=0.2, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
            RandScaleIntensityd(keys="image", factors=0.25, prob=0.15),
            RandAdjustContrastd(keys="image", prob=0.3, gamma=(0.7, 1.5)),
            RandSimulateLowResolutiond(keys="image", prob=0.25, zoom_range=(0.5, 1.0)),
        ]
    return steps
