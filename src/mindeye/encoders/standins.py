"""Stand-in encoders for the simulated world: no downloaded weights, NOT pretrained networks.

Each stand-in is a small, fixed, deterministic function of the image built in code from a fixed seed.
They exist so the whole pipeline (targets, training, retrieval, reconstruction) can run end to end on
a machine without pretrained weights, on targets that still carry image information:

* ``standin-clip-hidden`` -- stand-in: fixed random features, NOT a pretrained network. The image is
  resized to 64 x 64 (bilinear, antialiased) and normalised with the CLIP mean/std, then passed through
  three seeded random 3x3 convolutions (stride 2, ReLU after the first two; the last one is linear so
  features are signed). The resulting 8 x 8 x ``dim`` map gives 1 "CLS" token (global average) followed
  by ``grid``^2 spatial tokens (adaptive average pooling, row-major) = 17 x 64 by default. Every token
  is divided by the CLS token's norm, exactly like the real ``clip-vit-l14-hidden``.
* ``standin-clip-final`` -- stand-in: its CLS token only, unit norm, ``(dim,)`` = (64,).
* ``standin-vae`` -- stand-in: an analytic, invertible-up-to-blur "VAE" (no network at all). The image
  is resized to 128 px; channels are colour-opponent: luminance L = (R+G+B)/3, R-G, and
  B-Y = B - (R+G)/2; each is averaged over 8 x 8 blocks (the SD VAE's factor-8 downsampling) and scaled
  ((L - 0.45) / 0.25, (R-G) / 0.1, (B-Y) / 0.15); a 4th channel is the local contrast (standard
  deviation of L inside each block, (std - 0.08) / 0.08). Output (4, 16, 16). ``decode`` inverts the
  scaling and the colour transform of the first three channels and upsamples bicubically.
* ``standin-vicregl`` -- stand-in: fixed random features, NOT a pretrained network. Same construction as
  the CLIP stand-in with another seed and width, on a 64 px image with ImageNet normalisation, giving
  ``grid``^2 = 16 spatial tokens x 32 (no CLS token, no normalisation).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mindeye.encoders.base import ImageEncoder, hash_json, resize_uint8, to_float_chw
from mindeye.encoders.clip import CLIP_MEAN, CLIP_STD
from mindeye.encoders.vicregl import IMAGENET_MEAN, IMAGENET_STD
from mindeye.errors import MindEyeError

_VERSION = 1


class RandomConvFeatures(nn.Module):
    """Three fixed random 3x3 stride-2 convolutions (He-scaled, seeded): a 64 px image -> an 8 x 8 map."""

    def __init__(self, dim: int, seed: int, width: int = 32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        shapes = [(width, 3), (width, width), (dim, width)]
        for i, (cout, cin) in enumerate(shapes):
            w = torch.randn(cout, cin, 3, 3, generator=g) * (2.0 / (cin * 9)) ** 0.5
            self.register_buffer(f"w{i}", w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.conv2d(x, self.w0, stride=2, padding=1))
        x = F.relu(F.conv2d(x, self.w1, stride=2, padding=1))
        return F.conv2d(x, self.w2, stride=2, padding=1)  # linear last layer: signed features


class _RandomFeatureEncoder(ImageEncoder):
    def __init__(self, name: str, dim: int, grid: int, seed: int, size: int, mean: tuple, std: tuple,
                 cls_token: bool, only_cls: bool, cls_normalise: bool) -> None:
        super().__init__()
        self.name = name
        self.features = RandomConvFeatures(dim, seed)
        self.size, self.grid = size, grid
        self.cls_token, self.only_cls, self.cls_normalise = cls_token, only_cls, cls_normalise
        n_tokens = grid * grid + (1 if cls_token else 0)
        self.output_shape = (dim,) if only_cls else (n_tokens, dim)
        self.preprocessing = {
            "resize": size, "interpolation": "bilinear", "antialias": True, "resize_dtype": "uint8",
            "mean": list(mean), "std": list(std), "standin": name, "dim": dim, "grid": grid, "seed": seed,
            "version": _VERSION,
        }
        self.weights_id = "standin:" + hash_json(self.preprocessing)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_uint8(images, (self.size, self.size), "bilinear")
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.features(x)
        tokens = F.adaptive_avg_pool2d(fmap, self.grid).flatten(2).transpose(1, 2)  # (N, grid^2, dim)
        if self.cls_token:
            tokens = torch.cat([fmap.mean(dim=(2, 3))[:, None], tokens], dim=1)
        if self.cls_normalise:
            tokens = tokens / tokens[:, :1].norm(dim=-1, keepdim=True)
        return tokens[:, 0] if self.only_cls else tokens


def standin_clip(variant: str = "hidden", dim: int = 64, grid: int = 4, seed: int = 1234) -> ImageEncoder:
    """Stand-in: fixed random features, NOT a pretrained network (see the module docstring)."""
    return _RandomFeatureEncoder(f"standin-clip-{variant}", dim, grid, seed, 64, CLIP_MEAN, CLIP_STD,
                                 cls_token=True, only_cls=variant == "final", cls_normalise=True)


def standin_vicregl(dim: int = 32, grid: int = 4, seed: int = 4321) -> ImageEncoder:
    """Stand-in: fixed random features, NOT a pretrained network (see the module docstring)."""
    return _RandomFeatureEncoder("standin-vicregl", dim, grid, seed, 64, IMAGENET_MEAN, IMAGENET_STD,
                                 cls_token=False, only_cls=False, cls_normalise=False)


class StandinVae(ImageEncoder):
    """Stand-in: an analytic colour-opponent, factor-8 block-average "VAE" (no network, no weights)."""

    name = "standin-vae"
    augmentation = None
    # rows: L, R-G, B-Y  (as functions of R, G, B)
    _COLOUR = ((1 / 3, 1 / 3, 1 / 3), (1.0, -1.0, 0.0), (-0.5, -0.5, 1.0))
    _OFFSET = (0.45, 0.0, 0.0, 0.08)
    _SCALE = (0.25, 0.1, 0.15, 0.08)

    def __init__(self, image_size: int = 128, factor: int = 8) -> None:
        super().__init__()
        if image_size % factor:
            raise MindEyeError(f"standin-vae image size {image_size} must be a multiple of {factor}")
        self.image_size, self.factor = image_size, factor
        self.output_shape = (4, image_size // factor, image_size // factor)
        self.preprocessing = {
            "resize": image_size, "interpolation": "bilinear", "antialias": True, "factor": factor,
            "colour": [list(r) for r in self._COLOUR], "offset": list(self._OFFSET), "scale": list(self._SCALE),
            "standin": self.name, "version": _VERSION,
        }
        self.weights_id = "standin:" + hash_json(self.preprocessing)
        self.register_buffer("colour", torch.tensor(self._COLOUR), persistent=False)
        self.register_buffer("offset", torch.tensor(self._OFFSET).view(1, 4, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(self._SCALE).view(1, 4, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = to_float_chw(images)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        opp = torch.einsum("kc,nchw->nkhw", self.colour, x)
        means = F.avg_pool2d(opp, self.factor)
        block_mean = F.interpolate(means[:, :1], scale_factor=self.factor, mode="nearest")
        contrast = F.avg_pool2d((opp[:, :1] - block_mean) ** 2, self.factor).sqrt()  # std of L in each block
        return (torch.cat([means, contrast], dim=1) - self.offset) / self.scale

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Latents ``(N, 4, h, w)`` -> uint8 ``(N, H, W, 3)``: inverse colour transform, bicubic upsampling."""
        z = torch.as_tensor(latents, device=self.offset.device, dtype=torch.float32)
        opp = z[:, :3] * self.scale[:, :3] + self.offset[:, :3]
        rgb = torch.einsum("ck,nkhw->nchw", torch.linalg.inv(self.colour), opp)
        size = size or z.shape[-1] * self.factor
        rgb = F.interpolate(rgb, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        return rgb.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1)


def build(name: str, device: str = "cpu", options: dict[str, Any] | None = None) -> ImageEncoder:
    options = dict(options or {})
    try:
        if name == "standin-clip-hidden":
            enc = standin_clip("hidden", **options)
        elif name == "standin-clip-final":
            enc = standin_clip("final", **options)
        elif name == "standin-vicregl":
            enc = standin_vicregl(**options)
        elif name == "standin-vae":
            enc = StandinVae(**options)
        else:
            raise KeyError(name)
    except TypeError as exc:
        raise MindEyeError(f"bad option for stand-in encoder '{name}': {exc}") from None
    return enc.to(device)
