"""Faults and bad input, end to end through the CLI (issue 14): each case is one clear line and exit 2,
never a traceback, a NaN score, a stuck run or half-written output that looks complete."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from mindeye.cli import main
from mindeye.data.store import SubjectStore
from mindeye.metrics.retrieval import _ranks
from mindeye.training.checkpoint import recover_interrupted_swap
from mindeye.training.run_lock import RunLock

REPO = Path(__file__).resolve().parents[1]
HIGH = str(REPO / "src/mindeye/configs" / "demo-highlevel.yaml")
TINY = ["model.backbone.hidden=64", "model.backbone.n_blocks=1", "model.projector.hidden=32",
        "model.prior.depth=1", "model.prior.heads=2", "model.prior.dim_head=16", "train.batch_size=32",
        "train.log_every=5", "data.val_images=0", "train.val_every=100"]


def sets(*overrides: str) -> list[str]:
    return [a for o in (*TINY, *overrides) for a in ("--set", o)]


def cli(capsys, *argv: str) -> tuple[int, str]:
    """Run `mindeye ARGV` in-process; returns (exit code, stderr). A traceback would fail the test."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return rc, err


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.fixture(scope="module")
def store(tiny_store) -> Path:
    return tiny_store  # conftest.py: built once per session (tests copy it before damaging it)


@pytest.fixture(scope="module")
def steps_per_epoch(store) -> int:
    return len(SubjectStore(store).trial_indices("train")) // 32


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory) -> Path:
    """A finished 1-epoch high-level run (copied by tests that damage it)."""
    run = tmp_path_factory.mktemp("faults_run") / "run"
    assert main(["train", "--config", HIGH, "--data", str(store), "--out", str(run), "--no-progress",
                 *sets("train.epochs=1")]) == 0
    return run


def copy_run(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


# -- 1. NaN never scores -----------------------------------------------------------------------------
def test_diverged_run_writes_no_weights_and_cannot_be_evaluated(store, tmp_path, capsys):
    run = tmp_path / "diverged"
    rc, err = cli(capsys, "train", "--config", HIGH, "--data", store, "--out", run, "--no-progress",
                  *sets("train.epochs=2", "train.max_lr=1e6"))
    assert_one_line_error(rc, err, "training diverged at step", "run.json records the divergence")
    assert not (run / "model.safetensors").exists() and not (run / "checkpoint").exists()
    info = json.loads((run / "run.json").read_text())
    assert info["diverged"]["step"] >= 1
    rc, err = cli(capsys, "evaluate", "retrieval", "--run", run, "--device", "cpu")
    assert_one_line_error(rc, err, "diverged during training")
    rc, err = cli(capsys, "reconstruct", "--run", run, "--out", tmp_path / "rec", "--generator",
                  "demo-latent-diffusion", "--device", "cpu", "--no-progress")
    assert_one_line_error(rc, err, "diverged during training")  # not blamed on the generator


def test_nan_weight_is_an_error_not_a_perfect_score(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    state = load_file(str(run / "model.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].view(-1)[0] = float("nan")
    save_file(state, str(run / "model.safetensors"))
    rc, err = cli(capsys, "evaluate", "retrieval", "--run", run, "--device", "cpu")
    assert_one_line_error(rc, err, "NaN or inf weights", name)
    assert not (run / "eval" / "retrieval.json").exists()


def test_nan_test_voxel_is_an_error(trained, store, tmp_path, capsys):
    bad_store = tmp_path / "store"
    shutil.copytree(store, bad_store)
    s = SubjectStore(bad_store)
    row = int(s.trial_indices("test")[0])
    vox = np.load(bad_store / "voxels.npy", mmap_mode="r+")
    vox[row, 3] = np.nan
    vox.flush()
    del vox
    rc, err = cli(capsys, "evaluate", "retrieval", "--run", trained, "--data", bad_store, "--device", "cpu")
    assert_one_line_error(rc, err, "test voxels", "NaN or inf")


def test_nan_similarity_never_counts_as_a_hit():
    sim = torch.eye(4)
    sim[1, 1] = float("nan")  # correct candidate NaN: last, not first
    sim[2, 0] = float("nan")  # a NaN rival beats the correct one
    ranks = _ranks(sim)  # issue 13 named the directions: row i = brain i over images, column j = image j
    assert ranks["brain_to_image"].tolist() == [0, 3, 1, 0]
    assert ranks["image_to_brain"].tolist() == [1, 3, 0, 0]


def test_retrieval_table_names_the_pool_used(trained, capsys):
    rc = main(["evaluate", "retrieval", "--run", str(trained), "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0
    res = json.loads((trained / "eval" / "retrieval.json").read_text())
    assert 0 <= res["image_to_brain"] < 1 and res["pool"] == 60
    assert "(60)" in out and "(300)" not in out


# -- 2. interrupted checkpoint swap ------------------------------------------------------------------
def _ckpt(path: Path, tag: str) -> None:
    path.mkdir()
    (path / "state.pt").write_text(tag)
    (path / "model.safetensors").write_text(tag)


@pytest.mark.parametrize("present, survivor", [
    ({"checkpoint"}, "checkpoint"),
    ({"checkpoint", "checkpoint.tmp"}, "checkpoint"),  # killed while writing the new one
    ({"checkpoint.old", "checkpoint.tmp"}, "checkpoint.old"),  # killed between the two renames
    ({"checkpoint", "checkpoint.old"}, "checkpoint"),  # killed while deleting the old one
    ({"checkpoint", "checkpoint.old", "checkpoint.tmp"}, "checkpoint"),
    ({"checkpoint.old"}, "checkpoint.old"),
    ({"checkpoint.tmp"}, None),  # the first checkpoint was never published
    (set(), None),
])
def test_every_swap_state_recovers_to_one_checkpoint(tmp_path, present, survivor):
    for name in present:
        _ckpt(tmp_path / name, name)
    recover_interrupted_swap(tmp_path)
    assert not (tmp_path / "checkpoint.tmp").exists() and not (tmp_path / "checkpoint.old").exists()
    if survivor is None:
        assert not (tmp_path / "checkpoint").exists()
    else:
        assert (tmp_path / "checkpoint" / "state.pt").read_text() == survivor
        # the top-level weights follow the surviving checkpoint (a kill may have come before that copy)
        assert (tmp_path / "model.safetensors").read_text() == survivor


def test_resume_after_kill_during_swap(store, steps_per_epoch, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--config", HIGH, "--data", store, "--out", run, "--no-progress"]
    assert main([str(a) for a in args + sets("train.epochs=2", f"train.max_steps={steps_per_epoch}")]) == 0
    shutil.copytree(run / "checkpoint", run / "checkpoint.old")  # a kill left the old one half deleted
    (run / "checkpoint.old" / "state.pt").unlink()
    rc = main([str(a) for a in args + ["--resume"] + sets("train.epochs=2")])
    assert rc == 0, capsys.readouterr().err
    assert not (run / "checkpoint.old").exists()
    assert torch.load(run / "checkpoint" / "state.pt", weights_only=True)["epoch"] == 2


# -- 3. 16-bit PNGs ----------------------------------------------------------------------------------
def _arrays_inputs(tmp: Path, images: Path | None = None, trials_text: str | None = None) -> list[str]:
    rng = np.random.default_rng(0)
    np.save(tmp / "vox.npy", rng.normal(size=(6, 5)).astype(np.float32))
    if images is None:
        images = tmp / "imgs.npy"
        np.save(images, rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8))
    text = trials_text or "image_id,session,split\n0,1,train\n1,1,train\n2,1,test\n0,2,train\n1,2,train\n2,2,test\n"
    (tmp / "trials.csv").write_bytes(text.encode("latin-1"))
    return ["prepare", "arrays", "--voxels", str(tmp / "vox.npy"), "--images", str(images),
            "--trials", str(tmp / "trials.csv"), "--image-size", "8"]


def test_16bit_png_is_rescaled_not_white(tmp_path, capsys):
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    grey = [np.full((8, 8), v, dtype=np.uint16) for v in (0, 257 * 100, 65535)]
    for k, g in enumerate(grey):
        Image.fromarray(g).save(pngs / f"{k}.png")
    assert Image.open(pngs / "1.png").mode.startswith("I")
    rc, err = cli(capsys, *_arrays_inputs(tmp_path, images=pngs), "--out", tmp_path / "S")
    assert rc == 0, err
    stored = SubjectStore(tmp_path / "S").images
    assert [int(stored[k].min()) for k in range(3)] == [0, 100, 255]
    assert [int(stored[k].max()) for k in range(3)] == [0, 100, 255]


# -- 4. disk full ------------------------------------------------------------------------------------
def _no_space(fd, offset, length):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="posix_fallocate only")
def test_prepare_into_full_disk_fails_clearly_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "posix_fallocate", _no_space)
    rc, err = cli(capsys, *_arrays_inputs(tmp_path), "--out", tmp_path / "S")
    assert_one_line_error(rc, err, "not enough free disk space", "voxels.npy")
    assert not (tmp_path / "S").exists() and not (tmp_path / "S.partial").exists()


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="posix_fallocate only")
def test_embed_into_full_disk_fails_clearly_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    assert main(_arrays_inputs(tmp_path) + ["--out", str(tmp_path / "S")]) == 0
    monkeypatch.setattr(os, "posix_fallocate", _no_space)
    rc, err = cli(capsys, "embed", "--data", tmp_path / "S", "--encoder", "standin-clip-hidden", "--no-progress")
    assert_one_line_error(rc, err, "not enough free disk space", "targets.npy")
    assert not any((tmp_path / "S" / "targets").glob("*"))


def test_filesystem_without_fallocate_checks_free_space(tmp_path, monkeypatch):
    from mindeye import diskspace
    from mindeye.errors import MindEyeError

    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    big = tmp_path / "big.npy"
    with open(big, "wb") as f:
        f.truncate(10 * 2**20)
    monkeypatch.setattr(os, "posix_fallocate", unsupported, raising=False)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1, 1, 2**20))
    with pytest.raises(MindEyeError, match="not enough free disk space"):
        diskspace.reserve_file(big)


# -- 5. resume with a changed config ------------------------------------------------------------------
def test_resume_with_changed_config_is_refused_listing_the_changes(trained, store, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    rc, err = cli(capsys, "train", "--config", HIGH, "--data", store, "--out", run, "--resume", "--no-progress",
                  *sets("train.epochs=3", "train.max_lr=0.0123", "model.backbone.hidden=128"))
    assert_one_line_error(rc, err, "train.epochs: 1 -> 3", "-> 0.0123", "model.backbone.hidden: 64 -> 128")


def test_resume_of_missing_run_is_refused(store, tmp_path, capsys):
    rc, err = cli(capsys, "train", "--config", HIGH, "--data", store, "--out", tmp_path / "nothing", "--resume",
                  *sets("train.epochs=1"))
    assert_one_line_error(rc, err, "nothing to resume")
    assert not (tmp_path / "nothing").exists()


def test_resume_before_the_first_checkpoint_starts_the_run(store, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    args = ["train", "--config", HIGH, "--data", store, "--out", run, "--no-progress", *sets("train.epochs=1")]
    assert main([str(a) for a in args]) == 0
    shutil.rmtree(run / "checkpoint")  # as if killed during the first epoch: config.yaml, no checkpoint
    (run / "model.safetensors").unlink()
    assert main([str(a) for a in args + ["--resume"]]) == 0
    assert (run / "checkpoint" / "state.pt").exists()


# -- 6. two trainings into one run directory -----------------------------------------------------------
def test_second_training_into_a_locked_run_is_refused(store, tmp_path, capsys):
    run = tmp_path / "run"
    with RunLock(run):
        rc, err = cli(capsys, "train", "--config", HIGH, "--data", store, "--out", run, "--no-progress",
                      *sets("train.epochs=1"))
    assert_one_line_error(rc, err, "in use by another mindeye process", f"PID {os.getpid()}")
    assert not (run / "metrics.jsonl").exists()


# -- 7. damaged or untrusted files ----------------------------------------------------------------------
class Payload:
    """Unpickling this would run code: loaders must refuse it, not execute it."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/mindeye-pwned",))


def test_pickled_model_safetensors_is_refused(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    (run / "model.safetensors").write_bytes(pickle.dumps(Payload()))
    rc, err = cli(capsys, "evaluate", "retrieval", "--run", run, "--device", "cpu")
    assert_one_line_error(rc, err, "model.safetensors", "not a readable safetensors file")


def test_wrong_shaped_model_safetensors_is_refused(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    state = load_file(str(run / "model.safetensors"))
    name = next(k for k, v in state.items() if v.ndim == 2)
    state[name] = torch.zeros(3, 3)
    save_file(state, str(run / "model.safetensors"))
    rc, err = cli(capsys, "evaluate", "retrieval", "--run", run, "--device", "cpu")
    assert_one_line_error(rc, err, "does not fit the model")


@pytest.mark.parametrize("content", ["pickle", "garbage"])
def test_bad_checkpoint_state_is_refused(trained, store, tmp_path, capsys, content):
    run = copy_run(trained, tmp_path)
    if content == "pickle":
        torch.save({"epoch": Payload()}, run / "checkpoint" / "state.pt")
    else:
        (run / "checkpoint" / "state.pt").write_bytes(b"\x00garbage" * 10)
    rc, err = cli(capsys, "train", "--config", HIGH, "--data", store, "--out", run, "--resume", "--no-progress",
                  *sets("train.epochs=1"))
    assert_one_line_error(rc, err, "state.pt")
    assert not Path("/tmp/mindeye-pwned").exists()


def test_truncated_target_cache_is_refused(store, tmp_path, capsys):
    bad = tmp_path / "store"
    shutil.copytree(store, bad)
    targets = next((bad / "targets").glob("standin-clip-hidden-*")) / "targets.npy"
    targets.write_bytes(targets.read_bytes()[:1000])
    rc, err = cli(capsys, "train", "--config", HIGH, "--data", bad, "--out", tmp_path / "run", "--no-progress",
                  *sets("train.epochs=1"))
    assert_one_line_error(rc, err, "targets.npy", "damaged", "mindeye embed")


def test_corrupt_npy_header_is_refused(store, tmp_path, capsys):
    bad = tmp_path / "store"
    shutil.copytree(store, bad)
    raw = bytearray((bad / "voxels.npy").read_bytes())
    raw[20:30] = b"{{{{{{{{{{"
    (bad / "voxels.npy").write_bytes(raw)
    rc, err = cli(capsys, "info", bad)
    assert_one_line_error(rc, err, "voxels.npy", "prepare it again")


@pytest.mark.parametrize("encoder", ["sd-vae", "vicregl-convnext"])
def test_pickled_encoder_weights_are_refused(tmp_path, capsys, encoder):
    assert main(_arrays_inputs(tmp_path) + ["--out", str(tmp_path / "S")]) == 0
    weights = tmp_path / "weights.pth"
    torch.save({"state_dict": Payload()}, weights)
    rc, err = cli(capsys, "embed", "--data", tmp_path / "S", "--encoder", encoder, "--weights", weights,
                  "--no-progress")
    assert_one_line_error(rc, err, "weights.pth", "pickled")
    assert not Path("/tmp/mindeye-pwned").exists()


def test_pickled_metric_weights_are_refused(tmp_path):
    from mindeye.errors import MindEyeError
    from mindeye.evaluation.feature_nets import _load_state_dict

    torch.save({"state_dict": Payload()}, tmp_path / "alexnet-owt-7be5be79.pth")
    with pytest.raises(MindEyeError, match="pickled Python objects"):
        _load_state_dict(tmp_path / "alexnet-owt-7be5be79.pth")
    assert not Path("/tmp/mindeye-pwned").exists()


def test_truncated_reconstruction_index_is_refused(tmp_path, capsys):
    recons = tmp_path / "recons"
    recons.mkdir()
    (recons / "index.json").write_text('{"images": {"0": ')
    rc, err = cli(capsys, "evaluate", "recon", "--recons", recons, "--out", tmp_path / "m.json", "--pixel-only")
    assert_one_line_error(rc, err, "index.json")


def test_truncated_index_of_an_interrupted_reconstruction_is_refused(tmp_path):
    from mindeye.errors import MindEyeError
    from mindeye.inference.reconstruct import open_index

    (tmp_path / "index.json").write_text('{"kind": "recon", "images": {"0": ')
    with pytest.raises(MindEyeError, match="index.json is damaged"):
        open_index(tmp_path, "recon", {})


# -- 8. OS errors -------------------------------------------------------------------------------------
def test_out_under_a_regular_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    rc, err = cli(capsys, *_arrays_inputs(tmp_path), "--out", tmp_path / "file" / "S")
    assert_one_line_error(rc, err, "is a file, not a directory")


def test_name_too_long_counting_the_partial_suffix(tmp_path, capsys):
    rc, err = cli(capsys, *_arrays_inputs(tmp_path), "--out", tmp_path / ("s" * 250))
    assert_one_line_error(rc, err, "too long")
    assert not list(tmp_path.glob("sss*"))


def test_config_directory(tmp_path, capsys):
    rc, err = cli(capsys, "train", "--config", tmp_path, "--out", tmp_path / "run")
    assert_one_line_error(rc, err, "is a directory")


def test_read_only_output_is_one_line(tmp_path, capsys, monkeypatch):
    import mindeye.data.store as store_mod

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "S.partial"))

    monkeypatch.setattr(store_mod.StoreWriter, "__init__", read_only)
    rc, err = cli(capsys, *_arrays_inputs(tmp_path), "--out", tmp_path / "S")
    assert_one_line_error(rc, err, "read-only")


def test_metrics_out_is_a_directory(tmp_path, capsys):
    from mindeye.errors import MindEyeError
    from mindeye.evaluation.recon_eval import write_metrics

    (tmp_path / "rec").mkdir()
    with pytest.raises(MindEyeError, match="is a directory"):
        write_metrics({"rows": []}, tmp_path / "rec")
    assert not (tmp_path / "rec.tmp").exists()


def test_full_disk_while_checkpointing_keeps_no_torn_checkpoint(store, tmp_path, capsys, monkeypatch):
    import mindeye.training.checkpoint as ckpt

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "checkpoint.tmp"))

    monkeypatch.setattr(ckpt, "save_file", full)
    rc, err = cli(capsys, "train", "--config", HIGH, "--data", store, "--out", tmp_path / "run", "--no-progress",
                  *sets("train.epochs=1"))
    assert_one_line_error(rc, err, "no space left on the device", "--resume")
    assert not (tmp_path / "run" / "checkpoint.tmp").exists() and not (tmp_path / "run" / "checkpoint").exists()


# -- 9. optional dependency checked first ---------------------------------------------------------------
def test_index_build_without_faiss_says_how_to_install(store, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ModuleNotFoundError
    rc, err = cli(capsys, "index", "build", "--images", store, "--encoder", "standin-clip-final", "--out",
                  tmp_path / "idx", "--no-progress")
    assert_one_line_error(rc, err, "pip install 'mindeye[index]'")
    assert not (tmp_path / "idx").exists() and not (tmp_path / "idx.partial").exists()


# -- 10. devices ----------------------------------------------------------------------------------------
def test_unknown_device_for_embed(store, capsys):
    rc, err = cli(capsys, "embed", "--data", store, "--encoder", "standin-clip-hidden", "--device", "tpu9")
    assert_one_line_error(rc, err, "'tpu9' is not a torch device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_for_embed(store, capsys):
    rc, err = cli(capsys, "embed", "--data", store, "--encoder", "standin-clip-hidden", "--device", "cuda")
    assert_one_line_error(rc, err, "no CUDA GPU is available")


# -- 11. encodings --------------------------------------------------------------------------------------
def test_latin1_trial_table(tmp_path, capsys):
    text = "image_id,session,split,note\n" + "".join(
        f"{i},{s},{sp},caf\u00e9\n" for i, s, sp in [(0, 1, "train"), (1, 1, "train"), (2, 1, "test"),
                                                    (0, 2, "train"), (1, 2, "train"), (2, 2, "test")])
    rc, err = cli(capsys, *_arrays_inputs(tmp_path, trials_text=text), "--out", tmp_path / "S")
    assert_one_line_error(rc, err, "not UTF-8", "trials.csv")


# -- low: loose ends ------------------------------------------------------------------------------------
def test_negative_session_is_refused(tmp_path, capsys):
    text = "image_id,session,split\n0,-3,train\n1,1,train\n2,1,test\n0,2,train\n1,2,train\n2,2,test\n"
    rc, err = cli(capsys, *_arrays_inputs(tmp_path, trials_text=text), "--out", tmp_path / "S")
    assert_one_line_error(rc, err, "session number -3")


def test_overwrite_onto_a_file_leaves_no_backup(tmp_path, capsys):
    (tmp_path / "S").write_text("not a store")
    rc, err = cli(capsys, *_arrays_inputs(tmp_path), "--out", tmp_path / "S", "--overwrite")
    assert rc == 0, err
    assert (tmp_path / "S" / "meta.json").exists()
    assert not list(tmp_path.glob("S.old-*"))


def test_info_without_recorded_checksums(tmp_path, capsys):
    assert main(_arrays_inputs(tmp_path) + ["--out", str(tmp_path / "S")]) == 0
    meta = json.loads((tmp_path / "S" / "meta.json").read_text())
    del meta["checksums"]
    (tmp_path / "S" / "meta.json").write_text(json.dumps(meta))
    (tmp_path / "S" / "targets" / "standin-x-000").mkdir(parents=True)
    (tmp_path / "S" / "targets" / "standin-x-000" / "manifest.json").write_text('{"complete": false}')
    capsys.readouterr()
    rc = main(["info", str(tmp_path / "S")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "MISMATCH" not in out and "not recorded" in out
    assert "standin-x-000 (unfinished" in out


def test_demo_with_unknown_scale_creates_nothing(tmp_path, capsys):
    rc, err = cli(capsys, "demo", "--out", tmp_path / "demo", "--set", "scale=huge")
    assert rc == 2, err
    assert not (tmp_path / "demo").exists()


def test_evaluating_on_another_store_of_the_same_width_is_flagged(trained, store, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(store, other)
    meta = json.loads((other / "meta.json").read_text())
    meta["subject"] = "someone-else"
    (other / "meta.json").write_text(json.dumps(meta))
    rc, err = cli(capsys, "evaluate", "retrieval", "--run", trained, "--data", other, "--device", "cpu")
    assert_one_line_error(rc, err, "is not the store", "subject")


def test_moved_store_suggests_data(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    info = json.loads((run / "run.json").read_text())
    info["store"] = str(tmp_path / "gone")
    (run / "run.json").write_text(json.dumps(info))
    rc, err = cli(capsys, "evaluate", "retrieval", "--run", run, "--device", "cpu")
    assert_one_line_error(rc, err, "--data STORE")
