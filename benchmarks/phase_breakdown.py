"""Our training step per lever, with a phase breakdown (data / forward / backward / optimizer), one row each.

    python benchmarks/phase_breakdown.py --rows base,foreach,device,softclip,lean --probe probe.json
    python benchmarks/phase_breakdown.py --rows compile,cudagraphs --probe probe.json
    python benchmarks/phase_breakdown.py --size small --device cpu --rows base,device --steps 2 --warmup 1  # rehearsal

Rows (each on top of the trainer's defaults: bf16 autocast, fused AdamW on CUDA, host batches, BiMixCo):
  base        the trainer's defaults
  foreach     AdamW foreach instead of fused
  device      batches already on the device (no per-step host-to-device copy)
  softclip    the SoftCLIP phase (the last two thirds of training) instead of BiMixCo
  compile     torch.compile of the backbone, projector and prior network, + device
  cudagraphs  torch.compile mode=reduce-overhead (CUDA graphs) + device; the step's host-side Python
              (loss bookkeeping, optimizer) stays outside the graphs, so it is safe with a changing LR
  lean        activation checkpointing + optimizer in backward (memory lever)

Each row: build, ``--warmup`` steps, then ``--steps`` steps of the trainer's real ``train_step`` timed
wall-clock (samples/s, MFU), then ``--phase-steps`` steps of the same operations split by CUDA events
(perf_counter on the CPU): data = the batch's host-to-device copy, forward = the task loss under autocast,
backward = zero_grad + backward, optimizer = AdamW + OneCycleLR. MFU and the AdamW floor use the
hardware probe's measured numbers (``--probe``, from hw_probe.py) when given: floor = 28 bytes per
parameter (read p, g, m, v; write p, m, v in fp32) / the measured device-to-device bandwidth.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import (  # noqa: E402
    GIB,
    SMALL_VOXELS,
    SUBJ01_VOXELS,
    Optimizers,
    apply_checkpointing,
    apply_compile,
    flops_per_sample,
    load_bench_config,
    make_task,
    random_batches,
)

from mindeye.models.factory import build_model, parameter_counts  # noqa: E402
from mindeye.training.trainer import autocast_context, train_step  # noqa: E402

ROWS = {
    "base": {},
    "foreach": {"adam": "foreach"},
    "device": {"on_device": True},
    "softclip": {"phase": "softclip"},
    "compile": {"compile": "default", "on_device": True},
    "cudagraphs": {"compile": "reduce-overhead", "on_device": True},
    "lean": {"ckpt": True, "in_backward": True},
}


class Timer:
    """CUDA events on the GPU, perf_counter on the CPU; ``mark()`` between phases."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.marks = cuda, []

    def mark(self) -> None:
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.marks.append(e)
        else:
            self.marks.append(time.perf_counter())

    def spans_ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [1000 * (b - a) for a, b in zip(self.marks, self.marks[1:])]


def _to_device(batch: dict[str, Any], dev: str) -> dict[str, Any]:
    return {k: (v.to(dev, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def run_row(name: str, args: argparse.Namespace, probe: dict[str, Any] | None) -> dict[str, Any]:
    lever = {"adam": None, "on_device": False, "phase": "bimixco", "compile": None, "ckpt": False,
             "in_backward": False, **ROWS[name]}
    dev, cuda = args.device, args.device.startswith("cuda")
    cfg = load_bench_config(args.pipeline, args.size, None, [])
    cfg.train.batch_size = args.batch
    n_vox = SUBJ01_VOXELS if args.size == "full" else SMALL_VOXELS
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, n_vox, device=dev).train()
    n_params = parameter_counts(model)["total"]
    if lever["ckpt"]:
        apply_checkpointing(model, args.pipeline)
    if lever["compile"]:
        apply_compile(model, args.pipeline, lever["compile"])
    adam = lever["adam"] or ("fused" if cuda else "default")
    total = args.warmup + args.steps + args.phase_steps + 1
    opt = Optimizers(model, cfg, adam, lever["in_backward"], total)
    autocast, precision = autocast_context(cfg.train.precision, dev)
    task = make_task(args.pipeline, cfg, dev)
    batches = random_batches(args.pipeline, cfg, n_vox, args.batch, dev, lever["on_device"], 0)
    epoch = 0 if lever["phase"] == "bimixco" else task.mixco_epochs if args.pipeline == "high" else 0
    sched = SimpleNamespace(step=opt.schedule)
    step_opt = opt if opt.in_backward else opt.optimizers[0]

    def step() -> torch.Tensor:
        loss, _ = train_step(task, model, model, next(batches), epoch, step_opt, scheduler=sched, autocast=autocast)
        return loss

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    spans = []
    for _ in range(args.phase_steps):
        t = Timer(cuda)
        t.mark()
        b = _to_device(next(batches), dev)
        t.mark()
        with autocast:
            loss, _ = task.loss(model, model, b, epoch)
        t.mark()
        step_opt.zero_grad(set_to_none=True)
        loss.backward()
        t.mark()
        step_opt.step()
        opt.schedule()
        t.mark()
        spans.append(t.spans_ms())
    phases = [statistics.median(s[i] for s in spans) for i in range(4)] if spans else [float("nan")] * 4
    sps = args.batch * args.steps / elapsed
    flops = flops_per_sample(cfg.model, n_vox)["train"]
    peak = probe.get("gemm_tflops") if probe else None
    bw = probe.get("d2d_tb_per_s") if probe else None
    row = {"row": name, "pipeline": args.pipeline, "size": args.size, "batch": args.batch, "precision": precision,
           "adam": "in-backward" if lever["in_backward"] else adam, "ms_per_step": 1000 * elapsed / args.steps,
           "samples_per_s": sps, "data_ms": phases[0], "forward_ms": phases[1], "backward_ms": phases[2],
           "optimizer_ms": phases[3], "achieved_tflops": flops * sps / 1e12,
           "mfu_of_probe": flops * sps / 1e12 / peak if peak else None,
           "adam_floor_ms": 28 * n_params / (bw * 1e12) * 1000 if bw else None, "parameters": n_params,
           "peak_alloc_gib": torch.cuda.max_memory_allocated() / GIB if cuda else None,
           "peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB if cuda else None}
    return row


def _f(x: float | None, fmt: str = ".1f") -> str:
    return "n/a" if x is None or x != x else format(x, fmt)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="base,foreach,device,softclip,lean")
    ap.add_argument("--pipeline", choices=["high", "low"], default="high")
    ap.add_argument("--size", choices=["full", "small"], default="full")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--phase-steps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--probe", default=None, help="hw_probe.py --json output (measured peak and bandwidth)")
    ap.add_argument("--json", default=None, help="append one JSON line per row")
    args = ap.parse_args(argv)
    probe = json.loads(Path(args.probe).read_text()) if args.probe and Path(args.probe).is_file() else None
    rows = []
    for name in args.rows.split(","):
        if name not in ROWS:
            ap.error(f"unknown row {name!r}; choose from {', '.join(ROWS)}")
        try:
            rows.append(run_row(name, args, probe))
        except Exception as exc:  # a lever that fails is a row that says so; the others still run
            traceback.print_exc()
            rows.append({"row": name, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
        print(f"[{name}] done", file=sys.stderr, flush=True)
    mfu_ref = f"of the probe's {probe['gemm_tflops']:.0f} TFLOP/s" if probe else "(no probe)"
    print(f"\n{args.pipeline}-level {args.size}, batch {args.batch}, device {args.device}; phases: median of "
          f"{args.phase_steps} split steps; MFU {mfu_ref}")
    print("| row | precision | AdamW | samples/s | ms/step | data ms | forward ms | backward ms | optimizer ms "
          "| AdamW floor ms | MFU | peak alloc / reserved GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['row']} | FAILED: {r['error']} |||||||||||")
            continue
        mem = (f"{r['peak_alloc_gib']:.2f} / {r['peak_reserved_gib']:.2f}" if r["peak_alloc_gib"] is not None
               else "n/a (CPU)")
        mfu = f"{100 * r['mfu_of_probe']:.1f}%" if r["mfu_of_probe"] is not None else "n/a"
        print(f"| {r['row']} | {r['precision']} | {r['adam']} | {r['samples_per_s']:.1f} | {r['ms_per_step']:.1f} | "
              f"{_f(r['data_ms'])} | {_f(r['forward_ms'])} | {_f(r['backward_ms'])} | {_f(r['optimizer_ms'])} | "
              f"{_f(r['adam_floor_ms'])} | {mfu} | {mem} |")
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps({**r, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}) + "\n")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
