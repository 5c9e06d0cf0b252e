"""AdamW on the CPU: torch's for-loop default vs foreach vs fused, in one run (issue 22).

Two measurements, interleaved rounds, medians and spread:

1. ``step``: ``optimizer.step()`` alone on the parameter shapes of a reduced MindEye backbone
   (15,724 voxels -> hidden 1024, 2 blocks, the full 257 x 768 head: 219M parameters; ``--tokens`` less) with random
   gradients, against the memory-traffic floor measured in the same run (AdamW reads parameter,
   gradient and both moments and writes parameter and both moments: 7 x 4 bytes per parameter,
   divided by this machine's in-place ``a += b`` bandwidth measured just before). Peak-RSS growth of one step
   per kernel is measured in a fresh subprocess each (the peak is per process).
2. ``train``: the whole ``mindeye train`` loop (``Trainer.fit``, data path and validation included)
   of the demo's high-level config for one epoch on the tiny simulated subject, the kernel chosen by
   the trainer swapped in: the ratio a user sees.

    PYTHONPATH=src python benchmarks/cpu_optimizer.py                # both, ~3 min on 2 cores
    PYTHONPATH=src python benchmarks/cpu_optimizer.py --only step --rounds 5
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

KERNELS = {"forloop": {"foreach": False, "fused": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def backbone_shapes(voxels: int = 15724, hidden: int = 1024, blocks: int = 2, tokens: int = 257):
    head = tokens * 768
    shapes = [(hidden, voxels), (hidden,), (hidden,), (hidden,)]
    for _ in range(blocks):
        shapes += [(hidden, hidden), (hidden,), (hidden,), (hidden,)]
    return shapes + [(head, hidden), (head,)]


def make_params(shapes, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(*shape, generator=gen) * 0.02)
        p.grad = torch.randn(*shape, generator=gen) * 1e-3
        params.append(p)
    return params


def inplace_bandwidth(n: int = 64 * 2**20) -> float:
    """Bytes/s of a large in-place ``a += b`` (read a, read b, write a back: 3 x 4 B per element, no
    write-allocate, the access pattern of AdamW's in-place updates), best of 5."""
    a, b = torch.rand(n), torch.rand(n)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a.add_(b)
        best = min(best, time.perf_counter() - t0)
    return 3 * 4 * n / best


def _status_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _rss_child(kernel: str, tokens: int) -> None:
    """Subprocess body: peak-RSS growth (MiB) of the second optimizer step, printed as JSON."""
    torch.set_num_threads(1)
    params = make_params(backbone_shapes(tokens=tokens))
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, **KERNELS[kernel])
    opt.step()  # the moments are allocated here (same for every kernel)
    try:  # Linux: reset the peak-RSS mark, so the peak below is this step's alone
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS")
        opt.step()
        growth = _status_kib("VmHWM") - before
    except OSError:  # elsewhere: the process's lifetime peak (includes the first step)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        opt.step()
        growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"kernel": kernel, "step_peak_growth_mib": growth / 1024}))


def bench_step(rounds: int, tokens: int) -> list[dict]:
    torch.set_num_threads(1)
    shapes = backbone_shapes(tokens=tokens)
    n = sum(torch.Size(s).numel() for s in shapes)
    bandwidth = inplace_bandwidth()
    floor_ms = 7 * 4 * n / bandwidth * 1e3
    opts = {}
    for name, kw in KERNELS.items():
        params = make_params(shapes)
        opts[name] = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, **kw)
        opts[name].step()  # allocate the moments outside the timing
    times: dict[str, list[float]] = {k: [] for k in KERNELS}
    for _ in range(rounds):
        for name, opt in opts.items():  # interleaved: machine noise hits every kernel alike
            t0 = time.perf_counter()
            opt.step()
            times[name].append((time.perf_counter() - t0) * 1e3)
    rows = []
    for name in KERNELS:
        out = subprocess.run([sys.executable, __file__, "--rss-child", name, "--tokens", str(tokens)],
                             capture_output=True, text=True, check=True)
        rss = json.loads(out.stdout.strip().splitlines()[-1])["step_peak_growth_mib"]
        med = statistics.median(times[name])
        rows.append({"kernel": name, "params_M": n / 1e6, "median_ms": med, "min_ms": min(times[name]),
                     "max_ms": max(times[name]), "x_floor": med / floor_ms, "floor_ms": floor_ms,
                     "step_peak_growth_mib": rss})
    base = next(r["median_ms"] for r in rows if r["kernel"] == "forloop")
    for r in rows:
        r["speedup_vs_forloop"] = base / r["median_ms"]
    return rows


def bench_train(rounds: int) -> list[dict]:
    from mindeye.config import load_config, resolve_config_path
    from mindeye.data.simulate import simulate_subject
    from mindeye.encoders.cache import embed_store
    from mindeye.training import trainer as trainer_mod

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="cpu-optimizer-"))
    store = work / "store"
    simulate_subject(store, scale="tiny", seed=0, progress=False)
    embed_store(store, "standin-clip-hidden", progress=False)
    cfg = load_config(resolve_config_path("demo-highlevel"), ["train.epochs=1", "data.val_images=20",
                                                              "eval.pool=20", "seed=0"])
    original = trainer_mod.adamw_implementation
    times: dict[str, list[float]] = {"forloop": [], "fused": []}
    losses: dict[str, float] = {}
    try:
        for r in range(rounds):
            for name in times:
                trainer_mod.adamw_implementation = lambda device, sharded=False, _k=name: dict(KERNELS[_k])
                run = work / f"run-{name}-{r}"
                t0 = time.perf_counter()
                trainer_mod.Trainer(cfg, run, store=store, device="cpu", progress=False).fit()
                times[name].append(time.perf_counter() - t0)
                last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
                losses[name] = next(rec["loss"] for rec in reversed(last) if "loss" in rec)
    finally:
        trainer_mod.adamw_implementation = original
    base = statistics.median(times["forloop"])
    return [{"kernel": k, "median_s": statistics.median(v), "min_s": min(v), "max_s": max(v),
             "speedup_vs_forloop": base / statistics.median(v), "last_logged_loss": losses[k]}
            for k, v in times.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["step", "train"], default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=257, help="head tokens (257: the full 257 x 768 head; the "
                    "step benchmark holds three optimizers at once, ~10 GB at 257)")
    ap.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        return _rss_child(args.rss_child, args.tokens)
    print(f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, 1 thread")
    if args.only in (None, "step"):
        rows = bench_step(args.rounds, args.tokens)
        print(f"\noptimizer.step() on {rows[0]['params_M']:.0f}M parameters (floor {rows[0]['floor_ms']:.0f} ms = "
              "7 x 4 B/param at this machine's in-place bandwidth)\n")
        print("| AdamW kernel | median ms (min-max) | x floor | vs for-loop | peak RSS growth / step |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['kernel']} | {r['median_ms']:.0f} ({r['min_ms']:.0f}-{r['max_ms']:.0f}) | {r['x_floor']:.1f} | "
                  f"{r['speedup_vs_forloop']:.2f}x | {r['step_peak_growth_mib']:.0f} MiB |")
    if args.only in (None, "train"):
        rows = bench_train(max(1, args.rounds // 2))
        print("\n`Trainer.fit`, demo-highlevel, 1 epoch on the tiny subject\n")
        print("| AdamW kernel | median s (min-max) | vs for-loop | last logged loss |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['kernel']} | {r['median_s']:.2f} ({r['min_s']:.2f}-{r['max_s']:.2f}) | "
                  f"{r['speedup_vs_forloop']:.2f}x | {r['last_logged_loss']:.5f} |")


if __name__ == "__main__":
    main()
