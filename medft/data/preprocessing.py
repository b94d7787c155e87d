"""A model's deterministic preprocessing: the inputs it was trained on, given to it again, and undone.

A case is loaded by medft (``LoadCased``: NIfTI files or a DICOM series, channels first), then the
model's *steps* run on its image: MONAI transforms recorded as config components on the key
``image`` (``{"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], ...}``). The
steps come from a bundle's own config (``source: bundle``, see ``medft.bundle.preprocessing``) or
from the run config (``source: medft``: ``data.spacing`` and ``data.intensity``).

- Training: the label follows the image onto the grid the steps made (nearest neighbour), so
  patches, ``spatial_size`` and the loss live in the preprocessed space.
- Inference: the label stays on the grid of its file; a prediction made in the preprocessed space
  is brought back onto that grid by inverting the spatial steps (MONAI's ``Invertd``), so metrics,
  prediction files, the report and the review app are on the voxels of the file the user gave.

One writer and one reader of the recorded form: ``to_dict`` and ``from_dict``.
"""
from __future__ import annotations

import copy
import functools
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, InvertibleTransform, MapLabelValued, Orientation, ResampleToMatch, Transform

from medft.components import IMPORTS, bundle_imports
from medft.data.loading import LoadCased, load_image
from medft.data.transforms import label_pairs
from medft.errors import MedftError, one_line

SOURCES = ("bundle", "medft")
INTENSITIES = ("zscore", "nonzero_zscore", "ct_window", "percentiles", "none")
DEFAULT_PERCENTILES = (0.5, 99.5)
_IMAGE, _LABEL = "image", "label"


@dataclass
class Preprocessing:
    """The deterministic steps between a loaded case and the network's input."""

    source: str  # "bundle": a bundle's own steps, replayed; "medft": data.spacing and data.intensity
    steps: list[dict]  # MONAI transform components on the key "image", in order
    reorient: bool = True  # medft's loader brings images to RAS first; a bundle's steps run on images as loaded
    imports: list[str] = field(default_factory=list)  # the bundle's own "$import ..." lines its steps need
    code_root: str | None = None  # the bundle folder whose scripts/ package its steps may import
    origin: str = ""  # where a bundle's steps were read: configs/inference.json#preprocessing

    @classmethod
    def medft(cls, spacing: Sequence[float] | None = None, intensity: str = "zscore",
              intensity_range: Sequence[float] | None = None) -> Preprocessing:
        """medft's own pipeline: RAS, then resampling to ``spacing`` (mm per RAS axis), then ``intensity``."""
        steps: list[dict] = []
        if spacing is not None:
            steps.append({"_target_": "Spacingd", "keys": _IMAGE, "pixdim": [float(s) for s in spacing], "mode": "bilinear"})
        steps += _intensity_steps(intensity, intensity_range)
        return cls("medft", steps, reorient=True)

    # --- the recorded form ----------------------------------------------------------------------

    def to_dict(self, public: bool = False) -> dict:
        """JSON for run folders, checkpoints and evaluation.json (``public``: without the bundle's folder)."""
        data = {"source": self.source, "origin": self.origin, "reorient_to_ras": self.reorient,
                "imports": list(self.imports), "steps": [dict(step) for step in self.steps]}
        if not public:
            data["code_root"] = self.code_root
        return data

    @classmethod
    def from_dict(cls, data: dict, where: str = "") -> Preprocessing:
        try:
            source, steps = data["source"], data["steps"]
            if source not in SOURCES or not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
                raise ValueError
            return cls(source, [dict(s) for s in steps], bool(data.get("reorient_to_ras", True)),
                       list(data.get("imports", [])), data.get("code_root"), str(data.get("origin", "")))
        except (KeyError, TypeError, ValueError):
            raise MedftError(f"{where or 'preprocessing'}: not a preprocessing record medft wrote (source, steps). "
                             "Fix: give the run or bundle folder as medft wrote it") from None

    def describe(self) -> list[str]:
        """One line per step, as ``medft bundle inspect`` and train.log show them."""
        lines = ["load: NIfTI or DICOM series, channels first" + (", reoriented to RAS" if self.reorient else ", as stored")]
        for step in self.steps:
            args = ", ".join(f"{k}={_shortened(v)}" for k, v in step.items() if k not in ("_target_", "keys"))
            lines.append(f"{step['_target_']}({args})")
        return lines

    # --- pipelines ------------------------------------------------------------------------------

    @functools.cached_property
    def compose(self) -> Compose:
        """The steps, built once: an inversion needs the very transform instances that ran."""
        from monai.bundle import ConfigParser

        config = {"imports": list(IMPORTS) + [i for i in self.imports if i not in IMPORTS], "steps": self.steps}
        with bundle_imports(self.code_root), warnings.catch_warnings():
            # MONAI's notice to bundle authors that Orientation's default labels will follow the image's space: RAS
            # for the images medft loads, the same axes as the labels it defaults to now; nothing a user can act on
            warnings.filterwarnings("ignore", message=r".*Orientation.*labels", category=FutureWarning)
            try:
                transforms = ConfigParser(config).get_parsed_content("steps")
            except Exception as error:
                raise MedftError(f"cannot build the preprocessing steps {[s.get('_target_') for s in self.steps]} "
                                 f"({one_line(error)}). Fix: install the MONAI version the model was made with") from None
        return Compose(transforms)

    def training(self, label_map: dict[int, int] | None = None, segments: Mapping[int, Sequence[str]] | None = None) -> list:
        """Load, remap label values, run the steps; the label follows the image onto its new grid."""
        return [*self.loading(label_map, segments), *self.compose.transforms, LabelOnImageGrid()]

    def inference(self, label_map: dict[int, int] | None = None, segments: Mapping[int, Sequence[str]] | None = None) -> list:
        """Load, remap label values, run the steps on the image; the label stays on its file's grid."""
        return [*self.loading(label_map, segments), *self.compose.transforms]

    def loading(self, label_map: dict[int, int] | None = None, segments: Mapping[int, Sequence[str]] | None = None) -> list:
        """Load a case (to RAS when ``reorient``; DICOM SEG and RTSTRUCT labels by ``segments``, the manifest's
        ``segment_names``) and remap its label values: the steps before ``compose``."""
        steps: list = [LoadCased(reorient=self.reorient, segments=segments)]
        if label_map:
            steps.append(MapLabelValued(keys=_LABEL, **label_pairs(label_map), allow_missing_keys=True))
        return steps

    def to_input_grid(self, values: torch.Tensor, image: MetaTensor) -> MetaTensor:
        """``values`` (C, ...) computed on the preprocessed ``image``, brought back onto the grid the image was
        loaded on (probabilities: linear interpolation, as a bundle's ``Invertd`` with nearest_interp false)."""
        if not any(isinstance(t, InvertibleTransform) for t in self.compose.transforms):
            return MetaTensor(values, meta=copy.deepcopy(image.meta))  # no step moved the grid
        inverted = Invertd(keys="pred", transform=self.compose, orig_keys=_IMAGE, nearest_interp=False)(
            {_IMAGE: image, "pred": MetaTensor(values)})
        return inverted["pred"]


def _shortened(value, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit - 5] + " ...}" if isinstance(value, dict) else text[:limit - 4] + " ..."


def _intensity_steps(intensity: str, intensity_range: Sequence[float] | None) -> list[dict]:
    if intensity == "zscore":
        return [{"_target_": "NormalizeIntensityd", "keys": _IMAGE, "channel_wise": True}]
    if intensity == "nonzero_zscore":
        return [{"_target_": "NormalizeIntensityd", "keys": _IMAGE, "nonzero": True, "channel_wise": True}]
    if intensity == "ct_window":
        low, high = intensity_range
        return [{"_target_": "ScaleIntensityRanged", "keys": _IMAGE, "a_min": float(low), "a_max": float(high),
                 "b_min": 0.0, "b_max": 1.0, "clip": True}]
    if intensity == "percentiles":
        low, high = intensity_range or DEFAULT_PERCENTILES
        return [{"_target_": "ScaleIntensityRangePercentilesd", "keys": _IMAGE, "lower": float(low), "upper": float(high),
                 "b_min": 0.0, "b_max": 1.0, "clip": True, "channel_wise": True}]
    return []


class LabelOnImageGrid(Transform):
    """Training: put the label on the grid the steps gave the image (nearest neighbour, background outside),
    when they changed it: a bundle's inference steps name the image only."""

    def __call__(self, data: dict) -> dict:
        label, image = data.get(_LABEL), data[_IMAGE]
        if label is None or same_grid(label, image):
            return data
        data = dict(data)
        turned = _reoriented_like(label, image)  # the steps only reoriented the image: no resampling
        data[_LABEL] = turned if turned is not None else ResampleToMatch(mode="nearest", padding_mode="zeros")(
            label, img_dst=image)
        return data


def _reoriented_like(label: MetaTensor, image: MetaTensor) -> MetaTensor | None:
    """``label`` in the axis order of ``image`` when that puts it on the image's grid, else None."""
    axcodes = "".join(nib.orientations.aff2axcodes(np.asarray(image.affine, dtype=np.float64)))
    turned = Orientation(axcodes=axcodes, labels=(("L", "R"), ("P", "A"), ("I", "S")))(label)
    return turned if same_grid(turned, image) else None


def same_grid(one: MetaTensor, other: MetaTensor) -> bool:
    return tuple(one.shape[1:]) == tuple(other.shape[1:]) and np.allclose(
        np.asarray(one.affine, dtype=np.float64), np.asarray(other.affine, dtype=np.float64), atol=1e-6)


def case_spacing(record: dict, reorient: bool = True) -> list[float]:
    """A case's voxel spacing in mm per axis as the steps see it (RAS axes when ``reorient``), from a
    NIfTI header without reading its voxels, or from the loaded DICOM series."""
    paths = [Path(p) for p in record[_IMAGE]]
    if len(paths) == 1 and paths[0].is_dir():
        affine = np.asarray(load_image(paths, record.get("series_uid"), reorient=reorient).affine, dtype=np.float64)
        return [float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)]
    affine = nib.load(paths[0]).affine
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    if not reorient:
        return [float(s) for s in zooms]
    ras = [0.0, 0.0, 0.0]
    for axis, (world, _) in enumerate(nib.orientations.io_orientation(affine)):
        ras[int(world)] = float(zooms[axis])
    return ras


def median_spacing(records: list[dict], reorient: bool = True) -> list[float]:
    """nnU-Net's target spacing: the median of the cases' spacings, per axis (rounded to 0.01 mm)."""
    spacings = [case_spacing(record, reorient) for record in records]
    return [round(statistics.median(axis), 2) for axis in zip(*spacings, strict=True)]
