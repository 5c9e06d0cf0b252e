"""The MindEye2 model family (Scotti et al., ICML 2024; docs/mindeye2.md): ``model.kind: mindeye2``.

Layout, read from the authors' ``src/models.py`` (``BrainNetwork``) and ``src/Train.ipynb`` (MedARC-AI/
MindEyeV2), one module per part, checkpoint keys in brackets (their names after the arrow):

- per-subject ridge: one ``Linear(n_voxels_s, hidden)`` with bias per subject, nothing after it
  (``subject_layers.<id>`` <- ``ridge.linears.<i>``); the trainer decays the whole ridge, bias included;
- :class:`MixerBackbone` (``backbone.*``): ``n_blocks`` pairs of residual mixer blocks on the (1, hidden)
  latent -- ``LayerNorm(hidden)`` -> ``Linear(h, h)`` -> GELU -> Dropout -> ``Linear(h, h)`` over the
  features, then the same over the sequence axis of length 1 (``LayerNorm(1)``, ``Linear(1, 1)``;
  their ``mixer_blocks1`` / ``mixer_blocks2``) -- then ``head`` ``Linear(hidden, tokens * dim)``
  (``backbone_linear``) read as (tokens, dim);
- CLIP projector (``projector.net.*`` <- ``clip_proj``): the v1 projector with hidden width = dim;
- :class:`BlurryHead` (``blurry.*``): ``Linear(hidden, C * s * s)`` -> Dropout(0.3) -> (C, s, s) ->
  ``GroupNorm(1, C)`` -> a diffusers ``Decoder`` to the VAE latent (``blin1``, ``bnorm``, ``bupsampler``),
  and 1x1-conv projector tokens for the soft contrastive loss (``b_maps_projector``);
- diffusion prior (``prior.*``): :mod:`mindeye.models.prior`, conditioned on the backbone tokens.

Paper sizes (bigG targets 256 x 1664, hidden 4096, 4 blocks) and the parameter counts that
``mindeye summary --config mindeye2-pretrain`` prints are in docs/mindeye2.md; they are checked against
the authors' classes by ``benchmarks/mindeye2_authors_check.py``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mindeye.models.mindeye import MindEyeModel

try:  # diffusers >= 0.26
    from diffusers.models.autoencoders.vae import Decoder
except ImportError:  # pragma: no cover - older diffusers
    from diffusers.models.vae import Decoder


def _mixer_mlp(width: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, width))


class MixerBackbone(nn.Module):
    """(B, hidden) ridge latents -> (B, tokens, dim); :meth:`features` is the (B, hidden) mixer output
    the blurry head reads."""

    def __init__(self, hidden: int, n_blocks: int = 4, out_tokens: int = 256, out_dim: int = 1664,
                 dropout: float = 0.15, seq_len: int = 1) -> None:
        super().__init__()
        self.hidden, self.seq_len, self.out_tokens, self.out_dim = hidden, seq_len, out_tokens, out_dim
        self.feature_blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), _mixer_mlp(hidden, dropout)) for _ in range(n_blocks))
        self.token_blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(seq_len), _mixer_mlp(seq_len, dropout)) for _ in range(n_blocks))
        self.head = nn.Linear(hidden * seq_len, out_tokens * out_dim)
        self.checkpoint_blocks = False  # lean mode (train.activation_checkpointing): recompute in backward

    def features(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, seq_len * hidden) -> (B, seq_len * hidden): the residual mixer blocks."""
        x = latents.reshape(len(latents), self.seq_len, self.hidden)
        residual1, residual2 = x, x.transpose(1, 2)
        recompute = self.checkpoint_blocks and self.training and torch.is_grad_enabled()

        def run(block: nn.Module, z: torch.Tensor) -> torch.Tensor:
            return checkpoint(block, z, use_reentrant=False) if recompute else block(z)

        for block1, block2 in zip(self.feature_blocks, self.token_blocks):
            x = run(block1, x) + residual1
            residual1 = x
            x = x.transpose(1, 2)
            x = run(block2, x) + residual2
            residual2 = x
            x = x.transpose(1, 2)
        return x.reshape(len(x), -1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(latents)).view(len(latents), self.out_tokens, self.out_dim)


class BlurryHead(nn.Module):
    """Mixer features -> (VAE latent (B, latent_channels, 4s, 4s), tokens (B, s*s, projector_dim))."""

    def __init__(self, hidden: int, channels: int = 64, side: int = 7, latent_channels: int = 4,
                 block_out_channels: tuple[int, ...] = (32, 64, 128), projector_dim: int = 512,
                 norm_num_groups: int = 32, dropout: float = 0.3) -> None:
        super().__init__()
        self.channels, self.side = channels, side
        self.head = nn.Linear(hidden, channels * side * side)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.GroupNorm(1, channels)
        self.upsampler = Decoder(in_channels=channels, out_channels=latent_channels,
                                 up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
                                 block_out_channels=tuple(block_out_channels), layers_per_block=1,
                                 norm_num_groups=norm_num_groups)
        self.projector = nn.Sequential(
            nn.Conv2d(channels, projector_dim, 1, bias=False), nn.GroupNorm(1, projector_dim), nn.ReLU(True),
            nn.Conv2d(projector_dim, projector_dim, 1, bias=False), nn.GroupNorm(1, projector_dim), nn.ReLU(True),
            nn.Conv2d(projector_dim, projector_dim, 1, bias=True),
        )

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.dropout(self.head(features)).view(len(features), self.channels, self.side, self.side)
        b = self.norm(b)
        return self.upsampler(b), self.projector(b).flatten(2).transpose(1, 2)


class MindEye2Model(MindEyeModel):
    """Per-subject ridge -> mixer backbone -> (backbone tokens, projector tokens, blurry latent + tokens).

    Always the shared-subject layout (``subject_layers``), one subject or several; ``forward`` adds
    ``"blurry"`` (latent) and ``"blurry_tokens"`` to the v1 outputs when the blurry head is present.
    """

    def __init__(self, subject_layers: nn.ModuleDict, backbone: MixerBackbone, projector: nn.Module | None,
                 prior: nn.Module | None, blurry: BlurryHead | None) -> None:
        super().__init__(backbone, projector, prior, subject_layers)  # type: ignore[arg-type]
        self.blurry = blurry

    def forward(self, voxels, subject: str | None = None) -> dict[str, torch.Tensor | None]:
        feats = self.backbone.features(self.latents(voxels, subject))
        tokens = self.backbone.head(feats).view(len(feats), self.backbone.out_tokens, self.backbone.out_dim)
        out: dict[str, torch.Tensor | None] = {
            "backbone": tokens, "projector": self.projector(tokens) if self.projector is not None else None}
        if self.blurry is not None:
            out["blurry"], out["blurry_tokens"] = self.blurry(feats)
        return out
