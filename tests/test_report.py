"""`mindeye report`: one self-contained HTML page from a tiny trained run; rendered in headless chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mindeye.cli import main
from mindeye.config import load_config
from mindeye.errors import MindEyeError
from mindeye.evaluation.report import (
    Series,
    SplitEmbeddings,
    build_report,
    nice_ticks,
    svg_line_chart,
    umap_section,
)
from mindeye.inference.reconstruct import save_png, write_index

REPO = Path(__file__).resolve().parents[1]
TINY_HIGH = [
    "model.backbone.hidden=128", "model.backbone.n_blocks=1", "model.projector.hidden=64",
    "model.prior.depth=1", "model.prior.heads=2", "model.prior.dim_head=16", "model.prior.sample_steps=10",
    "train.batch_size=32", "train.log_every=4", "train.epochs=2", "train.val_every=1", "data.val_images=20",
]
SHOWN = 6  # test images in the grid
UMAP_N = 24


def _img_from_uri(uri: str) -> np.ndarray:
    from PIL import Image

    assert uri.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as im:
        return np.asarray(im.convert("RGB"))


def _fake_recons(out: Path, store, images: np.ndarray, kind: str, config: dict, seed: int) -> None:
    rng = np.random.default_rng(seed)
    index = {"kind": kind, "config": config, "images": {}}
    for i in images.tolist():
        img = np.clip(store.images[i] + rng.normal(0, 25, store.images[i].shape), 0, 255).astype(np.uint8)
        save_png(img, out / f"images/{i:05d}.png")
        index["images"][str(i)] = {"image_index": i, "file": f"images/{i:05d}.png", "image_id": store.image_ids[i]}
    write_index(out, index)


@pytest.fixture(scope="module")
def exp(tmp_path_factory, tiny_store) -> dict:
    """A tiny experiment: trained high-level + ridge runs, retrieval, recon + blurry dirs, metrics, report."""
    from mindeye.data.store import SubjectStore
    from mindeye.evaluation.recon_eval import evaluate_recon_dirs, write_metrics
    from mindeye.evaluation.run_eval import evaluate_retrieval
    from mindeye.training.trainer import Trainer

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("exp")
    store_path = tiny_store
    high, ridge = root / "high", root / "ridge"
    Trainer(load_config(REPO / "src/mindeye/configs/demo-highlevel.yaml", TINY_HIGH), high, store=store_path, device="cpu",
            progress=False).fit()
    Trainer(load_config(REPO / "src/mindeye/configs/demo-ridge.yaml", ["data.val_images=20"]), ridge, store=store_path,
            device="cpu", progress=False).fit()
    evaluate_retrieval(high, device="cpu")
    evaluate_retrieval(ridge, device="cpu")
    store = SubjectStore(store_path)
    test = store.image_indices("test")[:10]
    recons = root / "recons"
    _fake_recons(recons, store, test, "reconstruction",
                 {"generator": "demo-latent-diffusion", "generator_weights": "bundled:demo", "store": str(store_path),
                  "high_run": str(high), "settings": {"samples": 4, "steps": 20, "guidance": 3.5,
                                                      "img2img_strength": 0.15}, "img2img": True}, seed=1)
    _fake_recons(recons / "blurry", store, test, "blurry", {"decoder": "standin-vae", "run": str(root / "low"),
                                                          "store": str(store_path)}, seed=2)
    result = evaluate_recon_dirs([recons, recons / "blurry"], names=["MindEye (tiny)", "low-level blurry"],
                                 pixel_only=True, progress=False)
    metrics_json, _ = write_metrics(result, root / "metrics.json")
    page = build_report(high, ridge=ridge, recons=recons, metrics=[metrics_json], out=root / "report.html",
                        n_images=SHOWN, embed_samples=UMAP_N, device="cpu")
    return {"root": root, "store": store, "high": high, "ridge": ridge, "recons": recons, "metrics": result,
            "page": page, "html": page.read_text()}


def test_page_is_self_contained(exp):
    html = exp["html"]
    srcs = re.findall(r'\ssrc="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(href|src)\s*=\s*"(https?:)?//', html)
    assert "url(" not in html and "<link" not in html and "<script" not in html


def test_metrics_table_rows_and_values(exp):
    html = exp["html"]
    table = re.search(r'<table id="metrics-table".*?</table>', html, re.S).group(0)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)[1:]
    cells = {re.sub("<[^>]+>", "", r.split("</td>")[0]): [re.sub("<[^>]+>", "", c) for c in
                                                           re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)[1:]]
             for r in rows}
    ret = json.loads((exp["high"] / "eval" / "retrieval.json").read_text())
    ridge_ret = json.loads((exp["ridge"] / "eval" / "retrieval.json").read_text())
    mind = exp["metrics"]["rows"][0]["metrics"]
    row = cells["MindEye (tiny)"]
    assert row[0] == f"{mind['pixcorr']['value']:.3f}".replace("0.", ".", 1)
    assert row[1] == f"{mind['ssim']['value']:.3f}".replace("0.", ".", 1)
    # the reconstruction row carries its high-level run's retrieval (matched by the index's high_run)
    # Table 1's columns: "Image retrieval" = image_to_brain (the authors' direction), then brain_to_image
    assert row[-2:] == [f"{100 * ret['image_to_brain']:.1f}%", f"{100 * ret['brain_to_image']:.1f}%"]
    assert row[2] == "—1"  # unavailable, with a footnote
    assert cells["low-level blurry"][-2:] == ["—", "—"]
    assert cells["demo-ridge (ridge baseline)"][-2:] == [f"{100 * ridge_ret['image_to_brain']:.1f}%",
                                                         f"{100 * ridge_ret['brain_to_image']:.1f}%"]
    assert "Image retrieval = image_to_brain" in exp["html"]  # the footnote says which direction is which
    assert "Mean of MindEye (tiny), low-level blurry" in cells
    assert not any("retrieval only" in name for name in cells)  # the high run is already in a row
    assert "skipped (--pixel-only)" in html  # the unavailable reason is on the page


def test_provenance_names_what_made_the_images(exp):
    html = exp["html"]
    assert "generated by &#x27;demo-latent-diffusion&#x27; (weights: bundled:demo)" in html
    assert "NOT Versatile Diffusion" in html
    assert "standin-clip-hidden -- a stand-in encoder" in html
    assert "decoded by the standin-vae decoder" in html
    assert "source: simulated" in html


def test_training_curves_match_metrics_jsonl(exp):
    html = exp["html"]
    records = [json.loads(x) for x in (exp["high"] / "metrics.jsonl").read_text().splitlines()]
    n_loss = sum("loss" in r for r in records)
    assert n_loss >= 3
    lines = re.findall(r'<polyline class="series" data-label="([^"]+)" points="([^"]*)"', html)
    loss = [pts for label, pts in lines if label == "loss"]
    assert len(loss) == 1 and len(loss[0].split()) == n_loss
    labels = {label for label, _ in lines}
    assert {"contrastive", "prior", "brain_to_image", "image_to_brain"} <= labels
    assert "alpha" not in labels  # the ridge's alpha is a setting, not a curve
    ridge = json.loads((exp["ridge"] / "metrics.jsonl").read_text().splitlines()[-1])
    assert (f"validation (epoch 1): brain_to_image {ridge['val_brain_to_image']:.3f}, image_to_brain "
            f"{ridge['val_image_to_brain']:.3f}") in html  # one evaluation: numbers, not a chart
    # every point lies inside its chart's frame (axes cover the data)
    for svg in re.findall(r'<svg class="chart".*?</svg>', html, re.S):
        x, y, w, h = map(float, re.search(r'<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)" '
                                          r'class="frame"', svg).groups())
        for pts in re.findall(r'points="([^"]*)"', svg):
            for p in pts.split():
                px, py = map(float, p.split(","))
                assert x - 0.1 <= px <= x + w + 0.1 and y - 0.1 <= py <= y + h + 0.1


def test_image_grid(exp):
    from mindeye.data.splits import load_eval_split
    from mindeye.encoders.targets import Targets
    from mindeye.runs import embed_voxels, load_run_model

    html, store = exp["html"], exp["store"]
    grid = re.search(r'<table class="grid" id="image-grid">.*?</table>', html, re.S).group(0)
    rows = re.findall(r"<tr>(.*?)</tr>", grid, re.S)
    heads = [re.sub("<[^>]+>", "", re.search(r"<th[^>]*>(.*?)</th>", r, re.S).group(1)) for r in rows[1:]]
    assert heads == ["ground truth", "blurry (low-level)", "reconstruction", "retrieved (top-1 of 60 test images)"]
    shown = store.image_indices("test")[:SHOWN]
    assert re.findall(r"<th[^>]*>#(\d+)</th>", rows[0]) == [str(i) for i in shown]
    for r in rows[1:]:
        assert len(re.findall(r"<img ", r)) == SHOWN
    # ground truth cells are the store images (64 px: embedded unchanged)
    truth = re.findall(r'src="([^"]+)"', rows[1])
    for uri, i in zip(truth, shown):
        np.testing.assert_array_equal(_img_from_uri(uri), store.images[i])
    recon = re.findall(r'src="([^"]+)"', rows[3])
    from mindeye.utils.images import load_png
    np.testing.assert_array_equal(_img_from_uri(recon[0]), load_png(exp["recons"] / f"images/{shown[0]:05d}.png"))
    # retrieved: argmax cosine of the projector output over all test targets, computed independently here
    cfg, _, model, subject = load_run_model(exp["high"], "cpu")
    test = load_eval_split(subject, subject.image_indices("test"), cfg.data.test_mode)
    proj = torch.nn.functional.normalize(embed_voxels(model, test.voxels, "cpu").flatten(1), dim=1)
    tgt = torch.nn.functional.normalize(Targets(subject.path, cfg.targets.encoder, None).get(test.image_index)
                                        .flatten(1), dim=1)
    best = test.image_index[(proj @ tgt.T).argmax(1).numpy()]
    got = re.findall(r'<img( class="(hit|miss)")? src="([^"]+)"', rows[4])
    for (_, cls, uri), i, j in zip(got, shown, best[:SHOWN]):
        np.testing.assert_array_equal(_img_from_uri(uri), store.images[j])
        assert cls == ("hit" if i == j else "miss")


def test_umap_has_four_groups(exp):
    html = exp["html"]
    svg = re.search(r'<svg class="scatter".*?</svg>', html, re.S).group(0)
    groups = re.findall(r'<g class="group" data-label="([^"]+)"[^>]*>(.*?)</g>', svg, re.S)
    assert [g[0] for g in groups] == ["targets (standin-clip-hidden)", "backbone outputs", "projector outputs",
                                      "prior samples"]
    assert all(len(re.findall("<circle", g[1])) == UMAP_N for g in groups)
    assert f"{UMAP_N} prior samples (guidance 2.0, 10 steps)" in html


def test_cli_no_umap_default_out_and_notes(exp, capsys):
    high = exp["high"]
    assert main(["report", "--run", str(high), "--no-umap", "--images", "3", "--device", "cpu"]) == 0
    html = (high / "report.html").read_text()
    assert "UMAP not computed (--no-umap)" in html and '<svg class="scatter"' not in html
    assert "demo-highlevel (retrieval only)" in html  # no metrics given: the run's retrieval row
    assert "No reconstruction metrics given" in html and "No reconstructions" in html
    assert len(re.findall(r"<img ", html)) == 2 * 3  # ground truth + retrieved
    assert "report:" in capsys.readouterr().out


def test_errors(exp, tmp_path):
    with pytest.raises(MindEyeError, match="--run must be the high-level"):
        build_report(exp["ridge"], out=tmp_path / "r.html", umap=False)
    with pytest.raises(MindEyeError, match="does not exist"):
        build_report(exp["high"], recons=tmp_path / "nope", out=tmp_path / "r.html", umap=False)
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(MindEyeError, match="not a reconstruction metrics file"):
        build_report(exp["high"], metrics=[tmp_path / "m.json"], out=tmp_path / "r.html", umap=False)
    with pytest.raises(MindEyeError, match="not a mindeye run"):
        build_report(tmp_path, out=tmp_path / "r.html", umap=False)
    assert not (tmp_path / "r.html").exists()


def test_umap_unavailable_is_said(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap -> ImportError
    x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    html = umap_section(SplitEmbeddings(np.arange(5), x, x, None, None), 5)
    assert "UMAP unavailable" in html and "umap-learn" in html


def test_nice_ticks_and_chart_cover_data():
    for lo, hi in [(0.0, 1.0), (20.3, 75.1), (-3.0, 2.0), (1.0, 1.0), (1e-5, 3e-5)]:
        t = nice_ticks(lo, hi)
        assert t[0] <= lo and t[-1] >= hi and len(t) >= 2
    assert "nothing logged" in svg_line_chart([Series("a", [], [])], "t", "x", "y")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = ("<script>window.addEventListener('load',function(){var imgs=Array.prototype.slice.call(document.images);"
         "var ok=imgs.filter(function(i){return i.complete&&i.naturalWidth>0;}).length;"
         "var lines=document.querySelectorAll('svg.chart polyline').length;"
         "var rows=document.querySelectorAll('#metrics-table tbody tr').length;"
         "document.title='PROBE '+imgs.length+' '+ok+' '+lines+' '+rows;});</script>")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium); the browser "
                                              "test needs it")
def test_renders_in_headless_chromium(exp, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text(exp["html"].replace("</body>", PROBE + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",  # no network
           "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    m = re.search(r"<title>PROBE (\d+) (\d+) (\d+) (\d+)</title>", dom)
    assert m, f"the probe script did not run; chromium printed: {dom[:500]}"
    n_img, n_ok, n_lines, n_rows = map(int, m.groups())
    assert n_img == len(re.findall(r"<img ", exp["html"])) and n_img > 0
    assert n_ok == n_img  # every embedded image decoded (naturalWidth > 0)
    assert n_lines >= 4 and n_rows >= 4
    assert 'id="metrics-table"' in dom and "<svg" in dom
    shot = tmp_path / "page.png"
    subprocess.run([*cmd[:-2], "--window-size=1280,3000", f"--screenshot={shot}", exp["page"].as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000
