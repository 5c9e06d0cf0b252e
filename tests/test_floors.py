"""Floors, ceilings, fractions, per-image values, `mindeye compare` and the bottleneck curve (issue 26),
each against an independent computation on tiny inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from mindeye.cli import main
from mindeye.data.store import SubjectStore
from mindeye.errors import MindEyeError
from mindeye.evaluation import floors as fl
from mindeye.evaluation import metrics as M
from mindeye.evaluation.recon_eval import pixel_only_nets

REPO = Path(__file__).resolve().parents[1]


def _loop_top1(brain: np.ndarray, images: np.ndarray) -> tuple[float, float]:
    """Independent strict top-1 over the whole set by cosine: (brain_to_image, image_to_brain)."""
    b = brain / np.linalg.norm(brain, axis=1, keepdims=True)
    im = images / np.linalg.norm(images, axis=1, keepdims=True)
    s = b @ im.T
    n = len(s)
    b2i = np.mean([all(s[i, i] > s[i, j] for j in range(n) if j != i) for i in range(n)])
    i2b = np.mean([all(s[j, j] > s[i, j] for i in range(n) if i != j) for j in range(n)])
    return float(b2i), float(i2b)


def test_derangement_and_fraction_formula():
    for seed in range(5):
        p = fl.derangement(7, seed)
        assert sorted(p.tolist()) == list(range(7)) and not np.any(p == np.arange(7))
    with pytest.raises(MindEyeError, match="at least 2"):
        fl.derangement(1, 0)
    assert fl.position(0.6, 0.2, 1.0) == {"value": pytest.approx(0.5), "where": "between"}
    # lower is better (a distance): floor 0.8, ceiling 0.2; model 0.5 is halfway, 0.9 is below the floor
    assert fl.position(0.5, 0.8, 0.2)["value"] == pytest.approx(0.5)
    assert fl.position(0.9, 0.8, 0.2)["where"] == "below floor"
    assert fl.position(1.1, 0.2, 1.0)["where"] == "above ceiling"
    assert fl.position(0.5, 0.3, 0.3)["value"] is None and fl.position(0.5, None, 1.0)["where"] == "unknown"


def test_retrieval_floors_against_hand_computation():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(40, 16, generator=g)
    brain = images + 1.2 * torch.randn(40, 16, generator=g)
    mean = torch.randn(16, generator=g)
    f = fl.retrieval_floors(brain, images, mean, pool=40, draws=3, seed=0, ci="normal", draw_mode="uniform")
    assert f["chance"]["brain_to_image"] == pytest.approx(1 / 40)
    assert f["chance"]["image_to_brain_top5"] == pytest.approx(5 / 40)
    assert all(v == 1.0 for v in f["ceiling"].values())  # the true embeddings retrieve themselves
    model = (f["model"]["brain_to_image_top1"], f["model"]["image_to_brain_top1"])
    assert model == pytest.approx(_loop_top1(brain.numpy(), images.numpy()))
    hand = [_loop_top1(brain.numpy()[fl.derangement(40, s)], images.numpy()) for s in fl.SHUFFLE_SEEDS]
    assert f["shuffled_brain"]["mean"]["brain_to_image_top1"] == pytest.approx(np.mean([h[0] for h in hand]))
    assert f["shuffled_brain"]["sd"]["image_to_brain_top1"] == pytest.approx(np.std([h[1] for h in hand], ddof=1))
    # a constant prediction ties every candidate brain (a miss) and finds one image only
    assert f["mean_train_image"]["image_to_brain"] == 0.0
    assert f["mean_train_image"]["brain_to_image_top1"] == pytest.approx(1 / 40)
    frac = f["fraction"]["brain_to_image_top1"]
    expect = (f["model"]["brain_to_image_top1"] - f["shuffled_brain"]["mean"]["brain_to_image_top1"]) / (
        1.0 - f["shuffled_brain"]["mean"]["brain_to_image_top1"])
    assert frac["value"] == pytest.approx(expect) and frac["where"] == "between"
    per = fl.retrieval_per_image(brain, images)
    assert np.mean(per["brain_to_image_top1"]) == pytest.approx(f["model"]["brain_to_image_top1"])
    assert np.mean(per["image_to_brain_top5"]) == pytest.approx(f["model"]["image_to_brain_top5"])


def test_bottleneck_curve_projects_onto_principal_components():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(30, 12, generator=g)
    brain = images + 0.3 * torch.randn(30, 12, generator=g)
    curve = fl.bottleneck_curve(brain, images, 30, 2, 0, "normal", "uniform")
    assert [p["k"] for p in curve["points"]] == [1, 2, 4, 8, 12]
    full = curve["points"][-1]  # all components: the embeddings themselves
    assert full["brain_to_image_top1"] == pytest.approx(_loop_top1(brain.numpy(), images.numpy())[0])
    assert full["explained_variance"] == pytest.approx(1.0)
    x = brain.double().numpy()
    u, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    proj = (x - x.mean(0)) @ vt[:2].T @ vt[:2] + x.mean(0)
    assert curve["points"][1]["brain_to_image_top1"] == pytest.approx(_loop_top1(proj, images.numpy())[0])


def test_paired_test_matches_scipy_and_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(0.5, 0.1, 50)
    b = a + rng.normal(0.03, 0.05, 50)
    res = fl.paired_test(a, b, n_boot=2000, seed=3)
    w = stats.wilcoxon(a, b)
    assert res["wilcoxon_p"] == pytest.approx(w.pvalue) and res["wilcoxon_statistic"] == pytest.approx(w.statistic)
    d = b - a
    boot = d[np.random.default_rng(3).integers(0, 50, size=(2000, 50))].mean(1)
    assert res["ci95"] == pytest.approx(list(np.quantile(boot, [0.025, 0.975])))
    assert res["mean_diff"] == pytest.approx(d.mean())
    assert fl.paired_test(a, a)["wilcoxon_p"] == 1.0  # no difference at all


def test_pixel_cache_pairings_match_the_metrics():
    rng = np.random.default_rng(0)
    reals = rng.integers(0, 256, (6, 40, 40, 3), dtype=np.uint8)
    fakes = np.clip(reals + rng.normal(0, 40, reals.shape), 0, 255).astype(np.uint8)
    perm = fl.derangement(6, 1)
    got = M.paired_pixel_values(M.PixelCache(reals, batch_size=4), M.PixelCache(fakes, batch_size=4), perm,
                                batch_size=4)
    for m in ("pixcorr", "ssim"):
        per: dict[str, list[float]] = {}
        M.evaluate_reconstructions(reals, fakes[perm], pixel_only_nets(), metrics=[m], progress=False, per_image=per)
        assert got[m].numpy() == pytest.approx(np.array(per[m]), abs=2e-5)


@pytest.fixture(scope="module")
def lowlevel_ridge(tiny_store, tmp_path_factory):
    """A low-level ridge run on the tiny store (closed form: about a second) and its blurry images."""
    from mindeye.config import load_config
    from mindeye.inference.blurry import reconstruct_blurry
    from mindeye.training.trainer import Trainer

    root = tmp_path_factory.mktemp("floors")
    cfg = load_config(REPO / "src/mindeye/configs/demo-ridge-lowlevel.yaml", ["data.val_images=10"])
    Trainer(cfg, root / "ridge-low", store=tiny_store, device="cpu", progress=False).fit()
    reconstruct_blurry(root / "ridge-low", root / "blurry", store=tiny_store, limit=6, progress=False)
    return root


def test_recon_floors_and_blurry_ceiling_against_independent_values(tiny_store, lowlevel_ridge, tmp_path):
    from mindeye.encoders.registry import get_encoder
    from mindeye.encoders.targets import Targets
    from mindeye.evaluation.recon_eval import ground_truth, read_recon_dir
    from mindeye.inference.ceilings import ceiling_blurry

    root = lowlevel_ridge
    ceiling_blurry(root / "ridge-low", tmp_path / "ceiling", store=tiny_store, limit=6, progress=False)
    assert main(["evaluate", "recon", "--recons", str(root / "blurry"), "--data", str(tiny_store), "--pixel-only",
                 "--floors", "--floor-seeds", "1", "--ceiling", str(tmp_path / "ceiling"), "--no-progress",
                 "--out", str(tmp_path / "m.json")]) == 0
    assert "Floors and ceilings" in (tmp_path / "m.md").read_text()
    row = json.loads((tmp_path / "m.json").read_text())["rows"][0]
    f = row["floors"]
    store = SubjectStore(tiny_store)
    recon = read_recon_dir(root / "blurry")
    reals, fakes = ground_truth(store, recon), recon.load_images()
    nets = pixel_only_nets()

    def metric(a, b):
        out = M.evaluate_reconstructions(a, b, nets, metrics=["pixcorr", "ssim"], progress=False)
        return {m: out[m]["value"] for m in out}

    # ceiling = the VAE round trip of the true images (their cached latents decoded)
    vae = get_encoder("standin-vae")
    decoded = vae.decode_float(Targets(tiny_store, "standin-vae", None).get(recon.image_index)) \
        if hasattr(vae, "decode_float") else vae.decode(Targets(tiny_store, "standin-vae", None).get(recon.image_index))
    for m, v in metric(reals, decoded).items():
        assert f["ceiling"][m] == pytest.approx(v, abs=2e-5)
    # shuffled brain: each image against another test sample's reconstruction, mean over the seeds
    hand = metric(reals, fakes[fl.derangement(len(reals), 0)])
    for m in ("pixcorr", "ssim"):
        assert f["shuffled_brain"]["mean"][m] == pytest.approx(hand[m], abs=2e-5)
    assert f["chance"]["pixcorr"] == pytest.approx(metric(reals, reals[fl.derangement(len(reals), 0)])["pixcorr"],
                                                   abs=2e-5)
    mean_img = torch.from_numpy(np.asarray(store.images[store.image_indices("train")], dtype=np.float64).mean(0)
                                / 255).permute(2, 0, 1).float()
    assert f["mean_train_image"]["ssim"] == pytest.approx(
        metric(reals, mean_img.unsqueeze(0).expand(len(reals), -1, -1, -1).contiguous())["ssim"], abs=2e-5)
    assert np.mean(row["per_image"]["pixcorr"]) == pytest.approx(row["metrics"]["pixcorr"]["value"])
    assert f["fraction"]["pixcorr"]["where"] == "between"  # ridge beats shuffling, the VAE round trip beats ridge


def test_compare_command_on_known_arrays_and_mismatched_images(tmp_path, capsys):
    rng = np.random.default_rng(0)
    a, b = rng.random(20), rng.random(20) + 0.1

    def write(path, values, index):
        path.write_text(json.dumps({"rows": [{"name": "r", "metrics": {}, "per_image": {
            "image_index": index, "pixcorr": list(values), "swav": list(values)}}]}))

    write(tmp_path / "a.json", a, list(range(20)))
    write(tmp_path / "b.json", b[::-1], list(range(20))[::-1])  # another order: paired by image index
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "c.json"),
                 "--bootstrap", "500"]) == 0
    res = json.loads((tmp_path / "c.json").read_text())["metrics"]
    assert res["pixcorr"]["mean_diff"] == pytest.approx((b - a).mean())
    assert res["pixcorr"]["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert res["swav"]["higher_is_better"] is False
    assert "pixcorr" in capsys.readouterr().out
    write(tmp_path / "c2.json", b, list(range(1, 21)))
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "c2.json")]) == 2
    assert "different images" in capsys.readouterr().err


def test_generative_ceiling_is_conditioned_on_the_true_embeddings(tiny_store, lowlevel_ridge, tmp_path, monkeypatch):
    """`ceiling recon`: the same generator and settings, conditioned on the true images' own embeddings, started
    from the blurry ceiling; the conditions are checked against the condition encoder run independently."""
    from mindeye.encoders.registry import get_encoder
    from mindeye.inference import generators
    from mindeye.inference.ceilings import ceiling_blurry
    from mindeye.inference.reconstruct import write_index

    store = SubjectStore(tiny_store)
    ceiling_blurry(lowlevel_ridge / "ridge-low", tmp_path / "cb", store=tiny_store, limit=4, progress=False)
    test = store.image_indices("test")[:4]
    recons = tmp_path / "recons"
    recons.mkdir()  # a reconstruction index as `mindeye reconstruct` writes it (images unused here)
    write_index(recons, {"kind": "reconstruction", "images": {str(i): {"image_index": int(i), "file": "x.png"}
                                                             for i in test},
                         "config": {"generator": "demo-latent-diffusion", "store": str(tiny_store), "img2img": True,
                                    "settings": {"samples": 2, "steps": 2, "guidance": 3.5, "img2img_strength": 0.5,
                                                 "seed": 0}}})
    seen = []
    real_load = generators.load_generator

    def recording_load(*args, **kwargs):
        gen = real_load(*args, **kwargs)
        prepare = gen.prepare_condition
        gen.prepare_condition = lambda embs: (seen.append(embs.detach().clone()), prepare(embs))[1]
        return gen

    monkeypatch.setattr(generators, "load_generator", recording_load)
    from mindeye.inference.ceilings import ceiling_reconstruct

    with pytest.raises(MindEyeError, match="blurry ceiling"):
        ceiling_reconstruct(recons, tmp_path / "no-blurry", progress=False)
    index = ceiling_reconstruct(recons, tmp_path / "cf", blurry_ceiling=tmp_path / "cb", samples=1, progress=False)
    assert sorted(int(k) for k in index["images"]) == sorted(test.tolist())
    assert index["config"]["ceiling"].startswith("the generator conditioned on the true image")
    true = get_encoder("standin-clip-hidden").encode(np.asarray(store.images[np.sort(test)]))
    assert torch.cat(seen).float() == pytest.approx(true.float(), abs=1e-4)  # one sample each: the true embedding


def test_blurry_bottleneck_curve_against_hand_projection(tiny_store, lowlevel_ridge, tmp_path, capsys):
    """`evaluate bottleneck-blurry`: at k = rank the curve equals the unprojected model, whose values equal
    `evaluate recon` on the run's `reconstruct-blurry` output; k = 1 equals a numpy rank-1 projection decoded."""
    from mindeye.encoders.registry import get_encoder
    from mindeye.evaluation.recon_eval import read_recon_dir
    from mindeye.inference.blurry import blurry_path

    run = lowlevel_ridge / "ridge-low"
    assert main(["evaluate", "bottleneck-blurry", "--run", str(run), "--data", str(tiny_store), "--limit", "6",
                 "--no-progress", "--out", str(tmp_path / "b.json")]) == 0
    res = json.loads((tmp_path / "b.json").read_text())
    assert "model (no bottleneck)" in (tmp_path / "b.md").read_text()
    ks = [p["k"] for p in res["points"]]
    assert ks[:3] == [1, 2, 4] and ks[-1] == res["rank"] and res["n_scored"] == 6
    # the unprojected model = `evaluate recon` on the blurry directory of the same run (first 6 test images)
    assert main(["evaluate", "recon", "--recons", str(lowlevel_ridge / "blurry"), "--data", str(tiny_store),
                 "--pixel-only", "--no-progress", "--out", str(tmp_path / "m.json")]) == 0
    recon_metrics = json.loads((tmp_path / "m.json").read_text())["rows"][0]["metrics"]
    assert res["image_index"] == read_recon_dir(lowlevel_ridge / "blurry").image_index.tolist()
    for m in ("pixcorr", "ssim"):
        assert res["model"][m] == pytest.approx(recon_metrics[m]["value"], abs=1e-5)
        assert res["points"][-1][m] == pytest.approx(res["model"][m], abs=1e-4)  # full rank: the identity
    assert res["points"][-1]["explained_variance"] == pytest.approx(1.0)
    # k = 1 by hand: numpy SVD of the centred test latents, rank-1 projection, the stand-in VAE decoder
    bp = blurry_path(run, tiny_store)
    with torch.no_grad():
        lat = bp.predict(bp.split.voxels).double().numpy()
    x = lat.reshape(len(lat), -1)
    mu = x.mean(0)
    _, s, vt = np.linalg.svd(x - mu, full_matrices=False)
    one = ((x - mu) @ vt[0])[:, None] * vt[0][None] + mu
    assert res["points"][0]["explained_variance"] == pytest.approx(s[0] ** 2 / (s ** 2).sum())
    vae = get_encoder("standin-vae")
    decode = getattr(vae, "decode_float", None) or vae.decode
    fakes = decode(torch.from_numpy(one[:6]).float().view(6, *lat.shape[1:]))
    if isinstance(fakes, torch.Tensor) and fakes.is_floating_point():
        fakes = fakes.half().float().clamp(0, 1)
    reals = np.asarray(SubjectStore(tiny_store).images[bp.split.image_index[:6]])
    hand = M.evaluate_reconstructions(reals, fakes, pixel_only_nets(), metrics=["pixcorr", "ssim"], progress=False)
    for m in ("pixcorr", "ssim"):
        assert res["points"][0][m] == pytest.approx(hand[m]["value"], abs=1e-5)
    assert res["points"][0]["pixcorr"] != pytest.approx(res["model"]["pixcorr"], abs=1e-3)  # the bottleneck bites
    capsys.readouterr()
    assert main(["evaluate", "bottleneck-blurry", "--run", str(run), "--data", str(tiny_store), "--ks", "2,1000",
                 "--no-progress", "--out", str(tmp_path / "c.json")]) != 0
    assert f"k must be between 1 and {res['n_fitted']}" in capsys.readouterr().err
    assert main(["evaluate", "bottleneck-blurry", "--run", str(run), "--data", str(tiny_store), "--ks", "0,2",
                 "--no-progress", "--out", str(tmp_path / "c.json")]) == 2
    assert "--ks values must be at least 1" in capsys.readouterr().err


def test_top_k_projection_equals_the_svd_projection():
    """mindeye.utils.pca (Gram matrix, column chunks) against the projection on torch's SVD basis."""
    from mindeye.utils import pca

    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 5, 9, generator=g) @ torch.randn(9, 9, generator=g)
    fit = pca.fit_top_k(x)
    flat = x.flatten(1).double()
    mean = flat.mean(0)
    _, s, vh = torch.linalg.svd(flat - mean, full_matrices=False)
    assert fit.rank == 11  # 12 centred rows
    for k in (1, 3, 11, 12):
        got = fit.project(x, k)
        assert got.shape == x.shape
        v = vh[:k]
        assert got.flatten(1).double().numpy() == pytest.approx(((flat - mean) @ v.T @ v + mean).numpy(), abs=1e-5)
        assert fit.explained_variance(k) == pytest.approx(float((s[:k] ** 2).sum() / (s ** 2).sum()))
    with pytest.raises(MindEyeError, match="between 1 and 12"):
        fit.project(x, 13)
    with pytest.raises(MindEyeError, match="NaN"):
        pca.fit_top_k(torch.full((3, 2), float("nan")))


@pytest.fixture(scope="module")
def high_run(tiny_store, tmp_path_factory) -> Path:
    """A tiny 1-epoch high-level run with a diffusion prior (a few seconds)."""
    tiny = ["model.backbone.hidden=64", "model.backbone.n_blocks=1", "model.projector.hidden=32", "model.prior.depth=1",
            "model.prior.heads=2", "model.prior.dim_head=16", "train.batch_size=32", "data.val_images=0",
            "train.val_every=100", "train.epochs=1"]
    run = tmp_path_factory.mktemp("bneck") / "high"
    assert main(["train", "--config", str(REPO / "src/mindeye/configs/demo-highlevel.yaml"), "--data", str(tiny_store),
                 "--out", str(run), "--no-progress", "-q", *[a for o in tiny for a in ("--set", o)]]) == 0
    return run


def test_generative_bottleneck_curve_feeds_rank_k_embeddings(tiny_store, lowlevel_ridge, high_run, tmp_path,
                                                             monkeypatch, capsys):
    """`evaluate bottleneck-recon`: at k = 1 the prior reads the backbone embeddings' rank-1 projection (checked
    against a numpy SVD of the run's own embeddings of every test sample) and the judge compares to the
    projector's; the blurry images go through the same k; a second call resumes without generating."""
    from mindeye.data.splits import load_eval_split
    from mindeye.inference import reconstruct as rec
    from mindeye.runs import embed_voxels, load_run_model

    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real = rec.reconstruct

    def recording(backbone, projector, *args, **kwargs):
        seen.append((backbone.double().numpy(), projector.double().numpy()))
        return real(backbone, projector, *args, **kwargs)

    monkeypatch.setattr(rec, "reconstruct", recording)
    out = tmp_path / "curve"
    argv = ["evaluate", "bottleneck-recon", "--run", str(high_run), "--lowlevel", str(lowlevel_ridge / "ridge-low"),
            "--data", str(tiny_store), "--ks", "1,2", "--limit", "4", "--samples", "2", "--steps", "2",
            "--prior-steps", "2", "--batch-brains", "4", "--no-progress", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    res = json.loads((out / "curve.json").read_text())
    assert [p["k"] for p in res["points"]] == [1, 2] and res["n_scored"] == 4 and res["blurry_through_bottleneck"]
    assert {"pixcorr", "ssim"} <= set(res["model"]) and "blurry" in res["points"][0]
    assert "model (no bottleneck)" in (out / "curve.md").read_text()

    cfg, _, model, store = load_run_model(high_run, "cpu", tiny_store)
    split = load_eval_split(store, store.image_indices("test"), cfg.data.test_mode, cfg.data.test_repetitions)
    for which, got in (("backbone", seen[0][0]), ("projector", seen[0][1])):
        x = embed_voxels(model, split.voxels, "cpu", which=which).double().numpy().reshape(len(split.voxels), -1)
        mu = x.mean(0)
        _, s, vt = np.linalg.svd(x - mu, full_matrices=False)
        one = ((x - mu) @ vt[0])[:, None] * vt[0][None] + mu  # rank 1, fitted on all test samples
        assert got.reshape(len(got), -1) == pytest.approx(one[:4], abs=2e-3 * np.abs(one).max())  # float16
        key = f"{which}_explained_variance"
        assert json.loads((out / "k0001" / "index.json").read_text())["config"]["bottleneck"][key] == pytest.approx(
            s[0] ** 2 / (s ** 2).sum())
    assert seen[2][0].shape == seen[0][0].shape and "bottleneck" not in json.loads(
        (out / "model" / "index.json").read_text())["config"]  # the last directory: the model as it is
    blurry = json.loads((out / "k0002" / "blurry" / "index.json").read_text())["config"]["bottleneck"]
    assert blurry["k"] == 2 and 0 < blurry["explained_variance"] <= 1

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert main(argv) == 0  # resumes: every image is there, nothing is made again
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamps
    assert json.loads((out / "curve.json").read_text())["points"] == res["points"]
    capsys.readouterr()
    assert main([*argv[:-2], "--ks", "0,2", "--out", str(tmp_path / "bad")]) == 2
    assert "--ks values must be at least 1" in capsys.readouterr().err
    assert main(["reconstruct", "--run", str(high_run), "--bottleneck", "0", "--out", str(tmp_path / "r")]) == 2
    assert "--bottleneck must be at least 1" in capsys.readouterr().err

    # the report draws the curve from curve.json: one line per metric and path, the points' own values
    from mindeye.evaluation.report import _recon_bottleneck_figure
    from mindeye.evaluation.report_data import read_bottleneck_curve

    fig = _recon_bottleneck_figure([read_bottleneck_curve(out)])
    lines = {ln.get_label(): ln.get_ydata().tolist() for ln in fig.figure.axes[0].get_lines()}
    assert lines["high: reconstructions pixcorr"] == pytest.approx([p["pixcorr"] for p in res["points"]])
    assert lines["high: blurry ssim"] == pytest.approx([p["blurry"]["ssim"] for p in res["points"]])
    assert main(["report", "--run", str(high_run), "--data", str(tiny_store), "--no-umap", "--images", "1",
                 "--bottleneck", str(out), "--out", str(tmp_path / "rep" / "report.html"), "--device", "cpu",
                 "-q"]) == 0
    assert 'id="bottleneck-recon"' in (tmp_path / "rep" / "report.html").read_text()
    (tmp_path / "bad.json").write_text(json.dumps({"points": [{"k": "one"}], "model": {}}))
    with pytest.raises(MindEyeError, match="is not a bottleneck curve"):
        read_bottleneck_curve(tmp_path / "bad.json")
    with pytest.raises(MindEyeError, match="evaluate bottleneck-recon"):
        read_bottleneck_curve(tmp_path / "missing")


class _TinyConv(torch.nn.Module):
    """A fixed random conv net standing in for a metric network: 'avgpool' = pooled conv features."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)
        self.images_seen = 0

    def forward(self, x):
        self.images_seen += len(x)
        return {"avgpool": torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4)}


def test_network_metric_floors_reuse_features_and_equal_full_passes():
    """Floors of network metrics (a two-way one and a distance) from cached features: each equals the full
    metric pass on the re-paired images (chance, shuffled brain, mean image, ceiling)."""
    from mindeye.evaluation.feature_nets import FeatureExtractor, FeatureNets

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    nets = FeatureNets({"inceptionv3": FeatureExtractor("inceptionv3", _TinyConv(0), 64, mean, std),
                        "swav": FeatureExtractor("swav", _TinyConv(1), 64, mean, std)})
    g = torch.Generator().manual_seed(0)
    reals = torch.rand(9, 3, 48, 48, generator=g)
    fakes = (0.6 * reals + 0.4 * torch.rand(9, 3, 48, 48, generator=g)).clamp(0, 1)
    ceiling = (0.9 * reals + 0.1 * torch.rand(9, 3, 48, 48, generator=g)).clamp(0, 1)
    mean_image = reals.mean(0)
    keys = ["pixcorr", "inceptionv3", "swav"]

    def full(others):
        res = M.evaluate_reconstructions(reals, others, nets, metrics=keys, progress=False, batch_size=4)
        return {m: res[m]["value"] for m in keys}

    pairs = fl.Pairings(reals, nets, keys, batch_size=4)
    model = full(fakes)
    chance = fl.recon_chance(pairs)
    assert chance["inceptionv3"] == 0.5
    assert chance["swav"] == pytest.approx(full(reals[fl.derangement(9, 0)])["swav"], abs=1e-6)
    assert fl.recon_mean_image(pairs, mean_image) == pytest.approx(full(mean_image.expand(9, -1, -1, -1)), abs=1e-5)
    ceil = pairs.values(pairs.prepare(ceiling))
    assert ceil == pytest.approx(full(ceiling), abs=1e-5)
    seen = nets.nets["swav"].net.images_seen
    f = fl.recon_floors(pairs, fakes, {m: {"value": v} for m, v in model.items()}, chance, None,
                        {m: {"value": v} for m, v in ceil.items()}, seeds=[0, 1])
    assert nets.nets["swav"].net.images_seen - seen == 9  # the reconstructions once, whatever the seeds
    for m in keys:
        hand = np.mean([full(fakes[fl.derangement(9, s)])[m] for s in (0, 1)])
        assert f["shuffled_brain"]["mean"][m] == pytest.approx(hand, abs=1e-5)
