"""Errors meant for people: each names the file, the problem and the fix."""
from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

# The errno of a write that failed because the disk, or the user's quota on it, is full (Windows has no EDQUOT).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


class MedftError(Exception):
    """An error the command line prints as one line, without a traceback.

    ``public`` is its message as medft writes it into files (evaluation.json, report.html, the
    review app, trials.csv, train.log): without the identifying particulars (DICOM UIDs, series
    descriptions, slice file names) that the console shows to the user running the command.
    """

    def __init__(self, *args, public: str | None = None):
        super().__init__(*args)
        self._public = public

    @property
    def public(self) -> str:
        return str(self) if self._public is None else self._public


@dataclass
class Problem:
    """One thing wrong with the input, as check-data reports it."""

    problem: str
    fix: str
    file: Path | str | None = None
    case_id: str | None = None
    severity: str = "error"  # "error" or "warning"
    detail: str = ""  # identifying particulars (DICOM UIDs, series descriptions, slice file names): console only

    def __str__(self) -> str:
        return self._line(public=False)

    @property
    def public(self) -> str:
        """The line without ``detail``, as medft writes it into files."""
        return self._line(public=True)

    def without_case(self, public: bool = False) -> str:
        """The file, the problem and the fix, without severity and case: for a line already about the case."""
        problem = f"{self.problem} ({self.detail})" if self.detail and not public else self.problem
        where = f"{self.file}: " if self.file else ""
        return f"{where}{problem}. Fix: {self.fix}"

    def _line(self, public: bool) -> str:
        case = f"case {_printable(self.case_id)}: " if self.case_id else ""
        return f"{self.severity.upper()} {case}{self.without_case(public)}"


def _printable(text: str) -> str:
    """``text`` as is, or quoted with its control characters escaped (a terminal would act on them)."""
    return text if text.isprintable() else repr(text)


class DataError(MedftError):
    """Bad input data: carries the Problem that describes it."""

    def __init__(self, problem: str, fix: str, file: Path | str | None = None, case_id: str | None = None,
                 detail: str = ""):
        self.details = Problem(problem=problem, fix=fix, file=file, case_id=case_id, detail=detail)
        super().__init__(str(self.details))

    @property
    def public(self) -> str:
        return self.details.public

    def with_case(self, case_id: str) -> DataError:
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


def one_line(error: BaseException) -> str:
    """``Type: first line of the message``, for errors passed on to people."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(":. ")
