"""One case loaded for viewing in the review app (no UI here).

The image (its first channel), the ground truth (when the case has one) and the prediction are
read through medft's loaders, so they are in RAS orientation with their voxel spacing kept, and
only the files that ``evaluation.json`` lists for the case id are read (``CaseTable.files``).
What is kept is plain numpy arrays and the voxel grid's affine: no metadata of the files (no
DICOM header field, no file name) leaves this module.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np

from medft.case_pictures import case_renderer, class_values, image_values
from medft.errors import DataError, MedftError
from medft.review.cases import CaseTable
from medft.review.store import evaluate_again
from medft.slices import PLANES, SliceRenderer, percentile_window, slice_count, voxel_spacing

AUTO_WINDOW = "Auto (MR: 1st-99th percentile)"
MANUAL_WINDOW = "Manual"
DISPLAY_PIXELS = 420  # the longest side of a displayed slice, in screen pixels, for small volumes
MAX_SCALE = 8.0
CT_AIR_HU = -500.0  # an image whose 1st percentile lies below this is taken for CT (air is -1000 HU)


@dataclass
class CaseVolumes:
    """A case ready to draw: arrays (x, y, z) in RAS, the grid's affine and a SliceRenderer."""

    case_id: str
    image: np.ndarray  # float32
    truth: np.ndarray | None  # int16 class indices, or None for a case without ground truth
    prediction: np.ndarray | None  # int16 class indices
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
    from medft.data.loading import geometry_mismatch, load_image, load_label

    changed = f"put back the files that were evaluated, or {evaluate_again(table.eval_dir)}"
    try:
        image = load_image(list(files.image), files.series_uid)
        maps = {}
        for name, path in (("ground truth", files.label), ("prediction", files.prediction)):
            if path is None:
                continue
            volume = load_label(path)
            mismatch = geometry_mismatch(image, volume, name)
            if mismatch:
                raise DataError(f"{mismatch}: the image or the {name} changed after the evaluation", changed,
                                file=path)
            maps[name] = volume
    except DataError as exc:
        raise exc.with_case(case_id) from None

    n_classes = max(len(table.class_names), 2)
    arrays = {name: _classes(volume, n_classes, name, case_id, changed, table.label_map if name == "ground truth" else {})
              for name, volume in maps.items()}
    affine = np.asarray(image.affine, dtype=np.float64).copy()
    first = image_values(image)
    sample = _sample(first)  # percentiles of a large volume from every n-th voxel: the same window, faster
    auto = percentile_window(sample)
    finite = sample[np.isfinite(sample)]
    looks_like_ct = bool(finite.size and np.percentile(finite, 1) < CT_AIR_HU)
    renderer = case_renderer(first, arrays.get("ground truth"), arrays.get("prediction"), affine, n_classes, auto,
                             display_scale(first.shape, voxel_spacing(affine)))
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


def _classes(volume, n_classes: int, name: str, case_id: str, fix: str, label_map: dict[int, int]) -> np.ndarray:
    """The volume's classes (its file values through ``label_map``); DataError for values outside them."""
    values = class_values(volume, label_map)
    if values.size and (values.min() < 0 or values.max() >= n_classes):
        raise DataError(
            f"the {name} holds values {int(values.min())}..{int(values.max())}, outside the {n_classes} classes "
            "of the evaluation: it changed after the evaluation", fix, case_id=case_id)
    return np.ascontiguousarray(values.astype(np.int16))


__all__ = ["AUTO_WINDOW", "MANUAL_WINDOW", "PLANES", "CaseVolumes", "display_scale", "load_case"]
