"""Store views, the category-disjoint split, N-way / 1000-way retrieval with bootstrap CIs, ID vs OOD scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mindeye.cli import main
from mindeye.data.store import SubjectStore
from mindeye.data.views import disjoint_splits, kmeans, write_disjoint_view
from mindeye.errors import MindEyeError
from mindeye.metrics.retrieval import (
    BRAIN_TO_IMAGE,
    IMAGE_TO_BRAIN,
    bootstrap_ci,
    check_pool,
    draw_subsets,
    noise_control,
    retrieval_nway,
)

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.backbone.hidden=64", "model.backbone.n_blocks=1", "model.projector.hidden=32",
        "model.prior.enabled=false", "train.epochs=1", "data.val_images=0"]


def _main_category(store: Path) -> np.ndarray:
    scenes = json.loads((store / "attributes.json").read_text())
    return np.array([max(s["objects"], key=lambda o: o["size"])["category"] for s in scenes])


@pytest.fixture(scope="module")
def view(tiny_store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("views") / "disjoint"
    assert main(["prepare", "split", "--disjoint", "--store", str(tiny_store), "--out", str(out),
                 "--hold-out", "star", "--hold-out", "ring"]) == 0
    return out


def test_view_reads_the_parent_voxels_and_targets_with_disjoint_splits(tiny_store, view):
    parent, v = SubjectStore(tiny_store), SubjectStore(view)
    assert v.data_path == tiny_store and v.view["held_out_clusters"] == ["ring", "star"]
    assert sorted(p.name for p in view.iterdir()) == ["clusters.csv", "images.csv", "meta.json", "trials.csv"]
    assert np.shares_memory(v.voxels, v.voxels) and v.voxels.filename == parent.voxels.filename  # not a copy
    rows = np.arange(0, parent.n_trials, 7)
    np.testing.assert_array_equal(np.asarray(v.voxels[rows]), np.asarray(parent.voxels[rows]))
    # Independent check of the split from the scenes' own attributes.
    cat = _main_category(tiny_store)
    held = np.isin(cat, ["ring", "star"])
    assert not held[v.image_indices("train")].any() and not held[v.image_indices("val")].any()
    used = np.unique(parent.trials.image_index)
    np.testing.assert_array_equal(v.image_indices("test"),
                                  np.union1d(used[held[used]], parent.image_indices("test")))
    groups = v.test_groups(v.image_indices("test"))
    np.testing.assert_array_equal(groups["out-of-distribution"], held[v.image_indices("test")])
    assert parent.test_groups(parent.image_indices("test")) is None
    # Targets come from the parent's cache; every check a store passes, a view passes.
    from mindeye.encoders.cache import load_targets

    np.testing.assert_array_equal(load_targets(view, "standin-clip-hidden"), load_targets(tiny_store, "standin-clip-hidden"))
    assert all(v.verify_checksums().values()) and "view of" in v.summary()


def test_view_errors_are_actionable(tiny_store, view, tmp_path):
    with pytest.raises(MindEyeError, match="is itself a view"):
        write_disjoint_view(view, tmp_path / "v2", _main_category(tiny_store), method="category")
    with pytest.raises(MindEyeError, match="unknown cluster"):
        write_disjoint_view(tiny_store, tmp_path / "v3", _main_category(tiny_store), method="category",
                            held_out=["dragon"])
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in view.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    meta = json.loads((moved / "meta.json").read_text())
    meta["view_of"] = str(tmp_path / "gone")
    (moved / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(MindEyeError, match="not there"):
        SubjectStore(moved)


def test_disjoint_splits_hold_whole_clusters_out():
    split = np.array(["train"] * 6 + ["test"] * 4 + ["unused"])
    labels = np.array(list("aabbcc") + list("abcd") + ["e"])
    new, held = disjoint_splits(split, labels, holdout=0.5, seed=3)
    assert len(held) == 2 and "e" not in held  # clusters of unused images are not candidates
    for i, lab in enumerate(labels[:-1]):
        assert new[i] == ("test" if lab in held else split[i])
    assert new[-1] == "unused"
    with pytest.raises(MindEyeError, match="no in-distribution test image"):
        disjoint_splits(split, labels, holdout=0.5, held_out=["a", "b", "c", "d"])


def test_kmeans_finds_separated_clusters_and_is_seeded():
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:4] * 10
    x = np.concatenate([c + rng.normal(size=(30, 8)) for c in centres])
    labels = kmeans(x, 4, seed=1)
    truth = np.repeat(np.arange(4), 30)
    # every true cluster maps to one k-means label and back
    assert all(len(set(labels[truth == k])) == 1 for k in range(4)) and len(set(labels)) == 4
    np.testing.assert_array_equal(labels, kmeans(x, 4, seed=1))
    with pytest.raises(MindEyeError, match="--clusters"):
        kmeans(x, 1)


def test_pools_are_replacement_free_and_too_large_pools_are_refused():
    idx = draw_subsets(1200, 1000, 5, seed=0)
    assert idx.shape == (5, 1000) and all(len(set(r.tolist())) == 1000 for r in idx)
    assert check_pool("all", 982) == 982 and check_pool(1000, 1000) == 1000
    with pytest.raises(MindEyeError, match="1000-way retrieval needs at least 1000 test images.*has 982"):
        check_pool(1000, 982)
    b = torch.randn(30, 8)
    with pytest.raises(MindEyeError, match="needs at least 50"):
        retrieval_nway(b, b, pool=50)


def test_nway_matches_an_independent_loop_and_splits_by_group():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(40, 16, generator=g)
    brain = images + 1.2 * torch.randn(40, 16, generator=g)
    bn = brain / brain.norm(dim=1, keepdim=True)
    im = images / images.norm(dim=1, keepdim=True)
    sim = (bn @ im.T).numpy()
    b2i = np.array([sim[i].argmax() == i for i in range(40)], dtype=float)
    i2b = np.array([sim[:, j].argmax() == j for j in range(40)], dtype=float)
    mask = np.arange(40) < 15
    res = retrieval_nway(brain, images, pool="all", n_boot=200, groups={"a": mask, "b": ~mask})
    assert res["pool"] == 40 and res["draws"] == 1 and res["chance"] == pytest.approx(1 / 40)
    assert res[BRAIN_TO_IMAGE] == pytest.approx(b2i.mean()) and res[IMAGE_TO_BRAIN] == pytest.approx(i2b.mean())
    assert res["groups"]["a"][BRAIN_TO_IMAGE] == pytest.approx(b2i[mask].mean())
    assert res["groups"]["b"][IMAGE_TO_BRAIN] == pytest.approx(i2b[~mask].mean())
    assert res["gap"][BRAIN_TO_IMAGE] == pytest.approx(b2i[mask].mean() - b2i[~mask].mean())
    lo, hi = res[f"{BRAIN_TO_IMAGE}_ci95_bootstrap"]
    assert lo <= res[BRAIN_TO_IMAGE] <= hi and hi - lo > 0
    # With pools, every query's hit rate is averaged over the draws it appears in.
    pooled = retrieval_nway(brain, images, pool=20, draws=50, seed=1)
    assert 0 <= pooled[BRAIN_TO_IMAGE] <= 1 and pooled["draws"] == 50


def test_bootstrap_ci_matches_the_normal_approximation():
    values = (np.random.default_rng(0).random(2000) < 0.3).astype(float)
    lo, hi = bootstrap_ci(values, n_boot=2000, seed=0)
    half = 1.96 * values.std() / np.sqrt(len(values))
    assert lo == pytest.approx(values.mean() - half, abs=0.006) and hi == pytest.approx(values.mean() + half, abs=0.006)


def test_noise_control_matches_the_requested_accuracy():
    images = torch.randn(200, 32, generator=torch.Generator().manual_seed(0))
    control, sigma = noise_control(images, 0.4, seed=0)
    res = retrieval_nway(control, images, pool="all", n_boot=0)
    assert sigma > 0 and (res[BRAIN_TO_IMAGE] + res[IMAGE_TO_BRAIN]) / 2 == pytest.approx(0.4, abs=0.02)


def test_evaluate_on_a_view_reports_id_and_ood_side_by_side(tiny_store, view, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--config", str(REPO / "src/mindeye/configs" / "demo-highlevel.yaml"), "--data", str(view),
            "--out", str(run), "--device", "cpu", "--no-progress"]
    assert main(args + sum((["--set", o] for o in TINY), [])) == 0
    out = tmp_path / "r.json"
    assert main(["evaluate", "retrieval", "--run", str(run), "--device", "cpu", "--pool", "all", "--bootstrap",
                 "100", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    [res] = json.loads(out.read_text())
    v = SubjectStore(view)
    n_ood = v.view["n_ood_test_images"]
    assert res["n_test"] == len(v.image_indices("test"))
    assert res["ood"]["all"]["groups"]["out-of-distribution"]["n"] == n_ood
    assert res["ood"]["all"]["groups"]["in-distribution"]["n"] == res["n_test"] - n_ood
    assert res["nway"]["all"]["pool"] == res["n_test"]
    assert "in- vs out-of-distribution" in text and f"{res['n_test']}-way" in text and "noise control" in text
    for key in ("pooled", "all"):
        block = res["ood"][key]
        for d in (BRAIN_TO_IMAGE, IMAGE_TO_BRAIN):
            assert block["excess_gap"][d] == pytest.approx(block["gap"][d] - res["ood"]["control"][key]["gap"][d])
    assert main(["evaluate", "retrieval", "--run", str(run), "--device", "cpu", "--pool", "1000"]) == 2
    # the report's ID vs OOD table shows the same numbers
    from types import SimpleNamespace

    from mindeye.evaluation.report_sections import ood_rows

    rows = ood_rows([SimpleNamespace(name="r", retrieval=res)])
    assert [r["pool"] for r in rows] == [res["ood"]["pooled"]["pool"], res["n_test"]]
    cell = rows[1]["cells"][0]  # Table 1's image retrieval = image_to_brain
    g = res["ood"]["all"]["groups"]
    assert cell["column"] == "Image retrieval" and rows[1]["n_ood"] == n_ood
    assert cell["id"].startswith(f"{100 * g['in-distribution'][IMAGE_TO_BRAIN]:.1f}%")
    assert cell["excess"] == f"{100 * res['ood']['all']['excess_gap'][IMAGE_TO_BRAIN]:+.1f}"
    assert "1000-way retrieval needs at least 1000 test images" in capsys.readouterr().err


def test_a_run_trained_on_the_parent_is_warned_about(tiny_store, view, tmp_path):
    from mindeye.evaluation.run_eval import evaluate_retrieval

    run = tmp_path / "parent-run"
    args = ["train", "--config", str(REPO / "src/mindeye/configs" / "demo-highlevel.yaml"), "--data", str(tiny_store),
            "--out", str(run), "--device", "cpu", "--no-progress"]
    assert main(args + sum((["--set", o] for o in TINY), [])) == 0
    res = evaluate_retrieval(run, store=view, device="cpu", write=False, n_boot=50)
    assert "may have been training images" in res["ood"]["warning"]
    assert "ood" not in evaluate_retrieval(run, device="cpu", write=False)  # its own store: no groups


# -- reconstruction metrics, in- vs out-of-distribution (`mindeye evaluate recon` on a view) ----------------------
def _noisy_recon_dir(out: Path, store: SubjectStore, images: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """A `mindeye reconstruct`-format directory of noisy copies of ``images`` (noise level per image)."""
    from mindeye.inference.reconstruct import save_png, write_index

    rng = np.random.default_rng(0)
    index = {"kind": "reconstruction", "config": {"generator": "test-noise", "store": str(store.path)}, "images": {}}
    fakes = []
    for i, sd in zip(images.tolist(), noise.tolist()):
        img = np.asarray(store.images[i], dtype=np.float64)
        img = np.clip(img + rng.normal(0, sd, img.shape), 0, 255).astype(np.uint8)
        save_png(img, out / f"images/{i:05d}.png")
        index["images"][str(i)] = {"image_index": i, "file": f"images/{i:05d}.png", "image_id": store.image_ids[i]}
        fakes.append(img)
    write_index(out, index)
    return np.stack(fakes)


def test_evaluate_recon_on_a_view_reports_id_and_ood_means_and_gap(tiny_store, view, tmp_path, capsys):
    from mindeye.evaluation import metrics as M

    v = SubjectStore(view)
    test = np.sort(v.image_indices("test"))
    held = np.isin(_main_category(tiny_store)[test], ["ring", "star"])  # independent of test_groups
    test = np.sort(np.concatenate([test[~held][:6], test[held][:5]]))  # 11 images keep the test fast
    held = np.isin(_main_category(tiny_store)[test], ["ring", "star"])
    assert held.sum() == 5 and (~held).sum() == 6
    fakes = _noisy_recon_dir(tmp_path / "rec", v, test, np.where(held, 90.0, 10.0))  # OOD images much noisier
    out = tmp_path / "m.json"
    assert main(["evaluate", "recon", "--recons", str(tmp_path / "rec"), "--pixel-only", "--bootstrap", "300",
                 "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    [row] = json.loads(out.read_text())["rows"]
    ood = row["ood"]
    assert ood["n"] == {"in-distribution": int((~held).sum()), "out-of-distribution": int(held.sum())}
    assert ood["held_out_clusters"] == ["ring", "star"] and set(ood["metrics"]) == {"pixcorr", "ssim"}
    reals = np.asarray(v.images[test])
    for m, fn in (("pixcorr", M.pixcorr), ("ssim", M.ssim)):
        c = ood["metrics"][m]
        # the group means equal the metric computed on each group's images alone (pairwise metrics) ...
        assert c["in-distribution"] == pytest.approx(fn(reals[~held], fakes[~held]), abs=1e-6)
        assert c["out-of-distribution"] == pytest.approx(fn(reals[held], fakes[held]), abs=1e-6)
        # ... and the per-image values split by the groups
        per = np.asarray(row["per_image"][m])
        assert c["gap"] == pytest.approx(per[~held].mean() - per[held].mean(), abs=1e-12)
        lo, hi = c["gap_ci95_bootstrap"]
        assert lo <= c["gap"] <= hi and lo > 0  # the noisier OOD images score clearly worse
        assert c["better"] == "in-distribution" and c["ci_excludes_zero"] and not c["lower_is_better"]
    assert "In- vs out-of-distribution" in text and "held out of training: ring, star" in text
    # a normal store (the view's parent, same images): no in- vs out-of-distribution block
    assert main(["evaluate", "recon", "--recons", str(tmp_path / "rec"), "--data", str(tiny_store), "--pixel-only",
                 "--out", str(tmp_path / "p.json"), "--no-progress"]) == 0
    assert "ood" not in json.loads((tmp_path / "p.json").read_text())["rows"][0]
    assert "In- vs out-of-distribution" not in capsys.readouterr().out
    # the report's section shows the same cells
    from mindeye.evaluation.report import _environment
    from mindeye.evaluation.report_sections import ood_recon_rows

    [rrow] = ood_recon_rows([json.loads(out.read_text())])
    assert [c["metric"] for c in rrow["cells"]] == ["PixCorr ↑", "SSIM ↑"]
    assert rrow["cells"][0]["id"] == f"{ood['metrics']['pixcorr']['in-distribution']:.3f}"
    source = (REPO / "src/mindeye/templates/report.html.j2").read_text()
    section = source[source.index("{%- if ood or ood_recon %}"):source.index('<section id="published">')]
    html = _environment().from_string(section).render(ood=[], ood_recon=[rrow], ood_explanation="E")
    assert 'id="ood-recon-table"' in html and "and reconstruction</h2>" in html and rrow["cells"][1]["gap"] in html
    assert html.count("<section") == html.count("</section>") == 1
    # images made by a run trained on another store (the parent) are warned about
    from mindeye.evaluation.recon_eval import evaluate_recon_dirs
    from mindeye.inference.reconstruct import write_index

    (tmp_path / "parent-run").mkdir()
    (tmp_path / "parent-run" / "run.json").write_text(json.dumps({"store": str(tiny_store)}))
    index = json.loads((tmp_path / "rec" / "index.json").read_text())
    index["config"]["run"] = str(tmp_path / "parent-run")
    write_index(tmp_path / "rec", index)
    warned = evaluate_recon_dirs([tmp_path / "rec"], pixel_only=True, progress=False, ood_bootstrap=0)
    assert "may have been training images" in warned["rows"][0]["ood"]["warning"]
    assert warned["rows"][0]["ood"]["metrics"]["ssim"]["gap_ci95_bootstrap"] is None


def test_recon_ood_is_sign_aware_and_matches_a_hand_computation():
    from mindeye.evaluation.recon_eval import ood_cells, recon_ood

    mask = np.array([True] * 5 + [False] * 4)
    swav = [0.2, 0.3, 0.25, 0.2, 0.3, 0.6, 0.7, 0.65, 0.6]  # a distance: ID (first 5) better = lower
    two_way = [1.0, 0.5, 0.75, 1.0, 0.5, 1.0, 0.75, 1.0, 1.0]  # ID worse here
    res = recon_ood({"image_index": list(range(9)), "swav": swav, "alexnet2": two_way},
                    {"in-distribution": mask, "out-of-distribution": ~mask}, {"held_out_clusters": ["x"]}, n_boot=500)
    s = res["metrics"]["swav"]
    assert s["in-distribution"] == pytest.approx(np.mean(swav[:5])) and s["out-of-distribution"] == pytest.approx(0.6375)
    assert s["gap"] == pytest.approx(0.25 - 0.6375) and s["lower_is_better"] and s["better"] == "in-distribution"
    a = res["metrics"]["alexnet2"]
    assert a["gap"] == pytest.approx(0.75 - 0.9375) and a["better"] == "out-of-distribution"
    for c in (s, a):
        assert c["gap_ci95_bootstrap"][0] <= c["gap"] <= c["gap_ci95_bootstrap"][1]
    cells = {c["metric"]: c for c in ood_cells(res)}
    assert cells["Alex(2) ↑"]["gap"].startswith("-18.8 [") and cells["Alex(2) ↑"]["id"] == "75.0%"
    assert cells["SwAV ↓"]["better"].startswith("ID")
    res0 = recon_ood({"swav": swav}, {"in-distribution": mask, "out-of-distribution": ~mask}, n_boot=0)
    assert res0["metrics"]["swav"]["gap_ci95_bootstrap"] is None and ood_cells(res0)[0]["gap"].endswith("[n/a]")
    with pytest.raises(MindEyeError, match="per-image values"):
        recon_ood({"swav": swav[:3]}, {"in-distribution": mask, "out-of-distribution": ~mask})
