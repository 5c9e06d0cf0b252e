"""Top-k principal-component projection of a set of embeddings onto themselves (BrainBits-style bottleneck).

The projection of the N rows of ``x`` onto their own top-k principal directions is ``mean + U_k U_kᵀ (x - mean)``,
``U_k`` the top-k eigenvectors of the N x N Gram matrix of the centred rows: the same result as projecting on the
top-k right singular vectors, without a dense D x N basis. Computed in float64 over column chunks, so 982 NSD test
samples of 257 x 768 (or MindEye2's 256 x 1664) tokens need one float32 copy of the data and an N x N matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mindeye.errors import MindEyeError

_CHUNK = 1 << 16  # columns per step: N x 65536 float64 at a time


@dataclass
class TopKProjection:
    """The PCA of the rows of one tensor, ready to project them onto their top-k components."""

    mean: torch.Tensor  # (D,) float64
    left: torch.Tensor  # (N, N) eigenvectors of the Gram matrix, largest eigenvalue first, float64
    variances: torch.Tensor  # (N,) eigenvalues, descending, negatives from round-off clipped to 0
    shape: tuple[int, ...]  # x.shape

    @property
    def rank(self) -> int:
        top = float(self.variances[0]) if len(self.variances) else 0.0
        return int((self.variances > top * 1e-12).sum()) if top > 0 else 0  # Gram round-off ~1e-16

    def explained_variance(self, k: int) -> float:
        total = float(self.variances.sum())
        return float(self.variances[:k].sum()) / total if total > 0 else 1.0

    def project(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The fitted rows ``x`` (the same tensor the PCA was fitted on) kept to their top-k components, float32."""
        n = self.shape[0]
        if tuple(x.shape) != self.shape:
            raise MindEyeError(f"the projection was fitted on a tensor of shape {self.shape}, got {tuple(x.shape)}")
        if not 1 <= int(k) <= n:
            raise MindEyeError(f"k must be between 1 and {n} (the number of rows the components were fitted on), "
                               f"got {k}")
        u = self.left[:, :int(k)]
        flat = x.reshape(n, -1)
        out = torch.empty(flat.shape, dtype=torch.float32)
        for c in range(0, flat.shape[1], _CHUNK):
            centred = flat[:, c:c + _CHUNK].double() - self.mean[c:c + _CHUNK]
            out[:, c:c + _CHUNK] = (u @ (u.T @ centred) + self.mean[c:c + _CHUNK]).float()
        return out.reshape(self.shape)


def fit_top_k(x: torch.Tensor) -> TopKProjection:
    """The PCA of the rows of ``x`` (N, ...) (unsupervised; nothing but ``x`` is used)."""
    n = x.shape[0]
    if n < 2:
        raise MindEyeError(f"a principal-component bottleneck needs at least 2 rows, got {n}")
    flat = x.reshape(n, -1)
    if not torch.isfinite(flat).all():
        raise MindEyeError("the embeddings to project hold NaN or infinite values")
    mean = torch.zeros(flat.shape[1], dtype=torch.float64)
    gram = torch.zeros(n, n, dtype=torch.float64)
    for c in range(0, flat.shape[1], _CHUNK):
        chunk = flat[:, c:c + _CHUNK].double()
        mean[c:c + _CHUNK] = chunk.mean(0)
        centred = chunk - mean[c:c + _CHUNK]
        gram += centred @ centred.T
    values, vectors = torch.linalg.eigh(gram)  # ascending
    return TopKProjection(mean, vectors.flip(1), values.flip(0).clamp_min(0), tuple(x.shape))
