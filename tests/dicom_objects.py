"""Build DICOM test objects from the sample series: rotated copies of a series, and SEG and RTSTRUCT labels of it.

Labels are given as SimpleITK gives a series' voxels: (slices, rows, columns) arrays, the slices in the order of
``sitk.ImageSeriesReader.GetGDCMSeriesFileNames`` (by position). All geometry here comes from SimpleITK (and nibabel),
not from medft, so that tests compare medft with independent readers.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pack_bits
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid
from skimage.measure import find_contours

# A contour for write_rtstruct_contours: points (N, 3) as continuous SimpleITK indices (column, row, slice), and its
# ContourGeometricType (CLOSED_PLANAR, OPEN_PLANAR, POINT).
Contour = tuple[np.ndarray, str]

_PATIENT_AND_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
    "StudyID", "AccessionNumber", "ReferringPhysicianName",
)


def copy_series(src: Path, dst: Path) -> Path:
    """Copy a series folder to ``dst`` (which must not exist); returns ``dst``."""
    shutil.copytree(src, dst)
    return dst


def make_oblique(folder: Path, degrees: float = 30.0, axis: str = "x") -> None:
    """Rotate the slices of the series in ``folder`` by ``degrees`` about the patient axis ``axis`` ("x", "y" or
    "z") through the mean slice position: ImageOrientationPatient and ImagePositionPatient change together, the
    pixels stay."""
    angle = np.radians(degrees)
    cos, sin = np.cos(angle), np.sin(angle)
    i, j = ("xyz".index(axis) + 1) % 3, ("xyz".index(axis) + 2) % 3
    rotation = np.eye(3)
    rotation[[i, i, j, j], [i, j, i, j]] = cos, -sin, sin, cos
    _rotate(folder, rotation)


def make_sagittal(folder: Path) -> None:
    """Turn the (axial) series in ``folder`` sagittal: rows run from front to back (+y), columns from head to foot
    (-z), slices from left to right (-x)."""
    row, column = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])
    _rotate(folder, np.column_stack([row, column, np.cross(row, column)]))  # maps x -> row, y -> column


def _rotate(folder: Path, rotation: np.ndarray) -> None:
    paths = sorted(Path(folder).iterdir())
    datasets = [pydicom.dcmread(path) for path in paths]
    centre = np.mean([np.array(ds.ImagePositionPatient, float) for ds in datasets], axis=0)
    for path, ds in zip(paths, datasets, strict=True):
        orientation = np.array(ds.ImageOrientationPatient, float).reshape(2, 3) @ rotation.T
        position = centre + rotation @ (np.array(ds.ImagePositionPatient, float) - centre)
        ds.ImageOrientationPatient = [f"{v:.10g}" for v in orientation.ravel()]
        ds.ImagePositionPatient = [f"{v:.10g}" for v in position]
        ds.save_as(path)


def _series(folder: Path) -> tuple[list[str], sitk.Image]:
    """The slice files in SimpleITK's order, and the series as SimpleITK reads it."""
    reader = sitk.ImageSeriesReader()
    files = list(reader.GetGDCMSeriesFileNames(str(folder)))
    reader.SetFileNames(files)
    return files, reader.Execute()


def _masks(label: np.ndarray, names: dict[int, str]) -> list[np.ndarray]:
    """One mask per entry of ``names``: ``label == value`` for a (slices, rows, columns) label, or
    ``label[..., value - 1]`` for (slices, rows, columns, N) masks (which may overlap)."""
    return [label[..., value - 1].astype(bool) if label.ndim == 4 else label == value for value in names]


def write_seg(
    series_folder: Path,
    label: np.ndarray,
    names: dict[int, str],
    path: Path,
    fractional: bool = False,
    omit_empty_frames: bool = True,
    labelmap: bool = False,
) -> Path:
    """Write a DICOM SEG of the series with one segment per entry of ``names`` (numbered 1, 2, ... in its order).

    ``label``: (slices, rows, columns) values, or (slices, rows, columns, N) masks, see ``_masks``. ``fractional``:
    FRACTIONAL with MaximumFractionalValue 254, the segment's voxels stored as 127 (exactly half) and all others as
    126 (just under half). ``labelmap``: a LABELMAP SEG (segments must not overlap). highdicom stores the frames
    of each segment from the last slice to the first.
    """
    files, _ = _series(series_folder)
    sources = []
    for file in files:
        ds = pydicom.dcmread(file)
        for keyword in _PATIENT_AND_STUDY:  # highdicom copies them, and the sample slices lack some
            setattr(ds, keyword, ds.get(keyword, ""))
        sources.append(ds)
    masks = np.stack(_masks(label, names), axis=-1)
    if labelmap:
        pixels = (masks * np.arange(1, masks.shape[-1] + 1)).max(axis=-1).astype(np.uint8)
        kind = hd.seg.SegmentationTypeValues.LABELMAP
    elif fractional:
        pixels, kind = np.where(masks, 127 / 254, 126 / 254), hd.seg.SegmentationTypeValues.FRACTIONAL
    else:
        pixels, kind = masks, hd.seg.SegmentationTypeValues.BINARY
    descriptions = [
        hd.seg.SegmentDescription(number, name, codes.SCT.Tissue, codes.SCT.Tissue, hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for number, name in enumerate(names.values(), start=1)
    ]
    seg = hd.seg.Segmentation(
        sources, pixels, kind, descriptions, hd.UID(), 300, hd.UID(), 1, "medft tests", "dicom_objects", "1", "0",
        max_fractional_value=254, omit_empty_frames=omit_empty_frames,
    )
    seg.save_as(path)
    return Path(path)


def shuffle_seg_frames(path: Path, seed: int = 0) -> np.ndarray:
    """Store the frames of a SEG in a random order, each with its functional groups; returns the new order (the old
    frame indices)."""
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    order = np.random.default_rng(seed).permutation(len(frames))
    ds.PerFrameFunctionalGroupsSequence = [ds.PerFrameFunctionalGroupsSequence[i] for i in order]
    ds.PixelData = pack_bits(frames[order]) if ds.BitsAllocated == 1 else frames[order].tobytes()
    ds.save_as(path)
    return order


def crop_seg_frames(path: Path, rows: slice, columns: slice) -> None:
    """Cut every frame of a FRACTIONAL SEG down to ``rows`` x ``columns`` of it, moving each frame's position to its
    new first pixel (by the SEG's own orientation and pixel spacing)."""
    ds = pydicom.dcmread(path)
    frames = np.frombuffer(ds.PixelData, np.uint8).reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    frames = np.ascontiguousarray(frames[:, rows, columns])
    shared = ds.SharedFunctionalGroupsSequence[0]
    row_direction, column_direction = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float).reshape(2, 3)
    between_rows, between_columns = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    shift = (rows.start or 0) * between_rows * column_direction + (columns.start or 0) * between_columns * row_direction
    for group in ds.PerFrameFunctionalGroupsSequence:
        plane = group.PlanePositionSequence[0]
        plane.ImagePositionPatient = [f"{v:.10g}" for v in np.array(plane.ImagePositionPatient, float) + shift]
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.PixelData = frames.tobytes()
    ds.save_as(path)


def write_rtstruct(series_folder: Path, label: np.ndarray, names: dict[int, str], path: Path) -> Path:
    """Write an RT Structure Set of the series with one ROI per entry of ``names`` (``label`` as for ``write_seg``):
    on each slice, the outlines of the ROI's mask traced at level 0.5 of the zero-padded mask, so that they pass
    between voxel centres and holes come out as inner contours."""
    rois = {}
    for name, mask in zip(names.values(), _masks(label, names), strict=True):
        contours = []
        for k, plane in enumerate(mask):
            for line in find_contours(np.pad(plane, 1).astype(float), 0.5):
                rows, columns = (line[:-1] - 1).T  # closed: the last point repeats the first
                contours.append((np.column_stack([columns, rows, np.full(rows.size, k)]), "CLOSED_PLANAR"))
        rois[name] = contours
    return write_rtstruct_contours(series_folder, rois, path)


def write_rtstruct_contours(series_folder: Path, rois: dict[str, list[Contour]], path: Path) -> Path:
    """Write an RT Structure Set of the series with the given contours, ROIs numbered 1, 2, ... in the order of
    ``rois``; points go to patient coordinates through SimpleITK's geometry."""
    files, image = _series(series_folder)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    first = headers[0]
    images = [_item(ReferencedSOPClassUID=h.SOPClassUID, ReferencedSOPInstanceUID=h.SOPInstanceUID) for h in headers]

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTStructureSetStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.Modality = RTStructureSetStorage, "RTSTRUCT"
    for keyword in _PATIENT_AND_STUDY:
        setattr(ds, keyword, first.get(keyword, ""))
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = generate_uid(), 301, 1
    ds.Manufacturer, ds.StructureSetLabel, ds.StructureSetDate, ds.StructureSetTime = "medft tests", "labels", "", ""
    series = _item(SeriesInstanceUID=first.SeriesInstanceUID, ContourImageSequence=images)
    study = _item(
        ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1", ReferencedSOPInstanceUID=first.StudyInstanceUID,
        RTReferencedSeriesSequence=[series],
    )
    ds.ReferencedFrameOfReferenceSequence = [_item(FrameOfReferenceUID=first.FrameOfReferenceUID, RTReferencedStudySequence=[study])]
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    for number, (name, contours) in enumerate(rois.items(), start=1):
        ds.StructureSetROISequence.append(
            _item(ROINumber=number, ReferencedFrameOfReferenceUID=first.FrameOfReferenceUID, ROIName=name, ROIGenerationAlgorithm="MANUAL")
        )
        items = []
        for points, geometric_type in contours:
            lps = [image.TransformContinuousIndexToPhysicalPoint([float(v) for v in point]) for point in points]
            k = int(np.clip(np.round(np.median(points[:, 2])), 0, len(headers) - 1))
            items.append(
                _item(
                    ContourImageSequence=[images[k]], ContourGeometricType=geometric_type, NumberOfContourPoints=len(lps),
                    ContourData=[f"{v:.10g}" for point in lps for v in point],
                )
            )
        ds.ROIContourSequence.append(_item(ROIDisplayColor=[255, 0, 0], ReferencedROINumber=number, ContourSequence=items))
        ds.RTROIObservationsSequence.append(
            _item(ObservationNumber=number, ReferencedROINumber=number, RTROIInterpretedType="ORGAN", ROIInterpreter="")
        )
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def _item(**values) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def expected_label(series_folder: Path, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``label`` (slices, rows, columns, SimpleITK's order) as a (columns, rows, slices) array, and its RAS affine:
    written by SimpleITK as NIfTI on the series' geometry and read back with nibabel. SimpleITK stacks the slices
    along the normal (the row direction x the column direction), as medft does: a test compares the affine with
    medft's grid's before it compares voxels."""
    _, image = _series(series_folder)
    out = sitk.GetImageFromArray(label.astype(np.int16))
    out.CopyInformation(image)
    with tempfile.TemporaryDirectory() as tmp:
        sitk.WriteImage(out, str(Path(tmp) / "label.nii.gz"))
        nifti = nib.load(Path(tmp) / "label.nii.gz")
        return np.asarray(nifti.dataobj), nifti.affine
