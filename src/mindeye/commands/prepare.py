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
