"""`mindeye prepare {arrays,nifti,nsd,webdataset}`: turn a dataset into a subject store."""

from __future__ import annotations

import argparse

from mindeye.commands.options import add_out, add_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="prepare a dataset (your arrays, raw NSD, MindEye shards) as a subject store",
                       description="Prepare a dataset into mindeye's subject-store format (docs/subject-store.md).")
    psub = p.add_subparsers(dest="source", metavar="SOURCE", required=True)
    a = psub.add_parser(
        "arrays", help="any fMRI dataset given as voxel rows + images + a trial table",
        description="Prepare any dataset (BOLD5000, THINGS-fMRI, NOD, your lab's) from per-trial voxel rows, "
                    "images and a trial-table CSV with columns image_id, session, split[, repetition].")
    a.add_argument("--voxels", required=True, help="(n_trials, n_voxels) float array: .npy or .h5/.hdf5")
    a.add_argument("--voxels-key", default=None, help="dataset name inside an HDF5 voxel file")
    a.add_argument("--images", required=True,
                   help="(n_images, H, W, 3) uint8 .npy (row k = image id k) or a directory of <image_id>.png/.jpg")
    a.add_argument("--trials", required=True, help="CSV: image_id, session, split (train/val/test)[, repetition]")
    add_out(a, help="output store directory (must not exist)")
    a.add_argument("--zscore", action="store_true", help="z-score every voxel within each session")
    a.add_argument("--image-size", type=int, default=256, help="square size images are stored at (default 256)")
    a.add_argument("--voxel-dtype", choices=["float16", "float32"], default="float16")
    a.add_argument("--subject", default="1", help="subject label recorded in the metadata; also the subject's id when it joins a "
                        "cohort (letters, digits, '-', '_'; default 1)")
    a.add_argument("--source-name", default="arrays", help="dataset name recorded in the metadata")
    a.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    add_progress(a)
    a.set_defaults(func=run_arrays)
    add_split_parser(psub)
    from mindeye.commands.prepare_nifti import add_nifti_parser

    add_nifti_parser(psub)
    try:
        from mindeye.commands.prepare_nsd import add_prepare_parsers
    except ModuleNotFoundError as exc:
        if exc.name == "mindeye.commands.prepare_nsd":
            return  # not part of this build
        raise  # a real missing dependency must not silently hide `prepare nsd`
    add_prepare_parsers(psub)


def run_arrays(args: argparse.Namespace) -> int:
    from mindeye.data.arrays import prepare_arrays

    out = prepare_arrays(args.voxels, args.images, args.trials, args.out, voxels_key=args.voxels_key,
                         zscore=args.zscore, image_size=args.image_size, voxel_dtype=args.voxel_dtype,
                         source=args.source_name, subject=args.subject, overwrite=args.overwrite,
                         progress=not args.no_progress)
    print(f"wrote subject store {out}")
    return 0


def add_split_parser(psub: argparse._SubParsersAction) -> None:
    s = psub.add_parser(
        "split", help="other splits of a store as a VIEW (no voxels copied): --disjoint holds whole categories out",
        description="Write a store view (a small directory that reads its parent store's voxels, images and "
                    "targets; docs/subject-store.md#store-views) with a category-disjoint split: images are grouped "
                    "by category (a simulated store's main-object category) or by k-means on their target "
                    "embeddings, and whole clusters are held out of training as out-of-distribution test images "
                    "(Shirakawa et al. 2024). Train and evaluate on the view path as on a store; evaluation reports "
                    "in- vs out-of-distribution retrieval side by side (docs/evaluation.md).")
    s.add_argument("--store", required=True, metavar="STORE", help="the subject store to split")
    add_out(s, help="output view directory (must not exist)")
    s.add_argument("--disjoint", action="store_true", required=True,
                   help="hold whole clusters (categories) out of training (the only kind of split today)")
    s.add_argument("--by", choices=["auto", "category", "kmeans"], default="auto",
                   help="cluster by the store's category labels (simulated stores) or by k-means on the target "
                        "embeddings of --encoder (default: auto: k-means when --encoder is given, else category "
                        "labels where the store has them)")
    s.add_argument("--encoder", default=None, help="target encoder whose cached embeddings --by kmeans clusters "
                   "(run `mindeye embed` for it first; e.g. clip-vit-l14-hidden, standin-clip-hidden)")
    s.add_argument("--weights", default=None, help="weights the --encoder targets were computed with (as for embed)")
    s.add_argument("--clusters", type=int, default=20, help="number of k-means clusters (default 20)")
    s.add_argument("--holdout", type=float, default=0.25,
                   help="fraction of the clusters held out of training (default 0.25)")
    s.add_argument("--hold-out", dest="hold_out", action="append", default=None, metavar="CLUSTER",
                   help="hold out this cluster (a category name, or a k-means cluster number); repeatable; "
                        "overrides --holdout")
    s.add_argument("--seed", type=int, default=0, help="seed of k-means and of the held-out clusters (default 0)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    s.set_defaults(func=run_split)


def run_split(args: argparse.Namespace) -> int:
    from mindeye.data.store import SubjectStore
    from mindeye.data.views import kmeans, scene_categories, write_disjoint_view
    from mindeye.errors import MindEyeError

    store = SubjectStore(args.store)
    labels, method = None, args.by
    if args.by == "category" or (args.by == "auto" and not args.encoder):
        labels = scene_categories(store)
        method = "category"
        if labels is None and args.by == "category":
            raise MindEyeError(f"{args.store} has no category labels (only simulated stores do); use --by kmeans "
                               "--encoder NAME")
    if labels is None:
        if not args.encoder:
            raise MindEyeError(f"{args.store} has no category labels, so the split clusters target embeddings: "
                               "pass --encoder NAME (targets cached by `mindeye embed`), e.g. --encoder "
                               "clip-vit-l14-hidden")
        from mindeye.encoders.cache import load_targets

        feats = load_targets(args.store, args.encoder, args.weights)
        labels = kmeans(feats, args.clusters, seed=args.seed).astype(str)
        method = f"k-means ({args.clusters} clusters) on {args.encoder} targets"
    out, view = write_disjoint_view(args.store, args.out, labels, method=method, holdout=args.holdout,
                                    seed=args.seed, held_out=args.hold_out, overwrite=args.overwrite)
    print(f"wrote store view {out}: {view['description']}")
    print(f"  held out of training: {', '.join(view['held_out_clusters'])}")
    return 0
