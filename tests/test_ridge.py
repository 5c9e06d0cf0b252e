"""Closed-form ridge baseline vs numpy's solve of the primal problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mindeye.errors import MindEyeError
from mindeye.models.ridge import RidgeRegression


def make_data(n: int, v: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, v)) * rng.uniform(0.5, 3, size=v) + rng.normal(size=v)
    w = rng.normal(size=(v, k))
    y = x @ w + 2.0 * rng.normal(size=(n, k)) + 5.0
    return torch.from_numpy(x).float(), torch.from_numpy(y).float()


def numpy_ridge(
    x: np.ndarray, y: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Primal ridge on standardised inputs and centred targets: (Xs^T Xs + alpha I) W = Xs^T Yc."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    mean, std = x.mean(0), x.std(0)
    std[std == 0] = 1
    xs = (x - mean) / std
    w = np.linalg.solve(xs.T @ xs + alpha * np.eye(x.shape[1]), xs.T @ (y - y.mean(0)))
    return w, y.mean(0), mean, std


@pytest.mark.parametrize(("n", "v"), [(60, 25), (20, 50)], ids=["primal", "dual"])
def test_matches_numpy_primal_solution(n: int, v: int) -> None:
    x, y = make_data(n, v, 7)
    model = RidgeRegression(v, 7).fit(x, y, alpha=3.0, chunk_size=3)  # chunking exercised (7 = 3 + 3 + 1)
    w, b, mean, std = numpy_ridge(x.numpy(), y.numpy(), 3.0)
    np.testing.assert_allclose(model.weight.numpy(), w.T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.bias.numpy(), b, rtol=1e-5)
    np.testing.assert_allclose(model.input_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.input_std.numpy(), std, rtol=1e-5)
    x_new = torch.randn(4, v)
    expected = ((x_new.double().numpy() - mean) / std) @ w + b
    np.testing.assert_allclose(model.predict(x_new).numpy(), expected, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(model(x_new), model.predict(x_new))
    assert model.alpha.item() == 3.0


def test_constant_voxel_and_no_standardisation() -> None:
    x, y = make_data(30, 10, 3)
    x[:, 4] = 7.0  # a constant voxel must not produce NaNs
    model = RidgeRegression(10, 3).fit(x, y, alpha=1.0)
    assert torch.isfinite(model.weight).all() and model.weight[:, 4].abs().max() == 0
    raw = RidgeRegression(10, 3, standardize=False).fit(x, y, alpha=1.0)
    xd, yd = x.double().numpy(), y.double().numpy()
    # No scaling: inputs only centred, targets centred, intercept = target mean.
    xc = xd - xd.mean(0)
    w = np.linalg.solve(xc.T @ xc + np.eye(10), xc.T @ (yd - yd.mean(0)))
    np.testing.assert_allclose(raw.weight.numpy(), w.T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(raw.predict(x).numpy(), xc @ w + yd.mean(0), rtol=1e-4, atol=1e-3)


def test_alpha_selection_on_held_out_fold() -> None:
    x, y = make_data(80, 40, 5, seed=1)
    alphas = [0.01, 1.0, 30.0, 1000.0, 1e5]
    model = RidgeRegression(40, 5).fit(
        x, y, alpha=alphas, val_fraction=0.25, generator=torch.Generator().manual_seed(0)
    )
    sel = model.selection
    val = sel["val_index"].numpy()
    fit = np.setdiff1d(np.arange(80), val)
    assert len(val) == 20
    xn, yn = x.numpy().astype(np.float64), y.numpy().astype(np.float64)
    mses = []
    for a in alphas:  # independent: refit on the fit fold with numpy, score on the held-out fold
        w, b, mean, std = numpy_ridge(xn[fit], yn[fit], a)
        pred = (xn[val] - mean) / std @ w + b
        mses.append(np.mean((pred - yn[val]) ** 2))
    np.testing.assert_allclose(sel["val_mse"].numpy(), mses, rtol=1e-6)
    best = alphas[int(np.argmin(mses))]
    assert model.alpha.item() == pytest.approx(best)
    # The final model is refitted on all samples with the chosen alpha.
    w, *_ = numpy_ridge(xn, yn, best)
    np.testing.assert_allclose(model.weight.numpy(), w.T, rtol=1e-4, atol=1e-5)


def test_dual_selection_matches_numpy() -> None:
    x, y = make_data(30, 60, 4, seed=2)  # fit fold 24 < 60 voxels -> dual eigendecomposition
    alphas = [0.1, 10.0, 1000.0]
    model = RidgeRegression(60, 4).fit(x, y, alpha=alphas, generator=torch.Generator().manual_seed(1))
    val = model.selection["val_index"].numpy()
    fit = np.setdiff1d(np.arange(30), val)
    xn, yn = x.numpy().astype(np.float64), y.numpy().astype(np.float64)
    for a, got in zip(alphas, model.selection["val_mse"].tolist()):
        w, b, mean, std = numpy_ridge(xn[fit], yn[fit], a)
        assert got == pytest.approx(np.mean(((xn[val] - mean) / std @ w + b - yn[val]) ** 2), rel=1e-6)


def test_state_dict_roundtrip_through_safetensors(tmp_path) -> None:
    x, y = make_data(40, 12, 6)
    model = RidgeRegression(12, 6).fit(x, y, alpha=2.0)
    path = tmp_path / "ridge.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = RidgeRegression(12, 6)
    loaded.load_state_dict(load_file(str(path)))
    torch.testing.assert_close(loaded.predict(x), model.predict(x))
    assert set(model.state_dict()) == {"weight", "bias", "input_mean", "input_std", "alpha"}


def test_user_errors() -> None:
    x, y = make_data(10, 5, 2)
    model = RidgeRegression(5, 2)
    with pytest.raises(MindEyeError, match=r"shape \(N, 5\)"):
        model.fit(x[:, :4], y, alpha=1.0)
    with pytest.raises(MindEyeError, match="targets"):
        model.fit(x, y[:9], alpha=1.0)
    with pytest.raises(MindEyeError, match="positive"):
        model.fit(x, y, alpha=0.0)
    with pytest.raises(MindEyeError, match="hold out"):
        model.fit(x[:2], y[:2], alpha=[1.0, 2.0])
    with pytest.raises(MindEyeError, match=r"shape \(N, 5\)"):
        model.predict(torch.randn(3, 6))
