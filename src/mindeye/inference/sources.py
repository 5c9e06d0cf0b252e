"""Where a retrieval database's images come from: a subject store, a directory of images, or webdataset
shards (read with one seek per image through the offsets listed at build time).

``INDEX/ids.csv`` (``id,location,member,offset,size``) maps each id (row number) to its image.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mindeye.data.shards import (
    IMAGE_EXTS,
    expand_shards,
    first_image_ext,
    iter_shard,
    list_shard_images,
    split_key,
)
from mindeye.errors import MindEyeError
from mindeye.utils.files import atomic_path, path_inside
from mindeye.utils.images import decode_image

IDS = "ids.csv"


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
        shards = list(dict.fromkeys(self.location[start:]))  # in id order, each once
        want = {(loc, *split_key(mem)): i for i, (loc, mem) in enumerate(zip(self.location, self.member))
                if i >= start}
        expected = start
        for shard in shards:
            for sample in iter_shard(Path(shard)):
                sample = {k if k.startswith("__") else k.lower(): v for k, v in sample.items()}
                ext = first_image_ext(sample)
                key = (shard, sample["__key__"], ext)
                if ext is None or key not in want:
                    continue
                if want[key] != expected:
                    raise MindEyeError(f"shard {shard} changed since it was listed (sample {key[1]} out of "
                                       "order); re-run the build with --overwrite")
                expected += 1
                yield decode_image(sample[ext], f"{shard}:{key[1]}.{ext}")
        if expected != len(self):
            raise MindEyeError(f"the shards held {expected - start} of the {len(self) - start} images listed; a shard "
                               "changed during the build: re-run with --overwrite")

    # -- ids.csv ---------------------------------------------------------------------------------
    def write_ids(self, path: Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "location", "member", "offset", "size"])
            for i in range(len(self)):
                w.writerow([i, self.location[i], self.member[i],
                            self.offset[i] if self.offset else "", self.size[i] if self.size else ""])

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
        source = cls(described["type"], root or described["root"], loc, mem, off, size)
        source._check_locations(path, described)
        return source

    def _check_locations(self, path: Path, described: dict[str, Any]) -> None:
        """ids.csv's locations stay where the index was built from: a directory index's files inside its root
        (no absolute or ``../`` path), a shard index's members in the shards its manifest lists."""
        if self.kind == "directory":
            for name in self.location:
                path_inside(self.root, name, f"a location in {path}")
        elif self.kind == "webdataset" and described.get("shards") is not None:
            listed = set(described["shards"])
            odd = sorted(set(self.location) - listed)
            if odd:
                raise MindEyeError(f"{path} names shard {odd[0]!r}, which is not one of the shards the index was "
                                   "built from (its manifest); the file was edited or damaged: rebuild the index")
        elif self.kind == "store" and any(name != "images.npy" for name in self.location):
            raise MindEyeError(f"{path} names a file other than the store's images.npy; the file was edited or "
                               "damaged: rebuild the index")


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
            return ImageSource("store", str(store.data_path.resolve()), ["images.npy"] * n, [str(i) for i in range(n)])
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if files:
            return ImageSource("directory", str(root), [p.relative_to(root).as_posix() for p in files],
                               [""] * len(files))
        items = sorted(str(p) for p in root.rglob("*.tar"))
        if not items:
            raise MindEyeError(f"{root} holds no images ({', '.join(IMAGE_EXTS)}) and no .tar shards")
    shards = expand_shards(items)
    loc, mem, off, size = [], [], [], []
    for shard in shards:
        for name, o, s in list_shard_images(shard):
            loc.append(str(shard))
            mem.append(name)
            off.append(o)
            size.append(s)
    if not loc:
        raise MindEyeError(f"the shard(s) {', '.join(map(str, shards[:3]))} hold no jpg/jpeg/png/webp members")
    return ImageSource("webdataset", "", loc, mem, off, size)


# ------------------------------------------------------------------------------------------------
# Attached LAION / clip-retrieval collections: metadata in parquet, images behind URLs
# ------------------------------------------------------------------------------------------------
def _parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise MindEyeError("attached indexes read their metadata with pyarrow, which is not installed; "
                           "install it with: pip install 'mindeye[index]'") from None
    return pq


def parquet_counts(files: Sequence[str | Path]) -> list[int]:
    """Rows of each parquet file, from the footers only (nothing else is read)."""
    pq = _parquet()
    counts = []
    for f in files:
        try:
            counts.append(int(pq.ParquetFile(str(f), memory_map=True).metadata.num_rows))
        except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
            raise MindEyeError(f"cannot read the parquet metadata file {f} ({str(exc).splitlines()[0][:160]}); "
                               "restore or re-download it") from None
    return counts


class ParquetMetadata:
    """Rows of row-concatenated parquet files, read by id without loading the files.

    Row ``id`` lives in the file found by bisecting the per-file counts, and only the row groups holding
    requested ids are read (memory-mapped), so billions of rows cost nothing until asked for.
    """

    def __init__(self, files: Sequence[str | Path], counts: Sequence[int], columns: Sequence[str]) -> None:
        self.files = [str(f) for f in files]
        self.offsets = np.cumsum([0, *counts])
        self.columns = list(columns)
        self._open: dict[int, Any] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _file(self, p: int) -> Any:
        if p not in self._open:
            if not Path(self.files[p]).is_file():
                raise MindEyeError(f"the metadata file {self.files[p]} is missing; restore it (or attach again)")
            self._open[p] = _parquet().ParquetFile(self.files[p], memory_map=True)
        return self._open[p]

    def rows(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """One dict (``self.columns``) per id, in the order given."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < len(self)]
        if bad:
            raise MindEyeError(f"id {bad[0]} is outside the metadata's {len(self)} rows")
        out: dict[int, dict[str, Any]] = {}
        by_file: dict[int, list[int]] = {}
        for i in ids:
            by_file.setdefault(int(np.searchsorted(self.offsets, i, side="right") - 1), []).append(i)
        for p, wanted in by_file.items():
            pf = self._file(p)
            starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
            local = {i: i - int(self.offsets[p]) for i in wanted}
            groups: dict[int, list[int]] = {}
            for i, r in local.items():
                groups.setdefault(int(np.searchsorted(starts, r, side="right") - 1), []).append(i)
            for g, members in groups.items():
                try:
                    table = pf.read_row_group(g, columns=self.columns).to_pydict()
                except (OSError, ValueError, KeyError) as exc:
                    raise MindEyeError(f"cannot read row group {g} of {self.files[p]} "
                                       f"({str(exc).splitlines()[0][:160]}); restore or re-download it") from None
                for i in members:
                    r = local[i] - int(starts[g])
                    out[i] = {c: table[c][r] for c in self.columns}
        return [out[i] for i in ids]


def fetch_url(url: str, timeout: float = 10.0) -> bytes:
    """The bytes behind ``url`` (http, https or file). Replaced in tests; the only network access."""
    import urllib.request

    req = urllib.request.Request(url, headers={"User-Agent": "mindeye (+database retrieval)"})
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - user-chosen collection
        return r.read()


@dataclass
class UrlSource:
    """An attached LAION / clip-retrieval collection: id = row of the concatenated metadata parquet files,
    each with an image URL (and a caption). Images are fetched only by :meth:`load`."""

    files: list[str]
    counts: list[int]
    url_column: str = "url"
    caption_column: str | None = "caption"
    kind: str = "url"
    timeout: float = 10.0
    _meta: Any = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(sum(self.counts))

    @property
    def meta(self) -> ParquetMetadata:
        if self._meta is None:
            cols = [self.url_column] + ([self.caption_column] if self.caption_column else [])
            self._meta = ParquetMetadata(self.files, self.counts, cols)
        return self._meta

    def describe(self) -> dict[str, Any]:
        return {"type": "url", "root": str(Path(self.files[0]).parent) if self.files else "",
                "files": self.files, "counts": self.counts, "url_column": self.url_column,
                "caption_column": self.caption_column}

    def records(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """``{"id", "url", "caption"}`` per id (metadata only, no fetching)."""
        rows = self.meta.rows(ids)
        return [{"id": int(i), "url": r[self.url_column],
                 "caption": r.get(self.caption_column) if self.caption_column else None} for i, r in zip(ids, rows)]

    def name(self, i: int) -> str:
        return str(self.records([i])[0]["url"])

    def check(self, ids: Sequence[int]) -> None:
        """The metadata of every id must be readable; the images themselves are only known when fetched."""
        self.meta.rows(sorted({int(i) for i in ids}))

    def load(self, ids: Sequence[int]) -> list[np.ndarray]:
        """Fetch and decode the images of ``ids``; any failure is one MindEyeError listing them all."""
        recs = self.records(ids)
        out, failed = [], []
        for rec in recs:
            try:
                data = fetch_url(str(rec["url"]), self.timeout)
                out.append(decode_image(data, str(rec["url"])))
            except MindEyeError as exc:
                failed.append(f"id {rec['id']} {rec['url']} ({exc})")
            except (OSError, ValueError) as exc:  # URLError, HTTPError, timeouts are OSErrors
                failed.append(f"id {rec['id']} {rec['url']} ({getattr(exc, 'reason', None) or exc})")
        if failed:
            shown = "; ".join(failed[:5]) + (f"; and {len(failed) - 5} more" if len(failed) > 5 else "")
            raise MindEyeError(f"could not fetch {len(failed)} of {len(recs)} image(s): {shown}. Check the network "
                               "or the URLs; no placeholder images are written")
        return out


def read_source(directory: Path, described: dict[str, Any], root: str | None = None) -> ImageSource | UrlSource:
    """The source a manifest describes: ids.csv-based (store, directory, shards) or attached (URLs)."""
    if described.get("type") == "url":
        return UrlSource(described["files"], described["counts"], described.get("url_column", "url"),
                         described.get("caption_column"))
    return ImageSource.read(directory, described, root)
