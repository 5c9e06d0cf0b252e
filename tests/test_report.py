"""`mindeye report`: one self-contained HTML page from a tiny trained run; rendered in headless chromium."""

from __future__ import annotations

import base64
import csv
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
from mindeye.evaluation.report import SplitEmbeddings, build_report, curve_series, umap_points
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
                                 pixel_only=True, progress=False, offline_net=True)
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
    head = re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)[0]
    assert re.findall(r'<th colspan="(\d+)">([^<]+)</th>', head) == [("4", "Low-Level"), ("4", "High-Level"),
                                                                    ("2", "Retrieval")]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)[2:]
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
    assert row[-2:] == [f"{100 * ret['image_to_brain']:.1f}%", f"{100 * ret['brain_to_image']:.1f}%"]
    assert row[2] == "—1"  # unavailable, with a footnote
    assert cells["low-level blurry"][-2:] == ["—", "—"]
    assert cells["demo-ridge (ridge baseline)"][-2:] == [f"{100 * ridge_ret['image_to_brain']:.1f}%",
                                                         f"{100 * ridge_ret['brain_to_image']:.1f}%"]
    assert "Mean of MindEye (tiny), low-level blurry" in cells
    assert not any("retrieval only" in name for name in cells)  # the high run is already in a row
    assert "skipped (--pixel-only)" in html  # the unavailable reason is on the page


def test_provenance_names_what_made_the_images(exp):
    html = exp["html"]
    assert "generated by &#39;demo-latent-diffusion&#39; (weights: bundled:demo)" in html
    assert "NOT Versatile Diffusion" in html
    assert "standin-clip-hidden -- a stand-in encoder" in html
    assert "decoded by the standin-vae decoder" in html
    assert "source: simulated" in html


def test_training_curves_match_metrics_jsonl(exp):
    html = exp["html"]
    records = [json.loads(x) for x in (exp["high"] / "metrics.jsonl").read_text().splitlines()]
    n_loss = sum("loss" in r for r in records)
    assert n_loss >= 3
    loss, comps, vals = curve_series(records)
    assert len(loss) == 1 and list(loss[0].y) == [r["loss"] for r in records if "loss" in r]
    assert {"contrastive", "prior"} <= {s.label for s in comps}
    assert {"image_to_brain", "brain_to_image"} <= {s.label for s in vals}
    assert "alpha" not in {s.label for s in vals}  # the ridge's alpha is a setting, not a curve
    # one embedded PNG per chart, and the same charts as files
    for stem in ("high_level_loss", "high_level_loss_components", "high_level_validation", "retrieval_per_draw"):
        fig = re.search(rf'<figure class="figure" id="fig-{stem}"><img class="figure" src="([^"]+)"', html)
        assert fig, stem
        assert _img_from_uri(fig.group(1)).shape[1] > 300
        assert (exp["root"] / "figures" / f"{stem}.png").exists()
    assert "fig-ridge_validation" not in html
    # real axis labels and the validation pool (min(eval.pool, validation images)), not "value"
    cfg = json.loads((exp["root"] / "figures" / "index.json").read_text())["figures"]
    [val] = [f for f in cfg if f["stem"] == "high_level_validation"]
    from mindeye.training.data import train_val_images

    n_val = len(train_val_images(exp["store"], load_config(REPO / "src/mindeye/configs/demo-highlevel.yaml",
                                                           TINY_HIGH))[1])
    assert val["caption"].endswith(f"validation retrieval, {min(300, n_val)} candidates")
    # a simulated store: the published NSD numbers are said not to apply
    assert 'id="published-not-applicable"' in html and "not NSD" in html
    ridge = json.loads((exp["ridge"] / "metrics.jsonl").read_text().splitlines()[-1])
    assert (f"validation (epoch 1): brain_to_image {ridge['val_brain_to_image']:.3f}, image_to_brain "
            f"{ridge['val_image_to_brain']:.3f}") in html  # one evaluation: numbers, not a chart


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
    from mindeye.evaluation.report import test_embeddings
    from mindeye.runs import load_run_model

    html = exp["html"]
    assert 'id="fig-umap"' in html and (exp["root"] / "figures" / "umap.pdf").exists()
    assert f"{UMAP_N} prior samples (guidance 2.0, 10 steps)" in html
    cfg, _, model, subject = load_run_model(exp["high"], "cpu")
    points, why = umap_points(test_embeddings(model, cfg, subject, "cpu", UMAP_N), UMAP_N)
    assert why == "" and [label for label, _ in points] == ["targets (standin-clip-hidden)", "backbone outputs",
                                                             "projector outputs", "prior samples"]
    assert all(xy.shape == (UMAP_N, 2) and np.isfinite(xy).all() for _, xy in points)


def test_cli_no_umap_default_out_and_notes(exp, capsys):
    high = exp["high"]
    assert main(["report", "--run", str(high), "--no-umap", "--images", "3", "--device", "cpu"]) == 0
    html = (high / "report.html").read_text()
    assert "UMAP not computed (--no-umap)" in html and 'id="fig-umap"' not in html
    assert "demo-highlevel (retrieval only)" in html  # no metrics given: the run's retrieval row
    assert "No reconstruction metrics given" in html and "No reconstructions" in html
    grid = re.search(r'<table class="grid" id="image-grid">.*?</table>', html, re.S).group(0)
    assert len(re.findall(r"<img ", grid)) == 2 * 3  # ground truth + retrieved
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
    points, why = umap_points(SplitEmbeddings(np.arange(5), x, x, None, None), 5)
    assert points is None and "UMAP unavailable" in why and "umap-learn" in why


def test_figure_table_and_grid_files_open(exp):
    from PIL import Image

    from mindeye.evaluation.tables import COLUMNS

    root = exp["root"]
    index = json.loads((root / "figures" / "index.json").read_text())
    stems = [f["stem"] for f in index["figures"]]
    assert {"high_level_loss", "retrieval_per_draw", "image_grid", "umap"} <= set(stems)
    for f in index["figures"]:
        assert f["files"] == [f"figures/{f['stem']}.png", f"figures/{f['stem']}.pdf"]
        with Image.open(root / f["files"][0]) as im:
            im.verify()
        with Image.open(root / f["files"][0]) as im:
            assert im.format == "PNG" and min(im.size) >= 200
        pdf = (root / f["files"][1]).read_bytes()
        assert pdf.startswith(b"%PDF-") and b"%%EOF" in pdf[-1024:]
    # Table 1 as Markdown, CSV (raw numbers, machine-readable header) and booktabs LaTeX
    assert index["tables"][:3] == ["tables/table1.md", "tables/table1.csv", "tables/table1.tex"]
    rows = list(csv.reader(io.StringIO((root / "tables/table1.csv").read_text())))
    assert rows[0] == ["method", *[key for key, _, _ in COLUMNS], "unavailable"]
    by_name = {r[0]: dict(zip(rows[0], r)) for r in rows[1:]}
    mind = exp["metrics"]["rows"][0]["metrics"]
    ret = json.loads((exp["high"] / "eval" / "retrieval.json").read_text())
    # CSV numbers carry 4 significant digits (report_tables.rounded)
    assert float(by_name["MindEye (tiny)"]["pixcorr"]) == pytest.approx(mind["pixcorr"]["value"], rel=5e-4)
    assert float(by_name["MindEye (tiny)"]["image_to_brain"]) == pytest.approx(ret["image_to_brain"], rel=5e-4)
    assert by_name["MindEye (tiny)"]["alexnet2"] == "" and "alexnet2" in by_name["MindEye (tiny)"]["unavailable"]
    tex = (root / "tables/table1.tex").read_text()
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\cmidrule(lr){2-5}", r"\multicolumn{4}{c}{Low-Level}",
                  r"PixCorr $\uparrow$", r"Eff $\downarrow$", r"\textbf{Mean of MindEye (tiny), low-level blurry}"):
        assert token in tex, token
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert all(line.count("&") == len(COLUMNS) and line.endswith(r"\\") for line in body)
    assert "| MindEye (tiny) |" in (root / "tables/table1.md").read_text()
    # image grids: each row at full resolution, one PNG strip (64 px store images)
    assert index["grids"] == ["grids/ground_truth.png", "grids/blurry.png", "grids/reconstruction.png",
                              "grids/retrieved.png"]
    with Image.open(root / "grids/ground_truth.png") as im:
        strip = np.asarray(im.convert("RGB"))
    shown = exp["store"].image_indices("test")[:SHOWN]
    np.testing.assert_array_equal(strip, np.concatenate([exp["store"].images[i] for i in shown], axis=1))


def test_offline_substitute_has_its_own_table(exp):
    html = exp["html"]
    main = re.search(r'<table id="metrics-table".*?</table>', html, re.S).group(0)
    assert "EffNet-Lite0" not in main  # never in the paper's columns
    offline = re.search(r'<table id="offline-table".*?</table>', html, re.S).group(0)
    assert "EffNet-Lite0 2-way (offline)" in offline and "NOT a paper metric" in html
    md = (exp["root"] / "tables" / "offline_metrics.md").read_text()
    assert "| MindEye (tiny) |" in md
    got = exp["metrics"]["rows"][0]["offline_metrics"]
    if "value" in got["effnet_lite0_2way"]:  # the extra is installed: a real score
        assert 0.0 <= got["effnet_lite0_2way"]["value"] <= 1.0
        assert f"{100 * got['effnet_lite0_2way']['value']:.1f}%" in offline
    else:
        assert "mindeye[offline]" in got["effnet_lite0_2way"]["unavailable"]


def test_sessions_curve_and_escaping(exp, tmp_path):
    points = [{"sessions": s, "method": m, "image_to_brain": a, "image_to_brain_std": 0.02, "brain_to_image": a - 0.1}
              for m, off in (("fine-tuned", 0.2), ("scratch", 0.0)) for s, a in ((1, 0.3 + off), (2, 0.4 + off),
                                                                                 (4, 0.5 + off))]
    (tmp_path / "sessions.json").write_text(json.dumps(points))
    out = build_report(exp["high"], out=tmp_path / "r" / "report.html", umap=False, n_images=2, device="cpu",
                       sessions=tmp_path / "sessions.json", title="<script>alert(1)</script> & co")
    html = out.read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html
    assert 'id="fig-sessions"' in html and (tmp_path / "r/figures/sessions.pdf").exists()
    (tmp_path / "bad.json").write_text(json.dumps([{"sessions": 0, "image_to_brain": 0.1}]))
    with pytest.raises(MindEyeError, match="point 0 needs an integer 'sessions' >= 1"):
        build_report(exp["high"], out=tmp_path / "x.html", umap=False, sessions=tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text(json.dumps([{"sessions": 2, "loss": 0.1}]))
    with pytest.raises(MindEyeError, match="point 0 has no metric"):
        build_report(exp["high"], out=tmp_path / "x.html", umap=False, sessions=tmp_path / "bad.json")
    assert not (tmp_path / "x.html").exists()


def test_template_ships_with_the_package():
    import tomllib

    from mindeye.evaluation.report import render_page  # noqa: F401  (the loader finds the template)

    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mindeye"]
    template = REPO / "src/mindeye/templates/report.html.j2"
    assert template.exists() and any(template.relative_to(REPO / "src/mindeye").match(g) for g in data)
    deps = " ".join(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    assert "matplotlib" in deps and "jinja2" in deps


def test_latex_and_csv_of_synthetic_rows():
    from mindeye.evaluation.report_tables import csv_table, latex_escape, latex_table

    rows = [{"name": "A_1 & 50%", "pixcorr": {"value": 0.3091}, "image_to_brain": {"value": 0.938},
             "swav": {"unavailable": "no weights"}}, {"name": "Mean", "mean": True, "pixcorr": 0.25}]
    tex = latex_table(rows, caption="x_y")
    assert r"A\_1 \& 50\% & .309 &" in tex and "93.8\\%" in tex and r"\caption{x\_y}" in tex
    assert r"\textbf{Mean} & \textbf{.250} & \textbf{--}" in tex
    assert latex_escape("\\a{b}~") == r"\textbackslash{}a\{b\}\textasciitilde{}"
    lines = list(csv.reader(io.StringIO(csv_table(rows))))
    assert lines[1][0] == "A_1 & 50%" and float(lines[1][1]) == 0.3091 and lines[1][-1] == "swav"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = ("<script>window.addEventListener('load',function(){var imgs=Array.prototype.slice.call(document.images);"
         "var ok=imgs.filter(function(i){return i.complete&&i.naturalWidth>0;}).length;"
         "var lines=document.querySelectorAll('img.figure').length;"
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
    assert 'id="metrics-table"' in dom and 'id="fig-umap"' in dom
    shot = tmp_path / "page.png"
    subprocess.run([*cmd[:-2], "--window-size=1280,3000", f"--screenshot={shot}", exp["page"].as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000


def test_no_brain_map_without_a_mask(exp):
    """The simulated store keeps no brain mask: no glass-brain figure, no section, no error."""
    assert exp["store"].mask_path is None
    assert 'id="brain"' not in exp["html"] and "brain_map" not in exp["html"]
    index = json.loads((exp["root"] / "figures" / "index.json").read_text())
    assert "brain_map" not in [f["stem"] for f in index["figures"]]


def test_floors_section_and_table_match_the_retrieval_json(exp):
    """The page and tables/floors.md carry each run's floors, as written in its retrieval.json."""
    res = json.loads((exp["high"] / "eval" / "retrieval.json").read_text())
    f = res["floors"]
    assert 'id="floors"' in exp["html"]
    md = (exp["root"] / "tables" / "floors.md").read_text()
    assert "high-level run" in md and "ridge run" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| image_to_brain |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1] == f"{f['model']['image_to_brain']:.4g}" and cells[2] == f"{f['chance']['image_to_brain']:.4g}"
    assert cells[4].startswith(f"{f['shuffled_brain']['mean']['image_to_brain']:.4g} ± ")
