"""`mindeye index build`: a FAISS index of an image collection's CLIP embeddings (paper 3.1, LAION retrieval)."""

from __future__ import annotations

import argparse

from mindeye.commands.options import add_device, add_out, add_progress
from mindeye.encoders.catalog import ENCODER_SUMMARIES as ENCODERS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build, attach or query a FAISS index of an image collection for `mindeye retrieve`",
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
    b.add_argument("--nlist", type=int, default=None, help="IVF lists (default 2^round(log2(4 sqrt n)))")
    b.add_argument("--pq-m", type=int, default=None,
                   help="PQ bytes per vector, must divide the dimension (default: the largest <= d/8 that fits "
                        "--max-index-memory)")
    b.add_argument("--max-index-memory", default="16G", metavar="SIZE",
                   help="budget the index type and code size are chosen by, like autofaiss (default 16G)")
    b.add_argument("--shard-size", type=int, default=1_000_000,
                   help="vectors per index shard file; shards are merged into on-disk inverted lists (default 1M)")
    b.add_argument("--nprobe", type=int, default=None,
                   help="IVF lists searched by default (default: tuned at build time for recall@16 >= 0.95)")
    b.add_argument("--engine", default="local", choices=("local", "spark"),
                   help="local (default): this process; spark: embed and fill the index in Spark tasks "
                        "(pip install 'mindeye[spark]', Java 17+)")
    b.add_argument("--spark-master", default=None, metavar="URL",
                   help="Spark master (local[4], spark://host:7077, yarn; default: the active session or local[*])")
    b.add_argument("--part-size", type=int, default=10_000, help="--engine spark: images per embedding task")
    b.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    b.add_argument("--chunk-size", type=int, default=4096, help="images per resumable chunk (default 4096)")
    b.add_argument("--image-size", type=int, default=None,
                   help="side of the centre square directory/shard images are resized to before encoding "
                        "(default: the encoder's input size)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing index")
    add_progress(b)
    b.add_argument("--random-init", action="store_true", help="FOR TESTS AND BENCHMARKS ONLY: random encoder weights")
    b.set_defaults(func=run_build)

    a = isub.add_parser(
        "attach",
        help="use an existing LAION / clip-retrieval index (FAISS file + metadata parquet) without rebuilding",
        description="Point OUT at an existing kNN index as LAION publishes them (clip-retrieval layout): "
                    "image.index (or image.index/populated.index + *.ivfdata), metadata/*.parquet with url and "
                    "caption columns (one row per vector, files in name order), optionally img_emb/*.npy. Nothing "
                    "is copied: the index is memory-mapped, metadata rows are read on demand and images are "
                    "fetched from their URLs only when asked for (`mindeye index query --fetch`, `mindeye retrieve`).",
    )
    a.add_argument("--index", required=True, metavar="PATH", help="the FAISS file, or the folder holding image.index")
    add_out(a, help="directory for the attached index's manifest", metavar="OUT")
    a.add_argument("--encoder", default="clip-vit-l14-final", choices=list(ENCODERS), metavar="NAME",
                   help="encoder whose embeddings the index holds (default clip-vit-l14-final, as LAION's)")
    a.add_argument("--metadata", nargs="+", default=None, metavar="PARQUET",
                   help="metadata folder or parquet files in id order (default: metadata/ next to the index)")
    a.add_argument("--embeddings", nargs="+", default=None, metavar="NPY",
                   help="embeddings folder or .npy files in id order, for exact refinement (default: img_emb/ "
                        "next to the index, if any)")
    a.add_argument("--url-column", default="url", help="metadata column with the image URL (default url)")
    a.add_argument("--caption-column", default="caption", help="metadata column with the caption ('' for none)")
    a.add_argument("--nprobe", type=int, default=None, help="IVF lists searched by default (default: the index's)")
    a.add_argument("--overwrite", action="store_true", help="replace an existing attached manifest")
    a.set_defaults(func=run_attach)

    q = isub.add_parser(
        "query",
        help="k nearest neighbours of query embeddings: ids, scores and urls/captions (images only with --fetch)",
        description="Search an index (built or attached) with the rows of a .npy array of embeddings, all in "
                    "one batch. Prints (or writes with --json) ids, scores and each hit's url and caption "
                    "(attached index) or image location (built index). --fetch DIR also reads/fetches the images "
                    "and writes them as PNGs with results.json; a failed fetch is an error and DIR is not written.",
    )
    q.add_argument("--index", required=True, metavar="INDEX", help="index directory (index build or index attach)")
    q.add_argument("--queries", required=True, metavar="NPY", help=".npy array (N, dim) of query embeddings")
    q.add_argument("-k", type=int, default=16, help="neighbours per query (default 16)")
    q.add_argument("--nprobe", type=int, default=None, help="IVF lists searched (default: the index's)")
    q.add_argument("--refine", type=int, default=4, help="re-score REFINE x k candidates exactly (default 4; 1: off)")
    q.add_argument("--fetch", default=None, metavar="DIR", help="also fetch the images and write them to DIR")
    q.add_argument("--json", default=None, metavar="FILE", help="write the results here instead of printing them")
    q.add_argument("--images-root", default=None, help="where a built index's collection lives now, if it moved")
    q.set_defaults(func=run_query)


def run_build(args: argparse.Namespace) -> int:
    from mindeye.devices import resolve_device
    from mindeye.inference.index import DatabaseIndex, build_index

    images = args.images[0] if len(args.images) == 1 else args.images
    common = dict(weights=args.weights, device=resolve_device(args.device), index_type=args.index_type,
                  batch_size=args.batch_size, image_size=args.image_size, nlist=args.nlist, pq_m=args.pq_m,
                  overwrite=args.overwrite, random_init=args.random_init, max_index_memory=args.max_index_memory,
                  shard_size=args.shard_size, nprobe=args.nprobe)
    if args.engine == "spark":
        from mindeye.inference.spark_build import build_index_spark

        out = build_index_spark(images, args.encoder, args.out, master=args.spark_master, part_size=args.part_size,
                                **common)
    else:
        out = build_index(images, args.encoder, args.out, chunk_size=args.chunk_size, progress=not args.no_progress,
                          **common)
    m = DatabaseIndex.open(out).manifest
    idx = m["index"]
    extra = f" {idx['key']}, nprobe {idx['nprobe']}" if idx["type"] != "flat" else ""
    if "tuned_recall" in idx:
        extra += f" (recall@16 {idx['tuned_recall']:.3f} on held-out database vectors)"
    print(f"{m['count']} images ({m['source']['type']}) -> {out}: {m['dim']}-d {m['encoder']} embeddings, "
          f"{idx['type']} index{extra}")
    return 0


def run_attach(args: argparse.Namespace) -> int:
    from mindeye.inference.attach import attach_index
    from mindeye.inference.index import DatabaseIndex

    out = attach_index(args.index, args.out, encoder=args.encoder, metadata=args.metadata,
                       embeddings=args.embeddings, url_column=args.url_column,
                       caption_column=args.caption_column or None, nprobe=args.nprobe, overwrite=args.overwrite)
    db = DatabaseIndex.open(out)
    m = db.manifest
    print(f"attached {m['count']:,} {m['dim']}-d {m['encoder']} vectors ({m['index']['type']} index "
          f"{m['faiss_file']}, memory-mapped) with {len(m['source']['files'])} metadata file(s)"
          + (" and stored embeddings" if db.has_embeddings else " (no stored embeddings: no exact refinement)")
          + f" -> {out}")
    return 0


def run_query(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from mindeye.errors import MindEyeError
    from mindeye.inference.index import DatabaseIndex
    from mindeye.utils.files import write_json_atomic
    from mindeye.utils.images import save_png

    try:
        queries = np.load(args.queries, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise MindEyeError(f"cannot read --queries {args.queries} ({exc}); give a .npy array (N, dim)") from None
    db = DatabaseIndex.open(args.index, args.images_root)
    queries = np.asarray(queries, dtype=np.float32)
    queries = queries[None] if queries.ndim == 1 else queries.reshape(len(queries), -1)
    scores, ids = db.search(queries, args.k, args.nprobe, args.refine)
    results = []
    for m in range(len(ids)):
        found = [int(i) for i in ids[m] if i >= 0]
        if hasattr(db.source, "records"):
            recs = db.source.records(found)
        else:
            recs = [{"id": i, "location": db.source.name(i)} for i in found]
        for rec, s in zip(recs, scores[m]):
            rec["score"] = float(s)
        results.append({"query": m, "results": recs})
    if args.fetch:  # only now are images read (fetched from their URLs for an attached index)
        tmp = Path(args.fetch).with_name(Path(args.fetch).name + ".partial")
        tmp.mkdir(parents=True, exist_ok=True)
        for r in results:
            pics = db.source.load([x["id"] for x in r["results"]])
            for rank, (x, pic) in enumerate(zip(r["results"], pics)):
                x["file"] = f"q{r['query']:04d}_{rank:02d}.png"
                save_png(pic, tmp / x["file"])
        write_json_atomic(tmp / "results.json", {"index": str(Path(args.index).resolve()), "results": results}, indent=1)
        from mindeye.utils.files import replace_dir

        replace_dir(tmp, Path(args.fetch))
    if args.json:
        write_json_atomic(args.json, results, indent=1)
    else:
        print(json.dumps(results, indent=1))
    return 0
