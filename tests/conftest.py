import os
from pathlib import Path

import pytest
import torch

# Run under pytest-xdist (`make test`: one worker per core, whole files per worker): the longest
# files start first so that no worker is left with one of them at the end. Files with `slow` tests
# follow this list; the order of everything else is unchanged.
LONGEST_FILES = ("test_shared_subject_seeds.py", "test_shared_subject.py", "test_packaging.py", "test_trainer.py",
                 "test_parallel_lean.py", "test_report.py", "test_demo.py", "test_faults_third_pass.py")


def _file_rank(item, slow_files) -> int:
    name = Path(str(item.fspath)).name
    if name in LONGEST_FILES:
        return LONGEST_FILES.index(name)
    return len(LONGEST_FILES) + (0 if name in slow_files else 1)


def pytest_collection_modifyitems(config, items):
    slow_files = {Path(str(i.fspath)).name for i in items if "slow" in i.keywords}
    items.sort(key=lambda i: _file_rank(i, slow_files))  # stable: file-internal order is kept
    fullsize = os.environ.get("MINDEYE_FULLSIZE") == "1"
    has_gpu = torch.cuda.is_available()
    for item in items:
        if "fullsize" in item.keywords and not fullsize:
            item.add_marker(pytest.mark.skip(reason="full-size test: set MINDEYE_FULLSIZE=1 to run"))
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # Tests never reach the network: pretrained weights must come from local paths.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    torch.set_num_threads(1)  # tiny models: one thread avoids OpenMP contention (all test files)


# Stand-in targets the tiny-store tests train and retrieve with (cheap to compute, no downloads).
TINY_TARGETS = ("standin-clip-hidden", "standin-clip-final", "standin-vae", "standin-vicregl")


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    """The tiny simulated subject (seed 0) with the stand-in target caches, built once per test session.

    Shared by every test file that trains or evaluates on it: treat it as read-only (copy it first to
    change it; adding another encoder's cache is fine).
    """
    from mindeye.data.simulate import simulate_subject
    from mindeye.encoders.cache import embed_store

    out = tmp_path_factory.mktemp("shared") / "tiny"
    simulate_subject(out, scale="tiny", seed=0, progress=False)
    for name in TINY_TARGETS:
        embed_store(out, name, progress=False)
    return out
