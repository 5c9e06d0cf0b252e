"""Low-level pipeline model: subject-1 size vs paper Table 10, tiny-model shapes and forward semantics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mindeye.models.lowlevel import LowLevelModel


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny(**kwargs) -> LowLevelModel:
    cfg = dict(n_voxels=200, hidden=64, spatial=(16, 4, 4), block_out_channels=(16, 32, 64),
               norm_num_groups=8, projector_dim=32)  # fmt: skip
    cfg.update(kwargs)
    return LowLevelModel(**cfg)


def test_param_count_subject1_matches_paper_206m() -> None:
    with torch.device("meta"):
        model = LowLevelModel(15724)
    assert n_params(model) == 206_065_604
    assert round(n_params(model) / 1e6) == 206  # paper Table 10: "206M"
    parts = {name: n_params(m) for name, m in model.named_children()}
    assert parts == {"stem": 64_413_696, "blocks": 67_141_632, "head": 67_108_864, "norm": 128,
                     "upsampler": 6_841_668, "projector": 559_616}  # fmt: skip
    # The reference has no biases in the MLP Linears.
    assert model.stem[0].bias is None and model.head.bias is None
    assert all(block[0].bias is None for block in model.blocks)


def test_subject1_shapes_on_meta() -> None:
    with torch.device("meta"):
        model = LowLevelModel(15724)
        latent, tokens = model(torch.empty(2, 15724))
    assert latent.shape == (2, 4, 64, 64)
    assert tokens.shape == (2, 256, 512)


def test_tiny_forward_shapes_and_dropout() -> None:
    torch.manual_seed(0)
    model = tiny().eval()
    x = torch.randn(3, 200)
    latent, tokens = model(x)
    assert latent.shape == (3, 4, 16, 16)  # (16, 4, 4) upsampled 4x by 3 up blocks
    assert tokens.shape == (3, 16, 32)
    assert torch.isfinite(latent).all() and torch.isfinite(tokens).all()
    torch.testing.assert_close(model(x)[0], latent)
    model.train()
    assert not torch.allclose(model(x)[0], model(x)[0])


def test_tiny_intermediate_map_feeds_both_heads() -> None:
    torch.manual_seed(0)
    model = tiny().eval()
    x = torch.randn(2, 200)
    # Recompute the (C, h, w) map by hand: residual SiLU MLP, head, reshape, GroupNorm(1, C).
    h = model.stem(x)
    for block in model.blocks:
        h = block(h) + h
    fmap = model.head(h).view(2, 16, 4, 4)
    mu = fmap.mean(dim=(1, 2, 3), keepdim=True)
    var = fmap.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
    fmap = (fmap - mu) / torch.sqrt(var + model.norm.eps) * model.norm.weight.view(1, -1, 1, 1)
    fmap = fmap + model.norm.bias.view(1, -1, 1, 1)
    latent, tokens = model(x)
    torch.testing.assert_close(latent, model.upsampler(fmap))
    proj = model.projector(fmap)  # (B, 32, 4, 4); token k is spatial position (k // 4, k % 4)
    torch.testing.assert_close(tokens[:, 6], proj[:, :, 1, 2])


def test_without_projector_and_bad_groups() -> None:
    model = tiny(use_projector=False)
    latent, tokens = model(torch.randn(1, 200))
    assert tokens is None and latent.shape == (1, 4, 16, 16)
    with pytest.raises(ValueError, match="norm_num_groups"):
        tiny(norm_num_groups=32)  # 16 channels cannot form 32 groups


def test_tiny_backward_reaches_all_parameters() -> None:
    torch.manual_seed(0)
    model = tiny()
    latent, tokens = model(torch.randn(2, 200))
    (latent.abs().mean() + tokens.square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_factory_reports_bad_norm_groups_by_config_key() -> None:
    from mindeye.config import load_config
    from mindeye.errors import MindEyeError
    from mindeye.models.factory import build_model

    cfg = load_config(None, ["model.kind=lowlevel", "model.lowlevel.upsampler_channels=[8, 16]",
                             "model.lowlevel.norm_groups=3"])
    with pytest.raises(MindEyeError, match=r"model\.lowlevel\.norm_groups=3 must divide every"):
        build_model(cfg.model, 10)
