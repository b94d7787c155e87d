"""``medft evaluate`` and ``medft predict``: predictions, per-case metrics, summary, report.

An evaluation folder holds ``per_case.csv``, ``summary.json``, ``evaluation.json`` (model, data,
cases and their status, voxel confusion matrix, ROC curves), ``predictions/<case_id>.nii.gz``
(with ``dicom_seg``, also ``predictions/<case_id>.seg.dcm`` for each DICOM input) and ``report.html``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import uuid
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from tqdm.auto import tqdm

from medft import __version__
from medft.atomic_files import new_file, new_folder
from medft.case_pictures import ReportSlice, report_slice
from medft.data.checks import label_value_problems
from medft.data.loading import DicomSource, dicom_source, to_ras
from medft.data.manifest import Case, LabelClass, Manifest, case_id_problem, load_manifest, read_classes_file
from medft.errors import DataError, MedftError, find_user_error
from medft.evaluate.compare import check_comparable, compare_evaluations, read_comparison
from medft.evaluate.dicom_seg import Algorithm, SegmentClass, write_prediction_seg
from medft.evaluate.folder import PER_CASE, SUMMARY, case_mean_dice
from medft.evaluate.inference import (
    TrainedModel,
    check_channels,
    load_model,
    native_labels,
    predict,
    save_prediction,
)
from medft.evaluate.prefetch import prefetched
from medft.evaluate.report import MAX_WORST_CASES, write_report
from medft.evaluate.scoring import case_rows, label_map
from medft.evaluate.summary import summarize, write_per_case
from medft.formats.evaluation import CaseRecord, CaseStatus, Evaluation, write_evaluation
from medft.metrics import confusion_matrix
from medft.slices import voxel_spacing

log = logging.getLogger("medft.evaluate")
ROC_BINS = 1000  # probability histogram resolution of the ROC curves
SHOWN_IMAGE = "medft_shown_image"  # key of a loaded case: its image as loaded (first channel, affine)


@dataclass
class EvaluationResult:
    """What ``evaluate`` wrote: the folder, its evaluation.json and summary.json, and the comparison."""

    folder: Path
    evaluation: Evaluation
    summary: dict  # summary.json: per class and metric, overall and per site (``summarize``)
    comparison_page: Path | None = None  # comparison.html, with ``compare``
    comparison: dict | None = None  # comparison.json

    @property
    def failed_cases(self) -> list[CaseRecord]:
        return [case for case in self.evaluation.cases if case.status is CaseStatus.FAILED]


def evaluate(model_path: str | Path, manifest_path: str | Path, out: str | Path, split: str | None = None,
             tta: bool = False, largest_component: bool = False, checkpoint: str = "best",
             compare: str | Path | None = None, parent: str | Path | None = None, dicom_seg: bool = False) -> EvaluationResult:
    """Evaluate a run or bundle on the cases of a manifest (one split, or all) into ``out``, a new
    or empty folder.

    ``tta``: average over the mirrorings the model was trained with (``predict``); ``largest_component``: keep each
    class's largest connected component (``keep_largest_components``); ``checkpoint``: a run's
    best.pt (default) or last.pt (see ``load_model``); ``compare``: another evaluation folder, checked
    before inference, then set beside this one in ``out/comparison.html`` (``compare_evaluations``); ``parent``:
    an adapter folder's parent bundle, when not where its adapter.json says (see ``load_model``); ``dicom_seg``: also
    write each DICOM input's prediction as a DICOM SEG of its series (``write_prediction_seg``), its segments coded
    as the manifest's classes file says.

    The folder is written under a partial name and renamed to ``out`` once complete (``new_folder``):
    an interrupted evaluation leaves no ``out``, and the next one removes what it left."""
    out = Path(out)
    require_new_folder(out)
    model = load_model(model_path, checkpoint=checkpoint, parent=parent)
    if compare is not None:
        check_comparable(compare, model.class_names)
    manifest = load_manifest(manifest_path)
    check_classes(model, manifest.class_names, manifest.path)
    cases = manifest.split(split)
    if not cases:
        raise MedftError(f"{manifest.path}: no cases in split {split!r}. Fix: give another --split, or none for all cases")
    with new_folder(out) as partial:  # a kill leaves no folder that looks like an evaluation
        seg = _SegOutput(model, manifest.classes) if dicom_seg else None
        evaluation, summary = _write_evaluation(partial, model, manifest, cases, split, tta, largest_component, seg)
    result = EvaluationResult(out, evaluation, summary)
    if compare is not None:
        result.comparison_page = compare_evaluations(compare, out)  # once out is in place: the page names the folders
        result.comparison = read_comparison(result.comparison_page)
    return result


def _write_evaluation(out: Path, model: TrainedModel, manifest: Manifest, cases: list[Case], split: str | None,
                      tta: bool, largest_component: bool, seg: _SegOutput | None) -> tuple[Evaluation, dict]:
    """Predict and score ``cases`` into ``out``: predictions/, per_case.csv, summary.json, evaluation.json, report.html.
    Each case is loaded while the one before it is predicted (``prefetched``)."""
    scores = _Scores(model.class_names)
    records: list[dict] = []
    warnings: list[tuple[str, str]] = []  # (as evaluation.json keeps it, as the console shows it)
    loading = Compose(model.preprocessing.loading(model.label_map, manifest.segment_names))
    steps = model.preprocessing.compose
    inputs = ((case, loading_record(case)) for case in cases)
    with closing(prefetched(inputs, lambda entry: _load_case(*entry, model, loading, steps))) as loaded_cases:
        for (case, item), loaded in tqdm(loaded_cases, total=len(cases), desc="evaluating", unit="case", disable=None):
            records.append(_evaluate_case(case, item, loaded, model, out, tta, largest_component, scores, warnings, seg))
    not_dicom = [case.case_id for case in cases if not case.is_dicom]
    if seg is not None and not_dicom:
        line = (f"--dicom-seg: {len(not_dicom)} case(s) have NIfTI images, so no DICOM SEG of them (e.g. case {not_dicom[0]}): "
                "their predictions are NIfTI only")
        warnings.append((line, line))
    write_per_case(out / PER_CASE, scores.rows)
    summary = summarize(scores.rows, model.class_names)
    (out / SUMMARY).write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    evaluation = Evaluation(
        evaluation_id=uuid.uuid4().hex, model=model.info, manifest=str(manifest.path), split=split,
        class_names=model.class_names, label_map=dict(sorted(model.label_map.items())),
        segment_names={i: list(names) for i, names in manifest.segment_names.items()},
        preprocessing=model.preprocessing.to_dict(public=True), tta=tta,
        tta_flip_axes=list(model.flip_axes) if tta else [], largest_component=largest_component,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), medft_version=__version__,
        cases=[CaseRecord(**record) for record in records], confusion_matrix=scores.confusion.tolist(),
        roc=_roc_curves(scores.histograms, model.class_names), warnings=[stored for stored, _ in warnings],
    )
    write_evaluation(out, evaluation)
    write_report(out, scores.pictures.slices)
    for _, shown in warnings:
        log.warning(shown)
    return evaluation, summary


def loading_record(case: Case) -> dict:
    """The case's record for loading: without its label when the label file is missing."""
    item = case.record()
    if case.label is not None and not case.label.exists():
        item.pop("label")
    return item


def _load_case(case: Case, item: dict, model: TrainedModel, loading: Compose, steps: Compose) -> dict:
    """The case loaded and preprocessed, checked against the model (channels, label values), with its image
    as loaded (``SHOWN_IMAGE``: the first channel, for the report's picture of the case)."""
    data = loading(item)
    image = data["image"].as_tensor()[0].detach().cpu().numpy()
    shown = image.astype(np.float32, copy=True), np.asarray(data["image"].affine, dtype=np.float64)
    data = steps(data)
    data[SHOWN_IMAGE] = shown
    check_channels(model.in_channels, data["image"], ", ".join(str(p) for p in case.image))
    require_class_labels(data, case, model.class_names)
    return data


def _evaluate_case(case: Case, item: dict, loaded: dict | Exception, model: TrainedModel, out: Path, tta: bool,
                   largest_component: bool, scores: _Scores, warnings: list[tuple[str, str]], seg: _SegOutput | None) -> dict:
    """Predict one case, loaded from ``item`` (``_load_case``: its data, or the exception that stopped it), into
    ``out/predictions/`` and score it when it has a label; its evaluation.json record.

    A case that the user's data keeps from being predicted (``find_user_error``) is recorded as failed; what
    is worth a warning is added to ``warnings``."""
    record = {"case_id": case.case_id, "site": case.site, "image": [str(p) for p in case.image],
              "series_uid": case.series_uid, "label": item.get("label"),
              "prediction": None, "status": CaseStatus.OK, "message": None}
    if case.label is not None and "label" not in item:
        record["message"] = f"label file {case.label} not found: evaluated as prediction-only"
        warnings.append((f"case {case.case_id}: {record['message']}",) * 2)
    if isinstance(loaded, Exception):
        stored, shown = failure_lines(user_problem(loaded))
        record.update(status=CaseStatus.FAILED, message=stored)
        warnings.append((f"case {case.case_id}: not evaluated: {stored}", f"case {case.case_id}: not evaluated: {shown}"))
        return record
    probs = model.preprocessing.to_input_grid(predict(model, loaded["image"], tta=tta), loaded["image"])
    labels = label_map(probs, largest_component)
    record["prediction"] = str(save_prediction(labels, probs, out / "predictions" / f"{case.case_id}.nii.gz").relative_to(out))
    source = dicom_source(case.image, case.series_uid)
    if seg is not None and source is not None:
        written = seg.write(labels, probs, source, out / "predictions" / f"{case.case_id}{SEG_SUFFIX}")
        record["dicom_seg"] = str(written.relative_to(out))
    if "label" not in loaded:
        record["status"] = CaseStatus.PREDICTION_ONLY
        if not record["message"]:
            warnings.append((f"case {case.case_id}: no label, evaluated as prediction-only",) * 2)
        return record
    scores.add(case, labels, loaded["label"], probs, loaded[SHOWN_IMAGE])
    return record


def user_problem(exc: Exception) -> MedftError:
    """The user's error behind ``exc`` (``find_user_error``); ``exc`` itself is raised when there is none."""
    problem = find_user_error(exc)
    if problem is None:
        raise exc
    return problem


def failure_lines(problem: MedftError) -> tuple[str, str]:
    """A failed case's reason as evaluation.json stores it and as the console shows it."""
    if isinstance(problem, DataError):  # the line is about the case already
        return problem.details.without_case(public=True), problem.details.without_case()
    return problem.public, str(problem)


class _Scores:
    """What the scored cases add up to: their per_case.csv rows, the voxel confusion matrix, and the
    probability histograms that the ROC curves are drawn from."""

    def __init__(self, class_names: list[str]):
        n = len(class_names)
        self.class_names = class_names
        self.rows: list[dict] = []
        self.confusion = torch.zeros(n, n, dtype=torch.int64)
        self.histograms = np.zeros((2, n, ROC_BINS), dtype=np.int64)  # [negatives, positives] per class
        self.pictures = _WorstPictures(MAX_WORST_CASES)

    def add(self, case: Case, labels: torch.Tensor, label, probs, shown_image: tuple[np.ndarray, np.ndarray]) -> None:
        """A case's predicted ``labels`` against its ``label`` (as loaded, (1, *spatial)), with its ``probs`` and
        its image as loaded (first channel, affine)."""
        n = len(self.class_names)
        target = label.as_subclass(torch.Tensor)[0].long()  # no MetaTensor bookkeeping on every voxel operation
        matrix = confusion_matrix(labels, target, n)
        rows = case_rows(case.case_id, case.site, self.class_names, labels, target, voxel_spacing(label.affine), matrix)
        self.rows += rows
        self.confusion += matrix
        _add_histograms(self.histograms, probs.as_tensor(), target)
        image, affine = shown_image
        if image.shape == tuple(target.shape):
            self.pictures.offer(case.case_id, case_mean_dice(rows).get(case.case_id, math.nan),
                                lambda: report_slice_in_ras(image, affine, target, labels))


def report_slice_in_ras(image: np.ndarray, affine: np.ndarray, truth: torch.Tensor, prediction: torch.Tensor) -> ReportSlice:
    """The report's slice of a case from its arrays on the grid it was loaded on (as stored when the model's
    preprocessing does not reorient), brought to RAS as the report brings the files it reads."""
    volumes = [to_ras(MetaTensor(torch.as_tensor(values)[None], affine=torch.as_tensor(affine)))
               for values in (image, truth.to(torch.int16), prediction.to(torch.int16))]
    image_ras, truth_ras, prediction_ras = (np.asarray(v.as_tensor()[0]) for v in volumes)
    return report_slice(image_ras, np.asarray(volumes[0].affine, dtype=np.float64), truth_ras, prediction_ras)


class _WorstPictures:
    """The report's slices of the cases with the lowest mean Dice so far (the report shows ``limit`` of them), made
    while a case is in memory: the report need not read their files again (it reads those of any other case)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.kept: dict[str, tuple[tuple[float, str], ReportSlice]] = {}

    @property
    def slices(self) -> dict[str, ReportSlice]:
        return {case_id: picture for case_id, (_, picture) in self.kept.items()}

    def offer(self, case_id: str, mean_dice: float, make: Callable[[], ReportSlice]) -> None:
        """Keep the case's slice (``make()``) when it is among the ``limit`` worst, in the report's order."""
        if not math.isfinite(mean_dice):
            return  # the report shows no case whose Dice is all NaN
        rank = (mean_dice, case_id)
        if len(self.kept) >= self.limit and rank >= max(r for r, _ in self.kept.values()):
            return
        self.kept[case_id] = (rank, make())
        if len(self.kept) > self.limit:
            del self.kept[max(self.kept, key=lambda c: self.kept[c][0])]


def require_class_labels(data: dict, case: Case, class_names: list[str]) -> None:
    """DataError, as check-data words it, for label values that are not the model's classes: the
    case would otherwise be scored against a label cut to whole numbers or out of range."""
    problems = label_value_problems(data["label"], case.label, class_names) if "label" in data else []
    if problems:
        raise DataError(problems[0].problem, problems[0].fix, file=problems[0].file)


REVIEW_FILES = ("reviews.sqlite", "users.json")  # written into an evaluation folder by its reviewers


def require_new_folder(out: Path) -> None:
    """An evaluation is written afresh, never over another: its reviews are tied to its
    evaluation_id, and its predictions/ to its per_case.csv."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        kept = [name for name in REVIEW_FILES if (out / name).exists()]
        delete = (f"give a new folder to --out (it holds {' and '.join(kept)}: deleting it would lose the reviews)"
                  if kept else f"give a new folder to --out, or delete {out} first")
        raise MedftError(f"{out} exists and is not an empty folder: writing this evaluation into it would mix it up "
                         f"with what is there. Fix: {delete}")


def predict_files(model_path: str | Path, inputs: list[Path], out: Path, tta: bool = False,
                  largest_component: bool = False, overwrite: bool = False,
                  parent: str | Path | None = None, dicom_seg: bool = False, classes: Path | None = None) -> list[Path]:
    """Predict NIfTI files or DICOM series folders; one ``<case_id>.nii.gz`` each in ``out``, each
    renamed into place once written (``new_file``): an interrupted run leaves whole files only. With ``dicom_seg``,
    each DICOM series also gets ``<case_id>.seg.dcm`` (``write_prediction_seg``), its segments coded as the classes
    file ``classes`` says (the .classes.json form), when given.

    A prediction file already in ``out`` is a MedftError before any inference, unless ``overwrite``.
    An input that cannot be predicted (unreadable, NaN voxels, other channels than the model's) does
    not stop the others: they are written, then one MedftError names each input that failed and why.
    Each input is loaded while the one before it is predicted (``prefetched``). ``parent``: an adapter folder's
    parent bundle, when not where its adapter.json says.
    """
    case_ids = _distinct_case_ids(inputs, out)
    suffixes = (".nii.gz", SEG_SUFFIX) if dicom_seg else (".nii.gz",)
    existing = [out / f"{case_id}{suffix}" for case_id in case_ids for suffix in suffixes if (out / f"{case_id}{suffix}").exists()]
    if existing and not overwrite:
        others = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise MedftError(f"{existing[0]} exists{others}: predicting would replace it. Fix: give a new --out folder, "
                         "or add --overwrite to replace the existing files")
    declared = read_classes_file(classes) if classes is not None else []
    model = load_model(model_path, parent=parent)
    seg = _SegOutput(model, declared) if dicom_seg else None
    prep = model.preprocess()
    written, failed = [], []
    with closing(prefetched(zip(inputs, case_ids, strict=True), lambda entry: _load_input(*entry, model, prep))) as loaded_inputs:
        for (path, case_id), loaded in tqdm(loaded_inputs, total=len(inputs), desc="predicting", unit="case", disable=None):
            if isinstance(loaded, Exception):
                failed.append(str(user_problem(loaded)))
                continue
            labels, probs = _predict_input(loaded, model, tta, largest_component)
            written.append(out / f"{case_id}.nii.gz")
            with new_file(written[-1]) as partial:
                save_prediction(labels, probs, partial)
            source = dicom_source([path])
            if seg is not None and source is None:
                log.warning("%s: no DICOM series, so no DICOM SEG of it (--dicom-seg): its prediction is NIfTI only", path)
            elif seg is not None:
                written.append(seg.write(labels, probs, source, out / f"{case_id}{SEG_SUFFIX}"))
    if failed:
        raise MedftError(f"predicted {len(written)} of {len(inputs)} inputs into {out}; not predicted:\n  "
                         + "\n  ".join(failed))
    return written


def _load_input(path: Path, case_id: str, model: TrainedModel, prep) -> dict:
    """An input to predict, loaded and preprocessed, its channels checked against the model's."""
    data = prep(Case(case_id, (Path(path).resolve(),)).record())
    check_channels(model.in_channels, data["image"], path)
    return data


def _predict_input(data: dict, model: TrainedModel, tta: bool, largest_component: bool) -> tuple[torch.Tensor, MetaTensor]:
    """A loaded input's label map and class probabilities, on the grid the input was loaded on."""
    probs = model.preprocessing.to_input_grid(predict(model, data["image"], tta=tta), data["image"])
    return label_map(probs, largest_component), probs


SEG_SUFFIX = ".seg.dcm"


class _SegOutput:
    """Predictions of DICOM inputs written as DICOM SEG: the model's foreground classes as segments, coded as the
    classes file ``declared`` codes the classes of the same name; the algorithm named by medft and the model."""

    def __init__(self, model: TrainedModel, declared: list[LabelClass]):
        by_name = {c.name.casefold(): c for c in declared}
        self.classes = []
        for index, name in enumerate(model.class_names[1:], start=1):
            same = by_name.get(name.casefold())
            self.classes.append(SegmentClass(index, name, same.code if same else None, same.category if same else None))
        info = model.info
        self.algorithm = Algorithm(name=f"medft {info.name if info else 'model'}",
                                   version=f"{(info.version if info else None) or 'unversioned'} (medft {__version__})")

    def write(self, labels: torch.Tensor, probs: MetaTensor, source: DicomSource, path: Path) -> Path:
        return write_prediction_seg(native_labels(labels, probs), source.folder, source.series_uid, self.classes,
                                    self.algorithm, path)


def check_classes(model: TrainedModel, manifest_names: list[str], source: Path) -> None:
    if model.label_map or not manifest_names:
        return  # a label map renumbers the manifest's classes: the model's names are the ones that count
    if len(manifest_names) != len(model.class_names):
        raise MedftError(
            f"{source}: the manifest declares {len(manifest_names)} classes ({', '.join(manifest_names)}) but the model "
            f"predicts {len(model.class_names)} ({', '.join(model.class_names)}). Fix: evaluate on data labelled with "
            "the model's classes"
        )
    if [n.lower() for n in manifest_names] != [n.lower() for n in model.class_names]:
        log.warning("class names differ: manifest %s, model %s; label values are matched by number",
                    manifest_names, model.class_names)


def _add_histograms(histograms: np.ndarray, probs: torch.Tensor, target: torch.Tensor) -> None:
    """Add each foreground class's probability histograms of its negative and positive voxels (one bincount of
    bin x 2 + positive per class; the background gets no ROC curve)."""
    for c in range(1, probs.shape[0]):
        key = probs[c].clamp(0, 1).mul_(ROC_BINS - 1).round_().to(torch.int32).mul_(2).add_(target == c)
        histograms[:, c] += torch.bincount(key.flatten(), minlength=2 * ROC_BINS).reshape(ROC_BINS, 2).T.numpy()


def _roc_curves(histograms: np.ndarray, class_names: list[str]) -> dict:
    """One-vs-rest ROC per foreground class from probability histograms (thresholds at the bin edges)."""
    curves = {}
    for c, name in enumerate(class_names):
        if c == 0:
            continue
        negatives, positives = histograms[0, c][::-1].cumsum(), histograms[1, c][::-1].cumsum()
        if positives[-1] == 0 or negatives[-1] == 0:
            continue
        tpr = np.concatenate([[0.0], positives / positives[-1]])
        fpr = np.concatenate([[0.0], negatives / negatives[-1]])
        keep = np.concatenate([[True], np.diff(fpr) + np.diff(tpr) > 0])  # drop repeated points
        curves[name] = {"fpr": fpr[keep].round(6).tolist(), "tpr": tpr[keep].round(6).tolist(),
                        "auc": float(np.trapezoid(tpr, fpr))}
    return curves


def _distinct_case_ids(inputs: list[Path], out: Path) -> list[str]:
    """Each input's case_id (its name without .nii/.nii.gz); MedftError naming both inputs when two
    would write the same prediction file."""
    seen: dict[str, Path] = {}
    for path in inputs:
        case_id = _case_id(path)
        if case_id in seen:
            raise MedftError(
                f"{seen[case_id]} and {path} would both be written to {Path(out) / f'{case_id}.nii.gz'}. Fix: predict "
                "them into different --out folders (one command each), or rename one of them"
            )
        seen[case_id] = path
    return list(seen)


def _case_id(path: Path) -> str:
    """The input's name without .nii/.nii.gz: of the folder itself for "." or "dir/.." (whose
    Path.name is "" or ".."), so that no prediction is written as a hidden ``.nii.gz``."""
    name = Path(os.path.abspath(path)).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    reason = case_id_problem(name)
    if reason:
        raise MedftError(f"{path}: its name {name!r} cannot name a prediction file ({name or '?'}.nii.gz): it {reason}. "
                         "Fix: give the input by a path that ends in its own name, or rename it")
    return name
