"""CLIP targets computed on the fly from augmented images, as the authors trained (``targets.online``).

``src/Train_MindEye.py`` (l.201-211, 591-601) augments every training batch's images with a kornia
pipeline and embeds them with CLIP at every step; targets are never cached:

    AugmentationSequential(
        RandomResizedCrop((224, 224), scale=(0.6, 1), p=0.3),
        Resize((224, 224)),                                   # bilinear: the CLIP resize becomes a no-op
        RandomHorizontalFlip(p=0.5),
        ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, p=0.3),
        RandomGrayscale(p=0.3))

:func:`clip_augmentation` builds that pipeline (kornia, the authors' library) for the encoder's input
size, and :class:`OnlineTargets` runs it and the frozen encoder on a batch's float images. The random
draws come from torch's generator seeded per step (``seed``), so a step's targets are reproducible.
The fast alternative is K cached augmented views per image (``targets.augmented_views``,
:mod:`mindeye.encoders.augment`); ``benchmarks/clip_targets.py`` measures both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mindeye.encoders.base import ImageEncoder
from mindeye.errors import MindEyeError


def clip_augmentation(size: int = 224) -> Any:
    """The authors' kornia pipeline, its crop and resize to ``size`` (224 for CLIP ViT-L/14)."""
    try:
        import kornia.augmentation as K
        from kornia.augmentation.container import AugmentationSequential
    except ImportError:  # pragma: no cover - kornia is a dependency
        raise MindEyeError("targets.online needs kornia (pip install kornia)") from None
    return AugmentationSequential(
        K.RandomResizedCrop((size, size), (0.6, 1), p=0.3),
        K.Resize((size, size)),
        K.RandomHorizontalFlip(p=0.5),
        K.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, p=0.3),
        K.RandomGrayscale(p=0.3),
        data_keys=["input"],
    )


def encoder_input_size(encoder: ImageEncoder) -> int:
    """The square input the encoder's own preprocessing resizes to (CLIP: 224)."""
    for attr in ("image_size", "size"):
        value = getattr(encoder, attr, None)
        if isinstance(value, int):
            return value
    return 224


class OnlineTargets:
    """Targets of a batch's images, augmented the authors' way on the encoder's device at every step."""

    def __init__(self, encoder: ImageEncoder, images: np.ndarray) -> None:
        self.encoder = encoder
        self.images = images  # the store's uint8 (n_images, S, S, 3) memory map
        self.augment = clip_augmentation(encoder_input_size(encoder)).to(encoder.device)

    def augmented(self, image_index: np.ndarray, seed: int) -> torch.Tensor:
        """float (B, 3, size, size) augmented images of the given store images (draws seeded by ``seed``)."""
        idx = np.asarray(image_index)
        order = np.argsort(idx, kind="stable")
        rows = np.empty((len(idx), *self.images.shape[1:]), dtype=np.uint8)
        rows[order] = self.images[idx[order]]  # sorted reads from the memory map
        x = torch.from_numpy(rows).to(self.encoder.device).permute(0, 3, 1, 2).float().div_(255)
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            return self.augment(x)

    def __call__(self, image_index: np.ndarray, seed: int) -> torch.Tensor:
        """float32 targets (B, *output_shape) of the augmented images, on the encoder's device."""
        return self.encoder.encode(self.augmented(image_index, seed))
