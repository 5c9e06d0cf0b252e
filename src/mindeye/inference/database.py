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

Retrieve (``mindeye retrieve``): see :func:`retrieve` for the output format (an ``index.json`` that
``mindeye evaluate recon`` reads like a reconstruction directory, plus ``retrievals.json``).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mindeye import __version__
from mindeye.errors import MindEyeError
from mindeye.utils.images import save_png

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")  # in order of preference within one webdataset sample
MANIFEST = "manifest.json"
IDS = "ids.csv"
EMBEDDINGS = "embeddings.npy"
FAISS_FILE = "index.faiss"
FLAT_MAX = 100_000  # auto: exact search below this many vectors, IVF-PQ above
FORMAT = 1
# A run trained on an encoder's hidden tokens can query an index of the same model's final embedding
# with its CLS token (row 0 of the hidden target IS the final embedding).
FINAL_OF = {"clip-vit-l14-hidden": "clip-vit-l14-final", "standin-clip-hidden": "standin-clip-final"}


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------
def decode_image(data: bytes, where: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise MindEyeError(f"cannot decode the image {where} ({exc}); remove or replace it and re-run") from None


def square(image: np.ndarray, size: int | None) -> np.ndarray:
    """Centre-crop uint8 ``(H, W, 3)`` to a square and resize it to ``size`` (bicubic; None: keep its side)."""
    from PIL import Image

    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    out = image[top:top + s, left:left + s]
    if size is not None and s != size:
        out = np.asarray(Image.fromarray(np.ascontiguousarray(out)).resize((size, size), Image.Resampling.BICUBIC))
    return np.ascontiguousarray(out)


# ------------------------------------------------------------------------------------------------
# Where the images come from
# ------------------------------------------------------------------------------------------------
@dataclass
class ImageSource:
    """The images of an index, one per id (the row number).

    ``kind``: ``directory`` (``location`` = path relative to ``root``), ``webdataset`` (``location`` =
    absolute shard path, ``member`` = tar member name, ``offset``/``size`` = its bytes inside the tar, so a
    candidate is read with one seek) or ``store`` (``root`` = the subject store, ``member`` = image index).
    """

    kind: str
    root: str
    location: list[str]
    member: list[str]
    offset: list[int] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    _store_images: Any = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.location)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.kind, "root": self.root}
        if self.kind == "webdataset":
            d["shards"] = sorted(set(self.location))
        return d

    def name(self, i: int) -> str:
        """Human-readable location of id ``i`` (error messages, retrievals.json)."""
        if self.kind == "directory":
            return str(Path(self.root) / self.location[i])
        if self.kind == "webdataset":
            return f"{self.location[i]}:{self.member[i]}"
        return f"{self.root}/images.npy[{self.member[i]}]"

    # -- reading ---------------------------------------------------------------------------------
    def _store(self) -> np.ndarray:
        if self._store_images is None:
            path = Path(self.root) / "images.npy"
            if not path.exists():
                raise MindEyeError(f"the index's images are those of the subject store {self.root}, but {path} is "
                                   "missing; restore the store there or pass its new location with --images-root")
            self._store_images = np.load(path, mmap_mode="r")
        return self._store_images

    def check(self, ids: Sequence[int]) -> None:
        """Raise a MindEyeError naming every image of ``ids`` that is not on disk (before anything is written)."""
        ids = sorted({int(i) for i in ids})
        if self.kind == "store":
            n = len(self._store())
            bad = [i for i in ids if int(self.member[i]) >= n]
            if bad:
                raise MindEyeError(f"{self.root}/images.npy has {n} images but the index refers to image "
                                   f"{self.member[bad[0]]}; the store changed since the index was built: rebuild it")
            return
        paths = {self.name(i) if self.kind == "directory" else self.location[i] for i in ids}
        missing = sorted(p for p in paths if not Path(p).is_file())
        if missing:
            what = "image file(s)" if self.kind == "directory" else "shard(s)"
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise MindEyeError(f"{len(missing)} {what} referenced by the index are missing: {shown}. Restore them "
                               "(or pass --images-root if the collection moved), or rebuild the index; no "
                               "placeholder images are written")

    def load(self, ids: Sequence[int]) -> list[np.ndarray]:
        """uint8 ``(H, W, 3)`` images of ``ids`` as stored (any size)."""
        self.check(ids)
        out = []
        for i in ids:
            i = int(i)
            if self.kind == "store":
                out.append(np.asarray(self._store()[int(self.member[i])]))
            elif self.kind == "directory":
                path = Path(self.name(i))
                out.append(decode_image(path.read_bytes(), str(path)))
            else:
                with open(self.location[i], "rb") as f:
                    f.seek(self.offset[i])
                    data = f.read(self.size[i])
                if len(data) != self.size[i]:
                    raise MindEyeError(f"shard {self.location[i]} is shorter than when the index was built (member "
                                       f"{self.member[i]}); restore the shard or rebuild the index")
                out.append(decode_image(data, self.name(i)))
        return out

    def iter_from(self, start: int) -> Iterator[np.ndarray]:
        """Images ``start, start + 1, ...`` in id order (shards are streamed with the webdataset library)."""
        if self.kind != "webdataset":
            for lo in range(start, len(self), 256):
                yield from self.load(range(lo, min(lo + 256, len(self))))
            return
        import webdataset as wds

        shards = list(dict.fromkeys(self.location[start:]))  # in id order, each once
        want = {(loc, *_split_key(mem)): i for i, (loc, mem) in enumerate(zip(self.location, self.member))
                if i >= start}
        expected = start
        for shard in shards:
            ds = wds.WebDataset(shard, shardshuffle=False, empty_check=False)
            try:
                for sample in ds:
                    sample = {k if k.startswith("__") else k.lower(): v for k, v in sample.items()}
                    ext = _first_image_ext(sample)
                    key = (shard, sample["__key__"], ext)
                    if ext is None or key not in want:
                        continue
                    if want[key] != expected:
                        raise MindEyeError(f"shard {shard} changed since it was listed (sample {key[1]} out of "
                                           "order); re-run the build with --overwrite")
                    expected += 1
                    yield decode_image(sample[ext], f"{shard}:{key[1]}.{ext}")
            except MindEyeError:
                raise
            except Exception as exc:  # noqa: BLE001 - tarfile / webdataset raise many kinds
                raise MindEyeError(f"cannot read shard {shard} ({type(exc).__name__}: {exc}); the file is damaged: "
                                   "replace it") from None
        if expected != len(self):
            raise MindEyeError(f"the shards held {expected - start} of the {len(self) - start} images listed; a shard "
                               "changed during the build: re-run with --overwrite")

    # -- ids.csv ---------------------------------------------------------------------------------
    def write_ids(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "location", "member", "offset", "size"])
            for i in range(len(self)):
                w.writerow([i, self.location[i], self.member[i],
                            self.offset[i] if self.offset else "", self.size[i] if self.size else ""])
        os.replace(tmp, path)

    @classmethod
    def read(cls, directory: Path, described: dict[str, Any], root: str | None = None) -> ImageSource:
        path = Path(directory) / IDS
        if not path.exists():
            raise MindEyeError(f"{directory} has no {IDS} (the id -> image map); rebuild the index")
        loc, mem, off, size = [], [], [], []
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                loc.append(r["location"])
                mem.append(r["member"])
                if r["offset"]:
                    off.append(int(r["offset"]))
                    size.append(int(r["size"]))
        return cls(described["type"], root or described["root"], loc, mem, off, size)


def _first_image_ext(sample: dict[str, Any]) -> str | None:
    for ext in IMAGE_EXTS:
        if ext[1:] in sample:
            return ext[1:]
    return None


def _split_key(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the file name, the rest is the extension."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower() if dot else ""


def _list_shard(shard: Path) -> list[tuple[str, int, int]]:
    """(member name, data offset, size) of the image of each sample of a tar, in order (headers only)."""
    import tarfile

    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = _split_key(info.name)
                if "." + ext in IMAGE_EXTS:
                    samples.setdefault(key, {})[ext] = info
    except (tarfile.TarError, OSError) as exc:
        raise MindEyeError(f"cannot read shard {shard} ({exc}); it must be an uncompressed .tar (webdataset) "
                           "file") from None
    out = []
    for members in samples.values():
        ext = next(e[1:] for e in IMAGE_EXTS if e[1:] in members)
        info = members[ext]
        out.append((info.name, info.offset_data, info.size))
    return out


def open_source(images: str | Path | Sequence[str | Path]) -> ImageSource:
    """Enumerate ``--images``: a subject store, a directory of images (recursive), or webdataset shards
    (``.tar`` files, brace patterns like ``shards/{000..099}.tar``, globs, or a directory of shards)."""
    items = [images] if isinstance(images, str | Path) else list(images)
    if not items:
        raise MindEyeError("--images is empty; give a directory of images, webdataset .tar shards or a subject store")
    if len(items) == 1 and Path(items[0]).is_dir():
        root = Path(items[0]).resolve()
        if (root / "meta.json").exists():
            from mindeye.data.store import SubjectStore

            store = SubjectStore(root)
            n = store.n_images
            return ImageSource("store", str(root), ["images.npy"] * n, [str(i) for i in range(n)])
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if files:
            return ImageSource("directory", str(root), [p.relative_to(root).as_posix() for p in files],
                               [""] * len(files))
        items = sorted(str(p) for p in root.rglob("*.tar"))
        if not items:
            raise MindEyeError(f"{root} holds no images ({', '.join(IMAGE_EXTS)}) and no .tar shards")
    shards = _expand_shards(items)
    loc, mem, off, size = [], [], [], []
    for shard in shards:
        for name, o, s in _list_shard(shard):
            loc.append(str(shard))
            mem.append(name)
            off.append(o)
            size.append(s)
    if not loc:
        raise MindEyeError(f"the shard(s) {', '.join(map(str, shards[:3]))} hold no jpg/jpeg/png/webp members")
    return ImageSource("webdataset", "", loc, mem, off, size)


def _expand_shards(items: Sequence[str | Path]) -> list[Path]:
    import braceexpand

    out: list[Path] = []
    for item in items:
        for pattern in braceexpand.braceexpand(str(item)):
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            for m in matches:
                p = Path(m)
                if not p.exists():
                    raise MindEyeError(f"--images {m} does not exist; give a directory of images, a subject store "
                                       "or .tar shards (files, globs or brace patterns)")
                if p.is_dir() or p.suffix.lower() != ".tar":
                    raise MindEyeError(f"--images {m}: give one directory (of images, of shards, or a subject store) "
                                       "or any number of .tar shard files/patterns")
                out.append(p.resolve())
    if not out:
        raise MindEyeError(f"no shard matches {', '.join(map(str, items))}")
    return list(dict.fromkeys(out))


# ------------------------------------------------------------------------------------------------
# Index
# ------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except json.JSONDecodeError:
        return None


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


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
        vectors = np.lib.format.open_memmap(tmp / EMBEDDINGS, mode="w+", dtype=np.float16, shape=(n, dim))
        state = {**key, "chunk_size": chunk_size, "batch_size": batch_size, "n_chunks": -(-n // chunk_size),
                 "chunks_done": 0, "complete": False,
                 "weights": "random-init" if random_init else weights, "preprocessing": enc.preprocessing}
        _write_json(tmp / MANIFEST, state)
    else:
        vectors = np.lib.format.open_memmap(tmp / EMBEDDINGS, mode="r+")
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
            vectors.flush()  # data first, then the record that the chunk is done
            state["chunks_done"] = c + 1
            _write_json(tmp / MANIFEST, state)
    finally:
        bar.close()

    t0 = time.perf_counter()
    index, desc = make_faiss_index(vectors, index_type, nlist=nlist, m=pq_m, seed=seed, progress=progress)
    import faiss

    faiss.write_index(index, str(tmp / (FAISS_FILE + ".tmp")))
    os.replace(tmp / (FAISS_FILE + ".tmp"), tmp / FAISS_FILE)
    state.update(complete=True, index=desc, index_build_s=round(time.perf_counter() - t0, 3),
                 mindeye_version=__version__, normalised=True)
    _write_json(tmp / MANIFEST, state)
    del vectors
    if out.exists():  # --overwrite: swap in the new index, then drop the old one
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)
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


# ------------------------------------------------------------------------------------------------
# Retrieve
# ------------------------------------------------------------------------------------------------
def query_embeddings(projector: torch.Tensor, index_dim: int, query: str, run_encoder: str,
                     index_encoder: str) -> tuple[np.ndarray, str]:
    """The vectors to search with: the flattened projector output, or its CLS token (``query='cls'``).

    ``auto``: the flattened output if its size matches the index, else the CLS token when the index holds the
    final embedding of the run's hidden-token encoder.
    """
    x = projector.float()
    if x.ndim == 2:
        x = x[:, None]
    flat_dim, tok_dim = x.shape[1] * x.shape[2], x.shape[2]
    if query == "auto":
        cls_ok = x.shape[1] > 1 and tok_dim == index_dim and FINAL_OF.get(run_encoder) == index_encoder
        query = "projector" if flat_dim == index_dim else ("cls" if cls_ok else "projector")
    if query == "projector":
        q = x.flatten(1)
    elif query == "cls":
        q = x[:, 0]
    else:
        raise MindEyeError(f"unknown --query {query!r}; choose auto, projector or cls")
    if q.shape[1] != index_dim:
        raise MindEyeError(
            f"the run's {query} embedding has dimension {q.shape[1]} ({x.shape[1]} x {tok_dim} tokens from "
            f"{run_encoder}) but the index holds {index_dim}-d {index_encoder} embeddings; build the index with the "
            f"run's encoder ({run_encoder}"
            + (f", or its final embedding {FINAL_OF[run_encoder]} and --query cls" if run_encoder in FINAL_OF else "")
            + ")")
    return q.numpy(), query


def _check_encoders(run_encoder: str, index: DatabaseIndex, query: str, store: Path, weights: str | None) -> None:
    """The brain embedding and the index must live in the same space (same encoder and weights)."""
    enc = index.encoder
    if enc != run_encoder and not (query == "cls" and FINAL_OF.get(run_encoder) == enc):
        raise MindEyeError(f"the run predicts {run_encoder} embeddings but {index.path} indexes {enc} embeddings; "
                           f"build an index with --encoder {FINAL_OF.get(run_encoder, run_encoder)}")
    if enc == run_encoder:
        from mindeye.encoders.cache import find_cache, read_manifest

        try:
            cache = read_manifest(find_cache(store, run_encoder, weights)) or {}
        except MindEyeError:
            return  # no cache to compare with (targets computed elsewhere): nothing more to check
        if cache.get("fingerprint") and cache["fingerprint"] != index.manifest["fingerprint"]:
            raise MindEyeError(f"the run's {run_encoder} targets (fingerprint {cache['fingerprint'][:12]}) and the "
                               f"index {index.path} (fingerprint {index.manifest['fingerprint'][:12]}) come from "
                               "different weights or preprocessing; rebuild the index with the run's weights")


def retrieve(
    run_dir: str | Path,
    index_dir: str | Path,
    out_dir: str | Path,
    *,
    k: int = 16,
    store: str | Path | None = None,
    device: str | None = None,
    weights: str | None = None,
    query: str = "auto",
    save_all: bool = False,
    limit: int | None = None,
    nprobe: int | None = None,
    refine: int = 4,
    size: int | None = None,
    images_root: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    encoder: Any = None,
) -> dict[str, Any]:
    """For each test image of the run's store (repetitions averaged): k nearest neighbours, re-ranked.

    Re-ranking: every candidate's embedding in the run's own target space is compared (cosine) with the
    run's flattened projector output and the highest wins. When the index holds the run's own encoder the
    stored embeddings are used (exact, so this also undoes IVF-PQ's approximation); when a hidden-token run
    queries a final-embedding index with its CLS token, the candidates are encoded with the run's target
    encoder (``weights``: its weights, default the run's ``targets.weights``; ``encoder``: a built one).

    Writes ``out_dir/images/IIIII.png`` (the chosen image for store image IIIII, centre-cropped to a square
    of ``size`` px, default the store's image size), with ``save_all`` also ``candidates/IIIII_KK.png``
    (all k, in kNN order), ``index.json`` (the reconstruction-directory format read by ``mindeye evaluate
    recon``) and ``retrievals.json`` (one record per test sample). Returns the index.json content.
    """
    from mindeye.data.splits import load_eval_split
    from mindeye.runs import embed_voxels, load_run_model
    from mindeye.utils.device import resolve_device

    if k < 1:
        raise MindEyeError(f"-k must be at least 1, got {k}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise MindEyeError(f"{out_dir} already exists and is not empty; choose another --out or pass --overwrite")
    db = DatabaseIndex.open(index_dir, images_root)  # a missing index fails before the model is loaded
    device = resolve_device(device)
    cfg, info, model, subject = load_run_model(run_dir, device, store)
    if cfg.model.kind == "lowlevel":
        raise MindEyeError(f"{run_dir} is a low-level run; database retrieval needs a high-level (mindeye or ridge) "
                           "run that predicts CLIP embeddings")
    test = load_eval_split(subject, subject.image_indices("test"), "averaged")
    if len(test) == 0:
        raise MindEyeError(f"{subject.path} has no test images")
    rows = slice(0, limit) if limit else slice(None)
    voxels, image_index = test.voxels[rows], test.image_index[rows]
    brain = embed_voxels(model, voxels, device, which="projector")
    q, query = query_embeddings(brain, db.dim, query, cfg.targets.encoder, db.encoder)
    _check_encoders(cfg.targets.encoder, db, query, subject.path, cfg.targets.weights)

    knn_scores, ids = db.search(q, k, nprobe, refine)
    if (ids < 0).any():  # IVF with too few probed lists can return fewer than k
        print(f"note: some queries found fewer than {k} neighbours; raise --nprobe", flush=True)
    db.source.check(ids[ids >= 0].ravel())  # every candidate on disk before anything is written

    brain_flat = brain.float().flatten(1).numpy()
    use_stored = db.encoder == cfg.targets.encoder and (db.path / EMBEDDINGS).exists()
    enc = None
    if not use_stored:
        from mindeye.encoders.registry import get_encoder

        enc = encoder if encoder is not None else get_encoder(cfg.targets.encoder, weights or cfg.targets.weights,
                                                              device)
    enc_size = db.manifest.get("image_size")
    size = size or subject.image_size

    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = {"index": str(db.path.resolve()), "index_encoder": db.encoder, "index_fingerprint":
              db.manifest["fingerprint"], "index_type": db.manifest["index"]["type"], "k": k, "query": query,
              "nprobe": nprobe, "refine": refine,
              "index_source": db.source.describe(),
              "rerank": "stored-embeddings" if use_stored else f"encode:{cfg.targets.encoder}",
              "high_run": str(Path(run_dir).resolve()), "store": str(subject.path.resolve()), "test_mode": "averaged",
              "generator": f"database retrieval ({db.path.name})", "size": size}
    index: dict[str, Any] = {"kind": "retrieval", "mindeye_version": __version__, "config": config, "images": {}}
    records = []
    for m in tqdm(range(len(image_index)), desc="retrieve", unit="img", disable=not progress):
        cand = ids[m][ids[m] >= 0]
        if len(cand) == 0:
            raise MindEyeError(f"the index returned no neighbour for test sample {m}; raise --nprobe")
        pics = db.source.load(cand) if (save_all or enc is not None) else None
        if use_stored:
            emb = db.embeddings(cand)
        else:
            batch = np.stack([square(p, enc_size) if enc_size else p for p in pics])
            emb = enc.encode(batch).float().flatten(1).cpu().numpy()
        if emb.shape[1] != brain_flat.shape[1]:
            raise MindEyeError(f"cannot re-rank: the candidates' {cfg.targets.encoder} embeddings have dimension "
                               f"{emb.shape[1]} but the run's brain embedding {brain_flat.shape[1]}")
        best, scores = rerank(emb, brain_flat[m])
        idx = int(image_index[m])
        chosen = pics[best] if pics is not None else db.source.load([cand[best]])[0]
        rec: dict[str, Any] = {"image_index": idx, "image_id": subject.image_ids[idx], "file": f"images/{idx:05d}.png",
                               "chosen": best, "chosen_id": int(cand[best]), "chosen_source": db.source.name(cand[best]),
                               "candidates": cand.tolist(), "knn_scores": knn_scores[m][: len(cand)].tolist(),
                               "scores": scores.tolist()}
        save_png(square(chosen, size), tmp / rec["file"])
        if save_all:
            rec["samples"] = [f"candidates/{idx:05d}_{j:02d}.png" for j in range(len(cand))]
            for j, p in enumerate(pics):
                save_png(square(p, size), tmp / rec["samples"][j])
        index["images"][str(idx)] = rec
        records.append({"sample": m, **rec})
    _write_json(tmp / "index.json", index)
    _write_json(tmp / "retrievals.json", {"config": config, "retrievals": records})
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return index
