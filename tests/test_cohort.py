"""Simulated cohorts (mindeye simulate --cohort) and few-session stores (--train-sessions)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mindeye.cli import main
from mindeye.data.simulate import SCALES, read_cohort, simulate_cohort, simulate_subject
from mindeye.data.store import SubjectStore
from mindeye.errors import MindEyeError

TINY = SCALES["tiny"]
DATA_FILES = ("voxels.npy", "images.npy", "trials.csv", "images.csv", "attributes.json", "voxel_info.json")


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cohort")
    return {"a": simulate_cohort(root / "a", 3, "tiny", seed=0, progress=False),
            "a_again": simulate_cohort(root / "a_again", 3, "tiny", seed=0, progress=False),
            "b": simulate_cohort(root / "b", 1, "tiny", seed=1, progress=False)}


@pytest.fixture(scope="module")
def single(tiny_store: Path) -> SubjectStore:
    return SubjectStore(tiny_store)  # the tiny seed-0 subject (conftest.py, built once per session)


def stores(cohort: Path) -> list[SubjectStore]:
    return [SubjectStore(e["path"]) for e in read_cohort(cohort)["subjects"]]


def test_layout_and_subject_ids(cohorts: dict[str, Path]) -> None:
    a = cohorts["a"]
    assert sorted(p.name for p in a.iterdir()) == ["cohort.json", "subj01", "subj02", "subj03"]
    assert not a.with_name("a.partial").exists()
    info = read_cohort(a)
    assert [e["subject_id"] for e in info["subjects"]] == ["subj01", "subj02", "subj03"]
    for j, st in enumerate(stores(a), start=1):
        assert st.meta["subject_id"] == st.subject_id == f"subj{j:02d}"
        assert st.meta["cohort"]["index"] == j and st.meta["cohort"]["n_subjects"] == 3
        assert all(st.verify_checksums().values())
        assert info["subjects"][j - 1]["checksums"] == st.meta["checksums"]


def test_same_seed_identical_bytes_other_seed_differs(cohorts: dict[str, Path]) -> None:
    a, again, b = (read_cohort(cohorts[k]) for k in ("a", "a_again", "b"))
    assert [e["checksums"] for e in a["subjects"]] == [e["checksums"] for e in again["subjects"]]
    for sid in ("subj01", "subj02", "subj03"):
        for name in DATA_FILES:
            assert (cohorts["a"] / sid / name).read_bytes() == (cohorts["a_again"] / sid / name).read_bytes()
    assert (cohorts["a"] / "cohort.json").read_text().replace("a_again", "a") == \
        (cohorts["a_again"] / "cohort.json").read_text()
    for ea, eb in zip(a["subjects"], b["subjects"]):
        assert all(ea["checksums"][k] != eb["checksums"][k] for k in ("voxels.npy", "images.npy"))


def test_subjects_differ_in_voxels_noise_and_receptive_fields(cohorts: dict[str, Path]) -> None:
    subj = stores(cohorts["a"])
    info = read_cohort(cohorts["a"])["subjects"]
    n_vox = [s.n_voxels for s in subj]
    assert len(set(n_vox)) == 3 and all(0.8 * TINY.n_voxels <= n <= 1.2 * TINY.n_voxels for n in n_vox)
    assert n_vox == [e["n_voxels"] for e in info]
    # Noise: the measured ncsnr follows each subject's noise factor (one per third of 0.7-1.3).
    factors = [e["ncsnr_factor"] for e in info]
    measured = [s.meta["simulation"]["reliability"]["ncsnr_median"] for s in subj]
    assert np.argsort(factors).tolist() == np.argsort(measured).tolist()
    assert max(measured) / min(measured) > 1.2
    drift = [s.meta["simulation"]["spec"]["brain"]["drift_offset_sd"] for s in subj]
    assert len(set(drift)) == 3
    rfs = [json.loads((s.path / "voxel_info.json").read_text())["rf"] for s in subj]
    first = [next(iter(rf.values())) for rf in rfs]
    assert first[0] != first[1] and first[1] != first[2]
    # Same shared image, different brains: the test responses are not the same.
    t0, t1 = (s.split_voxels("test")[0] for s in subj[:2])
    k = min(t0.shape[1], t1.shape[1])
    assert abs(np.corrcoef(t0[:, :k].ravel(), t1[:, :k].ravel())[0, 1]) < 0.1


def test_shared_test_images_are_identical_and_training_images_are_own(cohorts: dict[str, Path],
                                                                     single: SubjectStore) -> None:
    subj = stores(cohorts["a"])
    ref = subj[0]
    ref_test = ref.image_indices("test")
    assert len(ref_test) == TINY.n_test_images
    ref_ids = [ref.image_ids[i] for i in ref_test]
    assert ref_ids == [f"sim0_{k:05d}" for k in range(TINY.n_test_images)]
    train_ids = []
    for s in subj:
        test = s.image_indices("test")
        assert [s.image_ids[i] for i in test] == ref_ids
        np.testing.assert_array_equal(s.images[test], ref.images[ref_test])
        assert [s.captions[i] for i in test] == [ref.captions[i] for i in ref_test]
        train_ids.append({s.image_ids[i] for i in s.image_indices("train")})
        assert len(train_ids[-1]) == TINY.n_train_images
    assert not (train_ids[0] & train_ids[1]) and not (train_ids[1] & train_ids[2]) and not (train_ids[0] & train_ids[2])
    # Subject 1's images are the single-subject store's scenes of the same seed (ids name scenes).
    assert single.image_ids == ref.image_ids
    np.testing.assert_array_equal(single.images, ref.images)


def test_train_sessions_keeps_early_training_trials_and_the_whole_test_set(tmp_path: Path,
                                                                          single: SubjectStore) -> None:
    full = single
    few = SubjectStore(simulate_subject(tmp_path / "few", "tiny", seed=0, progress=False, train_sessions=1))
    assert set(few.trials.session[few.trial_indices("train")].tolist()) == {1}
    n_train_full_s1 = int(((full.trials.split == "train") & (full.trials.session == 1)).sum())
    assert len(few.trial_indices("train")) == n_train_full_s1 < len(full.trial_indices("train")) / 2
    assert few.meta["train_sessions"] == 1 and few.meta["splits"]["train"]["trials"] == n_train_full_s1
    # Rows are exactly the full store's rows (same voxels, images, ids); the test set is unchanged.
    full_ids = np.array(full.image_ids)[full.trials.image_index]
    few_ids = np.array(few.image_ids)[few.trials.image_index]
    keep = (full.trials.split == "test") | (full.trials.session == 1)
    np.testing.assert_array_equal(few_ids, full_ids[keep])
    np.testing.assert_array_equal(few.voxels, full.voxels[keep])
    ft, fi = full.split_voxels("test")
    wt, wi = few.split_voxels("test")
    np.testing.assert_array_equal(ft, wt)
    assert [full.image_ids[i] for i in fi] == [few.image_ids[i] for i in wi]
    seen = sorted(set(few_ids.tolist()))
    assert few.image_ids == seen and few.n_images < full.n_images  # images never shown are left out
    np.testing.assert_array_equal(few.images, full.images[[full.image_ids.index(i) for i in seen]])


def test_cli_cohort_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c"
    assert main(["simulate", "--cohort", "1", "--scale", "tiny", "--train-sessions", "2", "--out", str(out),
                 "--quiet"]) == 0
    assert "cohort of 1 subject" in capsys.readouterr().out
    st = SubjectStore(out / "subj01")
    assert st.meta["train_sessions"] == 2 and set(st.trials.session[st.trial_indices("train")].tolist()) == {1, 2}
    assert read_cohort(out)["train_sessions"] == 2
    assert main(["simulate", "--cohort", "1", "--scale", "tiny", "--out", str(out), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["simulate", "--cohort", "0", "--scale", "tiny", "--out", str(tmp_path / "d")]) == 2
    assert "--cohort must be between 1 and 99 subjects, got 0" in capsys.readouterr().err
    assert main(["simulate", "--scale", "tiny", "--train-sessions", "5", "--out", str(tmp_path / "e")]) == 2
    assert "--train-sessions must be between 1 and 4" in capsys.readouterr().err
    with pytest.raises(MindEyeError, match="not a simulated cohort"):
        read_cohort(tmp_path)
