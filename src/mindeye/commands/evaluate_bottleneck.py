"""`mindeye evaluate bottleneck-blurry` / `bottleneck-recon`: reconstruction metrics through a top-k PCA bottleneck."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mindeye.commands.options import add_data, add_device, add_out, add_progress


def add_bottleneck_parser(esub: argparse._SubParsersAction) -> None:
    p = esub.add_parser(
        "bottleneck-blurry", help="blurry-image PixCorr/SSIM with the predicted latents kept to their top-k PCs",
        description="BrainBits-style bottleneck curve of the blurry path: a low-level run's predicted VAE latents "
                    "of the test set projected onto their top-k principal components (fitted on these test "
                    "predictions), decoded with the run's blurry decoder and scored against the true images, "
                    "k = 1, 2, 4, ... up to their rank, beside the unprojected model. Writes --out (JSON) and a "
                    "Markdown table next to it (.md). See docs/evaluation.md.")
    p.add_argument("--run", required=True, help="low-level run (model.kind lowlevel, a low-level ridge run, or a "
                                                "mindeye2 run with a blurry head)")
    add_data(p, help="subject store (default: the one the run was trained on)")
    p.add_argument("--subject", default=None, metavar="ID", help="subject of a shared-subject run")
    p.add_argument("--ks", default=None, metavar="LIST",
                   help="comma-separated k values (default: 1, 2, 4, ... and the rank)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="score only the first N test images (the PCA is still fitted on all of them)")
    p.add_argument("--weights", default=None, help="VAE weights of the decoder (default: the run's)")
    p.add_argument("--metrics", default="pixcorr,ssim", metavar="LIST",
                   help="comma-separated metrics (default pixcorr,ssim; the network metrics need --weights-dir)")
    p.add_argument("--weights-dir", default=None, help="folder with the metric networks' checkpoints")
    p.add_argument("--clip", default=None, help="CLIP ViT-L/14 for the CLIP metric: HF id or local folder")
    add_device(p)
    p.add_argument("--batch-size", type=int, default=32)
    add_out(p, help="curve JSON to write (the .md table goes next to it)", kind="file")
    add_progress(p)
    p.set_defaults(func=run_bottleneck_blurry)
    add_bottleneck_recon_parser(esub)


def add_bottleneck_recon_parser(esub: argparse._SubParsersAction) -> None:
    from mindeye.commands.reconstruct import add_generator_options

    p = esub.add_parser(
        "bottleneck-recon", help="reconstruction metrics with the brain embeddings kept to their top-k PCs",
        description="BrainBits-style bottleneck curve of the generative path: for k = 1, 2, 4, ... up to their rank "
                    "(or --ks), `mindeye reconstruct --bottleneck k` (the backbone embeddings the prior reads and the "
                    "projector embeddings the best-of-N judge compares to, each projected onto its top-k principal "
                    "components fitted on every test sample; the blurry images of a low-level --lowlevel run through "
                    "the same k) into OUT/kKKKK, and the unprojected model into OUT/model, all scored as `evaluate "
                    "recon` scores them. Writes OUT/curve.json and OUT/curve.md; re-running resumes every directory. "
                    "See docs/evaluation.md.")
    p.add_argument("--run", required=True, help="high-level run directory (with a diffusion prior)")
    p.add_argument("--lowlevel", default=None,
                   help="low-level run (its blurry images are made through the same k and scored too) or a "
                        "`reconstruct-blurry` directory (used as it is at every k); enables img2img")
    add_generator_options(p)
    p.add_argument("--ks", default=None, metavar="LIST",
                   help="comma-separated k values (default: 1, 2, 4, ... and the rank)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="reconstruct and score only the first N test images (the PCA still sees all of them)")
    p.add_argument("--subject", default=None, metavar="ID", help="subject of a shared-subject run")
    p.add_argument("--metrics", default="pixcorr,ssim", metavar="LIST",
                   help="comma-separated metrics (default pixcorr,ssim; the network metrics need --weights-dir)")
    p.add_argument("--weights-dir", default=None, help="folder with the metric networks' checkpoints")
    p.add_argument("--clip", default=None, help="CLIP ViT-L/14 for the CLIP metric: HF id or local folder")
    add_data(p, help="subject store (default: the run's)")
    add_device(p)
    p.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"],
                   help="generator precision (auto: float16 on GPU, float32 on CPU)")
    add_out(p, help="output directory (one reconstruction directory per k, curve.json, curve.md)")
    add_progress(p)
    p.set_defaults(func=run_bottleneck_recon)


def _metrics_and_ks(args: argparse.Namespace) -> tuple[list[str], list[int] | None]:
    from mindeye.errors import MindEyeError
    from mindeye.evaluation.metrics import METRICS

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or not metrics:
        raise MindEyeError(f"unknown metric(s) {unknown} in --metrics; choose from {', '.join(METRICS)}")
    try:
        ks = [int(k) for k in args.ks.split(",") if k.strip()] if args.ks else None
    except ValueError:
        raise MindEyeError(f"--ks takes comma-separated whole numbers (e.g. 1,4,16), got {args.ks!r}") from None
    if ks is not None and (not ks or min(ks) < 1):
        raise MindEyeError(f"--ks values must be at least 1 (principal components kept), got {args.ks!r}")
    if args.limit is not None and args.limit < 2:
        raise MindEyeError("--limit must be at least 2 (two-way identification and the mean need pairs)")
    return metrics, ks


def _nets(metrics: list[str], args: argparse.Namespace, device: str):
    from mindeye.evaluation.metrics import PIXEL_METRICS
    from mindeye.evaluation.recon_eval import load_feature_nets, pixel_only_nets

    return (pixel_only_nets() if set(metrics) <= set(PIXEL_METRICS)
            else load_feature_nets(args.weights_dir, args.clip, device=device, metrics=metrics))


def run_bottleneck_recon(args: argparse.Namespace) -> int:
    import torch

    from mindeye.commands.reconstruct import settings_from_args
    from mindeye.devices import resolve_device
    from mindeye.evaluation.bottleneck import bottleneck_recon, bottleneck_recon_markdown

    metrics, ks = _metrics_and_ks(args)
    device = resolve_device(args.device)
    settings = settings_from_args(args)
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    nets = _nets(metrics, args, device)  # before hours of generation: missing metric weights fail now
    out = Path(args.out)
    result = bottleneck_recon(args.run, out, ks=ks, lowlevel=args.lowlevel, generator_name=args.generator,
                              settings=settings, weights=args.weights, judge_weights=args.clip_weights,
                              store=args.data, device=device, dtype=dtype, limit=args.limit, subject=args.subject,
                              nets=nets, metrics=metrics, progress=not args.no_progress)
    table = bottleneck_recon_markdown(result)
    print(table)
    (out / "curve.json").write_text(json.dumps(result, indent=2))
    (out / "curve.md").write_text(f"# Reconstruction bottleneck curve: {args.run}\n\n{table}\n")
    return 0


def run_bottleneck_blurry(args: argparse.Namespace) -> int:
    from mindeye.devices import resolve_device
    from mindeye.errors import MindEyeError
    from mindeye.evaluation.bottleneck import bottleneck_blurry, bottleneck_markdown

    metrics, ks = _metrics_and_ks(args)
    if args.batch_size < 1:
        raise MindEyeError("--batch-size must be at least 1")
    device = resolve_device(args.device)
    nets = _nets(metrics, args, device)
    result = bottleneck_blurry(args.run, store=args.data, nets=nets, ks=ks, limit=args.limit, device=device,
                               batch_size=args.batch_size, weights=args.weights, subject=args.subject,
                               metrics=metrics, progress=not args.no_progress)
    table = bottleneck_markdown(result)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(f"# Blurry bottleneck curve: {args.run}\n\n{table}\n")
    return 0
