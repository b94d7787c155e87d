"""No path reaches a page people read: a folder or file name may be a patient's name."""
from medft.evaluate.hidden_paths import hide_paths


def test_known_paths_with_spaces_and_other_absolute_paths_are_hidden():
    known = ["/data/Doe John/t1 scan.nii.gz", None, "relative/label.nii.gz"]
    text = ("/data/Doe John/t1 scan.nii.gz: cannot be read; see /data/Doe John/other file.nii.gz, "
            "C:\\scans\\Smith\\a.dcm and /tmp/x.csv; /elsewhere/Jane Doe.nii.gz, /elsewhere/Roe Ann/scan 1.dcm")
    assert hide_paths(text, known) == "[path]: cannot be read; see [path], [path] and [path]; [path], [path]"


def test_text_that_only_looks_like_a_path_is_kept():
    for text in ("Dice 1/2 of the cases", "and/or", "0.5 mm / 1.0 mm", "relative/label.nii.gz is missing"):
        assert hide_paths(text, ["relative/label.nii.gz"]) == text
