"""Low-level (perceptual) pipeline: voxels -> Stable Diffusion VAE latent + contrastive feature tokens.

Paper 2.2 / Appendix A.3.2. A residual MLP (SiLU, no Linear biases) maps voxels to a (64, 16, 16) map,
a diffusers VAE-style ``Decoder`` upsamples it 4x to the (4, 64, 64) SD latent, and a 1x1-conv projector
turns the same map into 16 * 16 = 256 tokens of 512 that are contrasted (SoftCLIP) with VICRegL features.

Module names: ``stem``, ``blocks``, ``head`` (the reference's ``lin0``, ``mlp``, ``lin1``), ``norm``,
``upsampler`` (a diffusers ``Decoder``, keys as diffusers names them) and ``projector`` (the reference's
``maps_projector``).

Parameter count at subject-1 size (15,724 voxels, all other arguments default): 206,065,604 = stem
64,413,696 (Linear 64,405,504 + LayerNorm 8,192) + 4 blocks 67,141,632 + head 67,108,864 + GroupNorm 128
+ upsampler 6,841,668 (its mid block alone 2,626,048, including a 263,680-parameter self-attention)
+ projector 559,616. This agrees with the paper's Table 10 "206M" at that rounding. The rounding is too
coarse to confirm every detail the paper leaves open (dropping the projector, 205,505,988, or the
mid-block attention, 205,801,924, or adding Linear biases, 206,102,468, would all still round to 206M);
those details follow the reference code (reference-notes.md, "Low-level"), projector counted.
``tests/test_lowlevel_model.py`` checks the number on the meta device.
"""

from __future__ import annotations

import torch
from torch import nn

from mindeye.models.backbone import ResidualMLPBackbone

try:  # diffusers >= 0.26
    from diffusers.models.autoencoders.vae import Decoder
except ImportError:  # pragma: no cover - older diffusers
    from diffusers.models.vae import Decoder


class LowLevelModel(ResidualMLPBackbone):
    """Voxels -> (SD-VAE latent (B, latent_channels, H, W), tokens (B, h*w, projector_dim)).

    The MLP part is the high-level backbone with SiLU, no Linear biases and its head output read as
    the (channels, h, w) map, so ``stem``/``blocks``/``head`` come from :class:`ResidualMLPBackbone`.
    """

    def __init__(
        self,
        n_voxels: int,
        hidden: int = 4096,
        n_blocks: int = 4,
        spatial: tuple[int, int, int] = (64, 16, 16),
        latent_channels: int = 4,
        block_out_channels: tuple[int, ...] = (64, 128, 256),
        layers_per_block: int = 1,
        norm_num_groups: int = 32,
        projector_dim: int = 512,
        use_projector: bool = True,
        dropout_in: float = 0.5,
        dropout_block: float = 0.25,
        ridge: nn.Module | None = None,
    ) -> None:
        """``ridge``: the ridge-first layout (docs/small-data.md): a closed-form ridge map voxels ->
        flattened latent, added to the upsampler's output."""
        channels, height, width = spatial
        for c in block_out_channels:
            if c % norm_num_groups:
                raise ValueError(
                    f"norm_num_groups={norm_num_groups} must divide every block_out_channels {c}"
                )
        super().__init__(n_voxels, hidden=hidden, n_blocks=n_blocks, out_tokens=channels, out_dim=height * width,
                         dropout_in=dropout_in, dropout_block=dropout_block, act="silu", bias=False,
                         head_bias=False)
        self.spatial = tuple(spatial)
        self.norm = nn.GroupNorm(1, channels)
        # Each up block but the last doubles the resolution: 3 blocks -> 4x (16 -> 64).
        self.upsampler = Decoder(
            in_channels=channels,
            out_channels=latent_channels,
            up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
        )
        self.projector = (
            nn.Sequential(
                nn.Conv2d(channels, projector_dim, 1, bias=False),
                nn.GroupNorm(1, projector_dim),
                nn.ReLU(),
                nn.Conv2d(projector_dim, projector_dim, 1, bias=False),
                nn.GroupNorm(1, projector_dim),
                nn.ReLU(),
                nn.Conv2d(projector_dim, projector_dim, 1),
            )
            if use_projector
            else None
        )
        self.ridge = ridge

    def forward(self, voxels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, n_voxels) -> (latent (B, latent_channels, 4h, 4w), tokens (B, h*w, projector_dim) or None)."""
        x = self.norm(super().forward(voxels).view(voxels.shape[0], *self.spatial))
        latent = self.upsampler(x)
        if self.ridge is not None:
            latent = latent + self.ridge(voxels).view_as(latent).to(latent.dtype)
        tokens = self.projector(x).flatten(2).transpose(1, 2) if self.projector is not None else None
        return latent, tokens
