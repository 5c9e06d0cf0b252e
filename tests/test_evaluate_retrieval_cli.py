"""`mindeye evaluate retrieval` through the command line on a tiny trained run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mindeye.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.backbone.hidden=64", "model.backbone.n_blocks=1", "model.projector.hidden=32",
        "model.prior.enabled=false", "train.epochs=1", "data.val_images=0"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from mindeye.data.simulate import simulate_subject
    from mindeye.encoders.cache import embed_store

    root = tmp_path_factory.mktemp("evalcli")
    simulate_subject(root / "store", scale="tiny", seed=2, progress=False)
    embed_store(root / "store", "standin-clip-hidden", progress=False)
    args = ["train", "--config", str(REPO / "src/mindeye/configs" / "demo-highlevel.yaml"), "--data", str(root / "store"),
            "--out", str(root / "run"), "--device", "cpu", "--no-progress"]
    assert main(args + sum((["--set", o] for o in TINY), [])) == 0
    return root


def test_evaluate_retrieval_prints_table_and_writes_json(tiny_run, capsys):
    out = tiny_run / "all.json"
    assert main(["evaluate", "retrieval", "--run", str(tiny_run / "run"), "--device", "cpu",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "image retr. (60)" in text and "chance 1.67%" in text  # 60 test images -> pool of 60
    assert "Image retrieval = image_to_brain" in text  # the table says which direction is which
    [res] = json.loads(out.read_text())
    assert res["pool"] == 60 and res["draws"] == 30 and res["n_test"] == 60
    assert res["brain_to_image_ci95"][0] <= res["brain_to_image"] <= res["brain_to_image_ci95"][1]
    assert res["image_to_brain_ci95"][0] <= res["image_to_brain"] <= res["image_to_brain_ci95"][1]
    # the printed "image retrieval" column is the authors' direction (image_to_brain)
    row = text.splitlines()[1].split()
    assert row[1] == f"{100 * res['image_to_brain']:.1f}%" and row[2] == f"{100 * res['brain_to_image']:.1f}%"
    assert json.loads((tiny_run / "run" / "eval" / "retrieval.json").read_text())["n_test"] == 60


def test_single_trial_mode_uses_every_test_trial(tiny_run):
    from mindeye.evaluation.run_eval import evaluate_retrieval

    res = evaluate_retrieval(tiny_run / "run", device="cpu", mode="single", write=False)
    assert res["n_test"] == 176 and res["test_mode"] == "single"


def test_evaluate_retrieval_rejects_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["evaluate", "retrieval", "--run", str(tmp_path)]) == 2
    assert "not a mindeye run directory" in capsys.readouterr().err


def test_retrieval_floors_per_image_and_bottleneck(tiny_run, capsys):
    """The JSON carries chance, the shuffled-brain floor, the ceiling, per-image ranks and the bottleneck curve."""
    import numpy as np

    from mindeye.evaluation.floors import derangement, retrieval_values
    from mindeye.evaluation.run_eval import evaluate_retrieval

    res = evaluate_retrieval(tiny_run / "run", device="cpu", write=False, bottleneck=[1, 4])
    f = res["floors"]
    assert f["chance"]["brain_to_image"] == pytest.approx(1 / 60, rel=1e-5) and f["ceiling"]["image_to_brain"] == 1.0
    assert f["model"]["brain_to_image"] == pytest.approx(res["brain_to_image"], rel=1e-5)  # 6 digits in JSON
    per = res["per_image"]
    assert len(per["image_index"]) == 60 and np.mean(per["image_to_brain_top1"]) == pytest.approx(
        res["full_test_set"]["image_to_brain_top1"], rel=1e-5)
    # the shuffled-brain floor is the model's own embeddings re-paired: recompute seed 1 by hand
    from mindeye.data.splits import load_eval_split
    from mindeye.encoders.targets import Targets
    from mindeye.runs import embed_voxels, load_run_model

    cfg, _, model, subject = load_run_model(tiny_run / "run", "cpu")
    test = load_eval_split(subject, subject.image_indices("test"), cfg.data.test_mode, cfg.data.test_repetitions)
    preds = embed_voxels(model, test.voxels, "cpu").flatten(1)
    targets = Targets(subject.path, cfg.targets.encoder, cfg.targets.weights).get(test.image_index).flatten(1)
    seeds = [retrieval_values(preds[derangement(60, s)], targets, 300, 30, 0, "normal", "uniform") for s in (0, 1, 2)]
    assert f["shuffled_brain"]["mean"]["image_to_brain"] == pytest.approx(np.mean([v["image_to_brain"] for v in seeds]),
                                                                     rel=1e-5)
    assert [p["k"] for p in res["bottleneck"]["points"]] == [1, 4]
    assert main(["evaluate", "retrieval", "--run", str(tiny_run / "run"), "--device", "cpu"]) == 0
    assert "shuffled brain .. ceiling" in capsys.readouterr().out
