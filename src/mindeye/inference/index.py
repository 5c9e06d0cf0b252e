"""Retrieval from a large image database (paper section 3.1 "LAION-5B retrieval", Appendix A.7).

Instead of generating an image, the brain embedding is matched against a bank of real images: a FAISS
index of their CLIP embeddings is searched for the k nearest neighbours (inner product on L2-normalised
vectors = cosine), and the k candidates are re-ranked by cosine similarity to the brain embedding.

Build (``mindeye index build``)::

    INDEX/manifest.json    encoder, fingerprint, dim, count, index type and parameters, source, image size
    INDEX/ids.csv          id,location,member,offset,size: where each id's image lives (see ImageSource)
    INDEX/embeddings.npy   (count, dim) float16, unit-norm embeddings (exact re-ranking, rebuilding)
    INDEX/index.faiss      IndexFlatIP (exact) or IndexIVFPQ (approximate) over the same vectors

Everything is written into ``INDEX.partial/`` and renamed to ``INDEX`` once complete. The embeddings are
computed chunk by chunk into a memory map and the chunk count is recorded after each chunk, so an
interrupted build re-run with the same arguments continues at the first unfinished chunk.

Retrieval against the index: :mod:`mindeye.inference.retrieve`; where the images live: :mod:`mindeye.inference.sources`.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mindeye import __version__
from mindeye.diskspace import reserve_file
from mindeye.errors import MindEyeError
from mindeye.inference.sources import IDS, ImageSource, open_source
from mindeye.utils.chunks import finish_chunk, n_chunks, open_chunked
from mindeye.utils.files import atomic_path, replace_dir, write_json_atomic
from mindeye.utils.images import square

MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
FAISS_FILE = "index.faiss"
FLAT_MAX = 100_000  # auto: exact search below this many vectors, IVF-PQ above
FORMAT = 1


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except json.JSONDecodeError:
        return None


def encoder_input_size(preprocessing: dict[str, Any]) -> int:
    """Side of the square an encoder looks at (CLIP 224, stand-ins 64): index images are brought to it."""
    for key in ("center_crop", "resize", "image_size"):
        if isinstance(preprocessing.get(key), int):
            return int(preprocessing[key])
    return 224


def ivfpq_params(n: int, dim: int, nlist: int | None = None, m: int | None = None) -> dict[str, int]:
    """Sensible IVF-PQ sizes: ~4 sqrt(n) lists (>= 39 training points each), d/4 sub-quantisers of <= 8 bits."""
    if nlist is None:
        nlist = int(min(4 * math.sqrt(n), n // 39))
    nlist = max(1, int(nlist))
    if m is None:
        m = max(d for d in range(1, max(1, dim // 4) + 1) if dim % d == 0)
    if dim % m:
        raise MindEyeError(f"--pq-m {m} must divide the embedding dimension {dim}")
    nbits = int(max(1, min(8, math.floor(math.log2(max(2, n // 39))))))  # PQ codebooks need ~39 points per code
    nprobe = int(min(nlist, max(32, nlist // 16)))
    return {"nlist": nlist, "m": int(m), "nbits": nbits, "nprobe": nprobe}


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def require_faiss() -> None:
    try:
        import faiss  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name not in (None, "faiss"):  # faiss is there but one of its own modules is not: broken
            raise MindEyeError(f"faiss is installed but broken (its module {exc.name} is missing); reinstall it "
                               "with: pip install --force-reinstall 'mindeye[index]'") from None
        raise MindEyeError("building or searching an index needs faiss, which is not installed; "
                           "install it with: pip install 'mindeye[index]'") from None
    except Exception as exc:  # a broken install fails in many ways (ImportError, OSError, AttributeError ...)
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise MindEyeError(f"faiss is installed but cannot be imported ({type(exc).__name__}: {first}); reinstall "
                           "it with: pip install --force-reinstall 'mindeye[index]'") from None


def make_faiss_index(vectors: np.ndarray, index_type: str = "auto", *, nlist: int | None = None,
                     m: int | None = None, seed: int = 0, chunk: int = 65536,
                     progress: bool = False) -> tuple[Any, dict[str, Any]]:
    """A FAISS inner-product index over unit-norm rows of ``vectors`` (may be a float16 memory map).

    Returns (index, description). ``flat``: exact (IndexFlatIP). ``ivfpq``: IndexIVFPQ trained on a random
    sample of at most max(100k, 64 x nlist) vectors. ``auto``: flat below FLAT_MAX vectors.
    """
    import faiss

    n, dim = vectors.shape
    if index_type == "auto":
        index_type = "flat" if n < FLAT_MAX else "ivfpq"
    desc: dict[str, Any] = {"type": index_type, "metric": "inner_product", "normalised": True}
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif index_type == "ivfpq":
        if n < 39:
            raise MindEyeError(f"an IVF-PQ index needs at least 39 vectors to train (got {n}); use --index-type flat")
        p = ivfpq_params(n, dim, nlist, m)
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, p["nlist"], p["m"], p["nbits"], faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        n_train = min(n, max(100_000, 64 * p["nlist"]))
        sample = np.sort(rng.choice(n, n_train, replace=False))
        index.train(_normalised(vectors[sample]))
        index.nprobe = p["nprobe"]
        desc.update(p, n_train=int(n_train))
    else:
        raise MindEyeError(f"unknown --index-type {index_type!r}; choose auto, flat or ivfpq")
    for s in tqdm(range(0, n, chunk), desc="index", unit="chunk", disable=not progress):
        index.add(_normalised(vectors[s:s + chunk]))
    return index, desc


def build_index(
    images: str | Path | Sequence[str | Path],
    encoder_name: str,
    out: str | Path,
    *,
    weights: str | None = None,
    device: str = "cpu",
    index_type: str = "auto",
    batch_size: int = 64,
    chunk_size: int = 4096,
    image_size: int | None = None,
    nlist: int | None = None,
    pq_m: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    random_init: bool = False,
    encoder: Any = None,
    seed: int = 0,
) -> Path:
    """Embed every image of ``images`` with ``encoder_name`` and write a FAISS index directory at ``out``.

    ``image_size``: directory and shard images are centre-cropped to a square and resized to this side
    (default: the encoder's input size, so its own resize is a no-op); store images are used as stored.
    An interrupted build re-run with the same arguments resumes at the first unfinished chunk.
    ``encoder``: an already built encoder to use (tests). ``random_init``: tests/benchmarks only.
    """
    from mindeye.encoders.registry import get_encoder

    out = Path(out)
    if out.exists():
        if not overwrite:
            raise MindEyeError(f"{out} already exists; choose another --out, delete it, or pass --overwrite to rebuild")
    if batch_size <= 0 or chunk_size <= 0:
        raise MindEyeError("--batch-size and --chunk-size must be positive")
    require_faiss()  # before the (long) embedding, not after it
    source = open_source(images)
    enc = encoder if encoder is not None else get_encoder(encoder_name, weights, device, random_init=random_init)
    size = image_size or encoder_input_size(enc.preprocessing)
    dim = int(np.prod(enc.output_shape))
    n = len(source)
    ids_hash = hashlib.sha256("\n".join(f"{a}\t{b}" for a, b in zip(source.location, source.member)).encode())
    key = {"format": FORMAT, "encoder": enc.name, "fingerprint": enc.fingerprint, "dim": dim,
           "output_shape": list(enc.output_shape), "count": n, "source": source.describe(),
           "image_size": None if source.kind == "store" else size, "ids_sha256": ids_hash.hexdigest()}

    tmp = out.with_name(out.name + ".partial")
    state = _read_json(tmp / MANIFEST)
    if state is not None and any(state.get(k) != v for k, v in key.items()):
        print(f"note: {tmp} holds an interrupted build with other images or another encoder; starting over",
              flush=True)
        state = None
    if state is None:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        source.write_ids(tmp / IDS)
        vectors = open_chunked(tmp / EMBEDDINGS, (n, dim))
        try:
            reserve_file(tmp / EMBEDDINGS)
        except BaseException:
            del vectors
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        state = {**key, "chunk_size": chunk_size, "batch_size": batch_size, "n_chunks": n_chunks(n, chunk_size),
                 "chunks_done": 0, "complete": False,
                 "weights": "random-init" if random_init else weights, "preprocessing": enc.preprocessing}
        write_json_atomic(tmp / MANIFEST, state, indent=1)
    else:
        vectors = open_chunked(tmp / EMBEDDINGS)
    chunk_size, batch_size = state["chunk_size"], state["batch_size"]

    start = min(state["chunks_done"] * chunk_size, n)
    bar = tqdm(total=n, initial=start, unit="img", desc=f"embed {enc.name}", disable=not progress, dynamic_ncols=True)
    try:
        stream = source.iter_from(start)
        for c in range(state["chunks_done"], state["n_chunks"]):
            lo, hi = c * chunk_size, min((c + 1) * chunk_size, n)
            for b in range(lo, hi, batch_size):
                batch = [next(stream) for _ in range(b, min(b + batch_size, hi))]
                vectors[b:b + len(batch)] = _embed_batch(enc, batch, None if source.kind == "store" else size)
                bar.update(len(batch))
            finish_chunk(tmp / MANIFEST, state, [vectors], indent=1, chunks_done=c + 1)
    finally:
        bar.close()

    t0 = time.perf_counter()
    index, desc = make_faiss_index(vectors, index_type, nlist=nlist, m=pq_m, seed=seed, progress=progress)
    import faiss

    with atomic_path(tmp / FAISS_FILE) as faiss_tmp:
        faiss.write_index(index, str(faiss_tmp))
    state.update(complete=True, index=desc, index_build_s=round(time.perf_counter() - t0, 3),
                 mindeye_version=__version__, normalised=True)
    write_json_atomic(tmp / MANIFEST, state, indent=1)
    del vectors
    replace_dir(tmp, out)  # --overwrite: the old index goes only once the new one is in place
    return out


def _embed_batch(enc: Any, images: list[np.ndarray], size: int | None) -> np.ndarray:
    """Unit-norm flattened embeddings (float16) of a list of uint8 images."""
    batch = np.stack([square(im, size) if size is not None else im for im in images])
    y = enc.encode(batch).float().flatten(1)
    if not bool(torch.isfinite(y).all()):
        raise MindEyeError(f"encoder '{enc.name}' produced NaN/inf; check the weights, or run with --device cpu")
    return torch.nn.functional.normalize(y, dim=1).cpu().numpy().astype(np.float16)


@dataclass
class DatabaseIndex:
    """A finished index directory: manifest, FAISS index, id -> image map, stored embeddings."""

    path: Path
    manifest: dict[str, Any]
    index: Any
    source: ImageSource

    @classmethod
    def open(cls, path: str | Path, images_root: str | None = None) -> DatabaseIndex:
        require_faiss()
        import faiss

        path = Path(path)
        manifest = _read_json(path / MANIFEST)
        if not (path / FAISS_FILE).exists() or manifest is None or not manifest.get("complete"):
            partial = path.with_name(path.name + ".partial")
            hint = (f" ({partial} exists: that build was interrupted; re-run the same `mindeye index build` "
                    "command to finish it)") if partial.exists() else ""
            raise MindEyeError(f"no finished database index at {path} ({FAISS_FILE} or {MANIFEST} missing){hint}; "
                               "build one with `mindeye index build --images DIR --encoder NAME --out INDEX`")
        index = faiss.read_index(str(path / FAISS_FILE))
        source = ImageSource.read(path, manifest["source"], images_root)
        if index.ntotal != manifest["count"] or len(source) != manifest["count"]:
            raise MindEyeError(f"{path} is inconsistent ({index.ntotal} vectors, {len(source)} ids, manifest "
                               f"{manifest['count']}); rebuild it with --overwrite")
        return cls(path, manifest, index, source)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def encoder(self) -> str:
        return str(self.manifest["encoder"])

    def embeddings(self, ids: np.ndarray) -> np.ndarray | None:
        """Stored unit-norm embeddings (float32) of ``ids``, or None if embeddings.npy was deleted."""
        path = self.path / EMBEDDINGS
        if not path.exists():
            return None
        arr = np.load(path, mmap_mode="r")
        flat = np.asarray(ids).reshape(-1)
        order = np.argsort(flat)
        rows = np.empty((len(flat), arr.shape[1]), dtype=np.float32)
        rows[order] = arr[flat[order]]
        return _normalised(rows).reshape(*np.shape(ids), -1)

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None,
               refine: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (M, k), best first, for float32 queries (M, dim) (normalised here).

        For an approximate (IVF-PQ) index with stored embeddings, ``refine`` x k candidates are fetched and
        re-scored with the exact stored embeddings (faiss' IndexRefine idea), which recovers most of what
        product quantisation loses; ids are -1 where fewer than k were found.
        """
        queries = _normalised(queries)
        if queries.shape[1] != self.dim:
            raise MindEyeError(f"query embeddings have dimension {queries.shape[1]} but the index {self.path} holds "
                               f"{self.dim}-d {self.encoder} embeddings; query it with embeddings of the same encoder")
        k = min(k, self.index.ntotal)
        if hasattr(self.index, "nprobe"):
            self.index.nprobe = int(nprobe or self.manifest["index"].get("nprobe", 1))
        exact = self.manifest["index"]["type"] == "flat" or refine <= 1 or not (self.path / EMBEDDINGS).exists()
        if exact:
            return self.index.search(queries, k)
        _, short = self.index.search(queries, min(self.index.ntotal, refine * k))
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for m, row in enumerate(short):
            row = row[row >= 0]
            s = self.embeddings(row) @ queries[m]
            top = np.argsort(-s, kind="stable")[:k]
            scores[m, :len(top)], ids[m, :len(top)] = s[top], row[top]
        return scores, ids


def search_exact(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k cosine (numpy), best first: the reference the flat index must equal."""
    sims = _normalised(queries) @ _normalised(vectors).T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids


def rerank(candidates: np.ndarray, query: np.ndarray) -> tuple[int, np.ndarray]:
    """(index of the best candidate, cosine of every candidate) for embeddings ``(k, ...)`` vs ``query``."""
    scores = _normalised(candidates) @ _normalised(query[None])[0]
    return int(np.argmax(scores)), scores
