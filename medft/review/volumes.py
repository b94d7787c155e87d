"""One case loaded for viewing in the review app (no UI here).

The image (its first channel), the ground truth (when the case has one) and the prediction are
read through medft's loaders, so they are in RAS orientation with their voxel spacing kept, and
only the files that ``evaluation.json`` lists for the case id are read (``CaseTable.files``).
What is kept is plain numpy arrays and the voxel grid's affine: no metadata of the files (no
DICOM header field, no file name) leaves this module.

A NIfTI file is read with ``medft.data.loading.read_volume``: the voxels ``load_image`` and
``load_label`` give, in the file's data type and memory order (no float32 copy, no transposition),
and the three files of a case side by side in threads (decompressing a .nii.gz releases the GIL).
Only what the first picture needs is computed over the whole volume: the label maps checked
against the classes, the best slices, a strided sample for the automatic window; the renderer
windows each slice as it draws it. A DICOM series or an image in several files goes through
``load_image``.
"""
from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from medft.case_pictures import case_renderer, image_values
from medft.errors import DataError, MedftError
from medft.review.cases import CaseTable
from medft.review.store import evaluate_again
from medft.slices import PLANES, SliceRenderer, best_slice, percentile_window, slice_count, voxel_spacing

AUTO_WINDOW = "Auto (MR: 1st-99th percentile)"
MANUAL_WINDOW = "Manual"
DISPLAY_PIXELS = 420  # the longest side of a displayed slice, in screen pixels, for small volumes
MAX_SCALE = 8.0
CT_AIR_HU = -500.0  # an image whose 1st percentile lies below this is taken for CT (air is -1000 HU)
MAX_LOOKUP = 1 << 20  # label values spanning more than this are mapped value by value, not by a table


@dataclass
class CaseVolumes:
    """A case ready to draw: arrays (x, y, z) in RAS, the grid's affine and a SliceRenderer."""

    case_id: str
    image: np.ndarray  # as the file stores it (a NIfTI's data type; float32 for DICOM), any memory order
    truth: np.ndarray | None  # integer class indices, or None for a case without ground truth
    prediction: np.ndarray | None  # integer class indices
    affine: np.ndarray  # 4 x 4, RAS
    class_names: list[str]
    renderer: SliceRenderer = field(repr=False)
    auto_window: tuple[float, float] = (1.0, 0.5)  # (width, level)
    looks_like_ct: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return voxel_spacing(self.affine)

    @property
    def views(self) -> tuple[str, ...]:
        return self.renderer.views

    def slice_count(self, plane: str) -> int:
        return slice_count(self.shape, plane)

    def best_slice(self, plane: str, by: str = "error") -> int:
        """``SliceRenderer.best_slice``: counted once per plane and ``by`` (the viewer asks at every rerun)."""
        return self.renderer.best_slice(plane, by)

    def render(self, plane: str, index: int, view: str, window: tuple[float, float], opacity: float = 0.4,
               mode: str = "filled") -> np.ndarray:
        """RGB of one slice under ``window``. One renderer is shared by every session that shows
        the case (it is cached), so setting its window and drawing happen under one lock."""
        with self._lock:
            self.renderer.set_window(*window)
            return self.renderer.render(plane, index, view=view, opacity=opacity, mode=mode)


def load_case(table: CaseTable, case_id: str) -> CaseVolumes:
    """Load a case of the table for viewing; refuses ids outside it (UnknownCaseError)."""
    entry = table.get(case_id)
    files = table.files(case_id)
    if not entry.viewable or files.prediction is None:
        raise MedftError(f"case {case_id} has no prediction to review (status {entry.status})"
                         + (f": {entry.message}" if entry.message else ""))
    if not files.prediction.is_file():  # medft evaluate wrote it; it is not in the manifest
        raise DataError("the prediction of this case is missing from the evaluation folder",
                        evaluate_again(table.eval_dir), file=files.prediction, case_id=case_id)
    from medft.data.loading import grid_mismatch

    changed = f"put back the files that were evaluated, or {evaluate_again(table.eval_dir)}"
    n_classes = max(len(table.class_names), 2)
    labels = {name: path for name, path in (("ground truth", files.label), ("prediction", files.prediction))
              if path is not None}
    try:
        with ThreadPoolExecutor(max_workers=1 + len(labels), thread_name_prefix="medft-review-read") as pool:
            reading = pool.submit(_read_image, files.image, files.series_uid)
            truth = _LabelSource(files.image, files.series_uid, table.label_map, table.segment_names)
            label_reads = {name: pool.submit(_read_classes, path, n_classes, name, case_id, changed,
                                             truth if name == "ground truth" else _LabelSource())
                           for name, path in labels.items()}
            best = _first_best_slices(label_reads)  # while the image is still being read
            first, affine = reading.result()  # the image's errors first, then each label map's, as before
            arrays = {}
            for name, read in label_reads.items():
                volume, label_affine, classes = read.result()
                mismatch = grid_mismatch((first.shape, affine), (volume.shape, label_affine), name)
                if mismatch:
                    raise DataError(f"{mismatch}: the image or the {name} changed after the evaluation", changed,
                                    file=labels[name])
                if isinstance(classes, DataError):
                    raise classes
                arrays[name] = classes
    except DataError as exc:
        raise exc.with_case(case_id) from None

    affine = np.asarray(affine, dtype=np.float64).copy()
    # percentiles of a large volume from every n-th voxel: the same window, faster; float32, as the loaders give
    sample = _sample(first).astype(np.float32)
    auto = percentile_window(sample)
    finite = sample[np.isfinite(sample)]
    looks_like_ct = bool(finite.size and np.percentile(finite, 1) < CT_AIR_HU)
    renderer = case_renderer(first, arrays.get("ground truth"), arrays.get("prediction"), affine, n_classes, auto,
                             display_scale(first.shape, voxel_spacing(affine)), best)
    return CaseVolumes(case_id=case_id, image=first, truth=arrays.get("ground truth"),
                       prediction=arrays.get("prediction"), affine=affine, class_names=list(table.class_names),
                       renderer=renderer, auto_window=auto, looks_like_ct=looks_like_ct)


def display_scale(shape, spacing, pixels: int = DISPLAY_PIXELS) -> float:
    """The magnification that makes the largest slice of a small volume about ``pixels`` wide.

    Large volumes (CT, 512 pixels) are never shrunk; small crops are magnified (at most 8x).
    """
    finest = min(float(s) for s in spacing)
    extent = max(int(n) * float(s) / finest for n, s in zip(shape, spacing, strict=True))
    return float(min(MAX_SCALE, max(1.0, math.floor(pixels / extent * 4) / 4)))


def _sample(volume: np.ndarray, most: int = 2_000_000) -> np.ndarray:
    step = max(1, math.ceil((volume.size / most) ** (1 / 3)))
    return volume[::step, ::step, ::step]


def _read_image(paths, series_uid: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The image's first channel (x, y, z) in RAS and its affine: a NIfTI file as stored (``read_volume``),
    else (a DICOM series, channels in several files) float32 from ``load_image``."""
    from medft.data.loading import load_image, read_volume

    paths = list(paths)
    if len(paths) == 1 and not paths[0].is_dir():
        return read_volume(paths[0])
    image = load_image(paths, series_uid)
    return image_values(image), np.asarray(image.affine, dtype=np.float64)


@dataclass(frozen=True)
class _LabelSource:
    """What reading a label map needs besides its path: the case's image (on whose DICOM series a DICOM SEG or
    RTSTRUCT lies), the file values' classes (``label_map``) and the segment names of the classes."""

    image: tuple = ()
    series_uid: str | None = None
    label_map: dict = field(default_factory=dict)
    segment_names: dict = field(default_factory=dict)


def _read_classes(path, n_classes: int, name: str, case_id: str, fix: str, source: _LabelSource):
    """(voxels as stored, RAS affine, classes or the DataError that refuses them) of a label map: the
    refusal waits until the label map is known to lie on the image's grid. A DICOM SEG or RTSTRUCT is
    read as evaluate read it (``load_label``)."""
    from medft.data.dicom_labels import dicom_label_kind
    from medft.data.loading import dicom_source, load_label, read_volume

    if path.is_file() and dicom_label_kind(path):
        label = load_label(path, series=dicom_source(source.image, source.series_uid), segments=source.segment_names)
        volume, affine = label.numpy()[0], np.asarray(label.affine, dtype=np.float64)
    else:
        volume, affine = read_volume(path, label=True)
    try:
        return volume, affine, _classes(volume, n_classes, name, case_id, fix, source.label_map)
    except DataError as exc:
        return volume, affine, exc


def _first_best_slices(label_reads: dict) -> dict[tuple[str, str], int]:
    """The axial slices the first picture and its buttons need, ``SliceRenderer.best_slice`` of the label
    maps being read; {} when one of them failed (its error is raised in turn)."""
    read = {name: future.result() for name, future in label_reads.items() if future.exception() is None}
    classes = [c for _, _, c in read.values() if not isinstance(c, DataError)]
    if len(classes) != len(label_reads) or len({c.shape for c in classes}) != 1:
        return {}
    truth = read["ground truth"][2] if "ground truth" in read else None
    prediction = read["prediction"][2]
    by_label = best_slice(truth, prediction, "axial", "label")
    by_error = best_slice(truth, prediction, "axial", "error") if truth is not None else by_label
    return {("axial", "label"): by_label, ("axial", "error"): by_error}


def _classes(volume: np.ndarray, n_classes: int, name: str, case_id: str, fix: str,
             label_map: dict[int, int]) -> np.ndarray:
    """The label map's classes (its file values rounded, through ``label_map``: ``class_values``); DataError for
    values outside them. A map of integers stays as stored (no copy without a label_map)."""
    from medft.data.transforms import map_label_values

    if volume.dtype == np.bool_:
        volume = volume.view(np.uint8)
    if volume.dtype.kind in "iu":
        values = _map_integers(volume, label_map) if label_map else volume
    else:
        values = map_label_values(np.rint(volume.astype(np.float32)), label_map)
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if low < 0 or high >= n_classes:
        raise DataError(
            f"the {name} holds values {low}..{high}, outside the {n_classes} classes "
            "of the evaluation: it changed after the evaluation", fix, case_id=case_id)
    return values if values.dtype.kind in "iu" else values.astype(np.int16)


def _map_integers(volume: np.ndarray, label_map: dict[int, int]) -> np.ndarray:
    """``map_label_values`` of integer voxels by one table lookup, the memory order kept."""
    from medft.data.transforms import map_label_values

    low, high = (int(volume.min()), int(volume.max())) if volume.size else (0, 0)
    if high - low > MAX_LOOKUP:
        return map_label_values(volume.astype(np.int64), label_map)
    table = np.arange(low, high + 1, dtype=np.int64)
    for value, target in label_map.items():
        if low <= value <= high:
            table[value - low] = target
    table = table.astype(np.result_type(np.min_scalar_type(int(table.min())), np.min_scalar_type(int(table.max()))))
    index = volume if low == 0 else volume.astype(np.int64) - low
    out = np.empty_like(volume, dtype=table.dtype)
    np.take(table, index, out=out, mode="clip")
    return out


__all__ = ["AUTO_WINDOW", "MANUAL_WINDOW", "PLANES", "CaseVolumes", "display_scale", "load_case"]
