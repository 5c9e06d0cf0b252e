"""The Python API (mindeye.load_run, MindEyePipeline) on tiny trained runs, against the CLI and plain torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mindeye
from mindeye.cli import main
from mindeye.config import load_config
from mindeye.data.splits import load_eval_split
from mindeye.data.store import SubjectStore
from mindeye.errors import MindEyeError
from mindeye.training.trainer import Trainer

TOY = ["data.val_images=0", "train.val_every=100"]
TOY_HIGH = TOY + ["train.max_steps=6", "model.backbone.hidden=64", "model.backbone.n_blocks=1",
                  "model.projector.hidden=32", "model.prior.depth=1", "model.prior.heads=2", "model.prior.dim_head=16",
                  "model.prior.sample_steps=5"]
TOY_LOW = TOY + ["train.max_steps=3", "train.lowlevel_contrastive_weight=0", "model.lowlevel.hidden=64",
                 "model.lowlevel.n_blocks=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_store) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("api")
    store = tiny_store
    Trainer(load_config("demo-highlevel", TOY_HIGH), root / "high", store=store, device="cpu", progress=False).fit()
    Trainer(load_config("demo-lowlevel", TOY_LOW), root / "low", store=store, device="cpu", progress=False).fit()
    Trainer(load_config("demo-ridge", TOY), root / "ridge", store=store, device="cpu", progress=False).fit()
    return {"store": store, "high": root / "high", "low": root / "low", "ridge": root / "ridge"}


@pytest.fixture(scope="module")
def test_split(runs):
    subject = SubjectStore(runs["store"])
    return load_eval_split(subject, subject.image_indices("test"), "averaged")


@pytest.fixture(scope="module")
def pipe(runs):
    return mindeye.MindEyePipeline.from_run(runs["high"], lowlevel=runs["low"], image_model="demo-latent-diffusion",
                                            device="cpu")


def test_load_run_without_the_store(runs, tmp_path):
    import shutil

    moved = tmp_path / "high"
    shutil.copytree(runs["high"], moved)
    info = json.loads((moved / "run.json").read_text())
    info["store"] = str(tmp_path / "gone")  # the store is not needed
    (moved / "run.json").write_text(json.dumps(info))
    run = mindeye.load_run(moved)
    assert (run.kind, run.n_voxels, run.name) == ("mindeye", 600, "demo-highlevel")
    assert not run.model.training and run.config.model.backbone.tokens == 17
    # An older run.json without n_voxels: the count comes from the weights' input layer.
    del info["n_voxels"]
    (moved / "run.json").write_text(json.dumps(info))
    assert mindeye.load_run(moved).n_voxels == 600
    assert mindeye.load_run(runs["ridge"]).n_voxels == mindeye.load_run(runs["low"]).n_voxels == 600
    with pytest.raises(MindEyeError, match=r"is not a mindeye run directory .*create one with "
                                           r"mindeye.train\(CONFIG, data=STORE, out=RUN_DIR\)$"):
        mindeye.load_run(tmp_path)


def test_embed_matches_the_model_and_accepts_tensors(pipe, test_split):
    x = test_split.voxels[:5]
    emb = pipe.embed(x)  # a float16 torch tensor
    with torch.no_grad():
        ref = pipe.high.model(x.float())
    np.testing.assert_allclose(emb.backbone, ref["backbone"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(emb.projector, ref["projector"].numpy(), rtol=1e-5, atol=1e-6)
    assert emb.backbone.dtype == np.float32 and emb.retrieval is emb.projector
    one = pipe.embed(x[0].float().numpy())  # a single sample (n_voxels,)
    np.testing.assert_allclose(one.backbone[0], emb.backbone[0], rtol=1e-5, atol=1e-6)


def test_bad_voxels_give_one_clear_error(pipe):
    with pytest.raises(MindEyeError) as exc:
        pipe.embed(np.zeros((3, 599), np.float32))
    assert str(exc.value) == ("voxels must have shape (n_samples, 600) for this run (or (600,) for one sample), "
                              "got (3, 599)")
    bad = np.zeros((2, 600), np.float32)
    bad[1, [3, 4]] = [np.nan, np.inf]
    with pytest.raises(MindEyeError, match=r"^voxels contain 2 non-finite values \(NaN/inf\)"):
        pipe.blurry(bad)
    with pytest.raises(MindEyeError, match="voxels must be real numbers, got dtype torch.bool"):
        pipe.embed(torch.ones(2, 600, dtype=torch.bool))
    with pytest.raises(MindEyeError, match=r"voxels hold no samples"):
        pipe.embed(np.zeros((0, 600)))


def test_retrieve_ranks_by_cosine_both_ways(pipe, runs, test_split):
    from mindeye.encoders.targets import Targets

    x = test_split.voxels[:6]
    cands = Targets(runs["store"], "standin-clip-hidden", None).get(test_split.image_index[:9]).numpy()
    hits = pipe.retrieve(x, cands, k=4)
    brain = pipe.embed(x).projector.reshape(6, -1).astype(np.float64)
    img = cands.reshape(9, -1).astype(np.float64)
    sim = (brain / np.linalg.norm(brain, axis=1, keepdims=True)) @ (img / np.linalg.norm(img, axis=1, keepdims=True)).T
    np.testing.assert_allclose(hits.similarity, sim, atol=1e-5)
    assert hits.brain_to_image.indices.shape == (6, 4) and hits.image_to_brain.indices.shape == (9, 4)
    np.testing.assert_array_equal(hits.brain_to_image.indices, np.argsort(-sim, axis=1, kind="stable")[:, :4])
    np.testing.assert_array_equal(hits.image_to_brain.indices, np.argsort(-sim.T, axis=1, kind="stable")[:, :4])
    np.testing.assert_allclose(hits.image_to_brain.scores, -np.sort(-sim.T, axis=1)[:, :4], atol=1e-5)
    # uint8 images are encoded with the run's target encoder first: the same ranking as its cached targets.
    images = np.stack([SubjectStore(runs["store"]).images[i] for i in test_split.image_index[:9]])
    np.testing.assert_array_equal(pipe.retrieve(x, images, k=4).brain_to_image.indices, hits.brain_to_image.indices)
    with pytest.raises(MindEyeError, match=r"candidates must be \(m, 17, 64\) embeddings"):
        pipe.retrieve(x, cands[:, :5])
    with pytest.raises(MindEyeError, match="k must be at least 1"):
        pipe.retrieve(x, cands, k=0)


def test_ridge_run_embeds_and_retrieves(runs, test_split):
    pipe = mindeye.MindEyePipeline.from_run(runs["ridge"], device="cpu")
    emb = pipe.embed(test_split.voxels[:3])
    assert emb.projector is None and emb.backbone.shape == (3, 17, 64) and emb.retrieval is emb.backbone
    with pytest.raises(MindEyeError, match="has no diffusion prior"):
        pipe.reconstruct(test_split.voxels[:1], samples=1, num_inference_steps=1)
    with pytest.raises(MindEyeError, match="blurry\\(\\) needs a low-level run"):
        pipe.blurry(test_split.voxels[:1])
    with pytest.raises(MindEyeError, match="is a low-level run; pass it as lowlevel="):
        mindeye.MindEyePipeline.from_run(runs["low"], device="cpu")


def test_api_images_equal_the_cli_outputs(pipe, runs, test_split, tmp_path):
    from mindeye.utils.images import load_png

    out = tmp_path / "cli"
    assert main(["reconstruct", "--run", str(runs["high"]), "--lowlevel", str(runs["low"]), "--generator",
                 "demo-latent-diffusion", "--samples", "2", "--steps", "3", "--limit", "2", "--seed", "5",
                 "--img2img-strength", "0.5",  # start at step 2 of 3: img2img from the blurry image
                 "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    index = json.loads((out / "index.json").read_text())
    x, ids = test_split.voxels[:2], test_split.image_index[:2]
    blurry = pipe.blurry(x)
    for k, i in enumerate(ids):  # reconstruct-blurry's PNGs hold the same pixels
        np.testing.assert_array_equal(blurry[k], load_png(out / "blurry" / "images" / f"{int(i):05d}.png"))
    api = pipe.reconstruct(x, samples=2, num_inference_steps=3, seed=5, img2img_strength=0.5, image_index=ids, return_all=True)
    assert api.images.dtype == np.uint8 and api.candidates.shape[:2] == (2, 2)
    for k, i in enumerate(ids):
        rec = index["images"][str(int(i))]
        assert api.chosen[k] == rec["chosen"] and api.seeds[k] == rec["seed"]
        np.testing.assert_allclose(api.scores[k], rec["scores"], rtol=1e-6)
        np.testing.assert_array_equal(api.images[k], load_png(out / rec["file"]))
        np.testing.assert_array_equal(api.images[k], api.candidates[k, api.chosen[k]])
    # Pure noise (no blurry start) differs from img2img, and a different seed changes the images.
    noise = pipe.reconstruct(x, samples=2, num_inference_steps=3, seed=5, img2img_strength=0.5, image_index=ids, blurry=False)
    assert noise.blurry is None and not np.array_equal(noise.images, api.images)
    other = pipe.reconstruct(x, samples=2, num_inference_steps=3, seed=6, img2img_strength=0.5, image_index=ids, blurry=blurry)
    assert not np.array_equal(other.images, api.images)
    with pytest.raises(MindEyeError, match="image_index must hold 2 distinct integers"):
        pipe.reconstruct(x, samples=1, num_inference_steps=1, image_index=[3, 3])
    with pytest.raises(MindEyeError, match="got 1 blurry images for 2 brain samples"):
        pipe.reconstruct(x, samples=1, num_inference_steps=1, blurry=blurry[:1])


def test_save_images_writes_pngs(tmp_path):
    from mindeye.utils.images import load_png

    imgs = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    paths = mindeye.save_images(imgs, tmp_path / "o")
    assert [p.name for p in paths] == ["00000.png", "00001.png"]
    np.testing.assert_array_equal(load_png(paths[1]), imgs[1])
    with pytest.raises(MindEyeError, match=r"images must be uint8 \(n, H, W, 3\) images, got float32"):
        mindeye.save_images(imgs.astype(np.float32), tmp_path / "o")


# -- diffusers conventions: image_model=, generator=torch.Generator, output_type, .to(), __call__ --------------
def test_image_model_keyword_and_the_deprecated_generator_keyword(runs):
    with pytest.warns(DeprecationWarning, match=r"from_run\(generator=...\) is deprecated.*image_model="):
        old = mindeye.MindEyePipeline.from_run(runs["high"], generator="demo-latent-diffusion", device="cpu")
    assert old.image_model.name == "demo-latent-diffusion"
    with pytest.raises(MindEyeError, match="from_run\\(\\) takes no torch.Generator"):
        mindeye.MindEyePipeline.from_run(runs["high"], image_model=torch.Generator(), device="cpu")
    with pytest.raises(MindEyeError, match="image_model= and its old name were both given"), \
            pytest.warns(DeprecationWarning):
        mindeye.MindEyePipeline.from_run(runs["high"], image_model="demo-latent-diffusion",
                                         generator="demo-latent-diffusion", device="cpu")
    with pytest.raises(TypeError, match="unexpected keyword argument 'generatr'"):
        mindeye.MindEyePipeline.from_run(runs["high"], generatr="x", device="cpu")


def test_torch_generator_seeds_sampling_and_call_reconstructs(pipe, test_split):
    x = test_split.voxels[:2]
    kw = {"samples": 2, "num_inference_steps": 2}
    a = pipe(x, generator=torch.Generator().manual_seed(7), **kw)
    b = pipe.reconstruct(x, generator=torch.Generator().manual_seed(7), **kw)
    np.testing.assert_array_equal(a.images, b.images)
    # One seed is drawn from the generator (as an independent draw computes it); samples then follow it.
    drawn = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(7)).item())
    assert a.settings["seed"] == drawn
    np.testing.assert_array_equal(pipe(x, seed=drawn, **kw).images, a.images)
    g = torch.Generator().manual_seed(7)
    first, second = pipe(x, generator=g, **kw), pipe(x, generator=g, **kw)  # the generator advances
    assert first.settings["seed"] != second.settings["seed"] and not np.array_equal(first.images, second.images)
    with pytest.raises(MindEyeError, match="pass seed= or generator=, not both"):
        pipe(x, seed=1, generator=torch.Generator(), **kw)
    with pytest.raises(MindEyeError, match="generator= takes a torch.Generator.*image_model="):
        pipe(x, generator="demo-latent-diffusion", **kw)
    with pytest.warns(DeprecationWarning, match=r"reconstruct\(steps=...\).*num_inference_steps="):
        old = pipe.reconstruct(x, samples=2, steps=2, seed=drawn)
    np.testing.assert_array_equal(old.images, a.images)


def test_output_types_hold_the_same_pixels(pipe, test_split):
    from PIL import Image

    x = test_split.voxels[:2]
    ref = pipe(x, samples=1, num_inference_steps=1, return_all=True)
    pil = pipe(x, samples=1, num_inference_steps=1, return_all=True, output_type="pil")
    assert all(isinstance(im, Image.Image) for im in pil.images) and isinstance(pil.candidates[0][0], Image.Image)
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in pil.images]), ref.images)
    np.testing.assert_array_equal(np.asarray(pil.blurry[1]), ref.blurry[1])
    pt = pipe(x, samples=1, num_inference_steps=1, output_type="pt")
    assert pt.images.shape == (2, 3, *ref.images.shape[1:3]) and pt.images.dtype == torch.float32
    np.testing.assert_allclose(pt.images.permute(0, 2, 3, 1).numpy() * 255, ref.images, atol=1e-4)
    blurry_pil = pipe.blurry(x, output_type="pil")
    np.testing.assert_array_equal(np.asarray(blurry_pil[0]), pipe.blurry(x)[0])
    with pytest.raises(MindEyeError, match='output_type must be "np"'):
        pipe.blurry(x, output_type="latent")


def test_to_moves_and_sets_the_image_model_dtype(runs):
    p = mindeye.MindEyePipeline.from_run(runs["high"], image_model="demo-latent-diffusion", device="cpu")
    assert p.to("cpu") is p and p.dtype is None
    assert p.to(torch.float64).dtype == torch.float64 and p.image_model.dtype == torch.float64
    assert p.to("cpu", torch.float32).image_model.dtype == torch.float32
    with pytest.raises(MindEyeError, match=r'^device="mps" requested but Apple MPS is not available; use '
                                           r'device="cpu"$'):
        p.to("mps")


def test_image_grid_rows_resized_to_one_size(pipe, test_split, runs):
    from PIL import Image

    x, ids = test_split.voxels[:3], test_split.image_index[:3]
    truth = np.stack([SubjectStore(runs["store"]).images[i] for i in ids])
    out = pipe(x, samples=1, num_inference_steps=1)
    grid = mindeye.make_image_grid(truth=truth, reconstruction=out, size=32, labels=False, gap=2)
    assert grid.size == (3 * 32 + 2 * 2, 3 * 32 + 2 * 2)  # truth, blurry (from the Reconstruction), reconstruction
    arr = np.asarray(grid)
    expect = np.asarray(Image.fromarray(truth[1]).resize((32, 32), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(arr[0:32, 34:66], expect)
    expect = np.asarray(Image.fromarray(out.blurry[2]).resize((32, 32), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(arr[34:66, 68:100], expect)
    labelled = mindeye.make_image_grid(truth=truth, retrieved=list(Image.fromarray(t) for t in truth), size=32)
    assert labelled.size[0] > 3 * 32 + 4 and labelled.size[1] == 2 * 32 + 2
    with pytest.raises(MindEyeError, match="rows need the same number of images.*truth: 3, blurry: 2"):
        mindeye.make_image_grid(truth=truth, blurry=out.blurry[:2])


def test_reprs_are_short_and_say_what_matters(pipe, test_split, runs):
    x = test_split.voxels[:4]
    store = mindeye.load_store(runs["store"])
    rec = pipe(x[:1], samples=2, num_inference_steps=1)
    objects = {
        "run": (pipe.high, ["demo-highlevel", "mindeye", "n_voxels=600", "params="]),
        "pipeline": (pipe, ["demo-highlevel", "demo-lowlevel", "demo-latent-diffusion", "600 voxels", "cpu"]),
        "store": (store, ["voxels=600", f"trials={store.n_trials}", "test=", "images="]),
        "embeddings": (pipe.embed(x), ["n=4", "(4, 17, 64) float32"]),
        "retrieval": (pipe.retrieve(x, np.random.default_rng(0).normal(size=(6, 17, 64)), k=2),
                      ["brain_samples=4", "candidates=6", "k=2"]),
        "reconstruction": (rec, ["n=1", f"array{rec.images.shape} uint8", "samples=2", "demo-latent-diffusion"]),
        "split": (store.test_split(), ["'test'", "averaged", f"{len(store.image_indices('test'))}"]),
    }
    objects["ranking"] = (objects["retrieval"][0].brain_to_image, ["queries=4", "k=2"])
    for name, (obj, words) in objects.items():
        text = repr(obj)
        assert len(text) < 300, (name, len(text), text)
        assert "object at 0x" not in text and "array([" not in text and "tensor([" not in text, (name, text)
        for word in words:
            assert word in text, (name, word, text)


# -- the public data and training API ------------------------------------------------------------------------
def test_store_splits_match_an_independent_average(runs):
    store = mindeye.load_store(runs["store"])
    assert mindeye.load_store(store) is store and isinstance(store, mindeye.SubjectStore)
    test = store.test_split(repetitions="available")
    trials = store.trials
    rows = np.flatnonzero(trials.split == "test")
    assert list(test.image_index) == sorted(set(trials.image_index[rows].tolist()))
    for k in (0, len(test) - 1):
        mine = rows[trials.image_index[rows] == test.image_index[k]]
        np.testing.assert_allclose(test.voxels[k], np.asarray(store.voxels[mine], np.float64).mean(0), atol=1e-5)
        assert test.image_ids[k] == store.image_ids[test.image_index[k]]
    assert test.voxels.dtype == np.float32 and test.voxels.shape == (len(test), 600)
    train = store.train_split()
    assert len(train) == int((trials.split == "train").sum()) and train.mode == "single"
    np.testing.assert_array_equal(train.voxels[3], np.asarray(store.voxels[np.flatnonzero(trials.split == "train")[3]],
                                                                np.float32))
    assert len(store.test_split("single")) == len(rows)
    # The default pads images seen < 3 times as evaluation does (data.test_repetitions=pad3): the trainer's own split.
    padded, ref = store.test_split(), load_eval_split(store, store.image_indices("test"), "averaged", "pad3")
    np.testing.assert_array_equal(padded.image_index, ref.image_index)
    np.testing.assert_allclose(padded.voxels, ref.voxels.float().numpy(), atol=2e-3)  # float16 vs float32
    counts = np.bincount(trials.image_index[rows])[padded.image_index]
    assert (counts < 3).any() and not np.allclose(padded.voxels[counts == 2], test.voxels[counts == 2], atol=1e-3)


def test_embed_returns_the_cached_targets(runs):
    from mindeye.encoders.cache import load_targets

    emb = mindeye.embed(runs["store"], "standin-clip-hidden", device="cpu")
    ref = load_targets(runs["store"], "standin-clip-hidden")
    assert emb.shape == ref.shape == (SubjectStore(runs["store"]).n_images, 17, 64)
    np.testing.assert_array_equal(emb[:5], ref[:5])
    with pytest.raises(MindEyeError, match="encoder must be an encoder name"):
        mindeye.embed(runs["store"], 3)


def test_train_from_python_with_overrides_and_overwrite(runs, tmp_path, capsys):
    out = tmp_path / "ridge"
    run = mindeye.train("demo-ridge", data=mindeye.load_store(runs["store"]), out=out, device="cpu",
                        overrides={"data.val_images": 0}, train__val_every=100, seed=3)
    assert isinstance(run, mindeye.Run) and run.kind == "ridge" and run.path == out
    assert (run.config.data.val_images, run.config.train.val_every, run.config.seed) == (0, 100, 3)
    with pytest.raises(MindEyeError) as err:
        mindeye.train("demo-ridge", data=runs["store"], out=out, device="cpu")
    assert "resume=True to continue it, overwrite=True to train it again" in str(err.value)
    assert "--resume" not in str(err.value) and "--out" not in str(err.value)
    again = mindeye.train("demo-ridge", data=runs["store"], out=out, device="cpu", overwrite=True,
                          overrides=["data.val_images=0"])
    assert again.config.train.val_every != 100  # a fresh run with the new settings
    # The same error from the command line speaks flags.
    assert main(["train", "--config", "demo-ridge", "--data", str(runs["store"]), "--out", str(out),
                 "--device", "cpu", "--no-progress"]) == 2
    cli_err = capsys.readouterr().err
    assert "pass --resume to continue it or choose another --out" in cli_err and "=True" not in cli_err
    with pytest.raises(MindEyeError, match="unknown keyword epochs=; config values are passed as section__key"):
        mindeye.train("demo-ridge", data=runs["store"], out=tmp_path / "x", epochs=3)
    with pytest.raises(MindEyeError, match="not a mindeye run directory; overwrite=True only replaces a run"):
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "notes.txt").write_text("keep")
        mindeye.train("demo-ridge", data=runs["store"], out=tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


# -- one error, two renderings ---------------------------------------------------------------------------------
def test_errors_speak_python_from_the_api_and_flags_from_the_cli(runs, tmp_path, capsys):
    from mindeye.data.simulate import simulate_subject

    # 1. a device this machine lacks
    with pytest.raises(MindEyeError) as err:
        mindeye.load_run(runs["ridge"], device="mps")
    assert str(err.value) == 'device="mps" requested but Apple MPS is not available; use device="cpu"'
    assert main(["embed", "--data", str(runs["store"]), "--encoder", "standin-clip-hidden", "--device", "mps"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "error: --device mps requested but Apple MPS is not available; use --device cpu")
    # 2. an output that exists
    (tmp_path / "sim").mkdir()
    with pytest.raises(MindEyeError) as err:
        simulate_subject(tmp_path / "sim", scale="tiny", progress=False)
    assert "choose another output path, delete it, or pass overwrite=True to replace it" in str(err.value)
    assert main(["simulate", "--scale", "tiny", "--out", str(tmp_path / "sim"), "--no-progress"]) == 2
    cli_err = capsys.readouterr().err
    assert "choose another --out path, delete it, or pass --overwrite to replace it" in cli_err
    assert "overwrite=True" not in cli_err
    # 3. image-model weights that are not on this machine
    p = mindeye.MindEyePipeline.from_run(runs["high"], image_model="versatile-diffusion",
                                         image_model_weights=str(tmp_path / "no-vd"), device="cpu")
    with pytest.raises(MindEyeError) as err:
        p.image_model  # noqa: B018 - loading it raises
    assert 'pass image_model_weights="/path/to/local/copy"' in str(err.value) and "--weights" not in str(err.value)
    assert err.value.render("cli").count("pass --weights /path/to/local/copy") == 1
    # (the CLI's reconstruct checks the run against the generator before loading weights; main() prints render("cli"))
    # 4. a directory that is not a run: Python names mindeye.train, the CLI the command
    assert main(["evaluate", "retrieval", "--run", str(tmp_path / "sim"), "--device", "cpu"]) == 2
    cli_err = capsys.readouterr().err
    assert "create one with `mindeye train --config CONFIG --out RUN_DIR`" in cli_err and "mindeye.train(" not in cli_err


def test_import_mindeye_stays_light():
    import subprocess
    import sys

    code = ("import sys, mindeye; names = dir(mindeye); "
            "assert {'train', 'load_store', 'embed', 'make_image_grid'} <= set(names), names; "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_progress_bars_default_on_in_notebooks_only(monkeypatch):
    import sys
    import types

    from mindeye.pipeline import _show_progress, in_notebook

    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert not in_notebook() and _show_progress(None) is False and _show_progress(True) is True

    class ZMQInteractiveShell:  # what a Jupyter kernel's get_ipython() returns
        pass

    class TerminalInteractiveShell:
        pass

    fake = types.ModuleType("IPython")
    fake.get_ipython = ZMQInteractiveShell
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert in_notebook() and _show_progress(None) is True and _show_progress(False) is False
    fake.get_ipython = TerminalInteractiveShell  # plain IPython in a terminal: no widgets
    assert not in_notebook()


def test_simulate_exist_ok_reuses_only_the_same_simulation(runs):
    before = (Path(runs["store"]) / "voxels.npy").stat().st_mtime_ns
    store = mindeye.simulate(runs["store"], scale="tiny", seed=0, exist_ok=True)  # the conftest store: tiny, seed 0
    assert isinstance(store, mindeye.SubjectStore) and (Path(runs["store"]) / "voxels.npy").stat().st_mtime_ns == before
    with pytest.raises(MindEyeError, match="holds another store .*not the 'tiny' subject with seed 1.*overwrite=True"):
        mindeye.simulate(runs["store"], scale="tiny", seed=1, exist_ok=True)
    with pytest.raises(MindEyeError, match="already exists; choose another output path"):
        mindeye.simulate(runs["store"], scale="tiny", seed=0)


def test_reconstruct_setting_errors_name_the_python_arguments(pipe, test_split):
    x = test_split.voxels[:1]
    with pytest.raises(MindEyeError, match=r"^samples, num_inference_steps and batch_size must be at least 1$") as err:
        pipe(x, samples=0)
    assert err.value.render("cli") == "--samples, --steps and --batch-brains must be at least 1"
    with pytest.raises(MindEyeError, match=r"^img2img_strength must be between 0") as err:
        pipe(x, samples=1, img2img_strength=2.0)
    assert err.value.render("cli").startswith("--img2img-strength must be between 0")
