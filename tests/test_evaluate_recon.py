"""`mindeye evaluate recon`: reconstruction directories -> Table 1 metrics, JSON + Markdown, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mindeye.cli import main
from mindeye.data.store import SubjectStore
from mindeye.errors import MindEyeError
from mindeye.evaluation import metrics as M
from mindeye.evaluation.feature_nets import FeatureNets
from mindeye.evaluation.recon_eval import evaluate_recon_dirs, load_feature_nets, read_recon_dir
from mindeye.inference.reconstruct import save_png, write_index

N_SHOWN = 8


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


@pytest.fixture(scope="module")
def store(tiny_store) -> SubjectStore:
    return SubjectStore(tiny_store)  # conftest.py: built once per session


def make_recon_dir(out: Path, store: SubjectStore, images: np.ndarray, noise: float = 30.0, size: int | None = None,
                   kind: str = "reconstruction", seed: int = 0, generator: str = "test-noise") -> dict[int, np.ndarray]:
    """A reconstruction directory in `mindeye reconstruct`'s format: noisy copies of the store images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    made = {}
    config = {"generator": generator, "store": str(store.path)} if kind == "reconstruction" else {
        "decoder": "standin-vae", "store": str(store.path)}
    index = {"kind": kind, "config": config, "images": {}}
    for i in images[::-1].tolist():  # written out of order: pairing must go by image index
        img = np.asarray(store.images[i], dtype=np.float64)
        img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
        if size is not None and size != img.shape[0]:
            img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
        save_png(img, out / f"images/{i:05d}.png")
        index["images"][str(i)] = {"image_index": i, "file": f"images/{i:05d}.png", "image_id": store.image_ids[i]}
        made[i] = img
    write_index(out, index)
    return made


def _tiny_clip_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            image_size=32, patch_size=8, projection_dim=16)


def test_values_match_direct_metric_calls(store, tmp_path):
    test = store.image_indices("test")[:N_SHOWN]
    made = make_recon_dir(tmp_path / "rec", store, test, size=48)  # 48 px recons of 64 px images
    torch.manual_seed(0)
    nets = FeatureNets.load(random_init=True, names=["alexnet", "clip"], clip_config=_tiny_clip_config())
    result = evaluate_recon_dirs([tmp_path / "rec"], nets=nets, progress=False)
    row = result["rows"][0]
    assert row["n_images"] == N_SHOWN and row["image_index"] == sorted(test.tolist())
    assert row["generator"] == "test-noise" and row["image_size"] == {"real": 64, "recon": 48}

    order = sorted(made)
    reals = np.stack([store.images[i] for i in order])
    fakes = np.stack([made[i] for i in order])
    got = row["metrics"]
    assert list(got) == list(M.METRICS)  # every metric listed, in Table 1 order
    assert got["pixcorr"]["value"] == pytest.approx(M.pixcorr(reals, fakes), abs=1e-9)
    assert got["ssim"]["value"] == pytest.approx(M.ssim(reals, fakes), abs=1e-9)
    assert got["pixcorr"]["value"] > 0.5  # paired correctly despite the shuffled index
    real_t, fake_t = M.prepare(reals), M.prepare(fakes)
    f_real = {**nets.nets["alexnet"](real_t), **nets.nets["clip"](real_t)}
    f_fake = {**nets.nets["alexnet"](fake_t), **nets.nets["clip"](fake_t)}
    for m in ("alexnet2", "alexnet5", "clip"):
        assert got[m]["value"] == pytest.approx(M.two_way_identification(f_real[m], f_fake[m]), abs=1e-6), m
    for m in ("inceptionv3", "efficientnet_b1", "swav"):  # not loaded: reported, never dropped or invented
        assert "value" not in got[m] and "not loaded" in got[m]["unavailable"]


def test_missing_weights_reported_unavailable_with_fix(store, tmp_path, empty_hub):
    make_recon_dir(tmp_path / "rec", store, store.image_indices("test")[:4])
    nets = load_feature_nets(weights_dir=tmp_path / "w", clip=str(tmp_path / "no-clip"))
    got = evaluate_recon_dirs([tmp_path / "rec"], nets=nets, progress=False)["rows"][0]["metrics"]
    assert set(got) == set(M.METRICS)
    assert {m for m, v in got.items() if "value" in v} == {"pixcorr", "ssim"}
    for m in ("alexnet2", "alexnet5", "inceptionv3", "efficientnet_b1", "swav", "clip"):
        assert "--weights-dir" in got[m]["unavailable"], m
    assert "alexnet-owt-7be5be79.pth" in got["alexnet2"]["unavailable"]
    assert "swav_800ep_pretrain.pth.tar" in got["swav"]["unavailable"]


def test_cli_rows_mean_markdown_and_retrieval(store, tmp_path):
    test = store.image_indices("test")
    make_recon_dir(tmp_path / "a", store, test[:6], noise=20, seed=1)
    make_recon_dir(tmp_path / "b", store, test[:6], noise=80, seed=2)
    make_recon_dir(tmp_path / "blur", store, test[:6], noise=50, seed=3, kind="blurry")
    ret = {"run": "/x/high", "name": "high", "image_to_brain": 0.4321, "brain_to_image": 0.1234,
           "image_to_brain_ci95": [0.4, 0.46], "brain_to_image_ci95": [0.1, 0.15], "pool": 300, "draws": 30}
    (tmp_path / "retrieval.json").write_text(json.dumps(ret))
    out = tmp_path / "res" / "metrics.json"
    rc = main(["evaluate", "recon", "--recons", str(tmp_path / "a"), "--name", "low noise", "--recons",
               str(tmp_path / "b"), "--name", "high noise", "--recons", str(tmp_path / "blur"), "--name", "blurry",
               "--pixel-only", "--retrieval", str(tmp_path / "retrieval.json"), "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads(out.read_text())
    rows = {r["name"]: r for r in res["rows"]}
    assert list(rows) == ["low noise", "high noise", "blurry"]
    pc = [rows[n]["metrics"]["pixcorr"]["value"] for n in rows]
    assert pc[0] > pc[2] > pc[1]  # less noise, higher PixCorr
    assert res["mean"]["pixcorr"] == pytest.approx(np.mean(pc))
    assert res["mean"]["ssim"] == pytest.approx(np.mean([rows[n]["metrics"]["ssim"]["value"] for n in rows]))
    assert "alexnet2" not in res["mean"]
    for r in rows.values():  # --pixel-only: the network metrics are listed as unavailable, with the fix
        assert "--pixel-only" in r["metrics"]["clip"]["unavailable"]
    # One run's retrieval goes on the reconstruction rows, not on the blurry one.
    assert rows["low noise"]["retrieval"]["image_to_brain"] == 0.4321
    assert "retrieval" not in rows["blurry"]
    assert "image_to_brain" not in res["mean"]
    assert res["first_resize"] == "reference"

    md = out.with_suffix(".md").read_text()
    lines = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    cells = [c.strip() for c in lines["low noise"].split("|")[1:-1]]
    assert cells[1] == f"{pc[0]:.3f}".replace("0.", ".", 1)
    assert cells[-2:] == ["43.2%", "12.3%"]
    assert cells[3] == "—"
    assert [c.strip() for c in lines["blurry"].split("|")[1:-1]][-2:] == ["—", "—"]
    assert "**Mean**" in lines
    assert "skipped (--pixel-only)" in md
    assert "made by standin-vae decoder" in md and "made by test-noise" in md


def test_cli_weights_dir_and_metric_subset(store, tmp_path, empty_hub):
    from torchvision import models

    make_recon_dir(tmp_path / "rec", store, store.image_indices("test")[:4])
    wdir = tmp_path / "weights"
    wdir.mkdir()
    torch.manual_seed(0)
    torch.save(models.alexnet(weights=None).state_dict(), wdir / "alexnet-owt-7be5be79.pth")
    out = tmp_path / "m.json"
    rc = main(["evaluate", "recon", "--recons", str(tmp_path / "rec"), "--weights-dir", str(wdir), "--metrics",
               "pixcorr,alexnet2,alexnet5", "--device", "cpu", "--out", str(out), "--no-progress"])
    assert rc == 0
    got = json.loads(out.read_text())["rows"][0]["metrics"]
    assert list(got) == ["pixcorr", "alexnet2", "alexnet5"]
    assert all(0 <= v["value"] <= 1 for v in got.values())


def test_errors_are_clear(store, tmp_path, capsys):
    test = store.image_indices("test")[:4]
    with pytest.raises(MindEyeError, match="does not exist"):
        read_recon_dir(tmp_path / "nope")
    (tmp_path / "noindex").mkdir()
    with pytest.raises(MindEyeError, match="no index.json"):
        read_recon_dir(tmp_path / "noindex")
    empty = tmp_path / "empty"
    empty.mkdir()
    write_index(empty, {"kind": "reconstruction", "config": {}, "images": {}})
    with pytest.raises(MindEyeError, match="is empty"):
        read_recon_dir(empty)

    # An index naming images this store does not have.
    bad = tmp_path / "bad"
    make_recon_dir(bad, store, test)
    index = json.loads((bad / "index.json").read_text())
    index["images"]["100000"] = {**index["images"][str(test[0])], "image_index": 100000, "image_id": None}
    write_index(bad, index)
    with pytest.raises(MindEyeError, match=r"image index 100000 .*--data"):
        evaluate_recon_dirs([bad], pixel_only=True, progress=False)

    # Same index, different image ids: made from another store.
    other = tmp_path / "other"
    make_recon_dir(other, store, test)
    index = json.loads((other / "index.json").read_text())
    index["images"][str(test[1])]["image_id"] = "someone-else"
    write_index(other, index)
    with pytest.raises(MindEyeError, match="someone-else.*another store"):
        evaluate_recon_dirs([other], pixel_only=True, progress=False)

    # PNGs of different sizes in one directory.
    mixed = tmp_path / "mixed"
    make_recon_dir(mixed, store, test)
    save_png(np.zeros((32, 32, 3), np.uint8), mixed / f"images/{test[2]:05d}.png")
    with pytest.raises(MindEyeError, match="different sizes.*64x64: 3.*32x32: 1"):
        evaluate_recon_dirs([mixed], pixel_only=True, progress=False)

    # A PNG listed in the index but gone.
    gone = tmp_path / "gone"
    make_recon_dir(gone, store, test)
    (gone / f"images/{test[0]:05d}.png").unlink()
    with pytest.raises(MindEyeError, match="missing.*resume"):
        read_recon_dir(gone)

    good = tmp_path / "good"
    make_recon_dir(good, store, test)
    with pytest.raises(MindEyeError, match="one name per --recons"):
        evaluate_recon_dirs([good, good], names=["x"], pixel_only=True, progress=False)
    (tmp_path / "r.json").write_text(json.dumps([{"image_to_brain": 0.1, "brain_to_image": 0.1}] * 3))
    with pytest.raises(MindEyeError, match="3 results for 2 --recons"):
        evaluate_recon_dirs([good, good], retrieval=tmp_path / "r.json", pixel_only=True, progress=False)
    (tmp_path / "notret.json").write_text(json.dumps({"foo": 1}))
    with pytest.raises(MindEyeError, match="not a retrieval result"):
        evaluate_recon_dirs([good], retrieval=tmp_path / "notret.json", pixel_only=True, progress=False)
    # No store named in the index and none given.
    index = json.loads((good / "index.json").read_text())
    index["config"] = {}
    write_index(good, index)
    with pytest.raises(MindEyeError, match="--data STORE"):
        evaluate_recon_dirs([good], pixel_only=True, progress=False)

    # The CLI turns these into exit status 2 with the message, no traceback.
    capsys.readouterr()
    assert main(["evaluate", "recon", "--recons", str(tmp_path / "nope"), "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
    assert main(["evaluate", "recon", "--recons", str(good), "--metrics", "pixcorr,foo", "--data", str(store.path),
                 "--out", str(tmp_path / "x.json")]) == 2
    assert "unknown metric(s) ['foo']" in capsys.readouterr().err
