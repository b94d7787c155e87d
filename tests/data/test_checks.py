"""check-data on copies of real files, each corrupted in one way: every problem in one run."""
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medft.cli import main
from medft.data import checks
from tests.conftest import MANIFESTS, REPO, SAMPLE, copy_case, rewrite_nifti, sample_case, write_csv
from tests.data.dicom_edits import edit_raw, strip_part10_header

CROP_1 = SAMPLE / "dicom" / "study1" / "13_HCropVolume"
CROP_2 = SAMPLE / "dicom" / "study2" / "14_HCropVolume"


def _slices_by_position(folder: Path) -> list[Path]:
    def position(path: Path) -> float:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        normal = np.cross(*np.reshape(np.asarray(ds.ImageOrientationPatient, float), (2, 3)))
        return float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float)))

    return sorted(folder.iterdir(), key=position)


def _broken_dataset(root: Path) -> tuple[Path, dict[str, list[str]]]:
    """A manifest with one problem per case; returns it and the phrases each case must report."""
    rows, expected = [], {}

    def add(case_id: str, image: Path, label: Path | None, *phrases: str, **extra) -> None:
        rows.append({"case_id": case_id, "image": image.relative_to(root), "label": label.relative_to(root) if label else "", **extra})
        expected[case_id] = list(phrases)

    add("clean", *copy_case("hippocampus_334", root / "nii", "clean"))
    image, label = copy_case("hippocampus_335", root / "nii", "missing")
    image.unlink()
    add("missing", image, label, "file not found", image.name)
    image, label = copy_case("hippocampus_336", root / "nii", "truncated")
    image.write_bytes(image.read_bytes()[:3000])
    add("truncated", image, label, "is truncated: its header declares 274856 bytes of voxel data (shape 34 x 47 x 43, "
        "float32), the file holds", image.name, "copy it again")
    image, label = copy_case("hippocampus_338", root / "nii", "shape")
    rewrite_nifti(label, data=np.asanyarray(nib.load(label).dataobj)[:-2])
    add("shape", image, label, "label shape (35, 43, 43) differs from image shape (37, 43, 43)", label.name, image.name)
    image, label = copy_case("hippocampus_340", root / "nii", "affine")
    moved = nib.load(label).affine.copy()
    moved[2, 3] += 1.5
    rewrite_nifti(label, affine=moved)
    add("affine", image, label, "affines differ by up to 1.5 mm (tolerance 0.001 mm)", label.name)
    image, label = copy_case("hippocampus_341", root / "nii", "values")
    data = np.asanyarray(nib.load(label).dataobj).copy()
    data[0, 0, :3] = 7
    rewrite_nifti(label, data=data)
    add("values", image, label, "label values [7] are outside the declared classes 0..2", label.name)
    image, label = copy_case("hippocampus_345", root / "nii", "fractional")
    rewrite_nifti(label, data=np.asanyarray(nib.load(label).dataobj).astype(np.float32) * 0.5)
    add("fractional", image, label, "label values are not whole numbers (e.g. 0.5", label.name)
    image, label = copy_case("hippocampus_355", root / "nii", "nearly")
    data = np.asanyarray(nib.load(label).dataobj).astype(np.float32)
    data[data == 1] = np.float32(1.0000001)  # shown with its fraction, not rounded to "1"
    rewrite_nifti(label, data=data)
    add("nearly", image, label, "label values are not whole numbers (e.g. 1.00000012)", label.name)
    image, label = copy_case("hippocampus_349", root / "nii", "nan")
    data = nib.load(image).get_fdata(dtype=np.float32)
    data[1, 2, 3], data[4, 5, 6] = np.nan, np.inf
    rewrite_nifti(image, data=data)
    add("nan", image, label, "2 voxel(s) of the image are NaN or infinite", image.name)
    image, label = copy_case("hippocampus_351", root / "nii", "empty")
    rewrite_nifti(label, data=np.zeros(nib.load(label).shape, np.uint8))
    add("empty", image, label, "WARNING", "the label map is empty", label.name)
    image, label = copy_case("hippocampus_352", root / "nii", "dup")
    add("dup", image, label, "duplicate case_id")
    add("dup", image, label, "duplicate case_id")
    image, label = copy_case("hippocampus_353", root / "nii", "pa")
    add("pa", image, label, "several splits (train: pa; val: pb)", split="train", patient_id="Doe^Jane")
    image, label = copy_case("hippocampus_354", root / "nii", "pb")
    add("pb", image, label, split="val", patient_id="Doe^Jane")

    two_series = root / "dicom" / "two_series"
    shutil.copytree(CROP_1, two_series / "a")
    shutil.copytree(CROP_2, two_series / "b")
    add("two_series", two_series, None, "holds 2 DICOM series", "series_uid")
    stray = root / "dicom" / "stray"
    shutil.copytree(CROP_1, stray)
    (stray / "notes.txt").write_text("not an image\n")
    add("stray", stray, None, "notes.txt", "remove it")
    gap = root / "dicom" / "gap"
    shutil.copytree(CROP_1, gap)
    _slices_by_position(gap)[10].unlink()
    add("gap", gap, None, "missing")
    uneven = root / "dicom" / "uneven"
    shutil.copytree(CROP_1, uneven)
    moved_slice = _slices_by_position(uneven)[12]
    ds = pydicom.dcmread(moved_slice)
    ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [float(ds.ImagePositionPatient[2]) + 0.3]
    ds.save_as(moved_slice)
    add("uneven", uneven, None, "uneven")
    _add_damaged_headers(root, add)

    manifest = write_csv(root / "manifest.csv", rows, classes={"0": "background", "1": "anterior", "2": "posterior"})
    return manifest, expected


def _add_damaged_headers(root: Path, add) -> None:
    """Cases whose headers once ended check-data with an internal error, or were misdiagnosed."""
    def series(case_id: str) -> Path:
        return Path(shutil.copytree(CROP_1, root / "dicom" / case_id))

    folder = series("ipp_empty")
    edit_raw(folder / "16.dcm", ImagePositionPatient=b"")
    add("ipp_empty", folder, None, "16.dcm: ImagePositionPatient is empty")
    folder = series("ipp_text")
    edit_raw(folder / "16.dcm", ImagePositionPatient=b"abc\\0\\6")
    add("ipp_text", folder, None, "16.dcm: ImagePositionPatient is not numeric. Fix")
    folder = series("spacing0")
    for path in folder.iterdir():
        edit_raw(path, PixelSpacing=b"0\\0")
    add("spacing0", folder, None, "PixelSpacing is 0", ", in 32 files (1.dcm, 10.dcm")
    folder = series("series_number")
    for path in folder.iterdir():
        edit_raw(path, SeriesNumber=b"abc")
    add("series_number", folder, None, "WARNING", "SeriesNumber is not numeric")
    folder = series("sideways")
    x, y, z = (float(v) for v in pydicom.dcmread(folder / "16.dcm").ImagePositionPatient)
    ds = pydicom.dcmread(folder / "16.dcm")
    ds.ImagePositionPatient = [x + 5, y, z]
    ds.save_as(folder / "16.dcm")
    add("sideways", folder, None, "16.dcm by 5.000 mm", "off the line")
    folder = series("no_orientation")
    for path in folder.iterdir():
        edit_raw(path, ImageOrientationPatient=b"0\\0\\0\\0\\0\\0")
    add("no_orientation", folder, None, "ImageOrientationPatient is invalid")
    folder = series("headerless")  # bare datasets: read as they are
    for path in folder.iterdir():
        strip_part10_header(path)
    add("headerless", folder, None)
    folder = series("cut_header")
    (folder / "16.dcm").write_bytes((folder / "16.dcm").read_bytes()[:300])
    add("cut_header", folder, None, "16.dcm: is truncated or damaged", "replace it with the complete file")
    folder = series("mixed_patients")
    edit_raw(folder / "16.dcm", PatientID=b"OTHER-PATIENT-77")
    add("mixed_patients", folder, None, f"{folder}: its slices carry 2 different PatientIDs (not shown)",
        "16.dcm and 1.dcm differ", "keep the files of one patient")
    one_slice = Path(shutil.copy(CROP_1 / "16.dcm", root / "dicom" / "one_slice.dcm"))
    add("one_slice", one_slice, None, "one_slice.dcm: is one DICOM file (a single slice), not a 3D image",
        "give the folder that holds the whole series")
    image, _ = copy_case("hippocampus_359", root / "nii", "dicom_label")
    add("dicom_label", image, series("label_series"), "label_series: is a folder, but a label must be a NIfTI label map",
        "DICOM SEG or RTSTRUCT")
    image, _ = copy_case("hippocampus_359", root / "nii", "dicom_label_file")
    add("dicom_label_file", image, one_slice, "one_slice.dcm: is a DICOM file, but a label must be a NIfTI label map")

    image, label = copy_case("hippocampus_355", root / "nii", "singular")
    header = nib.load(image).header.copy()
    affine = header.get_best_affine()
    affine[:3, 2] = 0
    header.set_qform(None, code=0)
    header.set_sform(affine, code=1)
    nib.save(nib.Nifti1Image(np.asanyarray(nib.load(image).dataobj), None, header), image)
    add("singular", image, label, f"{image.name}: the affine is singular (a zero column)")
    huge = root / "nii" / "huge.nii"
    header = nib.Nifti1Header()
    header.set_data_shape((1000, 1000, 1000))
    header.set_data_dtype(np.uint8)
    header.set_data_offset(352)
    huge.write_bytes(header.binaryblock + bytes(4 + 10_000))
    add("huge", huge, None, "huge.nii: is truncated: its header declares 1000000000 bytes")


def test_every_problem_is_reported_in_one_run(tmp_path, capsys):
    manifest, expected = _broken_dataset(tmp_path)
    assert main(["check-data", str(manifest)]) == 1
    lines = capsys.readouterr().out.splitlines()
    for case_id, phrases in expected.items():
        mine = [line for line in lines if f"case {case_id}:" in line]
        for phrase in phrases:
            assert any(phrase in line for line in mine), f"{case_id}: no line with {phrase!r} in {mine}"
        assert all("Fix: " in line for line in mine)
    assert not [line for line in lines if "case clean:" in line]
    patient_id = str(pydicom.dcmread(CROP_1 / "1.dcm", stop_before_pixels=True).PatientID)
    assert not [line for line in lines if any(value in line for value in ("abc", "OTHER-PATIENT-77", patient_id))]
    assert not [line for line in lines if "case headerless:" in line]
    assert lines[-1].endswith("error(s), 2 warning(s)")
    no_orientation = [line for line in lines if "case no_orientation:" in line]
    assert len(no_orientation) == 1  # one line for the folder, no "duplicate slices"


def test_an_unexpected_failure_is_one_line_of_its_case(tmp_path, capsys, monkeypatch):
    broken, _ = copy_case("hippocampus_334", tmp_path, "broken")
    other, _ = copy_case("hippocampus_335", tmp_path, "other")
    other.unlink()
    load_image = checks.load_image

    def failing(paths, series_uid=None):
        if "broken" in str(paths[0]):
            raise RuntimeError("something unforeseen\n  on two lines")
        return load_image(paths, series_uid)

    monkeypatch.setattr(checks, "load_image", failing)
    rows = [{"case_id": "broken", "image": broken.name}, {"case_id": "other", "image": other.name}]
    manifest = write_csv(tmp_path / "m.csv", rows, classes={"0": "background", "1": "anterior", "2": "posterior"})
    assert main(["check-data", str(manifest)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith(
        f"ERROR case broken: {broken}: checking the case failed unexpectedly "
        "(RuntimeError: something unforeseen on two lines). Fix: "
    )
    assert "case other:" in lines[1] and "file not found" in lines[1]
    assert lines[-1].endswith("2 error(s), 0 warning(s)") and "internal error" not in captured.err


def test_dicom_patient_names_and_ids_never_appear(tmp_path, capsys):
    manifest, _ = _broken_dataset(tmp_path)
    main(["check-data", str(manifest)])
    out = capsys.readouterr().out
    for crop in (CROP_1, CROP_2):
        header = pydicom.dcmread(next(crop.iterdir()), stop_before_pixels=True)
        assert str(header.PatientName) not in out and str(header.PatientName.family_name) not in out
        assert str(header.PatientID) not in out
    assert "Doe" not in out  # manifest patient ids are not echoed either


@pytest.mark.parametrize("manifest", ["hippocampus_sample.csv", "dicom_sample.csv"])
def test_the_sample_manifests_are_clean(manifest, capsys):
    assert main(["check-data", str(MANIFESTS / manifest)]) == 0
    assert capsys.readouterr().out.strip().endswith("0 error(s), 0 warning(s)")


def test_the_full_shared_dataset_is_clean(shared_data, capsys):
    assert main(["check-data", str(shared_data / "hippocampus" / "dataset.json")]) == 0


def test_an_unsafe_case_id_is_one_line_among_the_other_problems(tmp_path, capsys):
    image, label = copy_case("hippocampus_334", tmp_path)
    rows = [{"case_id": "../../escaped", "image": image.name, "label": label.name},
            {"case_id": "gone", "image": "gone.nii.gz"}]
    manifest = write_csv(tmp_path / "m.csv", rows, classes={"0": "background", "1": "a", "2": "b"})
    assert main(["check-data", str(manifest)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"ERROR {manifest}: case_id '../../escaped' cannot name the case's output files")
    assert "case gone:" in lines[1] and "file not found" in lines[1]
    assert lines[-1].endswith("2 error(s), 0 warning(s)")


def test_a_header_only_manifest_fails(tmp_path, capsys):
    manifest = write_csv(tmp_path / "m.csv", [])
    assert main(["check-data", str(manifest)]) == 1
    out = capsys.readouterr().out
    assert f"ERROR {manifest}: the manifest has a header but no cases. Fix: add one row per case" in out
    assert out.strip().endswith("1 error(s), 0 warning(s)")


def test_an_msd_task_folder_is_checked_as_its_dataset_json(tmp_path, capsys):
    for case in ("hippocampus_334", "hippocampus_335"):
        image, label = sample_case(case)
        for src, sub in ((image, "imagesTr"), (label, "labelsTr")):
            (tmp_path / sub).mkdir(exist_ok=True)
            shutil.copyfile(src, tmp_path / sub / src.name)
    spec = {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
            "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                         for c in ("hippocampus_334", "hippocampus_335")]}
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    assert main(["check-data", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"{tmp_path}: 0 error(s), 0 warning(s)"


def _set_forms(path: Path, qform: np.ndarray, sform: np.ndarray) -> None:
    image = nib.load(path)
    image.set_qform(qform, code=1)
    image.set_sform(sform, code=1)
    nib.save(image, path)


def test_a_qform_that_disagrees_with_the_sform_is_a_warning_and_the_sform_is_compared(tmp_path, capsys):
    image, label = copy_case("hippocampus_334", tmp_path, "forms")
    sform = nib.load(image).affine
    turned = sform.copy()
    turned[:3, :3] = turned[:3, :3] @ np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]])  # 90 degrees about z
    _set_forms(image, turned, sform)
    shifted = sform.copy()
    shifted[0, 3] += 2
    _set_forms(label, sform, shifted)  # the label's qform matches the image's sform, its sform does not
    rows = [{"case_id": "forms", "image": image.name, "label": label.name}]
    manifest = write_csv(tmp_path / "m.csv", rows, classes={"0": "background", "1": "anterior", "2": "posterior"})
    assert main(["check-data", str(manifest)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4, lines
    warning_image, warning_label, error = sorted(lines[:3], key=lambda line: (line.startswith("ERROR"), line))
    disagree = "its qform and sform disagree: they place voxels up to"
    assert warning_image.startswith(f"WARNING case forms: {image}: {disagree} ")
    assert "axes turned by up to 90 degrees" in warning_image
    assert "medft (as nibabel and MONAI) uses the sform" in warning_image
    assert "Fix: rewrite the file with the right one in both" in warning_image
    assert "img.set_qform(img.get_sform())" in warning_image
    assert warning_label.startswith(f"WARNING case forms: {label}: {disagree} 2 mm apart")
    assert error.startswith(f"ERROR case forms: {label}: label and image affines differ by up to 2 mm")
    assert lines[-1].endswith("1 error(s), 2 warning(s)")

    _set_forms(label, turned, sform)  # same sforms: the qforms alone are no error
    _set_forms(image, sform, sform)
    assert main(["check-data", str(manifest)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("INFO ")]
    assert len(lines) == 2 and lines[0].startswith(f"WARNING case forms: {label}: its qform and sform disagree")


def test_widely_different_spacings_are_one_warning_with_the_fix(tmp_path, capsys):
    rows = []
    for case_id, slice_mm in (("fine", 1.0), ("usual", 1.2), ("thick", 3.0)):
        image, label = copy_case("hippocampus_334", tmp_path, case_id)
        for path in (image, label):
            rewrite_nifti(path, affine=np.diag([1.0, 1.0, slice_mm, 1.0]))
        rows.append({"case_id": case_id, "image": image, "label": label, "split": "train"})
    manifest = write_csv(tmp_path / "m.csv", rows, classes={"0": "background", "1": "anterior", "2": "posterior"})
    assert main(["check-data", str(manifest)]) == 0  # a warning, not an error
    out = capsys.readouterr().out
    assert out.count("voxel spacings differ widely") == 1
    assert "up-down from 1 mm (case fine) to 3 mm (case thick)" in out and "left-right" not in out
    assert "Fix: resample every case to one spacing: set data.spacing" in out
    rows[2]["image"], rows[2]["label"] = rows[1]["image"], rows[1]["label"]
    write_csv(tmp_path / "m.csv", rows, classes={"0": "background", "1": "anterior", "2": "posterior"})
    assert main(["check-data", str(manifest)]) == 0
    assert "differ widely" not in capsys.readouterr().out  # 1.0 to 1.2 mm: close enough


def test_check_data_estimates_the_size_in_memory_and_what_the_cache_budget_keeps(capsys, monkeypatch):
    from medft.data.footprint import estimate_sizes
    from medft.data.manifest import load_manifest
    from medft.data.preprocessing import Preprocessing
    from medft.train.cache import MEMORY_SHARE

    manifest = MANIFESTS / "hippocampus_sample.csv"
    cases = load_manifest(manifest).records(None)
    sizes = estimate_sizes(cases, Preprocessing.medft(None), classes=3)
    monkeypatch.setattr("medft.train.cache.available_memory", lambda: round(sum(sizes[:10]) / MEMORY_SHARE))
    assert main(["check-data", str(manifest)]) == 0
    out = capsys.readouterr().out.splitlines()[-2]
    assert out.startswith(f"INFO {len(cases)} case(s), about {sum(sizes) / 1024**2:.1f} MB in memory as the files are")
    assert out.endswith(f"keeps 10 of them, the other {len(cases) - 10} on disk")
    assert main(["check-data", str(manifest), "--config", str(REPO / "configs" / "hippocampus.yaml")]) == 0
    assert "after the preprocessing of" in capsys.readouterr().out


CLASSES = ["background", "anterior", "posterior"]


@pytest.mark.parametrize("values, outside", [
    pytest.param([0, 1, 2], None, id="all-declared"),
    pytest.param([0, 1, 3], [3], id="one-past-the-last-class"),
    pytest.param([2, 1], None, id="no-background"),
    pytest.param([0, -1, 2], [-1], id="negative"),
])
def test_label_values_must_be_the_declared_classes(values, outside):
    label = np.array(values, dtype=np.int16).reshape(1, 1, -1)
    problems = checks.label_value_problems(label, "case.nii.gz", CLASSES)
    if outside is None:
        assert problems == []
        return
    assert [(p.problem, p.file, p.severity) for p in problems] == [
        (f"label values {outside} are outside the declared classes 0..2 (background, anterior, posterior)", "case.nii.gz",
         "error")]


def test_label_values_must_be_whole_numbers():
    problems = checks.label_value_problems(np.array([[[0.0, 1.0, 1.5]]], dtype=np.float32), "case.nii.gz", CLASSES)
    assert [p.problem for p in problems] == ["label values are not whole numbers (e.g. 1.5)"]
    assert checks.label_value_problems(np.array([0.0, 2.0, np.nan]), "case.nii.gz", CLASSES)[0].problem == \
        "label values are not whole numbers (e.g. nan)"
    assert checks.label_value_problems(np.array([0.0, 1.0, 2.0]), "case.nii.gz", CLASSES) == []  # whole, though floats
