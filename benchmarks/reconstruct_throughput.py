"""Throughput of `mindeye reconstruct` (prior -> generator -> img2img -> best-of) with random weights.

``--size full`` builds the full-size architectures with random weights: Versatile Diffusion's image UNet
(SD v1 UNet, cross-attention 768) + SD VAE at 512 px, the 257 x 768 diffusion prior (depth 6) and the
CLIP ViT-L/14 judge. ``--size tiny`` uses toy models (a CPU smoke number only).

Target (issue): the 982-image test set x 16 samples x 20 steps in <= 30 minutes on one H100. The
benchmark times ``--brains`` brain samples after one warm-up batch and extrapolates to 982.

    python benchmarks/reconstruct_throughput.py --size full --device cuda --brains 8 --batch-brains 2
    python benchmarks/reconstruct_throughput.py --size tiny --device cpu
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from mindeye.inference.generators import DiffusersVaeCodec, ImageGenerator, load_generator
from mindeye.inference.reconstruct import ReconstructSettings, reconstruct
from mindeye.models.prior import DiffusionPrior, PriorNetwork


class RandomBlurry:
    def __init__(self, size: int) -> None:
        self.size = size

    def get(self, image_index: int) -> np.ndarray:
        return np.random.default_rng(image_index).integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)


def tiny_parts(device: str):
    t, d = 5, 32
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=d,
                                attention_head_dim=4, norm_num_groups=16)
    vae = AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, latent_channels=4)
    gen = ImageGenerator("tiny", unet.eval(), DiffusersVaeCodec(vae, 0.18215, 32), (t, d)).to(device)
    prior = DiffusionPrior(PriorNetwork(dim=d, depth=2, heads=2, dim_head=16, num_tokens=t, rotary_dim=16), timesteps=100)
    w = torch.randn(32 * 32 * 3, t * d, device=device) / 100

    def judge(images: torch.Tensor) -> torch.Tensor:
        return (images.to(device).float().flatten(1) @ w).view(-1, t, d)

    return gen, prior.to(device).eval(), judge, (t, d)


def full_parts(device: str, dtype: torch.dtype):
    from mindeye.encoders.registry import get_encoder

    gen = load_generator("versatile-diffusion", device=device, dtype=dtype, random_init=True)
    prior = DiffusionPrior(PriorNetwork(dim=768, depth=6, heads=12, dim_head=64, num_tokens=257), timesteps=100)
    prior = prior.to(device).eval()
    clip = get_encoder("clip-vit-l14-hidden", device=device, random_init=True)
    return gen, prior, clip.encode, (257, 768)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--brains", type=int, default=4, help="timed brain samples (after one warm-up batch)")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--prior-steps", type=int, default=100)
    ap.add_argument("--strength", type=float, default=0.15)
    ap.add_argument("--batch-brains", type=int, default=1)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dtype = getattr(torch, args.dtype) if args.device.startswith("cuda") else torch.float32
    gen, prior, judge, (t, d) = (full_parts(args.device, dtype) if args.size == "full" else tiny_parts(args.device))
    settings = ReconstructSettings(samples=args.samples, steps=args.steps, img2img_strength=args.strength,
                                   prior_steps=args.prior_steps, batch_brains=args.batch_brains)
    warm = args.batch_brains
    m = warm + args.brains
    backbone = torch.randn(m, t, d) / d**0.5
    projector = torch.randn(m, t, d)
    out = tempfile.mkdtemp(prefix="recon_bench_")
    try:
        idx = np.arange(m)
        reconstruct(backbone[:warm], projector[:warm], idx[:warm], prior, gen, judge, out, settings,
                    blurry=RandomBlurry(gen.image_size), progress=False)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        reconstruct(backbone, projector, idx, prior, gen, judge, out, settings, blurry=RandomBlurry(gen.image_size),
                    progress=False)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    per_brain = dt / args.brains
    result = {
        "size": args.size, "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "dtype": str(dtype).replace("torch.", ""), "samples": args.samples, "steps": args.steps,
        "prior_steps": args.prior_steps, "img2img_strength": args.strength, "batch_brains": args.batch_brains,
        "timed_brain_samples": args.brains, "seconds": round(dt, 3),
        "brain_samples_per_s": round(args.brains / dt, 4),
        "generated_images_per_s": round(args.brains * args.samples / dt, 3),
        "extrapolated_982_minutes": round(982 * per_brain / 60, 1),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
