"""DICOM series: find them in a folder, check their geometry, load them as a volume with a RAS affine.

Typical use::

    scan = scan_folder(folder)                  # headers only, grouped by SeriesInstanceUID
    series = select_series(scan, series_uid)    # never merges series silently
    problems = geometry_problems(series)        # missing/duplicate slices, uneven spacing, ...
    volume, affine = read_series(series)        # (columns, rows, slices) float32 + 4x4 RAS affine

Volumes follow the NIfTI/nibabel convention that MONAI uses: axis 0 runs along the DICOM row
direction, axis 1 along the column direction, axis 2 along the slice normal, and the affine maps
voxel indices to RAS millimetres.

MONAI integration: ``DicomSeriesReader(series_uid=None)`` is a ``monai.data.ImageReader`` for
``monai.transforms.LoadImage``. The class is created on first access (through the module's
``__getattr__``), so ``import medft.data.dicom`` imports neither monai nor torch;
``from medft.data.dicom import DicomSeriesReader`` is where monai gets imported.
Give the reader at call time, ``LoadImage(image_only=True)(folder, reader=DicomSeriesReader(uid))``,
so that its DataError reaches the caller: given as ``LoadImage(reader=...)``, MONAI catches a
refusal and falls back to its own readers, and its PydicomReader stacks every series of a folder
into one volume.

Slices saved without the DICOM Part-10 header (preamble, 'DICM' and file meta information) are read
too, in the encoding pydicom guesses, when they hold an image slice's tags.

No message, summary or metadata produced here contains patient identifiers (name, ID, birth
date): series are described by SeriesInstanceUID, SeriesDescription, SeriesNumber and size only.
Those, and slice file names, go in a problem's ``detail``, which the console shows and no file
that medft writes keeps (``Problem.public``); the errors of ``read_series`` and the MONAI reader name
the series folder, the slice in their detail.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medft.errors import DataError, Problem

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_SAME_POSITION_MM = 0.01  # slices closer than this along the normal are duplicates
_ORIENTATION_TOLERANCE = 1e-3  # ImageOrientationPatient: unit length and orthogonality within this
_PLACEMENT_TAGS = ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing")
_REMOVE_OR_REPLACE = "remove it from the series folder or replace it with the complete file"
_REPLACE_DAMAGED = "replace it with the complete file (copy it again from its source, or export the series again)"
_REEXPORT = "export the series again from the scanner or PACS, or convert it to NIfTI and list the .nii.gz instead"
_DECODER_FIX = (
    "install a decoder for it (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or pip install "
    "python-gdcm), or convert the series to uncompressed DICOM (e.g. gdcmconv --raw or dcmdjpeg)"
)


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` on one line (pydicom's and nibabel's messages may span several)."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


@dataclass
class SeriesInfo:
    """One DICOM series as found on disk (headers only)."""

    uid: str
    description: str
    number: int | None
    files: list[Path]
    rows: int
    columns: int
    modality: str
    folder: Path  # the folder scanned for it (the manifest's image)
    headers: list[pydicom.Dataset] = field(repr=False, compare=False)  # one per file, without pixels

    @property
    def summary(self) -> str:
        """One line for people, without patient data."""
        number = f"series {self.number}, " if self.number is not None else ""
        description = self.description or "no description"
        return (
            f"uid={self.uid} '{description}' ({number}{len(self.files)} slices, "
            f"{self.rows} rows x {self.columns} columns)"
        )


@dataclass
class SeriesScan:
    """What `scan_folder` found: the series, and one problem per file that is no DICOM image slice."""

    folder: Path
    series: list[SeriesInfo]
    unreadable: list[Problem] = field(default_factory=list)


def scan_folder(folder: Path) -> SeriesScan:
    """Read the headers of every file under `folder` (recursively) and group them by series.

    Hidden files and folders (starting with '.') and DICOMDIR files are skipped. Files that are not
    DICOM image slices are listed in `unreadable`, one Problem each.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(
            "is not a folder" if folder.exists() else "folder does not exist",
            "point the manifest at the folder that holds the DICOM files of this case",
            file=folder,
        )
    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    unreadable = []
    for path in sorted(folder.rglob("*")):
        parts = path.relative_to(folder).parts
        if not path.is_file() or path.name == "DICOMDIR" or any(p.startswith(".") for p in parts):
            continue
        try:
            ds = _read_dicom(path, stop_before_pixels=True)
        except InvalidDicomError:
            unreadable.append(Problem("is not a DICOM file", _REMOVE_OR_REPLACE, file=path))
            continue
        except Exception as e:  # truncated or corrupt header: pydicom raises many kinds
            unreadable.append(
                Problem(f"cannot be read as DICOM ({describe_exception(e)})", _REMOVE_OR_REPLACE, file=path)
            )
            continue
        if not _is_slice(ds):
            unreadable.append(_not_a_slice(path, ds))
            continue
        groups.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))

    series = []
    for uid, members in groups.items():
        first = members[0][1]
        try:
            number = _series_number(first)
        except DataError:  # geometry_problems warns about it
            number = None
        series.append(
            SeriesInfo(
                uid=uid,
                description=str(first.get("SeriesDescription", "")),
                number=number,
                files=[path for path, _ in members],
                rows=int(first.Rows),
                columns=int(first.Columns),
                modality=str(first.get("Modality", "")),
                folder=folder,
                headers=[ds for _, ds in members],
            )
        )
    series.sort(key=lambda s: (s.number is None, s.number or 0, s.uid))
    return SeriesScan(folder=folder, series=series, unreadable=unreadable)


def _read_dicom(path: Path, stop_before_pixels: bool = False) -> pydicom.Dataset:
    """A DICOM file, or a bare dataset without the Part-10 header that holds an image slice's tags (read
    in the encoding pydicom guesses, which is then recorded as its transfer syntax). InvalidDicomError
    for anything else."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as not_part10:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
        except Exception:  # a file that is no DICOM at all: pydicom fails in many ways on it
            raise not_part10 from None
        if not _is_slice(ds):
            raise not_part10 from None
        implicit, little_endian = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian
        )
        return ds


def _is_slice(ds: pydicom.Dataset) -> bool:
    return "SeriesInstanceUID" in ds and "Rows" in ds and "Columns" in ds


def _not_a_slice(path: Path, ds: pydicom.Dataset) -> Problem:
    """Why a DICOM file without SeriesInstanceUID, Rows or Columns is no slice: cut short, or another object."""
    sop_class = ds.file_meta.get("MediaStorageSOPClassUID") or ds.get("SOPClassUID") or None
    if sop_class is None or "Image Storage" in sop_class.name:
        kind = "DICOM" if sop_class is None else sop_class.name
        return Problem(
            f"is truncated or damaged: the header of this {kind} file ends before SeriesInstanceUID, Rows and Columns",
            _REPLACE_DAMAGED,
            file=path,
        )
    return Problem(
        f"is a DICOM file but not an image slice ({sop_class.name})", "move it out of the series folder", file=path
    )


def _series_number(ds: pydicom.Dataset) -> int | None:
    """SeriesNumber; None when absent or empty, DataError when it is no whole number."""
    number = _optional_number(ds, "SeriesNumber", None)
    if number is not None and not number.is_integer():
        raise DataError(f"SeriesNumber is not a whole number ({number:g})", _REEXPORT)
    return None if number is None else int(number)


def _optional_number(ds: pydicom.Dataset, keyword: str, default: float | None) -> float | None:
    """A one-number decimal or integer string tag; `default` when absent or empty, DataError naming the
    tag when malformed."""
    if keyword not in ds or not _stored_text(ds, keyword):
        return default
    return float(_header_numbers(ds, keyword, 1)[0])


def _stored_text(ds: pydicom.Dataset, keyword: str) -> str:
    """A tag's value as the text in the file, values separated by backslashes. Parsed here because
    pydicom's own conversion raises on a malformed number and warns about it on stderr."""
    value = ds.get_item(keyword).value
    if isinstance(value, bytes):
        return value.decode("latin-1").strip(" \0")
    if value is None or isinstance(value, (str, int, float)):
        return "" if value is None else str(value).strip()
    return "\\".join(str(v) for v in value)


def _header_numbers(ds: pydicom.Dataset, keyword: str, count: int) -> np.ndarray:
    """The `count` finite numbers of a decimal or integer string tag; DataError naming what is wrong."""
    text = _stored_text(ds, keyword)
    if not text:
        raise DataError(f"{keyword} is empty", _REEXPORT)
    parts = [part.strip() for part in text.split("\\")]
    try:
        numbers = np.array([float(part) for part in parts])
    except ValueError:
        numbers = np.array([np.nan])
    if not np.isfinite(numbers).all():
        raise DataError(f"{keyword} is not numeric", _REEXPORT)
    if numbers.size != count:
        raise DataError(f"{keyword} holds {numbers.size} value(s) where {count} are needed", _REEXPORT)
    return numbers


def select_series(scan: SeriesScan, series_uid: str | None) -> SeriesInfo:
    """The series to use: the only one, or the one with `series_uid`. Never merges series."""
    found = "series found: " + "; ".join(s.summary for s in scan.series)
    if not scan.series:
        bad = f" ({len(scan.unreadable)} files could not be read as DICOM)" if scan.unreadable else ""
        raise DataError(
            f"holds no DICOM image series{bad}",
            "point the manifest at the folder that holds the DICOM files of this case",
            file=scan.folder,
        )
    if series_uid is not None:
        for s in scan.series:
            if s.uid == series_uid:
                return s
        raise DataError(
            f"holds no series with the manifest's series_uid ({len(scan.series)} other series)",
            "set series_uid in the manifest to the SeriesInstanceUID of one of them (medft check-data lists them)",
            file=scan.folder,
            detail=f"series_uid {series_uid}; {found}",
        )
    if len(scan.series) > 1:
        raise DataError(
            f"holds {len(scan.series)} DICOM series and medft does not merge series",
            "in a manifest, add a series_uid column and give, for this case, the SeriesInstanceUID of the series "
            "to use (medft check-data lists them); or move each series to a folder of its own (what medft predict "
            "needs)",
            file=scan.folder,
            detail=found,
        )
    return scan.series[0]


def geometry_problems(series: SeriesInfo) -> list[Problem]:
    """Check the slice geometry of a series from its headers; an empty list means it is a clean 3D stack."""
    return _geometry_problems(list(zip(series.files, series.headers, strict=True)))[0]


class _Placement(NamedTuple):
    """Where a slice lies (LPS millimetres), from its header."""

    row: np.ndarray  # direction along a row (the column index grows)
    column: np.ndarray  # direction along a column (the row index grows)
    position: np.ndarray  # ImagePositionPatient: the centre of the first pixel
    spacing: np.ndarray  # PixelSpacing: (between rows, between columns)


def _placement(ds: pydicom.Dataset) -> _Placement:
    """The placement of a slice; DataError naming the tag that is missing or unusable."""
    missing = [t for t in _PLACEMENT_TAGS if t not in ds]
    if missing:
        raise DataError(f"lacks {', '.join(missing)}, needed to place the slice in space", _REEXPORT)
    orientation = _header_numbers(ds, "ImageOrientationPatient", 6)
    position = _header_numbers(ds, "ImagePositionPatient", 3)
    spacing = _header_numbers(ds, "PixelSpacing", 2)
    row, column = orientation[:3], orientation[3:]
    lengths = np.linalg.norm([row, column], axis=1)
    if np.abs(lengths - 1).max() > _ORIENTATION_TOLERANCE or abs(row @ column) > _ORIENTATION_TOLERANCE:
        raise DataError(
            f"ImageOrientationPatient is invalid ({', '.join(f'{v:g}' for v in orientation)}): it must hold two "
            f"orthogonal unit vectors, the row and column directions, within {_ORIENTATION_TOLERANCE:g}",
            "export the series again from the original, keeping ImageOrientationPatient (an anonymiser may have "
            "blanked it), or convert it to NIfTI and list the .nii.gz instead",
        )
    if not (spacing > 0).all():
        shown = "0" if not spacing.any() else ", ".join(f"{v:g}" for v in spacing)
        raise DataError(
            f"PixelSpacing is {shown}, not a pixel size in mm",
            "set PixelSpacing (0028,0030) to the pixel size in mm, or " + _REEXPORT,
        )
    return _Placement(row, column, position, spacing)


def _grouped(problem: str, fix: str, paths: list[Path], severity: str = "error") -> Problem:
    """One line for a problem shared by several files of a series."""
    if len(paths) == 1:
        return Problem(problem, fix, file=paths[0], severity=severity)
    names = ", ".join(p.name for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    folder = Path(os.path.commonpath(paths))
    return Problem(f"{problem}, in {len(paths)} files", fix, file=folder, severity=severity, detail=names)


def _geometry_problems(slices: list[tuple[Path, pydicom.Dataset]]) -> tuple[list[Problem], list[int]]:
    """Problems of a series given (file, dataset) pairs, and the slice order along the normal."""
    problems = _patient_problems(slices) + _series_number_problems(slices) + _format_problems(slices)
    placements, unplaced = [], {}
    for path, ds in slices:
        try:
            placements.append(_placement(ds))
        except DataError as exc:
            unplaced.setdefault((exc.details.problem, exc.details.fix), []).append(path)
    problems += [_grouped(problem, fix, paths) for (problem, fix), paths in unplaced.items()]
    if len(slices) == 1 and not any(p.severity == "error" for p in problems):
        problems.append(
            Problem(
                "the series has only 1 slice; a 3D volume needs several slices",
                "point the manifest at a 3D series (several slices), not a single image",
                file=slices[0][0],
            )
        )
    if unplaced or len(slices) == 1:
        return problems, list(range(len(slices)))
    consistency = _consistency_problems(slices, placements)
    if consistency:
        return problems + consistency, list(range(len(slices)))
    stack, order = _stack_problems(slices, placements)
    return problems + stack, order


def _patient_problems(slices: list[tuple[Path, pydicom.Dataset]]) -> list[Problem]:
    """An error when the slices of one series carry different PatientIDs (files of several patients under one
    SeriesInstanceUID); the IDs are compared, never shown."""
    ids = [_stored_text(ds, "PatientID") if "PatientID" in ds else "" for _, ds in slices]
    if len(set(ids)) == 1:
        return []
    first = slices[0][0]
    other = next(path for (path, _), patient in zip(slices, ids, strict=True) if patient != ids[0])
    return [Problem(
        f"its slices carry {len(set(ids))} different PatientIDs (not shown) under one SeriesInstanceUID: "
        "files of several patients are mixed",
        "keep the files of one patient only in the series folder, or export the series again from its source",
        file=Path(os.path.commonpath([path.parent for path, _ in slices])),
        detail=f"{other.name} and {first.name} differ, for example",
    )]


def _series_number_problems(slices: list[tuple[Path, pydicom.Dataset]]) -> list[Problem]:
    """A warning for a SeriesNumber that is no whole number: medft then describes the series without it."""
    bad: dict[str, list[Path]] = {}
    for path, ds in slices:
        try:
            _series_number(ds)
        except DataError as exc:
            bad.setdefault(exc.details.problem, []).append(path)
    fix = "none needed to use the series; correct SeriesNumber (0020,0011) in the header to silence this warning"
    return [_grouped(f"{problem}; medft ignores it", fix, paths, "warning") for problem, paths in bad.items()]


def _format_problems(slices: list[tuple[Path, pydicom.Dataset]]) -> list[Problem]:
    """Slices medft cannot read: multi-frame files, colour images, malformed NumberOfFrames or rescale tags."""
    problems, malformed = [], {}
    for path, ds in slices:
        try:
            frames = _optional_number(ds, "NumberOfFrames", 1)
            _rescale(ds)
        except DataError as exc:
            malformed.setdefault((exc.details.problem, exc.details.fix), []).append(path)
            continue
        if frames > 1:
            problems.append(
                Problem(
                    f"is a multi-frame DICOM file ({frames:g} frames), which medft does not support",
                    "export the series as one file per slice (classic DICOM), or convert it to NIfTI "
                    "and list the .nii.gz instead",
                    file=path,
                )
            )
        if int(ds.get("SamplesPerPixel") or 1) > 1:  # a binary number: never malformed
            problems.append(
                Problem("holds a colour image; medft reads greyscale series only", _REEXPORT, file=path)
            )
    return problems + [_grouped(problem, fix, paths) for (problem, fix), paths in malformed.items()]


def _rescale(ds: pydicom.Dataset) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept (1 and 0 when absent; a slope of 0 counts as absent)."""
    return _optional_number(ds, "RescaleSlope", 1.0) or 1.0, _optional_number(ds, "RescaleIntercept", 0.0)


def _consistency_problems(slices: list[tuple[Path, pydicom.Dataset]], placements: list[_Placement]) -> list[Problem]:
    """Slices whose orientation, size or pixel spacing differ from the first one's."""
    (first_path, first), reference = slices[0], placements[0]
    problems = []
    for (path, ds), placement in zip(slices[1:], placements[1:], strict=True):
        directions = np.r_[placement.row, placement.column], np.r_[reference.row, reference.column]
        for what, differs in (
            ("orientation (ImageOrientationPatient)", not np.allclose(*directions, atol=1e-4)),
            ("image size (Rows x Columns)", (ds.Rows, ds.Columns) != (first.Rows, first.Columns)),
            ("pixel spacing (PixelSpacing)", not np.allclose(placement.spacing, reference.spacing, rtol=1e-4, atol=1e-4)),
        ):
            if differs:
                problems.append(
                    Problem(
                        f"has a different {what} than the first slice of the same series",
                        "make sure the folder holds one series only; " + _REEXPORT,
                        file=path,
                        detail=f"first slice: {first_path.name}",
                    )
                )
    return problems


def _stack_problems(
    slices: list[tuple[Path, pydicom.Dataset]], placements: list[_Placement]
) -> tuple[list[Problem], list[int]]:
    """Duplicate, missing, unevenly spaced and displaced slices of a consistent series, and its slice order."""
    normal = np.cross(placements[0].row, placements[0].column)
    positions = np.array([p.position for p in placements])
    along = positions @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    names = [slices[i][0].name for i in order]
    gaps = np.diff(along[order])
    folder = slices[0][0].parent
    problems = []

    duplicates = np.flatnonzero(gaps <= _SAME_POSITION_MM)
    if duplicates.size:
        pairs = ", ".join(f"{names[i]} and {names[i + 1]}" for i in duplicates[:5])
        more = f" and {duplicates.size - 5} more pairs" if duplicates.size > 5 else ""
        problems.append(
            Problem(
                f"{duplicates.size} pair(s) of slices share the same position",
                "remove the duplicate files; if the folder holds several acquisitions (echoes, time points) "
                "under one series uid, export them as separate series",
                file=folder,
                detail=pairs + more,
            )
        )
    real_gaps = gaps[gaps > _SAME_POSITION_MM]
    if real_gaps.size == 0:
        return problems, order
    step = float(np.median(real_gaps))
    tolerance = max(0.01, 0.01 * step)
    uneven = []
    for i, gap in enumerate(gaps):
        if gap <= _SAME_POSITION_MM:
            continue
        if gap >= 1.5 * step:
            n_missing = max(1, round(gap / step) - 1)
            problems.append(
                Problem(
                    f"about {n_missing} slice(s) seem missing: a gap of {gap:.2f} mm where slices are {step:.2f} mm apart",
                    "copy the missing slice files into the folder, or export the complete series again",
                    file=folder,
                    detail=f"between {names[i]} and {names[i + 1]}",
                )
            )
        elif abs(gap - step) > tolerance:
            uneven.append(f"{gap:.3f} mm between {names[i]} and {names[i + 1]}")
    if uneven:
        listed = "; ".join(uneven[:5]) + (f"; and {len(uneven) - 5} more" if len(uneven) > 5 else "")
        problems.append(
            Problem(
                f"slice spacing is uneven: typical spacing {step:.3f} mm, tolerance {tolerance:.3f} mm "
                f"(the larger of 0.01 mm and 1%), but {len(uneven)} gap(s) differ",
                "export the complete series again, or resample it to even spacing (e.g. convert it to NIfTI "
                "with dcm2niix) and list the .nii.gz instead",
                file=folder,
                detail=listed,
            )
        )
    return problems + _off_line_problems(positions[order], normal, names, tolerance, folder), order


def _off_line_problems(
    positions: np.ndarray, normal: np.ndarray, names: list[str], tolerance: float, folder: Path
) -> list[Problem]:
    """Slices displaced sideways. The slices of a series, in order, lie on one straight line: along the
    normal, or slanted evenly (a CT gantry tilt, which the affine follows); a displaced slice is off it."""
    along = positions @ normal
    across = positions - np.outer(along, normal)
    apart = np.diff(along) > _SAME_POSITION_MM
    # the slant per mm along the normal: the median of neighbours' slants, which one displaced slice cannot move
    slant = np.median(np.diff(across, axis=0)[apart] / np.diff(along)[apart, None], axis=0)
    straightened = across - np.outer(along, slant)
    offsets = np.linalg.norm(straightened - np.median(straightened, axis=0), axis=1)
    off = np.flatnonzero(offsets > tolerance)
    if not off.size:
        return []
    listed = "; ".join(f"{names[i]} by {offsets[i]:.3f} mm" for i in off[:5])
    more = f"; and {off.size - 5} more" if off.size > 5 else ""
    return [
        Problem(
            f"{off.size} slice(s) lie off the line of the others: displaced across the slice normal beyond a "
            f"tolerance of {tolerance:.3f} mm (as for the spacing)",
            "remove slices that belong to another acquisition, or export the complete series again "
            "(their ImagePositionPatient disagrees with the other slices')",
            file=folder,
            detail=listed + more,
        )
    ]


@dataclass(frozen=True)
class SeriesGrid:
    """The voxel grid of a series as ``read_series`` lays its volume out, from the headers alone: what a
    label object (DICOM SEG, RTSTRUCT) of the series is placed on, and what a DICOM SEG of a prediction
    refers to. Slice ``k`` of the volume is ``files[k]``."""

    series_uid: str
    frame_of_reference_uid: str  # "" when the series has none
    shape: tuple[int, int, int]  # (columns, rows, slices)
    affine: np.ndarray = field(repr=False)  # 4 x 4, voxel index -> RAS mm (read_series's affine)
    files: tuple[Path, ...] = field(repr=False)  # slice files in volume order
    sop_instance_uids: tuple[str, ...] = field(repr=False)  # in volume order
    folder: Path = field(repr=False)  # the folder scanned for the series (the manifest's image)

    @property
    def lps_affine(self) -> np.ndarray:
        """Voxel index -> DICOM patient coordinates (LPS mm), the frame every DICOM position is given in."""
        return LPS_TO_RAS @ self.affine


def series_grid(series: SeriesInfo) -> SeriesGrid:
    """The grid of a series from its headers (no pixel data); DataError on the geometry errors ``read_series``
    refuses."""
    slices = list(zip(series.files, series.headers, strict=True))
    problems, order = _geometry_problems(slices)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise _series_error(series.folder, errors)
    ordered = [slices[i] for i in order]
    first = ordered[0][1]
    return SeriesGrid(
        series_uid=series.uid,
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        shape=(series.columns, series.rows, len(ordered)),
        affine=_series_affine([ds for _, ds in ordered]),
        files=tuple(path for path, _ in ordered),
        sop_instance_uids=tuple(str(ds.get("SOPInstanceUID", "")) for _, ds in ordered),
        folder=series.folder,
    )


def _series_affine(ordered: list[pydicom.Dataset]) -> np.ndarray:
    """The RAS affine of slices in volume order (checked by ``_geometry_problems``): axis 0 along a row,
    axis 1 along a column, axis 2 from the first slice's position to the last one's."""
    first, last = _placement(ordered[0]), _placement(ordered[-1])
    row_spacing, column_spacing = first.spacing
    affine = np.eye(4)
    affine[:3, 0] = first.row * column_spacing  # along a row: column index grows
    affine[:3, 1] = first.column * row_spacing  # along a column: row index grows
    affine[:3, 2] = (last.position - first.position) / (len(ordered) - 1)
    affine[:3, 3] = first.position
    return LPS_TO_RAS @ affine


def read_series(series: SeriesInfo) -> tuple[np.ndarray, np.ndarray]:
    """Load a series as (float32 volume of shape (columns, rows, slices), 4x4 RAS affine).

    Slices are ordered by position along the slice normal, not by InstanceNumber or file name;
    RescaleSlope/RescaleIntercept are applied. Raises DataError on geometry errors or bad pixel data.
    """
    slices = []
    for path in series.files:
        try:
            slices.append((path, _read_dicom(path)))
        except Exception as e:
            problem = Problem(f"cannot be read as DICOM ({describe_exception(e)})", _REMOVE_OR_REPLACE, file=path)
            raise _series_error(series.folder, [problem]) from None
    problems, order = _geometry_problems(slices)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise _series_error(series.folder, errors)

    planes = []
    for path, ds in (slices[i] for i in order):
        try:
            pixels = ds.pixel_array
        except Exception as e:
            raise _series_error(series.folder, [_pixel_problem(path, ds, e)]) from None
        slope, intercept = _rescale(ds)
        planes.append((pixels.astype(np.float32) * slope + intercept).T)  # (rows, columns) -> (columns, rows)
    volume = np.stack(planes, axis=-1, dtype=np.float32)
    return volume, _series_affine([slices[i][1] for i in order])


def _series_error(folder: Path, problems: list[Problem]) -> DataError:
    """The first of a series' ``problems`` as the loaders raise it: naming the series folder (what the
    manifest lists), the slice or subfolder it concerns in the detail."""
    first = problems[0]
    file = Path(first.file) if first.file else folder
    where = f"in {file.relative_to(folder)}" if file != folder and file.is_relative_to(folder) else ""
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    detail = "; ".join(part for part in (where, first.detail) if part)
    return DataError(first.problem + more, first.fix, file=folder, detail=detail)


def _pixel_problem(path: Path, ds: pydicom.Dataset, exc: Exception) -> Problem:
    """Why a slice's pixels cannot be decoded: a compression no installed package decodes, or damage."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and syntax.is_compressed and not _decodable(syntax):
        return Problem(
            f"its pixel data is compressed as {syntax.name}, which no installed package decodes",
            _DECODER_FIX,
            file=path,
        )
    return Problem(
        f"its pixel data cannot be decoded ({describe_exception(exc)}); the file may be truncated or damaged",
        _REMOVE_OR_REPLACE,
        file=path,
    )


def _decodable(syntax: pydicom.uid.UID) -> bool:
    try:
        return get_decoder(syntax).is_available
    except NotImplementedError:  # a compression pydicom has no decoder for
        return False


def _as_folder(data) -> Path:
    """The one folder LoadImage passes (a path, or a sequence of one path)."""
    paths = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if len(paths) != 1:
        raise ValueError(f"DicomSeriesReader reads one series folder at a time, got {len(paths)} paths")
    return Path(paths[0])


@functools.cache
def _reader_class() -> type:
    from monai.data import ImageReader

    class DicomSeriesReader(ImageReader):
        """MONAI reader for a folder holding a DICOM series; `series_uid` picks one of several series."""

        def __init__(self, series_uid: str | None = None):
            super().__init__()
            self.series_uid = series_uid

        def verify_suffix(self, filename) -> bool:
            try:
                return _as_folder(filename).is_dir()
            except ValueError:
                return False

        def read(self, data, **kwargs) -> SeriesInfo:
            scan = scan_folder(_as_folder(data))
            if scan.unreadable:
                raise _series_error(scan.folder, scan.unreadable)
            return select_series(scan, self.series_uid)

        def get_data(self, img: SeriesInfo) -> tuple[np.ndarray, dict]:
            volume, affine = read_series(img)
            meta = {
                "affine": affine,
                "original_affine": affine.copy(),
                "spatial_shape": np.asarray(volume.shape),
                "original_channel_dim": float("nan"),
                "space": "RAS",
                "filename_or_obj": os.path.commonpath([str(f.parent) for f in img.files]),
                "series_uid": img.uid,
                "series_description": img.description,
            }
            return volume, meta

    DicomSeriesReader.__qualname__ = "DicomSeriesReader"  # so pickle finds it via the module __getattr__
    return DicomSeriesReader


def __getattr__(name: str):
    if name == "DicomSeriesReader":
        return _reader_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
