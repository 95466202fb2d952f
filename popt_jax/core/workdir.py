"""The workdir a job writes to: created (or refused) up front, and locked while in use.

`claim(workdir)` runs before any job work: a path that is a file, a read-only file system or
an unwritable folder ends the run at once as an `OSError` naming the path (one line in
`popt_jax.main`), and an advisory `fcntl.flock` on `{workdir}/.popt_jax.lock` makes a second
process started on the same workdir refuse instead of interleaving checkpoints. The lock
belongs to the process: it is released when the process exits, however it exits, so a lock
file left by a dead run never blocks the next one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path

from popt_jax.errors import UserError

LOCK_NAME = ".popt_jax.lock"


class WorkdirBusy(UserError):
    """Another live process holds the workdir's lock."""


class WorkdirLock:
    """An exclusive, non-blocking flock on `{workdir}/.popt_jax.lock` (see module doc)."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> WorkdirLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise WorkdirBusy(f"{self.workdir}: in use by another popt_jax run ({holder}); "
                                  "wait for it to finish or pick another --workdir") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def prepare(workdir: str | os.PathLike) -> Path:
    """Creates `workdir` (and parents); OSError naming it if it cannot hold outputs."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory (the workdir must be a folder)",
                                 str(workdir))
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def claim(workdir: str | os.PathLike) -> WorkdirLock:
    """`prepare` + an acquired `WorkdirLock` (the lock file creation doubles as a write test)."""
    return WorkdirLock(prepare(workdir)).acquire()
