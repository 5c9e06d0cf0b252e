"""Residual MLP backbone: flattened voxels -> (tokens, dim) CLIP-space embedding (paper 2.1, Algorithm 1).

Default sizes map subject-specific voxels to the 257 x 768 last hidden layer of CLIP ViT-L/14.
Module names (``stem``, ``blocks``, ``head``) are part of the checkpoint format: a converter for the
authors' checkpoints maps their ``lin0`` / ``mlp`` / ``lin1`` onto these, so do not rename them.

Parameter counts for subject 1 (15,724 voxels, biases kept as in the reference code), paper Table 2:
4 blocks 940,225,280 ("940M"); 2 blocks 906,646,272 ("907M"); no blocks 873,067,264 ("873M");
4 blocks with ``out_tokens=1`` (CLS only) 134,722,304 ("135M").
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU}


def _norm(kind: str, dim: int) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(dim)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; use 'layer' or 'none'")


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; use one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


class ResidualMLPBackbone(nn.Module):
    """Linear stem, ``n_blocks`` residual MLP blocks, then a linear head reshaped to (out_tokens, out_dim)."""

    def __init__(
        self,
        n_voxels: int,
        hidden: int = 4096,
        n_blocks: int = 4,
        out_tokens: int = 257,
        out_dim: int = 768,
        skip: bool = True,
        dropout_in: float = 0.5,
        dropout_block: float = 0.15,
        act: str = "gelu",
        bias: bool = True,
        norm: str = "layer",
        head_bias: bool = True,
    ) -> None:
        super().__init__()
        self.out_tokens = out_tokens
        self.out_dim = out_dim
        self.skip = skip
        self.stem = nn.Sequential(
            nn.Linear(n_voxels, hidden, bias=bias),
            _norm(norm, hidden),
            _activation(act),
            nn.Dropout(dropout_in),
        )
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Linear(hidden, hidden, bias=bias),
                _norm(norm, hidden),
                _activation(act),
                nn.Dropout(dropout_block),
            )
            for _ in range(n_blocks)
        )
        # The high-level head keeps its bias (Algorithm 1 and the reference code agree on this one);
        # the low-level model's head has none.
        self.head = nn.Linear(hidden, out_tokens * out_dim, bias=head_bias)
        # Lean mode (train.activation_checkpointing): recompute each block in backward instead of
        # keeping its activations; the dropout RNG is replayed, so the gradients are unchanged.
        self.checkpoint_blocks = False

    def forward(self, voxels: torch.Tensor) -> torch.Tensor:
        """(B, n_voxels) -> (B, out_tokens, out_dim)."""
        x = self.stem(voxels)
        recompute = self.checkpoint_blocks and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            y = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
            # Skip connections matter at depth: 4 blocks without them train markedly worse (Table 2).
            x = y + x if self.skip else y
        return self.head(x).view(voxels.shape[0], self.out_tokens, self.out_dim)
