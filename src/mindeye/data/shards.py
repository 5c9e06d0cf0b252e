"""Reading webdataset ``.tar`` shards: listing, expanding patterns, checking, iterating samples.

Shared by ``mindeye prepare webdataset`` (:mod:`mindeye.data.webdataset_shards`) and the retrieval
database's image sources (:mod:`mindeye.inference.sources`). Samples are grouped by webdataset's key
rule (:func:`split_key`); a damaged tar becomes one MindEyeError naming it.
"""

from __future__ import annotations

import glob
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mindeye.errors import MindEyeError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")  # in order of preference within one webdataset sample


def split_key(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the file name, the rest is the extension."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower() if dot else ""


def first_image_ext(sample: dict[str, Any]) -> str | None:
    for ext in IMAGE_EXTS:
        if ext[1:] in sample:
            return ext[1:]
    return None


def list_shard_images(shard: Path) -> list[tuple[str, int, int]]:
    """(member name, data offset, size) of the image of each sample of a tar, in order (headers only)."""
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = split_key(info.name)
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


def expand_shards(items: Sequence[str | Path]) -> list[Path]:
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


def check_shard(path: Path) -> None:
    """Raise a MindEyeError naming ``path`` if the tar is unreadable or cut short.

    Needed because tar readers (and so webdataset) stop silently at a truncated member or header.
    Only the headers are read: every member's data must lie inside the file, followed by the
    end-of-archive block of zeros.
    """
    bad = lambda why: MindEyeError(f"shard {path} is corrupt or truncated ({why}); download it again")  # noqa: E731
    size = path.stat().st_size
    try:
        with tarfile.open(path, "r:") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise bad(f"{type(exc).__name__}: {exc}") from None
    end, last = 0, "the start"
    for m in members:
        end, last = m.offset_data + -(-m.size // 512) * 512, m.name
        if end > size:
            raise bad(f"member {m.name} needs {end} bytes but the file has {size}")
    with open(path, "rb") as f:
        f.seek(end)
        marker = f.read(512)
    if len(marker) < 512 or any(marker):
        raise bad(f"no end-of-archive marker after {last}")


def iter_shard(path: Path, select_files: Any = None) -> Iterator[dict[str, Any]]:
    """Samples of one tar via the webdataset library; a damaged tar becomes a MindEyeError naming it."""
    import webdataset as wds

    check_shard(path)

    dataset = wds.WebDataset(str(path), shardshuffle=False, empty_check=False, select_files=select_files)
    try:
        yield from dataset
    except Exception as exc:  # noqa: BLE001 - tarfile / webdataset raise many kinds
        detail = exc.args[0] if exc.args else type(exc).__name__
        raise MindEyeError(f"shard {path} is corrupt or truncated ({type(exc).__name__}: {detail}); "
                           "download it again") from None
