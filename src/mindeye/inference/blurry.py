"""Blurry low-level reconstructions: predicted VAE latents -> the VAE decoder -> PNGs (paper 2.2, Fig. 7).

``reconstruct_blurry`` runs a low-level run's model (voxels -> (latent, tokens)) on the test split and
decodes the latents with ``cfg.targets.blurry_decoder_weights`` (the paper configs: Versatile
Diffusion's VAE, ``shi-labs/versatile-diffusion`` vae/, as the authors decoded their blurry images) or,
when that is null, the VAE its targets came from (``cfg.targets.lowlevel_encoder`` /
``lowlevel_weights``, the SD image-variations VAE in the paper configs). Weights are loaded only when
present on this machine; otherwise one clear error names what to download. Output (resumable: images already in the index are skipped)::

    OUT/index.json          kind "blurry", the run, the decoder, and per image its file
    OUT/images/IIIII.png    blurry reconstruction of store image IIIII
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mindeye.errors import MindEyeError, WeightsUnavailableError
from mindeye.inference.recon_dir import entry_path, finished, open_index, read_index, save_float, write_index
from mindeye.utils.images import float_to_uint8, is_float_images, load_png, save_png, uint8_to_float
from mindeye.utils.logs import progress_bar


def blurry_batch(predict: Callable[[torch.Tensor], torch.Tensor], decode: Callable[[torch.Tensor], torch.Tensor],
                 voxels: torch.Tensor) -> torch.Tensor:
    """One batch of voxels -> blurry uint8 images (b, H, W, 3): ``predict`` latents, check them, ``decode``.
    The one blurry step: `mindeye reconstruct-blurry` and :meth:`mindeye.MindEyePipeline.blurry` call it."""
    with torch.no_grad():
        latents = predict(voxels)
        if not torch.isfinite(latents).all():
            raise MindEyeError("the low-level model predicted non-finite latents; nothing was kept from this batch "
                               "(check the run's weights)")
        return decode(latents)


def decode_latents_to_pngs(
    predict: Callable[[torch.Tensor], torch.Tensor],
    decode: Callable[[torch.Tensor], torch.Tensor],
    voxels: torch.Tensor,
    image_index: np.ndarray,
    out_dir: str | Path,
    config: dict[str, Any],
    batch_size: int = 32,
    image_ids: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """``predict`` voxels (b, V) -> latents, ``decode`` latents -> uint8 (b, H, W, 3) or float (b, 3, H, W);
    one PNG per row (for people) and, for float images, their float16 copy ``floats/IIIII.npy``, which the
    reconstruction (img2img, unclamped) and the metrics read instead of the 8-bit PNG."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = open_index(out_dir, "blurry", config)
    todo = [m for m in range(len(image_index)) if not finished(index, out_dir, image_index[m])]
    bar = progress_bar(total=len(image_index), initial=len(image_index) - len(todo), desc="blurry", unit="img",
               disable=not progress)
    for b0 in range(0, len(todo), batch_size):
        rows = todo[b0:b0 + batch_size]
        images = blurry_batch(predict, decode, voxels[rows])
        for j, m in enumerate(rows):
            idx = int(image_index[m])
            rec: dict[str, Any] = {"image_index": idx, "file": f"images/{idx:05d}.png"}
            if image_ids is not None:
                rec["image_id"] = image_ids[idx]
            if is_float_images(images):
                save_png(float_to_uint8(images[j:j + 1])[0], out_dir / rec["file"])
                rec["float_file"] = save_float(images[j], out_dir, idx)
            else:
                save_png(images[j], out_dir / rec["file"])
            index["images"][str(idx)] = rec
        write_index(out_dir, index)
        bar.update(len(rows))
    bar.close()
    return index


def blurry_decoder_weights(cfg: Any) -> str | None:
    """The VAE weights that decode a low-level run's latents: blurry_decoder_weights, else lowlevel_weights."""
    return cfg.targets.blurry_decoder_weights or cfg.targets.lowlevel_weights


def reconstruct_blurry(
    run_dir: str | Path,
    out_dir: str | Path,
    store: str | Path | None = None,
    weights: str | None = None,
    device: str = "cpu",
    limit: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
    subject: str | None = None,
    bottleneck: int | None = None,
) -> dict[str, Any]:
    """Blurry reconstructions of a low-level run's test images (``limit``: only the first N); a MindEye2 run
    (model.kind mindeye2) decodes the latents of its blurry head. ``bottleneck`` k: the predicted latents are
    first projected onto their own top-k principal components (fitted on every test sample, even under
    ``limit``; BrainBits-style, docs/evaluation.md)."""
    bp = blurry_path(run_dir, store, weights, device, subject)
    rows = slice(0, limit) if limit else slice(None)
    if bottleneck is None:
        return decode_latents_to_pngs(bp.predict, bp.decode, bp.split.voxels[rows], bp.split.image_index[rows],
                                      out_dir, bp.config, batch_size, bp.store.image_ids, progress)
    from mindeye.utils.pca import fit_top_k

    latents = predicted_latents(bp, batch_size)
    pca = fit_top_k(latents)
    kept = pca.project(latents, bottleneck)
    config = {**bp.config, "bottleneck": {"k": int(bottleneck), "explained_variance": pca.explained_variance(bottleneck),
                                          "rank": pca.rank, "fitted_on": LATENTS_FITTED_ON}}
    image_index = bp.split.image_index[rows]

    def predict(positions: torch.Tensor) -> torch.Tensor:
        return kept[positions.long()].to(device)

    return decode_latents_to_pngs(predict, bp.decode, torch.arange(len(image_index)), image_index, out_dir, config,
                                  batch_size, bp.store.image_ids, progress)


LATENTS_FITTED_ON = "the test set's predicted VAE latents (unsupervised PCA over every test sample)"


def predicted_latents(bp: BlurryPath, batch_size: int = 32) -> torch.Tensor:
    """The low-level model's predicted latents of every test sample (CPU), checked finite."""
    voxels = bp.split.voxels
    with torch.no_grad():
        latents = torch.cat([bp.predict(voxels[i:i + batch_size]).detach().cpu()
                             for i in range(0, len(voxels), batch_size)])
    if not torch.isfinite(latents).all():
        raise MindEyeError("the low-level model predicted non-finite latents (check the run's weights)")
    return latents


@dataclass
class BlurryPath:
    """A low-level run's blurry path: ``predict`` (voxels -> latents), ``decode`` (latents -> images), the test
    split and the store it came from, and the config a blurry index records."""

    predict: Callable[[torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]
    split: Any
    store: Any
    config: dict[str, Any]


def blurry_path(run_dir: str | Path, store: str | Path | None = None, weights: str | None = None,
                device: str = "cpu", subject: str | None = None) -> BlurryPath:
    """Load a low-level run (or low-level ridge run, or MindEye2 run with a blurry head), its test split and
    its blurry decoder: what :func:`reconstruct_blurry` and the blurry bottleneck curve share."""
    from mindeye.data.splits import load_eval_split
    from mindeye.encoders.registry import get_encoder
    from mindeye.runs import load_run_model, read_run

    run_dir = Path(run_dir)
    cfg, info = read_run(run_dir)
    ridge = cfg.model.kind == "ridge" and cfg.model.ridge.target == "lowlevel"  # the low-level ridge baseline
    me2 = cfg.model.kind == "mindeye2" and cfg.model.blurry.enabled  # MindEye2: the blurry head inside the model
    if me2:
        from mindeye.runs import subject_view

        info, _ = subject_view(info, subject, run_dir)  # a shared-subject run: that subject's store
    if cfg.model.kind != "lowlevel" and not ridge and not me2:
        raise MindEyeError(f"{run_dir} is a '{cfg.model.kind}' run; blurry reconstructions need a low-level run "
                           "(trained with model.kind=lowlevel, a ridge run with model.ridge.target=lowlevel, or a "
                           "mindeye2 run with model.blurry.enabled=true)")
    _, _, model, store_obj = load_run_model(run_dir, device, resolve_store(store, info, cfg),  # checks n_voxels
                                            subject=subject)
    split = load_eval_split(store_obj, store_obj.image_indices("test"), cfg.data.test_mode,
                            cfg.data.test_repetitions, average=cfg.data.test_average)
    dec_weights = weights or blurry_decoder_weights(cfg)
    try:
        decoder = get_encoder(cfg.targets.lowlevel_encoder, weights=dec_weights, device=device)
    except WeightsUnavailableError as exc:
        raise WeightsUnavailableError(
            f"the blurry-image decoder ({cfg.targets.lowlevel_encoder}, weights {dec_weights}) is not available: "
            f"{exc} (set targets.blurry_decoder_weights, or pass --weights, to use another VAE)") from None

    if ridge:
        from mindeye.models.factory import lowlevel_latent_shape

        shape = lowlevel_latent_shape(cfg.model)

        def predict(v: torch.Tensor) -> torch.Tensor:
            return model(v.float().to(device)).view(len(v), *shape)
    elif me2:
        from mindeye.runs import embed_voxels

        def predict(v: torch.Tensor) -> torch.Tensor:  # (M, R, V) under test_average: outputs -> mean of outputs
            return embed_voxels(model, v, device, which="blurry").to(device)
    else:
        def predict(v: torch.Tensor) -> torch.Tensor:
            return model(v.float().to(device))[0]

    config = {"run": str(run_dir.resolve()), "decoder": cfg.targets.lowlevel_encoder,
              "decoder_weights": dec_weights, "decoder_fingerprint": getattr(decoder, "fingerprint", None),
              "test_mode": cfg.data.test_mode}
    # float images where the decoder has them (the SD VAE: unclamped, as the authors' blurry images)
    decode = getattr(decoder, "decode_float", None) or decoder.decode
    return BlurryPath(predict, decode, split, store_obj, config)


def resolve_store(store: str | Path | None, info: dict[str, Any], cfg: Any) -> Path:
    path = store or info.get("store") or cfg.data.store
    if not path:
        raise MindEyeError("no subject store known for this run; pass --data STORE")
    return Path(path)


class BlurryImages:
    """The blurry reconstructions in a ``reconstruct-blurry`` output directory, by store image index."""

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir)
        index = read_index(self.dir, f"{self.dir} holds no blurry reconstructions (no index.json); make them with "
                           "`mindeye reconstruct-blurry --run LOW_RUN --out DIR`",
                           "it is damaged: run `mindeye reconstruct-blurry` into a new directory")
        if not isinstance(index, dict) or index.get("kind") != "blurry":
            kind = index.get("kind") if isinstance(index, dict) else "unknown"
            raise MindEyeError(f"{self.dir} holds '{kind}' output, not blurry reconstructions")
        self.index = index

    def get(self, image_index: int) -> np.ndarray:
        rec = self.index["images"].get(str(int(image_index)))
        if rec is None or not entry_path(self.dir, rec["file"]).exists():
            raise MindEyeError(f"{self.dir} has no blurry reconstruction of image {image_index}; re-run "
                               "`mindeye reconstruct-blurry` for the same test split")
        return load_png(entry_path(self.dir, rec["file"]))

    def get_float(self, image_index: int) -> torch.Tensor:
        """float (3, H, W) of the blurry image: its float copy (unclamped) when written, else its PNG."""
        rec = self.index["images"].get(str(int(image_index)))
        if rec is not None and rec.get("float_file") and entry_path(self.dir, rec["float_file"]).exists():
            return torch.from_numpy(np.load(entry_path(self.dir, rec["float_file"]))).float()
        return uint8_to_float(self.get(image_index)[None])[0]
