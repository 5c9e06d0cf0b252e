"""What every frozen image encoder shares: the interface, image conversion, weights lookup, fingerprints.

An :class:`ImageEncoder` maps uint8 RGB images ``(N, H, W, 3)`` to float targets ``(N, *output_shape)``.
It carries a ``fingerprint`` that changes whenever its weights or its preprocessing change, so a
target cache written by one encoder is never read as another's (see :mod:`mindeye.encoders.cache`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from mindeye.errors import MindEyeError, WeightsUnavailableError
from mindeye.utils.weights import hf_cache_snapshot, looks_like_hf_id  # noqa: F401

# The seed every randomly initialised model (tests / benchmarks only) is built from, so that two runs
# with the same config produce the same weights and hence the same targets.
RANDOM_INIT_SEED = 0


class ImageEncoder(nn.Module):
    """A frozen image encoder.

    Subclasses set ``name``, ``output_shape``, ``preprocessing`` (a JSON-able dict describing exactly how
    images are prepared; part of the cache key), ``weights_id`` (fingerprint of the weights) and implement
    :meth:`preprocess` (uint8 images -> model input) and :meth:`forward` (model input -> targets).
    ``augmentation`` names the preset of :mod:`mindeye.encoders.augment` used for cached augmented views
    (None: this encoder's targets are not augmented).
    """

    name: str = ""
    output_shape: tuple[int, ...] = ()
    preprocessing: dict[str, Any] = {}
    weights_id: str = ""
    augmentation: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self.compute_dtype = torch.float32

    @property
    def fingerprint(self) -> str:
        return make_fingerprint(self.name, self.weights_id, self.preprocessing)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, H, W, 3)`` on the model's device -> model input. Override."""
        raise NotImplementedError

    def preprocess_float(self, images: torch.Tensor) -> torch.Tensor:
        """float ``(N, 3, H, W)`` in [0, 1] on the model's device -> model input. Default: through 8 bits
        (:meth:`preprocess`); encoders whose reference preprocessing works on floats override it."""
        return self.preprocess(images.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1))

    @torch.inference_mode()
    def encode(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB ``(N, H, W, 3)`` or float ``(N, 3, H, W)`` tensors in [0, 1] (images kept as floats
        between stages) -> float32 targets ``(N, *output_shape)`` on the model's device."""
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            if images.ndim != 4 or images.shape[1] != 3:
                raise MindEyeError(f"float images must be (N, 3, H, W); got {tuple(images.shape)}")
            x = self.preprocess_float(images.to(self.device, torch.float32))
        else:
            x = self.preprocess(as_uint8_images(images, self.device))
        return self.forward(x.to(self.compute_dtype)).float()


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------
def as_uint8_images(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Check and move a batch of uint8 RGB images ``(N, H, W, 3)`` (numpy or torch) to ``device``."""
    if isinstance(images, np.ndarray):
        arr = np.ascontiguousarray(images)
        x = torch.from_numpy(arr if arr.flags.writeable else arr.copy())  # memory maps are read-only
    else:
        x = images
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise MindEyeError(
            f"images must be uint8 RGB arrays of shape (N, H, W, 3); got {x.dtype} {tuple(x.shape)}"
        )
    return x.to(device, non_blocking=True)


def to_float_chw(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> float32 ``(N, 3, H, W)`` in [0, 1]."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def resize_uint8(images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Antialiased resize of uint8 ``(N, H, W, 3)`` images -> float32 ``(N, 3, h, w)`` in [0, 1].

    Resizing the 8-bit image (torchvision's uint8 kernels: within one grey level of a PIL resize, i.e.
    of the CLIP processor) keeps our pixels equal to the reference preprocessing, on CPU and GPU.
    """
    x = images.permute(0, 3, 1, 2)
    if tuple(x.shape[-2:]) != tuple(size):
        interp = {"bicubic": TF.InterpolationMode.BICUBIC, "bilinear": TF.InterpolationMode.BILINEAR}[mode]
        x = TF.resize(x, list(size), interpolation=interp, antialias=True)
    return x.float().div_(255.0)


def shortest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Output size when the shorter side is resized to ``size`` keeping the aspect ratio (HF convention)."""
    short, long = (height, width) if height <= width else (width, height)
    new_long = int(size * long / short)
    return (size, new_long) if height <= width else (new_long, size)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    if top < 0 or left < 0:
        raise MindEyeError(f"cannot centre-crop {size} px from a {h}x{w} image")
    return x[..., top:top + size, left:left + size]


# ------------------------------------------------------------------------------------------------
# Fingerprints
# ------------------------------------------------------------------------------------------------
def make_fingerprint(name: str, weights_id: str, preprocessing: dict[str, Any]) -> str:
    """The cache key of an encoder's targets: its name, weights and preprocessing (which fix its output)."""
    blob = json.dumps({"encoder": name, "weights": weights_id, "preprocessing": preprocessing}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_sample_hash(path: Path, block: int = 1 << 16, samples: int = 16) -> str:
    """Cheap content fingerprint of a (possibly multi-GB) weights file without reading all of it.

    Small files are hashed whole; large ones by their size, first and last 4 MiB and ``samples``
    evenly spaced 64 KiB blocks. Copying or touching a file keeps the fingerprint; changing weights
    changes it (for any realistic edit: a retrained or differently converted checkpoint).
    """
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= 16 << 20:
            h.update(f.read())
        else:
            edge = 4 << 20
            h.update(f.read(edge))
            for k in range(samples):
                f.seek(edge + (size - 2 * edge - block) * k // max(samples - 1, 1))
                h.update(f.read(block))
            f.seek(size - edge)
            h.update(f.read(edge))
    return h.hexdigest()


_WEIGHT_SUFFIXES = (".json", ".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".txt", ".model")


def path_fingerprint(path: Path) -> str:
    """Fingerprint of a weights file or a model directory (its config and weight files)."""
    path = Path(path)
    if path.is_file():
        return file_sample_hash(path)
    entries = []
    for p in sorted(path.rglob("*")):
        if p.is_file() and p.suffix in _WEIGHT_SUFFIXES and not any(part.startswith(".") for part in p.parts):
            entries.append((p.relative_to(path).as_posix(), file_sample_hash(p)))
    if not entries:
        raise MindEyeError(f"{path} contains no model files (config.json, *.safetensors, *.bin, *.pth)")
    return hash_json(entries)


# ------------------------------------------------------------------------------------------------
# Weights lookup
# ------------------------------------------------------------------------------------------------
def resolve_weights(
    encoder: str,
    weights: str | None,
    default: str | None,
    download_hint: str,
    subfolder: str | None = None,
) -> Path:
    """Turn ``--weights`` (a Hugging Face id, a local directory or a file) into a local path.

    Hugging Face ids are looked up in the local HF cache only (``local_files_only``): this never
    downloads. When nothing is found, :class:`WeightsUnavailableError` says what to download, from
    where, and how to point at a local copy. There is no silent fallback to random weights.
    """
    weights = weights or default
    if weights is None:
        raise WeightsUnavailableError(
            f"encoder '{encoder}' needs pretrained weights and has no default location. {download_hint} "
            f"Then pass --weights /path/to/local/copy."
        )
    path = Path(weights).expanduser()
    if path.exists():
        if subfolder and path.is_dir() and (path / subfolder).is_dir() and not (path / "config.json").exists():
            return path / subfolder  # a whole pipeline directory: use its component
        return path
    if looks_like_hf_id(weights):
        local = hf_cache_snapshot(weights)
        if local is None:
            raise WeightsUnavailableError(
                f"pretrained weights for encoder '{encoder}' ({weights}) are not available on this machine "
                f"(not in the Hugging Face cache, and this machine cannot download them). {download_hint} "
                f"Then pass --weights /path/to/local/copy (a directory or file), or run on a machine "
                f"with network access once to fill the Hugging Face cache."
            )
        return local / subfolder if subfolder else local
    raise WeightsUnavailableError(
        f"weights '{weights}' for encoder '{encoder}' not found: it is neither an existing file or directory "
        f"nor a Hugging Face id. {download_hint} Then pass --weights /path/to/local/copy."
    )


@contextmanager
def seeded(seed: int = RANDOM_INIT_SEED) -> Iterator[None]:
    """Build random weights from a fixed seed without disturbing the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def default_dtype(device: str | torch.device, half_on_cuda: bool = True) -> torch.dtype:
    """fp16 compute on CUDA (targets are stored as fp16 anyway), fp32 elsewhere."""
    return torch.float16 if half_on_cuda and torch.device(device).type == "cuda" else torch.float32


def config_to_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, dict):
        return dict(config)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    return dict(config)
