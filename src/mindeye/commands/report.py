"""`mindeye report`: one self-contained HTML page (metrics table, curves, image grids, UMAP)."""

from __future__ import annotations

import argparse

from mindeye.commands.options import add_data, add_device, add_out, add_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="write a self-contained HTML report (metrics, training curves, images, UMAP) plus its "
                       "figures (PNG, PDF) and tables (Markdown, CSV, LaTeX)",
        description="One HTML page with everything embedded (no external resources): the paper-Table-1 metrics "
                    "table, training curves, ground truth / blurry / reconstructed / retrieved test images and a "
                    "UMAP of the embedding spaces (paper Figure 9). See docs/evaluation.md.")
    p.add_argument("--run", required=True, help="high-level (mindeye) run directory")
    p.add_argument("--lowlevel", default=None, help="low-level run directory (training curves)")
    p.add_argument("--ridge", default=None, help="ridge baseline run directory (retrieval row, curves)")
    p.add_argument("--recons", default=None, help="`mindeye reconstruct` output directory")
    p.add_argument("--blurry", default=None,
                   help="`mindeye reconstruct-blurry` output directory (default: RECONS/blurry if present)")
    p.add_argument("--retrieved", default=None, help="directory of retrieved images in the recon index format")
    p.add_argument("--metrics", nargs="+", action="extend", default=[], metavar="JSON",
                   help="metrics JSON(s) written by `mindeye evaluate recon`")
    p.add_argument("--sessions", default=None, metavar="JSON",
                   help="accuracy vs training sessions points for a figure: a JSON list of {\"sessions\": N, "
                        "\"method\": name, <Table-1 key>: value, <key>_std: spread} (docs/evaluation.md)")
    p.add_argument("--bottleneck", nargs="+", action="extend", default=[], metavar="JSON",
                   help="reconstruction bottleneck curve(s): `evaluate bottleneck-recon` OUT (or OUT/curve.json) or "
                        "`evaluate bottleneck-blurry` JSON, drawn as a figure")
    add_data(p, help="subject store (default: the run's)")
    p.add_argument("--images", type=int, default=12, help="test images in the image grid")
    p.add_argument("--umap-samples", type=int, default=100,
                   help="test images in the UMAP (each adds a prior sample; keep it small on a CPU)")
    p.add_argument("--no-umap", action="store_true", help="skip the UMAP (and the prior sampling it needs)")
    add_device(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the prior samples and the UMAP")
    p.add_argument("--title", default=None)
    add_out(p, help="HTML file to write (default: RUN/report.html)", required=False, kind="file")
    add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mindeye.devices import resolve_device
    from mindeye.errors import MindEyeError
    from mindeye.evaluation.report import build_report

    if args.umap_samples < 2 and not args.no_umap:
        raise MindEyeError("--umap-samples must be at least 2 (or pass --no-umap)")
    out = build_report(args.run, lowlevel=args.lowlevel, ridge=args.ridge, recons=args.recons, blurry=args.blurry,
                       metrics=args.metrics, out=args.out, retrieved=args.retrieved, store=args.data,
                       umap=not args.no_umap, n_images=args.images, embed_samples=args.umap_samples,
                       device=resolve_device(args.device), seed=args.seed, title=args.title,
                       sessions=args.sessions, bottlenecks=args.bottleneck)
    print(f"report: {out}")
    return 0
