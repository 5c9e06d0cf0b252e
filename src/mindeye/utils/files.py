"""Atomic file writes: a kill at any moment leaves the previous file or the new one, never a torn one."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields ``PATH.tmp`` to write; renames it onto ``path`` when the block finishes without an error
    (on an error the partial ``PATH.tmp`` is removed and ``path`` is left as it was)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str | None = None) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent))


def replace_dir(finished: str | os.PathLike, out: str | os.PathLike) -> None:
    """Swap a completed directory ``finished`` into place at ``out``: an existing ``out`` is moved aside first
    and removed only once the new one is in place, so a kill leaves the old or the new directory, never neither
    (the old one then sits in ``OUT.old-PID``)."""
    finished, out = Path(finished), Path(out)
    old = out.with_name(f"{out.name}.old-{os.getpid()}")  # a name no user directory has
    if out.exists():
        os.replace(out, old)
    os.replace(finished, out)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:  # a regular file (or a link) was in the way (--overwrite)
        old.unlink(missing_ok=True)


def path_inside(base: str | os.PathLike, rel: Any, what: str) -> Path:
    """``base / rel`` for a relative path ``rel`` that stays inside ``base`` (an index entry, an image list);
    an absolute path or one climbing out with ``..`` is refused (MindEyeError naming ``what``)."""
    from mindeye.errors import MindEyeError

    text = str(rel) if isinstance(rel, str | os.PathLike) else None
    norm = os.path.normpath(text) if text else ""
    if not text or "\0" in text or os.path.isabs(text) or norm == ".." or norm.startswith(".." + os.sep) \
            or norm.startswith("../"):
        raise MindEyeError(f"{what} names {rel!r}, which is not a path inside {base}; entries must stay inside "
                           "their directory: the file was not written by mindeye (or was edited), rebuild it")
    return Path(base) / norm
