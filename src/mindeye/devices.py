"""One check of a ``--device`` value, used by every command (training, encoders, inference, evaluation)."""

from __future__ import annotations

import torch

from mindeye.errors import MindEyeError, option


def _dev(name: str) -> str:
    """``device="cuda"`` from Python, ``--device cuda`` from the CLI (errors render it per caller)."""
    return option(f'device="{name}"', f"--device {name}")


def resolve_device(device: str | torch.device | None) -> str:
    """'auto'/None -> cuda if present else cpu; anything else must name a device this machine has."""
    if device is None or str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    name = str(device)
    try:
        parsed = torch.device(name)
    except (RuntimeError, ValueError):
        shown = option(f'device="{name}"', f"--device {name!r}")
        raise MindEyeError(f"{shown} is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if parsed.type == "cpu":
        return name
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise MindEyeError(f"{_dev(name)} requested but no CUDA GPU is available; use {_dev('cpu')}")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise MindEyeError(f"{_dev(name)}: this machine has {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})")
        return name
    if parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise MindEyeError(f"{_dev(name)} requested but Apple MPS is not available; use {_dev('cpu')}")
        return name
    raise MindEyeError(f"{_dev(name)}: unsupported device type {parsed.type!r}; use auto, cpu, cuda or cuda:N")
