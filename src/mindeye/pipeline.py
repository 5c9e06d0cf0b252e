"""``MindEyePipeline``: trained runs called on voxels in memory, the way a diffusers pipeline is called.

    pipe = MindEyePipeline.from_run("runs/high", lowlevel="runs/low", generator="versatile-diffusion")
    emb = pipe.embed(voxels)                      # backbone / projector outputs as arrays
    hits = pipe.retrieve(voxels, candidates)      # ranked indices + cosines, both directions
    blurry = pipe.blurry(voxels)                  # uint8 low-level reconstructions
    out = pipe.reconstruct(voxels, samples=16)    # best-of-N reconstructions, scores, seeds

Voxels are numpy arrays or torch tensors of shape (n_samples, n_voxels) (or one sample (n_voxels,)),
checked before any model runs. Nothing is written to disk unless asked (:func:`save_images`).

This is a thin layer over the CLI's building blocks: ``embed_voxels`` (the model outputs evaluation
uses), the VAE decoder of ``reconstruct-blurry``, and the per-sample generation, seeding and best-of-N
selection of ``mindeye reconstruct`` (``mindeye.inference.reconstruct``). For the same voxels, image
indices and settings, ``reconstruct`` returns exactly the images ``mindeye reconstruct`` writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mindeye.errors import MindEyeError
from mindeye.runs import Run, load_run
from mindeye.utils.images import float_to_uint8


@dataclass
class Embeddings:
    """Brain embeddings of n samples (float32)."""

    backbone: np.ndarray  # (n, tokens, dim): the backbone output (the diffusion prior's input)
    projector: np.ndarray | None  # (n, tokens, dim): the contrastive projector output; None without one

    @property
    def retrieval(self) -> np.ndarray:
        """What retrieval compares with image embeddings: the projector output, else the backbone's."""
        return self.projector if self.projector is not None else self.backbone


@dataclass
class Ranking:
    """For each query (row), the best ``k`` items, best first."""

    indices: np.ndarray  # (queries, k) int64
    scores: np.ndarray  # (queries, k) float32 cosine similarities


@dataclass
class Retrieval:
    """Cosine retrieval between n brain samples and m candidate images, in both directions."""

    brain_to_image: Ranking  # per brain sample: candidate images (indices into candidates)
    image_to_brain: Ranking  # per candidate image: brain samples (indices into voxels)
    similarity: np.ndarray  # (n, m) float32: cosine of brain sample i and candidate j


@dataclass
class Reconstruction:
    """Best-of-N reconstructions of n brain samples."""

    images: np.ndarray  # (n, H, W, 3) uint8: the chosen candidate of each sample
    chosen: np.ndarray  # (n,) int64: which of the N candidates was chosen
    scores: np.ndarray  # (n, N) float32: cosine of each candidate's CLIP embedding to the brain's
    seeds: np.ndarray  # (n,) int64: the seed of each sample's prior and generator noise
    image_index: np.ndarray  # (n,) int64: the index each seed was derived from
    blurry: np.ndarray | None  # (n, h, w, 3) uint8: the img2img starting images; None = pure noise
    candidates: np.ndarray | None  # (n, N, H, W, 3) uint8 with return_all=True
    settings: dict[str, Any]  # the settings that made these images


class _ArrayBlurry:
    """In-memory blurry images keyed by the image index of each row (the BlurrySource protocol)."""

    def __init__(self, images: np.ndarray, image_index: np.ndarray) -> None:
        self.images, self.row = images, {int(i): r for r, i in enumerate(image_index)}

    def get(self, image_index: int) -> np.ndarray:
        return self.images[self.row[int(image_index)]]


def _as_array(x: Any, what: str) -> np.ndarray | torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise MindEyeError(f"{what} must be a numpy array or torch tensor, got {type(x).__name__} ({exc})") from None


def as_voxels(voxels: Any, n_voxels: int) -> torch.Tensor:
    """(n, n_voxels) float32 CPU tensor from an array/tensor of brain samples, or a clear MindEyeError."""
    x = _as_array(voxels, "voxels")
    numeric = (x.dtype != torch.bool and not x.is_complex()) if isinstance(x, torch.Tensor) else x.dtype.kind in "iuf"
    if not numeric:
        raise MindEyeError(f"voxels must be real numbers, got dtype {x.dtype}")
    x = torch.as_tensor(x).float().cpu()
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != n_voxels:
        raise MindEyeError(f"voxels must have shape (n_samples, {n_voxels}) for this run (or ({n_voxels},) for "
                           f"one sample), got {tuple(x.shape)}")
    if len(x) == 0:
        raise MindEyeError("voxels hold no samples (shape (0, ...)); pass at least one brain sample")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise MindEyeError(f"voxels contain {bad} non-finite values (NaN/inf); the model would output NaN. "
                           "Replace them (e.g. np.nan_to_num) or drop those samples")
    return x


def _integers(values: Any, what: str) -> np.ndarray:
    """A flat int64 array of whole numbers (0.5 or NaN is an error, not silently truncated)."""
    arr = np.asarray(_as_array(values, what).cpu() if isinstance(values, torch.Tensor) else _as_array(values, what))
    if arr.dtype.kind not in "iuf" or (arr.dtype.kind == "f" and not (np.isfinite(arr).all()
                                                                       and (arr == np.round(arr)).all())):
        raise MindEyeError(f"{what} must hold whole numbers, got {arr.reshape(-1)[:5].tolist()} ({arr.dtype})")
    if arr.size and (arr.min() < 0 or arr.max() >= 2**63):
        raise MindEyeError(f"{what} must hold non-negative integers below 2**63")
    return arr.astype(np.int64).reshape(-1)


def _batch_size(value: Any) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise MindEyeError(f"batch_size must be a positive integer, got {value!r}")
    return int(value)


def as_images(images: Any, what: str = "images") -> np.ndarray:
    """(n, H, W, 3) uint8 numpy array, or a clear MindEyeError."""
    x = _as_array(images, what)
    x = x.cpu().numpy() if isinstance(x, torch.Tensor) else x
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise MindEyeError(f"{what} must be uint8 (n, H, W, 3) images, got {x.dtype} {tuple(x.shape)}")
    return x


def save_images(images: Any, out_dir: str | Path, names: list[str] | None = None) -> list[Path]:
    """Write uint8 (n, H, W, 3) images as PNGs (atomically) into ``out_dir``: 00000.png, 00001.png, ..."""
    from mindeye.utils.images import save_png

    arr = as_images(images)
    names = names or [f"{i:05d}.png" for i in range(len(arr))]
    if len(names) != len(arr):
        raise MindEyeError(f"got {len(names)} names for {len(arr)} images")
    paths = [Path(out_dir) / name for name in names]
    for img, path in zip(arr, paths):
        save_png(img, path)
    return paths


def _load(run: str | Path | Run, device: str, subject: str | None = None) -> Run:
    if not isinstance(run, Run):
        return load_run(run, device, subject=subject)
    if subject is not None and run.subjects is not None and run.subject != subject:
        raise MindEyeError(f"the Run passed in was loaded for subject {run.subject}, not {subject}; "
                           f"load it with mindeye.load_run(path, subject={subject!r})")
    if run.device != device:  # a Run loaded elsewhere follows the pipeline's device
        run.model.to(device)
        run.device = device
    return run


class MindEyePipeline:
    """A high-level run (mindeye or ridge), optionally a low-level run and an image generator."""

    def __init__(self, high: Run, lowlevel: Run | None = None, generator: Any = None, device: str = "cpu",
                 generator_weights: str | None = None, judge_weights: str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        if high.kind == "lowlevel":
            raise MindEyeError(f"{high.path} is a low-level run; pass it as lowlevel= and a high-level run first")
        if lowlevel is not None:
            if lowlevel.kind != "lowlevel":
                raise MindEyeError(f"lowlevel= must be a low-level run, but {lowlevel.path} is a '{lowlevel.kind}' run")
            if lowlevel.n_voxels != high.n_voxels:
                raise MindEyeError(f"the runs take different voxel counts ({high.path}: {high.n_voxels}, "
                                   f"{lowlevel.path}: {lowlevel.n_voxels}); they must be for the same subject")
        self.high, self.lowlevel, self.device = high, lowlevel, device
        self._generator = generator  # None (pick by the run's targets), a name, or an ImageGenerator
        self._generator_weights, self._judge_weights, self._dtype = generator_weights, judge_weights, dtype
        self._judge: Any = None
        self._decoder: Any = None
        self._candidate_encoder: Any = None

    @classmethod
    def from_run(cls, high_run: str | Path | Run, lowlevel: str | Path | Run | None = None, generator: Any = None,
                 device: str = "auto", generator_weights: str | None = None, judge_weights: str | None = None,
                 dtype: torch.dtype | None = None, subject: str | None = None) -> MindEyePipeline:
        """Load the runs now; the generator and the encoders are loaded when first needed.

        ``subject``: which subject's voxels a shared-subject high-level run takes (required when it has
        several; the error lists them).

        ``generator``: a name (``versatile-diffusion``, ``sd-image-variations``, ``demo-latent-diffusion``),
        an ``ImageGenerator``, or None for the one conditioned on the run's target encoder.
        """
        from mindeye.devices import resolve_device

        device = resolve_device(device)
        high = _load(high_run, device, subject)
        return cls(high, _load(lowlevel, device) if lowlevel is not None else None, generator, device,
                   generator_weights, judge_weights, dtype)

    @property
    def n_voxels(self) -> int:
        return self.high.n_voxels

    # -- embeddings and retrieval ------------------------------------------------------------------
    def embed(self, voxels: Any, batch_size: int = 256) -> Embeddings:
        """Backbone and projector outputs (float32 arrays) of each brain sample."""
        from mindeye.runs import embed_voxels

        batch_size = _batch_size(batch_size)
        x = as_voxels(voxels, self.n_voxels)
        b = self.high.config.model.backbone
        backbone = embed_voxels(self.high.model, x, self.device, batch_size, which="backbone")
        backbone = backbone.reshape(len(x), b.tokens, b.dim)  # ridge predicts flat vectors
        projector = None
        if getattr(self.high.model, "projector", None) is not None:
            projector = embed_voxels(self.high.model, x, self.device, batch_size, which="projector").numpy()
        return Embeddings(backbone=backbone.numpy(), projector=projector)

    def encode_images(self, images: Any, batch_size: int = 32) -> np.ndarray:
        """Embeddings of uint8 (n, H, W, 3) images with the run's target encoder (what retrieval compares to)."""
        from mindeye.encoders.registry import get_encoder

        arr = as_images(images, "candidate images")
        batch_size = _batch_size(batch_size)
        if len(arr) == 0:
            raise MindEyeError("no candidate images given (0 rows); pass at least one")
        if self._candidate_encoder is None:
            t = self.high.config.targets
            self._candidate_encoder = get_encoder(t.encoder, weights=t.weights, device=self.device)
        with torch.no_grad():
            out = [self._candidate_encoder.encode(arr[s:s + batch_size]).float().cpu()
                   for s in range(0, len(arr), batch_size)]
        return torch.cat(out).numpy()

    def retrieve(self, voxels: Any, candidates: Any, k: int | None = None) -> Retrieval:
        """Rank ``candidates`` for each brain sample and the brain samples for each candidate, by cosine.

        ``candidates``: image embeddings in the run's target space (m, ...) (e.g. from the target cache or
        :meth:`encode_images`), or uint8 (m, H, W, 3) images, encoded with the run's target encoder.
        ``k``: keep the best k in each ranking (default: all).
        """
        cand = _as_array(candidates, "candidates")
        is_uint8 = cand.dtype == (torch.uint8 if isinstance(cand, torch.Tensor) else np.uint8)
        if cand.ndim >= 1 and len(cand) == 0:
            raise MindEyeError("no candidates given (0 rows); pass at least one image embedding or image")
        if is_uint8 and cand.ndim == 4 and cand.shape[-1] == 3:
            cand = self.encode_images(cand)
        elif not (cand.is_floating_point() if isinstance(cand, torch.Tensor) else cand.dtype.kind == "f"):
            raise MindEyeError(f"candidates must be float embeddings or uint8 (m, H, W, 3) images, got {cand.dtype} "
                               f"{tuple(cand.shape)}")
        cand = torch.as_tensor(cand).float().cpu()
        brain = torch.from_numpy(self.embed(voxels).retrieval)
        if cand.ndim < 2 or len(cand) == 0 or cand[0].numel() != brain[0].numel():
            raise MindEyeError(f"candidates must be (m, {', '.join(map(str, brain.shape[1:]))}) embeddings in the "
                               f"run's target space ({self.high.config.targets.encoder}) or uint8 (m, H, W, 3) "
                               f"images, got {cand.dtype} {tuple(cand.shape)}")
        if not torch.isfinite(cand).all():
            raise MindEyeError("candidate embeddings contain non-finite values (NaN/inf)")
        sim = F.normalize(brain.flatten(1), dim=1) @ F.normalize(cand.flatten(1), dim=1).T
        if k is not None and k < 1:
            raise MindEyeError(f"k must be at least 1, got {k}")

        def rank(s: torch.Tensor) -> Ranking:
            scores, idx = torch.sort(s, dim=1, descending=True, stable=True)
            top = s.shape[1] if k is None else min(k, s.shape[1])
            return Ranking(indices=idx[:, :top].numpy().astype(np.int64), scores=scores[:, :top].numpy())

        return Retrieval(brain_to_image=rank(sim), image_to_brain=rank(sim.T), similarity=sim.numpy())

    # -- images ------------------------------------------------------------------------------------
    def blurry(self, voxels: Any, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Low-level reconstructions: uint8 (n, H, W, 3), decoded with the VAE the low-level targets came from."""
        from mindeye.encoders.registry import get_encoder
        from mindeye.inference.blurry import blurry_batch

        if self.lowlevel is None:
            raise MindEyeError("blurry() needs a low-level run: MindEyePipeline.from_run(HIGH, lowlevel=LOW_RUN)")
        batch_size = _batch_size(batch_size)
        x = as_voxels(voxels, self.n_voxels)
        if self._decoder is None:
            t = self.lowlevel.config.targets
            self._decoder = get_encoder(t.lowlevel_encoder, weights=t.lowlevel_weights, device=self.device)
        out = []
        def predict(v: torch.Tensor) -> torch.Tensor:
            return self.lowlevel.model(v.to(self.device))[0]

        for s in tqdm(range(0, len(x), batch_size), desc="blurry", unit="batch", disable=not progress):
            out.append(torch.as_tensor(blurry_batch(predict, self._decoder.decode, x[s:s + batch_size])).cpu())
        return torch.cat(out).numpy()

    @property
    def generator(self) -> Any:
        """The image generator (loaded on first use)."""
        from mindeye.inference.generators import GENERATORS, load_generator

        if self._generator is None:
            enc = self.high.config.targets.encoder
            self._generator = next((n for n, s in GENERATORS.items() if s.condition_encoder == enc),
                                   "versatile-diffusion")
        if isinstance(self._generator, str):
            self._generator = load_generator(self._generator, self._generator_weights, device=self.device,
                                             dtype=self._dtype)
        return self._generator

    def _check_reconstructable(self) -> Any:
        from mindeye.inference.generators import GENERATORS

        cfg = self.high.config
        if cfg.model.kind != "mindeye" or getattr(self.high.model, "prior", None) is None:
            raise MindEyeError(f"{self.high.path} has no diffusion prior (model.kind={cfg.model.kind}, prior."
                               f"enabled={cfg.model.prior.enabled}); reconstruct() needs a MindEye run with a prior")
        gen = self.generator
        tokens = (cfg.model.backbone.tokens, cfg.model.backbone.dim)
        if tuple(gen.condition_shape) != tokens:
            raise MindEyeError(f"{self.high.path} predicts {tokens[0]}x{tokens[1]} embeddings but generator "
                               f"'{gen.name}' is conditioned on {gen.condition_shape[0]}x{gen.condition_shape[1]}; "
                               "pass the matching generator=")
        if self._judge is None:
            from mindeye.encoders.registry import get_encoder

            spec = GENERATORS.get(gen.name)  # a hand-built ImageGenerator is judged with the run's encoder
            judge_name = spec.condition_encoder if spec is not None else cfg.targets.encoder
            self._judge = get_encoder(judge_name, weights=self._judge_weights, device=self.device)
        return gen

    def reconstruct(self, voxels: Any, samples: int = 16, steps: int = 20, guidance: float = 3.5,
                    img2img_strength: float = 0.15, prior_steps: int | None = None,
                    prior_guidance: float | None = None, seed: int = 0, batch_brains: int = 1,
                    blurry: Any = None, image_index: Any = None, return_all: bool = False,
                    progress: bool = False) -> Reconstruction:
        """Prior samples -> generated images (img2img from the blurry image) -> the best of ``samples``.

        ``blurry``: None = make them with the low-level run if there is one (else pure noise), False = pure
        noise, or uint8 (n, h, w, 3) starting images. ``image_index``: the number each sample's seed is
        derived from (default 0..n-1; pass store image indices to reproduce `mindeye reconstruct` exactly).
        ``prior_steps`` / ``prior_guidance`` default to the run's. ``return_all`` also returns all candidates.
        """
        from mindeye.inference.img2img import img2img_start
        from mindeye.inference.reconstruct import ReconstructSettings, item_seed, reconstruct_batch

        prior_cfg = self.high.config.model.prior
        settings = ReconstructSettings(
            samples=samples, steps=steps, guidance=guidance, img2img_strength=img2img_strength,
            prior_steps=prior_cfg.sample_steps if prior_steps is None else prior_steps,
            prior_guidance=prior_cfg.guidance if prior_guidance is None else prior_guidance, seed=seed,
            batch_brains=batch_brains)
        settings.validate()
        x = as_voxels(voxels, self.n_voxels)
        index = np.arange(len(x)) if image_index is None else _integers(image_index, "image_index")
        if len(index) != len(x) or len(np.unique(index)) != len(index):
            raise MindEyeError(f"image_index must hold {len(x)} distinct integers (one per sample), got {len(index)}")
        generator = self._check_reconstructable()
        if blurry is None and self.lowlevel is not None:
            blurry = self.blurry(x, progress=progress)
        if blurry is not None and blurry is not False:
            blurry = as_images(blurry, "blurry")
            if len(blurry) != len(x):
                raise MindEyeError(f"got {len(blurry)} blurry images for {len(x)} brain samples")
        else:
            blurry = None
        source = _ArrayBlurry(blurry, index) if blurry is not None else None
        start = img2img_start(settings.img2img_strength if source else 0.0, settings.steps)
        emb = self.embed(x)
        # Half precision, as `mindeye reconstruct` stores them, so both give the same images.
        backbone = torch.from_numpy(emb.backbone).half()
        projector = torch.from_numpy(emb.retrieval).half()
        prior = self.high.model.prior.eval()
        n = settings.samples
        chosen, scores, images, everything = [], [], [], []
        bar = tqdm(total=len(x), desc="reconstruct", unit="img", disable=not progress)
        for b0 in range(0, len(x), settings.batch_brains):
            rows = list(range(b0, min(b0 + settings.batch_brains, len(x))))
            cand, best_of, row_scores_of = reconstruct_batch(rows, backbone, projector, index, prior, generator,
                                                             self._judge.encode, settings, source, start)
            for j in range(len(rows)):
                best, row_scores = best_of[j], row_scores_of[j]
                chosen.append(best)
                scores.append(row_scores)
                images.append(float_to_uint8(cand[j * n + best:j * n + best + 1])[0].numpy())
                if return_all:
                    everything.append(float_to_uint8(cand[j * n:(j + 1) * n]).numpy())
            bar.update(len(rows))
        bar.close()
        return Reconstruction(
            images=np.stack(images), chosen=np.asarray(chosen, dtype=np.int64),
            scores=np.asarray(scores, dtype=np.float32),
            seeds=np.asarray([item_seed(settings.seed, i) for i in index], dtype=np.int64), image_index=index,
            blurry=blurry, candidates=np.stack(everything) if return_all else None,
            settings={**settings.identity(), "generator": generator.name, "img2img": source is not None})

