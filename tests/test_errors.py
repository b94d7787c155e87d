from medft.errors import Problem


def test_a_problem_line_names_case_file_problem_and_fix():
    line = str(Problem("label missing", "give the label", file="a/b.nii.gz", case_id="case_7"))
    assert line == "ERROR case case_7: a/b.nii.gz: label missing. Fix: give the label"


def test_a_case_id_with_control_characters_is_shown_escaped():
    line = str(Problem("no such file", "give the file", case_id="evil\x1b[2J"))
    assert "\x1b" not in line and "case 'evil\\x1b[2J':" in line
