"""`mindeye ceiling {blurry,recon}`: the image makers fed the true images' own targets (the metrics' ceilings)."""

from __future__ import annotations

import argparse
import json

from mindeye.commands.options import add_data, add_device, add_out, add_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ceiling", help="ceiling images: blurry / reconstructions from the true images' own targets",
                       description="Make the ceiling of a metric table: the same decoder or generator fed the true "
                                   "image's own targets instead of the brain's predictions. Score it with `mindeye "
                                   "evaluate recon --floors --ceiling DIR`. See docs/evaluation.md.")
    csub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    b = csub.add_parser("blurry", help="the true image's own VAE latent decoded (the blurry path's ceiling)")
    b.add_argument("--run", required=True, help="low-level run (or low-level ridge run) whose decoder to use")
    b.add_argument("--limit", type=int, default=None, help="only the first N test images (as its blurry images)")
    add_data(b, help="subject store (default: the run's)")
    add_device(b)
    add_out(b, help="output directory")
    add_progress(b)
    b.set_defaults(func=run_blurry)
    r = csub.add_parser("recon", help="the generator conditioned on the true image's own embedding")
    r.add_argument("--recons", required=True, metavar="DIR", help="a `mindeye reconstruct` output directory: its "
                   "images, generator, settings and seeds are reused")
    r.add_argument("--blurry", default=None, metavar="DIR",
                   help="img2img start images: a `mindeye ceiling blurry` directory (needed when --recons used img2img)")
    r.add_argument("--weights", default=None, help="generator weights (default: those of --recons)")
    r.add_argument("--samples", type=int, default=None, help="best-of-N (default: that of --recons)")
    r.add_argument("--batch-brains", type=int, default=10, help="images per generator batch (default 10)")
    add_data(r, help="subject store (default: the one of --recons)")
    add_device(r)
    add_out(r, help="output directory")
    add_progress(r)
    r.set_defaults(func=run_recon)


def run_blurry(args: argparse.Namespace) -> int:
    from mindeye.devices import resolve_device
    from mindeye.inference.ceilings import ceiling_blurry

    index = ceiling_blurry(args.run, args.out, store=args.data, device=resolve_device(args.device), limit=args.limit,
                           progress=not args.no_progress)
    print(json.dumps({"out": str(args.out), "images": len(index["images"])}))
    return 0


def run_recon(args: argparse.Namespace) -> int:
    from mindeye.devices import resolve_device
    from mindeye.errors import MindEyeError
    from mindeye.inference.ceilings import ceiling_reconstruct

    if args.samples is not None and args.samples < 1:
        raise MindEyeError("--samples must be at least 1")
    index = ceiling_reconstruct(args.recons, args.out, blurry_ceiling=args.blurry, store=args.data,
                                device=resolve_device(args.device), weights=args.weights, samples=args.samples,
                                batch_brains=args.batch_brains, progress=not args.no_progress)
    print(json.dumps({"out": str(args.out), "images": len(index["images"])}))
    return 0
