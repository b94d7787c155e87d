"""Atomic writes: stale temporaries of killed writers, full disks, permissions."""
from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys

import pytest
import torch

from medft import atomic_files
from medft.atomic_files import atomic_write, atomic_write_text
from medft.errors import MedftError
from medft.review.auth import add_user, verify
from tests.conftest import REPO

KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from medft.atomic_files import atomic_write

def write_then_die(file):
    file.write(b"half of it")
    file.flush()
    os.kill(os.getpid(), signal.SIGKILL)

atomic_write(Path(sys.argv[1]), write_then_die)
"""


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _temporaries(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder) if ".partial." in name)


def test_the_temporary_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    path = tmp_path / "last.pt"
    atomic_write_text("old", path)
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], cwd=REPO)
    assert killed.returncode == -signal.SIGKILL
    assert path.read_text() == "old" and len(_temporaries(tmp_path)) == 1  # what the kill left

    atomic_write_text("new", path)
    assert path.read_text() == "new" and _temporaries(tmp_path) == []


def test_only_temporaries_of_dead_writers_on_this_host_are_removed(tmp_path):
    host, dead = socket.gethostname(), _dead_pid()
    kept = [
        f".{host}.{os.getpid()}.aa.partial.last.pt",  # a live writer
        f".other-node.{dead}.bb.partial.last.pt",  # another host, on a shared filesystem
        f".{host}.{dead}.cc.partial.best.pt",  # another file
        f".{host}.{dead}.partial.last.pt",  # no writer in the name
    ]
    for name in [*kept, f".{host}.{dead}.dd.partial.last.pt"]:
        (tmp_path / name).write_bytes(b"partial")
    atomic_write_text("new", tmp_path / "last.pt")
    assert _temporaries(tmp_path) == sorted(kept)


def test_the_users_file_stays_private_and_its_stale_temporaries_go(tmp_path):
    users = tmp_path / "users.json"
    stale = tmp_path / f".{socket.gethostname()}.{_dead_pid()}.ee.partial.users.json"
    stale.write_text("{}")
    add_user(users, "alice", "correct horse battery")
    assert not stale.exists() and verify(users, "alice", "correct horse battery")
    assert stat.S_IMODE(users.stat().st_mode) == 0o600


def test_a_mode_keeps_the_file_private_and_the_default_follows_the_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write_text("secret", tmp_path / "private", mode=0o600)
        atomic_write_text("plain", tmp_path / "plain")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o644


def test_the_temporary_is_synced_whole_before_it_is_renamed(tmp_path, monkeypatch):
    """Else a power cut after the rename can leave an empty or partial file under the final name."""
    path, events = tmp_path / "last.pt", []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd):
        info = os.fstat(fd)
        events.append(("fsync", info.st_ino, info.st_size) if stat.S_ISREG(info.st_mode) else ("fsync folder",))
        real_fsync(fd)

    def renaming(real):
        def rename(src, dst, *args, **kwargs):
            events.append(("rename", os.stat(src).st_ino, os.fspath(dst)))
            real(src, dst, *args, **kwargs)
        return rename

    monkeypatch.setattr(atomic_files.os, "fsync", fsync)
    monkeypatch.setattr(atomic_files.os, "replace", renaming(real_replace))
    monkeypatch.setattr(atomic_files.os, "rename", renaming(real_rename))
    atomic_write_text("complete", path)
    monkeypatch.undo()
    inode = path.stat().st_ino
    assert events[:2] == [("fsync", inode, len("complete")), ("rename", inode, str(path))], events
    assert path.read_text() == "complete"


def test_the_file_is_a_rename_of_the_temporary_not_a_copy_into_the_old_file(tmp_path):
    """Writing into the old file would change every hard link to it (and half-write it on a kill)."""
    other, path = tmp_path / "other.pt", tmp_path / "last.pt"
    other.write_text("old")
    os.link(other, path)
    old_inode = path.stat().st_ino
    atomic_write_text("new", path)
    assert path.read_text() == "new" and other.read_text() == "old"
    assert path.stat().st_ino != old_inode and other.stat().st_ino == old_inode and other.stat().st_nlink == 1


def _disk_with_free(monkeypatch, free: int) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(2**40, 2**40 - free, free))


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
    RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                 "data/0: file write failed"),
])
def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    path = tmp_path / "checkpoints" / "last.pt"
    atomic_write(path, lambda file: torch.save({"epoch": 1}, file))

    def fill_the_disk(obj, file):
        file.write(b"x" * 1000)
        raise failure

    monkeypatch.setattr(torch, "save", fill_the_disk)
    _disk_with_free(monkeypatch, 512 * 1024)
    with pytest.raises(MedftError) as caught:
        atomic_write(path, lambda file: torch.save({"epoch": 2}, file))
    message = str(caught.value)
    assert message.startswith(f"{path}: cannot write the file, the disk is full (0.5 MiB free); "
                              "its previous version is intact. Fix: free space")
    assert "another --out" in message
    monkeypatch.undo()
    assert torch.load(path)["epoch"] == 1
    assert os.listdir(path.parent) == ["last.pt"]


def test_a_full_disk_on_a_new_file_says_nothing_was_written(tmp_path, monkeypatch):
    _disk_with_free(monkeypatch, 0)

    def fill_the_disk(file):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(MedftError, match=r"disk is full \(0.0 MiB free\); nothing was written"):
        atomic_write(tmp_path / "config.yaml", fill_the_disk)
    assert os.listdir(tmp_path) == []


def test_a_runtime_error_with_space_left_is_no_full_disk(tmp_path, monkeypatch):
    _disk_with_free(monkeypatch, 2**30)

    def broken(file):
        raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match="something else"):
        atomic_write(tmp_path / "last.pt", broken)
    assert os.listdir(tmp_path) == []
