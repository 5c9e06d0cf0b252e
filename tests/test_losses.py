"""Contrastive losses vs direct loop implementations of the paper's Eq. 1-3 (reference batch-mean scaling)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from mindeye.training.losses import (
    BIMIXCO_TEMPERATURE,
    bimixco_loss,
    clip_loss,
    info_nce,
    mix_like,
    mixco_mix,
    mixco_nce,
    mixco_targets,
    soft_clip_loss,
    soft_clip_temperature,
)

# ---------------------------------------------------------------------------------------------------------
# Independent references: explicit loops in float64 numpy. The paper sums over the batch; the reference (and
# our functions) average, and bidirectional losses average their two directions -> divide by N (and by 2).


def _unit(x: torch.Tensor) -> np.ndarray:
    a = x.detach().double().numpy().reshape(x.shape[0], -1)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _log_softmax_entry(scores: list[float], k: int) -> float:
    top = max(scores)
    return scores[k] - top - math.log(sum(math.exp(s - top) for s in scores))


def ref_info_nce(p: torch.Tensor, t: torch.Tensor, tau: float) -> float:
    P, T = _unit(p), _unit(t)
    n = len(P)
    total = 0.0
    for i in range(n):
        row = [float(P[i] @ T[m]) / tau for m in range(n)]
        total -= _log_softmax_entry(row, i)
    return total / n


def ref_clip(p: torch.Tensor, t: torch.Tensor, tau: float) -> float:
    P, T = _unit(p), _unit(t)
    n = len(P)
    rows = cols = 0.0
    for i in range(n):
        rows -= _log_softmax_entry([float(P[i] @ T[m]) / tau for m in range(n)], i)
    for j in range(n):
        cols -= _log_softmax_entry([float(P[m] @ T[j]) / tau for m in range(n)], j)
    return (rows + cols) / (2 * n)


def ref_bimixco(p_mix: torch.Tensor, t: torch.Tensor, k: list[int], lam: list[float], tau: float,
                bidirectional: bool = True) -> float:  # fmt: skip
    """Eq. 2 with p* (prediction of the mixed input) in every term, as in the reference."""
    P, T = _unit(p_mix), _unit(t)
    n = len(P)
    first = 0.0
    for i in range(n):
        row = [float(P[i] @ T[m]) / tau for m in range(n)]
        first -= lam[i] * _log_softmax_entry(row, i) + (1 - lam[i]) * _log_softmax_entry(row, k[i])
    if not bidirectional:
        return first / n
    second = 0.0
    for j in range(n):
        col = [float(P[m] @ T[j]) / tau for m in range(n)]
        second -= lam[j] * _log_softmax_entry(col, j)
        for ell in range(n):
            if k[ell] == j:
                second -= (1 - lam[ell]) * _log_softmax_entry(col, ell)
    return (first + second) / (2 * n)


def ref_bimixco_assign(p_mix: torch.Tensor, t: torch.Tensor, k: list[int], lam: list[float], tau: float,
                       bidirectional: bool = True) -> float:  # fmt: skip
    """The authors' utils.mixco_nce: labels probs = diag(lam), then probs[i, k_i] = 1 - lam_i (assignment)."""
    P, T = _unit(p_mix), _unit(t)
    n = len(P)
    probs = [[lam[i] if i == m else 0.0 for m in range(n)] for i in range(n)]
    for i in range(n):
        probs[i][k[i]] = 1 - lam[i]
    first = -sum(probs[i][m] * _log_softmax_entry([float(P[i] @ T[c]) / tau for c in range(n)], m)
                 for i in range(n) for m in range(n)) / n
    if not bidirectional:
        return first
    second = -sum(probs[m][j] * _log_softmax_entry([float(P[r] @ T[j]) / tau for r in range(n)], m)
                  for j in range(n) for m in range(n)) / n
    return (first + second) / 2


def ref_soft_clip(p: torch.Tensor, t: torch.Tensor, tau: float) -> float:
    """Eq. 3 plus its bidirectional component (transposed Brain-CLIP matrix, same CLIP-CLIP soft labels)."""
    P, T = _unit(p), _unit(t)
    n = len(P)

    def soft(i: int, j: int) -> float:  # exp(t_i.t_j/tau) / sum_m exp(t_i.t_m/tau)
        return math.exp(_log_softmax_entry([float(T[i] @ T[m]) / tau for m in range(n)], j))

    rows = cols = 0.0
    for i in range(n):
        row = [float(P[i] @ T[m]) / tau for m in range(n)]
        for j in range(n):
            rows -= soft(i, j) * _log_softmax_entry(row, j)
    for j in range(n):
        col = [float(P[m] @ T[j]) / tau for m in range(n)]
        for i in range(n):
            cols -= soft(j, i) * _log_softmax_entry(col, i)
    return (rows + cols) / (2 * n)


# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    # (B, tokens, dim) like the 257 x 768 targets, tiny; targets correlated with preds so losses are varied.
    t = torch.randn(6, 3, 5, generator=g)
    p = t + 0.8 * torch.randn(6, 3, 5, generator=g)
    return p, t


@pytest.mark.parametrize("tau", [0.5, 0.05, BIMIXCO_TEMPERATURE])
def test_info_nce_and_clip_match_loops(batch, tau: float) -> None:
    p, t = batch
    assert info_nce(p, t, tau).item() == pytest.approx(ref_info_nce(p, t, tau), rel=1e-4)
    assert clip_loss(p, t, tau).item() == pytest.approx(ref_clip(p, t, tau), rel=1e-4)


@pytest.mark.parametrize("tau", [0.5, 0.05, BIMIXCO_TEMPERATURE])
def test_bimixco_and_mixco_nce_match_eq2(batch, tau: float) -> None:
    p, t = batch
    k = [2, 0, 1, 3, 5, 4]  # includes k_3 = 3: a sample mixed with itself
    lam = [0.3, 1.0, 0.9, 0.25, 0.05, 1.0]
    perm, lambdas = torch.tensor(k), torch.tensor(lam)
    # self_label="add" is the paper's Eq. 2; the default "assign" is the authors' code.
    assert bimixco_loss(p, t, perm, lambdas, tau, self_label="add").item() == pytest.approx(
        ref_bimixco(p, t, k, lam, tau), rel=1e-4
    )
    assert mixco_nce(p, t, perm, lambdas, tau, self_label="add").item() == pytest.approx(
        ref_bimixco(p, t, k, lam, tau, bidirectional=False), rel=1e-4
    )
    assert bimixco_loss(p, t, perm, lambdas, tau).item() == pytest.approx(
        ref_bimixco_assign(p, t, k, lam, tau), rel=1e-4
    )
    assert mixco_nce(p, t, perm, lambdas, tau).item() == pytest.approx(
        ref_bimixco_assign(p, t, k, lam, tau, bidirectional=False), rel=1e-4
    )
    # The self-pairing (k_3 = 3, lambda .25) makes the two label matrices differ there.
    assert mixco_targets(perm, lambdas)[3, 3] == pytest.approx(0.75)
    assert mixco_targets(perm, lambdas, self_label="add")[3, 3] == pytest.approx(1.0)


@pytest.mark.parametrize("tau", [0.5, 0.05, 0.004])
def test_soft_clip_matches_eq3(batch, tau: float) -> None:
    p, t = batch
    assert soft_clip_loss(p, t, tau).item() == pytest.approx(ref_soft_clip(p, t, tau), rel=1e-4)


def test_bimixco_with_unit_lambdas_equals_clip_loss(batch) -> None:
    p, t = batch
    perm = torch.tensor([3, 2, 1, 0, 5, 4])
    for tau in (0.1, BIMIXCO_TEMPERATURE):
        torch.testing.assert_close(bimixco_loss(p, t, perm, torch.ones(6), tau), clip_loss(p, t, tau))
        torch.testing.assert_close(mixco_nce(p, t, perm, torch.ones(6), tau), info_nce(p, t, tau))


def test_mixco_targets_rows_sum_to_one_including_self_mix() -> None:
    perm = torch.tensor([1, 0, 2, 3])
    lam = torch.tensor([0.3, 0.6, 0.2, 1.0])
    y = mixco_targets(perm, lam, self_label="add")
    expected = torch.tensor([[0.3, 0.7, 0, 0], [0.4, 0.6, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    torch.testing.assert_close(y, expected)


def test_mixco_targets_assign_overwrites_self_pairings_like_the_authors() -> None:
    """utils.mixco_nce: probs = diag(betas); probs[i, perm] = 1 - betas -> a self-pairing keeps 1 - lambda."""
    perm = torch.tensor([1, 0, 2, 3])
    lam = torch.tensor([0.3, 0.6, 0.2, 1.0])
    y = mixco_targets(perm, lam)  # default: assign
    expected = torch.tensor([[0.3, 0.7, 0, 0], [0.4, 0.6, 0, 0], [0, 0, 0.8, 0], [0, 0, 0, 0.0]])
    torch.testing.assert_close(y, expected)


def test_losses_normalise_inputs_themselves(batch) -> None:
    p, t = batch
    for fn in (info_nce, clip_loss, soft_clip_loss):
        torch.testing.assert_close(fn(3.7 * p, 0.2 * t, 0.05), fn(p, t, 0.05))


@pytest.mark.parametrize("name", ["info_nce", "clip", "bimixco", "mixco_nce", "soft_clip"])
def test_gradients_finite_nonzero_and_descent_lowers_loss(batch, name: str) -> None:
    p0, t = batch
    perm, lam = torch.tensor([2, 0, 1, 3, 5, 4]), torch.tensor([0.3, 1.0, 0.9, 0.25, 0.05, 1.0])
    fns = {
        "info_nce": lambda p: info_nce(p, t, 0.1),
        "clip": lambda p: clip_loss(p, t, 0.1),
        "bimixco": lambda p: bimixco_loss(p, t, perm, lam, 0.1),
        "mixco_nce": lambda p: mixco_nce(p, t, perm, lam, 0.1),
        "soft_clip": lambda p: soft_clip_loss(p, t, 0.1),
    }
    fn = fns[name]
    p = p0.clone().requires_grad_(True)
    loss = fn(p)
    loss.backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    with torch.no_grad():
        stepped = p - 0.05 * p.grad / p.grad.norm()
    assert fn(stepped).item() < loss.item()


@pytest.mark.parametrize("tau", [0.1, 0.006])
def test_aligned_predictions_beat_random(tau: float) -> None:
    g = torch.Generator().manual_seed(1)
    t = torch.randn(16, 4, 8, generator=g)
    rand = torch.randn(16, 4, 8, generator=g)
    perm, lam = torch.randperm(16, generator=g), torch.rand(16, generator=g)
    for fn in (info_nce, clip_loss, soft_clip_loss):
        assert fn(t, t, tau) < fn(rand, t, tau)
    # For MixCo the aligned prediction for sample i is the mixed target.
    mixed_t = mix_like(t, perm, lam)
    assert bimixco_loss(mixed_t, t, perm, lam, tau) < bimixco_loss(rand, t, perm, lam, tau)


def test_low_precision_inputs_computed_in_float32(batch) -> None:
    p, t = batch
    out = soft_clip_loss(p.bfloat16(), t.bfloat16(), 0.004)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(soft_clip_loss(p, t, 0.004).item(), rel=0.05)


# --- MixCo augmentation -----------------------------------------------------------------------------------


def test_mixco_mix_semantics() -> None:
    g = torch.Generator().manual_seed(0)
    voxels = torch.randn(64, 10, generator=g)
    before = voxels.clone()
    mixed, perm, lam = mixco_mix(voxels, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(voxels, before)  # input untouched
    assert sorted(perm.tolist()) == list(range(64))
    assert mixed.shape == voxels.shape and lam.shape == (64,)
    assert ((lam >= 0) & (lam <= 1)).all()
    unmixed = lam == 1
    assert torch.equal(mixed[unmixed], voxels[unmixed])  # exactly, not approximately
    for i in torch.nonzero(~unmixed).flatten().tolist():
        expected = lam[i] * voxels[i] + (1 - lam[i]) * voxels[perm[i]]
        torch.testing.assert_close(mixed[i], expected)


def test_mixco_mix_reproducible_with_generator() -> None:
    voxels = torch.randn(32, 4)
    a = mixco_mix(voxels, generator=torch.Generator().manual_seed(3))
    b = mixco_mix(voxels, generator=torch.Generator().manual_seed(3))
    c = mixco_mix(voxels, generator=torch.Generator().manual_seed(4))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[2], c[2])


@pytest.mark.parametrize("use_generator", [True, False])
def test_mixco_mix_statistics(use_generator: bool) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0) if use_generator else None
    lam = mixco_mix(torch.zeros(20000, 1), beta=0.15, prob=0.5, generator=gen)[2].double()
    # Half the samples keep lam = 1; the others draw Beta(0.15, 0.15) (mean 0.5, U-shaped). A draw within
    # float32 rounding of 1 is indistinguishable from "unmixed", so test statistics immune to that.
    assert abs((lam < 0.5).double().mean().item() - 0.25) < 0.015  # prob * P(Beta < 0.5) = 0.5 * 0.5
    assert abs(lam.mean().item() - 0.75) < 0.012  # 0.5 * 1 + 0.5 * 0.5
    low = lam[lam < 0.5]
    expected_u = scipy.stats.beta(0.15, 0.15).cdf(0.1) / 0.5  # share of the lower half below 0.1
    assert abs((low < 0.1).double().mean().item() - expected_u) < 0.03 and expected_u > 0.6
    _, _, none = mixco_mix(torch.zeros(100, 1), prob=0.0, generator=gen)
    assert torch.equal(none, torch.ones(100))


# --- temperatures -----------------------------------------------------------------------------------------


def test_soft_clip_temperature_schedule() -> None:
    assert soft_clip_temperature(0.0) == pytest.approx(0.004)
    assert soft_clip_temperature(1.0) == pytest.approx(0.0075)
    assert soft_clip_temperature(0.5) == pytest.approx((0.004 + 0.0075) / 2)
    assert soft_clip_temperature(-1) == pytest.approx(0.004) and soft_clip_temperature(2) == pytest.approx(
        0.0075
    )
    values = [soft_clip_temperature(k / 159) for k in range(160)]  # 160 SoftCLIP epochs of 240
    assert all(a <= b for a, b in zip(values, values[1:]))
    # Cosine shape: a quarter of the way the temperature has moved (1 - cos(pi/4)) / 2 of the range.
    assert soft_clip_temperature(0.25) == pytest.approx(0.004 + 3.5e-3 * (1 - math.cos(math.pi / 4)) / 2)
    assert BIMIXCO_TEMPERATURE == 0.006


# --- GPU: no host synchronisation in the training-loop path -----------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_sync_on_cuda() -> None:
    dev = torch.device("cuda")
    voxels, t = torch.randn(32, 100, device=dev), torch.randn(32, 257, 768, device=dev)
    preds = torch.randn(32, 257, 768, device=dev, requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _, perm, lam = mixco_mix(voxels)
        loss = bimixco_loss(preds, t, perm, lam, BIMIXCO_TEMPERATURE) + soft_clip_loss(preds, t, 0.004)
        loss = (
            loss
            + clip_loss(preds, t, 0.006)
            + info_nce(preds, t, 0.006)
            + mixco_nce(preds, t, perm, lam, 0.006)
        )
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss).item()
