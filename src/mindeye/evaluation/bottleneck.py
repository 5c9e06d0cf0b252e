"""Reconstruction metrics through a k-dimensional bottleneck (BrainBits-style, issue 26): the blurry path.

:func:`bottleneck_blurry`: a low-level run's predicted VAE latents of the test set, projected onto their top-k
principal components (fitted on these test predictions, unsupervised, as `evaluate retrieval --bottleneck`
does for the brain embeddings: :func:`mindeye.evaluation.floors.project_top_k`), decoded by the run's blurry
decoder and scored against the true images (PixCorr, SSIM, and the network metrics when ``nets`` has them),
k on a log grid up to the predictions' rank. The unprojected model's values come with the curve (``model``);
at k = rank the projection is the identity and the point equals them. The decoded images are scored as
`evaluate recon` scores a `reconstruct-blurry` directory (float images rounded to float16 and clamped to [0, 1],
as its float copies are).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mindeye.errors import MindEyeError
from mindeye.evaluation import floors as fl
from mindeye.evaluation.metrics import evaluate_reconstructions
from mindeye.utils.images import is_float_images

FITTED_ON = "the test set's predicted VAE latents (unsupervised PCA; every test image, even under --limit)"


def _scoreable(images: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Decoded images as a blurry directory's metrics read them: float copies in float16, clamped."""
    if is_float_images(images):
        return torch.as_tensor(images).detach().cpu().to(torch.float16).float().clamp(0, 1)
    return images


def _decode_all(decode: Any, latents: torch.Tensor, batch_size: int, device: str) -> torch.Tensor | np.ndarray:
    parts = []
    with torch.no_grad():
        for i in range(0, len(latents), batch_size):
            parts.append(_scoreable(decode(latents[i:i + batch_size].to(device))))
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return np.concatenate([np.asarray(p) for p in parts])


def _values(result: dict[str, dict]) -> dict[str, Any]:
    return {m: (r["value"] if "value" in r else None) for m, r in result.items()}


def bottleneck_blurry(run_dir: str | Path, store: str | Path | None = None, nets: Any = None,
                      ks: Sequence[int] | None = None, limit: int | None = None, device: str = "cpu",
                      batch_size: int = 32, weights: str | None = None, subject: str | None = None,
                      metrics: Sequence[str] = ("pixcorr", "ssim"), progress: bool = False) -> dict[str, Any]:
    """The blurry bottleneck curve of a low-level run (module doc). ``limit``: score only the first N test
    images (the PCA is still fitted on all test predictions); ``nets``: FeatureNets for metrics beyond
    PixCorr / SSIM (default: pixel metrics only)."""
    from mindeye.evaluation.recon_eval import pixel_only_nets
    from mindeye.inference.blurry import blurry_path

    if nets is None:
        nets = pixel_only_nets()
    bp = blurry_path(run_dir, store, weights, device, subject)
    voxels = bp.split.voxels
    with torch.no_grad():
        latents = torch.cat([bp.predict(voxels[i:i + batch_size]).detach().cpu()
                             for i in range(0, len(voxels), batch_size)])
    if not torch.isfinite(latents).all():
        raise MindEyeError("the low-level model predicted non-finite latents (check the run's weights)")
    n = len(latents)
    if n < 2:
        raise MindEyeError("a bottleneck curve needs at least 2 test images")
    rows = slice(0, limit) if limit else slice(None)
    image_index = np.asarray(bp.split.image_index)[rows]
    if len(image_index) < 2:
        raise MindEyeError("reconstruction metrics need at least 2 images; raise --limit")
    reals = np.asarray(bp.store.images[image_index])

    x = latents.flatten(1).double()
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    rank = int((s > s.max() * 1e-10).sum()) if len(s) else 0
    grid = ks or fl.log_grid(max(rank, 1))
    bad = [int(k) for k in grid if not 1 <= int(k) <= len(s)]
    if bad:
        raise MindEyeError(f"k must be between 1 and {len(s)} (the number of principal components of {n} test "
                           f"predictions of dimension {x.shape[1]}); got {bad}")
    ks = sorted({int(k) for k in grid})

    def score(lat: torch.Tensor) -> dict[str, Any]:
        fakes = _decode_all(bp.decode, lat[rows].float(), batch_size, device)
        return _values(evaluate_reconstructions(reals, fakes, nets, batch_size=batch_size, device=device,
                                                progress=False, metrics=list(metrics)))

    shape = latents.shape[1:]
    points = []
    for k in ks:
        proj = fl.project_top_k(x, k, vh, mean).reshape(n, *shape)
        points.append({"k": k, "explained_variance": float((s[:k] ** 2).sum() / (s ** 2).sum()), **score(proj)})
        if progress:
            print(f"bottleneck k={k}: " + ", ".join(f"{m} {v:.4f}" for m, v in points[-1].items()
                                                     if m not in ("k",) and isinstance(v, float)))
    return {"kind": "blurry", "run": str(Path(run_dir).resolve()), "fitted_on": FITTED_ON, "rank": rank,
            "n_fitted": n, "n_scored": len(image_index), "image_index": image_index.tolist(),
            "decoder": bp.config.get("decoder"), "decoder_weights": bp.config.get("decoder_weights"),
            "model": score(latents), "points": points}


def bottleneck_markdown(result: dict[str, Any]) -> str:
    """The curve as a Markdown table (one row per k, then the unprojected model)."""
    metrics = [m for m in result["model"] if result["model"][m] is not None]
    head = ["k", "explained variance", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in result["points"]:
        lines.append("| " + " | ".join([str(p["k"]), f"{p['explained_variance']:.3f}",
                                         *(f"{p[m]:.4f}" for m in metrics)]) + " |")
    lines.append("| model (no bottleneck) | 1.000 | " + " | ".join(f"{result['model'][m]:.4f}" for m in metrics) + " |")
    return "\n".join(lines)
