"""Every config shipped in src/mindeye/configs/ loads, validates and builds its model (on the meta device)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mindeye.config import load_config
from mindeye.demo import DemoConfig
from mindeye.models.factory import build_model, parameter_counts

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "mindeye" / "configs"
DEMO_CONFIGS = {"demo.yaml", "demo-nsd-subj01.yaml"}
MODEL_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if p.name not in DEMO_CONFIGS)


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_model_config_builds(path):
    cfg = load_config(path)
    n_voxels = cfg.data.n_voxels or 2000
    model = build_model(cfg.model, n_voxels, device=torch.device("meta"))
    if cfg.model.kind == "ridge":  # closed-form: its weights are buffers, not trained parameters
        from mindeye.models.factory import lowlevel_latent_size

        outputs = (lowlevel_latent_size(cfg.model) if cfg.model.ridge.target == "lowlevel"
                   else cfg.model.backbone.tokens * cfg.model.backbone.dim)
        assert sum(b.numel() for b in model.buffers()) >= n_voxels * outputs
    else:
        assert parameter_counts(model)["total"] > 0
    if cfg.model.kind == "mindeye":
        assert (model.projector is not None) == cfg.model.projector.enabled
        assert (model.prior is not None) == cfg.model.prior.enabled


@pytest.mark.parametrize("name", sorted(DEMO_CONFIGS))
def test_demo_configs_load_and_point_at_shipped_model_configs(name):
    demo = load_config(CONFIGS / name, cls=DemoConfig)
    for ref in (demo.highlevel_config, demo.lowlevel_config, demo.ridge_config, demo.ridge_lowlevel_config):
        assert ref is None or (CONFIGS / ref).exists(), ref


def test_ablation_configs_differ_from_subj01_in_their_one_setting():
    base = load_config(CONFIGS / "mindeye-subj01.yaml")
    only_cls = load_config(CONFIGS / "ablations" / "only-cls.yaml")
    assert only_cls.model.backbone.tokens == 1 and only_cls.targets.encoder == "clip-vit-l14-final"
    assert load_config(CONFIGS / "ablations" / "blocks4-noskip.yaml").model.backbone.skip is False
    assert base.model.prior.enabled and not load_config(CONFIGS / "ablations" / "retrieval-only.yaml").model.prior.enabled
