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
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mindeye.data.scenes import attribute_names, attribute_vector, caption, render_scenes, sample_scenes
from mindeye.data.store import StoreWriter, TrialTable, check_output_dir
from mindeye.errors import MindEyeError

MODEL_STREAM, STIMULUS_STREAM, NOISE_STREAM, DESIGN_STREAM = 0, 1, 2, 3
FEATURE_MAPS = ("luminance", "red-green", "blue-yellow", "contrast-fine", "contrast-coarse",
                "orientation-0", "orientation-45", "orientation-90", "orientation-135")


@dataclass(frozen=True)
class BrainSpec:
    """The synthetic brain: encoding model and measurement noise (identical at every scale)."""

    grid: int = 32  # feature maps of the low-level model are computed on a grid x grid downsampling
    frac_low: float = 0.4  # early visual (V1-V3-like) voxels: retinotopic, low-level features only
    frac_mid: float = 0.2  # V4/LO-like voxels: a mixture of low- and high-level responses
    ncsnr_median: tuple[float, float, float] = (0.5, 0.4, 0.32)  # per area (low, mid, high), NSD-like
    ncsnr_log_sd: float = 0.55  # spread of log ncsnr across voxels
    # Share of each voxel's repeatable variance that the encoding model explains; the rest is
    # image-specific variance that no stimulus feature predicts (as for real voxels, whose best
    # encoding models fall well short of the noise ceiling). It caps how decodable images are.
    explained_fraction: float = 0.6
    unexplained_factors: int = 16  # part of that rest is shared by voxels (low rank)
    shared_noise_fraction: float = 0.3  # part of the noise variance shared across voxels (low rank)
    noise_factors: int = 8
    drift_offset_sd: float = 0.3  # per-session random-walk step of each voxel's offset (signal sd units)
    drift_gain_sd: float = 0.08  # per-session random-walk step of each voxel's log gain


@dataclass(frozen=True)
class ScaleSpec:
    """Shapes of one simulated subject."""

    name: str
    image_size: int
    n_voxels: int
    n_train_images: int
    n_train_trials: int
    n_test_images: int
    n_test_trials: int
    n_sessions: int
    session_length: int  # trials per session; the last session holds the remainder
    brain: BrainSpec = field(default_factory=BrainSpec)

    @property
    def n_images(self) -> int:
        return self.n_train_images + self.n_test_images

    @property
    def n_trials(self) -> int:
        return self.n_train_trials + self.n_test_trials

    def session_sizes(self) -> list[int]:
        last = self.n_trials - (self.n_sessions - 1) * self.session_length
        return [self.session_length] * (self.n_sessions - 1) + [last]

    def validate(self) -> None:
        for split, images, trials in (("train", self.n_train_images, self.n_train_trials),
                                      ("test", self.n_test_images, self.n_test_trials)):
            if not images <= trials <= 3 * images:
                raise MindEyeError(f"scale {self.name!r}: {trials} {split} trials for {images} images; "
                                   "each image needs 1-3 trials")
        if self.n_sessions < 3:
            raise MindEyeError(f"scale {self.name!r}: need >= 3 sessions to spread 3 repetitions")
        if not 0 < self.session_sizes()[-1] <= self.session_length:
            raise MindEyeError(f"scale {self.name!r}: {self.n_trials} trials do not fill {self.n_sessions} "
                               f"sessions of {self.session_length}")
        if self.image_size % self.brain.grid:
            raise MindEyeError(f"scale {self.name!r}: image size must be a multiple of {self.brain.grid}")


SCALES: dict[str, ScaleSpec] = {
    # unit tests: generated in about a second
    "tiny": ScaleSpec("tiny", image_size=64, n_voxels=600, n_train_images=240, n_train_trials=640,
                      n_test_images=60, n_test_trials=176, n_sessions=4, session_length=204),
    # CPU demo: trains in minutes on 2 cores; 300 test images for 300-way retrieval
    "small": ScaleSpec("small", image_size=128, n_voxels=2000, n_train_images=1500, n_train_trials=4200,
                       n_test_images=300, n_test_trials=900, n_sessions=12, session_length=425),
    # NSD subject 1 as used by MindEye: 37 sessions x 750 trials, 15,724 nsdgeneral voxels,
    # 8,859 training images / 24,980 trials, 982 shared test images / 2,770 trials
    "nsd": ScaleSpec("nsd", image_size=256, n_voxels=15724, n_train_images=8859, n_train_trials=24980,
                     n_test_images=982, n_test_trials=2770, n_sessions=37, session_length=750),
}


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
    repetition = np.zeros(len(trial_image), dtype=np.int64)
    seen = np.zeros(spec.n_images, dtype=np.int64)
    for t, img in enumerate(trial_image.tolist()):
        repetition[t] = seen[img]
        seen[img] += 1
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

    def combine(self, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """Standardise both parts over images, mix the mid-level voxels, return (N, n_voxels) float32."""
        def standardise(a: np.ndarray) -> np.ndarray:
            a -= a.mean(0)
            a /= a.std(0) + 1e-8
            return a

        low, high = standardise(low), standardise(high)
        signal = np.empty((len(low), len(self.area)), dtype=np.float32)
        low_area, high_area = self.area[self.low_cols], self.area[self.high_cols]
        signal[:, self.low_cols[low_area == 0]] = low[:, low_area == 0]
        signal[:, self.high_cols[high_area == 2]] = high[:, high_area == 2]
        a = self.mix.astype(np.float32)
        signal[:, self.low_cols[low_area == 1]] = np.sqrt(a) * low[:, low_area == 1] \
            + np.sqrt(1 - a) * high[:, high_area == 1]
        return standardise(signal)


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
    signal -= signal.mean(0)
    signal /= signal.std(0) + 1e-8


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
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False)


def simulate_subject(out: str | Path, scale: str = "small", seed: int = 0, overwrite: bool = False,
                     progress: bool = True, chunk: int = 256) -> Path:
    """Generate the simulated subject ``scale`` (a key of :data:`SCALES`) into the store ``out``.

    Streams: images are rendered ``chunk`` at a time straight into the store's memory map, voxels
    are produced one session at a time; peak memory is dominated by the noiseless responses
    (n_images x n_voxels float32, ~0.6 GB at the nsd scale).
    """
    if scale not in SCALES:
        raise MindEyeError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise MindEyeError(f"seed must be a non-negative integer, got {seed!r}")
    spec = SCALES[scale]
    spec.validate()
    out = Path(out)
    check_output_dir(out, overwrite)
    t0 = time.perf_counter()
    brain = spec.brain

    design = make_design(spec, np.random.default_rng([seed, DESIGN_STREAM]))
    scenes = sample_scenes(seed, range(spec.n_images))
    attrs = np.stack([attribute_vector(s) for s in scenes])
    model = EncodingModel(spec.n_voxels, brain, np.random.default_rng([seed, MODEL_STREAM]), attrs)

    writer = StoreWriter(out, n_trials=spec.n_trials, n_voxels=spec.n_voxels, n_images=spec.n_images,
                         image_size=spec.image_size, voxel_dtype="float16", overwrite=overwrite)
    low = np.empty((spec.n_images, len(model.low_cols)), dtype=np.float32)
    starts = range(0, spec.n_images, chunk)
    for start in _progress(starts, progress, f"rendering {spec.n_images} images", "chunk", len(starts)):
        images = render_scenes(scenes[start:start + chunk], spec.image_size)
        writer.write_images(start, images)
        low[start:start + len(images)] = model.low_level(images)
    signal = model.combine(low, model.high_level(attrs))
    del low
    _add_unexplained(signal, brain, np.random.default_rng([seed, MODEL_STREAM, 1]), chunk)

    # Noise: per-voxel level from the target ncsnr (signal sd is 1), part shared across voxels.
    noise_rng = np.random.default_rng([seed, NOISE_STREAM, 0])
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

    start = 0
    for s, size in enumerate(_progress(spec.session_sizes(), progress, "simulating sessions", "session")):
        rng = np.random.default_rng([seed, NOISE_STREAM, s + 1])
        rows = design.image_index[start:start + size]
        noise = rng.standard_normal((size, spec.n_voxels), dtype=np.float32) * private
        noise += (rng.standard_normal((size, brain.noise_factors), dtype=np.float32) * shared) @ loadings
        x = (signal[rows] + noise * noise_sd) * gain[s].astype(np.float32) + offset[s].astype(np.float32)
        # NSD preprocessing: z-score every voxel over all trials of the session.
        x -= x.mean(0)
        x /= x.std(0) + 1e-6
        writer.write_voxels(start, x.astype(np.float16))
        start += size
    del signal

    reliability = measure_reliability(writer.voxels, design)
    reliability["target_ncsnr_median"] = round(float(np.median(ncsnr_target)), 4)
    split_sizes = {sp: {"images": int(len(np.unique(design.image_index[design.split == sp]))),
                        "trials": int((design.split == sp).sum())} for sp in ("train", "val", "test")}
    writer.set_trials(design)
    image_ids = [f"sim{seed}_{i:05d}" for i in range(spec.n_images)]
    writer.set_images(image_ids, [caption(s) for s in scenes])
    image_split = np.where(np.arange(spec.n_images) < spec.n_test_images, "test", "train")
    attributes = [{"image_id": iid, "split": str(sp), **scene}
                  for iid, sp, scene in zip(image_ids, image_split, scenes)]
    voxel_info = {
        "area": [["low", "mid", "high"][a] for a in model.area.tolist()],
        "ncsnr_target": np.round(ncsnr_target, 4).tolist(),
        "rf": {str(int(c)): [round(float(x), 4), round(float(y), 4), round(float(r), 4)]
               for c, x, y, r in zip(model.low_cols, model.rf_x, model.rf_y, model.rf_size)},
    }
    meta = {
        "source": "simulated",
        "subject": f"sim-{scale}-seed{seed}",
        "preprocessing": "per-session z-score",
        "splits": split_sizes,
        "simulation": {"scale": scale, "seed": seed, "spec": asdict(spec), "feature_maps": list(FEATURE_MAPS),
                       "attribute_names": attribute_names(), "reliability": reliability},
    }
    path = writer.finalize(meta, extra_files={"attributes.json": json.dumps(attributes),
                                              "voxel_info.json": json.dumps(voxel_info)})
    if progress:
        print(f"simulated subject '{scale}' (seed {seed}) in {time.perf_counter() - t0:.1f} s: "
              f"single-trial split-half r median {reliability['split_half_r_median']:.3f}, "
              f"ncsnr median {reliability['ncsnr_median']:.3f}")
    return path
