"""Our `openclip-vit-bigg14-tokens` vs the authors' own `FrozenOpenCLIPImageEmbedder`, same (tiny) weights.

The authors' code is read at run time from a checkout of MedARC-AI/MindEyeV2 (never copied here):

    pip install einops omegaconf          # what their sgm modules import (not mindeye dependencies)
    PYTHONPATH=src python benchmarks/compare_bigg_sgm.py --authors-src /path/to/MindEyeV2/src

Their embedder (``sgm/modules/encoders/modules.py``, built in ``src/Train.ipynb`` with
``output_tokens=True, only_tokens=True``) downloads ViT-bigG/14 in its constructor, so the script builds
the object around a tiny open_clip ViT of the same class instead (random weights, 16 x 16 patches as
bigG's 256 tokens) with every attribute its ``__init__`` sets, feeds both the same [0, 1] float images
(as their ``coco_images_224_float16.hdf5``) and prints max |diff| of the (N, 256, width) tokens. Their
``forward`` runs unchanged: its kornia resize, its ``(x + 1) / 2``, its normalisation, open_clip's tokens.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path

import torch


def load_embedder_class(src: Path):
    root = src / "generative_models" / "sgm"
    if not (root / "modules" / "encoders" / "modules.py").is_file():
        raise SystemExit(f"{root} has no modules/encoders/modules.py; --authors-src must be MindEyeV2/src")
    for name, path in (("sgm", root), ("sgm.modules", root / "modules")):
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(path)]
        sys.modules[name] = pkg
    return importlib.import_module("sgm.modules.encoders.modules").FrozenOpenCLIPImageEmbedder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--authors-src", required=True, type=Path, help="MindEyeV2/src (holds generative_models/)")
    ap.add_argument("--image-size", type=int, default=48, help="side of the input images (theirs: 224)")
    args = ap.parse_args()
    Embedder = load_embedder_class(args.authors_src.resolve())

    from mindeye.encoders import get_encoder

    config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 2, "width": 24, "layers": 2,
                                              "head_width": 8, "mlp_ratio": 2.0}}
    ours = get_encoder("openclip-vit-bigg14-tokens", random_init=True, config=config)

    import open_clip

    model = open_clip.model.CLIP(embed_dim=16, vision_cfg=config["vision_cfg"],
                                 text_cfg={"context_length": 8, "vocab_size": 50, "width": 16, "heads": 2, "layers": 1})
    model.visual.load_state_dict(ours.visual.state_dict())
    del model.transformer
    theirs = Embedder.__new__(Embedder)
    torch.nn.Module.__init__(theirs)
    # every attribute FrozenOpenCLIPImageEmbedder.__init__ sets, with Train.ipynb's arguments
    theirs.model, theirs.max_crops, theirs.pad_to_max_len, theirs.repeat_to_max_len = model, 0, False, False
    theirs.device, theirs.max_length, theirs.antialias, theirs.ucg_rate = "cpu", 77, True, 0.0
    theirs.register_buffer("mean", torch.Tensor([0.48145466, 0.4578275, 0.40821073]), persistent=False)
    theirs.register_buffer("std", torch.Tensor([0.26862954, 0.26130258, 0.27577711]), persistent=False)
    theirs.unsqueeze_dim, theirs.stored_batch = False, None
    theirs.model.visual.output_tokens = theirs.output_tokens = True
    theirs.only_tokens, theirs.l2_norm_tokens = True, False
    theirs.freeze()
    # their resize is to a fixed (224, 224); at this width the tower's input is 32 px
    theirs.preprocess = types.MethodType(_their_preprocess_at(Embedder.preprocess, 32), theirs)

    images = torch.rand(3, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t_theirs = theirs(images).float()
        t_ours = ours.encode(images)
    print(f"tokens {tuple(t_ours.shape)}  max |diff| {float((t_theirs - t_ours).abs().max()):.2e}  "
          f"(scale {float(t_theirs.abs().mean()):.2e})")


def _their_preprocess_at(preprocess, size: int):
    """Their ``preprocess`` with its hard-coded (224, 224) replaced by ``size`` (the tiny tower's input)."""
    import kornia

    resize = kornia.geometry.resize

    def patched(self, x):
        kornia.geometry.resize = lambda img, _size, **kw: resize(img, (size, size), **kw)
        try:
            return preprocess(self, x)
        finally:
            kornia.geometry.resize = resize

    return patched


if __name__ == "__main__":
    main()
