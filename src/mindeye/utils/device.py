"""Which torch device a ``--device`` / ``device=`` argument means."""

from __future__ import annotations

import torch

from mindeye.errors import MindEyeError


def resolve_device(device: str | None) -> str:
    """"auto" (or None): the GPU if there is one, else the CPU; a CUDA device without a GPU is a clear error."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MindEyeError(f"--device {device} requested but no CUDA GPU is available; use --device cpu")
    return device
