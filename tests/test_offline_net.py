"""EfficientNet-Lite0, the offline substitute network (extra mindeye[offline]): weights, metrics, encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mindeye.encoders import effnet_lite
from mindeye.errors import WeightsUnavailableError
from mindeye.evaluation.offline_net import OFFLINE_METRICS, offline_markdown, offline_metrics

MISSING = effnet_lite.available()
needs_extra = pytest.mark.skipif(MISSING is not None, reason=f"extra not installed: {MISSING}")
CAT_CLASSES = range(281, 286)  # ImageNet tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def net():
    if MISSING is not None:
        pytest.skip(f"extra not installed: {MISSING}")
    return effnet_lite.load_effnet_lite0("cpu")


def _chw(images: np.ndarray, size: int = 224) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)


@needs_extra
def test_known_photos_classify_as_their_imagenet_class(net):
    import skimage.data

    photos = [skimage.data.chelsea()[:, 75:375], skimage.data.coffee()[:, 100:500]]  # centre squares
    logits = net.logits(torch.cat([_chw(p[None]) for p in photos]))
    top = logits.argmax(1).tolist()
    assert top[0] in CAT_CLASSES  # the cat photo
    assert top[1] == 967  # espresso
    assert net.feature_map(_chw(skimage.data.chelsea()[None])).shape == (1, 1280, 7, 7)
    assert sum(p.numel() for p in net.parameters()) == 4_652_008


def test_weights_load_without_unpickling(monkeypatch, tmp_path):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    if MISSING is not None:
        pytest.skip(f"extra not installed: {MISSING}")
    monkeypatch.setattr(torch, "load", spy)
    effnet_lite.load_effnet_lite0("cpu")
    assert calls == [True]
    # a file that is not the Lite0 state dict is refused with the fix
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    monkeypatch.setattr(effnet_lite, "weights_path", lambda: bad)
    with pytest.raises(WeightsUnavailableError, match="does not match EfficientNet-Lite0"):
        effnet_lite.load_effnet_lite0("cpu")


def test_metrics_without_the_extra_are_unavailable(monkeypatch):
    def missing():
        raise WeightsUnavailableError(f"EfficientNet-Lite0 weights are not installed: {effnet_lite.INSTALL_HINT}")

    monkeypatch.setattr(effnet_lite, "weights_path", missing)
    imgs = np.zeros((3, 32, 32, 3), np.uint8)
    out = offline_metrics(imgs, imgs, progress=False)
    assert set(out) == set(OFFLINE_METRICS)
    assert all("mindeye[offline]" in v["unavailable"] for v in out.values())
    md = offline_markdown([{"name": "m", "offline_metrics": out}])
    assert "| m | — | — |" in md and "NOT a paper metric" in md


@needs_extra
def test_two_way_and_distance_on_real_features(net):
    from mindeye.data.scenes import generate_scenes
    from mindeye.evaluation.metrics import correlation_distance, prepare, two_way_identification

    images, _, _ = generate_scenes(0, range(8), 64)
    same = offline_metrics(images, images, progress=False, net=net)
    assert same["effnet_lite0_2way"]["value"] == 1.0
    assert same["effnet_lite0_distance"]["value"] == pytest.approx(0.0, abs=1e-5)
    shuffled = offline_metrics(images, images[::-1], progress=False, net=net)
    # independently: the pooled 224-px features of the 256-px protocol images
    feats = [net.pooled(torch.nn.functional.interpolate(prepare(x), size=(224, 224), mode="bilinear",
                                                         antialias=True)) for x in (images, images[::-1])]
    assert shuffled["effnet_lite0_2way"]["value"] == pytest.approx(two_way_identification(*feats), abs=1e-9)
    assert shuffled["effnet_lite0_distance"]["value"] == pytest.approx(correlation_distance(*feats), abs=1e-6)
    assert shuffled["effnet_lite0_distance"]["value"] > 0.05


@needs_extra
def test_offline_floors_from_the_same_features(net):
    """Chance, mean image, shuffled brain and ceiling of the offline metrics, each against the metric run on the
    re-paired images themselves (an independent feature pass)."""
    from mindeye.data.scenes import generate_scenes
    from mindeye.evaluation import floors as fl

    images, _, _ = generate_scenes(0, range(10), 64)
    recons, _, _ = generate_scenes(1, range(10), 64)  # other scenes stand in for reconstructions
    ceiling = images[:, ::-1].copy()  # upside down: close to, not equal to, the true images
    mean_image = torch.from_numpy(images.mean(0)).permute(2, 0, 1).float() / 255
    out = offline_metrics(images, recons, progress=False, net=net,
                          floors={"mean_image": mean_image, "ceiling": ceiling, "seeds": [0, 1]})
    f = out["floors"]
    assert f["model"]["effnet_lite0_distance"] == pytest.approx(out["effnet_lite0_distance"]["value"])
    assert f["chance"]["effnet_lite0_2way"] == 0.5
    deranged = offline_metrics(images, images[fl.derangement(10, 0)], progress=False, net=net)
    assert f["chance"]["effnet_lite0_distance"] == pytest.approx(deranged["effnet_lite0_distance"]["value"], abs=1e-6)
    shuffled = [offline_metrics(images, recons[fl.derangement(10, s)], progress=False, net=net) for s in (0, 1)]
    for key in OFFLINE_METRICS:
        assert f["shuffled_brain"]["mean"][key] == pytest.approx(np.mean([x[key]["value"] for x in shuffled]), abs=1e-6)
    ceil = offline_metrics(images, ceiling, progress=False, net=net)
    assert f["ceiling"]["effnet_lite0_2way"] == pytest.approx(ceil["effnet_lite0_2way"]["value"])
    mean_uint8 = np.repeat((mean_image.permute(1, 2, 0).numpy() * 255)[None], 10, 0)
    mean_row = offline_metrics(images, mean_uint8.astype(np.float32) / 255, progress=False, net=net)
    assert f["mean_train_image"]["effnet_lite0_distance"] == pytest.approx(
        mean_row["effnet_lite0_distance"]["value"], abs=1e-4)


@needs_extra
def test_encoder_and_semantic_neighbours_on_simulated_scenes(net):
    """In EfficientNet-Lite0 space an image's nearest other image shares its main object's category more
    often than in the stand-in space (the scene attributes are ground truth no encoder sees)."""
    from mindeye.data.scenes import generate_scenes
    from mindeye.encoders import encoder_fingerprint, get_encoder

    images, scenes, _ = generate_scenes(0, range(160), 64)
    main = np.array([max(s["objects"], key=lambda o: o["size"])["category"] for s in scenes])
    enc = get_encoder("effnet-lite0-pooled")
    assert enc.fingerprint == encoder_fingerprint("effnet-lite0-pooled")
    rates = {}
    for name in ("effnet-lite0-pooled", "standin-clip-final"):
        t = (enc if name.startswith("effnet") else get_encoder(name)).encode(images)
        if name.startswith("effnet"):
            assert t.shape == (160, 1280) and torch.allclose(t.norm(dim=1), torch.ones(160), atol=1e-5)
        t = torch.nn.functional.normalize(t.flatten(1), dim=1)
        sim = t @ t.T
        sim.fill_diagonal_(-2)
        rates[name] = float((main == main[sim.argmax(1).numpy()]).mean())
    chance = float(np.mean([(main == c).mean() for c in main]))
    assert rates["effnet-lite0-pooled"] > rates["standin-clip-final"] + 0.08, rates
    assert rates["effnet-lite0-pooled"] > 2 * chance, (rates, chance)
    with pytest.raises(WeightsUnavailableError, match="takes no --weights"):
        get_encoder("effnet-lite0-pooled", weights="x")


def test_bf16_autocast_on_a_native_bf16_cpu_keeps_the_features(net):
    """The target encoder's bf16 path (chosen where the CPU runs bf16 natively) against fp32 on simulated
    scenes. Measured (64 scenes, 128 px): cosine to fp32 min .988, median .997, while two different scenes
    are at most .845 apart; every image identifies itself across the two; 92% same nearest neighbour."""
    from mindeye.data.scenes import generate_scenes
    from mindeye.encoders import get_encoder

    images, _, _ = generate_scenes(1, range(32), 128)
    fp32 = get_encoder("effnet-lite0-pooled", dtype=torch.float32)
    assert not fp32.bf16_autocast
    bf16 = effnet_lite.EffNetLite0Encoder(fp32.model, fp32.weights_id, bf16_autocast=True)
    a, b = fp32.encode(images), bf16.encode(images)
    cos = torch.nn.functional.cosine_similarity(a, b)
    assert not torch.equal(a, b)  # really computed another way
    assert cos.min() > 0.98 and cos.median() > 0.995, cos
    between = (a @ a.T)[~torch.eye(len(a), dtype=torch.bool)]
    assert cos.min() > between.max() + 0.05  # the bf16 error is far below the distance between images
    assert torch.equal((a @ b.T).argmax(1), torch.arange(len(a)))  # each image finds itself
    assert get_encoder("effnet-lite0-pooled").bf16_autocast == effnet_lite.cpu_bf16_is_native("cpu")
