"""The main job end to end on the tiny simulated subject (what `make demo` runs, scaled down)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from mindeye.cli import main

TINY = [
    "scale=tiny", "recon_limit=4", "samples=2", "steps=4", "report_umap=false",
    "overrides=[train.epochs=2, data.val_images=20, model.backbone.hidden=128, model.backbone.n_blocks=1,"
    " model.prior.depth=1, model.lowlevel.hidden=128, model.lowlevel.n_blocks=1]",
]


def test_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out)] + sum((["--set", s] for s in TINY), [])
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "image retr. (60)" in text and "report:" in text  # the tiny pool, not the paper's 300
    results = json.loads((out / "results.json").read_text())
    names = [r["name"] for r in results["retrieval"]]
    assert names == ["demo-highlevel", "demo-ridge"]
    for r in results["retrieval"]:
        assert 0.0 <= r["image_to_brain"] <= 1.0 and np.isfinite(r["brain_to_image"])
    # Reconstructions are real pictures: non-constant PNGs of the store's image size.
    pngs = sorted((out / "recons" / "final" / "images").glob("*.png"))
    assert len(pngs) == 4
    img = np.asarray(Image.open(pngs[0]))
    assert img.shape[-1] == 3 and img.std() > 1.0
    metrics = json.loads((out / "metrics.json").read_text())
    # every blurry table has the low-level ridge baseline (issue 23)
    assert {r["name"] for r in metrics["rows"]} == {"MindEye", "MindEye (low-level)", "ridge regression (low-level baseline)"}
    assert "mean" not in metrics
    for row in metrics["rows"]:
        assert np.isfinite(row["metrics"]["pixcorr"]["value"])
        assert "unavailable" in row["metrics"]["alexnet2"]  # offline: reported, never invented
        # floors and the ceiling beside every row (issue 26): the blurry rows share the VAE round trip
        assert set(row["floors"]["metrics"]) == {"pixcorr", "ssim"} and row["ceiling"]["recons"]
        assert len(row["per_image"]["pixcorr"]) == row["n_images"]
    assert metrics["rows"][1]["ceiling"]["recons"] == metrics["rows"][2]["ceiling"]["recons"]
    assert all("floors" in r and "per_image" in r for r in results["retrieval"])
    html = (out / "report.html").read_text()
    assert "demo-latent-diffusion" in html and "NOT Versatile Diffusion" in html
    # the offline substitute network: its own table (or the reason it is missing), never the paper's columns
    assert set(metrics["rows"][0]["offline_metrics"]) == {"effnet_lite0_2way", "effnet_lite0_distance"}
    if "value" in metrics["rows"][0]["offline_metrics"]["effnet_lite0_2way"]:  # with the extra: its floors too
        assert all(set(r["offline_floors"]["metrics"]) == {"effnet_lite0_2way", "effnet_lite0_distance"}
                   and r["offline_floors"]["ceiling"] for r in metrics["rows"])
        assert "offline EfficientNet-Lite0, not a paper metric" in (out / "metrics.md").read_text()
    offline = results["offline_target"]
    if "skipped" in offline:
        assert "mindeye[offline]" in offline["skipped"]
    else:
        assert offline["retrieval"]["name"] == "demo-highlevel-effnet"
        sem = offline["error_semantics"]
        assert [sem[k]["encoder"] for k in ("highlevel", "highlevel-effnet")] == ["standin-clip-hidden",
                                                                                 "effnet-lite0-pooled"]
        assert all(0 <= s["error_same_category"] <= 1 and s["errors"] > 0 for s in sem.values())
        assert "errors: attribute cosine" in text
    # A second run finds every step done and changes nothing.
    before = (out / "recons" / "final" / "index.json").read_text()
    assert main(args) == 0
    assert (out / "recons" / "final" / "index.json").read_text() == before


def test_demo_bad_config_key(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--set", "scal=tiny"]) == 2
    assert "unknown config key" in capsys.readouterr().err


def test_demo_embeds_the_targets_its_overrides_ask_for(tmp_path, monkeypatch):
    """The embed step reads the model configs with the demo's overrides, as training does."""
    import pytest

    import mindeye.encoders.cache as cache
    from mindeye.demo import run_demo

    embedded: list[str] = []

    class Stop(Exception):
        pass

    def record(store, name, weights=None, device=None, **options):
        embedded.append(name)

    def stop_training(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(cache, "embed_store", record)
    monkeypatch.setattr("mindeye.demo._train", stop_training)
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "meta.json").write_text("{}")  # the demo checks its store exists before any work
    with pytest.raises(Stop):
        run_demo(tmp_path / "d", overrides=["store=" + str(tmp_path / "store"), "cpu_threads=null",
                                            "overrides=[targets.encoder=my-encoder]"])
    assert "my-encoder" in embedded
