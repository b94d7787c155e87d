"""Write the benchmark manifests ``data_manifests/bench_*.csv`` (and their ``.classes.json``).

Run: ``.venv/bin/python benchmarks/make_manifests.py`` (needs the development data in ../shared/data).

The split (``benchmarks/common.py``, ``bench_split``, seed ``SPLIT_SEED``) uses only the 100
hippocampus cases that did not pretrain the demo bundle (the bundle's metadata lists those):

- ``bench_val.csv``: the 30 validation cases of every site-A benchmark (split ``val``);
- ``bench_train{5,10,20,50}.csv``: nested training sets (5 of the 10, 10 of the 20, 20 of the
  50) plus the same 30 validation cases;
- ``bench_site_b_source.csv``: the 20 held-back cases (split ``train``) and the 30 validation
  cases (split ``val``), site ``B``: ``benchmarks/domain_shift.py`` writes shifted copies of
  these files under its output folder and a manifest of its own for them.

It also writes ``hippocampus_fold{0..4}.csv``: the 200 cases in five cross-validation folds of
40 (``common.cv_folds``, fold k is split ``val``, the rest ``train``), used by the accuracy
recipe (configs/hippocampus.yaml, benchmarks/hippocampus_recipe.py), which trains from random
weights and so may validate on the bundle's pretraining cases.
"""
from __future__ import annotations

import sys

from common import (
    MANIFESTS,
    bench_split,
    check_manifests,
    cv_folds,
    fold_rows,
    manifest_rows,
    pretraining_cases,
    write_manifest,
)


def main() -> int:
    split = bench_split()
    for name, rows in manifest_rows(split).items():
        print("wrote", write_manifest(MANIFESTS / f"{name}.csv", rows).relative_to(MANIFESTS.parent))
    for name, rows in fold_rows(cv_folds()).items():
        print("wrote", write_manifest(MANIFESTS / f"{name}.csv", rows).relative_to(MANIFESTS.parent))
    check_manifests()
    used = set(split["val"]) | set(split["train_pool"]) | set(split["site_b"])
    print(f"{len(used)} cases used, none of the {len(pretraining_cases())} pretraining cases among them: "
          f"{not (used & pretraining_cases())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
