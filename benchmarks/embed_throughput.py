"""Images/s of the full-size CLIP ViT-L/14 image tower (random weights: timing only) on CPU and GPU.

    python benchmarks/embed_throughput.py                      # CPU (and CUDA when available)
    python benchmarks/embed_throughput.py --cpu-images 16 --gpu-images 8192 --gpu-batch 512

Times ``encoder.encode`` on uint8 images (preprocessing included: resize 256 -> 224 bicubic, crop,
normalise, ViT-L/14, projection of all 257 tokens, CLS normalisation), after a warm-up batch, plus the
device-to-host copy of the float16 targets as the cache does it. Target on an H100: >= 1,000 images/s.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mindeye.encoders import get_encoder


def measure(name: str, device: str, n_images: int, batch: int, image_size: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    enc = get_encoder(name, device=device, random_init=True)  # full-size ViT-L/14 architecture
    build_s = time.perf_counter() - t0
    images = np.random.default_rng(0).integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)
    enc.encode(images[: min(batch, 2)])  # warm-up (kernel selection, allocations)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    done, t0 = 0, time.perf_counter()
    while done < n_images:
        n = min(batch, n_images - done)
        enc.encode(images[:n]).to(torch.float16).cpu()
        done += n
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return done / (time.perf_counter() - t0), build_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="clip-vit-l14-hidden")
    ap.add_argument("--image-size", type=int, default=256, help="store image side (NSD webdataset: 256)")
    ap.add_argument("--cpu-images", type=int, default=4)
    ap.add_argument("--cpu-batch", type=int, default=2)
    ap.add_argument("--gpu-images", type=int, default=4096)
    ap.add_argument("--gpu-batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    ips, build = measure(args.encoder, "cpu", args.cpu_images, args.cpu_batch, args.image_size)
    rows.append(("cpu", f"{torch.get_num_threads()} threads", "float32", args.cpu_batch, args.cpu_images, ips, build))
    if torch.cuda.is_available():
        ips, build = measure(args.encoder, "cuda", args.gpu_images, args.gpu_batch, args.image_size)
        rows.append(("cuda", torch.cuda.get_device_name(), "float16", args.gpu_batch, args.gpu_images, ips, build))
    else:
        rows.append(("cuda", "not available", "-", "-", "-", None, None))

    print(f"\n{args.encoder} (full-size ViT-L/14, random weights), {args.image_size}px uint8 input")
    print(f"{'device':<6} {'hardware':<28} {'dtype':<8} {'batch':>5} {'images':>6} {'images/s':>10} {'build s':>8}")
    for dev, hw, dt, b, n, ips, build in rows:
        ips_s = f"{ips:10.2f}" if ips is not None else f"{'-':>10}"
        build_s = f"{build:8.1f}" if build is not None else f"{'-':>8}"
        print(f"{dev:<6} {hw:<28} {dt:<8} {b!s:>5} {n!s:>6} {ips_s} {build_s}")
    if torch.cuda.is_available():
        print(f"GPU target >= 1000 images/s: {'met' if rows[1][5] >= 1000 else 'NOT met'}")


if __name__ == "__main__":
    main()
