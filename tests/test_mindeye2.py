"""The MindEye2 family (model.kind mindeye2, docs/mindeye2.md): shapes, parameter counts vs the formula,
the authors' checkpoint mapping on a hand-built state dict in their key layout, the BiMixCo permutation
option, a short training run, resume and DDP (slow)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from launch import TORCHRUN_2, run_ok
from mindeye.cli import main
from mindeye.config import load_config
from mindeye.models.convert import expected_v1_shapes
from mindeye.models.factory import build_model, parameter_counts

# The DDP run costs ~30 s of CPU (two processes): opt-in, outside `make test`'s budget; the short runs stay in.
OPT_IN = pytest.mark.skipif(os.environ.get("MINDEYE_MINDEYE2_SLOW") != "1",
                            reason="MindEye2 training runs: set MINDEYE_MINDEYE2_SLOW=1")

SMALL = ["model.kind=mindeye2", "model.backbone.hidden=24", "model.backbone.n_blocks=2", "model.backbone.tokens=3",
         "model.backbone.dim=8", "model.projector.hidden=8", "model.prior.depth=1", "model.prior.heads=2",
         "model.prior.dim_head=4", "model.blurry.channels=8", "model.blurry.side=2",
         "model.blurry.upsampler_channels=[8, 8, 8]", "model.blurry.norm_groups=4", "model.blurry.projector_dim=6"]


def _small(extra=()):
    return load_config("mindeye2-pretrain", SMALL + list(extra))


def test_forward_shapes_per_subject_segments():
    model = build_model(_small().model, {"a": 30, "b": 20}).eval()
    out = model([("a", torch.randn(3, 30)), ("b", torch.randn(2, 20))])
    assert out["backbone"].shape == (5, 3, 8) and out["projector"].shape == (5, 3, 8)
    assert out["blurry"].shape == (5, 4, 8, 8)  # side 2, three up blocks: 2 -> 8
    assert out["blurry_tokens"].shape == (5, 4, 6)
    one = model(torch.randn(2, 20), subject="b")
    assert one["backbone"].shape == (2, 3, 8)


def test_parameter_counts_match_the_formula():
    counts = parameter_counts(build_model(_small(["model.blurry.enabled=false", "model.prior.enabled=false"]).model,
                                          {"a": 30, "b": 20}))
    h, nb, t, d = 24, 2, 3, 8
    assert counts["subject_layers"] == (30 * h + h) + (20 * h + h)
    # per block: LayerNorm(h) + Linear(h,h) x2, then LayerNorm(1) + Linear(1,1) x2 (sequence length 1)
    assert counts["backbone"] == nb * (2 * h + 2 * (h * h + h) + 2 + 2 * 2) + h * t * d + t * d
    ph = 8
    assert counts["projector"] == 2 * d + (d * ph + ph) + 2 * ph + (ph * ph + ph) + 2 * ph + (ph * d + d)
    assert counts["total"] == counts["subject_layers"] + counts["backbone"] + counts["projector"]


def test_summary_paper_size_with_seven_subject_ridges(capsys):
    voxels = "14278,15226,13153,13039,17907,12682,14386"
    assert main(["summary", "--config", "mindeye2-pretrain", "--n-voxels", voxels]) == 0
    out = capsys.readouterr().out
    ridge = sum(n * 4096 + 4096 for n in map(int, voxels.split(",")))
    assert f"subject_layers {ridge}" in out
    # the numbers benchmarks/mindeye2_authors_check.py counted on the authors' own classes
    assert "total        2575262332" in out and "prior        259865216" in out


def test_summary_equals_the_counts_their_notebook_printed(capsys):
    """Train.ipynb's saved outputs (cells 19-22; hidden 1024, subj01, no blurry head): ridge 16,102,400,
    BrainNetwork 453,360,280, prior 259,865,216, model 729,327,896."""
    assert main(["summary", "mindeye2-finetune-1session", "--n-voxels", "15724", "--set", "model.backbone.hidden=1024",
                 "--set", "model.blurry.enabled=false"]) == 0
    lines = dict(line.split() for line in capsys.readouterr().out.splitlines()[1:])
    assert int(lines["subject_layers"]) == 16_102_400
    assert int(lines["backbone"]) + int(lines["projector"]) == 453_360_280
    assert int(lines["prior"]) == 259_865_216 and int(lines["total"]) == 729_327_896


def _authors_layout(voxels, hidden, n_blocks, tokens, dim, depth, heads, dim_head) -> dict[str, torch.Tensor]:
    """A random state dict in the authors' MindEye2 key layout (their Train.ipynb's MindEyeModule),
    built by hand: ridge, BrainNetwork (blurry part fixed at their sizes), dalle2 prior."""
    from mindeye.models.mindeye2 import BlurryHead

    g = torch.Generator().manual_seed(0)
    sd: dict[str, tuple] = {}
    for i, n in enumerate(voxels):
        sd[f"ridge.linears.{i}.weight"], sd[f"ridge.linears.{i}.bias"] = (hidden, n), (hidden,)
    for i in range(n_blocks):
        for name, w in (("mixer_blocks1", hidden), ("mixer_blocks2", 1)):
            p = f"backbone.{name}.{i}"
            sd[f"{p}.0.weight"], sd[f"{p}.0.bias"] = (w,), (w,)
            for j in (0, 3):
                sd[f"{p}.1.{j}.weight"], sd[f"{p}.1.{j}.bias"] = (w, w), (w,)
    sd["backbone.backbone_linear.weight"], sd["backbone.backbone_linear.bias"] = (tokens * dim, hidden), (tokens * dim,)
    for idx, shape in {0: (dim,), 2: (dim, dim), 3: (dim,), 5: (dim, dim), 6: (dim,), 8: (dim, dim)}.items():
        sd[f"backbone.clip_proj.{idx}.weight"], sd[f"backbone.clip_proj.{idx}.bias"] = shape, (shape[0],)
    sd["backbone.blin1.weight"], sd["backbone.blin1.bias"] = (4 * 28 * 28, hidden), (4 * 28 * 28,)
    sd["backbone.bnorm.weight"], sd["backbone.bnorm.bias"] = (64,), (64,)
    # their bupsampler is a diffusers Decoder(64 -> 4, [32, 64, 128]): its own names
    dec = BlurryHead(hidden).upsampler.state_dict()
    sd.update({f"backbone.bupsampler.{k}": tuple(v.shape) for k, v in dec.items()})
    for k, s in {"0.weight": (512, 64, 1, 1), "1.weight": (512,), "1.bias": (512,), "3.weight": (512, 512, 1, 1),
                 "4.weight": (512,), "4.bias": (512,), "6.weight": (512, 512, 1, 1), "6.bias": (512,)}.items():
        sd[f"backbone.b_maps_projector.{k}"] = s
    prior = expected_v1_shapes(1, tokens=tokens, dim=dim, depth=depth, heads=heads, dim_head=dim_head,
                               rotary_dim=min(32, dim_head))
    sd.update({f"diffusion_prior.{k}": s for k, s in prior.items() if not k.startswith("voxel2clip.")})
    out = {k: torch.randn(s, generator=g) for k, s in sd.items()}
    freqs = sorted(k for k in out if k.endswith("rotary_emb.freqs"))
    for k in freqs:  # one rotary embedding shared by all layers
        out[k] = out[freqs[0]].clone()
    return out


def test_import_mindeye2_checkpoint_maps_their_layout(tmp_path, capsys):
    sd = _authors_layout([30, 20], hidden=16, n_blocks=2, tokens=3, dim=8, depth=1, heads=2, dim_head=4)
    ckpt = tmp_path / "last.pth"
    torch.save({"epoch": 3, "model_state_dict": sd, "train_losses": [1.0], "lrs": [1e-4]}, ckpt)  # their save_ckpt
    assert main(["import-checkpoint", "--mindeye2", str(ckpt), "--out", str(tmp_path / "run"),
                 "--subjects", "s1,s2"]) == 0
    run = tmp_path / "run"
    weights = load_file(str(run / "model.safetensors"))
    assert torch.equal(weights["subject_layers.s2.weight"], sd["ridge.linears.1.weight"])
    assert torch.equal(weights["blurry.projector.6.bias"], sd["backbone.b_maps_projector.6.bias"])
    assert torch.equal(weights["prior.net.pos_emb"], sd["diffusion_prior.net.learned_query"])
    info = json.loads((run / "run.json").read_text())
    assert info["kind"] == "mindeye2" and [s["id"] for s in info["subjects"]] == ["s1", "s2"]
    cfg = load_config(run / "config.yaml")
    model = build_model(cfg.model, {"s1": 30, "s2": 20})
    model.load_state_dict(weights, strict=True)
    model.eval()
    # Their BrainNetwork.forward written out from the raw tensors (independent of our modules).
    x = torch.randn(4, 20)
    r = F.linear(x, sd["ridge.linears.1.weight"], sd["ridge.linears.1.bias"])[:, None]

    def block(z, p, w):
        z = F.layer_norm(z, (w,), sd[f"{p}.0.weight"], sd[f"{p}.0.bias"])
        z = F.gelu(F.linear(z, sd[f"{p}.1.0.weight"], sd[f"{p}.1.0.bias"]))
        return F.linear(z, sd[f"{p}.1.3.weight"], sd[f"{p}.1.3.bias"])

    res1, res2 = r, r.permute(0, 2, 1)
    for i in range(2):
        r = block(r, f"backbone.mixer_blocks1.{i}", 16) + res1
        res1 = r
        r = block(r.permute(0, 2, 1), f"backbone.mixer_blocks2.{i}", 1) + res2
        res2 = r
        r = r.permute(0, 2, 1)
    expected = F.linear(r.reshape(4, -1), sd["backbone.backbone_linear.weight"], sd["backbone.backbone_linear.bias"])
    with torch.no_grad():
        out = model(x, subject="s2")
    torch.testing.assert_close(out["backbone"], expected.view(4, 3, 8), rtol=1e-5, atol=1e-5)
    assert out["blurry"].shape == (4, 4, 28, 28) and out["blurry_tokens"].shape == (4, 49, 512)


def test_import_mindeye2_refuses_a_v1_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "v1.pth"
    torch.save({"voxel2clip.lin0.0.weight": torch.zeros(2, 3), "net.learned_query": torch.zeros(1)}, ckpt)
    assert main(["import-checkpoint", "--mindeye2", str(ckpt), "--out", str(tmp_path / "r")]) == 2
    assert "--mindeye-v1" in capsys.readouterr().err


@pytest.mark.parametrize("authors", [False, True])
def test_bimixco_permutation_option(monkeypatch, authors):
    """Several subjects: correct labels offset each subject's permutation; the authors' option does not."""
    from mindeye.training import losses
    from mindeye.training.distributed import DistInfo
    from mindeye.training.trainer import HighLevelLoss

    cfg = _small(["model.prior.enabled=false", "model.blurry.enabled=false", "train.mixco_prob=1.0",
                  f"train.bimixco_authors_permutation={str(authors).lower()}"])
    model = build_model(cfg.model, {"a": 10, "b": 12})
    seen = {}
    real = losses.mixco_mix

    def spy_mix(vox, **kw):
        v, p, lam = real(vox, **kw)
        seen.setdefault("perms", []).append(p.clone())
        return v, p, lam

    def spy_loss(preds, targets, perm, lambdas, temperature, self_label="assign"):
        seen["perm"] = perm.clone()
        return preds.sum() * 0

    monkeypatch.setattr(losses, "mixco_mix", spy_mix)
    monkeypatch.setattr(losses, "bimixco_loss", spy_loss)
    batch = {"voxels": [torch.randn(4, 10), torch.randn(4, 12)], "subjects": ["a", "b"],
             "targets": torch.randn(8, 3, 8), "generator": torch.Generator().manual_seed(0), "device": "cpu"}
    HighLevelLoss(cfg, DistInfo()).loss(model, model, batch, epoch=0)
    pa, pb = seen["perms"]
    want = torch.cat([pa, pb if authors else pb + 4])
    assert torch.equal(seen["perm"], want)
    if not authors:  # every label stays inside its own subject's rows
        assert (seen["perm"][4:] >= 4).all()


def test_blurry_loss_is_half_of_l1_plus_a_tenth_of_the_soft_contrastive():
    """SoftCLIP phase, prior off: total = contrastive + 0.5 x (L1(latent) + 0.1 x soft contrastive at 0.2)."""
    from mindeye.training import losses
    from mindeye.training.distributed import DistInfo
    from mindeye.training.trainer import HighLevelLoss

    cfg = _small(["model.prior.enabled=false", "train.loss=softclip", "model.backbone.dropout_block=0.0",
                  "model.blurry.dropout=0.0"])
    model = build_model(cfg.model, {"a": 10}).eval()
    torch.manual_seed(0)
    batch = {"voxels": [torch.randn(6, 10)], "subjects": ["a"], "targets": torch.randn(6, 3, 8),
             "latents": torch.randn(6, 4, 8, 8), "teacher": torch.randn(6, 4, 6),
             "generator": torch.Generator().manual_seed(0), "device": "cpu"}
    total, parts = HighLevelLoss(cfg, DistInfo()).loss(model, model, batch, epoch=0)
    out = model(batch["voxels"][0])
    l1 = (out["blurry"] - batch["latents"]).abs().mean()
    cont = losses.token_soft_cont_loss(out["blurry_tokens"], batch["teacher"], batch["teacher"], 0.2)
    torch.testing.assert_close(parts["blurry"], l1.detach())
    torch.testing.assert_close(total, parts["contrastive"] + 0.5 * (l1 + 0.1 * cont))


def test_feature_mixing_blocks_do_not_reach_the_output():
    """Their BrainNetwork at seq_len=1 (MindEye2's setting): LayerNorm over a length-1 axis returns its
    bias, so each token-mixing step adds a constant to the *input* residual and the feature-mixing
    blocks' outputs are dropped -- perturbing them changes nothing, their gradients are zero. Kept as
    theirs (parameter counts, checkpoints); docs/mindeye2.md."""
    cfg = _small(["model.prior.enabled=false", "model.blurry.enabled=false", "model.backbone.dropout_block=0.0"])
    model = build_model(cfg.model, {"a": 10})
    x = torch.randn(4, 10)
    model.eval()
    with torch.no_grad():
        before = model(x)["projector"].clone()
        for p in model.backbone.feature_blocks.parameters():
            p.add_(torch.randn_like(p))
        after = model(x)["projector"]
    assert torch.equal(before, after)
    model.train()
    model(x)["projector"].square().sum().backward()
    assert all(float(p.grad.abs().max()) == 0 for p in model.backbone.feature_blocks.parameters())
    assert float(model.backbone.head.weight.grad.abs().max()) > 0


@pytest.fixture(scope="module")
def cohort3(tmp_path_factory) -> Path:
    from mindeye.data.simulate import simulate_cohort
    from mindeye.encoders.cache import embed_store

    out = tmp_path_factory.mktemp("me2cohort") / "c"
    simulate_cohort(out, 2, scale="tiny", seed=0, progress=False)
    for j in (1, 2):
        for enc in ("standin-clip-hidden", "standin-vae", "standin-vicregl"):
            embed_store(out / f"subj0{j}", enc, progress=False)
    return out


TINY_TRAIN = ["model.backbone.hidden=64", "model.backbone.n_blocks=1", "model.prior.depth=1",
              "train.batch_size=20", "train.log_every=1", "train.val_every=100"]


@pytest.mark.slow
def test_short_training_run_logs_every_loss_part_and_evaluates(cohort3, tmp_path):
    from mindeye.evaluation.run_eval import evaluate_retrieval
    from mindeye.training.trainer import Trainer

    cfg = load_config("demo-cohort-mindeye2", TINY_TRAIN + ["train.epochs=2", "train.epoch_trials=200"])
    Trainer(cfg, tmp_path / "run", store=[cohort3 / "subj01", cohort3 / "subj02"], device="cpu", progress=False).fit()
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert len(steps) == 2 * (200 // 20)  # train.epoch_trials sets the epoch's length
    assert {"contrastive", "prior", "blurry", "blurry_contrastive"} <= set(steps[-1])
    res = evaluate_retrieval(tmp_path / "run", device="cpu", write=False, subject="subj02")
    assert 0 <= res["brain_to_image"] <= 1
    # the blurry head's latents decode into blurry images (reconstruct-blurry on a mindeye2 run)
    from mindeye.inference.blurry import reconstruct_blurry
    from mindeye.runs import embed_voxels, load_run_model

    index = reconstruct_blurry(tmp_path / "run", tmp_path / "blurry", device="cpu", limit=3, subject="subj02",
                               progress=False)
    recs = list(index["images"].values())
    assert len(recs) == 3 and all((tmp_path / "blurry" / r["file"]).exists() for r in recs)
    cfg, _, model, store = load_run_model(tmp_path / "run", "cpu", subject="subj02")
    assert embed_voxels(model, torch.zeros(2, store.n_voxels), "cpu", which="blurry").shape == (2, 4, 16, 16)


def test_mindeye2_blurry_targets_at_224_px():
    """The paper configs cache the VAE latent and the teacher tokens of the 224 px image, as MindEye2 does."""
    from mindeye.encoders.cache import embed_command
    from mindeye.encoders.targets import target_options

    cfg = load_config("mindeye2-finetune-1session")
    assert target_options(cfg, "sd-vae") == {"image_size": 224} == target_options(cfg, "vicregl-convnext")
    assert target_options(load_config("mindeye-subj01"), "sd-vae") == {}  # v1 keeps 512 px
    assert cfg.model.blurry.side ** 2 == (224 // 32) ** 2  # the teacher's 7 x 7 tokens
    assert "--image-size 224" in embed_command("S", "sd-vae", **target_options(cfg, "sd-vae"))


@pytest.mark.slow
def test_resume_is_exact(cohort3, tmp_path):
    from mindeye.training.trainer import Trainer

    extra = TINY_TRAIN + ["train.epochs=3", "train.mixco_fraction=0.34", "train.epoch_trials=100"]
    stores = [cohort3 / "subj01", cohort3 / "subj02"]
    full, part = tmp_path / "full", tmp_path / "part"
    Trainer(load_config("demo-cohort-mindeye2", extra), full, store=stores, device="cpu", progress=False).fit()
    t = Trainer(load_config("demo-cohort-mindeye2", extra), part, store=stores, device="cpu", progress=False)
    t.cfg.train.max_steps = 2 * 5
    t.fit()
    Trainer(load_config("demo-cohort-mindeye2", extra), part, store=stores, device="cpu", progress=False,
            resume=True).fit()

    def losses(run):
        return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]

    a, b = losses(full), losses(part)
    assert len(a) == len(b) == 15
    np.testing.assert_allclose(a, b, rtol=0, atol=0)
    wa, wb = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
@OPT_IN
def test_ddp_two_processes_match_single_process(cohort3, tmp_path):
    """gloo, 2 processes, 2 subjects, blurry head on (BiMixCo then SoftCLIP)."""
    extra = TINY_TRAIN + ["train.epochs=2", "train.mixco_fraction=0.5", "model.prior.enabled=false",
                          "model.backbone.dropout_block=0.0", "model.blurry.dropout=0.0", "train.epoch_trials=120"]
    sets = sum((["--set", o] for o in extra), [])
    data = sum((["--data", str(cohort3 / f"subj0{j}")] for j in (1, 2)), [])
    common = ["-m", "mindeye", "train", "--config", "demo-cohort-mindeye2", *data, "--device", "cpu", "--no-progress", *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run_ok([sys.executable, *common, "--out", str(tmp_path / "one")], env)
    run_ok([*TORCHRUN_2, *common, "--out", str(tmp_path / "two")], env)

    def parts(run: Path) -> list[float]:  # the global contrastive loss (the logged total has rank 0's L1 only)
        return [json.loads(x)["contrastive"] for x in (run / "metrics.jsonl").read_text().splitlines()
                if '"contrastive"' in x]

    a, b = parts(tmp_path / "one"), parts(tmp_path / "two")
    assert len(a) == len(b) == 12
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    wa, wb = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    # The feature-mixing blocks and the length-1 LayerNorm gains never reach the output (their BrainNetwork
    # with seq_len=1: see test_feature_mixing_blocks_do_not_reach_the_output); their zero gradients are
    # rounding noise that AdamW turns into +-lr steps, so only the live weights are compared.
    dead = [k for k in wa if k.startswith("backbone.feature_blocks.")
            or re.fullmatch(r"backbone\.token_blocks\.\d+\.0\.weight", k)]
    assert dead
    for k in wa:
        if k not in dead:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=2e-5)
