"""The target cache: one float16 target per store image, keyed so stale caches are refused, resumable."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mindeye.data.store import StoreWriter, TrialTable
from mindeye.encoders import embed_store, get_encoder, load_targets, sample_views
from mindeye.encoders.cache import find_cache, read_manifest
from mindeye.errors import MindEyeError, WeightsUnavailableError

TINY_CLIP = dict(image_size=32, patch_size=2, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, projection_dim=16)
N_IMAGES = 10


def make_store(path: Path, seed: int = 0, n_images: int = N_IMAGES, size: int = 32) -> Path:
    rng = np.random.default_rng(seed)
    n_trials = 2 * n_images
    w = StoreWriter(path, n_trials=n_trials, n_voxels=5, n_images=n_images, image_size=size)
    w.write_voxels(0, rng.normal(size=(n_trials, 5)).astype(np.float32))
    low = torch.tensor(rng.uniform(0, 1, (n_images, 3, 4, 4)), dtype=torch.float32)
    img = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    w.write_images(0, (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    image_index = np.repeat(np.arange(n_images), 2)
    split = np.where(image_index < n_images - 3, "train", "test")
    w.set_trials(TrialTable(image_index=image_index, session=np.ones(n_trials, dtype=np.int64),
                            repetition=np.tile([0, 1], n_images), split=split))
    w.set_images([f"img{i}" for i in range(n_images)])
    return w.finalize({"source": "test", "subject": "t"})


@pytest.fixture()
def store(tmp_path) -> Path:
    return make_store(tmp_path / "store")


def _images(store: Path) -> np.ndarray:
    return np.load(store / "images.npy")


class Interrupt(Exception):
    pass


class FailingEncoder(torch.nn.Module):
    """Wraps an encoder and raises after ``fail_after`` encode calls (a killed run)."""

    def __init__(self, inner, fail_after: int) -> None:
        super().__init__()
        self.inner, self.fail_after, self.calls = inner, fail_after, 0
        for attr in ("name", "output_shape", "preprocessing", "augmentation", "fingerprint", "device"):
            setattr(self, attr, getattr(inner, attr))

    def encode(self, images):
        self.calls += 1
        if self.calls > self.fail_after:
            raise Interrupt
        return self.inner.encode(images)


def test_embed_writes_float16_targets_equal_to_the_encoder(store):
    out = embed_store(store, "clip-vit-l14-hidden", random_init=True, config=TINY_CLIP, batch_size=4,
                      chunk_size=6, progress=False)
    enc = get_encoder("clip-vit-l14-hidden", random_init=True, config=TINY_CLIP)
    assert out.parent == store / "targets" and out.name == f"clip-vit-l14-hidden-{enc.fingerprint[:12]}"
    m = read_manifest(out)
    assert m["complete"] and m["chunks_done"] == m["n_chunks"] == 2 and m["n_images"] == N_IMAGES
    assert m["dtype"] == "float16" and m["output_shape"] == [257, 16] and m["fingerprint"] == enc.fingerprint
    assert m["preprocessing"] == enc.preprocessing and m["weights"] == "random-init"
    targets = load_targets(store, "clip-vit-l14-hidden", random_init=True, config=TINY_CLIP)
    assert isinstance(targets, np.memmap) and targets.dtype == np.float16 and targets.shape == (N_IMAGES, 257, 16)
    expected = enc.encode(_images(store)).numpy().astype(np.float16)
    np.testing.assert_array_equal(np.asarray(targets), expected)
    # Running again is a no-op on a complete cache.
    mtime = (out / "targets.npy").stat().st_mtime_ns
    assert embed_store(store, "clip-vit-l14-hidden", random_init=True, config=TINY_CLIP, progress=False) == out
    assert (out / "targets.npy").stat().st_mtime_ns == mtime


def test_missing_cache_names_the_embed_command(store):
    with pytest.raises(MindEyeError) as err:
        load_targets(store, "standin-clip-hidden")
    assert f"mindeye embed --data {store} --encoder standin-clip-hidden" in str(err.value)


def test_cache_invalidated_when_weights_change(store, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    weights = tmp_path / "clip"
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP)).save_pretrained(weights)
    first = embed_store(store, "clip-vit-l14-final", weights=str(weights), progress=False)
    assert load_targets(store, "clip-vit-l14-final", weights=str(weights)).shape == (N_IMAGES, 16)
    torch.manual_seed(1)  # retrained / other weights at the same path
    CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP)).save_pretrained(weights)
    with pytest.raises(MindEyeError) as err:
        load_targets(store, "clip-vit-l14-final", weights=str(weights))
    msg = str(err.value)
    assert "no target cache" in msg and first.name in msg  # the old cache is named as not used
    assert f"mindeye embed --data {store} --encoder clip-vit-l14-final --weights {weights}" in msg
    second = embed_store(store, "clip-vit-l14-final", weights=str(weights), progress=False)
    assert second != first
    new = load_targets(store, "clip-vit-l14-final", weights=str(weights))
    assert not np.array_equal(np.asarray(new), np.load(first / "targets.npy"))


def test_cache_invalidated_when_preprocessing_changes(store):
    embed_store(store, "standin-vae", progress=False)
    assert load_targets(store, "standin-vae").shape == (N_IMAGES, 4, 16, 16)
    with pytest.raises(MindEyeError, match="no target cache"):  # another input resolution
        load_targets(store, "standin-vae", image_size=64)
    embed_store(store, "sd-vae", random_init=True, config=dict(
        block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=4, layers_per_block=1), image_size=32,
        progress=False)
    with pytest.raises(MindEyeError, match="no target cache"):  # same weights, other preprocessing
        load_targets(store, "sd-vae", random_init=True, config=dict(
            block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=4, layers_per_block=1), image_size=64)


def test_cache_stale_when_store_images_change(store, tmp_path):
    out = embed_store(store, "standin-clip-final", progress=False)
    # Re-prepare the store with other images: same path, new images.npy checksum.
    shutil.rmtree(store)
    make_store(store, seed=1)
    with pytest.raises(MindEyeError, match="no target cache|stale"):
        load_targets(store, "standin-clip-final")
    # Simulate a cache directory carried over from the old store: refused as stale, then recomputed.
    other = make_store(tmp_path / "old", seed=0)
    old_out = embed_store(other, "standin-clip-final", progress=False)
    shutil.copytree(old_out, out)
    with pytest.raises(MindEyeError, match="other images"):
        load_targets(store, "standin-clip-final")
    embed_store(store, "standin-clip-final", progress=False)
    fresh = load_targets(store, "standin-clip-final")
    expected = get_encoder("standin-clip-final").encode(_images(store)).numpy().astype(np.float16)
    np.testing.assert_array_equal(np.asarray(fresh), expected)


def test_resume_after_interruption_gives_identical_bytes(store, tmp_path):
    clean = make_store(tmp_path / "clean")  # same images (same seed)
    kw = dict(batch_size=2, chunk_size=4, progress=False)
    reference = embed_store(clean, "clip-vit-l14-hidden", random_init=True, config=TINY_CLIP, **kw)

    enc = get_encoder("clip-vit-l14-hidden", random_init=True, config=TINY_CLIP)
    with pytest.raises(Interrupt):  # killed in the middle of the second chunk (after 3 batches)
        embed_store(store, "clip-vit-l14-hidden", encoder=FailingEncoder(enc, fail_after=3), **kw)
    out = store / "targets" / reference.name
    m = read_manifest(out)
    assert m["chunks_done"] == 1 and m["complete"] is False
    with pytest.raises(MindEyeError, match="unfinished .*1/3 chunks"):  # never readable as complete
        load_targets(store, "clip-vit-l14-hidden", random_init=True, config=TINY_CLIP)

    # Resume: only the unfinished chunks are encoded (2 chunks = 3 batches of <= 2 images here).
    counting = FailingEncoder(enc, fail_after=10**6)
    embed_store(store, "clip-vit-l14-hidden", encoder=counting, progress=False)
    assert counting.calls == 3
    assert read_manifest(out)["complete"] is True
    assert (out / "targets.npy").read_bytes() == (reference / "targets.npy").read_bytes()


def test_augmented_views_cached_reproducibly(store, tmp_path):
    out = embed_store(store, "standin-clip-hidden", views=3, chunk_size=4, batch_size=3, progress=False)
    views = load_targets(store, "standin-clip-hidden", views=True)
    targets = load_targets(store, "standin-clip-hidden")
    assert views.shape == (N_IMAGES, 3, 17, 64) and views.dtype == np.float16
    assert not np.array_equal(np.asarray(views[:, 0]), np.asarray(targets))  # views are augmented
    m = read_manifest(out)
    assert m["views"] == 3 and m["augmentation"]["preset"] == "clip" and m["view_chunks_done"] == 3
    # Same views from an independent run with another batch/chunk split (the augmentation depends only on
    # seed, image and view; the convolutions may round differently with another batch size).
    other = make_store(tmp_path / "other")
    other_out = embed_store(other, "standin-clip-hidden", views=3, chunk_size=10, batch_size=10, progress=False)
    np.testing.assert_allclose(np.load(other_out / "views.npy").astype(np.float32), np.asarray(views, np.float32),
                               rtol=2e-3, atol=2e-4)
    # Asking for views on a cache without them, and views of an unaugmented encoder.
    embed_store(store, "standin-vae", progress=False)
    with pytest.raises(MindEyeError, match="no augmented views"):
        load_targets(store, "standin-vae", views=True)
    with pytest.raises(MindEyeError, match="has no augmentation"):
        embed_store(store, "standin-vae", views=2, progress=False)
    picked = sample_views(views, np.array([4, 1, 4]), torch.Generator().manual_seed(0))
    assert picked.shape == (3, 17, 64) and picked.dtype == torch.float32
    for row, i in zip(picked, [4, 1, 4]):
        assert any(torch.equal(row, torch.from_numpy(np.asarray(views[i, k], dtype=np.float32))) for k in range(3))

    # Training's Targets.get: per image the plain target (draw 0) or augmented view draw - 1.
    from mindeye.encoders.targets import Targets

    idx = np.array([4, 1, 4, 0, 2, 2, 3, 1])
    got = Targets(store, "standin-clip-hidden", None, views=3).get(idx, torch.Generator().manual_seed(5))
    draws = torch.randint(0, 4, (len(idx),), generator=torch.Generator().manual_seed(5)).tolist()
    want = [np.asarray(targets[i] if d == 0 else views[i, d - 1], np.float32) for i, d in zip(idx, draws)]
    np.testing.assert_array_equal(got.numpy(), np.stack(want))
    with pytest.raises(MindEyeError, match="holds 3 augmented views but the config asks for 4"):
        Targets(store, "standin-clip-hidden", None, views=4)


def test_targets_found_without_weights_when_computed_elsewhere(store, tmp_path, monkeypatch):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    weights = tmp_path / "clip"
    CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP)).save_pretrained(weights)
    out = embed_store(store, "clip-vit-l14-final", weights=str(weights), progress=False)
    shutil.rmtree(weights)  # e.g. training on a machine without the CLIP weights
    assert find_cache(store, "clip-vit-l14-final", weights=str(weights)) == out
    with pytest.raises(WeightsUnavailableError, match="No target cache made from weights 'elsewhere/clip'"):
        find_cache(store, "clip-vit-l14-final", weights="elsewhere/clip")


def test_embed_cli_command(store, capsys):
    from mindeye.commands import embed as embed_cmd

    parser = argparse.ArgumentParser(prog="mindeye")
    embed_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["embed", "--data", str(store), "--encoder", "standin-vicregl", "--no-progress",
                              "--views", "2", "--batch-size", "4"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "standin-vicregl: 10 images" in text and "2 augmented views" in text
    assert load_targets(store, "standin-vicregl", views=True).shape == (N_IMAGES, 2, 16, 32)
    manifest = json.loads(next((store / "targets").glob("standin-vicregl-*/manifest.json")).read_text())
    assert manifest["batch_size"] == 4 and manifest["augmentation"]["preset"] == "teacher"
    with pytest.raises(SystemExit):
        parser.parse_args(["embed", "--data", str(store), "--encoder", "nope"])
