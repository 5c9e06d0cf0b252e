"""`mindeye prepare nsd` on a tiny fake NSD release in the real file formats (tests/fake_nsd.py)."""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fake_nsd import TRIALS, build_fake_nsd, write_betas
from mindeye.commands.prepare_nsd import add_prepare_parsers
from mindeye.data import nsd
from mindeye.data.nsd import parse_sessions, prepare_nsd
from mindeye.data.store import SubjectStore
from mindeye.errors import MindEyeError

SIZE = 16  # stored image size (fake stimuli are 20x20)


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return build_fake_nsd(tmp_path_factory.mktemp("nsd") / "root", n_sessions=3)


@pytest.fixture(scope="module")
def store(fake, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores") / "subj01"
    return SubjectStore(prepare_nsd(fake.root, 1, out, sessions="1-3", image_size=SIZE, voxel_dtype="float32",
                                    progress=False))


def expected_voxels(fake, session: int, exclude_shared: bool = False) -> np.ndarray:
    """Direct computation: mask (x,y,z) in C order, int16 / 300, z-score per voxel over the session."""
    x = fake.betas[(1, session)][:, fake.mask].astype(np.float64) / 300.0
    ref = x
    if exclude_shared:
        ref = x[~np.isin(fake.session_images0(1, session), fake.sharedix - 1)]
    return (x - ref.mean(0)) / ref.std(0)


def image_ids0(store: SubjectStore, rows: np.ndarray | None = None) -> np.ndarray:
    idx = store.trials.image_index if rows is None else store.trials.image_index[rows]
    return np.array([int(store.image_ids[i].removeprefix("nsd-")) for i in idx])


# ---------------------------------------------------------------------------------------------
# values


def test_voxels_are_zscored_percent_signal_change_in_mask_order(fake, store):
    want = np.concatenate([expected_voxels(fake, s) for s in (1, 2, 3)])
    assert store.voxels.shape == want.shape == (3 * TRIALS, int(fake.mask.sum()))
    np.testing.assert_allclose(store.voxels, want, atol=1e-4)
    # trial order = experiment order and image ids are 0-based 73k indices
    np.testing.assert_array_equal(image_ids0(store), np.concatenate([fake.session_images0(1, s) for s in (1, 2, 3)]))
    np.testing.assert_array_equal(store.trials.session, np.repeat([1, 2, 3], TRIALS))
    assert store.meta["source"] == "nsd" and store.meta["nsdgeneral_voxels"] == int(fake.mask.sum())
    assert store.meta["mask_shape"] == list(fake.mask.shape) and store.meta["sessions"] == [1, 2, 3]


def test_zscore_exclude_test_uses_only_non_shared_trials(fake, tmp_path):
    out = prepare_nsd(fake.root, 1, tmp_path / "s", sessions="2", image_size=SIZE, voxel_dtype="float32",
                      zscore_exclude_test=True, progress=False)
    st = SubjectStore(out)
    np.testing.assert_allclose(st.voxels, expected_voxels(fake, 2, exclude_shared=True), atol=1e-4)
    assert not np.allclose(st.voxels, expected_voxels(fake, 2), atol=1e-3)
    assert st.meta["zscore_exclude_test"] is True and "non-shared" in st.meta["preprocessing"]


def test_nifti_betas_give_the_same_store(fake, store, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(fake.root, root, ignore=shutil.ignore_patterns("betas_session*"))
    for s in (1, 2, 3):
        write_betas(root / fake.betas_path(1, s, "nii.gz").relative_to(fake.root), fake.betas[(1, s)])
    st = SubjectStore(prepare_nsd(root, 1, tmp_path / "s", sessions="1-3", image_size=SIZE, voxel_dtype="float32",
                                  chunk_trials=97, progress=False))
    np.testing.assert_array_equal(st.voxels, store.voxels)
    assert st.meta["betas_format"] == ["nifti"]


@pytest.mark.parametrize("chunks,compression", [((TRIALS, 1, 1, 1), None), ((100, 5, 6, 7), "gzip")],
                         ids=["official-per-voxel-chunks", "gzip-trial-chunks"])
def test_chunked_hdf5_layouts_give_the_same_voxels(fake, store, tmp_path, chunks, compression):
    root = tmp_path / "root"
    shutil.copytree(fake.root, root)
    path = root / fake.betas_path(1, 2).relative_to(fake.root)
    write_betas(path, fake.betas[(1, 2)], chunks, compression)
    assert nsd.BetasReader(path, fake.mask).by_voxel == (chunks[0] == TRIALS)
    st = SubjectStore(prepare_nsd(root, 1, tmp_path / "s", sessions="2", image_size=SIZE, voxel_dtype="float32",
                                  chunk_trials=7, progress=False))
    np.testing.assert_array_equal(st.voxels, store.voxels[TRIALS: 2 * TRIALS])


def test_images_are_resized_stimuli(fake, store):
    for k in (0, 7, len(store.image_ids) - 1):
        nsd_id = int(store.image_ids[k].removeprefix("nsd-"))
        want = np.asarray(Image.fromarray(fake.brick[nsd_id]).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
        np.testing.assert_array_equal(store.images[k], want)
    assert store.images.shape[1:] == (SIZE, SIZE, 3)
    # exactly the images the subject saw, each once
    seen = np.unique(np.concatenate([fake.session_images0(1, s) for s in (1, 2, 3)]))
    np.testing.assert_array_equal(sorted(int(i.removeprefix("nsd-")) for i in store.image_ids), seen)


# ---------------------------------------------------------------------------------------------
# splits and repetitions


def test_shared_images_are_test_and_no_image_is_in_two_splits(fake, store):
    ids = image_ids0(store)
    is_shared = np.isin(ids, fake.sharedix - 1)
    assert is_shared.any() and (~is_shared).any()
    np.testing.assert_array_equal(store.trials.split == "test", is_shared)
    np.testing.assert_array_equal(store.trials.split == "train", ~is_shared)
    by_split = {sp: set(store.image_indices(sp).tolist()) for sp in ("train", "test")}
    assert not by_split["train"] & by_split["test"]


def test_repetition_counts_earlier_presentations_and_test_averages(fake, store):
    order = fake.masterordering
    want = np.array([np.sum(order[:i] == order[i]) for i in range(3 * TRIALS)])
    np.testing.assert_array_equal(store.trials.repetition, want)
    assert set(np.unique(want)) == {0, 1, 2}
    avg, images = store.split_voxels("test", "averaged")
    k = int(np.flatnonzero(np.bincount(store.trials.image_index[store.trial_indices("test")]) == 3)[0])
    rows = np.flatnonzero(store.trials.image_index == k)
    np.testing.assert_allclose(avg[list(images).index(k)], store.voxels[rows].mean(0), atol=1e-6)


def test_repetition_is_the_true_history_for_a_later_session_subset(fake, tmp_path):
    st = SubjectStore(prepare_nsd(fake.root, 1, tmp_path / "s", sessions="3", image_size=SIZE, progress=False))
    order = fake.masterordering
    want = [np.sum(order[:i] == order[i]) for i in range(2 * TRIALS, 3 * TRIALS)]
    np.testing.assert_array_equal(st.trials.repetition, want)


def test_val_fraction_makes_a_disjoint_val_split(fake, tmp_path):
    st = SubjectStore(prepare_nsd(fake.root, 1, tmp_path / "s", sessions="1-2", image_size=SIZE, val_fraction=0.1,
                                  progress=False))
    sets = {sp: set(st.image_indices(sp).tolist()) for sp in ("train", "val", "test")}
    n_other = len(sets["train"]) + len(sets["val"])
    assert len(sets["val"]) == round(0.1 * n_other)
    assert not (sets["train"] & sets["val"]) and not (sets["val"] & sets["test"])


def test_train_fraction_keeps_a_seeded_half_of_train_images(fake, store, tmp_path):
    a = SubjectStore(prepare_nsd(fake.root, 1, tmp_path / "a", sessions="1-3", image_size=SIZE, train_fraction=0.5,
                                 voxel_dtype="float32", progress=False))
    b = SubjectStore(prepare_nsd(fake.root, 1, tmp_path / "b", sessions="1-3", image_size=SIZE, train_fraction=0.5,
                                 voxel_dtype="float32", progress=False))
    n_train_full = len(store.image_indices("train"))
    kept = {a.image_ids[i] for i in a.image_indices("train")}
    assert len(kept) == round(0.5 * n_train_full)
    assert kept == {b.image_ids[i] for i in b.image_indices("train")}  # deterministic
    # test untouched, and every kept image keeps all its trials with the same voxels
    assert {a.image_ids[i] for i in a.image_indices("test")} == {store.image_ids[i] for i in store.image_indices("test")}
    full_ids = np.array(store.image_ids)[store.trials.image_index]
    keep_rows = np.flatnonzero(np.isin(full_ids, list(kept)) | (store.trials.split == "test"))
    np.testing.assert_array_equal(a.voxels, store.voxels[keep_rows])
    assert a.meta["train_fraction"] == 0.5
    c = SubjectStore(prepare_nsd(fake.root, 1, tmp_path / "c", sessions="1-3", image_size=SIZE, train_images=50,
                                 progress=False))
    assert len(c.image_indices("train")) == 50


def test_max_sessions_uses_only_the_first_sessions(fake, store, tmp_path):
    st = SubjectStore(prepare_nsd(fake.root, 1, tmp_path / "s", sessions="1-3", max_sessions=2, image_size=SIZE,
                                  voxel_dtype="float32", progress=False))
    assert st.meta["sessions"] == [1, 2] and set(st.trials.session.tolist()) == {1, 2}
    np.testing.assert_array_equal(st.voxels, store.voxels[: 2 * TRIALS])


# ---------------------------------------------------------------------------------------------
# errors


def test_all_missing_files_are_listed_at_once(fake, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(fake.root, root)
    (root / fake.betas_path(1, 2).relative_to(fake.root)).unlink()
    (root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5").unlink()
    with pytest.raises(MindEyeError) as err:
        prepare_nsd(root, 1, tmp_path / "s", sessions="1-3", progress=False)
    msg = str(err.value)
    assert "2 NSD file(s)" in msg and "betas_session02.hdf5" in msg and "nsd_stimuli.hdf5" in msg
    assert "betas_session01" not in msg and "s3://natural-scenes-dataset" in msg
    assert not (tmp_path / "s.partial").exists()


def test_sessions_beyond_the_release_are_refused():
    assert parse_sessions(None, 1) == list(range(1, 38))
    assert parse_sessions(None, 4) == list(range(1, 31))
    assert parse_sessions("1,3,5-7", 2) == [1, 3, 5, 6, 7]
    assert parse_sessions("all", 3) == list(range(1, 33))
    with pytest.raises(MindEyeError, match="subject 4 has 30 released NSD sessions.*31-33"):
        parse_sessions("29-33", 4)
    with pytest.raises(MindEyeError, match="cannot read --sessions"):
        parse_sessions("1-x", 1)


def test_betas_shape_mismatch_names_the_file_and_both_shapes(fake, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(fake.root, root)
    bad = root / fake.betas_path(1, 2).relative_to(fake.root)
    write_betas(bad, np.zeros((TRIALS, 7, 6, 4), dtype=np.int16))  # one slice short
    with pytest.raises(MindEyeError) as err:
        prepare_nsd(root, 1, tmp_path / "s", sessions="1-3", progress=False)
    msg = str(err.value)
    assert str(bad) in msg and "(7, 6, 4)" in msg and str(fake.mask.shape) in msg


def test_unexpected_voxel_count_warns_and_is_recorded(store, caplog, fake, tmp_path):
    with caplog.at_level(logging.WARNING, logger="mindeye.data.nsd"):
        prepare_nsd(fake.root, 1, tmp_path / "s", sessions="1", image_size=SIZE, progress=False)
    assert f"selects {int(fake.mask.sum())} voxels" in caplog.text and "15724" in caplog.text
    assert store.meta["nsdgeneral_voxels_expected"] == 15724 and store.meta["warnings"]


# ---------------------------------------------------------------------------------------------
# resume


def _store_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(fake, tmp_path, monkeypatch):
    kw = dict(sessions="1-3", image_size=SIZE, train_fraction=0.5, progress=False)
    clean = prepare_nsd(fake.root, 1, tmp_path / "clean", **kw)

    real = nsd._session_voxels
    calls: list[Path] = []

    def crash_on_third(path, mask, chunk):
        calls.append(path)
        if "session03" in path.name:
            raise KeyboardInterrupt  # what Ctrl-C looks like mid-session
        return real(path, mask, chunk)

    monkeypatch.setattr(nsd, "_session_voxels", crash_on_third)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        prepare_nsd(fake.root, 1, out, **kw)
    assert not out.exists() and (tmp_path / "resumed.partial").exists()
    with pytest.raises(MindEyeError, match="different options.*train_fraction"):
        prepare_nsd(fake.root, 1, out, **{**kw, "train_fraction": 1.0})

    calls.clear()
    monkeypatch.setattr(nsd, "_session_voxels", lambda p, m, c: (calls.append(p), real(p, m, c))[1])
    prepare_nsd(fake.root, 1, out, **kw)
    assert [p.name for p in calls] == ["betas_session03.hdf5"]  # sessions 1-2 were not redone
    assert _store_bytes(out) == _store_bytes(clean)


def test_restart_discards_a_partial_run(fake, tmp_path, monkeypatch):
    def boom(path, mask, chunk):
        raise RuntimeError("disk full")

    monkeypatch.setattr(nsd, "_session_voxels", boom)
    with pytest.raises(RuntimeError):
        prepare_nsd(fake.root, 1, tmp_path / "s", sessions="1", image_size=SIZE, progress=False)
    monkeypatch.undo()
    out = prepare_nsd(fake.root, 1, tmp_path / "s", sessions="1-2", image_size=SIZE, restart=True, progress=False)
    assert SubjectStore(out).meta["sessions"] == [1, 2]


# ---------------------------------------------------------------------------------------------
# command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mindeye prepare")
    add_prepare_parsers(parser.add_subparsers(dest="source"))
    return parser


def test_cli_prepares_a_store(fake, tmp_path, capsys):
    args = _parser().parse_args(["nsd", "--nsd-root", str(fake.root), "--subject", "1", "--out", str(tmp_path / "s"),
                                 "--sessions", "1-2", "--max-sessions", "1", "--image-size", str(SIZE),
                                 "--no-progress"])
    assert args.func(args) == 0
    assert "trials       750" in capsys.readouterr().out
    assert SubjectStore(tmp_path / "s").meta["sessions"] == [1]
    with pytest.raises(SystemExit):
        _parser().parse_args(["nsd", "--nsd-root", ".", "--subject", "9", "--out", "x"])
