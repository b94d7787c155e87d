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

No message, summary or metadata produced here contains patient identifiers (name, ID, birth
date): series are described by SeriesInstanceUID, SeriesDescription, SeriesNumber and size only.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from medft.errors import DataError, Problem

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_SAME_POSITION_MM = 0.01  # slices closer than this along the normal are duplicates
_REMOVE_OR_REPLACE = "remove it from the series folder or replace it with the complete file"
_REEXPORT = "export the series again from the scanner or PACS, or convert it to NIfTI and list the .nii.gz instead"


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
    """What `scan_folder` found: the series, and the files that could not be read as DICOM."""

    folder: Path
    series: list[SeriesInfo]
    unreadable: list[Problem] = field(default_factory=list)


def scan_folder(folder: Path) -> SeriesScan:
    """Read the headers of every file under `folder` (recursively) and group them by series.

    Hidden files and folders (starting with '.') and DICOMDIR files are skipped. Files that are not
    DICOM images are listed in `unreadable`, one Problem each.
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
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            unreadable.append(Problem("is not a DICOM file", _REMOVE_OR_REPLACE, file=path))
            continue
        except Exception as e:  # truncated or corrupt header: pydicom raises many kinds
            unreadable.append(
                Problem(f"cannot be read as DICOM ({type(e).__name__}: {e})", _REMOVE_OR_REPLACE, file=path)
            )
            continue
        if "SeriesInstanceUID" not in ds or "Rows" not in ds or "Columns" not in ds:
            unreadable.append(
                Problem(
                    "is a DICOM file but not an image slice (no SeriesInstanceUID, Rows or Columns)",
                    "move it out of the series folder",
                    file=path,
                )
            )
            continue
        groups.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))

    series = []
    for uid, members in groups.items():
        first = members[0][1]
        number = first.get("SeriesNumber")
        series.append(
            SeriesInfo(
                uid=uid,
                description=str(first.get("SeriesDescription", "")),
                number=int(number) if number not in (None, "") else None,
                files=[path for path, _ in members],
                rows=int(first.Rows),
                columns=int(first.Columns),
                modality=str(first.get("Modality", "")),
            )
        )
    series.sort(key=lambda s: (s.number is None, s.number or 0, s.uid))
    return SeriesScan(folder=folder, series=series, unreadable=unreadable)


def select_series(scan: SeriesScan, series_uid: str | None) -> SeriesInfo:
    """The series to use: the only one, or the one with `series_uid`. Never merges series."""
    found = "; ".join(s.summary for s in scan.series)
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
            f"holds no series with SeriesInstanceUID {series_uid}; it holds: {found}",
            "set series_uid in the manifest to one of the uids listed",
            file=scan.folder,
        )
    if len(scan.series) > 1:
        raise DataError(
            f"holds {len(scan.series)} DICOM series and medft does not merge series: {found}",
            "in a manifest, add a series_uid column and give, for this case, the uid of the series to use "
            "(one of those listed); or move each series to a folder of its own (what medft predict needs)",
            file=scan.folder,
        )
    return scan.series[0]


def geometry_problems(series: SeriesInfo) -> list[Problem]:
    """Check the slice geometry of a series from its headers; an empty list means it is a clean 3D stack."""
    slices = []
    for path in series.files:
        try:
            slices.append((path, pydicom.dcmread(path, stop_before_pixels=True)))
        except Exception as e:
            return [Problem(f"cannot be read as DICOM ({type(e).__name__}: {e})", _REMOVE_OR_REPLACE, file=path)]
    return _geometry_problems(slices)[0]


def _geometry_problems(slices: list[tuple[Path, pydicom.Dataset]]) -> tuple[list[Problem], list[int]]:
    """Problems of a series given (file, dataset) pairs, and the slice order along the normal."""
    order = list(range(len(slices)))
    problems, unplaced = [], False
    for path, ds in slices:
        if int(ds.get("NumberOfFrames") or 1) > 1:
            problems.append(
                Problem(
                    f"is a multi-frame DICOM file ({int(ds.NumberOfFrames)} frames), which medft does not support",
                    "export the series as one file per slice (classic DICOM), or convert it to NIfTI "
                    "and list the .nii.gz instead",
                    file=path,
                )
            )
        if int(ds.get("SamplesPerPixel") or 1) > 1:
            problems.append(
                Problem("holds a colour image; medft reads greyscale series only", _REEXPORT, file=path)
            )
        missing = [t for t in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing") if t not in ds]
        if missing:
            unplaced = True
            problems.append(
                Problem(f"lacks {', '.join(missing)}, needed to place the slice in space", _REEXPORT, file=path)
            )
    if len(slices) == 1 and not problems:
        problems.append(
            Problem(
                "the series has only 1 slice; a 3D volume needs several slices",
                "point the manifest at a 3D series (several slices), not a single image",
                file=slices[0][0],
            )
        )
    if unplaced or len(slices) == 1:
        return problems, order

    first_path, first = slices[0]
    iop = np.array(first.ImageOrientationPatient, dtype=float)
    spacing = np.array(first.PixelSpacing, dtype=float)
    for path, ds in slices[1:]:
        for what, differs in (
            ("orientation (ImageOrientationPatient)", not np.allclose(ds.ImageOrientationPatient, iop, atol=1e-4)),
            ("image size (Rows x Columns)", (ds.Rows, ds.Columns) != (first.Rows, first.Columns)),
            ("pixel spacing (PixelSpacing)", not np.allclose(ds.PixelSpacing, spacing, rtol=1e-4, atol=1e-4)),
        ):
            if differs:
                problems.append(
                    Problem(
                        f"has a different {what} than {first_path.name} of the same series",
                        "make sure the folder holds one series only; " + _REEXPORT,
                        file=path,
                    )
                )
    if problems:
        return problems, order

    normal = np.cross(iop[:3], iop[3:])
    along = np.array([np.dot(normal, np.array(ds.ImagePositionPatient, dtype=float)) for _, ds in slices])
    order = [int(i) for i in np.argsort(along, kind="stable")]
    names = [slices[i][0].name for i in order]
    gaps = np.diff(along[order])

    duplicates = np.flatnonzero(gaps <= _SAME_POSITION_MM)
    if duplicates.size:
        pairs = ", ".join(f"{names[i]} and {names[i + 1]}" for i in duplicates[:5])
        more = f" and {duplicates.size - 5} more pairs" if duplicates.size > 5 else ""
        problems.append(
            Problem(
                f"{duplicates.size} pair(s) of slices share the same position: {pairs}{more}",
                "remove the duplicate files; if the folder holds several acquisitions (echoes, time points) "
                "under one series uid, export them as separate series",
                file=slices[0][0].parent,
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
                    f"about {n_missing} slice(s) seem missing between {names[i]} and {names[i + 1]} "
                    f"(gap of {gap:.2f} mm where slices are {step:.2f} mm apart)",
                    "copy the missing slice files into the folder, or export the complete series again",
                    file=slices[0][0].parent,
                )
            )
        elif abs(gap - step) > tolerance:
            uneven.append(f"{gap:.3f} mm between {names[i]} and {names[i + 1]}")
    if uneven:
        listed = "; ".join(uneven[:5]) + (f"; and {len(uneven) - 5} more" if len(uneven) > 5 else "")
        problems.append(
            Problem(
                f"slice spacing is uneven: typical spacing {step:.3f} mm, tolerance {tolerance:.3f} mm "
                f"(the larger of 0.01 mm and 1%), but {listed}",
                "export the complete series again, or resample it to even spacing (e.g. convert it to NIfTI "
                "with dcm2niix) and list the .nii.gz instead",
                file=slices[0][0].parent,
            )
        )
    return problems, order


def read_series(series: SeriesInfo) -> tuple[np.ndarray, np.ndarray]:
    """Load a series as (float32 volume of shape (columns, rows, slices), 4x4 RAS affine).

    Slices are ordered by position along the slice normal, not by InstanceNumber or file name;
    RescaleSlope/RescaleIntercept are applied. Raises DataError on geometry errors or bad pixel data.
    """
    slices = []
    for path in series.files:
        try:
            slices.append((path, pydicom.dcmread(path)))
        except Exception as e:
            raise DataError(f"cannot be read as DICOM ({type(e).__name__}: {e})", _REMOVE_OR_REPLACE, file=path)
    problems, order = _geometry_problems(slices)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise DataError(errors[0].problem + more, errors[0].fix, file=errors[0].file)

    planes = []
    for path, ds in (slices[i] for i in order):
        try:
            pixels = ds.pixel_array
        except Exception as e:
            raise DataError(
                f"its pixel data cannot be decoded ({type(e).__name__}: {e}); the file may be truncated "
                "or use a compression pydicom cannot read",
                _REMOVE_OR_REPLACE,
                file=path,
            )
        slope = float(ds.get("RescaleSlope") or 1.0)
        intercept = float(ds.get("RescaleIntercept") or 0.0)
        planes.append((pixels.astype(np.float32) * slope + intercept).T)  # (rows, columns) -> (columns, rows)
    volume = np.stack(planes, axis=-1).astype(np.float32)

    first, last = slices[order[0]][1], slices[order[-1]][1]
    iop = np.array(first.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    origin = np.array(first.ImagePositionPatient, dtype=float)
    affine = np.eye(4)
    affine[:3, 0] = iop[:3] * column_spacing  # along a row: column index grows
    affine[:3, 1] = iop[3:] * row_spacing  # along a column: row index grows
    affine[:3, 2] = (np.array(last.ImagePositionPatient, dtype=float) - origin) / (len(order) - 1)
    affine[:3, 3] = origin
    return volume, LPS_TO_RAS @ affine


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
                bad = scan.unreadable[0]
                raise DataError(
                    f"holds {len(scan.unreadable)} file(s) that are not usable DICOM slices, "
                    f"e.g. {bad.file}: {bad.problem}",
                    bad.fix,
                    file=scan.folder,
                )
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
