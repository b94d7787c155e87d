"""Ground truth as DICOM SEG and RTSTRUCT: placed on the image series' grid voxel for voxel, checked against SimpleITK."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medft.data.dicom import SeriesGrid, scan_folder, select_series, series_grid
from medft.data.dicom_labels import dicom_label_kind, read_dicom_label, reference_problems
from medft.data.manifest import normalised_name
from medft.errors import DataError, Problem
from tests.data.conftest import show_error
from tests.dicom_objects import (
    copy_series,
    crop_seg_frames,
    expected_label,
    make_oblique,
    make_sagittal,
    shuffle_seg_frames,
    write_rtstruct,
    write_rtstruct_contours,
    write_seg,
)

REPO = Path(__file__).resolve().parents[2]
CROP = REPO / "sample_data" / "dicom" / "study1" / "13_HCropVolume"  # 32 slices of 51 rows x 35 columns
CROP2 = REPO / "sample_data" / "dicom" / "study2" / "14_HCropVolume"  # another patient: 35 slices of 48 rows x 36 columns
NAMES = {1: "Ball", 2: "Ring"}
CLASSES = {1: ["ball"], 2: ["ring"]}
WRITERS = {"SEG": write_seg, "RTSTRUCT": write_rtstruct}


def synthetic_label() -> np.ndarray:
    """Two classes on the crop, (slices, rows, columns) in SimpleITK's order: nothing about it is symmetric."""
    k, r, c = np.ogrid[:32, :51, :35]
    label = np.zeros((32, 51, 35), np.uint8)
    label[(k - 10) ** 2 + (r - 20) ** 2 + (c - 12) ** 2 <= 5.5**2] = 1  # a ball
    disc = (r - 32) ** 2 + (c - 20) ** 2
    label[16:22][np.broadcast_to((disc <= 9**2) & (disc > 3.5**2), (6, 51, 35))] = 2  # a ring with a hole on 6 slices
    label[25, 5:10, 3:8] = label[25, 40:47, 24:31] = 1  # two separate blobs on one slice
    label[0, 0:4, 31:35] = label[31, 47:51, 0:3] = 2  # at the edges of the grid, on the first and the last slice
    label[28, [10, 11, 12, 12], [10, 11, 10, 14]] = 1  # voxels touching at corners only
    return label


LABEL = synthetic_label()


def show(shown: list[str], problems: list[Problem]) -> list[Problem]:
    shown += [str(p) for p in problems] + [repr(p) for p in problems]
    return problems


def grid_of(folder: Path) -> SeriesGrid:
    return series_grid(select_series(scan_folder(folder), None))


def anisotropic_oblique(folder: Path) -> None:
    """Different row and column spacings (0.5 and 0.8 mm against 1 mm between slices), tilted 20 degrees about y."""
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.PixelSpacing = [0.5, 0.8]
        ds.save_as(path)
    make_oblique(folder, 20.0, axis="y")


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> dict[str, Path]:
    """The crop as it is, and copies of it rotated 30 degrees about x, made sagittal, and anisotropic and oblique."""
    root = tmp_path_factory.mktemp("series")
    folders = {"axial": CROP}
    for name, edit in {"oblique": make_oblique, "sagittal": make_sagittal, "anisotropic-oblique": anisotropic_oblique}.items():
        folders[name] = copy_series(CROP, root / name)
        edit(folders[name])
    return folders


@pytest.mark.parametrize("kind", ["SEG", "RTSTRUCT"])
@pytest.mark.parametrize("variant", ["axial", "oblique", "sagittal", "anisotropic-oblique"])
def test_round_trip_matches_simpleitk_voxel_for_voxel(variant, kind, series, tmp_path, shown):
    folder = series[variant]
    grid = grid_of(folder)
    expected, affine = expected_label(folder, LABEL)
    assert np.allclose(affine, grid.affine, atol=1e-4), "medft's grid and SimpleITK's geometry disagree"
    assert expected.shape == grid.shape == (35, 51, 32)
    assert np.bincount(expected.ravel()).tolist() == np.bincount(LABEL.ravel()).tolist()
    rotation = grid.affine[:3, :3]
    assert np.allclose(rotation, np.diag(np.diag(rotation))) == (variant == "axial")

    path = WRITERS[kind](folder, LABEL, NAMES, tmp_path / "label.dcm")
    assert dicom_label_kind(path) == kind
    assert show(shown, reference_problems(path, grid)) == []
    label, warnings = read_dicom_label(path, grid, CLASSES)
    assert show(shown, warnings) == []
    assert label.dtype == np.uint8 and label.shape == grid.shape
    assert np.array_equal(label, expected)


def seg_positions(path: Path) -> list[float]:
    """Each frame's position along the slice normal, in the SEG's frame order."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    iop = np.array(ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    return [float(np.array(g.PlanePositionSequence[0].ImagePositionPatient, float) @ normal) for g in ds.PerFrameFunctionalGroupsSequence]


@pytest.mark.parametrize(
    ("variant", "options"),
    [
        pytest.param("axial", {"fractional": True}, id="fractional-axial"),
        pytest.param("oblique", {"fractional": True}, id="fractional-oblique"),
        pytest.param("axial", {}, id="frames-shuffled-axial"),
        pytest.param("oblique", {}, id="frames-shuffled-oblique"),
        pytest.param("axial", {"omit_empty_frames": False}, id="with-empty-frames-axial"),
        pytest.param("oblique", {"labelmap": True}, id="labelmap-oblique"),
    ],
)
def test_seg_variants_round_trip(variant, options, series, tmp_path, shown):
    folder = series[variant]
    path = write_seg(folder, LABEL, NAMES, tmp_path / "label.dcm", **options)
    slices_with = [int((value == LABEL).any(axis=(1, 2)).sum()) for value in NAMES]
    if not options:
        positions = seg_positions(path)
        shuffle_seg_frames(path)
        shuffled = seg_positions(path)
        assert sorted(shuffled) == sorted(positions) and len(shuffled) == sum(slices_with)
        assert np.diff(shuffled).max() > 0 > np.diff(shuffled).min(), "frames must be out of order"
    ds = pydicom.dcmread(path)
    if "fractional" in options:  # the threshold: 127 of 254 (half) is in the segment, 126 is not
        assert ds.SegmentationType == "FRACTIONAL" and ds.MaximumFractionalValue == 254 and ds.NumberOfFrames == 64
        assert set(np.unique(ds.pixel_array).tolist()) == {126, 127}
    if "omit_empty_frames" in options:
        assert ds.NumberOfFrames == 64 > sum(slices_with)
    if "labelmap" in options:
        assert ds.SegmentationType == "LABELMAP" and dicom_label_kind(path) == "SEG"
    label, warnings = read_dicom_label(path, grid_of(folder), CLASSES)
    assert show(shown, warnings) == []
    assert np.array_equal(label, expected_label(folder, LABEL)[0])


@pytest.mark.parametrize("variant", ["axial", "sagittal"])
def test_seg_frames_covering_part_of_a_slice_are_placed_by_their_position(variant, series, tmp_path):
    folder = series[variant]
    path = write_seg(folder, LABEL, NAMES, tmp_path / "label.dcm", fractional=True)
    crop_seg_frames(path, rows=slice(3, 49), columns=slice(7, 33))
    assert pydicom.dcmread(path, stop_before_pixels=True).Rows == 46
    inside = np.zeros_like(LABEL)
    inside[:, 3:49, 7:33] = LABEL[:, 3:49, 7:33]
    assert 0 < (inside != 0).sum() < (LABEL != 0).sum()
    label, _ = read_dicom_label(path, grid_of(folder), CLASSES)
    assert np.array_equal(label, expected_label(folder, inside)[0])


def test_contour_rule_edges_holes_keyholes_and_separate_parts(tmp_path, shown):
    """The documented rule: centres on a contour line are inside it; an odd count of contours makes a voxel the ROI's."""

    def closed(*corners: tuple[float, float], k: float = 4) -> tuple[np.ndarray, str]:
        return np.array([(x, y, k) for x, y in corners], float), "CLOSED_PLANAR"

    square = closed((2, 3), (6, 3), (6, 8), (2, 8))  # (column, row) corners on voxel centres
    outer, inner = closed((10, 10), (20, 10), (20, 20), (10, 20)), closed((13, 13), (16, 13), (16, 16), (13, 16))
    keyhole = closed((10, 30), (20, 30), (20, 40), (10, 40), (10, 35), (13, 35), (13, 38), (17, 38), (17, 32), (13, 32), (13, 35), (10, 35))
    path = write_rtstruct_contours(CROP, {"Ball": [square, outer, inner, keyhole]}, tmp_path / "rt.dcm")

    expected = np.zeros_like(LABEL)
    expected[4, 3:9, 2:7] = 1  # the square, with its edges
    expected[4, 10:21, 10:21] = 1
    expected[4, 13:17, 13:17] = 0  # the inner contour, its edge included, is a hole
    expected[4, 30:41, 10:21] = 1
    expected[4, 33:38, 14:17] = 0  # the keyhole's hole: its edge is on the (one) contour, so inside
    label, warnings = read_dicom_label(path, grid_of(CROP), {1: ["ball"]})
    assert show(shown, warnings) == []
    assert np.array_equal(label, expected_label(CROP, expected)[0])


@pytest.mark.parametrize("kind", ["SEG", "RTSTRUCT"])
def test_names_match_through_aliases_and_unmapped_segments_are_ignored(kind, tmp_path, shown):
    names = {1: " Hippocampus  ANTERIOR ", 2: "posterior", 3: "Noise"}
    path = WRITERS[kind](CROP, LABEL + 3 * (LABEL == 0) * (np.arange(35) >= 33), names, tmp_path / "label.dcm")
    grid = grid_of(CROP)
    expected = expected_label(CROP, LABEL)[0]

    label, warnings = read_dicom_label(path, grid, {1: ["hippocampus", "Hippocampus anterior"], 2: ["Posterior"]})
    assert np.array_equal(label, expected)
    noun = "segment" if kind == "SEG" else "ROI"
    assert [str(w) for w in show(shown, warnings)] == [
        f"WARNING {path}: {noun} 'Noise' maps to no class; ignored. Fix: if it is one of the classes, add its name as an "
        "alias of that class in the classes file"
    ]

    label, _ = read_dicom_label(path, grid, {1: ["hippocampus", "hippocampus anterior", "POSTERIOR "]})  # a union
    assert np.array_equal(label, (expected > 0).astype(np.uint8))

    with pytest.raises(DataError) as excinfo:
        read_dicom_label(path, grid, {1: ["hippocampus anterior"], 2: ["amygdala", "amygdaloid body"]})
    text = show_error(shown, excinfo)
    assert text.startswith(f"ERROR {path}: no {noun} named 'amygdala' or its aliases 'amygdaloid body' (class 2); ")
    assert f"{noun}s in the file: '" in text and "ANTERIOR" in text and "'posterior', 'Noise'" in text
    assert '"2": {"name": "amygdala", "aliases": ["amygdaloid body", ' in text

    with pytest.raises(ValueError, match="given for classes 1 and 2"):
        read_dicom_label(path, grid, {1: ["posterior"], 2: [" Posterior"]})


def test_normalised_name():
    assert normalised_name(" Hippocampus \t ANTERIOR\n") == "hippocampus anterior" == normalised_name("HIPPOCAMPUS anterior")
    assert normalised_name("hippo campus") != normalised_name("hippocampus")


@pytest.mark.parametrize("kind", ["SEG", "RTSTRUCT"])
def test_overlapping_segments_of_different_classes_are_refused(kind, tmp_path, shown):
    k, r, c = np.ogrid[:32, :51, :35]
    first = (k - 12) ** 2 + (r - 20) ** 2 + (c - 15) ** 2 <= 36
    second = (k - 14) ** 2 + (r - 24) ** 2 + (c - 18) ** 2 <= 36
    path = WRITERS[kind](CROP, np.stack([first, second], axis=-1), {1: "left", 2: "right"}, tmp_path / "label.dcm")
    grid = grid_of(CROP)
    with pytest.raises(DataError) as excinfo:
        read_dicom_label(path, grid, {1: ["left"], 2: ["right"]})
    text = show_error(shown, excinfo)
    assert f"of different classes overlap in {int((first & second).sum())} voxel(s) (classes 1 'left' and 2 'right')" in text

    label, _ = read_dicom_label(path, grid, {1: ["left", "right"]})  # one class: their union
    assert np.array_equal(label, expected_label(CROP, (first | second).astype(np.uint8))[0])


def test_more_than_255_classes_give_int16(tmp_path):
    path = write_seg(CROP, LABEL, NAMES, tmp_path / "label.dcm")
    label, _ = read_dicom_label(path, grid_of(CROP), {1: ["ball"], 300: ["ring"]})
    assert label.dtype == np.int16
    assert np.array_equal(label, expected_label(CROP, np.where(LABEL == 2, 300, LABEL.astype(np.int16)))[0])


@pytest.mark.parametrize("kind", ["SEG", "RTSTRUCT"])
def test_a_label_of_another_series_is_refused_with_uids_in_detail_only(kind, tmp_path, shown):
    other = np.zeros((35, 48, 36), np.uint8)
    other[10:14, 20:30, 10:20] = 1
    path = WRITERS[kind](CROP2, other, {1: "Ball"}, tmp_path / "label.dcm")
    grid, other_grid = grid_of(CROP), grid_of(CROP2)
    assert grid.frame_of_reference_uid != other_grid.frame_of_reference_uid

    problems = show(shown, reference_problems(path, grid))
    assert len(problems) == 2 and all(p.severity == "error" and p.file == path for p in problems)
    assert "does not reference the image's series" in problems[0].problem and "SeriesInstanceUID" in problems[0].problem
    assert "FrameOfReferenceUID" in problems[1].problem and "another patient coordinate system" in problems[1].problem
    assert all(f"give the {kind} made on this case's series, or point image at the series" in p.fix for p in problems)
    assert grid.series_uid in problems[0].detail and other_grid.series_uid in problems[0].detail
    assert grid.frame_of_reference_uid in problems[1].detail and other_grid.frame_of_reference_uid in problems[1].detail
    for p in problems:
        hidden = (grid.series_uid, other_grid.series_uid, grid.frame_of_reference_uid, other_grid.frame_of_reference_uid)
        assert not any(uid in p.public or uid in p.problem or uid in p.fix for uid in hidden)

    with pytest.raises(DataError) as excinfo:
        read_dicom_label(path, grid, {1: ["ball"]})
    assert "does not reference the image's series" in show_error(shown, excinfo) and "(and 1 more problem(s))" in str(excinfo.value)
    assert grid.series_uid not in excinfo.value.public
    assert reference_problems(path, other_grid) == []


def test_a_seg_in_another_frame_of_reference_is_refused(tmp_path, shown):
    path = write_seg(CROP, LABEL, NAMES, tmp_path / "label.dcm")
    ds = pydicom.dcmread(path)
    ds.FrameOfReferenceUID = "1.2.3.4.5"
    ds.save_as(path)
    problems = show(shown, reference_problems(path, grid_of(CROP)))
    assert len(problems) == 1 and "FrameOfReferenceUID" in problems[0].problem and "1.2.3.4.5" in problems[0].detail


def square(k: float, x0: float = 5, y0: float = 5, size: float = 4) -> np.ndarray:
    """A square contour between voxel centres, as (column, row, slice) indices."""
    corners = [(x0, y0), (x0 + size, y0), (x0 + size, y0 + size), (x0, y0 + size)]
    return np.array([(x - 0.5, y - 0.5, k) for x, y in corners], float)


@pytest.mark.parametrize(
    ("points", "message"),
    [
        pytest.param(square(10.5), "lies between the image's slices, 0.50 slice spacings (0.50 mm) off the nearest one", id="half-slice"),
        pytest.param(square(10) + [[0, 0, 0], [0, 0, 0.3], [0, 0, 0.3], [0, 0, 0]], "is not on one slice: its points", id="tilted"),
        pytest.param(square(32), "lies outside the image's slices (on slice 32; the image has slices 0 to 31)", id="past-the-last-slice"),
        pytest.param(square(-1), "lies outside the image's slices (on slice -1;", id="before-the-first-slice"),
        pytest.param(square(3, x0=30, size=6), "reaches 1.00 voxel(s) beyond the edge of the image's slice 3", id="past-the-edge"),
    ],
)
def test_contours_off_the_slices_are_refused(points, message, tmp_path, shown):
    path = write_rtstruct_contours(CROP, {"Ball": [(square(4), "CLOSED_PLANAR"), (points, "CLOSED_PLANAR")]}, tmp_path / "rt.dcm")
    with pytest.raises(DataError) as excinfo:
        read_dicom_label(path, grid_of(CROP), {1: ["ball"]})
    text = show_error(shown, excinfo)
    assert text.startswith(f"ERROR {path}: contour 2 of ROI 'Ball' {message}")
    assert "does not resample" in text


def test_contours_that_enclose_no_area_are_ignored_with_a_warning(tmp_path, shown):
    open_line = square(6)[:3]
    point = np.array([[12.0, 14.0, 6.0]])
    rois = {"Ball": [(square(6), "CLOSED_PLANAR"), (open_line, "OPEN_PLANAR"), (point, "POINT"), (point + [1, 0, 0], "POINT")]}
    path = write_rtstruct_contours(CROP, rois, tmp_path / "rt.dcm")
    label, warnings = read_dicom_label(path, grid_of(CROP), {1: ["ball"]})
    expected = np.zeros_like(LABEL)
    expected[6, 5:9, 5:9] = 1
    assert np.array_equal(label, expected_label(CROP, expected)[0])
    assert [w.problem for w in show(shown, warnings)] == ["ROI 'Ball' has contours that enclose no area (1 OPEN_PLANAR, 2 POINT); ignored"]
    assert warnings[0].severity == "warning" and warnings[0].file == path


def shift_frame(ds: pydicom.Dataset, columns: float = 0, rows: float = 0, slices: float = 0) -> None:
    """Move the first frame of a SEG of the (axial, 1 mm) crop by voxels."""
    plane = ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    plane.ImagePositionPatient = [float(v) + d for v, d in zip(plane.ImagePositionPatient, (columns, rows, slices), strict=True)]


def set_shared(ds: pydicom.Dataset, sequence: str, keyword: str, value: list) -> None:
    setattr(ds.SharedFunctionalGroupsSequence[0][sequence].value[0], keyword, value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        pytest.param(lambda ds: shift_frame(ds, columns=0.5), "0.50 column(s), 0.00 row(s) and 0.00 slice(s) off", id="half-a-column"),
        pytest.param(lambda ds: shift_frame(ds, rows=-0.25), "0.00 column(s), 0.25 row(s) and 0.00 slice(s) off", id="quarter-row"),
        pytest.param(lambda ds: shift_frame(ds, slices=0.5), "0.00 column(s), 0.00 row(s) and 0.50 slice(s) off", id="half-slice"),
        pytest.param(lambda ds: shift_frame(ds, columns=3), "lies outside the image's grid: it covers columns 3 to 37", id="outside"),
        pytest.param(lambda ds: shift_frame(ds, slices=-40), "lies outside the image's grid", id="below-the-slices"),
        pytest.param(
            lambda ds: set_shared(ds, "PixelMeasuresSequence", "PixelSpacing", [1, 1.5]),
            "has another pixel spacing than the image (PixelSpacing 1, 1.5 mm; the image's: 1, 1 mm)",
            id="pixel-spacing",
        ),
        pytest.param(
            lambda ds: set_shared(ds, "PlaneOrientationSequence", "ImageOrientationPatient", [0, 1, 0, 1, 0, 0]),
            "is oriented otherwise than the image's slices",
            id="transposed",
        ),
    ],
)
def test_seg_frames_off_the_grid_are_refused(edit, message, tmp_path, shown):
    path = write_seg(CROP, LABEL, NAMES, tmp_path / "label.dcm")
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path)
    with pytest.raises(DataError) as excinfo:
        read_dicom_label(path, grid_of(CROP), CLASSES)
    text = show_error(shown, excinfo)
    assert text.startswith(f"ERROR {path}: frame ") and message in text and "does not resample" in text


def test_dicom_label_kind(tmp_path):
    seg = write_seg(CROP, LABEL, NAMES, tmp_path / "label_seg.dcm")
    rtstruct = write_rtstruct(CROP, LABEL, NAMES, tmp_path / "label_rt.dcm")
    nifti = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)), nifti)
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM")
    assert dicom_label_kind(seg) == "SEG" and dicom_label_kind(rtstruct) == "RTSTRUCT"
    for other in (CROP / "1.dcm", nifti, text, tmp_path / "missing.dcm", tmp_path):
        assert dicom_label_kind(other) is None, other


def test_an_image_slice_or_a_damaged_seg_is_named(tmp_path, shown):
    with pytest.raises(DataError) as excinfo:
        read_dicom_label(CROP / "1.dcm", grid_of(CROP), CLASSES)
    assert show_error(shown, excinfo).startswith(f"ERROR {CROP / '1.dcm'}: is not a DICOM SEG or RTSTRUCT file. Fix: ")
    problems = show(shown, reference_problems(CROP / "1.dcm", grid_of(CROP)))
    assert [(p.problem, p.file) for p in problems] == [("is not a DICOM SEG or RTSTRUCT file", CROP / "1.dcm")]

    path = write_seg(CROP, LABEL, NAMES, tmp_path / "label.dcm")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert dicom_label_kind(path) == "SEG"
    with pytest.raises(DataError) as excinfo:
        read_dicom_label(path, grid_of(CROP), CLASSES)
    assert show_error(shown, excinfo).startswith(f"ERROR {path}: cannot be read as a DICOM SEG (")


def test_import_does_not_pull_monai_or_torch():
    code = "import sys, medft.data.dicom_labels; assert not {'torch', 'monai'} & set(sys.modules), 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
