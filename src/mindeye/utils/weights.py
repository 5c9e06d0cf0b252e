"""Finding pretrained weights on this machine: a local path, or a Hugging Face id already in the local
HF cache. Nothing here downloads; callers turn a miss into a WeightsUnavailableError saying what to get."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def quiet_diffusers() -> Iterator[None]:
    """diffusers' own log lines while weights load (e.g. "Defaulting to unsafe serialization" when a
    model.safetensors is missing) are not shown: a refusal is mindeye's one line."""
    try:
        from diffusers.utils import logging as dlog
    except ImportError:
        yield
        return
    level = dlog.get_verbosity()
    dlog.set_verbosity(dlog.CRITICAL + 10)
    try:
        yield
    finally:
        dlog.set_verbosity(level)


def weight_load_errors() -> tuple[type[BaseException], ...]:
    """What loading a damaged, pickled or foreign weights file raises (to turn into one MindEyeError)."""
    import pickle
    import zipfile

    errors: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, RuntimeError, EOFError,
                                               pickle.UnpicklingError, zipfile.BadZipFile)
    try:
        from safetensors import SafetensorError

        errors += (SafetensorError,)
    except ImportError:
        pass
    return errors
