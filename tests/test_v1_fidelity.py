"""The last differences from the authors' v1 computation (issue 25; docs/choices.md).

Each test compares with a computation written here, from the authors' code (MedARC-AI/fMRI-reconstruction-NSD,
``src/``), not with the code under test, and fails with the behaviour mindeye had before issue 25.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mindeye.config import load_config
from mindeye.training import losses
from mindeye.training.distributed import DistInfo

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "src/mindeye/configs"
PAPER_HIGH = CONFIGS / "mindeye-subj01.yaml"
PAPER_LOW = CONFIGS / "lowlevel-subj01.yaml"
TINY_HIGH = ["model.backbone.hidden=32", "model.backbone.n_blocks=1", "model.backbone.tokens=3",
             "model.backbone.dim=8", "model.projector.hidden=16", "model.prior.depth=1", "model.prior.heads=2",
             "model.prior.dim_head=8", "train.epochs=10"]


# ------------------------------------------------------------------ 1. the prior's targets under BiMixCo
def _prior_targets_seen(overrides: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(targets the prior was given, the batch's targets, the mixed voxels' lambdas) of one BiMixCo step."""
    from mindeye.models.factory import build_model
    from mindeye.training.trainer import HighLevelLoss

    cfg = load_config(PAPER_HIGH, TINY_HIGH + overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, 20).eval()
    seen = {}

    def record(target, brain):
        seen["target"] = target.detach().clone()
        return brain.sum() * 0, None

    model.prior.loss = record
    g = torch.Generator().manual_seed(0)
    tgt = torch.randn(12, 3, 8, generator=g)
    batch = {"voxels": torch.randn(12, 20, generator=g), "targets": tgt, "device": "cpu",
             "generator": torch.Generator().manual_seed(1)}
    task = HighLevelLoss(cfg, DistInfo())
    assert task._phase(0) == "bimixco"
    task.loss(model, model, batch, 0)
    # the same draws as the step: which samples were mixed
    _, _, lambdas = losses.mixco_mix(
        batch["voxels"], cfg.train.mixco_beta, cfg.train.mixco_prob, torch.Generator().manual_seed(1))
    return seen["target"], tgt, lambdas


def test_prior_is_trained_on_the_unmixed_clip_targets_under_bimixco():
    """Train_MindEye.py: ``diffusion_prior(text_embed=clip_voxels, image_embed=clip_target)`` with the
    unmixed clip_target, while the voxels are mixed (``utils.mixco_clip_target`` is never called)."""
    got, tgt, lambdas = _prior_targets_seen([])
    assert (lambdas < 1).any()  # some samples were mixed in this step
    torch.testing.assert_close(got, tgt)
    mixed, _, _ = _prior_targets_seen(["train.prior_targets=mixed"])
    assert (mixed - tgt).abs().amax() > 1e-3  # the option: mixed like the voxels (the paper's text)
    assert load_config(PAPER_HIGH).train.prior_targets == "unmixed"


# ------------------------------------------------------------- 5. the metric networks' own downscales
class _Pooled(torch.nn.Module):
    """A stand-in network whose 'avgpool' feature is its input itself (so the features show the resize)."""

    def forward(self, x):
        return {"avgpool": x}


def test_metric_networks_downscale_without_antialias_like_torchvision_015():
    """Reconstruction_Metrics.py: ``transforms.Resize(224 / 255, BILINEAR)`` on tensors, torchvision 0.15.2
    (no antialias) for CLIP, SwAV and EfficientNet; the option antialiases."""
    import torchvision.transforms.functional as TF

    from mindeye.evaluation import metrics as M
    from mindeye.evaluation.feature_nets import FeatureExtractor, FeatureNets

    g = torch.Generator().manual_seed(0)
    reals, recons = torch.rand(3, 3, 256, 256, generator=g), torch.rand(3, 3, 256, 256, generator=g)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    for name, size in (("swav", 224), ("efficientnet_b1", 255)):
        nets = FeatureNets({name: FeatureExtractor(name, _Pooled(), size, mean.flatten().tolist(), std.flatten().tolist())})
        for mode, antialias in (("reference", False), ("antialias", True)):
            got = M.evaluate_reconstructions(reals, recons, nets, metrics=[name], progress=False, net_resize=mode)
            f_real, f_recon = ((TF.resize(x, [size], TF.InterpolationMode.BILINEAR, antialias=antialias) - mean) / std
                               for x in (reals, recons))
            a, b = f_real.flatten(1).double(), f_recon.flatten(1).double()
            a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
            expected = float((1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean())
            assert got[name]["value"] == pytest.approx(expected, rel=1e-6), (name, mode)
        old = M.evaluate_reconstructions(reals, recons, nets, metrics=[name], progress=False, net_resize="antialias")
        new = M.evaluate_reconstructions(reals, recons, nets, metrics=[name], progress=False)
        assert old[name]["value"] != pytest.approx(new[name]["value"], rel=1e-4)  # the default moved


# ------------------------------------------------------- 7. test images with fewer than three repetitions
def test_averaged_test_samples_pad_to_three_repetitions_like_the_authors_data():
    """MindEyeV2 src/Train.ipynb: ``locs = torch.where(im == image)[0]``; one trial -> ``locs.repeat(3)``,
    two -> ``locs.repeat(2)[:3]`` ([a, b, a]); then the mean of the three."""
    from types import SimpleNamespace

    from mindeye.data.splits import load_eval_split

    g = np.random.default_rng(0)
    image_of_trial = np.array([5, 2, 7, 5, 2, 9, 2, 7, 3])  # 5, 7: two trials; 9, 3: one; 2: three
    voxels = g.normal(size=(len(image_of_trial), 4)).astype(np.float32)
    store = SimpleNamespace(trials=SimpleNamespace(image_index=image_of_trial), voxels=voxels, n_voxels=4)
    images = np.array([2, 3, 5, 7, 9])
    got = load_eval_split(store, images, "averaged", "pad3")
    assert got.image_index.tolist() == images.tolist()
    for row, img in enumerate(images):
        locs = torch.where(torch.from_numpy(image_of_trial) == int(img))[0]
        if len(locs) == 1:
            locs = locs.repeat(3)
        elif len(locs) == 2:
            locs = locs.repeat(2)[:3]
        assert len(locs) == 3
        expected = torch.from_numpy(voxels)[locs].double().mean(0)
        torch.testing.assert_close(got.voxels[row].double(), expected, atol=2e-3, rtol=1e-3)
    plain = load_eval_split(store, images, "averaged", "available")
    five = images.tolist().index(5)
    torch.testing.assert_close(plain.voxels[five].double(), torch.from_numpy(voxels[[0, 3]]).double().mean(0),
                               atol=2e-3, rtol=1e-3)
    assert (plain.voxels[five] - got.voxels[five]).abs().max() > 1e-2
    assert load_config(PAPER_HIGH).data.test_repetitions == "pad3"
    assert load_config(PAPER_LOW).data.test_repetitions == "pad3"


# ------------------------------------------------------------------- 8. MindEye2's fine-tune, cited right
def test_docs_cite_mindeye2_notebook_and_its_single_ridge_fine_tune():
    """MindEyeV2 has src/Train.ipynb (Train.py exists only in its history); its fine-tune builds one ridge and
    loads the pretrained checkpoint with strict=False (load_ckpt(..., multisubj_loading=True))."""
    docs = {p.name: p.read_text() for p in (REPO / "docs").glob("*.md")}
    for name, text in docs.items():
        assert "src/Train.py" not in text and "`Train.py`" not in text, name
    choices = docs["choices.md"]
    assert "src/Train.ipynb" in choices and "strict=False" in choices and "ridge.linears.0.weight" in choices


# ------------------------------------------------------------- 3. the low-level contrastive loss, two views
def _authors_soft_cont_loss(student, teacher, teacher_aug, temp):
    """utils.soft_cont_loss (distributed=False), as train_autoencoder.py calls it: inputs reshaped to
    (B*256, 512) and F.normalize'd per token; written out with explicit double-precision matrices."""
    def flat(x):
        x = x.double().reshape(-1, x.shape[-1])
        return x / x.norm(dim=-1, keepdim=True)

    s, t, a = flat(student), flat(teacher), flat(teacher_aug)
    teacher_teacher_aug, teacher_teacher_aug_t = t @ a.T / temp, a @ t.T / temp
    student_teacher_aug, student_teacher_aug_t = s @ a.T / temp, a @ s.T / temp
    loss1 = -(student_teacher_aug.log_softmax(-1) * teacher_teacher_aug.softmax(-1)).sum(-1).mean()
    loss2 = -(student_teacher_aug_t.log_softmax(-1) * teacher_teacher_aug_t.softmax(-1)).sum(-1).mean()
    return float((loss1 + loss2) / 2)


def test_lowlevel_contrastive_uses_a_clean_and_an_augmented_teacher_view():
    from mindeye.models.factory import build_model
    from mindeye.training.trainer import LowLevelLoss

    cfg = load_config(CONFIGS / "demo-lowlevel.yaml", ["model.lowlevel.hidden=32", "train.lowlevel_contrastive_views=two"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 20).eval()
    g = torch.Generator().manual_seed(0)
    voxels = torch.randn(4, 20, generator=g)
    with torch.no_grad():
        latents, tokens = model(voxels)
    teacher = torch.randn(*tokens.shape, generator=g)
    teacher_aug = teacher + 0.5 * torch.randn(*tokens.shape, generator=g)
    batch = {"voxels": voxels, "latents": torch.randn(*latents.shape, generator=g), "teacher": teacher,
             "teacher_aug": teacher_aug, "device": "cpu"}
    with torch.no_grad():
        _, parts = LowLevelLoss(cfg, DistInfo()).loss(model, model, batch, 0)
    tau = cfg.train.lowlevel_temperature
    expected = _authors_soft_cont_loss(tokens, teacher, teacher_aug, tau)
    assert parts["contrastive"].item() == pytest.approx(expected, rel=1e-4)
    # the one-view form (soft labels from the teacher's self-similarity) is another number
    one_view = _authors_soft_cont_loss(tokens, teacher, teacher, tau)
    assert parts["contrastive"].item() != pytest.approx(one_view, rel=1e-3)
    assert load_config(PAPER_LOW).train.lowlevel_contrastive_views == "two"


def test_lowlevel_batches_pair_the_clean_teacher_with_an_augmented_view(tiny_store, tmp_path):
    """The augmented teacher view of every sample is one of the K cached views (1..K), never the clean one,
    and the clean teacher is the plain cache row."""
    import shutil

    from mindeye.encoders.cache import embed_store, load_targets
    from mindeye.training.trainer import LowLevelTask, Trainer

    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    embed_store(store, "standin-vicregl", views=2, progress=False)
    cfg = load_config(CONFIGS / "demo-lowlevel.yaml", ["train.epochs=1", "model.lowlevel.hidden=32",
                                                       "targets.augmented_views=2", "train.data_path=simple",
                                                       "train.lowlevel_contrastive_views=two"])
    task = LowLevelTask(Trainer(cfg, tmp_path / "run", store=store, device="cpu", progress=False))
    plain = np.asarray(load_targets(store, "standin-vicregl", None), dtype=np.float32)
    views = np.asarray(load_targets(store, "standin-vicregl", None, views=True), dtype=np.float32)
    batch = next(iter(task.batches(0)))
    rows = batch["teacher"].numpy()
    aug = batch["teacher_aug"].numpy()
    for r, a in zip(rows, aug):
        image = int(np.flatnonzero((np.abs(plain.reshape(len(plain), -1) - r.reshape(-1)) < 1e-6).all(1))[0])
        hits = [k for k in range(views.shape[1]) if np.allclose(views[image, k].reshape(-1), a.reshape(-1))]
        assert hits, "the augmented teacher is not a cached view of the same image"
        assert not np.allclose(a.reshape(-1), r.reshape(-1))


# ------------------------------------------------------------------------ 2. the generator's end point
def _old_unipc_img2img(unet, cond, init_latents, noise, steps, start, guidance):
    """The authors' loop (utils.reconstruction) with diffusers 0.13's UniPC (bh2, order 2, data prediction,
    lower order at the end, the corrector from the second step), written out from the UniPC formulas on the
    discrete schedule: every step goes from timestep s to the next one, the LAST to t = 0 (sigma ~ 0.029)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    acp = torch.cumprod(1 - betas, 0)
    ts = np.linspace(0, 999, steps + 1).round()[::-1][:-1].astype(np.int64)

    def alpha(t):
        return acp[t].sqrt()

    def sigma(t):
        return (1 - acp[t]).sqrt()

    def lam(t):
        return torch.log(alpha(t)) - torch.log(sigma(t))

    def phi(t_to, t_from):
        hh = -(lam(t_to) - lam(t_from))
        return hh, torch.expm1(hh)

    def eps_of(x, t):
        xin = torch.cat([x, x]).float()
        e = unet(xin, int(t), encoder_hidden_states=torch.cat([torch.zeros_like(cond), cond])).sample.double()
        e_u, e_c = e.chunk(2)
        return e_u + guidance * (e_c - e_u)

    t0 = int(ts[start])
    x = alpha(t0) * init_latents.double() + sigma(t0) * noise.double()  # add_noise at the first kept step
    hist_m, hist_t = [], []  # data predictions and their timesteps, oldest first
    last_x, last_order = None, 0
    done = 0
    for i in range(start, steps):
        t = int(ts[i])
        t_next = int(ts[i + 1]) if i + 1 < steps else 0
        m = (x - sigma(t) * eps_of(x, t)) / alpha(t)  # x0 prediction
        if last_x is not None:  # UniC corrector of the step just taken (s0 -> t)
            s0, m0 = hist_t[-1], hist_m[-1]
            hh, bh = phi(t, s0)
            x_ = sigma(t) / sigma(s0) * last_x - alpha(t) * bh * m0
            if last_order == 1:
                x = x_ - alpha(t) * bh * 0.5 * (m - m0)
            else:
                s1, m1 = hist_t[-2], hist_m[-2]
                r1 = (lam(s1) - lam(s0)) / (lam(t) - lam(s0))
                k1 = bh / hh - 1
                k2 = k1 / hh - 0.5
                rhos = torch.linalg.solve(torch.tensor([[1.0, 1.0], [float(r1), 1.0]], dtype=torch.float64),
                                          torch.stack([k1 / bh, k2 * 2 / bh]))
                x = x_ - alpha(t) * bh * (rhos[0] * (m1 - m0) / r1 + rhos[1] * (m - m0))
        hist_m, hist_t = (hist_m + [m])[-2:], (hist_t + [t])[-2:]
        order = min(2, steps - i, done + 1)
        last_x = x
        hh, bh = phi(t_next, t)  # UniP predictor t -> t_next
        x_next = sigma(t_next) / sigma(t) * x - alpha(t_next) * bh * m
        if order == 2:
            r1 = (lam(hist_t[-2]) - lam(t)) / (lam(t_next) - lam(t))
            x_next = x_next - alpha(t_next) * bh * 0.5 * (hist_m[-2] - m) / r1
        x, last_order, done = x_next, order, min(done + 1, 2)
    return x.float()


def _tiny_vd():
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from mindeye.inference.generators import GENERATORS, DiffusersVaeCodec, ImageGenerator

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, sample_size=16).eval()
    spec = GENERATORS["versatile-diffusion"]
    return ImageGenerator(spec.name, unet, DiffusersVaeCodec(vae, 0.18215, 8), (3, 16),
                          final_sigmas=spec.final_sigmas)


def test_versatile_diffusion_unipc_ends_at_t0_like_the_authors_diffusers_013():
    from mindeye.inference.generators import generator_spec

    assert generator_spec("versatile-diffusion").final_sigmas == "sigma_min"
    gen = _tiny_vd()
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(2, 3, 16, generator=g)
    init, noise = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    with torch.no_grad():  # the paper runs 17 of 20 steps (strength 0.15); 8 of 10 here, same code path
        got = gen.denoise(cond, noise, init, strength=0.2, steps=10, guidance=3.5)
        expected = _old_unipc_img2img(gen.unet, cond, init, noise, 10, 2, 3.5)
        zero = gen.denoise(cond, noise, init, strength=0.2, steps=10, guidance=3.5, final_sigmas="zero")
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert (zero - expected).abs().max() > 1e-2  # diffusers' sigma-0 end point is another image


# ------------------------------------------------------------------------ 6. floats between the stages
def test_blurry_images_and_candidates_stay_floats_between_stages(tmp_path):
    """Reconstructions.py: ``blurry_recons = vae.decode(...).sample / 2 + 0.5`` goes UNclamped into
    ``utils.reconstruction`` (``vae.encode(clip_extractor.normalize(img_lowlevel))``); the candidates are
    ``decode_latents`` floats (clamped to [0, 1], never 8-bit) for the best-of-N judge and the saved
    tensors the metrics read. PNGs are still written for people."""
    from mindeye.evaluation.recon_eval import read_recon_dir
    from mindeye.inference.blurry import BlurryImages, decode_latents_to_pngs
    from mindeye.inference.reconstruct import ReconstructSettings, reconstruct_batch

    g = torch.Generator().manual_seed(0)
    blurry = torch.rand(2, 3, 8, 8, generator=g) * 1.4 - 0.2  # decoded images run a little past [0, 1]
    decode_latents_to_pngs(lambda v: v, lambda z: blurry[: len(z)], torch.zeros(2, 1), np.array([4, 9]),
                           tmp_path / "blurry", {"decoder": "test"}, progress=False)
    source = BlurryImages(tmp_path / "blurry")
    assert (tmp_path / "blurry/images/00004.png").exists()
    torch.testing.assert_close(source.get_float(9), blurry[1], atol=2e-3, rtol=0)  # float16 copy, unclamped

    gen = _tiny_vd()
    seen = {}
    encode_init = gen.codec.encode_init

    def spy_init(images, encoding, generator=None):
        seen.setdefault("init", images)
        return encode_init(images, encoding, generator)

    gen.codec.encode_init = spy_init

    class Prior:
        def sample(self, brain, cond_scale=1.0, timesteps=None, generator=None):
            return torch.randn(brain.shape[0], 3, 16, generator=generator)

    def judge(images):
        seen["judge"] = images
        return images.flatten(1)[:, :48]

    settings = ReconstructSettings(samples=2, steps=4, img2img_strength=0.5)
    images, chosen, _ = reconstruct_batch([0], torch.zeros(1, 3, 16), torch.randn(1, 48, generator=g),
                                          np.array([9]), Prior(), gen, judge, settings, source, 2)
    # the img2img input is the float blurry image, values outside [0, 1] included
    torch.testing.assert_close(seen["init"][0], blurry[1], atol=2e-3, rtol=0)
    # the judge and the caller get floats in [0, 1], not 8-bit values
    assert seen["judge"].is_floating_point() and images.is_floating_point()
    assert images.min() >= 0 and images.max() <= 1
    assert ((images * 255 - (images * 255).round()).abs() > 1e-3).any()

    # the metrics read the float copies (a reconstruction directory keeps one per image)
    index = read_recon_dir(tmp_path / "blurry")
    floats = index.load_images()
    assert floats.is_floating_point()
    torch.testing.assert_close(floats[1], blurry[1].clamp(0, 1), atol=2e-3, rtol=0)


# --------------------------------------------------------------- 4. CLIP targets from augmented images
def test_online_targets_are_clip_of_the_authors_kornia_augmentation(tiny_store, tmp_path):
    """Train_MindEye.py l.201-211 / 591-601: every batch's images go through the kornia pipeline below and
    then CLIP, at every step (targets never cached); targets.online does that, the paper config asks for it."""
    import kornia
    from kornia.augmentation.container import AugmentationSequential

    from mindeye.data.store import SubjectStore
    from mindeye.encoders.cache import load_targets
    from mindeye.encoders.registry import get_encoder
    from mindeye.training.trainer import HighLevelTask, Trainer

    cfg = load_config(CONFIGS / "demo-highlevel.yaml", ["train.epochs=1", "model.backbone.hidden=32",
                                                        "targets.online=true", "train.data_path=simple"])
    task = HighLevelTask(Trainer(cfg, tmp_path / "run", store=tiny_store, device="cpu", progress=False))
    batch = next(iter(task.batches(0)))
    encoder = get_encoder("standin-clip-hidden")  # the demo's stand-in CLIP (64 px input)
    size = 64
    img_augment = AugmentationSequential(
        kornia.augmentation.RandomResizedCrop((size, size), (0.6, 1), p=0.3),
        kornia.augmentation.Resize((size, size)),
        kornia.augmentation.RandomHorizontalFlip(p=0.5),
        kornia.augmentation.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, p=0.3),
        kornia.augmentation.RandomGrayscale(p=0.3),
        data_keys=["input"],
    )
    images = torch.from_numpy(np.asarray(SubjectStore(tiny_store).images)[batch["image_index"]])
    torch.manual_seed(batch["augment_seed"])
    augmented = img_augment(images.permute(0, 3, 1, 2).float() / 255)
    expected = encoder.encode(augmented)
    torch.testing.assert_close(batch["targets"], expected.view_as(batch["targets"]), atol=1e-5, rtol=1e-4)
    cached = torch.from_numpy(np.asarray(load_targets(tiny_store, "standin-clip-hidden", None),
                                         dtype=np.float32)[batch["image_index"]])
    assert (batch["targets"] - cached.view_as(batch["targets"])).abs().max() > 1e-2  # not the cache
    assert load_config(PAPER_HIGH).targets.online
