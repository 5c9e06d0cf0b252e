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
            return ImageSource("store", str(root), ["images.npy"] * n, [str(i) for i in range(n)])
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
