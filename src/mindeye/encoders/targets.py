"""Cached encoder outputs (training targets, retrieval candidates) of a store's images, by image index.

Targets come from the target cache only (``mindeye embed``), indexed per batch from its memory map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mindeye.config import Config
from mindeye.errors import MindEyeError


def target_options(cfg: Config, encoder: str) -> dict[str, Any]:
    """Encoder options the config fixes for ``encoder``'s targets (part of the cache fingerprint)."""
    if encoder.startswith("clip-"):
        return {"preprocess": cfg.targets.clip_preprocess}
    t = cfg.targets
    if encoder == t.lowlevel_encoder and t.lowlevel_image_size is not None:
        return {"image_size": t.lowlevel_image_size}
    if encoder == t.teacher_encoder and t.teacher_image_size is not None:
        return {"image_size": t.teacher_image_size}
    return {}


class Targets:
    """Cached encoder outputs for every image of the store, indexed by store image index."""

    def __init__(self, store_path: str | Path, encoder: str, weights: str | None, views: int = 0,
                 options: dict[str, Any] | None = None, key: str | None = None) -> None:
        """``key``: the config key that names ``weights`` (e.g. ``targets.weights``); when given, an error about
        missing weights says to set it (training has no --weights option)."""
        from mindeye.encoders.cache import load_targets
        from mindeye.errors import WeightsUnavailableError

        self.encoder = encoder
        options = options or {}
        try:
            arr = load_targets(store_path, encoder, weights, **options)
        except WeightsUnavailableError as exc:
            if key is None:
                raise
            raise WeightsUnavailableError(str(exc).replace(
                "Then pass --weights /path/to/local/copy",
                f"Then point the config at a local copy: --set {key}=/path/to/local/copy")) from None
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
