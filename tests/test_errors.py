from medft.errors import DataError, MedftError, Problem


def test_a_problem_line_names_case_file_problem_and_fix():
    line = str(Problem("label missing", "give the label", file="a/b.nii.gz", case_id="case_7"))
    assert line == "ERROR case case_7: a/b.nii.gz: label missing. Fix: give the label"


def test_a_case_id_with_control_characters_is_shown_escaped():
    line = str(Problem("no such file", "give the file", case_id="evil\x1b[2J"))
    assert "\x1b" not in line and "case 'evil\\x1b[2J':" in line


def test_the_detail_is_shown_on_the_console_and_left_out_of_the_public_form():
    error = DataError("holds 2 DICOM series", "give series_uid", file="a/ct", case_id="c7", detail="uid=1.2.3 'T1'")
    assert str(error) == "ERROR case c7: a/ct: holds 2 DICOM series (uid=1.2.3 'T1'). Fix: give series_uid"
    assert error.public == "ERROR case c7: a/ct: holds 2 DICOM series. Fix: give series_uid"
    assert MedftError("in full", public="short").public == "short" and MedftError("plain").public == "plain"
