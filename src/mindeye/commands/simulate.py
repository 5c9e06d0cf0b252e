"""`mindeye simulate`: generate the simulated subject (mindeye's embedded default dataset) or a cohort."""

from __future__ import annotations

import argparse

from mindeye.commands.options import add_out, add_progress
from mindeye.data.scales import MAX_COHORT, SCALES


def add_parser(sub: argparse._SubParsersAction) -> None:
    scales = ", ".join(f"{name} ({s.n_voxels} voxels, {s.n_trials} trials, {s.image_size}px)"
                       for name, s in SCALES.items())
    p = sub.add_parser(
        "simulate", help="generate a simulated subject store (procedural scenes + synthetic brain)",
        description="Generate a simulated subject: procedurally generated scenes seen by a fixed synthetic "
                    "brain with NSD-like noise, drift, repetitions and per-session z-scoring "
                    f"(docs/simulated-subject.md). Scales: {scales}.")
    p.add_argument("--scale", choices=list(SCALES), default="small",
                   help="tiny: unit tests (seconds); small: CPU demo (default); nsd: NSD subject 1's shapes")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed -> identical store (default 0)")
    add_out(p, help="output store directory (with --cohort: the cohort directory; must not exist unless "
                    "--overwrite)")
    p.add_argument("--cohort", type=int, default=None, metavar="N",
                   help=f"write N (1-{MAX_COHORT}) subjects to OUT/subj01 ... plus OUT/cohort.json: shared test "
                        "images, own training images, own voxel count, receptive fields, tuning, noise and drift")
    p.add_argument("--train-sessions", type=int, default=None, metavar="N",
                   help="keep training trials from the first N sessions only (few-session stores); the test "
                        "trials of every session are kept")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from mindeye.data.simulate import simulate_cohort, simulate_subject

    partial = Path(args.out).with_name(Path(args.out).name + ".partial")
    try:
        if args.cohort is not None:
            out = simulate_cohort(args.out, args.cohort, scale=args.scale, seed=args.seed, overwrite=args.overwrite,
                                  progress=not args.no_progress, train_sessions=args.train_sessions)
            print(f"wrote a cohort of {args.cohort} subject stores to {out} (cohort.json lists them)")
            return 0
        out = simulate_subject(args.out, scale=args.scale, seed=args.seed, overwrite=args.overwrite,
                               progress=not args.no_progress, train_sessions=args.train_sessions)
    except BaseException:  # a simulation cannot resume: never leave a half-written store behind
        shutil.rmtree(partial, ignore_errors=True)
        raise
    print(f"wrote subject store {out}")
    return 0
