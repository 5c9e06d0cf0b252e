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
from mindeye.errors import MindEyeError


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


PAD_MODES = ("pad3", "available")


def load_averaged(store: SubjectStore, images: np.ndarray, repetitions: str = "available") -> Split:
    """One row per image: the mean of its repetitions (the paper's test setting).

    ``repetitions="pad3"``: an image with fewer than three trials is padded to three by repeating its
    trials in order before averaging ([a] -> [a, a, a]; [a, b] -> [a, b, a], i.e. (2a + b) / 3), as the
    authors' test data were (MindEyeV2 ``src/Train.ipynb``: ``locs.repeat(2)[:3]``); ``"available"``
    weights the available repetitions equally ((a + b) / 2). Images with three or more are the same
    either way.
    """
    if repetitions not in PAD_MODES:
        raise MindEyeError(f"data.test_repetitions must be one of {', '.join(PAD_MODES)}, got {repetitions!r}")
    rows_all = np.flatnonzero(np.isin(store.trials.image_index, images))
    img_of_row = store.trials.image_index[rows_all]
    uniq, inverse = np.unique(img_of_row, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)
    weights = np.ones(len(rows_all), dtype=np.float64)
    if repetitions == "pad3":
        # position of each trial among its image's trials (store order), then the [a, b, a] weights
        order = np.argsort(inverse, kind="stable")
        first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        slot = np.empty(len(rows_all), dtype=np.int64)
        slot[order] = np.arange(len(rows_all)) - np.repeat(first, counts.astype(np.int64))
        n = counts[inverse]
        weights = np.where(n == 1, 3.0, np.where((n == 2) & (slot == 0), 2.0, 1.0))
        counts = np.maximum(counts, 3.0)
    sums = np.zeros((len(uniq), store.n_voxels), dtype=np.float64)
    for start in range(0, len(rows_all), 4096):
        block = np.asarray(store.voxels[rows_all[start:start + 4096]], dtype=np.float64)
        np.add.at(sums, inverse[start:start + 4096], block * weights[start:start + 4096, None])
    return Split(torch.from_numpy((sums / counts[:, None]).astype(np.float16)), uniq)


AVERAGE_MODES = ("inputs", "outputs")


def load_repetition_stack(store: SubjectStore, images: np.ndarray) -> Split:
    """One row per image holding its repetitions side by side, ``(M, R, V)``, for averaging the model's
    OUTPUTS (MindEye2 ``src/recon_inference.ipynb``: the model runs on each of three repetitions and its
    outputs are averaged; an image seen once is ``[a, a, a]``, twice ``locs.repeat(2)[:3]`` = ``[a, a, b]``).
    R = max(3, most repetitions of an image); an image with fewer is padded by cycling its trials in
    store order (``[a, b]`` -> ``[a, b, a]``: the same mean as theirs)."""
    vox, mask, uniq = load_repetitions(store, images)
    counts = mask.sum(1).numpy()
    reps = max(3, int(counts.max()) if len(counts) else 0)
    cycle = np.stack([np.arange(reps) % max(int(c), 1) for c in counts]) if len(counts) else np.zeros((0, reps), int)
    stacked = torch.stack([vox[k, torch.from_numpy(cycle[k])] for k in range(len(uniq))]) if len(uniq) \
        else torch.zeros((0, reps, store.n_voxels), dtype=torch.float16)
    return Split(stacked, uniq)


def load_eval_split(store: SubjectStore, images: np.ndarray, mode: str = "averaged",
                    repetitions: str = "available", average: str = "inputs") -> Split:
    """The test (or validation) split: ``mode`` averaged or single trials; ``repetitions`` (averaged
    only) pads images seen fewer than three times to three (``pad3``, the authors') or not.
    ``average="outputs"`` (averaged only): the repetitions side by side, ``(M, R, V)``, padded to three
    (:func:`load_repetition_stack`); :func:`mindeye.runs.embed_voxels` averages the model's outputs on them."""
    if average not in AVERAGE_MODES:
        raise MindEyeError(f"data.test_average must be one of {', '.join(AVERAGE_MODES)}, got {average!r}")
    if mode == "single":
        return load_trials(store, images)
    if average == "outputs":
        return load_repetition_stack(store, images)
    return load_averaged(store, images, repetitions)


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
