"""Per-trial bookkeeping shared by every way of making a store: repetition numbers and per-session
z-scoring of voxel responses."""

from __future__ import annotations

import numpy as np


def number_repetitions(image_index: np.ndarray) -> np.ndarray:
    """For trials in presentation order: how many times each trial's image was shown before (0, 1, 2, ...)."""
    image_index = np.asarray(image_index)
    repetition = np.zeros(len(image_index), dtype=np.int64)
    seen: dict[int, int] = {}
    for i, k in enumerate(image_index.tolist()):
        repetition[i] = seen.get(k, 0)
        seen[k] = repetition[i] + 1
    return repetition


def zscore_session(x: np.ndarray, stat_rows: np.ndarray | None = None) -> np.ndarray:
    """Z-score each column (voxel) in place with mean/std (ddof=0) over ``stat_rows`` (default all rows).

    A voxel with zero variance becomes 0 rather than NaN.
    """
    rows = np.arange(len(x)) if stat_rows is None else np.asarray(stat_rows)
    # Two passes over blocks of rows in float64: exact enough, and no full-size float64 temporary
    # (that would double the peak memory of a session).
    block = 64
    total = np.zeros(x.shape[1], dtype=np.float64)
    for i in range(0, len(rows), block):
        total += x[rows[i:i + block]].sum(0, dtype=np.float64)
    mean = total / len(rows)
    sq = np.zeros(x.shape[1], dtype=np.float64)
    for i in range(0, len(rows), block):
        sq += ((x[rows[i:i + block]] - mean) ** 2).sum(0)
    std = np.sqrt(sq / len(rows))
    std[std == 0] = 1.0
    x -= mean.astype(np.float32)
    x /= std.astype(np.float32)
    return x
