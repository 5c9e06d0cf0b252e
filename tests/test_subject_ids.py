"""Subject ids: every store names its subject so it can join a cohort (BYO, NSD, shards, simulated)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mindeye.cli import main
from mindeye.data.arrays import prepare_arrays
from mindeye.data.store import StoreWriter, SubjectStore, TrialTable, check_subject_id
from mindeye.errors import MindEyeError


@pytest.fixture
def byo(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "vox.npy", rng.normal(size=(4, 5)).astype(np.float32))
    np.save(tmp_path / "imgs.npy", rng.integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8))
    (tmp_path / "trials.csv").write_text("image_id,session,split\n0,1,train\n1,1,test\n0,2,train\n1,2,test\n")
    return tmp_path


def test_prepare_arrays_records_the_subject_id(byo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    st = SubjectStore(prepare_arrays(byo / "vox.npy", byo / "imgs.npy", byo / "trials.csv", byo / "s",
                                     image_size=8, subject="lab-S03", progress=False))
    assert st.meta["subject_id"] == st.subject_id == "lab-S03"
    assert main(["prepare", "arrays", "--voxels", str(byo / "vox.npy"), "--images", str(byo / "imgs.npy"),
                 "--trials", str(byo / "trials.csv"), "--out", str(byo / "t"), "--image-size", "8"]) == 0
    assert SubjectStore(byo / "t").subject_id == "1"  # the default label


def test_a_label_that_cannot_name_a_subject_is_refused(byo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", "arrays", "--voxels", str(byo / "vox.npy"), "--images", str(byo / "imgs.npy"),
                 "--trials", str(byo / "trials.csv"), "--out", str(byo / "t"), "--subject", "subject 3"]) == 2
    err = capsys.readouterr().err
    assert "subject id 'subject 3' cannot name a subject; use 1-64 letters, digits, '-' or '_'" in err
    assert not (byo / "t").exists() and not (byo / "t.partial").exists()
    for bad in ("", "-x", "a.b", "x" * 65):
        with pytest.raises(MindEyeError, match="cannot name a subject"):
            check_subject_id(bad)
    assert check_subject_id("subj01") == "subj01"


def _store(tmp_path: Path, meta: dict, name: str = "st") -> SubjectStore:
    w = StoreWriter(tmp_path / name, n_trials=2, n_voxels=3, n_images=1, image_size=4)
    w.write_voxels(0, np.zeros((2, 3), np.float32))
    w.set_trials(TrialTable(np.zeros(2, np.int64), np.ones(2, np.int64), np.arange(2), np.array(["train"] * 2)))
    w.set_images(["a"])
    return SubjectStore(w.finalize(meta))


@pytest.mark.parametrize("meta,want", [
    ({"source": "nsd", "subject": 2}, "subj02"),  # stores written before subject_id existed
    ({"source": "nsd-webdataset", "subject": 7}, "subj07"),
    ({"source": "simulated", "subject": "sim-small-seed0"}, "sim-small-seed0"),
    ({"source": "lab", "subject": "S 03 (pilot)"}, "S-03-pilot"),
    ({"source": "lab"}, "st"),
    ({"source": "lab", "subject": "x", "subject_id": "given"}, "given"),
])
def test_subject_id_of_older_stores_is_derived(tmp_path: Path, meta: dict, want: str) -> None:
    assert _store(tmp_path, meta).subject_id == want


def test_a_damaged_subject_id_is_reported(tmp_path: Path) -> None:
    st = _store(tmp_path, {"source": "lab", "subject_id": "a/b"})
    with pytest.raises(MindEyeError, match="subject id 'a/b' cannot name a subject"):
        _ = st.subject_id
    assert json.loads((st.path / "meta.json").read_text())["subject_id"] == "a/b"
