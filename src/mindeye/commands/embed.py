"""`mindeye embed`: compute a frozen encoder's targets for every unique image of a store, once."""

from __future__ import annotations

import argparse

from mindeye.commands.options import add_data, add_device, add_progress
from mindeye.encoders.catalog import ENCODER_SUMMARIES as ENCODERS


def add_parser(sub: argparse._SubParsersAction) -> None:
    encoders = "\n".join(f"  {name:<20} {summary}" for name, summary in ENCODERS.items())
    p = sub.add_parser(
        "embed",
        help="cache a frozen encoder's targets (CLIP, SD VAE, VICRegL, stand-ins) inside a store",
        description="Run a frozen image encoder once over every unique image of a subject store and save "
                    "its outputs (float16) in STORE/targets/<encoder>-<fingerprint>/. Training and evaluation "
                    "read targets from there only. An interrupted run resumes where it stopped; a cache made "
                    "with other weights, preprocessing or images is never used.\n\nencoders:\n" + encoders,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data(p, help="path of the subject store", required=True)
    p.add_argument("--encoder", required=True, choices=list(ENCODERS), metavar="NAME",
                   help="encoder registry name (see the list above)")
    p.add_argument("--weights", default=None,
                   help="Hugging Face id (looked up in the local cache only) or a local directory/file; "
                        "default: the encoder's public weights")
    p.add_argument("--clip-preprocess", choices=["reference", "processor"], default="reference",
                   help="CLIP encoders only: 'reference' = float tensor, bicubic, no antialias (the authors'; "
                        "targets.clip_preprocess of the paper configs), 'processor' = the HF CLIP processor "
                        "(uint8, antialiased). Default: reference")
    add_device(p)
    p.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="image side for sd-vae / vicregl-convnext (default: theirs, 512; MindEye2's blurry head: 224, "
                        "as targets.lowlevel_image_size / teacher_image_size of the mindeye2 configs)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per forward pass (default 64, or the one an interrupted run used)")
    p.add_argument("--views", type=int, default=0, metavar="K",
                   help="also cache K augmented views per image, sampled at train time (default 0)")
    p.add_argument("--overwrite", action="store_true", help="recompute even if a complete cache exists")
    add_progress(p)
    p.add_argument("--random-init", action="store_true",
                   help="FOR TESTS AND BENCHMARKS ONLY: use seeded random weights of the full-size architecture "
                        "(the targets are meaningless)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mindeye.devices import resolve_device
    from mindeye.encoders.cache import embed_store, read_manifest

    options = {"preprocess": args.clip_preprocess} if args.encoder.startswith("clip-") else {}
    if args.image_size is not None:
        if args.encoder not in ("sd-vae", "vicregl-convnext"):
            from mindeye.errors import MindEyeError

            raise MindEyeError(f"--image-size applies to sd-vae and vicregl-convnext, not {args.encoder}")
        options["image_size"] = args.image_size
    out = embed_store(
        args.data, args.encoder, weights=args.weights, device=resolve_device(args.device), batch_size=args.batch_size,
        views=args.views, random_init=args.random_init, progress=not args.no_progress, overwrite=args.overwrite,
        **options,
    )
    m = read_manifest(out) or {}
    views = f", {m['views']} augmented views" if m.get("views") else ""
    print(f"{args.encoder}: {m.get('n_images')} images -> {out} "
          f"(shape {tuple(m.get('output_shape', []))}, float16{views}, fingerprint {m.get('fingerprint', '')[:12]})")
    if args.random_init:
        print("note: --random-init targets come from random weights; use them for tests and benchmarks only")
    return 0
