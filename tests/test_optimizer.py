"""The trainer's AdamW kernel: fused on every device (CPU included), the same update as torch's for-loop."""

import pytest
import torch

from mindeye.training.trainer import adamw_implementation, param_groups


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(37, 64), torch.nn.LayerNorm(64), torch.nn.Linear(64, 5))


def _train(kernel: dict[str, bool], steps: int = 5) -> list[torch.Tensor]:
    model = _model()
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=3e-3, **kernel)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 37, generator=gen)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_cpu_uses_the_fused_kernel_and_sharded_cpu_foreach():
    assert adamw_implementation("cpu") == {"fused": True}
    assert adamw_implementation("cuda:0") == {"fused": True}
    assert adamw_implementation("cpu", sharded=True) == {"foreach": True}


def test_fused_cpu_update_equals_the_for_loop_update():
    fused = _train(adamw_implementation("cpu"))
    loop = _train({"foreach": False, "fused": False})
    start = [p.detach() for p in _model().parameters()]
    for a, b, p0 in zip(fused, loop, start):
        assert not torch.equal(b, p0)  # the parameters moved
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("total", [1, 2, 3, 100])
@pytest.mark.parametrize("pct_start", [0.01, 0.5])
def test_one_cycle_schedule_survives_very_short_runs(total, pct_start):
    """A run of one or two steps (train.epochs=1 on a tiny store) must train, not stop on torch's division by a
    zero-length warm-up; a long run keeps the OneCycle shape (warm-up from max_lr/25, peak max_lr)."""
    from mindeye.training.trainer import one_cycle

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sched = one_cycle(opt, 1e-3, total, pct_start, 1000)
    lrs = []
    for _ in range(total):
        opt.step()
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert len(lrs) == total and all(0 < lr <= 1e-3 + 1e-12 for lr in lrs)
    if total == 100:
        assert lrs[0] == pytest.approx(1e-3 / 25) and max(lrs) == pytest.approx(1e-3, rel=1e-2)
