"""Finding pretrained weights on this machine: a local path, or a Hugging Face id already in the local
HF cache. Nothing here downloads; callers turn a miss into a WeightsUnavailableError saying what to get."""

from __future__ import annotations

import re
from pathlib import Path

_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hf_id(weights: str) -> bool:
    return bool(_HF_ID.match(weights)) and not Path(weights).exists()


def hf_cache_snapshot(repo_id: str) -> Path | None:
    """The local snapshot directory of a Hugging Face repo if it is in the HF cache, else None."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - LocalEntryNotFoundError and friends: not in the local cache
        return None
