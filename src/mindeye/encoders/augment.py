"""The authors' image augmentations, reproducible per (seed, image, view) for cached augmented views.

The reference augments every image before the frozen encoder on every training step (kornia). We
pre-compute K augmented views per image instead (``mindeye embed --views K``) and sample one per step;
each view's random parameters come from ``numpy.random.default_rng([seed, image_index, view])``, so a
view is the same whatever the batch, the device or an interruption. Presets:

``clip`` (high-level pipeline, applied before CLIP), in this order: random resized crop (scale 0.6-1,
ratio 3/4-4/3, back to the input size) with p = 0.3; horizontal flip p = 0.5; colour jitter (brightness
0.4, contrast 0.4, saturation 0.2, hue 0.1, in random order) with p = 0.3; grayscale p = 0.3.

``teacher`` (low-level pipeline, the view the VICRegL teacher sees), in this order: colour jitter
(0.4, 0.4, 0.2, 0.1) p = 0.8; grayscale p = 0.2; solarize (threshold uniform in 0.4-0.6) p = 0.2;
Gaussian blur (7 x 7, sigma 0.1-2) p = 0.1; random resized crop scale 0.5-1 (always).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from mindeye.errors import MindEyeError


@dataclass(frozen=True)
class AugmentPreset:
    crop_p: float
    crop_scale: tuple[float, float]
    flip_p: float
    jitter_p: float
    gray_p: float
    solarize_p: float = 0.0
    blur_p: float = 0.0
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    geometric_first: bool = True  # crop/flip before the colour operations (the reference's order per preset)


PRESETS: dict[str, AugmentPreset] = {
    "clip": AugmentPreset(crop_p=0.3, crop_scale=(0.6, 1.0), flip_p=0.5, jitter_p=0.3, gray_p=0.3),
    "teacher": AugmentPreset(crop_p=1.0, crop_scale=(0.5, 1.0), flip_p=0.0, jitter_p=0.8, gray_p=0.2,
                             solarize_p=0.2, blur_p=0.1, geometric_first=False),
}


def describe(preset: str, seed: int) -> dict:
    """JSON-able description recorded in the cache manifest."""
    return {"preset": preset, "seed": seed, **asdict(get_preset(preset))}


def get_preset(name: str) -> AugmentPreset:
    if name not in PRESETS:
        raise MindEyeError(f"unknown augmentation preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def _crop_box(rng: np.random.Generator, h: int, w: int, scale: tuple[float, float]) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop sampling (10 tries, then the whole image), with our generator."""
    area = h * w
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            return top, left, ch, cw
    return 0, 0, h, w


def augment_image(image: torch.Tensor, preset: str | AugmentPreset, rng: np.random.Generator) -> torch.Tensor:
    """One augmented view of a uint8 ``(3, H, W)`` image; same size and dtype out."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    x = image
    h, w = x.shape[-2:]
    # Draw every random number up front in a fixed order, so views never depend on which branches ran.
    u = rng.uniform(size=6)
    box = _crop_box(rng, h, w, p.crop_scale)
    order = rng.permutation(4)
    b, c, s = (rng.uniform(max(0.0, 1 - v), 1 + v) for v in p.jitter[:3])
    hue = rng.uniform(-p.jitter[3], p.jitter[3])
    threshold = rng.uniform(0.4, 0.6)
    sigma = rng.uniform(0.1, 2.0)

    def geometric(x: torch.Tensor) -> torch.Tensor:
        if u[4] < p.crop_p:
            top, left, ch, cw = box
            x = TF.resized_crop(x, top, left, ch, cw, size=[h, w], antialias=True)
        if u[5] < p.flip_p:
            x = TF.horizontal_flip(x)
        return x

    if p.geometric_first:
        x = geometric(x)
    if u[0] < p.jitter_p:
        for op in order:
            if op == 0:
                x = TF.adjust_brightness(x, b)
            elif op == 1:
                x = TF.adjust_contrast(x, c)
            elif op == 2:
                x = TF.adjust_saturation(x, s)
            else:
                x = TF.adjust_hue(x, hue)
    if u[1] < p.gray_p:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if u[2] < p.solarize_p:
        x = TF.solarize(x, threshold=int(round(threshold * 255)))
    if u[3] < p.blur_p:
        x = TF.gaussian_blur(x, kernel_size=[7, 7], sigma=[sigma, sigma])
    if not p.geometric_first:
        x = geometric(x)
    return x


def augment_batch(images: np.ndarray | torch.Tensor, indices: np.ndarray, view: int, preset: str,
                  seed: int = 0) -> torch.Tensor:
    """Augmented view ``view`` of each image: uint8 ``(N, H, W, 3)`` in, the same shape out (on CPU).

    ``indices`` are the images' indices in the store: they (with ``seed`` and ``view``) fix the randomness.
    """
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2)
    out = torch.empty_like(x)
    for i, idx in enumerate(np.asarray(indices).tolist()):
        rng = np.random.default_rng([seed, int(idx), int(view)])
        out[i] = augment_image(x[i], preset, rng)
    return out.permute(0, 2, 3, 1).contiguous()
