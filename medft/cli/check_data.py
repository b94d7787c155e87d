"""check a manifest and its files before training

Reads every case of a manifest (CSV, MSD dataset.json or nnU-Net raw folder) and prints one line
per problem: the case, the file, what is wrong and how to fix it. Exit 0 when clean (warnings
allowed), 1 when there are errors, 2 for a usage error. Without errors, an INFO line gives the
data's size in memory once preprocessed (estimated from the headers; with --config, after the
run's resampling) and how much of it the default cache budget keeps in memory.

example:
  medft check-data data_manifests/hippocampus_sample.csv
"""
from __future__ import annotations

from pathlib import Path

from medft.cli.common import add_command, count


def add_to(commands) -> None:
    command = add_command(commands, "check-data", __doc__, run)
    command.add_argument("manifest", type=Path, help="CSV manifest, MSD dataset.json or nnU-Net raw folder")
    command.add_argument("--workers", type=count, default=None, help="volumes read in parallel (default: CPU count, at most 8)")
    command.add_argument("--config", type=Path, default=None,
                         help="a run config: estimate the size after its preprocessing (default: as the files are, "
                              "without resampling)")


def run(manifest: Path, workers: int | None = None, config: Path | None = None) -> int:
    """Print each problem and the count, then the size estimate; 1 when there is an error."""
    from medft.data.checks import check_manifest

    problems = check_manifest(manifest, workers=workers)
    for problem in problems:
        print(problem)
    errors = sum(p.severity == "error" for p in problems)
    if not errors:
        print(f"INFO {_size_report(manifest, config)}")
    print(f"{manifest}: {errors} error(s), {len(problems) - errors} warning(s)")
    return 1 if errors else 0


def _size_report(manifest: Path, config: Path | None) -> str:
    """The cases' size once preprocessed and what the default memory budget of the cache does with them."""
    from medft.data.footprint import estimate_sizes
    from medft.data.manifest import load_manifest
    from medft.data.preprocessing import Preprocessing
    from medft.train.cache import cases_in_memory, memory_budget, size

    loaded = load_manifest(manifest)
    cases = loaded.records(None)
    if config is None:
        preprocessing, how = Preprocessing.medft(None), "as the files are"
    else:
        from medft.config import load_config
        from medft.train.preprocessing import resolve_spacing, run_preprocessing

        run_config = load_config(config)
        resolve_spacing(run_config)
        preprocessing, how = run_preprocessing(run_config), f"after the preprocessing of {config}"
    classes = max(2, len(loaded.class_names))
    sizes = estimate_sizes(cases, preprocessing, classes)
    budget = memory_budget(None)
    fits = cases_in_memory(sizes, budget)
    held = "all of them" if fits == len(cases) else f"{fits} of them, the other {len(cases) - fits} on disk"
    return (f"{len(cases)} case(s), about {size(sum(sizes))} in memory {how} (float32 images, labels as bytes); "
            f"the default cache budget ({size(budget)}, half of the memory available now) keeps {held}")
