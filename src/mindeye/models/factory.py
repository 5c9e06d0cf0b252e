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
    if isinstance(n_voxels, dict) and cfg.kind not in ("mindeye", "mindeye2"):
        raise MindEyeError(f"only the high-level model (model.kind mindeye) trains on several subjects; "
                           f"train a {cfg.kind} model per subject store")
    ctx = torch.device(device) if device is not None else torch.device("cpu")
    with ctx:
        if cfg.kind == "mindeye":
            return build_mindeye(cfg, n_voxels)
        if cfg.kind == "mindeye2":
            return build_mindeye2(cfg, n_voxels)
        if cfg.kind == "lowlevel":
            return build_lowlevel(cfg, n_voxels)
        if cfg.kind == "ridge":
            from mindeye.models.ridge import RidgeRegression

            outputs = lowlevel_latent_size(cfg) if cfg.ridge.target == "lowlevel" else cfg.backbone.tokens * cfg.backbone.dim
            return RidgeRegression(n_voxels, outputs)
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
    ridge = cfg.ridge_residual
    if ridge and shared:
        raise MindEyeError("model.ridge_residual (the ridge-first layout) is single-subject only; set it to false "
                           "for a shared-subject run")
    projector = Projector(b.dim, cfg.projector.hidden, residual=ridge) if cfg.projector.enabled else None
    prior = None
    if cfg.prior.enabled:
        from mindeye.models.prior import DiffusionPrior, PriorNetwork

        p = cfg.prior
        net = PriorNetwork(dim=b.dim, depth=p.depth, heads=p.heads, dim_head=p.dim_head, num_tokens=b.tokens,
                           cond_drop_prob=p.cond_drop_prob, rotary_dim=min(32, p.dim_head))
        prior = DiffusionPrior(net, timesteps=p.timesteps)
    if not ridge:
        return MindEyeModel(backbone, projector, prior, subject_layers)
    from mindeye.models.ridge import RidgeRegression

    # Ridge-first: the residual branches start at zero, so the untrained model is the ridge map.
    zero_(backbone.head)
    if projector is not None:
        zero_(projector.net[-1])
    return MindEyeModel(backbone, projector, prior, subject_layers, ridge=RidgeRegression(n_voxels, b.tokens * b.dim))


def build_mindeye2(cfg: ModelConfig, n_voxels: int | dict[str, int]) -> nn.Module:
    """MindEye2 (docs/mindeye2.md): a ridge Linear per subject (a single voxel count gets the id
    ``subject``), the mixer backbone, projector, blurry head and prior sized by ``cfg``."""
    from mindeye.data.store import check_subject_id
    from mindeye.models.mindeye2 import BlurryHead, MindEye2Model, MixerBackbone

    if cfg.ridge_residual:
        raise MindEyeError("model.ridge_residual is a MindEye v1 layout; model.kind mindeye2 has its own "
                           "per-subject ridge, set model.ridge_residual to false")
    b = cfg.backbone
    counts = n_voxels if isinstance(n_voxels, dict) else {"subject": n_voxels}
    subject_layers = nn.ModuleDict({check_subject_id(sid): nn.Linear(n, b.hidden) for sid, n in counts.items()})
    backbone = MixerBackbone(b.hidden, n_blocks=b.n_blocks, out_tokens=b.tokens, out_dim=b.dim, dropout=b.dropout_block)
    projector = None
    if cfg.projector.enabled:
        from mindeye.models.projector import Projector

        projector = Projector(b.dim, cfg.projector.hidden)
    prior = None
    if cfg.prior.enabled:
        from mindeye.models.prior import DiffusionPrior, PriorNetwork

        p = cfg.prior
        net = PriorNetwork(dim=b.dim, depth=p.depth, heads=p.heads, dim_head=p.dim_head, num_tokens=b.tokens,
                           cond_drop_prob=p.cond_drop_prob, rotary_dim=min(32, p.dim_head))
        # Their BrainDiffusionPrior noises the targets unscaled (its `image_embed *= image_embed_scale` is
        # commented out, MindEyeV2 src/models.py) and returns samples unscaled: scale 1.
        prior = DiffusionPrior(net, timesteps=p.timesteps, image_embed_scale=1.0)
    blurry = None
    if cfg.blurry.enabled:
        c = cfg.blurry
        if any(ch % c.norm_groups for ch in c.upsampler_channels):
            raise MindEyeError(f"model.blurry.norm_groups={c.norm_groups} must divide every "
                               f"model.blurry.upsampler_channels entry {c.upsampler_channels}; change one of them")
        blurry = BlurryHead(b.hidden, channels=c.channels, side=c.side, latent_channels=cfg.lowlevel.latent_channels,
                            block_out_channels=tuple(c.upsampler_channels), projector_dim=c.projector_dim,
                            norm_num_groups=c.norm_groups, dropout=c.dropout)
    return MindEye2Model(subject_layers, backbone, projector, prior, blurry)


def blurry_latent_shape(cfg: ModelConfig) -> tuple[int, int, int]:
    """(channels, side, side) of the MindEye2 blurry head's latent: each up block but the last doubles."""
    c = cfg.blurry
    side = c.side * 2 ** (len(c.upsampler_channels) - 1)
    return cfg.lowlevel.latent_channels, side, side


def zero_(layer: nn.Module) -> None:
    """Zero a layer's weight and bias (the start of a residual branch over the ridge map)."""
    with torch.no_grad():
        for p in layer.parameters(recurse=False):
            p.zero_()


def lowlevel_latent_shape(cfg: ModelConfig) -> tuple[int, int, int]:
    """(channels, side, side) of one predicted latent: each up block but the last doubles the side."""
    c = cfg.lowlevel
    side = c.spatial_size * 2 ** (len(c.upsampler_channels) - 1)
    return c.latent_channels, side, side


def lowlevel_latent_size(cfg: ModelConfig) -> int:
    """Values in one predicted latent (a ridge map's outputs)."""
    c, h, w = lowlevel_latent_shape(cfg)
    return c * h * w


def build_lowlevel(cfg: ModelConfig, n_voxels: int) -> nn.Module:
    from mindeye.models.lowlevel import LowLevelModel

    c = cfg.lowlevel
    if any(ch % c.norm_groups for ch in c.upsampler_channels):
        raise MindEyeError(f"model.lowlevel.norm_groups={c.norm_groups} must divide every "
                           f"model.lowlevel.upsampler_channels entry {c.upsampler_channels}; change one of them")
    ridge = None
    if cfg.ridge_residual:
        from mindeye.models.ridge import RidgeRegression

        ridge = RidgeRegression(n_voxels, lowlevel_latent_size(cfg))
    model = LowLevelModel(
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
        ridge=ridge,
    )
    if ridge is not None:
        zero_(model.upsampler.conv_out)  # the untrained model's latent is the ridge map's
    return model


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per top-level submodule plus the total (plain integers)."""
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    own = sum(p.numel() for p in model.parameters(recurse=False))
    if own:
        counts["(own)"] = own
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts
