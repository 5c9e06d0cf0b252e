"""Build models from configs (open_clip-style factory) and count their parameters."""

from __future__ import annotations

import torch
from torch import nn

from mindeye.config import ModelConfig
from mindeye.errors import MindEyeError


def build_model(cfg: ModelConfig, n_voxels: int | dict[str, int], device: str | torch.device | None = None
                ) -> nn.Module:
    """The model named by ``cfg.kind`` for a subject with ``n_voxels`` voxels.

    ``n_voxels`` as a {subject id: voxel count} dict builds the shared-subject layout (one input layer
    per subject, see :mod:`mindeye.models.mindeye`); only the high-level model has it.
    """
    counts = n_voxels if isinstance(n_voxels, dict) else {"": n_voxels}
    if not counts:
        raise MindEyeError("a shared-subject model needs at least one subject")
    for sid, n in counts.items():
        if n <= 0:
            raise MindEyeError(f"n_voxels must be positive, got {n}" + (f" for subject {sid}" if sid else ""))
    if isinstance(n_voxels, dict) and cfg.kind != "mindeye":
        raise MindEyeError(f"only the high-level model (model.kind mindeye) trains on several subjects; "
                           f"train a {cfg.kind} model per subject store")
    ctx = torch.device(device) if device is not None else torch.device("cpu")
    with ctx:
        if cfg.kind == "mindeye":
            return build_mindeye(cfg, n_voxels)
        if cfg.kind == "lowlevel":
            return build_lowlevel(cfg, n_voxels)
        if cfg.kind == "ridge":
            from mindeye.models.ridge import RidgeRegression

            return RidgeRegression(n_voxels, cfg.backbone.tokens * cfg.backbone.dim)
    raise MindEyeError(f"unknown model kind {cfg.kind!r}")


def build_mindeye(cfg: ModelConfig, n_voxels: int | dict[str, int]) -> nn.Module:
    from mindeye.models.backbone import ResidualMLPBackbone
    from mindeye.models.mindeye import MindEyeModel
    from mindeye.models.projector import Projector

    b = cfg.backbone
    shared = isinstance(n_voxels, dict)
    subject_layers = None
    if shared:
        from mindeye.data.store import check_subject_id

        # The same Linear as the v1 stem's first layer, one per subject (MindEye2's per-subject "ridge").
        subject_layers = nn.ModuleDict({check_subject_id(sid): nn.Linear(n, b.hidden) for sid, n in n_voxels.items()})
    backbone = ResidualMLPBackbone(b.hidden if shared else n_voxels, hidden=b.hidden, n_blocks=b.n_blocks,
                                   out_tokens=b.tokens, out_dim=b.dim, skip=b.skip, dropout_in=b.dropout_in,
                                   dropout_block=b.dropout_block, input_layer=not shared)
    projector = Projector(b.dim, cfg.projector.hidden) if cfg.projector.enabled else None
    prior = None
    if cfg.prior.enabled:
        from mindeye.models.prior import DiffusionPrior, PriorNetwork

        p = cfg.prior
        net = PriorNetwork(dim=b.dim, depth=p.depth, heads=p.heads, dim_head=p.dim_head, num_tokens=b.tokens,
                           cond_drop_prob=p.cond_drop_prob, rotary_dim=min(32, p.dim_head))
        prior = DiffusionPrior(net, timesteps=p.timesteps)
    return MindEyeModel(backbone, projector, prior, subject_layers)


def build_lowlevel(cfg: ModelConfig, n_voxels: int) -> nn.Module:
    from mindeye.models.lowlevel import LowLevelModel

    c = cfg.lowlevel
    if any(ch % c.norm_groups for ch in c.upsampler_channels):
        raise MindEyeError(f"model.lowlevel.norm_groups={c.norm_groups} must divide every "
                           f"model.lowlevel.upsampler_channels entry {c.upsampler_channels}; change one of them")
    return LowLevelModel(
        n_voxels,
        hidden=c.hidden,
        n_blocks=c.n_blocks,
        spatial=(c.spatial_channels, c.spatial_size, c.spatial_size),
        latent_channels=c.latent_channels,
        block_out_channels=tuple(c.upsampler_channels),
        projector_dim=c.projector_dim,
        norm_num_groups=c.norm_groups,
        dropout_in=c.dropout_in,
        dropout_block=c.dropout_block,
    )


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per top-level submodule plus the total (plain integers)."""
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    own = sum(p.numel() for p in model.parameters(recurse=False))
    if own:
        counts["(own)"] = own
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts
