"""Non-finite values are an error, never a score: one check with a message naming what is non-finite."""

from __future__ import annotations

import numpy as np
import torch

from mindeye.errors import MindEyeError


def require_finite(values: np.ndarray | torch.Tensor, what: str, fix: str) -> None:
    """Raise MindEyeError naming ``what`` (e.g. 'test voxels of STORE') when ``values`` hold NaN or inf."""
    t = torch.as_tensor(values)
    if not t.is_floating_point():
        return
    finite = torch.isfinite(t.reshape(len(t), -1) if t.ndim > 1 else t.reshape(-1, 1))
    if bool(finite.all()):
        return
    bad_rows = (~finite.all(1)).nonzero().flatten()
    first = int(bad_rows[0])
    raise MindEyeError(f"{what} contain NaN or inf ({len(bad_rows)} of {len(finite)} rows, first row {first}); {fix}")


def non_finite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or inf."""
    return [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def require_finite_outputs(out: torch.Tensor, first_row: int = 0, what: str = "the model") -> None:
    """One cheap check per batch of model outputs (finite inputs can still overflow to NaN / inf): a non-finite
    output is an error, never a score or a ranking. ``first_row``: the batch's first row in the whole input."""
    if bool(torch.isfinite(out).all()):
        return
    bad = (~torch.isfinite(out.reshape(len(out), -1))).any(1).nonzero().flatten()
    raise MindEyeError(f"{what} produced NaN or inf outputs for {len(bad)} sample(s) (first: row "
                       f"{first_row + int(bad[0])}) from finite input voxels: their values are too large for the "
                       "model (voxels are expected z-scored, about -10..10, not e.g. 1e21); rescale those samples")
