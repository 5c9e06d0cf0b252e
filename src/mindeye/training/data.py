"""Training data: which images are trained on / validated on, and which (image, repetition) pairs
each step uses. Voxel splits live in :mod:`mindeye.data.splits` and cached targets in
:mod:`mindeye.encoders.targets` (inference and evaluation use them too); they are re-exported here.
"""

from __future__ import annotations

import numpy as np
import torch

from mindeye.config import Config
from mindeye.data.splits import Split, load_averaged, load_eval_split, load_repetitions, load_trials  # noqa: F401
from mindeye.data.store import SubjectStore
from mindeye.encoders.targets import Targets, target_options  # noqa: F401
from mindeye.errors import MindEyeError


def train_val_images(store: SubjectStore, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation image indices; carve ``data.val_images`` out of train if the store has no val.

    ``data.train_images`` first keeps a seeded random subset of the store's train images (the store's
    own val split, if any, is kept whole).
    """
    train_imgs = store.image_indices("train")
    val_imgs = store.image_indices("val")
    n_keep = cfg.data.train_images
    if n_keep is not None and n_keep > len(train_imgs):
        raise MindEyeError(f"data.train_images={n_keep} but {store.path} has {len(train_imgs)} training images; "
                           "give at most that many, or null for all")
    if n_keep is not None and n_keep < len(train_imgs):
        # Its own stream (not the seed's first draws), so the val carve-out below is not tied to it.
        rng = np.random.default_rng([cfg.seed, 23])
        train_imgs = np.sort(rng.choice(train_imgs, n_keep, replace=False))
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
