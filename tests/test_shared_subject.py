"""Shared-subject MindEye: per-subject input layers, balanced multi-subject batches, --init-from
fine-tuning, --subject at inference, DDP on several subjects (docs/shared-subject.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from launch import TORCHRUN_2, run_ok
from mindeye.config import load_config
from mindeye.errors import MindEyeError
from mindeye.models.factory import build_model, parameter_counts
from mindeye.training.trainer import HighLevelTask, Trainer, init_from_pretrained

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.backbone.hidden=64", "model.backbone.n_blocks=1", "model.projector.hidden=32",
        "model.prior.depth=1", "model.prior.heads=2", "model.prior.dim_head=16", "train.batch_size=30",
        "train.val_every=100", "train.log_every=5", "data.val_images=0"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from mindeye.data.simulate import simulate_cohort
    from mindeye.encoders.cache import embed_store

    out = tmp_path_factory.mktemp("cohort") / "c"
    simulate_cohort(out, 4, scale="tiny", seed=0, progress=False)
    for j in range(1, 5):
        embed_store(out / f"subj{j:02d}", "standin-clip-hidden", progress=False)
    return out


@pytest.fixture(scope="module")
def pretrained(cohort, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pre") / "pre"
    cfg = load_config("demo-cohort-highlevel", TINY + ["train.epochs=1"])
    Trainer(cfg, run, store=[cohort / "subj01", cohort / "subj02", cohort / "subj03"], device="cpu",
            progress=False).fit()
    return run


def test_one_subject_shared_layout_has_the_v1_parameters():
    cfg = load_config("demo-cohort-highlevel", TINY).model
    v1, shared = build_model(cfg, 600), build_model(cfg, {"subj01": 600})
    assert parameter_counts(v1)["total"] == parameter_counts(shared)["total"]
    assert "backbone.stem.0.weight" in v1.state_dict() and "backbone.stem.0.weight" not in shared.state_dict()
    assert shared.state_dict()["subject_layers.subj01.weight"].shape == (64, 600)
    # Same input layer weights -> same outputs: the layouts differ only in where the first Linear lives.
    state = {k.replace("subject_layers.subj01.", "backbone.stem.0."): v for k, v in shared.state_dict().items()}
    v1.load_state_dict(state)
    x = torch.randn(3, 600)
    torch.testing.assert_close(v1.eval()(x)["projector"], shared.eval()(x)["projector"])


def test_batches_are_balanced_across_subjects(cohort):
    cfg = load_config("demo-cohort-highlevel", TINY + ["train.epochs=1"])
    trainer = Trainer(cfg, cohort.parent / "unused-run", store=[cohort / f"subj0{j}" for j in (1, 2, 3)],
                      device="cpu", progress=False)
    task = HighLevelTask(trainer)
    batches = list(task.batches(0))
    assert len(batches) == task.steps_per_epoch() > 5
    widths = [trainer.stores[j].n_voxels for j in range(3)]
    assert len(set(widths)) == 3  # the subjects really differ
    for b in batches:
        assert b["subjects"] == ["subj01", "subj02", "subj03"]
        assert [tuple(v.shape) for v in b["voxels"]] == [(10, w) for w in widths]
        assert b["targets"].shape == (30, 17, 64)
    # Each subject's part is its own sampler's pick: targets are that subject's images' targets.
    first = batches[0]
    part = task.parts[1]
    rows = [int(np.flatnonzero((part.vox.float() == v).all(-1).any(1))[0]) for v in first["voxels"][1][:3]]
    torch.testing.assert_close(first["targets"][10:13], part.targets.get(part.images[rows]))


def test_batch_size_must_split_over_subjects(cohort, tmp_path):
    cfg = load_config("demo-cohort-highlevel", TINY + ["train.batch_size=32"])
    trainer = Trainer(cfg, tmp_path / "r", store=[cohort / "subj01", cohort / "subj02", cohort / "subj03"],
                      device="cpu", progress=False)
    with pytest.raises(MindEyeError, match="does not split evenly over the 3 subjects; choose a multiple of 3"):
        HighLevelTask(trainer)


def test_run_json_lists_subjects(pretrained):
    info = json.loads((pretrained / "run.json").read_text())
    assert [s["id"] for s in info["subjects"]] == ["subj01", "subj02", "subj03"]
    assert all(Path(s["store"]).name == s["id"] and s["n_voxels"] > 0 for s in info["subjects"])
    keys = load_file(str(pretrained / "model.safetensors")).keys()
    assert {"subject_layers.subj01.weight", "subject_layers.subj03.bias"} <= set(keys)


def test_finetuned_shared_weights_start_as_the_pretrained_run(cohort, pretrained):
    cfg = load_config("demo-cohort-highlevel", TINY).model
    model = build_model(cfg, {"subj04": 627})
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    new = init_from_pretrained(model, pretrained / "model.safetensors", {"subj01": {}, "subj02": {}, "subj03": {}})
    assert new == ["subj04"]
    saved = load_file(str(pretrained / "model.safetensors"))
    state = model.state_dict()
    shared = [k for k in state if not k.startswith("subject_layers.")]
    assert shared and all(torch.equal(state[k], saved[k]) for k in shared)
    assert torch.equal(state["subject_layers.subj04.weight"], fresh["subject_layers.subj04.weight"])


def test_input_layer_first_schedule_keeps_shared_weights(cohort, pretrained, tmp_path):
    """train.finetune_input_epochs=1 of 1: only the new subject's layer changes."""
    cfg = load_config("demo-cohort-highlevel", TINY + ["train.epochs=1", "train.finetune_input_epochs=1"])
    Trainer(cfg, tmp_path / "ft", store=cohort / "subj04", device="cpu", progress=False, init_from=pretrained).fit()
    before, after = load_file(str(pretrained / "model.safetensors")), load_file(str(tmp_path / "ft/model.safetensors"))
    assert all(torch.equal(after[k], before[k]) for k in after if not k.startswith("subject_layers."))
    assert set(k for k in after if k.startswith("subject_layers.")) == {"subject_layers.subj04.weight",
                                                                        "subject_layers.subj04.bias"}
    info = json.loads((tmp_path / "ft/run.json").read_text())
    assert info["init_from"]["new_subjects"] == ["subj04"]


def test_init_from_refuses_another_subject_under_a_pretrained_id(cohort, pretrained, tmp_path):
    from mindeye.data.simulate import simulate_subject

    other = tmp_path / "other"
    simulate_subject(other, scale="tiny", seed=5, progress=False)
    meta = json.loads((other / "meta.json").read_text())
    meta["subject_id"] = "subj02"
    (other / "meta.json").write_text(json.dumps(meta))
    cfg = load_config("demo-cohort-highlevel", TINY)
    with pytest.raises(MindEyeError, match=r"subject id subj02 of .* is already in the pretrained run .* but is not "
                                           r"the same subject; give the new subject its own id"):
        Trainer(cfg, tmp_path / "ft", store=other, device="cpu", progress=False, init_from=pretrained)
    # The same subject continuing is fine (its layer is loaded, not new).
    trainer = Trainer(cfg, tmp_path / "ft2", store=cohort / "subj02", device="cpu", progress=False,
                      init_from=pretrained)
    assert "subj02" in trainer.pretrained["subjects"]


def test_init_from_needs_the_same_architecture(cohort, pretrained, tmp_path):
    cfg = load_config("demo-cohort-highlevel", TINY + ["model.backbone.hidden=32"])
    with pytest.raises(MindEyeError, match=r"model config differs from the pretrained run .*model.backbone.hidden"):
        Trainer(cfg, tmp_path / "ft", store=cohort / "subj04", device="cpu", progress=False, init_from=pretrained)


def test_subject_is_required_and_listed(pretrained):
    import mindeye
    from mindeye.evaluation.run_eval import evaluate_retrieval

    with pytest.raises(MindEyeError, match=r"trained on several subjects \(subj01, subj02, subj03\); say which one "
                                           r"with subject=ID"):
        mindeye.load_run(pretrained)
    with pytest.raises(MindEyeError, match=r"subject 'subj09' is not in .*; its subjects are subj01, subj02, subj03"):
        evaluate_retrieval(pretrained, device="cpu", subject="subj09", write=False)
    run = mindeye.load_run(pretrained, subject="subj03")
    assert run.n_voxels == json.loads((pretrained / "run.json").read_text())["subjects"][2]["n_voxels"]
    res = evaluate_retrieval(pretrained, device="cpu", subject="subj03", write=False)
    assert res["subject"] == "subj03" and res["n_test"] == 60
    # The Python API and the evaluation embed the same voxels the same way.
    pipe = mindeye.MindEyePipeline.from_run(pretrained, device="cpu", subject="subj03")
    assert pipe.n_voxels == run.n_voxels


def test_cli_train_several_stores_and_evaluate_a_subject(cohort, tmp_path):
    sets = sum((["--set", o] for o in TINY + ["train.epochs=1", "train.max_steps=3"]), [])
    base = [sys.executable, "-m", "mindeye"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*base, "train", "--config", "demo-cohort-highlevel", "--data", str(cohort / "subj01"), "--data",
                    str(cohort / "subj02"), "--out", str(tmp_path / "run"), "--device", "cpu", "--no-progress",
                    *sets], check=True, env=env, capture_output=True)
    bad = subprocess.run([*base, "evaluate", "retrieval", "--run", str(tmp_path / "run"), "--device", "cpu"],
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "say which one with --subject ID" in bad.stderr
    ok = subprocess.run([*base, "evaluate", "retrieval", "--run", str(tmp_path / "run"), "--device", "cpu",
                         "--subject", "subj02"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "run/eval/retrieval-subj02.json").exists()


@pytest.mark.slow
def test_ddp_two_processes_match_single_process_on_several_subjects(cohort, tmp_path):
    """gloo, 2 processes, 3 subjects (a rank's half of the batch crosses a subject boundary)."""
    extra = ["train.epochs=2", "train.loss=bimixco+softclip", "train.mixco_fraction=0.5",
             "model.prior.enabled=false", "model.backbone.dropout_in=0.0", "model.backbone.dropout_block=0.0",
             "train.log_every=1", "train.max_steps=12"]
    sets = sum((["--set", o] for o in TINY + extra), [])
    data = sum((["--data", str(cohort / f"subj0{j}")] for j in (1, 2, 3)), [])
    common = ["-m", "mindeye", "train", "--config", "demo-cohort-highlevel", *data, "--device", "cpu", "--no-progress", *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run_ok([sys.executable, *common, "--out", str(tmp_path / "one")], env)
    run_ok([*TORCHRUN_2, *common, "--out", str(tmp_path / "two")], env)

    def losses(run: Path) -> list[float]:
        return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]

    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(a) == len(b) > 4
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


@pytest.mark.slow
def test_demo_cohort_command_writes_the_table_and_the_report_points(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sets = sum((["--set", o] for o in TINY[:6]), [])
    out = subprocess.run([sys.executable, "-m", "mindeye", "demo-cohort", "--out", str(tmp_path), "--subjects", "3",
                          "--sessions", "1", "--pretrain-epochs", "1", "--epochs", "2", "--quiet", *sets],
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "held-out subject subj03 (pretrained on subj01, subj02)" in out.stdout
    points = json.loads((tmp_path / "sessions.json").read_text())
    assert sorted(p["method"] for p in points) == ["finetuned", "ridge", "scratch"]
    assert all(p["sessions"] == 1 and 0 <= p["brain_to_image"] <= 1 and "image_to_brain_std" in p for p in points)
    assert (tmp_path / "sessions.png").stat().st_size > 1000
    from mindeye.evaluation.report_data import read_sessions

    assert read_sessions(tmp_path / "sessions.json") == points  # the report's --sessions input
