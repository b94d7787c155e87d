"""A run folder, as ``medft train`` writes it and evaluation, export, resuming and search read it.

- ``config.yaml``: the resolved run config (``write_config`` / ``read_config``);
- ``preprocessing.json``: what the network is fed (``write_preprocessing`` / ``read_preprocessing``);
- ``metrics.jsonl``: one ``EpochRecord`` a line, appended as the run goes (``append_epoch`` /
  ``read_epochs``; ``keep_epochs`` drops the lines of epochs a resumed run does again);
- ``summary.json``: the best validation Dice and its epoch, when the run ends (``write_summary`` /
  ``read_summary``), with the folder's format version;
- ``interpolation.json``, in a folder that ``medft interpolate`` wrote instead of training: its parent run,
  bundle and alpha (``write_interpolation`` / ``read_interpolation``);
- ``head_adaptation.txt``, ``train.log`` and ``tensorboard/`` for people; ``checkpoints/`` is
  ``medft.formats.checkpoint``'s.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from medft import __version__
from medft.atomic_files import atomic_write_text
from medft.config import RunConfig, dump_config, read_yaml, validate_config
from medft.data.preprocessing import Preprocessing
from medft.errors import MedftError

CONFIG = "config.yaml"
PREPROCESSING = "preprocessing.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
INTERPOLATION = "interpolation.json"
HEAD_ADAPTATION = "head_adaptation.txt"
LOG = "train.log"
TENSORBOARD = "tensorboard"
FORMAT_VERSION = 1
T = TypeVar("T")


class EpochRecord(BaseModel):
    """One line of metrics.jsonl; the validation keys are there on epochs that validated."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    epoch: int
    train_loss: float
    lr: list[float]  # per parameter group, after the epoch
    frozen_tensors: int
    trainable_parameters: int | None = None  # elements of the trainable tensors (absent in runs before medft recorded it)
    total_parameters: int | None = None  # elements of all the network's tensors
    seconds: float
    best: bool  # the validation Dice rose: best.pt holds this epoch
    val_dice: float | None = None  # mean over the foreground classes (NaN when no class could be scored)
    val_dice_per_class: dict[str, float] | None = None

    @property
    def validated(self) -> bool:
        return self.val_dice is not None


class TrainingSummary(BaseModel):
    """summary.json, and what ``run_training`` returns."""

    model_config = ConfigDict(extra="forbid")

    best_val_dice: float | None  # None when the run never validated
    best_epoch: int | None
    run_dir: str
    trainable_parameters: int | None = None  # in the last epoch trained (adapters included)
    total_parameters: int | None = None  # the network's own (adapters not included)
    medft_version: str = __version__
    format_version: int = FORMAT_VERSION


class Interpolation(BaseModel):
    """interpolation.json: how ``medft interpolate`` made the folder's weights (WiSE-FT): (1 - alpha) x the
    bundle's + alpha x the parent run's, for the tensors the two share; the others are the run's."""

    model_config = ConfigDict(extra="forbid")

    alpha: float
    parent_run: str  # the fine-tuned run folder
    parent_checkpoint: str  # best.pt or last.pt of the parent run
    bundle: str  # the parent run's model.bundle
    interpolated: list[str]  # tensors mixed with the bundle's
    kept: list[str]  # tensors the bundle has no counterpart for (a new head): the run's
    medft_version: str = __version__
    format_version: int = FORMAT_VERSION


def is_run_folder(path: Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def write_config(run_dir: Path, config: RunConfig) -> Path:
    """config.yaml, rewritten only when its text changes (a resumed run keeps the file as it was)."""
    path, text = Path(run_dir) / CONFIG, dump_config(config)
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(text, path)
    return path


def read_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise MedftError(f"{run_dir}: {f'not a run folder (no {CONFIG})' if path.parent.is_dir() else 'no such folder'}. "
                         "Fix: give the folder that `medft train --out` wrote")
    return validate_config(read_yaml(path), source=str(path))


def write_preprocessing(run_dir: Path, preprocessing: Preprocessing) -> Path:
    path = Path(run_dir) / PREPROCESSING
    atomic_write_text(json.dumps(preprocessing.to_dict(), indent=1) + "\n", path)
    return path


def read_preprocessing(run_dir: Path) -> Preprocessing | None:
    """The recorded preprocessing; None when the folder has none (a run stopped before it was written)."""
    path = Path(run_dir) / PREPROCESSING
    return _read(path, lambda text: Preprocessing.from_dict(_mapping(json.loads(text)), where=str(path)), "a preprocessing record")


def append_epoch(run_dir: Path, record: EpochRecord) -> None:
    with (Path(run_dir) / METRICS).open("a") as file:
        file.write(record.model_dump_json(exclude_none=True) + "\n")


def read_epochs(run_dir: Path) -> list[EpochRecord]:
    """The epoch records of metrics.jsonl ([] when there is none). A last line cut short (a kill or a full
    disk while it was appended) is left out; a damaged line before it is a MedftError."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        record = _epoch_record(line)
        if record is not None:
            records.append(record)
        elif number < len(lines) and line.strip():
            raise MedftError(f"{path}, line {number}: not an epoch's record as `medft train` writes it: {line[:80]!r}. "
                             "Fix: repair or delete that line (each line holds one epoch)")
    return records


def keep_epochs(run_dir: Path, epochs_done: int) -> None:
    """Drop the lines of epochs from ``epochs_done`` on (written before a kill, done again by the resumed
    run) and a last line cut short; rewritten atomically, so a kill meanwhile loses no line."""
    path = Path(run_dir) / METRICS
    if path.exists():
        kept = [record for record in read_epochs(run_dir) if record.epoch < epochs_done] if epochs_done else []
        atomic_write_text("".join(record.model_dump_json(exclude_none=True) + "\n" for record in kept), path)


def write_summary(run_dir: Path, summary: TrainingSummary) -> Path:
    return _write(Path(run_dir) / SUMMARY, summary)


def read_summary(run_dir: Path) -> TrainingSummary | None:
    """summary.json; None while the run has not ended."""
    return _read(Path(run_dir) / SUMMARY, TrainingSummary.model_validate_json, "a summary")


def write_interpolation(run_dir: Path, interpolation: Interpolation) -> Path:
    return _write(Path(run_dir) / INTERPOLATION, interpolation)


def read_interpolation(run_dir: Path) -> Interpolation | None:
    """interpolation.json; None in a folder that training wrote."""
    return _read(Path(run_dir) / INTERPOLATION, Interpolation.model_validate_json, "an interpolation record")


def _write(path: Path, record: BaseModel) -> Path:
    """``record`` as indented JSON at ``path``, written atomically."""
    atomic_write_text(json.dumps(record.model_dump(), indent=1) + "\n", path)
    return path


def _read(path: Path, parse: Callable[[str], T], what: str) -> T | None:
    """``parse`` of the file's text; None when there is no such file; a MedftError that names it when it is damaged."""
    if not path.is_file():
        return None
    try:
        return parse(path.read_text())
    except ValueError as exc:  # JSON's errors and pydantic's
        problem = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        raise MedftError(f"{path}: not {what} as medft train writes it ({problem}). Fix: restore it from a copy, "
                         "or start a new run with another --out") from None


def _mapping(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _epoch_record(line: str) -> EpochRecord | None:
    """``line`` as an epoch's record, or None when it is not one (damaged, cut short)."""
    try:
        return EpochRecord.model_validate_json(line)
    except ValidationError:
        return None

