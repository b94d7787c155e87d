"""Pre-flight checks of a manifest and its files: every problem in one run, before any training."""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medft.data.dicom import describe_exception, geometry_problems, scan_folder, select_series
from medft.data.dicom_labels import dicom_label_kind, reference_problems
from medft.data.loading import DicomSource, case_series, dicom_source, geometry_mismatch, load_image, load_label, qform_sform_problem
from medft.data.manifest import Case, read_manifest
from medft.errors import DataError, Problem

# Below this many cases a progress bar is only noise.
PROGRESS_MIN_CASES = 20


def check_manifest(path: str | Path, workers: int | None = None, progress: bool = True) -> list[Problem]:
    """All problems of a manifest: its rows first, then each case's files in manifest order."""
    try:
        manifest, problems = read_manifest(path)
    except DataError as exc:
        return [exc.details]
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda case: _check_case_safely(case, manifest.class_names, manifest.segment_names), manifest.cases)
        results = tqdm(
            results,
            total=len(manifest.cases),
            desc="checking cases",
            unit="case",
            # None: tqdm shows the bar only on a terminal, not in logs.
            disable=True if not progress or len(manifest.cases) < PROGRESS_MIN_CASES else None,
            leave=False,
        )
        per_case = list(results)
    for case_problems, _, _ in per_case:
        problems += case_problems
    problems += _channel_count_problems(manifest.cases, [channels for _, channels, _ in per_case])
    problems += _spacing_spread_problems(manifest.path, manifest.cases, [spacing for _, _, spacing in per_case])
    return problems


def _check_case_safely(case: Case, class_names: list[str], segments: dict[int, tuple[str, ...]]
                       ) -> tuple[list[Problem], int | None, tuple | None]:
    """`check_case`, with an unexpected exception as one problem of the case: the other cases are still checked."""
    try:
        return check_case(case, class_names, segments)
    except Exception as exc:
        if os.environ.get("MEDFT_DEBUG"):
            raise
        label = f" or its label {case.label}" if case.label else ""
        return [Problem(
            f"checking the case failed unexpectedly ({describe_exception(exc)})",
            f"look for an unusual header or damaged data in this image{label}, and report the error to medft's "
            "developers (MEDFT_DEBUG=1 shows its traceback)",
            file=case.image[0],
            case_id=case.case_id,
        )], None, None


def check_case(case: Case, class_names: list[str], segments: dict[int, tuple[str, ...]] | None = None
               ) -> tuple[list[Problem], int | None, tuple | None]:
    """The problems of one case, its number of image channels and its voxel spacing in mm along the RAS
    axes (None when unreadable). ``segments``: how a DICOM SEG or RTSTRUCT label names the classes
    (``Manifest.segment_names``)."""
    problems: list[Problem] = []
    image = None
    if case.is_dicom:
        problems += _dicom_problems(case)
    if not any(p.severity == "error" for p in problems):
        try:
            image = load_image(case.image, case.series_uid)
        except DataError as exc:
            problems.append(exc.details)
    if image is not None and not case.is_dicom:
        problems += _qform_sform_problems(case.image)
    if case.label is not None:
        problems += _label_problems(case, image, class_names, segments or {})
    for problem in problems:
        problem.case_id = case.case_id
    if image is None:
        return problems, None, None
    spacing = tuple(float(v) for v in np.linalg.norm(np.asarray(image.affine, dtype=np.float64)[:3, :3], axis=0))
    return problems, int(image.shape[0]), spacing


def _dicom_problems(case: Case) -> list[Problem]:
    scan = scan_folder(case.image[0])
    try:
        series = select_series(scan, case.series_uid)
    except DataError as exc:
        return scan.unreadable + [exc.details]
    return scan.unreadable + geometry_problems(series)


def label_value_problems(label, file: Path | str, class_names: list[str]) -> list[Problem]:
    """Label values that are not whole numbers, or not classes 0..len(class_names)-1."""
    values = np.unique(np.asarray(label))
    if not np.isfinite(values).all() or not np.array_equal(values, np.round(values)):
        shown = ", ".join(f"{v:.9g}" for v in values[~np.isfinite(values) | (values != np.round(values))][:5])
        return [Problem(
            f"label values are not whole numbers (e.g. {shown})",
            "save the label map with integer class values; nearest-neighbour resampling keeps them whole",
            file=file,
        )]
    outside = [int(v) for v in values if not 0 <= v < len(class_names)] if class_names else []
    if outside:
        return [Problem(
            f"label values {outside} are outside the declared classes 0..{len(class_names) - 1} "
            f"({', '.join(class_names)})",
            "declare those classes (in the \"labels\" of dataset.json, or in the .classes.json beside a CSV "
            "manifest), or correct the label map",
            file=file,
        )]
    return []


def _label_problems(case: Case, image, class_names: list[str], segments: dict[int, tuple[str, ...]]) -> list[Problem]:
    kind = dicom_label_kind(case.label) if case.label.is_file() else None
    series = dicom_source(case.image, case.series_uid)
    problems = _reference_problems(case.label, series) if kind and segments else []
    if problems:
        return problems
    try:
        label = load_label(case.label, series=series, segments=segments, warnings=problems)
    except DataError as exc:
        return [*problems, exc.details]
    if not kind:
        problems += _qform_sform_problems([case.label])
    problems += label_value_problems(label.numpy(), case.label, class_names)
    values = np.unique(label.numpy())
    if np.array_equal(values, [0]):
        problems.append(Problem(
            "the label map is empty (background only)",
            "check that this is the right label file; it is fine for a case without the structure",
            file=case.label,
            severity="warning",
        ))
    if image is not None:
        mismatch = geometry_mismatch(image, label)
        if mismatch:
            problems.append(Problem(
                f"{mismatch} ({case.image[0].name})",
                "resample the label onto the image grid, or pair it with the right image",
                file=case.label,
            ))
    return problems


def _reference_problems(path: Path, series: DicomSource | None) -> list[Problem]:
    """Each of a DICOM SEG's or RTSTRUCT's references to another series or frame of reference (the loader names the
    first only); the other problems are the loader's."""
    if series is None:
        return []  # load_label says why
    try:
        grid = case_series(series)
    except DataError:
        return []  # the image's own problems are reported
    return reference_problems(path, grid)


def _qform_sform_problems(paths) -> list[Problem]:
    return [problem for problem in map(qform_sform_problem, paths) if problem is not None]


def _channel_count_problems(cases: list[Case], channels: list[int | None]) -> list[Problem]:
    counts = Counter(c for c in channels if c is not None)
    if len(counts) < 2:
        return []
    usual = counts.most_common(1)[0][0]
    return [
        Problem(
            f"the image has {n} channel(s) where most cases have {usual}",
            "give every case the same channels (modalities) in the same order",
            file=case.image[0],
            case_id=case.case_id,
        )
        for case, n in zip(cases, channels, strict=True)
        if n is not None and n != usual
    ]



SPACING_SPREAD = 1.5  # largest / smallest spacing along an axis above which check-data warns
_RAS_AXES = ("left-right", "front-back", "up-down")


def _spacing_spread_problems(source: Path, cases: list[Case], spacings: list[tuple | None]) -> list[Problem]:
    """One warning when the cases' voxel spacings differ widely along an axis: a network sees each case at its own
    scale unless a target spacing resamples them all."""
    known = [(case, spacing) for case, spacing in zip(cases, spacings, strict=True) if spacing is not None]
    spreads = []
    for axis, name in enumerate(_RAS_AXES):
        if not known or any(len(spacing) <= axis for _, spacing in known):
            continue
        finest = min(known, key=lambda item: item[1][axis])
        coarsest = max(known, key=lambda item: item[1][axis])
        if coarsest[1][axis] > SPACING_SPREAD * finest[1][axis]:
            spreads.append(f"{name} from {finest[1][axis]:.3g} mm (case {finest[0].case_id}) to {coarsest[1][axis]:.3g} mm "
                           f"(case {coarsest[0].case_id})")
    if not spreads:
        return []
    return [Problem(
        f"voxel spacings differ widely between cases: {'; '.join(spreads)}",
        "resample every case to one spacing: set data.spacing in the run config (auto: the median spacing of the "
        "training cases); a bundle's own preprocessing does so when it has a Spacingd step (medft bundle inspect lists it)",
        file=source,
        severity="warning",
    )]
