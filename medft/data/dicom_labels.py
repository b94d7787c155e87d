"""Ground truth given as a DICOM SEG or RTSTRUCT, read as a label map on the grid of its image series.

Typical use::

    grid = series_grid(series)                          # medft.data.dicom
    if dicom_label_kind(path):                          # "SEG", "RTSTRUCT" or None
        label, warnings = read_dicom_label(path, grid, {1: ["hippocampus", "hippocampus anterior"]})

The label map has the grid's shape (columns, rows, slices: the layout of ``read_series``), values are class
indices, 0 is background. Segments (SEG SegmentLabel) and ROIs (RTSTRUCT ROIName) are matched to classes by name,
compared as ``normalised_name`` gives them: case-insensitive, surrounding whitespace stripped, inner runs of
whitespace collapsed. Several segments may map to one class (their union); segments of different classes must not
overlap. Segments that map to no class are ignored with a warning.

SEG (Segmentation Storage, and Label Map Segmentation Storage): every frame is placed by its own geometry
(PlanePositionSequence, PlaneOrientationSequence, PixelMeasuresSequence), never by frame order or source-image
references. medft places frames, it does not resample: a frame must have the series' row and column directions and
pixel spacing, lie on one of its slices at a whole-pixel offset, and stay inside the grid; it may cover part of a
slice. A BINARY frame holds its segment as is; in a FRACTIONAL frame a voxel is in the segment when its value is at
least half of MaximumFractionalValue; in a LABELMAP frame a voxel is in the segment whose number it holds.

RTSTRUCT (RT Structure Set Storage): the points of each contour must lie on one slice of the grid (within 0.05 of the
slice spacing) and within the slice's extent (the outer edges of its border voxels, give or take 0.05 voxel).
A voxel belongs to an ROI when its centre lies inside an odd number of that ROI's closed contours on its slice (the
even-odd rule: a contour inside another is a hole; several separate contours on one slice are separate parts; the
keyhole encoding works too); a centre exactly on a contour line counts as inside that contour (contour points are
taken to 1e-6 voxel, so that a line drawn through voxel centres passes exactly through them).
POINT and OPEN_PLANAR contours enclose no area: they are ignored with a warning.

Messages name the label file; UIDs go in a problem's ``detail`` only, and no patient identifier appears anywhere.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from skimage.draw import polygon2mask

from medft.data.dicom import SeriesGrid, describe_exception
from medft.data.manifest import normalised_name
from medft.errors import DataError, Problem

_KINDS = {
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.66.7": "SEG",  # Label Map Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.481.3": "RTSTRUCT",  # RT Structure Set Storage
}
_ORIENTATION_TOLERANCE = 1e-3  # SEG frame direction cosines against the series'
_SPACING_TOLERANCE = 1e-3  # SEG frame pixel spacing against the series', relative
_FRAME_TOLERANCE = 0.01  # voxel: a SEG frame's offset from the grid's pixels and slices
_CONTOUR_TOLERANCE = 0.05  # voxel: an RTSTRUCT contour's distance from its slice, and beyond the grid's edge
_CONTOUR_DECIMALS = 6  # contour points in voxel indices are rounded to this many decimals
_NO_RESAMPLING = (
    "medft places a {kind} on the image's voxels and does not resample it: give the {kind} made on this image series "
    "(not on another reconstruction of it), or convert it to a NIfTI label on the image's grid"
)

# A piece of a label: (class, slice, first column, first row, mask of shape (columns, rows)).
_Piece = tuple[int, int, int, int, np.ndarray]


def dicom_label_kind(path: Path) -> str | None:
    """"SEG" (Segmentation Storage, Label Map Segmentation Storage), "RTSTRUCT" (RT Structure Set Storage), or
    None for any other file (a NIfTI, a DICOM image, not DICOM). Reads the header only; never raises for a non-DICOM
    file."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # no DICOM file, or no file at all: pydicom fails in many ways on those
        return None
    meta = getattr(ds, "file_meta", None) or {}
    return _KINDS.get(str(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID") or ""))


def reference_problems(path: Path, grid: SeriesGrid) -> list[Problem]:
    """Errors when the SEG or RTSTRUCT at ``path`` does not reference the image series of ``grid``: its
    SeriesInstanceUID is not among the referenced series, or a FrameOfReferenceUID of the label differs from the
    series' (not checked when the series has none). A file whose header is no readable SEG or RTSTRUCT gives that
    error instead."""
    try:
        kind, ds = _open(Path(path), header_only=True)
    except DataError as e:
        return [e.details]
    return _reference_problems(Path(path), kind, ds, grid)


def read_dicom_label(path: Path, grid: SeriesGrid, classes: Mapping[int, Sequence[str]]) -> tuple[np.ndarray, list[Problem]]:
    """The label map of the SEG or RTSTRUCT at ``path`` on ``grid`` (shape ``grid.shape``, uint8, or int16 for class
    indices above 255), and warnings (segments that map to no class, contours that enclose no area).

    ``classes``: foreground class index -> the names a segment or ROI may carry for it (the class name first, then
    its aliases). DataError, naming the file, when the label does not reference the series, a class has no segment,
    segments of different classes overlap, or a frame or contour does not lie on the grid's voxels.
    """
    path = Path(path)
    kind, ds = _open(path, header_only=False)
    problems = _reference_problems(path, kind, ds, grid)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise DataError(problems[0].problem + more, problems[0].fix, file=path, detail=problems[0].detail)
    if kind == "SEG":
        names = {number: ds.get_segment_description(number).segment_label for number in ds.segment_numbers}
        mapping, warnings = _match(path, "segment", names, classes)
        pieces = _seg_pieces(path, ds, grid, mapping)
    else:
        names = {int(roi.ROINumber): str(roi.get("ROIName", "")) for roi in ds.get("StructureSetROISequence", [])}
        mapping, warnings = _match(path, "ROI", names, classes)
        pieces = _rtstruct_pieces(path, ds, grid, mapping, names, warnings)
    return _assemble(path, kind, grid, classes, pieces), warnings


def _open(path: Path, header_only: bool) -> tuple[str, pydicom.Dataset]:
    """The kind and dataset of a SEG (a highdicom Segmentation, unless ``header_only``) or RTSTRUCT."""
    kind = dicom_label_kind(path)
    if kind is None:
        raise DataError(
            "is not a DICOM SEG or RTSTRUCT file",
            "give the label as a DICOM SEG or RT Structure Set made on the image series, or as a NIfTI file",
            file=path,
        )
    try:
        if kind == "SEG" and not header_only:
            return kind, hd.seg.segread(path)
        return kind, pydicom.dcmread(path, stop_before_pixels=header_only)
    except Exception as e:  # damaged files make pydicom and highdicom fail in many ways
        raise DataError(
            f"cannot be read as a DICOM {kind} ({describe_exception(e)})",
            f"export the {kind} again, or copy it again from its source",
            file=path,
        ) from None


def _reference_problems(path: Path, kind: str, ds: pydicom.Dataset, grid: SeriesGrid) -> list[Problem]:
    if kind == "SEG":
        series = {str(item.get("SeriesInstanceUID", "")) for item in ds.get("ReferencedSeriesSequence", [])}
        frames = {str(ds.get("FrameOfReferenceUID", ""))}
        series_tag, frame_tag = "ReferencedSeriesSequence", "FrameOfReferenceUID"
    else:
        referenced = ds.get("ReferencedFrameOfReferenceSequence", [])
        series = {
            str(item.get("SeriesInstanceUID", ""))
            for frame in referenced
            for study in frame.get("RTReferencedStudySequence", [])
            for item in study.get("RTReferencedSeriesSequence", [])
        }
        frames = {str(frame.get("FrameOfReferenceUID", "")) for frame in referenced}
        frames |= {str(roi.get("ReferencedFrameOfReferenceUID", "")) for roi in ds.get("StructureSetROISequence", [])}
        series_tag = "ReferencedFrameOfReferenceSequence > RTReferencedStudySequence > RTReferencedSeriesSequence"
        frame_tag = "ReferencedFrameOfReferenceSequence and the ROIs' ReferencedFrameOfReferenceUID"
    fix = f"give the {kind} made on this case's series, or point image at the series the {kind} was made on"
    problems = []
    if grid.series_uid not in series:
        problems.append(
            Problem(
                f"the {kind} does not reference the image's series: its referenced series ({series_tag}) do not "
                "include the image's SeriesInstanceUID",
                fix,
                file=path,
                detail=f"image series {grid.series_uid}; referenced series: {', '.join(sorted(series - {''})) or 'none'}",
            )
        )
    others = frames - {"", grid.frame_of_reference_uid}
    if grid.frame_of_reference_uid and others:
        problems.append(
            Problem(
                f"the {kind} lies in another patient coordinate system than the image: its FrameOfReferenceUID "
                f"({frame_tag}) differs from the image series'",
                fix,
                file=path,
                detail=f"image frame of reference {grid.frame_of_reference_uid}; the {kind}'s: {', '.join(sorted(others))}",
            )
        )
    return problems


def _match(
    path: Path, noun: str, names: dict[int, str], classes: Mapping[int, Sequence[str]]
) -> tuple[dict[int, int], list[Problem]]:
    """Segment or ROI number -> class, and a warning for each one that maps to no class. DataError when a class
    has none."""
    by_name: dict[str, int] = {}
    for cls, aliases in classes.items():
        for alias in aliases:
            if by_name.setdefault(normalised_name(alias), cls) != cls:
                raise ValueError(f"the name {alias!r} is given for classes {by_name[normalised_name(alias)]} and {cls}")
    mapping = {number: by_name[normalised_name(name)] for number, name in names.items() if normalised_name(name) in by_name}
    warnings = [
        Problem(
            f"{noun} '{name}' maps to no class; ignored",
            "if it is one of the classes, add its name as an alias of that class in the classes file",
            file=path,
            severity="warning",
        )
        for number, name in names.items()
        if number not in mapping
    ]
    missing = [cls for cls in classes if cls not in mapping.values()]
    if missing:
        absent = "; ".join(_unnamed(noun, cls, classes[cls]) for cls in missing)
        listed = ", ".join(f"'{name}'" for name in names.values()) or "none"
        first = list(classes[missing[0]])
        example = {str(missing[0]): {"name": first[0], "aliases": [*first[1:], f"<the {noun}'s name>"]}}
        raise DataError(
            f"{absent}; {noun}s in the file: {listed}",
            f"add the {noun}'s name as an alias of the class in the classes file ({json.dumps(example)})",
            file=path,
        )
    return mapping, warnings


def _unnamed(noun: str, cls: int, names: Sequence[str]) -> str:
    aliases = f" or its aliases {', '.join(repr(str(a)) for a in names[1:])}" if len(names) > 1 else ""
    return f"no {noun} named '{names[0]}'{aliases} (class {cls})"


def _assemble(
    path: Path, kind: str, grid: SeriesGrid, classes: Mapping[int, Sequence[str]], pieces: Iterator[_Piece]
) -> np.ndarray:
    """The label map of ``pieces``; DataError when pieces of different classes overlap."""
    label = np.zeros(grid.shape, np.uint8 if max(classes, default=0) <= 255 else np.int16)
    clash = None  # the voxels where pieces of different classes meet, once there are any
    pairs: set[tuple[int, int]] = set()
    for cls, k, x0, y0, mask in pieces:
        region = label[x0 : x0 + mask.shape[0], y0 : y0 + mask.shape[1], k]
        others = mask & (region != 0) & (region != cls)
        if others.any():
            clash = np.zeros(grid.shape, bool) if clash is None else clash
            clash[x0 : x0 + mask.shape[0], y0 : y0 + mask.shape[1], k] |= others
            pairs |= {tuple(sorted((cls, int(other)))) for other in np.unique(region[others])}
        region[mask & (region == 0)] = cls
    if clash is not None:
        named = ", ".join(f"{a} '{classes[a][0]}' and {b} '{classes[b][0]}'" for a, b in sorted(pairs))
        noun = "segments" if kind == "SEG" else "ROIs"
        raise DataError(
            f"{noun} of different classes overlap in {int(clash.sum())} voxel(s) (classes {named})",
            f"correct the {kind} so that no voxel lies in {noun} of two classes (a label map holds one class per "
            f"voxel), or map the overlapping {noun} to one class",
            file=path,
        )
    return label


def _seg_pieces(path: Path, seg: hd.seg.Segmentation, grid: SeriesGrid, mapping: dict[int, int]) -> Iterator[_Piece]:
    """The frames of the mapped segments, each placed by its own geometry."""
    kind = str(seg.SegmentationType)
    threshold = seg.MaximumFractionalValue / 2 if kind == "FRACTIONAL" else 1
    for index in range(int(seg.get("NumberOfFrames", 1))):
        if kind == "LABELMAP":
            numbers = list(mapping)
        else:
            numbers = [int(_frame_item(path, seg, index, "SegmentIdentificationSequence").ReferencedSegmentNumber)]
            if numbers[0] not in mapping:
                continue
        k, x0, y0 = _frame_place(path, seg, index, grid)
        frame = seg.get_stored_frame(index, as_index=True).T  # (rows, columns) -> (columns, rows)
        for number in numbers:
            yield mapping[number], k, x0, y0, frame == number if kind == "LABELMAP" else frame >= threshold


def _frame_item(path: Path, seg: pydicom.Dataset, index: int, keyword: str) -> pydicom.Dataset:
    """The item of a functional group sequence for a frame: its own, or the shared one."""
    per_frame = seg.get("PerFrameFunctionalGroupsSequence") or []
    shared = seg.get("SharedFunctionalGroupsSequence") or []
    for group in ([per_frame[index]] if index < len(per_frame) else []) + list(shared[:1]):
        if group.get(keyword):
            return group[keyword].value[0]
    raise DataError(
        f"frame {index + 1} has no {keyword}, needed to place it on the image",
        "export the SEG again with a tool that writes the frames' functional groups",
        file=path,
    )


def _frame_place(path: Path, seg: pydicom.Dataset, index: int, grid: SeriesGrid) -> tuple[int, int, int]:
    """(slice, first column, first row) of a SEG frame on the grid; DataError when it does not lie on its voxels."""
    number = index + 1
    fix = _NO_RESAMPLING.format(kind="SEG")
    axes = grid.lps_affine[:3, :2]  # along a row (column index grows), along a column (row index grows)
    spacing = np.linalg.norm(axes, axis=0)[::-1]  # (between rows, between columns), as PixelSpacing
    orientation = np.array(_frame_item(path, seg, index, "PlaneOrientationSequence").ImageOrientationPatient, float)
    expected = (axes / spacing[::-1]).T.ravel()
    if orientation.shape != (6,) or np.abs(orientation - expected).max() > _ORIENTATION_TOLERANCE:
        shown = ", ".join(f"{v:.4g}" for v in orientation)
        raise DataError(
            f"frame {number} is oriented otherwise than the image's slices (ImageOrientationPatient {shown}; the "
            f"image's: {', '.join(f'{v:.4g}' for v in expected)})",
            fix,
            file=path,
        )
    pixel_spacing = np.array(_frame_item(path, seg, index, "PixelMeasuresSequence").PixelSpacing, float)
    if pixel_spacing.shape != (2,) or (np.abs(pixel_spacing - spacing) > _SPACING_TOLERANCE * spacing).any():
        raise DataError(
            f"frame {number} has another pixel spacing than the image (PixelSpacing "
            f"{', '.join(f'{v:g}' for v in pixel_spacing)} mm; the image's: {', '.join(f'{v:g}' for v in spacing)} mm)",
            fix,
            file=path,
        )
    position = np.array(_frame_item(path, seg, index, "PlanePositionSequence").ImagePositionPatient, float)
    if position.shape != (3,):
        raise DataError(f"frame {number} has no valid ImagePositionPatient", fix, file=path)
    x, y, z = (np.linalg.inv(grid.lps_affine) @ np.append(position, 1))[:3]
    off = np.abs(np.array([x, y, z]) - np.round([x, y, z]))
    if off.max() > _FRAME_TOLERANCE:
        raise DataError(
            f"frame {number} does not lie on the image's voxels: its first pixel is {off[0]:.2f} column(s), "
            f"{off[1]:.2f} row(s) and {off[2]:.2f} slice(s) off the nearest voxel centre (tolerance {_FRAME_TOLERANCE:g})",
            fix,
            file=path,
        )
    x0, y0, k = (int(v) for v in np.round([x, y, z]))
    columns, rows, slices = grid.shape
    if x0 < 0 or y0 < 0 or x0 + int(seg.Columns) > columns or y0 + int(seg.Rows) > rows or not 0 <= k < slices:
        raise DataError(
            f"frame {number} lies outside the image's grid: it covers columns {x0} to {x0 + int(seg.Columns) - 1} and rows "
            f"{y0} to {y0 + int(seg.Rows) - 1} of slice {k}; the image has columns 0 to {columns - 1}, rows 0 to {rows - 1} "
            f"and slices 0 to {slices - 1}",
            fix,
            file=path,
        )
    return k, x0, y0


def _rtstruct_pieces(
    path: Path, ds: pydicom.Dataset, grid: SeriesGrid, mapping: dict[int, int], names: dict[int, str], warnings: list[Problem]
) -> Iterator[_Piece]:
    """One mask per slice of each mapped ROI (the even-odd rule over its closed contours); appends a warning to
    ``warnings`` for each ROI with contours that enclose no area."""
    inverse = np.linalg.inv(grid.lps_affine)
    for roi in ds.get("ROIContourSequence", []):
        number = int(roi.get("ReferencedROINumber", -1))
        if number not in mapping:
            continue
        slices: dict[int, np.ndarray] = {}
        ignored: dict[str, int] = {}
        for index, contour in enumerate(roi.get("ContourSequence", []), start=1):
            geometric_type = str(contour.get("ContourGeometricType", ""))
            if geometric_type != "CLOSED_PLANAR":
                ignored[geometric_type] = ignored.get(geometric_type, 0) + 1
                continue
            where = f"contour {index} of ROI '{names[number]}'"
            points = np.asarray(contour.get("ContourData", []), float)
            if points.size % 3 or not points.size:
                raise DataError(f"{where}: its ContourData does not hold x, y, z triples", "export the RTSTRUCT again", file=path)
            voxels = np.round(points.reshape(-1, 3) @ inverse[:3, :3].T + inverse[:3, 3], _CONTOUR_DECIMALS)
            k = _contour_slice(path, where, voxels, grid)
            mask = polygon2mask(grid.shape[:2], voxels[:, :2])
            slices[k] = slices[k] ^ mask if k in slices else mask
        if ignored:
            counted = ", ".join(f"{count} {name or 'untyped'}" for name, count in sorted(ignored.items()))
            warnings.append(
                Problem(
                    f"ROI '{names[number]}' has contours that enclose no area ({counted}); ignored",
                    "draw the structure with closed contours (CLOSED_PLANAR) if it should be part of the label",
                    file=path,
                    severity="warning",
                )
            )
        for k, mask in slices.items():
            yield mapping[number], k, 0, 0, mask


def _contour_slice(path: Path, where: str, voxels: np.ndarray, grid: SeriesGrid) -> int:
    """The slice a contour (points in continuous voxel indices) lies on; DataError when it lies on none of the
    grid's slices or reaches outside the grid."""
    fix = _NO_RESAMPLING.format(kind="RTSTRUCT")
    z = voxels[:, 2]
    k = round(float(np.median(z)))
    off = float(np.abs(z - k).max())
    if off > _CONTOUR_TOLERANCE:
        spacing = float(np.linalg.norm(grid.lps_affine[:3, 2]))
        spread = float(z.max() - z.min())
        if spread > _CONTOUR_TOLERANCE:
            problem = f"is not on one slice: its points span {spread:.2f} slice spacings ({spread * spacing:.2f} mm)"
        else:
            problem = f"lies between the image's slices, {off:.2f} slice spacings ({off * spacing:.2f} mm) off the nearest one"
        raise DataError(f"{where} {problem} (tolerance {_CONTOUR_TOLERANCE:g} slice spacings)", fix, file=path)
    columns, rows, slices = grid.shape
    if not 0 <= k < slices:
        raise DataError(f"{where} lies outside the image's slices (on slice {k}; the image has slices 0 to {slices - 1})", fix, file=path)
    beyond = np.maximum(-0.5 - voxels[:, :2], voxels[:, :2] - (np.array([columns, rows]) - 0.5)).max()
    if beyond > _CONTOUR_TOLERANCE:
        raise DataError(
            f"{where} reaches {beyond:.2f} voxel(s) beyond the edge of the image's slice {k}",
            fix,
            file=path,
        )
    return k
