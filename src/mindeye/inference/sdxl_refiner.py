"""MindEye2's refinement stage: SDXL img2img from the unCLIP reconstruction, prompted by a caption.

What ``src/enhanced_recon_inference.ipynb`` computes for each unrefined reconstruction (768 px):

- ``z = encode_first_stage(image * 2 - 1)``: an SDXL-VAE posterior SAMPLE x 0.13025;
- conditioning from SDXL's conditioner: the caption through CLIP-L (hidden layer 11) and OpenCLIP bigG
  (penultimate layer), concatenated (2048-d), plus the vector = bigG pooled text embedding and the
  original size (768, 768), crop (0, 0) and target size (1024, 1024) embeddings; the unconditional
  branch is a fixed negative prompt (:data:`NEGATIVE_PROMPT`) with the same sizes;
- the 25-step ``LegacyDDPMDiscretization`` grid, started ``img2img_timepoint = 13`` sigmas from the end
  (``sigmas[-13:]``: 12 Euler steps from ``z + noise * sigmas[-13]``), ``VanillaCFG`` scale 5;
- decode ``(x + 1) / 2`` clamped to [0, 1].

diffusers' ``StableDiffusionXLImg2ImgPipeline.encode_prompt`` computes the same text conditioning
(``hidden_states[-2]`` of both text encoders, ``text_embeds`` pooled); the sampling loop is
:func:`mindeye.inference.unclip_sdxl.euler_cfg`. Their refiner weights were ``zavychromaxl_v30``, a
community SDXL fine-tune (the notebook's ``base_ckpt_path``); any SDXL base in diffusers layout loads
(``stabilityai/stable-diffusion-xl-base-1.0`` is the documented default).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mindeye.errors import MindEyeError, WeightsUnavailableError
from mindeye.inference.unclip_sdxl import euler_cfg, legacy_ddpm_schedule

DEFAULT_WEIGHTS = "stabilityai/stable-diffusion-xl-base-1.0"
DOWNLOAD_HINT = (f"Download an SDXL base pipeline with `hf download {DEFAULT_WEIGHTS} --include 'unet/*' --include "
                 "'vae/*' --include 'text_encoder/*' --include 'text_encoder_2/*' --include 'tokenizer/*' --include "
                 "'tokenizer_2/*' --include 'scheduler/*' --include model_index.json` on a machine with network access.")
NEGATIVE_PROMPT = (
    "painting, extra fingers, mutated hands, poorly drawn hands, poorly drawn face, deformed, ugly, blurry, bad "
    "anatomy, bad proportions, extra limbs, cloned face, skinny, glitchy, double torso, extra arms, extra hands, "
    "mangled fingers, missing lips, ugly face, distorted face, extra legs, anime")  # enhanced_recon_inference.ipynb
ORIGINAL_SIZE, CROP, TARGET_SIZE = (768, 768), (0, 0), (1024, 1024)


@dataclass
class RefineSettings:
    steps: int = 25  # base_engine.sampler.num_steps = 25
    timepoint: int = 13  # img2img_timepoint: start this many sigmas from the end of the grid
    guidance: float = 5.0  # base_engine.sampler.guider.scale = 5
    negative_prompt: str = NEGATIVE_PROMPT

    def validate(self) -> None:
        if self.steps < 1 or not 2 <= self.timepoint <= self.steps + 1:
            raise MindEyeError(f"refiner steps must be >= 1 and the timepoint between 2 and steps + 1 "
                               f"(got steps {self.steps}, timepoint {self.timepoint})")


class SdxlRefiner:
    """SDXL base components (a diffusers ``StableDiffusionXLImg2ImgPipeline``) driven the authors' way."""

    def __init__(self, pipe: Any, weights_id: str = "random-init") -> None:
        self.pipe = pipe
        self.weights_id = weights_id
        for m in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            m.eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.pipe.unet.parameters()).device

    def conditioning(self, prompts: list[str], negative_prompt: str) -> tuple[torch.Tensor, ...]:
        """(context, pooled, negative context, negative pooled) as SDXL's conditioner computes them."""
        ctx, neg, pooled, neg_pooled = self.pipe.encode_prompt(
            prompt=list(prompts), device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=True,
            negative_prompt=[negative_prompt] * len(prompts))
        return ctx, pooled, neg, neg_pooled

    @torch.no_grad()
    def refine(self, images: torch.Tensor, prompts: list[str], generators: list[torch.Generator],
               settings: RefineSettings | None = None) -> torch.Tensor:
        """float (N, 3, H, W) images in [0, 1] -> refined float images in [0, 1]; generator k draws image k's
        posterior sample and noise."""
        settings = settings or RefineSettings()
        settings.validate()
        if len(prompts) != len(images) or len(generators) != len(images):
            raise MindEyeError(f"refine needs one prompt and one generator per image ({len(images)} images, "
                               f"{len(prompts)} prompts, {len(generators)} generators)")
        vae, device = self.pipe.vae, self.device
        scale = float(vae.config.scaling_factor)
        x = (images.to(device, torch.float32) * 2 - 1).to(next(vae.parameters()).dtype)
        z = torch.cat([vae.encode(x[k:k + 1]).latent_dist.sample(generator=g) for k, g in enumerate(generators)])
        z = z.float() * scale
        noise = torch.cat([torch.randn(z.shape[1:], generator=g, device=g.device)[None] for g in generators]).to(device)
        ts, sigmas = legacy_ddpm_schedule(settings.steps)
        start = settings.steps + 1 - settings.timepoint  # sigmas[-timepoint:] of the steps + 1 sigmas
        sigmas = sigmas.to(device)
        latents = z + noise * sigmas[start]
        ctx, pooled, neg, neg_pooled = self.conditioning(prompts, settings.negative_prompt)
        ids = torch.tensor([[*ORIGINAL_SIZE, *CROP, *TARGET_SIZE]], dtype=torch.float32, device=device)
        ids = ids.repeat(len(images), 1)
        latents = euler_cfg(self.pipe.unet, latents, sigmas[start:], ts[start:], ctx, neg,
                            {"text_embeds": pooled, "time_ids": ids}, {"text_embeds": neg_pooled, "time_ids": ids},
                            settings.guidance)
        out = vae.decode((latents / scale).to(next(vae.parameters()).dtype)).sample.float()
        return ((out + 1) / 2).clamp(0, 1)


def load_refiner(weights: str | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None) -> SdxlRefiner:
    """An SDXL base pipeline directory (diffusers layout) or HF id in the local cache -> :class:`SdxlRefiner`."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from mindeye.utils.weights import hf_cache_snapshot, quiet_diffusers, weight_load_errors

    ref = weights or DEFAULT_WEIGHTS
    path = Path(ref).expanduser()
    if not path.exists():
        path = hf_cache_snapshot(ref)
        if path is None:
            raise WeightsUnavailableError(f"SDXL refiner weights ({ref}) are not available on this machine. "
                                          f"{DOWNLOAD_HINT} Then pass --refiner-weights /path/to/that/directory.")
    dtype = dtype or (torch.float16 if torch.device(device).type == "cuda" else torch.float32)
    try:
        with quiet_diffusers():
            pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
    except weight_load_errors() as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise WeightsUnavailableError(f"could not load an SDXL pipeline from {path}: {first}. {DOWNLOAD_HINT}") from None
    pipe.vae.to(torch.float32)  # sgm decodes outside autocast (disable_first_stage_autocast)
    return SdxlRefiner(pipe.to(device), weights_id=str(path))


def refine_dir(recons: str | Path, out_dir: str | Path, weights: str | None = None,
               captions: str | Path | None = None, settings: RefineSettings | None = None, seed: int = 0,
               device: str = "cpu", dtype: torch.dtype | None = None, limit: int | None = None,
               progress: bool = True, refiner: SdxlRefiner | None = None,
               image_size: int = ORIGINAL_SIZE[0], via_size: int | None = 256) -> dict[str, Any]:
    """`mindeye refine`: every image of a `mindeye reconstruct` directory -> its refined image in ``out_dir``
    (same index format, so `mindeye evaluate recon` reads it). ``captions``: a JSON object mapping store image
    index -> caption (missing: the caption `mindeye reconstruct --caption-weights` stored, else the empty prompt). Resumable; each image's draws come from ``item_seed``.
    Images are refined at ``image_size`` after passing through ``via_size`` (theirs: ``recon_inference.ipynb``
    saves the reconstructions resized to 256, ``enhanced_recon_inference.ipynb`` resizes them to 768; both
    bilinear without antialiasing, their torchvision 0.16 on tensors). ``via_size=None``: straight to 768."""
    import json

    import numpy as np
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from mindeye.inference.recon_dir import (
        entry_path,
        finished,
        open_index,
        read_index,
        save_float,
        write_index,
    )
    from mindeye.inference.reconstruct import item_seed
    from mindeye.utils.images import float_to_uint8, load_png, save_png, uint8_to_float

    settings = settings or RefineSettings()
    settings.validate()
    recons, out_dir = Path(recons), Path(out_dir)
    src = read_index(recons, f"{recons} holds no reconstructions; make them with `mindeye reconstruct --generator "
                             "unclip-sdxl`")
    if src.get("kind") != "reconstruction":
        raise MindEyeError(f"{recons} holds {src.get('kind')} images, not reconstructions; refine the output of "
                           "`mindeye reconstruct`")
    texts: dict[str, str] = {}
    if captions is not None:
        try:
            texts = {str(k): str(v) for k, v in json.loads(Path(captions).read_text()).items()}
        except (OSError, ValueError, AttributeError) as exc:
            raise MindEyeError(f"--captions {captions} must be a JSON object mapping store image index to caption "
                               f"({type(exc).__name__}: {exc})") from None
    order = sorted(src["images"], key=int)[:limit]
    config = {**src.get("config", {}), "refined_from": str(recons.resolve()),
              "refiner": {**settings.__dict__, "seed": seed, "captions": str(captions) if captions else None,
                          "via_size": via_size, "image_size": image_size}}
    refiner = refiner or load_refiner(weights, device, dtype)
    config["refiner"]["weights"] = refiner.weights_id
    out_dir.mkdir(parents=True, exist_ok=True)
    index = open_index(out_dir, "reconstruction", config)
    for key in tqdm(order, desc="refine", unit="img", disable=not progress):
        rec = src["images"][key]
        idx = int(rec.get("image_index", key))
        if finished(index, out_dir, idx):
            continue
        if rec.get("float_file"):
            img = torch.from_numpy(np.load(entry_path(recons, rec["float_file"]))).float()[None]
        else:
            img = uint8_to_float(load_png(entry_path(recons, rec["file"]))[None])
        for size in ((via_size,) if via_size else ()) + (image_size,):
            if tuple(img.shape[-2:]) != (size, size):
                img = F.interpolate(img, size=(size, size), mode="bilinear", antialias=False, align_corners=False)
        g = torch.Generator(device=refiner.device).manual_seed(item_seed(seed, idx))
        prompt = texts.get(str(idx), rec.get("caption", ""))  # --captions, else `reconstruct`'s own caption
        result = refiner.refine(img, [prompt], [g], settings)[0].cpu()
        entry = {**{k: v for k, v in rec.items() if k not in ("samples", "float_file")},
                 "file": f"images/{idx:05d}.png", "caption": prompt}
        save_png(float_to_uint8(result[None])[0], out_dir / entry["file"])
        entry["float_file"] = save_float(result, out_dir, idx)
        index["images"][str(idx)] = entry
        write_index(out_dir, index)
    return index
