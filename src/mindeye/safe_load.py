"""Loading weight files without executing anything in them, with one clear error for a bad file.

``torch.load(weights_only=True)`` refuses pickled objects other than tensors and plain containers
(nothing is ever executed); safetensors never unpickles. Both raise a variety of exceptions for a
damaged or foreign file; here each becomes one MindEyeError naming the file, the problem and the fix.
"""

from __future__ import annotations

import pickle
import tokenize
import zipfile
from pathlib import Path
from typing import Any

import torch

from mindeye.errors import MindEyeError

# What numpy.load raises for a damaged .npy (a torn header fails to parse in several ways).
NPY_LOAD_ERRORS = (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError, pickle.UnpicklingError)


def npy_error(exc: BaseException) -> str:
    """What numpy.load said about a .npy it could not read, without numpy's advice to load it with
    allow_pickle=True (that would execute code from the file; mindeye never does it)."""
    text = _first_line(exc)
    if "allow_pickle" in text or isinstance(exc, pickle.UnpicklingError):
        return ("it holds Python objects (an object array), not numbers; mindeye never unpickles data files: "
                "save a numeric array (e.g. np.save(path, np.asarray(x, dtype=np.float32)))")
    return f"{type(exc).__name__}: {text}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def load_torch_file(path: str | Path, fix: str, *, mmap: bool = False) -> Any:
    """torch.load(path, weights_only=True) on the CPU; a pickled or damaged file is a MindEyeError."""
    path = Path(path)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy format cannot be mmapped
    except pickle.UnpicklingError as exc:
        raise MindEyeError(f"{path} holds pickled Python objects, not just tensors, so it was not loaded (nothing "
                           f"in it was executed: {_first_line(exc)}); {fix}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise MindEyeError(f"{path} is damaged or not a PyTorch weights file ({type(exc).__name__}: "
                           f"{_first_line(exc)}); {fix}") from None


def load_safetensors_file(path: str | Path, fix: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """safetensors tensors of ``path``; a damaged or foreign file (e.g. a pickle renamed) is a MindEyeError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise MindEyeError(f"{path} is not a readable safetensors file ({_first_line(exc)}); it is damaged or "
                           f"not a safetensors file; {fix}") from None
