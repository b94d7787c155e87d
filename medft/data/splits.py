"""Deterministic train/val/test splits that keep each patient's cases together."""
from __future__ import annotations

import random
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medft.data.manifest import Case

SPLITS = ("train", "val", "test")


def assign_splits(cases: list[Case], val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0) -> list[Case]:
    """Give a split to every case that has none; cases that have one keep it.

    Unlabelled cases go to test, and so do the other cases of their patient (a patient never lands in
    two splits). Labelled cases are grouped by patient (``Case.group``); a group that already has
    a split elsewhere in the manifest joins it. The remaining groups are shuffled with a fixed
    seed (from their sorted keys, so file order does not matter) and cut into val, test and train
    by the fractions, keeping at least one val group when there are two groups or more.

    An unlabelled case whose patient has cases given train or val still goes to test (it cannot be
    trained on): ``read_manifest`` warns about it.
    """
    known = {c.group: c.split for c in cases if c.split}
    with_unlabelled = {c.group for c in cases if not c.split and c.label is None and c.group not in known}
    free = sorted({c.group for c in cases if not c.split and c.label is not None and c.group not in known
                   and c.group not in with_unlabelled})
    random.Random(seed).shuffle(free)
    n_val = round(len(free) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(free) >= 2:
        n_val = 1
    n_test = round(len(free) * test_fraction)
    chosen = {g: "val" for g in free[:n_val]}
    chosen.update({g: "test" for g in free[n_val : n_val + n_test]})
    result = []
    for case in cases:
        if case.split:
            result.append(case)
        elif case.label is None or case.group in with_unlabelled:
            result.append(replace(case, split="test"))
        else:
            result.append(replace(case, split=known.get(case.group) or chosen.get(case.group, "train")))
    return result
