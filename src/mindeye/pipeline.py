"""``MindEyePipeline``: trained runs called on voxels in memory, the way a diffusers pipeline is called.

    pipe = MindEyePipeline.from_run("runs/high", lowlevel="runs/low", image_model="versatile-diffusion")
    pipe.to("cuda")                               # like a diffusers pipeline (torch_dtype= for the image model)
    emb = pipe.embed(voxels)                      # backbone / projector outputs as arrays
    hits = pipe.retrieve(voxels, candidates)      # ranked indices + cosines, both directions
    blurry = pipe.blurry(voxels)                  # uint8 low-level reconstructions
    out = pipe(voxels, samples=16, generator=torch.Generator().manual_seed(0))   # best-of-N reconstructions
    make_image_grid(truth=seen, reconstruction=out)   # one PIL image: truth / blurry / reconstruction rows

Voxels are numpy arrays or torch tensors of shape (n_samples, n_voxels) (or one sample (n_voxels,)),
checked before any model runs. Nothing is written to disk unless asked (:func:`save_images`).

This is a thin layer over the CLI's building blocks: ``embed_voxels`` (the model outputs evaluation
uses), the VAE decoder of ``reconstruct-blurry``, and the per-sample generation, seeding and best-of-N
selection of ``mindeye reconstruct`` (``mindeye.inference.reconstruct``). For the same voxels, image
indices and settings, ``reconstruct`` returns exactly the images ``mindeye reconstruct`` writes.
"""

from __future__ import annotations

import sys
import warnings
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
from mindeye.utils.reprs import describe


@dataclass(repr=False)
class Embeddings:
    """Brain embeddings of n samples (float32)."""

    backbone: np.ndarray  # (n, tokens, dim): the backbone output (the diffusion prior's input)
    projector: np.ndarray | None  # (n, tokens, dim): the contrastive projector output; None without one

    @property
    def retrieval(self) -> np.ndarray:
        """What retrieval compares with image embeddings: the projector output, else the backbone's."""
        return self.projector if self.projector is not None else self.backbone

    def __repr__(self) -> str:
        return f"Embeddings(n={len(self.backbone)}, backbone={describe(self.backbone)}, " \
               f"projector={describe(self.projector)})"


@dataclass(repr=False)
class Ranking:
    """For each query (row), the best ``k`` items, best first."""

    indices: np.ndarray  # (queries, k) int64
    scores: np.ndarray  # (queries, k) float32 cosine similarities

    def __repr__(self) -> str:
        q, k = self.indices.shape
        return f"Ranking(queries={q}, k={k}, indices={describe(self.indices)}, scores={describe(self.scores)})"


@dataclass(repr=False)
class Retrieval:
    """Cosine retrieval between n brain samples and m candidate images, in both directions."""

    brain_to_image: Ranking  # per brain sample: candidate images (indices into candidates)
    image_to_brain: Ranking  # per candidate image: brain samples (indices into voxels)
    similarity: np.ndarray  # (n, m) float32: cosine of brain sample i and candidate j

    def __repr__(self) -> str:
        n, m = self.similarity.shape
        return f"Retrieval(brain_samples={n}, candidates={m}, k={self.brain_to_image.indices.shape[1]}, " \
               f"similarity={describe(self.similarity)})"


@dataclass(repr=False)
class Reconstruction:
    """Best-of-N reconstructions of n brain samples. Images are uint8 (n, H, W, 3) arrays by default;
    with ``output_type="pil"`` lists of PIL images, with ``"pt"`` float (n, 3, H, W) tensors in [0, 1]."""

    images: Any  # (n, H, W, 3) uint8: the chosen candidate of each sample
    chosen: np.ndarray  # (n,) int64: which of the N candidates was chosen
    scores: np.ndarray  # (n, N) float32: cosine of each candidate's CLIP embedding to the brain's
    seeds: np.ndarray  # (n,) int64: the seed of each sample's prior and generator noise
    image_index: np.ndarray  # (n,) int64: the index each seed was derived from
    blurry: Any  # (n, h, w, 3) uint8: the img2img starting images; None = pure noise
    candidates: Any  # (n, N, H, W, 3) uint8 with return_all=True (a list per sample for "pil")
    settings: dict[str, Any]  # the settings that made these images

    def __len__(self) -> int:
        return len(self.chosen)

    def __repr__(self) -> str:
        text = (f"Reconstruction(n={len(self.chosen)}, images={describe(self.images)}, "
                f"samples={self.scores.shape[1] if self.scores.ndim == 2 else '?'}, "
                f"blurry={describe(self.blurry)}, image_model={self.settings.get('generator')!r}, "
                f"seed={self.settings.get('seed')})")
        return text


class _ArrayBlurry:
    """In-memory blurry images keyed by the image index of each row (the BlurrySource protocol); with the
    decoder's float images too (what `mindeye reconstruct` starts img2img from), when it made floats."""

    def __init__(self, images: np.ndarray, image_index: np.ndarray, floats: torch.Tensor | None = None) -> None:
        self.images, self.row, self.floats = images, {int(i): r for r, i in enumerate(image_index)}, floats

    def get(self, image_index: int) -> np.ndarray:
        return self.images[self.row[int(image_index)]]

    def get_float(self, image_index: int) -> torch.Tensor | None:
        return None if self.floats is None else self.floats[self.row[int(image_index)]]


OUTPUT_TYPES = ("np", "pil", "pt")


def in_notebook() -> bool:
    """True inside a Jupyter / Colab kernel (where progress bars are widgets and on by default)."""
    shell = sys.modules.get("IPython")
    try:
        ip = shell.get_ipython() if shell is not None else None
    except Exception:  # noqa: BLE001 - any IPython oddity means "not a notebook"
        return False
    return ip is not None and type(ip).__name__ in ("ZMQInteractiveShell", "Shell")  # Shell: Google Colab


def _show_progress(progress: bool | None) -> bool:
    return in_notebook() if progress is None else bool(progress)


def _check_output_type(output_type: str) -> str:
    if output_type not in OUTPUT_TYPES:
        raise MindEyeError(f'output_type must be "np" (uint8 arrays), "pil" (PIL images) or "pt" (float tensors), '
                           f"got {output_type!r}")
    return output_type


def convert_images(images: np.ndarray | None, output_type: str) -> Any:
    """uint8 (..., H, W, 3) -> the same (``"np"``), nested lists of PIL images (``"pil"``) or float tensors
    (..., 3, H, W) in [0, 1] (``"pt"``)."""
    if images is None or output_type == "np":
        return images
    if output_type == "pt":
        return torch.from_numpy(np.ascontiguousarray(images)).movedim(-1, -3).float() / 255
    from PIL import Image

    if images.ndim == 3:
        return Image.fromarray(images)
    return [convert_images(x, "pil") for x in images]


def _renamed(kwargs: dict[str, Any], names: dict[str, str], where: str, stacklevel: int = 3) -> dict[str, Any]:
    """Old keyword arguments under their new names, each with a DeprecationWarning; unknown ones are errors."""
    out = {}
    for old, value in kwargs.items():
        if old not in names:
            raise TypeError(f"{where}() got an unexpected keyword argument {old!r}")
        warnings.warn(f"{where}({old}=...) is deprecated and will be removed in the next release; use "
                      f"{names[old]}=...", DeprecationWarning, stacklevel=stacklevel)
        out[names[old]] = value
    return out


def _image_model_args(where: str, deprecated: dict[str, Any], image_model: Any, image_model_weights: str | None,
                      torch_dtype: torch.dtype | None) -> tuple[Any, str | None, torch.dtype | None]:
    """The image model's arguments, old names (generator=, generator_weights=, dtype=) accepted with a warning."""
    old = _renamed(deprecated, {"generator": "image_model", "generator_weights": "image_model_weights",
                                "dtype": "torch_dtype"}, where, stacklevel=4)
    image_model = _set("image_model", image_model, None, old)
    image_model_weights = _set("image_model_weights", image_model_weights, None, old)
    torch_dtype = _set("torch_dtype", torch_dtype, None, old)
    if isinstance(image_model, torch.Generator):
        raise MindEyeError(f"{where}() takes no torch.Generator as image_model=: a torch.Generator seeds sampling, "
                           "pass it to the call, pipe(voxels, generator=...); image_model= names the image model "
                           "(e.g. \"versatile-diffusion\")")
    return image_model, image_model_weights, torch_dtype


def _set(name: str, value: Any, default: Any, renamed: dict[str, Any]) -> Any:
    if name not in renamed:
        return value
    if value is not default:
        raise MindEyeError(f"{name}= and its old name were both given; pass {name}= only")
    return renamed[name]


def _grid_row(images: Any, what: str) -> list[np.ndarray]:
    """uint8 (n, H, W, 3) / float (n, 3, H, W) or (n, H, W, 3) in [0, 1] / a list of PIL images -> uint8 arrays."""
    if isinstance(images, Reconstruction):
        images = images.images
    if isinstance(images, list | tuple):
        return [np.asarray(im.convert("RGB")) if hasattr(im, "convert") else as_images(np.asarray(im)[None], what)[0]
                for im in images]
    x = _as_array(images, what)
    if isinstance(x, torch.Tensor):
        x = x.cpu()
        if x.is_floating_point():
            x = x if x.shape[-1] == 3 else x.movedim(-3, -1)
            x = x.float().clamp(0, 1).mul(255).round().to(torch.uint8)
        x = x.numpy()
    elif x.dtype.kind == "f":
        x = np.clip(np.round(x * 255), 0, 255).astype(np.uint8)
    return list(as_images(x, what))


def make_image_grid(truth: Any = None, blurry: Any = None, reconstruction: Any = None, retrieved: Any = None, *,
                    rows: dict[str, Any] | None = None, size: int = 128, labels: bool = True, gap: int = 2) -> Any:
    """One PIL image: a row per kind (truth / blurry / reconstruction / retrieved, then ``rows``), a column per
    brain sample, every image resized to ``size`` x ``size``; rows left out (None) are skipped.

    Each row: uint8 (n, H, W, 3) images, float images in [0, 1] ((n, 3, H, W) tensors or (n, H, W, 3)
    arrays), or a list of PIL images. A :class:`Reconstruction` passed as ``reconstruction`` also fills
    the blurry row with its img2img starting images unless ``blurry`` is given.
    """
    from PIL import Image, ImageDraw

    if isinstance(reconstruction, Reconstruction) and blurry is None and reconstruction.blurry is not None:
        blurry = reconstruction.blurry
    named = {"truth": truth, "blurry": blurry, "reconstruction": reconstruction, "retrieved": retrieved,
             **(rows or {})}
    grid = [(label, _grid_row(imgs, label)) for label, imgs in named.items() if imgs is not None]
    if not grid:
        raise MindEyeError("make_image_grid() got no images; pass truth=, blurry=, reconstruction=, retrieved= "
                           "or rows={label: images}")
    counts = {label: len(imgs) for label, imgs in grid}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise MindEyeError(f"make_image_grid() rows need the same number of images (one per brain sample), got "
                           f"{', '.join(f'{k}: {v}' for k, v in counts.items())}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise MindEyeError(f"size must be a positive integer (pixels), got {size!r}")
    n = len(grid[0][1])
    margin = (max(len(label) for label, _ in grid) * 6 + 2 * gap + 4) if labels else 0
    canvas = Image.new("RGB", (margin + n * size + (n - 1) * gap, len(grid) * size + (len(grid) - 1) * gap),
                       "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, imgs) in enumerate(grid):
        top = r * (size + gap)
        if labels:
            draw.text((gap, top + size // 2 - 5), label, fill="black")
        for c, img in enumerate(imgs):
            tile = Image.fromarray(img)
            if tile.size != (size, size):
                tile = tile.resize((size, size), getattr(Image, "Resampling", Image).BICUBIC)
            canvas.paste(tile, (margin + c * (size + gap), top))
    return canvas


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
    """A high-level run (mindeye or ridge), optionally a low-level run and an image model (the generator
    conditioned on the prior's outputs), called like a diffusers pipeline: ``pipe(voxels)`` reconstructs."""

    def __init__(self, high: Run, lowlevel: Run | None = None, image_model: Any = None, device: str = "cpu",
                 image_model_weights: str | None = None, judge_weights: str | None = None,
                 torch_dtype: torch.dtype | None = None, **deprecated: Any) -> None:
        image_model, image_model_weights, torch_dtype = _image_model_args(
            "MindEyePipeline", deprecated, image_model, image_model_weights, torch_dtype)
        if high.kind == "lowlevel":
            raise MindEyeError(f"{high.path} is a low-level run; pass it as lowlevel= and a high-level run first")
        if lowlevel is not None:
            if lowlevel.kind != "lowlevel":
                raise MindEyeError(f"lowlevel= must be a low-level run, but {lowlevel.path} is a '{lowlevel.kind}' run")
            if lowlevel.n_voxels != high.n_voxels:
                raise MindEyeError(f"the runs take different voxel counts ({high.path}: {high.n_voxels}, "
                                   f"{lowlevel.path}: {lowlevel.n_voxels}); they must be for the same subject")
        self.high, self.lowlevel, self.device = high, lowlevel, device
        self._image_model = image_model  # None (pick by the run's targets), a name, or an ImageGenerator
        self._image_model_weights, self._judge_weights, self._dtype = image_model_weights, judge_weights, torch_dtype
        self._judge: Any = None
        self._decoder: Any = None
        self._loaded_by_name = False  # image model loaded here from its name (not an object the caller built)
        self._candidate_encoder: Any = None

    @classmethod
    def from_run(cls, high_run: str | Path | Run, lowlevel: str | Path | Run | None = None, image_model: Any = None,
                 device: str = "auto", image_model_weights: str | None = None, judge_weights: str | None = None,
                 torch_dtype: torch.dtype | None = None, subject: str | None = None,
                 **deprecated: Any) -> MindEyePipeline:
        """Load the runs now; the image model and the encoders are loaded when first needed.

        ``subject``: which subject's voxels a shared-subject high-level run takes (required when it has
        several; the error lists them).

        ``image_model``: a name (``versatile-diffusion``, ``sd-image-variations``, ``demo-latent-diffusion``),
        an ``ImageGenerator``, or None for the one conditioned on the run's target encoder;
        ``image_model_weights``: its local pipeline directory (or a Hugging Face id in the local cache);
        ``torch_dtype``: its dtype (default float16 on CUDA, float32 elsewhere). ``generator=``,
        ``generator_weights=`` and ``dtype=`` are the old names of these three (deprecated).
        """
        from mindeye.devices import resolve_device

        image_model, image_model_weights, torch_dtype = _image_model_args(
            "from_run", deprecated, image_model, image_model_weights, torch_dtype)
        device = resolve_device(device)
        high = _load(high_run, device, subject)
        return cls(high, _load(lowlevel, device) if lowlevel is not None else None, image_model, device,
                   image_model_weights, judge_weights, torch_dtype)

    def to(self, device: str | torch.device | torch.dtype | None = None,
           torch_dtype: torch.dtype | None = None) -> MindEyePipeline:
        """Move everything to ``device`` (``pipe.to("cuda")``) and/or set the image model's dtype
        (``pipe.to(torch.float16)``, ``pipe.to("cuda", torch.float16)``); returns the pipeline."""
        from mindeye.devices import resolve_device

        if isinstance(device, torch.dtype):
            device, torch_dtype = None, device
        if torch_dtype is not None:
            if not isinstance(torch_dtype, torch.dtype):
                raise MindEyeError(f"torch_dtype must be a torch.dtype (e.g. torch.float16), got {torch_dtype!r}")
            self._dtype = torch_dtype
        if device is not None:
            device = resolve_device(str(device))
            for run in (self.high, self.lowlevel):
                if run is not None:
                    run.model.to(device)
                    run.device = device
            if device != self.device:  # encoders are rebuilt on the new device when next needed
                self._judge = self._decoder = self._candidate_encoder = None
            self.device = device
        if self._image_model is not None and not isinstance(self._image_model, str):
            if self._loaded_by_name:  # reloaded (weights, codec and all) on the device / in the dtype when next used
                if device is not None or torch_dtype is not None:
                    self._image_model = self._image_model.name
            else:
                self._image_model.to(self.device, self._dtype)
        return self

    @property
    def dtype(self) -> torch.dtype | None:
        """The image model's dtype (None: chosen when it is loaded, float16 on CUDA, float32 elsewhere)."""
        if self._image_model is not None and not isinstance(self._image_model, str):
            return self._image_model.dtype
        return self._dtype

    def __repr__(self) -> str:
        def run(r: Run | None) -> str:
            return "None" if r is None else f"{r.name!r} ({r.kind}, {r.n_voxels} voxels)"

        model = self._image_model
        model = (f"{model!r} (not loaded)" if isinstance(model, str) else
                 "None (chosen by the run's targets)" if model is None else repr(getattr(model, "name", model)))
        return f"MindEyePipeline(high={run(self.high)}, lowlevel={run(self.lowlevel)}, image_model={model}, " \
               f"device={self.device!r})"

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
    def _blurry(self, x: torch.Tensor, batch_size: int, progress: bool) -> tuple[np.ndarray, torch.Tensor | None]:
        """(uint8 (n, H, W, 3) blurry images, the decoder's float (n, 3, H, W) images when it makes floats)."""
        from mindeye.encoders.registry import get_encoder
        from mindeye.inference.blurry import blurry_batch

        if self.lowlevel is None:
            raise MindEyeError("blurry() needs a low-level run: MindEyePipeline.from_run(HIGH, lowlevel=LOW_RUN)")
        if self._decoder is None:
            t = self.lowlevel.config.targets
            self._decoder = get_encoder(t.lowlevel_encoder, weights=t.lowlevel_weights, device=self.device)
        out = []

        def predict(v: torch.Tensor) -> torch.Tensor:
            return self.lowlevel.model(v.to(self.device))[0]

        for s in tqdm(range(0, len(x), batch_size), desc="blurry", unit="batch", disable=not progress):
            out.append(torch.as_tensor(blurry_batch(predict, self._decoder.decode, x[s:s + batch_size])).cpu())
        images = torch.cat(out)
        if images.is_floating_point():  # a VAE that decodes to floats (N, 3, H, W): keep them for img2img
            return float_to_uint8(images).numpy(), images
        return images.numpy(), None

    def blurry(self, voxels: Any, batch_size: int = 32, progress: bool | None = None, output_type: str = "np") -> Any:
        """Low-level reconstructions: uint8 (n, H, W, 3), decoded with the VAE the low-level targets came from
        (``output_type="pil"``: PIL images, ``"pt"``: float (n, 3, H, W) in [0, 1]). ``progress``: a bar
        (default: in notebooks only)."""
        _check_output_type(output_type)
        batch_size = _batch_size(batch_size)
        x = as_voxels(voxels, self.n_voxels)
        if self.lowlevel is None:
            raise MindEyeError("blurry() needs a low-level run: MindEyePipeline.from_run(HIGH, lowlevel=LOW_RUN)")
        return convert_images(self._blurry(x, batch_size, _show_progress(progress))[0], output_type)

    @property
    def image_model(self) -> Any:
        """The image model (an ``ImageGenerator``, loaded on first use)."""
        from mindeye.inference.generators import GENERATORS, load_generator

        if self._image_model is None:
            enc = self.high.config.targets.encoder
            self._image_model = next((n for n, s in GENERATORS.items() if s.condition_encoder == enc),
                                     "versatile-diffusion")
        if isinstance(self._image_model, str):
            self._loaded_by_name = True
            self._image_model = load_generator(self._image_model, self._image_model_weights, device=self.device,
                                               dtype=self._dtype)
            if self._dtype is not None and self._image_model.dtype != self._dtype:  # (the demo model loads as float32)
                self._image_model.to(self.device, self._dtype)
        return self._image_model

    @property
    def generator(self) -> Any:
        """Deprecated name of :attr:`image_model` (``generator=`` on calls is now a ``torch.Generator``)."""
        warnings.warn("MindEyePipeline.generator is deprecated and will be removed in the next release; use "
                      ".image_model", DeprecationWarning, stacklevel=2)
        return self.image_model

    def _check_reconstructable(self) -> Any:
        from mindeye.inference.generators import GENERATORS

        cfg = self.high.config
        if cfg.model.kind != "mindeye" or getattr(self.high.model, "prior", None) is None:
            raise MindEyeError(f"{self.high.path} has no diffusion prior (model.kind={cfg.model.kind}, prior."
                               f"enabled={cfg.model.prior.enabled}); reconstruct() needs a MindEye run with a prior")
        gen = self.image_model
        tokens = (cfg.model.backbone.tokens, cfg.model.backbone.dim)
        if tuple(gen.condition_shape) != tokens:
            raise MindEyeError(f"{self.high.path} predicts {tokens[0]}x{tokens[1]} embeddings but image model "
                               f"'{gen.name}' is conditioned on {gen.condition_shape[0]}x{gen.condition_shape[1]}; "
                               "pass the matching image_model=")
        if self._judge is None:
            from mindeye.encoders.registry import get_encoder

            spec = GENERATORS.get(gen.name)  # a hand-built ImageGenerator is judged with the run's encoder
            judge_name = spec.condition_encoder if spec is not None else cfg.targets.encoder
            self._judge = get_encoder(judge_name, weights=self._judge_weights, device=self.device)
        return gen

    def __call__(self, voxels: Any, **kwargs: Any) -> Reconstruction:
        """The main job, as a diffusers pipeline is called: :meth:`reconstruct` (same arguments)."""
        return self.reconstruct(voxels, **kwargs)

    def reconstruct(self, voxels: Any, samples: int = 16, num_inference_steps: int = 20, guidance_scale: float = 3.5,
                    img2img_strength: float = 0.15, prior_num_inference_steps: int | None = None,
                    prior_guidance_scale: float | None = None, seed: int | None = None,
                    generator: torch.Generator | None = None, batch_size: int = 1, blurry: Any = None,
                    image_index: Any = None, return_all: bool = False, progress: bool | None = None,
                    output_type: str = "np", **deprecated: Any) -> Reconstruction:
        """Prior samples -> generated images (img2img from the blurry image) -> the best of ``samples``.

        ``num_inference_steps`` / ``guidance_scale``: the image model's UniPC steps and classifier-free
        guidance; ``prior_num_inference_steps`` / ``prior_guidance_scale`` default to the run's.
        ``img2img_strength`` (paper Table 5): 0 = pure noise, 1 = the blurry image itself (the reverse of
        diffusers' ``strength``). Randomness: ``seed`` (default 0) or a ``torch.Generator`` as ``generator``
        (one seed is drawn from it, so a generator seeded the same gives the same images); every sample's
        noise then comes from its own seed (``out.seeds``), derived from that seed and ``image_index``
        (default 0..n-1; pass store image indices to reproduce `mindeye reconstruct` exactly).
        ``batch_size``: brain samples per image-model batch (the batch holds ``batch_size * samples`` images).
        ``blurry``: None = make them with the low-level run if there is one (else pure noise), False = pure
        noise, or uint8 (n, h, w, 3) starting images. ``return_all`` also returns all candidates.
        ``output_type``: "np" (uint8 arrays), "pil" (PIL images) or "pt" (float tensors (n, 3, H, W) in [0, 1]).
        ``progress``: a bar (default: in notebooks only). ``steps``, ``guidance``, ``prior_steps``,
        ``prior_guidance`` and ``batch_brains`` are the old names (deprecated).
        """
        from mindeye.inference.img2img import img2img_start
        from mindeye.inference.reconstruct import ReconstructSettings, item_seed, reconstruct_batch

        old = _renamed(deprecated, {"steps": "num_inference_steps", "guidance": "guidance_scale",
                                    "prior_steps": "prior_num_inference_steps",
                                    "prior_guidance": "prior_guidance_scale", "batch_brains": "batch_size"},
                       "reconstruct")
        num_inference_steps = _set("num_inference_steps", num_inference_steps, 20, old)
        guidance_scale = _set("guidance_scale", guidance_scale, 3.5, old)
        prior_num_inference_steps = _set("prior_num_inference_steps", prior_num_inference_steps, None, old)
        prior_guidance_scale = _set("prior_guidance_scale", prior_guidance_scale, None, old)
        batch_size = _set("batch_size", batch_size, 1, old)
        _check_output_type(output_type)
        progress = _show_progress(progress)
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise MindEyeError(f"generator= takes a torch.Generator (e.g. torch.Generator().manual_seed(0)), got "
                                   f"{type(generator).__name__}; the image model is from_run(..., image_model=...)")
            if seed is not None:
                raise MindEyeError("pass seed= or generator=, not both")
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
        seed = 0 if seed is None else seed
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise MindEyeError(f"seed must be a non-negative integer, got {seed!r}")
        prior_cfg = self.high.config.model.prior
        settings = ReconstructSettings(
            samples=samples, steps=num_inference_steps, guidance=guidance_scale, img2img_strength=img2img_strength,
            prior_steps=prior_cfg.sample_steps if prior_num_inference_steps is None else prior_num_inference_steps,
            prior_guidance=prior_cfg.guidance if prior_guidance_scale is None else prior_guidance_scale,
            seed=int(seed), batch_brains=_batch_size(batch_size))
        settings.validate()
        x = as_voxels(voxels, self.n_voxels)
        index = np.arange(len(x)) if image_index is None else _integers(image_index, "image_index")
        if len(index) != len(x) or len(np.unique(index)) != len(index):
            raise MindEyeError(f"image_index must hold {len(x)} distinct integers (one per sample), got {len(index)}")
        image_model = self._check_reconstructable()
        floats = None
        if blurry is None and self.lowlevel is not None:
            blurry, floats = self._blurry(x, 32, progress)
        if blurry is not None and blurry is not False:
            blurry = as_images(blurry, "blurry")
            if len(blurry) != len(x):
                raise MindEyeError(f"got {len(blurry)} blurry images for {len(x)} brain samples")
        else:
            blurry = None
        source = _ArrayBlurry(blurry, index, floats) if blurry is not None else None
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
            cand, best_of, row_scores_of = reconstruct_batch(rows, backbone, projector, index, prior, image_model,
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
            images=convert_images(np.stack(images), output_type), chosen=np.asarray(chosen, dtype=np.int64),
            scores=np.asarray(scores, dtype=np.float32),
            seeds=np.asarray([item_seed(settings.seed, i) for i in index], dtype=np.int64), image_index=index,
            blurry=convert_images(blurry, output_type),
            candidates=convert_images(np.stack(everything), output_type) if return_all else None,
            settings={**settings.identity(), "generator": image_model.name, "img2img": source is not None})
