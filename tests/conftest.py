import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
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
