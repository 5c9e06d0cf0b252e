"""The trainer's AdamW kernel: fused on every device (CPU included), the same update as torch's for-loop."""

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
