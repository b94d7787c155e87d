"""A bundle's own preprocessing, read from its config so that medft feeds its network what it was trained on.

The steps are the bundle's inference ``preprocessing`` (else, for a bundle with a training config only,
its validation transforms), resolved as MONAI resolves them (``@`` references, ``$`` expressions,
``%`` macros, the bundle's ``scripts/``). medft's loading stands in for ``LoadImaged`` and
``EnsureChannelFirstd``; random transforms are left out; every other step is narrowed to the image
(the label follows it in training, see ``medft.data.preprocessing``). A step medft cannot replay,
or a spatial step MONAI cannot invert, is a MedftError naming it, before any work.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, Randomizable

from medft.bundle.reader import CONFIG_NAMES, Bundle
from medft.components import NotRecordable, as_json, bundle_imports, component_class
from medft.data.preprocessing import Preprocessing
from medft.errors import MedftError, one_line

# Where the steps are looked for: (config file names, id in them), first found wins.
SOURCES = (
    (CONFIG_NAMES[:3], "preprocessing"),  # inference.json / .yaml / .yml
    (CONFIG_NAMES[3:], "validate::preprocessing"),  # train.json / .yaml / .yml: the validation transforms
)
LOADERS = {"LoadImaged", "LoadImage", "EnsureChannelFirstd", "EnsureChannelFirst"}
PLACEMENT = {"ToDeviced", "ToDevice"}
# Steps that add, join or remove keys: medft's case has one image (its channels loaded together) and a label.
KEY_CHANGES = {"CopyItemsd", "ConcatItemsd", "DeleteItemsd", "SelectItemsd", "SplitDimd", "SplitChanneld", "RenameKeysd"}
# Arguments dropped from every step: medft places tensors itself, and the inversion needs the metadata.
DROPPED_ARGS = ("device", "track_meta")
# Arguments of MONAI dictionary transforms given once per key (narrowed to the image's with the keys).
PER_KEY_ARGS = ("mode", "padding_mode", "align_corners", "dtype")
FIX_MEDFT = ("set data.preprocessing: medft in the run config and choose data.spacing and data.intensity to match "
             "what the bundle's network was trained on")


@dataclass
class BundleSteps:
    """What medft replays of a bundle's preprocessing, and what it leaves out (and why)."""

    preprocessing: Preprocessing | None  # None: the bundle declares no preprocessing
    origin: str = ""  # e.g. configs/inference.json#preprocessing
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (step, reason)

    def describe(self) -> list[str]:
        if self.preprocessing is None:
            return ["none declared (no preprocessing in the inference config, no validation transforms in the "
                    "training config): medft train needs data.preprocessing: medft; medft evaluate refuses it"]
        lines = [f"from {self.origin}", *self.preprocessing.describe()]
        return lines + [f"left out: {name}: {reason}" for name, reason in self.left_out]


def bundle_preprocessing(bundle: Bundle) -> Preprocessing:
    """The bundle's preprocessing to replay; MedftError when it declares none."""
    steps = read_bundle_steps(bundle)
    if steps.preprocessing is None:
        raise MedftError(
            f"{bundle.root / 'configs'}: the bundle declares no preprocessing (no 'preprocessing' in its inference config, "
            "no 'validate#preprocessing' in its training config), so medft cannot know what its network was trained on. "
            "Fix: add its preprocessing to configs/inference.json (a Compose of MONAI transforms; an empty one when the "
            f"network takes the intensities as stored), or, to fine-tune, {FIX_MEDFT}"
        )
    return steps.preprocessing


def read_bundle_steps(bundle: Bundle) -> BundleSteps:
    """Read, resolve and check the bundle's deterministic preprocessing (see the module's docstring)."""
    found = _find_source(bundle)
    if found is None:
        return BundleSteps(None)
    config, config_name, source_id = found
    origin = f"configs/{config_name}#{source_id.replace('::', '#')}"
    from monai.bundle import ConfigParser

    with bundle_imports(bundle.root):
        parser = ConfigParser({**copy.deepcopy(config), "bundle_root": str(bundle.root)})
        step_ids = _step_ids(parser, source_id, origin)
        raw_steps = [(sid, parser[sid]) for sid in step_ids]
        image_key = _image_key(parser, raw_steps, origin)
        steps, left_out = [], []
        for sid, raw in raw_steps:
            if _disabled(raw):
                continue
            name = str(raw.get("_target_"))
            short = name.rsplit(".", 1)[-1]
            cls = component_class(name, bundle.root) if isinstance(raw.get("_target_"), str) else None
            if cls is None:
                raise MedftError(f"{origin}: the step {name} cannot be found (not a MONAI transform, not importable from "
                                 f"the bundle's scripts/). Fix: install what it needs, or {FIX_MEDFT}")
            if short in LOADERS:
                left_out.append((short, "medft loads the image (NIfTI or DICOM series, channels first)"))
                continue
            if short in PLACEMENT:
                left_out.append((short, "medft places tensors on the device"))
                continue
            if issubclass(cls, Randomizable):
                left_out.append((short, "random (augmentation), not part of the deterministic preprocessing"))
                continue
            if short in KEY_CHANGES:
                raise MedftError(f"{origin}: the step {short} adds, joins or removes data keys, which medft cannot replay "
                                 f"(it loads a case's channels as one image). Fix: {FIX_MEDFT}")
            if "keys" not in raw:
                raise MedftError(f"{origin}: the step {short} names no keys, so medft cannot tell which data it reads or "
                                 "adds (guidance signals, images joined into one) and cannot replay it. Fix: "
                                 f"{FIX_MEDFT}")
            step = _resolved_step(parser, sid, raw, origin)
            keys = [step["keys"]] if isinstance(step["keys"], str) else list(step["keys"])
            if image_key not in keys:
                left_out.append((short, f"acts on {', '.join(map(str, keys))}, not on the image ({image_key})"))
                continue
            steps.append(_narrowed(step, keys, image_key))
    preprocessing = Preprocessing("bundle", steps, reorient=False, imports=[str(i) for i in config.get("imports", [])],
                                  code_root=str(bundle.root), origin=origin)
    _require_invertible(preprocessing, origin)
    return BundleSteps(preprocessing, origin, left_out)


def _find_source(bundle: Bundle) -> tuple[dict, str, str] | None:
    """(config, its file name, the id of its preprocessing), from the config holding network_def first."""
    from monai.bundle import ConfigParser

    candidates = [(bundle.config, bundle.config_file.name)]
    for name in CONFIG_NAMES:
        path = bundle.root / "configs" / name
        if path.is_file() and path != bundle.config_file:
            candidates.append((None, name))
    for names, source_id in SOURCES:
        for config, name in candidates:
            if name not in names:
                continue
            config = config if config is not None else bundle.read_config(name)
            try:
                ConfigParser(config)[source_id]
            except (KeyError, TypeError, ValueError):
                continue
            return config, name, source_id
    return None


_ID = r"@([A-Za-z0-9_]+(?:(?:#|::)[A-Za-z0-9_]+)*)"


def _references(value: Any) -> list[str] | None:
    """The ids of ``"@id"``, ``"$@id"`` or ``"$@a + @b + ..."`` (lists joined), else None."""
    if isinstance(value, str) and re.fullmatch(rf"\s*(\$\s*)?{_ID}(\s*\+\s*{_ID})*\s*", value) and (
            value.strip().startswith("$") or "+" not in value):
        return [ident.replace("#", "::") for ident in re.findall(_ID, value)]
    return None


def _is_compose(value: Any) -> bool:
    return isinstance(value, dict) and str(value.get("_target_", "")).rsplit(".", 1)[-1] == "Compose"


def _step_ids(parser, ident: str, origin: str, depth: int = 0) -> list[str]:
    """The config ids of the transforms that ``ident`` (a Compose, a list, or a reference to one) holds, in order."""
    if depth > 20:
        raise MedftError(f"{origin}: its references go round in circles. Fix: correct the bundle's config")
    value = parser[ident]
    if (refs := _references(value)) is not None:
        return [sid for ref in refs for sid in _step_ids(parser, ref, origin, depth + 1)]
    if _is_compose(value):
        return _step_ids(parser, f"{ident}::transforms", origin, depth + 1)
    if isinstance(value, dict) and "_target_" in value:
        return [ident]
    if isinstance(value, list):
        return [sid for i in range(len(value)) for sid in _step_ids(parser, f"{ident}::{i}", origin, depth + 1)]
    raise MedftError(f"{origin}: medft cannot read the preprocessing {str(value)[:80]!r} as a list of transforms. "
                     "Fix: write it as a Compose of transforms ({\"_target_\": \"Compose\", \"transforms\": [...]}), "
                     f"or {FIX_MEDFT}")


def _image_key(parser, raw_steps: list[tuple[str, dict]], origin: str) -> str:
    """The key the bundle's image is loaded under: "image" when its loader loads one under that name (or it has no
    loader), else the one key its loader loads besides a label. A bundle that loads several images to join them
    (one per CT phase, say) is refused: medft loads a case's channels as one image."""
    loaded: list = []
    for sid, raw in raw_steps:
        if str(raw.get("_target_", "")).rsplit(".", 1)[-1] == "LoadImaged" and "keys" in raw:
            try:
                keys = parser.get_parsed_content(f"{sid}::keys")
            except Exception:
                continue
            loaded += [keys] if isinstance(keys, str) else list(keys)
    images = [key for key in loaded if key not in ("label", "seg")]
    if not loaded or "image" in loaded:
        return "image"
    if len(images) == 1:
        return images[0]
    raise MedftError(f"{origin}: the bundle loads several images ({', '.join(map(str, images))}) and joins them, which "
                     f"medft cannot replay (it loads a case's channels as one image, listed in the manifest). Fix: {FIX_MEDFT}")


def _disabled(raw: dict) -> bool:
    return raw.get("_disabled_") in (True, "true", "True")


def _resolved_step(parser, sid: str, raw: dict, origin: str) -> dict:
    """The step with every argument resolved (``@`` and ``$`` evaluated), as JSON."""
    step = {"_target_": raw["_target_"]}
    for key, value in raw.items():
        if key.startswith("_") or key in DROPPED_ARGS:
            continue
        if not _has_expression(value):
            step[key] = copy.deepcopy(value)
            continue
        try:
            resolved = parser.get_parsed_content(f"{sid}::{key}")
        except Exception as error:
            raise MedftError(f"{origin}: cannot resolve {key}={value!r} of the step {raw['_target_']} "
                             f"({one_line(error)}). Fix: correct the bundle's config, or {FIX_MEDFT}") from None
        try:
            step[key] = as_json(resolved)
        except NotRecordable as what:
            if isinstance(value, str) and value.startswith("$") and "@" not in value:
                step[key] = value  # an expression of its own (a lambda, say): recorded as written, evaluated when built
            else:
                raise MedftError(f"{origin}: {key} of the step {raw['_target_']} resolves to {what}, which medft cannot "
                                 f"record. Fix: give it as a value or a $ expression without @ references, or {FIX_MEDFT}") from None
    return step


def _has_expression(value: Any) -> bool:
    if isinstance(value, str):
        return value.startswith(("@", "$"))
    if isinstance(value, dict):
        return any(_has_expression(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_expression(v) for v in value)
    return False


def _narrowed(step: dict, keys: list, image_key: str) -> dict:
    """The step on the image only, under medft's key "image"."""
    index = keys.index(image_key)
    narrowed = dict(step, keys="image")
    for arg in PER_KEY_ARGS:
        value = step.get(arg)
        if isinstance(value, list) and len(value) == len(keys) and len(keys) > 1:
            narrowed[arg] = value[index]
    if step.get("source_key") == image_key:
        narrowed["source_key"] = "image"
    return narrowed


def _require_invertible(preprocessing: Preprocessing, origin: str) -> None:
    """A step that changes the voxel grid must be invertible, or predictions cannot return to the input's grid."""
    for step, transform in zip(preprocessing.steps, preprocessing.compose.transforms, strict=True):
        if isinstance(transform, InvertibleTransform) or not _moves_grid(transform):
            continue
        raise MedftError(
            f"{origin}: the step {step['_target_']} changes the voxel grid but cannot be inverted, so medft could not put "
            f"predictions back on the grid of the input. Fix: replace it in the bundle's config by an invertible MONAI "
            f"transform (Spacingd, Resized, CropForegroundd, SpatialPadd, ...), or {FIX_MEDFT}"
        )


def _moves_grid(transform) -> bool:
    """Whether ``transform`` changes the shape or affine of a small test image (False when it fails on it)."""
    affine = np.diag([1.5, 1.0, 2.0, 1.0])
    image = MetaTensor(torch.rand(1, 10, 12, 8), affine=torch.as_tensor(affine))
    try:
        out = transform({"image": image})["image"]
    except Exception:
        return False
    moved_affine = getattr(out, "affine", None)
    return tuple(out.shape) != tuple(image.shape) or (
        moved_affine is not None and not np.allclose(np.asarray(moved_affine, dtype=np.float64), affine))
