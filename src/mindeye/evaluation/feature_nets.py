"""Pretrained feature networks for the reconstruction metrics (paper Table 1, Appendix A.6).

Each extractor takes float images (N, 3, H, W) in [0, 1] that are already 256x256 (the metric
protocol resizes everything to 256 first) and applies the reference's own resize + normalisation
(no centre crop anywhere), then returns flattened-able feature maps keyed by metric name:

    metric            network / node                          resize  output shape (for 256 input)
    alexnet2          AlexNet (ImageNet) features.4           256     (N, 192, 31, 31)
    alexnet5          AlexNet (ImageNet) features.11          256     (N, 256, 15, 15)
    inceptionv3       Inception-v3 (ImageNet) avgpool         342     (N, 2048, 1, 1)
    efficientnet_b1   EfficientNet-B1 (ImageNet) avgpool      255     (N, 1280, 1, 1)
    swav              SwAV ResNet-50 (800 ep) avgpool         224     (N, 2048, 1, 1)
    clip              CLIP ViT-L/14 final image embedding     224     (N, 768)

AlexNet, Inception, EfficientNet and SwAV use ImageNet mean/std; CLIP uses CLIP's mean/std.
Weights are never downloaded here and never silently random: a network whose weights cannot be
found becomes an :class:`Unavailable` entry whose reason names the file, its URL and the fix.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models
from torchvision.models.feature_extraction import create_feature_extractor

from mindeye.constants import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, VIT_L14_VISION_CONFIG
from mindeye.errors import MindEyeError, WeightsUnavailableError
from mindeye.safe_load import load_torch_file

NET_NAMES = ("alexnet", "inceptionv3", "efficientnet_b1", "swav", "clip")
# Which metrics each network provides (AlexNet gives two layers).
NET_METRICS = {
    "alexnet": ("alexnet2", "alexnet5"),
    "inceptionv3": ("inceptionv3",),
    "efficientnet_b1": ("efficientnet_b1",),
    "swav": ("swav",),
    "clip": ("clip",),
}

# The reference used torchvision's DEFAULT weights. For EfficientNet-B1 DEFAULT is IMAGENET1K_V2
# (efficientnet_b1-c27df63c.pth), whose own eval transform is the 255 resize the protocol uses.
TORCHVISION_WEIGHTS = {
    "alexnet": models.AlexNet_Weights.IMAGENET1K_V1,
    "inceptionv3": models.Inception_V3_Weights.IMAGENET1K_V1,
    "efficientnet_b1": models.EfficientNet_B1_Weights.DEFAULT,
}
SWAV_URL = "https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar"
DEFAULT_CLIP = "openai/clip-vit-large-patch14"


@dataclass
class Unavailable:
    """A feature network that could not be loaded; `reason` says why and how to fix it."""

    reason: str


class FeatureExtractor(nn.Module):
    """Resize -> normalise -> network; returns {metric_name: features} for images in [0, 1]."""

    def __init__(self, name: str, net: nn.Module, resize: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.name = name
        self.net = net.eval()
        self.resize = resize
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, antialias: bool = False) -> dict[str, torch.Tensor]:
        """``antialias=False`` (the authors' torchvision 0.15 on tensors) for the network's own resize
        (256 -> 224 for CLIP and SwAV, 256 -> 255 for EfficientNet); True antialiases the downscales."""
        x = images.to(self.mean.device, torch.float32)
        # Square inputs (the protocol's 256x256) -> resize x resize, like torchvision Resize(int).
        x = resize_short_side(x, self.resize, antialias=antialias)
        x = (x - self.mean) / self.std
        out = self.net(x)
        if self.name == "clip":
            return {"clip": out.image_embeds}
        if self.name == "alexnet":
            return {"alexnet2": out["features.4"], "alexnet5": out["features.11"]}
        return {self.name: out["avgpool"]}


def resize_short_side(x: torch.Tensor, size: int, antialias: bool = True) -> torch.Tensor:
    """torchvision `Resize(size)` semantics (shorter side -> size), bilinear, antialiased unless told not to
    (torchvision 0.15 did not antialias tensors; upsampling is the same either way)."""
    h, w = x.shape[-2:]
    if min(h, w) == size:
        return x
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    return F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=antialias, align_corners=False)


@dataclass
class FeatureNets:
    """The metric networks, each a :class:`FeatureExtractor` or an :class:`Unavailable` entry."""

    nets: dict[str, FeatureExtractor | Unavailable] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        weights_dir: str | os.PathLike | None = None,
        clip: str = DEFAULT_CLIP,
        random_init: bool = False,
        device: str | torch.device = "cpu",
        names: Sequence[str] = NET_NAMES,
        clip_config=None,
    ) -> FeatureNets:
        """Load the requested networks; missing weights become `Unavailable` (never random).

        weights_dir: folder with the standard checkpoint files (torchvision filenames, SwAV's
            swav_800ep_pretrain.pth.tar, optionally a CLIP model folder named like the HF id's last
            part); torch hub's cache (`torch.hub.get_dir()/checkpoints`) is searched next.
        clip: Hugging Face id or local directory of a CLIPVisionModelWithProjection (ViT-L/14).
        random_init: ONLY for tests -- build untrained networks instead of loading weights.
        clip_config: with random_init, a (tiny) `CLIPVisionConfig`; default is the ViT-L/14 shape.
        """
        unknown = set(names) - set(NET_NAMES)
        if unknown:
            raise MindEyeError(f"unknown feature network(s) {sorted(unknown)}; choose from {list(NET_NAMES)}")
        wdir = Path(weights_dir) if weights_dir is not None else None
        nets: dict[str, FeatureExtractor | Unavailable] = {}
        for name in names:
            try:
                if name == "clip":
                    net = _build_clip(clip, wdir, random_init, clip_config)
                else:
                    net = _build_torchvision(name, wdir, random_init)
            except _Missing as e:
                nets[name] = Unavailable(str(e))
                continue
            nets[name] = net.to(device)
        return cls(nets)

    def available(self) -> dict[str, FeatureExtractor]:
        return {k: v for k, v in self.nets.items() if isinstance(v, FeatureExtractor)}


class _Missing(Exception):
    """Internal: weights not found; the message becomes the Unavailable reason."""


def _find_checkpoint(filename: str, url: str, wdir: Path | None, what: str) -> Path:
    candidates = []
    if wdir is not None:
        candidates.append(wdir / filename)
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / filename)
    for path in candidates:
        if path.is_file():
            return path
    searched = ", ".join(str(p) for p in candidates)
    raise _Missing(
        f"{what} weights not found (looked for {searched}). Download {url} and put "
        f"{filename} in a folder passed as --weights-dir (or in the torch hub cache "
        f"{Path(torch.hub.get_dir()) / 'checkpoints'})."
    )


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    sd = load_torch_file(path, "replace it with the original torchvision / metric checkpoint in --weights-dir")
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return sd


def _build_torchvision(name: str, wdir: Path | None, random_init: bool) -> FeatureExtractor:
    # Find the checkpoint before building anything, so a missing file costs nothing.
    path = None
    if not random_init:
        if name == "swav":
            path = _find_checkpoint(Path(SWAV_URL).name, SWAV_URL, wdir, "SwAV ResNet-50")
        else:
            url = TORCHVISION_WEIGHTS[name].url
            path = _find_checkpoint(Path(url).name, url, wdir, f"torchvision {name}")

    if name == "alexnet":
        net, nodes, resize = models.alexnet(weights=None), ["features.4", "features.11"], 256
    elif name == "inceptionv3":
        # Pretrained torchvision Inception is built with transform_input=True (it re-maps ImageNet
        # normalisation to Google's [-1, 1]); the reference got this via `weights=`, so mirror it.
        net = models.inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
        nodes, resize = ["avgpool"], 342
    elif name == "efficientnet_b1":
        net, nodes, resize = models.efficientnet_b1(weights=None), ["avgpool"], 255
    elif name == "swav":
        net, nodes, resize = models.resnet50(weights=None), ["avgpool"], 224
    else:  # pragma: no cover - guarded by FeatureNets.load
        raise ValueError(name)

    if path is not None:
        if name == "swav":
            _load_swav_trunk(net, _load_state_dict(path), path)
        else:
            try:
                net.load_state_dict(_load_state_dict(path), strict=True)
            except RuntimeError as e:
                url = TORCHVISION_WEIGHTS[name].url
                raise WeightsUnavailableError(
                    f"{path} does not match torchvision's {name}: {str(e).splitlines()[0][:300]}. "
                    f"Replace it with {url}."
                ) from e
    net.eval()
    with warnings.catch_warnings():  # torchvision notes that train/eval graphs differ; we only use eval
        warnings.filterwarnings("ignore", message=".*tracing the model in eval mode.*")
        fx = create_feature_extractor(net, return_nodes=nodes)
    return FeatureExtractor(name, fx, resize, IMAGENET_MEAN, IMAGENET_STD)


def _load_swav_trunk(net: nn.Module, sd: dict[str, torch.Tensor], path: Path) -> None:
    """Load a facebookresearch SwAV checkpoint into torchvision's ResNet-50, strict on the trunk.

    The checkpoint has DDP `module.` prefixes and extra projection_head/prototypes keys, and no fc.
    """
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    trunk = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    missing = [k for k in trunk if k not in sd]
    bad_shape = [k for k in trunk if k in sd and sd[k].shape != trunk[k].shape]
    if missing or bad_shape:
        raise WeightsUnavailableError(
            f"{path} is not a SwAV ResNet-50 checkpoint: {len(missing)} trunk keys missing "
            f"(e.g. {missing[:3]}), {len(bad_shape)} with the wrong shape (e.g. {bad_shape[:3]}). "
            f"Replace it with {SWAV_URL}."
        )
    net.load_state_dict({k: sd[k] for k in trunk}, strict=False)  # only fc is left out


def vit_l14_vision_config():
    """CLIP ViT-L/14 vision tower shape (what openai/clip-vit-large-patch14 uses)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(**VIT_L14_VISION_CONFIG)


def _looks_local(src: str) -> bool:
    return Path(src).exists() or src.startswith(("/", ".", "~")) or src.count("/") > 1


def _build_clip(clip: str, wdir: Path | None, random_init: bool, clip_config) -> FeatureExtractor:
    from transformers import CLIPVisionModelWithProjection

    if random_init:
        model = CLIPVisionModelWithProjection(clip_config or vit_l14_vision_config())
    else:
        # Offline first: <weights_dir>/<last part of the id> if it exists, then `clip` as a local
        # folder or from the HF cache, and only then the hub itself (never for a path).
        sources = [clip]
        if wdir is not None and not Path(clip).is_dir():
            local = wdir / Path(clip).name
            if local.is_dir():
                sources.insert(0, str(local))
        model, errors = None, []
        for src in sources:
            for local_only in (True, False):
                if _looks_local(src) and not Path(src).expanduser().is_dir():
                    errors.append(f"{src}: no such folder")
                    break
                if not local_only and _looks_local(src):
                    continue  # a path, not a hub id: never go online for it
                try:
                    model = CLIPVisionModelWithProjection.from_pretrained(
                        Path(src).expanduser() if _looks_local(src) else src, local_files_only=local_only)
                    break
                except Exception as e:  # any failure means "not available"
                    errors.append(f"{src}: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
            if model is not None:
                break
        if model is None:
            raise _Missing(
                f"CLIP vision model '{clip}' could not be loaded ({'; '.join(dict.fromkeys(errors))}). Download "
                f"https://huggingface.co/{DEFAULT_CLIP} (e.g. `hf download {DEFAULT_CLIP}`) while online, "
                f"or pass a local folder with config.json + weights via --clip, or put it as "
                f"<--weights-dir>/{Path(clip).name} (HF_HUB_OFFLINE=1 skips the online attempt)."
            )
    size = model.config.image_size
    return FeatureExtractor("clip", model.eval(), size, CLIP_MEAN, CLIP_STD)
