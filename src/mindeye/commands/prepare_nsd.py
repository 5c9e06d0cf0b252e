"""`mindeye prepare nsd` (raw NSD release) and `mindeye prepare webdataset` (the authors' shards).

Both are sub-subcommands of `mindeye prepare`; :func:`add_prepare_parsers` is called by
mindeye.commands.prepare with its sub-parser collection.
"""

from __future__ import annotations

import argparse

from mindeye.commands.options import add_out, add_progress
from mindeye.constants import DEFAULT_BETAS


def add_prepare_parsers(psub: argparse._SubParsersAction) -> None:
    n = psub.add_parser(
        "nsd", help="the raw Natural Scenes Dataset release (betas, nsdgeneral mask, design, stimuli)",
        description="Prepare one NSD subject from the official release: nsdgeneral voxels, percent signal "
                    "change, per-session z-scoring, shared-1000 images as test. Streams one session at a time "
                    "and resumes an interrupted run. See docs/nsd.md for what to download.")
    n.add_argument("--nsd-root", required=True, help="directory holding nsddata/, nsddata_betas/, nsddata_stimuli/")
    n.add_argument("--subject", required=True, type=int, choices=range(1, 9), metavar="N", help="NSD subject 1-8")
    add_out(n, help="output store directory")
    n.add_argument("--test-set", choices=["v1", "v2"], default="v1",
                   help="test convention: v1 = MindEye v1's (shared-1000 images seen in all but the last 3 released "
                        "sessions: 1-37 for subject 1, 982 images); v2 = MindEye2's new_test (every shared-1000 image "
                        "over all released sessions, each session z-scored with its non-shared trials only)")
    n.add_argument("--sessions", default=None,
                   help="sessions to read, e.g. '1-37', '1,3,5-7' or 'all' (default: the --test-set convention's: "
                        "v1 all but the last 3 released, v2 all released)")
    n.add_argument("--train-sessions", type=int, default=None, metavar="N",
                   help="few-session training store: training trials from the first N sessions only; the test set "
                        "(shared images of every chosen session) is unchanged")
    n.add_argument("--betas", default=DEFAULT_BETAS,
                   help=f"betas version directory under func1pt8mm (default {DEFAULT_BETAS})")
    n.add_argument("--image-size", type=int, default=256, help="square size images are stored at (default 256)")
    n.add_argument("--val-fraction", type=float, default=0.0,
                   help="fraction of non-shared images put in a val split (default 0)")
    n.add_argument("--train-fraction", type=float, default=1.0,
                   help="keep this seeded fraction of training images with all their trials (paper Table 9: 0.5)")
    n.add_argument("--train-images", type=int, default=None,
                   help="keep exactly this many seeded training images instead (paper Table 9 '2-sessions': 500)")
    n.add_argument("--max-sessions", type=int, default=None, help="use only the first K of the chosen sessions")
    n.add_argument("--zscore-exclude-test", action="store_true",
                   help="compute each session's z-score statistics without the shared-1000 trials (MindEye2 "
                        "notes; always on with --test-set v2); default uses all 750 trials as MindEye v1 did")
    n.add_argument("--seed", type=int, default=0, help="seed for --val-fraction / --train-fraction (default 0)")
    n.add_argument("--voxel-dtype", choices=["float16", "float32"], default="float16")
    n.add_argument("--chunk-trials", type=int, default=50,
                   help="trials read from a betas file at a time; lower it to save memory (default 50)")
    n.add_argument("--restart", action="store_true", help="discard an interrupted OUT.partial instead of resuming")
    n.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    add_progress(n)
    n.set_defaults(func=run_nsd)

    w = psub.add_parser(
        "webdataset", help="the MindEye authors' published webdataset shards (already z-scored)",
        description="Prepare one subject from the MindEye webdataset tars (train/val/test shards with image, "
                    "nsdgeneral.npy repetitions, trial.npy, coco73k.npy). Voxels are kept as they are.")
    w.add_argument("--shards", required=True, help="directory holding the subject's .tar shards (searched recursively)")
    w.add_argument("--subject", required=True, type=int, choices=range(1, 9), metavar="N", help="NSD subject 1-8")
    add_out(w, help="output store directory (must not exist)")
    w.add_argument("--image-size", type=int, default=256, help="square size images are stored at (default 256)")
    w.add_argument("--voxel-dtype", choices=["float16", "float32"], default="float16")
    w.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    add_progress(w)
    w.set_defaults(func=run_webdataset)


def run_nsd(args: argparse.Namespace) -> int:
    from mindeye.data.nsd import prepare_nsd
    from mindeye.data.store import SubjectStore

    out = prepare_nsd(
        args.nsd_root, args.subject, args.out, sessions=args.sessions, betas=args.betas,
        image_size=args.image_size, val_fraction=args.val_fraction, train_fraction=args.train_fraction,
        train_images=args.train_images, max_sessions=args.max_sessions,
        zscore_exclude_test=args.zscore_exclude_test, test_set=args.test_set, train_sessions=args.train_sessions,
        seed=args.seed, voxel_dtype=args.voxel_dtype,
        overwrite=args.overwrite, restart=args.restart, chunk_trials=args.chunk_trials,
        progress=not args.no_progress,
    )
    print(SubjectStore(out).summary(check=False))
    return 0


def run_webdataset(args: argparse.Namespace) -> int:
    from mindeye.data.store import SubjectStore
    from mindeye.data.webdataset_shards import prepare_webdataset

    out = prepare_webdataset(args.shards, args.subject, args.out, image_size=args.image_size,
                             voxel_dtype=args.voxel_dtype, overwrite=args.overwrite,
                             progress=not args.no_progress)
    print(SubjectStore(out).summary(check=False))
    return 0
