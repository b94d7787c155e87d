"""A stress folder's files, declared once: ``stress.csv`` (one row per case, perturbation, level and class),
``stress.json`` (what ran, and the summary) and ``stress.html``; one writer and one reader each."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from medft.errors import DataError, MedftError
from medft.evaluate.summary import COUNTS, METRICS, format_float, parse_float

STRESS_CSV = "stress.csv"
STRESS_JSON = "stress.json"
STRESS_HTML = "stress.html"
UNPERTURBED = "none"  # the perturbation of level 0: the case as it is, what ``medft evaluate`` scores
COLUMNS = ("case_id", "site", "perturbation", "level", "class_index", "class_name", *METRICS, *COUNTS)


def write_rows(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([row["case_id"], row["site"] or "", row["perturbation"], row["level"], row["class_index"],
                             row["class_name"], *(format_float(row[m]) for m in METRICS), *(row[k] for k in COUNTS)])
    return path


def read_rows(path: Path) -> list[dict]:
    """stress.csv as rows: ids and names as strings, level, class index and counts as int, metrics as float (NaN
    when empty)."""
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise DataError(f"its columns are not those of {STRESS_CSV}", "give a folder that `medft stress` wrote",
                            file=path)
        try:
            return [{**row, "level": int(row["level"]), "class_index": int(row["class_index"]),
                     **{m: parse_float(row[m]) for m in METRICS}, **{k: int(row[k]) for k in COUNTS}}
                    for row in reader]
        except (TypeError, ValueError) as exc:
            raise DataError(f"a value is not a number ({exc})", "give a folder that `medft stress` wrote",
                            file=path) from None


def write_stress(folder: Path, stress: dict) -> Path:
    path = folder / STRESS_JSON
    path.write_text(json.dumps(stress, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return path


def read_stress_folder(folder: Path) -> tuple[dict, list[dict]]:
    """A stress folder's stress.json and stress.csv rows; MedftError naming the folder when it is not one."""
    folder = Path(folder)
    if not (folder / STRESS_JSON).is_file() or not (folder / STRESS_CSV).is_file():
        raise MedftError(f"{folder}: not a stress folder ({STRESS_JSON} and {STRESS_CSV}). Fix: give a folder that "
                         "`medft stress` wrote")
    try:
        stress = json.loads((folder / STRESS_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MedftError(f"{folder / STRESS_JSON}: not readable as JSON ({exc}). Fix: give a folder that "
                         "`medft stress` wrote, whole") from None
    return stress, read_rows(folder / STRESS_CSV)
