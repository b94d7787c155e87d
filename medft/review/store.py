"""The review store: clinicians' grades and comments, kept in a database next to the evaluation.

One row per submission, never updated in place: a clinician who changes a grade adds a row, and
the earlier grade stays in the history. "Current" means the latest row, where latest is the
highest ``id`` (the order in which the database accepted the submissions), never the clock:
two machines' clocks may disagree, ids may not.

By default the store is an SQLite file, ``<eval_dir>/reviews.sqlite``, opened so that several
reviewers can grade at the same time (WAL journal, a busy timeout so writers wait for each
other instead of failing) and so that a grade the app has acknowledged survives a killed
process or a power cut (``synchronous=FULL``: each commit is on disk before ``submit``
returns). Any other SQLAlchemy URL works too, for instance PostgreSQL for a team
(``postgresql+psycopg://user@host/medft_reviews``); the SQL here is plain SQLAlchemy Core,
and SQLite-only statements are confined to the SQLite setup.

Every row belongs to one evaluation: a store is opened for an ``evaluation_id`` (the one that
``medft evaluate`` writes into ``evaluation.json``; ``ReviewStore.for_eval_dir`` reads it from
there), writes it into every row it adds, and reads only the rows that carry it. So one database
can be shared by a team across evaluations: two models' predictions of the same cases get
separate grades, histories and exports, although their case ids are the same.

The store holds evaluation ids, case ids, reviewer usernames, grades and free-text comments.
Comments are written by clinicians and may name a patient: treat ``reviews.sqlite`` and its CSV
export like the evaluation's other files, and keep them where the images are allowed to be.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    select,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.types import TypeDecorator

from medft.atomic_files import atomic_write_text
from medft.errors import MedftError
from medft.formats import evaluation as evaluation_file
from medft.formats.evaluation import read_evaluation_file

GRADES: dict[int, str] = {
    1: "accept as is",
    2: "minor edits",
    3: "major edits",
    4: "reject",
    5: "image not assessable",
}

DEFAULT_DB_NAME = "reviews.sqlite"
SCHEMA_VERSION = 1
MAX_COMMENT_CHARS = 10_000
MAX_CASE_ID_CHARS = 256
MAX_EVALUATION_ID_CHARS = 64  # medft writes a uuid4 hex: 32 characters
MAX_REVIEWER_CHARS = 128
SQLITE_BUSY_TIMEOUT_MS = 30_000
EVALUATION_FILE = evaluation_file.FILE
# evaluation_id last: case_id stays the first column (the key that joins per_case.csv) and the
# other columns keep their places.
CSV_COLUMNS = ("case_id", "reviewer", "grade", "grade_label", "comment", "reviewed_at",
               "is_current", "evaluation_id")
# A spreadsheet treats a cell that opens with one of these as a formula (OWASP "CSV injection").
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Review:
    """One submission: a reviewer's grade of a case of one evaluation, with the time the store
    accepted it."""

    case_id: str
    reviewer: str
    grade: int
    comment: str
    reviewed_at: datetime  # timezone-aware, UTC
    id: int  # assigned by the database; a higher id is a later submission
    evaluation_id: str  # the evaluation whose prediction was graded (evaluation.json)

    @property
    def grade_label(self) -> str:
        return GRADES.get(self.grade, f"unknown grade {self.grade}")


class _UTCDateTime(TypeDecorator):
    """A datetime stored as UTC and always read back timezone-aware (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("reviewed_at must be timezone-aware")
        value = value.astimezone(timezone.utc)
        # PostgreSQL keeps the zone (timestamptz); elsewhere (SQLite, ...) the column holds
        # the UTC wall-clock digits and the zone is implied.
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


_metadata = MetaData()

_schema_version = Table(
    "schema_version",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1: one row
    Column("version", Integer, nullable=False),
    Column("updated_at", _UTCDateTime, nullable=False),
)

_reviews = Table(
    "reviews",
    _metadata,
    # AUTOINCREMENT on SQLite: ids only grow, even past deleted rows, so id order stays
    # submission order.
    Column("id", Integer, primary_key=True, autoincrement=True),
    # Every query filters on it: a store sees only the rows of its own evaluation.
    Column("evaluation_id", String(MAX_EVALUATION_ID_CHARS), nullable=False),
    Column("case_id", String(MAX_CASE_ID_CHARS), nullable=False),
    Column("reviewer", String(MAX_REVIEWER_CHARS), nullable=False),
    Column("grade", Integer, nullable=False),
    Column("comment", Text, nullable=False),
    Column("reviewed_at", _UTCDateTime, nullable=False),
    Index("ix_reviews_evaluation_case_reviewer", "evaluation_id", "case_id", "reviewer", "id"),
    Index("ix_reviews_evaluation_reviewer", "evaluation_id", "reviewer"),
    sqlite_autoincrement=True,
)


def _safe_url(url: str) -> str:
    """The URL without its password, fit for an error message."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return str(url)


def _setup_sqlite(engine: Engine) -> None:
    """SQLite only: WAL, synchronous=FULL (and F_FULLFSYNC on macOS), a busy timeout, and explicit
    transactions.

    Python's sqlite3 module opens transactions on its own schedule; here SQLAlchemy emits
    BEGIN itself, and a write opens with BEGIN IMMEDIATE: it takes the write lock first (waiting
    up to the busy timeout) so that two writers never both read and then both try to write.
    """
    locked_error = engine.dialect.loaded_dbapi.OperationalError

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we send BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            _switch_to_wal(cursor, locked_error)
            cursor.execute("PRAGMA synchronous = FULL")  # per connection
            cursor.execute("PRAGMA fullfsync = ON")  # macOS: fsync alone stops at the drive's cache
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("medft_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _switch_to_wal(cursor: Any, locked_error: type[Exception]) -> None:
    """``PRAGMA journal_mode = WAL``, retried for up to the busy timeout.

    The mode is kept in the file, so the pragma is a no-op once set. Switching a new file takes
    its exclusive lock, and while another connection holds the write lock (another process
    switching the same new file) SQLite answers "database is locked" at once instead of waiting
    out the busy timeout: it would deadlock otherwise. Waiting here, the other process finishes
    the switch, and the retry finds the file in WAL mode.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except locked_error as exc:
            if "database is locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.01)


class ReviewStore:
    """Grades and comments of clinicians, for one evaluation (``evaluation_id``).

    Submissions are stored with the evaluation id, and every query sees only the rows of that
    evaluation, so several evaluations may share one database.

    >>> with ReviewStore.for_eval_dir(Path("runs/demo/eval")) as store:   # doctest: +SKIP
    ...     store.submit("case_001", "alice", 2, "boundary off by a slice at the apex")
    ...     store.current("alice")["case_001"].grade
    2
    """

    def __init__(self, url: str, evaluation_id: str):
        self.evaluation_id = _check_name("evaluation_id", evaluation_id, MAX_EVALUATION_ID_CHARS)
        self.url = str(url)
        self._shown_url = _safe_url(self.url)
        try:
            parsed = make_url(self.url)
            self._is_sqlite = parsed.get_backend_name() == "sqlite"
            if self._is_sqlite and parsed.database and parsed.database != ":memory:":
                db_file = Path(parsed.database)
                if not db_file.parent.is_dir():
                    raise MedftError(
                        f"{db_file}: cannot create the review database, the folder "
                        f"{db_file.parent} does not exist. Fix: create the folder, or pass "
                        "the path of an existing evaluation directory"
                    )
            connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000} if self._is_sqlite else {}
            self._engine = create_engine(self.url, connect_args=connect_args)
        except (ArgumentError, NoSuchModuleError, ImportError, ValueError) as exc:
            raise MedftError(
                f"{self._shown_url}: not a usable database URL ({exc}). Fix: give an SQLAlchemy "
                "URL such as sqlite:///path/to/reviews.sqlite or "
                "postgresql+psycopg://user@host/dbname, with its driver installed"
            ) from exc
        if self._is_sqlite:
            _setup_sqlite(self._engine)
        self._opened_file: tuple[int, int] | None = None
        try:
            self._ensure_schema()
        except BaseException:
            self._engine.dispose()
            raise
        self._opened_file = self._file_identity()

    @classmethod
    def for_eval_dir(cls, eval_dir: Path | str, url: str | None = None) -> ReviewStore:
        """The store of an evaluation directory: in ``url``, or ``<eval_dir>/reviews.sqlite``,
        for the evaluation id of ``<eval_dir>/evaluation.json`` (see ``evaluation_id_of``)."""
        eval_dir = Path(eval_dir)
        evaluation_id = evaluation_id_of(eval_dir)
        if url is not None:
            return cls(url, evaluation_id)
        return cls(f"sqlite:///{eval_dir.resolve() / DEFAULT_DB_NAME}", evaluation_id)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for inspection and tests; the methods below are the API)."""
        return self._engine

    def close(self) -> None:
        """Close every connection. Everything submitted is already committed."""
        self._engine.dispose()

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ReviewStore({self._shown_url!r}, evaluation_id={self.evaluation_id!r})"

    # -- writing -----------------------------------------------------------------------------

    def submit(self, case_id: str, reviewer: str, grade: int, comment: str | None = "") -> Review:
        """Record a grade of this evaluation's prediction of a case and return it; it is
        committed (on disk, for SQLite) on return.

        A second submission for the same case and reviewer adds a row: the earlier one stays
        in ``history`` and the new one becomes ``current``.
        """
        case_id = _check_name("case_id", case_id, MAX_CASE_ID_CHARS)
        reviewer = _check_name("reviewer", reviewer, MAX_REVIEWER_CHARS)
        grade = _check_grade(grade)
        comment = _check_comment(comment)
        reviewed_at = datetime.now(timezone.utc)
        values = dict(evaluation_id=self.evaluation_id, case_id=case_id, reviewer=reviewer,
                      grade=grade, comment=comment, reviewed_at=reviewed_at)
        with self._transaction(
            write=True,
            what=f"could not save the grade of case {case_id} by {reviewer}",
            fix="the grade was NOT saved; submit it again, and if this repeats check that the "
            "database is reachable and its disk is not full or read-only",
        ) as conn:
            result = conn.execute(insert(_reviews).values(**values))
            new_id = int(result.inserted_primary_key[0])
        return Review(id=new_id, **values)

    # -- reading -----------------------------------------------------------------------------

    def current(self, reviewer: str | None = None) -> dict[str, Review]:
        """The latest review of each case of this evaluation: by ``reviewer``, or by anyone
        when None.

        Latest means highest id, the order the database accepted the submissions in.
        """
        latest = (select(func.max(_reviews.c.id).label("id")).where(self._mine())
                  .group_by(_reviews.c.case_id))
        if reviewer is not None:
            latest = latest.where(_reviews.c.reviewer == reviewer)
        query = select(_reviews).where(self._mine(), _reviews.c.id.in_(latest.scalar_subquery()))
        return {review.case_id: review for review in self._rows(query.order_by(_reviews.c.id))}

    def history(self, case_id: str) -> list[Review]:
        """Every review of a case in this evaluation, by every reviewer, oldest first."""
        query = (select(_reviews).where(self._mine(), _reviews.c.case_id == case_id)
                 .order_by(_reviews.c.id))
        return self._rows(query)

    def reviewed_case_ids(self, reviewer: str | None = None) -> set[str]:
        """The cases of this evaluation with at least one review (by ``reviewer``, or by anyone
        when None)."""
        query = select(_reviews.c.case_id).where(self._mine()).distinct()
        if reviewer is not None:
            query = query.where(_reviews.c.reviewer == reviewer)
        with self._read() as conn:
            return set(conn.execute(query).scalars())

    def export_csv(self, path: Path | str, case_ids: Sequence[str] | None = None) -> Path:
        """Write every review of this evaluation (all of history) to a CSV file; return its path.

        Columns: ``case_id,reviewer,grade,grade_label,comment,reviewed_at,is_current,
        evaluation_id``, one row per submission, sorted by case and then submission order.
        ``is_current`` is ``true`` on the latest row of each case and reviewer. ``reviewed_at``
        is ISO 8601 UTC. ``evaluation_id`` comes last (the same on every row: the store's
        own, as in ``evaluation.json``), so that exports of several evaluations can be
        concatenated and told apart; rows of other evaluations in the database are left out.
        ``case_id`` is written as stored, so the file joins with ``per_case.csv`` on it;
        ``case_ids`` limits the export to those cases. A comment or reviewer that a spreadsheet
        would run as a formula (opening with = + - @, a tab or a carriage return) is written
        with a leading apostrophe. The file is written whole or not at all.
        """
        path = Path(path)
        query = select(_reviews).where(self._mine()).order_by(_reviews.c.case_id, _reviews.c.id)
        if case_ids is not None:
            if isinstance(case_ids, str):
                case_ids = [case_ids]
            query = query.where(_reviews.c.case_id.in_(list(case_ids)))
        current_ids = (select(func.max(_reviews.c.id)).where(self._mine())
                       .group_by(_reviews.c.case_id, _reviews.c.reviewer))
        with self._read() as conn:
            rows = [self._review(row) for row in conn.execute(query)]
            is_current = set(conn.execute(current_ids).scalars())
        if not path.parent.is_dir():
            raise MedftError(
                f"{path}: cannot write the review export, the folder {path.parent} does not "
                "exist. Fix: create it, or choose a path in an existing folder"
            )
        text = io.StringIO(newline="")
        writer = csv.writer(text, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for review in rows:
            writer.writerow([
                review.case_id,
                _defuse_formula(review.reviewer),
                review.grade,
                review.grade_label,
                _defuse_formula(review.comment),
                review.reviewed_at.isoformat(),
                "true" if review.id in is_current else "false",
                review.evaluation_id,
            ])
        atomic_write_text(text.getvalue(), path)
        return path

    # -- internals ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self, write: bool, what: str, fix: str) -> Iterator[Connection]:
        """One transaction, committed when the block ends and rolled back on error.

        A write begins with BEGIN IMMEDIATE on SQLite (see ``_setup_sqlite``). A database error
        becomes a MedftError that names the database, ``what`` failed and the ``fix``.
        """
        if self._opened_file is not None and self._file_identity() != self._opened_file:
            raise MedftError(
                f"{self._shown_url}: {what}: the database file was deleted or replaced since it was opened, and "
                "connections still open to the old file would write where nobody reads. Fix: restore the file "
                "from a backup if it was deleted by mistake, then restart medft review (or reopen the store)"
            )
        try:
            with self._engine.connect() as conn:
                if write:
                    conn.execution_options(medft_write=True)
                with conn.begin():
                    yield conn
        except SQLAlchemyError as exc:
            detail = getattr(exc, "orig", None) or exc
            if self._is_sqlite and "database is locked" in str(detail):
                fix = (f"{make_url(self.url).database} stayed locked by another connection for "
                       f"more than {SQLITE_BUSY_TIMEOUT_MS / 1000:g} s, the longest medft waits; "
                       "close the program holding it (a DB browser or sqlite3 shell with a "
                       "transaction open, a stuck or suspended process) and try again. "
                       f"{fix[0].upper()}{fix[1:]}")
            raise MedftError(f"{self._shown_url}: {what} ({type(detail).__name__}: {detail}). "
                             f"Fix: {fix}") from exc

    def _file_identity(self) -> tuple[int, int] | None:
        """(device, inode) of an SQLite database file; None for a server database, in memory, or no file."""
        database = make_url(self.url).database if self._is_sqlite else None
        if not database or database == ":memory:":
            return None
        try:
            stat = os.stat(database)
        except OSError:
            return None
        return stat.st_dev, stat.st_ino

    def _mine(self) -> Any:
        """The condition that keeps a query to this store's evaluation."""
        return _reviews.c.evaluation_id == self.evaluation_id

    def _read(self) -> contextlib.AbstractContextManager[Connection]:
        return self._transaction(write=False, what="could not read the reviews",
                                 fix="check that the database is reachable and readable")

    def _rows(self, query: Any) -> list[Review]:
        with self._read() as conn:
            return [self._review(row) for row in conn.execute(query)]

    @staticmethod
    def _review(row: Any) -> Review:
        return Review(case_id=row.case_id, reviewer=row.reviewer, grade=int(row.grade),
                      comment=row.comment, reviewed_at=row.reviewed_at, id=int(row.id),
                      evaluation_id=row.evaluation_id)

    def _ensure_schema(self) -> None:
        """Create the tables when missing, and refuse a database from a newer medft or one
        whose reviews are not kept per evaluation (from a development version of medft).

        An existing database is only read. Several processes may create a new one at once: on
        SQLite the write lock taken first serializes them; elsewhere a loser of the race
        retries once and finds the tables made.
        """
        fix = ("check the URL, that the database server is running and that the file and its "
               "folder are readable and writable by this user")
        with self._transaction(write=False, what="could not open the review database",
                               fix=fix) as conn:
            found = self._schema_version(conn)
            columns = self._review_columns(conn)
        for attempt in (1, 2):
            if found is not None:
                break
            try:
                with self._transaction(write=True, what="could not create the review tables",
                                       fix=fix) as conn:
                    _metadata.create_all(conn, checkfirst=True)
                    found = self._schema_version(conn)
                    columns = self._review_columns(conn)
                    if found is None:
                        conn.execute(insert(_schema_version).values(
                            id=1, version=SCHEMA_VERSION, updated_at=datetime.now(timezone.utc)))
                        found = SCHEMA_VERSION
            except MedftError:
                if attempt == 2:
                    raise
        if found > SCHEMA_VERSION:
            raise MedftError(
                f"{self._shown_url}: the review database has schema version {found}, newer "
                f"than this medft understands ({SCHEMA_VERSION}). Fix: upgrade medft; do not "
                "open this database with the older version"
            )
        if columns is not None and "evaluation_id" not in columns:
            raise MedftError(
                f"{self._shown_url}: this review database comes from a development version of "
                "medft that kept reviews without their evaluation (its reviews table has no "
                "evaluation_id column), so its grades cannot be told apart from other "
                "evaluations'. Fix: move the database away (for SQLite, rename or move the "
                f"{DEFAULT_DB_NAME} file and its -wal and -shm files) and start the review "
                "again; the old file stays readable with any SQLite tool"
            )
        # Migrations from older schema versions go here when SCHEMA_VERSION grows.

    @staticmethod
    def _review_columns(conn: Connection) -> set[str] | None:
        """The column names of the reviews table; None when there is no such table."""
        inspector = sa_inspect(conn)
        if not inspector.has_table(_reviews.name):
            return None
        return {column["name"] for column in inspector.get_columns(_reviews.name)}

    @staticmethod
    def _schema_version(conn: Connection) -> int | None:
        if not sa_inspect(conn).has_table(_schema_version.name):
            return None
        found = conn.execute(
            select(_schema_version.c.version).where(_schema_version.c.id == 1)).scalar()
        return None if found is None else int(found)


def evaluation_id_of(eval_dir: Path | str) -> str:
    """The ``evaluation_id`` that ``medft evaluate`` wrote into ``<eval_dir>/evaluation.json``.

    MedftError naming the folder or file, and the fix, when the folder, the file or the id is
    missing or unreadable.
    """
    eval_dir = Path(eval_dir)
    rerun = evaluate_again(eval_dir)
    if not eval_dir.is_dir():
        raise MedftError(
            f"{eval_dir}: no such evaluation directory, so there is nowhere to keep the "
            "reviews. Fix: run `medft evaluate MODEL --manifest MANIFEST --out "
            f"{eval_dir}` first, or pass the evaluation directory it wrote"
        )
    path = eval_dir / EVALUATION_FILE
    if not path.is_file():
        raise MedftError(f"{path}: no such file, so the reviews cannot be tied to an evaluation. "
                         f"Fix: {rerun}")
    evaluation_id = read_evaluation_file(eval_dir, fix=rerun).evaluation_id
    if (not evaluation_id.strip()
            or len(evaluation_id) > MAX_EVALUATION_ID_CHARS
            or any(ord(ch) < 32 or ord(ch) == 127 for ch in evaluation_id)):
        raise MedftError(
            f"{path}: the evaluation_id {evaluation_id!r} is not a usable id (medft writes 32 hex "
            f"digits; at most {MAX_EVALUATION_ID_CHARS} printable characters). Fix: {rerun}"
        )
    return evaluation_id


def evaluate_again(eval_dir: Path | str) -> str:
    """The fix for an evaluation folder that cannot be reviewed: a new evaluation in a new folder
    (``medft evaluate`` refuses one that is not empty); the reviews of the old folder stay there."""
    fix = ("evaluate again into a new folder (`medft evaluate MODEL --manifest MANIFEST --out "
           "NEW_EVAL_DIR`) and review that one")
    if (Path(eval_dir) / DEFAULT_DB_NAME).exists():
        fix += (f"; keep this folder: the reviews in its {DEFAULT_DB_NAME} stay there, tied to "
                "this evaluation, and do not carry over to the new one")
    return fix


def _defuse_formula(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_PREFIXES) else value


_NAME_SOURCES = {
    "case_id": "case id from per_case.csv",
    "reviewer": "logged-in username",
    "evaluation_id": "evaluation_id of the evaluation's evaluation.json (or use "
                     "ReviewStore.for_eval_dir)",
}


def _check_name(what: str, value: Any, max_chars: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise MedftError(
            f"review store: {what} must be a non-empty string, got {value!r}. Fix: pass the "
            f"{_NAME_SOURCES.get(what, what)}"
        )
    if len(value) > max_chars:
        raise MedftError(f"review store: {what} is {len(value)} characters long, more than "
                         f"{max_chars}. Fix: use a shorter {what}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise MedftError(f"review store: {what} {value!r} contains a control character (a line "
                         f"break or tab, say). Fix: remove it")
    return value


def _check_grade(grade: Any) -> int:
    # Integers only (numpy's too); not bool, float or str, which would hide a caller's bug.
    if isinstance(grade, bool) or not hasattr(grade, "__index__"):
        raise MedftError(_grade_message(grade))
    grade = int(grade.__index__())
    if grade not in GRADES:
        raise MedftError(_grade_message(grade))
    return grade


def _grade_message(grade: Any) -> str:
    choices = ", ".join(f"{key} ({label})" for key, label in GRADES.items())
    return f"review store: grade {grade!r} is not one of the grades. Fix: pass one of {choices}"


def _check_comment(comment: Any) -> str:
    if comment is None:
        return ""
    if not isinstance(comment, str):
        raise MedftError(f"review store: the comment must be text, got {type(comment).__name__}. "
                         "Fix: pass a string (or nothing)")
    if len(comment) > MAX_COMMENT_CHARS:
        raise MedftError(f"review store: the comment is {len(comment)} characters long, more than "
                         f"{MAX_COMMENT_CHARS}. Fix: shorten it")
    if "\x00" in comment:
        raise MedftError("review store: the comment contains a NUL character, which databases "
                         "such as PostgreSQL cannot store. Fix: remove it")
    return comment
