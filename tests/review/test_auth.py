"""Reviewer logins: the users file, scrypt hashes, and the login throttle."""
from __future__ import annotations

import base64
import hashlib
import json
import stat
import time

import pytest

from medft.errors import MedftError
from medft.review import auth
from medft.review.auth import LoginThrottle, add_user, list_users, remove_user, verify

PASSWORD = "correct horse battery"


@pytest.fixture
def users_file(tmp_path):
    path = tmp_path / auth.DEFAULT_USERS_FILE
    add_user(path, "alice", PASSWORD, name="Dr Alice")
    return path


def test_add_and_verify(users_file):
    assert verify(users_file, "alice", PASSWORD)
    assert not verify(users_file, "alice", PASSWORD + "!")
    assert not verify(users_file, "alice", "")
    assert not verify(users_file, "Alice", PASSWORD)  # usernames are exact
    assert not verify(users_file, "mallory", PASSWORD)  # unknown user: False, not an error
    assert not verify(users_file, "../../etc/passwd", PASSWORD)
    assert list_users(users_file) == ["alice"]
    assert auth.display_name(users_file, "alice") == "Dr Alice"


def test_the_file_holds_a_salted_scrypt_hash_not_the_password(users_file):
    text = users_file.read_text(encoding="utf-8")
    assert PASSWORD not in text
    entry = json.loads(text)["users"]["alice"]
    assert entry["name"] == "Dr Alice"
    assert entry["created"].endswith("+00:00")
    scheme, n, r, p, salt_b64, key_b64 = entry["hash"].split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    salt = base64.b64decode(salt_b64)
    assert len(salt) == 16
    # The stored key is scrypt(password, salt) with the stored parameters.
    expected = hashlib.scrypt(PASSWORD.encode(), salt=salt, n=16384, r=8, p=1,
                              dklen=len(base64.b64decode(key_b64)))
    assert base64.b64decode(key_b64) == expected


def test_same_password_gets_a_different_salt(tmp_path, users_file):
    add_user(users_file, "bob", PASSWORD)
    users = json.loads(users_file.read_text())["users"]
    assert users["alice"]["hash"] != users["bob"]["hash"]
    assert users["bob"]["name"] == "bob"  # no name given: the username


def test_file_is_private_and_written_atomically(users_file):
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
    add_user(users_file, "bob", PASSWORD)
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
    leftovers = [p.name for p in users_file.parent.iterdir()
                 if p.name not in (users_file.name, users_file.name + ".lock")]
    assert leftovers == []


def test_existing_user_is_kept_unless_replace(users_file):
    with pytest.raises(MedftError, match=r"already exists. Fix: to set a new password, medft add-reviewer alice --users .* --replace"):
        add_user(users_file, "alice", "another password")
    assert verify(users_file, "alice", PASSWORD)
    created = json.loads(users_file.read_text())["users"]["alice"]["created"]

    add_user(users_file, "alice", "another password", replace=True)
    assert verify(users_file, "alice", "another password")
    assert not verify(users_file, "alice", PASSWORD)
    entry = json.loads(users_file.read_text())["users"]["alice"]
    assert entry["name"] == "Dr Alice"  # kept when no new name is given
    assert entry["created"] == created


def test_usernames_differing_only_in_case_are_refused(users_file):
    with pytest.raises(MedftError, match="only in upper and lower case"):
        add_user(users_file, "ALICE", PASSWORD)


def test_remove_user(users_file):
    add_user(users_file, "bob", PASSWORD)
    remove_user(users_file, "alice")
    assert list_users(users_file) == ["bob"]
    assert not verify(users_file, "alice", PASSWORD)
    with pytest.raises(MedftError, match="no user 'alice' to remove. Fix: pick one of bob"):
        remove_user(users_file, "alice")


@pytest.mark.parametrize("username", ["", "a" * 65, "al ice", "alice/..", "ålice", "a:b", None])
def test_username_rule(tmp_path, username):
    with pytest.raises(MedftError, match="not allowed. Fix: use 1 to 64 characters"):
        add_user(tmp_path / "users.json", username, PASSWORD)
    assert not (tmp_path / "users.json").exists()


def test_usernames_that_follow_the_rule(tmp_path):
    path = tmp_path / "users.json"
    for username in ("a", "dr.alice-smith_2", "Z" * 64):
        add_user(path, username, PASSWORD)
    assert list_users(path) == ["Z" * 64, "a", "dr.alice-smith_2"]


@pytest.mark.parametrize("password", ["", "short", "1234567"])
def test_password_rule(tmp_path, password):
    with pytest.raises(MedftError, match="too short \\(at least 8 characters\\)"):
        add_user(tmp_path / "users.json", "alice", password)
    add_user(tmp_path / "users.json", "alice", "12345678")  # eight is enough


def test_unicode_password_in_either_normal_form(tmp_path):
    path = tmp_path / "users.json"
    add_user(path, "jose", "contrase\u00f1a segura")  # precomposed n-tilde
    assert verify(path, "jose", "contrasen\u0303a segura")  # n + combining tilde


def test_list_users_of_a_missing_file_is_empty_but_verify_says_how_to_fix(tmp_path):
    missing = tmp_path / "users.json"
    assert list_users(missing) == []
    with pytest.raises(MedftError, match=r"users.json: the users file does not exist.*Fix: add"):
        verify(missing, "alice", PASSWORD)
    with pytest.raises(MedftError, match="does not exist"):
        remove_user(missing, "alice")


@pytest.mark.parametrize(
    "content, words",
    [
        ("{not json", "not valid JSON"),
        ("[]", 'no "users" object'),
        ('{"users": []}', 'no "users" object'),
        ('{"users": {"alice": {"name": "x"}}}', 'user \'alice\' has no "hash"'),
        (b"\xff\xfe\x00", "cannot be read"),
    ],
)
def test_corrupt_users_file_is_named_with_a_fix(tmp_path, content, words):
    path = tmp_path / "users.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    for call in (lambda: verify(path, "alice", PASSWORD), lambda: list_users(path),
                 lambda: add_user(path, "bob", PASSWORD)):
        with pytest.raises(MedftError, match="Fix:") as caught:
            call()
        assert str(path) in str(caught.value)
        assert words in str(caught.value)
    assert path.read_bytes() == (content if isinstance(content, bytes) else content.encode())


def test_a_damaged_hash_is_named_with_a_fix(users_file):
    data = json.loads(users_file.read_text())
    data["users"]["alice"]["hash"] = "scrypt$16384$8$1$not-base64!$x"
    users_file.write_text(json.dumps(data))
    with pytest.raises(MedftError, match=r"hash of user 'alice' is damaged.*medft add-reviewer alice --users .* --replace"):
        verify(users_file, "alice", PASSWORD)
    data["users"]["alice"]["hash"] = "scrypt$1073741824$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 44
    users_file.write_text(json.dumps(data))
    with pytest.raises(MedftError, match="out of range"):  # no gigabytes of memory for a login
        verify(users_file, "alice", PASSWORD)


def _hash_parts(users_file) -> tuple[dict, list[str]]:
    """The users file's data, and alice's hash split into scrypt, N, r, p, salt, key."""
    data = json.loads(users_file.read_text())
    return data, data["users"]["alice"]["hash"].split("$")


def test_a_key_that_differs_only_in_its_last_byte_refuses_the_right_password(users_file):
    assert verify(users_file, "alice", PASSWORD)
    data, parts = _hash_parts(users_file)
    key = base64.b64decode(parts[5])
    parts[5] = base64.b64encode(key[:-1] + bytes([key[-1] ^ 1])).decode("ascii")
    data["users"]["alice"]["hash"] = "$".join(parts)
    users_file.write_text(json.dumps(data))
    assert not verify(users_file, "alice", PASSWORD)


def test_the_whole_key_is_compared_in_constant_time(users_file, monkeypatch):
    """hmac.compare_digest of the whole derived key with the whole stored key: == or a prefix would leak timing."""
    _, parts = _hash_parts(users_file)
    stored = base64.b64decode(parts[5])
    derived = hashlib.scrypt(PASSWORD.encode(), salt=base64.b64decode(parts[4]), n=16384, r=8, p=1, dklen=32)
    calls = []
    real = auth.hmac.compare_digest

    def recording(a, b):
        calls.append((bytes(a), bytes(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", recording)
    assert verify(users_file, "alice", PASSWORD)
    assert calls == [(derived, stored)] and len(stored) == auth.KEY_BYTES


def test_unknown_user_costs_about_as_much_as_a_known_one(users_file):
    def seconds(username: str) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            verify(users_file, username, "wrong password")
            best = min(best, time.perf_counter() - start)
        return best

    seconds("nobody")  # the dummy hash is made once, on first use
    known, unknown = seconds("alice"), seconds("nobody")
    assert unknown > 0.3 * known  # both run scrypt; a skipped hash would be ~1000 times faster


# -- LoginThrottle -------------------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_locks_after_five_failures_within_the_window():
    clock = FakeClock()
    throttle = LoginThrottle(clock=clock)
    for _ in range(4):
        assert throttle.allowed("alice")
        throttle.record_failure("alice")
        clock.now += 10
    assert throttle.allowed("alice")
    throttle.record_failure("alice")
    assert not throttle.allowed("alice")
    assert not throttle.allowed("ALICE")  # same account, other case
    assert throttle.allowed("bob")  # others are not affected
    assert throttle.retry_after("alice") == pytest.approx(300)
    clock.now += 299
    assert not throttle.allowed("alice")
    assert throttle.retry_after("alice") == pytest.approx(1)
    clock.now += 1
    assert throttle.allowed("alice")
    throttle.record_failure("alice")  # a fresh count after the lockout
    assert throttle.allowed("alice")


def test_throttle_forgets_failures_older_than_the_window():
    clock = FakeClock()
    throttle = LoginThrottle(clock=clock)
    for _ in range(4):
        throttle.record_failure("alice")
    clock.now += 301
    for _ in range(4):
        throttle.record_failure("alice")
    assert throttle.allowed("alice")
    throttle.record_failure("alice")
    assert not throttle.allowed("alice")


def test_throttle_success_clears_the_count():
    clock = FakeClock()
    throttle = LoginThrottle(max_failures=3, window_s=60, lockout_s=30, clock=clock)
    throttle.record_failure("alice")
    throttle.record_failure("alice")
    throttle.record_success("alice")
    throttle.record_failure("alice")
    throttle.record_failure("alice")
    assert throttle.allowed("alice")
    throttle.record_failure("alice")
    assert not throttle.allowed("alice")
    assert throttle.retry_after("alice") == pytest.approx(30)


def test_throttle_rejects_nonsense_settings():
    with pytest.raises(ValueError):
        LoginThrottle(max_failures=0)


def test_replace_needs_an_existing_user_and_a_folder_is_no_users_file(users_file, tmp_path):
    with pytest.raises(MedftError, match=r"no user 'carol' whose password could be replaced. Fix: leave out --replace"
                                         r".*pick one of alice"):
        add_user(users_file, "carol", PASSWORD, replace=True)
    assert list_users(users_file) == ["alice"]
    with pytest.raises(MedftError, match=r"is a folder, not a users file. Fix: give the file's path, such as .*users.json"):
        add_user(tmp_path, "carol", PASSWORD)
    with pytest.raises(MedftError, match=r"does not exist, so nobody can log in. Fix: add a reviewer with medft "
                                         r"add-reviewer USERNAME --users"):
        verify(tmp_path / "nobody.json", "alice", PASSWORD)
