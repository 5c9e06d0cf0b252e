"""The simulated subject (mindeye simulate): determinism, NSD-like layout, preprocessing, information."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from mindeye.commands import simulate as simulate_cmd
from mindeye.data.scenes import (
    CATEGORIES,
    attribute_names,
    attribute_vector,
    caption,
    generate_scenes,
    render_scene,
    sample_scenes,
)
from mindeye.data.simulate import SCALES, make_design, measure_reliability, simulate_subject
from mindeye.data.store import SubjectStore
from mindeye.errors import MindEyeError

TINY = SCALES["tiny"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sim")
    return {name: simulate_subject(root / name, "tiny", seed=seed, progress=False)
            for name, seed in (("a", 0), ("a_again", 0), ("b", 1))}


@pytest.fixture(scope="module")
def store(stores: dict[str, Path]) -> SubjectStore:
    return SubjectStore(stores["a"])


# ---------------------------------------------------------------- determinism
def test_same_seed_gives_identical_bytes(stores: dict[str, Path]) -> None:
    for name in ("voxels.npy", "images.npy", "trials.csv", "images.csv", "attributes.json"):
        assert (stores["a"] / name).read_bytes() == (stores["a_again"] / name).read_bytes(), name


def test_different_seed_differs(stores: dict[str, Path]) -> None:
    a, b = SubjectStore(stores["a"]), SubjectStore(stores["b"])
    assert not np.array_equal(a.voxels, b.voxels)
    assert not np.array_equal(a.images, b.images)
    assert a.captions != b.captions


def test_scene_stream_independent_of_chunking_and_size(store: SubjectStore) -> None:
    # Image k depends only on (seed, k): sampling a subset or rendering alone gives the same scene.
    alone = sample_scenes(0, [7])[0]
    assert alone == sample_scenes(0, range(10))[7]
    assert np.array_equal(render_scene(alone, TINY.image_size), store.images[7])
    assert store.captions[7] == caption(alone)


# ---------------------------------------------------------------- shapes and layout
def test_nsd_spec_matches_subject_1() -> None:
    nsd = SCALES["nsd"]
    assert nsd.n_voxels == 15724 and nsd.image_size == 256
    assert nsd.n_sessions == 37 and nsd.session_sizes() == [750] * 37 and nsd.n_trials == 27750
    assert (nsd.n_test_images, nsd.n_test_trials) == (982, 2770)
    assert nsd.n_train_trials == 24980 and 8500 <= nsd.n_train_images <= 9500
    assert SCALES["small"].n_test_images >= 300  # the demo does 300-way retrieval
    for spec in SCALES.values():
        spec.validate()


def test_nsd_design_counts_without_generating_voxels() -> None:
    nsd = SCALES["nsd"]
    t = make_design(nsd, np.random.default_rng([0, 3]))
    test = t.split == "test"
    assert test.sum() == 2770 and len(np.unique(t.image_index[test])) == 982
    assert (~test).sum() == 24980 and len(np.unique(t.image_index[~test])) == nsd.n_train_images
    assert np.array_equal(np.bincount(t.session)[1:], [750] * 37)
    reps = np.bincount(t.image_index[test])
    assert reps.max() == 3 and (reps[reps > 0] < 3).any()  # some test images seen < 3 times, as in NSD
    pairs = t.image_index * 100 + t.session
    assert len(np.unique(pairs)) == len(pairs)  # never the same image twice in one session


def test_store_shapes_follow_the_tiny_spec(store: SubjectStore) -> None:
    assert store.voxels.shape == (TINY.n_trials, TINY.n_voxels) and store.voxels.dtype == np.float16
    assert store.images.shape == (TINY.n_images, 64, 64, 3) and store.images.dtype == np.uint8
    assert np.array_equal(np.bincount(store.trials.session)[1:], TINY.session_sizes())
    assert len(store.trial_indices("test")) == TINY.n_test_trials
    assert len(store.image_indices("test")) == TINY.n_test_images
    assert len(store.image_indices("train")) == TINY.n_train_images
    assert len(store.trial_indices("val")) == 0
    meta = store.meta
    assert meta["preprocessing"] == "per-session z-score" and meta["source"] == "simulated"
    assert meta["splits"]["test"] == {"images": TINY.n_test_images, "trials": TINY.n_test_trials}
    assert meta["simulation"]["scale"] == "tiny" and meta["simulation"]["seed"] == 0
    assert all(store.verify_checksums().values())


def test_no_image_in_two_splits(store: SubjectStore) -> None:
    train, test = set(store.image_indices("train").tolist()), set(store.image_indices("test").tolist())
    assert not train & test
    assert train | test == set(range(store.n_images))


def test_repetitions_spread_over_sessions_in_presentation_order(store: SubjectStore) -> None:
    t = store.trials
    for img in range(store.n_images):
        rows = np.flatnonzero(t.image_index == img)  # trial order is chronological
        assert 1 <= len(rows) <= 3
        assert np.array_equal(t.repetition[rows], np.arange(len(rows)))
        assert len(np.unique(t.session[rows])) == len(rows)
        assert np.all(np.diff(t.session[rows]) > 0)
    assert (np.bincount(t.image_index) == 3).mean() > 0.7  # most images are seen 3 times


def test_every_voxel_is_zscored_within_each_session(store: SubjectStore) -> None:
    v = np.asarray(store.voxels, dtype=np.float64)
    for s in np.unique(store.trials.session):
        block = v[store.trials.session == s]
        assert np.abs(block.mean(0)).max() < 2e-3
        assert np.abs(block.std(0) - 1).max() < 2e-3


# ---------------------------------------------------------------- reliability
def test_measure_reliability_recovers_a_known_ncsnr() -> None:
    rng = np.random.default_rng(0)
    n_img, n_vox, ncsnr = 3000, 50, 0.5
    signal = rng.normal(0, 1, (n_img, n_vox))
    img = np.repeat(np.arange(n_img), 3)
    from mindeye.data.store import TrialTable

    trials = TrialTable(img, np.ones(len(img), np.int64), np.tile([0, 1, 2], n_img), np.full(len(img), "train"))
    voxels = signal[img] + rng.normal(0, 1 / ncsnr, (len(img), n_vox))
    rel = measure_reliability(voxels, trials)
    assert rel["ncsnr_median"] == pytest.approx(ncsnr, abs=0.04)
    assert rel["split_half_r_median"] == pytest.approx(ncsnr**2 / (ncsnr**2 + 1), abs=0.03)  # 0.2
    assert rel["noise_ceiling_pct_single_trial_median"] == pytest.approx(20, abs=3)


def test_split_half_reliability_is_nsd_like(store: SubjectStore) -> None:
    # Independent recomputation: per voxel, correlate repetition 0 with repetition 1 across images.
    t = store.trials
    first = {int(i): r for r, i in enumerate(t.image_index) if t.repetition[r] == 0}
    pairs = np.array([(first[int(t.image_index[r])], r) for r in np.flatnonzero(t.repetition == 1)])
    a = np.asarray(store.voxels[pairs[:, 0]], np.float64)
    b = np.asarray(store.voxels[pairs[:, 1]], np.float64)
    r = [np.corrcoef(a[:, k], b[:, k])[0, 1] for k in range(a.shape[1])]
    median = float(np.median(r))
    # NSD nsdgeneral: single-trial split-half r per voxel ~0.05-0.3 (median ncsnr ~0.2-0.5).
    assert 0.05 < median < 0.3
    rel = store.meta["simulation"]["reliability"]
    assert rel["split_half_r_median"] == pytest.approx(median, abs=1e-3)
    assert 0.2 < rel["ncsnr_median"] < 0.6
    assert np.percentile(r, 90) > 0.3  # a tail of highly reliable voxels, as in early visual cortex


# ---------------------------------------------------------------- the brain carries image information
def _two_way_identification(pred: np.ndarray, true: np.ndarray) -> float:
    p = pred - pred.mean(1, keepdims=True)
    q = true - true.mean(1, keepdims=True)
    corr = (p / np.linalg.norm(p, axis=1, keepdims=True)) @ (q / np.linalg.norm(q, axis=1, keepdims=True)).T
    return float(((np.diag(corr)[:, None] > corr).sum(1) / (len(corr) - 1)).mean())


def _ridge_identification(store: SubjectStore, features: np.ndarray, shuffle: bool = False) -> float:
    rows = store.trial_indices("train")
    x = np.asarray(store.voxels[rows], np.float64)
    y = features[store.trials.image_index[rows]]
    if shuffle:  # control: break the voxel-image pairing
        y = y[np.random.default_rng(0).permutation(len(y))]
    mean, sd = y.mean(0), y.std(0) + 1e-6
    w = np.linalg.solve(x.T @ x + 1e3 * np.eye(x.shape[1]), x.T @ ((y - mean) / sd))
    x_test, test_images = store.split_voxels("test")  # repetition-averaged, as in the paper
    return _two_way_identification(x_test @ w, (features[test_images] - mean) / sd)


def test_ridge_from_voxels_identifies_held_out_images(store: SubjectStore) -> None:
    s = store.image_size
    pixels = np.asarray(store.images, np.float64).reshape(store.n_images, 8, s // 8, 8, s // 8, 3)
    pixels = pixels.mean((2, 4)).reshape(store.n_images, -1)  # 8x8 colour thumbnails
    assert _ridge_identification(store, pixels) > 0.75  # chance is 0.5
    assert _ridge_identification(store, pixels, shuffle=True) < 0.62
    attributes = json.loads((store.path / "attributes.json").read_text())
    attr = np.stack([attribute_vector(a) for a in attributes]).astype(np.float64)
    assert _ridge_identification(store, attr) > 0.9


# ---------------------------------------------------------------- scenes
def test_scenes_are_varied_and_described(store: SubjectStore) -> None:
    attributes = json.loads((store.path / "attributes.json").read_text())
    assert len(attributes) == store.n_images and len(CATEGORIES) >= 10
    cats = {o["category"] for a in attributes for o in a["objects"]}
    assert cats == set(CATEGORIES)
    assert {a["background"]["type"] for a in attributes} == {"solid", "gradient", "radial", "noise", "horizon"}
    assert {a["n_objects"] for a in attributes} == {1, 2, 3}
    assert {o["texture"] for a in attributes for o in a["objects"]} >= {"solid", "striped", "dotted"}
    for a, cap in zip(attributes, store.captions):
        assert all(o["category"] in cap and o["color"] in cap for o in a["objects"])
        assert a["split"] == ("test" if a["image_id"] in {store.image_ids[i] for i in store.image_indices("test")}
                              else "train")
    assert len(attribute_vector(attributes[0])) == len(attribute_names())
    assert len({img.tobytes() for img in np.asarray(store.images)}) == store.n_images


def test_renderer_draws_objects_where_the_attributes_say() -> None:
    scene = sample_scenes(0, [0])[0]
    scene["background"].update(type="solid", rgb=[0.0, 0.0, 1.0])
    scene["objects"] = [dict(scene["objects"][0], category="circle", texture="solid", rgb=[1.0, 0.0, 0.0],
                             size=0.2, x=0.25, y=0.75)]
    scene["grain_seed"] = None
    img = render_scene(scene, 128)
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8
    assert img[96, 32].tolist() == [255, 0, 0]  # centre of the circle (x=0.25, y=0.75)
    assert img[5, 120].tolist() == [0, 0, 255]  # background far away
    red = (img[..., 0] > 128).mean()
    assert red == pytest.approx(np.pi * 0.2**2, rel=0.05)  # area of a radius-0.2 disc
    images, scenes, caps = generate_scenes(3, range(4), 64)
    assert images.shape == (4, 64, 64, 3) and len(scenes) == len(caps) == 4


# ---------------------------------------------------------------- command and errors
def test_command_writes_a_store_and_refuses_to_clobber(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    simulate_cmd.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "sim"
    args = parser.parse_args(["simulate", "--scale", "tiny", "--seed", "2", "--out", str(out), "--no-progress"])
    assert args.func(args) == 0
    assert SubjectStore(out).meta["simulation"]["seed"] == 2
    with pytest.raises(MindEyeError, match="overwrite=True"):
        args.func(args)
    args = parser.parse_args(["simulate", "--scale", "tiny", "--seed", "2", "--out", str(out), "--no-progress",
                              "--overwrite"])
    assert args.func(args) == 0


def test_bad_arguments_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(MindEyeError, match="unknown scale 'huge'; choose one of tiny, small, nsd"):
        simulate_subject(tmp_path / "x", "huge")
    with pytest.raises(MindEyeError, match="non-negative integer"):
        simulate_subject(tmp_path / "x", "tiny", seed=-1)
