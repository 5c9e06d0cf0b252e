"""`mindeye retrieve`: nearest images in a database for each test brain sample (paper 3.1, LAION retrieval)."""

from __future__ import annotations

import argparse

from mindeye.commands.options import add_data, add_device, add_out, add_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "retrieve",
        help="k nearest database images of each test brain embedding, re-ranked; writes PNGs + index.json",
        description="For every test image of the run's store (repetitions averaged): search the index built by "
                    "`mindeye index build` with the run's brain embedding, re-rank the k candidates by cosine "
                    "similarity to the brain embedding and write the best as OUT/images/IIIII.png, with "
                    "OUT/index.json (scored by `mindeye evaluate recon --recons OUT`) and OUT/retrievals.json. "
                    "Missing index, images or weights are errors; no placeholder image is ever written.",
    )
    p.add_argument("--run", required=True, metavar="RUN", help="high-level run directory (mindeye or ridge)")
    p.add_argument("--index", required=True, metavar="INDEX", help="index directory from `mindeye index build`")
    add_out(p, help="output directory", metavar="DIR")
    p.add_argument("-k", type=int, default=16, help="candidates per brain sample (default 16, as the paper)")
    p.add_argument("--subject", default=None, metavar="ID", help="subject of a shared-subject run (required when it has several; RUN/run.json lists them)")
    add_data(p, help="subject store (default: the run's)")
    add_device(p)
    p.add_argument("--weights", default=None,
                   help="weights of the run's target encoder, when candidates must be re-encoded (default: the run's)")
    p.add_argument("--query", default="auto", choices=("auto", "projector", "cls"),
                   help="projector: the flattened brain embedding; cls: its first token (a hidden-token run "
                        "querying a final-embedding index); auto (default): whichever matches the index")
    p.add_argument("--save-all", action="store_true", help="also write all k candidates as PNGs")
    p.add_argument("--limit", type=int, default=None, help="only the first N test samples")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists searched (default: the index's)")
    p.add_argument("--refine", type=int, default=4,
                   help="IVF-PQ indexes: fetch REFINE x k neighbours and re-score them exactly with the stored "
                        "embeddings (default 4; 1: off)")
    p.add_argument("--size", type=int, default=None, help="side of the written PNGs (default: the store's images)")
    p.add_argument("--images-root", default=None,
                   help="where a directory/store collection lives now, if it moved since the index was built")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mindeye.inference.retrieve import retrieve

    index = retrieve(args.run, args.index, args.out, k=args.k, store=args.data, subject=args.subject, device=args.device,
                     weights=args.weights, query=args.query, save_all=args.save_all, limit=args.limit,
                     nprobe=args.nprobe, refine=args.refine, size=args.size, images_root=args.images_root, overwrite=args.overwrite,
                     progress=not args.no_progress)
    recs = list(index["images"].values())
    cfg = index["config"]
    print(f"{len(recs)} test samples -> {args.out} (k={cfg['k']}, query {cfg['query']}, re-rank {cfg['rerank']})")
    src = cfg["index_source"]
    if src["type"] == "store" and src["root"] == cfg["store"]:  # the bank holds the test images themselves
        hits = sum(r["chosen_id"] == r["image_index"] for r in recs)
        in_k = sum(r["image_index"] in r["candidates"] for r in recs)
        print(f"the index holds this store's images: the chosen image is the seen one for {hits}/{len(recs)} "
              f"samples; it is among the {cfg['k']} candidates for {in_k}/{len(recs)}")
    return 0
