"""Brain samples -> N prior samples -> N generated images (img2img from the blurry image) -> best of N.

For each test brain sample (paper 3.2): the diffusion prior turns the backbone output into N CLIP image
embeddings, each renormalised by its CLS token; the generator makes one image per embedding, starting
from the noised latent of the low-level (blurry) reconstruction; the image whose CLIP embedding has the
highest cosine to the brain's projector output is kept.

Every random draw of brain sample ``i`` comes from its own generator seeded with ``item_seed(seed, i)``,
so results do not depend on batching or on where an interrupted run resumed. Finished images are
recorded in ``OUT/index.json`` (rewritten atomically after each batch) and skipped on restart.

Output::

    OUT/index.json                  settings, models, and per image: file, chosen sample, all N scores
    OUT/images/IIIII.png            the chosen reconstruction of store image IIIII
    OUT/samples/IIIII_KK.png        all N candidates (with save_all)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from mindeye.errors import MindEyeError, option
from mindeye.inference.img2img import check_strength, img2img_start
from mindeye.inference.recon_dir import INDEX_NAME, finished, open_index, save_float, write_index  # noqa: F401
from mindeye.utils.images import as_float_images, fit_bilinear, float_to_uint8, load_png, save_png  # noqa: F401
from mindeye.utils.logs import progress_bar

if TYPE_CHECKING:  # diffusers takes seconds to import; database retrieval only needs the PNG/index helpers
    from mindeye.inference.generators import ImageGenerator

INIT_ENCODINGS = ("reference", "vae")
BOTTLENECK_FITTED_ON = "the test set's brain embeddings (unsupervised PCA over every test sample)"


@dataclass
class ReconstructSettings:
    samples: int = 16  # prior samples (and images) per brain sample
    steps: int = 20  # UniPC steps of the full schedule
    guidance: float = 3.5  # generator (Versatile Diffusion) classifier-free guidance; the prior's is model.prior.guidance
    img2img_strength: float = 0.15  # paper Table 5: 0 = pure noise, 1 = the blurry image itself
    prior_steps: int | None = None  # None = the prior's full schedule (reference: 100)
    prior_guidance: float | None = None  # None = the run's model.prior.guidance (paper: 1.0, no guidance)
    init_encoding: str = "reference"  # img2img start latent: "reference" (authors) or "vae" ([-1, 1], mode)
    final_sigmas: str | None = None  # UniPC end point; None = the generator's ("sigma_min" for VD: t = 0, authors)
    seed: int = 0
    batch_brains: int = 1  # brain samples per generator batch (batch = batch_brains x samples x 2 for CFG)
    save_all: bool = False

    def validate(self) -> None:
        if self.samples < 1 or self.steps < 1 or self.batch_brains < 1:
            raise MindEyeError(f"{option('samples, num_inference_steps and batch_size', '--samples, --steps and --batch-brains')}"
                               " must be at least 1")
        for name, value in (("guidance", self.guidance), ("prior guidance", self.prior_guidance)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not math.isfinite(value)):
                raise MindEyeError(f"{name} must be a finite number (e.g. 3.5; 1 = no guidance), got {value!r}")
        check_strength(self.img2img_strength)
        if self.init_encoding not in INIT_ENCODINGS:
            raise MindEyeError(f"--init-encoding must be one of {', '.join(INIT_ENCODINGS)}, got {self.init_encoding!r}")
        if self.final_sigmas not in (None, "sigma_min", "zero"):
            raise MindEyeError(f"--final-sigmas must be sigma_min or zero, got {self.final_sigmas!r}")

    def identity(self) -> dict[str, Any]:
        """The settings that change the images (batching and save_all do not)."""
        d = asdict(self)
        d.pop("batch_brains")
        d.pop("save_all")
        return d


class BlurrySource(Protocol):
    def get(self, image_index: int) -> np.ndarray: ...  # uint8 (H, W, 3)
    # optional: def get_float(self, image_index: int) -> torch.Tensor  # float (3, H, W), the in-memory path


class Prior(Protocol):
    # generator: one, or a list of k for a batch of k equal groups (group j draws its noise from generator j)
    def sample(self, brain_embed: torch.Tensor, cond_scale: float = 1.0, timesteps: int | None = None,
               generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor: ...


def item_seed(seed: int, image_index: int) -> int:
    """Seed of one brain sample's random draws (prior noise, then generator noise)."""
    return (int(seed) * 1_000_003 + int(image_index)) % (2**63 - 1)


def select_best(candidates: torch.Tensor, target: torch.Tensor) -> tuple[int, list[float]]:
    """Index of the candidate embedding (N, ...) with the highest cosine to ``target`` (flattened), and all cosines."""
    cand = F.normalize(candidates.flatten(1).float(), dim=-1)
    tgt = F.normalize(target.flatten().float().to(cand.device), dim=0)
    scores = cand @ tgt
    return int(scores.argmax()), [float(s) for s in scores.cpu()]


def reconstruct(
    backbone: torch.Tensor,
    projector: torch.Tensor,
    image_index: np.ndarray,
    prior: Prior,
    generator: ImageGenerator,
    judge: Callable[[torch.Tensor], torch.Tensor] | None,
    out_dir: str | Path,
    settings: ReconstructSettings,
    blurry: BlurrySource | None = None,
    config: dict[str, Any] | None = None,
    image_ids: list[str] | None = None,
    progress: bool = True,
    captioner: Any = None,
) -> dict[str, Any]:
    """Reconstruct every row of ``backbone`` (M, T, D) into ``out_dir``; returns the index written.

    ``captioner`` (MindEye2, :class:`mindeye.inference.captions.GitCaptioner`): each brain sample's first prior
    sample is also captioned (``recon_inference.ipynb`` captions the prior output unCLIP decodes), into
    ``index["images"][i]["caption"]`` (what `mindeye refine` prompts with).

    ``projector`` (M, ...) are the retrieval embeddings the best-of-N judge compares to; ``judge`` maps
    uint8 images (n, H, W, 3) to embeddings of the same shape. ``blurry`` supplies the low-level image of
    each store image index for img2img (None: pure-noise start whatever the strength). ``config`` is
    extra provenance (runs, weights) stored in the index and checked on resume.
    """
    settings.validate()
    if settings.prior_guidance is None:  # no run to take it from: the paper's default, no guidance
        settings = replace(settings, prior_guidance=1.0)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = settings.samples
    strength = settings.img2img_strength if blurry is not None else 0.0
    start = img2img_start(strength, settings.steps)
    full_config = {"generator": generator.name, "generator_weights": generator.weights_id,
                   "settings": settings.identity(), "img2img": blurry is not None, "img2img_start_step": start,
                   "final_sigmas": settings.final_sigmas or getattr(generator, "final_sigmas", None),
                   **(config or {})}
    if captioner is not None:
        full_config["captions"] = True
    index = open_index(out_dir, "reconstruction", full_config)
    todo = [m for m in range(len(image_index)) if not finished(index, out_dir, image_index[m])]
    bar = progress_bar(total=len(image_index), initial=len(image_index) - len(todo), desc="reconstruct", unit="img",
               disable=not progress)
    for b0 in range(0, len(todo), settings.batch_brains):
        rows = todo[b0:b0 + settings.batch_brains]
        captions: dict[int, str] = {}
        on_embeds = None
        if captioner is not None:
            def on_embeds(rows_: list[int], embs: torch.Tensor, captions: dict[int, str] = captions) -> None:
                texts = captioner.caption(embs[::n])
                captions.update({int(image_index[m]): t for m, t in zip(rows_, texts)})
        images, chosen, all_scores = reconstruct_batch(rows, backbone, projector, image_index, prior, generator,
                                                       judge, settings, blurry, start, on_embeds=on_embeds)
        for j, m in enumerate(rows):
            idx = int(image_index[m])
            cand = images[j * n:(j + 1) * n]
            best, scores = chosen[j], all_scores[j]
            rec: dict[str, Any] = {"image_index": idx, "file": f"images/{idx:05d}.png", "chosen": best,
                                   "scores": scores, "seed": item_seed(settings.seed, idx)}
            if image_ids is not None:
                rec["image_id"] = image_ids[idx]
            if idx in captions:
                rec["caption"] = captions[idx]
            if settings.save_all:
                rec["samples"] = [f"samples/{idx:05d}_{k:02d}.png" for k in range(n)]
                for k in range(n):
                    save_png(float_to_uint8(cand[k:k + 1])[0], out_dir / rec["samples"][k])
            chosen_img = cand[best:best + 1]
            png = float_to_uint8(chosen_img)
            save_png(png[0], out_dir / rec["file"])  # for people
            if (png.permute(0, 3, 1, 2).float() / 255 - chosen_img).abs().max() > 1e-6:
                # for the metrics: the float image, no 8-bit step (a codec that decodes to 8 bits, like the
                # demo's stand-in, has nothing to add to its PNG)
                rec["float_file"] = save_float(cand[best], out_dir, idx)
            index["images"][str(idx)] = rec
        write_index(out_dir, index)
        bar.update(len(rows))
    bar.close()
    return index


def reconstruct_batch(rows: list[int], backbone: torch.Tensor, projector: torch.Tensor, image_index: np.ndarray,
                      prior: Prior, generator: ImageGenerator,
                      judge: Callable[[torch.Tensor], torch.Tensor] | None, settings: ReconstructSettings, blurry: BlurrySource | None,
                      start: int, on_embeds: Callable[[list[int], torch.Tensor], None] | None = None,
                      ) -> tuple[torch.Tensor, list[int], list[list[float]]]:
    """One batch of brain samples (``rows``) -> (float candidates (len(rows) x n, 3, H, W) in [0, 1], the
    best-of-n candidate of each row, every candidate's judge score). The candidates stay floats, as the
    authors' (``utils.decode_latents``: clamped to [0, 1], not quantised) for the judge and the metrics. The one reconstruction step: `mindeye
    reconstruct` (:func:`reconstruct`) and :meth:`mindeye.MindEyePipeline.reconstruct` both call it."""
    n = settings.samples
    images = _generate(rows, backbone, image_index, prior, generator, settings, blurry, start, n, generator.device,
                       on_embeds)
    if judge is None:  # one candidate each (MindEye2's protocol): nothing to judge
        return images, [0] * len(rows), [[] for _ in rows]
    with torch.no_grad():
        embeds = judge(images.to(generator.device))
    chosen, scores = [], []
    for j, m in enumerate(rows):
        best, row_scores = select_best(embeds[j * n:(j + 1) * n], projector[m])
        chosen.append(best)
        scores.append(row_scores)
    return images, chosen, scores


def _generate(rows: list[int], backbone: torch.Tensor, image_index: np.ndarray, prior: Prior,
              generator: ImageGenerator, settings: ReconstructSettings, blurry: BlurrySource | None,
              start: int, n: int, device: torch.device,
              on_embeds: Callable[[list[int], torch.Tensor], None] | None = None) -> torch.Tensor:
    """float images (len(rows) x n, 3, H, W): n candidates per brain sample, in row order."""
    size = generator.image_size
    if blurry is not None and start >= settings.steps:  # strength 1: the low-level image is the result
        return torch.cat([_blurry_float(blurry, int(image_index[m]), size).clamp(0, 1).repeat(n, 1, 1, 1)
                          for m in rows])
    gens = [torch.Generator(device=device).manual_seed(item_seed(settings.seed, int(image_index[m]))) for m in rows]
    brains = torch.cat([backbone[m:m + 1].to(device, torch.float32).repeat(n, *([1] * (backbone.ndim - 1)))
                        for m in rows])
    # One prior call for the batch, each brain sample's noise from its own generator (Prior protocol).
    embs = prior.sample(brains, cond_scale=settings.prior_guidance, timesteps=settings.prior_steps,
                        generator=gens if len(gens) > 1 else gens[0])
    if on_embeds is not None:  # e.g. MindEye2's captions of the prior outputs (n per row, row order)
        on_embeds(rows, embs)
    conds, noises, inits = [generator.prepare_condition(embs)], [], []
    for m, g in zip(rows, gens):  # then each generator's next draws, as one brain sample at a time
        noises.append(torch.randn((n, *generator.latent_shape), generator=g, device=device))
        if start > 0:
            # the blurry image as the low-level stage left it: float, unclamped (the authors')
            init = generator.codec.encode_init(_blurry_float(blurry, int(image_index[m]), size),
                                               settings.init_encoding, g)
            inits.append(init.to(device).repeat(n, 1, 1, 1))
    latents = generator.denoise(torch.cat(conds), torch.cat(noises), torch.cat(inits) if inits else None,
                                settings.img2img_strength if inits else 0.0, settings.steps, settings.guidance,
                                settings.final_sigmas)
    if not torch.isfinite(latents).all():
        raise MindEyeError("the generator produced non-finite latents (NaN/inf); nothing was written for this "
                           "batch. Try --dtype float32 or check the generator weights")
    return generator.codec.decode_float(latents).clamp(0, 1).cpu()


def _blurry_float(blurry: BlurrySource, image_index: int, size: int) -> torch.Tensor:
    """(1, 3, size, size) float blurry image: its float copy when the source keeps one, else its PNG."""
    get_float = getattr(blurry, "get_float", None)
    x = get_float(image_index) if get_float is not None else None
    if x is None:
        return as_float_images(fit_bilinear(blurry.get(image_index), size)[None])
    return as_float_images(torch.as_tensor(x).float()[None], size)


def reconstruct_run(
    run_dir: str | Path,
    out_dir: str | Path,
    generator_name: str | None = "versatile-diffusion",
    settings: ReconstructSettings | None = None,
    lowlevel: str | Path | None = None,
    weights: str | None = None,
    judge_weights: str | None = None,
    store: str | Path | None = None,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    limit: int | None = None,
    progress: bool = True,
    subject: str | None = None,
    caption_weights: str | None = None,
    caption_converter: str | None = None,
    bottleneck: int | None = None,
) -> dict[str, Any]:
    """`mindeye reconstruct`: a trained high-level run's test set -> reconstructions in ``out_dir``.

    ``bottleneck`` k (BrainBits-style, docs/evaluation.md): the brain embeddings (the backbone output the prior
    reads and the projector output the judge compares to) are first projected onto their own top-k principal
    components, fitted on every test sample (even under ``limit``); a low-level *run* given as ``lowlevel``
    makes its blurry images through the same k (:func:`~mindeye.inference.blurry.reconstruct_blurry`).

    ``caption_weights`` / ``caption_converter`` (MindEye2): GIT and the authors' bigG -> CLIP-L converter;
    when given, every image's prior output is captioned too (:mod:`mindeye.inference.captions`).

    ``lowlevel`` is a low-level run directory (its blurry images are made first, into OUT/blurry, resumably)
    or a ``reconstruct-blurry`` output directory; None reconstructs without img2img. ``generator_name`` None:
    the generator conditioned on the run's target space (:func:`~mindeye.inference.generators.generator_for`).
    """
    from mindeye.data.splits import load_eval_split
    from mindeye.encoders.registry import get_encoder
    from mindeye.encoders.targets import target_options
    from mindeye.inference.blurry import BlurryImages, reconstruct_blurry, resolve_store
    from mindeye.inference.generators import (
        describe_generators,
        generator_for,
        generator_spec,
        load_generator,
    )
    from mindeye.runs import embed_voxels, load_run_model, read_run, refuse_diverged, subject_view

    settings = settings or ReconstructSettings()
    settings.validate()
    spec = generator_spec(generator_name) if generator_name is not None else None
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg, info = read_run(run_dir)
    info, _ = subject_view(info, subject, run_dir)  # a shared-subject run: that subject's store
    refuse_diverged(run_dir, info)  # before the generator: a diverged run is not the generator's fault
    if cfg.model.kind in ("lowlevel", "ridge"):
        raise MindEyeError(f"{run_dir} is a '{cfg.model.kind}' run (model.kind={cfg.model.kind}): it has no diffusion "
                           "prior; reconstruction needs a high-level MindEye run (model.kind mindeye or mindeye2 with "
                           "model.prior.enabled=true). A ridge run retrieves (`mindeye retrieve`, `mindeye evaluate "
                           "retrieval`); a low-level run makes blurry images (`mindeye reconstruct-blurry`)")
    if not cfg.model.prior.enabled:
        raise MindEyeError(f"{run_dir} was trained without a diffusion prior (model.prior.enabled=false); "
                           "reconstruction needs a MindEye run trained with model.prior.enabled=true")
    tokens = (cfg.model.backbone.tokens, cfg.model.backbone.dim)
    if spec is None:
        match = generator_for(cfg.targets.encoder, tokens)
        if match is None:
            raise MindEyeError(f"{run_dir} predicts {tokens[0]}x{tokens[1]} {cfg.targets.encoder} embeddings and no "
                               f"generator is conditioned on that shape; generators: {describe_generators()}")
        spec = generator_spec(match)
    if tokens != spec.condition_shape:
        match = generator_for(cfg.targets.encoder, tokens)
        fix = (f"use --generator {match} (or leave --generator out: the run's generator is picked)" if match else
               f"no generator takes {tokens[0]}x{tokens[1]} embeddings; generators: {describe_generators()}")
        raise MindEyeError(f"{run_dir} predicts {tokens[0]}x{tokens[1]} {cfg.targets.encoder} embeddings but "
                           f"generator '{spec.name}' is conditioned on {spec.condition_shape[0]}x"
                           f"{spec.condition_shape[1]} ({spec.condition_encoder}); {fix}")
    if cfg.targets.encoder != spec.condition_encoder:
        print(f"note: the run's targets come from {cfg.targets.encoder}; best-of-N is judged with "
              f"{spec.condition_encoder}", flush=True)
    # Load the (large, possibly missing) generator first so a missing download fails before any work.
    generator = load_generator(spec.name, weights, device=device, dtype=dtype)
    captioner = None
    if caption_weights is not None or caption_converter is not None:
        from mindeye.inference.captions import load_captioner

        captioner = load_captioner(caption_weights, caption_converter, device)
    # load_run_model also checks the store's voxel count against the run's (else a matmul traceback)
    _, _, model, store_obj = load_run_model(run_dir, device, resolve_store(store, info, cfg), subject=subject)
    split = load_eval_split(store_obj, store_obj.image_indices("test"), cfg.data.test_mode,
                            cfg.data.test_repetitions, average=cfg.data.test_average)
    rows = slice(0, limit) if limit else slice(None)
    bottleneck_desc = None
    if bottleneck is None:
        voxels, image_index = split.voxels[rows], split.image_index[rows]
        backbone = embed_voxels(model, voxels, device, which="backbone").half()
        projector = embed_voxels(model, voxels, device, which="projector").half()
    else:  # the PCA sees every test sample; only the first `limit` are then reconstructed
        from mindeye.utils.pca import fit_top_k

        image_index = split.image_index[rows]
        embs, bottleneck_desc = {}, {"k": int(bottleneck), "fitted_on": BOTTLENECK_FITTED_ON}
        for which in ("backbone", "projector"):
            full = embed_voxels(model, split.voxels, device, which=which)
            pca = fit_top_k(full)
            embs[which] = pca.project(full, bottleneck)[rows].half()
            bottleneck_desc[f"{which}_explained_variance"] = pca.explained_variance(bottleneck)
            bottleneck_desc[f"{which}_rank"] = pca.rank
        backbone, projector = embs["backbone"], embs["projector"]

    blurry = None
    lowlevel_desc = None
    if lowlevel is not None:
        low = Path(lowlevel)
        if (low / "config.yaml").exists():  # a low-level run: make its blurry images first
            reconstruct_blurry(low, out_dir / "blurry", store=store, device=device, limit=limit, progress=progress,
                               bottleneck=bottleneck)
            low = out_dir / "blurry"
        blurry = BlurryImages(low)
        made_with = ((blurry.index.get("config") or {}).get("bottleneck") or {}).get("k")
        if bottleneck is not None and made_with != bottleneck:
            print(f"note: the blurry images in {low} were made {'without a' if made_with is None else 'through a k='}"
                  f"{made_with or ''} bottleneck, not k={bottleneck}: img2img gives the generator the low-level "
                  "path's information as it is there. Pass the low-level run as --lowlevel to make them through "
                  "the same k", flush=True)
        lowlevel_desc = {"lowlevel": str(Path(lowlevel).resolve()), "blurry_config": blurry.index.get("config")}
    # The judge embeds candidates the way the run's targets were embedded (paper: reference preprocessing).
    if settings.samples == 1:  # nothing to choose between (MindEye2's protocol): no judge to load
        judge, judge_fn = None, None
    else:
        judge = get_encoder(spec.condition_encoder, weights=judge_weights, device=device,
                            **target_options(cfg, spec.condition_encoder))
        judge_fn = judge.encode
    config = {"high_run": str(run_dir.resolve()), "store": str(store_obj.path.resolve()),
              "test_mode": cfg.data.test_mode, "judge": spec.condition_encoder if judge is not None else None,
              "judge_fingerprint": getattr(judge, "fingerprint", None), **(lowlevel_desc or {"lowlevel": None})}
    if bottleneck_desc is not None:
        config["bottleneck"] = bottleneck_desc
    if settings.prior_steps is None:
        settings.prior_steps = cfg.model.prior.sample_steps
    if settings.prior_guidance is None:
        settings.prior_guidance = cfg.model.prior.guidance
    prior = model.prior.eval()
    return reconstruct(backbone, projector, image_index, prior, generator, judge_fn, out_dir, settings,
                       blurry=blurry, config=config, image_ids=store_obj.image_ids, progress=progress,
                       captioner=captioner)
