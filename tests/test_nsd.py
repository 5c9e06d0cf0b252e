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
from mindeye.data.nsd import convention_sessions, parse_sessions, prepare_nsd
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
    # v1 = the sessions released before NSD's full release: the last 3 of every subject were withheld
    # (MindEyeV2 src/Train.py: old test 1,985 trials for subject 4 vs 2,188 over all 30 sessions).
    assert parse_sessions(None, 4) == list(range(1, 28))
    assert parse_sessions(None, 4, "v2") == list(range(1, 31))
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


# ---------------------------------------------------------------------------------------------
# test conventions (v1 / v2) and few-session training stores


def test_test_set_conventions_for_all_eight_subjects():
    released = [40, 40, 32, 30, 40, 32, 40, 30]
    for subject, n in enumerate(released, start=1):
        assert convention_sessions(subject, "v2") == list(range(1, n + 1))
        assert convention_sessions(subject, "v1") == list(range(1, n - 2))
    assert [len(convention_sessions(s, "v1")) for s in range(1, 9)] == [37, 37, 29, 27, 37, 29, 37, 27]
    with pytest.raises(MindEyeError, match="unknown --test-set 'v3'"):
        convention_sessions(1, "v3")


@pytest.fixture(scope="module")
def fake6(tmp_path_factory):
    """Six sessions; tests pretend subject 1 released 6 (v1 = sessions 1-3, v2 = 1-6)."""
    return build_fake_nsd(tmp_path_factory.mktemp("nsd6") / "root", n_sessions=6, n_stim=1800, pool=1500,
                          n_shared_in_pool=150, seed=1)


@pytest.fixture
def six_released(monkeypatch):
    monkeypatch.setitem(nsd.RELEASED_SESSIONS, 1, 6)


def _expected_split(fake, sessions, train_sessions):
    """Independent count: per trial of the sessions, test if shared, train if in a training session."""
    ids = np.concatenate([fake.session_images0(1, s) for s in sessions])
    session = np.repeat(sessions, TRIALS)
    shared = np.isin(ids, fake.sharedix - 1)
    return ids, session, shared, ~shared & np.isin(session, train_sessions)


@pytest.mark.parametrize("test_set,train_sessions", [("v1", None), ("v2", None), ("v1", 2), ("v2", 1)])
def test_test_set_and_train_sessions_counts(fake6, six_released, tmp_path, test_set, train_sessions):
    sessions = [1, 2, 3] if test_set == "v1" else [1, 2, 3, 4, 5, 6]
    st = SubjectStore(prepare_nsd(fake6.root, 1, tmp_path / "s", test_set=test_set, train_sessions=train_sessions,
                                  image_size=SIZE, voxel_dtype="float32", progress=False))
    ids, session, shared, train = _expected_split(fake6, sessions, sessions[:train_sessions])
    test_rows, train_rows = st.trial_indices("test"), st.trial_indices("train")
    assert len(test_rows) == shared.sum() and len(train_rows) == train.sum()
    np.testing.assert_array_equal(image_ids0(st, test_rows), ids[shared])
    np.testing.assert_array_equal(image_ids0(st, train_rows), ids[train])
    np.testing.assert_array_equal(st.trials.session[train_rows], session[train])
    assert len(st.image_indices("test")) == len(np.unique(ids[shared]))
    assert st.meta["test_set"] == test_set and st.meta["sessions"] == sessions
    assert st.meta["train_sessions"] == sessions[:train_sessions] and st.meta["test_trials"] == shared.sum()
    assert st.meta["subject_id"] == st.subject_id == "subj01"
    assert st.meta["zscore_exclude_test"] is (test_set == "v2")
    if test_set == "v2":  # the shared images of the later sessions make v2's test set larger than v1's
        v1_shared = _expected_split(fake6, [1, 2, 3], [1])[2]
        assert len(test_rows) > v1_shared.sum() and set(session[shared]) == set(sessions)


def test_v2_zscores_each_session_with_its_training_trials_only(fake6, six_released, tmp_path):
    st = SubjectStore(prepare_nsd(fake6.root, 1, tmp_path / "s", test_set="v2", train_sessions=1, image_size=SIZE,
                                  voxel_dtype="float32", progress=False))
    v1 = SubjectStore(prepare_nsd(fake6.root, 1, tmp_path / "v1", test_set="v1", train_sessions=1, image_size=SIZE,
                                  voxel_dtype="float32", progress=False))
    for s in (1, 5):  # a training session and a test-only one
        shared = np.isin(fake6.session_images0(1, s), fake6.sharedix - 1)
        rows = np.flatnonzero(st.trials.session == s)
        want = expected_voxels(fake6, s, exclude_shared=True)
        want = want if s == 1 else want[shared]  # session 5 contributes its test trials only
        np.testing.assert_allclose(st.voxels[rows], want, atol=1e-4)
        # the statistics come from the non-shared trials: they are exactly standardised ...
        if s == 1:
            train_part = np.asarray(st.voxels[rows][~shared], dtype=np.float64)
            np.testing.assert_allclose(train_part.mean(0), 0, atol=1e-4)
            np.testing.assert_allclose(train_part.std(0), 1, atol=1e-4)
    # ... whereas v1 uses all 750 trials of the session, so its values differ
    rows1 = np.flatnonzero(v1.trials.session == 1)
    np.testing.assert_allclose(v1.voxels[rows1], expected_voxels(fake6, 1), atol=1e-4)
    assert not np.allclose(v1.voxels[rows1], st.voxels[np.flatnonzero(st.trials.session == 1)], atol=1e-3)


def test_train_sessions_store_keeps_the_full_store_test_set(fake6, six_released, tmp_path):
    full = SubjectStore(prepare_nsd(fake6.root, 1, tmp_path / "full", test_set="v2", image_size=SIZE,
                                    voxel_dtype="float32", progress=False))
    few = SubjectStore(prepare_nsd(fake6.root, 1, tmp_path / "few", test_set="v2", train_sessions=1,
                                   image_size=SIZE, voxel_dtype="float32", progress=False))
    np.testing.assert_array_equal(few.voxels[few.trial_indices("test")], full.voxels[full.trial_indices("test")])
    assert [few.image_ids[i] for i in few.image_indices("test")] == [full.image_ids[i] for i in full.image_indices("test")]
    np.testing.assert_array_equal(few.images[few.image_indices("test")], full.images[full.image_indices("test")])
    assert len(few.trial_indices("train")) < len(full.trial_indices("train")) / 4


def test_explicit_sessions_are_a_custom_test_set_and_bad_train_sessions_fail(fake6, six_released, tmp_path):
    st = SubjectStore(prepare_nsd(fake6.root, 1, tmp_path / "s", sessions="1-2", image_size=SIZE, progress=False))
    assert st.meta["test_set"] == "custom"
    with pytest.raises(MindEyeError, match="--train-sessions must be between 1 and the 3 chosen sessions, got 4"):
        prepare_nsd(fake6.root, 1, tmp_path / "t", train_sessions=4, image_size=SIZE, progress=False)
    with pytest.raises(MindEyeError, match="unknown --test-set 'new'"):
        prepare_nsd(fake6.root, 1, tmp_path / "t", test_set="new", image_size=SIZE, progress=False)


def test_another_subject_gets_its_own_id(tmp_path):
    fake3 = build_fake_nsd(tmp_path / "root", subject=3, n_sessions=2, mask_shape=(5, 4, 6), seed=3)
    st = SubjectStore(prepare_nsd(fake3.root, 3, tmp_path / "s", sessions="1-2", train_sessions=1,
                                  image_size=SIZE, progress=False))
    assert st.meta["subject"] == 3 and st.subject_id == "subj03" and st.n_voxels == int(fake3.mask.sum())
    assert st.meta["nsdgeneral_voxels_expected"] == 15226
    assert set(st.trials.session[st.trial_indices("train")].tolist()) == {1}


def test_cli_test_set_and_train_sessions(fake6, six_released, tmp_path, capsys):
    args = _parser().parse_args(["nsd", "--nsd-root", str(fake6.root), "--subject", "1", "--out",
                                 str(tmp_path / "s"), "--test-set", "v2", "--train-sessions", "1",
                                 "--image-size", str(SIZE), "--no-progress"])
    assert args.func(args) == 0
    st = SubjectStore(tmp_path / "s")
    assert st.meta["test_set"] == "v2" and st.meta["train_sessions"] == [1] and st.meta["sessions"] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(SystemExit):
        _parser().parse_args(["nsd", "--nsd-root", ".", "--subject", "1", "--out", "x", "--test-set", "v3"])
