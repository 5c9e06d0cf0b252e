"""FSDP2 under torchrun (2 gloo processes) matches 1 process; activation checkpointing keeps the gradients."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from launch import TORCHRUN_2, run_ok
from mindeye.config import load_config
from mindeye.models.factory import build_model
from mindeye.training.trainer import set_activation_checkpointing

REPO = Path(__file__).resolve().parents[1]
TINY_HIGH = ["model.backbone.hidden=128", "model.backbone.n_blocks=2", "model.projector.hidden=64",
             "model.prior.depth=2", "model.prior.heads=2", "model.prior.dim_head=16", "train.batch_size=32",
             "train.val_every=100", "data.val_images=0"]


def _losses(run: Path) -> list[float]:
    return [m["loss"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in m]


@pytest.mark.slow
@pytest.mark.parametrize("config", ["demo-highlevel.yaml", "demo-lowlevel.yaml"])
def test_fsdp_two_processes_match_single_process(config, tiny_store, tmp_path):
    """gloo, 2 processes, parameters sharded: same losses and final weights as 1 process (the DDP test's
    setting: no dropout and, high level, no prior, whose timestep/noise draws are per process)."""
    from safetensors.torch import load_file

    extra = ["train.epochs=2", "train.log_every=1", "train.mixco_fraction=0.5"]
    if "high" in config:
        extra += TINY_HIGH + ["model.prior.enabled=false", "model.backbone.dropout_in=0.0",
                              "model.backbone.dropout_block=0.0"]
    else:
        extra += ["model.lowlevel.dropout_in=0.0", "model.lowlevel.dropout_block=0.0", "data.val_images=20"]
    cfg_args = sum((["--set", o] for o in extra), [])
    common = ["-m", "mindeye", "train", "--config", str(REPO / "src/mindeye/configs" / config), "--data", str(tiny_store),
              "--device", "cpu", "--no-progress", *cfg_args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run_ok([sys.executable, *common, "--out", str(tmp_path / "one")], env)
    run_ok([*TORCHRUN_2, *common, "--set", "train.parallel=fsdp", "--out", str(tmp_path / "two")], env)
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) > 4
    if "high" in config:  # the low-level loss is logged from rank 0's half batch, so only its weights compare
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    # the checkpoint holds the full (gathered) weights, loadable by one process
    wa, wb = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert wa[k].shape == wb[k].shape, k
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-4)
    opt = torch.load(tmp_path / "two" / "checkpoint" / "state.pt", weights_only=False)["optimizer"]
    name, st = next(iter(opt["state"].items()))  # full, unsharded moments keyed by parameter name
    assert isinstance(name, str) and st["exp_avg"].shape == wb[name].shape


def _grads(model: torch.nn.Module, loss_fn) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)  # same dropout masks, prior timesteps and noise in both runs
    loss_fn(model).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("config", ["demo-highlevel.yaml", "demo-lowlevel.yaml"])
def test_activation_checkpointing_keeps_the_gradients(config):
    overrides = TINY_HIGH if "high" in config else []
    cfg = load_config(REPO / "src/mindeye/configs" / config, overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, 50).train()  # dropout on: the recomputation must replay its masks
    vox = torch.randn(6, 50)

    def loss_fn(m: torch.nn.Module) -> torch.Tensor:
        if "high" in config:
            out = m(vox)
            return m.prior.loss(torch.randn_like(out["backbone"]), out["backbone"])[0] + out["projector"].square().mean()
        latent, tokens = m(vox)
        return latent.abs().mean() + tokens.square().mean()

    plain = _grads(model, loss_fn)
    set_activation_checkpointing(model, True)
    flags = [m.checkpoint_blocks for m in model.modules() if hasattr(m, "checkpoint_blocks")]
    assert flags and all(flags)
    # checkpointing really recomputes: the blocks run twice per step
    calls = []
    block = model.backbone.blocks[0] if "high" in config else model.blocks[0]
    handle = block.register_forward_pre_hook(lambda *a: calls.append(1))
    lean = _grads(model, loss_fn)
    handle.remove()
    assert len(calls) == 2
    assert plain.keys() == lean.keys() and len(plain) > 5
    for k in plain:
        torch.testing.assert_close(lean[k], plain[k], rtol=0, atol=0, msg=k)


@pytest.mark.slow
def test_fsdp_run_stopped_mid_epoch_resumes_exactly(tiny_store, tmp_path):
    """FSDP2 checkpoints hold full weights + a full optimizer state; a stopped run resumes bit-exactly."""
    cfg_args = sum((["--set", o] for o in TINY_HIGH + ["train.epochs=3", "train.log_every=1",
                                                       "train.parallel=fsdp"]), [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def launch(out: Path, *extra: str) -> None:
        run_ok([*TORCHRUN_2, "-m", "mindeye", "train", "--config",
                str(REPO / "src/mindeye/configs" / "demo-highlevel.yaml"), "--data", str(tiny_store),
                "--device", "cpu", "--no-progress", *cfg_args, "--out", str(out), *extra], env)

    launch(tmp_path / "full")
    launch(tmp_path / "part", "--set", "train.max_steps=30")  # 20 steps per epoch: killed in epoch 2
    launch(tmp_path / "part", "--resume")
    read = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    a = [(m["step"], m["loss"]) for m in read if "loss" in m]
    read = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    b = [(m["step"], m["loss"]) for m in read if "loss" in m]
    assert len(a) == 60 and a == b


def test_resuming_an_fsdp_checkpoint_without_fsdp_is_a_clear_error(tiny_store, tmp_path):
    from mindeye.errors import MindEyeError
    from mindeye.training.trainer import Trainer

    cfg = load_config(REPO / "src/mindeye/configs" / "demo-highlevel.yaml", TINY_HIGH + ["train.epochs=2", "train.max_steps=25"])
    Trainer(cfg, tmp_path / "run", store=tiny_store, device="cpu", progress=False).fit()
    path = tmp_path / "run" / "checkpoint" / "state.pt"
    state = torch.load(path, weights_only=False)
    names = [n for n, _ in build_model(cfg.model, 600).named_parameters()]
    state["optimizer"]["state"] = {names[i]: v for i, v in state["optimizer"]["state"].items()}  # as FSDP saves it
    torch.save(state, path)
    with pytest.raises(MindEyeError, match=r"checkpointed with train\.parallel=fsdp under torchrun; resume it "
                                           r"with that setting"):
        Trainer(cfg, tmp_path / "run", store=tiny_store, device="cpu", progress=False, resume=True).fit()
