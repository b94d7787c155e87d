"""Reading an evaluation folder: ``evaluation.json`` (through ``medft.formats.evaluation``), ``summary.json``
and ``per_case.csv`` (through ``medft.evaluate.summary.read_per_case``), read once for the report, the
comparison and the benchmarks that pool evaluations."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from medft.errors import MedftError
from medft.evaluate.hidden_paths import hide_paths
from medft.evaluate.summary import read_per_case
from medft.formats.evaluation import EVALUATE_AGAIN, CaseRecord, Evaluation, read_evaluation_file

SUMMARY = "summary.json"
PER_CASE = "per_case.csv"


@dataclass
class EvaluationFolder:
    """What an evaluation folder holds, read once. ``summary`` is None when the file is absent."""

    path: Path
    evaluation: Evaluation
    summary: dict | None
    rows: list[dict] = field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        """All class names, background first."""
        return list(self.evaluation.class_names)

    @property
    def foreground(self) -> list[tuple[int, str]]:
        return self.evaluation.foreground

    @property
    def cases(self) -> list[CaseRecord]:
        return self.evaluation.cases

    def hide_paths(self, text: str) -> str:
        """``text`` without the paths that evaluation.json records, nor any other absolute path (``hide_paths``)."""
        known = [self.evaluation.manifest, self.evaluation.model.path]
        for case in self.cases:
            known += [*case.image, case.label]
        return hide_paths(text, known)

    def resolve(self, text: str) -> Path:
        """A path from evaluation.json: absolute, or relative to the evaluation folder, the manifest's folder or here."""
        path = Path(text)
        if path.is_absolute():
            return path
        for base in (self.path, Path(self.evaluation.manifest).parent, Path.cwd()):
            if (base / path).exists():
                return base / path
        return self.path / path

    @property
    def label_map(self) -> dict[int, int]:
        return self.evaluation.label_map

    @property
    def model_name(self) -> str:
        return self.evaluation.model.display_name


def read_evaluation(eval_dir: str | Path) -> EvaluationFolder:
    """Read an evaluation folder; a MedftError when ``evaluation.json`` is missing or unreadable."""
    eval_dir = Path(eval_dir)
    evaluation = read_evaluation_file(eval_dir)
    summary_path = eval_dir / SUMMARY
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedftError(f"{summary_path}: not valid JSON ({exc}). Fix: {EVALUATE_AGAIN}") from None
    per_case = eval_dir / PER_CASE
    rows = read_per_case(per_case) if per_case.is_file() else []
    return EvaluationFolder(eval_dir, evaluation, summary, rows)


def case_mean_dice(rows: list[dict]) -> dict[str, float]:
    """Foreground-mean Dice per case (classes whose Dice is NaN left out; NaN when all are)."""
    values: dict[str, list[float]] = {}
    for row in rows:
        if int(row.get("class_index", 0)) == 0:
            continue
        values.setdefault(row["case_id"], []).append(row["dice"])
    return {case: _nanmean(v) for case, v in values.items()}


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
