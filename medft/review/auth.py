"""Reviewer logins for the review app: a users file with scrypt password hashes.

The users file is JSON, by default ``users.json``::

    {"users": {"alice": {"hash": "scrypt$16384$8$1$<salt>$<key>", "name": "Dr Alice",
                         "created": "2025-01-31T09:00:00+00:00"}}}

Passwords are never stored: each user has a random 16-byte salt and an scrypt key derived
from the password (n=2**14, r=8, p=1), both base64 in the hash string together with the
parameters, so that stronger parameters can be adopted later without breaking old entries.
The file is rewritten atomically (a temporary file renamed over it) and kept private to its
owner (mode 0600).

``LoginThrottle`` slows password guessing in the app: after 5 failed attempts for a username
within 5 minutes, that username is refused for 5 minutes.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medft.atomic_files import atomic_write_text
from medft.errors import MedftError

DEFAULT_USERS_FILE = "users.json"
USERNAME_RULE = re.compile(r"[A-Za-z0-9._-]{1,64}")
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024  # scrypt takes any length; this only bounds the work per attempt

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
# Bounds for parameters read back from a file: a tampered file must not make a login use
# gigabytes of memory.
_MAX_SCRYPT_N = 2**20
_MAX_SCRYPT_R = 32
_MAX_SCRYPT_P = 16

_FIX_CORRUPT = ("restore the file from a backup, or move it aside and add the reviewers again "
                "with medft add-reviewer")


# -- password hashing --------------------------------------------------------------------------

def _password_bytes(password: str) -> bytes:
    # NFKC: the same password typed on two keyboards (composed or decomposed accents, full-width
    # digits) gives the same bytes.
    return unicodedata.normalize("NFKC", password).encode("utf-8")


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=dklen,
                          maxmem=128 * r * (n + p + 2) + 1024 * 1024)


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$<salt b64>$<key b64>`` for ``password``, with a fresh random salt."""
    salt = secrets.token_bytes(SALT_BYTES)
    key = _scrypt(_password_bytes(password), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, KEY_BYTES)
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P),
                     base64.b64encode(salt).decode("ascii"), base64.b64encode(key).decode("ascii")])


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    """The parameters, salt and key of a hash string; ValueError when it is not one."""
    parts = encoded.split("$") if isinstance(encoded, str) else []
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not of the form scrypt$N$r$p$salt$key")
    n, r, p = (int(part) for part in parts[1:4])
    if not (1 < n <= _MAX_SCRYPT_N and n & (n - 1) == 0 and 0 < r <= _MAX_SCRYPT_R
            and 0 < p <= _MAX_SCRYPT_P):
        raise ValueError(f"scrypt parameters N={n}, r={r}, p={p} out of range")
    salt = base64.b64decode(parts[4], validate=True)
    key = base64.b64decode(parts[5], validate=True)
    if len(salt) < 8 or len(key) < 16:
        raise ValueError("salt or key too short")
    return n, r, p, salt, key


def _check_password(password: str, encoded: str) -> bool:
    n, r, p, salt, key = _parse_hash(encoded)
    candidate = _scrypt(_password_bytes(password), salt, n, r, p, len(key))
    return hmac.compare_digest(candidate, key)


_dummy_hash: str | None = None
_dummy_lock = threading.Lock()


def _dummy() -> str:
    """A hash of a random password, to spend the same time on an unknown username."""
    global _dummy_hash
    with _dummy_lock:
        if _dummy_hash is None:
            _dummy_hash = hash_password(secrets.token_urlsafe(16))
        return _dummy_hash


# -- the users file ----------------------------------------------------------------------------

def _read(path: Path, missing_ok: bool) -> dict[str, dict[str, Any]]:
    """The ``users`` mapping of the file; {} when missing and ``missing_ok``."""
    if path.is_dir():
        raise MedftError(f"{path}: is a folder, not a users file. Fix: give the file's path, such as "
                         f"{path / 'users.json'}")
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise MedftError(
            f"{path}: the users file does not exist, so nobody can log in. Fix: add a reviewer "
            f"with medft add-reviewer USERNAME --users {path}, or point the app at the right users file"
        ) from None
    except PermissionError:
        raise MedftError(
            f"{path}: the users file cannot be read by this user (permission denied). Fix: run "
            "the app as the user that owns the file, or give that user read access "
            "(chmod 600 keeps it private to its owner)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MedftError(f"{path}: the users file cannot be read ({exc}). Fix: {_FIX_CORRUPT}") \
            from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise MedftError(
            f"{path}: the users file is not valid JSON ({exc.msg} at line {exc.lineno}, column "
            f"{exc.colno}). Fix: repair the JSON by hand, or {_FIX_CORRUPT}"
        ) from None
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict):
        raise MedftError(
            f"{path}: the users file has no \"users\" object (expected "
            '{"users": {"alice": {"hash": ..., "name": ..., "created": ...}}}). '
            f"Fix: {_FIX_CORRUPT}"
        )
    for username, entry in users.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str):
            raise MedftError(
                f"{path}: the entry of user {username!r} has no \"hash\" string. Fix: set that "
                f"user's password again (medft add-reviewer {username} --users {path} --replace), or {_FIX_CORRUPT}"
            )
    return users


def _write(path: Path, users: dict[str, dict[str, Any]]) -> None:
    """Replace the file at once (never half-written), private to its owner."""
    text = json.dumps({"users": users}, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    atomic_write_text(text, path, mode=0o600)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialize read-modify-write of the users file between processes (POSIX)."""
    if not path.parent.is_dir():
        raise MedftError(f"{path}: cannot write the users file, the folder {path.parent} does "
                         "not exist. Fix: create the folder first")
    try:
        import fcntl
    except ImportError:  # not POSIX: adding users at the same moment is not guarded
        yield
        return
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _check_username(username: Any) -> str:
    if not isinstance(username, str) or not USERNAME_RULE.fullmatch(username):
        raise MedftError(
            f"username {username!r} is not allowed. Fix: use 1 to 64 characters, each a letter, "
            "a digit, '.', '_' or '-'"
        )
    return username


def _check_new_password(password: Any) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_CHARS:
        raise MedftError(
            f"the password is too short (at least {MIN_PASSWORD_CHARS} characters). Fix: choose "
            "a longer password, a passphrase of a few words is easy to remember"
        )
    if len(password) > MAX_PASSWORD_CHARS:
        raise MedftError(f"the password is longer than {MAX_PASSWORD_CHARS} characters. Fix: "
                         "choose a shorter one")
    return password


def add_user(path: Path | str, username: str, password: str, name: str | None = None,
             replace: bool = False) -> None:
    """Add a reviewer to the users file (created when missing), or with ``replace`` set a new
    password (and name, when given) for an existing one."""
    path = Path(path)
    username = _check_username(username)
    password = _check_new_password(password)
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise MedftError(f"the display name of {username} is empty. Fix: pass a name such as "
                         "'Dr Alice Smith', or leave it out to show the username")
    encoded = hash_password(password)  # outside the lock: it takes a while
    with _locked(path):
        users = _read(path, missing_ok=True)
        old = users.get(username)
        if old is not None and not replace:
            raise MedftError(f"{path}: user {username!r} already exists. Fix: to set a new password, "
                             f"medft add-reviewer {username} --users {path} --replace (in Python: add_user(..., "
                             "replace=True)); or choose another username")
        if old is None and replace:
            raise MedftError(f"{path}: there is no user {username!r} whose password could be replaced. Fix: "
                             f"leave out --replace to add {username!r} as a new reviewer, or pick one of "
                             f"{', '.join(sorted(users)) or '(none yet)'}")
        clash = [other for other in users
                 if other != username and other.casefold() == username.casefold()]
        if clash:
            raise MedftError(f"{path}: user {clash[0]!r} already exists and differs from "
                             f"{username!r} only in upper and lower case, which reviewers would "
                             f"confuse. Fix: use {clash[0]!r}, or choose another username")
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        entry = {"hash": encoded, "name": name or (old or {}).get("name") or username,
                 "created": (old or {}).get("created") or now}
        if old is not None:
            entry["updated"] = now
        users[username] = entry
        _write(path, users)


def remove_user(path: Path | str, username: str) -> None:
    """Remove a reviewer from the users file. Their past reviews stay in the review store."""
    path = Path(path)
    with _locked(path):
        users = _read(path, missing_ok=False)
        if username not in users:
            raise MedftError(f"{path}: there is no user {username!r} to remove. Fix: pick one of "
                             f"{', '.join(sorted(users)) or '(none)'}")
        del users[username]
        _write(path, users)


def list_users(path: Path | str) -> list[str]:
    """The usernames in the users file, sorted; [] when the file does not exist yet."""
    return sorted(_read(Path(path), missing_ok=True))


def display_name(path: Path | str, username: str) -> str:
    """The name to show for ``username`` (the username itself when it has none)."""
    entry = _read(Path(path), missing_ok=True).get(username) or {}
    name = entry.get("name")
    return name if isinstance(name, str) and name.strip() else username


def verify(path: Path | str, username: str, password: str) -> bool:
    """Whether ``password`` is that user's password.

    Constant-time comparison; an unknown or malformed username costs the same scrypt work
    as a known one, so timing does not tell which usernames exist.
    """
    path = Path(path)
    users = _read(path, missing_ok=False)
    entry = users.get(username) if isinstance(username, str) else None
    if not isinstance(password, str) or len(password) > MAX_PASSWORD_CHARS:
        password, entry = "", None
    if entry is None:
        _check_password(password, _dummy())
        return False
    try:
        return _check_password(password, entry["hash"])
    except ValueError as exc:
        raise MedftError(
            f"{path}: the password hash of user {username!r} is damaged ({exc}). Fix: set a new "
            f"password: medft add-reviewer {username} --users {path} --replace"
        ) from None


# -- slowing down guessing ---------------------------------------------------------------------

class LoginThrottle:
    """Refuse a username for a while after repeated failed logins (in memory, per process).

    After ``max_failures`` failures for a username within ``window_s`` seconds, ``allowed``
    is False for ``lockout_s`` seconds after the last of them. A success clears the count.
    Usernames are compared case-insensitively, so "Alice" and "alice" share a count.

        throttle = LoginThrottle()
        if not throttle.allowed(user):
            show(f"Too many attempts; try again in {throttle.retry_after(user):.0f} s")
        elif verify(users_file, user, password):
            throttle.record_success(user)
        else:
            throttle.record_failure(user)
    """

    def __init__(self, max_failures: int = 5, window_s: float = 300.0, lockout_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic):
        if max_failures < 1 or window_s <= 0 or lockout_s <= 0:
            raise ValueError("max_failures must be at least 1, window_s and lockout_s positive")
        self.max_failures = max_failures
        self.window_s = window_s
        self.lockout_s = lockout_s
        self._clock = clock
        self._failures: dict[str, list[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(username: str) -> str:
        return str(username).casefold()

    def _forget_old(self, key: str, now: float) -> None:
        recent = [t for t in self._failures.get(key, []) if now - t < self.window_s]
        if recent:
            self._failures[key] = recent
        else:
            self._failures.pop(key, None)
        if self._locked_until.get(key, now) <= now:
            self._locked_until.pop(key, None)

    def retry_after(self, username: str) -> float:
        """Seconds until ``username`` may try again; 0 when it may now."""
        key = self._key(username)
        with self._lock:
            now = self._clock()
            self._forget_old(key, now)
            return max(0.0, self._locked_until.get(key, now) - now)

    def allowed(self, username: str) -> bool:
        """Whether a login attempt for ``username`` may be checked now."""
        return self.retry_after(username) == 0.0

    def record_failure(self, username: str) -> None:
        key = self._key(username)
        with self._lock:
            now = self._clock()
            self._forget_old(key, now)
            failures = self._failures.setdefault(key, [])
            failures.append(now)
            if len(failures) >= self.max_failures:
                self._locked_until[key] = now + self.lockout_s
                del self._failures[key]  # a fresh count once the lockout ends
            self._prune(now)

    def record_success(self, username: str) -> None:
        key = self._key(username)
        with self._lock:
            self._failures.pop(key, None)
            self._locked_until.pop(key, None)

    def _prune(self, now: float) -> None:
        """Drop stale entries, so that guessing many usernames does not grow memory forever."""
        if len(self._failures) + len(self._locked_until) > 10_000:
            for key in list(self._failures) + list(self._locked_until):
                self._forget_old(key, now)
