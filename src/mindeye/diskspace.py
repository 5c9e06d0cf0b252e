"""Reserve the disk blocks of a memory-mapped output before writing into it.

``numpy.lib.format.open_memmap(mode="w+")`` creates a sparse file; writing into it on a full
filesystem kills the process with SIGBUS (no message, half-written output left behind). Reserving
the blocks first (``posix_fallocate``) turns that into a clear error before any work is done.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from mindeye.errors import MindEyeError

_NO_FALLOCATE = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def not_enough_space(path: Path, needed: int) -> MindEyeError:
    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        free = 0
    return MindEyeError(f"not enough free disk space to write {path}: it needs {_gib(needed)} and the "
                        f"filesystem has {_gib(free)} free; free some space or choose an output on another disk")


def reserve_file(path: str | Path) -> None:
    """Allocate every block of ``path`` (already sized, e.g. by open_memmap) or raise MindEyeError."""
    path = Path(path)
    size = path.stat().st_size
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is not None:
        fd = os.open(path, os.O_RDWR)
        try:
            fallocate(fd, 0, size)
            return
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise not_enough_space(path, size) from None
            if exc.errno not in _NO_FALLOCATE:
                raise
        finally:
            os.close(fd)
    # No fallocate here (macOS, some network filesystems): compare with the free space instead.
    allocated = getattr(path.stat(), "st_blocks", 0) * 512
    if shutil.disk_usage(path.parent).free < size - allocated:
        raise not_enough_space(path, size)
