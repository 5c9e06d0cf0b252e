"""The authors'-step harness computes the same loss as our step from the same weights (issue 22).

Runs only where ``MINDEYE_AUTHORS_SRC`` names a checkout of MedARC-AI/fMRI-reconstruction-NSD and the
authors' packages import (dalle2-pytorch 1.14.2, diffusers 0.13.0, kornia, accelerate, ...: the reference
environment of benchmarks/README.md); skips with the reason otherwise. Tiny sizes (500 voxels, hidden 64,
one block, prior depth 1, batch 4): seconds of compute, plus their imports.

    MINDEYE_AUTHORS_SRC=/tmp/authors-nsd PYTHONPATH=src /tmp/refvenv/bin/python -m pytest tests/test_authors_step.py
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "authors_step.py"


def _module():
    spec = importlib.util.spec_from_file_location("authors_step", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["authors_step"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def authors():
    path = os.environ.get("MINDEYE_AUTHORS_SRC")
    if not path:
        pytest.skip("MINDEYE_AUTHORS_SRC is not set (path of a MedARC-AI/fMRI-reconstruction-NSD checkout)")
    A = _module()
    try:
        src = A.authors_src_dir(path)
        models, utils, _ = A.import_authors(src)
    except A.AuthorsUnavailable as exc:
        pytest.skip(f"the authors' step cannot run here: {exc}")
    return A, src, models, utils


@pytest.mark.parametrize("pipeline", ["high", "low"])
def test_same_weights_same_loss(authors, pipeline):
    A, src, models, utils = authors
    c = A.run_check(argparse.Namespace(device="cpu"), pipeline, src, models, utils, n_voxels=500, size="test",
                    batch=4, prior_depth=1 if pipeline == "high" else None)
    assert c["loss_rel_diff"] <= 1e-4, A.format_check(pipeline, c)
    assert c["grads_compared"] > 10 and c["grad_rel_max"] <= 1e-3, A.format_check(pipeline, c)
    assert c["decay_groups_equal"] and c["ok"], A.format_check(pipeline, c)


def test_missing_checkout_is_a_clear_error(tmp_path, capsys):
    A = _module()
    assert A.main(["--authors-src", str(tmp_path)]) == 2
    assert "Train_MindEye.py" in capsys.readouterr().err
