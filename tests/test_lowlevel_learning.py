"""The low-level pipeline learns: blurry reconstructions beat the mean-training-image baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mindeye.config import load_config
from mindeye.data.store import SubjectStore
from mindeye.evaluation.metrics import pixcorr
from mindeye.evaluation.recon_eval import ground_truth, load_pngs, read_recon_dir
from mindeye.inference.blurry import reconstruct_blurry
from mindeye.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


def mean_image_baseline(store: SubjectStore, n: int) -> np.ndarray:
    """Every test image 'reconstructed' as the mean training image (the paper's trivial baseline)."""
    train = store.image_indices("train")
    mean = np.asarray(store.images[train], dtype=np.float64).mean(0)
    return np.repeat(np.round(mean).astype(np.uint8)[None], n, axis=0)


def test_blurry_reconstructions_beat_mean_image(tmp_path, tiny_store):
    """PixCorr of the blurry reconstructions beats the mean training image by a margin that holds on any CPU.

    Measured over training seeds 0-4 (this config, tiny store seed 0): PixCorr blurry - mean image =
    0.077, 0.053, 0.150, 0.085, 0.066 (mean 0.086, sd 0.037, smallest 0.053). The test trains seed 0 and
    asserts a gap > 0.02, well under the smallest gap of any seed (a CPU's rounding moves one seed far
    less than a change of seed does). SSIM is not asserted: on the tiny store it has no real gap (blurry
    - mean image = -0.0018 to -0.00003 over the same seeds; the mean image is itself very smooth).
    """
    store_path = tiny_store  # the tiny seed-0 store (conftest.py, built once per session)
    cfg = load_config(REPO / "src/mindeye/configs" / "demo-lowlevel.yaml", [
        "train.epochs=20", "train.lowlevel_contrastive_weight=0", "model.lowlevel.hidden=256",
        "model.lowlevel.n_blocks=1", "train.val_every=100"])
    Trainer(cfg, tmp_path / "low", store=store_path, device="cpu", progress=False).fit()
    reconstruct_blurry(tmp_path / "low", tmp_path / "blurry", progress=False)
    recon = read_recon_dir(tmp_path / "blurry")
    store = SubjectStore(store_path)
    real = ground_truth(store, recon)
    blurry = load_pngs(recon.files)
    base = mean_image_baseline(store, len(real))
    assert len(real) == len(store.image_indices("test")) == 60
    pc_blurry, pc_base = pixcorr(real, blurry), pixcorr(real, base)
    print(f"tiny: blurry PixCorr {pc_blurry:.3f} vs mean image {pc_base:.3f}")
    assert pc_blurry > pc_base + 0.02
