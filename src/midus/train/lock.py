"""One run per folder: an OS file lock (`fcntl.flock`) on `FOLDER/.lock`, which names its holder.

The kernel releases the lock when its holder dies, however it dies; the file then still names the
dead holder. Taking such a lock over is safe when the holder was on this host and its pid is gone
(warned). A holder on another host cannot be checked from here: the folder is refused, naming it.
"""

import errno
import fcntl
import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

from ..errors import MidusError, warn

LOCK_FILE = ".lock"


class FolderLocked(MidusError):
    """Another live process holds the folder."""


@contextmanager
def folder_lock(folder: str | Path, what: str = "run"):
    """Hold `folder`'s lock (the folder must exist) for the `with` block; refuse if another process
    holds it. `what` names the holder's work in messages (`midus train run`, `compare`)."""
    fd = locked_file(Path(folder) / LOCK_FILE, folder, what)
    try:
        take_over(fd, folder, what)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # released cleanly: the file names nobody
    finally:
        os.close(fd)  # releases the lock


def locked_file(path: Path, folder, what: str) -> int:
    """An open descriptor of `path`, exclusively locked. A lock file removed or replaced while we
    waited for it (a holder undoing its folder) is opened again, so two processes never both lock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = read_holder(fd)
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise FolderLocked(f"{folder} is in use by another {what} ({describe(holder)}); "
                               "wait for it to finish, or stop it") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def take_over(fd: int, folder, what: str) -> None:
    """The lock is ours; if the file still names a holder, that holder died without releasing it."""
    holder = read_holder(fd)
    if holder is None:
        return
    _, host = holder
    if host != socket.gethostname():
        raise FolderLocked(f"{folder} was locked by a {what} on another host ({describe(holder)}) that this host "
                           f"cannot check; if it is not running, delete {Path(folder) / LOCK_FILE}")
    warn(f"{folder}: taking over the lock of a {what} that is gone ({describe(holder)})")


def read_holder(fd: int) -> tuple[int, str] | None:
    fields = os.pread(fd, 4096, 0).decode(errors="replace").split()
    if len(fields) != 2 or not fields[0].isdigit():
        return None
    return int(fields[0]), fields[1]


def describe(holder: tuple[int, str] | None) -> str:
    return "holder unknown" if holder is None else f"pid {holder[0]} on host {holder[1]}"


def clear_but_lock(folder: str | Path) -> None:
    """Delete everything in `folder` but its lock file (held by this process: `folder_lock`)."""
    for path in Path(folder).iterdir():
        if path.name == LOCK_FILE:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
