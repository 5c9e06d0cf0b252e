"""Database retrieval at scale: our on-disk index vs raw faiss, same vectors, same run (issue 29).

    PYTHONPATH=src python benchmarks/database_index.py --sizes 100000 1000000 --json bench.jsonl
    PYTHONPATH=src python benchmarks/database_index.py --sizes 20000 --queries 200     # smoke run

Vectors: synthetic CLIP-like embeddings (768-d, unit norm, float16 on disk): n / 200 random centres plus
anisotropic noise with a decaying spectrum (``make_vectors``); queries are 1000 fresh vectors drawn the
same way (not in the database). Ground truth: exact top-16 by brute force (numpy, chunked).

Variants, each built and queried in its own subprocess (so ``peak RSS`` is that variant's own):

* ``ours``: :func:`mindeye.inference.index.finish_ann`, i.e. what ``mindeye index build`` does after
  embedding: index chosen by size and memory budget (auto, 16G), trained once, filled in 1M-vector shard
  files, merged into on-disk inverted lists, nprobe tuned for recall@16 >= 0.95; then opened memory-mapped
  and searched through ``DatabaseIndex.search`` (refine 4 x k against the float16 embeddings on disk).
* ``faiss``: raw faiss as one would write it: ``index_factory("IVF{nlist},PQ{m}x8")`` (flat coarse
  quantizer) wrapped in ``IndexRefineFlat`` (float32 copy of the vectors in RAM, k_factor 4), same nlist,
  m, training sample, k-means iterations and nprobe as ``ours``, all in RAM.
* ``loop``: the previous mindeye search (per-query Python refinement loop) on ``ours``' index, query only.

Reported per variant: build s, peak anonymous RSS (RAM not backed by files, sampled every 20 ms; the
process' ru_maxrss is also in the JSON but Linux carries it over from the parent across exec, so it is not
the variant's own), disk
size (index files; the float16 embeddings are listed separately: both variants need the vectors), single
query ms (median of 200 one-query searches), batch ms/query (1000 queries in one call), recall@16.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

DIM = 768
K = 16


def make_vectors(path: Path, n: int, seed: int, n_db: int, chunk: int = 100_000) -> None:
    """CLIP-like: one of n / 200 cluster centres (so a query's 16 nearest neighbours are real neighbours, not
    the noise floor) + anisotropic noise whose spectrum decays like real embeddings' (variance of the j-th
    principal direction ~ j^-1.4), in a random orientation; unit norm, float16. ``n`` of the database sets
    the centres for its queries too (same ``fixed`` generator)."""
    fixed = np.random.default_rng(1234)
    centres = fixed.standard_normal((max(64, n_db // 200), DIM)).astype(np.float32) * 0.35
    rotation = np.linalg.qr(fixed.standard_normal((DIM, DIM)))[0].astype(np.float32)
    scale = (np.arange(1, DIM + 1, dtype=np.float32) ** -0.7) * 3.0
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, DIM))
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        x = centres[rng.integers(0, len(centres), m)] + (rng.standard_normal((m, DIM)).astype(np.float32) * scale) @ rotation
        out[lo:lo + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


class AnonPeak(threading.Thread):
    """Peak anonymous RSS (RAM that is not file-backed page cache: memory maps of the index and the
    embeddings do not count), sampled every 20 ms from /proc/self/status."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0

    def run(self) -> None:
        while True:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        self.peak = max(self.peak, int(line.split()[1]))
            time.sleep(0.02)


def time_queries(search, queries: np.ndarray) -> tuple[float, float, np.ndarray]:
    search(queries[:8])  # warm-up (page cache, allocations)
    single = []
    for q in queries[:200]:
        t0 = time.perf_counter()
        search(q[None])
        single.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    ids = search(queries)
    batch = (time.perf_counter() - t0) / len(queries)
    return 1e3 * float(np.median(single)), 1e3 * batch, ids


def run_variant(args: argparse.Namespace) -> dict:
    from mindeye.inference import ann
    from mindeye.inference.index import DatabaseIndex, finish_ann

    work = Path(args.work)
    vectors = np.load(work / "embeddings.npy", mmap_mode="r")
    queries = np.load(work / "queries.npy")
    truth = np.load(work / "truth.npy")
    n = len(vectors)
    res: dict = {"variant": args.variant, "n": n, "threads": args.threads}
    import faiss

    faiss.omp_set_num_threads(args.threads)
    anon = AnonPeak()
    anon.start()
    if args.variant in ("ours", "loop"):
        idx_dir = work / "ours"
        if args.variant == "ours":
            idx_dir.mkdir(exist_ok=True)
            if not (idx_dir / "embeddings.npy").exists():
                os.link(work / "embeddings.npy", idx_dir / "embeddings.npy")
            state: dict = {}
            t0 = time.perf_counter()
            finish_ann(idx_dir, vectors, state, max_index_memory=args.max_index_memory, index_type=args.index_type)
            res["build_s"] = time.perf_counter() - t0
            manifest = {"format": 1, "complete": True, "encoder": "synthetic", "fingerprint": "-", "dim": DIM,
                        "count": n, "source": {"type": "store", "root": str(work)}, "index": state["index"]}
            (idx_dir / "manifest.json").write_text(json.dumps(manifest))
            with open(idx_dir / "ids.csv", "w") as f:
                f.write("id,location,member,offset,size\n" + "".join(f"{i},images.npy,{i},,\n" for i in range(n)))
            res["index"] = state["index"]
        db = DatabaseIndex.open(idx_dir)
        res["disk_gb"] = sum(f.stat().st_size for f in idx_dir.iterdir() if f.name.startswith("index.")) / 1e9
        if args.variant == "ours":
            search = lambda q: db.search(q, K)[1]  # noqa: E731
        else:
            search = lambda q: old_search(db, q, K)  # noqa: E731
    else:
        import faiss

        spec = json.loads((work / "ours" / "manifest.json").read_text())["index"]
        t0 = time.perf_counter()
        if spec["type"] == "flat":
            index = faiss.IndexFlatIP(DIM)
        else:
            base = faiss.index_factory(DIM, f"IVF{spec['nlist']},PQ{spec['m']}x{spec['nbits']}", faiss.METRIC_INNER_PRODUCT)
            ivf = faiss.extract_index_ivf(base)
            ivf.cp.niter = 10
            faiss.downcast_index(ivf).do_polysemous_training = False
            sample = np.sort(np.random.default_rng(0).choice(n, spec["n_train"], replace=False))
            base.train(ann.normalised(vectors[sample]))
            ivf.nprobe = spec["nprobe"]
            index = faiss.IndexRefineFlat(base)
            index.k_factor = 4
        for lo in range(0, n, 65536):
            index.add(ann.normalised(vectors[lo:lo + 65536]))
        res["build_s"] = time.perf_counter() - t0
        with tempfile.NamedTemporaryFile(dir=work, suffix=".index") as f:
            faiss.write_index(index, f.name)
            res["disk_gb"] = os.path.getsize(f.name) / 1e9
        search = lambda q: index.search(ann.normalised(q), K)[1]  # noqa: E731
    res["single_ms"], res["batch_ms"], ids = time_queries(search, queries)
    res["recall16"] = ann.recall_at(ids, truth)
    res["peak_rss_gib"] = peak_rss_gib()
    res["peak_anon_gib"] = anon.peak / 2**20
    return res


def old_search(db, queries: np.ndarray, k: int, refine: int = 4) -> np.ndarray:
    """The search before issue 29: candidates from the index, refined one query at a time in Python."""
    from mindeye.inference.ann import normalised, set_nprobe

    queries = normalised(queries)
    set_nprobe(db.index, db.manifest["index"].get("nprobe", 1))
    if db.manifest["index"]["type"] == "flat":
        return db.index.search(queries, k)[1]
    _, short = db.index.search(queries, refine * k)
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    for m, row in enumerate(short):
        row = row[row >= 0]
        s = db.embeddings(row) @ queries[m]
        top = np.argsort(-s, kind="stable")[:k]
        ids[m, :len(top)] = row[top]
    return ids


def extrapolate(rows: list[dict], n_target: int = 5_000_000_000) -> dict:
    """5B on paper from the largest measured run (formulas in the docstring of this function's output)."""
    from mindeye.inference.ann import choose_index, default_nlist, index_bytes

    ivf = [r for r in rows if r["variant"] == "ours" and r["index"]["type"] == "ivfpq"]
    if not ivf:
        return {}
    big = max(ivf, key=lambda r: r["n"])
    n0, spec0 = big["n"], big["index"]
    spec = choose_index(n_target, DIM, max_memory="2T")
    add_s = big["build_s"] * 0.5 / n0  # upper bound: half the measured build is adding (the rest: training)
    train_scale = (spec["nlist"] / spec0["nlist"]) ** 2  # k-means: (64 nlist points) x nlist centroids
    return {
        "n": n_target, "key": spec["key"], "nlist": default_nlist(n_target),
        "index_tb": index_bytes(spec, n_target, DIM) / 1e12,
        "embeddings_tb": 2 * DIM * n_target / 1e12,
        "add_cpu_core_days": add_s * n_target / 86400,
        "train_cpu_core_days": big["build_s"] * 0.5 * train_scale / 86400,
        "query_ms_estimate": big["batch_ms"] * (n_target / spec["nlist"]) / (n0 / spec0["nlist"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--max-index-memory", default="16G")
    p.add_argument("--index-type", default="auto", choices=("auto", "flat", "ivfpq"))
    p.add_argument("--threads", type=int, default=1,
                   help="faiss OpenMP threads (default 1: on a small shared machine OpenMP spin-waits dominate)")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--json", default=None, help="append one JSON line per result")
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)), flush=True)
        return
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory(dir=args.work) as work:
            work_p = Path(work)
            make_vectors(work_p / "embeddings.npy", n, seed=0, n_db=n)
            make_vectors(work_p / "queries_f16.npy", args.queries, seed=1, n_db=n)
            queries = np.load(work_p / "queries_f16.npy").astype(np.float32)
            np.save(work_p / "queries.npy", queries)
            from mindeye.inference.ann import exact_topk

            t0 = time.perf_counter()
            _, truth = exact_topk(np.load(work_p / "embeddings.npy", mmap_mode="r"), queries, K)
            exact_s = time.perf_counter() - t0
            np.save(work_p / "truth.npy", truth)
            print(f"n={n:,}: exact numpy top-{K} of {len(queries)} queries {exact_s:.1f} s "
                  f"({1e3 * exact_s / len(queries):.1f} ms/query)", flush=True)
            for variant in ("ours", "faiss", "loop"):
                cmd = [sys.executable, __file__, "--variant", variant, "--work", str(work_p),
                       "--max-index-memory", args.max_index_memory, "--index-type", args.index_type,
                       "--threads", str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(out.stderr[-3000:])
                r = json.loads(out.stdout.strip().splitlines()[-1])
                r["exact_ms_per_query"] = 1e3 * exact_s / len(queries)
                rows.append(r)
                print(json.dumps(r), flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps({**r, "date": time.strftime("%Y-%m-%d")}) + "\n")
    print("\n| n | variant | build s | peak anonymous RSS GiB | index on disk GB | single query ms | batch ms/query "
          "| recall@16 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['variant']} | {r.get('build_s', float('nan')):.1f} | {r['peak_anon_gib']:.2f} | "
              f"{r['disk_gb']:.3f} | {r['single_ms']:.2f} | {r['batch_ms']:.3f} | {r['recall16']:.3f} |")
    e = extrapolate(rows)
    print("\n5B, computed (not measured): " + json.dumps({k: (round(v, 2) if isinstance(v, float) else v)
                                                          for k, v in e.items()}))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"extrapolation": e}) + "\n")


if __name__ == "__main__":
    main()
