"""The shipped published-results table and a run's place among them (docs/published-results.md)."""

from __future__ import annotations

import pytest

from mindeye.evaluation.published import load_published, place_run, placement_lines, protocol_differences
from mindeye.evaluation.tables import COLUMNS

KEYS = {key for key, _, _ in COLUMNS}


def test_every_row_is_sourced_and_uses_known_metrics_and_protocols():
    table = load_published()
    assert table["results"]
    for entry in table["results"]:
        assert entry["source"] and entry["protocol"] in table["protocols"] and entry["subjects"]
        assert entry["metrics"] and set(entry["metrics"]) <= KEYS
        for key, value in entry["metrics"].items():
            assert 0 < value <= 1.0, (entry["method"], key)
    # MindEye v1's own Table 1 row, as printed in the paper (percent columns stored as fractions)
    [v1] = [e for e in table["results"] if e["method"] == "MindEye v1" and e["subjects"].startswith("1, 2, 5, 7")]
    assert v1["metrics"]["pixcorr"] == 0.309 and v1["metrics"]["image_to_brain"] == 0.936


def test_a_simulated_run_is_not_compared():
    placed = place_run("demo", {"pixcorr": 0.9}, {"source": "simulated"}, {"n_test": 300, "pool": 300})
    assert placed["applies"] is False and "not NSD" in placement_lines(placed)[0]


def test_an_nsd_run_is_ranked_and_protocol_differences_flagged():
    row = {"pixcorr": {"value": 0.300}, "image_to_brain": {"value": 0.95}, "swav": {"value": 0.35}}
    retrieval = {"n_test": 982, "pool": 300, "draws": 30, "test_mode": "averaged"}
    placed = place_run("ours", row, {"source": "nsd", "subject": 1}, retrieval)
    assert placed["applies"]
    published = load_published()["results"]
    # independent rank: 1 + the number of published rows strictly better
    pix = [e["metrics"]["pixcorr"] for e in published if "pixcorr" in e["metrics"]]
    assert placed["ranks"]["pixcorr"] == (1 + sum(v > 0.300 for v in pix), len(pix) + 1)
    swav = [e["metrics"]["swav"] for e in published if "swav" in e["metrics"]]  # lower is better
    assert placed["ranks"]["swav"] == (1 + sum(v < 0.35 for v in swav), len(swav) + 1)
    by = {(r["method"], r["subjects"]): r for r in placed["rows"]}
    assert by[("MindEye v1", "1, 2, 5, 7 (mean)")]["differences"] == []
    me2 = by[("MindEye2 (40 h)", "1, 2, 5, 7 (mean)")]["differences"]
    assert any(d.startswith("test set: 982 images here vs 1000") for d in me2)
    assert any("model outputs" in d for d in me2)
    single = by[("MindEye v1 (single-trial)", "1")]["differences"]
    assert any(d.startswith("averaging") for d in single)
    assert any("another protocol" in line for line in placement_lines(placed))


@pytest.mark.parametrize("ours,diff", [({"retrieval_pool": 100}, "retrieval pool: 100 here vs 300"),
                                       ({"averaging": "single"}, "averaging: single")])
def test_protocol_differences(ours, diff):
    theirs = load_published()["protocols"]["mindeye1"]
    assert any(d.startswith(diff) for d in protocol_differences(ours, theirs))
