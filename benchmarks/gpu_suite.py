"""One script for a lent GPU (<= 8 minutes): every number issue 17 asks for, written to one table.

    PYTHONPATH=src python benchmarks/gpu_suite.py --out "$OUT"             # on the GPU machine
    PYTHONPATH=src python benchmarks/gpu_suite.py --out /tmp/suite --dry   # CPU rehearsal, tiny sizes

Steps, in order (each a subprocess with its own timeout, cut to what is left of ``--budget``; a step
that fails or times out is recorded as such and the suite goes on):

1. ``mindeye simulate --scale nsd`` starts in the background (CPU-bound, overlaps steps 2-4).
2. Full-size subject-1 high-level step: reference (online CLIP), reference (cached), ours, in one run.
3. The same for the low-level step.
4. Lean mode: activation checkpointing + optimizer-in-backward; 8-bit AdamW if bitsandbytes imports.
5. Random-init full-size CLIP ViT-L/14 hidden-state cache of the simulated store (``mindeye embed``).
6. The whole ``mindeye train`` loop on that store, >= 300 timed steps, per ``train.data_path``
   (``train_throughput.py --whole-train``), then once more with ``train.activation_checkpointing``.
7. Reconstruction: best-of-16, 20 UniPC steps, random-init Versatile Diffusion image UNet + VAE
   (``reconstruct_throughput.py --size full``), seconds per test image and the 982-image projection.
8. ``data_throughput.py --device cuda`` (the data path alone: pinned prefetch / resident on the GPU).

Writes ``OUT/gpu_suite.md`` (card, date, torch, each step's table as printed) and ``OUT/bench.jsonl``
(every row the scripts emit). Copy the tables into benchmarks/README.md and NOTES.md ("Measured").
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (gpu_suite.md, bench.jsonl, scratch data)")
    ap.add_argument("--budget", type=float, default=470.0, help="seconds for the whole suite")
    ap.add_argument("--dry", action="store_true", help="CPU rehearsal with tiny sizes")
    ap.add_argument("--train-steps", type=int, default=300, help="timed steps of the whole-train runs")
    ap.add_argument("--limit-scale", type=float, default=None,
                    help="multiply every step's time limit (default 1; 4 with --dry: a loaded CPU is slow)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = out / "scratch" if args.dry else Path(os.environ.get("TMPDIR", "/tmp")) / "mindeye-gpu-suite"
    scratch.mkdir(parents=True, exist_ok=True)
    jsonl, report = out / "bench.jsonl", out / "gpu_suite.md"
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.monotonic()
    dev = "cpu" if args.dry else "cuda"
    size = ["--size", "small"] if args.dry else []
    steps = ["--steps", "1", "--warmup", "1"] if args.dry else ["--steps", "15", "--warmup", "3"]
    store = scratch / ("sim-tiny" if args.dry else "sim-nsd")
    clip = "standin-clip-hidden" if args.dry else "clip-vit-l14-hidden"
    train_steps = 3 if args.dry else args.train_steps

    import torch

    card = "CPU (dry run)" if args.dry else torch.cuda.get_device_name(0)
    with open(report, "w") as f:
        f.write(f"# GPU suite\n\ncard: {card}; date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
                f"torch {torch.__version__}; cuda {torch.version.cuda}; budget {args.budget:.0f} s"
                f"{' (DRY RUN: tiny sizes on the CPU, numbers meaningless)' if args.dry else ''}\n")

    def left() -> float:
        return args.budget - (time.monotonic() - start)

    scale = args.limit_scale or (4.0 if args.dry else 1.0)

    def step(title: str, cmd: list[str], limit: float, min_needed: float = 15.0) -> bool:
        timeout = min(limit * scale, left())
        with open(report, "a") as f:
            f.write(f"\n## {title}\n\n    {shlex.join(cmd)}\n\n")
        if timeout < min_needed:
            with open(report, "a") as f:
                f.write(f"SKIPPED: {left():.0f} s of the budget left\n")
            return False
        t0 = time.monotonic()
        try:
            run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
            text, ok = run.stdout + (f"\n[stderr tail]\n{run.stderr[-1500:]}" if run.returncode else ""), run.returncode == 0
        except subprocess.TimeoutExpired as exc:
            text = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            text, ok = text + f"\nTIMED OUT after {timeout:.0f} s", False
        with open(report, "a") as f:
            f.write(text.rstrip() + f"\n\n({'ok' if ok else 'FAILED'}, {time.monotonic() - t0:.0f} s)\n")
        print(f"[{time.monotonic() - start:5.0f} s] {title}: {'ok' if ok else 'FAILED'}", flush=True)
        return ok

    # 1. the simulated store, in the background
    sim = None
    if not (store / "meta.json").exists():
        sim = subprocess.Popen([py, "-m", "mindeye", "simulate", "--scale", "tiny" if args.dry else "nsd",
                                "--out", str(store), "--overwrite", "--quiet"], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    tt = [py, "benchmarks/train_throughput.py", "--device", dev, *size, "--json", str(jsonl)]
    # 2-4. step throughput, ours vs the reference, then the lean levers
    step("high-level step: reference vs ours (full size, batch 32)", [*tt, "--pipeline", "high", "--compare", *steps], 110)
    step("low-level step: reference vs ours", [*tt, "--pipeline", "low", "--compare", *steps], 70)
    step("lean mode: checkpointing + optimizer in backward (high level)",
         [*tt, "--pipeline", "high", "--checkpointing", "--optimizer-in-backward", *steps], 45)
    try:
        import bitsandbytes  # noqa: F401

        step("lean mode + 8-bit AdamW states", [*tt, "--pipeline", "high", "--checkpointing", "--adam-8bit", "8bit",
                                                 *steps], 45)
    except ImportError:
        with open(report, "a") as f:
            f.write("\n## lean mode + 8-bit AdamW states\n\nSKIPPED: bitsandbytes is not installed\n")
    # 5. the store's CLIP cache
    if sim is not None:
        try:
            sim.wait(timeout=max(left() - 150, 1))
        except subprocess.TimeoutExpired:
            sim.kill()
        if sim.returncode:
            with open(report, "a") as f:
                f.write(f"\n## simulate\n\nFAILED: {sim.stderr.read()[-1500:] if sim.stderr else ''}\n")
    embed = [py, "-m", "mindeye", "embed", "--data", str(store), "--encoder", clip, "--device", dev, "--no-progress"]
    ok = step("target cache for the simulated store", embed + ([] if args.dry else ["--random-init"]), 80)
    # 6. the whole trainer loop
    if ok:
        cfg = ["--set", "data.val_images=0"] + (["--set", "model.backbone.hidden=64", "--set", "model.prior.depth=1"]
                                                if args.dry else [])
        whole = [*tt, "--pipeline", "high", "--whole-train", "--data", str(store), "--warmup", "5", "--steps",
                 str(train_steps), *cfg]
        if not args.dry:
            whole.append("--random-init-targets")
        step(f"whole `mindeye train` loop, {train_steps} steps, per data path", [*whole, "--data-paths",
                                                                               "simple,prefetch,resident"], 150)
        step("whole train loop, lean mode (train.activation_checkpointing=true)",
             [*whole, "--data-paths", "auto", "--set", "train.activation_checkpointing=true"], 60)
    # 7. reconstruction
    rec = [py, "benchmarks/reconstruct_throughput.py", "--device", dev]
    step("reconstruction: best-of-16, 20 UniPC steps", rec + (["--size", "tiny", "--brains", "1"] if args.dry else
         ["--size", "full", "--brains", "4", "--batch-brains", "1", "--dtype", "bfloat16"]), 100)
    # 8. the data path alone, on the device
    step("data path alone (no model), on the device", [py, "benchmarks/data_throughput.py", "--device", dev,
         "--pipeline", "high", "--batches", "3" if args.dry else "100", "--scratch", str(scratch / "data"),
         "--json", str(jsonl), *(["--tiny"] if args.dry else [])], 90)
    with open(report, "a") as f:
        f.write(f"\nsuite finished in {time.monotonic() - start:.0f} s\n")
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
