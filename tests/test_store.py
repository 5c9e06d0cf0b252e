"""Subject store: writer/reader round trip, split serving, validation, atomicity, versions, checksums."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mindeye.data.store import FORMAT_VERSION, StoreWriter, SubjectStore, TrialTable
from mindeye.errors import MindEyeError

# A tiny subject: 6 images; images 0-3 train (2 reps each), 4-5 test with 3 and 1 repetitions,
# trials interleaved so repetitions of an image are not adjacent.
IMAGE_OF_TRIAL = np.array([0, 1, 4, 2, 3, 5, 0, 4, 1, 2, 3, 4], dtype=np.int64)
SPLIT_OF_IMAGE = ["train", "train", "train", "train", "test", "test"]
N_VOXELS, SIZE = 5, 4


def trial_table(image_of_trial: np.ndarray = IMAGE_OF_TRIAL) -> TrialTable:
    seen: dict[int, int] = {}
    reps = []
    for i in image_of_trial.tolist():
        reps.append(seen.get(i, 0))
        seen[i] = reps[-1] + 1
    return TrialTable(
        image_index=image_of_trial.copy(),
        session=np.where(np.arange(len(image_of_trial)) < 6, 1, 2).astype(np.int64),
        repetition=np.array(reps, dtype=np.int64),
        split=np.array([SPLIT_OF_IMAGE[i] for i in image_of_trial]),
    )


def make_store(out: Path, *, voxel_dtype: str = "float32", seed: int = 0) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vox = rng.normal(size=(len(IMAGE_OF_TRIAL), N_VOXELS)).astype(np.float32)
    imgs = rng.integers(0, 256, size=(6, SIZE, SIZE, 3), dtype=np.uint8)
    w = StoreWriter(out, n_trials=len(vox), n_voxels=N_VOXELS, n_images=6, image_size=SIZE, voxel_dtype=voxel_dtype)
    w.write_voxels(0, vox[:5])
    w.write_voxels(5, vox[5:])
    w.write_images(0, imgs)
    w.set_trials(trial_table())
    w.set_images([f"img{i}" for i in range(6)], captions=[f"caption {i}" for i in range(6)])
    w.finalize({"source": "unit", "subject": "7", "preprocessing": "as provided"})
    return out, vox, imgs


@pytest.fixture
def store(tmp_path) -> tuple[SubjectStore, np.ndarray, np.ndarray]:
    path, vox, imgs = make_store(tmp_path / "S")
    return SubjectStore(path), vox, imgs


# -- round trip -----------------------------------------------------------------------------------
def test_round_trip(store, tmp_path):
    s, vox, imgs = store
    assert sorted(p.name for p in s.path.iterdir()) == ["images.csv", "images.npy", "meta.json", "trials.csv",
                                                         "voxels.npy"]
    assert not (tmp_path / "S.partial").exists()
    assert (s.n_trials, s.n_voxels, s.n_images, s.image_size) == (12, N_VOXELS, 6, SIZE)
    np.testing.assert_array_equal(np.asarray(s.voxels), vox)
    np.testing.assert_array_equal(np.asarray(s.images), imgs)
    assert isinstance(s.voxels, np.memmap) and isinstance(s.images, np.memmap)
    t = trial_table()
    np.testing.assert_array_equal(s.trials.image_index, t.image_index)
    np.testing.assert_array_equal(s.trials.session, t.session)
    np.testing.assert_array_equal(s.trials.repetition, t.repetition)
    assert s.trials.split.tolist() == t.split.tolist()
    assert s.image_ids == [f"img{i}" for i in range(6)]
    assert s.captions == [f"caption {i}" for i in range(6)]
    meta = s.meta
    assert meta["format_version"] == FORMAT_VERSION
    assert (meta["n_trials"], meta["n_voxels"], meta["n_images"], meta["image_size"]) == (12, N_VOXELS, 6, SIZE)
    assert meta["source"] == "unit" and meta["subject"] == "7"
    assert set(meta["checksums"]) == {"voxels.npy", "trials.csv", "images.npy", "images.csv"}
    assert s.verify_checksums() == dict.fromkeys(meta["checksums"], True)


def test_csv_columns(store):
    s, _, _ = store
    trials = (s.path / "trials.csv").read_text().splitlines()
    assert trials[0] == "trial,image_index,image_id,session,repetition,split"
    assert trials[1] == "0,0,img0,1,0,train"
    assert trials[7] == "6,0,img0,2,1,train"  # second showing of image 0
    images = (s.path / "images.csv").read_text().splitlines()
    assert images[0] == "image_index,image_id,split,caption"
    assert images[5] == "4,img4,test,caption 4"


def test_float16_is_default_dtype(tmp_path):
    rng = np.random.default_rng(1)
    vox = rng.normal(size=(12, N_VOXELS)).astype(np.float32)
    w = StoreWriter(tmp_path / "S", n_trials=12, n_voxels=N_VOXELS, n_images=6, image_size=SIZE)
    w.write_voxels(0, vox)
    w.write_images(0, np.zeros((6, SIZE, SIZE, 3), np.uint8))
    w.set_trials(trial_table())
    w.set_images([str(i) for i in range(6)])
    s = SubjectStore(w.finalize({}))
    assert s.voxels.dtype == np.float16
    np.testing.assert_array_equal(np.asarray(s.voxels), vox.astype(np.float16))


# -- split serving ------------------------------------------------------------------------------
def test_split_indices(store):
    s, _, _ = store
    np.testing.assert_array_equal(s.trial_indices("test"), [2, 5, 7, 11])
    np.testing.assert_array_equal(s.image_indices("train"), [0, 1, 2, 3])
    np.testing.assert_array_equal(s.image_indices("test"), [4, 5])
    assert len(s.trial_indices("val")) == 0
    with pytest.raises(MindEyeError, match="unknown split 'dev'"):
        s.trial_indices("dev")


def test_repetitions_matrix(store):
    s, _, _ = store
    images, mat = s.repetitions("test")
    np.testing.assert_array_equal(images, [4, 5])
    np.testing.assert_array_equal(mat, [[2, 7, 11], [5, -1, -1]])


def test_single_trial_serving_matches_numpy(store):
    s, vox, _ = store
    x, img = s.split_voxels("test", mode="single")
    rows = np.flatnonzero(np.isin(IMAGE_OF_TRIAL, [4, 5]))
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, vox[rows])
    np.testing.assert_array_equal(img, IMAGE_OF_TRIAL[rows])


def test_averaged_serving_matches_numpy(store):
    s, vox, _ = store
    for split in ("train", "test"):
        x, img = s.split_voxels(split, mode="averaged")
        expected_images = sorted({int(i) for i, sp in zip(IMAGE_OF_TRIAL, trial_table().split) if sp == split})
        np.testing.assert_array_equal(img, expected_images)
        expected = np.stack([vox[IMAGE_OF_TRIAL == i].mean(0) for i in expected_images])
        np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-6)
    # Image 5 has a single trial: its "average" is that trial; image 4 averages 3 trials.
    x, _ = s.split_voxels("test")
    np.testing.assert_allclose(x[1], vox[5], rtol=1e-6)
    np.testing.assert_allclose(x[0], (vox[2] + vox[7] + vox[11]) / 3, rtol=1e-6)
    with pytest.raises(MindEyeError, match="unknown test mode"):
        s.split_voxels("test", mode="median")  # type: ignore[arg-type]


# -- validation -----------------------------------------------------------------------------------
def test_image_in_two_splits_is_rejected():
    t = trial_table()
    t.split[6] = "test"  # second showing of image 0, which is a train image
    with pytest.raises(MindEyeError, match=r"image index 0 appears in both 'train' and 'test'.*unique image"):
        t.validate(6)


def test_trial_table_validation_messages():
    t = trial_table()
    with pytest.raises(MindEyeError, match="refers to image index 5 but only 5 images"):
        t.validate(5)
    t.split[0] = "dev"
    with pytest.raises(MindEyeError, match=r"unknown split name\(s\) \['dev'\]"):
        t.validate(6)
    t = trial_table()
    t.session = t.session[:-1]
    with pytest.raises(MindEyeError, match="column 'session' has 11 rows but image_index has 12"):
        t.validate(6)


def new_writer(out: Path, **kw) -> StoreWriter:
    args = dict(n_trials=12, n_voxels=N_VOXELS, n_images=6, image_size=SIZE, voxel_dtype="float32") | kw
    return StoreWriter(out, **args)


def test_writer_rejects_bad_blocks(tmp_path):
    w = new_writer(tmp_path / "S")
    bad = np.ones((3, N_VOXELS), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(MindEyeError, match=r"NaN or inf \(first at trial 5, voxel 2\)"):
        w.write_voxels(4, bad)
    bad[1, 2] = -np.inf
    with pytest.raises(MindEyeError, match="NaN or inf"):
        w.write_voxels(0, bad)
    with pytest.raises(MindEyeError, match=r"voxel block has shape \(3, 4\); expected \(rows, 5\)"):
        w.write_voxels(0, np.ones((3, 4)))
    with pytest.raises(MindEyeError, match="expected uint8"):
        w.write_images(0, np.ones((1, SIZE, SIZE, 3), np.float32))
    with pytest.raises(MindEyeError, match="expected uint8"):
        w.write_images(0, np.ones((1, SIZE + 1, SIZE, 3), np.uint8))
    with pytest.raises(MindEyeError, match="trial table has 11 rows but the voxel array has 12"):
        w.set_trials(TrialTable(*(getattr(trial_table(), k)[:11] for k in ("image_index", "session",
                                                                             "repetition", "split"))))
    with pytest.raises(MindEyeError, match="image ids must be unique"):
        w.set_images(["a", "b", "c", "d", "e", "a"])
    with pytest.raises(MindEyeError, match="5 image ids for 6 images"):
        w.set_images(["a", "b", "c", "d", "e"])
    with pytest.raises(MindEyeError, match="2 captions for 6 images"):
        w.set_images(list("abcdef"), captions=["x", "y"])
    w.abort()
    assert not (tmp_path / "S.partial").exists()


def test_float16_overflow_is_refused(tmp_path):
    w = new_writer(tmp_path / "S", voxel_dtype="float16")
    with pytest.raises(MindEyeError, match=r"overflow the store's float16 voxels; pass --voxel-dtype float32"):
        w.write_voxels(0, np.full((2, N_VOXELS), 1e5, np.float32))
    w.abort()


def test_writer_argument_checks(tmp_path):
    with pytest.raises(MindEyeError, match="voxel dtype must be float16 or float32"):
        new_writer(tmp_path / "S", voxel_dtype="int8")
    with pytest.raises(MindEyeError, match="n_voxels must be positive"):
        new_writer(tmp_path / "S", n_voxels=0)
    assert not (tmp_path / "S.partial").exists()


# -- existing output / overwrite -------------------------------------------------------------------
def test_existing_output_directory(tmp_path):
    out = tmp_path / "S"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(MindEyeError, match=r"already exists; choose another output path.*overwrite=True"):
        new_writer(out)
    assert (out / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "S.partial").exists()


def test_overwrite_replaces_store(tmp_path):
    out, _, _ = make_store(tmp_path / "S", seed=0)
    (out / "stale.txt").write_text("old")
    _, vox, _ = make_store_overwrite(out)
    s = SubjectStore(out)
    np.testing.assert_array_equal(np.asarray(s.voxels), vox)
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S"]  # no .partial or .old left behind


def make_store_overwrite(out: Path):
    vox = np.full((12, N_VOXELS), 3.0, np.float32)
    w = new_writer(out, overwrite=True)
    w.write_voxels(0, vox)
    w.write_images(0, np.zeros((6, SIZE, SIZE, 3), np.uint8))
    w.set_trials(trial_table())
    w.set_images([str(i) for i in range(6)])
    w.finalize({})
    return out, vox, None


# -- atomicity and resume -------------------------------------------------------------------------
def test_interrupted_preparation_leaves_only_partial(tmp_path):
    out = tmp_path / "S"
    w = new_writer(out)
    w.write_voxels(0, np.ones((6, N_VOXELS), np.float32))
    w.mark_done("session1")
    del w  # the process dies here: finalize never runs
    assert not out.exists()
    assert (tmp_path / "S.partial").is_dir()
    with pytest.raises(MindEyeError) as exc:
        SubjectStore(out)
    msg = str(exc.value)
    assert "is not a mindeye subject store" in msg and "S.partial exists" in msg and "re-run" in msg


def test_resume_reopens_partial(tmp_path):
    out = tmp_path / "S"
    first = np.arange(6 * N_VOXELS, dtype=np.float32).reshape(6, N_VOXELS)
    w = new_writer(out)
    w.write_voxels(0, first)
    w.mark_done("sessions", [1])
    del w
    w = new_writer(out, resume=True)
    assert w.progress["sessions"] == [1]
    np.testing.assert_array_equal(np.asarray(w.voxels[:6]), first)  # kept, not re-zeroed
    w.write_voxels(6, first + 100)
    w.write_images(0, np.zeros((6, SIZE, SIZE, 3), np.uint8))
    w.set_trials(trial_table())
    w.set_images([str(i) for i in range(6)])
    s = SubjectStore(w.finalize({}))
    np.testing.assert_array_equal(np.asarray(s.voxels), np.concatenate([first, first + 100]))
    assert not (out / "progress.json").exists()
    with pytest.raises(MindEyeError, match="already exists"):
        new_writer(out, resume=True)


def test_resume_with_other_shapes_is_refused(tmp_path):
    out = tmp_path / "S"
    w = new_writer(out)
    del w
    with pytest.raises(MindEyeError, match="cannot resume .*different shapes.*delete it"):
        new_writer(out, n_voxels=N_VOXELS + 1, resume=True)


def test_without_resume_a_stale_partial_is_replaced(tmp_path):
    (tmp_path / "S.partial").mkdir()
    (tmp_path / "S.partial" / "junk").write_text("x")
    w = new_writer(tmp_path / "S")
    assert not (w.tmp / "junk").exists()
    w.abort()


# -- reading damaged or foreign stores --------------------------------------------------------------
def test_not_a_store(tmp_path):
    with pytest.raises(MindEyeError, match=r"not a mindeye subject store \(no meta.json\); create one with"):
        SubjectStore(tmp_path)


def set_meta(path: Path, **changes) -> None:
    meta = json.loads((path / "meta.json").read_text())
    meta.update(changes)
    (path / "meta.json").write_text(json.dumps(meta))


def test_newer_format_version(tmp_path):
    out, _, _ = make_store(tmp_path / "S")
    set_meta(out, format_version=FORMAT_VERSION + 1)
    with pytest.raises(MindEyeError, match=rf"format version {FORMAT_VERSION + 1}, newer .*upgrade mindeye"):
        SubjectStore(out)


@pytest.mark.parametrize("version", [None, "1", 0, True])
def test_invalid_format_version(tmp_path, version):
    out, _, _ = make_store(tmp_path / "S")
    set_meta(out, format_version=version)
    with pytest.raises(MindEyeError, match="no valid format_version"):
        SubjectStore(out)


def test_damaged_files(tmp_path):
    out, _, _ = make_store(tmp_path / "S")
    (out / "meta.json").write_text("{not json")
    with pytest.raises(MindEyeError, match="not valid JSON"):
        SubjectStore(out)
    out, _, _ = make_store(tmp_path / "T")
    (out / "images.npy").unlink()
    with pytest.raises(MindEyeError, match="incomplete: images.npy is missing"):
        SubjectStore(out)
    out, _, _ = make_store(tmp_path / "U")
    lines = (out / "trials.csv").read_text().splitlines()
    (out / "trials.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(MindEyeError, match="inconsistent: 11 trial rows for 12 voxel rows"):
        SubjectStore(out)
    out, _, _ = make_store(tmp_path / "V")
    (out / "trials.csv").write_text(lines[0] + "\n0,x,img0,1,0,train\n")
    with pytest.raises(MindEyeError, match="malformed"):
        SubjectStore(out)


def test_checksum_detects_corruption(tmp_path):
    out, _, _ = make_store(tmp_path / "S")
    data = bytearray((out / "voxels.npy").read_bytes())
    data[-1] ^= 0xFF  # flip bits of the last voxel value; the header stays valid
    (out / "voxels.npy").write_bytes(bytes(data))
    s = SubjectStore(out)
    assert s.verify_checksums() == {"voxels.npy": False, "trials.csv": True, "images.npy": True,
                                     "images.csv": True}
    assert s.summary().splitlines()[-1] == "  checksums    MISMATCH in voxels.npy"


# -- summary ----------------------------------------------------------------------------------------
def test_summary(store):
    s, _, _ = store
    text = s.summary()
    assert "source       unit  subject 7" in text
    assert "trials       12" in text
    assert f"voxels       {N_VOXELS} (float32)" in text
    assert f"images       6 unique, {SIZE}x{SIZE} RGB uint8" in text
    assert "sessions     2 (1-2)" in text
    assert "train        8 trials, 4 images (repetitions 2x:4)" in text
    assert "test         4 trials, 2 images (repetitions 1x:1, 3x:1)" in text
    assert "val" not in text
    assert "targets      none cached" in text
    assert text.splitlines()[-1] == "  checksums    ok"
    assert "checksums" not in s.summary(check=False)
    (s.path / "targets" / "clip-vit-l14-hidden-0123456789ab").mkdir(parents=True)
    assert "targets      clip-vit-l14-hidden-0123456789ab" in s.summary(check=False)


def test_format_doc_mentions_every_file_column_and_meta_key(store):
    s, _, _ = store
    doc = (Path(__file__).resolve().parents[1] / "docs" / "subject-store.md").read_text()
    names = [p.name for p in s.path.iterdir()] + list(s.meta) + ["progress.json", "manifest.json", "targets.npy",
                                                                  "views.npy", "STORE.partial"]
    names += (s.path / "trials.csv").read_text().splitlines()[0].split(",")
    names += (s.path / "images.csv").read_text().splitlines()[0].split(",")
    missing = [n for n in names if f"`{n}`" not in doc]
    assert not missing, f"docs/subject-store.md does not document {missing}"
