"""The data path: every mode yields the reference mode's batches bit for bit; the prefetch thread stops cleanly."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mindeye.errors import MindEyeError
from mindeye.training.batches import BatchLoader, Request, TargetTable, thread_alive
from mindeye.training.trainer import mix_repetitions, repetition_weights

MODES = ("resident", "prefetch")


def _tables(rng: np.random.Generator, n_images: int, tmp_path) -> list[TargetTable]:
    plain = rng.standard_normal((n_images, 5, 6)).astype(np.float16)
    views = rng.standard_normal((n_images, 3, 5, 6)).astype(np.float16)
    np.save(tmp_path / "plain.npy", plain)
    mm = np.load(tmp_path / "plain.npy", mmap_mode="r")  # the trainer reads large caches as memory maps
    latents = rng.standard_normal((n_images, 4, 2, 2)).astype(np.float16)
    return [TargetTable("targets", mm, views), TargetTable("latents", latents)]


def _requests(rng: np.random.Generator, n_rows: int, images_of_row: np.ndarray, steps: int, bs: int,
              views: bool = True) -> list[Request]:
    out = []
    for _ in range(steps):
        rows = rng.choice(n_rows, bs, replace=False)
        out.append(Request(rows, images_of_row[rows], views=rng.integers(0, 4, bs) if views else None))
    return out


def _collect(loader: BatchLoader, requests: list[Request]) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in b.items()} for b in loader.batches(requests)]


def _assert_identical(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == torch.float32 and x[k].shape == y[k].shape
            assert torch.equal(x[k], y[k]), k


@pytest.mark.parametrize("mode", MODES)
def test_trial_rows_with_views_match_the_reference(mode, tmp_path):
    rng = np.random.default_rng(0)
    n_images, n_rows = 40, 90
    images_of_row = np.sort(rng.integers(5, n_images, n_rows))  # image 0-4 never sampled (as test images)
    vox = torch.from_numpy(rng.standard_normal((n_rows, 17)).astype(np.float16))
    tables = _tables(rng, n_images, tmp_path)
    reqs = _requests(rng, n_rows, images_of_row, steps=7, bs=8)
    ref = _collect(BatchLoader(vox, tables, images_of_row, "cpu", mode="simple"), reqs)
    got = _collect(BatchLoader(vox, tables, images_of_row, "cpu", mode=mode, depth=2), reqs)
    _assert_identical(ref, got)
    # independent check of one sample: voxel row, the chosen view, the plain latent
    r, k, img = reqs[0].voxel_rows[0], reqs[0].views[0], reqs[0].image_index[0]
    assert torch.equal(got[0]["voxels"][0], vox[r].float())
    want = tables[0].plain[img] if k == 0 else tables[0].views[img, k - 1]
    assert torch.equal(got[0]["targets"][0], torch.from_numpy(np.asarray(want, dtype=np.float32)))
    assert torch.equal(got[0]["latents"][0], torch.from_numpy(tables[1].plain[img].astype(np.float32)))


@pytest.mark.parametrize("mode", MODES)
def test_repetition_mixing_and_repetition_pairs_match_the_reference(mode, tmp_path):
    rng = np.random.default_rng(1)
    m, r, v = 30, 3, 11
    vox = torch.from_numpy(rng.standard_normal((m, r, v)).astype(np.float16))
    mask = torch.from_numpy(rng.random((m, r)) < 0.8)
    mask[:, 0] = True
    images = np.arange(m) + 2
    tables = _tables(rng, m + 2, tmp_path)
    gen = torch.Generator().manual_seed(3)
    mixed, pairs = [], []
    for _ in range(5):
        idx = rng.choice(m, 6, replace=False)
        mixed.append(Request(idx, images[idx], mix_weights=repetition_weights(mask[idx], gen)))
        pairs.append(Request(idx, images[idx], repetition=rng.integers(0, r, 6)))
    for reqs in (mixed, pairs):
        ref = _collect(BatchLoader(vox, tables, images, "cpu", mode="simple"), reqs)
        _assert_identical(ref, _collect(BatchLoader(vox, tables, images, "cpu", mode=mode), reqs))
    # the reference itself against the trainer's own mixing of the same draws
    gen = torch.Generator().manual_seed(3)
    idx = mixed[0].voxel_rows
    expect = mix_repetitions(vox[idx], mask[idx], gen)
    got = next(iter(BatchLoader(vox, tables, images, "cpu", mode=mode).batches(mixed[:1])))
    assert torch.equal(got["voxels"], expect)
    p = pairs[0]
    got = next(iter(BatchLoader(vox, tables, images, "cpu", mode=mode).batches([p])))
    assert torch.equal(got["voxels"], vox[p.voxel_rows, p.repetition].float())


def test_unknown_mode_is_a_clear_error():
    with pytest.raises(MindEyeError, match=r"train\.data_path='fast'; choose one of auto, resident, prefetch, simple"):
        BatchLoader(torch.zeros(2, 2, dtype=torch.float16), [], np.arange(2), "cpu", mode="fast")


def test_auto_on_the_cpu_is_resident_when_the_tables_fit_in_ram(monkeypatch):
    import mindeye.training.batches as batches

    def loader():
        return BatchLoader(torch.zeros(4, 3, dtype=torch.float16), [TargetTable("t", np.zeros((4, 2), np.float16))],
                           np.arange(4), "cpu")

    assert loader().resident_bytes() == 4 * 3 * 2 + 4 * 2 * 2
    assert batches.available_host_bytes() > 0
    assert loader().mode == "resident"
    monkeypatch.setattr(batches, "available_host_bytes", lambda: 4 * (4 * 3 * 2 + 4 * 2 * 2) - 1)  # > 25 % of RAM
    assert loader().mode == "simple"
    monkeypatch.setattr(batches, "available_host_bytes", lambda: None)  # unknown: the path that needs no copy
    assert loader().mode == "simple"


def _wait_thread_gone(timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while thread_alive() and time.monotonic() < end:
        time.sleep(0.01)
    return not thread_alive()


def test_prefetch_thread_stops_on_early_stop_and_on_errors(tmp_path):
    rng = np.random.default_rng(2)
    vox = torch.from_numpy(rng.standard_normal((50, 4)).astype(np.float16))
    tables = _tables(rng, 50, tmp_path)
    reqs = _requests(rng, 50, np.arange(50), steps=20, bs=4, views=False)
    loader = BatchLoader(vox, tables, np.arange(50), "cpu", mode="prefetch", depth=2)
    # early stop: the consumer breaks after two batches
    it = loader.batches(reqs)
    for i, _ in enumerate(it):
        if i == 1:
            break
    it.close()
    assert _wait_thread_gone()
    # an error in the consumer's step
    with pytest.raises(RuntimeError, match="step failed"):
        for _ in loader.batches(reqs):
            raise RuntimeError("step failed")
    assert _wait_thread_gone()
    # an error while gathering (a row past the table) reaches the consumer, after the good batches
    bad = reqs[:3] + [Request(np.array([0, 1, 2, 999]), np.arange(4))] + reqs[3:]
    seen = 0
    with pytest.raises(IndexError):
        for _ in loader.batches(bad):
            seen += 1
    assert seen == 3
    assert _wait_thread_gone()


TINY = ["model.backbone.hidden=128", "model.backbone.n_blocks=1", "model.projector.hidden=64",
        "model.prior.depth=1", "model.prior.heads=2", "model.prior.dim_head=16", "train.batch_size=32"]


def test_training_metrics_are_identical_across_data_paths(tiny_store, tmp_path):
    from mindeye.config import load_config
    from mindeye.training.trainer import Trainer

    repo = Path(__file__).resolve().parents[1]
    runs = {}

    for mode in ("simple", "resident", "prefetch"):
        for kind in ("demo-highlevel.yaml", "demo-lowlevel.yaml"):
            extra = ["train.epochs=2", "train.log_every=1", f"train.data_path={mode}", "data.val_images=20"]
            cfg = load_config(repo / "src/mindeye/configs" / kind, (TINY if "high" in kind else []) + extra)
            out = tmp_path / f"{mode}-{kind}"
            Trainer(cfg, out, store=tiny_store, device="cpu", progress=False).fit()
            lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            runs[(mode, kind)] = [{k: v for k, v in m.items() if k != "samples_per_s"} for m in lines]
    for kind in ("demo-highlevel.yaml", "demo-lowlevel.yaml"):
        assert len(runs[("simple", kind)]) > 4
        assert runs[("resident", kind)] == runs[("simple", kind)]
        assert runs[("prefetch", kind)] == runs[("simple", kind)]


def test_simple_path_gathers_in_ram_tables_and_memory_maps_alike(tmp_path):
    """The simple path's in-RAM gather (index_select) and its sorted memory-map reads give the same batch."""
    from mindeye.training.batches import BatchLoader, Request, TargetTable

    rng = np.random.default_rng(0)
    plain = rng.normal(size=(12, 3, 4)).astype(np.float16)
    np.save(tmp_path / "t.npy", plain)
    mapped = np.load(tmp_path / "t.npy", mmap_mode="r")
    voxels = torch.from_numpy(rng.normal(size=(20, 7)).astype(np.float16))
    req = Request(np.array([5, 0, 19, 5]), np.array([11, 2, 2, 7]))
    a = next(iter(BatchLoader(voxels, [TargetTable("t", plain)], np.arange(12), "cpu", mode="simple").batches([req])))
    b = next(iter(BatchLoader(voxels, [TargetTable("t", mapped)], np.arange(12), "cpu", mode="simple").batches([req])))
    assert torch.equal(a["t"], b["t"]) and torch.equal(a["t"], torch.from_numpy(plain[[11, 2, 2, 7]].astype(np.float32)))
    assert torch.equal(a["voxels"], voxels[[5, 0, 19, 5]].float()) and a["voxels"].dtype == torch.float32
