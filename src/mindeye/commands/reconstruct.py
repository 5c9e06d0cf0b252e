"""`mindeye reconstruct` (prior -> generator -> img2img -> best-of-N) and `mindeye reconstruct-blurry`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from mindeye.commands.options import add_data, add_device, add_out, add_progress

GENERATOR_NAMES = ["versatile-diffusion", "sd-image-variations", "demo-latent-diffusion", "unclip-sdxl"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconstruct", help="reconstruct test images from brain activity with an image generator",
        description="For every test brain sample of a high-level run: sample --samples embeddings from its "
                    "diffusion prior, generate one image each (img2img from the blurry low-level image when "
                    "--lowlevel is given), keep the one whose CLIP embedding best matches the brain's. Writes "
                    "OUT/images/*.png and OUT/index.json; re-running resumes. See docs/reconstruction.md.")
    p.add_argument("--run", required=True, help="high-level run directory (with a diffusion prior)")
    p.add_argument("--lowlevel", default=None,
                   help="low-level run directory, or a `reconstruct-blurry` output directory (enables img2img)")
    add_generator_options(p)
    p.add_argument("--save-all", action="store_true", help="also save all N candidates (OUT/samples/)")
    p.add_argument("--limit", type=int, default=None, help="only the first N test images")
    p.add_argument("--bottleneck", type=int, default=None, metavar="K",
                   help="BrainBits-style: keep the brain embeddings (and a low-level run's latents) to their top-K "
                        "principal components, fitted on every test sample, first (docs/evaluation.md)")
    p.add_argument("--caption-weights", default=None, metavar="GIT",
                   help="MindEye2 captions of the prior outputs: GIT weights (HF id or directory, e.g. "
                        "microsoft/git-large-coco); needs --caption-converter")
    p.add_argument("--caption-converter", default=None, metavar="FILE",
                   help="the authors' bigG -> CLIP-L converter bigG_to_L_epoch8.pth (pscotti/mindeyev2)")
    p.add_argument("--subject", default=None, metavar="ID", help="subject of a shared-subject run (required when it has several; RUN/run.json lists them)")
    add_data(p, help="subject store (default: the run's)")
    add_device(p)
    p.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"],
                   help="generator precision (auto: float16 on GPU, float32 on CPU)")
    add_out(p, help="output directory")
    add_progress(p)
    p.set_defaults(func=run)

    b = sub.add_parser(
        "reconstruct-blurry", help="decode a low-level run's predicted VAE latents into blurry images",
        description="Run a low-level model on the test split and decode its latents with the VAE its targets "
                    "came from. Writes OUT/images/*.png and OUT/index.json; re-running resumes.")
    b.add_argument("--run", required=True, help="low-level run directory (or a low-level ridge run: model.ridge.target=lowlevel)")
    b.add_argument("--weights", default=None, help="VAE weights (default: the run's targets.lowlevel_weights)")
    b.add_argument("--limit", type=int, default=None, help="only the first N test images")
    b.add_argument("--bottleneck", type=int, default=None, metavar="K",
                   help="BrainBits-style: keep the predicted latents to their top-K principal components, fitted "
                        "on every test sample, first (docs/evaluation.md)")
    b.add_argument("--batch-size", type=int, default=32, help="test samples per forward pass (default 32)")
    b.add_argument("--subject", default=None, metavar="ID", help="subject id; a low-level run has one subject, "
                   "so this only checks it")
    add_data(b, help="subject store (default: the run's)")
    add_device(b)
    add_out(b, help="output directory")
    add_progress(b)
    b.set_defaults(func=run_blurry)


def run(args: argparse.Namespace) -> int:
    import torch

    from mindeye.devices import resolve_device
    from mindeye.inference.reconstruct import reconstruct_run

    check_bottleneck(args.bottleneck)
    settings = settings_from_args(args)
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    index = reconstruct_run(args.run, args.out, args.generator, settings, lowlevel=args.lowlevel,
                            weights=args.weights, judge_weights=args.clip_weights, store=args.data,
                            device=resolve_device(args.device), dtype=dtype, limit=args.limit,
                            progress=not args.no_progress, subject=args.subject,
                            caption_weights=args.caption_weights, caption_converter=args.caption_converter,
                            bottleneck=args.bottleneck)
    generator = index.get("config", {}).get("generator", args.generator)
    print(json.dumps({"out": str(args.out), "images": len(index["images"]), "generator": generator}))
    return 0


def add_generator_options(p: argparse.ArgumentParser) -> None:
    """The generator and its settings: `mindeye reconstruct` and `mindeye evaluate bottleneck-recon` share them."""
    p.add_argument("--generator", default=None, choices=GENERATOR_NAMES,
                   help="image generator (default: the one conditioned on the run's target space: "
                        "versatile-diffusion for 257x768 CLIP ViT-L/14 hidden targets, sd-image-variations for "
                        "1x768 final embeddings, demo-latent-diffusion for the demo's stand-in targets)")
    p.add_argument("--weights", default=None, help="generator weights: HF id or local pipeline directory")
    p.add_argument("--clip-weights", default=None, help="weights of the best-of-N CLIP judge (HF id or path)")
    p.add_argument("--samples", type=int, default=None,
                   help="prior samples / images per brain sample (default 16; unclip-sdxl: 1, as MindEye2)")
    p.add_argument("--steps", type=int, default=None, help="generator steps (default 20 UniPC; unclip-sdxl: 38 Euler)")
    p.add_argument("--guidance", type=float, default=None,
                   help="generator classifier-free guidance scale; not the prior's (default 3.5; unclip-sdxl: 5)")
    p.add_argument("--img2img-strength", type=float, default=None,
                   help="0 = pure noise, 1 = the blurry image only, 0.15 = skip the first 15%% (paper; the default; "
                        "unclip-sdxl: 0)")
    p.add_argument("--prior-steps", type=int, default=None,
                   help="prior sampling steps (default: the run's; unclip-sdxl: 20, as MindEye2)")
    p.add_argument("--prior-guidance", type=float, default=None,
                   help="prior classifier-free guidance (default: the run's model.prior.guidance; paper 1.0 = none)")
    p.add_argument("--init-encoding", choices=["reference", "vae"], default="reference",
                   help="img2img start latent of the blurry image: 'reference' = CLIP mean/std normalised, "
                        "posterior sample (the authors'), 'vae' = [-1, 1], posterior mode (default: reference)")
    p.add_argument("--final-sigmas", choices=["sigma_min", "zero"], default=None,
                   help="where UniPC's last step ends: 'sigma_min' = t = 0 (the authors' diffusers 0.13; the default "
                        "for versatile-diffusion and sd-image-variations), 'zero' = sigma 0 (diffusers' default now)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prior and generator noise (default 0)")
    p.add_argument("--batch-brains", type=int, default=1, help="brain samples per generator batch")


def settings_from_args(args: argparse.Namespace) -> Any:
    """ReconstructSettings from the generator options (add_generator_options); fills ``args.generator`` with the
    generator conditioned on the run's target space when it is None."""
    from mindeye.inference.generators import generator_for
    from mindeye.inference.reconstruct import ReconstructSettings
    from mindeye.runs import read_run

    cfg, _ = read_run(args.run)
    if args.generator is None:  # the generator conditioned on the run's target space (None: reconstruct_run explains)
        args.generator = generator_for(cfg.targets.encoder, (cfg.model.backbone.tokens, cfg.model.backbone.dim))
    d = generator_defaults(args)
    return ReconstructSettings(
        samples=d["samples"], steps=d["steps"], guidance=d["guidance"], img2img_strength=d["img2img_strength"],
        prior_steps=d["prior_steps"],
        prior_guidance=cfg.model.prior.guidance if args.prior_guidance is None else args.prior_guidance,
        init_encoding=args.init_encoding, final_sigmas=args.final_sigmas, seed=args.seed,
        batch_brains=args.batch_brains, save_all=getattr(args, "save_all", False))


def check_bottleneck(k: int | None) -> None:
    from mindeye.errors import MindEyeError

    if k is not None and k < 1:
        raise MindEyeError(f"--bottleneck must be at least 1 (principal components kept), got {k}")


BASE_DEFAULTS = {"samples": 16, "steps": 20, "guidance": 3.5, "img2img_strength": 0.15, "prior_steps": None}


def generator_defaults(args: argparse.Namespace) -> dict:
    """The settings flags as given, else the generator's own defaults (GeneratorSpec.defaults), else VD's."""
    from mindeye.inference.generators import generator_spec

    own = {**BASE_DEFAULTS, **(generator_spec(args.generator).defaults if args.generator else {})}
    return {k: own[k] if getattr(args, k) is None else getattr(args, k) for k in BASE_DEFAULTS}


def run_blurry(args: argparse.Namespace) -> int:
    from mindeye.devices import resolve_device
    from mindeye.inference.blurry import reconstruct_blurry

    check_bottleneck(args.bottleneck)
    index = reconstruct_blurry(args.run, args.out, store=args.data, weights=args.weights,
                               device=resolve_device(args.device), limit=args.limit, batch_size=args.batch_size,
                               progress=not args.no_progress, subject=args.subject, bottleneck=args.bottleneck)
    print(json.dumps({"out": str(args.out), "images": len(index["images"])}))
    return 0
