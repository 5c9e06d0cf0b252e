"""Faults and bad input, third pass (issue 27): each case is refused with one clear line (exit 2 from the
CLI, a MindEyeError from Python), never a traceback or a silently wrong result. Tiny stores only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mindeye.cli import main
from mindeye.config import dump_config, load_config
from mindeye.data.store import SubjectStore
from mindeye.errors import MindEyeError
from test_faults import HIGH, TINY, sets  # the same tiny runs as the first passes


def cli(capsys, *argv) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.fixture(scope="module")
def store(tiny_store) -> Path:
    return tiny_store  # shared, read-only: copied before anything changes it


@pytest.fixture(scope="module")
def steps_per_epoch(store) -> int:
    return len(SubjectStore(store).trial_indices("train")) // 32


@pytest.fixture(scope="module")
def interrupted(store, steps_per_epoch, tmp_path_factory) -> Path:
    """A 2-epoch run stopped after epoch 1 (train.max_steps): a checkpoint to resume (copied before changes)."""
    run = tmp_path_factory.mktemp("third_pass") / "run"
    assert main(["train", "--config", HIGH, "--data", str(store), "--out", str(run), "--no-progress",
                 *sets("train.epochs=2", f"train.max_steps={steps_per_epoch}")]) == 0
    assert (run / "checkpoint" / "state.pt").exists()
    return run


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def resume(capsys, run: Path, *data: Path) -> tuple[int, str]:
    return cli(capsys, "train", "--config", HIGH, *[a for d in data for a in ("--data", d)], "--out", run,
               "--resume", "--no-progress", *sets("train.epochs=2"))


def other_store(store: Path, dst: Path, **meta: object) -> Path:
    """A copy of ``store`` whose meta.json says it is other data of the same width (another session set)."""
    copy_tree(store, dst)
    m = json.loads((dst / "meta.json").read_text())
    m.setdefault("checksums", {})["voxels.npy"] = "f" * 64
    m.update(meta)
    (dst / "meta.json").write_text(json.dumps(m))
    return dst


# -- 1. resume on the identical store(s), in the same order ------------------------------------------------
def test_resume_on_another_store_is_refused(interrupted, store, tmp_path, capsys):
    run = copy_tree(interrupted, tmp_path / "run")
    before = (run / "run.json").read_text()
    other = other_store(store, tmp_path / "other")
    rc, err = resume(capsys, run, other)
    assert_one_line_error(rc, err, "not the store the run was trained on", "voxels checksum")
    assert (run / "run.json").read_text() == before  # store and checksum not overwritten


def _shared_run(tmp_path: Path, stores: list[Path]) -> tuple[object, Path]:
    """A run directory as a 2-subject training leaves it after a checkpoint (run.json, config.yaml, checkpoint/)."""
    cfg = load_config(HIGH, TINY)
    run = tmp_path / "shared_run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(cfg))
    subjects = []
    for p in stores:
        st = SubjectStore(p)
        subjects.append({"id": st.subject_id, "store": str(p), "n_voxels": st.n_voxels,
                         "subject": st.meta.get("subject"), "source": st.meta.get("source"),
                         "store_voxels_sha256": st.meta["checksums"]["voxels.npy"]})
    (run / "run.json").write_text(json.dumps({"kind": "mindeye", "store": str(stores[0]), "subjects": subjects}))
    return cfg, run


def test_shared_subject_resume_needs_the_same_stores_in_the_same_order(store, tmp_path):
    from mindeye.training.trainer import Trainer

    a = other_store(store, tmp_path / "a", subject_id="subjA")
    b = other_store(store, tmp_path / "b", subject_id="subjB")
    cfg, run = _shared_run(tmp_path, [a, b])
    with pytest.raises(MindEyeError, match="another order"):
        Trainer(cfg, run, store=[b, a], resume=True, progress=False)
    with pytest.raises(MindEyeError, match="trained on 2"):
        Trainer(cfg, run, store=[a], resume=True, progress=False)
    Trainer(cfg, run, store=[a, b], resume=True, progress=False)  # the same stores: accepted


# -- 2. non-finite outputs from finite inputs -----------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe(interrupted):
    from mindeye.pipeline import MindEyePipeline

    return MindEyePipeline.from_run(interrupted, device="cpu")


def test_huge_finite_voxels_giving_nan_outputs_are_an_error(pipe):
    x = np.full((3, pipe.n_voxels), 1.0, dtype=np.float32)
    x[1] = 1e21
    with pytest.raises(MindEyeError, match="NaN or inf outputs.*row 1"):
        pipe.embed(x)
    with pytest.raises(MindEyeError, match="NaN or inf outputs"):
        pipe.retrieve(x, np.random.default_rng(0).standard_normal((4, *pipe.embed(x[:1]).retrieval.shape[1:])))


# -- 3. disk full while writing a checkpoint -----------------------------------------------------------------
def test_disk_full_writing_a_checkpoint_is_one_line(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    from mindeye.training import checkpoint

    model = torch.nn.Linear(2, 2)
    state = {"epoch": 1, "step": 1, "optimizer": {}, "scheduler": {}, "rng_cpu": torch.get_rng_state()}
    checkpoint.save_checkpoint(tmp_path, model, state)

    def full(*a, **k):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(MindEyeError, match="no space left on the device.*previous checkpoint is intact.*--resume"):
        checkpoint.save_checkpoint(tmp_path, model, {**state, "epoch": 2})
    assert (tmp_path / "checkpoint" / "state.pt").exists() and not (tmp_path / "checkpoint.tmp").exists()
    with pytest.raises(MindEyeError, match="no space left"):
        checkpoint.save_weights(model, tmp_path / "model.safetensors")


# -- 5. a torn last line in metrics.jsonl -----------------------------------------------------------------------
def test_resume_tolerates_a_torn_metrics_line(interrupted, store, tmp_path, capsys):
    run = copy_tree(interrupted, tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 99, "epoch": 2, "lo')  # power loss mid-write
    rc, err = resume(capsys, run, store)
    assert rc == 0, err
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)


# -- 7. run.json: one validated reader ---------------------------------------------------------------------------
@pytest.mark.parametrize("content, needle", [
    ('{"kind": "mindeye", "n_vox', "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"kind": "mindeye", "n_voxels": "abc"}', "n_voxels 'abc'"),
    ('{"kind": "mindeye", "subjects": [{"id": 3}]}', "subjects[0]"),
    ('{"kind": "mindeye", "subjects": "subj01"}', "subjects field"),
])
def test_damaged_run_json_is_one_line_everywhere(interrupted, store, tmp_path, capsys, content, needle):
    from mindeye.pipeline import MindEyePipeline

    run = copy_tree(interrupted, tmp_path / "run")
    (run / "run.json").write_text(content)
    with pytest.raises(MindEyeError, match="run.json"):
        MindEyePipeline.from_run(run, device="cpu")
    for argv in (["evaluate", "retrieval", "--run", run, "--device", "cpu"],
                 ["report", "--run", run, "--no-umap", "--out", tmp_path / "r.html", "--device", "cpu"]):
        rc, err = cli(capsys, *argv)
        assert_one_line_error(rc, err, "run.json", needle)
    rc, err = resume(capsys, run, store)
    assert_one_line_error(rc, err, "run.json", needle)


# -- 9. state.pt values are validated ------------------------------------------------------------------------------
@pytest.mark.parametrize("change, needle", [
    (lambda s: s.update(rng_cpu=s["rng_cpu"].float()), "rng_cpu"),
    (lambda s: s.update(epoch="x"), "epoch is 'x'"),
    (lambda s: s["optimizer"]["param_groups"].pop(), "does not fit this run"),
    (lambda s: s.update(scheduler={"foo": 1}), "scheduler state"),
])
def test_state_with_wrong_values_is_refused(interrupted, store, tmp_path, capsys, change, needle):
    run = copy_tree(interrupted, tmp_path / "run")
    path = run / "checkpoint" / "state.pt"
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)
    rc, err = resume(capsys, run, store)
    assert_one_line_error(rc, err, "state.pt", needle)


# -- 12. a diverged run is refused by from_run / load_run ---------------------------------------------------------
def test_from_run_refuses_a_diverged_run(interrupted, tmp_path):
    from mindeye.pipeline import MindEyePipeline

    run = copy_tree(interrupted, tmp_path / "run")
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "diverged": {"step": 3, "epoch": 1}}))
    with pytest.raises(MindEyeError, match="diverged"):
        MindEyePipeline.from_run(run, device="cpu")


# -- 13. an empty or foreign config.yaml blames the config, not the weights ----------------------------------------
@pytest.mark.parametrize("text, needle", [("", "is empty"), ("model:\n  kind: banana\n", "banana"),
                                          ("model:\n  kind: ridge\n", "run.json records a mindeye run")])
def test_bad_run_config_names_the_config(interrupted, tmp_path, text, needle):
    from mindeye.runs import load_run

    run = copy_tree(interrupted, tmp_path / "run")
    (run / "config.yaml").write_text(text)
    with pytest.raises(MindEyeError, match=needle) as exc:
        load_run(run)
    assert "config.yaml" in str(exc.value) and "weights" not in str(exc.value)


# -- 4. pickled or damaged CLIP weights ----------------------------------------------------------------------------
_TINY_CLIP = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": 32, "patch_size": 16, "projection_dim": 16}


class _Evil:
    def __reduce__(self):
        return (print, ("EXECUTED",))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.safetensors"])
def test_pickled_or_damaged_clip_weights_are_one_line(tmp_path, capsys, name):
    import pickle

    weights = tmp_path / "clip"
    weights.mkdir()
    (weights / "config.json").write_text(json.dumps(_TINY_CLIP))
    if name.endswith(".bin"):
        (weights / name).write_bytes(pickle.dumps({"w": _Evil()}))
    else:
        (weights / name).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    from mindeye.encoders import clip

    with pytest.raises(MindEyeError, match="could not load CLIP weights") as exc:
        clip.build("hidden", weights=str(weights))
    assert "EXECUTED" not in capsys.readouterr().out
    assert "weights_only` set to `False`" not in str(exc.value)


# -- 6 / 15a. never allocate what cannot fit; sizes in readable units ----------------------------------------------
def test_reserve_compares_free_space_before_allocating(tmp_path, monkeypatch):
    import os

    from mindeye import diskspace

    big = tmp_path / "views.npy"
    with open(big, "wb") as f:
        f.truncate(100 * 2**20)
    calls = []
    monkeypatch.setattr(os, "posix_fallocate", lambda *a: calls.append(a), raising=False)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(2**40, 2**40, 46 * 2**20))
    with pytest.raises(MindEyeError, match=r"needs 100\.0 MiB and the filesystem has 46\.0 MiB free"):
        diskspace.reserve_file(big)
    assert calls == []  # nothing was allocated
    assert diskspace.format_size(512) == "512 B" and diskspace.format_size(3 * 2**30) == "3.00 GiB"


# -- 8. ridge on a NaN voxel names the NaN --------------------------------------------------------------------------
def test_ridge_with_a_nan_voxel_names_it():
    from mindeye.models.ridge import RidgeRegression

    x = torch.randn(20, 6)
    x[3, 2] = float("nan")
    with pytest.raises(MindEyeError, match="NaN") as exc:
        RidgeRegression(6, 4).fit(x, torch.randn(20, 4), alpha=10.0)
    assert "singular" not in str(exc.value)


# -- 10. one writer per target cache ----------------------------------------------------------------------------------
def test_concurrent_embed_of_one_cache_is_refused(store, tmp_path):
    from mindeye.encoders.cache import cache_dir, embed_store
    from mindeye.encoders.registry import get_encoder
    from mindeye.utils.locks import FileLock

    st = copy_tree(store, tmp_path / "S")
    enc = get_encoder("standin-clip-final")
    out = cache_dir(st, enc.name, enc.fingerprint)
    with FileLock(st / ".locks" / f"{out.name}.lock", "held by the test"):  # as a running embed holds it
        with pytest.raises(MindEyeError, match="in use by another mindeye process"):
            embed_store(st, "standin-clip-final", views=2, progress=False, overwrite=True)


def test_cache_whose_views_file_does_not_match_its_manifest_is_recomputed(store, tmp_path):
    from mindeye.encoders.cache import embed_store, load_targets, read_manifest

    st = copy_tree(store, tmp_path / "S")
    out = embed_store(st, "standin-clip-final", views=2, progress=False)
    m = read_manifest(out)
    m["views"] = 3  # another process rewrote views.npy with 2 views after this manifest said 3
    (out / "manifest.json").write_text(json.dumps(m))
    embed_store(st, "standin-clip-final", views=3, progress=False)
    assert load_targets(st, "standin-clip-final", views=True).shape[1] == 3


# -- 11. absurd sizes and empty inputs --------------------------------------------------------------------------------
def test_absurd_view_count_is_refused_before_any_file(store, tmp_path, capsys):
    st = copy_tree(store, tmp_path / "S")
    rc, err = cli(capsys, "embed", "--data", st, "--encoder", "standin-clip-final", "--views", 10**14,
                  "--no-progress", "--device", "cpu")
    assert_one_line_error(rc, err, "not enough free disk space")
    assert not list((st / "targets").rglob("views.npy"))


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_pipeline_batch_size_must_be_positive(pipe, bad):
    x = np.zeros((2, pipe.n_voxels), dtype=np.float32)
    with pytest.raises(MindEyeError, match="batch_size"):
        pipe.embed(x, batch_size=bad)


def test_retrieve_with_no_candidates_is_one_error(pipe):
    x = np.zeros((2, pipe.n_voxels), dtype=np.float32)
    for empty in (np.zeros((0, 8, 8, 3), dtype=np.uint8), np.zeros((0, 16), dtype=np.float32)):
        with pytest.raises(MindEyeError, match="candidate"):
            pipe.retrieve(x, empty)


# -- 14. index entries stay inside their directory ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../outside.png", "/etc/passwd", "images/../../outside.png"])
def test_recon_index_entry_outside_its_directory_is_refused(tmp_path, name):
    from mindeye.evaluation.recon_eval import read_recon_dir
    from mindeye.utils.images import save_png

    recon = tmp_path / "recon"
    (recon / "images").mkdir(parents=True)
    save_png(np.zeros((8, 8, 3), np.uint8), tmp_path / "outside.png")
    (recon / "index.json").write_text(json.dumps({"kind": "reconstruct", "config": {},
                                                  "images": {"0": {"image_index": 0, "file": name}}}))
    with pytest.raises(MindEyeError, match="not a path inside"):
        read_recon_dir(recon)


def test_index_ids_location_outside_its_root_is_refused(tmp_path):
    from mindeye.inference.sources import ImageSource, open_source
    from mindeye.utils.images import save_png

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    save_png(np.zeros((8, 8, 3), np.uint8), imgs / "a.png")
    source = open_source(imgs)
    source.location[0] = "../secret.png"
    source.write_ids(tmp_path / "ids.csv")
    with pytest.raises(MindEyeError, match="not a path inside"):
        ImageSource.read(tmp_path, source.describe())


# -- 15. wording and loose ends --------------------------------------------------------------------------------------
def test_simulate_disk_full_does_not_promise_kept_work_or_resume(tmp_path, capsys, monkeypatch):
    import errno

    import mindeye.data.simulate as sim  # the command imports it when it runs

    def full(out, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out) + ".partial/voxels.npy")

    monkeypatch.setattr(sim, "simulate_subject", full)
    rc, err = cli(capsys, "simulate", "--scale", "tiny", "--out", tmp_path / "S", "--no-progress")
    assert_one_line_error(rc, err, "no space left", "cannot resume")
    assert "--resume" not in err and "finished work is kept" not in err


def test_out_that_is_a_regular_file_is_one_clear_line(store, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    rc, err = cli(capsys, "train", "--config", HIGH, "--data", store, "--out", tmp_path / "afile", "--no-progress")
    assert_one_line_error(rc, err, "is a file, not a directory")
    assert "File exists" not in err


def test_report_out_that_is_a_directory_fails_before_building(interrupted, tmp_path, capsys, monkeypatch):
    import mindeye.evaluation.report as report

    monkeypatch.setattr(report, "build_report", lambda *a, **k: pytest.fail("built the report first"))
    rc, err = cli(capsys, "report", "--run", interrupted, "--no-umap", "--out", tmp_path, "--device", "cpu")
    assert_one_line_error(rc, err, "is a directory; give a file path")


def test_object_array_error_does_not_advise_allow_pickle(tmp_path):
    import io

    from mindeye.data.webdataset_shards import _npy
    from mindeye.utils.images import decode_image

    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    for call in (lambda: decode_image(buf.getvalue(), "shard s member m"),
                 lambda: _npy({"nsdgeneral.npy": buf.getvalue()}, "nsdgeneral.npy", "shard s")):
        with pytest.raises(MindEyeError, match="Python objects") as exc:
            call()
        assert "allow_pickle" not in str(exc.value)


def test_info_shows_a_truncated_target_cache_as_damaged(store, tmp_path, capsys):
    st = copy_tree(store, tmp_path / "S")
    targets = next((st / "targets").glob("standin-clip-final-*")) / "targets.npy"
    with open(targets, "r+b") as f:
        f.truncate(targets.stat().st_size // 2)
    rc = main(["info", str(st)])
    out = capsys.readouterr().out
    assert rc == 0
    line = next(x for x in out.splitlines() if "targets" in x)
    assert "DAMAGED" in line and "standin-clip-final" in line.split("DAMAGED")[0]
    assert "  checksums    ok\n" not in out + "\n"


def test_generator_refusal_shows_no_diffusers_unsafe_serialization_line(tmp_path, capfd):
    from mindeye.errors import WeightsUnavailableError
    from mindeye.inference.generators import load_generator

    for sub in ("image_unet", "unet", "vae"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "config.json").write_text("{}")
    with pytest.raises(WeightsUnavailableError):
        load_generator("versatile-diffusion", str(tmp_path))
    err = capfd.readouterr().err
    assert "unsafe serialization" not in err and "allow_pickle" not in err


def test_broken_faiss_install_is_one_line(monkeypatch):
    import builtins

    from mindeye.inference.index import require_faiss

    real = builtins.__import__

    def broken(name, *a, **k):
        if name == "faiss":
            raise OSError("libfaiss.so: cannot open shared object file")
        return real(name, *a, **k)

    monkeypatch.delitem(__import__("sys").modules, "faiss", raising=False)
    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(MindEyeError, match="faiss is installed but cannot be imported"):
        require_faiss()


def _arrays(tmp: Path, trials: str, images: Path) -> list:
    np.save(tmp / "vox.npy", np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32))
    (tmp / "trials.csv").write_text(trials, encoding="utf-8")
    return ["prepare", "arrays", "--voxels", tmp / "vox.npy", "--images", images, "--trials", tmp / "trials.csv",
            "--image-size", "8", "--out", tmp / "S"]


def test_nfd_file_names_match_nfc_ids(tmp_path, capsys):
    import unicodedata

    from mindeye.utils.images import save_png

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    ids = ["caf\u00e9", "b", "c"]  # NFC ids in the CSV
    for i in ids:
        save_png(np.zeros((8, 8, 3), np.uint8), imgs / f"{unicodedata.normalize('NFD', i)}.png")
    rows = "".join(f"{i},{s},{'test' if i == 'c' else 'train'}\n" for s in (1, 2) for i in ids)
    rc, err = cli(capsys, *_arrays(tmp_path, "image_id,session,split\n" + rows, imgs))
    assert rc == 0, err


def test_int64_overflowing_session_numbers_are_one_line(tmp_path, capsys, store):
    np.save(tmp_path / "imgs.npy", np.zeros((3, 8, 8, 3), np.uint8))
    big = 2**70
    rows = "".join(f"{i},{s},{'test' if i == 2 else 'train'}\n" for s in (1, big) for i in range(3))
    rc, err = cli(capsys, *_arrays(tmp_path, "image_id,session,split\n" + rows, tmp_path / "imgs.npy"))
    assert_one_line_error(rc, err, "session")
    st = copy_tree(store, tmp_path / "T")
    text = (st / "trials.csv").read_text().splitlines()
    head = text[0].split(",")
    cells = text[1].split(",")
    cells[head.index("session")] = str(big)
    (st / "trials.csv").write_text("\n".join([text[0], ",".join(cells), *text[2:]]) + "\n")
    with pytest.raises(MindEyeError, match="malformed"):
        SubjectStore(st)


def test_sigterm_is_handled_like_sigint(tmp_path):
    import subprocess
    import sys

    script = (
        "import os, signal, sys, time\n"
        "import mindeye.commands.info as info\n"
        "def slow(args):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(5)\n"
        "info.run = slow\n"
        "from mindeye.cli import main\n"
        f"sys.exit(main(['info', {str(tmp_path)!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 143, proc.stderr
    assert "terminated" in proc.stderr and "Traceback" not in proc.stderr


def test_reconstruct_refuses_fractional_image_index_and_nan_guidance(pipe):
    x = np.zeros((1, pipe.n_voxels), dtype=np.float32)
    with pytest.raises(MindEyeError, match="image_index must hold whole numbers"):
        pipe.reconstruct(x, image_index=[0.5], samples=1, num_inference_steps=1)
    with pytest.raises(MindEyeError, match="guidance must be a finite number"):
        pipe.reconstruct(x, guidance_scale=float("nan"), samples=1, num_inference_steps=1)


def test_names_cannot_break_the_markdown_table_or_inject_csv_formulas():
    from mindeye.evaluation.report_tables import csv_table
    from mindeye.evaluation.tables import markdown_table

    md = markdown_table([{"name": "a | b", "pixcorr": 0.1}])
    row = md.splitlines()[2]
    assert row.startswith("| a \\| b |") and row.count(" | ") == md.splitlines()[0].count(" | ")
    csv_text = csv_table([{"name": '=HYPERLINK("http://x","y")', "pixcorr": 0.1}])
    assert csv_text.splitlines()[1].startswith("\"'=HYPERLINK") or csv_text.splitlines()[1].startswith("'=HYPERLINK")
