"""`mindeye index build`: a FAISS index of an image collection's CLIP embeddings (paper 3.1, LAION retrieval)."""

from __future__ import annotations

import argparse

from mindeye.commands.options import add_device, add_out, add_progress
from mindeye.encoders.registry import ENCODERS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build a FAISS index of an image collection for `mindeye retrieve`",
                       description="Image databases for retrieval (paper section 3.1, LAION-5B retrieval).")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    b = isub.add_parser(
        "build",
        help="embed a collection of images and write a FAISS index with its id -> image map",
        description="Embed every image of --images with a frozen encoder (unit-norm, float16) and write INDEX/ "
                    "(index.faiss, ids.csv, embeddings.npy, manifest.json). --images is a directory of "
                    "png/jpg/jpeg/webp files (recursive), webdataset .tar shards (files, globs or brace patterns "
                    "like 'shards/{000..099}.tar', or a directory of them), or a subject store (its images.npy). "
                    "The build happens in INDEX.partial/ and resumes there if interrupted.",
    )
    b.add_argument("--images", required=True, nargs="+", metavar="SRC", help="image directory, .tar shard(s) or store")
    b.add_argument("--encoder", required=True, choices=list(ENCODERS), metavar="NAME",
                   help="encoder registry name, e.g. clip-vit-l14-final (paper) or standin-clip-final (simulated)")
    add_out(b, help="index directory to create", metavar="INDEX")
    b.add_argument("--weights", default=None, help="encoder weights (HF id in the local cache, directory or file)")
    add_device(b)
    b.add_argument("--index-type", default="auto", choices=("auto", "flat", "ivfpq"),
                   help="flat: exact search; ivfpq: approximate, for millions of images; auto (default): flat "
                        "below 100k images")
    b.add_argument("--nlist", type=int, default=None, help="IVF lists (default ~4 sqrt(n))")
    b.add_argument("--pq-m", type=int, default=None, help="PQ sub-quantisers, must divide the dimension (default d/4)")
    b.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    b.add_argument("--chunk-size", type=int, default=4096, help="images per resumable chunk (default 4096)")
    b.add_argument("--image-size", type=int, default=None,
                   help="side of the centre square directory/shard images are resized to before encoding "
                        "(default: the encoder's input size)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing index")
    add_progress(b)
    b.add_argument("--random-init", action="store_true", help="FOR TESTS AND BENCHMARKS ONLY: random encoder weights")
    b.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    from mindeye.devices import resolve_device
    from mindeye.inference.index import DatabaseIndex, build_index

    images = args.images[0] if len(args.images) == 1 else args.images
    out = build_index(images, args.encoder, args.out, weights=args.weights, device=resolve_device(args.device),
                      index_type=args.index_type, batch_size=args.batch_size, chunk_size=args.chunk_size,
                      image_size=args.image_size, nlist=args.nlist, pq_m=args.pq_m, overwrite=args.overwrite,
                      progress=not args.no_progress, random_init=args.random_init)
    m = DatabaseIndex.open(out).manifest
    idx = m["index"]
    extra = f", nlist {idx['nlist']}, PQ {idx['m']}x{idx['nbits']} bits, nprobe {idx['nprobe']}" \
        if idx["type"] == "ivfpq" else ""
    print(f"{m['count']} images ({m['source']['type']}) -> {out}: {m['dim']}-d {m['encoder']} embeddings, "
          f"{idx['type']} index{extra}")
    return 0
