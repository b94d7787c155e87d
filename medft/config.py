"""The run config: a pydantic schema, read from YAML with ``--set dotted.key=value`` overrides.

Every field has a description (``medft validate`` and the docs show them), unknown keys are
errors, and all errors of a file are reported at once, each naming the file and the key.
Relative paths in a config file resolve against the file's own folder; those given with ``--set``
(``data.manifest``, ``model.bundle``), against the working directory. The ``search`` section
(``medft tune``) has its schema and checks in ``medft.tune.space``, which builds on this module.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Hashable
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from medft.errors import MedftError


class Section(BaseModel):
    """A section of the run config (and of its search, medft.tune.space): unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class ModelConfig(Section):
    bundle: str | None = Field(None, description="Pretrained MONAI bundle: a local folder in Model Zoo layout, or a Model Zoo name "
                                                 "(downloaded when a network is reachable).")
    bundle_version: str | None = Field(None, description="Model Zoo version to download; the latest when empty. "
                                                         "Ignored for a local folder.")
    network_def: dict[str, Any] | None = Field(None, description="Train from random weights instead of a bundle: a MONAI bundle-style "
                                                                 "network definition ({_target_: UNet, ...}). out_channels is set by "
                                                                 "medft, and in_channels (1 unless given here) by model.in_channels.")
    network_overrides: dict[str, Any] = Field(default_factory=dict, description="Arguments of the bundle's network_def to set; a null "
                                                                                "value drops the argument (e.g. {img_size: null} for "
                                                                                "SwinUNETR on MONAI >= 1.5).")
    min_loaded_fraction: float = Field(0.5, ge=0, le=1, description="Fail when fewer than this share of the pretrained tensors load into "
                                                                    "the adapted network.")
    in_channels: int | None = Field(None, ge=1, description="Input channels of the adapted network; by default the bundle's.")

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.bundle is None) == (self.network_def is None):
            raise ValueError("give exactly one of model.bundle (fine-tune) and model.network_def (train from scratch)")
        if self.network_def is not None and self.network_overrides:  # prepare_network would ignore them
            raise ValueError(f"model.network_overrides {sorted(self.network_overrides)} set arguments of a bundle's "
                             "network_def; without a bundle they would be ignored. Fix: give them in model.network_def")
        return self


class DataConfig(Section):
    manifest: str = Field(description="Manifest of the training data: a CSV file, an MSD dataset.json or an nnU-Net raw folder.")
    class_names: list[str] | None = Field(None, description="Names of the output classes, background first; by default the manifest's "
                                                            "(after label_map).")
    label_map: dict[int, int] = Field(default_factory=dict, description="Label values to replace before training, e.g. {2: 1} to merge "
                                                                        "class 2 into class 1.")
    sampling: Literal["whole", "patch"] = Field("whole", description="whole: each volume padded or cropped to spatial_size; patch: random "
                                                                     "patches of spatial_size, foreground oversampled.")
    spatial_size: list[int] = Field(description="Training volume or patch size in voxels, one per spatial axis; also the validation "
                                                "sliding-window size.")
    samples_per_volume: int = Field(2, ge=1, description="Patches drawn from each volume per epoch (patch sampling).")
    foreground_ratio: float = Field(0.67, ge=0, le=1, description="Share of patches centred on foreground (patch sampling).")
    preprocessing: Literal["bundle", "medft"] | None = Field(None, description="What the network is fed: bundle (the default with "
                                                                               "model.bundle) replays the bundle's own deterministic "
                                                                               "preprocessing (its resampling, intensity scaling), as "
                                                                               "it was trained; medft (the default without a bundle) "
                                                                               "uses spacing and intensity below.")
    spacing: list[float] | Literal["auto"] | None = Field(None, description="medft preprocessing: resample every case to this spacing (mm "
                                                                            "per RAS axis; images linear, labels nearest); auto: the "
                                                                            "training cases' median (nnU-Net's rule; written into "
                                                                            "config.yaml); none keeps each case's. Predictions go back "
                                                                            "to each input's grid.")
    intensity: Literal["zscore", "nonzero_zscore", "ct_window", "percentiles", "none"] | None = Field(
        None, description="medft preprocessing, per image and channel: zscore (mean 0, sd 1; default), nonzero_zscore (non-zero "
        "voxels: skull-stripped MRI), ct_window or percentiles (intensity_range in HU, or percentiles defaulting to [0.5, 99.5]; "
        "to 0..1, clipped) or none.")
    intensity_range: list[float] | None = Field(None, description="The window of ct_window (e.g. [-57, 164] HU) or the percentiles of "
                                                                  "percentiles (e.g. [1, 99]).")
    augmentation: Literal["none", "light", "standard", "strong"] = Field("standard", description="Augmentation preset: none; light (the "
                                                                                                 "flips of flip_axes only); standard "
                                                                                                 "(flips, small rotations and scaling, "
                                                                                                 "intensity scale/shift, noise); strong "
                                                                                                 "(nnU-Net's ranges: larger rotations and "
                                                                                                 "scaling, noise, blur, brightness, "
                                                                                                 "gamma, low resolution).")
    flip_axes: list[int] = Field(default_factory=lambda: [0], description="Spatial axes (RAS: 0 left-right, 1 front-back, 2 up-down) "
                                                                          "the augmentation mirrors, each with probability 0.5, and "
                                                                          "medft evaluate --tta averages over (none with augmentation: "
                                                                          "none). nnU-Net mirrors all three; left-right only keeps "
                                                                          "anterior in front.")
    elastic: float = Field(0.0, ge=0, le=1, description="Probability of a mild elastic deformation of a training sample (3D, with any "
                                                        "augmentation preset but none): smooth displacements of 1-2 voxels on average "
                                                        "(Gaussian-smoothed, sigma 5-7 voxels), shapes bent the way anatomy varies "
                                                        "between people.")
    cache: bool = Field(True, description="Keep preprocessed cases between epochs: in memory up to data.cache_memory, the "
                                          "rest on disk in data.cache_dir (false: preprocess every case at every epoch).")
    cache_memory: float | None = Field(None, gt=0, description="GB of memory for cached cases (training and validation); "
                                       "default: half of the memory available at the start, shared by the processes "
                                       "on this machine.")
    cache_dir: str | None = Field(None, description="Folder of the on-disk cache of preprocessed cases (default: "
                                  "~/.cache/medft/preprocessed); a case is preprocessed again when its files or the "
                                  "preprocessing change.")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (0: load in the training process).")

    @field_validator("spatial_size")
    @classmethod
    def _sizes(cls, size: list[int]) -> list[int]:
        if len(size) not in (2, 3) or any(edge < 1 for edge in size):
            raise ValueError("one size of at least 1 voxel per spatial axis (2 or 3 of them). "
                             "Fix: e.g. [96, 96, 96] for 3D volumes")
        return size

    @field_validator("spacing")
    @classmethod
    def _spacing(cls, spacing: list[float] | str | None) -> list[float] | str | None:
        if isinstance(spacing, list) and (len(spacing) not in (2, 3) or any(not s > 0 for s in spacing)):
            raise ValueError("one voxel size in mm above 0 per spatial axis, or auto. Fix: e.g. [1.5, 1.5, 2.0]")
        return spacing

    @model_validator(mode="after")
    def _intensity_range_fits(self) -> DataConfig:
        span = self.intensity_range
        if span is not None and self.intensity not in ("ct_window", "percentiles"):
            raise ValueError(f"data.intensity_range applies to data.intensity ct_window and percentiles, not {self.intensity}. "
                             "Fix: remove data.intensity_range, or set data.intensity: ct_window or percentiles")
        if self.intensity == "ct_window" and span is None:
            raise ValueError("data.intensity ct_window needs the window. Fix: set data.intensity_range: [low, high] in HU, "
                             "e.g. [-57, 164] for soft tissue")
        if span is not None and (len(span) != 2 or not span[0] < span[1]):
            raise ValueError(f"data.intensity_range {span}: give [low, high] with low below high")
        if self.intensity == "percentiles" and span is not None and not 0 <= span[0] < span[1] <= 100:
            raise ValueError(f"data.intensity_range {span}: percentiles lie from 0 to 100. Fix: e.g. [1, 99]")
        return self

    @model_validator(mode="after")
    def _patch_options_need_patches(self) -> DataConfig:
        # values, not the keys given: a run's config.yaml holds every key, the defaults included
        given = [f"data.{key}" for key in ("samples_per_volume", "foreground_ratio")
                 if getattr(self, key) != type(self).model_fields[key].default]
        if self.sampling == "whole" and given:
            default = "" if "sampling" in self.model_fields_set else " (the default)"
            verb = "apply" if len(given) > 1 else "applies"
            raise ValueError(f"{' and '.join(given)} {verb} to data.sampling: patch, and sampling is whole{default}: "
                             "each volume gives one crop of spatial_size, anywhere in it, foreground or not. "
                             f"Fix: set data.sampling: patch (for volumes larger than spatial_size), or remove {' and '.join(given)}")
        return self

    @model_validator(mode="after")
    def _spatial_augmentation_fits(self) -> DataConfig:
        dims = len(self.spatial_size)
        if isinstance(self.spacing, list) and len(self.spacing) != dims:
            raise ValueError(f"data.spacing {self.spacing} has {len(self.spacing)} axes, data.spatial_size {dims}. "
                             f"Fix: give {dims} voxel sizes")
        if any(not 0 <= a < dims for a in self.flip_axes) or len(set(self.flip_axes)) != len(self.flip_axes):
            raise ValueError(f"data.flip_axes {self.flip_axes}: each axis once, from 0 to {dims - 1} "
                             f"(spatial_size has {dims}). Fix: e.g. [0] for left-right only, [0, 1, 2] for all")
        if self.elastic and dims != 3:
            raise ValueError(f"data.elastic {self.elastic}: elastic deformation is for 3D volumes (spatial_size has {dims} axes). "
                             "Fix: set data.elastic to 0")
        return self

    @property
    def mirrored_axes(self) -> list[int]:
        """The axes training mirrors: ``flip_axes``, none with ``augmentation: none``. Test-time
        augmentation averages over these and no others."""
        return [] if self.augmentation == "none" else list(self.flip_axes)


FreezePreset = Literal["none", "all_but_head", "encoder"]
FREEZE_PRESETS: tuple[str, ...] = get_args(FreezePreset)


def regex_problem(pattern: str, what: str) -> str | None:
    """Why ``pattern`` (a ``what``, for the message) is no regular expression, with the fix; None when it is one."""
    try:
        re.compile(pattern)
    except re.error as exc:
        return (f"{what} {pattern!r} is not a valid regular expression ({exc}). "
                r"Fix: escape special characters, e.g. 'encoder\.' for a literal dot")
    return None


def freeze_pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot select parameters to freeze (with the fix), or None."""
    problem = regex_problem(pattern, "freeze pattern")
    if problem:
        return problem
    if not pattern:
        return "an empty freeze pattern matches every parameter name. Fix: remove it, or use preset: all_but_head to train the head only"
    return None


def freeze_epochs_problem(epochs: list[int]) -> str | None:
    if epochs != sorted(set(epochs)):
        return (f"freeze stages must have strictly increasing epochs, got {epochs}. "
                "Fix: order the stages by epoch and give each a different one")
    return None


class FreezeStage(Section):
    """From ``epoch`` (0-based) on, freeze ``preset`` plus the parameters matching ``patterns``
    (``FreezeStage(5, "encoder")`` or with keywords, as in a config)."""

    epoch: int = Field(ge=0, description="First epoch (0-based) at which this stage applies.")
    preset: FreezePreset | None = Field(None, description="What to freeze: none, all_but_head (train the "
                                                                                        "new head only) or encoder.")
    patterns: list[str] = Field(default_factory=list, description="Regular expressions over parameter names to freeze, "
                                                                  "added to the preset.")

    def __init__(self, epoch: int, preset: str | None = None, patterns: list[str] | str = (), **more) -> None:
        super().__init__(epoch=epoch, preset=preset, patterns=patterns, **more)

    @field_validator("patterns", mode="before")
    @classmethod
    def _one_string_is_one_pattern(cls, patterns):
        return [patterns] if isinstance(patterns, str) else patterns

    @field_validator("patterns")
    @classmethod
    def _regular_expressions(cls, patterns: list[str]) -> list[str]:
        problem = next(filter(None, map(freeze_pattern_problem, patterns)), None)
        if problem:
            raise ValueError(problem)
        return patterns


# How the pretrained network is fine-tuned (medft.train.freezing.method_frozen_names, medft.train.lora).
FinetuneMethod = Literal["full", "bitfit", "lora"]
FINETUNE_METHODS: tuple[str, ...] = get_args(FinetuneMethod)


class LoraConfig(Section):
    rank: int = Field(8, ge=1, description="Rank r of each adapter: the update of a layer is B x A, A with r output "
                      "channels (a convolution with the layer's kernel), B with r input channels (a 1 x 1 x 1 convolution).")
    alpha: float | None = Field(None, gt=0, description="Scale of the update, alpha / rank; by default alpha = rank (scale 1, "
                                "so a change of rank does not change the effective learning rate of the adapters).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the input of each adapter.")
    target_modules: list[str] | None = Field(
        None, description="Regular expressions over module names (re.search) choosing the layers that get an adapter, among "
        "the network's convolutions and linear layers outside the head; by default all of them (train.log says how many, "
        "and names the transposed convolutions left out). Transposed and grouped convolutions get none (peft has no LoRA "
        "layer for the former): they keep their pretrained weights, unless they are part of the new head.")

    @field_validator("target_modules", mode="before")
    @classmethod
    def _one_string_is_one_pattern(cls, patterns):
        return [patterns] if isinstance(patterns, str) else patterns

    @field_validator("target_modules")
    @classmethod
    def _regular_expressions(cls, patterns: list[str] | None) -> list[str] | None:
        for pattern in patterns or ():
            problem = regex_problem(pattern, "target module pattern")
            if problem:
                raise ValueError(problem)
            if not pattern:
                raise ValueError("an empty target module pattern matches every layer. Fix: remove target_modules to adapt every "
                                 "layer, or give patterns that choose some")
        return patterns

    @property
    def scale(self) -> float:
        return (self.alpha if self.alpha is not None else self.rank) / self.rank


class FinetuneConfig(Section):
    method: FinetuneMethod = Field("full", description="full: every parameter the freeze schedule leaves trainable "
                                   "trains; bitfit (Ben Zaken et al., 2022): only the bias terms (parameters named bias "
                                   "or ending in _bias, normalisation shifts included, their scales not) and the new "
                                   "head train; lora (Hu et al., 2022): low-rank adapters beside the pretrained "
                                   "convolutions and linear layers (finetune.lora) and the new head train. With bitfit "
                                   "and lora the rest stays as pretrained at every freeze stage (a stage may freeze "
                                   "more, never less), and batch norms whose scale is frozen keep their pretrained "
                                   "statistics.")
    lora: LoraConfig | None = Field(None, description="The adapters of finetune.method lora (its defaults when left out).")
    linear_probe_epochs: int | Literal["auto"] | None = Field(
        None, description="LP-FT (Kumar et al., 2022), a preset of the freezing schedule: the new head trains alone "
        "(all_but_head) for this many epochs, then everything trains, the body at optim.lr (by default 10x below "
        "optim.head_lr). Use it when a new head sits on a pretrained body, above all with few cases or an expected "
        "site shift: a randomly initialised head sends large, noisy gradients into the body in the first steps and "
        "distorts the features it was pretrained for. Stands for freeze: [{epoch: 0, preset: all_but_head}, "
        "{epoch: N, preset: none}], so it cannot be combined with a freeze list. auto: the head trains alone until "
        "the first validation whose Dice does not rise above the probe's best by more than early_stopping.min_delta "
        "(everything trains from the next epoch), and at the latest until epoch train.epochs // 2, so the body "
        "always gets half of the run; early stopping counts its patience afresh from the switch. It needs a "
        "validation that can stop the probe before that: 2 x train.val_every below train.epochs // 2.")

    @field_validator("linear_probe_epochs", mode="before")
    @classmethod
    def _epochs_or_auto(cls, value: Any) -> Any:
        whole = ((isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())
                 ) and value >= 1
        if not (value is None or value == "auto" or whole):
            raise ValueError(f"{value!r} is neither a number of epochs (1 or more) nor auto. Fix: give the probe's epochs, "
                             "or auto (until the head's validation Dice stops rising), or remove the key")
        return value


SGD_MOMENTUM = 0.99  # nnU-Net's; optim.momentum's default for sgd


class OptimConfig(Section):
    name: Literal["adamw", "sgd"] = Field("adamw", description="adamw, or sgd: SGD with Nesterov momentum (nnU-Net's optimizer).")
    lr: float = Field(1e-3, ge=0, description="Peak learning rate of the pretrained layers (0 leaves them as pretrained: a check that a "
                                              "run starts from what the bundle knows).")
    head_lr: float | None = Field(None, gt=0, description="Peak learning rate of the new head; by default 10 x lr.")
    weight_decay: float = Field(1e-5, ge=0, description="Weight decay (decoupled for adamw, L2 for sgd).")
    momentum: float | None = Field(None, gt=0, lt=1, description=f"Nesterov momentum of sgd; by default {SGD_MOMENTUM} (nnU-Net's).")
    warmup_epochs: float = Field(1.0, ge=0, description="Linear warmup from 0, in epochs; cosine decay to 0 after it.")

    @model_validator(mode="after")
    def _momentum_is_sgds(self) -> OptimConfig:
        if self.momentum is not None and self.name != "sgd":
            raise ValueError("optim.momentum is SGD's; AdamW has none. Fix: set optim.name: sgd, or remove optim.momentum")
        return self


class TrainConfig(Section):
    epochs: int = Field(50, ge=1, description="Maximum number of epochs.")
    batch_size: int = Field(2, ge=1, description="Volumes (or patches) per step.")
    loss: Literal["dice_ce", "dice", "ce"] = Field("dice_ce", description="Loss: Dice + cross-entropy (default), Dice or cross-entropy.")
    val_every: int = Field(1, ge=1, description="Validate every this many epochs.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present, else CPU.")
    amp: bool | None = Field(None, description="Mixed precision: float16 on CUDA, bfloat16 on CPU (much faster on CPUs with AVX-512 BF16 "
                                               "or AMX). By default on with CUDA, off on CPU.")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="Cap on steps per epoch: a training budget that does not grow with "
                                                                    "the dataset (nnU-Net counts 250 steps an epoch), or a quick test. A "
                                                                    "capped epoch takes the first batches of a fresh shuffle, so the "
                                                                    "cases take turns over the epochs.")
    deterministic: bool = Field(True, description="Deterministic algorithms, so a run is reproducible from its seed "
                               "(with CUBLAS_WORKSPACE_CONFIG=:4096:8 unless set, which cuBLAS needs for it on CUDA).")
    dice_weight: float = Field(1.0, ge=0, description="Weight of the Dice term of the dice_ce loss.")
    ce_weight: float = Field(1.0, ge=0, description="Weight of the cross-entropy term of the dice_ce loss.")
    dice_batch: bool = Field(False, description="Dice term over the whole batch (overlaps and volumes summed over "
                             "its volumes, as nnU-Net does) instead of per volume and averaged.")
    dice_background: bool = Field(True, description="Count the background in the Dice term (MONAI's default); "
                                  "nnU-Net leaves it out, so the Dice term weighs only the structures.")
    channels_last: bool = Field(False, description="Store the network's weights, and so its activations, channels-last "
                                "(NDHWC): on CPU, oneDNN's path for dilated convolutions (MeshNet's steps 1.6-1.8x faster, "
                                "benchmarks/RESULTS.md item 7e); no gain for a UNet. The run's evaluation uses it too.")

    @field_validator("dice_weight", "ce_weight")
    @classmethod
    def _loss_weight(cls, value: float, info: ValidationInfo) -> float:
        if value == 1.0:
            return value
        if info.data.get("loss", "dice_ce") != "dice_ce":
            raise ValueError(f"train.{info.field_name} weighs a term of the dice_ce loss; with train.loss "
                             f"{info.data['loss']} leave it at 1")
        return value

    @model_validator(mode="after")
    def _some_loss(self) -> TrainConfig:
        if self.dice_weight == 0 and self.ce_weight == 0:
            raise ValueError("train.dice_weight and train.ce_weight are both 0: nothing to learn from")
        if self.loss == "ce" and (self.dice_batch or not self.dice_background):
            raise ValueError("train.dice_batch and train.dice_background shape the Dice term; with train.loss ce "
                             "there is none: leave them out")
        return self


class ValidationConfig(Section):
    overlap: float = Field(0.25, ge=0, lt=1, description="Overlap of the sliding windows.")
    sw_batch_size: int | None = Field(None, ge=1, description="Sliding windows per forward pass (validation, evaluate, predict). By "
                                      "default 4 on CPU and, on a GPU, as many as half its free memory holds, measured on the network "
                                      "(at most 32); an exported bundle's inferer gets 4.")


class EarlyStoppingConfig(Section):
    enabled: bool = Field(True, description="Stop when the validation Dice stops improving.")
    patience: int = Field(10, ge=1, description="Validations without improvement before stopping.")
    min_delta: float = Field(0.001, ge=0, description="Smallest rise of the validation Dice that counts as an improvement, measured from "
                                                      "the Dice of the last improvement (small rises add up); the best checkpoint follows "
                                                      "any rise.")


class RunConfig(Section):
    seed: int = Field(0, description="Seed of every random choice: data order, augmentation, initialisation.")
    model: ModelConfig = Field(description="The pretrained bundle (or scratch network) and how to adapt it.")
    data: DataConfig = Field(description="Training data and sampling.")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description="What fine-tuning changes in the "
                                     "pretrained network.")
    freeze: list[FreezeStage] = Field(default_factory=list, description="Freezing schedule: stages by epoch; empty trains everything.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimiser and learning-rate schedule.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="The training loop.")
    validation: ValidationConfig = Field(default_factory=ValidationConfig, description="Sliding-window validation.")
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig, description="Early stopping on the validation Dice.")
    search: dict[str, Any] | None = Field(None, description="Hyperparameter search for medft tune: the values to try and how to prune "
                                                            "trials; medft train ignores it.")  # its schema: medft.tune.space

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        """A section left empty in YAML (``optim:`` with every key commented out) reads as null: it
        takes its defaults, as if it were absent (a required section stays required, and a plain
        value such as ``seed:`` left empty is still an error)."""
        if isinstance(data, dict):
            fields = cls.model_fields
            data = {key: value for key, value in data.items()
                    if not (value is None and key in fields and not fields[key].is_required()
                            and _section_type(fields[key].annotation) is not None)}
        return data

    @model_validator(mode="after")
    def _one_preprocessing(self) -> RunConfig:
        """data.preprocessing resolved (bundle with a bundle, else medft), and only its own keys given."""
        data = self.data
        if data.preprocessing is None:
            data.preprocessing = "bundle" if self.model.bundle else "medft"
        if data.preprocessing == "bundle":
            if not self.model.bundle:
                raise ValueError("data.preprocessing bundle replays a bundle's preprocessing, and this run has no "
                                 "model.bundle. Fix: set data.preprocessing: medft (data.spacing, data.intensity)")
            own = [f"data.{key}" for key in ("spacing", "intensity", "intensity_range") if getattr(data, key) is not None]
            if own:
                raise ValueError(f"{', '.join(own)} choose medft's own preprocessing, but this run feeds the bundle its "
                                 "own (data.preprocessing: bundle, the default with a bundle): what its network was "
                                 f"trained on. Fix: remove {', '.join(own)}, or set data.preprocessing: medft to choose "
                                 "it yourself")
        elif data.intensity is None:
            data.intensity = "zscore"
        return self

    @model_validator(mode="after")
    def _lora_settings_with_lora(self) -> RunConfig:
        finetune = self.finetune
        if finetune.lora is not None and finetune.method != "lora":
            raise ValueError(f"finetune.lora sets adapters, and finetune.method is {finetune.method}, which trains none. "
                             "Fix: set finetune.method: lora, or remove finetune.lora")
        if finetune.method == "lora" and finetune.lora is None:
            finetune.lora = LoraConfig()
        return self

    @model_validator(mode="after")
    def _one_freezing_schedule(self) -> RunConfig:
        n = self.finetune.linear_probe_epochs
        if n == "auto":
            self._auto_probe_can_stop()
        elif n is not None and n >= self.train.epochs:
            raise ValueError(f"finetune.linear_probe_epochs {n} is not below train.epochs {self.train.epochs}: the body would "
                             f"never train (head-only training). Fix: give fewer probe epochs than train.epochs, or use "
                             "freeze: [{epoch: 0, preset: all_but_head}] to train the head alone")
        if n is not None and self.freeze:
            switch = "the epoch its head's validation Dice stops rising" if n == "auto" else n
            raise ValueError(f"finetune.linear_probe_epochs {n} is the freezing schedule [{{epoch: 0, preset: all_but_head}}, "
                             f"{{epoch: {switch}, preset: none}}], and this config also gives a freeze list. Fix: remove freeze "
                             "(or set it to []), or remove finetune.linear_probe_epochs and write the stages in freeze")
        return self

    def _auto_probe_can_stop(self) -> None:
        """linear_probe_epochs auto decides at validations: the first only sets the head's baseline, so the earliest
        switch follows the second, at the end of epoch 2 x val_every - 1; it must come before the cap (epoch
        train.epochs // 2), or auto would always be the cap."""
        epochs, every = self.train.epochs, self.train.val_every
        cap = latest_linear_probe_switch(epochs)
        if 2 * every >= cap:
            raise ValueError(f"finetune.linear_probe_epochs auto switches at the first validation whose Dice does not rise "
                             f"(the second validation at the earliest, at the end of epoch {2 * every - 1} with "
                             f"train.val_every {every}) and at the latest at epoch train.epochs // 2 = {cap} (train.epochs "
                             f"{epochs}): no validation could stop the probe before that. Fix: raise train.epochs to at "
                             f"least {4 * every + 2}, or lower train.val_every, or give finetune.linear_probe_epochs "
                             "as a number of epochs")

    @property
    def freeze_stages(self) -> list[FreezeStage]:
        """The freezing schedule in force: ``freeze``, or the two stages that finetune.linear_probe_epochs stands for
        (with auto, the latest schedule: everything from epoch train.epochs // 2; the recipe moves the switch earlier
        when the head's validation Dice stops rising)."""
        n = self.finetune.linear_probe_epochs
        if n is None:
            return list(self.freeze)
        return linear_probe_stages(latest_linear_probe_switch(self.train.epochs) if n == "auto" else n)

    @field_validator("freeze")
    @classmethod
    def _increasing(cls, stages: list[FreezeStage]) -> list[FreezeStage]:
        problem = freeze_epochs_problem([stage.epoch for stage in stages])
        if problem:
            raise ValueError(problem)
        return stages

    @model_serializer(mode="wrap")
    def _without_unused_sections(self, handler) -> dict:
        """A config without a search, or with full fine-tuning, dumps as before these sections existed (a resumed
        run compares its config.yaml)."""
        data = handler(self)
        if self.search is None:
            data.pop("search", None)
        if self.finetune == FinetuneConfig():
            data.pop("finetune", None)
        else:
            for key in ("linear_probe_epochs", "lora"):
                if data["finetune"].get(key) is None:
                    data["finetune"].pop(key, None)
        return data


def latest_linear_probe_switch(epochs: int) -> int:
    """The epoch from which everything trains at the latest with finetune.linear_probe_epochs auto: half of the run."""
    return epochs // 2


def linear_probe_stages(switch: int) -> list[FreezeStage]:
    """LP-FT as freeze stages: the head alone (all_but_head) until ``switch``, then everything."""
    return [FreezeStage(0, "all_but_head"), FreezeStage(switch, "none")]


def load_config(path: str | Path, overrides: list[str] = (), schema: type[RunConfig] | None = None,
                checks: Callable[[dict], list[str]] | None = None) -> RunConfig:
    """Read a YAML config, apply ``dotted.key=value`` overrides, validate (``validate_config``), resolve paths."""
    path = Path(path)
    return validate_config(read_raw_config(path, overrides), source=str(path), base=path.parent, schema=schema,
                           checks=checks)


def read_raw_config(path: Path, overrides: list[str] = ()) -> dict:
    """The YAML config as a dict, with ``--set dotted.key=value`` overrides applied (not validated)."""
    raw = read_yaml(Path(path))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MedftError(f"--set {item!r}: expected dotted.key=value, e.g. --set train.epochs=5")
        set_dotted(raw, key.strip(), _from_working_directory(key.strip(), yaml.safe_load(value)), item)
    return raw


# Keys that name files: relative in a config file, they start at its folder; on the command line
# (--set), at the working directory, as the shell completes them.
PATH_KEYS = ("data.manifest", "model.bundle", "data.cache_dir")


def _from_working_directory(key: str, value: Any) -> Any:
    """An override's value with the relative path of a ``PATH_KEYS`` key made absolute from the
    working directory (in a section set whole too: ``--set 'model={bundle: ...}'``)."""
    for path_key in PATH_KEYS:
        section, name = path_key.split(".")
        if key == path_key:
            value = _path_from_working_directory(path_key, value)
        elif key == section and isinstance(value, dict) and name in value:
            value = {**value, name: _path_from_working_directory(path_key, value[name])}
    return value


def _path_from_working_directory(key: str, value: Any) -> Any:
    if isinstance(value, str) and value and (key != "model.bundle" or _is_local(Path.cwd(), value)):
        return _resolve(Path.cwd(), value)
    return value  # a Model Zoo name, or a value of the wrong type that validation reports


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise MedftError(f"{path}: no such config file. Fix: give the path of a YAML run config (see configs/)")
    try:
        with path.open(encoding="utf-8") as file:  # the errors then name the file, not "<unicode string>"
            raw = yaml.load(file, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        raise MedftError(f"{path}: not valid YAML: {exc}. Fix: correct the syntax at the line shown") from None
    except UnicodeDecodeError:
        raise MedftError(f"{path}: not a text file, so not a YAML run config. Fix: give the path of a YAML run "
                         "config (see configs/)") from None
    if not isinstance(raw, dict):
        raise MedftError(f"{path}: a config is a YAML mapping of sections (model, data, ...), got {type(raw).__name__}")
    return raw


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error: PyYAML keeps
    the last one silently, so a second ``train:`` section would drop every key of the first."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"found the key {key!r} twice (the second would silently replace the first); merge the two",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def validate_config(raw: dict, source: str, base: Path | None = None, schema: type[RunConfig] | None = None,
                    checks: Callable[[dict], list[str]] | None = None) -> RunConfig:
    """Validate a config dict; one MedftError lists every problem, each with its key. ``schema``: RunConfig, or
    one that extends it (medft.tune.space's, with the search section's); ``checks``: problems the schema cannot
    see, one line each."""
    config, problems = validated(raw, schema or RunConfig)
    if checks is not None:
        problems += checks(raw)
    if problems:
        raise MedftError(f"{source}: {len(problems)} problem(s) in the config:\n" + "\n".join(problems))
    if base is not None:
        config.data.manifest = _resolve(base, config.data.manifest)
        if config.data.cache_dir:
            config.data.cache_dir = _resolve(base, config.data.cache_dir)
        if config.model.bundle and _is_local(base, config.model.bundle):
            config.model.bundle = _resolve(base, config.model.bundle)
    return config


def validated(raw: dict, schema: type[RunConfig] = RunConfig) -> tuple[RunConfig | None, list[str]]:
    """The config, or None and its problems, one line each."""
    try:
        return schema.model_validate(raw), []
    except ValidationError as exc:
        return None, [_format_error(error) for error in exc.errors()]


_ABSENT = object()


def describe_differences(old: Any, new: Any, limit: int = 5) -> str:
    """The dotted keys where two configs (as dumped, or read from YAML) differ, the first ``limit``
    with their values when short: "optim.lr (0.001 -> 0.0003), freeze.1.epoch (2 -> 3) and 2 more";
    empty when they do not differ."""
    differences = _differences(old, new, "")
    shown = [key if len(before + after) > 40 else f"{key} ({before} -> {after})"
             for key, before, after in ((key, _shown(a), _shown(b)) for key, a, b in differences[:limit])]
    more = len(differences) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def _differences(old: Any, new: Any, prefix: str) -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [difference for key in dict.fromkeys([*old, *new])
                for difference in _differences(old.get(key, _ABSENT), new.get(key, _ABSENT), f"{prefix}{key}.")]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):  # freeze.1.epoch, as --set names it
        return [difference for index, (a, b) in enumerate(zip(old, new, strict=True))
                for difference in _differences(a, b, f"{prefix}{index}.")]
    return [] if old == new else [(prefix.removesuffix("."), old, new)]


def _shown(value: Any) -> str:
    return "absent" if value is _ABSENT else json.dumps(value)


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def describe_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """Every key of a run config (or of ``model``, one that extends it) as (dotted key, type and default,
    description), sections first-level in order."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        section = _section_type(field.annotation)
        if section is not None:
            kinds = {list: ("list: N = 0, 1, ...", f"{key}.N."), dict: ("mapping: NAME = a name of yours", f"{key}.NAME.")}
            shape, inner = kinds.get(get_origin(field.annotation), ("section", f"{key}."))
            rows.append((key, shape, field.description or ""))
            rows += describe_keys(section, inner)
            continue
        default = "required" if field.is_required() else f"default {_shown_default(field)}"
        rows.append((key, f"{_type_name(field.annotation)}, {default}", field.description or ""))
    return rows


def missing_paths(config: RunConfig) -> list[str]:
    """The files a config names that are not there: its manifest and a local bundle folder."""
    problems = []
    if not Path(config.data.manifest).exists():
        problems.append(f"data.manifest: {config.data.manifest}: no such file or folder. "
                        "Fix: give a CSV manifest, an MSD dataset.json or an nnU-Net raw folder")
    bundle = config.model.bundle
    if bundle and Path(bundle).is_absolute() and not Path(bundle).is_dir():
        problems.append(f"model.bundle: {bundle}: no such bundle folder. Fix: give a folder in Model Zoo layout, "
                        "or a Model Zoo name")
    return problems


def _section_type(annotation) -> type[BaseModel] | None:
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _type_name(annotation) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return " | ".join(str(arg) for arg in get_args(annotation))
    if origin in (Union, UnionType):
        return " | ".join(_type_name(arg) for arg in get_args(annotation))
    if annotation is type(None):
        return "None"
    return annotation.__name__ if origin is None else str(annotation).replace("typing.", "")


def _shown_default(field) -> str:
    value = field.get_default(call_default_factory=True)
    return "none" if value is None else str(value.model_dump() if isinstance(value, BaseModel) else value)


def _format_error(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"  {key}: unknown key (check its spelling; `medft validate --keys` lists the keys)"
    if error["type"] == "missing":
        return f"  {key}: required"
    message = error["msg"].removeprefix("Value error, ")
    if isinstance(error["input"], dict):  # a check across a section's keys: the message names them
        return f"  {message}" if not error["loc"] else f"  {key}: {message}"
    return f"  {key}: {message} (got {error['input']!r})"


def set_dotted(raw: dict, key: str, value: Any, item: str) -> None:
    node = raw
    parts = key.split(".")
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or "the config"
        if isinstance(node, list):  # freeze.0.preset: a stage of a list, by its index
            if not (part.isdigit() and int(part) < len(node)):
                raise MedftError(f"--set {item!r}: {where} is a list of {len(node)}; {part!r} is not one of its "
                                 f"indices (0 to {len(node) - 1})")
            part = int(part)
        elif not isinstance(node, dict):
            raise MedftError(f"--set {item!r}: {where} is a value, not a section. Fix: --set {where}=VALUE")
        if depth == len(parts) - 1:
            node[part] = value
        elif isinstance(node, dict):
            if node.get(part) is None:  # absent, or a section left empty in the YAML
                node[part] = {}
            node = node[part]
        else:
            node = node[part]


def _is_local(base: Path, value: str) -> bool:
    """A bundle given as a path rather than a Model Zoo name."""
    return "/" in value or value.startswith(".") or (base / value).exists()


def _resolve(base: Path, value: str) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())
