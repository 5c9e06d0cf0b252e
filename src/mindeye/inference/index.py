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
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mindeye import __version__
from mindeye.diskspace import reserve_file
from mindeye.errors import MindEyeError
from mindeye.inference import ann
from mindeye.inference.ann import (
    DEFAULT_MEMORY,
    FAISS_FILE,
    FLAT_MAX,  # noqa: F401 - re-exported (tests monkeypatch index.FLAT_MAX)
    Embeddings,
    choose_index,
    empty_index,
    search_refined,
    set_nprobe,
    train_size,
)
from mindeye.inference.ann import normalised as _normalised
from mindeye.inference.sources import IDS, ImageSource, UrlSource, open_source, read_source
from mindeye.utils.chunks import finish_chunk, n_chunks, open_chunked
from mindeye.utils.files import replace_dir, write_json_atomic
from mindeye.utils.images import square
from mindeye.utils.logs import progress_bar

MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
EMBEDDINGS_DIR = "embeddings"  # embeddings/part-NNNNN.npy: the distributed build's parts
TUNE_MAX = 20_000_000  # nprobe is tuned for recall at build time up to this many vectors (exact ground truth)
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
    """IVF-PQ sizes for ``n`` vectors (no memory limit): see :func:`mindeye.inference.ann.choose_index`."""
    spec = choose_index(n, dim, index_type="ivfpq", max_memory=2**62, nlist=nlist, m=m)
    return {"nlist": spec["nlist"], "m": spec["m"], "nbits": spec["nbits"], "nprobe": default_nprobe(spec["nlist"])}


def default_nprobe(nlist: int) -> int:
    """nprobe when it is not tuned (indexes above TUNE_MAX vectors): 1/64 of the lists, at least 16."""
    return int(min(nlist, max(16, nlist // 64)))


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
                     m: int | None = None, seed: int = 0, chunk: int = 65536, progress: bool = False,
                     max_memory: str | int = DEFAULT_MEMORY) -> tuple[Any, dict[str, Any]]:
    """An in-RAM FAISS inner-product index over unit-norm rows of ``vectors`` (may be a float16 memory map).

    Returns (index, description); the index is chosen by :func:`mindeye.inference.ann.choose_index`
    (``auto``: flat below FLAT_MAX vectors). :func:`build_index` writes the same index sharded on disk.
    """
    import faiss

    n, dim = vectors.shape
    spec = choose_index(n, dim, index_type=index_type, max_memory=max_memory, nlist=nlist, m=m,
                        flat_max=FLAT_MAX)
    desc: dict[str, Any] = {**spec, "metric": "inner_product", "normalised": True}
    index = empty_index(spec, dim)
    if spec["type"] == "ivfpq":
        n_train = train_size(n, dim, spec)
        sample = np.sort(np.random.default_rng(seed).choice(n, n_train, replace=False))
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter, ivf.cp.seed = 10, seed
        faiss.downcast_index(ivf).do_polysemous_training = False
        index.train(_normalised(vectors[sample]))
        desc.update(n_train=int(n_train), nprobe=default_nprobe(spec["nlist"]))
        set_nprobe(index, desc["nprobe"])
    for s in progress_bar(range(0, n, chunk), desc="index", unit="chunk", disable=not progress):
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
    max_index_memory: str | int = DEFAULT_MEMORY,
    shard_size: int = 1_000_000,
    nprobe: int | None = None,
) -> Path:
    """Embed every image of ``images`` with ``encoder_name`` and write a FAISS index directory at ``out``.

    ``image_size``: directory and shard images are centre-cropped to a square and resized to this side
    (default: the encoder's input size, so its own resize is a no-op); store images are used as stored.
    An interrupted build re-run with the same arguments resumes at the first unfinished chunk.
    ``encoder``: an already built encoder to use (tests). ``random_init``: tests/benchmarks only.
    ``max_index_memory``: budget the index type and PQ code size are chosen by (:func:`ann.choose_index`);
    an IVF-PQ index is trained once, filled ``shard_size`` vectors per shard file and merged into on-disk
    inverted lists, each step resumable; its ``nprobe`` is tuned for recall@16 >= 0.95 unless given.
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
    bar = progress_bar(total=n, initial=start, unit="img", desc=f"embed {enc.name}", disable=not progress, dynamic_ncols=True)
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
    finish_ann(tmp, vectors, state, index_type=index_type, nlist=nlist, pq_m=pq_m, seed=seed,
               max_index_memory=max_index_memory, shard_size=shard_size, nprobe=nprobe, progress=progress)
    state.update(complete=True, index_build_s=round(time.perf_counter() - t0, 3), mindeye_version=__version__,
                 normalised=True)
    write_json_atomic(tmp / MANIFEST, state, indent=1)
    del vectors
    replace_dir(tmp, out)  # --overwrite: the old index goes only once the new one is in place
    return out


def finish_ann(tmp: Path, vectors: np.ndarray, state: dict[str, Any], *, index_type: str = "auto",
               nlist: int | None = None, pq_m: int | None = None, seed: int = 0,
               max_index_memory: str | int = DEFAULT_MEMORY, shard_size: int = 1_000_000, nprobe: int | None = None,
               progress: bool = False, run_shards: Any = None) -> None:
    """Build (or resume building) the FAISS index of a finished set of embeddings in ``tmp`` and record it
    in ``state["index"]`` (type, factory key, sizes, nprobe and the recall it was tuned to)."""
    if shard_size <= 0:
        raise MindEyeError("--shard-size must be positive")
    n, dim = vectors.shape
    spec = choose_index(n, dim, index_type=index_type, max_memory=max_index_memory, nlist=nlist, m=pq_m,
                        flat_max=FLAT_MAX)
    if state.get("index_spec") != spec:  # another budget or type than the interrupted build: start the index over
        for stale in (ann.TRAINED, FAISS_FILE, ann.IVFDATA):
            (tmp / stale).unlink(missing_ok=True)
        shutil.rmtree(tmp / ann.SHARDS, ignore_errors=True)
        state["index_spec"] = dict(spec)
        write_json_atomic(tmp / MANIFEST, state, indent=1)
    ann.build_ann(vectors, tmp, spec, shard_size=shard_size, seed=seed, progress=progress, run_shards=run_shards)
    desc: dict[str, Any] = {**spec, "metric": "inner_product", "normalised": True, "shard_size": shard_size}
    if spec["type"] == "ivfpq":
        desc["n_train"] = train_size(n, dim, spec)
        index = ann.open_index(tmp / FAISS_FILE)
        if nprobe is not None:
            desc.update(nprobe=int(nprobe))
        elif n <= TUNE_MAX:
            desc.update(ann.tune_nprobe(index, vectors, embeddings_of(tmp), seed=seed))
        else:
            desc.update(nprobe=default_nprobe(spec["nlist"]))
        del index
        (tmp / ann.TRAINED).unlink(missing_ok=True)
    state["index"] = desc


def _embed_batch(enc: Any, images: list[np.ndarray], size: int | None) -> np.ndarray:
    """Unit-norm flattened embeddings (float16) of a list of uint8 images."""
    batch = np.stack([square(im, size) if size is not None else im for im in images])
    y = enc.encode(batch).float().flatten(1)
    if not bool(torch.isfinite(y).all()):
        raise MindEyeError(f"encoder '{enc.name}' produced NaN/inf; check the weights, or run with --device cpu")
    return torch.nn.functional.normalize(y, dim=1).cpu().numpy().astype(np.float16)


def embeddings_of(path: Path, manifest: dict[str, Any] | None = None) -> Embeddings | None:
    """The stored embeddings of an index directory: ``embeddings.npy``, the distributed build's
    ``embeddings/*.npy`` parts, or the files an attached index names; None if there are none."""
    if manifest and manifest.get("embeddings_files"):
        return Embeddings(manifest["embeddings_files"])
    if (path / EMBEDDINGS).exists():
        return Embeddings([path / EMBEDDINGS])
    parts = sorted((path / EMBEDDINGS_DIR).glob("*.npy")) if (path / EMBEDDINGS_DIR).is_dir() else []
    return Embeddings(parts) if parts else None


@dataclass
class DatabaseIndex:
    """A finished index directory: manifest, FAISS index (memory-mapped), id -> image map, stored embeddings.

    Built by :func:`build_index` (or the distributed build) or attached to an existing LAION /
    clip-retrieval index by :func:`mindeye.inference.attach.attach_index` (``manifest["kind"] == "attached"``:
    the FAISS file, metadata and embeddings stay where they are).
    """

    path: Path
    manifest: dict[str, Any]
    index: Any
    source: ImageSource | UrlSource
    stored: Embeddings | None = None

    @classmethod
    def open(cls, path: str | Path, images_root: str | None = None) -> DatabaseIndex:
        require_faiss()
        path = Path(path)
        manifest = _read_json(path / MANIFEST)
        faiss_file = Path(manifest.get("faiss_file") or path / FAISS_FILE) if manifest else path / FAISS_FILE
        if manifest is None or not manifest.get("complete") or not faiss_file.exists():
            partial = path.with_name(path.name + ".partial")
            hint = (f" ({partial} exists: that build was interrupted; re-run the same `mindeye index build` "
                    "command to finish it)") if partial.exists() else ""
            what = f"{faiss_file} is missing" if manifest and manifest.get("complete") else \
                f"{FAISS_FILE} or {MANIFEST} missing"
            raise MindEyeError(f"no finished database index at {path} ({what}){hint}; build one with "
                               "`mindeye index build --images DIR --encoder NAME --out INDEX` or attach one with "
                               "`mindeye index attach`")
        index = ann.open_index(faiss_file)
        source = read_source(path, manifest["source"], images_root)
        stored = embeddings_of(path, manifest)
        counts = {"vectors": index.ntotal, "ids": len(source), "manifest": manifest["count"]}
        if stored is not None:
            counts["embeddings"] = len(stored)
        if len(set(counts.values())) != 1:
            raise MindEyeError(f"{path} is inconsistent ({', '.join(f'{v} {k}' for k, v in counts.items())}); "
                               "rebuild it with --overwrite (or attach matching files again)")
        if index.d != manifest["dim"] or (stored is not None and stored.dim != manifest["dim"]):
            raise MindEyeError(f"{faiss_file} holds {index.d}-d vectors but {path} says {manifest['dim']}-d; rebuild it")
        return cls(path, manifest, index, source, stored)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def encoder(self) -> str:
        return str(self.manifest["encoder"])

    @property
    def has_embeddings(self) -> bool:
        return self.stored is not None

    def embeddings(self, ids: np.ndarray) -> np.ndarray | None:
        """Stored unit-norm embeddings (float32) of ``ids`` (any shape), or None if there are none."""
        return None if self.stored is None else self.stored.rows(np.asarray(ids))

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None,
               refine: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (M, k), best first, for float32 queries (M, dim) (normalised here), all at once.

        For an approximate (IVF) index with stored embeddings, ``refine`` x k candidates are fetched and
        re-scored exactly with the stored embeddings, vectorised over the batch (faiss' IndexRefine idea,
        with the exact vectors read from disk instead of a second copy in RAM); ids are -1 where fewer
        than k were found.
        """
        queries = _normalised(queries)
        if queries.shape[1] != self.dim:
            raise MindEyeError(f"query embeddings have dimension {queries.shape[1]} but the index {self.path} holds "
                               f"{self.dim}-d {self.encoder} embeddings; query it with embeddings of the same encoder")
        if k < 1:
            raise MindEyeError(f"-k must be at least 1, got {k}")
        exact = self.manifest["index"]["type"] == "flat"
        probe = int(nprobe or self.manifest["index"].get("nprobe") or 1)
        return search_refined(self.index, queries, k, embeddings=None if exact else self.stored,
                              refine=refine, nprobe=None if exact else probe)


def search_exact(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k cosine (numpy), best first: the reference the flat index must equal."""
    sims = _normalised(queries) @ _normalised(vectors).T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids


def rerank(candidates: np.ndarray, query: np.ndarray) -> tuple[int, np.ndarray]:
    """(index of the best candidate, cosine of every candidate) for embeddings ``(k, ...)`` vs ``query``."""
    scores = _normalised(candidates) @ _normalised(query[None])[0]
    return int(np.argmax(scores)), scores
