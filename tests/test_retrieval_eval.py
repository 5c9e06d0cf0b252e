"""Retrieval evaluation and the Table-1 markdown table."""

import numpy as np
import pytest
import torch
from scipy import stats

from mindeye.errors import MindEyeError
from mindeye.evaluation.tables import markdown_table
from mindeye.metrics.retrieval import (
    BRAIN_TO_IMAGE,
    IMAGE_TO_BRAIN,
    TABLE1_COLUMNS,
    TABLE1_FOOTNOTE,
    confidence_interval,
    cosine_matrix,
    draw_subsets,
    retrieval_top1_among,
    topk_full,
)


def _loop_top1(brain: np.ndarray, images: np.ndarray) -> tuple[float, float]:
    """Per-sample Python loop: strict top-1 (brain_to_image, image_to_brain) by cosine."""
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
    assert out["brain_to_image"] == 1.0 and out["image_to_brain"] == 1.0
    assert out["brain_to_image_ci95"] == (1.0, 1.0)
    assert topk_full(x, x) == {"brain_to_image_top1": 1.0, "image_to_brain_top1": 1.0,
                               "brain_to_image_top5": 1.0, "image_to_brain_top5": 1.0}


def test_independent_random_is_about_one_over_pool():
    g = torch.Generator().manual_seed(0)
    brain, images = torch.randn(600, 32, generator=g), torch.randn(600, 32, generator=g)
    out = retrieval_top1_among(brain, images, pool=300, draws=30, seed=1)
    # 30 draws x 300 trials at p = 1/300: mean ~ 0.0033; allow a wide but still informative band
    assert 0.0 < out["brain_to_image"] < 0.012
    assert 0.0 < out["image_to_brain"] < 0.012
    full = topk_full(brain, images, ks=(1, 5))
    assert full["brain_to_image_top5"] == pytest.approx(5 / 600, abs=0.012)


def test_constructed_case_with_known_answer():
    # 4 samples on orthogonal axes. brain_2 points at image_3 instead of image_2, so:
    # brain_to_image: brains 0, 1, 3 are right, brain 2 is wrong -> 3/4;
    # image_to_brain: image 3's best brain is brain 2 (cos 1 > .8): images 0, 1 right,
    # image 2 has no matching brain (all cos 0, a tie, counted as a miss), image 3 wrong -> 2/4.
    images = torch.eye(4)
    brain = torch.eye(4)
    brain[2] = images[3]
    brain[3] = 0.8 * images[3] + 0.6 * images[0]
    out = retrieval_top1_among(brain, images, pool=4, draws=3)
    assert out["brain_to_image"] == pytest.approx(3 / 4)
    assert out["image_to_brain"] == pytest.approx(2 / 4)
    full = topk_full(brain, images, ks=(1, 2))
    assert full["brain_to_image_top1"] == pytest.approx(3 / 4) and full["image_to_brain_top1"] == pytest.approx(2 / 4)
    # top-2: brain 2 ranks image 2 behind image 3 and tied with 0, 1 -> still a miss; image 3 ranks
    # brain 3 second -> hit
    assert full["brain_to_image_top2"] == pytest.approx(3 / 4) and full["image_to_brain_top2"] == pytest.approx(3 / 4)


def test_matches_loop_on_noisy_embeddings_and_reports_ci():
    rng = np.random.default_rng(3)
    images = rng.normal(size=(40, 16))
    brain = images + 1.5 * rng.normal(size=(40, 16))
    exp_img, exp_brain = _loop_top1(brain, images)
    full = topk_full(brain, images, ks=(1,))
    assert full["brain_to_image_top1"] == pytest.approx(exp_img) and full["image_to_brain_top1"] == pytest.approx(exp_brain)
    assert 0.1 < exp_img < 0.9

    out = retrieval_top1_among(brain, images, pool=10, draws=30, seed=0)
    assert out["pool"] == 10 and out["draws"] == 30 and out["n"] == 40 and "note" not in out
    acc = np.array(out["brain_to_image_per_draw"])
    assert out["brain_to_image"] == pytest.approx(acc.mean())
    # Default CI: the authors' normal approximation with np.std (ddof 0), Retrievals.py.
    lo, hi = stats.norm.interval(0.95, loc=acc.mean(), scale=np.std(acc) / np.sqrt(len(acc)))
    assert out["brain_to_image_ci95"] == pytest.approx((lo, hi)) and out["ci"] == "normal"
    t_out = retrieval_top1_among(brain, images, pool=10, draws=30, seed=0, ci="t")
    lo_t, hi_t = stats.t.interval(0.95, df=29, loc=acc.mean(), scale=stats.sem(acc))
    assert t_out["brain_to_image_ci95"] == pytest.approx((lo_t, hi_t))
    assert hi_t - lo_t > hi - lo  # the two formulas differ (the old default was t)
    # same seed -> same draws; different seed -> (almost surely) different draws
    assert retrieval_top1_among(brain, images, pool=10, draws=30, seed=0) == out
    assert (retrieval_top1_among(brain, images, pool=10, draws=30, seed=1)["brain_to_image_per_draw"]
            != out["brain_to_image_per_draw"])


def test_pool_larger_than_test_set_uses_everything_and_says_so():
    x = torch.randn(12, 5)
    out = retrieval_top1_among(x + 0.01 * torch.randn(12, 5), x, pool=300, draws=4)
    assert out["pool"] == 12
    assert "12" in out["note"] and "300" in out["note"]


def test_half_precision_inputs_and_shape_errors():
    x = torch.randn(30, 3, 10)
    assert topk_full(x.half(), x.half())["brain_to_image_top1"] == 1.0
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
    assert gpu["brain_to_image"] == pytest.approx(cpu["brain_to_image"])
    assert topk_full(brain.cuda(), images.cuda()) == pytest.approx(topk_full(brain, images))


# ---------------------------------------------------------------- tables


def test_markdown_table_layout():
    rows = [
        {"name": "subj01", "pixcorr": {"value": 0.3901}, "ssim": 0.337, "alexnet2": {"value": 0.974},
         "alexnet5": 0.987, "inceptionv3": 0.945, "clip": 0.946, "efficientnet_b1": 0.630,
         "swav": {"unavailable": "SwAV weights not found; use --weights-dir"},
         "image_to_brain": 0.972, "brain_to_image": 0.947},
        {"name": "subj02", "pixcorr": 0.2, "ssim": 0.301, "alexnet2": 0.9, "alexnet5": 0.951, "inceptionv3": 0.901,
         "clip": 0.9, "efficientnet_b1": 1.0, "swav": 0.4, "image_to_brain": 0.97, "brain_to_image": 0.931},
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
    assert lines[8] == f"Retrieval: {TABLE1_FOOTNOTE}"
    assert lines[10] == "— unavailable:"
    assert lines[11] == "- SwAV (subj01): SwAV weights not found; use --weights-dir"
    assert len(lines) == 12


def test_markdown_table_single_row_and_missing_columns():
    text = markdown_table([{"name": "run", "image_to_brain": 0.5}])
    lines = text.splitlines()
    assert lines[2] == "| run | — | — | — | — | — | — | — | — | 50.0% | — |"
    assert lines[4].startswith("Retrieval: Image retrieval = image_to_brain")
    assert len(lines) == 5  # no title, no mean row for a single run, only the direction footnote
    assert "Retrieval:" not in markdown_table([{"name": "run", "pixcorr": 0.5}])


def test_table1_columns_carry_the_authors_direction():
    """Table 1's "Image retrieval" is the authors' fwd: row i of batchwise_cosine_similarity(brain, clip).

    Their helper ends with a transpose, so entry [i, j] = cos(brain_j, clip_i): row i ranks the BRAIN
    samples for IMAGE i. On a case where the two directions differ, the column must hold that one.
    """
    images = torch.eye(4)
    brain = torch.eye(4)
    brain[2] = images[3]
    brain[3] = 0.8 * images[3] + 0.6 * images[0]

    def authors_fwd_top1(brain_emb: torch.Tensor, clip_emb: torch.Tensor) -> float:
        b = torch.nn.functional.normalize(brain_emb, dim=-1)
        c = torch.nn.functional.normalize(clip_emb, dim=-1)
        sim = (b @ c.T).T  # batchwise_cosine_similarity(brain, clip): cosine matrix, then transposed
        hits = [bool((sim[i, i] > torch.cat([sim[i, :i], sim[i, i + 1:]])).all()) for i in range(len(sim))]
        return float(np.mean(hits))

    out = retrieval_top1_among(brain, images, pool=4, draws=2)
    assert out[BRAIN_TO_IMAGE] != out[IMAGE_TO_BRAIN]  # the directions differ here (3/4 vs 2/4)
    assert TABLE1_COLUMNS["Image retrieval"] == IMAGE_TO_BRAIN
    assert out[TABLE1_COLUMNS["Image retrieval"]] == pytest.approx(authors_fwd_top1(brain, images))
    row = markdown_table([{"name": "r", **{k: out[k] for k in (BRAIN_TO_IMAGE, IMAGE_TO_BRAIN)}}]).splitlines()[2]
    assert row.endswith("| 50.0% | 75.0% |")  # Image retrieval (authors' fwd) 2/4, Brain retrieval 3/4


def test_confidence_interval_methods_and_bad_input():
    acc = np.array([0.5, 0.6, 0.7, 0.55])
    lo, hi = confidence_interval(acc, "normal")
    half = 1.959963984540054 * acc.std(ddof=0) / 2
    assert (lo, hi) == pytest.approx((acc.mean() - half, acc.mean() + half))
    with pytest.raises(MindEyeError, match="eval.ci must be one of normal, t"):
        confidence_interval(acc, "wald")
    with pytest.raises(MindEyeError, match="eval.draw_mode must be one of uniform, contiguous"):
        retrieval_top1_among(torch.randn(5, 3), torch.randn(5, 3), pool=5, draws=2, draw_mode="random")


def test_contiguous_draws_are_consecutive_runs():
    idx = draw_subsets(10, 4, draws=50, seed=0, mode="contiguous")
    assert idx.shape == (50, 4)
    assert ((idx[:, 1:] - idx[:, :-1]) % 10 == 1).all()  # consecutive, wrapping round the end
    assert len(set(idx[:, 0].tolist())) > 1
    uniform = draw_subsets(10, 4, draws=50, seed=0)
    assert not ((uniform[:, 1:] - uniform[:, :-1]) % 10 == 1).all()
    assert all(len(set(r.tolist())) == 4 for r in uniform)
