"""Blurry low-level reconstructions: predicted latents -> tiny VAE decoder -> PNGs + index, resumable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from mindeye.errors import MindEyeError
from mindeye.inference.blurry import BlurryImages, decode_latents_to_pngs
from mindeye.inference.generators import DiffusersVaeCodec
from mindeye.utils.images import load_png


def tiny_codec() -> DiffusersVaeCodec:
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, sample_size=16)
    return DiffusersVaeCodec(vae, 0.18215, 16)


class Predict:
    """Stand-in low-level model: a fixed linear map voxels -> (4, 8, 8) latents; counts rows seen."""

    def __init__(self, n_voxels: int) -> None:
        self.w = torch.randn(n_voxels, 4 * 8 * 8, generator=torch.Generator().manual_seed(2)) * 0.1
        self.rows = 0

    def __call__(self, voxels: torch.Tensor) -> torch.Tensor:
        self.rows += len(voxels)
        return (voxels.float() @ self.w).view(-1, 4, 8, 8)


def test_blurry_pngs_match_decoder_and_resume(tmp_path):
    voxels = torch.randn(5, 12, generator=torch.Generator().manual_seed(0)).half()
    idx = np.array([3, 1, 4, 15, 9])
    codec, predict = tiny_codec(), Predict(12)
    index = decode_latents_to_pngs(predict, codec.decode, voxels, idx, tmp_path, {"run": "r"}, batch_size=2,
                                   image_ids=[f"img{i}" for i in range(20)], progress=False)
    assert predict.rows == 5
    expected = codec.decode(Predict(12)(voxels)).numpy()
    for m, i in enumerate(idx):
        rec = index["images"][str(i)]
        assert rec["file"] == f"images/{i:05d}.png" and rec["image_id"] == f"img{i}"
        assert np.array_equal(load_png(tmp_path / rec["file"]), expected[m])
    on_disk = json.loads((tmp_path / "index.json").read_text())
    assert on_disk["kind"] == "blurry" and on_disk["config"] == {"run": "r"} and len(on_disk["images"]) == 5

    # resume: delete one image, only that one is redone
    (tmp_path / "images" / "00004.png").unlink()
    predict2 = Predict(12)
    decode_latents_to_pngs(predict2, codec.decode, voxels, idx, tmp_path, {"run": "r"}, progress=False)
    assert predict2.rows == 1
    assert np.array_equal(load_png(tmp_path / "images" / "00004.png"), expected[2])
    with pytest.raises(MindEyeError, match="different settings"):
        decode_latents_to_pngs(predict2, codec.decode, voxels, idx, tmp_path, {"run": "other"}, progress=False)

    blurry = BlurryImages(tmp_path)
    assert np.array_equal(blurry.get(15), expected[3])
    with pytest.raises(MindEyeError, match="no blurry reconstruction of image 2"):
        blurry.get(2)


def test_non_finite_latents_write_nothing(tmp_path):
    voxels = torch.randn(2, 12).half()

    def bad(v):
        return torch.full((len(v), 4, 8, 8), float("nan"))

    with pytest.raises(MindEyeError, match="non-finite"):
        decode_latents_to_pngs(bad, tiny_codec().decode, voxels, np.array([0, 1]), tmp_path, {}, progress=False)
    assert not (tmp_path / "images").exists()


def test_blurry_dir_must_be_blurry_output(tmp_path):
    with pytest.raises(MindEyeError, match="reconstruct-blurry"):
        BlurryImages(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"kind": "reconstruction", "images": {}}))
    with pytest.raises(MindEyeError, match="not blurry"):
        BlurryImages(tmp_path)
