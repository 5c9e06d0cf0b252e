"""`mindeye simulate`: generate the simulated subject (mindeye's embedded default dataset)."""

from __future__ import annotations

import argparse

from mindeye.data.simulate import SCALES, simulate_subject


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
    p.add_argument("--out", required=True, help="output store directory (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    partial = Path(args.out).with_name(Path(args.out).name + ".partial")
    try:
        out = simulate_subject(args.out, scale=args.scale, seed=args.seed, overwrite=args.overwrite,
                               progress=not args.quiet)
    except BaseException:  # a simulation cannot resume: never leave a half-written store behind
        shutil.rmtree(partial, ignore_errors=True)
        raise
    print(f"wrote subject store {out}")
    return 0
