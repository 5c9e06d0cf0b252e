"""Backbone, projector and the composite MindEye model: sizes, key names, forward semantics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mindeye.models.backbone import ResidualMLPBackbone
from mindeye.models.mindeye import MindEyeModel
from mindeye.models.projector import Projector


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, 940_225_280),
        ({"n_blocks": 2}, 906_646_272),
        ({"n_blocks": 0}, 873_067_264),
        ({"out_tokens": 1}, 134_722_304),
    ],
)
def test_backbone_param_counts_subject1(kwargs: dict, expected: int) -> None:
    # Paper Table 2 (subject 1, 15,724 voxels); meta device avoids allocating ~4 GB.
    with torch.device("meta"):
        model = ResidualMLPBackbone(15724, **kwargs)
    assert n_params(model) == expected


def test_backbone_state_dict_keys_are_fixed() -> None:
    model = ResidualMLPBackbone(10, hidden=8, n_blocks=2, out_tokens=3, out_dim=4)
    assert set(model.state_dict()) == {
        "stem.0.weight", "stem.0.bias", "stem.1.weight", "stem.1.bias",
        "blocks.0.0.weight", "blocks.0.0.bias", "blocks.0.1.weight", "blocks.0.1.bias",
        "blocks.1.0.weight", "blocks.1.0.bias", "blocks.1.1.weight", "blocks.1.1.bias",
        "head.weight", "head.bias",
    }  # fmt: skip
    no_bias = ResidualMLPBackbone(10, hidden=8, n_blocks=1, bias=False)
    assert "stem.0.bias" not in no_bias.state_dict() and "blocks.0.0.bias" not in no_bias.state_dict()
    assert "head.bias" in no_bias.state_dict()


def _manual_backbone(model: ResidualMLPBackbone, x: torch.Tensor, skip: bool) -> torch.Tensor:
    def layer(seq: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
        lin, ln = seq[0], seq[1]
        z = h @ lin.weight.T + lin.bias
        z = (z - z.mean(-1, keepdim=True)) / torch.sqrt(z.var(-1, unbiased=False, keepdim=True) + ln.eps)
        return torch.nn.functional.gelu(z * ln.weight + ln.bias)

    h = layer(model.stem, x)
    for block in model.blocks:
        h = layer(block, h) + h if skip else layer(block, h)
    return (h @ model.head.weight.T + model.head.bias).reshape(x.shape[0], model.out_tokens, model.out_dim)


@pytest.mark.parametrize("skip", [True, False])
def test_backbone_forward_matches_manual(skip: bool) -> None:
    torch.manual_seed(0)
    model = ResidualMLPBackbone(20, hidden=16, n_blocks=3, out_tokens=5, out_dim=6, skip=skip).eval()
    x = torch.randn(4, 20)
    out = model(x)
    assert out.shape == (4, 5, 6)
    torch.testing.assert_close(out, _manual_backbone(model, x, skip))


def test_backbone_skip_changes_output_and_dropout_only_in_train() -> None:
    torch.manual_seed(0)
    a = ResidualMLPBackbone(20, hidden=16, n_blocks=2, out_tokens=2, out_dim=3, skip=True).eval()
    b = ResidualMLPBackbone(20, hidden=16, n_blocks=2, out_tokens=2, out_dim=3, skip=False).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 20)
    assert not torch.allclose(a(x), b(x))
    torch.testing.assert_close(a(x), a(x))  # eval: deterministic
    a.train()
    assert not torch.allclose(a(x), a(x))  # dropout active


def test_backbone_rejects_unknown_activation_and_norm() -> None:
    with pytest.raises(ValueError, match="activation"):
        ResidualMLPBackbone(4, hidden=4, act="tanh")
    with pytest.raises(ValueError, match="norm"):
        ResidualMLPBackbone(4, hidden=4, norm="batch")


def test_projector_param_count_and_layout() -> None:
    with torch.device("meta"):
        proj = Projector(768, 2048)
    assert n_params(proj) == 7_354_624
    with_params = [i for i, m in enumerate(proj.net) if any(True for _ in m.parameters())]
    assert with_params == [0, 2, 3, 5, 6, 8]
    assert proj.net[5].in_features == 2048 and proj.net[5].out_features == 2048


def test_projector_is_per_token() -> None:
    torch.manual_seed(0)
    proj = Projector(8, 16).eval()
    tokens = torch.randn(2, 5, 8)
    out = proj(tokens)
    assert out.shape == (2, 5, 8)
    # Each token is processed independently: projecting one token alone gives the same result.
    torch.testing.assert_close(out[1, 3], proj(tokens[1, 3][None])[0])


class DummyPrior(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))


@pytest.mark.parametrize(
    ("use_projector", "use_prior", "variant"),
    [
        (False, False, "backbone"),
        (True, False, "backbone+projector"),
        (False, True, "backbone+prior"),
        (True, True, "full"),
    ],
)
def test_mindeye_model_variants(use_projector: bool, use_prior: bool, variant: str) -> None:
    torch.manual_seed(0)
    backbone = ResidualMLPBackbone(12, hidden=16, n_blocks=1, out_tokens=3, out_dim=8)
    projector = Projector(8, 16) if use_projector else None
    prior = DummyPrior() if use_prior else None
    model = MindEyeModel(backbone, projector, prior).eval()
    assert model.variant == variant
    x = torch.randn(4, 12)
    out = model(x)
    torch.testing.assert_close(out["backbone"], backbone(x))
    if use_projector:
        torch.testing.assert_close(out["projector"], projector(backbone(x)))
        assert model.contrastive_output(out) is out["projector"]
    else:
        assert out["projector"] is None
        assert model.contrastive_output(out) is out["backbone"]
    prefixes = {k.split(".")[0] for k in model.state_dict()}
    assert prefixes == {"backbone"} | ({"projector"} if use_projector else set()) | (
        {"prior"} if use_prior else set()
    )
