"""Image helpers: decode bytes, uint8 <-> float, resize, centre square, PNG files.

Images travel as uint8 ``(H, W, 3)`` (one) or ``(N, H, W, 3)`` (a batch) arrays; models see float
``(N, 3, H, W)`` in [0, 1].
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mindeye.errors import MindEyeError
from mindeye.utils.files import atomic_path


def decode_image(data: bytes, where: str, hint: str = "remove or replace it and re-run") -> np.ndarray:
    """JPEG/PNG/WebP bytes or an .npy array (3xHxW or HxWx3, float in [0, 1] or uint8) -> (H, W, 3) uint8.

    ``where`` names the source in the error ("shard X member Y: ..."): a bad image is one clear error.
    """
    from PIL import Image

    try:
        if data[:6] == b"\x93NUMPY":
            arr = np.load(io.BytesIO(data), allow_pickle=False)
            if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[2] != 3:
                arr = arr.transpose(1, 2, 0)
            if arr.ndim != 3 or arr.shape[2] != 3:
                raise ValueError(f"image array has shape {arr.shape}, expected 3xHxW or HxWx3")
            if arr.dtype != np.uint8:
                arr = np.clip(np.round(arr.astype(np.float32) * 255), 0, 255).astype(np.uint8)
            return arr
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as exc:  # noqa: BLE001
        from mindeye.safe_load import npy_error

        why = npy_error(exc) if data[:6] == b"\x93NUMPY" else exc  # never numpy's allow_pickle=True advice
        raise MindEyeError(f"{where}: cannot decode the image ({why}); {hint}") from None


def uint8_to_float(images: torch.Tensor | np.ndarray, size: int | None = None,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, size, size) in [0, 1], resized bilinearly (antialiased) if needed."""
    x = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise MindEyeError(f"images must be uint8 (N, H, W, 3); got {x.dtype} {tuple(x.shape)}")
    x = x.to(device).permute(0, 3, 1, 2).float() / 255
    if size is not None and (x.shape[-1] != size or x.shape[-2] != size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def float_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float (N, 3, H, W) in [0, 1] -> uint8 (N, H, W, 3)."""
    return x.float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1)


def is_float_images(images: object) -> bool:
    """True for a float tensor batch (N, 3, H, W) (the in-memory path between stages), False for uint8."""
    return isinstance(images, torch.Tensor) and images.is_floating_point()


def as_float_images(images: torch.Tensor | np.ndarray, size: int | None = None,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (N, H, W, 3) or float (N, 3, H, W) -> float (N, 3, size, size), float values kept as they are
    (not clamped, not quantised); resized bilinearly (antialiased) when the size differs."""
    if not is_float_images(images):
        return uint8_to_float(images, size, device)
    x = images.to(device).float()
    if x.ndim != 4 or x.shape[1] != 3:
        raise MindEyeError(f"float images must be (N, 3, H, W); got {tuple(x.shape)}")
    if size is not None and (x.shape[-1] != size or x.shape[-2] != size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def fit_bilinear(image: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (H, W, 3) -> uint8 (size, size, 3) (bilinear, antialiased); unchanged when already that size."""
    x = torch.from_numpy(np.ascontiguousarray(image))
    if x.shape[0] == size and x.shape[1] == size:
        return x
    return float_to_uint8(uint8_to_float(x[None], size))[0]


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8 with PIL bicubic (antialiased when shrinking)."""
    from PIL import Image

    if img.shape[0] == size and img.shape[1] == size:
        return np.ascontiguousarray(img, dtype=np.uint8)
    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def square(image: np.ndarray, size: int | None) -> np.ndarray:
    """Centre-crop uint8 ``(H, W, 3)`` to a square and resize it to ``size`` (bicubic; None: keep its side)."""
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    out = np.ascontiguousarray(image[top:top + s, left:left + s])
    if size is not None and s != size:
        out = resize_image(out, size)
    return np.ascontiguousarray(out)


def save_png(image: np.ndarray | torch.Tensor, path: Path) -> None:
    """Write one uint8 (H, W, 3) image atomically (a kill never leaves a truncated PNG)."""
    from PIL import Image

    arr = image.cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {arr.dtype} {arr.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def load_png(path: Path) -> np.ndarray:
    """uint8 (H, W, 3) RGB of an image file."""
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im.convert("RGB"))
