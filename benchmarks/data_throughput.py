"""Batches per second the training data path delivers, no model: today's path vs the new ones, one run.

    PYTHONPATH=src python benchmarks/data_throughput.py                      # nsd scale, both pipelines
    PYTHONPATH=src python benchmarks/data_throughput.py --device cuda        # on a GPU (resident / pinned)
    PYTHONPATH=src python benchmarks/data_throughput.py --tiny --batches 5   # smoke run (tests)

The data. `mindeye simulate --scale nsd` takes ~6 min wall (147 s CPU) and its stand-in encoders give
17 x 64 targets, not CLIP's 257 x 768, so this script writes arrays of NSD subject-1's sizes instead
(once, under ``--scratch``, reused by later runs): 24,980 training trials x 15,724 voxels (float16, held
in RAM as the trainer holds them) over 8,859 training images of 9,841 (982 test images never sampled);
the high-level target cache (9,841, 257, 768) float16 = 3.9 GB as a memory map (the trainer memory-maps
caches >= 2 GiB); for the low level (8,859 images, 3 repetitions) the SD-VAE latents (9,841, 4, 64, 64)
and the VICRegL teacher tokens (9,841, 256, 512) float16. Values are random normal (timing only).

What is timed: ``BatchLoader.batches`` of :mod:`mindeye.training.batches` -- the exact object the
trainer uses -- on the trainer's requests (a random permutation of the training rows, batch 32 / 8),
for ``--batches`` steps (in ``--rounds`` rounds that alternate between the modes, 2 warm-up steps each;
the median round is reported), in each mode:
``simple`` (today's path: host gather from the memory map, float32 on the host, pageable copy),
``prefetch`` (background thread gathers float16 into pinned buffers ``--depth`` batches ahead), and
``resident`` (float16 tables on the device, indexed there). "consumer 0 ms" pulls batches as fast as
possible; "consumer N ms" sleeps N ms per batch (``--step-ms``), as the host does while the GPU runs a
step, so a path that overlaps the step shows ~1000 / N batches/s. On the CPU, "device" is the host:
resident = in-RAM float16 tables, prefetch buffers are not pinned.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mindeye.training.batches import BatchLoader, Request, TargetTable

NSD = {"voxels": 15724, "trials": 24980, "train_images": 8859, "images": 9841, "reps": 3}
TINY = {"voxels": 300, "trials": 600, "train_images": 200, "images": 240, "reps": 3}
SHAPES = {"full": {"clip": (257, 768), "latents": (4, 64, 64), "teacher": (256, 512)},
          "tiny": {"clip": (17, 64), "latents": (4, 8, 8), "teacher": (16, 32)}}


def _fill(path: Path, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A float16 .npy of random normals, written in chunks (never the whole float32 array in RAM)."""
    if path.exists():
        arr = np.load(path, mmap_mode="r")
        if arr.shape == shape:
            return arr
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
    rows = max(1, (64 << 20) // (int(np.prod(shape[1:])) * 4))
    for s in range(0, shape[0], rows):
        n = min(rows, shape[0] - s)
        out[s:s + n] = rng.standard_normal((n, *shape[1:]), dtype=np.float32)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def build(scratch: Path, tiny: bool) -> dict:
    scratch.mkdir(parents=True, exist_ok=True)
    n, shp = (TINY, SHAPES["tiny"]) if tiny else (NSD, SHAPES["full"])
    tag = "tiny" if tiny else "nsd"
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    train_images = np.arange(n["images"] - n["train_images"], n["images"])  # test images first, as NSD stores
    image_of_trial = np.sort(np.concatenate([train_images] * n["reps"])[:n["trials"]])
    data = {
        "trial_voxels": _fill(scratch / f"{tag}-trial-voxels.npy", (n["trials"], n["voxels"]), 1),
        "rep_voxels": _fill(scratch / f"{tag}-rep-voxels.npy", (n["train_images"], n["reps"], n["voxels"]), 2),
        "clip": _fill(scratch / f"{tag}-clip.npy", (n["images"], *shp["clip"]), 3),
        "latents": _fill(scratch / f"{tag}-latents.npy", (n["images"], *shp["latents"]), 4),
        "teacher": _fill(scratch / f"{tag}-teacher.npy", (n["images"], *shp["teacher"]), 5),
        "train_images": train_images, "image_of_trial": image_of_trial, "rng": rng,
    }
    data["build_s"] = time.perf_counter() - t0
    return data


def high_requests(data: dict, batch: int, steps: int) -> list[Request]:
    perm = torch.randperm(len(data["image_of_trial"]), generator=torch.Generator().manual_seed(0)).numpy()
    return [Request(perm[s * batch:(s + 1) * batch], data["image_of_trial"][perm[s * batch:(s + 1) * batch]])
            for s in range(steps)]


def low_requests(data: dict, batch: int, steps: int) -> list[Request]:
    m, r = data["rep_voxels"].shape[:2]
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(m, generator=gen).numpy()
    out = []
    for s in range(steps):
        idx = perm[(s * batch) % (m - batch):][:batch]
        w = torch.rand(batch, r, generator=gen)
        out.append(Request(idx, data["train_images"][idx], mix_weights=w / w.sum(1, keepdim=True)))
    return out


class FloorLoader:
    """The floor a host data path can reach: per batch one ``index_select`` of the float16 voxel rows and
    of every target table's rows (from RAM: a memory map is read into RAM once, at setup), and one
    conversion to float32 -- the least work any path must do (mixing repetitions aside)."""

    def __init__(self, voxels: torch.Tensor, tables: list[TargetTable]) -> None:
        self.voxels = voxels
        self.tables = {t.name: torch.from_numpy(np.ascontiguousarray(t.plain)) for t in tables}

    def batches(self, requests):
        for req in requests:
            rows = torch.from_numpy(np.asarray(req.voxel_rows, dtype=np.int64))
            vox = self.voxels.flatten(0, 1) if self.voxels.ndim == 3 else self.voxels
            if self.voxels.ndim == 3:
                rows = rows * self.voxels.shape[1]  # repetition 0: the floor does not mix
            img = torch.from_numpy(np.asarray(req.image_index, dtype=np.int64))
            yield {"voxels": vox.index_select(0, rows).float(),
                   **{k: t.index_select(0, img).float() for k, t in self.tables.items()}}


def time_modes(voxels: torch.Tensor, tables: list[TargetTable], images: np.ndarray, requests: list[Request],
               device: str, modes: list[str], depth: int, step_ms: float, rounds: int, warmup: int = 2) -> list[dict]:
    """Each mode's loader is built once; the timing rounds then alternate between the modes, so a
    shared machine's load swings hit every mode alike. Reported: the median round."""
    loaders, setup = {}, {}
    for mode in modes:
        t0 = time.perf_counter()
        loaders[mode] = (FloorLoader(voxels, tables) if mode == "floor"
                         else BatchLoader(voxels, tables, images, device, mode=mode, depth=depth))
        setup[mode] = time.perf_counter() - t0
    per_round = len(requests) // rounds - warmup
    rates: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(rounds):
        chunk = requests[r * (per_round + warmup):(r + 1) * (per_round + warmup)]
        for mode in modes:
            it = iter(loaders[mode].batches(chunk))
            for _ in range(warmup):
                next(it)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            n = 0
            for b in it:
                if step_ms:
                    time.sleep(step_ms / 1000)
                n += 1
                del b
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            rates[mode].append(n / (time.perf_counter() - t0))
    return [{"mode": m, "setup_s": setup[m], "batches": per_round * rounds, "rounds": rounds,
             "batches_per_s": float(np.median(rates[m])), "ms_per_batch": 1000 / float(np.median(rates[m])),
             "round_rates": rates[m], "step_ms": step_ms} for m in modes]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scratch", default="/tmp/mindeye-data-bench", help="where the generated arrays live")
    ap.add_argument("--pipeline", choices=["high", "low", "both"], default="both")
    ap.add_argument("--modes", default="simple,prefetch,resident,floor",
                    help="comma-separated data_path modes; floor = one gather + convert per batch (FloorLoader)")
    ap.add_argument("--batches", type=int, default=150, help="timed batches per mode and consumer")
    ap.add_argument("--step-ms", type=float, default=20.0, help="simulated step (0 disables that column)")
    ap.add_argument("--depth", type=int, default=3, help="prefetch depth")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds, alternating between the modes")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (smoke test)")
    ap.add_argument("--json", default=None, help="append the rows as JSON lines to this file")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = build(Path(args.scratch), args.tiny)
    print(f"data ready in {data['build_s']:.1f} s ({'tiny' if args.tiny else 'nsd-scale'}); device {args.device}; "
          f"torch {torch.__version__}; {torch.get_num_threads()} threads")
    rows: list[dict] = []
    pipelines = ["high", "low"] if args.pipeline == "both" else [args.pipeline]
    consumers = [0.0] + ([args.step_ms] if args.step_ms else [])
    n_requests = args.rounds * (max(1, args.batches // args.rounds) + 2)  # 2 warm-up batches per round
    for pipe in pipelines:
        if pipe == "high":
            voxels = torch.from_numpy(np.array(data["trial_voxels"]))  # in RAM, as load_trials
            tables = [TargetTable("targets", data["clip"])]
            requests = high_requests(data, 32, n_requests)
            images = data["train_images"]
        else:
            voxels = torch.from_numpy(np.array(data["rep_voxels"]))
            tables = [TargetTable("latents", data["latents"]), TargetTable("teacher", data["teacher"])]
            requests = low_requests(data, 8, n_requests)
            images = data["train_images"]
        for step_ms in consumers:
            for r in time_modes(voxels, tables, images, requests, args.device, args.modes.split(","), args.depth,
                                step_ms, args.rounds):
                r["pipeline"] = pipe
                rows.append(r)
        del voxels
    print("\n| pipeline | consumer | mode | batches/s | ms/batch | vs simple | setup s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(x for x in rows if x["pipeline"] == r["pipeline"] and x["step_ms"] == r["step_ms"]
                    and x["mode"] == "simple") if "simple" in args.modes else r
        print(f"| {r['pipeline']} | {r['step_ms']:.0f} ms | {r['mode']} | {r['batches_per_s']:.1f} | "
              f"{r['ms_per_batch']:.2f} | {r['batches_per_s'] / base['batches_per_s']:.2f}x | {r['setup_s']:.2f} |")
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps({**r, "device": args.device, "torch": torch.__version__,
                                    "date": time.strftime("%Y-%m-%d")}) + "\n")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
