"""What the review app needs that is not layout: its arguments, its launch, logins, windows, pictures.

``apps/review.py`` is the Streamlit page; everything here runs without Streamlit, so it is tested
(and used by ``medft review``) without a browser.

How the app gets its arguments: ``streamlit run apps/review.py -- --eval-dir D --users U --db URL``
(Streamlit hands what follows ``--`` to the script as ``sys.argv[1:]``). Where the script runs
without a command line (Streamlit's ``AppTest``, a hosting service), the environment variables
``MEDFT_REVIEW_EVAL_DIR``, ``MEDFT_REVIEW_USERS`` and ``MEDFT_REVIEW_DB`` stand in for them.
"""
from __future__ import annotations

import argparse
import html
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medft.errors import DataError, MedftError
from medft.evaluate.hidden_paths import hide_paths
from medft.review.cases import check_eval_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
APP_PATH = REPO_ROOT / "apps" / "review.py"
DEFAULT_PORT = 8501  # Streamlit's
ENV_EVAL_DIR, ENV_USERS, ENV_DB = "MEDFT_REVIEW_EVAL_DIR", "MEDFT_REVIEW_USERS", "MEDFT_REVIEW_DB"
# Streamlit options of a served review app. showErrorDetails "none": the browser gets a generic
# message only (the value "false" of older Streamlit versions now means "stacktrace", which
# would show the traceback). No file watching: the app is not being edited while it serves.
SERVER_OPTIONS = (
    ("server.headless", "true"),
    ("client.showErrorDetails", "none"),
    ("client.toolbarMode", "minimal"),
    ("browser.gatherUsageStats", "false"),
    ("server.fileWatcherType", "none"),
    ("server.runOnSave", "false"),
    ("theme.base", "dark"),  # images are read on a dark surround, as on a reading-room screen
    ("theme.primaryColor", "#3d8bd9"),
)
ADD_REVIEWER_HINT = "medft add-reviewer USERNAME --users {path}"

log = logging.getLogger("medft.review")


# --------------------------------------------------------------------------------------------
# Arguments and launch
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AppConfig:
    eval_dir: Path
    users: Path
    db: str | None = None

    @property
    def paths(self) -> list[Path]:
        """The folder and files the app was given, absolute: ``user_message`` hides them, spaces and all."""
        paths = [self.eval_dir, self.users]
        if self.db and self.db.startswith("sqlite:///"):
            paths.append(Path(self.db.removeprefix("sqlite:///")))
        return [path.resolve() for path in paths]


def configured_paths() -> list[Path]:
    """``AppConfig.paths`` of the running app; [] when its arguments are missing."""
    try:
        return parse_app_args().paths
    except MedftError:
        return []


def default_users_file(eval_dir: Path) -> Path:
    return Path(eval_dir) / "users.json"


def parse_app_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> AppConfig:
    """The app's settings from ``argv`` (``sys.argv[1:]``), else from the environment.

    Unknown arguments are ignored (under a test runner ``sys.argv`` holds the runner's own).
    MedftError when no evaluation folder is given.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="apps/review.py", add_help=False)
    parser.add_argument("--eval-dir", type=Path)
    parser.add_argument("--users", type=Path)
    parser.add_argument("--db")
    args, _ = parser.parse_known_args(argv)
    eval_dir = args.eval_dir or (Path(environ[ENV_EVAL_DIR]) if environ.get(ENV_EVAL_DIR) else None)
    if eval_dir is None:
        raise MedftError(
            "no evaluation folder given. Fix: start the app with 'medft review EVAL_DIR', or "
            f"'streamlit run apps/review.py -- --eval-dir EVAL_DIR' (or set {ENV_EVAL_DIR})"
        )
    users = args.users or (Path(environ[ENV_USERS]) if environ.get(ENV_USERS) else default_users_file(eval_dir))
    db = args.db or environ.get(ENV_DB) or None
    return AppConfig(eval_dir=eval_dir, users=users, db=db)


def check_launch(eval_dir: Path, users: Path | None = None, db: str | None = None) -> AppConfig:
    """Everything ``launch`` checks before starting a server; MedftError naming the fix."""
    eval_dir = check_eval_dir(Path(eval_dir)).resolve()
    users = Path(users) if users is not None else default_users_file(eval_dir)
    if not users.is_file():
        raise MedftError(
            f"{users}: no users file, so no reviewer can log in. Fix: add a reviewer with "
            f"'{ADD_REVIEWER_HINT.format(path=users)}', or pass --users FILE"
        )
    from medft.review.auth import list_users
    from medft.review.store import ReviewStore

    if not list_users(users):
        raise MedftError(f"{users}: the users file lists no reviewer. Fix: "
                         f"'{ADD_REVIEWER_HINT.format(path=users)}'")
    # A bad URL, an unwritable folder or an evaluation.json without an evaluation_id (which scopes
    # the reviews, so that evaluations sharing a --db stay apart) fails here, not in the browser.
    ReviewStore.for_eval_dir(eval_dir, db).close()
    return AppConfig(eval_dir=eval_dir, users=users.resolve(), db=db)


def streamlit_command(config: AppConfig, port: int | None = None, address: str | None = None,
                      python: str | None = None) -> list[str]:
    """The ``streamlit run`` command line of the review app (``address``: the interface to listen
    on; Streamlit's own default is every interface)."""
    command = [python or sys.executable, "-m", "streamlit", "run", str(APP_PATH)]
    for option, value in SERVER_OPTIONS:
        command += [f"--{option}", value]
    if port is not None:
        command += ["--server.port", str(int(port))]
    if address is not None:
        command += ["--server.address", str(address)]
    command += ["--", "--eval-dir", str(config.eval_dir), "--users", str(config.users)]
    if config.db:
        command += ["--db", config.db]
    return command


def launch(eval_dir: Path, port: int | None = None, users: Path | None = None, db: str | None = None,
           address: str = "127.0.0.1") -> int:
    """``medft review``: check the folder, users file and database, then serve the app until
    Ctrl-C or SIGTERM, which stop the server too; returns streamlit's exit code. It listens on ``address``: this machine only by
    default, since the app shows patients' images; 0.0.0.0 serves every network interface."""
    config = check_launch(eval_dir, users, db)
    if not APP_PATH.is_file():
        raise MedftError(f"{APP_PATH}: the review app is missing. Fix: run medft from its source checkout "
                         "(pip install -e .)")
    _require_free_port(address, port or DEFAULT_PORT)
    command = streamlit_command(config, port, address)
    print(f"medft review: serving {config.eval_dir} on {address}:{port or DEFAULT_PORT} (reviewers from {config.users}); "
          "Ctrl-C stops it", file=sys.stderr)
    # The current folder stays the server's: Streamlit reads .streamlit/secrets.toml (single
    # sign-on, [auth]) and config.toml from there, or from ~/.streamlit.
    process = subprocess.Popen(command)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return process.wait()
    except KeyboardInterrupt:  # the terminal sent Ctrl-C to streamlit too: let it shut down
        _stop(process, grace=10)
        return 130
    except _Terminated:  # a service manager or kill stopped medft review: the server goes with it
        process.terminate()
        _stop(process, grace=10)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)
        if process.poll() is None:  # any other way out of the wait leaves no server behind
            process.terminate()
            _stop(process, grace=5)


class _Terminated(Exception):
    """SIGTERM reached ``medft review``."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


def _stop(process: subprocess.Popen, grace: float) -> None:
    """Give the server ``grace`` seconds to exit, then terminate it, then kill it."""
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _require_free_port(address: str, port: int) -> None:
    """Fail before Streamlit starts when another server holds the port (Streamlit's own message names no fix)."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Streamlit's server: only a listener blocks
        try:
            probe.bind((address, port))
        except OSError as error:
            raise MedftError(f"cannot serve on {address}:{port}: {error.strerror} (another server, perhaps an earlier "
                             f"medft review, holds it). Fix: stop it, or give another port: --port {port + 1}") from None


# --------------------------------------------------------------------------------------------
# Logins
# --------------------------------------------------------------------------------------------
def password_login(users_file: Path, throttle, username: str, password: str) -> tuple[bool, str]:
    """(logged in, message for the login form). Throttled per username; one message for an
    unknown user and a wrong password, so the form does not tell which usernames exist."""
    from medft.review.auth import verify

    username = (username or "").strip()
    if not username or not password:
        return False, "Enter your username and password."
    if not throttle.allowed(username):
        return False, f"Too many failed attempts. Try again in {int(throttle.retry_after(username)) + 1} s."
    if verify(users_file, username, password):
        throttle.record_success(username)
        return True, ""
    throttle.record_failure(username)
    return False, "Wrong username or password."


# --------------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------------
def window_choices() -> list[str]:
    from medft.review.volumes import AUTO_WINDOW, MANUAL_WINDOW
    from medft.slices import WINDOW_PRESETS

    return [AUTO_WINDOW, *WINDOW_PRESETS, MANUAL_WINDOW]


def window_for(choice: str, auto: tuple[float, float], manual: tuple[float, float] | None = None) -> tuple[float, float]:
    """(width, level) of a window choice: the case's percentile window, a CT preset, or the manual one."""
    from medft.slices import WINDOW_PRESETS

    if choice in WINDOW_PRESETS:
        return WINDOW_PRESETS[choice]
    if choice == "Manual" and manual is not None:
        return manual
    return auto


def first_window_choice(looks_like_ct: bool) -> str:
    """The window a case opens with when the reviewer has chosen none yet: soft tissue for CT, else the
    case's percentile window."""
    from medft.review.volumes import AUTO_WINDOW

    return "CT soft tissue" if looks_like_ct else AUTO_WINDOW


# --------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------
def viewer_views(case_views: Sequence[str]) -> list[str]:
    """The panels of the viewer, left to right, of a case that can show ``case_views``
    (``CaseVolumes.views``): ground truth, prediction and difference; the bare image first when the
    case has no ground truth."""
    views = [v for v in ("truth", "prediction", "difference") if v in case_views] or ["image"]
    if "truth" not in case_views:
        views = ["image", *views]
    return views


def panel_png(case, plane: str, index: int, view: str, window: tuple[float, float], opacity: float = 0.4,
              mode: str = "filled") -> bytes:
    """One panel of the viewer as PNG bytes: the slice of ``case`` (``CaseVolumes``) in its frame of
    orientation letters."""
    from medft.slices import orientation_letters, to_png

    rgb = case.render(plane, index, view, window, opacity=opacity, mode=mode)
    return to_png(frame_with_letters(rgb, orientation_letters(plane)))


def frame_with_letters(rgb: np.ndarray, letters: Mapping[str, str], margin: int = 22) -> np.ndarray:
    """The slice on a black frame with the patient direction at the middle of each edge (R, L, A, P, S, I)."""
    from PIL import Image, ImageDraw

    rgb = np.asarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    canvas = np.zeros((h + 2 * margin, w + 2 * margin, 3), dtype=np.uint8)
    canvas[margin:margin + h, margin:margin + w] = rgb
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    font = _font(int(margin * 0.7))
    centre = {"top": (margin + w / 2, margin / 2), "bottom": (margin + w / 2, margin + h + margin / 2),
              "left": (margin / 2, margin + h / 2), "right": (margin + w + margin / 2, margin + h / 2)}
    for edge, (x, y) in centre.items():
        draw.text((x, y), letters[edge], fill=(255, 214, 10), font=font, anchor="mm")
    return np.asarray(picture)


_FONTS: dict[int, object] = {}


def _font(size: int):
    from PIL import ImageFont

    if size not in _FONTS:
        try:
            _FONTS[size] = ImageFont.load_default(size=size)
        except (TypeError, OSError):  # Pillow without FreeType: the bitmap font
            _FONTS[size] = ImageFont.load_default()
    return _FONTS[size]


def legend_html(class_names: Sequence[str], difference: bool = True) -> str:
    """Colour swatches of the foreground classes (and of the difference view), class names escaped."""
    from medft.case_pictures import class_legend, difference_legend

    def swatches(legend: list[tuple[str, str]]) -> str:
        return "".join(f'<span style="display:inline-flex;align-items:center;margin-right:14px;white-space:nowrap">'
                       f'<span style="display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:5px;'
                       f'background:{colour}"></span>{html.escape(str(name))}</span>' for colour, name in legend)

    text = '<div style="font-size:0.85rem;line-height:1.8">' + swatches(class_legend(class_names))
    if difference:
        text += '<span style="color:#888;margin:0 10px 0 4px">|</span>difference: ' + swatches(difference_legend())
    return text + "</div>"


# --------------------------------------------------------------------------------------------
# Reviews and errors
# --------------------------------------------------------------------------------------------
def reviews_csv(store) -> bytes:
    """Every review of the store's evaluation as CSV bytes (``ReviewStore.export_csv``: other
    evaluations sharing the database are left out)."""
    with tempfile.TemporaryDirectory(prefix="medft-reviews-") as folder:
        path = store.export_csv(Path(folder) / "reviews.csv")
        return path.read_bytes()


def user_message(exc: BaseException, known: Sequence[Path] = ()) -> str:
    """A short message for the page: a medft error's own words without file paths (``hide_paths``:
    a folder may be named after the patient; the ``known`` ones, such as ``AppConfig.paths``, are
    hidden even where they hold spaces), else only the kind of error; the traceback goes to the
    server log."""
    if isinstance(exc, DataError):
        details = exc.details
        where = f"case {details.case_id}: " if details.case_id else ""
        return hide_paths(f"{where}{details.problem}. Fix: {details.fix}", known)
    if isinstance(exc, MedftError):
        return hide_paths(exc.public, known)
    log.error("review app: unexpected error", exc_info=exc)
    return f"Something went wrong ({type(exc).__name__}). The details are in the server's log."
