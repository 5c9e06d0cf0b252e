"""benchmarks/train_throughput.py: the analytic FLOP count against torch's FlopCounterMode, and a short run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mindeye.config import load_config
from mindeye.errors import MindEyeError
from mindeye.models.factory import build_model

REPO = Path(__file__).resolve().parents[1]
TINY_HIGH = ["model.backbone.hidden=64", "model.backbone.n_blocks=2", "model.projector.hidden=32",
             "model.prior.depth=2", "model.prior.heads=2", "model.prior.dim_head=16"]


@pytest.fixture(scope="module")
def tt():
    spec = importlib.util.spec_from_file_location("train_throughput", REPO / "benchmarks" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_throughput"] = module
    spec.loader.exec_module(module)
    return module


def _counted(fn) -> int:
    # The math SDPA backend decomposes attention into matmuls, which FlopCounterMode counts on the CPU.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_high_level_forward_flops_match_flop_counter(tt):
    cfg = load_config(REPO / "src/mindeye/configs" / "demo-highlevel.yaml", TINY_HIGH)
    n_voxels, batch = 300, 4
    torch.manual_seed(0)
    model = build_model(cfg.model, n_voxels).eval()
    vox = torch.randn(batch, n_voxels)
    target = torch.randn(batch, cfg.model.backbone.tokens, cfg.model.backbone.dim)

    def forward() -> None:
        with torch.no_grad():
            out = model(vox)
            model.prior.loss(target, out["backbone"])

    expected = tt.flops_per_sample(cfg.model, n_voxels)
    assert _counted(forward) == pytest.approx(batch * expected["forward"], rel=1e-9)
    assert expected["train"] == 3 * expected["forward"]


def test_high_level_training_step_is_three_forwards(tt):
    """The whole trainer loss + backward: 3 x forward up to the contrastive logits and the input layer's
    missing input gradient (a few per cent at this tiny size, ~0.1% at full size)."""
    cfg = load_config(REPO / "src/mindeye/configs" / "demo-highlevel.yaml", TINY_HIGH)
    n_voxels, batch = 300, 8
    torch.manual_seed(0)
    model = build_model(cfg.model, n_voxels).train()
    cfg.train.batch_size = batch
    task = tt.make_task("high", cfg, "cpu")
    b = next(tt.random_batches("high", cfg, n_voxels, batch, "cpu", False, 0))

    def step() -> None:
        loss, _ = task.loss(model, model, b, 0)
        loss.backward()

    counted = _counted(step)
    assert counted == pytest.approx(batch * tt.flops_per_sample(cfg.model, n_voxels)["train"], rel=0.05)


def test_low_level_forward_flops_match_flop_counter(tt):
    cfg = load_config(REPO / "src/mindeye/configs" / "demo-lowlevel.yaml")
    n_voxels, batch = 300, 2
    model = build_model(cfg.model, n_voxels).eval()
    with torch.no_grad():
        counted = _counted(lambda: model(torch.randn(batch, n_voxels)))
    assert counted == pytest.approx(batch * tt.flops_per_sample(cfg.model, n_voxels)["forward"], rel=1e-9)


def test_full_size_high_level_flops_match_the_issue(tt):
    """188 GFLOP per sample per training step (forward 62.8: backbone+projector 5.65, prior 57.1)."""
    cfg = load_config(REPO / "src/mindeye/configs" / "mindeye-subj01.yaml")
    f = tt.flops_per_sample(cfg.model, 15724)
    assert f["backbone"] + f["projector"] == pytest.approx(5.65e9, rel=2e-3)
    prior = f["prior_layers"] + f["prior_attention"] + f["prior_other"]
    assert prior == pytest.approx(57.1e9, rel=2e-3)
    assert f["train"] == pytest.approx(188.4e9, rel=1e-3)


def test_peak_table_and_override(tt):
    assert tt.peak_tflops("cpu", None) is None
    assert tt.peak_tflops("cpu", 123.0) == 123.0
    names = dict(tt.PEAK_TFLOPS)
    assert names["H100 PCIe"] == 756.0 and names["H100"] == 989.4
    # PCIe must be matched before the generic H100 entry.
    assert [k for k, _ in tt.PEAK_TFLOPS].index("H100 PCIe") < [k for k, _ in tt.PEAK_TFLOPS].index("H100")


def test_small_compare_runs_on_cpu(tt, tmp_path):
    out = tmp_path / "r.jsonl"
    results = tt.main(["--pipeline", "high", "--size", "small", "--compare", "--device", "cpu", "--warmup", "1",
                       "--steps", "1", "--batch", "8", "--voxels", "200", "--json", str(out)])
    assert [r.name for r in results] == ["reference", "reference-cached", "ours"]
    for r in results:
        assert r.samples_per_s > 0 and r.mfu is None and r.peak_rss_gib > 0
        assert torch.isfinite(torch.tensor(r.mean_loss))
    assert results[0].optimizer == "AdamW(forloop)" and "targets=online" in results[0].levers
    assert len(out.read_text().splitlines()) == 3


def test_checkpointing_keeps_the_gradients(tt):
    """Activation checkpointing (dropout masks replayed) gives the same loss and gradients."""
    cfg = load_config(REPO / "src/mindeye/configs" / "demo-highlevel.yaml", TINY_HIGH)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg.model, 100).train()
        if ckpt:
            tt.apply_checkpointing(model, "high")
        task = tt.make_task("high", cfg, "cpu")
        b = next(tt.random_batches("high", cfg, 100, 8, "cpu", False, 0))
        b["generator"] = torch.Generator().manual_seed(1)
        torch.manual_seed(2)
        loss, _ = task.loss(model, model, b, 0)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    assert torch.equal(grads[0][0], grads[1][0])
    assert len(grads[0][1]) == len(grads[1][1])
    for a, b in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(a, b)


def test_store_source_needs_data(tt):
    with pytest.raises(SystemExit):
        tt.parse_args(["--source", "store"])
    with pytest.raises(MindEyeError, match="model.kind=lowlevel"):
        tt.load_bench_config("low", "full", str(REPO / "src/mindeye/configs" / "mindeye-subj01.yaml"), [])
