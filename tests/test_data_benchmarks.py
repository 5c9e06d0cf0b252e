"""benchmarks/data_throughput.py and train_throughput.py --whole-train run end to end (tiny sizes)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_data_throughput_tiny_run_times_every_mode(tmp_path, capsys):
    rows = _load("data_throughput").main(["--tiny", "--batches", "4", "--rounds", "2", "--step-ms", "1", "--scratch",
                                          str(tmp_path), "--json", str(tmp_path / "rows.jsonl")])
    got = {(r["pipeline"], r["step_ms"], r["mode"]) for r in rows}
    assert got == {(p, s, m) for p in ("high", "low") for s in (0.0, 1.0)
                   for m in ("simple", "prefetch", "resident", "floor")}
    assert all(r["batches"] == 4 and len(r["round_rates"]) == 2 and r["batches_per_s"] > 0 for r in rows)
    assert "| high | 0 ms | prefetch |" in capsys.readouterr().out
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == len(rows)


def test_whole_train_mode_times_the_trainer_loop_per_data_path(tiny_store, capsys):
    tt = _load("train_throughput")
    small = ["model.backbone.hidden=64", "model.backbone.n_blocks=1", "model.projector.hidden=32",
             "model.prior.depth=1", "model.prior.heads=2", "model.prior.dim_head=16", "data.val_images=0"]
    rows = tt.main(["--whole-train", "--data", str(tiny_store), "--size", "small", "--device", "cpu",
                    "--batch", "16", "--warmup", "1", "--steps", "3", *sum((["--set", o] for o in small), [])])
    assert [r["data_path"] for r in rows] == ["simple", "prefetch", "resident"]
    assert all(r["samples_per_s"] > 0 and r["ms_per_step"] > 0 for r in rows)
    assert "| prefetch |" in capsys.readouterr().out
