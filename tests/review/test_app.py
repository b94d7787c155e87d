"""The review page under Streamlit's AppTest, on an evaluation folder of real sample cases.

AppTest runs the script in this process without a command line: the tests give the app its
arguments the way `streamlit run apps/review.py -- --eval-dir D --users U` does, by setting
``sys.argv`` (or, for the fallback, the MEDFT_REVIEW_* environment variables).
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from medft.errors import DataError, MedftError
from medft.review import app_support as support
from medft.review.auth import LoginThrottle, add_user, remove_user
from medft.review.store import ReviewStore
from tests.evaluate.helpers import make_review_eval

APP = Path(__file__).resolve().parents[2] / "apps" / "review.py"
PASSWORD = "correct horse battery"
USERS = ("alice", "bob", "dana", "erin", "frank", "gina", "hank", "ivan", "judy")
TIMEOUT = 60  # the first case load imports torch and MONAI


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory) -> Path:
    folder = make_review_eval(tmp_path_factory.mktemp("review") / "eval")
    for user in USERS:
        add_user(folder / "users.json", user, PASSWORD, name=f"Dr {user.title()}")
    return folder


@pytest.fixture
def app(eval_dir, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(APP), "--eval-dir", str(eval_dir)])
    for name in (support.ENV_EVAL_DIR, support.ENV_USERS, support.ENV_DB):
        monkeypatch.delenv(name, raising=False)
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT)


def log_in(at: AppTest, user: str, password: str = PASSWORD) -> AppTest:
    at.run()
    at.text_input(key="login_username").input(user)
    at.text_input(key="login_password").input(password)
    return button(at, "Log in").click().run()


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [e.value for e in at.error]
    parts += [w.value for w in at.warning] + [s.value for s in at.success] + [i.value for i in at.info]
    parts += [o for r in at.radio for o in r.options]
    return "\n".join(str(p) for p in parts)


def shown_case(at: AppTest) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("### "))[4:]


def test_wrong_password_shows_an_error_and_no_case_data(app):
    at = log_in(app, "alice", "not the password")
    assert not at.exception
    assert [e.value for e in at.error] == ["Wrong username or password."]
    assert "hippocampus" not in texts(at) and "dicom" not in texts(at)
    assert not at.image and not at.sidebar.radio
    at = log_in(AppTest.from_file(str(APP), default_timeout=TIMEOUT), "nobody", PASSWORD)
    assert [e.value for e in at.error] == ["Wrong username or password."]  # same words: usernames stay secret


def test_log_in_review_the_worst_case_move_the_slider_and_grade_it(app, eval_dir):
    at = log_in(app, "bob")
    assert not at.exception and not at.error
    assert shown_case(at) == "hippocampus_335"  # the worst case opens first
    assert "Signed in as **Dr Bob**" in texts(at)
    assert len(at.image) == 3 and all(i.proto.imgs[0].url.endswith(".png") for i in at.image)

    # pick another case in the list, then the worst one again
    at.sidebar.radio(key="case_pick").set_value("hippocampus_334").run()
    assert shown_case(at) == "hippocampus_334"
    at.sidebar.radio(key="case_pick").set_value("hippocampus_335").run()
    assert shown_case(at) == "hippocampus_335"
    assert at.sidebar.radio(key="case_pick").value == "hippocampus_335"  # highlighted in the list

    slider = at.slider(key="slice_hippocampus_335_axial")
    start = slider.value
    urls = [i.proto.imgs[0].url for i in at.image]
    slider.set_value(start + 2).run()
    assert f"Axial slice {start + 2} of 41" in texts(at)
    assert [i.proto.imgs[0].url for i in at.image] != urls  # both panels follow the one slider

    at.radio(key="grade_hippocampus_335").set_value(3)
    at.text_area(key="comment_hippocampus_335").input("posterior tail missed")
    button(at, "Submit grade").click().run()
    assert not at.exception
    assert any("Saved: grade 3" in s.value for s in at.success)
    with ReviewStore.for_eval_dir(eval_dir) as store:
        review = store.current("bob")["hippocampus_335"]
    assert (review.grade, review.comment) == (3, "posterior tail missed")
    assert "1 of 5 reviewed" in [p.proto.text for p in at.get("progress")]
    assert "graded 3" in "\n".join(at.sidebar.radio(key="case_pick").proto.captions)

    # the next case, from the button at the top; the grade shows when coming back
    button(at, "Next").click().run()
    assert shown_case(at) == "hippocampus_334"
    button(at, "Previous").click().run()
    assert shown_case(at) == "hippocampus_335"
    assert any("Your current grade: **3" in i.value for i in at.info)

    # the "not reviewed" list leaves it out
    at.sidebar.selectbox(key="review_filter").set_value("not reviewed").run()
    assert "hippocampus_335" not in at.sidebar.radio(key="case_pick").options


def test_viewer_controls(app):
    at = log_in(app, "dana")
    at.segmented_control(key="plane").set_value("coronal").run()
    assert "Coronal slice" in texts(at) and not at.exception
    at.selectbox(key="window_choice").set_value("CT bone").run()
    assert (at.number_input(key="window_width").value, at.number_input(key="window_level").value) == (2500.0, 480.0)
    at.number_input(key="window_width").set_value(300.0).run()
    assert at.selectbox(key="window_choice").value == "Manual"
    at.segmented_control(key="overlay_mode").set_value("contour").run()
    slider = at.slider(key="slice_hippocampus_335_coronal")
    assert slider.label.endswith(", posterior \u2192 anterior)")  # which end slice 1 is
    slider.set_value(1).run()
    button(at, "Most error").click().run()
    assert at.slider(key="slice_hippocampus_335_coronal").value > 1
    assert not at.exception and not at.error

    at.sidebar.radio(key="case_pick").set_value("hippocampus_336").run()  # prediction only
    assert len(at.image) == 2 and "No ground truth: no metrics." in texts(at)
    at.sidebar.radio(key="case_pick").set_value("dicom_13").run()  # a DICOM series
    assert len(at.image) == 3 and not at.error
    assert "Avasarala" not in texts(at) and "PGBM-002" not in texts(at)  # its PatientName and PatientID
    at.sidebar.radio(key="case_pick").set_value("hippocampus_338").run()  # failed
    assert not at.image and any("could not be evaluated" in w.value for w in at.warning)
    at.sidebar.selectbox(key="site").set_value("north").run()
    assert set(at.sidebar.radio(key="case_pick").options) == {"hippocampus_333", "hippocampus_334", "hippocampus_338"}


def test_a_case_named_in_the_url_must_be_in_the_table(app, eval_dir):
    app.query_params["case"] = "../../../etc/passwd"
    at = log_in(app, "erin")
    assert shown_case(at) == "hippocampus_335"
    assert any("not in this evaluation" in w.value for w in at.warning)
    at2 = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at2.query_params["case"] = "dicom_13"
    at2 = log_in(at2, "erin")
    assert shown_case(at2) == "dicom_13" and at2.query_params["case"] == "dicom_13"


def test_errors_show_a_short_message_and_no_traceback(tmp_path, monkeypatch):
    folder = make_review_eval(tmp_path / "eval")
    add_user(folder / "users.json", "alice", PASSWORD)
    (folder / "predictions" / "hippocampus_335.nii.gz").unlink()
    monkeypatch.setattr(sys, "argv", [str(APP), "--eval-dir", str(folder)])
    at = log_in(AppTest.from_file(str(APP), default_timeout=TIMEOUT), "alice")
    assert not at.exception
    assert [e.value for e in at.error] == [
        "case hippocampus_335: the prediction of this case is missing from the evaluation folder. Fix: evaluate again "
        "into a new folder (`medft evaluate MODEL --manifest MANIFEST --out NEW_EVAL_DIR`) and review that one; keep "
        "this folder: the reviews in its reviews.sqlite stay there, tied to this evaluation, and do not carry over to "
        "the new one"]
    assert "Submit grade" not in [b.label for b in at.button] and not at.main.radio  # nothing seen, nothing to grade

    monkeypatch.setattr(sys, "argv", [str(APP)])  # no arguments at all
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception and "no evaluation folder given" in at.error[0].value


def test_the_form_holds_the_current_review_and_a_regrade_keeps_the_comment(app, eval_dir):
    at = log_in(app, "gina")
    at.radio(key="grade_hippocampus_335").set_value(2)
    at.text_area(key="comment_hippocampus_335").input("apex off by a slice")
    button(at, "Submit grade").click().run()
    button(at, "Next").click().run()
    button(at, "Previous").click().run()
    assert at.radio(key="grade_hippocampus_335").value == 2
    assert at.text_area(key="comment_hippocampus_335").value == "apex off by a slice"
    at.radio(key="grade_hippocampus_335").set_value(3)  # a new grade, the comment left as it is
    button(at, "Submit grade").click().run()
    with ReviewStore.for_eval_dir(eval_dir) as store:
        review = store.current("gina")["hippocampus_335"]
    assert (review.grade, review.comment) == (3, "apex off by a slice")


def test_saved_shows_once_then_the_grade_in_the_store(app, eval_dir, monkeypatch):
    tab1 = log_in(app, "hank")
    tab2 = log_in(AppTest.from_file(str(APP), default_timeout=TIMEOUT), "hank")
    tab1.radio(key="grade_hippocampus_335").set_value(1)
    tab1.text_area(key="comment_hippocampus_335").input("fine in tab 1")
    button(tab1, "Submit grade").click().run()
    assert [s.value for s in tab1.success] == ["Saved: grade 1 \u00b7 accept as is for hippocampus_335."]
    tab2.radio(key="grade_hippocampus_335").set_value(4)
    tab2.text_area(key="comment_hippocampus_335").input("tab 2: anterior missed")
    button(tab2, "Submit grade").click().run()

    tab1.run()  # the same reviewer's tab 1 shows what the store holds now
    assert not tab1.success and any("Your current grade: **4 \u00b7 reject**" in i.value for i in tab1.info)
    assert tab1.radio(key="grade_hippocampus_335").value == 4
    assert tab1.text_area(key="comment_hippocampus_335").value == "tab 2: anterior missed"

    def fail(*args, **kwargs):
        raise MedftError("could not save the grade. Fix: the grade was NOT saved; submit it again")

    monkeypatch.setattr(ReviewStore, "submit", fail)
    tab1.radio(key="grade_hippocampus_335").set_value(2)
    button(tab1, "Submit grade").click().run()
    assert not tab1.exception and not tab1.success
    assert [e.value for e in tab1.error] == ["could not save the grade. Fix: the grade was NOT saved; submit it again"]
    assert any("Your current grade: **4" in i.value for i in tab1.info)
    assert tab1.radio(key="grade_hippocampus_335").value == 2  # what was chosen stays for another try
    assert "Metrics" in texts(tab1)  # the rest of the page is still there


def test_log_out_forgets_the_reviewer_so_the_next_one_starts_afresh(app, eval_dir):
    at = log_in(app, "ivan")
    at.sidebar.radio(key="case_pick").set_value("hippocampus_334").run()
    at.radio(key="grade_hippocampus_334").set_value(4)
    button(at, "Submit grade").click().run()
    assert any("Saved: grade 4" in s.value for s in at.success)
    at.sidebar.radio(key="case_pick").set_value("hippocampus_335").run()
    at.text_area(key="comment_hippocampus_335").input("draft: patient looks like Doe")
    at.selectbox(key="window_choice").set_value("CT bone").run()
    assert at.query_params["case"] == "hippocampus_335"
    button(at, "Log out").click().run()
    assert "case" not in at.query_params  # the next reviewer does not land on this case by its link

    at.text_input(key="login_username").input("judy")
    at.text_input(key="login_password").input(PASSWORD)
    button(at, "Log in").click().run()
    assert not at.exception and not at.error
    assert shown_case(at) == "hippocampus_335" and len(at.image) == 3  # the worst case: ivan's last one too
    assert at.text_area(key="comment_hippocampus_335").value == ""
    at.sidebar.radio(key="case_pick").set_value("hippocampus_334").run()
    assert not at.error and not at.success  # nothing of ivan's: blinded review
    assert "Saved" not in texts(at) and "graded 4" not in texts(at)
    assert at.radio(key="grade_hippocampus_334").value is None


def test_a_reviewer_removed_while_signed_in_cannot_grade(tmp_path, monkeypatch):
    folder = make_review_eval(tmp_path / "eval")
    add_user(folder / "users.json", "alice", PASSWORD)
    add_user(folder / "users.json", "bob", PASSWORD)
    monkeypatch.setattr(sys, "argv", [str(APP), "--eval-dir", str(folder)])
    at = log_in(AppTest.from_file(str(APP), default_timeout=TIMEOUT), "alice")
    remove_user(folder / "users.json", "alice")
    at.radio(key="grade_hippocampus_335").set_value(1)
    button(at, "Submit grade").click().run()
    assert not at.exception
    assert [w.value for w in at.warning] == [
        "You were logged out: your account is no longer on this evaluation's list of reviewers."]
    assert at.text_input(key="login_username").value == "" and not at.image
    with ReviewStore.for_eval_dir(folder) as store:
        assert store.current() == {}


def alice_grades_a_case(folder: Path, monkeypatch, grade: int) -> AppTest:
    """A new evaluation in ``folder``, served; alice logs in and grades hippocampus_335."""
    make_review_eval(folder)
    add_user(folder / "users.json", "alice", PASSWORD)
    monkeypatch.setattr(sys, "argv", [str(APP), "--eval-dir", str(folder)])
    at = log_in(AppTest.from_file(str(APP), default_timeout=TIMEOUT), "alice")
    at.radio(key="grade_hippocampus_335").set_value(grade)
    button(at, "Submit grade").click().run()
    assert any(f"Saved: grade {grade}" in s.value for s in at.success)
    return at


def test_an_evaluation_put_in_place_of_the_one_served_stops_the_app(tmp_path, monkeypatch):
    folder = tmp_path / "eval"
    at = alice_grades_a_case(folder, monkeypatch, 3)

    folder.rename(tmp_path / "eval_old")  # the folder moved away, a new evaluation in its place
    make_review_eval(folder)
    add_user(folder / "users.json", "alice", PASSWORD)
    at.radio(key="grade_hippocampus_335").set_value(1)  # graded on the page of the old evaluation
    button(at, "Submit grade").click().run()
    stopped = ["The evaluation in this folder changed while the app was running, so this page shows and saves "
               "nothing more (a grade submitted since was not saved). Fix: restart medft review."]
    assert not at.exception and [e.value for e in at.error] == stopped
    assert not at.image and not at.radio and not at.success
    again = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()  # another tab, before logging in: stopped too
    assert [e.value for e in again.error] == stopped and not again.image
    with ReviewStore.for_eval_dir(tmp_path / "eval_old") as old:
        assert [(r.case_id, r.grade) for r in old.history("hippocampus_335")] == [("hippocampus_335", 3)]
    with ReviewStore.for_eval_dir(folder) as new:
        assert new.current() == {}


def test_a_review_database_deleted_while_the_app_runs_is_no_place_to_save(tmp_path, monkeypatch):
    """The open connections wrote into the deleted file, and the page said "Saved"."""
    folder = tmp_path / "Doe Jane" / "eval"
    at = alice_grades_a_case(folder, monkeypatch, 2)
    for stale in folder.glob("reviews.sqlite*"):
        stale.unlink()
    at.radio(key="grade_hippocampus_335").set_value(4)
    button(at, "Submit grade").click().run()
    assert not at.exception and not at.success
    (error,) = [e.value for e in at.error]  # the page's first read of the reviews stops it, before any write
    assert error.startswith("sqlite:[path]: could not read the reviews: the database file was deleted or replaced "
                            "since it was opened") and "restart medft review" in error and "Jane" not in error
    assert not list(folder.glob("reviews.sqlite*"))


def test_a_short_message_leaves_out_what_only_the_console_shows():
    error = MedftError("case 7: holds 2 series (uid=1.2.3). Fix: give series_uid", public="case 7: holds 2 series. Fix: give series_uid")
    assert support.user_message(error) == "case 7: holds 2 series. Fix: give series_uid"
    error = DataError("holds 2 DICOM series", "give series_uid", file="/data/x", case_id="c7", detail="uid=1.2.3")
    assert support.user_message(error) == "case c7: holds 2 DICOM series. Fix: give series_uid"


def test_the_apps_own_folders_are_hidden_in_messages_spaces_and_all(tmp_path, monkeypatch):
    """Only an absolute path up to its first space looked like a path: "[path] Jane MRN4711/eval/reviews.sqlite"."""
    eval_dir = tmp_path / "Doe Jane MRN4711" / "eval"
    monkeypatch.setattr(sys, "argv", [str(APP), "--eval-dir", str(eval_dir), "--db", f"sqlite:///{tmp_path}/A B/r.sqlite"])
    error = MedftError(f"sqlite:///{eval_dir}/reviews.sqlite: could not save the grade. Fix: submit it again; "
                       f"also sqlite:///{tmp_path}/A B/r.sqlite and {eval_dir}/users.json")
    message = support.user_message(error, support.configured_paths())
    assert message == "sqlite:[path]: could not save the grade. Fix: submit it again; also sqlite:[path] and [path]"
    assert "Jane" not in support.user_message(error, support.configured_paths())
    monkeypatch.setattr(sys, "argv", [str(APP)])
    assert support.configured_paths() == []


def test_no_file_paths_on_the_page_a_folder_may_be_named_after_the_patient(tmp_path, monkeypatch):
    folder = make_review_eval(tmp_path / "eval")
    add_user(folder / "users.json", "alice", PASSWORD)
    patient = tmp_path / "Doe Jane MRN4711"
    evaluation = json.loads((folder / "evaluation.json").read_text())
    failed = next(c for c in evaluation["cases"] if c["case_id"] == "hippocampus_338")
    failed["image"] = [str(patient / "t1 scan.nii.gz")]
    failed["message"] = f"ERROR case hippocampus_338: {patient}/t1 scan.nii.gz: cannot be read. Fix: copy it again"
    (folder / "evaluation.json").write_text(json.dumps(evaluation))
    monkeypatch.setattr(sys, "argv", [str(APP), "--eval-dir", str(folder)])
    at = log_in(AppTest.from_file(str(APP), default_timeout=TIMEOUT), "alice")
    at.sidebar.radio(key="case_pick").set_value("hippocampus_338").run()
    assert [w.value for w in at.warning] == ["This case could not be evaluated, so there is nothing to review. "
                                             "ERROR case hippocampus_338: [path]: cannot be read. Fix: copy it again"]

    monkeypatch.setattr(sys, "argv", [str(APP), "--eval-dir", str(tmp_path / "Doe_Jane_MRN4711")])  # no such folder
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert [e.value for e in at.error] == ["[path]: no such folder. Fix: give the output folder of 'medft evaluate'"]


def test_an_evaluation_without_cases_says_so_and_the_reviewer_can_log_out(tmp_path, monkeypatch):
    folder = make_review_eval(tmp_path / "eval")
    add_user(folder / "users.json", "alice", PASSWORD)
    evaluation = json.loads((folder / "evaluation.json").read_text())
    evaluation["cases"] = []
    (folder / "evaluation.json").write_text(json.dumps(evaluation))
    (folder / "per_case.csv").write_text((folder / "per_case.csv").read_text().splitlines()[0] + "\n")
    monkeypatch.setattr(sys, "argv", [str(APP), "--eval-dir", str(folder)])
    at = log_in(AppTest.from_file(str(APP), default_timeout=TIMEOUT), "alice")
    assert not at.exception and [i.value for i in at.info] == ["This evaluation has no cases to review."]
    assert "0 of 0 cases shown" in texts(at)
    button(at, "Log out").click().run()
    assert at.text_input(key="login_username") is not None and not at.info


def test_arguments_from_the_environment(eval_dir, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", [str(APP)])
    monkeypatch.setenv(support.ENV_EVAL_DIR, str(eval_dir))
    monkeypatch.setenv(support.ENV_DB, f"sqlite:///{tmp_path / 'other.sqlite'}")
    at = log_in(AppTest.from_file(str(APP), default_timeout=TIMEOUT), "frank")
    at.radio(key="grade_hippocampus_335").set_value(1)
    button(at, "Submit grade").click().run()
    with ReviewStore.for_eval_dir(eval_dir, f"sqlite:///{tmp_path / 'other.sqlite'}") as store:
        assert store.current("frank")["hippocampus_335"].grade == 1


def test_single_sign_on_when_the_secrets_configure_it(eval_dir, app, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "authlib" else real(name, *a))
    app.secrets["auth"] = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32}
    app.secrets["medft_review"] = {"allowed_emails": ["Carol@Hospital.org"]}
    app.user = {"is_logged_in": False}
    at = app.run()
    assert "Log in with single sign-on" in [b.label for b in at.button]
    at.user = {"is_logged_in": True, "email": "carol@hospital.org", "name": "Carol"}
    at.run()
    assert shown_case(at) == "hippocampus_335" and "Signed in as **carol@hospital.org**" in texts(at)
    at.user = {"is_logged_in": True, "email": "mallory@elsewhere.org"}
    at.run()
    assert not at.image and any("not on this evaluation's list" in e.value for e in at.error)


# --------------------------------------------------------------------------------------------
# app_support without Streamlit
# --------------------------------------------------------------------------------------------
def test_launch_checks_the_folder_and_the_users_file(eval_dir, tmp_path, monkeypatch):
    with pytest.raises(MedftError, match="not an evaluation folder"):
        support.launch(tmp_path, None, None, None)
    bare = make_review_eval(tmp_path / "bare")
    with pytest.raises(MedftError, match=r"medft add-reviewer USERNAME --users .*users\.json"):
        support.launch(bare, None, None, None)
    with pytest.raises(MedftError, match="database URL"):
        support.launch(eval_dir, None, None, "nosuchdb://x")
    # An evaluation.json from before evaluation ids: refused before any server starts.
    old = make_review_eval(tmp_path / "old")
    add_user(old / "users.json", "alice", PASSWORD)
    evaluation = json.loads((old / "evaluation.json").read_text())
    del evaluation["evaluation_id"]
    (old / "evaluation.json").write_text(json.dumps(evaluation))
    with pytest.raises(MedftError, match=r"evaluation_id: Field required\)\. Fix: evaluate again into a new folder"):
        support.launch(old, None, None, f"sqlite:///{tmp_path / 'team.sqlite'}")

    calls = []

    class FakeServer:
        def __init__(self, command):
            calls.append(command)

        def wait(self, timeout=None):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(support.subprocess, "Popen", FakeServer)
    url = f"sqlite:///{tmp_path / 'team.sqlite'}"
    assert support.launch(eval_dir, 8765, None, url) == 0
    command = calls[0]
    assert command[:5] == [sys.executable, "-m", "streamlit", "run", str(support.APP_PATH)]
    options = dict(zip(command[5:command.index("--")][::2], command[5:command.index("--")][1::2], strict=True))
    assert options["--server.headless"] == "true" and options["--server.port"] == "8765"
    assert options["--client.showErrorDetails"] == "none" and options["--browser.gatherUsageStats"] == "false"
    args = command[command.index("--") + 1:]
    assert args == ["--eval-dir", str(eval_dir.resolve()), "--users", str((eval_dir / "users.json").resolve()),
                    "--db", url]
    assert support.parse_app_args(args, {}) == support.AppConfig(eval_dir.resolve(), (eval_dir / "users.json").resolve(),
                                                                 url)


def test_launch_refuses_a_port_another_server_listens_on(eval_dir, monkeypatch):
    monkeypatch.setattr(support.subprocess, "Popen", lambda command: pytest.fail("a server was started"))
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(MedftError, match=rf"cannot serve on 127.0.0.1:{port}: .*Fix: stop it, or give another port: --port {port + 1}"):
            support.launch(eval_dir, port, None, None)


SERVE_A_SLEEPER = """
import sys
from pathlib import Path
from medft.review import app_support as support
eval_dir, port, pid_file = sys.argv[1:]
server = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(300)"
support.streamlit_command = lambda config, port, address: [sys.executable, "-c", server, pid_file]
sys.exit(support.launch(Path(eval_dir), int(port), None, None))
"""


def test_sigterm_to_medft_review_stops_the_server_too(eval_dir, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pid_file = tmp_path / "server.pid"
    review = subprocess.Popen([sys.executable, "-c", SERVE_A_SLEEPER, str(eval_dir), str(port), str(pid_file)],
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and review.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert review.poll() is None, review.stderr.read()
    server_pid = int(pid_file.read_text())
    review.send_signal(signal.SIGTERM)
    assert review.wait(timeout=30) == 143
    with pytest.raises(ProcessLookupError):  # reaped by medft review, not left serving
        os.kill(server_pid, 0)


def test_the_slider_direction_ends_where_a_marker_stored_on_permuted_axes_lies(tmp_path):
    """Stored (superior-inferior, back-front, left-right) with anisotropic voxels: each plane's last slices hold
    the side its slider names last, and the marker is drawn at the top-left corner that the letters name."""
    import nibabel as nib
    import numpy as np

    from medft.data.loading import load_image
    from medft.slices import SLICE_DIRECTION, best_slice, extract_slice, orientation_letters, slice_count

    affine = np.array([[0, 0, -0.6, 50], [0, -0.8, 0, 40], [2.5, 0, 0, -30], [0, 0, 0, 1]], dtype=float)
    stored = np.zeros((12, 20, 30), dtype=np.float32)
    stored[-2:, :3, :4] = 1  # high i: superior; low j: anterior (j runs backwards); low k: right (k runs left)
    nib.save(nib.Nifti1Image(stored, affine), tmp_path / "marker.nii.gz")
    volume = np.asarray(load_image([tmp_path / "marker.nii.gz"]))[0]
    for plane, side in (("axial", "superior"), ("coronal", "anterior"), ("sagittal", "right")):
        assert SLICE_DIRECTION[plane].endswith(side)
        index = best_slice(volume, None, plane, by="label")
        assert index >= slice_count(volume.shape, plane) - 4, plane
        rows, cols = np.nonzero(extract_slice(volume, plane, index))
        assert rows.min() == 0 and cols.min() == 0, plane
        assert orientation_letters(plane)["top"] in "AS" and orientation_letters(plane)["left"] in "RA"


def test_password_login_is_throttled(eval_dir):
    throttle = LoginThrottle(max_failures=3)
    users = eval_dir / "users.json"
    for _ in range(3):
        assert support.password_login(users, throttle, "alice", "wrong") == (False, "Wrong username or password.")
    ok, message = support.password_login(users, throttle, "alice", PASSWORD)
    assert not ok and message.startswith("Too many failed attempts")
    assert support.password_login(users, throttle, "bob", PASSWORD) == (True, "")
    assert support.password_login(users, throttle, "", "") == (False, "Enter your username and password.")
