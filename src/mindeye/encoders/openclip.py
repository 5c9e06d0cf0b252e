"""OpenCLIP ViT-bigG/14 image tokens (``open_clip``): MindEye2's target space, (256, 1664).

What the authors compute (MedARC-AI/MindEyeV2 ``src/Train.ipynb`` cell "clip_img_embedder" and
``src/generative_models/sgm/modules/encoders/modules.py`` ``FrozenOpenCLIPImageEmbedder`` with
``arch="ViT-bigG-14", version="laion2b_s39b_b160k", output_tokens=True, only_tokens=True``):

- the open_clip ``VisionTransformer`` with ``output_tokens = True`` returns ``(pooled, tokens)``; the
  tokens are the last block's output after ``ln_post`` (open_clip applies ``ln_post`` to every token
  before pooling), CLS dropped, NOT multiplied by ``proj`` and NOT normalised (``l2_norm_tokens`` is
  False): 256 patch tokens x width 1664;
- preprocessing (``FrozenOpenCLIPImageEmbedder.preprocess``): kornia bicubic resize of the float image
  to 224 x 224 (``align_corners=True``, antialiased), then ``(x + 1) / 2``, then CLIP mean/std. The
  sgm convention is an image in [-1, 1]; the authors feed their [0, 1] images (the 224 px float16
  NSD images of their hdf5), so the pixels reaching the network lie in [0.5, 1]. Their targets, their
  unCLIP conditioning and their checkpoints all come from that, so ``preprocess="reference"`` (the
  default) reproduces it; ``preprocess="standard"`` is open_clip's own transform (shorter side 224,
  bicubic, antialiased, centre crop, mean/std; no shift).

Weights: a Hugging Face id (local cache only) or a local directory or file holding an open_clip
checkpoint (``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``); only ``visual.*`` is
read. Default ``laion/CLIP-ViT-bigG-14-laion2B-39B-b160k`` (open_clip's ``laion2b_s39b_b160k`` tag).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mindeye.constants import CLIP_MEAN, CLIP_STD
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
from mindeye.errors import MindEyeError, WeightsUnavailableError

NAME = "openclip-vit-bigg14-tokens"
ARCH = "ViT-bigG-14"
DEFAULT_WEIGHTS = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"
INSTALL_HINT = "install it with `pip install 'mindeye[mindeye2]'` (open-clip-torch)"
DOWNLOAD_HINT = (
    f"Download it with `hf download {DEFAULT_WEIGHTS} open_clip_model.safetensors open_clip_config.json` "
    f"(https://huggingface.co/{DEFAULT_WEIGHTS}) on a machine with network access."
)
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
PREPROCESS = ("reference", "standard")
# ViT-bigG/14's image tower (open_clip's model_configs/ViT-bigG-14.json), so the fingerprint of the
# default needs no open_clip import.
BIGG_VISION_CFG: dict[str, Any] = {"image_size": 224, "layers": 48, "width": 1664, "head_width": 104,
                                   "mlp_ratio": 4.9231, "patch_size": 14}
BIGG_EMBED_DIM = 1280
_VERSION = 1


def import_open_clip() -> Any:
    try:
        import open_clip
    except ImportError:
        raise MindEyeError(f"encoder '{NAME}' needs the open_clip package, which is not installed; "
                           f"{INSTALL_HINT}") from None
    return open_clip


def check_preprocess(preprocess: str) -> str:
    if preprocess not in PREPROCESS:
        raise MindEyeError(f"{NAME} preprocess must be one of {', '.join(PREPROCESS)}, got {preprocess!r}")
    return preprocess


def describe(random_init: bool, config: Any, options: dict[str, Any]) -> dict[str, Any]:
    preprocess = check_preprocess(options.get("preprocess", "reference"))
    size = int(_vision_cfg(config).get("image_size", 224)) if random_init else 224
    desc: dict[str, Any] = {"mean": list(CLIP_MEAN), "std": list(CLIP_STD), "version": _VERSION,
                            "output": "ln_post(last block) patch tokens, CLS dropped, no proj, no norm"}
    if preprocess == "reference":
        desc.update({"resize": [size, size], "interpolation": "bicubic", "align_corners": True, "antialias": True,
                     "library": "kornia", "shift": "(x + 1) / 2 of [0, 1] images (authors')"})
    else:
        desc.update({"resize_shortest_edge": size, "interpolation": "bicubic", "antialias": True,
                     "resize_dtype": "uint8", "center_crop": size})
    return desc


def _vision_cfg(config: Any) -> dict[str, Any]:
    """``config``: a vision_cfg dict, or an open_clip model config ({"embed_dim", "vision_cfg", ...})."""
    cfg = config_to_dict(config)
    if "vision_cfg" in cfg:
        return dict(cfg["vision_cfg"])
    return {k: v for k, v in cfg.items() if k != "embed_dim"} or dict(BIGG_VISION_CFG)


def _embed_dim(config: Any) -> int:
    return int(config_to_dict(config).get("embed_dim", BIGG_EMBED_DIM))


def weights_id(weights: str | None, random_init: bool, config: Any) -> str:
    if random_init:
        return "random-init:" + hash_json(config_to_dict(config) or ARCH)
    return "weights:" + path_fingerprint(weights_file(weights))


def weights_file(weights: str | None) -> Path:
    """The open_clip checkpoint file of ``--weights`` (a file, a directory, or a cached HF id)."""
    path = resolve_weights(NAME, weights, DEFAULT_WEIGHTS, DOWNLOAD_HINT)
    if path.is_file():
        return path
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    raise WeightsUnavailableError(
        f"{path} holds no open_clip checkpoint ({' or '.join(WEIGHT_FILES)}). {DOWNLOAD_HINT} "
        f"Then pass --weights /path/to/that/directory or file.")


def build_tower(config: Any = None) -> torch.nn.Module:
    """open_clip's VisionTransformer as ``open_clip.CLIP`` builds it (``_build_vision_tower``), random weights."""
    import_open_clip()
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    return _build_vision_tower(_embed_dim(config), CLIPVisionCfg(**_vision_cfg(config)))


def _load_visual_state(file: Path) -> dict[str, torch.Tensor]:
    from mindeye.safe_load import load_safetensors_file, load_torch_file

    fix = f"--weights must be an open_clip ViT-bigG/14 checkpoint. {DOWNLOAD_HINT}"
    sd = load_safetensors_file(file, fix) if file.suffix == ".safetensors" else load_torch_file(file, fix)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise MindEyeError(f"{file} is not a state dict; {fix}")
    visual = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    if not visual:
        raise MindEyeError(f"{file} has no 'visual.*' weights (not an open_clip CLIP checkpoint); {fix}")
    return visual


def _config_beside(file: Path) -> dict[str, Any] | None:
    cfg_file = file.parent / "open_clip_config.json"
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text()).get("model_cfg")
        if cfg and "vision_cfg" in cfg:
            return {"embed_dim": cfg.get("embed_dim", BIGG_EMBED_DIM), "vision_cfg": cfg["vision_cfg"]}
    return None


class OpenClipTokenEncoder(ImageEncoder):
    augmentation = None

    def __init__(self, visual: torch.nn.Module, weights_id: str, preprocessing: dict[str, Any],
                 preprocess: str) -> None:
        super().__init__()
        visual.output_tokens = True
        self.visual = visual.eval().requires_grad_(False)
        self.name = NAME
        size = visual.image_size
        self.image_size = int(size[0] if isinstance(size, tuple | list) else size)
        grid = visual.grid_size
        width = visual.ln_post.normalized_shape[0] if hasattr(visual.ln_post, "normalized_shape") \
            else visual.conv1.out_channels
        self.output_shape = (int(grid[0] * grid[1]), int(width))
        self.preprocessing = preprocessing
        self.preprocess_mode = preprocess
        self.weights_id = weights_id
        self.compute_dtype = next(visual.parameters()).dtype
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess_float(self, images: torch.Tensor) -> torch.Tensor:
        if self.preprocess_mode != "reference":
            return super().preprocess_float(images)
        import kornia

        x = images
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = kornia.geometry.resize(x, (self.image_size, self.image_size), interpolation="bicubic",
                                       align_corners=True, antialias=True)
        x = (x + 1.0) / 2.0  # the sgm embedder's [-1, 1] -> [0, 1] map, applied to [0, 1] images (authors')
        return (x - self.mean) / self.std

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        if self.preprocess_mode == "reference":
            return self.preprocess_float(to_float_chw(images))
        x = resize_uint8(images, shortest_edge_size(*images.shape[1:3], self.image_size), "bicubic")
        x = center_crop(x, self.image_size)
        return (x - self.mean) / self.std

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        _, tokens = self.visual(pixel_values)
        return tokens.float()


def build(weights: str | None = None, device: str = "cpu", random_init: bool = False, config: Any = None,
          dtype: torch.dtype | None = None, preprocess: str = "reference") -> OpenClipTokenEncoder:
    check_preprocess(preprocess)
    import_open_clip()
    dtype = dtype or default_dtype(device)
    if random_init:
        with seeded():
            visual = build_tower(config)
    else:
        file = weights_file(weights)
        state = _load_visual_state(file)
        visual = build_tower(_config_beside(file) or {"embed_dim": BIGG_EMBED_DIM, "vision_cfg": BIGG_VISION_CFG})
        missing, unexpected = visual.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise MindEyeError(
                f"{file} does not fit open_clip {ARCH}'s image tower ({len(missing)} missing, e.g. "
                f"{sorted(missing)[:3]}; {len(unexpected)} unexpected, e.g. {sorted(unexpected)[:3]}); "
                f"{DOWNLOAD_HINT}")
    visual = visual.to(dtype)
    enc = OpenClipTokenEncoder(visual, weights_id(weights, random_init, config),
                               describe(random_init, config, {"preprocess": preprocess}), preprocess)
    return enc.to(device)
