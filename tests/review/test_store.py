"""The review store: history semantics, validation, CSV export, restarts, concurrency, durability,
and reviews kept apart per evaluation in a shared database."""
from __future__ import annotations

import csv
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timezone
from pathlib import Path

import pytest

from medft.errors import MedftError
from medft.review import store as store_module
from medft.review.store import CSV_COLUMNS, GRADES, MAX_COMMENT_CHARS, Review, ReviewStore
from tests.conftest import evaluation_json

REPO = Path(__file__).resolve().parents[2]
EVAL_ID = "0123456789abcdef0123456789abcdef"  # as medft evaluate writes it: a uuid4 hex


def _write_evaluation(folder: Path, evaluation_id: str | None = EVAL_ID) -> Path:
    """A minimal evaluation.json in ``folder``, with ``evaluation_id`` unless None."""
    evaluation = evaluation_json(evaluation_id=evaluation_id)
    (folder / "evaluation.json").write_text(json.dumps(evaluation), encoding="utf-8")
    return folder


@pytest.fixture(params=["sqlite", "sqlite+pysqlite"])
def url(request, tmp_path) -> str:
    """The same store API on two SQLAlchemy URL forms of an SQLite file."""
    return f"{request.param}:///{tmp_path / 'reviews.sqlite'}"


@pytest.fixture
def store(url):
    with ReviewStore(url, EVAL_ID) as opened:
        yield opened


def test_submit_returns_the_stored_review(store):
    review = store.submit("case_1", "alice", 2, "apex under-segmented")
    assert isinstance(review, Review)
    assert (review.case_id, review.reviewer, review.grade, review.comment) == (
        "case_1", "alice", 2, "apex under-segmented")
    assert review.grade_label == "minor edits"
    assert review.reviewed_at.tzinfo is not None
    assert review.reviewed_at.utcoffset().total_seconds() == 0
    assert store.history("case_1") == [review]  # read back exactly, the time zone included


def test_regrade_keeps_history_and_current_shows_the_latest(store):
    first = store.submit("case_1", "alice", 1)
    second = store.submit("case_1", "alice", 4, "missed a lesion on slice 12")
    assert second.id > first.id
    assert store.history("case_1") == [first, second]
    assert store.current()["case_1"] == second
    assert store.current("alice")["case_1"] == second


def test_current_per_reviewer_and_across_reviewers(store):
    a1 = store.submit("case_1", "alice", 1)
    b1 = store.submit("case_1", "bob", 3)
    a2 = store.submit("case_2", "alice", 2)
    a1_again = store.submit("case_1", "alice", 2)

    assert store.current("alice") == {"case_1": a1_again, "case_2": a2}
    assert store.current("bob") == {"case_1": b1}
    assert store.current("carol") == {}
    # Across reviewers, the latest submission (highest id) of each case wins.
    assert store.current() == {"case_1": a1_again, "case_2": a2}
    assert store.history("case_1") == [a1, b1, a1_again]
    assert store.history("case_9") == []
    assert store.reviewed_case_ids() == {"case_1", "case_2"}
    assert store.reviewed_case_ids("bob") == {"case_1"}
    assert store.reviewed_case_ids("carol") == set()


def test_every_grade_is_accepted_and_labelled(store):
    for grade, label in GRADES.items():
        assert store.submit(f"case_{grade}", "alice", grade).grade_label == label


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(grade=0), "grade 0"),
        (dict(grade=6), "grade 6"),
        (dict(grade="2"), "grade '2'"),
        (dict(grade=2.0), "grade 2.0"),
        (dict(grade=True), "grade True"),
        (dict(reviewer=""), "reviewer"),
        (dict(reviewer="   "), "reviewer"),
        (dict(reviewer=None), "reviewer"),
        (dict(case_id=""), "case_id"),
        (dict(case_id="case\n1"), "control character"),
        (dict(comment="x" * (MAX_COMMENT_CHARS + 1)), "characters long"),
        (dict(comment=42), "must be text"),
        (dict(comment="a\x00b"), "NUL"),
    ],
)
def test_bad_input_is_refused_with_a_fix(store, kwargs, words):
    arguments = dict(case_id="case_1", reviewer="alice", grade=2, comment="")
    arguments.update(kwargs)
    with pytest.raises(MedftError, match="Fix:") as caught:
        store.submit(**arguments)
    assert words in str(caught.value)
    assert store.history("case_1") == []


def test_comment_at_the_cap_and_none_are_fine(store):
    assert len(store.submit("case_1", "alice", 2, "x" * MAX_COMMENT_CHARS).comment) == MAX_COMMENT_CHARS
    assert store.submit("case_1", "alice", 2, None).comment == ""


def test_grades_survive_an_app_restart(tmp_path):
    url = f"sqlite:///{tmp_path / 'reviews.sqlite'}"
    with ReviewStore(url, EVAL_ID) as store:
        first = store.submit("case_1", "alice", 3, "überall\nzwei Zeilen")
        second = store.submit("case_1", "alice", 2)
        other = store.submit("case_2", "bob", 5)
    with ReviewStore(url, EVAL_ID) as reopened:
        assert reopened.history("case_1") == [first, second]
        assert reopened.current() == {"case_1": second, "case_2": other}
        # Ids keep growing after a restart.
        assert reopened.submit("case_3", "alice", 1).id > other.id


def test_for_eval_dir_puts_the_database_in_the_evaluation(tmp_path):
    _write_evaluation(tmp_path)
    with ReviewStore.for_eval_dir(tmp_path) as store:
        assert store.evaluation_id == EVAL_ID  # read from evaluation.json
        assert store.submit("case_1", "alice", 1).evaluation_id == EVAL_ID
    assert (tmp_path / "reviews.sqlite").is_file()
    other = tmp_path / "elsewhere.sqlite"
    with ReviewStore.for_eval_dir(tmp_path, url=f"sqlite:///{other}") as store:
        assert store.evaluation_id == EVAL_ID
        assert store.current() == {}
    assert other.is_file()


def test_a_missing_eval_dir_or_folder_is_a_clear_error(tmp_path):
    with pytest.raises(MedftError, match="no such evaluation directory.*Fix: run `medft evaluate"):
        ReviewStore.for_eval_dir(tmp_path / "missing")
    with pytest.raises(MedftError, match="does not exist. Fix"):
        ReviewStore(f"sqlite:///{tmp_path / 'missing' / 'reviews.sqlite'}", EVAL_ID)
    with pytest.raises(MedftError, match="not a usable database URL"):
        ReviewStore("nonsense-without-scheme", EVAL_ID)


def test_sqlite_runs_in_wal_mode_with_full_sync_and_a_busy_timeout(store, tmp_path):
    store.submit("case_1", "alice", 1)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA fullfsync").scalar() == 1  # on disk on macOS too
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    # WAL is a property of the file: any other program opening it sees it.
    raw = sqlite3.connect(tmp_path / "reviews.sqlite")
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    finally:
        raw.close()


def test_a_database_from_a_newer_medft_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'reviews.sqlite'}"
    ReviewStore(url, EVAL_ID).close()
    raw = sqlite3.connect(tmp_path / "reviews.sqlite")
    with raw:
        raw.execute("UPDATE schema_version SET version = 99")
    raw.close()
    with pytest.raises(MedftError, match="schema version 99.*Fix: upgrade medft"):
        ReviewStore(url, EVAL_ID)


# -- CSV export ----------------------------------------------------------------------------------

def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_export_csv_writes_every_row_and_marks_the_current_ones(store, tmp_path):
    a1 = store.submit("case_2", "alice", 1, "fine")
    b1 = store.submit("case_1", "bob", 3, "two lines,\nwith a comma and \"quotes\"")
    a2 = store.submit("case_2", "alice", 4, "on second look: missed the tail")
    out = store.export_csv(tmp_path / "reviews.csv")

    assert out == tmp_path / "reviews.csv"
    with out.open(newline="", encoding="utf-8") as handle:
        assert next(csv.reader(handle)) == list(CSV_COLUMNS)
    rows = _read_csv(out)
    assert [(r["case_id"], r["reviewer"], r["grade"], r["is_current"]) for r in rows] == [
        ("case_1", "bob", "3", "true"),
        ("case_2", "alice", "1", "false"),
        ("case_2", "alice", "4", "true"),
    ]
    assert rows[0]["comment"] == b1.comment  # the multi-line comment reads back whole
    assert rows[0]["grade_label"] == "major edits"
    assert rows[1]["reviewed_at"] == a1.reviewed_at.isoformat()
    assert rows[2]["reviewed_at"].endswith("+00:00")
    assert rows[2]["comment"] == a2.comment
    assert CSV_COLUMNS[-1] == "evaluation_id" and CSV_COLUMNS[0] == "case_id"
    assert {r["evaluation_id"] for r in rows} == {EVAL_ID}


def test_is_current_is_per_case_and_reviewer(store, tmp_path):
    store.submit("case_1", "alice", 1)
    store.submit("case_1", "bob", 2)  # later, but by someone else: alice's row stays current
    rows = _read_csv(store.export_csv(tmp_path / "reviews.csv"))
    assert [(r["reviewer"], r["is_current"]) for r in rows] == [("alice", "true"), ("bob", "true")]


def test_export_csv_can_be_limited_to_some_cases(store, tmp_path):
    for case_id in ("case_1", "case_2", "case_3"):
        store.submit(case_id, "alice", 2)
    rows = _read_csv(store.export_csv(tmp_path / "some.csv", case_ids=["case_3", "case_1"]))
    assert [r["case_id"] for r in rows] == ["case_1", "case_3"]
    assert _read_csv(store.export_csv(tmp_path / "none.csv", case_ids=[])) == []


def test_export_csv_defuses_spreadsheet_formulas(store, tmp_path):
    comments = ["=HYPERLINK(\"http://evil\",\"x\")", "+1", "-2 slices", "@SUM(A1)", "\tx", "fine = ok"]
    for comment in comments:
        store.submit("case_1", "alice", 2, comment)
    store.submit("case_2", "-mallory", 2)
    rows = _read_csv(store.export_csv(tmp_path / "reviews.csv"))
    exported = [r["comment"] for r in rows if r["case_id"] == "case_1"]
    assert exported == ["'" + c for c in comments[:-1]] + ["fine = ok"]
    assert all(not value.startswith(("=", "+", "-", "@", "\t")) for r in rows for value in r.values())
    assert rows[-1]["reviewer"] == "'-mallory"
    # The store itself keeps the comment as typed; only the export is defused.
    assert [r.comment for r in store.history("case_1")] == comments


def test_export_joins_with_per_case_csv(store, tmp_path):
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    per_case = eval_dir / "per_case.csv"
    header = "case_id,site,class_index,class_name,dice,sensitivity,specificity,hd95,nsd,tp,fp,fn,tn"
    per_case.write_text(
        header + "\n"
        "case_1,A,1,anterior,0.91,0.9,0.99,1.5,0.95,90,8,10,1000\n"
        "case_1,A,2,posterior,0.55,0.5,0.99,6.0,0.60,50,32,50,1000\n"
        "case_2,B,1,anterior,0.80,0.8,0.99,2.0,0.85,80,20,20,1000\n"
        "case_3,B,1,anterior,0.70,0.7,0.99,3.0,0.75,70,30,30,1000\n",
        encoding="utf-8",
    )
    store.submit("case_1", "alice", 3, "posterior too small")
    store.submit("case_2", "alice", 1)
    store.submit("case_2", "bob", 2)
    metrics = _read_csv(per_case)
    reviews = [r for r in _read_csv(store.export_csv(eval_dir / "reviews.csv"))
               if r["is_current"] == "true"]

    joined = [(m["case_id"], m["class_name"], m["dice"], r["reviewer"], r["grade_label"])
              for m in metrics for r in reviews if m["case_id"] == r["case_id"]]
    assert joined == [
        ("case_1", "anterior", "0.91", "alice", "major edits"),
        ("case_1", "posterior", "0.55", "alice", "major edits"),
        ("case_2", "anterior", "0.80", "alice", "accept as is"),
        ("case_2", "anterior", "0.80", "bob", "minor edits"),
    ]
    unreviewed = {m["case_id"] for m in metrics} - {r["case_id"] for r in reviews}
    assert unreviewed == {"case_3"}


def test_export_to_a_missing_folder_is_a_clear_error(store, tmp_path):
    with pytest.raises(MedftError, match="does not exist. Fix"):
        store.export_csv(tmp_path / "missing" / "reviews.csv")


# -- several reviewers at once -------------------------------------------------------------------

PER_WORKER = 50


def _grade_many(url: str, reviewer: str, barrier) -> None:
    """A reviewer in its own process: open the store (maybe creating it), then submit fast."""
    with ReviewStore(url, EVAL_ID) as store:
        barrier.wait(timeout=60)
        for i in range(PER_WORKER):
            store.submit(f"case_{i % 7}", reviewer, 1 + i % 5, f"{reviewer} #{i}")


def test_concurrent_reviewers_in_separate_processes_lose_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'reviews.sqlite'}"
    reviewers = [f"reviewer{k}" for k in range(4)]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(reviewers))
    workers = [context.Process(target=_grade_many, args=(url, name, barrier)) for name in reviewers]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0] * len(workers)

    with ReviewStore(url, EVAL_ID) as store:
        everything = [r for case in sorted(store.reviewed_case_ids()) for r in store.history(case)]
        assert len(everything) == len(reviewers) * PER_WORKER
        assert len({r.id for r in everything}) == len(everything)
        assert sorted(r.comment for r in everything) == sorted(
            f"{name} #{i}" for name in reviewers for i in range(PER_WORKER))
        for name in reviewers:  # each reviewer's last grade of each case is the current one
            mine = [r for r in everything if r.reviewer == name]
            assert {case: review.comment for case, review in store.current(name).items()} == {
                f"case_{c}": max((r for r in mine if r.case_id == f"case_{c}"),
                                 key=lambda r: r.id).comment for c in range(7)}


OPENERS = 4
OPEN_ROUNDS = 25


def _open_new_stores(folder: str, barrier) -> None:
    """A process (an app session, a worker) that opens a new store in step with the others,
    once per round, and submits a grade."""
    try:
        for round_ in range(OPEN_ROUNDS):
            barrier.wait(timeout=60)
            with ReviewStore(f"sqlite:///{folder}/round{round_}.sqlite", EVAL_ID) as store:
                store.submit("case_1", f"pid{os.getpid()}", 1)
    except BaseException:
        barrier.abort()  # the others stop waiting for this process
        raise


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path):
    """Switching a new file to WAL takes an exclusive lock, and SQLite refuses it at once, without
    waiting out the busy timeout, while another connection is switching it: before the store
    retried, about one start in 50 of four processes together failed with "database is locked".
    Round 0 makes that collision certain (a connection holds the new file's write lock while the
    processes open it, as the first of them does while it switches); the other rounds are plain
    starts together.
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(OPENERS + 1)
    workers = [context.Process(target=_open_new_stores, args=(str(tmp_path), barrier))
               for _ in range(OPENERS)]
    for worker in workers:
        worker.start()
    try:
        holder = sqlite3.connect(tmp_path / "round0.sqlite", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # the write lock of the new, still empty, file
        barrier.wait(timeout=60)
        time.sleep(0.3)  # the processes try to switch to WAL meanwhile
        holder.rollback()
        holder.close()
        for _ in range(1, OPEN_ROUNDS):
            barrier.wait(timeout=60)
    except threading.BrokenBarrierError:
        pass  # a process failed: its exit code says so below
    finally:
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.kill()
    assert [w.exitcode for w in workers] == [0] * OPENERS

    for round_ in range(OPEN_ROUNDS):
        with ReviewStore(f"sqlite:///{tmp_path}/round{round_}.sqlite", EVAL_ID) as store:
            assert len(store.history("case_1")) == OPENERS
        raw = sqlite3.connect(tmp_path / f"round{round_}.sqlite")
        try:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            raw.close()


def test_a_lock_held_too_long_is_reported_after_the_busy_timeout_naming_the_file(tmp_path,
                                                                                monkeypatch):
    monkeypatch.setattr(store_module, "SQLITE_BUSY_TIMEOUT_MS", 300)
    path = tmp_path / "reviews.sqlite"
    url = f"sqlite:///{path}"
    holder = sqlite3.connect(path, isolation_level=None)  # a DB browser, say
    try:
        holder.execute("BEGIN IMMEDIATE")  # the write lock of a new file
        started = time.monotonic()
        with pytest.raises(MedftError) as opening:
            ReviewStore(url, EVAL_ID)
        assert time.monotonic() - started >= 0.3  # it waited as long as the message says
        holder.rollback()
        with ReviewStore(url, EVAL_ID) as store:
            holder.execute("BEGIN IMMEDIATE")  # the write lock of the store, now in WAL mode
            started = time.monotonic()
            with pytest.raises(MedftError) as submitting:
                store.submit("case_1", "alice", 2)
            assert time.monotonic() - started >= 0.3
            holder.rollback()
            assert store.history("case_1") == []
    finally:
        holder.close()
    for caught in (opening, submitting):
        assert (f"Fix: {path} stayed locked by another connection for more than 0.3 s, the "
                "longest medft waits; close the program holding it") in str(caught.value)
    assert "The grade was NOT saved; submit it again" in str(submitting.value)


def test_a_grade_survives_the_process_being_killed_right_after_submit(tmp_path):
    url = f"sqlite:///{tmp_path / 'reviews.sqlite'}"
    script = textwrap.dedent(f"""
        import sys, time
        from medft.review.store import ReviewStore
        store = ReviewStore({url!r}, {EVAL_ID!r})
        review = store.submit("case_7", "alice", 4, "kill me now")
        print(review.id, flush=True)
        time.sleep(60)  # never closes: SIGKILL arrives first
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=REPO,
                             env=env, text=True)
    try:
        line = child.stdout.readline()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    submitted_id = int(line)
    assert (tmp_path / "reviews.sqlite-wal").exists()  # killed before any checkpoint or close

    with ReviewStore(url, EVAL_ID) as reopened:
        [review] = reopened.history("case_7")
    assert (review.id, review.reviewer, review.grade, review.comment) == (
        submitted_id, "alice", 4, "kill me now")
    assert review.reviewed_at.tzinfo == timezone.utc


# -- one database, several evaluations ------------------------------------------------------------

def test_two_evaluations_in_one_database_see_only_their_own_reviews(url, tmp_path):
    """Two models' predictions of the same cases, reviewed in one shared database (same URL)."""
    model_a, model_b = "a" * 32, "b" * 32
    with ReviewStore(url, model_a) as a, ReviewStore(url, model_b) as b:
        a1 = a.submit("case_1", "alice", 1, "model A: fine")
        b1 = b.submit("case_1", "alice", 4, "model B: missed the tail")
        a2 = a.submit("case_2", "bob", 2)
        b1_again = b.submit("case_1", "alice", 3, "model B: on second look")
        b3 = b.submit("case_3", "bob", 5)
        a1_again = a.submit("case_1", "alice", 2, "model A: one slice off")

        # current: B's later grade of case_1 does not become A's, and the other way round
        assert a.current() == {"case_1": a1_again, "case_2": a2}
        assert b.current() == {"case_1": b1_again, "case_3": b3}
        assert a.current("alice") == {"case_1": a1_again}
        assert b.current("alice") == {"case_1": b1_again}
        assert a.current("bob") == {"case_2": a2}
        assert b.current("bob") == {"case_3": b3}
        # history
        assert a.history("case_1") == [a1, a1_again]
        assert b.history("case_1") == [b1, b1_again]
        assert a.history("case_3") == [] and b.history("case_2") == []
        assert {r.evaluation_id for r in a.history("case_1")} == {model_a}
        # reviewed cases
        assert a.reviewed_case_ids() == {"case_1", "case_2"}
        assert b.reviewed_case_ids() == {"case_1", "case_3"}
        assert a.reviewed_case_ids("bob") == {"case_2"}
        assert b.reviewed_case_ids("bob") == {"case_3"}
        # export: own rows only, is_current computed within the evaluation
        rows_a = _read_csv(a.export_csv(tmp_path / "a.csv"))
        rows_b = _read_csv(b.export_csv(tmp_path / "b.csv"))
        assert [(r["case_id"], r["reviewer"], r["grade"], r["is_current"], r["evaluation_id"])
                for r in rows_a] == [
            ("case_1", "alice", "1", "false", model_a),
            ("case_1", "alice", "2", "true", model_a),
            ("case_2", "bob", "2", "true", model_a),
        ]
        assert [(r["case_id"], r["reviewer"], r["grade"], r["is_current"], r["evaluation_id"])
                for r in rows_b] == [
            ("case_1", "alice", "4", "false", model_b),
            ("case_1", "alice", "3", "true", model_b),
            ("case_3", "bob", "5", "true", model_b),
        ]
        limited = _read_csv(b.export_csv(tmp_path / "b1.csv", case_ids=["case_1", "case_2"]))
        assert [(r["grade"], r["evaluation_id"]) for r in limited] == [("4", model_b), ("3", model_b)]
    # Both live in the one file, and a third evaluation opened on it starts empty.
    with ReviewStore(url, "c" * 32) as c:
        assert c.current() == {} and c.reviewed_case_ids() == set() and c.history("case_1") == []
        assert _read_csv(c.export_csv(tmp_path / "c.csv")) == []
    raw = sqlite3.connect(tmp_path / "reviews.sqlite")
    try:
        assert raw.execute("SELECT evaluation_id, COUNT(*) FROM reviews GROUP BY evaluation_id "
                           "ORDER BY evaluation_id").fetchall() == [(model_a, 3), (model_b, 3)]
    finally:
        raw.close()


def test_two_evaluation_folders_sharing_a_db_url_keep_their_reviews_apart(tmp_path):
    shared = f"sqlite:///{tmp_path / 'team.sqlite'}"
    folder_a, folder_b = tmp_path / "eval_a", tmp_path / "eval_b"
    folder_a.mkdir()
    folder_b.mkdir()
    _write_evaluation(folder_a, "a" * 32)
    _write_evaluation(folder_b, "b" * 32)
    with ReviewStore.for_eval_dir(folder_a, shared) as a:
        a.submit("case_1", "alice", 1)
    with ReviewStore.for_eval_dir(folder_b, shared) as b:
        assert b.current() == {}
        b.submit("case_1", "alice", 4)
    with ReviewStore.for_eval_dir(folder_a, shared) as a:
        assert a.current()["case_1"].grade == 1
    assert not (folder_a / "reviews.sqlite").exists() and not (folder_b / "reviews.sqlite").exists()


def test_for_eval_dir_refuses_an_evaluation_without_an_id(tmp_path):
    other = f"sqlite:///{tmp_path / 'elsewhere.sqlite'}"
    with pytest.raises(MedftError, match=r"evaluation\.json: no such file.*Fix: evaluate again into a new folder"):
        ReviewStore.for_eval_dir(tmp_path)
    _write_evaluation(tmp_path, evaluation_id=None)
    for url in (None, other):  # with --db too: the id scopes the rows of a shared database
        with pytest.raises(MedftError, match=r"evaluation\.json: not an evaluation.json that medft evaluate writes "
                                             r"\(evaluation_id: Field required\)\. Fix: evaluate again into a new folder") as caught:
            ReviewStore.for_eval_dir(tmp_path, url)
        assert str(tmp_path / "evaluation.json") in str(caught.value)
    for bad in ("", "   ", 42, "x" * 65, "a\nb"):
        _write_evaluation(tmp_path, evaluation_id=bad)
        with pytest.raises(MedftError, match="evaluation_id.*Fix: evaluate again into a new folder"):
            ReviewStore.for_eval_dir(tmp_path)
    (tmp_path / "evaluation.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(MedftError, match="not valid JSON.*Fix: evaluate again into a new folder"):
        ReviewStore.for_eval_dir(tmp_path)
    assert not (tmp_path / "reviews.sqlite").exists()  # nothing was created for a refused folder


def test_a_store_needs_an_evaluation_id(tmp_path):
    url = f"sqlite:///{tmp_path / 'reviews.sqlite'}"
    with pytest.raises(TypeError):
        ReviewStore(url)
    for bad in ("", "  ", None, "x" * 65, "a\tb"):
        with pytest.raises(MedftError, match="evaluation_id.*Fix"):
            ReviewStore(url, bad)
    assert not (tmp_path / "reviews.sqlite").exists()


def test_an_old_format_database_is_refused_with_a_fix(tmp_path):
    """A reviews.sqlite from development, before rows carried their evaluation id."""
    raw = sqlite3.connect(tmp_path / "reviews.sqlite")
    with raw:
        raw.execute("CREATE TABLE schema_version (id INTEGER PRIMARY KEY, version INTEGER NOT NULL, "
                    "updated_at DATETIME NOT NULL)")
        raw.execute("INSERT INTO schema_version VALUES (1, 1, '2025-03-04 10:15:00')")
        raw.execute("CREATE TABLE reviews (id INTEGER PRIMARY KEY AUTOINCREMENT, case_id VARCHAR(256) "
                    "NOT NULL, reviewer VARCHAR(128) NOT NULL, grade INTEGER NOT NULL, comment TEXT "
                    "NOT NULL, reviewed_at DATETIME NOT NULL)")
        raw.execute("INSERT INTO reviews (case_id, reviewer, grade, comment, reviewed_at) "
                    "VALUES ('case_1', 'alice', 2, '', '2025-03-04 10:15:00')")
    raw.close()
    with pytest.raises(MedftError, match="no evaluation_id column.*Fix: move the database away"):
        ReviewStore(f"sqlite:///{tmp_path / 'reviews.sqlite'}", EVAL_ID)
    _write_evaluation(tmp_path)
    with pytest.raises(MedftError, match="Fix: move the database away"):
        ReviewStore.for_eval_dir(tmp_path)
    raw = sqlite3.connect(tmp_path / "reviews.sqlite")  # left as it was
    try:
        assert raw.execute("SELECT case_id, grade FROM reviews").fetchall() == [("case_1", 2)]
    finally:
        raw.close()


def test_a_database_file_deleted_or_replaced_under_an_open_store_is_refused(tmp_path):
    """Open connections would write into the deleted file ("Saved" shown, nothing kept) or
    into a replaced one under the old handle."""
    path = tmp_path / "reviews.sqlite"
    with ReviewStore(f"sqlite:///{path}", EVAL_ID) as store:
        store.submit("case_1", "alice", 2)
        for name in os.listdir(tmp_path):
            (tmp_path / name).unlink()
        with pytest.raises(MedftError, match=r"could not save the grade of case case_2 by alice: the database file was "
                                             r"deleted or replaced since it was opened.*Fix: restore the file"):
            store.submit("case_2", "alice", 3)
        with pytest.raises(MedftError, match="could not read the reviews: the database file was deleted"):
            store.current()
        assert not path.exists()
        with ReviewStore(f"sqlite:///{tmp_path / 'other.sqlite'}", EVAL_ID) as other:
            other.submit("case_3", "bob", 1)
        os.replace(tmp_path / "other.sqlite", path)
        with pytest.raises(MedftError, match="deleted or replaced"):
            store.submit("case_2", "alice", 3)
    with ReviewStore(f"sqlite:///{path}", EVAL_ID) as reopened:  # a new store works on the file that is there
        assert sorted(reopened.current()) == ["case_3"]
        reopened.submit("case_2", "alice", 3)
