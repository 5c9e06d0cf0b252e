"""`mindeye demo`: the main job end to end (what `make demo` runs)."""

from __future__ import annotations

import argparse

from mindeye.commands.options import add_out, add_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run the whole pipeline end to end (simulate -> ... -> report)",
        description="Simulate (or use a prepared store), embed targets, train the high-level, low-level and ridge "
                    "models, evaluate retrieval, reconstruct, compute the reconstruction metrics and write "
                    "report.html. Finished steps are skipped on a re-run, so an interrupted demo resumes.")
    add_out(p, help="output directory (store, runs, reconstructions, report)")
    p.add_argument("--config", default=None,
                   help="demo config: a shipped name or a path (default demo; demo-nsd-subj01 for real NSD on a GPU)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a demo config value, e.g. --set recon_limit=20")
    add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mindeye.demo import run_demo

    run_demo(args.out, args.config, args.overrides, progress=not args.no_progress)
    return 0
