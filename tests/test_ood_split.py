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
