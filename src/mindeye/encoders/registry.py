"""The encoder registry: configs and the CLI select frozen encoders by name.

``get_encoder(name, weights=None, device="cpu")`` builds one; ``encoder_fingerprint(name, weights)`` gives
the cache key of its targets without building the model (it reads a sample of the weight files only).
``random_init=True`` builds the same architecture with seeded random weights -- for tests and
benchmarks only; it never happens implicitly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mindeye.devices import resolve_device
from mindeye.encoders import clip, effnet_lite, openclip, standins, vae, vicregl
from mindeye.encoders.base import ImageEncoder, make_fingerprint
from mindeye.encoders.catalog import ENCODER_SUMMARIES as SUMMARIES
from mindeye.errors import MindEyeError


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    summary: str
    default_weights: str | None  # None: a stand-in (no weights) or no public default id
    build: Callable[..., ImageEncoder]  # (weights, device, random_init, config, dtype, **options)
    weights_id: Callable[[str | None, bool, Any], str]  # cheap: no model is built
    preprocessing: Callable[[bool, Any, dict[str, Any]], dict[str, Any]]  # (random_init, config, options)
    standin: bool = False


def _standin_spec(name: str, summary: str) -> EncoderSpec:
    def build(weights: str | None, device: str, random_init: bool, config: Any, dtype: torch.dtype | None,
              **options: Any) -> ImageEncoder:
        if weights is not None:
            raise MindEyeError(f"'{name}' is a stand-in built in code; it takes no --weights")
        return standins.build(name, device, {**(config or {}), **options})

    def describe(random_init: bool, config: Any, options: dict[str, Any]) -> dict[str, Any]:
        return standins.build(name, "cpu", {**(config or {}), **options}).preprocessing

    return EncoderSpec(name, summary, None, build, lambda w, r, c: "standin", describe, standin=True)


ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec(
            "clip-vit-l14-hidden",
            SUMMARIES["clip-vit-l14-hidden"],
            clip.DEFAULT_WEIGHTS,
            lambda w, d, r, c, t, **o: clip.build("hidden", w, d, r, c, t, **o),
            clip.weights_id,
            lambda r, c, o: clip.describe("hidden", r, c, o.get("preprocess", "processor")),
        ),
        EncoderSpec(
            "clip-vit-l14-final",
            SUMMARIES["clip-vit-l14-final"],
            clip.DEFAULT_WEIGHTS,
            lambda w, d, r, c, t, **o: clip.build("final", w, d, r, c, t, **o),
            clip.weights_id,
            lambda r, c, o: clip.describe("final", r, c, o.get("preprocess", "processor")),
        ),
        EncoderSpec(
            "sd-vae",
            SUMMARIES["sd-vae"],
            vae.DEFAULT_WEIGHTS,
            vae.build,
            vae.weights_id,
            lambda r, c, o: vae.describe(o.get("image_size", 512)),
        ),
        EncoderSpec(
            "vicregl-convnext",
            SUMMARIES["vicregl-convnext"],
            None,
            vicregl.build,
            vicregl.weights_id,
            lambda r, c, o: vicregl.describe(o.get("image_size", 512)),
        ),
        EncoderSpec(
            "effnet-lite0-pooled",
            SUMMARIES["effnet-lite0-pooled"],
            None,
            effnet_lite.build_encoder,
            effnet_lite.encoder_weights_id,
            effnet_lite.describe,
        ),
        EncoderSpec(
            "openclip-vit-bigg14-tokens",
            SUMMARIES["openclip-vit-bigg14-tokens"],
            openclip.DEFAULT_WEIGHTS,
            openclip.build,
            openclip.weights_id,
            openclip.describe,
        ),
        _standin_spec("standin-clip-hidden", SUMMARIES["standin-clip-hidden"]),
        _standin_spec("standin-clip-final", SUMMARIES["standin-clip-final"]),
        _standin_spec("standin-vae", SUMMARIES["standin-vae"]),
        _standin_spec("standin-vicregl", SUMMARIES["standin-vicregl"]),
    )
}


def encoder_names() -> list[str]:
    return list(ENCODERS)


def get_spec(name: str) -> EncoderSpec:
    if name not in ENCODERS:
        raise MindEyeError(f"unknown encoder {name!r}; choose one of: {', '.join(ENCODERS)}")
    return ENCODERS[name]


def get_encoder(
    name: str,
    weights: str | None = None,
    device: str | torch.device = "cpu",
    random_init: bool = False,
    config: Any = None,
    dtype: torch.dtype | None = None,
    **options: Any,
) -> ImageEncoder:
    """Build a frozen encoder by registry name.

    ``weights``: a Hugging Face id (looked up in the local cache only), a local directory or a file;
    None uses the encoder's default id. ``random_init=True`` (tests/benchmarks only) builds the model
    with seeded random weights; ``config`` is then a transformers/diffusers config or a dict of its
    kwargs (None: the full-size architecture). ``options``: encoder-specific (e.g. ``image_size``).
    """
    spec = get_spec(name)
    device = resolve_device(device)
    if spec.standin:
        return spec.build(weights, device, random_init, config, dtype, **options)
    if random_init and weights is not None:
        raise MindEyeError("pass either --weights or --random-init, not both")
    return spec.build(weights, device, random_init, config, dtype, **options)


def encoder_fingerprint(name: str, weights: str | None = None, random_init: bool = False, config: Any = None,
                        **options: Any) -> str:
    """The encoder's fingerprint (weights + preprocessing) without building it.

    Equal to ``get_encoder(name, weights, ...).fingerprint``. Raises WeightsUnavailableError when the
    weights cannot be found.
    """
    spec = get_spec(name)
    if spec.standin:
        return spec.build(None, "cpu", False, config, None, **options).fingerprint
    return make_fingerprint(name, spec.weights_id(weights, random_init, config),
                            spec.preprocessing(random_init, config, options))
