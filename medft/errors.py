"""Errors meant for people: each names the file, the problem and the fix."""
from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

# The errno of a write that failed because the disk, or the user's quota on it, is full (Windows has no EDQUOT).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


class MedftError(Exception):
    """An error the command line prints as one line, without a traceback."""


@dataclass
class Problem:
    """One thing wrong with the input, as check-data reports it."""

    problem: str
    fix: str
    file: Path | str | None = None
    case_id: str | None = None
    severity: str = "error"  # "error" or "warning"

    def __str__(self) -> str:
        case = f"case {_printable(self.case_id)}: " if self.case_id else ""
        return f"{self.severity.upper()} {case}{self.without_case()}"

    def without_case(self) -> str:
        """The file, the problem and the fix, without severity and case: for a line already about the case."""
        where = f"{self.file}: " if self.file else ""
        return f"{where}{self.problem}. Fix: {self.fix}"


def _printable(text: str) -> str:
    """``text`` as is, or quoted with its control characters escaped (a terminal would act on them)."""
    return text if text.isprintable() else repr(text)


class DataError(MedftError):
    """Bad input data: carries the Problem that describes it."""

    def __init__(self, problem: str, fix: str, file: Path | str | None = None, case_id: str | None = None):
        self.details = Problem(problem=problem, fix=fix, file=file, case_id=case_id)
        super().__init__(str(self.details))

    def with_case(self, case_id: str) -> "DataError":
        self.details.case_id = case_id
        self.args = (str(self.details),)
        return self


def find_user_error(exc: BaseException) -> MedftError | None:
    """The MedftError behind ``exc``, if any: MONAI wraps errors raised inside transforms and
    datasets (``RuntimeError: applying transform ...``), hiding the message meant for people."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, MedftError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
