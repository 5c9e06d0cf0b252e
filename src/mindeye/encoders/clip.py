"""OpenAI CLIP ViT-L/14 image tower (transformers) as MindEye's high-level target.

``clip-vit-l14-hidden``: last hidden state (257 x 1024) -> vision post-layernorm -> visual projection
applied to ALL tokens -> (257, 768); every token is then divided by the norm of the CLS token
(Versatile Diffusion's normalisation), so row 0 is the unit-norm CLIP image embedding.

``clip-vit-l14-final``: the usual (768,) image embedding, L2-normalised; identical to row 0 of the
hidden variant (the paper's "only CLS" model, SD image variations, LAION retrieval).

Preprocessing, option ``preprocess``:
- ``processor`` (as the OpenAI/HF CLIP processor): shorter side resized to 224 bicubic (antialiased,
  on the 8-bit image like a PIL resize), centre crop 224, CLIP mean/std.
- ``reference`` (the authors' ``Clipper`` in ``src/models.py`` under torchvision 0.15): the image as a
  float tensor in [0, 1], shorter side resized to 224 bicubic WITHOUT antialiasing, centre crop 224,
  CLIP mean/std. The paper configs use it (``targets.clip_preprocess``); it is part of the fingerprint.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torchvision.transforms.functional as TF

from mindeye.constants import CLIP_MEAN, CLIP_STD, VIT_L14_VISION_CONFIG
from mindeye.encoders.base import (
    ImageEncoder,
    center_crop,
    config_to_dict,
    default_dtype,
    hash_json,
    path_fingerprint,
    resize_uint8,
    resolve_weights,
    seeded,
    shortest_edge_size,
    to_float_chw,
)
from mindeye.errors import MindEyeError

if TYPE_CHECKING:  # transformers is imported lazily: it takes seconds, and only CLIP needs it
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

DEFAULT_WEIGHTS = "openai/clip-vit-large-patch14"
DOWNLOAD_HINT = (
    "Download it with `hf download openai/clip-vit-large-patch14` "
    "(https://huggingface.co/openai/clip-vit-large-patch14) on a machine with network access."
)
_VERSION = 1  # bump when the derivation changes, so old caches are invalidated

Variant = Literal["hidden", "final"]
PREPROCESS = ("processor", "reference")


def vit_l14_config() -> CLIPVisionConfig:
    """The ViT-L/14 image tower's architecture (for random-weight benchmarks)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(**VIT_L14_VISION_CONFIG)


def check_preprocess(preprocess: str) -> str:
    if preprocess not in PREPROCESS:
        raise MindEyeError(f"CLIP preprocess must be one of {', '.join(PREPROCESS)}, got {preprocess!r}")
    return preprocess


def clip_preprocessing(image_size: int, variant: Variant, preprocess: str = "processor") -> dict[str, Any]:
    reference = check_preprocess(preprocess) == "reference"
    desc = {
        "resize_shortest_edge": image_size, "interpolation": "bicubic", "antialias": not reference,
        "resize_dtype": "float32" if reference else "uint8",
        "center_crop": image_size, "mean": list(CLIP_MEAN), "std": list(CLIP_STD),
        "output": "all tokens, post-layernorm + projection, / CLS norm" if variant == "hidden"
        else "image_embeds / norm",
        "version": _VERSION,
    }
    if reference:  # the processor's description stays as it was, so existing caches keep their fingerprint
        desc["preprocess"] = "reference"
    return desc


def describe(variant: Variant, random_init: bool, config: Any, preprocess: str = "processor") -> dict[str, Any]:
    size = config_to_dict(config).get("image_size", 224) if random_init and config is not None else 224
    return clip_preprocessing(int(size), variant, preprocess)


def weights_id(weights: str | None, random_init: bool, config: Any) -> str:
    if random_init:
        return "random-init:" + hash_json(config_to_dict(config) or "vit-l14")
    return "weights:" + path_fingerprint(resolve_weights("clip-vit-l14", weights, DEFAULT_WEIGHTS, DOWNLOAD_HINT))


class ClipImageEncoder(ImageEncoder):
    augmentation = "clip"

    def __init__(self, model: CLIPVisionModelWithProjection, variant: Variant, weights_id: str,
                 preprocessing: dict[str, Any]) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        cfg = model.config
        self.variant = variant
        self.name = f"clip-vit-l14-{variant}"
        self.image_size = int(cfg.image_size)
        n_tokens = (cfg.image_size // cfg.patch_size) ** 2 + 1
        self.output_shape = (n_tokens, cfg.projection_dim) if variant == "hidden" else (cfg.projection_dim,)
        self.preprocessing = preprocessing
        self.weights_id = weights_id
        self.compute_dtype = next(model.parameters()).dtype
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess_float(self, images: torch.Tensor) -> torch.Tensor:
        """Float (N, 3, H, W) images: the reference preprocessing works on them as they are (the authors'
        ``Clipper.embed_image`` on float tensors); ``processor`` goes through 8 bits like a PIL image."""
        if self.preprocessing.get("preprocess") != "reference":
            return super().preprocess_float(images)
        size = shortest_edge_size(*images.shape[-2:], self.image_size)
        x = images
        if tuple(x.shape[-2:]) != size:
            x = TF.resize(x, list(size), interpolation=TF.InterpolationMode.BICUBIC, antialias=False)
        x = center_crop(x, self.image_size)
        return (x - self.mean) / self.std

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        size = shortest_edge_size(*images.shape[1:3], self.image_size)
        if self.preprocessing.get("preprocess") == "reference":
            return self.preprocess_float(to_float_chw(images))
        else:
            x = resize_uint8(images, size, "bicubic")
        x = center_crop(x, self.image_size)
        return (x - self.mean) / self.std

    def tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Unnormalised (N, 257, 768): post-layernorm and visual projection applied to every token."""
        vision = self.model.vision_model
        hidden = vision(pixel_values=pixel_values).last_hidden_state
        return self.model.visual_projection(vision.post_layernorm(hidden))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.variant == "final":
            emb = self.model(pixel_values=pixel_values).image_embeds.float()
            return emb / emb.norm(dim=-1, keepdim=True)
        t = self.tokens(pixel_values).float()
        return t / t[:, :1].norm(dim=-1, keepdim=True)  # every token / the CLS token's norm


def _vision_config(path: Path) -> CLIPVisionConfig:
    """The image tower's config from a full CLIP or a vision-only checkpoint directory.

    A full CLIP config keeps ``projection_dim`` at the top level; the vision part alone would fall back
    to the class default, so it is copied over explicitly.
    """
    from transformers import CLIPVisionConfig

    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise MindEyeError(f"{path} has no config.json; --weights must be a Hugging Face CLIP model directory")
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("model_type") == "clip":
        vision = dict(cfg.get("vision_config") or {})
        vision["projection_dim"] = cfg.get("projection_dim", vision.get("projection_dim", 512))
        return CLIPVisionConfig(**{k: v for k, v in vision.items() if k not in ("model_type", "transformers_version")})
    return CLIPVisionConfig.from_pretrained(path)


def build(variant: Variant, weights: str | None = None, device: str = "cpu", random_init: bool = False,
          config: Any = None, dtype: torch.dtype | None = None, preprocess: str = "processor") -> ClipImageEncoder:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    check_preprocess(preprocess)
    dtype = dtype or default_dtype(device)
    if random_init:
        cfg = CLIPVisionConfig(**config_to_dict(config)) if config is not None else vit_l14_config()
        with seeded():
            model = CLIPVisionModelWithProjection(cfg)
        if dtype != torch.float32:
            model = model.to(dtype)
    else:
        path = resolve_weights(f"clip-vit-l14-{variant}", weights, DEFAULT_WEIGHTS, DOWNLOAD_HINT)
        from safetensors import SafetensorError
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a full CLIP checkpoint's text weights are expected to be unused
        try:
            model, info = CLIPVisionModelWithProjection.from_pretrained(
                path, config=_vision_config(path), dtype=dtype, local_files_only=True, output_loading_info=True)
        except (OSError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile,
                SafetensorError) as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            pickled = isinstance(exc, pickle.UnpicklingError)
            raise MindEyeError(  # torch's own advice for a pickle (weights_only=False) is not passed on
                f"could not load CLIP weights from {path} ("
                + ("a weights file there holds pickled Python objects, which mindeye never loads; nothing in it "
                   "was executed" if pickled else f"{type(exc).__name__}: {first}; a weights file there is damaged "
                   "or not a CLIP checkpoint")
                + f"). --weights must point at a Hugging Face CLIP model directory (config.json + "
                f"model.safetensors), e.g. a copy of {DEFAULT_WEIGHTS}"
            ) from None
        finally:
            hf_logging.set_verbosity(verbosity)
        if info.get("missing_keys"):  # never run with silently random-initialised layers
            raise MindEyeError(
                f"{path} lacks CLIP image-tower weights ({len(info['missing_keys'])} missing, e.g. "
                f"{sorted(info['missing_keys'])[:3]}); point --weights at a CLIP model such as {DEFAULT_WEIGHTS}"
            )
    enc = ClipImageEncoder(model, variant, weights_id(weights, random_init, config),
                           describe(variant, random_init, config, preprocess))
    return enc.to(device)
