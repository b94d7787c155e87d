import random
from collections import defaultdict
from pathlib import Path

from medft.data.manifest import Case
from medft.data.splits import assign_splits


def _cases(n_patients: int, per_patient: int) -> list[Case]:
    return [
        Case(f"c{p}_{k}", (Path(f"/x/c{p}_{k}.nii.gz"),), Path(f"/x/s{p}_{k}.nii.gz"), patient_id=f"P{p}")
        for p in range(n_patients)
        for k in range(per_patient)
    ]


def test_patients_never_span_two_splits_and_fractions_hold():
    cases = assign_splits(_cases(20, 3), val_fraction=0.2, test_fraction=0.1)
    splits_of = defaultdict(set)
    for case in cases:
        splits_of[case.patient_id].add(case.split)
    assert all(len(s) == 1 for s in splits_of.values())
    per_split = defaultdict(int)
    for splits in splits_of.values():
        per_split[splits.pop()] += 1
    assert dict(per_split) == {"train": 14, "val": 4, "test": 2}


def test_splits_do_not_depend_on_row_order():
    cases = _cases(15, 2)
    shuffled = cases[:]
    random.Random(3).shuffle(shuffled)
    by_id = {c.case_id: c.split for c in assign_splits(cases)}
    assert by_id == {c.case_id: c.split for c in assign_splits(shuffled)}
    assert {c.case_id: c.split for c in assign_splits(cases, seed=1)} != by_id


def test_given_splits_are_kept_and_a_patient_follows_its_split():
    cases = _cases(10, 2)
    cases[0] = Case(**{**cases[0].__dict__, "split": "test"})  # patient P0 is in test
    result = {c.case_id: c.split for c in assign_splits(cases)}
    assert result["c0_0"] == "test" and result["c0_1"] == "test"


def test_unlabelled_cases_go_to_test_and_small_sets_keep_one_val():
    unlabelled = Case("u", (Path("/x/u.nii.gz"),))
    cases = assign_splits(_cases(2, 1) + [unlabelled], val_fraction=0.2)
    assert [c.split for c in cases].count("val") == 1
    assert cases[-1].split == "test"


def test_an_unlabelled_case_takes_its_patient_to_test_whole():
    """A patient's unlabelled case can only be a test case: its labelled cases go to test with it, not to
    train or val (where the model would have seen the patient whose prediction is then reviewed)."""
    cases = _cases(10, 3)
    for p in (0, 4, 7):
        cases[3 * p] = Case(**{**cases[3 * p].__dict__, "label": None})
    result = assign_splits(cases)
    splits_of = defaultdict(set)
    for case in result:
        splits_of[case.patient_id].add(case.split)
    assert all(len(s) == 1 for s in splits_of.values())
    assert {p for p, s in splits_of.items() if s == {"test"}} == {"P0", "P4", "P7"}
    assert {c.case_id: c.split for c in assign_splits(list(reversed(cases)))} == {c.case_id: c.split for c in result}


def test_an_unlabelled_case_of_a_patient_given_train_is_a_warning(tmp_path, caplog):
    """check-data lists it; train and evaluate (load_manifest) log it."""
    from medft.data.manifest import load_manifest, read_manifest
    from tests.conftest import copy_case, write_csv

    image, label = copy_case("hippocampus_334", tmp_path)
    follow_up, _ = copy_case("hippocampus_335", tmp_path)
    rows = [{"case_id": "base", "image": image.name, "label": label.name, "split": "train", "patient_id": "Doe^Jane"},
            {"case_id": "follow_up", "image": follow_up.name, "patient_id": "Doe^Jane"}]
    path = write_csv(tmp_path / "m.csv", rows, classes={"0": "background", "1": "a", "2": "b"})
    manifest, problems = read_manifest(path)
    assert [c.split for c in manifest] == ["train", "test"]
    (problem,) = problems
    assert (problem.severity, problem.case_id) == ("warning", "follow_up")
    assert "its patient's other cases are in train" in problem.problem and "Doe" not in str(problem)
    with caplog.at_level("WARNING", logger="medft"):
        assert [c.split for c in load_manifest(path)] == ["train", "test"]
    assert [r.getMessage() for r in caplog.records] == [str(problem)]
