"""Retrieval evaluation (paper Table 1 "Image"/"Brain" retrieval, Figure 3 full-test-set retrieval).

Both directions rank candidates by cosine similarity of flattened embeddings and are named by what
is given and what is ranked:
- ``brain_to_image``: given brain sample i, is image i the best match among the candidate images?
- ``image_to_brain``: given image j, is brain sample j the best match among the candidate brains?

Table 1's "Image retrieval" column is ``image_to_brain``: the authors' ``Retrievals.py`` reports
the top-1 of ``utils.batchwise_cosine_similarity(brain, clip)``, whose row i (that helper ends with
a transpose) ranks the brain samples for image i (subject 1: 0.9718 = Table 1's 97.2%). "Brain
retrieval" is ``brain_to_image`` (0.9468 = 94.7%). The paper's text names the directions the other
way round; :data:`TABLE1_COLUMNS` and :data:`TABLE1_FOOTNOTE` are the one place that maps them.

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

__all__ = ['BRAIN_TO_IMAGE', 'IMAGE_TO_BRAIN', 'DIRECTIONS', 'TABLE1_COLUMNS', 'TABLE1_FOOTNOTE', 'CI_METHODS', 'DRAW_MODES', 'cosine_matrix', 'confidence_interval', 'draw_subsets', 'retrieval_top1_among', 'topk_full', 'bootstrap_ci',
           'check_pool', 'per_query_hits', 'retrieval_nway', 'noise_control']

BRAIN_TO_IMAGE = "brain_to_image"  # given a brain sample, rank the candidate images
IMAGE_TO_BRAIN = "image_to_brain"  # given an image, rank the candidate brain samples
DIRECTIONS = (BRAIN_TO_IMAGE, IMAGE_TO_BRAIN)
# Table 1 column -> the direction its published numbers were computed in (authors' Retrievals.py "fwd"/"bwd").
TABLE1_COLUMNS = {"Image retrieval": IMAGE_TO_BRAIN, "Brain retrieval": BRAIN_TO_IMAGE}
TABLE1_FOOTNOTE = ("Image retrieval = image_to_brain (given an image, find its brain sample among the pool), "
                   "Brain retrieval = brain_to_image, as the authors' code computed Table 1 "
                   "(src/Retrievals.py; the paper's text names them the other way round).")
CI_METHODS = ("normal", "t")
DRAW_MODES = ("uniform", "contiguous")


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


def _ranks(sim: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rank of the correct (diagonal) candidate in both directions for sim (..., P, P).

    rank = number of other candidates scoring >= the correct one (0 = strict top-1).
    A NaN similarity never helps: a NaN correct score ranks last, a NaN rival beats the correct one.
    Returns {BRAIN_TO_IMAGE: rank, IMAGE_TO_BRAIN: rank}, each (..., P).
    """
    diag = torch.diagonal(sim, dim1=-2, dim2=-1)
    eye = torch.eye(sim.shape[-1], dtype=torch.bool, device=sim.device)
    beats = sim.isnan()  # NaN compares False with everything, which would make it a free hit
    # brain_to_image: row i (brain i) over images j; image_to_brain: column j (image j) over brains i.
    return {BRAIN_TO_IMAGE: (((sim >= diag.unsqueeze(-1)) | beats | diag.isnan().unsqueeze(-1)) & ~eye).sum(-1),
            IMAGE_TO_BRAIN: (((sim >= diag.unsqueeze(-2)) | beats | diag.isnan().unsqueeze(-2)) & ~eye).sum(-2)}


def confidence_interval(values: np.ndarray, method: str = "normal", level: float = 0.95) -> tuple[float, float]:
    """Interval for the mean of the per-draw accuracies.

    ``normal`` (the authors' ``Retrievals.py``): mean +- z * std(ddof=0) / sqrt(n);
    ``t``: Student-t with the sample standard deviation (ddof=1), wider for few draws.
    """
    if method not in CI_METHODS:
        raise MindEyeError(f"eval.ci must be one of {', '.join(CI_METHODS)}, got {method!r}")
    mean = float(values.mean())
    if len(values) < 2:
        return (float("nan"), float("nan"))
    if method == "normal":
        half = stats.norm.ppf(0.5 + level / 2) * values.std(ddof=0) / np.sqrt(len(values))
    else:
        half = stats.t.ppf(0.5 + level / 2, df=len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return (mean - float(half), mean + float(half))


def draw_subsets(n: int, pool: int, draws: int, seed: int = 0, mode: str = "uniform") -> torch.Tensor:
    """(draws, pool) candidate indices of each draw.

    ``uniform``: a random subset without replacement per draw. ``contiguous``: ``pool`` consecutive
    samples (wrapping round the end) from a random start, like the authors' batches of 300 read in a row
    from a resampled webdataset stream (src/Retrievals.py); their stream order is the shard order, ours
    is the store's test order.
    """
    if mode not in DRAW_MODES:
        raise MindEyeError(f"eval.draw_mode must be one of {', '.join(DRAW_MODES)}, got {mode!r}")
    gen = torch.Generator().manual_seed(seed)
    if mode == "contiguous":
        starts = torch.randint(0, n, (draws, 1), generator=gen)
        return (starts + torch.arange(pool)) % n
    return torch.rand(draws, n, generator=gen).argsort(dim=1)[:, :pool]


def retrieval_top1_among(
    brain: np.ndarray | torch.Tensor,
    images: np.ndarray | torch.Tensor,
    pool: int = 300,
    draws: int = 30,
    seed: int = 0,
    ci: str = "normal",
    draw_mode: str = "uniform",
) -> dict:
    """Top-1 retrieval among `pool` random test samples, repeated over `draws` draws (paper Table 1).

    brain: (N, ...) brain-derived embeddings (projector output); images: (N, ...) CLIP targets,
    paired by index. Returns, for each direction D in ``brain_to_image`` / ``image_to_brain``, D (mean
    over draws), D_ci95 (95% interval, see :func:`confidence_interval`) and D_per_draw, plus
    pool/draws/n/ci/draw_mode; if N < pool, the whole set is used (pool = N) and `note` says so.
    """
    sim = cosine_matrix(brain, images)
    n = len(sim)
    result: dict = {}
    if n < pool:
        result["note"] = f"only {n} test samples, fewer than the requested pool of {pool}; used pool = {n}"
        pool = n
    if draws < 1:
        raise MindEyeError(f"draws must be >= 1, got {draws}")
    confidence_interval(np.zeros(2), ci)  # reject a bad method before any work
    idx = draw_subsets(n, pool, draws, seed, draw_mode).to(sim.device)
    blocks = sim[idx.unsqueeze(-1), idx.unsqueeze(-2)]  # (draws, pool, pool) similarity blocks
    for direction, rank in _ranks(blocks).items():
        acc = (rank == 0).float().mean(-1).cpu().numpy().astype(np.float64)
        result[direction] = float(acc.mean())
        result[f"{direction}_ci95"] = confidence_interval(acc, ci)
        result[f"{direction}_per_draw"] = acc.tolist()
    result.update(pool=pool, draws=draws, n=n, ci=ci, draw_mode=draw_mode)
    return result


def topk_full(
    brain: np.ndarray | torch.Tensor, images: np.ndarray | torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k retrieval over the whole test set, both directions (paper Figure 3).

    Returns {"brain_to_image_top{k}": ..., "image_to_brain_top{k}": ...} for each k.
    """
    ranks = _ranks(cosine_matrix(brain, images))
    out: dict[str, float] = {}
    for k in ks:
        for direction, rank in ranks.items():
            out[f"{direction}_top{k}"] = (rank < k).float().mean().item()
    return out


# ----------------------------------------------------------------------------------------------------
# N-way retrieval beyond 300: the whole test set, 1000-way pools, bootstrap CIs, scores split by query group
# ----------------------------------------------------------------------------------------------------
def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean of ``values`` (one value per test item, resampled with
    replacement): the item-level uncertainty a draws-based interval does not show."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) < 2 or n_boot < 1:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(1)
    lo, hi = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return (float(lo), float(hi))


def check_pool(pool: int | str, n: int) -> int:
    """The pool size for ``pool`` (an int or ``"all"``) on ``n`` test samples; an explicit pool larger than
    the test set is an error (pools are drawn without replacement, so a 1000-way pool needs 1000 images)."""
    if pool == "all":
        return n
    try:
        p = int(pool)
    except (TypeError, ValueError):
        raise MindEyeError(f"--pool must be a number of candidates or 'all', got {pool!r}") from None
    if p < 2:
        raise MindEyeError(f"--pool must be at least 2 candidates, got {p}")
    if p > n:
        raise MindEyeError(f"{p}-way retrieval needs at least {p} test images (pools are drawn without "
                           f"replacement), but the test set has {n}; use --pool all ({n}-way) or a pool <= {n}")
    return p


def per_query_hits(sim: torch.Tensor, pool: int, draws: int, seed: int = 0, draw_mode: str = "uniform"
                   ) -> dict[str, np.ndarray]:
    """Per query, the fraction of the draws containing it in which it was retrieved top-1 (NaN: never drawn).

    ``pool == N``: one draw, the whole test set (its per-query hits are 0/1). Draws are processed one at a
    time, so a 1000-way pool costs (1000, 1000) floats at once, not draws x that.
    """
    n = len(sim)
    idx = torch.arange(n).unsqueeze(0) if pool == n else draw_subsets(n, pool, draws, seed, draw_mode)
    hits = {d: np.zeros(n) for d in DIRECTIONS}
    seen = np.zeros(n)
    for row in idx:
        r = row.to(sim.device)
        ranks = _ranks(sim[r.unsqueeze(-1), r.unsqueeze(-2)])
        where = row.numpy()
        np.add.at(seen, where, 1)
        for d in DIRECTIONS:
            np.add.at(hits[d], where, (ranks[d] == 0).cpu().numpy().astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {d: np.where(seen > 0, hits[d] / np.maximum(seen, 1), np.nan) for d in DIRECTIONS}


def retrieval_nway(
    brain: np.ndarray | torch.Tensor,
    images: np.ndarray | torch.Tensor,
    pool: int | str = "all",
    draws: int = 30,
    seed: int = 0,
    n_boot: int = 1000,
    groups: dict[str, np.ndarray] | None = None,
    draw_mode: str = "uniform",
) -> dict:
    """Top-1 retrieval among ``pool`` candidates (``"all"``: the whole test set, N-way) in both directions,
    with a bootstrap 95% CI over test items (per-query hit rates resampled).

    ``groups`` ({name: boolean mask over the N samples}, e.g. in- / out-of-distribution test images) splits
    the same scores by the query's group: every group faces the same candidate pools (drawn from the whole
    test set), so a gap between groups is not an artefact of one group's pools being more alike.
    Returns {pool, draws, n, chance, <direction>, <direction>_ci95_bootstrap, groups: {name: {n, ...}}}.
    """
    sim = cosine_matrix(brain, images)
    n = len(sim)
    p = check_pool(pool, n)
    if draws < 1:
        raise MindEyeError(f"draws must be >= 1, got {draws}")
    per = per_query_hits(sim, p, draws, seed, draw_mode)
    out: dict = {"pool": p, "draws": 1 if p == n else draws, "n": n, "chance": 1.0 / p, "n_boot": n_boot}
    for d in DIRECTIONS:
        out[d] = float(np.nanmean(per[d]))
        out[f"{d}_ci95_bootstrap"] = bootstrap_ci(per[d], n_boot, seed)
    if groups:
        out["groups"] = {}
        for name, mask in groups.items():
            mask = np.asarray(mask, dtype=bool)
            if len(mask) != n:
                raise MindEyeError(f"group {name!r} has {len(mask)} entries for {n} test samples")
            g: dict = {"n": int(mask.sum())}
            for d in DIRECTIONS:
                vals = per[d][mask]
                g[d] = float(np.nanmean(vals)) if mask.any() else float("nan")
                g[f"{d}_ci95_bootstrap"] = bootstrap_ci(vals, n_boot, seed)
            out["groups"][name] = g
        if len(groups) == 2:  # the gap first - second, with a bootstrap CI resampling each group's queries
            (na, ma), (nb, mb) = ((k, np.asarray(v, dtype=bool)) for k, v in groups.items())
            gap: dict = {"of": [na, nb]}
            rng = np.random.default_rng(seed)
            for d in DIRECTIONS:
                a, b = per[d][ma], per[d][mb]
                a, b = a[~np.isnan(a)], b[~np.isnan(b)]
                gap[d] = float(a.mean() - b.mean()) if len(a) and len(b) else float("nan")
                if len(a) > 1 and len(b) > 1 and n_boot > 0:
                    diffs = (a[rng.integers(0, len(a), (n_boot, len(a)))].mean(1)
                             - b[rng.integers(0, len(b), (n_boot, len(b)))].mean(1))
                    gap[f"{d}_ci95_bootstrap"] = tuple(float(q) for q in np.quantile(diffs, [0.025, 0.975]))
                else:
                    gap[f"{d}_ci95_bootstrap"] = (float("nan"), float("nan"))
            out["gap"] = gap
    return out


def noise_control(images: np.ndarray | torch.Tensor, top1: float, seed: int = 0) -> tuple[torch.Tensor, float]:
    """A "brain" embedding that knows every image equally well: the unit-norm target plus Gaussian noise, its
    level chosen so whole-test-set top-1 (mean of both directions) matches ``top1``.

    Scored with the same pools and groups as a model, its in- vs out-of-distribution gap is the part of a
    gap that comes from the test images alone (e.g. held-out clusters packing many similar candidates into
    the pools), not from what the model learned. Returns (embeddings, noise level).
    """
    t = _normalised(images).cpu()
    noise = torch.randn(t.shape, generator=torch.Generator().manual_seed(1_000_003 + seed))  # its own stream

    def score(sigma: float) -> float:
        ranks = _ranks(F.normalize(t + sigma * noise, dim=1) @ t.T)
        return float(np.mean([(r == 0).float().mean().item() for r in ranks.values()]))

    lo, hi = -6.0, 3.0  # log10 of the noise level; top-1 falls as the noise grows
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if score(10 ** mid) > top1 else (lo, mid)
    sigma = 10 ** ((lo + hi) / 2)
    return t + sigma * noise, sigma
