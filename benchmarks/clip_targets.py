"""The cost of the two ways to give the high-level model augmented CLIP targets (issue 25, item 4).

    python benchmarks/clip_targets.py                 # full-size ViT-L/14 (random weights), CPU
    python benchmarks/clip_targets.py --tiny          # a tiny CLIP tower (seconds; what the tests run)
    python benchmarks/clip_targets.py --device cuda   # on a GPU

(a) ``targets.online`` (the paper config, the authors' way): every step, the batch's images are read from
    the store, augmented with the authors' kornia pipeline and embedded by CLIP ViT-L/14.
(b) ``targets.augmented_views: K`` (the fast option): the K views are embedded once (``mindeye embed
    --views K``, K x the plain embedding); a step only reads one cached float16 row per sample.

Prints, per training batch (32 images, 256 px store images): the augmentation, the CLIP forward, the
whole online step, and the cached-view gather; plus the one-off cost of embedding K views per image for
the 8,859 training images of NSD subject 1, and how long 66,240 steps of each take.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mindeye.encoders import get_encoder
from mindeye.encoders.online import clip_augmentation

NSD_IMAGES, PAPER_STEPS = 8_859, 66_240


def timed(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=32, help="training batch (paper: 32)")
    p.add_argument("--clip-batch", type=int, default=4, help="images per timed CLIP forward (scaled to --batch)")
    p.add_argument("--views", type=int, default=8, help="K cached views per image for option (b)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="a tiny CLIP tower instead of ViT-L/14")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    config = None
    if args.tiny:
        from transformers import CLIPVisionConfig

        config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=224, patch_size=32, projection_dim=16)
    enc = get_encoder("clip-vit-l14-hidden", device=args.device, random_init=True, config=config,
                      preprocess="reference")
    store = np.random.default_rng(0).integers(0, 256, (512, 256, 256, 3), dtype=np.uint8)  # a store's images
    idx = np.sort(np.random.default_rng(1).choice(len(store), args.batch, replace=False))
    augment = clip_augmentation(224).to(args.device)

    def read():
        return torch.from_numpy(store[idx]).to(args.device).permute(0, 3, 1, 2).float().div_(255)

    x = read()
    aug = augment(x)
    t_read = timed(read, args.repeats, args.device)
    t_aug = timed(lambda: augment(x), args.repeats, args.device)
    sub = aug[: args.clip_batch]
    t_clip = timed(lambda: enc.encode(sub), args.repeats, args.device) * args.batch / len(sub)
    online_step = t_read + t_aug + t_clip

    shape = (len(store), args.views, *enc.output_shape)
    views = np.lib.format.open_memmap("/tmp/clip_targets_views.npy", mode="w+", dtype=np.float16, shape=shape)
    k = np.random.default_rng(2).integers(0, args.views, args.batch)
    t_gather = timed(lambda: torch.from_numpy(np.asarray(views[idx, k], dtype=np.float32)).to(args.device),
                     args.repeats, args.device)
    per_image_clip = t_clip / args.batch
    embed_views = NSD_IMAGES * args.views * (per_image_clip + (t_aug + t_read) / args.batch)

    rows = [
        ("(a) online: read 32 images", t_read),
        ("(a) online: kornia augmentation", t_aug),
        ("(a) online: CLIP forward", t_clip),
        ("(a) online: per step, total", online_step),
        (f"(b) cached views: gather 32 rows of K={args.views}", t_gather),
    ]
    model = "tiny CLIP" if args.tiny else "ViT-L/14"
    print(f"| step cost ({model}, {args.device}, batch {args.batch}) | ms |")
    print("|---|---:|")
    for name, sec in rows:
        print(f"| {name} | {sec * 1e3:,.1f} |")
    print()
    print("| over the paper's schedule (66,240 steps, 8,859 images) | hours |")
    print("|---|---:|")
    print(f"| (a) online targets, every step | {online_step * PAPER_STEPS / 3600:,.2f} |")
    print(f"| (b) embed K={args.views} views once | {embed_views / 3600:,.2f} |")
    print(f"| (b) cached gathers, every step | {t_gather * PAPER_STEPS / 3600:,.3f} |")
    return {"read": t_read, "augment": t_aug, "clip": t_clip, "online_step": online_step, "gather": t_gather,
            "embed_views": embed_views}


if __name__ == "__main__":
    main()
