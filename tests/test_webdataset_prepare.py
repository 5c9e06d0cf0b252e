"""`mindeye prepare webdataset` on fake MindEye webdataset shards (tests/fake_nsd.py)."""

from __future__ import annotations

import argparse
import io
import shutil
import tarfile

import numpy as np
import pytest

from fake_nsd import build_fake_shards
from mindeye.commands.prepare_nsd import add_prepare_parsers
from mindeye.data.store import SubjectStore
from mindeye.data.webdataset_shards import find_shards, prepare_webdataset
from mindeye.errors import MindEyeError

SIZE = 16


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards") / "webdataset_avg_split"
    return root, build_fake_shards(root, size=SIZE)


@pytest.fixture(scope="module")
def store(shards, tmp_path_factory):
    root, _ = shards
    return SubjectStore(prepare_webdataset(root, 1, tmp_path_factory.mktemp("st") / "s", image_size=SIZE,
                                           progress=False))


def _rows_of(store: SubjectStore, coco: int) -> np.ndarray:
    k = store.image_ids.index(f"nsd-{coco:05d}")
    return np.flatnonzero(store.trials.image_index == k)


def test_every_present_repetition_is_a_trial_with_unchanged_voxels(shards, store):
    _, samples = shards
    present = [(s, r) for s in samples for r in range(3) if np.isfinite(s.voxels[r]).all() and s.voxels[r].any()]
    assert len(present) < 3 * len(samples)  # the fake has missing repetitions (NaN and zero rows)
    assert store.n_trials == len(present) and store.n_images == len(samples)
    for s in samples:
        rows = _rows_of(store, s.coco)
        reps = [r for r in range(3) if s.trials[r] >= 0]
        assert len(rows) == len(reps)
        # rows are in trial order; voxels are stored as published (not z-scored again)
        for row, r in zip(rows, sorted(reps, key=lambda r: s.trials[r])):
            np.testing.assert_array_equal(np.asarray(store.voxels[row], np.float32), s.voxels[r])
    assert "not z-scored again" in store.meta["preprocessing"]
    assert store.meta["missing_repetitions"] == 3 * len(samples) - len(present)


def test_splits_sessions_and_repetitions(shards, store):
    _, samples = shards
    for s in samples:
        rows = _rows_of(store, s.coco)
        assert set(store.trials.split[rows]) == {s.split}
        trials = np.sort(s.trials[s.trials >= 0])
        np.testing.assert_array_equal(store.trials.session[rows], trials // 750 + 1)
        np.testing.assert_array_equal(store.trials.repetition[rows], np.arange(len(rows)))
    assert {sp: len(store.image_indices(sp)) for sp in ("train", "val", "test")} == {"train": 10, "val": 3, "test": 8}
    avg, images = store.split_voxels("test", "averaged")
    s = next(x for x in samples if x.split == "test")
    np.testing.assert_allclose(avg[list(images).index(store.image_ids.index(f"nsd-{s.coco:05d}"))],
                               s.voxels[s.trials >= 0].mean(0), atol=1e-6)


def test_images_jpeg_and_npy(shards, store):
    _, samples = shards
    for split in ("train", "test"):  # train holds JPEG bytes, test a 3xSxS float npy
        s = next(x for x in samples if x.split == split)
        np.testing.assert_array_equal(store.images[store.image_ids.index(f"nsd-{s.coco:05d}")], s.image)


def test_resize_to_other_image_size(shards, tmp_path):
    root, samples = shards
    st = SubjectStore(prepare_webdataset(root, 1, tmp_path / "s", image_size=8, progress=False))
    assert st.images.shape[1:] == (8, 8, 3)


def _truncate(path, frac=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * frac)])


@pytest.mark.parametrize("damage", ["truncate-0.3", "truncate-0.6", "garbage"])
def test_damaged_shard_is_named(shards, tmp_path, damage):
    root = tmp_path / "shards"
    shutil.copytree(shards[0], root)
    bad = root / "train" / "train_subj01_1.tar"
    if damage.startswith("truncate"):
        _truncate(bad, float(damage.split("-")[1]))
    else:
        bad.write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(MindEyeError, match=rf"shard {bad} is corrupt or truncated"):
        prepare_webdataset(root, 1, tmp_path / "s", image_size=SIZE, progress=False)
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.partial").exists()


def test_shard_discovery_by_subject_and_split(shards, tmp_path):
    root = tmp_path / "shards"
    shutil.copytree(shards[0], root)
    shutil.copy(root / "test" / "test_subj01_0.tar", root / "test" / "test_subj02_0.tar")
    found = find_shards(root, 1)
    assert [(sp, p.name) for sp, p in found] == [
        ("train", "train_subj01_0.tar"), ("train", "train_subj01_1.tar"), ("val", "val_subj01_0.tar"),
        ("test", "test_subj01_0.tar"), ("test", "test_subj01_1.tar")]
    assert [p.name for _, p in find_shards(root, 2)] == ["test_subj02_0.tar"]
    with pytest.raises(MindEyeError, match=r"no shards of subject 3.*\[1, 2\]"):
        find_shards(root, 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MindEyeError, match="no .tar shards"):
        find_shards(tmp_path / "empty", 1)
    with pytest.raises(MindEyeError, match="is not a directory"):
        find_shards(tmp_path / "missing", 1)


def test_image_in_two_splits_is_refused(shards, tmp_path):
    root = tmp_path / "shards"
    shutil.copytree(shards[0], root)
    shutil.copy(root / "train" / "train_subj01_0.tar", root / "test" / "test_subj01_2.tar")
    with pytest.raises(MindEyeError, match="is in train shard .* and in test shard"):
        prepare_webdataset(root, 1, tmp_path / "s", image_size=SIZE, progress=False)


def test_sample_without_voxels_is_reported(tmp_path):
    (tmp_path / "train").mkdir()
    with tarfile.open(tmp_path / "train" / "train_subj01_0.tar", "w") as tar:
        data = io.BytesIO()
        np.save(data, np.arange(3))
        data = data.getvalue()
        info = tarfile.TarInfo("sample0.trial.npy")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(MindEyeError, match="sample0 lacks nsdgeneral.npy, coco73k.npy .has trial.npy."):
        prepare_webdataset(tmp_path, 1, tmp_path / "s", progress=False)


def test_cli(shards, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_prepare_parsers(parser.add_subparsers(dest="source"))
    args = parser.parse_args(["webdataset", "--shards", str(shards[0]), "--subject", "1", "--out",
                              str(tmp_path / "s"), "--image-size", str(SIZE), "--no-progress"])
    assert args.func(args) == 0
    assert "nsd-webdataset" in capsys.readouterr().out
