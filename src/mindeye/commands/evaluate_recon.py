"""`mindeye evaluate recon`: the eight reconstruction metrics of paper Table 1 for reconstruction directories."""

from __future__ import annotations

import argparse
import json

from mindeye.commands.options import add_data, add_device, add_out, add_progress


def add_recon_parser(esub: argparse._SubParsersAction) -> None:
    p = esub.add_parser(
        "recon", help="reconstruction metrics (PixCorr, SSIM, AlexNet, Inception, CLIP, EfficientNet, SwAV)",
        description="Pair every PNG of a `mindeye reconstruct` (or `reconstruct-blurry`) output directory with "
                    "its ground-truth image from the subject store and compute the metrics of paper Table 1. "
                    "Metrics whose network weights are missing are reported as unavailable with the reason. "
                    "Writes --out (JSON) and a Markdown table next to it (.md). See docs/evaluation.md.")
    p.add_argument("--recons", action="append", required=True, metavar="DIR",
                   help="reconstruction directory (repeatable: one table row each, plus the mean)")
    p.add_argument("--name", action="append", default=[], metavar="NAME",
                   help="row name for each --recons, in the same order (default: the directory name)")
    add_data(p, help="subject store (default: the one named in the recon index)")
    p.add_argument("--weights-dir", default=None,
                   help="folder with the metric networks' checkpoints (torchvision files, SwAV, CLIP folder)")
    p.add_argument("--clip", default=None, help="CLIP ViT-L/14 for the CLIP metric: HF id or local folder")
    p.add_argument("--metrics", default=None, metavar="LIST",
                   help="comma-separated subset, e.g. pixcorr,ssim,clip (default: all eight)")
    p.add_argument("--pixel-only", action="store_true",
                   help="compute only PixCorr and SSIM (no network weights needed; the others are listed "
                        "as unavailable)")
    p.add_argument("--offline-net", action="store_true",
                   help="also score with the offline substitute network (EfficientNet-Lite0, extra mindeye[offline]): "
                        "its own 2-way / distance columns, never the paper's (docs/evaluation.md)")
    p.add_argument("--retrieval", default=None, metavar="JSON",
                   help="retrieval results (RUN/eval/retrieval.json or `evaluate retrieval --out`) for the "
                        "table's retrieval columns")
    p.add_argument("--floors", action="store_true",
                   help="also each row's floors: chance (a derangement of the true images; two-way 0.5), the mean "
                        "training image, the shuffled brain (--floor-seeds derangements of the reconstructions) and, "
                        "with --ceiling, the fraction floor -> ceiling (docs/evaluation.md)")
    p.add_argument("--floor-seeds", type=int, default=3, metavar="N", help="shuffled-brain seeds (default 3)")
    p.add_argument("--ceiling", action="append", default=[], metavar="DIR",
                   help="per --recons, in the same order: its ceiling directory (`mindeye ceiling blurry|recon`), "
                        "or 'none'")
    add_device(p)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--title", default=None, help="title of the Markdown table")
    add_out(p, help="metrics JSON to write (the .md table goes next to it)", kind="file")
    p.add_argument("--first-resize", choices=["reference", "antialias"], default="reference",
                   help="the protocol's resize to 256: 'reference' = bilinear without antialiasing (the authors' "
                        "torchvision 0.15 on tensors), 'antialias' = antialiased (default: reference)")
    p.add_argument("--net-resize", choices=["reference", "antialias"], default="reference",
                   help="the metric networks' own downscales (CLIP and SwAV 256->224, EfficientNet 256->255): "
                        "'reference' = without antialiasing (the authors' torchvision 0.15), 'antialias' = "
                        "antialiased (default: reference)")
    p.add_argument("--blend-blurry", default=None, metavar="DIR",
                   help="score every reconstruction as (1 - w) x recon + w x this blurry directory's image, both at "
                        "256 px: MindEye2's 'enhanced' evaluation (final_evaluations.ipynb, w = 0.25)")
    p.add_argument("--blend-weight", type=float, default=0.25, help="w of --blend-blurry (default 0.25, theirs)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                   help="on a category-disjoint store view: bootstrap resamples for the CI of each metric's "
                        "in- vs out-of-distribution gap (default 1000)")
    add_progress(p)
    p.set_defaults(func=run_recon)


def run_recon(args: argparse.Namespace) -> int:
    from mindeye.devices import resolve_device
    from mindeye.errors import MindEyeError
    from mindeye.evaluation.metrics import METRICS
    from mindeye.evaluation.recon_eval import evaluate_recon_dirs, write_metrics

    metrics = list(METRICS)
    if args.metrics:
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        unknown = sorted(set(metrics) - set(METRICS))
        if unknown:
            raise MindEyeError(f"unknown metric(s) {unknown} in --metrics; choose from {', '.join(METRICS)}")
    if args.floor_seeds < 1:
        raise MindEyeError("--floor-seeds must be at least 1")
    ceilings = [None if c.lower() == "none" else c for c in args.ceiling] or None
    if args.batch_size < 1:
        raise MindEyeError("--batch-size must be at least 1")
    if args.bootstrap < 0:
        raise MindEyeError("--bootstrap must be 0 (no CI) or more resamples")
    result = evaluate_recon_dirs(
        args.recons, names=args.name or None, store=args.data, weights_dir=args.weights_dir, clip=args.clip,
        device=resolve_device(args.device), metrics=metrics, pixel_only=args.pixel_only,
        retrieval=args.retrieval, batch_size=args.batch_size, progress=not args.no_progress,
        first_resize=args.first_resize, offline_net=args.offline_net, net_resize=args.net_resize,
        blend_blurry=args.blend_blurry, blend_weight=args.blend_weight,
        floors=args.floors, ceilings=ceilings, floor_seeds=args.floor_seeds, ood_bootstrap=args.bootstrap)
    json_path, md_path = write_metrics(result, args.out, title=args.title)
    print(md_path.read_text())
    print(json.dumps({"metrics": str(json_path), "table": str(md_path),
                      "rows": [r["name"] for r in result["rows"]]}))
    return 0
