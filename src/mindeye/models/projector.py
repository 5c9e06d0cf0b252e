"""MLP projector applied per token to the backbone output; its output feeds the contrastive loss (paper 2.1).

``net`` indices 0, 2, 3, 5, 6, 8 hold parameters and are part of the checkpoint format. Note: the paper's
Algorithm 1 prints ``Linear(clip_size, 2048)`` for the middle layer -- a typo; it is 2048 -> 2048.
7,354,624 parameters at dim 768 / hidden 2048.
"""

from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Module):
    """Pre-norm 3-layer MLP (LN -> GELU -> Linear, three times) mapping each ``dim`` token to ``dim``."""

    def __init__(self, dim: int = 768, hidden: int = 2048, residual: bool = False) -> None:
        """``residual``: output ``tokens + net(tokens)`` (the ridge-first layout, docs/small-data.md: with
        the last Linear zeroed the projector starts as the identity)."""
        super().__init__()
        self.residual = residual
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.GELU(),
            nn.Linear(dim, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) -> (B, T, dim); acts on the last axis so any leading shape works."""
        out = self.net(tokens)
        return tokens + out if self.residual else out
