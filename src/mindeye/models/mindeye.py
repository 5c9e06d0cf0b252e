"""The high-level MindEye model: backbone, optional contrastive projector, optional diffusion prior.

The ablation variants of paper Table 4 are expressed by which submodules are ``None``:

=========================  ===========  ==========  ===========================================
variant                    projector    prior       losses (applied by the training loop)
=========================  ===========  ==========  ===========================================
``backbone``               None         None        contrastive and MSE both on the backbone output
``backbone+projector``     Projector    None        MSE on backbone output, contrastive on projector
``backbone+prior``         None         prior       contrastive on backbone, prior loss on prior
``full`` (MindEye)         Projector    prior       contrastive on projector, prior loss on prior
=========================  ===========  ==========  ===========================================

The prior is conditioned on the *backbone* output; ``forward`` does not run it, because training calls the
prior with its own noised targets and inference samples from it -- both need more than the voxels.
"""

from __future__ import annotations

import torch
from torch import nn

from mindeye.models.backbone import ResidualMLPBackbone
from mindeye.models.projector import Projector


class MindEyeModel(nn.Module):
    """Container whose attribute names (``backbone``, ``projector``, ``prior``) fix the checkpoint keys."""

    def __init__(
        self,
        backbone: ResidualMLPBackbone,
        projector: Projector | None = None,
        prior: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.prior = prior

    @property
    def variant(self) -> str:
        """Table-4 variant name: 'backbone', 'backbone+projector', 'backbone+prior' or 'full'."""
        if self.projector is not None and self.prior is not None:
            return "full"
        if self.projector is not None:
            return "backbone+projector"
        if self.prior is not None:
            return "backbone+prior"
        return "backbone"

    def forward(self, voxels: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """(B, n_voxels) -> {'backbone': (B, T, D), 'projector': (B, T, D) or None}."""
        tokens = self.backbone(voxels)
        projected = self.projector(tokens) if self.projector is not None else None
        return {"backbone": tokens, "projector": projected}

    @staticmethod
    def contrastive_output(outputs: dict[str, torch.Tensor | None]) -> torch.Tensor:
        """The tensor the contrastive loss and retrieval use: the projector output, else the backbone's."""
        projected = outputs["projector"]
        return projected if projected is not None else outputs["backbone"]
