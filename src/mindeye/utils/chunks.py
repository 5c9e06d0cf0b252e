"""Resumable chunked memory maps: an array filled chunk by chunk, with the count of finished chunks in
a JSON manifest next to it (``mindeye embed``'s target cache, ``mindeye index build``'s embeddings).

Each chunk is flushed before the manifest records it, and the manifest is replaced atomically, so an
interrupted job re-run with the same arguments continues at the first unfinished chunk and never takes
a half-written chunk for a finished one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mindeye.utils.files import write_json_atomic


def n_chunks(n: int, chunk_size: int) -> int:
    return -(-n // chunk_size)


def open_chunked(path: Path, shape: tuple[int, ...] | None = None, dtype: Any = np.float16) -> np.memmap:
    """A new ``.npy`` memory map of ``shape`` (zero-filled), or with ``shape=None`` the existing one to resume."""
    if shape is None:
        return np.lib.format.open_memmap(path, mode="r+")
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def finish_chunk(manifest_path: Path, manifest: dict[str, Any], arrays: Sequence[np.memmap], indent: int = 2,
                 **progress: Any) -> None:
    """Data first, then the record: flush ``arrays``, update ``manifest`` with ``progress``, write it atomically."""
    for array in arrays:
        array.flush()
    manifest.update(progress)
    write_json_atomic(manifest_path, manifest, indent=indent)
