"""Small datasets (issue 23): the ridge-first layout, best-epoch selection, the ridge check, the size-aware
defaults and the low-level ridge baseline, on the tiny simulated subject."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mindeye.config import Config, load_config
from mindeye.models.factory import build_model

TINY_HIGH = ["model.backbone.hidden=64", "model.backbone.n_blocks=1", "model.projector.hidden=32",
             "model.prior.enabled=false", "train.batch_size=32", "train.log_every=5"]
TINY_LOW = ["model.lowlevel.hidden=64", "model.lowlevel.n_blocks=1", "train.batch_size=16", "train.log_every=5"]


def test_ridge_first_models_start_as_their_ridge_map():
    """With model.ridge_residual the untrained networks output exactly the ridge prediction."""
    torch.manual_seed(0)
    cfg = load_config("demo-highlevel", ["model.ridge_residual=true", *TINY_HIGH]).model
    model = build_model(cfg, 30).eval()
    ridge = model.ridge
    ridge.weight.normal_()
    ridge.bias.normal_()
    x = torch.randn(5, 30)
    out = model(x)
    expected = ridge.predict(x).view_as(out["backbone"])
    torch.testing.assert_close(out["backbone"], expected)
    torch.testing.assert_close(out["projector"], expected)  # the residual projector starts as the identity

    low_cfg = load_config("demo-lowlevel", ["model.ridge_residual=true", *TINY_LOW]).model
    low = build_model(low_cfg, 30).eval()
    low.ridge.weight.normal_()
    latent, tokens = low(x)
    assert latent.shape == (5, 4, 16, 16) and tokens is not None
    torch.testing.assert_close(latent, low.ridge.predict(x).view_as(latent))
    # the layout is opt-in: the paper's model has no ridge map
    assert build_model(load_config("demo-highlevel", TINY_HIGH).model, 30).ridge is None


def test_ridge_alpha_is_chosen_on_whole_held_out_images():
    from mindeye.models.ridge import RidgeRegression

    torch.manual_seed(0)
    x, groups = torch.randn(90, 10), torch.arange(90) // 3  # 30 images x 3 repetitions
    y = x @ torch.randn(10, 4)
    r = RidgeRegression(10, 4).fit(x, y, [1.0, 10.0], groups=groups)
    held = set(groups[r.selection["val_index"]].tolist())
    assert set(torch.nonzero(torch.isin(groups, torch.tensor(sorted(held)))).flatten().tolist()) == \
        set(r.selection["val_index"].tolist())  # every repetition of a held-out image is held out
    assert len(held) == 6


def test_user_keys_and_size_settings(tmp_path):
    from mindeye.training.size_defaults import SMALL_DATA_IMAGES, is_user_set, size_settings, user_keys

    own = tmp_path / "mine.yaml"
    own.write_text("extends: demo-highlevel\nmodel: {backbone: {hidden: 32}}\ntrain: {epochs: 3}\n")
    chosen = user_keys(own, ["train.max_lr=1e-4"])
    assert {"model.backbone.hidden", "train.epochs", "train.max_lr"} <= chosen
    assert "data.val_images" not in chosen  # written by the shipped demo-highlevel: a package default
    assert user_keys("demo-highlevel") == set()
    assert is_user_set("model.backbone.hidden", {"model.backbone"}) and not is_user_set("model.ridge_residual", chosen)

    small, why = size_settings(Config(), 100, has_val_split=False)
    assert small["model.ridge_residual"] and small["train.select_best"] and small["data.val_images"] == 20
    assert "100 training images" in why
    assert size_settings(Config(), SMALL_DATA_IMAGES["mindeye"], has_val_split=False)[0] == {}
    low = load_config("demo-lowlevel")
    assert size_settings(low, SMALL_DATA_IMAGES["mindeye"], has_val_split=False)[0]["model.ridge_residual"]
    ridge = load_config("demo-ridge")
    assert size_settings(ridge, 300, has_val_split=False)[0] == {"data.val_images": 60}
    assert "data.val_images" not in size_settings(Config(), 300, has_val_split=True)[0]
    big, why = size_settings(Config(), 300, has_val_split=False, n_voxels=15724)  # NSD voxels -> 257 x 768
    assert "model.ridge_residual" not in big and big["train.select_best"] and "no ridge-first network" in why


def test_sized_config_applies_defaults_but_explicit_settings_win(tiny_store, tmp_path):
    from mindeye.training.size_defaults import sized_config

    cfg, line = sized_config("demo-highlevel", [], tiny_store)  # 240 training images
    assert cfg.model.ridge_residual and cfg.train.select_best and not cfg.data.train_on_val
    assert cfg.data.val_images == 48 and line.startswith("size-aware defaults: 240 training images")
    cfg, line = sized_config("demo-highlevel", ["model.ridge_residual=false", "data.val_images=30"], tiny_store)
    assert not cfg.model.ridge_residual and cfg.data.val_images == 30 and cfg.train.select_best
    assert "kept your data.val_images, model.ridge_residual" in line
    own = tmp_path / "mine.yaml"
    own.write_text("extends: demo-highlevel\ntrain: {select_best: false}\n")
    cfg, _ = sized_config(own, [], tiny_store)
    assert not cfg.train.select_best and cfg.model.ridge_residual
    cfg, line = sized_config("demo-highlevel", ["train.size_defaults=false"], tiny_store)
    assert line is None and not cfg.model.ridge_residual and cfg.data.val_images == 100


def test_ridge_first_run_selects_an_epoch_and_checks_ridge(tiny_store, tmp_path):
    """The selected epoch's weights are the run's; epoch 0 is the ridge map; run.json has the check."""
    from mindeye.runs import load_run
    from mindeye.training.ridge_first import BestEpoch, ridge_check_line
    from mindeye.training.trainer import Trainer

    cfg = load_config("demo-highlevel", [*TINY_HIGH, "model.ridge_residual=true", "train.select_best=true",
                                         "data.val_images=40", "data.train_on_val=false", "train.epochs=2",
                                         "train.val_every=1"])
    run = tmp_path / "run"
    result = Trainer(cfg, run, store=tiny_store, device="cpu", progress=False).fit()
    info = json.loads((run / "run.json").read_text())
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    vals = {r["epoch"]: r for r in records if "val_brain_to_image" in r}
    assert sorted(vals) == [0, 1, 2]
    scores = {e: (r["val_brain_to_image"] + r["val_image_to_brain"]) / 2 for e, r in vals.items()}
    best = max(scores, key=lambda e: (scores[e], -e))  # ties keep the earlier epoch
    assert info["selected_epoch"] == result["selected_epoch"] == best
    check = info["ridge_check"]
    assert check["ridge"] == pytest.approx(scores[0]) and check["model"] == pytest.approx(scores[best])
    assert check["worse_than_ridge"] is False and ridge_check_line(check) is None  # epoch 0 is a candidate
    assert info["ridge_alpha"] in cfg.model.ridge.alphas
    # the run's weights are the selected epoch's (RUN/checkpoint keeps the last one for --resume)
    from safetensors.torch import load_file

    top, kept = load_file(str(run / "model.safetensors")), load_file(str(run / "best.safetensors"))
    assert all(torch.equal(top[k], kept[k]) for k in top)
    loaded = load_run(run)
    assert loaded.model.ridge is not None and float(loaded.model.ridge.weight.abs().sum()) > 0
    assert BestEpoch(run, "mindeye").install(best) is False  # nothing to do when it is the last one asked


def test_ridge_check_says_so_plainly():
    from mindeye.evaluation.run_eval import ridge_warnings
    from mindeye.training.ridge_first import ridge_check, ridge_check_line

    lost = ridge_check("lowlevel", 0.5, 0.7, 60, 100.0)
    line = ridge_check_line(lost, "this lowlevel model")
    assert lost["worse_than_ridge"] and line.startswith("WARNING: this lowlevel model is worse than a plain ridge")
    assert "0.500 vs ridge 0.700" in line and "60 validation images" in line
    assert ridge_check("mindeye", 0.5, None, 60, None) is None
    net = {"run": "h", "name": "high", "kind": "mindeye", "brain_to_image": 0.1, "image_to_brain": 0.2, "n_test": 300,
           "ridge_check": ridge_check("mindeye", 0.3, 0.4, 50, 10.0)}
    ridge = {"run": "r", "name": "ridge", "kind": "ridge", "brain_to_image": 0.1, "image_to_brain": 0.4, "n_test": 300}
    lines = ridge_warnings([net, ridge])
    assert len(lines) == 2 and "run high is worse than a plain ridge" in lines[0]
    assert "retrieves worse than the ridge baseline ridge on this test set" in lines[1]
    assert ridge_warnings([{**net, "ridge_check": None, "image_to_brain": 0.5}, ridge]) == []


def test_lowlevel_ridge_baseline_makes_blurry_images(tiny_store, tmp_path):
    from mindeye.inference.blurry import BlurryImages, reconstruct_blurry
    from mindeye.training.trainer import Trainer

    cfg = load_config("demo-ridge-lowlevel", ["data.val_images=20"])
    res = Trainer(cfg, tmp_path / "ridge-low", store=tiny_store, device="cpu", progress=False).fit()
    assert 0 < res["latent_corr"] <= 1 and res["alpha"] in cfg.model.ridge.alphas
    index = reconstruct_blurry(tmp_path / "ridge-low", tmp_path / "blurry", device="cpu", limit=3, progress=False)
    assert len(index["images"]) == 3
    first = int(next(iter(index["images"])))
    assert BlurryImages(tmp_path / "blurry").get(first).shape[-1] == 3


def test_train_cli_prints_the_size_aware_line(tiny_store, tmp_path, capsys):
    from mindeye.cli import main

    sets = sum((["--set", o] for o in [*TINY_HIGH, "train.epochs=1"]), [])
    rc = main(["train", "--config", "demo-highlevel", "--data", str(tiny_store), "--out", str(tmp_path / "run"),
               "--no-progress", "--device", "cpu", *sets, "--set", "model.ridge_residual=false"])
    captured = capsys.readouterr()
    out = captured.out
    assert rc == 0
    line = next(x for x in captured.err.splitlines() if x.startswith("size-aware defaults:"))  # a log line
    assert "240 training images (< 1000 for a mindeye run)" in line and "train.select_best=true" in line
    assert "kept your model.ridge_residual" in line
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "ridge_check" in info  # a network without the ridge map is checked against a fitted ridge
    if info["ridge_check"]["worse_than_ridge"]:
        assert out.strip().splitlines()[-1].startswith("WARNING: this mindeye model is worse than a plain ridge")


def test_train_images_subset_is_seeded(tiny_store):
    from mindeye.data.store import SubjectStore
    from mindeye.training.data import train_val_images

    store = SubjectStore(tiny_store)
    a, _ = train_val_images(store, load_config("demo-ridge", ["data.train_images=50", "data.val_images=10"]))
    b, va = train_val_images(store, load_config("demo-ridge", ["data.train_images=50", "data.val_images=10"]))
    c, _ = train_val_images(store, load_config("demo-ridge", ["data.train_images=50", "seed=1", "data.val_images=10"]))
    assert len(a) == 40 and np.array_equal(a, b) and not np.array_equal(a, c)
    assert set(va) <= set(store.image_indices("train")) and not set(va) & set(a)
    from mindeye.errors import MindEyeError

    with pytest.raises(MindEyeError, match="data.train_images=9999"):
        train_val_images(store, load_config("demo-ridge", ["data.train_images=9999"]))


def test_ridge_first_run_resumes_exactly(tiny_store, tmp_path):
    """Stopped part-way through epoch 2 and resumed: the same weights and selection as in one go."""
    from safetensors.torch import load_file

    from mindeye.training.trainer import Trainer

    sets = [*TINY_HIGH, "model.ridge_residual=true", "train.select_best=true", "data.val_images=40",
            "data.train_on_val=false", "train.epochs=2", "train.val_every=1"]
    Trainer(load_config("demo-highlevel", sets), tmp_path / "full", store=tiny_store, device="cpu",
            progress=False).fit()
    part = Trainer(load_config("demo-highlevel", sets), tmp_path / "part", store=tiny_store, device="cpu",
                   progress=False)
    records = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    per_epoch = next(r["step"] for r in records if r.get("epoch") == 1 and "val_brain_to_image" in r)
    part.cfg.train.max_steps = per_epoch + per_epoch // 2
    part.fit()
    Trainer(load_config("demo-highlevel", sets), tmp_path / "part", store=tiny_store, device="cpu", progress=False,
            resume=True).fit()
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "part" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    info = [json.loads((tmp_path / r / "run.json").read_text()) for r in ("full", "part")]
    assert info[0]["selected_epoch"] == info[1]["selected_epoch"] and info[0]["ridge_check"] == info[1]["ridge_check"]


def test_benchmark_configs_and_table(tiny_store):
    """benchmarks/small_data.py: the three methods' configs at one size, and its mean ± sd table."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "small_data.py"
    spec = importlib.util.spec_from_file_location("small_data_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ridge_high, ridge_low, _ = bench.configs("ridge", 100, 100, 1, tiny_store)
    today_high, today_low, _ = bench.configs("today", 100, 100, 1, tiny_store, epochs=3)
    new_high, new_low, line = bench.configs("new", 100, 100, 1, tiny_store, epochs=3)
    assert ridge_low.model.ridge.target == "lowlevel" and ridge_high.data.val_images == 20
    assert not today_high.model.ridge_residual and today_high.data.val_images == 20 and today_high.train.epochs == 3
    assert new_high.model.ridge_residual and new_low.model.ridge_residual and new_high.data.val_images == 20
    assert not new_high.model.prior.enabled and new_high.data.train_images == 100 and "100 training images" in line
    rows = [{"method": m, "size": 100, "seed": s, "image_to_brain": 0.1 * s, "brain_to_image": 0.05, "pixcorr": 0.4,
             "ssim": 0.75} for m in bench.METHODS for s in (1, 2)]
    summary = bench.summarise(rows)
    assert summary["100"]["new"]["image_to_brain"][:2] == pytest.approx([0.15, 0.0707], abs=1e-4)
    table = bench.markdown(summary, 2)
    assert "| 100 | MindEye, size-aware defaults | 15.0 ± 7.1% | 5.0 ± 0.0% | .400 ± .000 | .750 ± .000 |" in table
