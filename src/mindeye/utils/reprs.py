"""Short reprs for the public API's objects: shapes, sizes and names, never whole arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def short_path(path: str | Path, limit: int = 60) -> str:
    """A path for a repr: whole when short, else '.../' and as many of its last parts as fit."""
    text = str(path)
    if len(text) <= limit:
        return text
    parts = Path(text).parts
    tail = parts[-1]
    for part in reversed(parts[:-1]):
        if len(part) + len(tail) + 5 > limit:
            break
        tail = f"{part}/{tail}"
    return f".../{tail}"[: limit + 4]


def describe(x: Any) -> str:
    """A few words for an array-like: shape and dtype (numpy, torch), a count (lists, PIL images)."""
    if x is None:
        return "None"
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is not None and dtype is not None:
        kind = "tensor" if type(x).__module__.startswith("torch") else "array"
        return f"{kind}{tuple(shape)} {str(dtype).removeprefix('torch.')}"
    if isinstance(x, list | tuple):
        first = x[0] if x else None
        if first is not None and hasattr(first, "size") and hasattr(first, "mode"):  # PIL images
            return f"{len(x)} PIL images {first.size[0]}x{first.size[1]}"
        return f"list of {len(x)}"
    return type(x).__name__
