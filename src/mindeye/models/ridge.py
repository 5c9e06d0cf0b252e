"""Closed-form ridge regression from voxels to flattened targets: the "previous methods" baseline.

Takagi & Nishimoto and Ozcelik & VanRullen map voxels to image embeddings with ridge regression
(paper Table 10). We solve it exactly, in float64 on the CPU, in whichever form is cheaper:

* primal (N >= V):  W = (Xs^T Xs + alpha I_V)^-1 Xs^T Yc        -- factorises a V x V matrix
* dual   (N <  V):  W = Xs^T (Xs Xs^T + alpha I_N)^-1 Yc        -- factorises an N x N matrix

where Xs are the inputs standardised with the training mean/std and Yc the centred targets; the intercept
(bias = target mean) is not penalised. Both forms give the same W. Targets are processed in column chunks
so a 257 x 768 = 197,376-wide target never needs a float64 (V, K) matrix at once; the solution is stored
as float32 buffers (``weight`` (K, V), ``bias`` (K,), ``input_mean``/``input_std`` (V,), ``alpha`` (1,)),
so ``state_dict()`` saves directly to safetensors. At full size (15,724 voxels -> 197,376 targets) the
weight alone is 3.1e9 floats (12.4 GB), and a primal fit factorises a 15,724^2 float64 matrix (2 GB).

Passing several alphas selects one on a held-out fold (lowest mean squared error), using one
eigendecomposition for all alphas, then refits on all the data with the chosen alpha.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mindeye.errors import MindEyeError
from mindeye.finite import require_finite


class RidgeRegression(nn.Module):
    """Linear map (N, n_inputs) -> (N, n_outputs) fitted in closed form by :meth:`fit`."""

    def __init__(self, n_inputs: int, n_outputs: int, standardize: bool = True) -> None:
        """``standardize``: also divide each input by its training std (inputs are centred either way)."""
        super().__init__()
        self.n_inputs = n_inputs
        self.n_outputs = n_outputs
        self.standardize = standardize
        self.register_buffer("weight", torch.zeros(n_outputs, n_inputs))
        self.register_buffer("bias", torch.zeros(n_outputs))
        self.register_buffer("input_mean", torch.zeros(n_inputs))
        self.register_buffer("input_std", torch.ones(n_inputs))
        self.register_buffer("alpha", torch.zeros(1))
        # Filled by fit() when several alphas are given: {"alphas", "val_mse", "val_index"} (not saved).
        self.selection: dict[str, torch.Tensor] | None = None

    # --- fitting -------------------------------------------------------------------------------------------
    def _check(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        if x.dim() != 2 or x.shape[1] != self.n_inputs:
            raise MindEyeError(
                f"ridge inputs must have shape (N, {self.n_inputs}), got {tuple(x.shape)}; "
                "flatten each sample's voxels and use the voxel count the model was built with"
            )
        if y is not None and (y.dim() != 2 or y.shape[1] != self.n_outputs or y.shape[0] != x.shape[0]):
            raise MindEyeError(
                f"ridge targets must have shape ({x.shape[0]}, {self.n_outputs}), got {tuple(y.shape)}; "
                "flatten each target (e.g. 257 x 768 -> 197376) and pass one row per input row"
            )

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Inputs are always centred, so the unpenalised intercept is simply the target mean.
        mean = x.mean(dim=0)
        if not self.standardize:
            return mean, torch.ones_like(mean)
        std = x.std(dim=0, unbiased=False)
        return mean, torch.where(std > 0, std, torch.ones_like(std))  # constant voxels: leave as 0

    def fit(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        alpha: float | Sequence[float],
        val_fraction: float = 0.2,
        generator: torch.Generator | None = None,
        chunk_size: int = 8192,
        groups: Sequence[int] | torch.Tensor | None = None,
    ) -> RidgeRegression:
        """Fit on x (N, n_inputs), y (N, n_outputs); ``alpha`` a penalty or a list to choose from.

        ``groups`` (N,): rows with the same value (the repetitions of one image) are held out together
        when choosing alpha, so the held-out fold never has a repetition of a training image in the fit
        (with them, the fold rewards memorising images and picks too small an alpha)."""
        self._check(x, y)
        # A NaN voxel would surface as a "singular" system (no alpha helps): name it instead.
        require_finite(x, "ridge training voxels", "the store is damaged or holds NaN voxels: re-prepare it "
                       "(check it with `mindeye info`)")
        require_finite(y, "ridge training targets", "recompute the target cache with `mindeye embed --overwrite`")
        alphas = [float(alpha)] if isinstance(alpha, int | float) else [float(a) for a in alpha]
        if not alphas or min(alphas) <= 0:
            raise MindEyeError(f"ridge alpha must be one or more positive numbers, got {alpha!r}")
        # Targets stay in their dtype and go to float64 one column chunk at a time: a full-size float64
        # copy of 25k x 197k CLIP targets would be ~40 GB.
        x64, y64 = x.detach().to("cpu", torch.float64), y.detach().cpu()
        best = alphas[0]
        if len(alphas) > 1:
            best = self._select_alpha(x64, y64, alphas, val_fraction, generator, chunk_size, groups)
        self._solve(x64, y64, best, chunk_size)
        return self

    def _solve(self, x: torch.Tensor, y: torch.Tensor, alpha: float, chunk_size: int) -> None:
        mean, std = self._stats(x)
        xs = (x - mean) / std
        n, v = xs.shape
        primal = n >= v
        gram = xs.T @ xs if primal else xs @ xs.T
        gram.diagonal().add_(alpha)
        chol, info = torch.linalg.cholesky_ex(gram)
        if int(info) != 0:
            raise MindEyeError(f"ridge system is singular at alpha={alpha}; use a larger alpha")
        dev = self.weight.device
        for c0 in range(0, self.n_outputs, chunk_size):
            y_chunk = y[:, c0 : c0 + chunk_size].double()
            y_mean = y_chunk.mean(dim=0)
            yc = y_chunk - y_mean
            if primal:
                w = torch.cholesky_solve(xs.T @ yc, chol)  # (V, c)
            else:
                w = xs.T @ torch.cholesky_solve(yc, chol)  # (V, c)
            self.weight[c0 : c0 + chunk_size] = w.T.to(dev, torch.float32)
            self.bias[c0 : c0 + chunk_size] = y_mean.to(dev, torch.float32)
        self.input_mean.copy_(mean.to(dev, torch.float32))
        self.input_std.copy_(std.to(dev, torch.float32))
        self.alpha.fill_(alpha)

    def _select_alpha(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        alphas: list[float],
        val_fraction: float,
        generator: torch.Generator | None,
        chunk_size: int,
        groups: Sequence[int] | torch.Tensor | None = None,
    ) -> float:
        n = x.shape[0]
        if groups is not None:
            _, group_of = torch.unique(torch.as_tensor(groups), return_inverse=True)
            n_groups = int(group_of.max()) + 1
            held = torch.randperm(n_groups, generator=generator)[: int(round(n_groups * val_fraction))]
            is_val = torch.isin(group_of, held)
            val_idx, fit_idx = torch.nonzero(is_val).flatten(), torch.nonzero(~is_val).flatten()
        else:
            order = torch.randperm(n, generator=generator)
            n_val = int(round(n * val_fraction))
            val_idx, fit_idx = order[:n_val], order[n_val:]
        n_val = len(val_idx)
        if not 0 < n_val < n - 1:
            raise MindEyeError(
                f"cannot hold out {val_fraction:.0%} of {n} samples to choose alpha; "
                "use more samples, a val_fraction in (0, 1), or a single alpha"
            )
        mean, std = self._stats(x[fit_idx])
        xf, xv = (x[fit_idx] - mean) / std, (x[val_idx] - mean) / std
        # One eigendecomposition serves every alpha: pred_val = M diag(1 / (s + alpha)) R^T Y.
        if xf.shape[0] >= xf.shape[1]:
            s, q = torch.linalg.eigh(xf.T @ xf)
            m, r = xv @ q, xf @ q
        else:
            s, u = torch.linalg.eigh(xf @ xf.T)
            m, r = xv @ xf.T @ u, u
        s = s.clamp_min(0)
        sse = torch.zeros(len(alphas), dtype=torch.float64)
        for c0 in range(0, y.shape[1], chunk_size):
            yf, yv = y[fit_idx, c0 : c0 + chunk_size].double(), y[val_idx, c0 : c0 + chunk_size].double()
            y_mean = yf.mean(dim=0)
            b = r.T @ (yf - y_mean)
            for i, a in enumerate(alphas):
                pred = m @ (b / (s + a)[:, None])
                sse[i] += (pred + y_mean - yv).square().sum()
        val_mse = sse / (n_val * y.shape[1])
        self.selection = {
            "alphas": torch.tensor(alphas, dtype=torch.float64),
            "val_mse": val_mse,
            "val_index": val_idx,
        }
        return alphas[int(val_mse.argmin())]

    # --- prediction ----------------------------------------------------------------------------------------
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(N, n_inputs) -> (N, n_outputs) float32 on the model's device."""
        self._check(x)
        xs = (x.to(self.weight.device, torch.float32) - self.input_mean) / self.input_std
        return torch.addmm(self.bias, xs, self.weight.T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)
