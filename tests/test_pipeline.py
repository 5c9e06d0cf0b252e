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
    return mindeye.MindEyePipeline.from_run(runs["high"], lowlevel=runs["low"], generator="demo-latent-diffusion",
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
    with pytest.raises(MindEyeError, match="is not a mindeye run directory"):
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
        pipe.reconstruct(test_split.voxels[:1], samples=1, steps=1)
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
    api = pipe.reconstruct(x, samples=2, steps=3, seed=5, img2img_strength=0.5, image_index=ids, return_all=True)
    assert api.images.dtype == np.uint8 and api.candidates.shape[:2] == (2, 2)
    for k, i in enumerate(ids):
        rec = index["images"][str(int(i))]
        assert api.chosen[k] == rec["chosen"] and api.seeds[k] == rec["seed"]
        np.testing.assert_allclose(api.scores[k], rec["scores"], rtol=1e-6)
        np.testing.assert_array_equal(api.images[k], load_png(out / rec["file"]))
        np.testing.assert_array_equal(api.images[k], api.candidates[k, api.chosen[k]])
    # Pure noise (no blurry start) differs from img2img, and a different seed changes the images.
    noise = pipe.reconstruct(x, samples=2, steps=3, seed=5, img2img_strength=0.5, image_index=ids, blurry=False)
    assert noise.blurry is None and not np.array_equal(noise.images, api.images)
    other = pipe.reconstruct(x, samples=2, steps=3, seed=6, img2img_strength=0.5, image_index=ids, blurry=blurry)
    assert not np.array_equal(other.images, api.images)
    with pytest.raises(MindEyeError, match="image_index must hold 2 distinct integers"):
        pipe.reconstruct(x, samples=1, steps=1, image_index=[3, 3])
    with pytest.raises(MindEyeError, match="got 1 blurry images for 2 brain samples"):
        pipe.reconstruct(x, samples=1, steps=1, blurry=blurry[:1])


def test_save_images_writes_pngs(tmp_path):
    from mindeye.utils.images import load_png

    imgs = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    paths = mindeye.save_images(imgs, tmp_path / "o")
    assert [p.name for p in paths] == ["00000.png", "00001.png"]
    np.testing.assert_array_equal(load_png(paths[1]), imgs[1])
    with pytest.raises(MindEyeError, match=r"images must be uint8 \(n, H, W, 3\) images, got float32"):
        mindeye.save_images(imgs.astype(np.float32), tmp_path / "o")
