"""An OS file lock on a run directory, so two `mindeye train` processes never write the same run."""

from __future__ import annotations

from pathlib import Path

from mindeye.utils.locks import FileLock

LOCK_NAME = ".lock"


class RunLock(FileLock):
    """``fcntl.flock`` on RUN/.lock, holding the owner's PID; released when the process ends, however it ends."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(Path(run_dir) / LOCK_NAME, str(run_dir),
                         "wait for it to finish (or stop it), or choose another --out")
