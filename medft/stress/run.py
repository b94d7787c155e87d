"""``medft stress``: a model's Dice under perturbations of growing severity, case by case.

Each case is loaded as ``medft evaluate`` loads it, perturbed (``medft.stress.perturbations``) in loader worker
processes, preprocessed by the model's own steps and predicted in the main process, then scored against its label
(moved with the image by a spatial perturbation) on the grid it was loaded on. Level 0 is the case as it is:
the very computation of ``medft evaluate``. One case is in memory at a time in each worker.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from tqdm.auto import tqdm

from medft import __version__
from medft.atomic_files import new_folder
from medft.data.manifest import Case, load_manifest
from medft.errors import DataError, MedftError
from medft.evaluate.folder import case_mean_dice
from medft.evaluate.inference import TrainedModel, check_channels, load_model, predict
from medft.evaluate.run import (
    check_classes,
    failure_lines,
    loading_record,
    require_class_labels,
    require_new_folder,
    user_problem,
)
from medft.evaluate.scoring import case_rows, label_map
from medft.evaluate.summary import BOOTSTRAP_METHOD
from medft.slices import voxel_spacing
from medft.stress.files import STRESS_CSV, STRESS_HTML, UNPERTURBED, read_stress_folder, write_rows, write_stress
from medft.stress.perturbations import LEVELS, MODALITIES, PERTURBATIONS, Perturbation, Volume, case_seed, for_modality
from medft.stress.report import StressPicture, stress_picture, write_stress_report
from medft.stress.summary import ALPHA, compare_stress, summarize_stress

log = logging.getLogger("medft.stress")
N_RESAMPLES, BOOTSTRAP_SEED = 2000, 0


@dataclass(frozen=True)
class Task:
    """One inference: a case under one perturbation at one level (level 0: unperturbed)."""

    case: Case
    perturbation: str
    level: int
    keep_image: bool  # send the image as loaded back with it, for the report's pictures


@dataclass
class StressResult:
    folder: Path
    stress: dict  # stress.json

    @property
    def page(self) -> Path:
        return self.folder / STRESS_HTML


def stress(model_path: str | Path, manifest_path: str | Path, out: str | Path, perturbations: Sequence[str] | None = None,
           levels: Sequence[int] | None = None, modality: str = "auto", split: str | None = None, seed: int = 0,
           workers: int | None = None, tta: bool = False, largest_component: bool = False, checkpoint: str = "best",
           compare: str | Path | None = None, parent: str | Path | None = None) -> StressResult:
    """Stress-test a run, bundle or adapter on the labelled cases of a manifest (one split, or all) into ``out``, a
    new or empty folder, written under a partial name and renamed once complete.

    ``perturbations``: names from ``PERTURBATIONS`` (default: all of the modality's); ``levels``: from 1 to 5 (default
    all; level 0 always runs); ``modality``: mr, ct or auto (from the model's preprocessing); ``seed``: the base of
    every case's draws; ``workers``: loader processes that perturb and preprocess (default: the CPUs less one, at most
    4); ``compare``: another stress folder of the same cases, perturbations, levels and seed, paired case by case."""
    started = time.monotonic()
    out = Path(out)
    require_new_folder(out)
    model = load_model(model_path, checkpoint=checkpoint, parent=parent)
    modality = _modality(modality, model)
    names = _perturbations(perturbations, modality)
    levels = _levels(levels)
    other = _other(compare, model.class_names, names, levels, seed, modality) if compare is not None else None
    manifest = load_manifest(manifest_path)
    check_classes(model, manifest.class_names, manifest.path)
    cases = [case for case in manifest.split(split) if case.label is not None]
    if not cases:
        where = f"split {split!r} of " if split else ""
        raise MedftError(f"{manifest.path}: no labelled case in {where}the manifest: a stress test scores predictions "
                         "against labels. Fix: give a manifest (or --split) with labelled cases")
    if other is not None and not {row["case_id"] for row in other[1]} & {case.case_id for case in cases}:
        raise MedftError(f"{compare}: no case in common with this stress test (by case_id). Fix: compare stress tests "
                         "of the same manifest")
    tasks = _tasks(cases, names, levels)
    log.info("stress test of %s: %d cases x (1 + %d perturbations x %d levels) = %d inferences, modality %s",
             model.info.name, len(cases), len(names), len(levels), len(tasks), modality)
    with new_folder(out) as partial:
        scored = _run(tasks, model, manifest.segment_names, tta, largest_component, seed, _worker_count(workers))
        write_rows(partial / STRESS_CSV, scored.rows)
        stress_json = _stress_json(model, manifest.path, split, modality, seed, tta, largest_component, names, levels,
                                   cases, scored)
        if other is not None:
            stress_json["comparison"] = _comparison(compare, other, model, scored.rows, names, levels)
        stress_json["wall_seconds"] = round(time.monotonic() - started, 1)
        write_stress(partial, stress_json)
        write_stress_report(partial, stress_json, scored.pictures.kept, other[0] if other else None)
    for case_id, (_, shown) in scored.failed.items():
        log.warning("case %s: not stress-tested: %s", case_id, shown)
    return StressResult(out, stress_json)


# --------------------------------------------------------------------------------------------
# What to run
# --------------------------------------------------------------------------------------------
def _modality(modality: str, model: TrainedModel) -> str:
    if modality != "auto":
        if modality not in MODALITIES:
            raise MedftError(f"modality {modality!r}: expected mr, ct or auto")
        return modality
    found = detect_modality(model.preprocessing.steps)
    log.info("modality %s (from the model's preprocessing: %s); --modality sets it", found,
             "a fixed HU window" if found == "ct" else "no fixed HU window")
    return found


def detect_modality(steps: list[dict]) -> str:
    """ct when the preprocessing clips a fixed window that reaches below -100 (Hounsfield units: air and fat), else
    mr (intensities normalised per image)."""
    for step in steps:
        if "ScaleIntensityRange" in str(step.get("_target_", "")) and "Percentiles" not in str(step["_target_"]):
            low = step.get("a_min")
            if isinstance(low, (int, float)) and low <= -100:
                return "ct"
    return "mr"


def _perturbations(names: Sequence[str] | None, modality: str) -> list[str]:
    if not names:
        return for_modality(modality)
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown:
        raise MedftError(f"unknown perturbation(s) {', '.join(unknown)}. Fix: choose from {', '.join(PERTURBATIONS)}")
    foreign = [n for n in names if modality not in PERTURBATIONS[n].modalities]
    if foreign:
        raise MedftError(f"{', '.join(foreign)} do(es) not apply to {modality.upper()} images (the {modality} set: "
                         f"{', '.join(for_modality(modality))}). Fix: leave them out, or give --modality")
    return list(dict.fromkeys(names))


def _levels(levels: Sequence[int] | None) -> list[int]:
    chosen = sorted(set(levels or LEVELS))
    wrong = [level for level in chosen if level not in LEVELS]
    if wrong:
        raise MedftError(f"level(s) {wrong}: the severity levels are 1 to 5 (level 0, unperturbed, always runs)")
    return chosen


def _tasks(cases: list[Case], names: list[str], levels: list[int]) -> list[Task]:
    """Case by case: level 0, then each perturbation's levels in order (its highest kept for pictures)."""
    tasks = []
    for case in cases:
        tasks.append(Task(case, UNPERTURBED, 0, keep_image=True))
        tasks += [Task(case, name, level, keep_image=level == levels[-1]) for name in names for level in levels]
    return tasks


def _worker_count(workers: int | None) -> int:
    if workers is not None:
        return workers
    return max(0, min(4, (os.cpu_count() or 1) - 1))


# --------------------------------------------------------------------------------------------
# Perturbing and preprocessing: in loader workers
# --------------------------------------------------------------------------------------------
class PerturbedCases(torch.utils.data.Dataset):
    """Task i's case, loaded (once per worker and case), perturbed, preprocessed and checked: ``{"task", "image",
    "label", "shown", "error"}``; a problem with the user's data comes back as ``error`` (its line for stress.json,
    without the folders, and for the console), not raised, so that the other cases go on."""

    def __init__(self, tasks: list[Task], model: TrainedModel, seed: int, segments: dict[int, tuple[str, ...]] | None = None):
        self.tasks, self.seed = tasks, seed
        self.loading = Compose(model.preprocessing.loading(model.label_map, segments))  # segments: DICOM SEG, RTSTRUCT
        self.steps = model.preprocessing.compose  # built here, before workers fork: the inversion needs its instances
        self.in_channels, self.class_names = model.in_channels, model.class_names  # workers need no network
        self._cached: tuple[str, dict] | None = None

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int) -> dict:
        task = self.tasks[index]
        try:
            return {"task": index, "error": None, **self._prepare(task)}
        except Exception as exc:  # the user's data (find_user_error), else re-raised
            return {"task": index, "error": failure_lines(user_problem(exc))}

    def _loaded(self, case: Case) -> dict:
        if self._cached is None or self._cached[0] != case.case_id:
            self._cached = None  # one case at a time
            self._cached = (case.case_id, self.loading(loading_record(case)))
        return self._cached[1]

    def _prepare(self, task: Task) -> dict:
        # a copy: the model's steps may change tensors in place (MONAI's NormalizeIntensity does), and the next
        # task starts from the case as loaded
        data = {key: value.clone() if isinstance(value, torch.Tensor) else value
                for key, value in self._loaded(task.case).items()}
        if "label" not in data:
            raise DataError("the label file is missing", "restore the label, or give the case without one",
                            file=task.case.label)
        if task.level:
            data = perturb(data, PERTURBATIONS[task.perturbation], task.level,
                           case_seed(task.case.case_id, task.perturbation, self.seed))
        # copies, not views: the loader moves the item's tensors into shared memory and frees their old storage
        shown = (_array(data["image"])[0], data["image"].affine.numpy().astype(np.float64)) if task.keep_image else None
        label = data["label"]
        data = self.steps(data)
        check_channels(self.in_channels, data["image"], ", ".join(str(p) for p in task.case.image))
        require_class_labels(data, task.case, self.class_names)
        return {"image": data["image"], "label": label, "shown": shown}


def perturb(data: dict, perturbation: Perturbation, level: int, seed: int) -> dict:
    """A loaded case (``image`` and ``label`` MetaTensors on one grid) with its image, and its label when the
    perturbation is spatial, perturbed; their metadata (affine, the loader's record of what it did) kept."""
    image, label = data["image"], data["label"]
    volume = Volume(_array(image), _array(label), voxel_spacing(image.affine))
    changed = perturbation(volume, level, seed)
    out = dict(data)
    out["image"] = _like(image, changed.image)
    if perturbation.spatial:
        out["label"] = _like(label, changed.label)
    return out


def _array(values: MetaTensor) -> np.ndarray:
    """A float32 copy of a loaded volume."""
    return values.as_tensor().detach().cpu().numpy().astype(np.float32)


def _like(original: MetaTensor, values: np.ndarray) -> MetaTensor:
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(values)).to(original.dtype), meta=copy.deepcopy(original.meta),
                      applied_operations=copy.deepcopy(original.applied_operations))


def _as_is(item: dict) -> dict:
    return item


# --------------------------------------------------------------------------------------------
# Predicting and scoring: in the main process
# --------------------------------------------------------------------------------------------
class _MostAffected:
    """Per perturbation, the picture of the case whose mean Dice fell most from level 0 to the highest level, made
    while the case is in memory."""

    def __init__(self):
        self.kept: dict[str, StressPicture] = {}
        self.dice: dict[str, tuple[str, float, float, int]] = {}  # perturbation: (case_id, level 0, level n, n)

    def offer(self, task: Task, clean: dict, dice: float, perturbed: np.ndarray, truth: torch.Tensor,
              prediction: torch.Tensor) -> None:
        drop = clean["dice"] - dice
        kept = self.dice.get(task.perturbation)
        if math.isnan(drop) or (kept is not None and drop <= kept[1] - kept[2]):
            return
        image, affine = clean["shown"]
        self.kept[task.perturbation] = stress_picture(task.case.case_id, task.level, image, perturbed, affine, truth,
                                                      prediction)
        self.dice[task.perturbation] = (task.case.case_id, clean["dice"], dice, task.level)


@dataclass
class _Scored:
    rows: list[dict] = field(default_factory=list)
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)  # case_id: why (as stored, as shown)
    pictures: _MostAffected = field(default_factory=_MostAffected)


def _run(tasks: list[Task], model: TrainedModel, segments: dict[int, tuple[str, ...]], tta: bool, largest_component: bool,
         seed: int, workers: int) -> _Scored:
    inputs = PerturbedCases(tasks, model, seed, segments)
    loader = torch.utils.data.DataLoader(inputs, batch_size=None, num_workers=workers, collate_fn=_as_is,
                                         prefetch_factor=2 if workers else None, persistent_workers=False)
    scored = _Scored()
    clean: dict = {}  # the current case at level 0: its mean Dice and image as loaded
    for item in tqdm(loader, total=len(tasks), desc="stress test", unit="inference", disable=None, smoothing=0.05):
        task = tasks[item["task"]]
        case = task.case
        if item["error"] is not None or case.case_id in scored.failed:
            scored.failed.setdefault(case.case_id, item["error"])
            continue
        probs = model.preprocessing.to_input_grid(predict(model, item["image"], tta=tta), item["image"])
        labels = label_map(probs, largest_component)
        target = item["label"].as_subclass(torch.Tensor)[0].long()
        rows = case_rows(case.case_id, case.site, model.class_names, labels, target, voxel_spacing(item["label"].affine))
        scored.rows += [{**row, "perturbation": task.perturbation, "level": task.level} for row in rows]
        dice = case_mean_dice(rows)[case.case_id]
        if task.level == 0:
            clean = {"case_id": case.case_id, "dice": dice, "shown": item["shown"]}
        elif item["shown"] is not None and clean.get("case_id") == case.case_id:
            scored.pictures.offer(task, clean, dice, item["shown"][0], target, labels)
    scored.rows = [row for row in scored.rows if row["case_id"] not in scored.failed]  # no partly scored case
    return scored


# --------------------------------------------------------------------------------------------
# stress.json
# --------------------------------------------------------------------------------------------
def _stress_json(model: TrainedModel, manifest: Path, split: str | None, modality: str, seed: int, tta: bool,
                 largest_component: bool, names: list[str], levels: list[int], cases: list[Case], scored: _Scored) -> dict:
    summary = summarize_stress(scored.rows, model.class_names, names, levels, N_RESAMPLES, BOOTSTRAP_SEED)
    for name, result in summary["results"].items():
        affected = scored.pictures.dice.get(name)
        result["most_affected"] = None if affected is None else {
            "case_id": affected[0], "dice_level0": affected[1], "dice": affected[2], "level": affected[3]}
    return {
        "stress_id": uuid.uuid4().hex, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "medft_version": __version__, "model": model.info.model_dump(mode="json"), "manifest": str(manifest),
        "split": split, "modality": modality, "seed": seed, "tta": tta,
        "tta_flip_axes": list(model.flip_axes) if tta else [], "largest_component": largest_component,
        "class_names": list(model.class_names), "levels": levels,
        "perturbations": {name: describe_perturbation(PERTURBATIONS[name], levels) for name in names},
        "cases": {"n": len(cases), "scored": len(cases) - len(scored.failed),
                  "failed": [{"case_id": c, "message": stored} for c, (stored, _) in scored.failed.items()]},
        "bootstrap": {"resamples": N_RESAMPLES, "seed": BOOTSTRAP_SEED, "level": 0.95, "method": BOOTSTRAP_METHOD},
        "score_alpha": round(ALPHA, 4), **summary,
        "comparison": None,
    }


def describe_perturbation(perturbation: Perturbation, levels: list[int]) -> dict:
    return {"title": perturbation.title, "spatial": perturbation.spatial, "describe": perturbation.describe,
            "parameters": {str(level): perturbation.parameters(level) for level in levels}}


# --------------------------------------------------------------------------------------------
# --compare
# --------------------------------------------------------------------------------------------
def _other(folder: str | Path, class_names: list[str], names: list[str], levels: list[int], seed: int,
           modality: str) -> tuple[dict, list[dict]]:
    """The other stress folder, checked before any inference: the same classes, seed and modality, and each of
    this run's perturbations at each of its levels with the same parameters, so that both models meet the same
    perturbed images."""
    other, rows = read_stress_folder(Path(folder))
    problems = [f"{key} {other.get(key)!r} (here {value!r})" for key, value in
                (("class_names", list(class_names)), ("seed", seed), ("modality", modality)) if other.get(key) != value]
    theirs = other.get("perturbations") or {}
    for name in names:
        given = (theirs.get(name) or {}).get("parameters") or {}
        missing = [level for level in levels if str(level) not in given]
        if name not in theirs or missing:
            problems.append(f"no {name}" if name not in theirs else f"no level {', '.join(map(str, missing))} of {name}")
        elif any(given[str(level)] != PERTURBATIONS[name].parameters(level) for level in levels):
            problems.append(f"other parameters of {name}")
    if problems:
        raise MedftError(f"{folder}: its stress test does not hold the perturbed images this one would make "
                         f"({'; '.join(problems)}). Fix: run this one with --perturbations, --levels, --seed and "
                         "--modality among those of its stress.json, or compare with another stress folder")
    return other, rows


def _comparison(folder: str | Path, other: tuple[dict, list[dict]], model: TrainedModel, rows: list[dict],
                names: list[str], levels: list[int]) -> dict:
    other_json, other_rows = other
    result = compare_stress(other_rows, rows, model.class_names, names, levels, N_RESAMPLES, BOOTSTRAP_SEED)
    label_a = (other_json.get("model") or {}).get("name") or str(folder)
    label_b = model.info.name if model.info.name != label_a else f"{model.info.name} (this run)"
    return {"other": str(folder), "label_a": label_a, "label_b": label_b, **result}
