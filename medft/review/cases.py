"""The case table of the review app, read from an evaluation folder (no UI here).

One :class:`CaseEntry` per case of ``evaluation.json``: its id, site, status, and per foreground
class the Dice, sensitivity and specificity of ``per_case.csv`` with the foreground-mean Dice
(NaN classes left out, as in ``medft.evaluate.summary``).

Safety: the app never turns text from the browser into a path. A case is chosen by ``case_id``;
:meth:`CaseTable.get` refuses an id that is not in the table (:class:`UnknownCaseError`), and the
only files ever read are the ones ``evaluation.json`` lists for that case. A prediction path must
stay inside the evaluation folder.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medft.errors import DataError, MedftError
from medft.evaluate.folder import PER_CASE
from medft.evaluate.summary import read_per_case
from medft.formats import evaluation as evaluation_file
from medft.formats.evaluation import CaseRecord, CaseStatus, read_evaluation_file
from medft.review.store import evaluate_again

EVALUATION = evaluation_file.FILE
SORTS = ("worst", "best", "case_id")
SORT_LABELS = {"worst": "worst first", "best": "best first", "case_id": "by case id"}
REVIEW_FILTERS = ("all", "not reviewed", "reviewed")


class UnknownCaseError(MedftError):
    """A case id that is not in the evaluation folder (never a path on disk)."""


@dataclass(frozen=True)
class CaseEntry:
    """One case of an evaluation folder, as the case list shows it."""

    case_id: str
    site: str
    status: CaseStatus
    message: str | None = None
    dice: dict[str, float] = field(default_factory=dict)  # per foreground class name
    sensitivity: dict[str, float] = field(default_factory=dict)
    specificity: dict[str, float] = field(default_factory=dict)
    mean_dice: float = math.nan

    @property
    def viewable(self) -> bool:
        """True when there is a prediction to review."""
        return self.status.has_prediction

    @property
    def scored(self) -> bool:
        return not math.isnan(self.mean_dice)

    def score(self, class_name: str | None = None) -> float:
        """The Dice that orders the list: the foreground mean, or one class's."""
        if class_name is None:
            return self.mean_dice
        return self.dice.get(class_name, math.nan)

    def metrics_rows(self) -> list[dict]:
        """One row per foreground class: class, Dice, sensitivity, specificity (NaN kept)."""
        return [
            {"class": name, "dice": self.dice[name], "sensitivity": self.sensitivity.get(name, math.nan),
             "specificity": self.specificity.get(name, math.nan)}
            for name in self.dice
        ]


@dataclass(frozen=True)
class Progress:
    reviewed: int
    total: int

    @property
    def fraction(self) -> float:
        return self.reviewed / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"{self.reviewed} of {self.total} reviewed"


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case, as listed in evaluation.json (resolved, never from the browser)."""

    image: tuple[Path, ...]
    series_uid: str | None
    label: Path | None
    prediction: Path | None


class CaseTable:
    """The cases of one evaluation folder, in ``evaluation.json`` order."""

    def __init__(self, eval_dir: Path, class_names: list[str], entries: list[CaseEntry], files: dict[str, CaseFiles],
                 model_name: str | None = None, identity: tuple | None = None, label_map: dict[int, int] | None = None,
                 segment_names: dict[int, list[str]] | None = None):
        self.eval_dir = eval_dir
        self.label_map = label_map or {}  # the run's data.label_map: ground-truth file value -> class
        self.segment_names = segment_names or {}  # how a DICOM SEG or RTSTRUCT ground truth names the label values
        self.identity = identity  # see evaluation_identity: what was read
        self.class_names = class_names
        self.entries = entries
        self._by_id = {e.case_id: e for e in entries}
        self._files = files
        self.model_name = model_name

    # ---------------------------------------------------------------------------------------
    @classmethod
    def from_eval_dir(cls, eval_dir: str | Path) -> CaseTable:
        """Read ``per_case.csv`` and ``evaluation.json`` of an evaluation folder."""
        given = Path(eval_dir)
        eval_dir = given.resolve()
        check_eval_dir(eval_dir)
        folder = os.stat(given)  # before the files: a folder put in its place later is told apart
        evaluation = read_evaluation_file(eval_dir, fix=evaluate_again(eval_dir))
        rows = read_per_case(eval_dir / PER_CASE)
        class_names = evaluation.class_names
        foreground = class_names[1:]

        cells: dict[str, dict[int, dict]] = {}
        for row in rows:
            cells.setdefault(str(row["case_id"]), {})[int(row["class_index"])] = row

        entries, files = [], {}
        for record in evaluation.cases:
            case_id = record.case_id
            case_rows = cells.get(case_id, {})
            dice, sens, spec = {}, {}, {}
            for index, name in enumerate(foreground, start=1):
                row = case_rows.get(index, {})
                dice[name] = _float(row.get("dice"))
                sens[name] = _float(row.get("sensitivity"))
                spec[name] = _float(row.get("specificity"))
            values = [v for v in dice.values() if not math.isnan(v)]
            entries.append(CaseEntry(
                case_id=case_id,
                site=record.site or "",
                status=record.status,
                message=record.message,
                dice=dice, sensitivity=sens, specificity=spec,
                mean_dice=sum(values) / len(values) if values else math.nan,
            ))
            files[case_id] = _case_files(eval_dir, record)
        return cls(eval_dir, class_names, entries, files, model_name=evaluation.model.name,
                   identity=_identity(folder, evaluation.evaluation_id), label_map=evaluation.label_map,
                   segment_names=evaluation.segment_names)

    def replaced(self, eval_dir: str | Path) -> bool:
        """Whether ``eval_dir`` (the folder as given to ``from_eval_dir``) no longer holds the
        evaluation this table was read from: another evaluation_id, another folder put in its
        place, or nothing readable. Reads only the folder's inode and the id."""
        now = evaluation_identity(eval_dir)
        return now is None or now != self.identity

    # ---------------------------------------------------------------------------------------
    @property
    def case_ids(self) -> list[str]:
        return [e.case_id for e in self.entries]

    @property
    def foreground(self) -> list[str]:
        return self.class_names[1:]

    @property
    def sites(self) -> list[str]:
        return sorted({e.site for e in self.entries if e.site})

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, case_id: object) -> bool:
        return isinstance(case_id, str) and case_id in self._by_id

    def get(self, case_id: str) -> CaseEntry:
        """The case with this id; :class:`UnknownCaseError` for any other text."""
        if not isinstance(case_id, str) or case_id not in self._by_id:
            raise UnknownCaseError(f"no case {str(case_id)[:80]!r} in this evaluation")
        return self._by_id[case_id]

    def files(self, case_id: str) -> CaseFiles:
        """The files of a case in the table (its id checked first)."""
        self.get(case_id)
        return self._files[case_id]

    # ---------------------------------------------------------------------------------------
    def select(
        self,
        sort: str = "worst",
        by_class: str | None = None,
        site: str | None = None,
        review: str = "all",
        reviewed: Iterable[str] = (),
    ) -> list[CaseEntry]:
        """The case list: filtered, then sorted.

        ``sort``: "worst" (lowest Dice first), "best" or "case_id". The Dice is the foreground
        mean, or ``by_class``'s. Cases without that Dice come after the scored ones (in case id
        order), then the failed cases. ``site``: only that site (None: all). ``review``: "all",
        "not reviewed" or "reviewed", against the ``reviewed`` case ids (one reviewer's).
        """
        if sort not in SORTS:
            raise ValueError(f"sort must be one of {SORTS}, got {sort!r}")
        if review not in REVIEW_FILTERS:
            raise ValueError(f"review must be one of {REVIEW_FILTERS}, got {review!r}")
        if by_class is not None and by_class not in self.foreground:
            raise ValueError(f"by_class must be one of the foreground classes {self.foreground}, got {by_class!r}")
        done = set(reviewed)
        chosen = [
            e for e in self.entries
            if (not site or e.site == site)
            and (review == "all" or (e.case_id in done) == (review == "reviewed"))
        ]

        def key(e: CaseEntry):
            value = e.score(by_class)
            group = 2 if not e.viewable else (1 if math.isnan(value) else 0)
            if sort == "case_id" or group:
                return (group, 0.0, e.case_id)
            return (group, value if sort == "worst" else -value, e.case_id)

        return sorted(chosen, key=key)

    def progress(self, reviewed: Iterable[str]) -> Progress:
        """How many of the cases with a prediction the reviewer has graded."""
        viewable = {e.case_id for e in self.entries if e.viewable}
        return Progress(len(viewable & set(reviewed)), len(viewable))

    def neighbours(self, order: Sequence[CaseEntry], case_id: str,
                   reference: Sequence[CaseEntry] | None = None) -> tuple[str | None, str | None]:
        """Previous and next case ids around ``case_id`` in a list (None at the ends).

        When ``case_id`` has dropped out of ``order`` (a "not reviewed" list, after its review),
        it keeps its place from ``reference`` (the same list unfiltered), so "next" still moves on.
        """
        ids = [e.case_id for e in order]
        if case_id not in ids and reference is not None:
            keep = set(ids) | {case_id}
            ids = [e.case_id for e in reference if e.case_id in keep]
        if case_id not in ids:
            return None, (ids[0] if ids else None)
        i = ids.index(case_id)
        return (ids[i - 1] if i > 0 else None), (ids[i + 1] if i + 1 < len(ids) else None)


def check_eval_dir(eval_dir: str | Path) -> Path:
    """The folder, when it holds ``per_case.csv`` and ``evaluation.json``; MedftError otherwise."""
    eval_dir = Path(eval_dir)
    if not eval_dir.is_dir():
        raise MedftError(f"{eval_dir}: no such folder. Fix: give the output folder of 'medft evaluate'")
    missing = [name for name in (PER_CASE, EVALUATION) if not (eval_dir / name).is_file()]
    if missing:
        raise MedftError(
            f"{eval_dir}: not an evaluation folder ({' and '.join(missing)} missing). "
            f"Fix: give the --out folder of 'medft evaluate', or run it first"
        )
    return eval_dir


def evaluation_identity(eval_dir: str | Path) -> tuple | None:
    """What tells the evaluation in a folder from one put in its place: the folder's device and
    inode (a folder moved away and another moved in differ, even holding a copy) and the
    evaluation_id of its evaluation.json. None when they cannot be read."""
    try:
        folder = os.stat(eval_dir)
        evaluation = read_evaluation_file(eval_dir)
    except (OSError, MedftError):
        return None
    return _identity(folder, evaluation.evaluation_id)


def _identity(folder: os.stat_result, evaluation_id: str) -> tuple:
    return (folder.st_dev, folder.st_ino, evaluation_id)


def format_score(value: float, digits: int = 3) -> str:
    """A metric for display: fixed decimals, an en dash for NaN."""
    return "\u2013" if value is None or math.isnan(value) else f"{value:.{digits}f}"


# --------------------------------------------------------------------------------------------
def _case_files(eval_dir: Path, record: CaseRecord) -> CaseFiles:
    def resolve(value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else (eval_dir / path).resolve()

    prediction = None
    if record.prediction:
        prediction = (eval_dir / record.prediction).resolve()
        if not prediction.is_relative_to(eval_dir):
            raise DataError(
                f"case {record.case_id}: the prediction {record.prediction!r} lies outside the evaluation folder",
                f"medft writes predictions/<case_id>.nii.gz inside it; {evaluate_again(eval_dir)}",
                file=eval_dir / EVALUATION,
            )
    return CaseFiles(
        image=tuple(resolve(p) for p in record.image),
        series_uid=record.series_uid or None,
        label=resolve(record.label) if record.label else None,
        prediction=prediction,
    )


def _float(value) -> float:
    if value is None or value == "":
        return math.nan
    return float(value)
