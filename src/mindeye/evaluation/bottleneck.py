"""Reconstruction metrics through a k-dimensional bottleneck (BrainBits-style, issue 26): blurry and generative.

:func:`bottleneck_blurry`: a low-level run's predicted VAE latents of the test set, projected onto their top-k
principal components (fitted on these test predictions, unsupervised, as `evaluate retrieval --bottleneck`
does for the brain embeddings: :func:`mindeye.utils.pca.fit_top_k`), decoded by the run's blurry
decoder and scored against the true images (PixCorr, SSIM, and the network metrics when ``nets`` has them),
k on a log grid up to the predictions' rank. The unprojected model's values come with the curve (``model``);
at k = rank the projection is the identity and the point equals them. The decoded images are scored as
`evaluate recon` scores a `reconstruct-blurry` directory (float images rounded to float16 and clamped to [0, 1],
as its float copies are).

:func:`bottleneck_recon`: the generative path. For each k, `mindeye reconstruct --bottleneck k` (the backbone
embeddings the prior reads and the projector embeddings the best-of-N judge compares to, each kept to its own
top-k components fitted on every test sample; the blurry images of a low-level run through the same k) into
``OUT/kKKKK``, scored by `evaluate recon`'s code; ``OUT/model`` is the unprojected model.
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
    from mindeye.inference.blurry import blurry_path, predicted_latents

    if nets is None:
        nets = pixel_only_nets()
    bp = blurry_path(run_dir, store, weights, device, subject)
    latents = predicted_latents(bp, batch_size)
    n = len(latents)
    if n < 2:
        raise MindEyeError("a bottleneck curve needs at least 2 test images")
    rows = slice(0, limit) if limit else slice(None)
    image_index = np.asarray(bp.split.image_index)[rows]
    if len(image_index) < 2:
        raise MindEyeError("reconstruction metrics need at least 2 images; raise --limit")
    reals = np.asarray(bp.store.images[image_index])

    from mindeye.utils.pca import fit_top_k

    pca = fit_top_k(latents)
    grid = ks or fl.log_grid(max(pca.rank, 1))
    bad = [int(k) for k in grid if not 1 <= int(k) <= n]
    if bad:
        raise MindEyeError(f"k must be between 1 and {n} (the number of test predictions the components are "
                           f"fitted on); got {bad}")
    ks = sorted({int(k) for k in grid})

    def score(lat: torch.Tensor) -> dict[str, Any]:
        fakes = _decode_all(bp.decode, lat[rows].float(), batch_size, device)
        return _values(evaluate_reconstructions(reals, fakes, nets, batch_size=batch_size, device=device,
                                                progress=False, metrics=list(metrics)))

    points = []
    for k in ks:
        points.append({"k": k, "explained_variance": pca.explained_variance(k), **score(pca.project(latents, k))})
        if progress:
            print(f"bottleneck k={k}: " + ", ".join(f"{m} {v:.4f}" for m, v in points[-1].items()
                                                     if m not in ("k",) and isinstance(v, float)))
    return {"kind": "blurry", "run": str(Path(run_dir).resolve()), "fitted_on": FITTED_ON, "rank": pca.rank,
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


# -- the generative path ---------------------------------------------------------------------------------------------
def _k_dir(out_dir: Path, k: int | None) -> Path:
    return out_dir / ("model" if k is None else f"k{k:04d}")


def bottleneck_recon(run_dir: str | Path, out_dir: str | Path, ks: Sequence[int] | None = None,
                     lowlevel: str | Path | None = None, generator_name: str | None = None, settings: Any = None,
                     weights: str | None = None, judge_weights: str | None = None, store: str | Path | None = None,
                     device: str = "cpu", dtype: Any = None, limit: int | None = None, subject: str | None = None,
                     nets: Any = None, metrics: Sequence[str] = ("pixcorr", "ssim"), batch_size: int = 32,
                     progress: bool = False) -> dict[str, Any]:
    """The generative bottleneck curve of a high-level run: `mindeye reconstruct --bottleneck k` into
    ``OUT/kKKKK`` for every k (and ``OUT/model``, no bottleneck), each scored as `evaluate recon` scores it.

    ``lowlevel``: a low-level run, whose blurry images are made through the same k (``OUT/kKKKK/blurry``, scored
    too: the blurry curve of the same run), or a `reconstruct-blurry` directory used as it is at every k. k on a
    log grid up to the rank of the test backbone embeddings unless ``ks`` is given. Every directory resumes.
    """
    from copy import deepcopy

    from mindeye.evaluation.recon_eval import evaluate_recon_dirs, pixel_only_nets
    from mindeye.inference.reconstruct import reconstruct_run

    out_dir = Path(out_dir)
    if nets is None:
        nets = pixel_only_nets()
    made_blurry = lowlevel is not None and (Path(lowlevel) / "config.yaml").exists()

    def make(k: int | None) -> dict[str, Any]:
        return reconstruct_run(run_dir, _k_dir(out_dir, k), generator_name, deepcopy(settings), lowlevel=lowlevel,
                               weights=weights, judge_weights=judge_weights, store=store, device=device,
                               dtype=dtype, limit=limit, progress=progress, subject=subject, bottleneck=k)

    indexes: dict[int | None, dict[str, Any]] = {}
    if ks is None:  # the grid needs the rank: the first point (k = 1) reports it
        indexes[1] = make(1)
        grid = fl.log_grid(max(int(indexes[1]["config"]["bottleneck"]["backbone_rank"]), 1))
    else:
        grid = sorted({int(k) for k in ks})
        if not grid or grid[0] < 1:
            raise MindEyeError(f"k must be at least 1; got {list(ks)}")
    for k in grid:
        if k not in indexes:
            indexes[k] = make(k)
    indexes[None] = make(None)

    def score(dirs: list[Path]) -> list[dict[str, Any]]:
        result = evaluate_recon_dirs(dirs, names=[d.name for d in dirs], store=store, nets=nets, device=device,
                                     metrics=list(metrics), batch_size=batch_size, progress=False, mean_row=False)
        return [_values(r["metrics"]) for r in result["rows"]]

    order = [*grid, None]
    recon_values = score([_k_dir(out_dir, k) for k in order])
    blurry_values = score([_k_dir(out_dir, k) / "blurry" for k in order]) if made_blurry else None
    points = []
    for j, k in enumerate(grid):
        desc = indexes[k]["config"]["bottleneck"]
        point = {"k": k, "explained_variance": desc["backbone_explained_variance"],
                 "projector_explained_variance": desc["projector_explained_variance"], **recon_values[j]}
        if blurry_values is not None:
            blurry_cfg = (indexes[k]["config"].get("blurry_config") or {}).get("bottleneck") or {}
            point["blurry"] = {"explained_variance": blurry_cfg.get("explained_variance"), **blurry_values[j]}
        points.append(point)
    any_cfg = indexes[grid[0]]["config"]
    result = {"kind": "reconstruction", "run": str(Path(run_dir).resolve()), "out": str(out_dir.resolve()),
              "fitted_on": any_cfg["bottleneck"]["fitted_on"], "rank": any_cfg["bottleneck"]["backbone_rank"],
              "n_scored": len(indexes[None]["images"]), "generator": any_cfg.get("generator"),
              "lowlevel": any_cfg.get("lowlevel"), "blurry_through_bottleneck": made_blurry,
              "model": recon_values[-1], "points": points}
    if blurry_values is not None:
        result["model_blurry"] = blurry_values[-1]
    return result


def bottleneck_recon_markdown(result: dict[str, Any]) -> str:
    """The generative curve as a Markdown table (one row per k, then the unprojected model); blurry columns too."""
    metrics = [m for m in result["model"] if result["model"][m] is not None]
    blurry = result.get("model_blurry")
    bmetrics = [m for m in (blurry or {}) if blurry[m] is not None]
    head = ["k", "explained variance", *metrics, *(f"blurry {m}" for m in bmetrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in result["points"]:
        cells = [str(p["k"]), f"{p['explained_variance']:.3f}", *(f"{p[m]:.4f}" for m in metrics),
                 *(f"{p['blurry'][m]:.4f}" for m in bmetrics)]
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["model (no bottleneck)", "1.000", *(f"{result['model'][m]:.4f}" for m in metrics),
             *(f"{blurry[m]:.4f}" for m in bmetrics)]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
