"""An OS file lock (``fcntl.flock``, non-blocking): two mindeye processes never write the same output at once.

Used for run directories (``mindeye train``) and target caches (``mindeye embed``). The lock file holds the
owner's PID; the lock is released when the process ends, however it ends (kill -9 included).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from mindeye.errors import MindEyeError


class FileLock:
    """``flock`` on ``path`` (created if needed); ``busy`` is the error's advice when another process holds it."""

    def __init__(self, path: str | Path, what: str, busy: str = "wait for it to finish (or stop it)") -> None:
        self.path = Path(path)
        self.what, self.busy = what, busy
        self.fd: int | None = None

    def acquire(self) -> FileLock:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks here; a single user process is assumed
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise MindEyeError(f"{self.what} is in use by another mindeye process (PID {holder}); "
                                   f"{self.busy}") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
