"""FAISS indexes that scale: parameters chosen by size and memory budget, built in shards and merged onto
disk, opened memory-mapped, searched in batches with exact refinement.

Index choice (:func:`choose_index`), after autofaiss' ``get_optimal_index_keys_v2`` with
``should_be_memory_mappable=True`` (autofaiss itself pins ``numpy<2`` and cannot be installed next to
this package's numpy 2, so its rules are reproduced here; docs/database-retrieval.md):

* ``Flat`` (exact) below ``FLAT_MAX`` vectors when ``4 d n`` bytes fit the memory budget;
* otherwise ``IVF{nlist}[_HNSW32],PQ{m}x{nbits}``: ``nlist = 2^round(log2(4 sqrt n))`` lists (faiss'
  guideline 4-16 sqrt n; autofaiss' first choice), an HNSW coarse quantizer from 1000 lists on (autofaiss:
  adding then costs O(log nlist) per vector instead of O(nlist)), and the largest PQ code ``m`` (dividing
  ``d``, at most ``d / 8``: 96 bytes for CLIP's 768) whose ``n (m + 8)`` bytes of codes and ids fit the budget.

Build (:func:`build_ann`): the trained empty index is written once, every shard of ``shard_size`` vectors
is added to a copy of it and written as its own file (atomically: a written shard is a finished shard),
and the shards' inverted lists are merged with ``faiss.contrib.ondisk.merge_ondisk`` into one on-disk
``index.ivfdata`` next to ``index.faiss``. A killed build re-run skips the trained index and every
written shard. The shard step is a plain function of the shard number, so a distributed engine can run
it (:mod:`mindeye.inference.spark_build`).

Search (:func:`search_refined`): the IVF-PQ index proposes ``refine x k`` candidates for all queries at
once and they are re-scored exactly against the stored unit-norm embeddings (float16 on disk, read
through memory maps), vectorised over the batch: the ``IndexRefine`` idea without a second in-RAM copy
of the vectors.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mindeye.errors import MindEyeError
from mindeye.utils.files import atomic_path

FLAT_MAX = 100_000  # auto: exact search below this many vectors (if it fits the budget), IVF-PQ above
HNSW_FROM = 1000  # lists: from here on the coarse quantizer is an HNSW graph (autofaiss' threshold)
ID_BYTES = 8  # per vector in an inverted list (faiss InvertedLists stores int64 ids)
ADD_EF_SEARCH = 128  # HNSW coarse quantizer: nodes explored when assigning vectors to lists
DEFAULT_MEMORY = "16G"  # autofaiss' default max_index_memory_usage
TRAINED = "trained.index"
SHARDS = "shards"
FAISS_FILE = "index.faiss"
IVFDATA = "index.ivfdata"


@contextlib.contextmanager
def _quiet_faiss() -> Any:
    """Silence faiss' C-level progress prints ("resizing ... to N bytes", "IO_FLAG_ONDISK_SAME_DIR: updating
    ondisk filename ...") on the process' stdout/stderr; errors still arrive as Python exceptions."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


# ------------------------------------------------------------------------------------------------
# Parameters
# ------------------------------------------------------------------------------------------------
def parse_memory(value: str | int | float) -> int:
    """Bytes of ``"16G"``, ``"512M"``, ``"2.5GB"``, ``"1T"`` or a plain number (bytes)."""
    if isinstance(value, int | float):
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*", str(value).lower())
    if not m:
        raise MindEyeError(f"cannot read the memory size {value!r}; write it like 16G, 512M or 2T")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


def default_nlist(n: int) -> int:
    """2^round(log2(4 sqrt n)) lists, at most n / 39 (faiss' k-means needs >= 39 points per list)."""
    nlist = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    return int(max(1, min(nlist, n // 39)))


def index_bytes(spec: dict[str, Any], n: int, dim: int) -> int:
    """What the index holds for ``n`` vectors: codes + ids + coarse centroids (+ HNSW links)."""
    if spec["type"] == "flat":
        return 4 * dim * n
    nlist = spec["nlist"]
    links = nlist * 2 * 32 * 4 if spec.get("hnsw") else 0  # HNSW32: ~2 M int32 neighbours per node
    return n * (spec["m"] * spec["nbits"] // 8 + ID_BYTES) + 4 * dim * nlist + links


def choose_index(n: int, dim: int, *, index_type: str = "auto", max_memory: str | int = DEFAULT_MEMORY,
                 nlist: int | None = None, m: int | None = None, flat_max: int | None = None) -> dict[str, Any]:
    """The index for ``n`` vectors of dimension ``dim`` within ``max_memory`` (module docstring).

    Returns ``{"type": "flat"|"ivfpq", "key": faiss factory string, "nlist", "m", "nbits", "hnsw",
    "bytes"}``. Explicit ``nlist`` / ``m`` override the choice; a budget nothing fits is a clear error.
    """
    budget = parse_memory(max_memory)
    flat_max = FLAT_MAX if flat_max is None else flat_max
    if index_type not in ("auto", "flat", "ivfpq"):
        raise MindEyeError(f"unknown --index-type {index_type!r}; choose auto, flat or ivfpq")
    if index_type == "flat" or (index_type == "auto" and n < flat_max and 4 * dim * n <= budget):
        spec: dict[str, Any] = {"type": "flat", "key": "Flat"}
        spec["bytes"] = index_bytes(spec, n, dim)
        return spec
    if n < 39:
        raise MindEyeError(f"an IVF-PQ index needs at least 39 vectors to train (got {n}); use --index-type flat")
    nlist = max(1, int(nlist)) if nlist else default_nlist(n)
    nbits = int(max(1, min(8, math.floor(math.log2(max(2, n // 39))))))  # PQ codebooks need ~39 points per code
    hnsw = nlist >= HNSW_FROM
    if m is not None:
        if m < 1 or dim % m:
            raise MindEyeError(f"--pq-m {m} must be a positive divisor of the embedding dimension {dim}")
        choices = [int(m)]
    else:
        # sub-vectors of >= 8 dims: faiss' k-means on 4-d sub-vectors is ~8x slower per point on this CPU
        choices = sorted((c for c in range(1, max(1, dim // 8) + 1) if dim % c == 0), reverse=True)
    for c in choices:
        spec = {"type": "ivfpq", "nlist": nlist, "m": c, "nbits": nbits, "hnsw": hnsw,
                "key": f"IVF{nlist}{'_HNSW32' if hnsw else ''},PQ{c}x{nbits}"}
        spec["bytes"] = index_bytes(spec, n, dim)
        if spec["bytes"] <= budget or m is not None:
            return spec
    smallest = index_bytes({**spec, "m": choices[-1]}, n, dim)
    raise MindEyeError(f"{n:,} vectors of dimension {dim} need at least {_size(smallest)} as IVF-PQ codes, "
                       f"more than --max-index-memory {max_memory}; raise it")


def train_size(n: int, dim: int, spec: dict[str, Any], train_memory: str | int = DEFAULT_MEMORY) -> int:
    """Training sample: 64 points per list (autofaiss: 30-256), >= 39, >= 256 x 39 for 8-bit PQ codebooks,
    fewer if ``4 d`` bytes each would not fit ``train_memory``; at most ``n``."""
    want = max(64 * spec["nlist"], 39 * 2 ** spec["nbits"])
    fits = parse_memory(train_memory) // (4 * dim)
    return int(min(n, max(min(want, fits), 39 * spec["nlist"])))


def normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def empty_index(spec: dict[str, Any], dim: int) -> Any:
    import faiss

    if spec["type"] == "flat":
        return faiss.IndexFlatIP(dim)
    return faiss.index_factory(dim, spec["key"], faiss.METRIC_INNER_PRODUCT)


def set_nprobe(index: Any, nprobe: int) -> None:
    """Lists searched per query; an HNSW coarse quantizer explores max(64, 2 nprobe) nodes (autofaiss: 2 nprobe;
    at small nprobe faiss' default 16 misses true lists: recall@16 0.95 vs 0.999 with a flat quantizer)."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return  # not an IVF index (flat, HNSW): nothing to set
    ivf.nprobe = int(max(1, min(nprobe, ivf.nlist)))
    quantizer = faiss.downcast_index(ivf.quantizer)
    if hasattr(quantizer, "hnsw"):
        quantizer.hnsw.efSearch = max(64, 2 * ivf.nprobe)


# ------------------------------------------------------------------------------------------------
# Building: train once, add shard by shard, merge on disk
# ------------------------------------------------------------------------------------------------
def train_index(vectors: np.ndarray, spec: dict[str, Any], out_dir: Path, *, seed: int = 0,
                train_memory: str | int = DEFAULT_MEMORY, niter: int = 10) -> Path:
    """Train the empty index on a seeded random sample of ``vectors`` and write ``out_dir/trained.index``
    (skipped if it is already there: resuming)."""
    import faiss

    path = Path(out_dir) / TRAINED
    if path.exists():
        return path
    n, dim = vectors.shape
    index = empty_index(spec, dim)
    if spec["type"] != "flat":
        n_train = train_size(n, dim, spec, train_memory)
        sample = np.sort(np.random.default_rng(seed).choice(n, n_train, replace=False))
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = niter  # coarse k-means: 10 iterations (faiss' default 25 gains little at this scale)
        ivf.cp.seed = seed
        faiss.downcast_index(ivf).do_polysemous_training = False  # minutes of training, unused by our search
        index.train(normalised(vectors[sample]))
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    return path


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + shard_size, n)) for lo in range(0, n, shard_size)]


def shard_path(out_dir: Path, shard: int) -> Path:
    return Path(out_dir) / SHARDS / f"shard-{shard:05d}.index"


def add_shard(out_dir: Path, shard: int, vectors: np.ndarray, lo: int, *, chunk: int = 65536) -> Path:
    """Add rows ``vectors`` (ids ``lo, lo + 1, ...``) to a copy of the trained index; write the shard file.

    Idempotent (an existing shard file is a finished shard), so a killed build or a retried task of a
    distributed engine never adds a vector twice.
    """
    import faiss

    path = shard_path(out_dir, shard)
    if path.exists():
        return path
    index = faiss.read_index(str(Path(out_dir) / TRAINED))
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
    if hasattr(quantizer, "hnsw"):  # assign each vector to its true nearest list (faiss' default 16 misses some)
        quantizer.hnsw.efSearch = ADD_EF_SEARCH
    for s in range(0, len(vectors), chunk):
        block = normalised(vectors[s:s + chunk])
        index.add_with_ids(block, np.arange(lo + s, lo + s + len(block), dtype=np.int64))
    path.parent.mkdir(exist_ok=True)
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    return path


def merge_shards(out_dir: Path, n_shards: int) -> Path:
    """Merge every shard's inverted lists into ``index.ivfdata`` (on disk) + ``index.faiss``; remove the shards."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    out_dir = Path(out_dir)
    final = out_dir / FAISS_FILE
    shards = [shard_path(out_dir, s) for s in range(n_shards)]
    missing = [p.name for p in shards if not p.exists()]
    if missing:
        raise MindEyeError(f"cannot merge {out_dir}: shard(s) {', '.join(missing[:5])} were not written")
    (out_dir / IVFDATA).unlink(missing_ok=True)  # a merge killed half-way starts again
    index = faiss.read_index(str(out_dir / TRAINED))
    with _quiet_faiss():
        merge_ondisk(index, [str(p) for p in shards], str(out_dir / IVFDATA))
    with atomic_path(final) as tmp:
        faiss.write_index(index, str(tmp))
    del index
    for p in shards:
        p.unlink()
    (out_dir / SHARDS).rmdir()
    return final


def write_flat(vectors: np.ndarray, out_dir: Path, *, chunk: int = 65536) -> Path:
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    for s in range(0, len(vectors), chunk):
        index.add(normalised(vectors[s:s + chunk]))
    with atomic_path(Path(out_dir) / FAISS_FILE) as tmp:
        faiss.write_index(index, str(tmp))
    return Path(out_dir) / FAISS_FILE


def build_ann(vectors: np.ndarray, out_dir: Path, spec: dict[str, Any], *, shard_size: int = 1_000_000,
              seed: int = 0, train_memory: str | int = DEFAULT_MEMORY, progress: bool = False,
              run_shards: Callable[[list[int]], None] | None = None) -> Path:
    """``out_dir/index.faiss`` (+ ``index.ivfdata`` for IVF) over the unit-norm rows of ``vectors``.

    ``run_shards(todo)``: runs :func:`add_shard` for the listed shard numbers (a distributed engine);
    default: here, one after the other. Resumable at every step (see the module docstring).
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    if (out_dir / FAISS_FILE).exists():
        return out_dir / FAISS_FILE
    if spec["type"] == "flat":
        return write_flat(vectors, out_dir)
    train_index(vectors, spec, out_dir, seed=seed, train_memory=train_memory)
    ranges = shard_ranges(len(vectors), shard_size)
    todo = [s for s in range(len(ranges)) if not shard_path(out_dir, s).exists()]
    if run_shards is not None:
        run_shards(todo)
    else:
        for s in tqdm(todo, desc="index shards", unit="shard", disable=not progress):
            lo, hi = ranges[s]
            add_shard(out_dir, s, vectors[lo:hi], lo)
    return merge_shards(out_dir, len(ranges))


# ------------------------------------------------------------------------------------------------
# Opening: memory-mapped, read-only
# ------------------------------------------------------------------------------------------------
def open_index(path: str | Path) -> Any:
    """Open a FAISS index file without loading its vectors into RAM.

    On-disk inverted lists (an ``*.ivfdata`` file next to it, as written by ``merge_ondisk``; LAION's
    indices are such): ``IO_FLAG_ONDISK_SAME_DIR`` (the lists file is looked up next to the index, wherever
    the pair was moved; the lists are memory-mapped by faiss itself). In-file inverted lists:
    ``IO_FLAG_MMAP``; flat indexes: ``IO_FLAG_MMAP_IFC``. Always ``IO_FLAG_READ_ONLY``. A missing,
    truncated or foreign file is a MindEyeError, never a crash.
    """
    import faiss

    path = Path(path)
    if not path.is_file():
        raise MindEyeError(f"no FAISS index file at {path}")
    with open(path, "rb") as f:
        fourcc = f.read(4)
    ondisk = any(path.parent.glob("*.ivfdata"))
    if ondisk:
        flags = faiss.IO_FLAG_ONDISK_SAME_DIR  # with IO_FLAG_MMAP as well, faiss 1.15 crashes at search time
    elif fourcc.startswith(b"IxF") or fourcc.startswith(b"IxM"):
        flags = faiss.IO_FLAG_MMAP_IFC
    else:
        flags = faiss.IO_FLAG_MMAP
    try:
        with _quiet_faiss():
            index = faiss.read_index(str(path), flags | faiss.IO_FLAG_READ_ONLY)
    except (RuntimeError, MemoryError) as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise MindEyeError(f"cannot read the FAISS index {path} (corrupt, truncated or not a faiss index: "
                           f"{first[:200]}); rebuild it or re-download it") from None
    if ondisk:
        _check_ivfdata(index, path)
    return index


def _check_ivfdata(index: Any, path: Path) -> None:
    """The on-disk lists file must be as long as the index says (a truncated one would crash faiss)."""
    import faiss

    try:
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    except RuntimeError:
        return
    filename = getattr(lists, "filename", None)
    if filename is None:
        return
    size = os.path.getsize(filename) if os.path.exists(filename) else -1
    if size < int(lists.totsize):
        raise MindEyeError(f"the inverted lists {filename} of {path} are {'missing' if size < 0 else 'truncated'} "
                           f"({max(size, 0):,} of {int(lists.totsize):,} bytes); restore or re-download them")


def index_kind(index: Any) -> str:
    """'flat', 'ivfpq', 'ivfflat', 'ivf' or the faiss class name, for manifests and messages."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        name = type(faiss.downcast_index(index)).__name__
        return "flat" if name.startswith("IndexFlat") else name
    name = type(faiss.downcast_index(ivf)).__name__
    return {"IndexIVFPQ": "ivfpq", "IndexIVFFlat": "ivfflat"}.get(name, "ivf")


# ------------------------------------------------------------------------------------------------
# Embeddings on disk and the batched, refined search
# ------------------------------------------------------------------------------------------------
class Embeddings:
    """Row-concatenated ``.npy`` files (``embeddings.npy``, or LAION's ``img_emb_*.npy`` parts), memory-mapped."""

    def __init__(self, files: Sequence[str | Path]) -> None:
        self.files = [Path(f) for f in files]
        self.arrays = []
        for f in self.files:
            try:
                self.arrays.append(np.load(f, mmap_mode="r"))
            except (OSError, ValueError) as exc:
                raise MindEyeError(f"cannot read the embeddings file {f} ({exc}); restore it") from None
        dims = {a.shape[1] if a.ndim == 2 else None for a in self.arrays}
        if len(dims) != 1 or None in dims:
            raise MindEyeError(f"the embeddings files {', '.join(f.name for f in self.files[:3])} are not "
                               "2-D arrays of one width")
        self.dim = int(dims.pop())
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.dim

    def __getitem__(self, key: slice | np.ndarray) -> np.ndarray:
        """Rows as float32 (a slice or an index array), like one array: the build reads the parts through this."""
        if isinstance(key, slice):
            lo, hi, step = key.indices(len(self))
            if step != 1:
                raise ValueError("Embeddings slices must be contiguous")
            parts = [a[max(lo - o, 0):max(min(hi - o, len(a)), 0)] for a, o in zip(self.arrays, self.offsets)]
            return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts]).reshape(-1, self.dim)
        ids = np.asarray(key, dtype=np.int64)
        part = np.searchsorted(self.offsets, ids, side="right") - 1
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for p, arr in enumerate(self.arrays):
            sel = np.nonzero(part == p)[0]
            if len(sel):
                out[sel] = arr[ids[sel] - self.offsets[p]]
        return out

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Unit-norm float32 rows of ``ids`` (any shape; -1 gives zeros), shape ``(*ids.shape, dim)``.

        Each needed row is read once, in increasing order (sequential pages of the memory maps)."""
        flat = np.asarray(ids, dtype=np.int64).reshape(-1)
        uniq, inverse = np.unique(flat, return_inverse=True)
        block = np.zeros((len(uniq), self.dim), dtype=np.float32)
        part = np.searchsorted(self.offsets, uniq, side="right") - 1
        for p, arr in enumerate(self.arrays):
            sel = np.nonzero((part == p) & (uniq >= 0))[0]
            if len(sel):
                block[sel] = arr[uniq[sel] - self.offsets[p]]
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
        return block[inverse].reshape(*np.shape(ids), self.dim)


def search_refined(index: Any, queries: np.ndarray, k: int, *, embeddings: Embeddings | None = None,
                   refine: int = 4, nprobe: int | None = None, block: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each ``(M, k)``, best first, for all unit-norm ``queries`` at once.

    With ``embeddings`` and ``refine > 1``, ``refine x k`` candidates per query are re-scored exactly
    (batched gather + einsum + argsort, no Python loop over queries); ids are -1 (score -inf) where fewer
    than k were found.
    """
    if nprobe is not None:
        set_nprobe(index, nprobe)
    k = int(min(k, index.ntotal))
    if embeddings is None or refine <= 1:
        return index.search(queries, k)
    _, cand = index.search(queries, int(min(index.ntotal, refine * k)))
    scores = np.empty(cand.shape, dtype=np.float32)
    for lo in range(0, len(queries), block):  # blocks keep the gathered vectors in cache (32 x 64 x 768 floats)
        vecs = embeddings.rows(np.maximum(cand[lo:lo + block], 0))
        scores[lo:lo + block] = np.einsum("mcd,md->mc", vecs, queries[lo:lo + block])
    scores[cand < 0] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores, order, axis=1)
    ids = np.take_along_axis(cand, order, axis=1)
    ids[~np.isfinite(top)] = -1
    return top, ids


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 262144) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k inner product over ``vectors`` (rows normalised; may be a float16 memory map),
    read in chunks: the ground truth recall is measured against."""
    q = normalised(queries)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for lo in range(0, len(vectors), chunk):
        s = q @ normalised(vectors[lo:lo + chunk]).T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        best_s = np.concatenate([best_s, np.take_along_axis(s, part, axis=1)], axis=1)
        best_i = np.concatenate([best_i, part + lo], axis=1)
        keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, axis=1), np.take_along_axis(best_i, keep, axis=1)
    return best_s, best_i


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k found (the k of ``truth``)."""
    k = truth.shape[1]
    return float(np.mean([len(set(a[:k].tolist()) & set(b.tolist())) / k for a, b in zip(found, truth)]))


def tune_nprobe(index: Any, vectors: np.ndarray, embeddings: Embeddings | None, *, k: int = 16, refine: int = 4,
                target: float = 0.95, n_queries: int = 100, seed: int = 0, max_nprobe: int = 4096) -> dict[str, Any]:
    """Smallest power-of-two nprobe whose recall@k (with the same refinement as searches) reaches ``target``.

    Leave-one-out: seeded database vectors are the queries and each one's own id is dropped from both
    the exact and the approximate top-k, so a query behaves like a fresh vector of the same distribution
    (a brain embedding is never in the database). Returns ``{"nprobe", "tuned_recall", "tuned_target",
    "tuned_queries"}``.
    """
    import faiss

    ivf = faiss.extract_index_ivf(index)
    rng = np.random.default_rng(seed)
    own = np.sort(rng.choice(len(vectors), min(n_queries, len(vectors)), replace=False))
    q = normalised(vectors[own])

    def drop_self(ids: np.ndarray) -> np.ndarray:
        return np.stack([row[row != i][:k] for row, i in zip(ids, own)])

    truth = drop_self(exact_topk(vectors, q, k + 1)[1])
    nprobe, rec = 1, 0.0
    while True:
        _, found = search_refined(index, q, k + 1, embeddings=embeddings, refine=refine, nprobe=nprobe)
        rec = recall_at(drop_self(found), truth)
        if rec >= target or nprobe >= min(ivf.nlist, max_nprobe):
            break
        nprobe *= 2
    return {"nprobe": int(min(nprobe, ivf.nlist)), "tuned_recall": round(rec, 4), "tuned_target": target,
            "tuned_queries": int(len(q))}
