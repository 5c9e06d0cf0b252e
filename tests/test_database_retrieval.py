"""Database retrieval (paper 3.1 LAION retrieval): index building from stores / folders / shards, exact and
IVF-PQ search, re-ranking, resume, errors, and `mindeye retrieve` end to end on a tiny trained run."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mindeye.cli import main
from mindeye.data.store import SubjectStore
from mindeye.encoders.registry import encoder_fingerprint, get_encoder
from mindeye.errors import MindEyeError
from mindeye.inference import index as database_index
from mindeye.inference.index import DatabaseIndex, build_index, make_faiss_index, rerank
from mindeye.inference.retrieve import query_embeddings, retrieve
from mindeye.utils.images import square

REPO = Path(__file__).resolve().parents[1]
TINY_HIGH = [
    "model.backbone.hidden=128", "model.backbone.n_blocks=1", "model.projector.hidden=64",
    "model.prior.depth=1", "model.prior.heads=2", "model.prior.dim_head=16",
    "train.batch_size=32", "train.val_every=100", "train.log_every=5", "data.val_images=0",
]


@pytest.fixture(autouse=True)
def faiss_one_thread():
    # OpenMP spinning makes faiss training very slow on a small shared machine; one thread is fast here.
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def store(tiny_store) -> Path:
    return tiny_store  # conftest.py: built once per session


@pytest.fixture(scope="module")
def store_index(store, tmp_path_factory) -> Path:
    return build_index(store, "standin-clip-final", tmp_path_factory.mktemp("idx") / "bank", progress=False)


def _unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _encode(name: str, images: np.ndarray) -> np.ndarray:
    return _unit(get_encoder(name).encode(np.ascontiguousarray(images)).numpy())


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------
# Building
# ------------------------------------------------------------------------------------------------
def test_store_index_holds_the_encoder_embeddings(store, store_index):
    s = SubjectStore(store)
    m = json.loads((store_index / "manifest.json").read_text())
    assert m["encoder"] == "standin-clip-final" and m["dim"] == 64 and m["count"] == s.n_images
    assert m["fingerprint"] == encoder_fingerprint("standin-clip-final")
    assert m["index"]["type"] == "flat" and m["normalised"] is True and m["complete"] is True
    assert m["source"] == {"type": "store", "root": str(Path(store).resolve())}
    emb = np.load(store_index / "embeddings.npy")
    assert emb.dtype == np.float16 and emb.shape == (s.n_images, 64)
    np.testing.assert_allclose(emb, _encode("standin-clip-final", s.images), atol=2e-3)
    with open(store_index / "ids.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["member"]) for r in rows] == list(range(s.n_images))
    db = DatabaseIndex.open(store_index)
    np.testing.assert_array_equal(db.source.load([5, 2])[0], s.images[5])
    assert not (store_index.parent / "bank.partial").exists()


def test_flat_search_equals_numpy_topk(store_index):
    db = DatabaseIndex.open(store_index)
    emb = _unit(np.load(store_index / "embeddings.npy"))
    q = np.random.default_rng(0).standard_normal((20, 64)).astype(np.float32)
    scores, ids = db.search(q, 16)
    sims = _unit(q) @ emb.T
    want = np.argsort(-sims, axis=1)[:, :16]
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, want, axis=1), atol=1e-5)


def test_directory_source(store, tmp_path):
    s = SubjectStore(store)
    root = tmp_path / "pics"
    (root / "b" / "c").mkdir(parents=True)
    (root / "a").mkdir()
    for i in range(6):
        Image.fromarray(np.asarray(s.images[i])).save(root / ("a" if i < 3 else "b/c") / f"img{i}.png")
    Image.fromarray(np.asarray(s.images[6])).save(root / "a" / "img6.webp", lossless=True)
    wide = np.concatenate([np.asarray(s.images[7]), np.zeros((64, 16, 3), np.uint8)], axis=1)  # 64 x 80
    Image.fromarray(wide).save(root / "wide.png")
    (root / "notes.txt").write_text("not an image")
    out = build_index(root, "standin-clip-final", tmp_path / "idx", progress=False)

    db = DatabaseIndex.open(out)
    assert db.source.location == ["a/img0.png", "a/img1.png", "a/img2.png", "a/img6.webp",
                                  "b/c/img3.png", "b/c/img4.png", "b/c/img5.png", "wide.png"]
    assert db.manifest["image_size"] == 64 and db.manifest["source"]["type"] == "directory"
    order = [0, 1, 2, 6, 3, 4, 5]
    want = _encode("standin-clip-final", np.concatenate([s.images[order], square(wide, 64)[None]]))
    np.testing.assert_allclose(np.load(out / "embeddings.npy"), want, atol=2e-3)
    np.testing.assert_array_equal(db.source.load([7])[0], wide)  # read back as stored, any size


def test_webdataset_shards(store, tmp_path):
    s = SubjectStore(store)
    for shard, idx in ((0, [0, 1, 2]), (1, [3, 4])):
        with tarfile.open(tmp_path / f"shard-{shard}.tar", "w") as tar:
            for i in idx:
                ext = "PNG" if i == 3 else "png"  # extensions are matched case-insensitively
                members = {f"{i:06d}.{ext}": _png(np.asarray(s.images[i])), f"{i:06d}.json": b"{}"}
                if i == 4:  # a sample with two images: jpg is preferred, as in the source list order
                    members[f"{i:06d}.jpg"] = _png(np.asarray(s.images[9]))  # PNG bytes decode fine
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    out = build_index(str(tmp_path / "shard-{0..1}.tar"), "standin-clip-final", tmp_path / "idx", progress=False)
    db = DatabaseIndex.open(out)
    assert db.manifest["count"] == 5 and db.manifest["source"]["type"] == "webdataset"
    assert [Path(p).name for p in db.source.location] == ["shard-0.tar"] * 3 + ["shard-1.tar"] * 2
    assert db.source.member == ["000000.png", "000001.png", "000002.png", "000003.PNG", "000004.jpg"]
    want = _encode("standin-clip-final", s.images[[0, 1, 2, 3, 9]])
    np.testing.assert_allclose(np.load(out / "embeddings.npy"), want, atol=2e-3)
    for i, j in enumerate([0, 1, 2, 3, 9]):  # random access by byte offset gives the same images
        np.testing.assert_array_equal(db.source.load([i])[0], s.images[j])

    # interrupted in the second shard's chunk, resumed: the stream restarts mid-collection
    pattern, kw = [str(tmp_path / "shard-0.tar"), str(tmp_path / "shard-1.tar")], dict(chunk_size=2, batch_size=1)
    with pytest.raises(KeyboardInterrupt):
        build_index(pattern, "standin-clip-final", tmp_path / "re", encoder=_FlakyEncoder(4), progress=False, **kw)
    enc = _FlakyEncoder(None)
    build_index(pattern, "standin-clip-final", tmp_path / "re", encoder=enc, progress=False, **kw)
    assert enc.images == 3
    np.testing.assert_allclose(np.load(tmp_path / "re" / "embeddings.npy"), want, atol=2e-3)


def test_ivfpq_recall_and_auto_choice(monkeypatch):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, 64))
    x = centres[rng.integers(0, 50, 3000)] + 0.5 * rng.standard_normal((3000, 64))  # clustered, like embeddings
    x = _unit(x).astype(np.float16)
    q = _unit(x[:100].astype(np.float64) + 0.3 * rng.standard_normal((100, 64))).astype(np.float32)
    ivf, desc = make_faiss_index(x, "ivfpq")
    assert desc["type"] == "ivfpq" and 64 % desc["m"] == 0 and ivf.ntotal == 3000
    _, got = ivf.search(q, 16)
    want = np.argsort(-(q @ _unit(x).T), axis=1)[:, :16]
    recall = np.mean([len(set(a) & set(b)) / 16 for a, b in zip(got, want)])
    assert recall > 0.5, recall
    assert make_faiss_index(x, "auto")[1]["type"] == "flat"
    monkeypatch.setattr(database_index, "FLAT_MAX", 1000)
    assert make_faiss_index(x, "auto")[1]["type"] == "ivfpq"


def test_ivfpq_index_dir_refines_with_stored_embeddings(store, tmp_path):
    out = build_index(store, "standin-clip-final", tmp_path / "ivf", index_type="ivfpq", progress=False)
    db = DatabaseIndex.open(out)
    assert db.manifest["index"]["type"] == "ivfpq"
    emb = _unit(np.load(out / "embeddings.npy"))
    q = emb[:40] + 0.05 * np.random.default_rng(1).standard_normal((40, 64))
    want = np.argsort(-(_unit(q) @ emb.T), axis=1)[:, :16]
    rec = {}
    for refine in (1, 4):
        _, ids = db.search(q.astype(np.float32), 16, refine=refine)
        rec[refine] = np.mean([len(set(a) & set(b)) / 16 for a, b in zip(ids, want)])
    assert rec[4] > 0.8 and rec[4] >= rec[1], rec


def test_rerank_picks_the_highest_cosine():
    query = np.array([1.0, 0.0, 0.0])
    cands = np.array([[10.0, 10.0, 0.0],   # largest dot product, cosine 0.71
                      [1.0, 0.1, 0.0],     # largest cosine 0.995
                      [0.0, 1.0, 0.0],
                      [-3.0, 0.0, 1.0]])
    best, scores = rerank(cands, query)
    assert best == 1
    np.testing.assert_allclose(scores, (cands @ query) / np.linalg.norm(cands, axis=1), atol=1e-6)
    tokens = np.random.default_rng(0).standard_normal((5, 3, 4))  # multi-token embeddings: flattened cosine
    best, scores = rerank(tokens, tokens[3] * 7.0)
    assert best == 3 and scores[3] == pytest.approx(1.0, abs=1e-6)


class _FlakyEncoder:
    """Wraps a real encoder; raises KeyboardInterrupt on call number ``fail_at`` (1-based); counts images."""

    def __init__(self, fail_at: int | None) -> None:
        self.inner = get_encoder("standin-clip-final")
        self.name, self.fingerprint = self.inner.name, self.inner.fingerprint
        self.preprocessing, self.output_shape = self.inner.preprocessing, self.inner.output_shape
        self.calls, self.images, self.fail_at = 0, 0, fail_at

    def encode(self, images):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        self.images += len(images)
        return self.inner.encode(images)


def test_resume_after_interruption(store, store_index, tmp_path):
    out = tmp_path / "idx"
    kw = dict(chunk_size=64, batch_size=32, progress=False)
    with pytest.raises(KeyboardInterrupt):
        build_index(store, "standin-clip-final", out, encoder=_FlakyEncoder(fail_at=4), **kw)
    partial = tmp_path / "idx.partial"
    assert not out.exists() and json.loads((partial / "manifest.json").read_text())["chunks_done"] == 1
    with pytest.raises(MindEyeError, match="interrupted"):
        DatabaseIndex.open(out)
    again = _FlakyEncoder(fail_at=None)
    build_index(store, "standin-clip-final", out, encoder=again, **kw)
    assert again.images == SubjectStore(store).n_images - 64  # the finished chunk was not recomputed
    assert not partial.exists()
    np.testing.assert_allclose(np.load(out / "embeddings.npy").astype(np.float32),
                               np.load(store_index / "embeddings.npy").astype(np.float32), atol=1e-3)
    with pytest.raises(MindEyeError, match="already exists"):
        build_index(store, "standin-clip-final", out, **kw)


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
def test_missing_index_and_dimension_mismatch(store_index, tmp_path, capsys):
    with pytest.raises(MindEyeError, match="no finished database index"):
        DatabaseIndex.open(tmp_path / "nope")
    db = DatabaseIndex.open(store_index)
    with pytest.raises(MindEyeError, match=r"dimension 32 .* 64-d standin-clip-final"):
        db.search(np.ones((2, 32), np.float32), 4)
    with pytest.raises(MindEyeError, match=r"dimension 96 .* 64-d standin-clip-final"):
        query_embeddings(torch.randn(3, 2, 48), 64, "auto", "clip-vit-l14-hidden", "standin-clip-final")
    q, how = query_embeddings(torch.randn(3, 17, 64), 64, "auto", "standin-clip-hidden", "standin-clip-final")
    assert how == "cls" and q.shape == (3, 64)
    assert main(["retrieve", "--run", str(tmp_path), "--index", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "no finished database index" in capsys.readouterr().err


def test_missing_image_files_are_named(store, tmp_path):
    s = SubjectStore(store)
    root = tmp_path / "pics"
    root.mkdir()
    for i in range(4):
        Image.fromarray(np.asarray(s.images[i])).save(root / f"{i}.png")
    out = build_index(root, "standin-clip-final", tmp_path / "idx", progress=False)
    (root / "2.png").unlink()
    db = DatabaseIndex.open(out)
    with pytest.raises(MindEyeError, match=r"1 image file\(s\) .* missing: .*2\.png"):
        db.source.load([0, 2])
    db.source.load([0, 1, 3])


# ------------------------------------------------------------------------------------------------
# End to end
# ------------------------------------------------------------------------------------------------
def _train(store: Path, run: Path, extra: list[str]) -> Path:
    from mindeye.config import load_config
    from mindeye.training.trainer import Trainer

    cfg = load_config(REPO / "src/mindeye/configs" / "demo-highlevel.yaml", TINY_HIGH + ["train.epochs=1", *extra])
    Trainer(cfg, run, store=store, device="cpu", progress=False).fit()
    return run


def _brain(run: Path) -> tuple[np.ndarray, np.ndarray]:
    from mindeye.data.splits import load_eval_split
    from mindeye.runs import embed_voxels, load_run_model

    cfg, _, model, subject = load_run_model(run)
    test = load_eval_split(subject, subject.image_indices("test"), "averaged", cfg.data.test_repetitions)
    return embed_voxels(model, test.voxels, "cpu").numpy(), test.image_index


def _check_outputs(out: Path, store: Path, index: dict, n_test: int, k: int) -> None:
    s = SubjectStore(store)
    on_disk = json.loads((out / "index.json").read_text())
    assert on_disk == json.loads(json.dumps(index)) and on_disk["kind"] == "retrieval"
    assert len(on_disk["images"]) == n_test
    recs = json.loads((out / "retrievals.json").read_text())["retrievals"]
    assert [r["sample"] for r in recs] == list(range(n_test))
    for key, rec in on_disk["images"].items():
        assert int(key) == rec["image_index"] and rec["image_id"] == s.image_ids[rec["image_index"]]
        assert len(rec["candidates"]) == len(rec["scores"]) == k
        assert rec["chosen"] == int(np.argmax(rec["scores"])) and rec["chosen_id"] == rec["candidates"][rec["chosen"]]
        png = np.asarray(Image.open(out / rec["file"]).convert("RGB"))
        np.testing.assert_array_equal(png, s.images[rec["chosen_id"]])  # the bank's image, never a placeholder
        assert png.std() > 1
    assert not out.with_name(out.name + ".partial").exists()


def test_retrieve_hidden_run_queries_final_index(store, store_index, tmp_path):
    """demo-highlevel (17 x 64 hidden tokens): CLS token vs the final-embedding index, re-ranked with the
    candidates' hidden-token embeddings (encoded again) against the flattened projector output."""
    run = _train(store, tmp_path / "run", [])
    out = tmp_path / "ret"
    index = retrieve(run, store_index, out, k=16, save_all=True, progress=False)
    assert index["config"]["query"] == "cls" and index["config"]["rerank"] == "encode:standin-clip-hidden"
    brain, image_index = _brain(run)
    _check_outputs(out, store, index, len(image_index), 16)

    s = SubjectStore(store)
    bank = _unit(np.load(store_index / "embeddings.npy"))
    want = np.argsort(-(_unit(brain[:, 0]) @ bank.T), axis=1)[:, :16]  # kNN of the CLS token, brute force
    for m, idx in enumerate(image_index):
        rec = index["images"][str(int(idx))]
        np.testing.assert_array_equal(rec["candidates"], want[m])
        hidden = _encode("standin-clip-hidden", s.images[rec["candidates"]])
        np.testing.assert_allclose(rec["scores"], hidden @ _unit(brain[m][None])[0], atol=1e-4)
        for j, c in enumerate(rec["candidates"]):
            np.testing.assert_array_equal(np.asarray(Image.open(out / rec["samples"][j])), s.images[c])

    # the flattened 17 x 64 output cannot query a 64-d index: a clear error naming both
    with pytest.raises(MindEyeError, match=r"dimension 1088 .* 64-d standin-clip-final"):
        retrieve(run, store_index, tmp_path / "bad", query="projector", progress=False)
    assert not (tmp_path / "bad").exists()


def test_retrieve_final_run_cli_and_missing_images(store, store_index, tmp_path, capsys):
    """The paper's setting: a 1 x D final-embedding run, kNN on the flattened output, re-ranked with the
    stored embeddings; then the same through the CLI from a folder index whose files were deleted."""
    run = _train(store, tmp_path / "run", ["targets.encoder=standin-clip-final", "model.backbone.tokens=1"])
    out = tmp_path / "ret"
    assert main(["retrieve", "--run", str(run), "--index", str(store_index), "--out", str(out), "-k", "8",
                 "--no-progress"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["config"]["query"] == "projector" and index["config"]["rerank"] == "stored-embeddings"
    brain, image_index = _brain(run)
    _check_outputs(out, store, index, len(image_index), 8)
    bank = _unit(np.load(store_index / "embeddings.npy"))
    sims = _unit(brain.reshape(len(brain), -1)) @ bank.T
    for m, idx in enumerate(image_index):
        rec = index["images"][str(int(idx))]
        np.testing.assert_array_equal(rec["candidates"], np.argsort(-sims[m])[:8])
        assert rec["chosen_id"] == int(np.argmax(sims[m]))
    assert "test samples" in capsys.readouterr().out

    s = SubjectStore(store)
    pics = tmp_path / "pics"
    pics.mkdir()
    for i in range(s.n_images):
        Image.fromarray(np.asarray(s.images[i])).save(pics / f"{i:04d}.png")
    assert main(["index", "build", "--images", str(pics), "--encoder", "standin-clip-final", "--out",
                 str(tmp_path / "dir_idx"), "--no-progress"]) == 0
    for p in list(pics.glob("*.png"))[::2]:
        p.unlink()
    capsys.readouterr()
    assert main(["retrieve", "--run", str(run), "--index", str(tmp_path / "dir_idx"), "--out",
                 str(tmp_path / "ret2"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "image file(s) referenced by the index are missing" in err and ".png" in err
    assert not (tmp_path / "ret2").exists()  # nothing written, no blank stand-ins
