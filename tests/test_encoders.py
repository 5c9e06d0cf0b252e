"""Frozen encoders: tiny randomly initialised models built from configs, checked against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mindeye.encoders import encoder_fingerprint, encoder_names, get_encoder
from mindeye.encoders.augment import augment_batch
from mindeye.encoders.clip import CLIP_MEAN, CLIP_STD
from mindeye.errors import MindEyeError, WeightsUnavailableError

TINY_CLIP = dict(image_size=32, patch_size=2, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, projection_dim=16)  # 16 x 16 patches + CLS = 257 tokens, like ViT-L/14
TINY_VAE = dict(block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
                up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=4, layers_per_block=1, latent_channels=4)


def smooth_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Natural-ish images: random 4x4 colour fields upsampled, plus a little noise."""
    rng = np.random.default_rng(seed)
    low = torch.tensor(rng.uniform(0, 1, (n, 3, 4, 4)), dtype=torch.float32)
    x = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    x = x + torch.tensor(rng.normal(0, 0.03, x.shape), dtype=torch.float32)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def tiny_clip():
    return get_encoder("clip-vit-l14-hidden", random_init=True, config=TINY_CLIP)


# --------------------------------------------------------------------------------------------------
# CLIP
# --------------------------------------------------------------------------------------------------
def test_clip_hidden_shape_and_cls_row_is_the_image_embedding(tiny_clip):
    images = smooth_images(3)
    out = tiny_clip.encode(images)
    assert tiny_clip.output_shape == (257, 16)
    assert out.shape == (3, 257, 16) and out.dtype == torch.float32
    pixels = tiny_clip.preprocess(torch.from_numpy(images))
    tokens = tiny_clip.tokens(pixels)  # unnormalised (N, 257, 16)
    image_embeds = tiny_clip.model(pixel_values=pixels).image_embeds  # the model's own embedding
    torch.testing.assert_close(tokens[:, 0], image_embeds, rtol=1e-5, atol=1e-6)
    # Every token divided by the CLS norm: row 0 has unit norm, the others keep their ratios.
    torch.testing.assert_close(out[:, 0].norm(dim=-1), torch.ones(3))
    cls_norm = image_embeds.norm(dim=-1)
    torch.testing.assert_close(out, tokens / cls_norm[:, None, None], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out[:, 1:].norm(dim=-1), torch.ones(3, 256))  # only CLS is normalised


def test_clip_final_is_the_unit_cls_row():
    hidden = get_encoder("clip-vit-l14-hidden", random_init=True, config=TINY_CLIP)
    final = get_encoder("clip-vit-l14-final", random_init=True, config=TINY_CLIP)
    images = smooth_images(2, seed=1)
    assert final.output_shape == (16,)
    torch.testing.assert_close(final.encode(images), hidden.encode(images)[:, 0], rtol=1e-5, atol=1e-6)
    assert final.fingerprint != hidden.fingerprint


@pytest.mark.parametrize("shape", [(2, 40, 48, 3), (2, 48, 40, 3), (2, 64, 64, 3), (1, 20, 20, 3)])
def test_clip_preprocessing_matches_independent_computation(tiny_clip, shape):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    ours = tiny_clip.preprocess(torch.from_numpy(images))
    assert ours.shape == (shape[0], 3, 32, 32)
    # 1) Plain PIL: shorter side -> 32 bicubic, centre crop, CLIP mean/std (within one grey level).
    size, expected = 32, []
    for img in images:
        h, w = img.shape[:2]
        nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
        r = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BICUBIC), dtype=np.float32) / 255
        top, left = (nh - size) // 2, (nw - size) // 2
        expected.append((r[top:top + size, left:left + size] - np.array(CLIP_MEAN)) / np.array(CLIP_STD))
    expected = torch.tensor(np.stack(expected), dtype=torch.float32).permute(0, 3, 1, 2)
    grey_levels = (ours - expected).abs() * torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255
    assert grey_levels.max() <= 1.01
    assert grey_levels.mean() < 0.05
    # 2) The Hugging Face CLIP image processor (what the model card prescribes).
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    ref = proc(images=[Image.fromarray(i) for i in images], return_tensors="pt").pixel_values
    grey_levels = (ours - ref).abs() * torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255
    assert grey_levels.max() <= 1.01


def test_clip_loads_full_clip_checkpoint_directory(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=100, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config={k: v for k, v in TINY_CLIP.items() if k != "projection_dim"}, projection_dim=16,
    )
    torch.manual_seed(3)
    full = CLIPModel(cfg).eval()
    full.save_pretrained(tmp_path / "clip")
    enc = get_encoder("clip-vit-l14-final", weights=str(tmp_path / "clip"))
    images = smooth_images(2, seed=2)
    pixels = enc.preprocess(torch.from_numpy(images))
    with torch.no_grad():
        ref = full.get_image_features(pixel_values=pixels)
    ref = ref if torch.is_tensor(ref) else ref.pooler_output
    torch.testing.assert_close(enc.encode(images), ref / ref.norm(dim=-1, keepdim=True), rtol=1e-5, atol=1e-6)
    # The fingerprint is computed without building the model, and follows the weights.
    fp = encoder_fingerprint("clip-vit-l14-final", weights=str(tmp_path / "clip"))
    assert fp == enc.fingerprint
    torch.manual_seed(4)
    CLIPModel(cfg).save_pretrained(tmp_path / "clip")
    assert encoder_fingerprint("clip-vit-l14-final", weights=str(tmp_path / "clip")) != fp


def test_clip_refuses_checkpoint_without_image_tower(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP)).save_pretrained(tmp_path / "noproj")  # no visual_projection
    with pytest.raises(MindEyeError, match="missing"):
        get_encoder("clip-vit-l14-hidden", weights=str(tmp_path / "noproj"))


# --------------------------------------------------------------------------------------------------
# Missing weights: a clear error, never random weights
# --------------------------------------------------------------------------------------------------
def test_missing_weights_offline_names_model_source_and_option(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsUnavailableError) as err:
        get_encoder("clip-vit-l14-hidden")
    msg = str(err.value)
    assert "clip-vit-l14-hidden" in msg and "openai/clip-vit-large-patch14" in msg
    assert "hf download" in msg and "huggingface-cli" not in msg and "--weights /path/to/local/copy" in msg
    with pytest.raises(WeightsUnavailableError, match="sd-image-variations-diffusers"):
        get_encoder("sd-vae")
    with pytest.raises(WeightsUnavailableError, match="convnext_xlarge_alpha0.75_fullckpt.pth"):
        get_encoder("vicregl-convnext")
    with pytest.raises(WeightsUnavailableError, match="neither an existing file"):
        get_encoder("sd-vae", weights=str(tmp_path / "no" / "such" / "dir"))
    with pytest.raises(WeightsUnavailableError):  # the fingerprint needs the weights too
        encoder_fingerprint("clip-vit-l14-hidden")


def test_registry_errors():
    with pytest.raises(MindEyeError, match="choose one of: clip-vit-l14-hidden"):
        get_encoder("clip-vit-b32")
    with pytest.raises(MindEyeError, match="either --weights or --random-init"):
        get_encoder("clip-vit-l14-hidden", weights="openai/clip-vit-large-patch14", random_init=True)
    with pytest.raises(MindEyeError, match="takes no --weights"):
        get_encoder("standin-vae", weights="x")
    assert {"clip-vit-l14-hidden", "clip-vit-l14-final", "sd-vae", "vicregl-convnext"} <= set(encoder_names())


# --------------------------------------------------------------------------------------------------
# SD VAE
# --------------------------------------------------------------------------------------------------
def test_vae_encode_decode_match_diffusers():
    enc = get_encoder("sd-vae", random_init=True, config=TINY_VAE, image_size=32)
    images = smooth_images(2, size=24)  # upsampled to 32 like the reference upsamples to 512
    lat = enc.encode(images)
    assert enc.output_shape == (4, 16, 16) and lat.shape == (2, 4, 16, 16)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True) * 2 - 1
    with torch.no_grad():
        ref = enc.vae.encode(x).latent_dist.mode() * 0.18215
        torch.testing.assert_close(lat, ref)
        dec = enc.decode(lat)
        ref_img = ((enc.vae.decode(lat / 0.18215).sample + 1) / 2).clamp(0, 1)
    assert dec.shape == (2, 32, 32, 3) and dec.dtype == torch.uint8
    assert (dec.permute(0, 3, 1, 2).float() - ref_img * 255).abs().max() <= 0.5 + 1e-3
    assert enc.decode(lat, size=48).shape == (2, 48, 48, 3)


def test_vae_loads_state_dict_file_with_legacy_attention_names(tmp_path, monkeypatch):
    from diffusers import AutoencoderKL

    import mindeye.encoders.vae as vae_module

    monkeypatch.setattr(vae_module, "SD_VAE_CONFIG", TINY_VAE)  # a bare state dict is read as this architecture
    torch.manual_seed(0)
    ref = AutoencoderKL(**TINY_VAE).eval()
    legacy = {}
    for k, v in ref.state_dict().items():  # old diffusers names, as in the authors' sd_image_var_autoenc.pth
        for new, old in ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.")):
            k = k.replace(new, old)
        legacy[k] = v
    torch.save(legacy, tmp_path / "autoenc.pth")
    assert any(".query." in k for k in legacy)
    enc = get_encoder("sd-vae", weights=str(tmp_path / "autoenc.pth"), image_size=64)
    assert enc.output_shape == (4, 32, 32)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(enc.vae.state_dict()[k], v)
    torch.save({"nonsense.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(MindEyeError, match="not a Stable Diffusion v1 VAE"):
        get_encoder("sd-vae", weights=str(tmp_path / "bad.pth"))


# --------------------------------------------------------------------------------------------------
# VICRegL ConvNeXt: an independent model in the authors' checkpoint layout
# --------------------------------------------------------------------------------------------------
class _LayerNormCF(nn.Module):  # channels-first LayerNorm, as in the ConvNeXt/VICRegL code
    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.randn(c)), nn.Parameter(torch.randn(c))

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * (x - u) / torch.sqrt(s + 1e-6) + self.bias[:, None, None]


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pwconv1, self.pwconv2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)

    def forward(self, x):
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        return x + self.pwconv2(F.gelu(self.pwconv1(y))).permute(0, 3, 1, 2)


class _RefConvNeXt(nn.Module):
    def __init__(self, depths, dims):
        super().__init__()
        self.downsample_layers = nn.ModuleList([nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), _LayerNormCF(dims[0]))])
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(_LayerNormCF(dims[i]), nn.Conv2d(dims[i], dims[i + 1], 2, 2)))
        self.stages = nn.ModuleList([nn.Sequential(*[_Block(dims[i]) for _ in range(depths[i])]) for i in range(4)])
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)

    def forward(self, x):
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.norm(x.flatten(2).transpose(1, 2))


def test_vicregl_loads_authors_checkpoint_layout(tmp_path):
    torch.manual_seed(0)
    depths, dims = [1, 2, 1, 1], [8, 16, 24, 32]
    backbone = _RefConvNeXt(depths, dims).eval()
    maps_projector = nn.Sequential(nn.Linear(32, 12), nn.LayerNorm(12), nn.ReLU(), nn.Linear(12, 12), nn.LayerNorm(12),
                                   nn.ReLU(), nn.Linear(12, 12, bias=False)).eval()
    for p in maps_projector.parameters():  # non-trivial LayerNorm parameters
        p.data.normal_()
    model_state = {f"module.backbone.{k}": v for k, v in backbone.state_dict().items()}
    model_state |= {f"module.maps_projector.{k}": v for k, v in maps_projector.state_dict().items()}
    model_state |= {"module.projector.0.weight": torch.zeros(5, 32), "module.classifier.weight": torch.zeros(3, 32)}
    torch.save({"epoch": 1, "model": model_state, "optimizer": {}}, tmp_path / "full.pth")

    enc = get_encoder("vicregl-convnext", weights=str(tmp_path / "full.pth"), image_size=64)
    assert enc.output_shape == (4, 12)  # (64 / 32)^2 tokens
    images = smooth_images(2, size=64)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) \
        / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = maps_projector(backbone(x))
    torch.testing.assert_close(enc.encode(images), ref, rtol=1e-4, atol=1e-5)
    assert encoder_fingerprint("vicregl-convnext", str(tmp_path / "full.pth"), image_size=64) == enc.fingerprint

    # A backbone-only file cannot give the maps-projector features: say which file to get.
    torch.save({k[len("module.backbone."):]: v for k, v in model_state.items() if "backbone" in k}, tmp_path / "bb.pth")
    with pytest.raises(MindEyeError, match="fullckpt"):
        get_encoder("vicregl-convnext", weights=str(tmp_path / "bb.pth"))
    torch.save({"model": {"foo.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(MindEyeError, match="no ConvNeXt backbone keys"):
        get_encoder("vicregl-convnext", weights=str(tmp_path / "other.pth"))


def test_vicregl_random_init_default_layout_is_256_by_512():
    enc = get_encoder("vicregl-convnext", random_init=True,
                      config=dict(depths=[1, 1, 1, 1], dims=[8, 8, 8, 8], maps_mlp=[512, 512, 512]))
    assert enc.output_shape == (256, 512)  # 512 px / stride 32 = 16 x 16 tokens, maps projector -> 512


# --------------------------------------------------------------------------------------------------
# Stand-ins
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,shape", [("standin-clip-hidden", (17, 64)), ("standin-clip-final", (64,)),
                                        ("standin-vicregl", (16, 32)), ("standin-vae", (4, 16, 16))])
def test_standins_deterministic_and_informative(name, shape):
    images = smooth_images(8, size=48, seed=5)
    a, b = get_encoder(name), get_encoder(name)
    assert a.output_shape == shape and a.fingerprint == b.fingerprint
    ya, yb = a.encode(images), b.encode(images)
    assert ya.shape == (8, *shape)
    assert torch.equal(ya, yb)  # same image, same embedding, in a fresh instance
    flat = ya.flatten(1)
    cos = F.normalize(flat, dim=1) @ F.normalize(flat, dim=1).T
    assert cos[~torch.eye(8, dtype=torch.bool)].max() < 0.995  # different images, different embeddings
    # Image information: a lightly perturbed copy retrieves its own original among the 8.
    rng = np.random.default_rng(9)
    noisy = np.clip(images.astype(int) + rng.integers(-8, 9, images.shape), 0, 255).astype(np.uint8)
    yn = a.encode(noisy).flatten(1)
    d = torch.cdist(yn, flat)
    assert torch.equal(d.argmin(dim=1), torch.arange(8))


def test_standin_clip_cls_normalisation():
    out = get_encoder("standin-clip-hidden").encode(smooth_images(3))
    torch.testing.assert_close(out[:, 0].norm(dim=-1), torch.ones(3))
    final = get_encoder("standin-clip-final").encode(smooth_images(3))
    torch.testing.assert_close(final, out[:, 0])


def test_standin_vae_decode_inverts_up_to_blur():
    vae = get_encoder("standin-vae")
    images = smooth_images(4, size=128, seed=7)
    rec = vae.decode(vae.encode(images))
    assert rec.shape == (4, 128, 128, 3) and rec.dtype == torch.uint8
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    blurred = F.interpolate(F.avg_pool2d(x, 8), size=(128, 128), mode="bicubic", align_corners=False)
    r = rec.permute(0, 3, 1, 2).float()
    for i in range(4):
        corr = np.corrcoef(r[i].flatten().numpy(), blurred[i].flatten().numpy())[0, 1]
        assert corr > 0.9
    # Exact on block-constant images: the colour transform is inverted exactly.
    flat = np.repeat(np.repeat(images[:, ::8, ::8], 8, axis=1), 8, axis=2)
    lat = vae.encode(flat)
    x8 = torch.from_numpy(flat[:, ::8, ::8]).permute(0, 3, 1, 2).float() / 255
    colour = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, -1.0, 0.0], [-0.5, -0.5, 1.0]])
    expected = torch.einsum("kc,nchw->nkhw", colour, x8)
    expected = (expected - torch.tensor([0.45, 0, 0]).view(1, 3, 1, 1)) / torch.tensor([0.25, 0.1, 0.15]).view(1, 3, 1, 1)
    torch.testing.assert_close(lat[:, :3], expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lat[:, 3], torch.full_like(lat[:, 3], -1.0), atol=1e-3, rtol=0)  # no contrast


# --------------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------------
def test_augmented_views_are_reproducible_and_vary():
    images = smooth_images(6, size=32, seed=11)
    idx = np.arange(10, 16)
    v0 = augment_batch(images, idx, view=0, preset="teacher", seed=0)
    assert v0.shape == images.shape and v0.dtype == torch.uint8
    torch.testing.assert_close(v0, augment_batch(images, idx, view=0, preset="teacher", seed=0), rtol=0, atol=0)
    # Per-image randomness does not depend on the batch the image is in.
    torch.testing.assert_close(v0[3:], augment_batch(images[3:], idx[3:], 0, "teacher", 0), rtol=0, atol=0)
    v1 = augment_batch(images, idx, view=1, preset="teacher", seed=0)
    assert not torch.equal(v0, v1)
    assert not torch.equal(v0, torch.from_numpy(images))  # the teacher view always crops
    # The clip preset leaves some images untouched (every op has p < 1) and changes others.
    many = np.repeat(images[:1], 40, axis=0)
    views = augment_batch(many, np.arange(40), 0, "clip", 0)
    same = [(views[i] == torch.from_numpy(many[i])).all().item() for i in range(40)]
    assert 0 < sum(same) < 40
    with pytest.raises(MindEyeError, match="unknown augmentation preset"):
        augment_batch(images, idx, 0, "nope")
