"""Training/evaluation data: voxels from the subject store, targets from the target cache only.

Voxels are read from the store's memory map once into a float16 tensor (one copy in RAM,
optionally moved to the GPU); targets are indexed per batch from the cache's memory map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mindeye.config import Config
from mindeye.data.store import SubjectStore
from mindeye.errors import MindEyeError


@dataclass
class Split:
    """Rows of voxels with the store image index of each row."""

    voxels: torch.Tensor  # (N, V) float16 (train: one row per trial; eval: one per image)
    image_index: np.ndarray  # (N,)

    def __len__(self) -> int:
        return len(self.image_index)


def train_val_images(store: SubjectStore, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation image indices; carve ``data.val_images`` out of train if the store has no val."""
    train_imgs = store.image_indices("train")
    val_imgs = store.image_indices("val")
    if len(val_imgs) == 0 and cfg.data.val_images > 0:
        if cfg.data.val_images >= len(train_imgs):
            raise MindEyeError(f"data.val_images={cfg.data.val_images} leaves no training images "
                               f"(the store has {len(train_imgs)})")
        rng = np.random.default_rng(cfg.seed)
        val_imgs = np.sort(rng.choice(train_imgs, cfg.data.val_images, replace=False))
        train_imgs = np.setdiff1d(train_imgs, val_imgs)
    return train_imgs, val_imgs


def training_images(store: SubjectStore, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """(images trained on, validation images) of the neural models.

    With ``data.train_on_val`` (the paper configs) the validation images are trained on too, as the
    authors did (``Train_MindEye.py``/``train_autoencoder.py``: ``num_train = 8559 + 300``); validation
    scores are then not held out. The ridge baseline keeps its validation images for choosing alpha.
    """
    train_imgs, val_imgs = train_val_images(store, cfg)
    if cfg.data.train_on_val and len(val_imgs):
        train_imgs = np.union1d(train_imgs, val_imgs)
    return train_imgs, val_imgs


class EpochSampler:
    """Which (image, repetition) pairs each training step uses, as index arrays (no data is touched).

    ``unit="images"`` (the authors'): an epoch is one pass over the unique images, ``floor(M / batch)``
    steps; step ``s`` uses repetition ``s % R`` of every image in the batch with ``repetition="step"``
    (``Train_MindEye.py``: ``voxel[:, train_i % 3]``; an image with fewer repetitions wraps round its
    own), or a random repetition per sample with ``repetition="sample"``. ``unit="trials"``: an epoch is
    one pass over every trial, ``floor(trials / batch)`` steps (about 3x as many on NSD).
    The last partial batch is dropped either way (reference).
    """

    def __init__(self, counts: np.ndarray, batch_size: int, unit: str = "images", repetition: str = "step") -> None:
        self.counts = np.asarray(counts, dtype=np.int64)  # repetitions of each image (M,)
        if (self.counts < 1).any():
            raise MindEyeError("every training image needs at least one trial")
        self.batch_size, self.unit, self.repetition = int(batch_size), unit, repetition
        n = len(self.counts) if unit == "images" else int(self.counts.sum())
        if n < self.batch_size:
            what = "images" if unit == "images" else "trials"
            raise MindEyeError(f"only {n} training {what} for batch size {self.batch_size}; lower train.batch_size")
        self.n_units = n

    def steps_per_epoch(self) -> int:
        return self.n_units // self.batch_size

    def epoch(self, generator: torch.Generator):
        """Yield (image positions (B,), repetition slots (B,)) int64 arrays for every step of one epoch."""
        bs = self.batch_size
        perm = torch.randperm(self.n_units, generator=generator).numpy()
        if self.unit == "trials":
            pos_of = np.repeat(np.arange(len(self.counts)), self.counts)
            slot_of = np.arange(len(pos_of)) - np.repeat(np.cumsum(self.counts) - self.counts, self.counts)
        for s in range(self.steps_per_epoch()):
            idx = perm[s * bs:(s + 1) * bs]
            if self.unit == "trials":
                yield pos_of[idx], slot_of[idx]
                continue
            if self.repetition == "step":
                slots = s % self.counts[idx]
            else:
                slots = (torch.rand(len(idx), generator=generator).numpy() * self.counts[idx]).astype(np.int64)
            yield idx, slots


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


def target_options(cfg: Config, encoder: str) -> dict[str, Any]:
    """Encoder options the config fixes for ``encoder``'s targets (part of the cache fingerprint)."""
    if encoder.startswith("clip-"):
        return {"preprocess": cfg.targets.clip_preprocess}
    return {}


class Targets:
    """Cached encoder outputs for every image of the store, indexed by store image index."""

    def __init__(self, store_path: str | Path, encoder: str, weights: str | None, views: int = 0,
                 options: dict[str, Any] | None = None) -> None:
        from mindeye.encoders.cache import load_targets

        self.encoder = encoder
        options = options or {}
        arr = load_targets(store_path, encoder, weights, **options)
        # Small caches live in RAM; large ones stay memory-mapped and are read per batch.
        self.array = np.asarray(arr) if arr.nbytes < (2 << 30) else arr
        self.views = load_targets(store_path, encoder, weights, views=True, **options) if views > 0 else None
        if self.views is not None and self.views.shape[1] < views:
            raise MindEyeError(f"the {encoder} cache holds {self.views.shape[1]} augmented views but the config "
                               f"asks for {views}; re-run `mindeye embed --views {views}`")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[1:])

    def get(self, image_index: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        """float32 targets for the given images; with cached views, a random augmented view each."""
        order = np.argsort(image_index, kind="stable")
        if self.views is not None and generator is not None:
            k = torch.randint(0, self.views.shape[1] + 1, (len(image_index),), generator=generator).numpy()
            out = np.empty((len(image_index), *self.shape), dtype=np.float16)
            plain = k == 0  # view 0 = the un-augmented image
            out[plain] = self.array[image_index[plain]]
            out[~plain] = self.views[image_index[~plain], k[~plain] - 1]  # one read, not one per sample
            return torch.from_numpy(out.astype(np.float32))
        sorted_rows = np.asarray(self.array[image_index[order]])
        out = np.empty_like(sorted_rows)
        out[order] = sorted_rows
        return torch.from_numpy(out.astype(np.float32))
