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

MindEye2 (``--config mindeye2-pretrain.yaml``, docs/mindeye2.md): 7 subjects' ridges (NSD subj02-08), the
backbone head (1664 x 256 outputs, 1.745 B parameters) is the largest FSDP unit; activations are the v1
estimate scaled by the token width (1664 / 768; the prior dominates, 256 vs 257 tokens) and by the
config's global batch (their 24 / 21), plus the blurry head (~0.3 GiB at batch 32). ``--cards`` prints
which settings fit one card of 24/40/80 GB.

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


def counts(config: str, n_voxels: int = 15724, overrides: list[str] | None = None) -> dict[str, int]:
    cfg = load_config(REPO / "src/mindeye/configs" / config, overrides)
    if cfg.model.kind == "mindeye2" and "pretrain" in config:
        from mindeye.constants import NSDGENERAL_VOXELS

        n_voxels = {f"subj0{s}": n for s, n in NSDGENERAL_VOXELS.items() if s != 1}  # type: ignore[assignment]
    model = build_model(cfg.model, n_voxels, device="meta")
    backbone = getattr(model, "backbone", model)
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for p in backbone.head.parameters())
    acts = ACTIVATIONS_B32_GIB
    if cfg.model.kind == "mindeye2":  # see the docstring: width-scaled v1 estimate + the blurry head
        acts = (ACTIVATIONS_B32_GIB - 1.0) * cfg.model.backbone.dim / 768 + 1.0 + 0.3
    return {"total": total, "largest_unit": head, "activations_b32_gib": acts, "batch": cfg.train.batch_size}


def budget(total: int, largest: int, world: int, parallel: str, lean: bool,
           activations_b32_gib: float = ACTIVATIONS_B32_GIB, batch: int = 32) -> dict[str, float]:
    state = 16 * total / (world if parallel == "fsdp" else 1)
    if parallel == "ddp":
        working = (4 * total if world > 1 else 0) + 2 * total  # buckets (multi-process) + autocast copy
    else:
        working = 2 * 4 * largest + 2 * largest  # unsharded fp32 weight + gradient, its bf16 copy
    acts = activations_b32_gib * (batch / 32) * GIB * (1 / world) * ((1 / 6) if lean else 1)
    return {"state_gib": state / GIB, "working_gib": working / GIB, "activations_gib": acts / GIB,
            "total_gib": (state + working + acts) / GIB}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="mindeye-subj01.yaml")
    ap.add_argument("--json", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. --set model.backbone.hidden=1024 (their notebook's default)")
    ap.add_argument("--cards", action="store_true", help="also: which settings fit one 24/40/80 GB card")
    args = ap.parse_args(argv)
    c = counts(args.config, overrides=args.overrides)
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
                     **budget(c["total"], c["largest_unit"], world, parallel, lean,
                              c.get("activations_b32_gib", ACTIVATIONS_B32_GIB), c.get("batch", 32))}
                rows.append(b)
                print(f"| {parallel} | {world} | {'yes' if lean else 'no'} | {b['state_gib']:.1f} | "
                      f"{b['working_gib']:.1f} | {b['activations_gib']:.1f} | {b['total_gib']:.1f} |")
    if args.cards:
        print("\n| card | fits (computed; +~1 GiB CUDA context/workspaces) |\n|---|---|")
        for gb in (24, 40, 80):
            cap = gb * 1e9 / GIB - 1.0
            ok = [f"{r['parallel']} x{r['gpus']}{' lean' if r['lean'] else ''}" for r in rows if r["total_gib"] <= cap]
            print(f"| {gb} GB | {', '.join(ok) or 'nothing: needs FSDP over more GPUs or CPU offload'} |")
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps({**r, "config": args.config, "computed": True}) + "\n")
    return rows


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(0 if main() else 1)
