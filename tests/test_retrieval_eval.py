"""Retrieval evaluation and the Table-1 markdown table."""

import numpy as np
import pytest
import torch
from scipy import stats

from mindeye.errors import MindEyeError
from mindeye.evaluation.retrieval import cosine_matrix, retrieval_top1_among, topk_full
from mindeye.evaluation.tables import markdown_table


def _loop_top1(brain: np.ndarray, images: np.ndarray) -> tuple[float, float]:
    """Per-sample Python loop: strict top-1 in both directions by cosine."""
    b = brain.reshape(len(brain), -1)
    im = images.reshape(len(images), -1)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    im = im / np.linalg.norm(im, axis=1, keepdims=True)
    n = len(b)
    img_hits = [all(b[i] @ im[i] > b[i] @ im[j] for j in range(n) if j != i) for i in range(n)]
    brain_hits = [all(im[j] @ b[j] > im[j] @ b[i] for i in range(n) if i != j) for j in range(n)]
    return float(np.mean(img_hits)), float(np.mean(brain_hits))


def test_identical_embeddings_are_perfect():
    x = torch.randn(50, 4, 8)
    out = retrieval_top1_among(x, x, pool=20, draws=5)
    assert out["image_retrieval"] == 1.0 and out["brain_retrieval"] == 1.0
    assert out["image_ci95"] == (1.0, 1.0)
    assert topk_full(x, x) == {"image_top1": 1.0, "brain_top1": 1.0, "image_top5": 1.0, "brain_top5": 1.0}


def test_independent_random_is_about_one_over_pool():
    g = torch.Generator().manual_seed(0)
    brain, images = torch.randn(600, 32, generator=g), torch.randn(600, 32, generator=g)
    out = retrieval_top1_among(brain, images, pool=300, draws=30, seed=1)
    # 30 draws x 300 trials at p = 1/300: mean ~ 0.0033; allow a wide but still informative band
    assert 0.0 < out["image_retrieval"] < 0.012
    assert 0.0 < out["brain_retrieval"] < 0.012
    full = topk_full(brain, images, ks=(1, 5))
    assert full["image_top5"] == pytest.approx(5 / 600, abs=0.012)


def test_constructed_case_with_known_answer():
    # 4 samples on orthogonal axes. brain_2 points at image_3 instead of image_2, so:
    # image retrieval (brain -> image): brains 0, 1, 3 are right, brain 2 is wrong -> 3/4;
    # brain retrieval (image -> brain): image 3's best brain is brain 2 (cos 1 > .8): images 0, 1 right,
    # image 2 has no matching brain (all cos 0, a tie, counted as a miss), image 3 wrong -> 2/4.
    images = torch.eye(4)
    brain = torch.eye(4)
    brain[2] = images[3]
    brain[3] = 0.8 * images[3] + 0.6 * images[0]
    out = retrieval_top1_among(brain, images, pool=4, draws=3)
    assert out["image_retrieval"] == pytest.approx(3 / 4)
    assert out["brain_retrieval"] == pytest.approx(2 / 4)
    full = topk_full(brain, images, ks=(1, 2))
    assert full["image_top1"] == pytest.approx(3 / 4) and full["brain_top1"] == pytest.approx(2 / 4)
    # top-2: brain 2 ranks image 2 behind image 3 and tied with 0, 1 -> still a miss; image 3 ranks
    # brain 3 second -> hit
    assert full["image_top2"] == pytest.approx(3 / 4) and full["brain_top2"] == pytest.approx(3 / 4)


def test_matches_loop_on_noisy_embeddings_and_reports_ci():
    rng = np.random.default_rng(3)
    images = rng.normal(size=(40, 16))
    brain = images + 1.5 * rng.normal(size=(40, 16))
    exp_img, exp_brain = _loop_top1(brain, images)
    full = topk_full(brain, images, ks=(1,))
    assert full["image_top1"] == pytest.approx(exp_img) and full["brain_top1"] == pytest.approx(exp_brain)
    assert 0.1 < exp_img < 0.9

    out = retrieval_top1_among(brain, images, pool=10, draws=30, seed=0)
    assert out["pool"] == 10 and out["draws"] == 30 and out["n"] == 40 and "note" not in out
    acc = np.array(out["image_per_draw"])
    assert out["image_retrieval"] == pytest.approx(acc.mean())
    lo, hi = stats.t.interval(0.95, df=29, loc=acc.mean(), scale=stats.sem(acc))
    assert out["image_ci95"] == pytest.approx((lo, hi))
    # same seed -> same draws; different seed -> (almost surely) different draws
    assert retrieval_top1_among(brain, images, pool=10, draws=30, seed=0) == out
    assert retrieval_top1_among(brain, images, pool=10, draws=30, seed=1)["image_per_draw"] != out["image_per_draw"]


def test_pool_larger_than_test_set_uses_everything_and_says_so():
    x = torch.randn(12, 5)
    out = retrieval_top1_among(x + 0.01 * torch.randn(12, 5), x, pool=300, draws=4)
    assert out["pool"] == 12
    assert "12" in out["note"] and "300" in out["note"]


def test_half_precision_inputs_and_shape_errors():
    x = torch.randn(30, 3, 10)
    assert topk_full(x.half(), x.half())["image_top1"] == 1.0
    with pytest.raises(MindEyeError, match="pair up"):
        cosine_matrix(torch.randn(3, 4), torch.randn(4, 4))
    with pytest.raises(MindEyeError, match="sizes differ"):
        cosine_matrix(torch.randn(3, 4), torch.randn(3, 5))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_retrieval_on_cuda_matches_cpu():
    images = torch.randn(100, 2, 16)
    brain = images + torch.randn(100, 2, 16)
    cpu = retrieval_top1_among(brain, images, pool=50, draws=5)
    gpu = retrieval_top1_among(brain.cuda(), images.cuda(), pool=50, draws=5)
    assert gpu["image_retrieval"] == pytest.approx(cpu["image_retrieval"])
    assert topk_full(brain.cuda(), images.cuda()) == pytest.approx(topk_full(brain, images))


# ---------------------------------------------------------------- tables


def test_markdown_table_layout():
    rows = [
        {"name": "subj01", "pixcorr": {"value": 0.3901}, "ssim": 0.337, "alexnet2": {"value": 0.974},
         "alexnet5": 0.987, "inceptionv3": 0.945, "clip": 0.946, "efficientnet_b1": 0.630,
         "swav": {"unavailable": "SwAV weights not found; use --weights-dir"},
         "image_retrieval": 0.972, "brain_retrieval": 0.947},
        {"name": "subj02", "pixcorr": 0.2, "ssim": 0.301, "alexnet2": 0.9, "alexnet5": 0.951, "inceptionv3": 0.901,
         "clip": 0.9, "efficientnet_b1": 1.0, "swav": 0.4, "image_retrieval": 0.97, "brain_retrieval": 0.931},
    ]
    text = markdown_table(rows, title="Table 1")
    lines = text.splitlines()
    assert lines[0] == "### Table 1"
    assert lines[2] == ("| Method | PixCorr ↑ | SSIM ↑ | Alex(2) ↑ | Alex(5) ↑ | Incep ↑ | CLIP ↑ | Eff ↓ | SwAV ↓ "
                        "| Image retrieval ↑ | Brain retrieval ↑ |")
    assert lines[3] == "|---|:-:|:-:|:-:|:-:|:-:|:-:|:-:|:-:|:-:|:-:|"
    assert lines[4] == "| subj01 | .390 | .337 | 97.4% | 98.7% | 94.5% | 94.6% | .630 | — | 97.2% | 94.7% |"
    assert lines[5] == "| subj02 | .200 | .301 | 90.0% | 95.1% | 90.1% | 90.0% | 1.000 | .400 | 97.0% | 93.1% |"
    # mean row: SwAV missing in one row -> no mean for it
    assert lines[6] == "| **Mean** | .295 | .319 | 93.7% | 96.9% | 92.3% | 92.3% | .815 | — | 97.1% | 93.9% |"
    assert lines[8] == "— unavailable:"
    assert lines[9] == "- SwAV (subj01): SwAV weights not found; use --weights-dir"
    assert len(lines) == 10


def test_markdown_table_single_row_and_missing_columns():
    text = markdown_table([{"name": "run", "image_retrieval": 0.5}])
    lines = text.splitlines()
    assert lines[2] == "| run | — | — | — | — | — | — | — | — | 50.0% | — |"
    assert len(lines) == 3  # no title, no mean row for a single run, no footnote
