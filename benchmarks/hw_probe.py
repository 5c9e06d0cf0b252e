"""Measure this card at the start of a GPU run: dense bf16 GEMM TFLOP/s and device-to-device bandwidth.

    python benchmarks/hw_probe.py --json probe.json     # CUDA; on the CPU: tiny sizes (a rehearsal)

MFU and the optimizer's memory-traffic floor are then relative to what this card delivered in this run,
not to a datasheet. GEMM: an n x n x n bf16 product (default 8192), 3 warm-ups then the mean of 10 timed
products (2 n^3 FLOP each), on random data. Bandwidth: a 2 GiB device-to-device copy, bytes read + written
per second (the AdamW floor counts the same way: read p, g, m, v and write p, m, v).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def probe(device: str, n: int = 8192, copy_bytes: int = 2 << 30) -> dict[str, float | str]:
    cuda = device.startswith("cuda")
    if not cuda:  # rehearsal: small sizes, fp32 (bf16 GEMM on a CPU says nothing)
        n, copy_bytes = 512, 64 << 20

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync()
    t0 = time.perf_counter()
    reps = 10
    for _ in range(reps):
        a @ b
    sync()
    gemm = 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12
    del a, b
    src = torch.empty(copy_bytes // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    sync()
    bw = 2 * copy_bytes * reps / (time.perf_counter() - t0) / 1e12
    name = torch.cuda.get_device_name(torch.device(device)) if cuda else "CPU (rehearsal sizes)"
    return {"device": name, "gemm_dtype": str(dtype).split(".")[-1], "gemm_n": n, "gemm_tflops": gemm,
            "copy_gib": copy_bytes / 2**30, "d2d_tb_per_s": bw, "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None, help="write the result to this file")
    args = ap.parse_args(argv)
    r = probe(args.device)
    print(f"hardware probe ({r['device']}, torch {r['torch']}): {r['gemm_dtype']} GEMM {r['gemm_n']}^3 "
          f"{r['gemm_tflops']:.4g} TFLOP/s; device-to-device copy {r['d2d_tb_per_s']:.4g} TB/s (read + write)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
