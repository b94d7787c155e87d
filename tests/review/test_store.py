"""The review store: history semantics, validation, CSV export, restarts, concurrency, durability."""
from __future__ import annotations

import csv
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from datetime import timezone
from pathlib import Path

import pytest

from medft.errors import MedftError
from medft.review.store import CSV_COLUMNS, GRADES, MAX_COMMENT_CHARS, Review, ReviewStore

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "sqlite+pysqlite"])
def url(request, tmp_path) -> str:
    """The same store API on two SQLAlchemy URL forms of an SQLite file."""
    return f"{request.param}:///{tmp_path / 'reviews.sqlite'}"


@pytest.fixture
def store(url):
    with ReviewStore(url) as opened:
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
    with ReviewStore(url) as store:
        first = store.submit("case_1", "alice", 3, "überall\nzwei Zeilen")
        second = store.submit("case_1", "alice", 2)
        other = store.submit("case_2", "bob", 5)
    with ReviewStore(url) as reopened:
        assert reopened.history("case_1") == [first, second]
        assert reopened.current() == {"case_1": second, "case_2": other}
        # Ids keep growing after a restart.
        assert reopened.submit("case_3", "alice", 1).id > other.id


def test_for_eval_dir_puts_the_database_in_the_evaluation(tmp_path):
    with ReviewStore.for_eval_dir(tmp_path) as store:
        store.submit("case_1", "alice", 1)
    assert (tmp_path / "reviews.sqlite").is_file()
    other = tmp_path / "elsewhere.sqlite"
    with ReviewStore.for_eval_dir(tmp_path, url=f"sqlite:///{other}") as store:
        assert store.current() == {}
    assert other.is_file()


def test_a_missing_eval_dir_or_folder_is_a_clear_error(tmp_path):
    with pytest.raises(MedftError, match="no such evaluation directory.*Fix: run `medft evaluate"):
        ReviewStore.for_eval_dir(tmp_path / "missing")
    with pytest.raises(MedftError, match="does not exist. Fix"):
        ReviewStore(f"sqlite:///{tmp_path / 'missing' / 'reviews.sqlite'}")
    with pytest.raises(MedftError, match="not a usable database URL"):
        ReviewStore("nonsense-without-scheme")


def test_sqlite_runs_in_wal_mode_with_full_sync_and_a_busy_timeout(store, tmp_path):
    store.submit("case_1", "alice", 1)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
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
    ReviewStore(url).close()
    raw = sqlite3.connect(tmp_path / "reviews.sqlite")
    with raw:
        raw.execute("UPDATE schema_version SET version = 99")
    raw.close()
    with pytest.raises(MedftError, match="schema version 99.*Fix: upgrade medft"):
        ReviewStore(url)


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
    with ReviewStore(url) as store:
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

    with ReviewStore(url) as store:
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


def test_a_grade_survives_the_process_being_killed_right_after_submit(tmp_path):
    url = f"sqlite:///{tmp_path / 'reviews.sqlite'}"
    script = textwrap.dedent(f"""
        import sys, time
        from medft.review.store import ReviewStore
        store = ReviewStore({url!r})
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

    with ReviewStore(url) as reopened:
        [review] = reopened.history("case_7")
    assert (review.id, review.reviewer, review.grade, review.comment) == (
        submitted_id, "alice", 4, "kill me now")
    assert review.reviewed_at.tzinfo == timezone.utc
