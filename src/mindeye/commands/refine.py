"""`mindeye refine`: MindEye2's SDXL img2img refinement of `mindeye reconstruct` output ("enhanced" reconstructions)."""

from __future__ import annotations

import argparse
import json

from mindeye.commands.options import add_device, add_out, add_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "refine", help="refine reconstructions with SDXL img2img and a caption (MindEye2's enhanced recons)",
        description="For every image of a `mindeye reconstruct` directory (e.g. --generator unclip-sdxl): SDXL "
                    "img2img at 768 px from the last --timepoint sigmas of a --steps grid, CFG --guidance, the "
                    "image's caption as prompt and MindEye2's negative prompt (src/enhanced_recon_inference.ipynb). "
                    "Writes OUT/images/*.png and OUT/index.json in the same format; re-running resumes. See "
                    "docs/reproducing-mindeye2.md.")
    p.add_argument("--recons", required=True, metavar="DIR", help="reconstruction directory to refine")
    p.add_argument("--refiner-weights", default=None,
                   help="SDXL base pipeline directory (diffusers layout) or HF id in the local cache "
                        "(default: stabilityai/stable-diffusion-xl-base-1.0)")
    p.add_argument("--captions", default=None, metavar="JSON",
                   help="JSON object: store image index -> caption (missing: the caption `mindeye reconstruct "
                        "--caption-weights` stored, else the empty prompt)")
    p.add_argument("--steps", type=int, default=25, help="Euler grid size (default 25, theirs)")
    p.add_argument("--timepoint", type=int, default=13,
                   help="start this many sigmas from the end of the grid (default 13 = 12 steps, theirs)")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance (default 5, theirs)")
    p.add_argument("--via-size", type=int, default=256,
                   help="resize each reconstruction to this size, then to 768, before refining (default 256: theirs "
                        "saved the unrefined reconstructions at 256; 0 = straight to 768)")
    p.add_argument("--seed", type=int, default=0, help="seed of the posterior sample and noise (default 0)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    add_device(p)
    p.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"],
                   help="UNet / text encoder precision (auto: float16 on GPU, float32 on CPU); the VAE stays float32")
    add_out(p, help="output directory")
    add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from mindeye.devices import resolve_device
    from mindeye.inference.sdxl_refiner import RefineSettings, refine_dir

    settings = RefineSettings(steps=args.steps, timepoint=args.timepoint, guidance=args.guidance)
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    index = refine_dir(args.recons, args.out, weights=args.refiner_weights, captions=args.captions,
                       settings=settings, seed=args.seed, device=resolve_device(args.device), dtype=dtype,
                       limit=args.limit, progress=not args.no_progress, via_size=args.via_size or None)
    print(json.dumps({"out": str(args.out), "images": len(index["images"])}))
    return 0
