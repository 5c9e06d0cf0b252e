"""The report's UMAP layout cache (the demo lays it out in its second process ahead of the report)."""

import numpy as np
import pytest

from mindeye.evaluation.report_data import SplitEmbeddings, umap_points

umap = pytest.importorskip("umap")


class CountingUMAP:
    """Stands in for umap.UMAP (its numba compilation alone takes ~15-30 s): a seeded projection."""

    calls = 0

    def __init__(self, **settings):
        self.seed = settings["random_state"]

    def fit_transform(self, data):
        CountingUMAP.calls += 1
        return data @ np.random.default_rng(self.seed).normal(size=(data.shape[1], 2))


def _emb(seed: int) -> SplitEmbeddings:
    rng = np.random.default_rng(seed)
    n = 30
    return SplitEmbeddings(np.arange(n), rng.normal(size=(n, 8)), rng.normal(size=(n, 8)), None, None)


def test_layout_is_cached_by_its_points_and_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(umap, "UMAP", CountingUMAP)
    first, why = umap_points(_emb(0), 20, seed=0, cache_dir=tmp_path)
    assert why == "" and CountingUMAP.calls == 1 and len(list(tmp_path.glob("umap-*.npy"))) == 1
    again, _ = umap_points(_emb(0), 20, seed=0, cache_dir=tmp_path)
    assert CountingUMAP.calls == 1  # the same points: read back, not laid out again
    for (label_a, xy_a), (label_b, xy_b) in zip(first, again):
        assert label_a == label_b and xy_a.shape == (20, 2) and np.array_equal(xy_a, xy_b)
    umap_points(_emb(1), 20, seed=0, cache_dir=tmp_path)  # other points
    umap_points(_emb(0), 20, seed=1, cache_dir=tmp_path)  # another seed
    assert CountingUMAP.calls == 3 and len(list(tmp_path.glob("umap-*.npy"))) == 3
    umap_points(_emb(0), 20, seed=0)  # no cache: always computed
    assert CountingUMAP.calls == 4
