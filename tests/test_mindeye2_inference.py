"""MindEye2 inference pieces on tiny random models: the bigG token encoder (open_clip) and unCLIP-SDXL
(an sgm-layout state dict -> diffusers, sampled end to end)."""

from __future__ import annotations

import math
import re
import sys

import numpy as np
import pytest
import torch

from mindeye.errors import MindEyeError, WeightsUnavailableError

open_clip = pytest.importorskip("open_clip")

TINY_OC = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 2, "width": 24, "layers": 2,
                                           "head_width": 8, "mlp_ratio": 2.0}}  # 16 x 16 = 256 tokens, like bigG


# --------------------------------------------------------------------------------------------------
# openclip-vit-bigg14-tokens
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bigg():
    from mindeye.encoders import get_encoder

    return get_encoder("openclip-vit-bigg14-tokens", random_init=True, config=TINY_OC)


def test_bigg_tokens_are_ln_post_patch_tokens_of_the_authors_preprocessing(tiny_bigg):
    import kornia

    enc = tiny_bigg
    assert type(enc.visual).__name__ == "VisionTransformer" and enc.output_shape == (256, 24)
    images = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    out = enc.encode(images)
    assert out.shape == (2, 256, 24)
    # Independent: the sgm embedder's preprocessing (kornia bicubic align_corners, antialias, then (x+1)/2)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = kornia.geometry.resize(x, (32, 32), interpolation="bicubic", align_corners=True, antialias=True)
    x = ((x + 1) / 2 - torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)) \
        / torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    v = enc.visual
    with torch.no_grad():
        h = v.transformer(v._embeds(x))
        expected = v.ln_post(h)[:, 1:]  # every token through ln_post, CLS dropped, no proj
        pooled = v.ln_post(h)[:, 0] @ v.proj
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert pooled.shape == (2, 16)  # the projected embedding is a different (smaller) thing
    # the authors' shift is real: pixels reach the net in [0.5, 1] (normalised mean well above 0)
    assert enc.preprocess(torch.from_numpy(images)).mean() > 1.0


def test_bigg_standard_preprocess_has_no_shift_and_changes_fingerprint():
    from mindeye.encoders import encoder_fingerprint, get_encoder

    std = get_encoder("openclip-vit-bigg14-tokens", random_init=True, config=TINY_OC, preprocess="standard")
    images = np.full((1, 32, 32, 3), 128, dtype=np.uint8)
    px = std.preprocess(torch.from_numpy(images))
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    sd = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    torch.testing.assert_close(px, ((128 / 255) - mean) / sd * torch.ones(1, 3, 32, 32))
    a = encoder_fingerprint("openclip-vit-bigg14-tokens", random_init=True, config=TINY_OC)
    b = encoder_fingerprint("openclip-vit-bigg14-tokens", random_init=True, config=TINY_OC, preprocess="standard")
    assert a != b and std.fingerprint == b
    with pytest.raises(MindEyeError, match="preprocess must be one of"):
        get_encoder("openclip-vit-bigg14-tokens", random_init=True, config=TINY_OC, preprocess="pil")


def test_bigg_loads_an_open_clip_checkpoint_directory(tmp_path, tiny_bigg):
    """A full open_clip CLIP checkpoint (text tower included) written as HF's laion repos are: only visual.* read."""
    import json

    from safetensors.torch import save_file

    from mindeye.encoders import get_encoder

    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = open_clip.model.CLIP(embed_dim=16, vision_cfg=TINY_OC["vision_cfg"],
                                     text_cfg={"context_length": 8, "vocab_size": 50, "width": 16, "heads": 2,
                                               "layers": 1})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "open_clip_model.safetensors"))
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OC}))
    enc = get_encoder("openclip-vit-bigg14-tokens", weights=str(tmp_path))
    images = np.random.default_rng(1).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    model.visual.output_tokens = True
    with torch.no_grad():
        _, expected = model.visual(enc.preprocess(torch.from_numpy(images)))
    torch.testing.assert_close(enc.encode(images), expected)
    assert not torch.allclose(tiny_bigg.encode(images), expected)  # the weights were really loaded


def test_bigg_errors_name_the_install_and_the_download(tmp_path, monkeypatch):
    from mindeye.encoders import get_encoder

    with pytest.raises(WeightsUnavailableError, match="hf download laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"):
        get_encoder("openclip-vit-bigg14-tokens", weights=str(tmp_path))  # a directory without a checkpoint
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(MindEyeError, match=re.escape("pip install 'mindeye[mindeye2]'")):
        get_encoder("openclip-vit-bigg14-tokens", random_init=True, config=TINY_OC)


# --------------------------------------------------------------------------------------------------
# unclip-sdxl: a tiny SDXL-like UNet written in the sgm layout, read back through our loader
# --------------------------------------------------------------------------------------------------
TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
                 attention_head_dim=(2, 4), use_linear_projection=True, cross_attention_dim=12,
                 addition_embed_type="text_time", addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=32, norm_num_groups=8)
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                norm_num_groups=4, sample_size=16, scaling_factor=0.13025)

_RESNET = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
           ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut")]


def unet_to_sgm(unet) -> dict[str, torch.Tensor]:
    """diffusers UNet -> sgm ``UNetModel`` key layout (openaimodel.py naming), written by hand for the test."""
    cfg, n = unet.config, unet.config.layers_per_block
    levels = len(cfg.block_out_channels)
    prefix: list[tuple[str, str]] = [("time_embedding.linear_1", "time_embed.0"),
                                     ("time_embedding.linear_2", "time_embed.2"),
                                     ("add_embedding.linear_1", "label_emb.0.0"),
                                     ("add_embedding.linear_2", "label_emb.0.2"),
                                     ("conv_in", "input_blocks.0.0"), ("conv_norm_out", "out.0"), ("conv_out", "out.2"),
                                     ("mid_block.resnets.0", "middle_block.0"), ("mid_block.attentions.0", "middle_block.1"),
                                     ("mid_block.resnets.1", "middle_block.2")]
    for i in range(levels):
        for j in range(n):
            k = 1 + i * (n + 1) + j
            prefix += [(f"down_blocks.{i}.resnets.{j}", f"input_blocks.{k}.0"),
                       (f"down_blocks.{i}.attentions.{j}", f"input_blocks.{k}.1")]
        if i < levels - 1:
            prefix.append((f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{1 + i * (n + 1) + n}.0.op"))
        has_attn = "CrossAttn" in cfg.up_block_types[i]
        for j in range(n + 1):
            k = i * (n + 1) + j
            prefix += [(f"up_blocks.{i}.resnets.{j}", f"output_blocks.{k}.0"),
                       (f"up_blocks.{i}.attentions.{j}", f"output_blocks.{k}.1")]
        if i < levels - 1:
            prefix.append((f"up_blocks.{i}.upsamplers.0", f"output_blocks.{i * (n + 1) + n}.{2 if has_attn else 1}"))
    out = {}
    for key, value in unet.state_dict().items():
        new = None
        for d, s in sorted(prefix, key=lambda p: -len(p[0])):
            if key.startswith(d + "."):
                rest = key[len(d) + 1:]
                if "resnets" in d:
                    for a, b in _RESNET:
                        if rest.startswith(b + "."):
                            rest = a + rest[len(b):]
                new = f"{s}.{rest}"
                break
        assert new is not None, key
        out["model.diffusion_model." + new] = value
    return out


def vae_to_sgm(vae) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL -> ldm/sgm ``first_stage_model.*`` keys (attention q/k/v as 1x1 convs)."""
    levels = len(vae.config.block_out_channels)
    out = {}
    for key, v in vae.state_dict().items():
        k = key
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)", r"encoder.down.\1.block.\2", k)
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0", r"encoder.down.\1.downsample", k)
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)",
                   lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}", k)
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample", k)
        k = re.sub(r"mid_block\.resnets\.(\d+)", lambda m: f"mid.block_{int(m[1]) + 1}", k)
        k = k.replace("mid_block.attentions.0.", "mid.attn_1.").replace("conv_norm_out", "norm_out")
        k = k.replace("conv_shortcut", "nin_shortcut")
        for d, s in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
            k = k.replace(f"attn_1.{d}.", f"attn_1.{s}.")
        if "attn_1." in k and k.endswith(".weight") and v.ndim == 2:
            v = v[:, :, None, None]
        out["first_stage_model." + k] = v
    return out


@pytest.fixture(scope="module")
def tiny_sdxl():
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_UNET).eval()
    vae = AutoencoderKL(**TINY_VAE).eval()
    for p in unet.parameters():  # diffusers zero-initialises some output layers: make every weight count
        p.data.add_(torch.randn_like(p) * 0.02)
    return unet, vae


def test_sgm_layout_round_trip_gives_equal_outputs(tiny_sdxl, tmp_path):
    from mindeye.inference.unclip_sdxl import from_sgm_state_dict, sgm_state_dict

    unet, vae = tiny_sdxl
    sd = {**unet_to_sgm(unet), **vae_to_sgm(vae), "conditioner.embedders.0.model.visual.proj": torch.zeros(2)}
    assert "model.diffusion_model.label_emb.0.0.weight" in sd and "first_stage_model.encoder.mid.attn_1.q.weight" in sd
    torch.save({"state_dict": sd, "global_step": 110000}, tmp_path / "unclip.ckpt")  # as their Lightning ckpt
    gen = from_sgm_state_dict(sgm_state_dict(tmp_path / "unclip.ckpt"), TINY_UNET, TINY_VAE)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 700])
    ctx = torch.randn(2, 256, 12)
    added = gen.added_cond(2, torch.device("cpu"))
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
        got = gen.unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
        img = torch.rand(1, 3, 16, 16) * 2 - 1
        torch.testing.assert_close(gen.codec.vae(img).sample, vae(img).sample, rtol=0, atol=0)
    # a state dict without the UNet is refused in one line
    torch.save({"state_dict": {"first_stage_model.x": torch.zeros(1)}}, tmp_path / "bad.ckpt")
    with pytest.raises(MindEyeError, match="not an sgm diffusion checkpoint"):
        sgm_state_dict(tmp_path / "bad.ckpt")


def test_vector_conditioning_is_sgms_concat_timestep_embedding(tiny_sdxl):
    """label_emb sees [emb(768), emb(768), emb(0), emb(0)], each sgm timestep_embedding (cos first)."""
    from mindeye.inference.unclip_sdxl import UnclipSdxlGenerator

    unet, _ = tiny_sdxl
    gen = UnclipSdxlGenerator("t", unet, None, (256, 12))
    ids = gen.added_cond(1, torch.device("cpu"))["time_ids"]
    half = 4
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / half)
    expected = torch.cat([torch.cat([torch.cos(v * freqs), torch.sin(v * freqs)]) for v in (768.0, 768.0, 0.0, 0.0)])
    torch.testing.assert_close(unet.add_time_proj(ids.flatten()).reshape(1, -1)[0], expected)


def test_legacy_ddpm_sigmas_match_sgm_discretization():
    from mindeye.inference.unclip_sdxl import legacy_ddpm_schedule

    ts, sigmas = legacy_ddpm_schedule(38)
    assert len(ts) == 38 and len(sigmas) == 39 and sigmas[-1] == 0 and ts[0] == 999 and ts[-1] == int(999 / 38)
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    ac = np.cumprod(1 - betas)
    np.testing.assert_allclose(sigmas[:-1].numpy(), np.sqrt((1 - ac[ts]) / ac[ts]), rtol=1e-5)
    assert (np.diff(sigmas.numpy()) < 0).all()


def test_unclip_pipeline_end_to_end_on_prior_shaped_tokens(tiny_sdxl, tmp_path):
    """Prior-shaped (B, 256, D) predictions -> Euler on the eps-denoiser with random-token CFG -> images."""
    from mindeye.inference.reconstruct import ReconstructSettings, reconstruct
    from mindeye.inference.unclip_sdxl import AffineVaeCodec, UnclipSdxlGenerator, legacy_ddpm_schedule

    unet, vae = tiny_sdxl
    gen = UnclipSdxlGenerator("unclip-sdxl", unet, AffineVaeCodec(vae, 0.13025, 16), (256, 12))
    cond = torch.randn(2, 256, 12)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    lat = gen.denoise(cond, noise, steps=3, guidance=5.0)
    # independent loop: same schedule and the same per-sample random unconditional tokens / offset noise
    ts, sig = legacy_ddpm_schedule(3)
    gens = UnclipSdxlGenerator.row_generators(noise)
    unc = torch.stack([torch.randn((256, 12), generator=g) for g in gens])
    off = torch.stack([torch.randn((), generator=g) for g in gens]).view(-1, 1, 1, 1)
    x = (noise + 0.04 * off) * math.sqrt(1 + float(sig[0]) ** 2)
    added = gen.added_cond(4, torch.device("cpu"))
    with torch.no_grad():
        for i in range(3):
            xin = torch.cat([x, x]) / math.sqrt(float(sig[i]) ** 2 + 1)
            e = unet(xin, torch.full((4,), int(ts[i])), encoder_hidden_states=torch.cat([unc, cond]),
                     added_cond_kwargs=added).sample
            eu, ec = e.chunk(2)
            denoised = x - sig[i] * (eu + 5.0 * (ec - eu))  # sgm VanillaCFG on the denoised outputs
            x = x + (sig[i + 1] - sig[i]) * (x - denoised) / sig[i]
    torch.testing.assert_close(lat, x, rtol=1e-4, atol=1e-4)
    # whole reconstruct loop: prior output (B, 256, 12) -> unclip -> float images in [0, 1], decoded * .8 + .2
    with torch.no_grad():
        dec = gen.codec.decode_float(lat[:1])
        raw = vae.decode(lat[:1] / 0.13025).sample
    torch.testing.assert_close(dec, raw * 0.8 + 0.2)

    class Prior:
        def sample(self, brain_embed, cond_scale=1.0, timesteps=None, generator=None):
            return brain_embed  # the prior's output shape (B, 256, D)

    class Captioner:  # the prior outputs reach the captioner, one caption per brain sample
        def caption(self, tokens):
            return [f"mean {float(t.mean()):.4f}" for t in tokens]

    backbone = torch.randn(2, 256, 12)
    index = reconstruct(backbone, torch.randn(2, 3 * 16 * 16), np.array([0, 1]), Prior(), gen,
                        lambda im: im.flatten(1), tmp_path,
                        ReconstructSettings(samples=1, steps=2, guidance=5.0), progress=False, captioner=Captioner())
    assert sorted(index["images"]) == ["0", "1"] and (tmp_path / "images/00000.png").exists()
    assert index["images"]["1"]["caption"] == f"mean {float(backbone[1].mean()):.4f}"


def test_unclip_missing_weights_say_what_to_download(tmp_path):
    from mindeye.inference.generators import load_generator

    with pytest.raises(WeightsUnavailableError, match="hf download pscotti/mindeyev2 unclip6_epoch0_step110000.ckpt"):
        load_generator("unclip-sdxl", weights=str(tmp_path / "missing.ckpt"))


# --------------------------------------------------------------------------------------------------
# data.test_average: outputs -- the model's outputs averaged over three (padded) repetitions
# --------------------------------------------------------------------------------------------------
def test_test_average_outputs_is_the_mean_of_outputs_over_padded_repetitions():
    from types import SimpleNamespace

    from mindeye.data.splits import load_eval_split
    from mindeye.runs import embed_voxels

    g = np.random.default_rng(0)
    image_of_trial = np.array([5, 2, 7, 5, 2, 9, 2, 7, 3])  # 5, 7: two trials; 9, 3: one; 2: three
    voxels = g.normal(size=(len(image_of_trial), 4)).astype(np.float32)
    store = SimpleNamespace(trials=SimpleNamespace(image_index=image_of_trial), voxels=voxels, n_voxels=4)
    images = np.array([2, 3, 5, 7, 9])

    class Net(torch.nn.Module):  # nonlinear, so averaging inputs and averaging outputs differ
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            return {"projector": torch.tanh(3 * self.lin(x)) ** 2, "backbone": None}

    torch.manual_seed(0)
    net = Net()
    stack = load_eval_split(store, images, "averaged", "pad3", average="outputs")
    assert stack.voxels.shape == (5, 3, 4) and stack.image_index.tolist() == images.tolist()
    got = embed_voxels(net, stack.voxels, "cpu")
    for row, img in enumerate(images):  # the authors' loop: locs padded to three, outputs summed / 3
        locs = np.where(image_of_trial == img)[0]
        locs = locs.repeat(3) if len(locs) == 1 else (locs.repeat(2)[:3] if len(locs) == 2 else locs)
        with torch.no_grad():
            outs = [net(torch.from_numpy(voxels[[k]]).half().float())["projector"] for k in locs]
        torch.testing.assert_close(got[row], sum(outs)[0] / 3, atol=1e-5, rtol=1e-5)
    inputs = embed_voxels(net, load_eval_split(store, images, "averaged", "pad3").voxels, "cpu")
    assert (inputs - got).abs().max() > 1e-2
    with pytest.raises(MindEyeError, match="test_average must be one of"):
        load_eval_split(store, images, "averaged", "pad3", average="median")


# --------------------------------------------------------------------------------------------------
# final_evaluations.ipynb's "enhanced" blend: recon x .75 + blurry x .25 at 256 px
# --------------------------------------------------------------------------------------------------
def _write_dir(out, store, images, kind, size, seed):
    from PIL import Image

    from mindeye.inference.reconstruct import save_png, write_index

    rng = np.random.default_rng(seed)
    config = {"generator": "noise", "store": str(store.path)} if kind == "reconstruction" else \
        {"decoder": "standin-vae", "store": str(store.path)}
    index, made = {"kind": kind, "config": config, "images": {}}, {}
    for i in images.tolist():
        img = np.clip(np.asarray(store.images[i], float) + rng.normal(0, 40, store.images[i].shape), 0, 255)
        img = np.asarray(Image.fromarray(img.astype(np.uint8)).resize((size, size), Image.BILINEAR))
        save_png(img, out / f"images/{i:05d}.png")
        index["images"][str(i)] = {"image_index": i, "file": f"images/{i:05d}.png"}
        made[i] = img
    write_index(out, index)
    return made


def test_blend_blurry_scores_three_quarters_recon_plus_one_quarter_blurry(tiny_store, tmp_path):
    import torch.nn.functional as F

    from mindeye.data.store import SubjectStore
    from mindeye.evaluation import metrics as M
    from mindeye.evaluation.recon_eval import evaluate_recon_dirs

    store = SubjectStore(tiny_store)
    test = np.sort(store.image_indices("test")[:6])
    rec = _write_dir(tmp_path / "rec", store, test, "reconstruction", 48, 0)
    blur = _write_dir(tmp_path / "blur", store, test[::-1], "blurry", 32, 1)
    res = evaluate_recon_dirs([tmp_path / "rec"], pixel_only=True, progress=False, blend_blurry=tmp_path / "blur",
                              metrics=["pixcorr"])
    row = res["rows"][0]
    assert row["blend"]["weight"] == 0.25

    def up(d):  # independent: uint8 -> float, bilinear to 256 without antialias (the reference first resize)
        x = torch.from_numpy(np.stack([d[i] for i in test])).permute(0, 3, 1, 2).float() / 255
        return F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False)

    expected = 0.75 * up(rec) + 0.25 * up(blur)
    reals = np.stack([store.images[i] for i in test])
    assert row["metrics"]["pixcorr"]["value"] == pytest.approx(M.pixcorr(reals, expected), abs=1e-6)
    plain = evaluate_recon_dirs([tmp_path / "rec"], pixel_only=True, progress=False, metrics=["pixcorr"])["rows"][0]
    assert abs(plain["metrics"]["pixcorr"]["value"] - row["metrics"]["pixcorr"]["value"]) > 1e-4
    with pytest.raises(MindEyeError, match="blend-weight must be between 0 and 1"):
        evaluate_recon_dirs([tmp_path / "rec"], pixel_only=True, progress=False, blend_blurry=tmp_path / "blur",
                            blend_weight=1.5)


# --------------------------------------------------------------------------------------------------
# SDXL img2img refiner (enhanced_recon_inference.ipynb) on a tiny random SDXL pipeline
# --------------------------------------------------------------------------------------------------
def _tiny_sdxl_pipeline(tmp_path):
    import json
    import string

    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for c in string.ascii_lowercase:
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), pad_token="!", model_max_length=77)
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, projection_dim=8, bos_token_id=0,
                         eos_token_id=1, pad_token_id=2)
    torch.manual_seed(0)
    te1, te2 = CLIPTextModel(cfg), CLIPTextModelWithProjection(cfg)
    unet = UNet2DConditionModel(**{**TINY_UNET, "cross_attention_dim": 16, "addition_time_embed_dim": 4,
                                   "projection_class_embeddings_input_dim": 8 + 6 * 4})
    for p in unet.parameters():
        p.data.add_(torch.randn_like(p) * 0.02)
    vae = AutoencoderKL(**TINY_VAE)
    pipe = StableDiffusionXLImg2ImgPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok,
                                            tokenizer_2=tok, unet=unet, scheduler=EulerDiscreteScheduler())
    return pipe


def test_sdxl_refiner_is_the_authors_img2img(tmp_path):
    from mindeye.inference.sdxl_refiner import NEGATIVE_PROMPT, RefineSettings, SdxlRefiner
    from mindeye.inference.unclip_sdxl import legacy_ddpm_schedule

    pipe = _tiny_sdxl_pipeline(tmp_path)
    ref = SdxlRefiner(pipe)
    prompts = ["a cat on the grass", "a red car"]
    # the conditioning is SDXL's: hidden layer -2 of both text encoders side by side, bigG-side pooled embedding
    ctx, pooled, neg, neg_pooled = ref.conditioning(prompts, NEGATIVE_PROMPT)
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        h1 = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        out2 = pipe.text_encoder_2(ids, output_hidden_states=True)
    torch.testing.assert_close(ctx, torch.cat([h1, out2.hidden_states[-2]], -1))
    torch.testing.assert_close(pooled, out2.text_embeds)
    assert neg.shape == ctx.shape and not torch.allclose(neg, ctx)

    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    s = RefineSettings(steps=5, timepoint=3)
    got = ref.refine(images, prompts, [torch.Generator().manual_seed(k) for k in range(2)], s)
    # independent: posterior sample, noise, sigmas[-3:] of the 5-step grid, 2 Euler steps with CFG 5, (x + 1) / 2
    gens = [torch.Generator().manual_seed(k) for k in range(2)]
    with torch.no_grad():
        z = torch.cat([pipe.vae.encode(images[k:k + 1] * 2 - 1).latent_dist.sample(generator=g) for k, g in
                       enumerate(gens)]) * 0.13025
        noise = torch.stack([torch.randn(z.shape[1:], generator=g) for g in gens])
        ts, sig = legacy_ddpm_schedule(5)
        ts, sig = ts[-2:], sig[-3:]
        x = z + noise * sig[0]
        time_ids = torch.tensor([[768.0, 768, 0, 0, 1024, 1024]]).repeat(4, 1)
        added = {"text_embeds": torch.cat([neg_pooled, pooled]), "time_ids": time_ids}
        for i in range(2):
            e = pipe.unet(torch.cat([x, x]) / math.sqrt(float(sig[i]) ** 2 + 1), torch.full((4,), int(ts[i])),
                          encoder_hidden_states=torch.cat([neg, ctx]), added_cond_kwargs=added).sample
            eu, ec = e.chunk(2)
            x = x + (sig[i + 1] - sig[i]) * (eu + 5 * (ec - eu))
        expected = ((pipe.vae.decode(x / 0.13025).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(MindEyeError, match="one prompt and one generator per image"):
        ref.refine(images, prompts[:1], gens, s)


def test_refine_dir_writes_a_reconstruction_directory(tmp_path):
    import json

    import torch.nn.functional as F

    from mindeye.inference.reconstruct import item_seed, save_png, write_index
    from mindeye.inference.sdxl_refiner import RefineSettings, SdxlRefiner, refine_dir

    src = tmp_path / "recons"
    index = {"kind": "reconstruction", "config": {"generator": "unclip-sdxl", "store": "S"}, "images": {}}
    pngs = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    for k, idx in enumerate((7, 3)):
        save_png(pngs[k], src / f"images/{idx:05d}.png")
        index["images"][str(idx)] = {"image_index": idx, "file": f"images/{idx:05d}.png", "caption": f"seen {idx}"}
    write_index(src, index)
    (tmp_path / "captions.json").write_text(json.dumps({"7": "a cat"}))
    ref = SdxlRefiner(_tiny_sdxl_pipeline(tmp_path))
    s = RefineSettings(steps=3, timepoint=2)
    out = refine_dir(src, tmp_path / "out", captions=tmp_path / "captions.json", settings=s, seed=5,
                     progress=False, refiner=ref, image_size=16, via_size=8)
    assert sorted(out["images"], key=int) == ["3", "7"] and out["images"]["7"]["caption"] == "a cat"
    assert out["images"]["3"]["caption"] == "seen 3"  # no --captions entry: reconstruct's own caption
    assert out["config"]["refined_from"] == str(src.resolve()) and out["config"]["generator"] == "unclip-sdxl"
    got = torch.from_numpy(np.load(tmp_path / "out" / out["images"]["7"]["float_file"])).float()
    img = torch.from_numpy(pngs[0]).permute(2, 0, 1).float()[None] / 255
    # through 8 px and back to 16, bilinear without antialiasing (their 768 -> 256 -> 768)
    img = F.interpolate(F.interpolate(img, size=(8, 8), mode="bilinear", align_corners=False), size=(16, 16),
                        mode="bilinear", align_corners=False)
    expected = ref.refine(img, ["a cat"], [torch.Generator().manual_seed(item_seed(5, 7))], s)[0]
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=0)  # stored as float16
    with pytest.raises(MindEyeError, match="--captions"):
        (tmp_path / "bad.json").write_text("[1, 2]")
        refine_dir(src, tmp_path / "out2", captions=tmp_path / "bad.json", settings=s, progress=False, refiner=ref,
                   image_size=16)


# --------------------------------------------------------------------------------------------------
# GIT captions from predicted tokens (GitForCausalLMClipEmb + CLIPConverter)
# --------------------------------------------------------------------------------------------------
def test_git_captions_from_features_equal_captions_from_the_image(tmp_path):
    from types import SimpleNamespace

    from transformers import GitConfig, GitForCausalLM

    from mindeye.inference.captions import BigGToClipL, GitCaptioner, load_captioner

    cfg = GitConfig(vision_config={"hidden_size": 12, "intermediate_size": 24, "num_hidden_layers": 1,
                                   "num_attention_heads": 2, "image_size": 16, "patch_size": 4},
                    vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                    max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    reference = GitForCausalLM(cfg).eval()
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        feats = reference.git.image_encoder(pixels).last_hidden_state  # (2, 17, 12): GIT's CLIP image features
        expected = reference.generate(pixel_values=pixels, max_length=8, do_sample=False)
    # the captioner gets the features (through an identity converter) in place of the image encoder
    twin = GitForCausalLM(cfg).eval()
    twin.load_state_dict(reference.state_dict())
    conv = BigGToClipL(seq_in=17, seq_out=17, dim_in=12, dim_out=12)
    with torch.no_grad():
        for lin in (conv.linear1, conv.linear2):
            lin.weight.copy_(torch.eye(lin.weight.shape[0]))
            lin.bias.zero_()
    tok = SimpleNamespace(batch_decode=lambda ids, skip_special_tokens: [" ".join(map(str, r.tolist())) for r in ids])
    got = GitCaptioner(twin, conv, tok).caption(feats, max_length=8)
    assert got == [" ".join(map(str, r.tolist())) for r in expected]
    # the converter is theirs: Linear over tokens, then over channels
    c = BigGToClipL(seq_in=4, seq_out=5, dim_in=6, dim_out=3)
    x = torch.randn(2, 4, 6)
    manual = (x.transpose(1, 2) @ c.linear1.weight.T + c.linear1.bias).transpose(1, 2) @ c.linear2.weight.T + c.linear2.bias
    torch.testing.assert_close(c(x), manual)
    with pytest.raises(WeightsUnavailableError, match="hf download microsoft/git-large-coco"):
        load_captioner(str(tmp_path / "nowhere"))
