"""start the clinician review app on an evaluation

Starts the Streamlit review app on an evaluation folder: reviewers log in, go through the
cases (worst first), compare prediction and ground truth, grade each case and comment.
Reviews are stored in EVAL_DIR/reviews.sqlite (or --db, any SQLAlchemy URL such as
postgresql://host/db for a team). Add reviewers first with medft add-reviewer.

example:
  medft review runs/demo/eval --port 8501
"""
from __future__ import annotations

import sys
from pathlib import Path

from medft.cli.common import add_command
from medft.cli.common import port as port_number
from medft.errors import MedftError

ADD_REVIEWER = """add a reviewer (or change a password) in a users file

Adds a reviewer to the users file of the review app; the password is read from the
terminal (or from standard input with --password-stdin) and stored as a scrypt hash.

example:
  medft add-reviewer alice --users runs/demo/eval/users.json --name 'Dr Alice'
"""
REMOVE_REVIEWER = """remove a reviewer from a users file

Removes a reviewer from the users file: they can no longer log in. Their reviews stay in the
review store.

example:
  medft remove-reviewer alice --users runs/demo/eval/users.json
"""


def add_to(commands) -> None:
    review = add_command(commands, "review", __doc__, run)
    review.add_argument("eval_dir", type=Path, help="evaluation folder written by medft evaluate")
    review.add_argument("--port", type=port_number, default=None, help="port to serve on (default: Streamlit's, 8501)")
    review.add_argument("--users", type=Path, default=None, help="users file (default: EVAL_DIR/users.json)")
    review.add_argument("--db", default=None, help="SQLAlchemy URL of the review store (default: SQLite in EVAL_DIR)")
    review.add_argument("--address", default="127.0.0.1",
                        help="network interface to serve on (default: this machine only; 0.0.0.0 for every interface)")

    add = add_command(commands, "add-reviewer", ADD_REVIEWER, add_reviewer)
    add.add_argument("username", help="login name: letters, digits, '.', '_' or '-'")
    add.add_argument("--users", type=Path, required=True, help="users file to create or update")
    add.add_argument("--name", default=None, help="name shown in the app")
    add.add_argument("--replace", action="store_true", help="change the password of an existing reviewer")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")

    remove = add_command(commands, "remove-reviewer", REMOVE_REVIEWER, remove_reviewer)
    remove.add_argument("username", help="login name to remove")
    remove.add_argument("--users", type=Path, required=True, help="users file to update")


def run(eval_dir: Path, port: int | None = None, users: Path | None = None, db: str | None = None,
        address: str = "127.0.0.1") -> int:
    from medft.review.app_support import launch

    return launch(eval_dir, port, users, db, address)


def add_reviewer(username: str, users: Path, name: str | None = None, replace: bool = False,
                 password_stdin: bool = False) -> int:
    from medft.review.auth import add_user

    add_user(users, username, _password(username, password_stdin), name=name, replace=replace)
    print(f"reviewer {username} saved in {users}")
    return 0


def remove_reviewer(username: str, users: Path) -> int:
    from medft.review.auth import remove_user

    remove_user(users, username)
    print(f"reviewer {username} removed from {users}; their reviews stay in the review store")
    return 0


def _password(username: str, from_stdin: bool) -> str:
    import getpass

    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")  # a Windows line end too
    if not sys.stdin.isatty():
        raise MedftError("no terminal to ask the password on (standard input is a pipe or a file). Fix: add "
                         "--password-stdin to read it from standard input, or run the command in a terminal")
    password = getpass.getpass(f"password for {username}: ")
    if getpass.getpass("again: ") != password:
        raise MedftError("the passwords differ; nothing was changed")
    return password
