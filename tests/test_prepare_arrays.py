"""`mindeye prepare arrays`: bring-your-own dataset -> subject store, and every bad-input path."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from mindeye.cli import main
from mindeye.data import arrays
from mindeye.data.arrays import prepare_arrays
from mindeye.data.store import SubjectStore
from mindeye.errors import MindEyeError

# 5 images shown over 2 sessions; image 3 and 4 are test images (3 shown 3x, 4 shown 1x).
IMAGE_IDS = [0, 1, 2, 3, 0, 3, 1, 2, 4, 3]
SESSIONS = [1, 1, 1, 1, 1, 2, 2, 2, 2, 2]
SPLIT = {0: "train", 1: "train", 2: "val", 3: "test", 4: "test"}
N_VOX = 6


def write_trials(path: Path, ids=IMAGE_IDS, sessions=SESSIONS, split=SPLIT, extra: dict | None = None,
                 header: str | None = None) -> Path:
    cols = ["image_id", "session", "split", *(extra or {})]
    lines = [header or ",".join(cols)]
    for k, (i, s) in enumerate(zip(ids, sessions)):
        lines.append(",".join([str(i), str(s), split[i], *(str(v[k]) for v in (extra or {}).values())]))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(0)
    vox = rng.normal(loc=2.0, scale=3.0, size=(len(IMAGE_IDS), N_VOX)).astype(np.float32)
    imgs = rng.integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "vox.npy", vox)
    np.save(tmp_path / "imgs.npy", imgs)
    write_trials(tmp_path / "trials.csv")
    return tmp_path, vox, imgs


def run_prepare(tmp: Path, out: str = "S", **kw) -> SubjectStore:
    kw = {"image_size": 8, "voxel_dtype": "float32", "progress": False} | kw
    path = prepare_arrays(kw.pop("voxels", tmp / "vox.npy"), kw.pop("images", tmp / "imgs.npy"),
                          kw.pop("trials", tmp / "trials.csv"), tmp / out, **kw)
    return SubjectStore(path)


def zscore_per_session(vox: np.ndarray, sessions) -> np.ndarray:
    x = vox.astype(np.float64)
    out = np.empty_like(x)
    sessions = np.asarray(sessions)
    for s in np.unique(sessions):
        m = sessions == s
        out[m] = (x[m] - x[m].mean(0)) / x[m].std(0)
    return out


# -- happy paths ----------------------------------------------------------------------------------
def test_npy_inputs_round_trip(inputs):
    tmp, vox, imgs = inputs
    s = run_prepare(tmp)
    np.testing.assert_array_equal(np.asarray(s.voxels), vox)
    assert s.image_ids == ["0", "1", "2", "3", "4"]
    np.testing.assert_array_equal(np.asarray(s.images), imgs)
    np.testing.assert_array_equal(s.trials.image_index, IMAGE_IDS)
    np.testing.assert_array_equal(s.trials.session, SESSIONS)
    np.testing.assert_array_equal(s.trials.repetition, [0, 0, 0, 0, 1, 1, 1, 1, 0, 2])  # presentation order
    assert s.trials.split.tolist() == [SPLIT[i] for i in IMAGE_IDS]
    assert s.meta["preprocessing"] == "as provided" and s.meta["source"] == "arrays"
    assert all(s.verify_checksums().values())
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith("S")) == ["S"]
    # the test split, averaged, against numpy
    x, img = s.split_voxels("test")
    np.testing.assert_array_equal(img, [3, 4])
    np.testing.assert_allclose(x[0], vox[[3, 5, 9]].mean(0), rtol=1e-6)
    np.testing.assert_allclose(x[1], vox[8], rtol=1e-6)


def test_repetition_column_is_used_when_given(inputs):
    tmp, _, _ = inputs
    reps = [5, 5, 5, 5, 6, 6, 6, 6, 5, 7]
    write_trials(tmp / "trials.csv", extra={"repetition": reps})
    s = run_prepare(tmp, source="lab", subject="S03")
    np.testing.assert_array_equal(s.trials.repetition, reps)
    assert s.meta["source"] == "lab" and s.meta["subject"] == "S03"


def test_float16_storage(inputs):
    tmp, vox, _ = inputs
    s = run_prepare(tmp, voxel_dtype="float16")
    assert s.voxels.dtype == np.float16
    np.testing.assert_array_equal(np.asarray(s.voxels), vox.astype(np.float16))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_zscore_per_session_matches_numpy(tmp_path, dtype):
    # A large offset with a small spread: z-scoring after rounding to float16 would lose most of the signal.
    rng = np.random.default_rng(3)
    vox = (1000.0 + rng.normal(scale=2.0, size=(len(IMAGE_IDS), N_VOX))).astype(np.float64)
    vox[:5] += 50.0  # sessions differ in baseline
    vox[:, 0] = 7.0  # a constant voxel maps to 0, not NaN
    np.save(tmp_path / "vox.npy", vox)
    np.save(tmp_path / "imgs.npy", np.zeros((5, 8, 8, 3), np.uint8))
    write_trials(tmp_path / "trials.csv")
    s = run_prepare(tmp_path, zscore=True, voxel_dtype=dtype)
    expected = zscore_per_session(vox[:, 1:], SESSIONS)
    got = np.asarray(s.voxels, dtype=np.float64)
    tol = 1e-5 if dtype == "float32" else 2e-3
    np.testing.assert_allclose(got[:, 1:], expected, atol=tol, rtol=tol)
    np.testing.assert_array_equal(got[:, 0], 0.0)
    assert s.meta["preprocessing"] == "per-session z-score"


def test_zscore_via_cli_and_sessions_not_contiguous(inputs, capsys):
    tmp, vox, _ = inputs
    sessions = [2, 1, 2, 1, 2, 1, 2, 1, 2, 1]
    write_trials(tmp / "trials.csv", sessions=sessions)
    rc = main(["prepare", "arrays", "--voxels", str(tmp / "vox.npy"), "--images", str(tmp / "imgs.npy"),
               "--trials", str(tmp / "trials.csv"), "--out", str(tmp / "S"), "--zscore", "--image-size", "8",
               "--voxel-dtype", "float32"])
    assert rc == 0
    assert "wrote subject store" in capsys.readouterr().out
    np.testing.assert_allclose(np.asarray(SubjectStore(tmp / "S").voxels), zscore_per_session(vox, sessions),
                               atol=1e-5)


def test_npy_images_are_resized(inputs):
    tmp, _, imgs = inputs
    s = run_prepare(tmp, image_size=4)
    assert s.images.shape == (5, 4, 4, 3)
    ref = np.asarray(Image.fromarray(imgs[2]).resize((4, 4), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(s.images[2], ref)


def test_hdf5_voxels(inputs):
    tmp, vox, _ = inputs
    with h5py.File(tmp / "one.h5", "w") as f:
        f.create_dataset("betas/roi", data=vox)
        f.create_dataset("labels", data=np.arange(10))  # 1-D: not a candidate
    s = run_prepare(tmp, voxels=tmp / "one.h5")
    np.testing.assert_array_equal(np.asarray(s.voxels), vox)

    with h5py.File(tmp / "two.hdf5", "w") as f:
        f.create_dataset("left", data=vox)
        f.create_dataset("right", data=vox * 2)
        f.create_group("grp")
    with pytest.raises(MindEyeError, match=r"holds 2 2-D datasets \(left, right\); name the voxel dataset with "
                                           r"--voxels-key"):
        run_prepare(tmp, out="T", voxels=tmp / "two.hdf5")
    s = run_prepare(tmp, out="T", voxels=tmp / "two.hdf5", voxels_key="right")
    np.testing.assert_array_equal(np.asarray(s.voxels), vox * 2)
    for key in ("middle", "grp"):
        with pytest.raises(MindEyeError, match=rf"no dataset '{key}'; pass one of its 2-D datasets to "
                                               r"--voxels-key: left, right"):
            run_prepare(tmp, out="U", voxels=tmp / "two.hdf5", voxels_key=key)
    assert not (tmp / "U").exists() and not (tmp / "U.partial").exists()


def test_hdf5_via_cli(inputs, capsys):
    tmp, vox, _ = inputs
    with h5py.File(tmp / "two.h5", "w") as f:
        f.create_dataset("a", data=vox)
        f.create_dataset("b", data=vox)
    base = ["prepare", "arrays", "--voxels", str(tmp / "two.h5"), "--images", str(tmp / "imgs.npy"),
            "--trials", str(tmp / "trials.csv"), "--out", str(tmp / "S"), "--image-size", "8"]
    assert main(base) == 2
    assert "--voxels-key" in capsys.readouterr().err
    assert main([*base, "--voxels-key", "b"]) == 0


def test_image_directory_with_pngs(tmp_path):
    rng = np.random.default_rng(5)
    ids = ["cat", "dog", "owl", "img_10", "img_2"]
    d = tmp_path / "images"
    d.mkdir()
    sources = {}
    for k, iid in enumerate(ids):
        arr = rng.integers(0, 256, size=(10 + k, 12, 3), dtype=np.uint8)  # non-square, varied sizes
        sources[iid] = arr
        Image.fromarray(arr).save(d / f"{iid}.png")
    Image.fromarray(np.full((5, 5), 200, np.uint8), mode="L").save(d / "gray.PNG")  # grayscale -> RGB
    (d / "notes.txt").write_text("ignored")
    trial_ids = ["cat", "dog", "owl", "img_10", "img_2", "gray", "cat", "owl"]
    split = {"cat": "train", "dog": "train", "owl": "test", "img_10": "train", "img_2": "val", "gray": "train"}
    write_trials(tmp_path / "trials.csv", ids=trial_ids, sessions=[1] * 8, split=split)
    np.save(tmp_path / "vox.npy", rng.normal(size=(8, N_VOX)).astype(np.float32))
    s = run_prepare(tmp_path, images=d, image_size=6)
    assert s.images.shape == (6, 6, 6, 3)
    assert s.image_ids == ["cat", "dog", "owl", "gray", "img_2", "img_10"]  # shorter ids first, then by name
    for iid, arr in sources.items():
        ref = np.asarray(Image.fromarray(arr).resize((6, 6), Image.Resampling.BICUBIC))
        np.testing.assert_array_equal(s.images[s.image_ids.index(iid)], ref)
    np.testing.assert_array_equal(s.images[s.image_ids.index("gray")], 200)
    np.testing.assert_array_equal(s.trials.image_index, [s.image_ids.index(i) for i in trial_ids])


def test_csv_with_bom_and_spaces(inputs):
    tmp, _, _ = inputs
    lines = ["\ufeffimage_id, session ,split"] + [f" {i} , {s} , {SPLIT[i]} " for i, s in zip(IMAGE_IDS, SESSIONS)]
    (tmp / "trials.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    s = run_prepare(tmp)
    np.testing.assert_array_equal(s.trials.image_index, IMAGE_IDS)


def test_overwrite(inputs):
    tmp, vox, _ = inputs
    run_prepare(tmp)
    with pytest.raises(MindEyeError, match="already exists"):
        run_prepare(tmp)
    np.save(tmp / "vox.npy", vox + 1)
    s = run_prepare(tmp, overwrite=True)
    np.testing.assert_array_equal(np.asarray(s.voxels), vox + 1)


# -- atomicity --------------------------------------------------------------------------------------
@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_failure_mid_preparation_leaves_nothing(inputs, monkeypatch, exc):
    tmp, _, _ = inputs
    calls = []

    def flaky(img, size):
        calls.append(1)
        if len(calls) == 3:
            raise exc
        return img

    monkeypatch.setattr(arrays, "resize_image", flaky)
    with pytest.raises(type(exc)):
        run_prepare(tmp)
    assert len(calls) == 3  # it failed part-way through writing images
    assert not (tmp / "S").exists() and not (tmp / "S.partial").exists()
    with pytest.raises(MindEyeError, match="not a mindeye subject store"):
        SubjectStore(tmp / "S")


# -- bad input: one clear message, exit status 2, nothing written ------------------------------------
def _bad_mismatched_rows(tmp):
    write_trials(tmp / "trials.csv", ids=IMAGE_IDS[:-1], sessions=SESSIONS[:-1])


def _bad_nan(tmp):
    v = np.load(tmp / "vox.npy")
    v[7, 4] = np.nan
    np.save(tmp / "vox.npy", v)


def _bad_inf(tmp):
    v = np.load(tmp / "vox.npy")
    v[2, 1] = np.inf
    np.save(tmp / "vox.npy", v)


def _bad_missing_image(tmp):
    np.save(tmp / "imgs.npy", np.load(tmp / "imgs.npy")[:4])  # image id 4 has no row


def _bad_missing_png(tmp):
    d = tmp / "imgs.npy"  # replace the array by a directory lacking "3" and "4"
    d.unlink()
    d.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / f"{i}.png")


def _bad_int_voxels(tmp):
    np.save(tmp / "vox.npy", np.ones((len(IMAGE_IDS), N_VOX), np.int16))


def _bad_3d_voxels(tmp):
    np.save(tmp / "vox.npy", np.ones((len(IMAGE_IDS), N_VOX, 2), np.float32))


def _bad_float_images(tmp):
    np.save(tmp / "imgs.npy", np.ones((5, 8, 8, 3), np.float32))


def _bad_image_shape(tmp):
    np.save(tmp / "imgs.npy", np.ones((5, 8, 8), np.uint8))


def _bad_existing_out(tmp):
    (tmp / "S").mkdir()
    (tmp / "S" / "keep.txt").write_text("mine")


def _bad_two_splits(tmp):
    write_trials(tmp / "trials.csv", split=SPLIT)
    lines = (tmp / "trials.csv").read_text().splitlines()
    lines[5] = "0,1,test"  # second showing of train image 0 labelled test
    (tmp / "trials.csv").write_text("\n".join(lines) + "\n")


def _bad_split_name(tmp):
    write_trials(tmp / "trials.csv", split={**SPLIT, 2: "validation"})


def _bad_columns(tmp):
    (tmp / "trials.csv").write_text("image,session,split\n" + "0,1,train\n" * len(IMAGE_IDS))


def _bad_session(tmp):
    write_trials(tmp / "trials.csv", sessions=["one"] * len(IMAGE_IDS))


def _bad_repetition(tmp):
    write_trials(tmp / "trials.csv", extra={"repetition": [0, 0, 0, 0, 1, 1, 1, 1, "", 2]})


def _bad_float16_overflow(tmp):
    np.save(tmp / "vox.npy", np.full((len(IMAGE_IDS), N_VOX), 7e4, np.float32))


def _bad_missing_voxels(tmp):
    (tmp / "vox.npy").unlink()


def _bad_voxel_format(tmp):
    (tmp / "vox.npy").rename(tmp / "vox.mat")


def _bad_not_npy(tmp):
    (tmp / "vox.npy").write_text("this is not numpy")


def _bad_not_hdf5(tmp):
    (tmp / "vox.npy").rename(tmp / "vox.h5")
    (tmp / "vox.h5").write_text("not hdf5")


def _bad_image_size(tmp):
    pass  # the bad value is the --image-size argument


BAD_INPUTS = {
    # name: (mutation, CLI arguments changed (None = a flag), substrings the message must contain)
    "mismatched-rows": (_bad_mismatched_rows, {}, ["has 9 rows but", "has 10 voxel rows", "one-to-one"]),
    "nan-voxels": (_bad_nan, {}, ["NaN or inf", "trial 7, voxel 4", "remove or impute"]),
    "inf-voxels": (_bad_inf, {}, ["NaN or inf", "trial 2, voxel 1"]),
    "inf-voxels-zscore": (_bad_inf, {"--zscore": None}, ["NaN or inf", "trial 2, voxel 1"]),
    "missing-image-npy": (_bad_missing_image, {}, ["1 image id(s)", "no image in", ": 4;", "must be present"]),
    "missing-image-png": (_bad_missing_png, {}, ["2 image id(s)", "3, 4", "must be present"]),
    "int-voxels": (_bad_int_voxels, {}, ["dtype int16", "expected float16/32/64"]),
    "3d-voxels": (_bad_3d_voxels, {}, ["shape (10, 6, 2)", "expected 2-D"]),
    "float-images": (_bad_float_images, {}, ["dtype float32", "expected uint8"]),
    "image-shape": (_bad_image_shape, {}, ["shape (5, 8, 8)", "(n_images, H, W, 3)"]),
    "existing-out": (_bad_existing_out, {}, ["already exists", "--overwrite"]),
    "image-in-two-splits": (_bad_two_splits, {}, ["appears in both 'train' and 'test'", "unique image"]),
    "unknown-split": (_bad_split_name, {}, ["unknown split value(s) ['validation']", "'train', 'val', 'test'"]),
    "missing-columns": (_bad_columns, {}, ["lacks column(s) ['image_id']", "image_id, session, split"]),
    "bad-session": (_bad_session, {}, ["'session' must hold integers"]),
    "bad-repetition": (_bad_repetition, {}, ["'repetition' must hold integers", "leave the column out"]),
    "float16-overflow": (_bad_float16_overflow, {"--voxel-dtype": "float16"}, ["overflow", "--voxel-dtype float32"]),
    "missing-voxels": (_bad_missing_voxels, {}, ["vox.npy not found"]),
    "voxel-format": (_bad_voxel_format, {"--voxels": "{tmp}/vox.mat"}, ["must be .npy, .h5 or .hdf5"]),
    "not-npy": (_bad_not_npy, {}, ["cannot read", "as a numpy array"]),
    "not-hdf5": (_bad_not_hdf5, {"--voxels": "{tmp}/vox.h5"}, ["cannot open", "as an HDF5 file"]),
    "image-size": (_bad_image_size, {"--image-size": "0"}, ["--image-size must be positive"]),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input(inputs, capsys, name):
    tmp, _, _ = inputs
    mutate, extra, needles = BAD_INPUTS[name]
    mutate(tmp)
    before = sorted(p.name for p in tmp.rglob("*"))
    args = {"--voxels": str(tmp / "vox.npy"), "--images": str(tmp / "imgs.npy"),
            "--trials": str(tmp / "trials.csv"), "--out": str(tmp / "S"), "--image-size": "8",
            "--voxel-dtype": "float32"}
    args |= {k: v.format(tmp=tmp) if v else v for k, v in extra.items()}
    argv = ["prepare", "arrays", *[x for k, v in args.items() for x in ((k, v) if v else (k,))]]
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("mindeye prepare: error: "), err  # one message
    message = errors[0]
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp.rglob("*")) == before  # nothing half-written, nothing removed
    assert not (tmp / "S.partial").exists()


def test_duplicate_image_files(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for name in ("0.png", "0.jpg", "1.png"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(d / name)
    write_trials(tmp_path / "trials.csv", ids=[0, 1], sessions=[1, 1], split={0: "train", 1: "test"})
    np.save(tmp_path / "vox.npy", np.zeros((2, N_VOX), np.float32))
    with pytest.raises(MindEyeError, match=r"image id '0' has two files .*keep one"):
        run_prepare(tmp_path, images=d)


def test_unreadable_image_file(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(d / "0.png")
    (d / "1.png").write_bytes(b"not a png")
    write_trials(tmp_path / "trials.csv", ids=[0, 1], sessions=[1, 1], split={0: "train", 1: "test"})
    np.save(tmp_path / "vox.npy", np.zeros((2, N_VOX), np.float32))
    with pytest.raises(MindEyeError, match=r"cannot read image .*1\.png"):
        run_prepare(tmp_path, images=d)
    assert not (tmp_path / "S").exists() and not (tmp_path / "S.partial").exists()
