"""Computed (not measured) GPU memory per process: DDP vs FSDP2 at 1/2/4/8 GPUs, and the lean mode.

    PYTHONPATH=src python benchmarks/memory_budget.py            # full-size subject-1 models
    PYTHONPATH=src python benchmarks/memory_budget.py --json out.jsonl

Parameter counts come from the real models built on the meta device (no memory). Per parameter:
fp32 weight 4 B + fp32 gradient 4 B + AdamW exp_avg/exp_avg_sq 8 B = 16 B ("state"). The working set
on top of the state, per process:

* DDP: every process holds the whole state, plus DDP's gradient buckets (another fp32 gradient copy,
  4 B/param, ``gradient_as_bucket_view=False`` as the trainer builds it).
* FSDP2 (``train.parallel=fsdp``): the state is divided by the process count; while a unit runs its
  full fp32 parameters are all-gathered, and in backward its full fp32 gradient exists until it is
  reduce-scattered. The largest unit (the backbone head, 809 M parameters) sets the peak:
  2 x 4 B x its parameters (FSDP2 also prefetches the next unit; next to the head that is at most a
  4096^2 block, 67 MB, ignored).
* autocast keeps a bf16 copy of the weights it has cast during a forward: 2 B x the parameters in use
  (DDP: all of them; FSDP2: the unsharded unit, as the copy is freed with it).
* activations: the estimate in NOTES.md for batch 32 (~7.5 GiB: prior ~6, projector ~0.5, the rest
  ~1), scaled by the local batch (global 32 / processes) -- with activation checkpointing only the
  block inputs are kept (~1/6 of that for the prior's 6 layers, the backbone's are tiny anyway).

All of this is arithmetic, labelled "computed": the CUDA caching allocator's fragmentation, cuBLAS
workspaces and the CUDA context (~0.5-1 GiB) come on top and only a GPU run measures them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mindeye.config import load_config
from mindeye.models.factory import build_model

REPO = Path(__file__).resolve().parents[1]
GIB = 1024**3
ACTIVATIONS_B32_GIB = 7.5  # NOTES.md's estimate for the high-level step at batch 32, bf16 autocast


def counts(config: str, n_voxels: int = 15724) -> dict[str, int]:
    cfg = load_config(REPO / "src/mindeye/configs" / config)
    model = build_model(cfg.model, n_voxels, device="meta")
    backbone = getattr(model, "backbone", model)
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for p in backbone.head.parameters())
    return {"total": total, "largest_unit": head}


def budget(total: int, largest: int, world: int, parallel: str, lean: bool) -> dict[str, float]:
    state = 16 * total / (world if parallel == "fsdp" else 1)
    if parallel == "ddp":
        working = (4 * total if world > 1 else 0) + 2 * total  # buckets (multi-process) + autocast copy
    else:
        working = 2 * 4 * largest + 2 * largest  # unsharded fp32 weight + gradient, its bf16 copy
    acts = ACTIVATIONS_B32_GIB * GIB * (1 / world) * ((1 / 6) if lean else 1)
    return {"state_gib": state / GIB, "working_gib": working / GIB, "activations_gib": acts / GIB,
            "total_gib": (state + working + acts) / GIB}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="mindeye-subj01.yaml")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    c = counts(args.config)
    print(f"{args.config}: {c['total']:,} parameters; largest FSDP unit (backbone head) {c['largest_unit']:,}")
    print("COMPUTED, not measured (see the docstring for the terms)\n")
    print("| parallel | GPUs | lean | state (p+g+AdamW) GiB | working set GiB | activations GiB | total GiB |\n"
          "|---|---|---|---|---|---|---|")
    rows = []
    for parallel in ("ddp", "fsdp"):
        for world in (1, 2, 4, 8):
            if parallel == "fsdp" and world == 1:
                continue
            for lean in (False, True):
                b = {"parallel": parallel, "gpus": world, "lean": lean,
                     **budget(c["total"], c["largest_unit"], world, parallel, lean)}
                rows.append(b)
                print(f"| {parallel} | {world} | {'yes' if lean else 'no'} | {b['state_gib']:.1f} | "
                      f"{b['working_gib']:.1f} | {b['activations_gib']:.1f} | {b['total_gib']:.1f} |")
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps({**r, "config": args.config, "computed": True}) + "\n")
    return rows


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(0 if main() else 1)
