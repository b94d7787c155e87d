"""How much memory a case takes once preprocessed, estimated from its files' headers (no voxels read).

The volume in mm^3 does not change with resampling, so a case resampled to the spacing of a
``Spacingd`` step holds about (voxels x voxel volume) / (target voxel volume) voxels, whatever
the axes' order. Images are float32 per channel; labels take the smallest integer type that holds
the classes (``label_itemsize``). Steps other than resampling (crops, resizing) are not modelled:
the estimate is that of the resampled volume.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medft.data.dicom import scan_folder, select_series
from medft.data.preprocessing import Preprocessing

IMAGE_ITEMSIZE = 4  # float32


@dataclass(frozen=True)
class Footprint:
    """A case's voxels and voxel volume as stored, and its image channels."""

    voxels: int
    voxel_mm3: float
    channels: int

    def resampled_voxels(self, target_mm: list[float] | None) -> int:
        if not target_mm:
            return self.voxels
        return max(1, round(self.voxels * self.voxel_mm3 / math.prod(target_mm)))


def label_itemsize(classes: int) -> int:
    """Bytes per label voxel: uint8 up to 256 classes, int16 above."""
    return 1 if classes <= 256 else 2


def label_dtype(classes: int) -> torch.dtype:
    return torch.uint8 if classes <= 256 else torch.int16


def target_spacing(preprocessing: Preprocessing) -> list[float] | None:
    """The spacing (mm) the last resampling step of ``preprocessing`` makes; None when no step resamples."""
    spacing = None
    for step in preprocessing.steps:
        if str(step.get("_target_", "")).split(".")[-1] in ("Spacingd", "Spacing") and step.get("pixdim") is not None:
            pixdim = step["pixdim"]
            spacing = [float(p) for p in (pixdim if isinstance(pixdim, (list, tuple)) else [pixdim] * 3)]
    return spacing


def case_bytes(record: dict, preprocessing: Preprocessing, classes: int, label_on_image_grid: bool = True) -> int:
    """Estimated bytes of a case after ``preprocessing``: its image channels as float32 and, when it has a label,
    the label in the smallest integer type, on the image's new grid (training) or on its file's (validation)."""
    target = target_spacing(preprocessing)
    image = footprint(record["image"], record.get("series_uid"))
    total = image.resampled_voxels(target) * image.channels * IMAGE_ITEMSIZE
    if record.get("label"):
        label = footprint([record["label"]])
        voxels = image.resampled_voxels(target) if label_on_image_grid else label.voxels
        total += voxels * label_itemsize(classes)
    return total


def estimate_sizes(cases: list[dict], preprocessing: Preprocessing, classes: int, label_on_image_grid: bool = True) -> list[int]:
    """``case_bytes`` of each case; 0 for one whose headers cannot be read (loading it names the problem)."""
    sizes = []
    for case in cases:
        try:
            sizes.append(case_bytes(case, preprocessing, classes, label_on_image_grid))
        except Exception:  # the file's problem is reported, with its fix, when the case loads or is checked
            sizes.append(0)
    return sizes


def footprint(paths: list, series_uid: str | None = None) -> Footprint:
    """The footprint of an image (one file per channel, or a DICOM series folder) from its headers."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1 and paths[0].is_dir():
        return _dicom_footprint(paths[0], series_uid)
    header = nib.load(paths[0]).header
    shape = header.get_data_shape()
    zooms = header.get_zooms()[:3]
    channels = len(paths) * (int(np.prod(shape[3:])) if len(shape) > 3 else 1)
    return Footprint(int(np.prod(shape[:3])), float(np.prod(zooms)) or 1.0, channels)


def _dicom_footprint(folder: Path, series_uid: str | None) -> Footprint:
    series = select_series(scan_folder(folder), series_uid)
    first, slices = series.headers[0], len(series.files)
    try:
        row_mm, column_mm = (float(v) for v in first.PixelSpacing)
        normal = np.cross(*np.reshape(np.asarray(first.ImageOrientationPatient, dtype=float), (2, 3)))
        depths = [float(normal @ np.asarray(ds.ImagePositionPatient, dtype=float)) for ds in series.headers]
        gap = max(depths) - min(depths)
        slice_mm = gap / (slices - 1) if slices > 1 and gap > 0 else float(first.get("SliceThickness", 1.0) or 1.0)
        voxel_mm3 = row_mm * column_mm * slice_mm
    except (AttributeError, TypeError, ValueError):  # placement tags missing: check-data names them
        voxel_mm3 = 1.0
    return Footprint(series.rows * series.columns * slices, voxel_mm3, 1)
