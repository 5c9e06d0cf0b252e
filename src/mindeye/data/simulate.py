"""The simulated subject: procedural scenes seen by a fixed synthetic brain (docs/simulated-subject.md).

``simulate_subject(out, scale, seed)`` writes a subject store shaped like an NSD subject:

* stimuli: :mod:`mindeye.data.scenes` (1-3 objects of 12 categories over 5 background types);
* brain: low-level voxels with Gaussian receptive fields over local luminance / colour-opponent /
  contrast / orientation energy maps followed by a compressive nonlinearity; high-level voxels tuned
  (linear-nonlinear) to scene attributes such as category, colour, texture, numerosity and layout;
  mid-level voxels mix the two;
* measurement: per-voxel noise with NSD-like single-trial reliability (part of it shared across
  voxels), a slow random-walk drift of every voxel's offset and gain across sessions, up to 3
  repetitions per image spread over different sessions, then per-session z-scoring as NSD's
  preprocessing does.

Separate random streams (``default_rng([seed, stream, ...])``) drive the encoding model, the
stimuli, the noise and the trial design, so changing one leaves the others unchanged.

``simulate_cohort(out, n, scale, seed)`` writes n such subjects who share the test images and
differ in everything else (own training images, voxel count, encoding model, noise, drift);
``train_sessions=N`` makes few-session stores of either.

Over ~400 lines on purpose: the synthetic brain (receptive fields, tuning, noise, drift) and the
subject/cohort writers are one generative model whose parts share seeds and random streams.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mindeye.data.scales import MAX_COHORT, SCALES, BrainSpec, ScaleSpec  # noqa: F401 (re-exported)
from mindeye.data.scenes import attribute_names, attribute_vector, caption, render_scenes, sample_scenes
from mindeye.data.sessions import number_repetitions
from mindeye.data.store import StoreWriter, TrialTable, check_output_dir
from mindeye.errors import MindEyeError
from mindeye.utils.files import replace_dir

MODEL_STREAM, STIMULUS_STREAM, NOISE_STREAM, DESIGN_STREAM = 0, 1, 2, 3
FEATURE_MAPS = ("luminance", "red-green", "blue-yellow", "contrast-fine", "contrast-coarse",
                "orientation-0", "orientation-45", "orientation-90", "orientation-135")

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# trial design
# --------------------------------------------------------------------------------------------
def make_design(spec: ScaleSpec, rng: np.random.Generator) -> TrialTable:
    """NSD-like trial layout: test images = indices [0, n_test), train = the rest.

    Most images are shown 3 times, a few 1-2 times (as images whose later repetitions fell in
    NSD's withheld sessions); an image's repetitions always lie in different sessions; trials are
    in chronological order and ``repetition`` counts earlier presentations of the same image.
    """
    counts = np.full(spec.n_images, 3, dtype=np.int64)
    for first, n_img, n_trials in ((0, spec.n_test_images, spec.n_test_trials),
                                   (spec.n_test_images, spec.n_train_images, spec.n_train_trials)):
        deficit = 3 * n_img - n_trials
        n_once = min(deficit // 5, n_img)  # images seen once; the rest of the deficit is seen twice
        n_twice = deficit - 2 * n_once
        chosen = first + rng.permutation(n_img)[: n_once + n_twice]
        counts[chosen[:n_once]] = 1
        counts[chosen[n_once:]] = 2
    trial_image, session = _assign_sessions(counts, spec.session_sizes(), rng)
    # Shuffle within sessions, then order chronologically (session-major).
    order = np.lexsort((rng.random(len(session)), session))
    trial_image, session = trial_image[order], session[order]
    repetition = number_repetitions(trial_image)
    split = np.where(trial_image < spec.n_test_images, "test", "train")
    return TrialTable(image_index=trial_image.astype(np.int64), session=session + 1,
                      repetition=repetition, split=split)


def _assign_sessions(counts: np.ndarray, sizes: list[int], rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Give each image ``counts[i]`` distinct sessions, filling every session exactly to its size.

    Images are placed most-repeated first, each into sessions drawn with probability proportional
    to their remaining room, which keeps the room balanced so the 1-2 repetition images at the end
    always fit.
    """
    room = np.asarray(sizes, dtype=np.int64).copy()
    order = np.concatenate([rng.permutation(np.flatnonzero(counts == c)) for c in (3, 2, 1)])
    images, sessions = [], []
    for img in order.tolist():
        c = int(counts[img])
        open_sessions = np.flatnonzero(room > 0)
        if len(open_sessions) < c:  # pragma: no cover - only with degenerate specs
            raise MindEyeError("could not spread repetitions over sessions; use more or longer sessions")
        p = room[open_sessions] / room[open_sessions].sum()
        chosen = rng.choice(open_sessions, c, replace=False, p=p)
        room[chosen] -= 1
        images += [img] * c
        sessions += chosen.tolist()
    return np.asarray(images, dtype=np.int64), np.asarray(sessions, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# encoding model
# --------------------------------------------------------------------------------------------
def feature_maps(images: np.ndarray, grid: int = 32) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, 9, grid*grid) float32 low-level maps (see FEATURE_MAPS), roughly unit scale."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    fine = F.avg_pool2d(x, x.shape[-1] // (2 * grid))  # (N, 3, 2g, 2g)
    r, g, b = fine[:, 0:1], fine[:, 1:2], fine[:, 2:3]
    lum = 0.299 * r + 0.587 * g + 0.114 * b

    def blur(a: torch.Tensor, k: int) -> torch.Tensor:
        return F.avg_pool2d(F.pad(a, (k // 2,) * 4, mode="replicate"), k, stride=1)

    def pool(a: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(a, 2)

    lum_g = pool(lum)
    gx = torch.diff(lum, dim=3, append=lum[..., -1:])
    gy = torch.diff(lum, dim=2, append=lum[..., -1:, :])
    orient = [gx**2, (gx + gy) ** 2 / 2, gy**2, (gx - gy) ** 2 / 2]
    maps = [(lum_g - 0.45) / 0.2, pool(r - g) / 0.25, pool(b - (r + g) / 2) / 0.2,
            pool((lum - blur(lum, 3)) ** 2).sqrt() / 0.03, (lum_g - blur(lum_g, 5)).abs() / 0.04]
    maps += [pool(o).sqrt() / 0.03 for o in orient]
    return torch.cat(maps, dim=1).reshape(len(x), len(FEATURE_MAPS), grid * grid).numpy()


class EncodingModel:
    """Fixed synthetic brain: image (and its scene attributes) -> noiseless voxel responses."""

    def __init__(self, n_voxels: int, brain: BrainSpec, rng: np.random.Generator,
                 attr_reference: np.ndarray) -> None:
        self.brain = brain
        n_low, n_mid = round(n_voxels * brain.frac_low), round(n_voxels * brain.frac_mid)
        area = np.array([0] * n_low + [1] * n_mid + [2] * (n_voxels - n_low - n_mid))
        self.area = rng.permutation(area)  # 0 low, 1 mid, 2 high; voxel order carries no hint
        self.low_cols = np.flatnonzero(self.area < 2)  # voxels with a low-level component
        self.high_cols = np.flatnonzero(self.area > 0)
        n_l, n_h = len(self.low_cols), len(self.high_cols)

        # Retinotopy: eccentricity denser near the fovea, receptive-field size growing with
        # eccentricity and along the hierarchy (mid-level voxels ~3x larger).
        ecc = 0.75 * rng.random(n_l) ** 1.5
        angle = rng.uniform(0, 2 * np.pi, n_l)
        self.rf_x, self.rf_y = 0.5 + ecc * np.cos(angle), 0.5 + ecc * np.sin(angle)
        self.rf_size = (0.02 + 0.12 * ecc) * np.where(self.area[self.low_cols] == 1, 3.0, 1.0) \
            * rng.uniform(0.7, 1.4, n_l)
        g = brain.grid
        c = (np.arange(g) + 0.5) / g
        wx = np.exp(-((c[None, :] - self.rf_x[:, None]) ** 2) / (2 * self.rf_size[:, None] ** 2))
        wy = np.exp(-((c[None, :] - self.rf_y[:, None]) ** 2) / (2 * self.rf_size[:, None] ** 2))
        rf = (wy[:, :, None] * wx[:, None, :]).reshape(n_l, g * g)
        self.rf = (rf / rf.sum(1, keepdims=True)).T.astype(np.float32)  # (g*g, n_l)
        # Per-voxel weighting of the feature maps: signed for luminance and colour opponency,
        # positive for energies, with one preferred orientation.
        w = np.empty((len(FEATURE_MAPS), n_l))
        w[0] = rng.normal(0, 1, n_l)
        w[1:3] = rng.normal(0, 0.8, (2, n_l))
        w[3:5] = np.abs(rng.normal(0, 1, (2, n_l)))
        w[5:] = np.abs(rng.normal(0, 0.3, (4, n_l)))
        w[5 + rng.integers(4, size=n_l), np.arange(n_l)] += np.abs(rng.normal(1, 0.4, n_l))
        self.feature_weights = w.astype(np.float32)
        self.low_threshold = rng.normal(0, 0.5, n_l).astype(np.float32)

        # High level: each voxel prefers one attribute group (category-, colour-, texture-,
        # scene-, size/number- or position-selective), strongly tuned to 1-2 attributes in it.
        names = attribute_names()
        groups = {"category": [], "color": [], "texture": [], "scene": [], "size": [], "position": []}
        for i, n in enumerate(names):
            key = n.split(":")[0]
            key = {"background": "scene", "n_objects": "size", "occupancy": "position"}.get(key, key)
            groups[key].append(i)
        group_list = list(groups.values())
        prefer = rng.choice(len(group_list), n_h, p=[0.35, 0.15, 0.1, 0.15, 0.1, 0.15])
        self.attr_mean = attr_reference.mean(0).astype(np.float32)
        self.attr_scale = (attr_reference.std(0) + 0.05).astype(np.float32)
        wa = rng.normal(0, 0.15, (len(names), n_h))
        for v in range(n_h):
            dims = group_list[prefer[v]]
            wa[dims, v] += rng.normal(0, 0.4, len(dims))
            top = rng.choice(dims, size=min(len(dims), int(rng.integers(1, 3))), replace=False)
            wa[top, v] += rng.uniform(0.8, 1.5, len(top))
        self.attr_weights = wa.astype(np.float32)
        self.high_threshold = rng.normal(0.5, 0.5, n_h).astype(np.float32)
        self.mix = rng.uniform(0.3, 0.7, n_mid)  # low-level share of each mid-level voxel's variance

    def low_level(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 -> (N, n_low_cols) responses of the voxels with a low-level part."""
        maps = feature_maps(images, self.brain.grid)  # (N, F, g*g)
        n, f, _ = maps.shape
        # Each map seen through each voxel's receptive field: one 2-D matmul (fast BLAS path).
        pooled = (maps.reshape(n * f, -1) @ self.rf).reshape(n, f, -1)
        drive = (pooled * self.feature_weights).sum(1)
        return np.sqrt(np.logaddexp(0, drive - self.low_threshold))  # compressive: sqrt of softplus

    def high_level(self, attrs: np.ndarray) -> np.ndarray:
        """(N, D) scene attribute vectors -> (N, n_high_cols) responses."""
        z = (attrs - self.attr_mean) / self.attr_scale
        return np.logaddexp(0, 1.5 * (z @ self.attr_weights - self.high_threshold))

    def respond(self, images: np.ndarray, attrs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw responses of a chunk of images: (N, n_voxels) with the mid-level columns left at 0,
        and the low- and high-level parts (N, n_mid) of the mid-level voxels, to be mixed by
        :meth:`mix_mid` once every part is standardised over all images."""
        low, high = self.low_level(images), self.high_level(attrs)
        low_area, high_area = self.area[self.low_cols], self.area[self.high_cols]
        out = np.zeros((len(images), len(self.area)), dtype=np.float32)
        out[:, self.low_cols[low_area == 0]] = low[:, low_area == 0]
        out[:, self.high_cols[high_area == 2]] = high[:, high_area == 2]
        return out, low[:, low_area == 1], high[:, high_area == 1]

    def mix_mid(self, signal: np.ndarray, mid_low: np.ndarray, mid_high: np.ndarray, chunk: int) -> None:
        """Write the mid-level voxels (in place) as a mixture of their standardised parts."""
        cols = self.low_cols[self.area[self.low_cols] == 1]
        a = self.mix.astype(np.float32)
        for start in range(0, len(signal), chunk):
            rows = slice(start, start + chunk)
            signal[rows, cols] = np.sqrt(a) * mid_low[rows] + np.sqrt(1 - a) * mid_high[rows]


def _standardise_columns(a: np.ndarray, chunk: int = 1024) -> None:
    """Give every column of ``a`` zero mean and unit variance, in place, a block of rows at a time."""
    total, sq = np.zeros(a.shape[1]), np.zeros(a.shape[1])
    for start in range(0, len(a), chunk):
        block = a[start:start + chunk].astype(np.float64)
        total += block.sum(0)
        sq += (block * block).sum(0)
    mean = total / len(a)
    sd = np.sqrt(np.maximum(sq / len(a) - mean**2, 0)) + 1e-8
    mean, inv = mean.astype(np.float32), (1 / sd).astype(np.float32)
    for start in range(0, len(a), chunk):
        block = a[start:start + chunk]
        block -= mean
        block *= inv


def _add_unexplained(signal: np.ndarray, brain: BrainSpec, rng: np.random.Generator, chunk: int) -> None:
    """Mix (in place) image-specific variance unrelated to any scene feature into the responses."""
    n_img, n_vox = signal.shape
    loadings = rng.normal(0, 1, (brain.unexplained_factors, n_vox))
    loadings = (loadings / np.linalg.norm(loadings, axis=0)).astype(np.float32)
    keep, add = np.float32(np.sqrt(brain.explained_fraction)), np.float32(np.sqrt(1 - brain.explained_fraction))
    half = np.float32(np.sqrt(0.5))
    for start in range(0, n_img, chunk):
        rows = slice(start, start + chunk)
        n = len(signal[rows])
        extra = rng.standard_normal((n, n_vox), dtype=np.float32) * half
        extra += (rng.standard_normal((n, brain.unexplained_factors), dtype=np.float32) * half) @ loadings
        signal[rows] = keep * signal[rows] + add * extra
    _standardise_columns(signal, chunk)


# --------------------------------------------------------------------------------------------
# reliability
# --------------------------------------------------------------------------------------------
def measure_reliability(voxels: np.ndarray, trials: TrialTable, block: int = 2048) -> dict[str, float]:
    """NSD-style reliability of (already z-scored) trial responses.

    * split-half: per voxel, correlation across images of the repetition-0 and repetition-1 responses;
    * ncsnr: per voxel sd(signal) / sd(noise) from images with 3 repetitions (NSD's definition), and the
      noise ceiling 100 * ncsnr^2 / (ncsnr^2 + 1/n) for single trials (n=1) and 3-trial averages (n=3).
    """
    n_img = int(trials.image_index.max()) + 1
    by_rep = np.full((n_img, 3), -1, dtype=np.int64)
    by_rep[trials.image_index, trials.repetition] = np.arange(len(trials))
    pairs = by_rep[(by_rep[:, 1] >= 0)][:, :2]
    triples = by_rep[(by_rep >= 0).all(1)]
    split_half, ncsnr = [], []
    for start in range(0, voxels.shape[1], block):
        cols = slice(start, start + block)
        a = np.asarray(voxels[pairs[:, 0], cols], dtype=np.float64)
        b = np.asarray(voxels[pairs[:, 1], cols], dtype=np.float64)
        a -= a.mean(0)
        b -= b.mean(0)
        split_half.append((a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0)))
        x = np.stack([np.asarray(voxels[triples[:, k], cols], dtype=np.float64) for k in range(3)], 1)
        noise_var = x.var(1, ddof=1).mean(0)
        total_var = x.reshape(-1, x.shape[-1]).var(0)
        ncsnr.append(np.sqrt(np.clip(total_var - noise_var, 0, None) / noise_var))
    sh, nc = np.concatenate(split_half), np.concatenate(ncsnr)
    ceiling = {n: 100 * nc**2 / (nc**2 + 1 / n) for n in (1, 3)}
    return {
        "split_half_r_median": round(float(np.median(sh)), 4),
        "split_half_r_mean": round(float(sh.mean()), 4),
        "split_half_r_p90": round(float(np.percentile(sh, 90)), 4),
        "ncsnr_median": round(float(np.median(nc)), 4),
        "ncsnr_mean": round(float(nc.mean()), 4),
        "noise_ceiling_pct_single_trial_median": round(float(np.median(ceiling[1])), 2),
        "noise_ceiling_pct_3trial_median": round(float(np.median(ceiling[3])), 2),
        "n_images_split_half": int(len(pairs)),
        "n_images_ncsnr": int(len(triples)),
    }


# --------------------------------------------------------------------------------------------
# the whole subject
# --------------------------------------------------------------------------------------------
def _progress(iterable: Any, enabled: bool, desc: str, unit: str, total: int | None = None) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False)


Stream = Callable[..., np.random.Generator]


def simulate_subject(out: str | Path, scale: str = "small", seed: int = 0, overwrite: bool = False,
                     progress: bool = True, chunk: int = 256, train_sessions: int | None = None) -> Path:
    """Generate the simulated subject ``scale`` (a key of :data:`SCALES`) into the store ``out``.

    Streams: images are rendered ``chunk`` at a time straight into the store's memory map, voxels
    are produced one session at a time; peak memory is dominated by the noiseless responses
    (n_images x n_voxels float32, ~0.6 GB at the nsd scale).

    ``train_sessions=N`` keeps training trials from the first N sessions only (the test trials of
    every session stay): a few-session store whose rows are exactly rows of the full store.
    """
    spec = _checked_spec(scale, seed, train_sessions)
    out = Path(out)
    check_output_dir(out, overwrite)
    t0 = time.perf_counter()
    meta = {"source": "simulated", "subject": f"sim-{scale}-seed{seed}"}
    path, reliability = _simulate_store(
        out, spec, lambda *keys: np.random.default_rng([seed, *keys]), image_seed=seed,
        scene_indices=np.arange(spec.n_images), meta=meta, simulation={"scale": scale, "seed": seed},
        train_sessions=train_sessions, overwrite=overwrite, progress=progress, chunk=chunk)
    log.info(f"simulated subject '{scale}' (seed {seed}) in {time.perf_counter() - t0:.1f} s: "
             f"single-trial split-half r median {reliability['split_half_r_median']:.3f}, "
             f"ncsnr median {reliability['ncsnr_median']:.3f}")
    return path


def _checked_spec(scale: str, seed: Any, train_sessions: int | None) -> ScaleSpec:
    if scale not in SCALES:
        raise MindEyeError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise MindEyeError(f"seed must be a non-negative integer, got {seed!r}")
    spec = SCALES[scale]
    spec.validate()
    if train_sessions is not None and not 1 <= train_sessions <= spec.n_sessions:
        raise MindEyeError(f"--train-sessions must be between 1 and {spec.n_sessions} (the {scale!r} scale has "
                           f"{spec.n_sessions} sessions), got {train_sessions}")
    return spec


def _simulate_store(out: Path, spec: ScaleSpec, stream: Stream, *, image_seed: int, scene_indices: np.ndarray,
                    meta: dict[str, Any], simulation: dict[str, Any], train_sessions: int | None,
                    overwrite: bool, progress: bool, chunk: int) -> tuple[Path, dict[str, float]]:
    """Write one simulated subject; ``stream(*keys)`` gives the subject's random streams.

    Image ``i`` of the store is scene ``scene_indices[i]`` of the seed ``image_seed`` (id
    ``sim{image_seed}_{scene:05d}``), so subjects that share a scene share its id and pixels.
    """
    brain = spec.brain
    design = make_design(spec, stream(DESIGN_STREAM))
    scenes = sample_scenes(image_seed, scene_indices)
    attrs = np.stack([attribute_vector(s) for s in scenes])
    model = EncodingModel(spec.n_voxels, brain, stream(MODEL_STREAM), attrs)

    # Few-session stores keep the test trials of every session and training trials of the first
    # sessions; images only shown in dropped trials are left out (kept images keep their order).
    keep = np.ones(spec.n_trials, dtype=bool) if train_sessions is None else \
        (design.split == "test") | (design.session <= train_sessions)
    kept_images = np.unique(design.image_index[keep])
    store_index = np.full(spec.n_images, -1, dtype=np.int64)
    store_index[kept_images] = np.arange(len(kept_images))
    kept_rows = np.flatnonzero(keep)
    trials = TrialTable(image_index=store_index[design.image_index[kept_rows]], session=design.session[kept_rows],
                        repetition=design.repetition[kept_rows], split=design.split[kept_rows])

    writer = StoreWriter(out, n_trials=len(kept_rows), n_voxels=spec.n_voxels, n_images=len(kept_images),
                         image_size=spec.image_size, voxel_dtype="float16", overwrite=overwrite)
    # Noiseless responses of every image (the only n_images x n_voxels array held in memory).
    signal = np.empty((spec.n_images, spec.n_voxels), dtype=np.float32)
    n_mid = int((model.area == 1).sum())
    mid_low = np.empty((spec.n_images, n_mid), dtype=np.float32)
    mid_high = np.empty((spec.n_images, n_mid), dtype=np.float32)
    starts = range(0, spec.n_images, chunk)
    for start in _progress(starts, progress, f"rendering {spec.n_images} images", "chunk", len(starts)):
        images = render_scenes(scenes[start:start + chunk], spec.image_size)
        rows = slice(start, start + len(images))
        stored = store_index[rows] >= 0  # kept images are contiguous in the store
        if stored.any():
            writer.write_images(int(store_index[rows][stored][0]), images[stored])
        signal[rows], mid_low[rows], mid_high[rows] = model.respond(images, attrs[rows])
    for part in (signal, mid_low, mid_high):
        _standardise_columns(part, chunk)
    model.mix_mid(signal, mid_low, mid_high, chunk)
    del mid_low, mid_high
    _standardise_columns(signal, chunk)
    _add_unexplained(signal, brain, stream(MODEL_STREAM, 1), chunk)

    # Noise: per-voxel level from the target ncsnr (signal sd is 1), part shared across voxels.
    noise_rng = stream(NOISE_STREAM, 0)
    log_median = np.log(np.asarray(brain.ncsnr_median))[model.area]
    ncsnr_target = np.exp(log_median + noise_rng.normal(0, brain.ncsnr_log_sd, spec.n_voxels))
    noise_sd = (1 / ncsnr_target).astype(np.float32)
    loadings = noise_rng.normal(0, 1, (brain.noise_factors, spec.n_voxels))
    loadings = (loadings / np.linalg.norm(loadings, axis=0)).astype(np.float32)
    # Slow drift: random walks over sessions of each voxel's offset and log gain.
    offset = np.cumsum(noise_rng.normal(0, brain.drift_offset_sd, (spec.n_sessions, spec.n_voxels)), 0)
    gain = np.exp(np.cumsum(noise_rng.normal(0, brain.drift_gain_sd, (spec.n_sessions, spec.n_voxels)), 0))
    shared = np.float32(np.sqrt(brain.shared_noise_fraction))
    private = np.float32(np.sqrt(1 - brain.shared_noise_fraction))

    start, written = 0, 0
    for s, size in enumerate(_progress(spec.session_sizes(), progress, "simulating sessions", "session")):
        rng = stream(NOISE_STREAM, s + 1)
        rows = design.image_index[start:start + size]
        noise = rng.standard_normal((size, spec.n_voxels), dtype=np.float32) * private
        noise += (rng.standard_normal((size, brain.noise_factors), dtype=np.float32) * shared) @ loadings
        x = (signal[rows] + noise * noise_sd) * gain[s].astype(np.float32) + offset[s].astype(np.float32)
        # NSD preprocessing: z-score every voxel over all trials of the session.
        x -= x.mean(0)
        x /= x.std(0) + 1e-6
        session_keep = keep[start:start + size]
        if not session_keep.all():
            x = x[session_keep]
        writer.write_voxels(written, x.astype(np.float16))
        start += size
        written += len(x)
    del signal

    reliability = measure_reliability(writer.voxels, trials, block=512)
    reliability["target_ncsnr_median"] = round(float(np.median(ncsnr_target)), 4)
    split_sizes = {sp: {"images": int(len(np.unique(trials.image_index[trials.split == sp]))),
                        "trials": int((trials.split == sp).sum())} for sp in ("train", "val", "test")}
    writer.set_trials(trials)
    image_ids = [f"sim{image_seed}_{int(k):05d}" for k in scene_indices[kept_images]]
    kept_scenes = [scenes[i] for i in kept_images.tolist()]
    writer.set_images(image_ids, [caption(s) for s in kept_scenes])
    image_split = np.where(kept_images < spec.n_test_images, "test", "train")
    attributes = [{"image_id": iid, "split": str(sp), **scene}
                  for iid, sp, scene in zip(image_ids, image_split, kept_scenes)]
    voxel_info = {
        "area": [["low", "mid", "high"][a] for a in model.area.tolist()],
        "ncsnr_target": np.round(ncsnr_target, 4).tolist(),
        "rf": {str(int(c)): [round(float(x), 4), round(float(y), 4), round(float(r), 4)]
               for c, x, y, r in zip(model.low_cols, model.rf_x, model.rf_y, model.rf_size)},
    }
    full_meta = {
        **meta,
        "preprocessing": "per-session z-score",
        "splits": split_sizes,
        **({} if train_sessions is None else {"train_sessions": train_sessions}),
        "simulation": {**simulation, "spec": asdict(spec), "feature_maps": list(FEATURE_MAPS),
                       "attribute_names": attribute_names(), "reliability": reliability},
    }
    path = writer.finalize(full_meta, extra_files={"attributes.json": json.dumps(attributes),
                                                   "voxel_info.json": json.dumps(voxel_info)})
    return path, reliability


# --------------------------------------------------------------------------------------------
# a cohort of subjects
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CohortSpec:
    """How the subjects of a cohort differ. Each factor is spread over the cohort (one value in the
    middle half of each of N equal strata of its range, strata shuffled over subjects), so every
    cohort spans its range as NSD's 8 subjects do (nsdgeneral voxel counts 12,682-17,907)."""

    voxel_factor: tuple[float, float] = (0.8, 1.2)  # n_voxels = scale's n_voxels x factor
    ncsnr_factor: tuple[float, float] = (0.7, 1.3)  # multiplies the per-area ncsnr medians (noise level)
    drift_factor: tuple[float, float] = (0.5, 1.5)  # multiplies the per-session drift step sizes
    frac_low_shift: tuple[float, float] = (-0.05, 0.05)  # added to the share of low-level voxels


COHORT_STREAM = 4  # second entry of a cohort subject's seed tuple: (seed, 4, subject, stream, ...)
VARIATION_STREAM = 4  # per-cohort draw of the subject factors: (seed, 4, 0, 4)


def cohort_variations(n_subjects: int, seed: int, cohort: CohortSpec | None = None) -> list[dict[str, float]]:
    """Per-subject factors of a cohort (deterministic per seed; see :class:`CohortSpec`)."""
    cohort = cohort or CohortSpec()
    rng = np.random.default_rng([seed, COHORT_STREAM, 0, VARIATION_STREAM])
    out: list[dict[str, float]] = [{} for _ in range(n_subjects)]
    for name in ("voxel_factor", "ncsnr_factor", "drift_factor", "frac_low_shift"):
        lo, hi = getattr(cohort, name)
        # one value in the middle half of each stratum: neighbours stay >= half a stratum apart
        u = (rng.permutation(n_subjects) + 0.25 + 0.5 * rng.random(n_subjects)) / n_subjects
        for j in range(n_subjects):
            out[j][name] = round(float(lo + (hi - lo) * u[j]), 4)
    return out


def cohort_subject_spec(spec: ScaleSpec, variation: dict[str, float]) -> ScaleSpec:
    """The scale's spec with one cohort subject's voxel count, noise, drift and area mix."""
    b = spec.brain
    f = variation["ncsnr_factor"]
    brain = replace(b, ncsnr_median=tuple(round(m * f, 4) for m in b.ncsnr_median),
                    drift_offset_sd=round(b.drift_offset_sd * variation["drift_factor"], 4),
                    drift_gain_sd=round(b.drift_gain_sd * variation["drift_factor"], 4),
                    frac_low=round(b.frac_low + variation["frac_low_shift"], 4))
    return replace(spec, n_voxels=int(round(spec.n_voxels * variation["voxel_factor"])), brain=brain)


def cohort_subject_id(j: int) -> str:
    """Id (and store directory name) of the j-th (1-based) subject of a cohort."""
    return f"subj{j:02d}"


def simulate_cohort(out: str | Path, n_subjects: int, scale: str = "small", seed: int = 0,
                    overwrite: bool = False, progress: bool = True, chunk: int = 256,
                    train_sessions: int | None = None) -> Path:
    """Write ``n_subjects`` simulated subjects to ``out/subj01 ...`` plus ``out/cohort.json``.

    Every subject sees the scale's test images, the same scenes for all subjects (like NSD's
    shared 1000), and its own training images (scenes no other subject sees), through its own
    synthetic brain: own voxel count, receptive fields, tuning, noise level and drift. The
    directory appears complete or not at all (built in ``out.partial``).
    """
    if not isinstance(n_subjects, int | np.integer) or not 1 <= n_subjects <= MAX_COHORT:
        raise MindEyeError(f"--cohort must be between 1 and {MAX_COHORT} subjects, got {n_subjects!r}")
    spec = _checked_spec(scale, seed, train_sessions)
    out = Path(out)
    check_output_dir(out, overwrite)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    variations = cohort_variations(n_subjects, seed)
    entries = []
    for j, variation in enumerate(variations, start=1):
        sid = cohort_subject_id(j)
        sub_spec = cohort_subject_spec(spec, variation)
        sub_spec.validate()
        own = spec.n_test_images + (j - 1) * spec.n_train_images + np.arange(spec.n_train_images)
        scene_indices = np.concatenate([np.arange(spec.n_test_images), own])
        cohort_info = {"seed": seed, "scale": scale, "n_subjects": n_subjects, "index": j, "variation": variation}
        path, reliability = _simulate_store(
            tmp / sid, sub_spec, lambda *keys, j=j: np.random.default_rng([seed, COHORT_STREAM, j, *keys]),
            image_seed=seed, scene_indices=scene_indices,
            meta={"source": "simulated", "subject": sid, "subject_id": sid, "cohort": cohort_info},
            simulation={"scale": scale, "seed": seed}, train_sessions=train_sessions, overwrite=False,
            progress=progress, chunk=chunk)
        meta = json.loads((path / "meta.json").read_text())
        entries.append({"subject_id": sid, "store": sid, "n_voxels": sub_spec.n_voxels, **variation,
                        "ncsnr_median": reliability["ncsnr_median"],
                        "split_half_r_median": reliability["split_half_r_median"],
                        "splits": meta["splits"], "checksums": meta["checksums"]})
        log.info(f"  {sid}: {sub_spec.n_voxels} voxels, ncsnr median {reliability['ncsnr_median']:.3f}")
    shared_ids = [f"sim{seed}_{k:05d}" for k in range(spec.n_test_images)]
    cohort = {
        "format_version": 1,
        "source": "simulated",
        "scale": scale,
        "seed": seed,
        "n_subjects": n_subjects,
        "train_sessions": train_sessions,
        "shared_test_images": {"n_images": spec.n_test_images, "first_id": shared_ids[0], "last_id": shared_ids[-1],
                               "ids_sha256": hashlib.sha256("\n".join(shared_ids).encode()).hexdigest()},
        "own_train_images_per_subject": spec.n_train_images,
        "variation_ranges": asdict(CohortSpec()),
        "subjects": entries,
    }
    (tmp / "cohort.json").write_text(json.dumps(cohort, indent=2))
    replace_dir(tmp, out)  # an existing cohort (overwrite=True) goes once the new one is complete
    log.info(f"simulated a cohort of {n_subjects} '{scale}' subjects (seed {seed}) in "
             f"{time.perf_counter() - t0:.1f} s")
    return out


def read_cohort(path: str | Path) -> dict[str, Any]:
    """``cohort.json`` of a cohort directory, with each subject's store path resolved."""
    path = Path(path)
    file = path / "cohort.json"
    if not file.exists():
        raise MindEyeError(f"{path} is not a simulated cohort (no cohort.json); create one with "
                           "`mindeye simulate --cohort N --out DIR`")
    try:
        cohort = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MindEyeError(f"{file} is not valid JSON ({exc}); simulate the cohort again") from None
    for entry in cohort.get("subjects", []):
        entry["path"] = str(path / entry["store"])
    return cohort
