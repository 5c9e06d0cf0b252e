"""Use an existing LAION / clip-retrieval kNN index as a retrieval database, in place, without rebuilding.

LAION published ViT-L/14 image embeddings with kNN indices built by autofaiss and clip-retrieval, laid out
as (clip-retrieval's ``clip back`` reads the same)::

    image.index                  one FAISS file (memory-mapped: IO_FLAG_MMAP | IO_FLAG_READ_ONLY), or
    image.index/populated.index  + merged *.ivfdata: on-disk inverted lists (IO_FLAG_ONDISK_SAME_DIR)
    metadata/*.parquet           one row per indexed vector, files in sorted name order: url, caption, ...
    img_emb/*.npy                (optional) the embeddings, same order (float16, unit norm)

:func:`attach_index` checks that they agree (dimension, one metadata row and embedding per vector, the
columns exist) and writes a small ``OUT/manifest.json`` that points at them; nothing is copied or
rebuilt. :class:`mindeye.inference.index.DatabaseIndex` opens the result like a built index; ids map to
``{url, caption}`` through the parquet footers and row groups (only the rows asked for are read), and an
image is fetched from its URL only when it is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mindeye import __version__
from mindeye.errors import MindEyeError
from mindeye.inference import ann
from mindeye.inference.index import MANIFEST, DatabaseIndex, require_faiss
from mindeye.inference.sources import UrlSource, parquet_counts
from mindeye.utils.files import write_json_atomic

INDEX_NAMES = ("image.index", "knn.index", "populated.index")


def find_index_file(path: str | Path) -> Path:
    """The FAISS file of ``path``: the file itself, or in a directory ``image.index`` / ``knn.index`` /
    ``populated.index`` (each may itself be a directory holding ``populated.index``) or its only ``*.index``."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise MindEyeError(f"no index at {path}; give the FAISS file (image.index) or the folder holding it")
    for name in INDEX_NAMES:
        if (path / name).is_file():
            return path / name
        if (path / name / "populated.index").is_file():
            return path / name / "populated.index"
    found = sorted(path.glob("*.index"))
    if len(found) == 1 and found[0].is_file():
        return found[0]
    raise MindEyeError(f"{path} holds no FAISS index ({', '.join(INDEX_NAMES)} or a single *.index file)"
                       + (f"; it holds several: {', '.join(p.name for p in found)}; name one" if found else ""))


def _files(spec: str | Path | Sequence[str | Path] | None, default: Path | None, ext: str, what: str) -> list[Path]:
    """Files named (in order) or found in a directory (sorted by name, as clip-retrieval reads them)."""
    items = [default] if spec is None else ([spec] if isinstance(spec, str | Path) else list(spec))
    out: list[Path] = []
    for item in items:
        if item is None:
            continue
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix == ext and q.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise MindEyeError(f"the {what} {p} does not exist")
    return [p.resolve() for p in out]


def attach_index(index: str | Path, out: str | Path, *, encoder: str = "clip-vit-l14-final",
                 metadata: str | Path | Sequence[str | Path] | None = None,
                 embeddings: str | Path | Sequence[str | Path] | None = None, url_column: str = "url",
                 caption_column: str | None = "caption", nprobe: int | None = None,
                 overwrite: bool = False) -> Path:
    """Write ``out/manifest.json`` for an existing index + parquet metadata (+ embeddings); returns ``out``.

    ``encoder``: the registry encoder whose space the index holds (LAION: ``clip-vit-l14-final``);
    ``metadata``: a folder of ``*.parquet`` or the files in order (default: ``metadata/`` next to the
    index); ``embeddings``: a folder of ``*.npy`` or the files (default: ``img_emb/`` next to the index if
    present) for exact refinement; ``nprobe``: lists searched (default: the index's own setting).
    """
    require_faiss()
    out = Path(out)
    if (out / MANIFEST).exists() and not overwrite:
        raise MindEyeError(f"{out} already exists; choose another --out or pass --overwrite")
    faiss_file = find_index_file(index).resolve()
    roots = [faiss_file.parent, faiss_file.parent.parent]  # image.index/populated.index: look above too
    meta_default = next((r / "metadata" for r in roots if (r / "metadata").is_dir()), None)
    if metadata is None and meta_default is None:
        raise MindEyeError(f"no metadata/ folder next to {faiss_file}; pass --metadata (parquet files with a "
                           f"{url_column!r} column, one row per indexed vector)")
    meta_files = _files(metadata, meta_default, ".parquet", "metadata")
    if not meta_files:
        raise MindEyeError(f"no .parquet files in {metadata or meta_default}")
    emb_default = next((r / "img_emb" for r in roots if (r / "img_emb").is_dir()), None)
    emb_files = _files(embeddings, emb_default, ".npy", "embeddings") if (embeddings or emb_default) else []

    dim = encoder_dim(encoder)
    fidx = ann.open_index(faiss_file)
    if fidx.d != dim:
        raise MindEyeError(f"{faiss_file} holds {fidx.d}-d vectors but {encoder} embeddings are {dim}-d; "
                           "attach it with the encoder it was built with (--encoder)")
    counts = parquet_counts(meta_files)
    if sum(counts) != fidx.ntotal:
        raise MindEyeError(f"{faiss_file} holds {fidx.ntotal:,} vectors but the {len(meta_files)} metadata file(s) "
                           f"have {sum(counts):,} rows; they must describe the same collection, in the same order")
    source = UrlSource([str(f) for f in meta_files], counts, url_column, caption_column)
    schema = _columns(meta_files[0])
    for col in [url_column] + ([caption_column] if caption_column else []):
        if col not in schema:
            raise MindEyeError(f"{meta_files[0]} has no column {col!r} (it has {', '.join(schema[:12])}); "
                               f"pass --url-column / --caption-column")
    stored = ann.Embeddings(emb_files) if emb_files else None
    if stored is not None and (len(stored) != fidx.ntotal or stored.dim != dim):
        raise MindEyeError(f"the embeddings ({len(stored):,} x {stored.dim}) do not match the index "
                           f"({fidx.ntotal:,} x {dim})")
    kind = ann.index_kind(fidx)
    desc: dict[str, Any] = {"type": "flat" if kind == "flat" else kind, "metric": _metric(fidx),
                            "normalised": True, "key": type(fidx).__name__}
    try:
        import faiss

        desc["nlist"] = int(faiss.extract_index_ivf(fidx).nlist)
        desc["nprobe"] = int(nprobe or faiss.extract_index_ivf(fidx).nprobe)
    except RuntimeError:
        pass
    manifest = {"format": 1, "kind": "attached", "encoder": encoder, "fingerprint": "external", "dim": dim,
                "output_shape": [dim], "count": int(fidx.ntotal), "faiss_file": str(faiss_file),
                "embeddings_files": [str(f) for f in emb_files] or None, "source": source.describe(),
                "image_size": None, "index": desc, "complete": True, "mindeye_version": __version__}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / MANIFEST, manifest, indent=1)
    DatabaseIndex.open(out)  # everything agrees
    return out


def encoder_dim(name: str) -> int:
    """Flattened embedding size of a registry encoder, without loading weights."""
    from mindeye.constants import VIT_L14_VISION_CONFIG as VIT
    from mindeye.encoders.registry import get_encoder, get_spec

    spec = get_spec(name)  # unknown names: a clear error
    if spec.standin:
        return int(math.prod(get_encoder(name).output_shape))
    tokens = (VIT["image_size"] // VIT["patch_size"]) ** 2 + 1  # 257
    return int(VIT["projection_dim"]) * (tokens if name.endswith("hidden") else 1)


def _columns(path: Path) -> list[str]:
    from mindeye.inference.sources import _parquet

    return list(_parquet().ParquetFile(str(path)).schema_arrow.names)


def _metric(index: Any) -> str:
    import faiss

    return "inner_product" if index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"
