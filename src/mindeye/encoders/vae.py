"""Stable Diffusion VAE (diffusers AutoencoderKL): the low-level pipeline's latent target and its decoder.

Encode: image resized to 512 px (bilinear, antialiased, as the reference upsamples its 256 px images),
mapped to [-1, 1], encoder posterior mode x 0.18215 -> (4, 64, 64).
Decode: latents / 0.18215 -> decoder -> [-1, 1] -> uint8 images.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mindeye.constants import SD_LATENT_SCALE, SD_VAE_CONFIG
from mindeye.encoders.base import (
    ImageEncoder,
    center_crop,
    config_to_dict,
    hash_json,
    path_fingerprint,
    resolve_weights,
    seeded,
    shortest_edge_size,
    to_float_chw,
)
from mindeye.errors import MindEyeError
from mindeye.safe_load import load_safetensors_file, load_torch_file
from mindeye.utils.weights import quiet_diffusers, weight_load_errors

if TYPE_CHECKING:  # diffusers is imported lazily: it takes seconds, and only the VAE needs it
    from diffusers import AutoencoderKL

SCALING_FACTOR = SD_LATENT_SCALE
DEFAULT_WEIGHTS = "lambdalabs/sd-image-variations-diffusers"  # its vae/ is the reference's autoencoder
DOWNLOAD_HINT = (
    "Download it with `hf download lambdalabs/sd-image-variations-diffusers --include 'vae/*'` "
    "(https://huggingface.co/lambdalabs/sd-image-variations-diffusers), or use the authors' "
    "`sd_image_var_autoenc.pth` state dict (https://huggingface.co/datasets/pscotti/mindeyev2), on a "
    "machine with network access."
)
_VERSION = 1


def describe(image_size: int = 512) -> dict[str, Any]:
    return {
        "resize_shortest_edge": image_size, "interpolation": "bilinear", "antialias": True,
        "center_crop": image_size, "range": [-1, 1], "latent": "posterior mode", "scaling_factor": SCALING_FACTOR,
        "version": _VERSION,
    }


def weights_id(weights: str | None, random_init: bool, config: Any) -> str:
    if random_init:
        return "random-init:" + hash_json(config_to_dict(config) or "sd-vae")
    return "weights:" + path_fingerprint(_resolve(weights))


def _resolve(weights: str | None) -> Path:
    return resolve_weights("sd-vae", weights, DEFAULT_WEIGHTS, DOWNLOAD_HINT, subfolder="vae")


class VaeEncoder(ImageEncoder):
    name = "sd-vae"
    augmentation = None

    def __init__(self, vae: AutoencoderKL, weights_id: str, image_size: int = 512) -> None:
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        down = 2 ** (len(vae.config.block_out_channels) - 1)
        if image_size % down:
            raise MindEyeError(f"sd-vae image size {image_size} must be a multiple of {down}")
        self.image_size = image_size
        self.output_shape = (vae.config.latent_channels, image_size // down, image_size // down)
        self.preprocessing = describe(image_size)
        self.weights_id = weights_id
        self.compute_dtype = next(vae.parameters()).dtype

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = to_float_chw(images)
        size = shortest_edge_size(*x.shape[-2:], self.image_size)
        if tuple(x.shape[-2:]) != size:
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return center_crop(x, self.image_size) * 2 - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x).latent_dist.mode() * SCALING_FACTOR

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Latents ``(N, 4, h, w)`` (scaled as :meth:`encode` returns them) -> uint8 ``(N, H, W, 3)``.

        ``size`` resizes the decoded images (bilinear, antialiased); default: the decoder's own size.
        """
        img = self.decode_float(latents, size).clamp(0, 1)
        return img.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1)

    def decode_float(self, latents: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Latents -> float ``(N, 3, H, W)``, ``decoded / 2 + 0.5`` NOT clamped (the authors' blurry images,
        ``Reconstructions.py``: ``vae.decode(...).sample / 2 + 0.5``, go on unclamped)."""
        z = torch.as_tensor(latents, device=self.device, dtype=self.compute_dtype) / SCALING_FACTOR
        with torch.inference_mode():
            img = (self.vae.decode(z).sample.float() + 1) / 2
        if size is not None and img.shape[-1] != size:
            img = torch.nn.functional.interpolate(img, size=(size, size), mode="bilinear", antialias=True)
        return img


def _convert_legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old diffusers attention names (query/key/value/proj_attn) -> current (to_q/to_k/to_v/to_out.0)."""
    rename = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}
    out = {}
    for k, v in state.items():
        for old, new in rename.items():
            k = k.replace(old, new)
        # Legacy attention weights were 1x1 convs in some exports; current ones are linear layers.
        if any(s in k for s in (".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight")) and v.ndim == 4:
            v = v[:, :, 0, 0]
        out[k] = v
    return out


def _load_state_dict_file(path: Path) -> AutoencoderKL:
    from diffusers import AutoencoderKL

    fix = "pass a diffusers VAE directory or the authors' sd_image_var_autoenc.pth"
    if path.suffix == ".safetensors":
        state = load_safetensors_file(path, fix)
    else:
        state = load_torch_file(path, fix)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    vae = AutoencoderKL(**SD_VAE_CONFIG)
    missing, unexpected = vae.load_state_dict(_convert_legacy_keys(state), strict=False)
    if missing or unexpected:
        raise MindEyeError(
            f"{path} is not a Stable Diffusion v1 VAE state dict ({len(missing)} missing keys, e.g. "
            f"{missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]}). Pass a diffusers VAE "
            f"directory (config.json + diffusion_pytorch_model.safetensors) or the authors' sd_image_var_autoenc.pth"
        )
    return vae


def build(weights: str | None = None, device: str = "cpu", random_init: bool = False, config: Any = None,
          dtype: torch.dtype | None = None, image_size: int = 512) -> VaeEncoder:
    from diffusers import AutoencoderKL

    # fp32 by default even on CUDA: the SD VAE decoder can overflow in fp16.
    dtype = dtype or torch.float32
    if random_init:
        with seeded():
            vae = AutoencoderKL(**(config_to_dict(config) or SD_VAE_CONFIG))
    else:
        path = _resolve(weights)
        try:
            if path.is_file():
                vae = _load_state_dict_file(path)
            else:
                with quiet_diffusers():
                    vae, info = AutoencoderKL.from_pretrained(path, output_loading_info=True)
                if info.get("missing_keys"):  # never run with silently random-initialised layers
                    raise ValueError(f"{len(info['missing_keys'])} weights missing, e.g. {info['missing_keys'][:3]}")
        except weight_load_errors() as exc:
            raise MindEyeError(
                f"could not load the SD VAE from {path}: {exc}. --weights must be a diffusers VAE directory, "
                f"a pipeline directory with vae/, or a VAE state-dict file"
            ) from None
    if dtype != torch.float32:
        vae = vae.to(dtype)
    return VaeEncoder(vae, weights_id(weights, random_init, config), image_size).to(device)
