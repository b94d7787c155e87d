"""Outputs that appear whole or not at all: a checkpoint, a users file, a prediction, an evaluation
folder, an exported bundle. A kill or a full disk leaves the previous version or the new one, never a part.

Each is written under a partial name beside its destination, ``.HOST.PID.TOKEN.partial.NAME``, and
renamed to NAME once complete (a rename within a folder is atomic). The partial name tells its
writer, so that the next write of NAME removes what killed writers left (a checkpoint is tens of MB:
repeated kills would fill the disk), never a live writer's, nor another host's (the folder may be on
a filesystem that several machines share).
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from medft.errors import DISK_FULL_ERRNOS, MedftError

# torch.save on a full disk raises a RuntimeError without an errno; with less than this left, it is
# taken for a full disk.
_NEARLY_FULL_BYTES = 16 * 2**20


def atomic_write(path: Path, write: Callable[[BinaryIO], object], mode: int = 0o666) -> None:
    """Call ``write`` on a new partial file beside ``path``, sync it, then rename it over ``path``.

    ``mode``: the file's permissions, less the umask (0o600 keeps a secret private)."""
    with new_file(path) as partial:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(fd)
    with contextlib.suppress(OSError):  # the rename itself survives a power cut, where the filesystem allows
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def atomic_write_text(text: str, path: Path, mode: int = 0o666) -> None:
    """Write ``text`` (UTF-8) to ``path`` as atomic_write does."""
    atomic_write(path, lambda file: file.write(text.encode("utf-8")), mode)


@contextlib.contextmanager
def new_file(path: Path) -> Iterator[Path]:
    """Yield a partial name to write (it ends in ``path``'s name, so that writers that pick the format
    by suffix pick the same); rename it to ``path`` when the block ends without an exception, else
    remove it. A full disk raises a MedftError that names the file."""
    partial = _partial_name(path)
    try:
        yield partial
        os.replace(partial, path)
    except BaseException as exc:
        full = _is_disk_full(exc, path.parent)  # before removing the partial file, which frees space
        partial.unlink(missing_ok=True)
        if full:
            raise _disk_full_error(path) from exc
        raise


@contextlib.contextmanager
def new_folder(path: Path) -> Iterator[Path]:
    """Yield a partial folder to fill; rename it to ``path`` (absent, or an empty folder: the
    caller checks, with its own message) when the block ends without an exception.

    On an exception, Ctrl-C included, the partial folder is removed: nothing resumes from it. It
    is kept when everything was written but ``path`` filled up meanwhile (the error names it)."""
    path = path.resolve() if path.is_symlink() else path  # a link to an empty folder: fill that folder
    partial = _partial_name(path)
    partial.mkdir()
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    try:
        os.replace(partial, path)  # replaces an empty folder, never a folder that holds something
    except OSError as exc:
        raise MedftError(f"{path}: the finished output cannot take this name ({exc.strerror}: something was put there "
                         f"meanwhile); it is complete in {partial}. Fix: rename {partial} to a new folder and use that") from None


def _partial_name(path: Path) -> Path:
    """A new partial name for ``path``, once the partials of dead writers are removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    host, suffix = socket.gethostname(), f".partial.{path.name}"
    for entry in os.scandir(path.parent):
        if entry.name.startswith(".") and entry.name.endswith(suffix) and _writer_is_dead(entry.name[1:-len(suffix)], host):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):  # another writer may have removed it first
                    os.unlink(entry.path)
    return path.with_name(f".{host}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


def _writer_is_dead(writer: str, host: str) -> bool:
    """Whether ``HOST.PID.TOKEN`` names a process of ``host`` (this one) that has ended."""
    parts = writer.rsplit(".", 2)  # the host name may hold dots
    return len(parts) == 3 and parts[0] == host and parts[1].isdecimal() and process_ended(int(parts[1]))


def process_ended(pid: int) -> bool:
    """Whether process ``pid`` of this machine has ended; False where that cannot be told."""
    if os.name != "posix":  # os.kill(pid, 0) tells whether a process lives only on POSIX (on Windows it sends Ctrl-C)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: alive, another user's
        pass
    return False


def _is_disk_full(exc: BaseException, folder: Path) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in DISK_FULL_ERRNOS
    # torch.save's C++ writer: "PytorchStreamWriter failed writing file ..." or "unexpected pos ..."
    return isinstance(exc, RuntimeError) and shutil.disk_usage(folder).free < _NEARLY_FULL_BYTES


def _disk_full_error(path: Path) -> MedftError:
    free = shutil.disk_usage(path.parent).free / 2**20
    kept = "its previous version is intact" if path.exists() else "nothing was written"
    return MedftError(
        f"{path}: cannot write the file, the disk is full ({free:.1f} MiB free); {kept}. Fix: free "
        "space on that disk, or write to another disk (another --out folder, for example)"
    )
