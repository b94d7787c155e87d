"""A prediction of a DICOM series as a DICOM Segmentation (SEG) object that refers to that series.

Typical use::

    classes = [SegmentClass(1, "Anterior hippocampus"), SegmentClass(2, "Posterior hippocampus")]
    write_prediction_seg(labels, series_folder, series_uid, classes, Algorithm("medft hippocampus_ft", "0.1.0"),
                         out / "case.seg.dcm")

``labels`` holds class indices on the grid of the series as ``medft.data.dicom`` lays its volume out
(``series_grid``): shape (columns, rows, slices), slice ``k`` being the slice file ``grid.files[k]``.
The SEG is BINARY, one segment per foreground class (segment numbers 1..N in the order of the
classes), with the frames that hold no voxel of a segment left out (highdicom's default): a class
predicted nowhere is declared in the SegmentSequence and has no frame (valid: dciodvfy accepts it);
a label map without any foreground keeps every (empty) frame of every segment, as a SEG needs at least
one frame. Each frame refers to its source slice by SOPInstanceUID. Names that are not ASCII are written
in UTF-8 (SpecificCharacterSet ISO_IR 192).

highdicom copies the patient, study and frame of reference from the source slices; a Type 2
attribute (PatientBirthDate, PatientSex, AccessionNumber, ...) the source lacks is written empty,
as the standard allows. Messages name the files and never patient particulars.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from medft.atomic_files import atomic_write
from medft.data.dicom import SeriesGrid, describe_exception, scan_folder, select_series, series_grid
from medft.errors import DataError, MedftError

SERIES_DESCRIPTION = "medft segmentation"
CONTENT_LABEL = "MEDFT_PREDICTION"  # a CS: upper case, at most 16 characters
MANUFACTURER = "medft"
_SERIES_NUMBER_OFFSET = 1000  # the SEG's SeriesNumber: the source's plus this, so viewers list it beside the source
DEFAULT_CATEGORY = {"value": "91723000", "scheme": "SCT", "meaning": "Anatomical Structure"}
ALGORITHM_FAMILY = {"value": "123110", "scheme": "DCM", "meaning": "Artificial Intelligence"}
_MAX_LO = 64  # characters of a LO value (labels, names, versions, code meanings)
# Type 2 attributes of the patient and study modules that highdicom reads from the first source slice:
# written empty (unknown) when the source lacks them, as the standard allows for Type 2.
_TYPE2_FROM_SOURCE = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
    "StudyTime", "ReferringPhysicianName",
)
_REEXPORT = "export the series again from the scanner or PACS with its complete headers"


@dataclass(frozen=True)
class SegmentClass:
    """One foreground class of a label map, and how its segment is described."""

    index: int  # class index in the label map (1, 2, ...)
    name: str  # the segment label
    code: dict | None = None  # {"value": ..., "scheme": "SCT", "meaning": ...}: SegmentedPropertyType; None: the category's
    category: dict | None = None  # same form: SegmentedPropertyCategory; None: SCT 91723000 Anatomical Structure


@dataclass(frozen=True)
class Algorithm:
    """The algorithm that made the prediction, as the SEG's AlgorithmIdentificationSequence names it."""

    name: str  # e.g. "medft hippocampus_ft"
    version: str  # e.g. medft's version and the model's


def write_prediction_seg(labels: np.ndarray, series_folder: Path, series_uid: str | None, classes: Sequence[SegmentClass],
                         algorithm: Algorithm, path: Path) -> Path:
    """Write ``labels`` (class indices on the grid of the series, shape (columns, rows, slices)) as a BINARY
    DICOM SEG that refers to the series, atomically to ``path``; return ``path``.

    One segment per class, in the order of ``classes`` (segment numbers 1..N), each declared even where the
    class is predicted nowhere. Patient, study, frame of reference copied from the source by highdicom; new
    SeriesInstanceUID and SOPInstanceUID; algorithm type AUTOMATIC with the algorithm's name, version and the
    family "Artificial Intelligence". Raises DataError (the labels do not fit the series, or the series cannot
    be read) or MedftError (unusable classes or algorithm), with a fix; ``path`` is then left as it was."""
    import highdicom as hd  # imported here: it takes a while, and only this writer needs it

    path = Path(path)
    descriptions = _segment_descriptions(hd, classes, algorithm, path)
    series = select_series(scan_folder(Path(series_folder)), series_uid)
    grid = series_grid(series)
    segments = _segment_numbers(np.asarray(labels), grid, classes, path)
    sources = _source_datasets(grid)

    texts = [c.name for c in classes] + [algorithm.name, algorithm.version]
    charset = {} if all(t.isascii() for t in texts) else {"specific_character_set": "ISO_IR 192"}
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=np.ascontiguousarray(segments.transpose(2, 1, 0)),  # (slices, rows, columns): frame k on grid.files[k]
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=_series_number(sources[0]),
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=algorithm.name,
            software_versions=algorithm.version,
            device_serial_number="0",  # Type 1; software has no serial number
            content_label=CONTENT_LABEL,
            content_description=_lo(f"prediction of {algorithm.name}"),
            series_description=SERIES_DESCRIPTION,
            transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
            omit_empty_frames=bool(segments.any()),  # all empty: highdicom keeps every frame anyway, and logs a warning
            **charset,
        )
    except (ValueError, AttributeError) as exc:  # highdicom's refusals of the source headers
        raise DataError(
            f"highdicom cannot build a DICOM SEG on this series ({type(exc).__name__})",
            f"check the series with dciodvfy and medft check-data; {_REEXPORT}",
            file=grid.folder,
            detail=describe_exception(exc),
        ) from exc
    atomic_write(path, lambda file: seg.save_as(file, enforce_file_format=True))
    return path


def _lo(text: str) -> str:
    return text if len(text) <= _MAX_LO else text[: _MAX_LO - 3] + "..."


def _segment_descriptions(hd, classes: Sequence[SegmentClass], algorithm: Algorithm, path: Path) -> list:
    """The SegmentDescription of each class; MedftError naming what is wrong with the classes or the algorithm."""
    if not classes:
        raise MedftError(f"{path}: no segment class is given; a DICOM SEG needs at least one segment. "
                         "Fix: pass the model's foreground classes (index and name)")
    indices = [c.index for c in classes]
    bad_index = [i for i in indices if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 1]
    if bad_index:
        raise MedftError(f"{path}: segment class indices must be whole numbers from 1 (0 is the background), got {bad_index}. "
                         "Fix: give each foreground class its index in the label map")
    if len(set(indices)) != len(indices):
        raise MedftError(f"{path}: segment class indices repeat ({indices}). Fix: give each class its own index")
    for what, text in [("segment class name", c.name) for c in classes] + [("algorithm name", algorithm.name),
                                                                             ("algorithm version", algorithm.version)]:
        _check_text(what, text, path)
    try:
        identification = hd.AlgorithmIdentificationSequence(
            name=algorithm.name, family=_concept(hd, ALGORITHM_FAMILY, "algorithm family", path), version=algorithm.version
        )
        descriptions = []
        for number, segment_class in enumerate(classes, start=1):
            category = _concept(hd, segment_class.category or DEFAULT_CATEGORY, f"category of class {segment_class.name!r}", path)
            kind = category if segment_class.code is None else _concept(hd, segment_class.code, f"code of class {segment_class.name!r}",
                                                                         path)
            descriptions.append(hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=segment_class.name,
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=identification,
            ))
    except ValueError as exc:
        raise MedftError(f"{path}: the segment classes cannot be described in DICOM ({describe_exception(exc)}). "
                         "Fix: correct the class names and codes") from None
    return descriptions


def _check_text(what: str, text: object, path: Path) -> None:
    """A LO value: a non-empty text of at most 64 characters, without backslash or control characters."""
    if not isinstance(text, str) or not text.strip():
        raise MedftError(f"{path}: the {what} is empty or no text ({text!r}). Fix: give it a name")
    if len(text) > _MAX_LO or "\\" in text or not text.isprintable():
        raise MedftError(f"{path}: the {what} {text!r} cannot go into DICOM: at most {_MAX_LO} printable characters, "
                         "without backslash. Fix: shorten or correct it")


def _concept(hd, code: dict, what: str, path: Path):
    """A CodedConcept from {"value", "scheme", "meaning"}."""
    if not isinstance(code, dict) or not {"value", "scheme", "meaning"} <= code.keys():
        raise MedftError(f"{path}: the {what} is {code!r}, not a code. "
                         'Fix: give it as {"value": "...", "scheme": "SCT", "meaning": "..."}')
    value, scheme, meaning = (str(code[key]).strip() for key in ("value", "scheme", "meaning"))
    if not (value and scheme and meaning):
        raise MedftError(f"{path}: the {what} has an empty value, scheme or meaning ({code!r}). Fix: fill them in")
    _check_text(f"meaning of the {what}", meaning, path)
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def _segment_numbers(labels: np.ndarray, grid: SeriesGrid, classes: Sequence[SegmentClass], path: Path) -> np.ndarray:
    """``labels`` with each class index replaced by its segment number (1..N in the order of ``classes``),
    0 for the background; DataError when the shape or a value does not fit."""
    if labels.shape != grid.shape:
        extra = (" (drop the channel axis first: a label map has none)" if labels.ndim == 4 and labels.shape[0] == 1
                 else "")
        raise DataError(
            f"the label map has shape {labels.shape}, the series grid (columns, rows, slices) is {grid.shape}",
            "write the label map predicted on this series' own grid: axes columns, rows, slices in the order of "
            "medft.data.dicom.series_grid (a prediction resampled to another spacing or orientation must be resampled "
            f"back first){extra}",
            file=path,
        )
    if labels.dtype.kind not in "biuf":
        raise DataError(f"the label map holds {labels.dtype} values, not class indices", "pass an integer label map",
                        file=path)
    top = max(c.index for c in classes)
    index_type = np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.uint32
    if labels.dtype.kind == "b":
        values = labels.view(np.uint8)
    else:
        with np.errstate(invalid="ignore"):
            fits = (labels >= 0) & (labels <= top)
            if labels.dtype.kind == "f":
                fits &= labels == np.rint(labels)  # NaN fits nowhere
        if not fits.all():
            raise _value_error(np.unique(labels[~fits])[:5].tolist(), classes, path)
        values = labels.astype(index_type, copy=False)
    lookup = np.full(top + 1, -1, dtype=np.int16 if len(classes) < 2**15 else np.int32)
    lookup[0] = 0
    for number, segment_class in enumerate(classes, start=1):
        lookup[segment_class.index] = number
    numbers = lookup[values]
    if (numbers < 0).any():
        raise _value_error(np.unique(values[numbers < 0])[:5].tolist(), classes, path)
    return numbers.astype(np.uint8 if len(classes) < 256 else np.uint16)


def _value_error(values: list, classes: Sequence[SegmentClass], path: Path) -> DataError:
    declared = ", ".join(f"{c.index} ({c.name})" for c in classes)
    return DataError(
        f"the label map holds value(s) {', '.join(f'{v:g}' for v in values)} that are neither 0 (background) nor the index "
        f"of a segment class ({declared})",
        "declare a segment class for every class index the model predicts (its classes in the bundle), or pass the "
        "label map of class indices (not probabilities or logits)",
        file=path,
    )


def _source_datasets(grid: SeriesGrid) -> list[pydicom.Dataset]:
    """The headers of the slices in grid order, re-read; DataError when a slice changed since the scan or lacks
    what a SEG copies from it."""
    sources = []
    for file, uid in zip(grid.files, grid.sop_instance_uids, strict=True):
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True, force=True)  # force: slices without the Part-10 header
        except Exception as exc:  # pydicom raises many kinds on a damaged file
            raise DataError(f"a slice cannot be read as DICOM ({describe_exception(exc)})",
                            "replace it with the complete file, or export the series again", file=grid.folder,
                            detail=f"in {file.name}") from None
        if not uid or str(ds.get("SOPInstanceUID", "")) != uid:
            raise DataError("a slice has no SOPInstanceUID, or it changed while the SEG was being written",
                            f"make sure nothing writes to the series folder meanwhile; {_REEXPORT}", file=grid.folder,
                            detail=f"in {file.name}")
        sources.append(ds)
    first = sources[0]
    for keyword in ("StudyInstanceUID", "FrameOfReferenceUID"):
        if not str(first.get(keyword, "") or "").strip():
            raise DataError(f"the series has no {keyword}, which a DICOM SEG of it must carry",
                            f"{_REEXPORT} (an anonymiser may have removed {keyword})", file=grid.folder)
    missing = [keyword for keyword in _TYPE2_FROM_SOURCE if keyword not in first]
    if missing:
        first = copy.deepcopy(first)
        for keyword in missing:
            setattr(first, keyword, None)
        sources[0] = first
    return sources


def _series_number(source: pydicom.Dataset) -> int:
    """The SEG's SeriesNumber: the source's plus 1000, or 1000 when the source has none usable."""
    try:
        number = int(source.get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        number = 0
    return _SERIES_NUMBER_OFFSET + number if 0 <= number < 2**31 - 1 - _SERIES_NUMBER_OFFSET else _SERIES_NUMBER_OFFSET
