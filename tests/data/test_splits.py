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
