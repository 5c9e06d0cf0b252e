"""Reserve the disk blocks of a memory-mapped output before writing into it.

``numpy.lib.format.open_memmap(mode="w+")`` creates a sparse file; writing into it on a full
filesystem kills the process with SIGBUS (no message, half-written output left behind). Reserving
the blocks first (``posix_fallocate``) turns that into a clear error before any work is done. The need
is compared with the free space (``statvfs``) first, so a file that cannot fit is never allocated: a
failing ``posix_fallocate`` would fill every free block before it fails, and every other process on
the machine would meanwhile hit "no space left".
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from mindeye.errors import MindEyeError

_NO_FALLOCATE = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}


def format_size(n: int | float) -> str:
    """A byte count in a unit that shows it: 512 B, 46.0 MiB, 1.50 GiB (never "0.00 GiB" for 46 MB)."""
    n = float(n)
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.2f} {unit}" if value < 10 else f"{value:.1f} {unit}" if value < 1000 else f"{value:,.0f} {unit}"
    return f"{int(n)} B"


def free_space(path: str | Path) -> int:
    """Bytes an unprivileged process may still write on the filesystem of ``path`` (a file or directory)."""
    path = Path(path)
    where = path if path.is_dir() else path.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    return int(shutil.disk_usage(where).free)  # statvfs f_bavail * f_frsize (what a user may still write)


def not_enough_space(path: Path, needed: int, free: int | None = None) -> MindEyeError:
    if free is None:
        try:
            free = free_space(path)
        except OSError:
            free = None
    has = f"the filesystem has {format_size(free)} free" if free is not None else "the filesystem is full"
    return MindEyeError(f"not enough free disk space to write {path}: it needs {format_size(needed)} and {has}; "
                        "free some space or choose an output on another disk")


def require_space(path: str | Path, needed: int) -> None:
    """Raise MindEyeError before writing ``needed`` more bytes at ``path`` when the filesystem cannot hold them."""
    free = free_space(path)
    if needed > free:
        raise not_enough_space(Path(path), needed, free)


def reserve_file(path: str | Path) -> None:
    """Allocate every block of ``path`` (already sized, e.g. by open_memmap) or raise MindEyeError.

    The free space is compared with what is still to allocate first; only a file that fits is allocated."""
    path = Path(path)
    size = path.stat().st_size
    allocated = getattr(path.stat(), "st_blocks", 0) * 512
    free = free_space(path)
    if size - allocated > free:
        raise not_enough_space(path, size, free + allocated)
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is not None:
        fd = os.open(path, os.O_RDWR)
        try:
            fallocate(fd, 0, size)
            return
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise not_enough_space(path, size, free + allocated) from None
            if exc.errno not in _NO_FALLOCATE:
                raise
        finally:
            os.close(fd)
