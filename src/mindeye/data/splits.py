"""Voxel rows of a subject store for a set of images: single trials, averaged repetitions, or all
repetitions side by side.

Voxels are read from the store's memory map once into a float16 tensor (one copy in RAM, optionally
moved to the GPU later).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mindeye.data.store import SubjectStore


@dataclass
class Split:
    """Rows of voxels with the store image index of each row."""

    voxels: torch.Tensor  # (N, V) float16 (train: one row per trial; eval: one per image)
    image_index: np.ndarray  # (N,)

    def __len__(self) -> int:
        return len(self.image_index)


def load_trials(store: SubjectStore, images: np.ndarray) -> Split:
    """Every trial of the given images, one row each (training uses single repetitions)."""
    rows = np.flatnonzero(np.isin(store.trials.image_index, images))
    return Split(torch.from_numpy(np.asarray(store.voxels[rows], dtype=np.float16)), store.trials.image_index[rows])


def load_averaged(store: SubjectStore, images: np.ndarray) -> Split:
    """One row per image: the mean of its repetitions (the paper's test setting)."""
    rows_all = np.flatnonzero(np.isin(store.trials.image_index, images))
    img_of_row = store.trials.image_index[rows_all]
    uniq, inverse = np.unique(img_of_row, return_inverse=True)
    sums = np.zeros((len(uniq), store.n_voxels), dtype=np.float64)
    counts = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)
    for start in range(0, len(rows_all), 4096):
        block = np.asarray(store.voxels[rows_all[start:start + 4096]], dtype=np.float64)
        np.add.at(sums, inverse[start:start + 4096], block)
    return Split(torch.from_numpy((sums / counts[:, None]).astype(np.float16)), uniq)


def load_eval_split(store: SubjectStore, images: np.ndarray, mode: str = "averaged") -> Split:
    if mode == "single":
        return load_trials(store, images)
    return load_averaged(store, images)


def load_repetitions(store: SubjectStore, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """For the low-level pipeline: (voxels (M, R, V), valid mask (M, R), image indices (M,))."""
    rows_all = np.flatnonzero(np.isin(store.trials.image_index, images))
    img_of_row = store.trials.image_index[rows_all]
    uniq, inverse = np.unique(img_of_row, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(uniq))
    reps = int(counts.max()) if len(counts) else 0
    vox = np.zeros((len(uniq), reps, store.n_voxels), dtype=np.float16)
    mask = np.zeros((len(uniq), reps), dtype=bool)
    slot = np.zeros(len(uniq), dtype=np.int64)
    data = np.asarray(store.voxels[rows_all], dtype=np.float16)
    for r, k in enumerate(inverse.tolist()):
        vox[k, slot[k]] = data[r]
        mask[k, slot[k]] = True
        slot[k] += 1
    return torch.from_numpy(vox), torch.from_numpy(mask), uniq
