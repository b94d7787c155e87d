"""An evaluation folder's ``evaluation.json``: the model, data and options of one ``medft evaluate``, and
each case's files and status. ``medft evaluate`` writes it; the report, the comparison, the review app and
the review store read it. Its paths are for the researcher: nothing shown to people prints them."""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medft.atomic_files import atomic_write_text
from medft.errors import DataError

FILE = "evaluation.json"
FORMAT_VERSION = 1
EVALUATE_AGAIN = ("evaluate the model again into a new folder "
                  "(`medft evaluate MODEL --manifest MANIFEST --out NEW_EVAL_DIR`) and use that one")


class CaseStatus(str, Enum):
    OK = "ok"  # predicted and scored against its label
    PREDICTION_ONLY = "prediction_only"  # predicted; no label to score against
    FAILED = "failed"  # not predicted: ``message`` says why

    def __str__(self) -> str:
        return self.value

    @property
    def has_prediction(self) -> bool:
        return self is not CaseStatus.FAILED


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CaseRecord(_Record):
    case_id: str = Field(min_length=1)
    site: str | None = None
    image: list[str]  # the image files (one per channel, or a DICOM series folder)
    series_uid: str | None = None
    label: str | None = None
    prediction: str | None = None  # relative to the evaluation folder
    dicom_seg: str | None = None  # the prediction as DICOM SEG (--dicom-seg, DICOM inputs), relative to the folder
    status: CaseStatus = CaseStatus.OK
    message: str | None = None  # why a case failed or was scored without its label (no paths)


class ModelInfo(_Record):
    path: str
    kind: Literal["run", "bundle", "adapter"]  # adapter: medft export --adapter, run on its parent bundle
    name: str
    version: str | None = None
    checkpoint: str | None = None  # a run's (or the one an adapter was exported from): best.pt or last.pt
    parent: str | None = None  # an adapter's parent bundle: its name (no path)
    parent_version: str | None = None

    @property
    def display_name(self) -> str:
        return f"{self.name} {self.version}" if self.version else self.name


class Evaluation(_Record):
    format_version: int = FORMAT_VERSION
    evaluation_id: str = Field(min_length=1)  # scopes this evaluation's rows in a shared review store
    model: ModelInfo
    manifest: str
    split: str | None = None
    class_names: list[str]
    label_map: dict[int, int] = Field(default_factory=dict)  # the label files' values -> classes
    # label value -> the names that map a DICOM SEG's segments or an RTSTRUCT's ROIs to it (the manifest's classes)
    segment_names: dict[int, list[str]] = Field(default_factory=dict)
    preprocessing: dict | None = None  # Preprocessing.to_dict(public=True)
    tta: bool = False
    tta_flip_axes: list[int] = Field(default_factory=list)
    largest_component: bool = False
    created: str  # ISO 8601, UTC
    medft_version: str
    cases: list[CaseRecord]
    confusion_matrix: list[list[int]] | None = None  # [truth][prediction] voxel counts over the scored cases
    roc: dict = Field(default_factory=dict)  # class name -> {fpr, tpr, auc}
    warnings: list[str] = Field(default_factory=list)

    @property
    def foreground(self) -> list[tuple[int, str]]:
        return list(enumerate(self.class_names))[1:]


def write_evaluation(eval_dir: Path, evaluation: Evaluation) -> Path:
    path = Path(eval_dir) / FILE
    atomic_write_text(evaluation.model_dump_json(indent=1) + "\n", path)
    return path


def read_evaluation_file(eval_dir: str | Path, fix: str = EVALUATE_AGAIN) -> Evaluation:
    """The ``evaluation.json`` of ``eval_dir``; a DataError naming the file, the problem and ``fix`` when it is
    missing, not JSON, not what medft evaluate writes, or from a newer medft."""
    path = Path(eval_dir) / FILE
    if not path.is_file():
        raise DataError(f"not found, so {path.parent} is not an evaluation folder",
                        "give the folder that `medft evaluate ... --out EVAL_DIR` wrote", file=path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"not valid JSON ({exc})", fix, file=path) from None
    version = data.get("format_version", FORMAT_VERSION) if isinstance(data, dict) else FORMAT_VERSION
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise DataError(f"format {version}, written by medft {data.get('medft_version')}; this medft reads format "
                        f"{FORMAT_VERSION} and older", "upgrade medft", file=path)
    try:
        evaluation = Evaluation.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'the file'}: {e['msg']}" for e in exc.errors()[:3])
        raise DataError(f"not an evaluation.json that medft evaluate writes ({problems})", fix, file=path) from None
    seen = set()
    for case in evaluation.cases:
        if case.case_id in seen:
            raise DataError(f"case id {case.case_id!r} is listed twice", fix, file=path)
        seen.add(case.case_id)
    return evaluation
