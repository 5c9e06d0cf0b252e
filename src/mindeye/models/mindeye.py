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

Shared-subject layout (MindEye2, docs/shared-subject.md): ``subject_layers`` holds one linear map per
subject id from that subject's voxels to the backbone's hidden latent (checkpoint keys
``subject_layers.<id>.weight`` / ``.bias``), and the backbone's own input layer ``stem.0`` is absent;
everything after it (stem norm, blocks, head, projector, prior) is shared. A single-subject model keeps
the MindEye v1 layout (``backbone.stem.0`` is the input layer), so its parameter counts and the
authors' checkpoints stay exact. With one subject both layouts have the same parameters.

Ridge-first layout (``model.ridge_residual``, docs/small-data.md): ``ridge`` holds a closed-form ridge
map from the voxels to the flattened targets (buffers only, fitted by the trainer before the first
step) and the backbone's output is ``ridge(voxels) + backbone(voxels)``; with the backbone head and the
projector's last layer zeroed, the untrained model *is* the ridge regression, and training learns a
residual over it.
"""

from __future__ import annotations

import torch
from torch import nn

from mindeye.errors import MindEyeError
from mindeye.models.backbone import ResidualMLPBackbone
from mindeye.models.projector import Projector


class MindEyeModel(nn.Module):
    """Container whose attribute names (``subject_layers``, ``backbone``, ``projector``, ``prior``) fix
    the checkpoint keys."""

    def __init__(
        self,
        backbone: ResidualMLPBackbone,
        projector: Projector | None = None,
        prior: nn.Module | None = None,
        subject_layers: nn.ModuleDict | None = None,
        ridge: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if ridge is not None and subject_layers is not None:
            raise MindEyeError("the ridge-first layout (model.ridge_residual) is single-subject only")
        self.subject_layers = subject_layers
        self.backbone = backbone
        self.projector = projector
        self.prior = prior
        self.ridge = ridge
        # The subject a plain ``model(voxels)`` call means (inference on a shared-subject run).
        self.active_subject: str | None = None

    @property
    def subjects(self) -> list[str]:
        """Subject ids of the shared-subject layout, in checkpoint order ([] for the v1 layout)."""
        return list(self.subject_layers.keys()) if self.subject_layers is not None else []

    def shared_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of everything but the per-subject input layers."""
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("subject_layers.")]

    def select_subject(self, subject: str | None) -> None:
        """Make plain ``model(voxels)`` calls use ``subject``'s input layer (a shared-subject model only)."""
        if subject is not None and subject not in self.subjects:
            raise MindEyeError(f"subject {subject!r} is not in this model; its subjects are "
                               f"{', '.join(self.subjects) or 'none (single-subject layout)'}")
        self.active_subject = subject

    def latents(self, voxels: torch.Tensor | list[tuple[str, torch.Tensor]], subject: str | None = None
                ) -> torch.Tensor:
        """Backbone input: the voxels themselves (v1 layout) or the subjects' linear maps to the latent.

        ``voxels`` may be a list of (subject id, (b_s, n_voxels_s)) segments; their latents are
        concatenated in order (a batch drawn from several subjects).
        """
        if self.subject_layers is None:
            if isinstance(voxels, list):
                raise MindEyeError("a single-subject (v1 layout) model takes one voxel tensor, not segments")
            return voxels
        if isinstance(voxels, list):
            return torch.cat([self.subject_layers[sid](x) for sid, x in voxels], 0)
        sid = subject or self.active_subject
        if sid is None:
            if len(self.subjects) != 1:
                raise MindEyeError(f"this shared-subject model has several subjects ({', '.join(self.subjects)}); "
                                   "say which one the voxels come from (--subject ID)")
            sid = self.subjects[0]
        return self.subject_layers[sid](voxels)

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

    def forward(self, voxels: torch.Tensor | list[tuple[str, torch.Tensor]], subject: str | None = None
                ) -> dict[str, torch.Tensor | None]:
        """(B, n_voxels) -> {'backbone': (B, T, D), 'projector': (B, T, D) or None} (see :meth:`latents`)."""
        tokens = self.backbone(self.latents(voxels, subject))
        if self.ridge is not None:
            tokens = tokens + self.ridge(voxels).view_as(tokens).to(tokens.dtype)
        projected = self.projector(tokens) if self.projector is not None else None
        return {"backbone": tokens, "projector": projected}

    @staticmethod
    def contrastive_output(outputs: dict[str, torch.Tensor | None]) -> torch.Tensor:
        """The tensor the contrastive loss and retrieval use: the projector output, else the backbone's."""
        projected = outputs["projector"]
        return projected if projected is not None else outputs["backbone"]
