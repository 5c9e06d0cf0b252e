"""The last differences from the authors' v1 computation (issue 25; docs/choices.md).

Each test compares with a computation written here, from the authors' code (MedARC-AI/fMRI-reconstruction-NSD,
``src/``), not with the code under test, and fails with the behaviour mindeye had before issue 25.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mindeye.config import load_config
from mindeye.training import losses
from mindeye.training.distributed import DistInfo

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "src/mindeye/configs"
PAPER_HIGH = CONFIGS / "mindeye-subj01.yaml"
PAPER_LOW = CONFIGS / "lowlevel-subj01.yaml"
TINY_HIGH = ["model.backbone.hidden=32", "model.backbone.n_blocks=1", "model.backbone.tokens=3",
             "model.backbone.dim=8", "model.projector.hidden=16", "model.prior.depth=1", "model.prior.heads=2",
             "model.prior.dim_head=8", "train.epochs=10"]


# ------------------------------------------------------------------ 1. the prior's targets under BiMixCo
def _prior_targets_seen(overrides: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(targets the prior was given, the batch's targets, the mixed voxels' lambdas) of one BiMixCo step."""
    from mindeye.models.factory import build_model
    from mindeye.training.trainer import HighLevelLoss

    cfg = load_config(PAPER_HIGH, TINY_HIGH + overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, 20).eval()
    seen = {}

    def record(target, brain):
        seen["target"] = target.detach().clone()
        return brain.sum() * 0, None

    model.prior.loss = record
    g = torch.Generator().manual_seed(0)
    tgt = torch.randn(12, 3, 8, generator=g)
    batch = {"voxels": torch.randn(12, 20, generator=g), "targets": tgt, "device": "cpu",
             "generator": torch.Generator().manual_seed(1)}
    task = HighLevelLoss(cfg, DistInfo())
    assert task._phase(0) == "bimixco"
    task.loss(model, model, batch, 0)
    # the same draws as the step: which samples were mixed
    _, _, lambdas = losses.mixco_mix(
        batch["voxels"], cfg.train.mixco_beta, cfg.train.mixco_prob, torch.Generator().manual_seed(1))
    return seen["target"], tgt, lambdas


def test_prior_is_trained_on_the_unmixed_clip_targets_under_bimixco():
    """Train_MindEye.py: ``diffusion_prior(text_embed=clip_voxels, image_embed=clip_target)`` with the
    unmixed clip_target, while the voxels are mixed (``utils.mixco_clip_target`` is never called)."""
    got, tgt, lambdas = _prior_targets_seen([])
    assert (lambdas < 1).any()  # some samples were mixed in this step
    torch.testing.assert_close(got, tgt)
    mixed, _, _ = _prior_targets_seen(["train.prior_targets=mixed"])
    assert (mixed - tgt).abs().amax() > 1e-3  # the option: mixed like the voxels (the paper's text)
    assert load_config(PAPER_HIGH).train.prior_targets == "unmixed"


# ------------------------------------------------------------- 5. the metric networks' own downscales
class _Pooled(torch.nn.Module):
    """A stand-in network whose 'avgpool' feature is its input itself (so the features show the resize)."""

    def forward(self, x):
        return {"avgpool": x}


def test_metric_networks_downscale_without_antialias_like_torchvision_015():
    """Reconstruction_Metrics.py: ``transforms.Resize(224 / 255, BILINEAR)`` on tensors, torchvision 0.15.2
    (no antialias) for CLIP, SwAV and EfficientNet; the option antialiases."""
    import torchvision.transforms.functional as TF

    from mindeye.evaluation import metrics as M
    from mindeye.evaluation.feature_nets import FeatureExtractor, FeatureNets

    g = torch.Generator().manual_seed(0)
    reals, recons = torch.rand(3, 3, 256, 256, generator=g), torch.rand(3, 3, 256, 256, generator=g)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    for name, size in (("swav", 224), ("efficientnet_b1", 255)):
        nets = FeatureNets({name: FeatureExtractor(name, _Pooled(), size, mean.flatten().tolist(), std.flatten().tolist())})
        for mode, antialias in (("reference", False), ("antialias", True)):
            got = M.evaluate_reconstructions(reals, recons, nets, metrics=[name], progress=False, net_resize=mode)
            f_real, f_recon = ((TF.resize(x, [size], TF.InterpolationMode.BILINEAR, antialias=antialias) - mean) / std
                               for x in (reals, recons))
            a, b = f_real.flatten(1).double(), f_recon.flatten(1).double()
            a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
            expected = float((1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean())
            assert got[name]["value"] == pytest.approx(expected, rel=1e-6), (name, mode)
        old = M.evaluate_reconstructions(reals, recons, nets, metrics=[name], progress=False, net_resize="antialias")
        new = M.evaluate_reconstructions(reals, recons, nets, metrics=[name], progress=False)
        assert old[name]["value"] != pytest.approx(new[name]["value"], rel=1e-4)  # the default moved


# ------------------------------------------------------- 7. test images with fewer than three repetitions
def test_averaged_test_samples_pad_to_three_repetitions_like_the_authors_data():
    """MindEyeV2 src/Train.ipynb: ``locs = torch.where(im == image)[0]``; one trial -> ``locs.repeat(3)``,
    two -> ``locs.repeat(2)[:3]`` ([a, b, a]); then the mean of the three."""
    from types import SimpleNamespace

    from mindeye.data.splits import load_eval_split

    g = np.random.default_rng(0)
    image_of_trial = np.array([5, 2, 7, 5, 2, 9, 2, 7, 3])  # 5, 7: two trials; 9, 3: one; 2: three
    voxels = g.normal(size=(len(image_of_trial), 4)).astype(np.float32)
    store = SimpleNamespace(trials=SimpleNamespace(image_index=image_of_trial), voxels=voxels, n_voxels=4)
    images = np.array([2, 3, 5, 7, 9])
    got = load_eval_split(store, images, "averaged", "pad3")
    assert got.image_index.tolist() == images.tolist()
    for row, img in enumerate(images):
        locs = torch.where(torch.from_numpy(image_of_trial) == int(img))[0]
        if len(locs) == 1:
            locs = locs.repeat(3)
        elif len(locs) == 2:
            locs = locs.repeat(2)[:3]
        assert len(locs) == 3
        expected = torch.from_numpy(voxels)[locs].double().mean(0)
        torch.testing.assert_close(got.voxels[row].double(), expected, atol=2e-3, rtol=1e-3)
    plain = load_eval_split(store, images, "averaged", "available")
    five = images.tolist().index(5)
    torch.testing.assert_close(plain.voxels[five].double(), torch.from_numpy(voxels[[0, 3]]).double().mean(0),
                               atol=2e-3, rtol=1e-3)
    assert (plain.voxels[five] - got.voxels[five]).abs().max() > 1e-2
    assert load_config(PAPER_HIGH).data.test_repetitions == "pad3"
    assert load_config(PAPER_LOW).data.test_repetitions == "pad3"


# ------------------------------------------------------------------- 8. MindEye2's fine-tune, cited right
def test_docs_cite_mindeye2_notebook_and_its_single_ridge_fine_tune():
    """MindEyeV2 has src/Train.ipynb (Train.py exists only in its history); its fine-tune builds one ridge and
    loads the pretrained checkpoint with strict=False (load_ckpt(..., multisubj_loading=True))."""
    docs = {p.name: p.read_text() for p in (REPO / "docs").glob("*.md")}
    for name, text in docs.items():
        assert "src/Train.py" not in text and "`Train.py`" not in text, name
    choices = docs["choices.md"]
    assert "src/Train.ipynb" in choices and "strict=False" in choices and "ridge.linears.0.weight" in choices
