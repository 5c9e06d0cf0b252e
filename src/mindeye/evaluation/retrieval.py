"""Retrieval evaluation (paper Table 1 "Image"/"Brain" retrieval, Figure 3 full-test-set retrieval).

Both directions rank candidates by cosine similarity of flattened embeddings:
- image retrieval: given brain sample i, is image i the best match among the candidate images?
- brain retrieval: given image j, is brain sample j the best match among the candidate brains?

A tie with the correct candidate counts as a miss (no credit for indistinguishable embeddings).
Everything runs as matrix ops on the embeddings' device with float32 accumulation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from mindeye.errors import MindEyeError
from mindeye.finite import require_finite


def _normalised(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    return F.normalize(x.reshape(len(x), -1).float(), dim=1)


def cosine_matrix(brain: np.ndarray | torch.Tensor, images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """S[i, j] = cos(brain_i, image_j) over flattened embeddings, float32, shape (N, N)."""
    require_finite(brain, "brain embeddings", "the run diverged or its voxels are damaged; retrain or re-prepare")
    require_finite(images, "image embeddings (targets)", "re-run `mindeye embed` for the store")
    b, im = _normalised(brain), _normalised(images)
    if len(b) != len(im):
        raise MindEyeError(f"got {len(b)} brain embeddings but {len(im)} image embeddings; they must pair up")
    if b.shape[1] != im.shape[1]:
        raise MindEyeError(f"embedding sizes differ: brain {b.shape[1]} vs images {im.shape[1]} (after flattening)")
    if len(b) == 0:
        raise MindEyeError("no embeddings to evaluate")
    return b @ im.to(b.device).T


def _ranks(sim: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank of the correct (diagonal) candidate in both directions for sim (..., P, P).

    rank = number of other candidates scoring >= the correct one (0 = strict top-1).
    A NaN similarity never helps: a NaN correct score ranks last, a NaN rival beats the correct one.
    Returns (image_rank, brain_rank), each (..., P).
    """
    diag = torch.diagonal(sim, dim1=-2, dim2=-1)
    eye = torch.eye(sim.shape[-1], dtype=torch.bool, device=sim.device)
    beats = sim.isnan()  # NaN compares False with everything, which would make it a free hit
    # image retrieval: row i (brain i) over images j; brain retrieval: column j (image j) over brains i.
    image_rank = (((sim >= diag.unsqueeze(-1)) | beats | diag.isnan().unsqueeze(-1)) & ~eye).sum(-1)
    brain_rank = (((sim >= diag.unsqueeze(-2)) | beats | diag.isnan().unsqueeze(-2)) & ~eye).sum(-2)
    return image_rank, brain_rank


def _t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    mean = float(values.mean())
    if len(values) < 2:
        return (float("nan"), float("nan"))
    half = stats.t.ppf(0.5 + level / 2, df=len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return (mean - float(half), mean + float(half))


def retrieval_top1_among(
    brain: np.ndarray | torch.Tensor,
    images: np.ndarray | torch.Tensor,
    pool: int = 300,
    draws: int = 30,
    seed: int = 0,
) -> dict:
    """Top-1 retrieval among `pool` random test samples, repeated over `draws` draws (paper Table 1).

    brain: (N, ...) brain-derived embeddings (projector output); images: (N, ...) CLIP targets,
    paired by index. Returns image_retrieval / brain_retrieval (means over draws), their 95%
    t-intervals over the draws (image_ci95 / brain_ci95), the per-draw accuracies, and pool/draws/n;
    if N < pool, the whole set is used (pool = N) and `note` says so.
    """
    sim = cosine_matrix(brain, images)
    n = len(sim)
    result: dict = {}
    if n < pool:
        result["note"] = f"only {n} test samples, fewer than the requested pool of {pool}; used pool = {n}"
        pool = n
    if draws < 1:
        raise MindEyeError(f"draws must be >= 1, got {draws}")
    gen = torch.Generator().manual_seed(seed)
    # (draws, pool) random subsets without replacement; gather their (pool x pool) similarity blocks.
    idx = torch.rand(draws, n, generator=gen).argsort(dim=1)[:, :pool].to(sim.device)
    blocks = sim[idx.unsqueeze(-1), idx.unsqueeze(-2)]
    image_rank, brain_rank = _ranks(blocks)
    image_acc = (image_rank == 0).float().mean(-1).cpu().numpy().astype(np.float64)
    brain_acc = (brain_rank == 0).float().mean(-1).cpu().numpy().astype(np.float64)
    result.update(
        image_retrieval=float(image_acc.mean()),
        image_ci95=_t_interval(image_acc),
        brain_retrieval=float(brain_acc.mean()),
        brain_ci95=_t_interval(brain_acc),
        image_per_draw=image_acc.tolist(),
        brain_per_draw=brain_acc.tolist(),
        pool=pool,
        draws=draws,
        n=n,
    )
    return result


def topk_full(
    brain: np.ndarray | torch.Tensor, images: np.ndarray | torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k retrieval over the whole test set, both directions (paper Figure 3).

    Returns {"image_top{k}": ..., "brain_top{k}": ...} for each k.
    """
    image_rank, brain_rank = _ranks(cosine_matrix(brain, images))
    out: dict[str, float] = {}
    for k in ks:
        out[f"image_top{k}"] = (image_rank < k).float().mean().item()
        out[f"brain_top{k}"] = (brain_rank < k).float().mean().item()
    return out
