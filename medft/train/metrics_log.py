"""A run's ``metrics.jsonl``: one JSON object per epoch, appended as the run goes."""
from __future__ import annotations

import json
from pathlib import Path

from medft.errors import MedftError


def read_metrics(path: Path) -> list[dict]:
    """The epoch records of ``path`` ([] when there is no such file). A last line cut short (a kill or a
    full disk while it was appended) is left out; a damaged line before it is a MedftError."""
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        record = _epoch_record(line)
        if record is not None:
            records.append(record)
        elif number < len(lines) and line.strip():
            raise MedftError(f"{path}, line {number}: not an epoch's record (a JSON object with an \"epoch\" number): "
                             f"{line[:80]!r}. Fix: repair or delete that line (each line holds one epoch, as "
                             "`medft train` wrote it)")
    return records


def _epoch_record(line: str) -> dict | None:
    """``line`` as an epoch's record, or None when it is not one (damaged, cut short)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("epoch"), int) else None
