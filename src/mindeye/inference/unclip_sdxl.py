"""MindEye2's unCLIP-SDXL generator: their fine-tuned SDXL UNet conditioned on 256 x 1664 bigG image tokens.

The authors' checkpoint (``unclip6_epoch0_step110000.ckpt`` in the Hugging Face dataset
``pscotti/mindeyev2``) is a Stability ``sgm`` ``DiffusionEngine`` state dict
(``src/generative_models/configs/unclip6.yaml``): ``model.diffusion_model.*`` is an SDXL ``UNetModel``
with ``context_dim: 1664`` (cross-attention on the OpenCLIP ViT-bigG/14 image tokens) and
``adm_in_channels: 1024`` (``label_emb``: the "vector" of two ``ConcatTimestepEmbedderND`` of 256 x 2
each: ``original_size_as_tuple`` and ``crop_coords_top_left``; no pooled text embedding);
``first_stage_model.*`` is the SDXL VAE (``scale_factor: 0.13025``).

Loading: diffusers' own single-file conversion (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``) maps both onto ``UNet2DConditionModel`` / ``AutoencoderKL``. The
extra conditioning maps onto diffusers' SDXL ``addition_embed_type="text_time"``: ``label_emb.0.0`` /
``label_emb.0.2`` -> ``add_embedding.linear_1`` / ``linear_2`` (diffusers' table), the vector's four
sinusoidal embeddings -> ``add_time_proj`` (Timesteps(256, flip_sin_to_cos=True, shift 0) is sgm's
``timestep_embedding``: cos first, max period 10000) with ``time_ids = (768, 768, 0, 0)`` and a 0-wide
``text_embeds``. ``tests/test_mindeye2_inference.py`` proves the mapping on a tiny UNet written out in
the sgm layout.

Sampling (the authors' ``src/utils.py`` ``unclip_recon`` with the ``unclip6.yaml`` sampler, 38 steps as
``recon_inference.ipynb`` sets): Euler (``EulerEDMSampler``, no churn) over ``LegacyDDPMDiscretization``
sigmas; the eps-denoiser ``x - sigma * eps(x / sqrt(1 + sigma^2), t)`` (``DiscreteDenoiser`` +
``EpsScaling``, t the index of sigma); classifier-free guidance 5 (``VanillaCFG``) whose unconditional
branch is a draw of STANDARD NORMAL tokens (``torch.randn_like``), not zeros; start
``noise * sqrt(1 + sigma_0^2)`` plus their offset noise 0.04; decode ``vae(z / 0.13025) * 0.8 + 0.2``
clamped to [0, 1] (not ``/ 2 + 0.5``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from mindeye.errors import MindEyeError, WeightsUnavailableError
from mindeye.inference.generators import GENERATORS, DiffusersVaeCodec, GeneratorSpec, ImageGenerator
from mindeye.inference.img2img import img2img_start

NAME = "unclip-sdxl"
HF_REPO = "pscotti/mindeyev2"
CKPT_NAME = "unclip6_epoch0_step110000.ckpt"
DOWNLOAD_HINT = GENERATORS[NAME].download_hint
SCALE_FACTOR = 0.13025  # unclip6.yaml model.params.scale_factor (the SDXL VAE's)
OFFSET_NOISE = 0.04  # unclip6.yaml loss_fn_config offset_noise_level, used by utils.unclip_recon
DECODE_AFFINE = (0.8, 0.2)  # utils.unclip_recon: samples_x * .8 + .2
ORIGINAL_SIZE, CROP = (768, 768), (0, 0)  # recon_inference.ipynb's conditioner batch
STEPS, GUIDANCE = 38, 5.0  # recon_inference.ipynb num_steps = 38; unclip6.yaml VanillaCFG scale 5.0

# unclip6.yaml network_config in diffusers' terms (SDXL base's UNet with context 1664, adm 1024).
UNET_CONFIG: dict[str, Any] = {
    "sample_size": 96, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20],  # num_head_channels 64
    "use_linear_projection": True, "cross_attention_dim": 1664,
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 1024,
}
# unclip6.yaml first_stage_config ddconfig (the SDXL VAE).
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "sample_size": 768, "scaling_factor": SCALE_FACTOR,
}
NUM_TRAIN_TIMESTEPS, BETA_START, BETA_END = 1000, 0.00085, 0.012  # LegacyDDPMDiscretization defaults

SPEC: GeneratorSpec = GENERATORS[NAME]


def legacy_ddpm_schedule(steps: int) -> tuple[np.ndarray, torch.Tensor]:
    """(timestep indices, sigmas + a final 0) of sgm's ``LegacyDDPMDiscretization(steps)``, highest first."""
    betas = torch.linspace(BETA_START ** 0.5, BETA_END ** 0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, 0).numpy()
    if steps < NUM_TRAIN_TIMESTEPS:  # sgm generate_roughly_equally_spaced_steps
        ts = np.linspace(NUM_TRAIN_TIMESTEPS - 1, 0, steps, endpoint=False).astype(int)[::-1]
    else:
        ts = np.arange(NUM_TRAIN_TIMESTEPS)
    sigmas = torch.tensor(((1 - alphas_cumprod[ts]) / alphas_cumprod[ts]) ** 0.5, dtype=torch.float32)
    return ts[::-1].copy(), torch.cat([sigmas.flip(0), sigmas.new_zeros(1)])


class AffineVaeCodec(DiffusersVaeCodec):
    """A diffusers VAE whose decoded images map to [0, 1] as ``x * a + b`` (the authors' ``* .8 + .2``)."""

    def __init__(self, vae: AutoencoderKL, scaling_factor: float, image_size: int,
                 affine: tuple[float, float] = DECODE_AFFINE) -> None:
        super().__init__(vae, scaling_factor, image_size)
        self.affine = affine

    @torch.no_grad()
    def decode_float(self, latents: torch.Tensor) -> torch.Tensor:
        p = next(self.vae.parameters())
        img = self.vae.decode((latents / self.scaling_factor).to(p.device, p.dtype)).sample
        return img.float() * self.affine[0] + self.affine[1]


class UnclipSdxlGenerator(ImageGenerator):
    """unCLIP-SDXL in diffusers classes, sampled as the authors' sgm engine (see the module docstring)."""

    offset_noise: float = OFFSET_NOISE

    def prepare_condition(self, embeds: torch.Tensor) -> torch.Tensor:
        """Prior outputs (B, 256, 1664) go in as they are (``unclip_recon`` renormalises nothing)."""
        t, d = self.condition_shape
        return embeds.reshape(embeds.shape[0], t, d).float()

    def added_cond(self, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
        ids = torch.tensor([[*ORIGINAL_SIZE, *CROP]], dtype=torch.float32, device=device).repeat(batch, 1)
        return {"text_embeds": torch.zeros(batch, 0, device=device, dtype=self.dtype), "time_ids": ids}

    @staticmethod
    def row_generators(noise: torch.Tensor) -> list[torch.Generator]:
        """One generator per sample, seeded from that sample's own noise: the unconditional tokens and offset
        noise are random as the authors' (``randn_like``) yet fixed per brain sample, whatever the batching."""
        seeds = [int(abs(float(n.double().sum())) * 1e6) % (2**63 - 1) for n in noise.flatten(1)]
        return [torch.Generator().manual_seed(s) for s in seeds]

    @torch.no_grad()
    def denoise(self, condition: torch.Tensor, noise: torch.Tensor, init_latents: torch.Tensor | None = None,
                strength: float = 0.0, steps: int = STEPS, guidance: float = GUIDANCE,
                final_sigmas: str | None = None) -> torch.Tensor:
        device = self.device
        ts, sigmas = legacy_ddpm_schedule(steps)
        start = img2img_start(strength, steps) if init_latents is not None else 0
        if start >= steps:
            raise ValueError("strength 1 leaves nothing to denoise; return the init image instead")
        noise = noise.to(device, torch.float32)
        gens = self.row_generators(noise)
        uncond = torch.stack([torch.randn(tuple(condition.shape[1:]), generator=g) for g in gens])
        offset = torch.stack([torch.randn((), generator=g) for g in gens]).to(device).view(-1, 1, 1, 1)
        noise = noise + self.offset_noise * offset
        sigmas = sigmas.to(device)
        if start > 0:  # img2img: the init latent noised to sigma_start (sgm's Img2Img convention)
            latents = init_latents.to(device, torch.float32) + noise * sigmas[start]
        else:
            latents = noise * torch.sqrt(1.0 + sigmas[0] ** 2)
        added = self.added_cond(len(noise), device)
        return euler_cfg(self.unet, latents, sigmas[start:], ts[start:], condition, uncond, added, added, guidance)

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> UnclipSdxlGenerator:
        self.unet.to(device=device, **({} if dtype is None else {"dtype": dtype}))
        self.codec.vae.to(device=device)  # the VAE stays float32 (sgm: disable_first_stage_autocast)
        return self


@torch.no_grad()
def euler_cfg(unet: UNet2DConditionModel, latents: torch.Tensor, sigmas: torch.Tensor, timesteps: np.ndarray,
              context: torch.Tensor, uncond_context: torch.Tensor, added: dict[str, torch.Tensor],
              uncond_added: dict[str, torch.Tensor], guidance: float) -> torch.Tensor:
    """sgm's ``EulerEDMSampler`` (no churn) on the eps ``DiscreteDenoiser`` with ``VanillaCFG``: from
    ``latents`` at ``sigmas[0]`` through ``sigmas[1:]`` (the last one 0), ``timesteps[i]`` the index of
    ``sigmas[i]``. The unconditional branch gets its own context and added conditioning."""
    device, dtype = latents.device, next(unet.parameters()).dtype
    use_cfg = guidance != 1.0
    ctx = torch.cat([uncond_context, context]) if use_cfg else context
    ctx = ctx.to(device, dtype)
    add = {k: torch.cat([uncond_added[k], added[k]]).to(device, dtype if k == "text_embeds" else torch.float32)
           for k in added} if use_cfg else added
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        x = torch.cat([latents, latents]) if use_cfg else latents
        x_in = (x / torch.sqrt(sigma ** 2 + 1)).to(dtype)
        t = torch.full((len(x),), int(timesteps[i]), device=device, dtype=torch.long)
        eps = unet(x_in, t, encoder_hidden_states=ctx, added_cond_kwargs=add).sample.float()
        if use_cfg:
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        # Euler step on the eps-denoiser: d = (x - denoised) / sigma = eps
        latents = latents + (sigmas[i + 1] - sigma) * eps
    return latents


# ------------------------------------------------------------------------------------------------
# sgm checkpoint -> diffusers
# ------------------------------------------------------------------------------------------------
def sgm_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an sgm checkpoint (``.ckpt``/``.pt`` with a ``state_dict``, or ``.safetensors``)."""
    from mindeye.safe_load import load_safetensors_file, load_torch_file

    path = Path(path)
    fix = f"--weights must be the authors' unCLIP checkpoint {CKPT_NAME}. {DOWNLOAD_HINT}"
    sd = load_safetensors_file(path, fix) if path.suffix == ".safetensors" else load_torch_file(path, fix, mmap=True)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not any(str(k).startswith("model.diffusion_model.") for k in sd):
        raise MindEyeError(f"{path} has no 'model.diffusion_model.*' tensors: not an sgm diffusion checkpoint; {fix}")
    return sd


def convert_sgm_unet(sd: dict[str, torch.Tensor], config: dict[str, Any]) -> UNet2DConditionModel:
    """``model.diffusion_model.*`` of an sgm state dict -> a diffusers UNet of ``config`` (strict)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    return _load_converted(UNet2DConditionModel(**config), convert_ldm_unet_checkpoint, sd,
                           "the sgm UNet does not fit the unCLIP-SDXL architecture")


def convert_sgm_vae(sd: dict[str, torch.Tensor], config: dict[str, Any]) -> AutoencoderKL:
    """``first_stage_model.*`` of an sgm state dict -> a diffusers VAE of ``config`` (strict)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return _load_converted(AutoencoderKL(**config), convert_ldm_vae_checkpoint, sd,
                           "the sgm VAE (first_stage_model.*) does not fit the SDXL VAE")


def _load_converted(model: Any, convert: Any, sd: dict[str, torch.Tensor], what: str) -> Any:
    """diffusers' single-file converter applied to ``sd``, loaded strictly into ``model`` (a clear error)."""
    missing, unexpected = model.load_state_dict(convert(sd, dict(model.config)), strict=False)
    if missing or unexpected:
        raise MindEyeError(f"{what} ({len(missing)} missing, e.g. {sorted(missing)[:3]}; {len(unexpected)} "
                           f"unexpected, e.g. {sorted(unexpected)[:3]})")
    return model


def from_sgm_state_dict(sd: dict[str, torch.Tensor], unet_config: dict[str, Any] | None = None,
                        vae_config: dict[str, Any] | None = None, weights_id: str = "sgm") -> UnclipSdxlGenerator:
    unet = convert_sgm_unet(sd, unet_config or UNET_CONFIG)
    vae = convert_sgm_vae(sd, vae_config or VAE_CONFIG)
    size = unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    scale = float(getattr(vae.config, "scaling_factor", SCALE_FACTOR))
    codec = AffineVaeCodec(vae.eval().requires_grad_(False), scale, image_size=8 * size)
    t, _ = SPEC.condition_shape
    return UnclipSdxlGenerator(NAME, unet.eval().requires_grad_(False), codec, (t, unet.config.cross_attention_dim),
                               condition_norm=1.0, weights_id=weights_id, final_sigmas="zero")


def resolve_checkpoint(weights: str | None) -> Path:
    if weights is None:
        from mindeye.utils.weights import hf_cache_snapshot

        snap = hf_cache_snapshot(HF_REPO)
        if snap is not None and (snap / CKPT_NAME).is_file():
            return snap / CKPT_NAME
        raise WeightsUnavailableError(f"weights for generator '{NAME}' are not available on this machine. "
                                      f"{DOWNLOAD_HINT} Then pass --weights DIR/{CKPT_NAME}.")
    path = Path(weights).expanduser()
    if path.is_dir() and (path / CKPT_NAME).is_file():
        path = path / CKPT_NAME
    if not path.is_file():
        raise WeightsUnavailableError(f"generator '{NAME}' weights {path} not found. {DOWNLOAD_HINT} "
                                      f"Then pass --weights DIR/{CKPT_NAME}.")
    return path


def load_unclip_sdxl(weights: str | None = None, device: str | torch.device = "cpu",
                     dtype: torch.dtype | None = None, random_init: bool = False) -> UnclipSdxlGenerator:
    """The authors' unCLIP-SDXL checkpoint as a ready-to-sample generator (fp16 UNet on CUDA).
    ``random_init``: the full-size architecture with random weights (benchmarks only)."""
    if random_init:
        torch.manual_seed(0)
        unet, vae = UNet2DConditionModel(**UNET_CONFIG), AutoencoderKL(**VAE_CONFIG)
        gen = UnclipSdxlGenerator(NAME, unet.eval().requires_grad_(False), AffineVaeCodec(vae.eval(), SCALE_FACTOR, 768),
                                  SPEC.condition_shape, weights_id="random-init", final_sigmas="zero")
    else:
        path = resolve_checkpoint(weights)
        gen = from_sgm_state_dict(sgm_state_dict(path), weights_id=f"{path.name}:{path.stat().st_size}")
    dtype = dtype or (torch.float16 if torch.device(device).type == "cuda" else torch.float32)
    return gen.to(device, dtype)
