"""Ceilings: the same image makers fed the true image's own targets instead of the brain's predictions.

* :func:`ceiling_blurry`: the true image's own low-level target (its cached VAE latent, what the low-level
  model learns to predict) decoded by the blurry path's decoder -- a low-level run's best possible
  blurry image (the VAE round trip).
* :func:`ceiling_reconstruct`: the generator of a reconstruction directory conditioned on the true image's
  own embedding (the generator's condition encoder; the prior is skipped: the prior learns to produce
  exactly this), with img2img from the blurry ceiling where the reconstructions started from blurry
  images, the same settings and seeds, best-of-N judged against the true embedding.

Both write an ordinary reconstruction directory (``config["ceiling"]`` says what it is) for the same test
images, scored by `mindeye evaluate recon --ceiling DIR` beside the model's row (docs/evaluation.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mindeye.errors import MindEyeError

CEILING_BLURRY = "the true image's own low-level target (VAE latent) decoded"
CEILING_RECON = "the generator conditioned on the true image's own embedding (no brain, no prior)"


def _store_images_float(store: Any, image_index: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(store.images[image_index])).permute(0, 3, 1, 2).float() / 255.0


def ceiling_blurry(run_dir: str | Path, out_dir: str | Path, store: str | Path | None = None, device: str = "cpu",
                   limit: int | None = None, batch_size: int = 32, progress: bool = True) -> dict[str, Any]:
    """Blurry ceiling images of a low-level run's (or low-level ridge run's) test images into ``out_dir``."""
    from mindeye.data.splits import load_eval_split
    from mindeye.data.store import SubjectStore
    from mindeye.encoders.registry import get_encoder
    from mindeye.encoders.targets import Targets
    from mindeye.inference.blurry import blurry_decoder_weights, decode_latents_to_pngs, resolve_store
    from mindeye.runs import read_run

    run_dir = Path(run_dir)
    cfg, info = read_run(run_dir)
    if cfg.model.kind != "lowlevel" and not (cfg.model.kind == "ridge" and cfg.model.ridge.target == "lowlevel"):
        raise MindEyeError(f"{run_dir} is a '{cfg.model.kind}' run; a blurry ceiling needs a low-level run")
    subject = SubjectStore(resolve_store(store, info, cfg))
    split = load_eval_split(subject, subject.image_indices("test"), cfg.data.test_mode, cfg.data.test_repetitions)
    image_index = split.image_index[slice(0, limit) if limit else slice(None)]
    latents = Targets(subject.path, cfg.targets.lowlevel_encoder, cfg.targets.lowlevel_weights).get(image_index)
    dec_weights = blurry_decoder_weights(cfg)
    decoder = get_encoder(cfg.targets.lowlevel_encoder, weights=dec_weights, device=device)
    decode = getattr(decoder, "decode_float", None) or decoder.decode
    config = {"ceiling": CEILING_BLURRY, "run": str(run_dir.resolve()), "store": str(subject.path.resolve()),
              "decoder": cfg.targets.lowlevel_encoder, "decoder_weights": dec_weights,
              "decoder_fingerprint": getattr(decoder, "fingerprint", None), "test_mode": cfg.data.test_mode}

    def predict(rows: torch.Tensor) -> torch.Tensor:
        return latents[rows.long()].to(device)

    return decode_latents_to_pngs(predict, decode, torch.arange(len(image_index)), image_index, out_dir, config,
                                  batch_size, subject.image_ids, progress)


class _TruePrior:
    """A 'prior' that returns its input: the condition is already the true image's embedding."""

    def sample(self, brain_embed: torch.Tensor, cond_scale: float = 1.0, timesteps: int | None = None,
               generator: Any = None) -> torch.Tensor:
        return brain_embed


def ceiling_reconstruct(recon_dir: str | Path, out_dir: str | Path, blurry_ceiling: str | Path | None = None,
                        store: str | Path | None = None, device: str = "cpu", weights: str | None = None,
                        samples: int | None = None, batch_brains: int = 10, progress: bool = True) -> dict[str, Any]:
    """The generative ceiling of the reconstructions in ``recon_dir`` (same images, generator, settings, seeds).

    ``blurry_ceiling``: the img2img start images (a :func:`ceiling_blurry` directory); needed when the
    reconstructions started from blurry images. ``samples``: best-of-N (default: the reconstructions' N).
    """
    from mindeye.data.store import SubjectStore
    from mindeye.encoders.registry import get_encoder
    from mindeye.inference.blurry import BlurryImages
    from mindeye.inference.generators import generator_spec, load_generator
    from mindeye.inference.recon_dir import read_index
    from mindeye.inference.reconstruct import ReconstructSettings, reconstruct

    recon_dir = Path(recon_dir)
    index = read_index(recon_dir, f"{recon_dir} holds no reconstructions (no index.json); make them with "
                                  "`mindeye reconstruct` first")
    cfg = index.get("config") or {}
    if index.get("kind") != "reconstruction" or "settings" not in cfg:
        raise MindEyeError(f"{recon_dir} holds '{index.get('kind')}' output, not `mindeye reconstruct` output")
    store_path = store or cfg.get("store")
    if not store_path:
        raise MindEyeError(f"{recon_dir}/index.json does not name its subject store; pass --data STORE")
    subject = SubjectStore(store_path)
    image_index = np.array(sorted(int(k) for k in index["images"]), dtype=np.int64)
    spec = generator_spec(cfg["generator"])
    gen_weights = weights
    if gen_weights is None and cfg.get("generator_weights") and Path(str(cfg["generator_weights"])).exists():
        gen_weights = str(cfg["generator_weights"])
    generator = load_generator(spec.name, gen_weights, device=device)
    options: dict[str, Any] = {}
    if cfg.get("high_run") and (Path(cfg["high_run"]) / "config.yaml").exists():
        from mindeye.encoders.targets import target_options
        from mindeye.runs import read_run

        options = target_options(read_run(cfg["high_run"])[0], spec.condition_encoder)  # as the judge was built
    judge = get_encoder(spec.condition_encoder, device=device, **options)
    conds = torch.cat([judge.encode(_store_images_float(subject, image_index[i:i + 32]).to(device)).cpu()
                       for i in range(0, len(image_index), 32)])
    settings = ReconstructSettings(**{**cfg["settings"], "batch_brains": batch_brains})
    if samples is not None:
        settings.samples = samples
    blurry = None
    if cfg.get("img2img"):
        if blurry_ceiling is None:
            raise MindEyeError(f"the reconstructions in {recon_dir} started from blurry images (img2img); give the "
                               "blurry ceiling to start from (`mindeye reconstruct-blurry --ceiling`)")
        blurry = BlurryImages(blurry_ceiling)
    config = {"ceiling": CEILING_RECON, "of": str(recon_dir.resolve()), "store": str(subject.path.resolve()),
              "blurry_ceiling": None if blurry is None else str(Path(blurry_ceiling).resolve()),
              "judge": spec.condition_encoder}
    return reconstruct(conds, conds, image_index, _TruePrior(), generator, judge.encode, out_dir, settings,
                       blurry=blurry, config=config, image_ids=subject.image_ids, progress=progress)
