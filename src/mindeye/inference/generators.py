"""Image generators that accept CLIP-space image embeddings: a conditional UNet + a latent codec + UniPC.

Three generators share one sampling loop (:meth:`ImageGenerator.denoise`):

=========================  =========================================  ===============  ==================
name                       weights                                    condition        latent / image
=========================  =========================================  ===============  ==================
``versatile-diffusion``    shi-labs/versatile-diffusion (image_unet)  257 x 768        4x64x64 / 512 px
``sd-image-variations``    lambdalabs/sd-image-variations-diffusers   1 x 768          4x64x64 / 512 px
``demo-latent-diffusion``  src/mindeye/assets/demo_generator.*        17 x 64          4x16x16 / 128 px
=========================  =========================================  ===============  ==================

The condition goes into the UNet's cross-attention as ``encoder_hidden_states``; classifier-free guidance
uses an all-zeros condition as the unconditional branch (as Versatile Diffusion's image-variation
pipeline does for an empty image). We run the loop ourselves, not through a diffusers pipeline, so that
img2img, best-of-N and batching over brain samples are ours.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel, UniPCMultistepScheduler

from mindeye.constants import CLIP_MEAN, CLIP_STD, SD_LATENT_SCALE, SD_VAE_CONFIG
from mindeye.errors import MindEyeError, WeightsUnavailableError, option
from mindeye.inference.img2img import img2img_start
from mindeye.utils.images import as_float_images, float_to_uint8, uint8_to_float
from mindeye.utils.weights import hf_cache_snapshot, quiet_diffusers, weight_load_errors

# Stable Diffusion v1's training noise schedule (Versatile Diffusion and SD image variations use it too).
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}
# UniPC's end point (ImageGenerator.final_sigmas): t = 0 as in diffusers 0.13 (the authors'), or sigma = 0.
FINAL_SIGMAS = ("sigma_min", "zero")
# Full-size architectures (used with random weights by the benchmark; real weights bring their own configs).
SD_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 768, "attention_head_dim": 8,
}


@dataclass(frozen=True)
class GeneratorSpec:
    """What a generator is, where its weights live, and which encoder's embeddings condition it."""

    name: str
    hf_id: str | None  # None: bundled with mindeye
    unet_subfolder: str
    condition_encoder: str  # registry name of the embedding it is conditioned on (also the best-of judge)
    condition_shape: tuple[int, int]
    condition_norm: float  # the CLS token of each condition is renormalised to this norm
    description: str
    download_hint: str = ""
    # UniPC's last step: "sigma_min" ends at t = 0 (sigma ~ 0.029), as the authors' diffusers 0.13 loop did;
    # "zero" ends at sigma = 0 (diffusers' default since 0.2x).
    final_sigmas: str = "zero"
    # "module:function" of a generator that lives in a module of its own (it subclasses ImageGenerator, so
    # this module cannot import it): called as function(weights, device, dtype, random_init=...).
    loader: str = ""
    # reconstruction settings this generator's authors used, where they differ from ReconstructSettings'
    # (Versatile Diffusion's); `mindeye reconstruct` applies them unless the flag is given
    defaults: dict[str, Any] = field(default_factory=dict)


GENERATORS: dict[str, GeneratorSpec] = {
    "versatile-diffusion": GeneratorSpec(
        "versatile-diffusion", "shi-labs/versatile-diffusion", "image_unet", "clip-vit-l14-hidden", (257, 768),
        1.0, "Versatile Diffusion image-variation UNet + SD VAE (paper's main generator)",
        "Download it with `hf download shi-labs/versatile-diffusion --include 'image_unet/*' --include "
        "'vae/*' --include 'scheduler/*'` on a machine with network access.", final_sigmas="sigma_min",
    ),
    "sd-image-variations": GeneratorSpec(
        "sd-image-variations", "lambdalabs/sd-image-variations-diffusers", "unet", "clip-vit-l14-final",
        (1, 768), 1.0, "Stable Diffusion Image Variations (final-layer 1x768 CLIP embedding; paper A.7)",
        "Download it with `hf download lambdalabs/sd-image-variations-diffusers --include 'unet/*' "
        "--include 'vae/*' --include 'scheduler/*'` on a machine with network access.", final_sigmas="sigma_min",
    ),
    "unclip-sdxl": GeneratorSpec(  # MindEye2's; loaded and sampled by mindeye.inference.unclip_sdxl
        "unclip-sdxl", None, "", "openclip-vit-bigg14-tokens", (256, 1664), 1.0,
        "MindEye2's unCLIP fine-tune of SDXL (authors' sgm checkpoint, 256 x 1664 bigG image tokens), 768 px",
        "Download it with `hf download pscotti/mindeyev2 unclip6_epoch0_step110000.ckpt --repo-type dataset "
        "--local-dir DIR` on a machine with network access.", loader="mindeye.inference.unclip_sdxl:load_unclip_sdxl",
        # recon_inference.ipynb: one sample per image (no best-of), 38 Euler steps, CFG 5 (unclip6.yaml), pure
        # noise start (no img2img), prior p_sample_loop(timesteps=20)
        defaults={"samples": 1, "steps": 38, "guidance": 5.0, "img2img_strength": 0.0, "prior_steps": 20},
    ),
    "demo-latent-diffusion": GeneratorSpec(
        "demo-latent-diffusion", None, "", "standin-clip-hidden", (17, 64), 1.0,
        "tiny latent diffusion model trained on simulated scenes by scripts/train_demo_generator.py "
        "(stand-in for Versatile Diffusion in the demo; not a natural-image generator)",
    ),
}


def asset_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "assets"


def generator_spec(name: str) -> GeneratorSpec:
    if name not in GENERATORS:
        raise MindEyeError(f"unknown generator {name!r}; choose one of {', '.join(GENERATORS)}")
    return GENERATORS[name]


def describe_generators() -> str:
    """``name (TxD encoder)`` of every generator, for messages."""
    return ", ".join(f"{n} ({s.condition_shape[0]}x{s.condition_shape[1]} {s.condition_encoder})"
                     for n, s in GENERATORS.items())


def generator_for(encoder: str, tokens: tuple[int, int]) -> str | None:
    """The generator conditioned on a run's target space: its target ``encoder`` and output shape ``tokens``
    (backbone tokens x dim) both match, else the shape alone; None when no generator takes that shape."""
    same_shape = [n for n, s in GENERATORS.items() if tuple(s.condition_shape) == tuple(tokens)]
    exact = [n for n in same_shape if GENERATORS[n].condition_encoder == encoder]
    return (exact or same_shape or [None])[0]


# ------------------------------------------------------------------------------------------------
# Latent codecs: uint8 images <-> latents
# ------------------------------------------------------------------------------------------------
class LatentCodec(Protocol):
    image_size: int

    def encode(self, images: torch.Tensor | np.ndarray) -> torch.Tensor: ...

    def encode_init(self, images: torch.Tensor | np.ndarray, encoding: str,
                    generator: torch.Generator | None = None) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def decode_float(self, latents: torch.Tensor) -> torch.Tensor: ...


# CLIP's image normalisation: the authors feed the blurry image to the VAE normalised this way.
_CLIP_MEAN, _CLIP_STD = CLIP_MEAN, CLIP_STD


class DiffusersVaeCodec:
    """A diffusers AutoencoderKL: images in [-1, 1], posterior mode x scaling factor (SD convention)."""

    def __init__(self, vae: AutoencoderKL, scaling_factor: float, image_size: int) -> None:
        self.vae = vae.eval().requires_grad_(False)
        self.scaling_factor = scaling_factor
        self.image_size = image_size

    @torch.no_grad()
    def encode(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        p = next(self.vae.parameters())
        x = as_float_images(images, self.image_size, p.device) * 2 - 1
        return self.vae.encode(x.to(p.dtype)).latent_dist.mode().float() * self.scaling_factor

    @torch.no_grad()
    def encode_init(self, images: torch.Tensor | np.ndarray, encoding: str = "reference",
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """The img2img start latent of the blurry image.

        ``reference`` (the authors' ``utils.reconstruction``): the image normalised with CLIP's mean/std
        (``clip_extractor.normalize``), a posterior SAMPLE drawn with ``generator``, x scaling factor.
        ``vae``: the SD convention, image in [-1, 1] and the posterior mode (= :meth:`encode`).
        """
        if encoding == "vae":
            return self.encode(images)
        if encoding != "reference":
            raise MindEyeError(f"unknown init encoding {encoding!r}; use 'reference' or 'vae'")
        p = next(self.vae.parameters())
        x = as_float_images(images, self.image_size, p.device)  # a float blurry image goes in unclamped
        mean = torch.tensor(_CLIP_MEAN, device=p.device).view(1, 3, 1, 1)
        std = torch.tensor(_CLIP_STD, device=p.device).view(1, 3, 1, 1)
        posterior = self.vae.encode(((x - mean) / std).to(p.dtype)).latent_dist
        return posterior.sample(generator=generator).float() * self.scaling_factor

    @torch.no_grad()
    def decode_float(self, latents: torch.Tensor) -> torch.Tensor:
        """float (N, 3, H, W) ``decoded / 2 + 0.5``, not clamped, not quantised."""
        p = next(self.vae.parameters())
        img = self.vae.decode((latents / self.scaling_factor).to(p.device, p.dtype)).sample
        return (img.float() + 1) / 2

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return float_to_uint8(self.decode_float(latents))


class EncoderCodec:
    """A registry VAE encoder (e.g. ``standin-vae``) used as codec, its latents multiplied by ``scale``."""

    def __init__(self, encoder: Any, scale: float, image_size: int) -> None:
        self.encoder, self.scale, self.image_size = encoder, scale, image_size

    @torch.no_grad()
    def encode(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        return self.encoder.encode(images).float() * self.scale

    @torch.no_grad()
    def encode_init(self, images: torch.Tensor | np.ndarray, encoding: str = "reference",
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """A registry codec is deterministic and has no posterior: both encodings are :meth:`encode`."""
        if encoding not in ("reference", "vae"):
            raise MindEyeError(f"unknown init encoding {encoding!r}; use 'reference' or 'vae'")
        return self.encode(images)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.encoder.decode(latents / self.scale))

    @torch.no_grad()
    def decode_float(self, latents: torch.Tensor) -> torch.Tensor:
        """A registry codec decodes to 8 bits (the stand-in's own output): those values as floats."""
        return uint8_to_float(self.decode(latents))


# ------------------------------------------------------------------------------------------------
# The generator
# ------------------------------------------------------------------------------------------------
@dataclass
class ImageGenerator:
    """Conditional UNet + codec + UniPC schedule; :meth:`denoise` is the one sampling loop for all of them."""

    name: str
    unet: UNet2DConditionModel
    codec: LatentCodec
    condition_shape: tuple[int, int]
    scheduler_config: dict[str, Any] = field(default_factory=lambda: dict(SD_SCHEDULER_CONFIG))
    condition_norm: float = 1.0
    weights_id: str = "random-init"
    final_sigmas: str = "zero"  # UniPC end point: "sigma_min" (t = 0, diffusers 0.13, the authors') or "zero"

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        size = size if isinstance(size, int) else size[0]
        return (self.unet.config.in_channels, size, size)

    @property
    def image_size(self) -> int:
        return self.codec.image_size

    def prepare_condition(self, embeds: torch.Tensor) -> torch.Tensor:
        """(B, T, D) prior outputs -> every token divided by the CLS norm, times ``condition_norm``."""
        t, d = self.condition_shape
        embeds = embeds.reshape(embeds.shape[0], t, d).float()
        return embeds / embeds[:, :1].norm(dim=-1, keepdim=True).clamp_min(1e-8) * self.condition_norm

    @torch.no_grad()
    def denoise(
        self,
        condition: torch.Tensor,
        noise: torch.Tensor,
        init_latents: torch.Tensor | None = None,
        strength: float = 0.0,
        steps: int = 20,
        guidance: float = 3.5,
        final_sigmas: str | None = None,
    ) -> torch.Tensor:
        """Sample latents (B, C, h, w) from ``noise`` with UniPC, conditioned on ``condition`` (B, T, D).

        ``strength`` (paper Table 5): the fraction of the schedule skipped when starting from the noised
        ``init_latents`` (img2img). 0 or no init latents: pure-noise start over the full schedule.
        Strength 1 (nothing left to denoise) is handled by the caller, which returns the init image.
        ``final_sigmas`` (None: the generator's own, ``sigma_min`` for Versatile Diffusion): where UniPC's
        last step ends, t = 0 (``sigma_min``, the authors' diffusers 0.13) or sigma = 0 (``zero``).
        """
        device, dtype = self.device, self.dtype
        final_sigmas = final_sigmas or self.final_sigmas
        if final_sigmas not in FINAL_SIGMAS:
            raise MindEyeError(f"final sigmas must be one of {', '.join(FINAL_SIGMAS)}, got {final_sigmas!r}")
        scheduler = UniPCMultistepScheduler.from_config({**self.scheduler_config, "final_sigmas_type": final_sigmas})
        scheduler.set_timesteps(steps, device=device)
        timesteps = scheduler.timesteps
        start = img2img_start(strength, steps) if init_latents is not None else 0
        if start >= steps:
            raise ValueError("strength 1 leaves nothing to denoise; return the init image instead")
        noise = noise.to(device, torch.float32)
        if start > 0:
            t0 = timesteps[start : start + 1].repeat(noise.shape[0])
            latents = scheduler.add_noise(init_latents.to(device, torch.float32), noise, t0)
            scheduler.set_begin_index(start)
            timesteps = timesteps[start:]
        else:
            latents = noise * scheduler.init_noise_sigma
        cond = condition.to(device, dtype)
        use_cfg = guidance != 1.0
        context = torch.cat([torch.zeros_like(cond), cond]) if use_cfg else cond
        for t in timesteps:
            x = torch.cat([latents, latents]) if use_cfg else latents
            x = scheduler.scale_model_input(x, t).to(dtype)
            eps = self.unet(x, t, encoder_hidden_states=context).sample.float()
            if use_cfg:
                eps_uncond, eps_cond = eps.chunk(2)
                eps = eps_uncond + guidance * (eps_cond - eps_uncond)
            latents = scheduler.step(eps, t, latents).prev_sample
        return latents

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> ImageGenerator:
        kw = {"device": device} if dtype is None else {"device": device, "dtype": dtype}
        self.unet.to(**kw)
        if isinstance(self.codec, DiffusersVaeCodec):
            self.codec.vae.to(**kw)
        return self


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------
_WEIGHTS_HINT = option('image_model_weights="/path/to/local/copy"', "--weights /path/to/local/copy")


def resolve_pipeline_dir(spec: GeneratorSpec, weights: str | None) -> Path:
    """``--weights`` (local pipeline directory or HF id, looked up in the local HF cache only) -> a path."""
    ref = weights or spec.hf_id
    path = Path(ref).expanduser()
    if path.exists():
        return path
    local = hf_cache_snapshot(ref)
    if local is not None:
        return local
    raise WeightsUnavailableError(
        f"weights for generator '{spec.name}' ({ref}) are not available on this machine. "
        f"{spec.download_hint} Then pass "
        f"{_WEIGHTS_HINT} (the pipeline directory holding "
        f"{spec.unet_subfolder}/ and vae/), or fill the Hugging Face cache on a machine with network access."
    )


def load_generator(
    name: str,
    weights: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    random_init: bool = False,
) -> ImageGenerator:
    """A ready-to-sample generator. ``random_init`` builds the full-size architecture with random weights
    (benchmarks only); ``dtype`` defaults to fp16 on CUDA and fp32 elsewhere."""
    spec = generator_spec(name)
    dtype = dtype or (torch.float16 if torch.device(device).type == "cuda" else torch.float32)
    if spec.name == "demo-latent-diffusion":
        return load_demo_generator(weights, device)
    if spec.loader:
        import importlib

        module, function = spec.loader.split(":")
        return getattr(importlib.import_module(module), function)(weights, device, dtype, random_init=random_init)
    if random_init:
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**SD_UNET_CONFIG)
        vae = AutoencoderKL(**SD_VAE_CONFIG)
        sched, weights_id = dict(SD_SCHEDULER_CONFIG), "random-init"
    else:
        root = resolve_pipeline_dir(spec, weights)
        try:
            with quiet_diffusers():
                unet = UNet2DConditionModel.from_pretrained(root, subfolder=spec.unet_subfolder, torch_dtype=dtype)
                vae = AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=dtype)
        except weight_load_errors() as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise WeightsUnavailableError(
                f"could not load generator '{spec.name}' from {root}: {first}. {spec.download_hint} "
                f"{option('image_model_weights', '--weights')} must be a pipeline directory with {spec.unet_subfolder}/ and vae/ subfolders"
            ) from None
        sched = dict(SD_SCHEDULER_CONFIG)
        if (root / "scheduler" / "scheduler_config.json").exists():
            own = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
            sched.update({k: own[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                              "prediction_type") if k in own})
        weights_id = str(root)
    if unet.config.cross_attention_dim != spec.condition_shape[1]:
        raise MindEyeError(f"generator '{spec.name}' UNet has cross_attention_dim {unet.config.cross_attention_dim}, "
                           f"expected {spec.condition_shape[1]}")
    scale = getattr(vae.config, "scaling_factor", SD_LATENT_SCALE) or SD_LATENT_SCALE
    codec = DiffusersVaeCodec(vae, scale, image_size=8 * unet.config.sample_size)
    gen = ImageGenerator(spec.name, unet.eval().requires_grad_(False), codec, spec.condition_shape, sched,
                         spec.condition_norm, weights_id, final_sigmas=spec.final_sigmas)
    return gen.to(device, dtype)


def demo_config_path(weights: str | None = None) -> tuple[Path, Path]:
    """(weights file, config JSON) of the demo generator (bundled unless ``weights`` points elsewhere)."""
    st = Path(weights) if weights else asset_dir() / "demo_generator.safetensors"
    cfg = st.with_suffix(".json")
    if not st.exists() or not cfg.exists():
        raise WeightsUnavailableError(
            f"demo generator weights {st} (and {cfg.name} beside it) not found; train them with "
            f"`python scripts/train_demo_generator.py --out {st}` or reinstall mindeye"
        )
    return st, cfg


def build_demo_unet(unet_config: dict[str, Any]) -> UNet2DConditionModel:
    return UNet2DConditionModel(**unet_config)


def load_demo_generator(weights: str | None = None, device: str | torch.device = "cpu") -> ImageGenerator:
    from safetensors.torch import load_file

    from mindeye.encoders.registry import get_encoder

    st, cfg_path = demo_config_path(weights)
    meta = json.loads(cfg_path.read_text())
    unet = build_demo_unet(meta["unet"])
    unet.load_state_dict({k: v.float() for k, v in load_file(str(st)).items()})
    codec_encoder = get_encoder(meta["codec"], device=str(device))
    codec = EncoderCodec(codec_encoder, meta["latent_scale"], meta["image_size"])
    spec = GENERATORS["demo-latent-diffusion"]
    gen = ImageGenerator(spec.name, unet.eval().requires_grad_(False), codec, tuple(meta["condition_shape"]),
                         meta["scheduler"], spec.condition_norm, f"bundled:{st.name}:{meta.get('sha', '')}")
    return gen.to(device)
