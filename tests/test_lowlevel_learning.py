"""The low-level pipeline learns: blurry reconstructions beat the mean-training-image baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mindeye.config import load_config
from mindeye.data.store import SubjectStore
from mindeye.evaluation.metrics import pixcorr, ssim
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
    store_path = tiny_store
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
    assert pc_blurry > pc_base + 0.05
    assert ssim(real, blurry) > ssim(real, base)
