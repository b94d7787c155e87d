"""End to end: the real review app served by `streamlit run`, driven in Chromium with Playwright.

Log in, open the worst case, move the slice slider, submit a grade, and find the row in the SQLite
database. A screenshot goes to tmp_path and, when MEDFT_SCREENSHOT_DIR is set, there too.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from medft.review import app_support as support
from medft.review.auth import add_user
from tests.evaluate.helpers import make_review_eval

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
START_TIMEOUT_S = 60
STEP_TIMEOUT_MS = 20_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed (CI installs Debian's "
                                "chromium package; Playwright's own browser download is not used)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"streamlit exited with {process.returncode} before it was ready:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    pytest.fail(f"streamlit not healthy after {timeout_s} s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)  # its own process group: the server and nothing else
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture
def server(tmp_path):
    """The app on a free localhost port, as `medft review` starts it; always stopped afterwards."""
    eval_dir = make_review_eval(tmp_path / "eval")
    add_user(eval_dir / "users.json", "alice", "correct horse battery", name="Dr Alice Example")
    config = support.check_launch(eval_dir)
    port = _free_port()
    log = tmp_path / "streamlit.log"
    with log.open("w") as out:
        process = subprocess.Popen(support.streamlit_command(config, port, address="127.0.0.1"), cwd=tmp_path,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, process, log)
        yield url, eval_dir, log
    finally:
        _stop(process)


def test_log_in_view_the_worst_case_and_grade_it(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, eval_dir, log = server
    expect.set_options(timeout=STEP_TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page.goto(url, timeout=STEP_TIMEOUT_MS)

            # Log in: nothing of the cases before that.
            expect(page.get_by_text("Clinician review")).to_be_visible()
            assert "hippocampus" not in page.content()
            page.get_by_role("textbox", name="Username").fill("alice")
            page.get_by_role("textbox", name="Password").fill("correct horse battery")
            page.get_by_role("button", name="Log in").click()

            # The worst case opens first, three PNG panels side by side.
            expect(page.get_by_role("heading", name="hippocampus_335")).to_be_visible()
            expect(page.get_by_text("0 of 5 reviewed")).to_be_visible()
            images = page.locator("[data-testid='stImage'] img")
            expect(images).to_have_count(3)
            first_src = images.first.get_attribute("src")
            assert re.search(r"\.png$", first_src), first_src

            # One slider moves both panels: the fragment redraws them with the next slice.
            caption = page.get_by_text(re.compile(r"Axial slice \d+ of 41"))
            before = int(re.search(r"slice (\d+)", caption.inner_text()).group(1))
            slider = page.get_by_role("slider", name=re.compile("Slice"))
            slider.focus()
            for _ in range(3):
                slider.press("ArrowRight")
            expect(page.get_by_text(f"Axial slice {before + 3} of 41")).to_be_visible()
            expect(images.first).not_to_have_attribute("src", first_src)

            # Grade it.
            page.get_by_text("2 \u00b7 minor edits").click()
            page.get_by_label("Comment").fill("posterior tail missed on the lower slices")
            page.get_by_role("button", name="Submit grade").click()
            expect(page.get_by_text("Saved: grade 2")).to_be_visible()
            expect(page.get_by_text("1 of 5 reviewed")).to_be_visible()
            page.wait_for_timeout(300)  # let the last images settle for the picture
            shot = tmp_path / "review_app.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()

    if os.environ.get("MEDFT_SCREENSHOT_DIR"):
        target = Path(os.environ["MEDFT_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target / shot.name)
    assert shot.stat().st_size > 10_000

    evaluation_id = json.loads((eval_dir / "evaluation.json").read_text())["evaluation_id"]
    with sqlite3.connect(eval_dir / "reviews.sqlite") as db:
        rows = db.execute("SELECT evaluation_id, case_id, reviewer, grade, comment FROM reviews").fetchall()
    assert rows == [(evaluation_id, "hippocampus_335", "alice", 2, "posterior tail missed on the lower slices")]
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
