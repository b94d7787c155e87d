"""The run config: a pydantic schema, read from YAML with ``--set dotted.key=value`` overrides.

Every field has a description (``medft validate`` and the docs show them), unknown keys are
errors, and all errors of a file are reported at once, each naming the file and the key.
Relative paths in a config file resolve against the file's own folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medft.errors import MedftError

class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Section):
    bundle: str | None = Field(None, description="Pretrained MONAI bundle: a local folder in Model Zoo layout, or a Model Zoo name (downloaded when a network is reachable).")
    bundle_version: str | None = Field(None, description="Model Zoo version to download; the latest when empty. Ignored for a local folder.")
    network_def: dict[str, Any] | None = Field(None, description="Train from random weights instead of a bundle: a MONAI bundle-style network definition ({_target_: UNet, ...}). out_channels and in_channels are set by medft.")
    network_overrides: dict[str, Any] = Field(default_factory=dict, description="Arguments of the bundle's network_def to set; a null value drops the argument (e.g. {img_size: null} for SwinUNETR on MONAI >= 1.5).")
    min_loaded_fraction: float = Field(0.5, ge=0, le=1, description="Fail when fewer than this share of the pretrained tensors load into the adapted network.")
    in_channels: int | None = Field(None, ge=1, description="Input channels of the adapted network; by default the bundle's.")

    @model_validator(mode="after")
    def _one_source(self) -> "ModelConfig":
        if (self.bundle is None) == (self.network_def is None):
            raise ValueError("give exactly one of model.bundle (fine-tune) and model.network_def (train from scratch)")
        return self


class DataConfig(_Section):
    manifest: str = Field(description="Manifest of the training data: a CSV file, an MSD dataset.json or an nnU-Net raw folder.")
    class_names: list[str] | None = Field(None, description="Names of the output classes, background first; by default the manifest's (after label_map).")
    label_map: dict[int, int] = Field(default_factory=dict, description="Label values to replace before training, e.g. {2: 1} to merge class 2 into class 1.")
    sampling: Literal["whole", "patch"] = Field("whole", description="whole: each volume padded or cropped to spatial_size; patch: random patches of spatial_size, foreground oversampled.")
    spatial_size: list[int] = Field(description="Training volume or patch size in voxels, one per spatial axis; also the validation sliding-window size.")
    samples_per_volume: int = Field(2, ge=1, description="Patches drawn from each volume per epoch (patch sampling).")
    foreground_ratio: float = Field(0.67, ge=0, le=1, description="Share of patches centred on foreground (patch sampling).")
    intensity: Literal["zscore", "none"] = Field("zscore", description="Intensity normalisation per image and channel: zscore (mean 0, sd 1) or none.")
    augmentation: Literal["none", "light", "standard"] = Field("standard", description="Augmentation preset: none; light (left-right flips); standard (flips, small rotations and scaling, intensity scale/shift, noise).")
    cache: bool = Field(True, description="Keep loaded, normalised volumes in memory between epochs.")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (0: load in the training process).")


class FreezeStage(_Section):
    epoch: int = Field(ge=0, description="First epoch (0-based) at which this stage applies.")
    preset: Literal["none", "all_but_head", "encoder"] | None = Field(None, description="What to freeze: none, all_but_head (train the new head only) or encoder.")
    patterns: list[str] = Field(default_factory=list, description="Regular expressions over parameter names to freeze, added to the preset.")


class OptimConfig(_Section):
    lr: float = Field(1e-3, gt=0, description="Peak learning rate of the pretrained layers (AdamW).")
    head_lr: float | None = Field(None, gt=0, description="Peak learning rate of the new head; by default 10 x lr.")
    weight_decay: float = Field(1e-5, ge=0, description="AdamW weight decay.")
    warmup_epochs: float = Field(1.0, ge=0, description="Linear warmup from 0, in epochs; cosine decay to 0 after it.")


class TrainConfig(_Section):
    epochs: int = Field(50, ge=1, description="Maximum number of epochs.")
    batch_size: int = Field(2, ge=1, description="Volumes (or patches) per step.")
    loss: Literal["dice_ce", "dice", "ce"] = Field("dice_ce", description="Loss: Dice + cross-entropy (default), Dice or cross-entropy.")
    val_every: int = Field(1, ge=1, description="Validate every this many epochs.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present, else CPU.")
    amp: bool | None = Field(None, description="Mixed precision; by default on with CUDA, off on CPU.")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="Cap on steps per epoch (quick tests).")
    deterministic: bool = Field(True, description="Deterministic algorithms, so a run is reproducible from its seed.")


class ValidationConfig(_Section):
    overlap: float = Field(0.25, ge=0, lt=1, description="Overlap of the sliding windows.")
    sw_batch_size: int = Field(4, ge=1, description="Windows per forward pass.")


class EarlyStoppingConfig(_Section):
    enabled: bool = Field(True, description="Stop when the validation Dice stops improving.")
    patience: int = Field(10, ge=1, description="Validations without improvement before stopping.")
    min_delta: float = Field(0.001, ge=0, description="Smallest rise of the validation Dice that counts as an improvement.")


class RunConfig(_Section):
    seed: int = Field(0, description="Seed of every random choice: data order, augmentation, initialisation.")
    model: ModelConfig = Field(description="The pretrained bundle (or scratch network) and how to adapt it.")
    data: DataConfig = Field(description="Training data and sampling.")
    freeze: list[FreezeStage] = Field(default_factory=list, description="Freezing schedule: stages by epoch; empty trains everything.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimiser and learning-rate schedule.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="The training loop.")
    validation: ValidationConfig = Field(default_factory=ValidationConfig, description="Sliding-window validation.")
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig, description="Early stopping on the validation Dice.")

    @field_validator("freeze")
    @classmethod
    def _increasing(cls, stages: list[FreezeStage]) -> list[FreezeStage]:
        epochs = [stage.epoch for stage in stages]
        if epochs != sorted(set(epochs)):
            raise ValueError(f"freeze stages must have strictly increasing epochs, got {epochs}")
        return stages


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config, apply ``dotted.key=value`` overrides, validate, resolve paths."""
    path = Path(path)
    raw = read_yaml(path)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MedftError(f"--set {item!r}: expected dotted.key=value, e.g. --set train.epochs=5")
        _set_dotted(raw, key.strip(), yaml.safe_load(value), item)
    return validate_config(raw, source=str(path), base=path.parent)


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise MedftError(f"{path}: no such config file. Fix: give the path of a YAML run config (see configs/)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MedftError(f"{path}: not valid YAML: {exc}. Fix: correct the syntax at the line shown") from None
    if not isinstance(raw, dict):
        raise MedftError(f"{path}: a config is a YAML mapping of sections (model, data, ...), got {type(raw).__name__}")
    return raw


def validate_config(raw: dict, source: str, base: Path | None = None) -> RunConfig:
    """Validate a config dict; one MedftError lists every problem, each with its key."""
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [_format_error(error) for error in exc.errors()]
        raise MedftError(f"{source}: {len(lines)} problem(s) in the config:\n" + "\n".join(lines)) from None
    if base is not None:
        config.data.manifest = _resolve(base, config.data.manifest)
        if config.model.bundle and _is_local(base, config.model.bundle):
            config.model.bundle = _resolve(base, config.model.bundle)
    return config


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _format_error(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"  {key}: unknown key (check its spelling; `medft validate --help` lists the keys)"
    if error["type"] == "missing":
        return f"  {key}: required"
    message = error["msg"].removeprefix("Value error, ")
    return f"  {key}: {message} (got {error['input']!r})"


def _set_dotted(raw: dict, key: str, value: Any, item: str) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise MedftError(f"--set {item!r}: {part} is not a section of the config")
        node = child
    node[parts[-1]] = value


def _is_local(base: Path, value: str) -> bool:
    """A bundle given as a path rather than a Model Zoo name."""
    return "/" in value or value.startswith(".") or (base / value).exists()


def _resolve(base: Path, value: str) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())
