"""Reconstruction metrics and feature networks (tiny / randomly initialised, CPU, fast)."""

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from scipy.spatial.distance import correlation as scipy_correlation
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity
from torchvision import models

from mindeye.errors import MindEyeError, WeightsUnavailableError
from mindeye.evaluation import feature_nets as fn
from mindeye.evaluation import metrics as M
from mindeye.evaluation.feature_nets import FeatureNets, Unavailable


def _images(seed: int, n: int = 3, h: int = 300, w: int = 280) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # smooth-ish random images so SSIM/PixCorr are not trivially ~0
    base = rng.integers(0, 256, (n, h // 10, w // 10, 3)).astype(np.float32)
    big = np.kron(base, np.ones((1, 10, 10, 1), np.float32)) + rng.normal(0, 20, (n, h, w, 3))
    return np.clip(big, 0, 255).astype(np.uint8)


def _ref_prepare(images_u8: np.ndarray, size: int) -> torch.Tensor:
    """Independent path: torchvision functional resize (256x256 without antialias as the authors'
    torchvision 0.15 did on tensors, then `size`)."""
    x = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 255
    x = TF.resize(x, [256, 256], interpolation=TF.InterpolationMode.BILINEAR, antialias=False)
    return TF.resize(x, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


# ---------------------------------------------------------------- input handling


def test_uint8_hwc_and_float_chw_inputs_agree():
    u8 = _images(0)
    f = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(M.prepare(u8), M.prepare(f))
    assert M.prepare(u8).shape == (3, 3, 256, 256)


def test_first_resize_matches_torchvision_without_antialias_by_default():
    """Reconstruction_Metrics.py: transforms.Resize((256, 256)) on tensors, torchvision 0.15.2 (no antialias)."""
    f = torch.from_numpy(_images(4, h=430, w=430)).permute(0, 3, 1, 2).float() / 255
    authors = TF.resize(f, [256, 256], interpolation=TF.InterpolationMode.BILINEAR, antialias=False)
    antialiased = TF.resize(f, [256, 256], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    torch.testing.assert_close(M.prepare(f), authors)
    torch.testing.assert_close(M.prepare(f, first_resize="antialias"), antialiased)
    assert (authors - antialiased).abs().max() > 0.01  # the two really differ on a 425 -> 256 downscale
    with pytest.raises(MindEyeError, match="first_resize must be one of reference, antialias"):
        M.prepare(f, first_resize="area")


def test_float_images_out_of_range_rejected():
    with pytest.raises(MindEyeError, match=r"\[0, 1\]"):
        M.prepare(torch.rand(2, 3, 64, 64) * 255)


def test_mismatched_counts_rejected():
    with pytest.raises(MindEyeError, match="pair up"):
        M.pixcorr(_images(0, n=3), _images(1, n=2))


# ---------------------------------------------------------------- PixCorr / SSIM


def test_pixcorr_matches_numpy_corrcoef():
    real, recon = _images(0), _images(1)
    recon = (0.6 * real + 0.4 * recon).astype(np.uint8)  # correlated pair
    a = _ref_prepare(real, 425).reshape(3, -1).double().numpy()
    b = _ref_prepare(recon, 425).reshape(3, -1).double().numpy()
    expected = np.mean([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)])
    got = M.pixcorr(real, recon, batch_size=2)
    assert 0.3 < expected < 0.99
    assert got == pytest.approx(expected, abs=1e-5)
    assert M.pixcorr(real, real) == pytest.approx(1.0, abs=1e-9)


def test_ssim_matches_scikit_image():
    real, recon = _images(2), _images(3)
    recon = (0.5 * real + 0.5 * recon).astype(np.uint8)
    g_real = rgb2gray(_ref_prepare(real, 425).permute(0, 2, 3, 1).double().numpy())
    g_recon = rgb2gray(_ref_prepare(recon, 425).permute(0, 2, 3, 1).double().numpy())
    per_image = [
        structural_similarity(r, g, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
        for g, r in zip(g_real, g_recon)
    ]
    got = M.ssim_per_image(M.prepare(real), M.prepare(recon)).numpy()
    np.testing.assert_allclose(got, per_image, atol=1e-4)
    assert M.ssim(real, recon, batch_size=2) == pytest.approx(np.mean(per_image), abs=1e-4)
    assert M.ssim(real, real) == pytest.approx(1.0, abs=1e-9)


def test_ssim_gray_matches_scikit_image_on_raw_random_arrays():
    rng = np.random.default_rng(4)
    a, b = rng.random((2, 40, 52)), rng.random((2, 40, 52))
    got = M.ssim_gray(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    ref = [structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=1.0) for x, y in zip(a, b)]
    np.testing.assert_allclose(got, ref, atol=1e-10)


# ---------------------------------------------------------------- two-way identification


def _two_way_loop(real: np.ndarray, recon: np.ndarray) -> float:
    """Literal reading of the protocol, with np.corrcoef and Python loops."""
    n = len(real)
    scores = []
    for j in range(n):
        own = np.corrcoef(real[j], recon[j])[0, 1]
        scores.append(np.mean([np.corrcoef(real[i], recon[j])[0, 1] < own for i in range(n) if i != j]))
    return float(np.mean(scores))


def test_two_way_identity_features_is_one():
    x = torch.randn(20, 7, 3, dtype=torch.float64)
    before = x.clone()
    assert M.two_way_identification(x, x) == 1.0
    assert torch.equal(x, before)  # inputs are not modified


def test_two_way_independent_random_is_chance():
    g = torch.Generator().manual_seed(0)
    real, recon = torch.randn(400, 64, generator=g), torch.randn(400, 64, generator=g)
    assert M.two_way_identification(real, recon) == pytest.approx(0.5, abs=0.03)


def test_two_way_hand_computed_3x3():
    # r[i, j] = corr(real_i, recon_j); centred vectors make the correlations easy to read off.
    real = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [1.0, 3.0, 2.0]])
    recon = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [2.0, 3.0, 1.0]])
    # r[:,0] = [1, -1, .5]: own r = 1 beats both others -> 1.0
    # r[:,1] = [1, -1, .5]: own r = -1 beats neither -> 0.0
    # r[:,2] = [-.5, .5, .5]: own .5 beats real_0; the tie with real_1 does not count -> 0.5
    assert M.two_way_identification(real, recon) == pytest.approx(0.5)
    assert _two_way_loop(real, recon) == pytest.approx(0.5)
    recon[2] = real[2]  # r[:,2] = [.5, -.5, 1] -> 1.0, so the mean becomes 2/3
    assert M.two_way_identification(real, recon) == pytest.approx(2 / 3)


def test_two_way_matches_loop_on_partially_correlated_features():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(25, 30))
    recon = 0.3 * real + rng.normal(size=(25, 30))
    expected = _two_way_loop(real, recon)
    assert 0.6 < expected < 1.0
    assert M.two_way_identification(real, recon) == pytest.approx(expected, abs=1e-12)


def test_correlation_distance_matches_scipy():
    rng = np.random.default_rng(2)
    real, recon = rng.normal(size=(6, 4, 5)), rng.normal(size=(6, 4, 5))
    expected = np.mean([scipy_correlation(a.ravel(), b.ravel()) for a, b in zip(real, recon)])
    assert M.correlation_distance(real, recon) == pytest.approx(expected, abs=1e-12)
    assert M.correlation_distance(real, real) == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- feature networks


def _tiny_clip_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            image_size=32, patch_size=8, projection_dim=16)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


@pytest.mark.slow
def test_random_init_feature_shapes():
    nets = FeatureNets.load(random_init=True, clip_config=_tiny_clip_config())
    x = torch.rand(2, 3, 256, 256)
    shapes = {}
    for net in nets.nets.values():
        shapes.update({k: tuple(v.shape) for k, v in net(x).items()})
    assert shapes == {
        "alexnet2": (2, 192, 31, 31),
        "alexnet5": (2, 256, 15, 15),
        "inceptionv3": (2, 2048, 1, 1),
        "efficientnet_b1": (2, 1280, 1, 1),
        "swav": (2, 2048, 1, 1),
        "clip": (2, 16),
    }
    # protocol resizes; CLIP uses its config's image size (224 for ViT-L/14)
    assert {k: v.resize for k, v in nets.nets.items()} == {
        "alexnet": 256, "inceptionv3": 342, "efficientnet_b1": 255, "swav": 224, "clip": 32}
    # Inception is built like torchvision's pretrained one: transform_input=True re-maps ImageNet norm
    # to Google's [-1, 1] inside the traced graph (x * 0.229 / 0.5 + ...).
    assert "0.458" in nets.nets["inceptionv3"].net.code


def test_missing_weights_are_unavailable_with_fix(tmp_path, empty_hub):
    nets = FeatureNets.load(weights_dir=tmp_path / "w", clip=str(tmp_path / "no-clip"))
    assert set(nets.nets) == set(fn.NET_NAMES)
    for name, entry in nets.nets.items():
        assert isinstance(entry, Unavailable), name
        assert "--weights-dir" in entry.reason
    assert "alexnet-owt-7be5be79.pth" in nets.nets["alexnet"].reason
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in nets.nets["alexnet"].reason
    assert "swav_800ep_pretrain.pth.tar" in nets.nets["swav"].reason
    assert "efficientnet_b1" in nets.nets["efficientnet_b1"].reason
    assert "huggingface.co/openai/clip-vit-large-patch14" in nets.nets["clip"].reason


def test_loads_torchvision_checkpoint_from_weights_dir(tmp_path, empty_hub):
    ref = models.efficientnet_b1().eval()
    fname = models.EfficientNet_B1_Weights.DEFAULT.url.rsplit("/", 1)[1]
    torch.save(ref.state_dict(), tmp_path / fname)
    nets = FeatureNets.load(weights_dir=tmp_path, names=["efficientnet_b1"])
    x = torch.rand(2, 3, 256, 256)
    got = nets.nets["efficientnet_b1"](x)["efficientnet_b1"].flatten(1)
    xr = torch.nn.functional.interpolate(x, size=(255, 255), mode="bilinear", antialias=True)
    xr = (xr - torch.tensor(fn.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(fn.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref.avgpool(ref.features(xr)).flatten(1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_wrong_checkpoint_file_is_a_user_error(tmp_path, empty_hub):
    fname = models.EfficientNet_B1_Weights.DEFAULT.url.rsplit("/", 1)[1]
    torch.save({"not": torch.zeros(1)}, tmp_path / fname)
    with pytest.raises(WeightsUnavailableError, match=r"does not match.*download.pytorch.org"):
        FeatureNets.load(weights_dir=tmp_path, names=["efficientnet_b1"])


def test_loads_clip_from_weights_dir_folder(tmp_path):
    from transformers import CLIPVisionModelWithProjection

    ref = CLIPVisionModelWithProjection(_tiny_clip_config()).eval()
    ref.save_pretrained(tmp_path / "clip-vit-large-patch14")  # <weights_dir>/<last part of the HF id>
    nets = FeatureNets.load(weights_dir=tmp_path, names=["clip"])
    x = torch.rand(2, 3, 256, 256)
    got = nets.nets["clip"](x)["clip"]
    xr = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=False)  # the default: no antialias (issue 25)
    xr = (xr - torch.tensor(fn.CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(fn.CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref(pixel_values=xr).image_embeds
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_swav_checkpoint_loading_strict_on_trunk():
    src = models.resnet50()
    sd = {f"module.{k}": v for k, v in src.state_dict().items() if not k.startswith("fc.")}
    sd["module.projection_head.0.weight"] = torch.zeros(3)  # SwAV extras are ignored
    net = models.resnet50()
    fn._load_swav_trunk(net, sd, path=None)
    torch.testing.assert_close(net.conv1.weight, src.conv1.weight)
    del sd["module.layer4.2.conv3.weight"]
    with pytest.raises(WeightsUnavailableError, match="layer4.2.conv3.weight"):
        fn._load_swav_trunk(models.resnet50(), sd, path=None)


# ---------------------------------------------------------------- evaluate_reconstructions


@pytest.mark.slow
def test_evaluate_reconstructions_reports_values_and_unavailable(tmp_path, empty_hub):
    loaded = FeatureNets.load(random_init=True, names=["alexnet", "efficientnet_b1", "clip"],
                              clip_config=_tiny_clip_config())
    missing = FeatureNets.load(weights_dir=tmp_path, names=["inceptionv3", "swav"])
    nets = FeatureNets({**loaded.nets, **missing.nets})
    reals, recons = _images(5, n=3, h=200, w=200), _images(6, n=3, h=200, w=200)

    out = M.evaluate_reconstructions(reals, recons, nets, batch_size=2, progress=False)
    assert list(out) == list(M.METRICS)
    assert out["pixcorr"]["value"] == pytest.approx(M.pixcorr(reals, recons), abs=1e-9)
    assert out["ssim"]["value"] == pytest.approx(M.ssim(reals, recons), abs=1e-9)
    for m in ("alexnet2", "alexnet5", "clip"):
        # 3 images: each per-image score is k/2, so the mean is a multiple of 1/6
        assert 0 <= out[m]["value"] <= 1 and 6 * out[m]["value"] == pytest.approx(round(6 * out[m]["value"]))
    assert out["efficientnet_b1"]["value"] > 0
    assert "inception_v3_google-0cc3c7bd.pth" in out["inceptionv3"]["unavailable"]
    assert "swav_800ep_pretrain.pth.tar" in out["swav"]["unavailable"]
    for m in ("inceptionv3", "swav"):
        assert "--weights-dir" in out[m]["unavailable"] and "value" not in out[m]

    # Independent check of one feature metric: AlexNet(5) two-way from the extractor directly.
    alex = nets.nets["alexnet"]
    f_real = alex(M.prepare(reals))["alexnet5"]
    f_recon = alex(M.prepare(recons))["alexnet5"]
    assert out["alexnet5"]["value"] == pytest.approx(M.two_way_identification(f_real, f_recon))

    same = M.evaluate_reconstructions(reals[:2], reals[:2], nets, progress=False,
                                      metrics=["alexnet2", "efficientnet_b1"])
    assert same == {"alexnet2": {"value": 1.0}, "efficientnet_b1": {"value": pytest.approx(0.0, abs=1e-9)}}


def test_evaluate_reports_not_loaded_nets():
    out = M.evaluate_reconstructions(_images(7, n=2, h=60, w=60), _images(8, n=2, h=60, w=60), FeatureNets(),
                                     progress=False, metrics=["pixcorr", "swav"])
    assert "value" in out["pixcorr"]
    assert "not loaded" in out["swav"]["unavailable"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_on_cuda_match_cpu():
    reals, recons = _images(9, n=3, h=256, w=256), _images(10, n=3, h=256, w=256)
    nets = FeatureNets.load(random_init=True, names=["alexnet"])
    cpu = M.evaluate_reconstructions(reals, recons, nets, progress=False, metrics=["pixcorr", "ssim", "alexnet5"])
    gpu = M.evaluate_reconstructions(reals, recons, nets, device="cuda", progress=False,
                                     metrics=["pixcorr", "ssim", "alexnet5"])
    for m in cpu:
        assert gpu[m]["value"] == pytest.approx(cpu[m]["value"], abs=1e-4)
