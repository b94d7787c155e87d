import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from medft.data.loading import load_image
from medft.data.manifest import case_id_problem, load_manifest, read_manifest
from medft.errors import DataError, MedftError
from tests.conftest import MANIFESTS, SAMPLE, copy_case, write_csv


def test_csv_manifest_resolves_paths_and_reads_classes():
    manifest = load_manifest(MANIFESTS / "hippocampus_sample.csv")
    assert len(manifest) == 32
    assert manifest.class_names == ["background", "anterior", "posterior"]
    assert Counter(c.split for c in manifest) == {"train": 20, "val": 6, "test": 6}
    first = manifest.cases[0]
    assert first.case_id == "hippocampus_333"
    assert first.image == ((SAMPLE / "hippocampus/imagesTr/hippocampus_333.nii.gz").resolve(),)
    assert first.label.is_file() and not first.is_dicom
    assert [r["case_id"] for r in manifest.records("val")] == [c.case_id for c in manifest.split("val")]


def test_dicom_manifest_cases_are_series_folders():
    manifest = load_manifest(MANIFESTS / "dicom_sample.csv")
    assert [c.is_dicom for c in manifest] == [True, True]
    assert all(c.label is None and c.split == "test" for c in manifest)


def test_msd_dataset_json_gets_deterministic_splits():
    first = load_manifest(SAMPLE / "hippocampus" / "dataset.json")
    again = load_manifest(SAMPLE / "hippocampus" / "dataset.json")
    assert len(first) == 32
    assert first.class_names == ["background", "Anterior", "Posterior"]
    assert [c.split for c in first] == [c.split for c in again]
    assert Counter(c.split for c in first) == {"train": 26, "val": 6}  # round(32 * 0.2) = 6
    assert first.cases[0].case_id == "hippocampus_333"


def test_msd_test_entries_are_unlabelled_test_cases(tmp_path):
    image, label = copy_case("hippocampus_334", tmp_path)
    unlabelled, _ = copy_case("hippocampus_335", tmp_path)
    spec = {"labels": {"0": "background", "1": "a"}, "training": [{"image": image.name, "label": label.name}],
            "test": [unlabelled.name]}
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    manifest = load_manifest(tmp_path / "dataset.json")
    assert [(c.split, c.label is None) for c in manifest] == [("train", False), ("test", True)]


def _nnunet_folder(root: Path) -> Path:
    src = SAMPLE / "hippocampus"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    for case in ("hippocampus_334", "hippocampus_335"):
        for channel in ("0000", "0001"):
            shutil.copyfile(src / "imagesTr" / f"{case}.nii.gz", root / "imagesTr" / f"{case}_{channel}.nii.gz")
        shutil.copyfile(src / "labelsTr" / f"{case}.nii.gz", root / "labelsTr" / f"{case}.nii.gz")
    for channel in ("0000", "0001"):
        shutil.copyfile(src / "imagesTr" / "hippocampus_336.nii.gz", root / "imagesTs" / f"hippocampus_336_{channel}.nii.gz")
    spec = {"channel_names": {"0": "T1", "1": "T1 copy"}, "labels": {"background": 0, "anterior": 1, "posterior": 2},
            "numTraining": 2, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def test_nnunet_raw_folder_with_two_channels(tmp_path):
    manifest = load_manifest(_nnunet_folder(tmp_path / "Dataset004_Hippocampus"))
    assert manifest.class_names == ["background", "anterior", "posterior"]
    by_id = {c.case_id: c for c in manifest}
    assert sorted(by_id) == ["hippocampus_334", "hippocampus_335", "hippocampus_336"]
    assert [p.name for p in by_id["hippocampus_334"].image] == ["hippocampus_334_0000.nii.gz", "hippocampus_334_0001.nii.gz"]
    assert by_id["hippocampus_336"].split == "test" and by_id["hippocampus_336"].label is None
    image = load_image(by_id["hippocampus_334"].image)
    assert tuple(image.shape) == (2, 34, 47, 36)
    assert (image[0] == image[1]).all()


def test_nnunet_missing_channel_and_label_are_reported(tmp_path):
    root = _nnunet_folder(tmp_path / "ds")
    (root / "imagesTr" / "hippocampus_335_0000.nii.gz").unlink()
    (root / "labelsTr" / "hippocampus_334.nii.gz").unlink()
    _, problems = read_manifest(root)
    text = "\n".join(map(str, problems))
    assert "case hippocampus_335" in text and "channels [1] are not numbered 0..0" in text
    assert "case hippocampus_334" in text and "no label labelsTr/hippocampus_334.nii.gz" in text


def test_csv_header_errors_name_the_columns(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("case_id,imgae,label\na,b,c\n")
    with pytest.raises(DataError) as err:
        load_manifest(bad)
    message = str(err.value)
    assert "missing column(s) image" in message and "unknown column(s) imgae" in message and str(bad) in message


def test_row_problems_are_all_collected(tmp_path):
    image, label = copy_case("hippocampus_334", tmp_path)
    rows = [
        {"case_id": "a", "image": image.name, "label": label.name, "split": "training"},
        {"case_id": "a", "image": image.name, "label": label.name},
        {"case_id": "", "image": image.name},
        {"case_id": "p1", "image": image.name, "label": label.name, "split": "train", "patient_id": "X"},
        {"case_id": "p2", "image": image.name, "label": label.name, "split": "val", "patient_id": "X"},
    ]
    _, problems = read_manifest(write_csv(tmp_path / "m.csv", rows))
    text = [str(p) for p in problems]
    assert any("'training' is not one of train, val, test" in t and "m.csv:2" in t for t in text)
    assert any("case a:" in t and "duplicate case_id" in t for t in text)
    assert any("empty case_id or image" in t and "m.csv:4" in t for t in text)
    assert any("several splits (train: p1; val: p2)" in t for t in text)
    assert not any("X" in t.split("Fix:")[0].replace("ERROR", "") for t in text)  # patient ids are not printed
    assert any(p.severity == "warning" and "no label classes declared" in str(p) for p in problems)
    with pytest.raises(MedftError, match="4 problem"):
        load_manifest(tmp_path / "m.csv")


@pytest.mark.parametrize("case_id, reason", [
    ("../../escaped", "holds a path separator"),
    ("sub/dir", "holds a path separator"),
    ("sub\\dir", "holds a path separator"),
    (".", "starts with '.'"),
    ("..", "starts with '.'"),
    (".hidden", "starts with '.'"),
    ("a\tb", "holds a control character"),
    ("a\x1bb", "holds a control character"),
    ("", "is empty"),
])
def test_unsafe_case_ids_are_named_with_the_reason(case_id, reason):
    assert reason in case_id_problem(case_id)


@pytest.mark.parametrize("case_id", ["hippocampus_334", "case.1", "Patient 7-b", "étude_ü"])
def test_safe_case_ids_pass(case_id):
    assert case_id_problem(case_id) is None


def test_an_unsafe_csv_case_id_is_one_problem_and_loading_refuses(tmp_path):
    image, label = copy_case("hippocampus_334", tmp_path)
    other, other_label = copy_case("hippocampus_335", tmp_path)
    rows = [{"case_id": "../../escaped", "image": image.name, "label": label.name},
            {"case_id": "sub/dir", "image": "missing.nii.gz"},
            {"case_id": "ok", "image": other.name, "label": other_label.name}]
    manifest = write_csv(tmp_path / "m.csv", rows, classes={"0": "background", "1": "a", "2": "b"})
    _, problems = read_manifest(manifest)
    assert [str(p) for p in problems] == [
        f"ERROR {manifest}: case_id {case_id!r} cannot name the case's output files: it holds a path "
        "separator ('/' or '\\'). Fix: change the case_id in the manifest; use letters, digits, '-', '_' and '.' "
        "(not first)"
        for case_id in ("../../escaped", "sub/dir")
    ]
    with pytest.raises(MedftError, match="2 problem"):
        load_manifest(manifest)


def test_an_unsafe_msd_case_id_is_refused(tmp_path):
    image, label = copy_case("hippocampus_334", tmp_path)
    hidden = image.rename(tmp_path / ".hidden.nii.gz")
    spec = {"labels": {"0": "background", "1": "a", "2": "b"}, "training": [{"image": hidden.name, "label": label.name}]}
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(MedftError, match=r"ERROR \S*\.hidden\.nii\.gz: case_id '\.hidden' cannot name .* it starts with '\.'\. "
                       r"Fix: rename the case's image and label files"):
        load_manifest(tmp_path / "dataset.json")


def test_an_unsafe_nnunet_case_id_is_refused(tmp_path):
    root = _nnunet_folder(tmp_path / "ds")
    for channel in ("0000", "0001"):
        (root / "imagesTr" / f"hippocampus_334_{channel}.nii.gz").rename(root / "imagesTr" / f"..._{channel}.nii.gz")
    (root / "labelsTr" / "hippocampus_334.nii.gz").rename(root / "labelsTr" / "....nii.gz")
    with pytest.raises(MedftError, match=r"(?s)1 problem.*ERROR \S*/imagesTr/\.\.\._0000\.nii\.gz: case_id '\.\.\.' cannot name .* it "
                       r"starts with '\.'"):
        load_manifest(root)


def test_a_csv_with_only_the_header_is_an_error(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", [])
    _, problems = read_manifest(manifest)
    assert [str(p) for p in problems] == [
        f"ERROR {manifest}: the manifest has a header but no cases. "
        "Fix: add one row per case: case_id,image,label,split,site,patient_id"
    ]
    with pytest.raises(MedftError, match="1 problem"):
        load_manifest(manifest)


def test_an_msd_dataset_json_without_entries_is_an_error(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background"}, "training": [], "test": []}))
    with pytest.raises(MedftError, match=r"lists no cases .* Fix: add one \{\"image\": \.\.\., \"label\": \.\.\.\} entry per case"):
        load_manifest(tmp_path / "dataset.json")


def test_an_nnunet_folder_without_images_is_an_error(tmp_path):
    root = _nnunet_folder(tmp_path / "ds")
    for folder in ("imagesTr", "imagesTs"):
        shutil.rmtree(root / folder)
    (root / "imagesTr").mkdir()
    with pytest.raises(MedftError, match=r"no images in imagesTr/ or imagesTs/ \(looked for \*\.nii\.gz\)"):
        load_manifest(root)


def test_a_folder_with_an_msd_dataset_json_is_read_as_that_json():
    from_folder, problems = read_manifest(SAMPLE / "hippocampus")
    from_json, _ = read_manifest(SAMPLE / "hippocampus" / "dataset.json")
    assert problems == []
    assert from_folder.path == SAMPLE / "hippocampus" / "dataset.json"
    assert from_folder.cases == from_json.cases and from_folder.class_names == from_json.class_names


def test_an_nnunet_v1_folder_with_an_msd_style_dataset_json_stays_nnunet(tmp_path):
    """nnU-Net v1 wrote MSD's format, naming the images without the _0000 that their files carry."""
    root = _nnunet_folder(tmp_path / "Task004_Hippocampus")
    spec = {"modality": {"0": "T1", "1": "T1 copy"}, "labels": {"0": "background", "1": "anterior", "2": "posterior"},
            "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                         for c in ("hippocampus_334", "hippocampus_335")],
            "test": ["./imagesTs/hippocampus_336.nii.gz"]}
    (root / "dataset.json").write_text(json.dumps(spec))
    manifest, problems = read_manifest(root)
    assert problems == []
    assert [len(c.image) for c in manifest] == [2, 2, 2]
    assert [c.case_id for c in manifest] == ["hippocampus_334", "hippocampus_335", "hippocampus_336"]


# --- CSV files as spreadsheets and other tools save them ---------------------------------------


def test_a_spreadsheet_csv_with_bom_crlf_quoted_commas_trailing_comma_and_blank_rows_reads(tmp_path):
    """Excel's "CSV UTF-8": a byte order mark, CRLF line ends, a trailing comma on every line and
    ",,,,,," rows below the data; a path holding a comma is quoted."""
    folder = tmp_path / "scans, site A"
    image, label = copy_case("hippocampus_334", folder)
    header = "case_id,image,label,split,site,patient_id,"
    row = f'a,"{folder.name}/{image.name}","{folder.name}/{label.name}",train,north,,'
    (tmp_path / "m.csv").write_bytes(("\ufeff" + "\r\n".join([header, row, ",,,,,,", ",,,,,,", ""])).encode("utf-8"))
    manifest, problems = read_manifest(tmp_path / "m.csv")
    assert [str(p) for p in problems if p.severity == "error"] == []
    (case,) = manifest.cases
    assert (case.case_id, case.image, case.label, case.split, case.site) == ("a", (image.resolve(),), label.resolve(), "train", "north")


def test_a_repeated_column_is_refused_naming_it(tmp_path):
    image, label = copy_case("hippocampus_334", tmp_path)
    (tmp_path / "m.csv").write_text(f"case_id,image,label,label\na,{image.name},{label.name},{image.name}\n")
    with pytest.raises(DataError, match=r"m\.csv: column\(s\) label appear more than once.*Fix: keep one column of each name"):
        read_manifest(tmp_path / "m.csv")


def test_an_unnamed_column_with_values_is_refused(tmp_path):
    image, label = copy_case("hippocampus_334", tmp_path)
    (tmp_path / "m.csv").write_text(f"case_id,image,label,\na,{image.name},{label.name},oops\n")
    with pytest.raises(DataError, match=r"column 4 has no name in the header but holds a value on line 2"):
        read_manifest(tmp_path / "m.csv")


def test_an_unquoted_comma_in_a_path_is_named_with_the_fix(tmp_path):
    image, label = copy_case("hippocampus_334", tmp_path)
    (tmp_path / "m.csv").write_text(f"case_id,image,label,split\na,/data/a,b/{image.name},{label.name},train\n")
    _, problems = read_manifest(tmp_path / "m.csv")
    (problem,) = [p for p in problems if p.severity == "error"]
    assert (problem.case_id, problem.file) == ("a", f"{tmp_path / 'm.csv'}:2")
    assert "the row has 5 values but the header has 4 columns" in problem.problem and "double quotes" in problem.fix


def test_an_unquoted_comma_is_named_when_the_last_columns_are_empty(tmp_path):
    """The shifted values leave only an empty cell past the header; the row's length gives it away."""
    image, label = copy_case("hippocampus_334", tmp_path)
    rows = [f"b,{image.name},{label.name},train,", f"a,/data/a,b/{image.name},{label.name},,"]
    (tmp_path / "m.csv").write_text("\n".join(["case_id,image,label,split,site", *rows, ""]))
    _, problems = read_manifest(tmp_path / "m.csv")
    (problem,) = [p for p in problems if p.severity == "error"]
    assert (problem.case_id, problem.file) == ("a", f"{tmp_path / 'm.csv'}:3")
    assert "the row has 6 values but the header has 5 columns" in problem.problem and "double quotes" in problem.fix
    # a trailing comma on every row, though not on the header, is no shift
    rows = [f"{case_id},{image.name},{label.name},train,north," for case_id in "ab"]
    (tmp_path / "m.csv").write_text("\n".join(["case_id,image,label,split,site", *rows, ""]))
    manifest, problems = read_manifest(tmp_path / "m.csv")
    assert [p for p in problems if p.severity == "error"] == [] and [c.site for c in manifest] == ["north", "north"]


def test_a_semicolon_separated_file_is_named_as_such(tmp_path):
    (tmp_path / "m.csv").write_text("case_id;image;label;split\na;x.nii.gz;y.nii.gz;train\n")
    with pytest.raises(DataError, match=r"Fix: save the file with commas between the columns, not ';'"):
        read_manifest(tmp_path / "m.csv")


def test_an_upper_case_csv_suffix_is_a_csv(tmp_path):
    image, label = copy_case("hippocampus_334", tmp_path)
    write_csv(tmp_path / "m.csv", [{"case_id": "a", "image": image.name, "label": label.name}]).rename(tmp_path / "M.CSV")
    manifest, _ = read_manifest(tmp_path / "M.CSV")
    assert [c.case_id for c in manifest] == ["a"]


# --- dataset.json variants ---------------------------------------------------------------------


def _msd(tmp_path: Path, **spec) -> Path:
    image, label = copy_case("hippocampus_334", tmp_path)
    body = {"labels": {"0": "background", "1": "a"}, "training": [{"image": image.name, "label": label.name}], **spec}
    (tmp_path / "dataset.json").write_text(json.dumps(body))
    return tmp_path / "dataset.json"


def test_a_dataset_json_with_a_byte_order_mark_reads(tmp_path):
    path = _msd(tmp_path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    manifest, problems = read_manifest(path)
    assert problems == [] and [c.case_id for c in manifest] == ["hippocampus_334_img"]


def test_a_dataset_json_or_class_file_not_in_utf8_is_a_clear_error(tmp_path):
    path = _msd(tmp_path)
    path.write_bytes(path.read_bytes().replace(b'"a"', '"antérieur"'.encode("latin-1")))
    with pytest.raises(DataError, match=r"dataset\.json: cannot read the dataset\.json: not UTF-8 text .*Fix: save it as UTF-8"):
        read_manifest(path)
    image, label = copy_case("hippocampus_334", tmp_path / "csv")
    csv_path = write_csv(tmp_path / "csv" / "m.csv", [{"case_id": "a", "image": image.name, "label": label.name}])
    (tmp_path / "csv" / "m.classes.json").write_bytes('{"0": "background", "1": "antérieur"}'.encode("latin-1"))
    _, problems = read_manifest(csv_path)
    assert any("m.classes.json" in str(p.file) and "not UTF-8 text" in p.problem and p.fix == "save it as UTF-8" for p in problems)


def test_a_dataset_json_whose_test_entry_is_no_list_is_a_problem_not_a_traceback(tmp_path):
    manifest, problems = read_manifest(_msd(tmp_path, test="imagesTs/x.nii.gz"))
    assert [c.case_id for c in manifest] == ["hippocampus_334_img"]
    assert [p.problem for p in problems] == ["its 'test' entry is a str, not a list of images"]
    manifest, problems = read_manifest(_msd(tmp_path / "null", test=None))
    assert problems == [] and len(manifest) == 1


def test_a_datalist_entry_with_one_file_per_channel_is_a_multichannel_case(tmp_path):
    image, label = copy_case("hippocampus_334", tmp_path)
    second = tmp_path / "t2.nii.gz"
    shutil.copyfile(image, second)
    spec = {"labels": {"0": "background", "1": "a"}, "training": [{"image": [image.name, second.name], "label": label.name}]}
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    manifest, problems = read_manifest(tmp_path)  # the folder: its dataset.json lists existing images
    assert problems == []
    assert manifest.cases[0].image == (image.resolve(), second.resolve())


def test_an_nnunet_dataset_json_given_as_the_manifest_reads_its_folder(tmp_path):
    root = _nnunet_folder(tmp_path / "Dataset004_Hippocampus")
    from_json, problems = read_manifest(root / "dataset.json")
    from_folder, _ = read_manifest(root)
    assert problems == []
    assert from_json.cases == from_folder.cases and from_json.class_names == ["background", "anterior", "posterior"]


def test_one_image_under_two_case_ids_is_named(tmp_path):
    """Listed once for training and once for validation, it made the validation Dice a training score."""
    image, label = copy_case("hippocampus_334", tmp_path)
    rows = [f"c334,{image.name},{label.name},train", f"copy334,{image.name},{label.name},val"]
    (tmp_path / "m.csv").write_text("\n".join(["case_id,image,label,split", *rows, ""]))
    _, problems = read_manifest(tmp_path / "m.csv")
    (problem,) = [p for p in problems if "the same image" in p.problem]
    assert (problem.case_id, problem.severity) == ("copy334", "warning")
    assert f"the same image as case c334 ({image.resolve()}): in two splits, the validation" in problem.problem
    assert problem.fix == "list each image once, under one case_id"


def test_classes_file_gives_aliases_and_codes_for_dicom_segments(tmp_path):
    image, label = copy_case("hippocampus_334", tmp_path)
    code = {"value": "5976007", "scheme": "SCT", "meaning": "Hippocampus"}
    manifest = write_csv(tmp_path / "m.csv", [{"case_id": "a", "image": image, "label": label}], classes={
        "0": "background", "1": {"name": "anterior", "aliases": ["Hippocampus anterior", "HIPPO_ANT"], "code": code},
        "2": "posterior"})
    loaded = load_manifest(manifest)
    assert loaded.class_names == ["background", "anterior", "posterior"]
    assert loaded.segment_names == {1: ("anterior", "Hippocampus anterior", "HIPPO_ANT"), 2: ("posterior",)}
    assert loaded.classes[1].code == code and loaded.classes[2].code is None


@pytest.mark.parametrize(("entry", "message", "fix"), [
    ({"aliases": ["x"]}, "class '1' has no name", '{"name": "anterior", "aliases": ['),
    ({"name": "anterior", "alias": ["x"]}, "unknown key(s) 'alias'", '{"name": "anterior", "aliases": ['),
    ({"name": "anterior", "aliases": "Hippocampus anterior"}, "aliases must be a list of names", '"aliases": ["name 1"'),
    ({"name": "anterior", "code": {"value": "5976007"}}, "its code {'value': '5976007'} is not a coded concept",
     '"code": {"value": "...", "scheme": "SCT", "meaning": "..."}'),
    ({"name": "anterior", "aliases": [" POSTERIOR "]}, "the name 'posterior' is given to classes 1 and 2",
     "give each class its own names and aliases"),
])
def test_a_malformed_class_entry_is_named_with_the_form_to_use(tmp_path, entry, message, fix):
    image, label = copy_case("hippocampus_334", tmp_path)
    manifest = write_csv(tmp_path / "m.csv", [{"case_id": "a", "image": image, "label": label}],
                         classes={"0": "background", "2": "posterior", "1": entry})
    problems = read_manifest(manifest)[1]
    errors = [p for p in problems if p.severity == "error"]
    assert len(errors) == 1 and message in errors[0].problem, [str(p) for p in problems]
    assert errors[0].file == tmp_path / "m.classes.json" and fix in errors[0].fix
