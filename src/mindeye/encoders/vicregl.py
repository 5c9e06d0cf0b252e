"""VICRegL ConvNeXt (alpha 0.75): the contrastive teacher of the low-level pipeline.

Token layout (the reference's): the image is resized to 512 px and normalised with ImageNet statistics;
the ConvNeXt trunk (stride 32) gives a 16 x 16 map of the last stage, flattened row-major to 256 tokens,
layer-normalised, then passed through VICRegL's *maps projector* (the local-feature head trained with
the backbone, Linear-LN-ReLU-Linear-LN-ReLU-Linear, dims[-1] -> 512 -> 512 -> 512). Output: (256, 512),
the same shape as the low-level model's projector output, so the two can be contrasted token by token.

The maps projector only exists in VICRegL's *full* checkpoints (``convnext_xlarge_alpha0.75_fullckpt.pth``,
the one MindEye used); backbone-only files are refused with a message saying which file to get.
The trunk is torchvision's ConvNeXt; checkpoint keys are mapped from the VICRegL/ConvNeXt layout.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt, LayerNorm2d

from mindeye.constants import IMAGENET_MEAN, IMAGENET_STD
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
from mindeye.safe_load import load_torch_file

CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/vicregl/convnext_xlarge_alpha0.75_fullckpt.pth"
DOWNLOAD_HINT = (
    f"Download the VICRegL full checkpoint (backbone + maps projector) from {CHECKPOINT_URL} "
    "(also mirrored as convnext_xlarge_alpha0.75_fullckpt.pth in https://huggingface.co/datasets/pscotti/mindeyev2) "
    "on a machine with network access."
)
XLARGE = {"depths": [3, 3, 27, 3], "dims": [256, 512, 1024, 2048], "maps_mlp": [512, 512, 512]}
_VERSION = 1


def describe(image_size: int = 512) -> dict[str, Any]:
    return {
        "resize_shortest_edge": image_size, "interpolation": "bilinear", "antialias": True,
        "center_crop": image_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "output": "last-stage map tokens (row-major) -> LayerNorm -> maps projector", "version": _VERSION,
    }


def weights_id(weights: str | None, random_init: bool, config: Any) -> str:
    if random_init:
        return "random-init:" + hash_json(config_to_dict(config) or XLARGE)
    return "weights:" + path_fingerprint(resolve_weights("vicregl-convnext", weights, None, DOWNLOAD_HINT))


class VicreglConvNeXt(nn.Module):
    """ConvNeXt trunk + final LayerNorm + maps projector, returning (N, h*w, maps_mlp[-1]) tokens."""

    def __init__(self, depths: list[int], dims: list[int], maps_mlp: list[int]) -> None:
        super().__init__()
        stages = [CNBlockConfig(dims[i], dims[i + 1] if i + 1 < len(dims) else None, depths[i])
                  for i in range(len(dims))]
        # VICRegL trains without layer scale (its gamma is absent); torchvision's layer_scale=1 is the identity.
        self.trunk = ConvNeXt(stages, layer_scale=1.0, norm_layer=partial(LayerNorm2d, eps=1e-6)).features
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        widths = [dims[-1], *maps_mlp]
        layers: list[nn.Module] = []
        for i in range(len(widths) - 2):
            layers += [nn.Linear(widths[i], widths[i + 1]), nn.LayerNorm(widths[i + 1]), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(widths[-2], widths[-1], bias=False))
        self.maps_projector = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.trunk(x).flatten(2).transpose(1, 2)  # (N, h*w, C), row-major over the map
        return self.maps_projector(self.norm(maps))


def _unwrap(ckpt: Any) -> dict[str, torch.Tensor]:
    state = ckpt
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise MindEyeError("the VICRegL checkpoint does not contain a state dict")
    return {re.sub(r"^(module\.)+", "", k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def convert_vicregl_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """VICRegL checkpoint (backbone.* + maps_projector.*) -> (architecture, our state dict)."""
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if not backbone:  # a bare ConvNeXt state dict
        backbone = {k: v for k, v in state.items() if k.startswith(("downsample_layers.", "stages.", "norm."))}
    projector = {k[len("maps_projector."):]: v for k, v in state.items() if k.startswith("maps_projector.")}
    if "downsample_layers.0.0.weight" not in backbone:
        raise MindEyeError(
            "the VICRegL checkpoint has no ConvNeXt backbone keys (expected e.g. "
            "'module.backbone.downsample_layers.0.0.weight'); is it a VICRegL ConvNeXt checkpoint? " + DOWNLOAD_HINT
        )
    if not projector:
        raise MindEyeError(
            "this VICRegL checkpoint holds the backbone only; the teacher's local features need its maps "
            "projector, which is in the *full* checkpoint (…_fullckpt.pth). " + DOWNLOAD_HINT
        )
    n_stages = 1 + max(int(m.group(1)) for k in backbone if (m := re.match(r"stages\.(\d+)\.", k)))
    dims = [int(backbone[f"downsample_layers.{i}.{0 if i == 0 else 1}.weight"].shape[0]) for i in range(n_stages)]
    depths = [1 + max(int(m.group(1)) for k in backbone if (m := re.match(rf"stages\.{i}\.(\d+)\.", k)))
              for i in range(n_stages)]
    linear_ids = sorted(int(k.split(".")[0]) for k in projector if k.endswith(".weight") and projector[k].ndim == 2)
    maps_mlp = [int(projector[f"{i}.weight"].shape[0]) for i in linear_ids]
    block_names = {"dwconv": "block.0", "norm": "block.2", "pwconv1": "block.3", "pwconv2": "block.5"}
    out: dict[str, torch.Tensor] = {}
    for k, v in backbone.items():
        parts = k.split(".")
        if parts[0] == "downsample_layers":
            i, j = int(parts[1]), int(parts[2])
            # stem: [conv, LN] -> features.0.{0,1}; later: [LN, conv] -> features.{2i}.{0,1}
            out[f"trunk.{2 * i}.{j}.{parts[3]}"] = v
        elif parts[0] == "stages":
            i, j, name = int(parts[1]), int(parts[2]), parts[3]
            if name == "gamma":
                out[f"trunk.{2 * i + 1}.{j}.layer_scale"] = v.reshape(-1, 1, 1)
            else:
                out[f"trunk.{2 * i + 1}.{j}.{block_names[name]}.{parts[4]}"] = v
        elif parts[0] == "norm":
            out[k] = v
    for k, v in projector.items():
        out[f"maps_projector.{k}"] = v
    return {"depths": depths, "dims": dims, "maps_mlp": maps_mlp}, out


def load_vicregl(path: Path) -> VicreglConvNeXt:
    ckpt = load_torch_file(path, "pass the VICRegL ConvNeXt checkpoint (e.g. convnext_xlarge_alpha0.75_fullckpt.pth)",
                           mmap=True)
    arch, state = convert_vicregl_state_dict(_unwrap(ckpt))
    model = VicreglConvNeXt(**arch)
    own = model.state_dict()
    # Checkpoints trained without layer scale have no gamma: keep torchvision's (ones) for those.
    for k, v in own.items():
        if k.endswith("layer_scale") and k not in state:
            state[k] = torch.ones_like(v)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or unexpected or bad_shape:
        raise MindEyeError(
            f"{path} does not match the VICRegL ConvNeXt layout (architecture inferred: {arch}): "
            f"missing {missing[:4]}, unexpected {unexpected[:4]}, wrong shape {bad_shape[:4]}. " + DOWNLOAD_HINT
        )
    model.load_state_dict(state)
    return model


class VicreglEncoder(ImageEncoder):
    name = "vicregl-convnext"
    augmentation = "teacher"

    def __init__(self, model: VicreglConvNeXt, weights_id: str, image_size: int = 512) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.image_size = image_size
        grid = image_size // 32
        self.output_shape = (grid * grid, model.maps_projector[-1].out_features)
        self.preprocessing = describe(image_size)
        self.weights_id = weights_id
        self.compute_dtype = next(model.parameters()).dtype
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = to_float_chw(images)
        size = shortest_edge_size(*x.shape[-2:], self.image_size)
        if tuple(x.shape[-2:]) != size:
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return (center_crop(x, self.image_size) - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def build(weights: str | None = None, device: str = "cpu", random_init: bool = False, config: Any = None,
          dtype: torch.dtype | None = None, image_size: int = 512) -> VicreglEncoder:
    if image_size % 32:
        raise MindEyeError(f"vicregl-convnext image size must be a multiple of 32, got {image_size}")
    if random_init:
        with seeded():
            model = VicreglConvNeXt(**(config_to_dict(config) or XLARGE))
    else:
        model = load_vicregl(resolve_weights("vicregl-convnext", weights, None, DOWNLOAD_HINT))
    model = model.to(dtype or torch.float32)
    return VicreglEncoder(model, weights_id(weights, random_init, config), image_size).to(device)
