"""Tests of medft.evaluate.dicom_seg: the DICOM SEG of a prediction, checked with dciodvfy, read back with
highdicom by the source SOPInstanceUIDs, and placed against SimpleITK's reading of the source series (not
medft's own geometry)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from medft.data.dicom import scan_folder, select_series, series_grid
from medft.errors import DataError, MedftError
from medft.evaluate.dicom_seg import Algorithm, SegmentClass, write_prediction_seg
from tests.data.dicom_edits import strip_part10_header

REPO = Path(__file__).resolve().parents[2]
CROP = REPO / "sample_data" / "dicom" / "study1" / "13_HCropVolume"  # 32 slices of 51 rows x 35 columns
CROP2 = REPO / "sample_data" / "dicom" / "study2" / "14_HCropVolume"  # 35 slices of 48 rows x 36 columns
HIPPOCAMPUS = {"value": "5001000", "scheme": "SCT", "meaning": "Hippocampus"}
NEOPLASM = {"value": "108369006", "scheme": "SCT", "meaning": "Neoplasm"}
ABNORMAL = {"value": "49755003", "scheme": "SCT", "meaning": "Morphologically abnormal structure"}
BALL = SegmentClass(1, "Ball", code=HIPPOCAMPUS)
SLAB = SegmentClass(2, "Slab")  # the default category and type
ALGORITHM = Algorithm("medft hippocampus_ft", "0.1.0+model.7")


def grid_of(folder: Path):
    return series_grid(select_series(scan_folder(folder), None))


def synthetic_labels(shape: tuple[int, int, int], slab: bool = True) -> np.ndarray:
    """(columns, rows, slices): class 1 a ball off the centre, class 2 a slab over 3 slices (absent from
    the others), overlapping the ball's edge (class 2 wins there)."""
    i, j, k = np.indices(shape)
    labels = np.zeros(shape, np.uint8)
    centre = np.array(shape) * [0.4, 0.55, 0.5]
    labels[(i - centre[0]) ** 2 + (j - centre[1]) ** 2 + (k - centre[2]) ** 2 <= 7**2] = 1
    if slab:
        labels[3:30, 5:20, 12:15] = 2
    return labels


def dciodvfy(path: Path) -> tuple[list[str], str]:
    """The Error lines dciodvfy prints about ``path``, and its whole output."""
    if shutil.which("dciodvfy") is None:
        if os.environ.get("MEDFT_REQUIRE_DCIODVFY") == "1":
            pytest.fail("dciodvfy is not installed and MEDFT_REQUIRE_DCIODVFY=1 (apt-get install dicom3tools)")
        pytest.skip("dciodvfy is not installed (apt-get install dicom3tools)")
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    return [line for line in output.splitlines() if line.startswith("Error")], output


def assert_valid(path: Path) -> None:
    errors, output = dciodvfy(path)
    assert not errors, f"dciodvfy reports errors on {path.name}:\n{output}"


def read_back(path: Path, uids: list[str], classes: list[SegmentClass]) -> np.ndarray:
    """The SEG as class indices (frames, rows, columns), one frame per source instance in ``uids``; the segment
    of each class found by its label in the SEG's SegmentSequence."""
    seg = hd.seg.segread(path)
    by_number = np.zeros(len(seg.SegmentSequence) + 1, np.int64)
    names = {c.name: c.index for c in classes}
    for item in seg.SegmentSequence:
        by_number[item.SegmentNumber] = names[item.SegmentLabel]
    numbers = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    return by_number[numbers]


def sitk_slices(folder: Path):
    """SimpleITK's reading of a series: the image (geometry) and its slice files, in its order."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(names)
    return reader.Execute(), [Path(name) for name in names]


def rotate_series(src: Path, dst: Path, degrees: float = 30.0) -> Path:
    """A copy of a series turned about the patient x axis by ``degrees`` about the centre of its volume:
    ImageOrientationPatient and ImagePositionPatient of every slice rotated alike."""
    shutil.copytree(src, dst)
    slices = [pydicom.dcmread(path) for path in sorted(dst.glob("*.dcm"))]
    first = slices[0]
    row, column = np.array(first.ImageOrientationPatient[:3], float), np.array(first.ImageOrientationPatient[3:], float)
    spacing = np.array(first.PixelSpacing, float)
    positions = np.array([ds.ImagePositionPatient for ds in slices], float)
    centre = positions.mean(axis=0) + row * spacing[1] * (first.Columns - 1) / 2 + column * spacing[0] * (first.Rows - 1) / 2
    angle = np.radians(degrees)
    turn = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    for path, ds, position in zip(sorted(dst.glob("*.dcm")), slices, positions, strict=True):
        ds.ImageOrientationPatient = [round(float(v), 8) for v in np.r_[turn @ row, turn @ column]]
        ds.ImagePositionPatient = [round(float(v), 6) for v in centre + turn @ (position - centre)]
        ds.save_as(path)
    return dst


def bare_series(src: Path, dst: Path) -> Path:
    """A copy of a series whose slices lack the Part-10 header."""
    shutil.copytree(src, dst)
    for path in dst.glob("*.dcm"):
        strip_part10_header(path)
    return dst


SERIES = {
    "study1": lambda tmp: CROP,
    "study2": lambda tmp: CROP2,
    "oblique": lambda tmp: rotate_series(CROP, tmp / "oblique"),
    "no-part10-header": lambda tmp: bare_series(CROP2, tmp / "bare"),
}


@pytest.mark.parametrize("series", SERIES)
def test_round_trip_is_valid_and_matches_simpleitk(tmp_path, series):
    folder = SERIES[series](tmp_path)
    grid = grid_of(folder)
    labels = synthetic_labels(grid.shape)
    assert set(np.unique(labels)) == {0, 1, 2} and (labels == 2).any(axis=(0, 1)).sum() == 3
    out = write_prediction_seg(labels, folder, None, [BALL, SLAB], ALGORITHM, tmp_path / "out" / "case.seg.dcm")
    assert out == tmp_path / "out" / "case.seg.dcm" and out.is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["case.seg.dcm"]  # no partial file left

    # highdicom, by medft's slice order: frame k of the volume is the source instance grid.sop_instance_uids[k]
    np.testing.assert_array_equal(read_back(out, list(grid.sop_instance_uids), [BALL, SLAB]), labels.transpose(2, 1, 0))

    # SimpleITK's order and geometry, independent of medft: its voxel (i, j, k) is medft's voxel (i, j, k) ...
    image, files = sitk_slices(folder)
    assert image.GetSize() == grid.shape
    for index in [(0, 0, 0), (grid.shape[0] - 1, 0, 0), (0, grid.shape[1] - 1, 0), (0, 0, grid.shape[2] - 1), (3, 7, 11)]:
        np.testing.assert_allclose(image.TransformIndexToPhysicalPoint(index), (grid.lps_affine @ [*index, 1])[:3], atol=1e-3)
    # ... so the SEG's frame of the slice SimpleITK puts at k holds labels[:, :, k].T
    sitk_uids = [str(pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID) for path in files]
    np.testing.assert_array_equal(read_back(out, sitk_uids, [BALL, SLAB]), labels.transpose(2, 1, 0))

    # and each stored frame lies where SimpleITK places its source slice
    seg = pydicom.dcmread(out)
    assert int(seg.NumberOfFrames) == sum(int((labels[:, :, k] == c).any()) for k in range(grid.shape[2]) for c in (1, 2))
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = sitk_uids.index(source)
        np.testing.assert_allclose(frame.PlanePositionSequence[0].ImagePositionPatient,
                                   image.TransformIndexToPhysicalPoint((0, 0, k)), atol=1e-3)
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    np.testing.assert_allclose(orientation, np.array(image.GetDirection()).reshape(3, 3)[:, :2].T.ravel(), atol=1e-6)
    assert_valid(out)  # last: without dciodvfy the test skips here, the rest checked


def test_header_describes_segments_algorithm_and_source(tmp_path):
    classes = [SegmentClass(2, "Slab", code=NEOPLASM, category=ABNORMAL), BALL]  # segment 1 is class 2
    grid = grid_of(CROP)
    labels = synthetic_labels(grid.shape)
    out = write_prediction_seg(labels, CROP, grid.series_uid, classes, ALGORITHM, tmp_path / "case.dcm")
    seg = pydicom.dcmread(out)
    source = pydicom.dcmread(grid.files[0], stop_before_pixels=True)

    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert seg.SeriesDescription == "medft segmentation"
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID and seg.SOPInstanceUID not in grid.sop_instance_uids
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "AccessionNumber", "FrameOfReferenceUID"):
        assert seg[keyword].value == source[keyword].value, keyword
    assert seg.FrameOfReferenceUID == grid.frame_of_reference_uid
    assert "PatientBirthDate" in seg and not seg.PatientBirthDate  # Type 2, absent in the source: present, empty
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID == grid.series_uid
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == set(grid.sop_instance_uids)

    segments = seg.SegmentSequence
    assert [(s.SegmentNumber, s.SegmentLabel) for s in segments] == [(1, "Slab"), (2, "Ball")]
    coded = [(s.SegmentedPropertyCategoryCodeSequence[0], s.SegmentedPropertyTypeCodeSequence[0]) for s in segments]
    as_dicts = [[{"value": c.CodeValue, "scheme": c.CodingSchemeDesignator, "meaning": c.CodeMeaning} for c in pair]
                for pair in coded]
    default = {"value": "91723000", "scheme": "SCT", "meaning": "Anatomical Structure"}
    assert as_dicts == [[ABNORMAL, NEOPLASM], [default, HIPPOCAMPUS]]
    for segment in segments:
        assert segment.SegmentAlgorithmType == "AUTOMATIC" and segment.SegmentAlgorithmName == ALGORITHM.name
        (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (ALGORITHM.name, ALGORITHM.version)
        family = algorithm.AlgorithmFamilyCodeSequence[0]
        assert (family.CodeValue, family.CodingSchemeDesignator, family.CodeMeaning) == ("123110", "DCM", "Artificial Intelligence")
    assert seg.SoftwareVersions == ALGORITHM.version and seg.ManufacturerModelName == ALGORITHM.name

    # segment numbers follow the order of the classes: segment 1 holds class 2
    np.testing.assert_array_equal(read_back(out, list(grid.sop_instance_uids), classes), labels.transpose(2, 1, 0))
    assert pydicom.dcmread(write_prediction_seg(labels, CROP, None, classes, ALGORITHM, tmp_path / "again.dcm")).SeriesInstanceUID \
        != seg.SeriesInstanceUID


@pytest.mark.parametrize("case", ["one class nowhere", "nothing predicted"])
def test_classes_predicted_nowhere_are_declared(tmp_path, case):
    grid = grid_of(CROP2)
    labels = synthetic_labels(grid.shape, slab=False) if case == "one class nowhere" else np.zeros(grid.shape, np.int64)
    classes = [BALL, SLAB, SegmentClass(7, "Never")]
    out = write_prediction_seg(labels, CROP2, None, classes, ALGORITHM, tmp_path / "case.dcm")
    seg = pydicom.dcmread(out)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Ball", "Slab", "Never"]
    framed = {int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber) for f in seg.PerFrameFunctionalGroupsSequence}
    # highdicom leaves the frames of an empty segment out, or, when every segment is empty, keeps them all (a SEG needs a frame)
    assert framed == ({1} if case == "one class nowhere" else {1, 2, 3})
    np.testing.assert_array_equal(read_back(out, list(grid.sop_instance_uids), classes), labels.transpose(2, 1, 0))
    assert_valid(out)  # last: without dciodvfy the test skips here, the rest checked


def test_names_beyond_ascii(tmp_path):
    grid = grid_of(CROP)
    labels = synthetic_labels(grid.shape)
    classes = [SegmentClass(1, "Hippocampus – Kopf", code=HIPPOCAMPUS), SegmentClass(2, "Läsion")]
    out = write_prediction_seg(labels, CROP, None, classes, Algorithm("medft Hippocampus-Feinabstimmung", "0.1.0 µ"),
                               tmp_path / "case.dcm")
    seg = pydicom.dcmread(out)
    assert seg.SpecificCharacterSet == "ISO_IR 192"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Hippocampus – Kopf", "Läsion"]
    assert seg.SoftwareVersions == "0.1.0 µ"
    source = pydicom.dcmread(grid.files[0], stop_before_pixels=True)
    assert str(seg.PatientName) == str(source.PatientName)
    np.testing.assert_array_equal(read_back(out, list(grid.sop_instance_uids), classes), labels.transpose(2, 1, 0))
    assert_valid(out)  # last: without dciodvfy the test skips here, the rest checked


def patient_particulars(folder: Path) -> list[str]:
    ds = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
    return [str(ds.PatientID), str(ds.PatientName), *str(ds.PatientName).split("^")]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda labels: labels.transpose(1, 0, 2), r"shape \(51, 35, 32\), the series grid \(columns, rows, slices\) is \(35, 51, 32\)"),
        (lambda labels: labels[None], "drop the channel axis"),
        (lambda labels: np.where(labels == 2, 5, labels), "value\\(s\\) 5 that are neither 0"),
        (lambda labels: labels.astype(np.float32) * 0.5, "value\\(s\\) 0.5 that are neither 0"),
        (lambda labels: np.where(labels == 2, np.nan, labels), "value\\(s\\) nan"),
        (lambda labels: labels.astype(np.int16) - 1, "value\\(s\\) -1"),
    ],
    ids=["transposed", "channel axis", "undeclared class", "fractions", "nan", "negative"],
)
def test_labels_that_do_not_fit_are_refused_and_nothing_is_written(tmp_path, edit, expected):
    labels = synthetic_labels(grid_of(CROP).shape)
    out = tmp_path / "case.dcm"
    out.write_bytes(b"previous version")
    with pytest.raises(DataError, match=expected) as excinfo:
        write_prediction_seg(edit(labels), CROP, None, [BALL, SLAB], ALGORITHM, out)
    message = str(excinfo.value)
    assert message.startswith(f"ERROR {out}: ") and ". Fix: " in message, message
    assert not any(p.lower() in message.lower() for p in patient_particulars(CROP)), message
    assert out.read_bytes() == b"previous version" and sorted(p.name for p in tmp_path.iterdir()) == ["case.dcm"]


def test_float_labels_of_whole_class_indices_are_accepted(tmp_path):
    grid = grid_of(CROP)
    labels = synthetic_labels(grid.shape)
    out = write_prediction_seg(labels.astype(np.float32), CROP, None, [BALL, SLAB], ALGORITHM, tmp_path / "case.dcm")
    np.testing.assert_array_equal(read_back(out, list(grid.sop_instance_uids), [BALL, SLAB]), labels.transpose(2, 1, 0))


def test_series_that_cannot_be_read_is_refused(tmp_path):
    labels = synthetic_labels(grid_of(CROP).shape)
    with pytest.raises(DataError, match="folder does not exist.*Fix: "):
        write_prediction_seg(labels, tmp_path / "missing", None, [BALL, SLAB], ALGORITHM, tmp_path / "a.dcm")
    with pytest.raises(DataError, match="holds no series with the manifest's series_uid"):
        write_prediction_seg(labels, CROP, "1.2.3", [BALL, SLAB], ALGORITHM, tmp_path / "a.dcm")
    damaged = shutil.copytree(CROP, tmp_path / "damaged")
    for keyword in ("FrameOfReferenceUID", "StudyInstanceUID"):
        for path in damaged.glob("*.dcm"):
            ds = pydicom.dcmread(path)
            delattr(ds, keyword)
            ds.save_as(path)
        with pytest.raises(DataError, match=f"has no {keyword}.*Fix: export the series again"):
            write_prediction_seg(labels, damaged, None, [BALL, SLAB], ALGORITHM, tmp_path / "a.dcm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged"]


@pytest.mark.parametrize(
    ("classes", "algorithm", "expected"),
    [
        ([], ALGORITHM, "no segment class is given"),
        ([BALL, SegmentClass(1, "Again")], ALGORITHM, "indices repeat"),
        ([SegmentClass(0, "Background"), SLAB], ALGORITHM, "whole numbers from 1"),
        ([BALL, SegmentClass(2, "x" * 65)], ALGORITHM, "at most 64 printable characters"),
        ([BALL, SegmentClass(2, "")], ALGORITHM, "is empty"),
        ([BALL, SegmentClass(2, "Slab", code={"value": "1"})], ALGORITHM, "not a code"),
        ([BALL, SLAB], Algorithm("medft", ""), "algorithm version is empty"),
    ],
    ids=["none", "repeated", "background", "long name", "empty name", "bad code", "no version"],
)
def test_unusable_classes_are_refused(tmp_path, classes, algorithm, expected):
    labels = synthetic_labels(grid_of(CROP).shape)
    with pytest.raises(MedftError, match=expected) as excinfo:
        write_prediction_seg(labels, CROP, None, classes, algorithm, tmp_path / "a.dcm")
    assert "Fix: " in str(excinfo.value)
    assert not any(tmp_path.iterdir())
