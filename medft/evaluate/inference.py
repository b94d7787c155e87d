"""Load a trained model (a run folder, a bundle, or an adapter on its parent bundle) and predict cases with a sliding window.

Predictions are computed on the preprocessed image, like training, brought back onto the grid the
image was loaded on (``Preprocessing.to_input_grid``) and written in the geometry of the input
image (its affine and axis order as stored), so they overlay the input in any NIfTI viewer.
"""
from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from monai.transforms import Compose

from medft.bundle.preprocessing import bundle_preprocessing
from medft.bundle.reader import CLASS_COUNT_KEYS, load_bundle
from medft.data.loading import to_native
from medft.data.preprocessing import Preprocessing
from medft.errors import DataError, MedftError
from medft.formats import adapter as adapter_folder
from medft.formats import run as run_folder
from medft.formats.checkpoint import candidates, find_checkpoint, read_checkpoint
from medft.formats.evaluation import ModelInfo
from medft.sliding_window import sw_batch_size
from medft.train.network import to_channels_last

log = logging.getLogger("medft.evaluate")
DEFAULT_ROI = [96, 96, 96]


@dataclass
class TrainedModel:
    """A network ready for inference, with the preprocessing it was trained with."""

    network: torch.nn.Module
    class_names: list[str]
    roi_size: list[int]
    preprocessing: Preprocessing
    label_map: dict[int, int] = field(default_factory=dict)
    overlap: float = 0.25
    sw_batch_size: int | None = None  # windows per forward pass; None: automatic, which load_model resolves for its device
    info: ModelInfo | None = None  # what evaluation.json records of the model
    flip_axes: tuple[int, ...] = (0,)  # the axes its training mirrored: test-time augmentation's
    blend_mode: str = "gaussian"  # how overlapping windows are averaged: a bundle's inferer may say constant

    def preprocess(self) -> Compose:
        """Load a case and preprocess its image; the label stays on its file's grid."""
        return Compose(self.preprocessing.inference(self.label_map))

    @property
    def in_channels(self) -> int | None:
        """Input channels of the network's first convolution (None when it has none)."""
        convs = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
        return next((m.in_channels for m in self.network.modules() if isinstance(m, convs)), None)


def check_channels(expected: int | None, image: torch.Tensor, source: Path | str) -> None:
    """DataError naming ``source`` when the image's channels differ from ``expected``, the network's input channels
    (``TrainedModel.in_channels``; None: not known, not checked)."""
    if expected is not None and image.shape[0] != expected:
        raise DataError(
            f"the image has {image.shape[0]} channel(s) but the network takes {expected}",
            f"give images with the {expected} channel(s) the model was trained on, or a model trained with "
            f"model.in_channels={image.shape[0]}",
            file=source,
        )


def load_model(path: str | Path, device: torch.device | None = None, checkpoint: str = "best",
               parent: str | Path | None = None) -> TrainedModel:
    """A run folder (config.yaml + checkpoints/best.pt, else last.pt), a bundle folder, or an adapter folder
    (``medft export --adapter``: adapter.json) on its parent bundle: the one adapter.json names, or ``parent``.

    ``checkpoint="last"`` takes a run's last.pt: the final model of a fixed budget, rather than
    the one picked on the validation split (whose Dice on that split is optimistic); a bundle,
    with one set of weights, refuses it.

    The sliding windows per forward pass are the run's validation.sw_batch_size or the bundle inferer's; when
    neither gives them, they are picked for ``device`` (``medft.sliding_window.sw_batch_size``)."""
    if checkpoint not in ("best", "last"):
        raise MedftError(f"checkpoint {checkpoint!r}: expected best or last")
    path = Path(path)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not path.is_dir():
        raise MedftError(
            f"{path}: {'not a folder' if path.exists() else 'no such folder'}. Fix: give the run folder that "
            "`medft train` wrote, the bundle or adapter folder that `medft export` wrote, or a Model Zoo bundle folder"
        )
    is_adapter = adapter_folder.is_adapter_folder(path)
    if parent is not None and not is_adapter:
        raise MedftError(f"{path}: --parent names the parent bundle of an adapter folder (adapter.json), and this is "
                         "none: it holds its whole network. Fix: leave out --parent")
    if is_adapter:
        if checkpoint == "last":
            raise MedftError(f"{path}: --checkpoint last applies to a run folder, and this adapter holds one set of "
                             "weights. Fix: leave out --checkpoint, or export the run's last checkpoint")
        model = _from_adapter(path, parent)
    elif run_folder.is_run_folder(path):
        model = _from_run(path, checkpoint)
    elif (path / "configs").is_dir():
        if checkpoint == "last":
            raise MedftError(
                f"{path}: --checkpoint last applies to a run folder, and this is a bundle: it holds one set of weights "
                "(models/model.pt). Fix: leave out --checkpoint to evaluate the bundle, or give the run folder that "
                "`medft train` wrote to evaluate its last checkpoint"
            )
        model = _from_bundle(path)
    else:
        raise MedftError(
            f"{path}: neither a run folder (config.yaml, checkpoints/) nor a bundle folder (configs/, models/). "
            "Fix: give the folder that `medft train` or `medft export` wrote, or a Model Zoo bundle folder"
        )
    model.network.to(device).eval()
    window = [model.in_channels or 1, *model.roi_size]  # one channel for a network without convolutions
    model.sw_batch_size = sw_batch_size(model.sw_batch_size, model.network, window, device, amp=device.type == "cuda")
    return model


def _from_run(run_dir: Path, checkpoint: str = "best") -> TrainedModel:
    config = run_folder.read_config(run_dir)
    checkpoint_path = find_checkpoint(run_dir, checkpoint)
    if checkpoint_path is None:
        if (run_dir / run_folder.INTERPOLATION).is_file():
            raise MedftError(
                f"{run_dir}: written by `medft interpolate`, it holds one set of weights (checkpoints/best.pt), no "
                f"{checkpoint} checkpoint. Fix: leave out --checkpoint {checkpoint}"
            )
        names = candidates(checkpoint)
        raise MedftError(
            f"{run_dir}: no checkpoint yet (checkpoints/{' or '.join(names)}): the run has not finished an epoch. "
            f"Fix: train it (`medft train {run_dir / run_folder.CONFIG} --out {run_dir} --resume`), or give another run folder"
        )
    checkpoint = read_checkpoint(checkpoint_path)
    if config.model.bundle:  # rebuild through the bundle: its network_def may refer to its config or scripts/
        bundle = load_bundle(config.model.bundle, version=config.model.bundle_version)
        channels = {k: checkpoint.network_def[k] for k in (*CLASS_COUNT_KEYS, "in_channels") if k in checkpoint.network_def}
        network = bundle.build_network({**config.model.network_overrides, **channels})
    else:
        from medft.bundle.reader import build_network

        network = build_network(checkpoint.network_def, source=str(checkpoint_path))
    network.load_state_dict(checkpoint.model)
    preprocessing = Preprocessing.from_dict(checkpoint.preprocessing, str(checkpoint_path))
    info = ModelInfo(path=str(run_dir), kind="run", name=_run_name(run_dir), checkpoint=checkpoint_path.name)
    return _trained(network, config, list(checkpoint.class_names), preprocessing, info)


def _from_adapter(folder: Path, parent: str | Path | None) -> TrainedModel:
    from medft.train.adapter_export import load_adapter

    loaded = load_adapter(folder, parent)
    preprocessing = run_folder.read_preprocessing(folder)
    if preprocessing is None:
        raise MedftError(f"{folder}: no {run_folder.PREPROCESSING}. Fix: export the adapter again "
                         "(`medft export RUN --out NEW_DIR --adapter`)")
    info = ModelInfo(path=str(folder), kind="adapter", name=_run_name(folder), checkpoint=loaded.info.checkpoint,
                     parent=loaded.parent.name, parent_version=loaded.parent.version)
    return _trained(loaded.network, loaded.config, list(loaded.info.class_names), preprocessing, info)


def _trained(network: torch.nn.Module, config, class_names: list[str], preprocessing: Preprocessing,
             info: ModelInfo) -> TrainedModel:
    """A run's network (or an adapter's on its parent) with the run config's inference settings."""
    if config.train.channels_last:
        to_channels_last(network, len(config.data.spatial_size))
    return TrainedModel(
        network, class_names, list(config.data.spatial_size), preprocessing,
        dict(config.data.label_map), config.validation.overlap, config.validation.sw_batch_size,
        info, tuple(config.data.mirrored_axes),
    )


def _run_name(run_dir: Path) -> str:
    """A run's name for reports and the review app: its folder's own name, never a parent's (a folder
    may be named after a patient or a project)."""
    return Path(os.path.abspath(run_dir)).name  # as given: a symbolic link keeps its own name; "." its folder's


def _from_bundle(root: Path) -> TrainedModel:
    bundle = load_bundle(root)
    network = bundle.build_network()
    try:
        network.load_state_dict(bundle.pretrained_state_dict())
    except RuntimeError as exc:
        raise MedftError(f"{root}: the weights do not fit the bundle's network_def ({str(exc).splitlines()[0]})") from None
    preprocessing = bundle_preprocessing(bundle)
    log.info("%s: replaying its preprocessing (%s):\n  %s", bundle.name, preprocessing.origin,
             "\n  ".join(preprocessing.describe()))
    medft_info = bundle.metadata.get("medft") or {}
    names = medft_info.get("class_names") or _channel_names(bundle)
    prep = medft_info.get("preprocessing") or {}
    if "flip_axes" not in prep:
        log.warning("%s was not exported by medft: --tta mirrors left-right only (the axes its training mirrored are "
                    "not recorded)", root)
    roi = prep.get("spatial_size") or _inferer_arg(bundle, "roi_size", _is_size) or bundle.input_spatial_shape or DEFAULT_ROI
    overlap = _inferer_arg(bundle, "overlap", lambda v: _is_number(v) and 0 <= v < 1)
    configured_windows = _inferer_arg(bundle, "sw_batch_size", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0)
    label_map = {int(k): int(v) for k, v in (prep.get("label_map") or {}).items()}
    return TrainedModel(
        network, names, list(roi), preprocessing, label_map,
        float(0.25 if overlap is None else overlap), configured_windows,
        ModelInfo(path=str(root), kind="bundle", name=bundle.name, version=bundle.version),
        tuple(prep.get("flip_axes", (0,))), _blend_mode(bundle),
    )


def _blend_mode(bundle) -> str:
    """The bundle inferer's ``mode`` (MONAI's default, constant, when it gives none); gaussian without an inferer."""
    if not isinstance(bundle.config.get("inferer"), dict):
        return "gaussian"
    return _inferer_arg(bundle, "mode", lambda v: v in ("constant", "gaussian")) or "constant"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_size(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)


def _inferer_arg(bundle, key: str, valid) -> object | None:
    """``bundle.inferer_arg(key)`` when it is ``valid``, else None."""
    value = bundle.inferer_arg(key)
    return value if valid(value) else None


def _channel_names(bundle) -> list[str]:
    names = bundle.class_names or {}
    count = bundle.out_channels or (max(names) + 1 if names else 2)
    return [names.get(i, f"class {i}") for i in range(count)]


def predict(model: TrainedModel, image: MetaTensor, tta: bool = False) -> torch.Tensor:
    """Class probabilities (C, x, y, z) for a preprocessed image (channels, x, y, z), on its grid.

    With ``tta`` the probabilities are averaged over the image and its mirror images along every
    combination of the axes the model was trained to mirror (``model.flip_axes``): 2 predictions
    for left-right only, 8 for all three axes.
    """
    device = next(model.network.parameters()).device
    inferer = SlidingWindowInferer(roi_size=model.roi_size, sw_batch_size=model.sw_batch_size,
                                   overlap=model.overlap, mode=model.blend_mode)
    batch = image.as_tensor()[None].to(device)
    mirrors = tta_mirrors(model.flip_axes) if tta else [()]
    with torch.no_grad(), torch.autocast(device.type, enabled=device.type == "cuda"):
        probs = None
        for axes in mirrors:
            dims = [2 + a for a in axes]  # after the batch and channel dimensions
            mirrored = torch.flip(batch, dims) if dims else batch
            p = torch.softmax(inferer(mirrored, model.network).float(), dim=1)
            p = torch.flip(p, dims) if dims else p
            probs = p if probs is None else probs + p
        probs = probs / len(mirrors)
    return probs[0].cpu()


def tta_mirrors(flip_axes: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The mirrorings test-time augmentation averages over: no flip, then every non-empty
    combination of ``flip_axes``."""
    return [c for k in range(len(flip_axes) + 1) for c in itertools.combinations(flip_axes, k)]


def keep_largest_components(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Post-processing: keep each foreground class's largest connected component (26-connected);
    voxels of the smaller ones become background. For structures known to be one piece."""
    from monai.transforms import KeepLargestConnectedComponent

    keep = KeepLargestConnectedComponent(applied_labels=list(range(1, num_classes)), is_onehot=False,
                                         independent=True, connectivity=3)
    kept = keep(labels[None])
    kept = kept.as_tensor() if isinstance(kept, MetaTensor) else torch.as_tensor(kept)  # no meta: a plain label map
    return kept[0].to(labels.dtype)


def native_labels(labels: torch.Tensor, like: MetaTensor) -> np.ndarray:
    """A label map (x, y, z) on the grid of ``like`` (an image as loaded), in the axis order of the image's file
    (``to_native``): a DICOM series' (columns, rows, slices)."""
    loaded = MetaTensor(labels[None].to(torch.uint8), meta=dict(like.meta))  # meta holds the loaded grid's affine
    return to_native(loaded)[0].astype(np.uint8)


def save_prediction(labels: torch.Tensor, like: MetaTensor, path: Path) -> Path:
    """Write a label map (x, y, z) on the grid of ``like`` (an image as loaded) as NIfTI in the geometry of its file."""
    native = native_labels(labels, like)
    image = nib.Nifti1Image(native, np.asarray(like.meta["original_affine"], dtype=np.float64))
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path
