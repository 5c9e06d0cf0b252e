"""The reconstruction-directory format, written here and read by everything that uses one.

``mindeye reconstruct``, ``reconstruct-blurry`` and ``retrieve`` all write::

    OUT/index.json         {"kind": "reconstruct" | "blurry" | "retrieve", "mindeye_version", "config": {...},
                            "images": {"<store image index>": {"image_index", "file", ...}}}
    OUT/images/*.png       the files the index lists (paths relative to OUT)

:func:`open_index` / :func:`write_index` / :func:`finished` are the (resumable) writer side;
:func:`read_index` is the reader (``mindeye evaluate recon`` and :class:`~mindeye.inference.blurry.BlurryImages`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mindeye import __version__
from mindeye.errors import MindEyeError
from mindeye.utils.files import path_inside, write_json_atomic

INDEX_NAME = "index.json"


def new_index(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "mindeye_version": __version__, "config": config, "images": {}}


def write_index(out_dir: Path, index: dict[str, Any]) -> None:
    write_json_atomic(Path(out_dir) / INDEX_NAME, index, indent=1)


def open_index(out_dir: Path, kind: str, config: dict[str, Any]) -> dict[str, Any]:
    """The existing index of ``out_dir`` if it was made with the same ``config``, else a fresh one."""
    path = out_dir / INDEX_NAME
    if not path.exists():
        return new_index(kind, config)
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MindEyeError(f"{path} is damaged ({exc}), so the finished images cannot be told apart; delete {out_dir} "
                           "and run the reconstruction again") from None
    if not isinstance(index, dict):
        raise MindEyeError(f"{path} is not a reconstruction index; delete {out_dir} or choose another --out")
    check_entries(out_dir, index)
    old = json.loads(json.dumps(index.get("config", {})))
    new = json.loads(json.dumps(config))  # normalise tuples etc. the same way
    if index.get("kind") != kind or old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise MindEyeError(
            f"{out_dir} already holds {index.get('kind', 'other')} output made with different settings "
            f"(differing: {', '.join(diff) or 'kind'}); use another --out, or the same settings to resume"
        )
    return index


def finished(index: dict[str, Any], out_dir: Path, image_index: int) -> bool:
    rec = index["images"].get(str(int(image_index)))
    return rec is not None and entry_path(out_dir, rec["file"]).exists()


def entry_path(out_dir: Path, name: Any) -> Path:
    """The file an index entry names, which must lie inside the reconstruction directory."""
    return path_inside(out_dir, name, f"an entry of {Path(out_dir) / INDEX_NAME}")


def check_entries(out_dir: Path, index: Any) -> Any:
    """Every file an index lists (``file``, ``float_file``, ``samples``) stays inside ``out_dir`` (absolute or ``../`` paths
    would be scored, shown in reports and copied as if they were this directory's images)."""
    images = index.get("images") if isinstance(index, dict) else None
    for rec in (images.values() if isinstance(images, dict) else ()):
        if isinstance(rec, dict):
            names = [rec[k] for k in ("file", "float_file") if rec.get(k)] + list(rec.get("samples") or [])
            for name in names:
                entry_path(out_dir, name)
    return index


def read_index(path: Path, missing: str, damaged: str = "re-run the reconstruction to rewrite it") -> Any:
    """The parsed ``path/index.json``; ``missing`` is the error when there is none (it says how to make one),
    ``damaged`` what to do when it is not JSON."""
    index_path = Path(path) / INDEX_NAME
    if not index_path.exists():
        raise MindEyeError(missing)
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MindEyeError(f"{index_path} is not valid JSON ({exc}); {damaged}") from None
    return check_entries(Path(path), index)


FLOAT_DIR = "floats"


def save_float(image: torch.Tensor, out_dir: Path, image_index: int) -> str:
    """Write one float (3, H, W) image as float16 ``floats/IIIII.npy`` (atomically); returns its relative path."""
    from mindeye.utils.files import atomic_path

    rel = f"{FLOAT_DIR}/{int(image_index):05d}.npy"
    path = Path(out_dir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, image.detach().cpu().to(torch.float16).numpy())
    return rel
