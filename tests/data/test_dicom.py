"""Tests of medft.data.dicom on real MRI series: the hippocampus crops in sample_data, and the full
study in /work/shared when it is there. Every message the code shows is checked for patient data."""
from __future__ import annotations

import pickle
import random
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medft.data.dicom import (
    _REMOVE_OR_REPLACE,
    SeriesInfo,
    geometry_problems,
    read_series,
    scan_folder,
    select_series,
)
from medft.errors import DataError
from tests.data.conftest import show_error
from tests.data.dicom_edits import edit_raw, mark_jpeg_lossless, strip_part10_header

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_data" / "dicom"
CROP = SAMPLE / "study1" / "13_HCropVolume"  # 32 slices of 51 rows x 35 columns
CROP2 = SAMPLE / "study2" / "14_HCropVolume"  # another patient: 35 slices of 48 rows x 36 columns
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "dicom"
STUDY1 = SHARED / "study1"
needs_study1 = pytest.mark.skipif(not STUDY1.is_dir(), reason=f"full DICOM study not available at {STUDY1}")


def show_series(shown: list[str], series: SeriesInfo) -> None:
    shown += [series.summary, repr(series)]


def copy_series(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_header(path: Path, **tags) -> None:
    ds = pydicom.dcmread(path)
    for tag, value in tags.items():
        setattr(ds, tag, value)
    ds.save_as(path)


def along_normal(path: Path) -> float:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    return float(np.cross(iop[:3], iop[3:]) @ np.array(ds.ImagePositionPatient, dtype=float))


def crop_series(folder: Path = CROP) -> SeriesInfo:
    return select_series(scan_folder(folder), None)


def test_crop_series_reads_with_header_geometry(shown):
    scan = scan_folder(CROP)
    assert len(scan.series) == 1 and scan.unreadable == []
    series = scan.series[0]
    show_series(shown, series)
    assert len(series.files) == 32 and series.files == sorted(series.files)
    assert (series.rows, series.columns, series.modality) == (51, 35, "MR")

    volume, affine = read_series(series)
    assert volume.shape == (series.columns, series.rows, 32) == (35, 51, 32)
    assert volume.dtype == np.float32 and np.isfinite(volume).all() and volume.max() > volume.min()

    headers = {f: pydicom.dcmread(f) for f in series.files}
    first = next(iter(headers.values()))
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    positions = sorted(np.array(ds.ImagePositionPatient, dtype=float).tolist() for ds in headers.values())
    step = np.linalg.norm(np.subtract(positions[-1], positions[0])) / (len(positions) - 1)
    assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), [column_spacing, row_spacing, step])

    # voxel (0, 0, k) lies at the k-th slice position (LPS -> RAS flips x and y); positions increase.
    corners_lps = (np.diag([-1, -1, 1, 1]) @ affine @ np.array([[0, 0, k, 1] for k in range(32)]).T)[:3].T
    assert np.allclose(corners_lps, sorted(positions, key=lambda p: p[2]))
    normal = np.cross(np.array(first.ImageOrientationPatient[:3], float), np.array(first.ImageOrientationPatient[3:], float))
    assert np.all(np.diff(corners_lps @ normal) > 0)

    # each plane holds the pixels of the file at that position, transposed to (columns, rows)
    for path, ds in headers.items():
        k = int(np.argmin(np.linalg.norm(corners_lps - np.array(ds.ImagePositionPatient, float), axis=1)))
        assert np.array_equal(volume[:, :, k], ds.pixel_array.T.astype(np.float32)), path.name


def test_slices_sorted_by_position_not_instance_number_or_name(tmp_path, shown):
    original_volume, original_affine = read_series(crop_series())
    rng = random.Random(1234)
    files = sorted(CROP.glob("*.dcm"))
    numbers = list(range(1, len(files) + 1))
    rng.shuffle(numbers)
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for src, number in zip(files, numbers, strict=True):
        dst = shuffled / f"{rng.getrandbits(40):010x}.dcm"
        shutil.copy(src, dst)
        edit_header(dst, InstanceNumber=number)

    series = crop_series(shuffled)
    show_series(shown, series)
    volume, affine = read_series(series)
    assert np.array_equal(volume, original_volume)
    assert np.array_equal(affine, original_affine)

    by_position = sorted(series.files, key=along_normal)
    by_instance = sorted(series.files, key=lambda f: int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber))
    assert by_instance != by_position, "the tampered InstanceNumbers must disagree with the positions"
    assert series.files != by_position, "the random file names must disagree with the positions"


def test_several_series_are_never_merged(tmp_path, shown):
    folder = tmp_path / "two"
    copy_series(CROP, folder / "a")
    copy_series(CROP2, folder / "b")
    uids = [crop_series(CROP).uid, crop_series(CROP2).uid]
    scan = scan_folder(folder)
    assert sorted(s.uid for s in scan.series) == sorted(uids)

    with pytest.raises(DataError) as excinfo:
        select_series(scan, None)
    text = show_error(shown, excinfo)
    assert all(uid in text for uid in uids) and "series_uid" in text
    assert "32 slices" in text and "35 slices" in text and str(folder) in text
    assert_public(excinfo.value, f"{folder}: holds 2 DICOM series and medft does not merge series. Fix: ")

    chosen = select_series(scan, uids[1])
    show_series(shown, chosen)
    assert chosen.uid == uids[1] and len(chosen.files) == 35
    assert all(f.parent == folder / "b" for f in chosen.files)
    assert read_series(chosen)[0].shape == (36, 48, 35)

    with pytest.raises(DataError) as excinfo:
        select_series(scan, "1.2.3.4")
    text = show_error(shown, excinfo)
    assert "1.2.3.4" in text and all(uid in text for uid in uids)
    assert_public(excinfo.value, "holds no series with the manifest's series_uid (2 other series)", "1.2.3.4")


def assert_public(error: DataError, expected: str, *hidden: str) -> None:
    """The error's public form (what medft writes into files) says ``expected`` and names no series, slice or ``hidden``."""
    public = error.public
    assert expected in public and "uid=" not in public and "HippoCrop" not in public and ".dcm" not in public
    assert not any(text in public for text in hidden)


def test_no_series_is_an_error(tmp_path, shown):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DataError) as excinfo:
        select_series(scan_folder(tmp_path), None)
    assert "no DICOM image series" in show_error(shown, excinfo)
    with pytest.raises(DataError) as excinfo:
        scan_folder(tmp_path / "missing")
    assert "does not exist" in show_error(shown, excinfo)


def write_nifti_with_simpleitk(folder: Path, out: Path) -> Path:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    sitk.WriteImage(reader.Execute(), str(out))
    return out


def anisotropic_rescaled_crop(tmp_path: Path) -> Path:
    """The crop with different row and column spacings and a rescale, to catch swapped axes."""
    folder = copy_series(CROP, tmp_path / "anisotropic")
    for path in folder.iterdir():
        edit_header(path, PixelSpacing=[0.5, 0.8], RescaleSlope=2, RescaleIntercept=-10)
    return folder


@pytest.mark.parametrize(
    "make_folder",
    [
        pytest.param(lambda tmp: CROP, id="crop"),
        pytest.param(anisotropic_rescaled_crop, id="crop-anisotropic-rescaled"),
        pytest.param(lambda tmp: STUDY1 / "12-T1post-05670", marks=needs_study1, id="oblique-T1post"),
    ],
)
def test_geometry_matches_simpleitk(make_folder, tmp_path):
    folder = make_folder(tmp_path)
    volume, affine = read_series(crop_series(folder))
    reference = nib.as_closest_canonical(nib.load(write_nifti_with_simpleitk(folder, tmp_path / "ref.nii.gz")))
    ours = nib.as_closest_canonical(nib.Nifti1Image(volume, affine))
    assert nib.aff2axcodes(reference.affine) == ("R", "A", "S")
    assert ours.shape == reference.shape
    assert np.allclose(ours.get_fdata(), reference.get_fdata())
    assert np.allclose(ours.affine, reference.affine, atol=1e-3)


def test_monai_reader_matches_nifti_path(tmp_path, shown):
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation

    from medft.data.dicom import DicomSeriesReader

    nifti = write_nifti_with_simpleitk(CROP, tmp_path / "ref.nii.gz")
    to_ras = Compose([EnsureChannelFirst(), Orientation(axcodes="RAS")])
    loaded = LoadImage(reader=DicomSeriesReader(), image_only=True)(CROP)
    _, affine = read_series(crop_series())
    assert np.array_equal(loaded.affine.numpy(), affine)
    assert loaded.meta["series_uid"] == crop_series().uid and loaded.meta["filename_or_obj"] == str(CROP)
    shown.append(repr(dict(loaded.meta)))

    ours = to_ras(loaded)
    reference = to_ras(LoadImage(reader="NibabelReader", image_only=True)(nifti))
    assert ours.shape == reference.shape == (1, 35, 51, 32)
    assert np.allclose(ours.numpy(), reference.numpy())
    assert np.allclose(ours.affine.numpy(), reference.affine.numpy(), atol=1e-3)


def test_monai_reader_refusal_reaches_the_caller(tmp_path, shown):
    """Given at call time, the reader's DataError propagates (LoadImage does not try other readers)."""
    from monai.transforms import LoadImage

    from medft.data.dicom import DicomSeriesReader

    folder = copy_series(CROP, tmp_path / "crop")
    copy_series(CROP2, folder / "other")
    with pytest.raises(DataError) as excinfo:
        LoadImage(image_only=True)(folder, reader=DicomSeriesReader())
    assert "series_uid" in show_error(shown, excinfo)

    (folder / "notes.txt").write_text("scanner notes")
    with pytest.raises(DataError) as excinfo:
        LoadImage(image_only=True)(folder, reader=DicomSeriesReader(crop_series(CROP2).uid))
    text = show_error(shown, excinfo)
    assert f"{folder}: is not a DICOM file (in notes.txt)" in text and "remove it" in text
    assert_public(excinfo.value, f"{folder}: is not a DICOM file. Fix: remove it", "notes.txt")

    reader = pickle.loads(pickle.dumps(DicomSeriesReader("1.2.3")))  # DataLoader workers pickle transforms
    assert isinstance(reader, DicomSeriesReader) and reader.series_uid == "1.2.3"


def test_import_does_not_pull_monai_or_torch():
    code = "import sys, medft.data.dicom; print(sorted({'monai', 'torch'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_unreadable_and_truncated_files_are_named(tmp_path, shown):
    folder = copy_series(CROP, tmp_path / "crop")
    (folder / "notes.txt").write_text("scanner notes")
    (folder / ".DS_Store").write_bytes(b"\0junk")
    (folder / "DICOMDIR").write_bytes(b"junk")
    truncated = folder / "16.dcm"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: int(len(data) * 0.6)])

    scan = scan_folder(folder)
    shown += [str(p) for p in scan.unreadable]
    assert [p.file for p in scan.unreadable] == [folder / "notes.txt"]
    assert "notes.txt" in str(scan.unreadable[0]) and "not a DICOM file" in str(scan.unreadable[0])

    series = select_series(scan, None)
    assert truncated in series.files  # the header is intact: only the pixel data is cut
    with pytest.raises(DataError) as excinfo:
        read_series(series)
    text = show_error(shown, excinfo)
    assert excinfo.value.details.file == folder and "(in 16.dcm)" in text and "pixel data" in text
    assert_public(excinfo.value, f"{folder}: its pixel data cannot be decoded")


def problems_for(folder: Path, shown: list[str]) -> list[str]:
    problems = geometry_problems(crop_series(folder))
    texts = [str(p) for p in problems]
    shown += texts
    assert all(p.severity == "error" for p in problems)
    return texts


def test_clean_series_has_no_geometry_problems(shown):
    assert problems_for(CROP, shown) == []
    assert problems_for(CROP2, shown) == []


def test_missing_slice_is_reported(tmp_path, shown):
    folder = copy_series(CROP, tmp_path / "crop")
    (folder / "16.dcm").unlink()
    texts = problems_for(folder, shown)
    assert len(texts) == 1
    assert "about 1 slice(s) seem missing: a gap of 2.00 mm where slices are 1.00 mm apart (between 15.dcm and 17.dcm)" in texts[0]
    with pytest.raises(DataError) as excinfo:
        read_series(crop_series(folder))
    assert "missing" in show_error(shown, excinfo)
    assert_public(excinfo.value, "about 1 slice(s) seem missing: a gap of 2.00 mm where slices are 1.00 mm apart. Fix")

    for name in ("18.dcm", "19.dcm"):
        (folder / name).unlink()
    assert any("about 2 slice(s) seem missing" in t and "(between 17.dcm and 20.dcm)" in t for t in problems_for(folder, shown))


def test_uneven_spacing_is_reported(tmp_path, shown):
    folder = copy_series(CROP, tmp_path / "crop")
    moved = folder / "16.dcm"
    position = pydicom.dcmread(moved).ImagePositionPatient
    edit_header(moved, ImagePositionPatient=[position[0], position[1], float(position[2]) + 0.3])
    texts = problems_for(folder, shown)
    assert len(texts) == 1 and "uneven" in texts[0] and "tolerance 0.010 mm" in texts[0]
    assert "1.300 mm between 15.dcm and 16.dcm" in texts[0] and "0.700 mm between 16.dcm and 17.dcm" in texts[0]


def test_duplicate_position_is_reported(tmp_path, shown):
    folder = copy_series(CROP, tmp_path / "crop")
    shutil.copy(folder / "16.dcm", folder / "16_copy.dcm")
    texts = problems_for(folder, shown)
    assert len(texts) == 1 and "same position" in texts[0] and "16.dcm and 16_copy.dcm" in texts[0]


def test_inconsistent_and_unsupported_slices_are_reported(tmp_path, shown):
    folder = copy_series(CROP, tmp_path / "crop")
    edit_header(folder / "5.dcm", ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    edit_header(folder / "6.dcm", NumberOfFrames=2)
    texts = problems_for(folder, shown)
    assert any("5.dcm" in t and "orientation" in t for t in texts)
    assert any("6.dcm" in t and "multi-frame" in t for t in texts)

    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(CROP / "1.dcm", single)
    texts = problems_for(single, shown)
    assert len(texts) == 1 and "only 1 slice" in texts[0]
    edit_header(single / "1.dcm", NumberOfFrames=32)  # an enhanced (multi-frame) file holding a whole volume
    texts = problems_for(single, shown)
    assert len(texts) == 1 and "multi-frame" in texts[0] and "not support" in texts[0]


@needs_study1
def test_full_study_has_five_series(shown):
    scan = scan_folder(STUDY1)
    assert len(scan.series) == 5 and scan.unreadable == []
    with pytest.raises(DataError) as excinfo:
        select_series(scan, None)
    text = show_error(shown, excinfo)
    assert text.count("uid=") == 5 and all(s.uid in text for s in scan.series)

    t1 = next(s for s in scan.series if s.description == "T1post")
    show_series(shown, t1)
    assert geometry_problems(t1) == []
    volume, affine = read_series(t1)
    assert volume.shape == (512, 512, 22)
    assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), [0.4297, 0.4297, 6.5], atol=1e-3)


@pytest.mark.parametrize(
    "tag, stored, expected",
    [
        ("ImagePositionPatient", b"", "ImagePositionPatient is empty"),
        ("ImagePositionPatient", b"abc\\0\\6", "ImagePositionPatient is not numeric."),
        ("ImagePositionPatient", b"0\\0", "ImagePositionPatient holds 2 value(s) where 3 are needed"),
        ("PixelSpacing", b"0\\0", "PixelSpacing is 0, not a pixel size in mm"),
        ("ImageOrientationPatient", b"1\\0\\0\\1\\0\\0", "ImageOrientationPatient is invalid (1, 0, 0, 1, 0, 0)"),
        ("NumberOfFrames", b"x", "NumberOfFrames is not numeric."),
        ("RescaleSlope", b"abc", "RescaleSlope is not numeric."),
        ("RescaleIntercept", b"1\\2", "RescaleIntercept holds 2 value(s) where 1 are needed"),
    ],
)
def test_a_malformed_tag_names_the_file_and_the_tag(tag, stored, expected, tmp_path, shown):
    folder = copy_series(CROP, tmp_path / "crop")
    edit_raw(folder / "16.dcm", **{tag: stored})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom's own conversion warns on stderr
        texts = problems_for(folder, shown)
        assert len(texts) == 1 and f"16.dcm: {expected}" in texts[0] and "Fix: " in texts[0]
        with pytest.raises(DataError) as excinfo:
            read_series(crop_series(folder))
    assert f"{folder}: {expected.rstrip('.')}" in show_error(shown, excinfo) and "(in 16.dcm)" in str(excinfo.value)
    assert_public(excinfo.value, f"{folder}: {expected.rstrip('.')}")


def test_a_rescale_slope_of_zero_counts_as_absent(tmp_path, shown):
    """Some exports write RescaleSlope 0 for "no rescaling": taken at its word it would blank the image."""
    original, affine = read_series(crop_series())
    folder = copy_series(CROP, tmp_path / "crop")
    for path in folder.iterdir():
        edit_raw(path, RescaleSlope=b"0", RescaleIntercept=b"-10")
    series = crop_series(folder)
    show_series(shown, series)
    assert geometry_problems(series) == []
    volume, read_affine = read_series(series)
    assert original.max() > original.min() and np.array_equal(volume, original - 10) and np.array_equal(read_affine, affine)


def test_a_blanked_orientation_is_invalid_not_duplicate_slices(tmp_path, shown):
    folder = copy_series(CROP, tmp_path / "crop")
    for path in folder.iterdir():  # as an anonymiser may leave it
        edit_header(path, ImageOrientationPatient=[0, 0, 0, 0, 0, 0])
    texts = problems_for(folder, shown)
    assert len(texts) == 1, texts
    assert texts[0].startswith(
        f"ERROR {folder}: ImageOrientationPatient is invalid (0, 0, 0, 0, 0, 0): it must hold two orthogonal unit vectors"
    )
    assert ", in 32 files (1.dcm, 10.dcm, 11.dcm and 29 more)" in texts[0] and "anonymiser" in texts[0]


def test_a_series_number_that_is_no_number_is_a_quiet_warning(tmp_path, shown):
    folder = copy_series(CROP, tmp_path / "crop")
    for path in folder.iterdir():
        edit_raw(path, SeriesNumber=b"abc")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom's own conversion warns on stderr
        series = crop_series(folder)
        problems = geometry_problems(series)
        volume, _ = read_series(series)
    show_series(shown, series)
    assert series.number is None and volume.shape == (35, 51, 32)
    assert [p.severity for p in problems] == ["warning"]
    assert "SeriesNumber is not numeric; medft ignores it, in 32 files (" in str(problems[0]) and "abc" not in str(problems[0])


def test_slices_of_two_patients_under_one_series_uid_are_refused_without_their_ids(tmp_path, shown):
    folder = copy_series(CROP, tmp_path / "crop")
    other_patient = pydicom.dcmread(sorted(CROP2.glob("*.dcm"))[0], stop_before_pixels=True).PatientID
    edit_header(folder / "16.dcm", PatientID=other_patient)
    texts = problems_for(folder, shown)  # the fixture checks that neither patient's ID is shown
    assert texts == [f"ERROR {folder}: its slices carry 2 different PatientIDs (not shown) under one SeriesInstanceUID: "
                     "files of several patients are mixed (16.dcm and 1.dcm differ, for example). Fix: keep the files "
                     "of one patient only in the series folder, or export the series again from its source"]
    with pytest.raises(DataError) as excinfo:
        read_series(crop_series(folder))
    assert "2 different PatientIDs" in show_error(shown, excinfo)
    assert_public(excinfo.value, f"{folder}: its slices carry 2 different PatientIDs (not shown)")


def test_a_slice_displaced_sideways_is_reported(tmp_path, shown):
    folder = copy_series(CROP, tmp_path / "crop")
    x, y, z = (float(v) for v in pydicom.dcmread(folder / "16.dcm").ImagePositionPatient)
    edit_header(folder / "16.dcm", ImagePositionPatient=[x + 5, y, z])
    texts = problems_for(folder, shown)
    assert len(texts) == 1 and "1 slice(s) lie off the line of the others" in texts[0]
    assert "tolerance of 0.010 mm" in texts[0] and "(16.dcm by 5.000 mm)" in texts[0]
    with pytest.raises(DataError) as excinfo:
        read_series(crop_series(folder))
    assert "off the line" in show_error(shown, excinfo)


def test_an_evenly_slanted_stack_is_no_displacement(tmp_path, shown):
    """A CT gantry tilt slants the stack evenly: the affine follows it, nothing is wrong."""
    folder = copy_series(CROP, tmp_path / "crop")
    for path in folder.iterdir():
        x, y, z = (float(v) for v in pydicom.dcmread(path).ImagePositionPatient)
        edit_header(path, ImagePositionPatient=[x + 0.3 * z, y, z])
    assert problems_for(folder, shown) == []
    _, affine = read_series(crop_series(folder))
    assert np.allclose(affine[:3, 2], [-0.3, 0, 1])  # LPS (0.3, 0, 1) in RAS


@pytest.mark.skipif(
    pydicom.pixels.get_decoder(pydicom.uid.JPEGLossless).is_available, reason="a JPEG Lossless decoder is installed"
)
def test_a_compression_without_decoder_names_the_packages(tmp_path, shown):
    folder = copy_series(CROP, tmp_path / "crop")
    mark_jpeg_lossless(folder / "16.dcm")
    with pytest.raises(DataError) as excinfo:
        read_series(crop_series(folder))
    text = show_error(shown, excinfo)
    assert "\n" not in text and excinfo.value.details.file == folder and "(in 16.dcm)" in text
    assert "compressed as JPEG Lossless, Non-Hierarchical (Process 14), which no installed package decodes" in text
    assert "pip install pylibjpeg pylibjpeg-libjpeg" in text and "python-gdcm" in text and "uncompressed" in text


def test_slices_without_the_part10_header_are_read_and_other_files_still_named(tmp_path, shown):
    folder = copy_series(CROP, tmp_path / "crop")
    for path in folder.iterdir():
        strip_part10_header(path)
    (folder / "README").write_text("scanner notes")
    (folder / "bare.dcm").write_bytes(b"\x10\x00\x10\x00\x04\x00\x00\x00Doe^")  # a bare dataset, no slice
    (folder / ".DS_Store").write_bytes(b"\0junk")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scan = scan_folder(folder)
        series = select_series(scan, None)
        problems = geometry_problems(series)
        volume, affine = read_series(series)
    texts = [str(p) for p in scan.unreadable]
    shown += texts
    show_series(shown, series)
    assert texts == [
        f"ERROR {folder / 'README'}: is not a DICOM file. Fix: {_REMOVE_OR_REPLACE}",
        f"ERROR {folder / 'bare.dcm'}: is not a DICOM file. Fix: {_REMOVE_OR_REPLACE}",
    ]
    assert len(series.files) == 32 and problems == []
    original_volume, original_affine = read_series(crop_series())
    assert np.array_equal(volume, original_volume) and np.array_equal(affine, original_affine)


def test_a_file_cut_inside_its_header_is_truncated_not_another_object(tmp_path, shown):
    folder = copy_series(CROP, tmp_path / "crop")
    for name, cut in (("16.dcm", 300), ("17.dcm", 1000)):
        (folder / name).write_bytes((folder / name).read_bytes()[:cut])
    report = folder / "report.dcm"  # a complete DICOM object that is no image
    ds = pydicom.dcmread(CROP / "1.dcm")
    for keyword in ("Rows", "Columns", "PixelData"):
        delattr(ds, keyword)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = pydicom.uid.BasicTextSRStorage
    ds.save_as(report)

    unreadable = {p.file.name: str(p) for p in scan_folder(folder).unreadable}
    shown += list(unreadable.values())
    for name in ("16.dcm", "17.dcm"):
        assert "is truncated or damaged: the header of this MR Image Storage file ends before" in unreadable[name]
        assert "Fix: replace it with the complete file" in unreadable[name]
    assert "is a DICOM file but not an image slice (Basic Text SR Storage)" in unreadable["report.dcm"]
    assert "Fix: move it out of the series folder" in unreadable["report.dcm"]
