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
