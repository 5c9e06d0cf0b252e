"""Floors, ceilings and the model's place between them, for retrieval and reconstruction metrics (issue 26).

Every number a run gets is put beside numbers measured by the same code on the same images:

* **chance**: exact where it is known (1/N for N-way top-1, k/N for top-k, 0.5 for two-way
  identification), else empirical: the metric of an unrelated pairing, the true images against a
  derangement of themselves (no image paired with itself).
* **mean training image**: every prediction is the mean training image (reconstruction) or the mean
  training target embedding (retrieval; a constant prediction: every candidate brain ties, so
  ``image_to_brain`` is 0 and ``brain_to_image`` finds one image only).
* **shuffled brain**: the same model fed the voxels of *other* test samples (a random derangement,
  several seeds, mean and sd) -- the method-specific random baseline (BrainBits, NeurIPS 2024). The
  model maps each sample on its own (eval mode), so feeding sample j's voxels for image i gives exactly
  its output for j: the floor is the model's own outputs re-paired, no inference needed. For the
  generative reconstructions this holds with each brain sample's own noise seed (``item_seed``).
* **ceiling**: the model's outputs replaced by the true image's own targets: for retrieval the true
  embeddings (100% by definition, up to duplicate targets), for blurry images the true image's own VAE
  latent decoded, for reconstructions the generator conditioned on the true image's own embedding
  (:mod:`mindeye.inference.ceilings`).
* **fraction** = (model - floor) / (ceiling - floor): 0 at the floor, 1 at the ceiling, the same formula
  for lower-is-better metrics (floor and ceiling then swap order); ``where`` says whether the model is
  between them, below the floor or above the ceiling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mindeye.errors import MindEyeError

SHUFFLE_SEEDS = (0, 1, 2)
LOWER_IS_BETTER = ("efficientnet_b1", "swav")


def derangement(n: int, seed: int) -> np.ndarray:
    """A random permutation of range(n) with no fixed point (one cycle through a random order)."""
    if n < 2:
        raise MindEyeError(f"a shuffled pairing needs at least 2 samples, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    perm = np.empty(n, dtype=np.int64)
    perm[order] = np.roll(order, -1)
    return perm


def position(model: float | None, floor: float | None, ceiling: float | None) -> dict[str, Any]:
    """Where ``model`` lies from ``floor`` (0) to ``ceiling`` (1); direction-aware through the formula."""
    if model is None or floor is None or ceiling is None or not np.isfinite([model, floor, ceiling]).all():
        return {"value": None, "where": "unknown"}
    span = ceiling - floor
    if abs(span) < 1e-12:
        return {"value": None, "where": "floor equals ceiling"}
    frac = (model - floor) / span
    where = "below floor" if frac < 0 else "above ceiling" if frac > 1 else "between"
    return {"value": float(frac), "where": where}


def summarise(model: Mapping[str, float], chance: Mapping[str, float], mean_image: Mapping[str, float] | None,
              shuffled: Sequence[Mapping[str, float]], ceiling: Mapping[str, float] | None,
              seeds: Sequence[int], notes: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``floors`` block of a result: every floor, the ceiling and the fractions, per metric."""
    keys = list(model)
    mean = {k: float(np.mean([s[k] for s in shuffled])) for k in keys if shuffled and all(k in s for s in shuffled)}
    sd = {k: float(np.std([s[k] for s in shuffled], ddof=1)) if len(shuffled) > 1 else None for k in mean}
    ceiling = dict(ceiling or {})
    out: dict[str, Any] = {
        "metrics": keys, "model": dict(model), "chance": dict(chance),
        "mean_train_image": dict(mean_image or {}),
        "shuffled_brain": {"mean": mean, "sd": sd, "seeds": list(seeds)},
        "ceiling": ceiling,
        # 0 = the method-specific floor (shuffled brain), 1 = the ceiling
        "fraction": {k: position(model.get(k), mean.get(k), ceiling.get(k)) for k in keys},
        "fraction_from_chance": {k: position(model.get(k), chance.get(k), ceiling.get(k)) for k in keys},
    }
    if notes:
        out["notes"] = dict(notes)
    return out


def outside_lines(name: str, floors: Mapping[str, Any]) -> list[str]:
    """Plain sentences for every metric where the model is not between its floor and its ceiling, or does no
    better than chance or the mean training image."""
    lines = []
    model = floors.get("model") or {}
    for k, pos in (floors.get("fraction") or {}).items():
        if pos.get("where") in ("below floor", "above ceiling"):
            lines.append(f"{name}: {k} = {model[k]:.4g} is {pos['where']} (shuffled-brain floor "
                         f"{floors['shuffled_brain']['mean'][k]:.4g}, ceiling {floors['ceiling'][k]:.4g}).")
    for label, key in (("chance", "chance"), ("the mean training image", "mean_train_image")):
        for k, v in (floors.get(key) or {}).items():
            if k in model and v is not None and _no_better(model[k], v, k):
                lines.append(f"{name}: {k} = {model[k]:.4g} does no better than {label} ({v:.4g}).")
    return lines


def _no_better(model: float, other: float, metric: str) -> bool:
    return model >= other if metric in LOWER_IS_BETTER else model <= other


# -- retrieval ---------------------------------------------------------------------------------------------------
def retrieval_values(brain: torch.Tensor, images: torch.Tensor, pool: int, draws: int, seed: int, ci: str,
                     draw_mode: str) -> dict[str, float]:
    """The retrieval metrics of one pairing: top-1 among ``pool`` (both directions) and full-set top-1/5."""
    from mindeye.metrics.retrieval import DIRECTIONS, retrieval_top1_among, topk_full

    among = retrieval_top1_among(brain, images, pool=pool, draws=draws, seed=seed, ci=ci, draw_mode=draw_mode)
    return {**{d: among[d] for d in DIRECTIONS}, **topk_full(brain, images, ks=(1, 5))}


def retrieval_chance(n: int, pool: int) -> dict[str, float]:
    """Exact chance of :func:`retrieval_values`: 1/pool among the pool, k/N for top-k of the full set."""
    from mindeye.metrics.retrieval import DIRECTIONS

    pool = min(pool, n)
    return {**{d: 1 / pool for d in DIRECTIONS},
            **{f"{d}_top{k}": min(k, n) / n for k in (1, 5) for d in DIRECTIONS}}


def retrieval_floors(brain: torch.Tensor, images: torch.Tensor, mean_target: torch.Tensor | None, pool: int,
                     draws: int, seed: int, ci: str, draw_mode: str,
                     seeds: Sequence[int] = SHUFFLE_SEEDS) -> dict[str, Any]:
    """Floors and ceiling of retrieval for brain embeddings ``brain`` (N, ...) vs targets ``images`` (N, ...)."""
    brain, images = torch.as_tensor(brain).flatten(1), torch.as_tensor(images).flatten(1)
    n = len(brain)
    args = (pool, draws, seed, ci, draw_mode)
    model = retrieval_values(brain, images, *args)
    shuffled = [retrieval_values(brain[torch.from_numpy(derangement(n, s))], images, *args) for s in seeds]
    const = None
    if mean_target is not None:
        const = retrieval_values(torch.as_tensor(mean_target).flatten().float().expand(n, -1).clone(), images, *args)
    ceiling = retrieval_values(images, images, *args)
    return summarise(model, retrieval_chance(n, pool), const, shuffled, ceiling, seeds, notes={
        "ceiling": "the true embeddings retrieve themselves: 100% by definition (less only where two test "
                   "images have identical targets)",
        "mean_train_image": "the mean training target as every prediction: a constant prediction ties every "
                            "candidate brain (image_to_brain 0; ties are misses) and finds one image only "
                            "(brain_to_image about 1/N)",
        "shuffled_brain": "the model's embedding of another test sample's voxels (a derangement per seed)",
    })


def retrieval_per_image(brain: torch.Tensor, images: torch.Tensor) -> dict[str, list]:
    """Per test sample: rank of the correct candidate over the whole test set (0 = top-1), both directions,
    and the top-1 hit (1/0): what `mindeye compare` tests."""
    from mindeye.metrics.retrieval import _ranks, cosine_matrix

    out: dict[str, list] = {}
    for d, rank in _ranks(cosine_matrix(brain, images)).items():
        r = rank.cpu().numpy().astype(np.int64)
        out[f"{d}_rank"] = r.tolist()
        out[f"{d}_top1"] = (r == 0).astype(np.float64).tolist()
        out[f"{d}_top5"] = (r < 5).astype(np.float64).tolist()
    return out


def mean_target(targets: Any, image_index: np.ndarray, chunk: int = 256) -> torch.Tensor:
    """Mean of ``targets.get`` over ``image_index`` (read in chunks: full-size targets are large)."""
    total, count = None, 0
    for i in range(0, len(image_index), chunk):
        t = targets.get(image_index[i:i + chunk]).double()
        total = t.sum(0) if total is None else total + t.sum(0)
        count += len(t)
    if total is None:
        raise MindEyeError("no training images to average")
    return (total / count).float()


# -- reconstruction ----------------------------------------------------------------------------------------------
def mean_train_image(store: Any, chunk: int = 256) -> torch.Tensor:
    """The mean training image of a subject store, float (3, S, S) in [0, 1] (read in chunks)."""
    idx = store.image_indices("train")
    if len(idx) == 0:
        raise MindEyeError(f"{store.path} has no training images to average")
    total = None
    for i in range(0, len(idx), chunk):
        block = torch.from_numpy(np.asarray(store.images[idx[i:i + chunk]])).double().sum(0)
        total = block if total is None else total + block
    return (total / len(idx) / 255.0).permute(2, 0, 1).float()


class Pairings:
    """Scores ``reals`` against re-paired image sets. Every image set is prepared once: PixCorr / SSIM inputs
    (:class:`mindeye.evaluation.metrics.PixelCache`) and the feature networks' features
    (:class:`~mindeye.evaluation.metrics.NetFeatureCache`), so a pairing costs one comparison per metric."""

    def __init__(self, reals: Any, nets: Any, keys: Sequence[str], **metric_kwargs: Any) -> None:
        from mindeye.evaluation.metrics import PIXEL_METRICS

        self.reals, self.nets, self.keys, self.kwargs = reals, nets, list(keys), metric_kwargs
        self.pixel_keys = [k for k in self.keys if k in PIXEL_METRICS]
        self.net_keys = [k for k in self.keys if k not in PIXEL_METRICS]
        self.real_cache = self.prepare(reals)

    def prepare(self, images: Any) -> tuple[Any, Any]:
        """An image set ready for :meth:`values`: (its pixel cache, its network features), each None if unused."""
        from mindeye.evaluation.metrics import NetFeatureCache, PixelCache

        kw = self.kwargs
        pixel = (PixelCache(images, **{k: kw[k] for k in ("batch_size", "device", "first_resize") if k in kw})
                 if self.pixel_keys else None)
        net = (NetFeatureCache(images, self.nets, self.net_keys, **{k: kw[k] for k in (
            "batch_size", "device", "first_resize", "net_resize") if k in kw}) if self.net_keys else None)
        return pixel, net

    def values(self, prepared: tuple[Any, Any], rows: np.ndarray | None = None) -> dict[str, float]:
        """Mean metrics of real i paired with image ``rows[i]`` of ``prepared`` (default: image i)."""
        from mindeye.evaluation.metrics import paired_net_values, paired_pixel_values

        rows = np.arange(len(self.reals)) if rows is None else np.asarray(rows)
        vals: dict[str, Any] = {}
        if self.pixel_keys:
            vals.update(paired_pixel_values(self.real_cache[0], prepared[0], rows, self.pixel_keys))
        if self.net_keys:
            vals.update(paired_net_values(self.real_cache[1], prepared[1], rows))
        return {m: float(vals[m].mean()) for m in self.keys if m in vals}


def recon_chance(pairs: Pairings) -> dict[str, float]:
    """Empirical chance: the true images against a derangement of themselves (seed 0); two-way metrics
    exactly 0.5."""
    from mindeye.evaluation.metrics import TWO_WAY_METRICS

    out = pairs.values(pairs.real_cache, derangement(len(pairs.reals), 0))
    out.update({m: 0.5 for m in pairs.keys if m in TWO_WAY_METRICS})
    return out


def recon_mean_image(pairs: Pairings, mean_image: torch.Tensor) -> dict[str, float]:
    """The mean training image (float (3, S, S)) as every reconstruction."""
    return pairs.values(pairs.prepare(mean_image.unsqueeze(0)), np.zeros(len(pairs.reals), dtype=np.int64))


def recon_floors(pairs: Pairings, fakes: Any, model_values: Mapping[str, dict], chance: Mapping[str, float],
                 mean_image: Mapping[str, float] | None, ceiling_values: Mapping[str, dict] | None,
                 seeds: Sequence[int] = SHUFFLE_SEEDS) -> dict[str, Any]:
    """Floors of reconstruction metrics for one directory's images ``fakes`` (paired with ``pairs.reals``): the
    shuffled brain (the reconstructions against a derangement of the reals: the model's outputs for other brain
    samples), with ``chance`` (:func:`recon_chance`) and ``mean_image`` (:func:`recon_mean_image`) computed
    once per image set."""
    keys = [m for m in pairs.keys if "value" in model_values.get(m, {})]
    if not keys:
        return {}
    n = len(pairs.reals)
    prepared = pairs.prepare(fakes)
    shuffled = [pairs.values(prepared, derangement(n, s)) for s in seeds]
    ceiling = None
    if ceiling_values:
        ceiling = {m: float(v["value"]) for m, v in ceiling_values.items() if m in keys and "value" in v}
    model = {m: float(model_values[m]["value"]) for m in keys}
    return summarise(model, {m: chance[m] for m in keys if m in chance},
                     None if mean_image is None else {m: mean_image[m] for m in keys if m in mean_image},
                     shuffled, ceiling, seeds, notes={
        "chance": "the true images paired with a derangement of themselves (two-way identification: exactly 0.5)",
        "shuffled_brain": "each image paired with the reconstruction of another test sample's voxels "
                          "(a derangement per seed)",
        "mean_train_image": "the mean training image as every reconstruction",
    })


# -- comparing two runs --------------------------------------------------------------------------------------------
def paired_test(a: Sequence[float], b: Sequence[float], n_boot: int = 10000, seed: int = 0,
                level: float = 0.95) -> dict[str, Any]:
    """Paired comparison of per-image values: mean difference b - a, its paired bootstrap interval (percentile,
    images resampled with replacement) and the Wilcoxon signed-rank test (scipy, two-sided)."""
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise MindEyeError(f"paired values must be two vectors of one length, got {a.shape} and {b.shape}")
    if len(a) < 2:
        raise MindEyeError("a paired comparison needs at least 2 images")
    d = b - a
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    lo, hi = np.quantile(boot, [(1 - level) / 2, 1 - (1 - level) / 2])
    if np.all(d == 0):
        w_stat, p = float("nan"), 1.0
    else:
        w = stats.wilcoxon(a, b)
        w_stat, p = float(w.statistic), float(w.pvalue)
    return {"n": int(len(d)), "mean_a": float(a.mean()), "mean_b": float(b.mean()), "mean_diff": float(d.mean()),
            "ci95": [float(lo), float(hi)], "n_boot": n_boot, "wilcoxon_statistic": w_stat, "wilcoxon_p": p}


# -- bottleneck (BrainBits-style) ----------------------------------------------------------------------------------
def log_grid(n_max: int) -> list[int]:
    """1, 2, 4, ... up to n_max (n_max itself included)."""
    ks, k = [], 1
    while k < n_max:
        ks.append(k)
        k *= 2
    return [*ks, n_max]


def bottleneck_curve(brain: torch.Tensor, images: torch.Tensor, pool: int, draws: int, seed: int, ci: str,
                     draw_mode: str, ks: Sequence[int] | None = None) -> dict[str, Any]:
    """Retrieval when the brain embeddings are projected onto their top-k principal components (fitted on
    these test embeddings; no target is used; :func:`mindeye.utils.pca.fit_top_k`), k on a log grid up to the
    embeddings' rank."""
    from mindeye.utils.pca import fit_top_k

    x = torch.as_tensor(brain).flatten(1)
    images = torch.as_tensor(images).flatten(1)
    pca = fit_top_k(x)
    ks = sorted({int(k) for k in (ks or log_grid(max(pca.rank, 1))) if 1 <= int(k) <= len(x)})
    points = []
    for k in ks:
        vals = retrieval_values(pca.project(x, k), images, pool, draws, seed, ci, draw_mode)
        points.append({"k": k, "explained_variance": pca.explained_variance(k), **vals})
    return {"fitted_on": "the test brain embeddings (unsupervised PCA)", "rank": pca.rank, "points": points}


# -- tables --------------------------------------------------------------------------------------------------------
FLOOR_COLUMNS = ("model", "chance", "mean training image", "shuffled brain (mean ± sd)", "ceiling",
                 "fraction floor→ceiling")


def floor_table_rows(floors: Mapping[str, Any]) -> list[list[str]]:
    """One text row per metric: the model, each floor, the ceiling and the fraction (with where it lies)."""
    def fmt(v: Any) -> str:
        return "—" if v is None else f"{v:.4g}"

    sh = floors.get("shuffled_brain") or {}
    rows = []
    for k in floors.get("metrics", []):
        pos = (floors.get("fraction") or {}).get(k) or {}
        mean, sd = (sh.get("mean") or {}).get(k), (sh.get("sd") or {}).get(k)
        frac = "—" if pos.get("value") is None else f"{pos['value']:.2f}"
        if pos.get("where") in ("below floor", "above ceiling"):
            frac += f" ({pos['where'].upper()})"
        rows.append([k, fmt(floors["model"].get(k)), fmt(floors["chance"].get(k)),
                     fmt((floors.get("mean_train_image") or {}).get(k)),
                     "—" if mean is None else f"{mean:.4g} ± {sd:.2g}" if sd is not None else f"{mean:.4g} (1 seed)",
                     fmt((floors.get("ceiling") or {}).get(k)),
                     frac])
    return rows


FLOOR_NOTE = ("Floors are measured by the same code on the same images: chance (exact 1/N, k/N, 0.5 for two-way; "
              "else the true images against a derangement of themselves), the mean training image (retrieval: the "
              "mean training target) as every prediction, and the shuffled brain (the model fed other test samples' "
              "voxels: the method-specific random baseline). Ceiling: the true image's own targets through the same "
              "decoder / generator (retrieval: 100% by definition). Fraction = (model - shuffled brain) / (ceiling - "
              "shuffled brain): 0 at the floor, 1 at the ceiling (the same formula for lower-is-better metrics).")


def floors_markdown(blocks: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """Markdown tables of several ``(name, floors)`` blocks, each followed by its out-of-range sentences."""
    lines = ["### Floors and ceilings", ""]
    for name, floors in blocks:
        lines += [f"**{name}**", "", "| metric | " + " | ".join(FLOOR_COLUMNS) + " |",
                  "|---" * (len(FLOOR_COLUMNS) + 1) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in floor_table_rows(floors)]
        lines += ["", *outside_lines(name, floors), ""]
    lines.append(FLOOR_NOTE)
    return "\n".join(lines) + "\n"
