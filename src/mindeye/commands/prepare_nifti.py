"""`mindeye prepare nifti`: NIfTI betas + a brain mask + BIDS-like events tables -> a subject store.

A sub-subcommand of `mindeye prepare` (:func:`add_nifti_parser` is called by mindeye.commands.prepare);
the work is in mindeye.data.nifti, imported when the command runs.
"""

from __future__ import annotations

import argparse

from mindeye.commands.options import add_out, add_progress


def add_nifti_parser(psub: argparse._SubParsersAction) -> None:
    p = psub.add_parser(
        "nifti", help="NIfTI betas (GLMsingle, GLMdenoise, BIDS derivatives) + a brain mask + events tables",
        description="Prepare a subject from single-trial beta maps in NIfTI: the mask's voxels are read with "
                    "nilearn's NiftiMasker (pip install 'mindeye[nifti]') and the mask is kept in the store, so "
                    "per-voxel results map back to brain images. Events format: docs/adding-a-dataset.md.")
    p.add_argument("--betas", required=True, nargs="+", metavar="BETAS",
                   help="NIfTI betas: one 4D file per session (a volume per trial) or 3D files (a trial each), "
                        "in order")
    p.add_argument("--mask", required=True, help="3D binary NIfTI mask on the betas' grid (the voxels kept)")
    p.add_argument("--events", required=True, nargs="+", metavar="EVENTS",
                   help="tab-separated events: one row per beta volume with an 'image' (or 'stim_file' / "
                        "'trial_type') column; one table for all betas or one per betas file")
    p.add_argument("--images", required=True, help="directory of the stimuli, <image_id>.png/.jpg")
    add_out(p, help="output store directory (must not exist)")
    p.add_argument("--zscore", action="store_true", help="z-score every voxel within each session")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="without a 'split' column: this seeded fraction of the unique images is the test split "
                        "(default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --test-fraction draw (default 0)")
    p.add_argument("--image-size", type=int, default=256, help="square size images are stored at (default 256)")
    p.add_argument("--voxel-dtype", choices=["float16", "float32"], default="float16",
                   help="storage type of the voxels (default float16)")
    p.add_argument("--subject", default="1", help="subject label recorded in the metadata and its id in a cohort "
                   "(letters, digits, '-', '_'; default 1)")
    p.add_argument("--source-name", default="nifti", help="dataset name recorded in the metadata (default nifti)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    add_progress(p)
    p.set_defaults(func=run_nifti)


def run_nifti(args: argparse.Namespace) -> int:
    from mindeye.data.nifti import prepare_nifti

    out = prepare_nifti(args.betas, args.mask, args.events, args.images, args.out, zscore=args.zscore,
                        test_fraction=args.test_fraction, seed=args.seed, image_size=args.image_size,
                        voxel_dtype=args.voxel_dtype, source=args.source_name, subject=args.subject,
                        overwrite=args.overwrite, progress=not args.no_progress)
    print(f"wrote subject store {out} (brain mask kept as {out}/mask.nii.gz)")
    return 0
