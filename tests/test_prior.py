import math

import numpy as np
import pytest
import torch

from mindeye.models.prior import (
    DiffusionPrior,
    LayerNorm,
    PriorNetwork,
    RotaryEmbedding,
    cosine_beta_schedule,
    relative_position_bucket,
    sinusoidal_embedding,
)
from naive_prior_ref import attention as naive_attention
from naive_prior_ref import bias_table, bucket, layer_norm, rotate

TINY = dict(dim=32, depth=2, heads=4, dim_head=16, num_tokens=40, rotary_dim=8)


def tiny_net(seed: int = 0, **kw) -> PriorNetwork:
    torch.manual_seed(seed)
    net = PriorNetwork(**(TINY | kw)).double()
    with torch.no_grad():  # gains away from 1 so that a skipped norm weight would show
        for name, p in net.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    return net


def inputs(net: PriorNetwork, b: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    shape = (b, net.num_tokens, net.dim)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    brain = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.randint(0, 100, (b,), generator=g)
    return x, t, brain


def test_parameter_count_matches_reference():
    with torch.device("meta"):
        net = PriorNetwork()
    assert sum(p.numel() for p in net.parameters()) == 56_055_184
    # the 16 rotary frequencies are counted (as in the reference) but never trained
    assert net.rotary.freqs.shape == (16,) and not net.rotary.freqs.requires_grad


@pytest.mark.parametrize(
    "rel_pos, expected",
    [(5, 0), (0, 0), (-1, 1), (-15, 15), (-16, 16), (-18, 16), (-19, 17), (-20, 17), (-32, 21), (-64, 26),
     (-100, 30), (-127, 31), (-128, 31), (-1000, 31)],
)
def test_relative_position_bucket_hand_values(rel_pos, expected):
    # Hand values: d = -rel_pos; d < 16 -> d; else 16 + floor(ln(d/16) / ln(8) * 16), capped at 31
    # (e.g. d=20: ln 1.25 / ln 8 * 16 = 1.72 -> 17). Keys after the query share bucket 0 (dalle2's variant).
    got = relative_position_bucket(torch.tensor([rel_pos]))
    assert got.item() == expected == bucket(rel_pos)


def test_bucket_table_matches_python_everywhere():
    rel = torch.arange(600)[None, :] - torch.arange(599)[:, None]
    ours = relative_position_bucket(rel)
    naive = torch.tensor([bucket(r) for r in range(-598, 600)])[rel + 598]
    assert torch.equal(ours, naive)


def test_rotary_matches_complex_rotation():
    rot = RotaryEmbedding(8).double()
    x = torch.randn(2, 3, 11, 16, dtype=torch.float64)
    out = rot(x)
    torch.testing.assert_close(out, rotate(x, rot.freqs), rtol=0, atol=1e-12)
    assert torch.equal(out[..., 8:], x[..., 8:])  # only the first rotary_dim features rotate
    assert torch.equal(out[..., 0, :], x[..., 0, :])  # position 0 is not rotated
    # reference frequencies: 10000^(-2i/dim)
    torch.testing.assert_close(rot.freqs, 10000 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8))


def test_layernorm_gain_only_and_stable():
    ln = LayerNorm(6).double()
    with torch.no_grad():
        ln.weight.copy_(torch.arange(1.0, 7.0))
    x = torch.randn(4, 6, dtype=torch.float64) + 3
    torch.testing.assert_close(ln(x), layer_norm(x, ln.weight), rtol=0, atol=1e-12)
    stable = LayerNorm(6, stable=True).double()
    stable.load_state_dict(ln.state_dict())
    xs = x / x.amax(-1, keepdim=True)
    torch.testing.assert_close(stable(x), layer_norm(xs, ln.weight), rtol=0, atol=1e-12)
    # half precision uses eps 1e-3: visible on a near-constant input
    xh = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 1.03]], dtype=torch.bfloat16)
    expected = layer_norm(xh.double(), ln.weight, eps=1e-3)
    torch.testing.assert_close(ln.to(torch.bfloat16)(xh).double(), expected, rtol=2e-2, atol=2e-2)


def test_attention_matches_naive_einsum():
    net = tiny_net()
    with torch.no_grad():
        net.rel_pos_bias.weight.normal_()
        net.blocks[0].attn.null_kv.normal_()
    attn = net.blocks[0].attn
    x = torch.randn(2, 81, net.dim, dtype=torch.float64)
    bias = net.attn_bias(81, x.device)
    torch.testing.assert_close(bias, bias_table(net.rel_pos_bias.weight, 81), rtol=0, atol=0)
    w = {
        "null_kv": attn.null_kv,
        "norm.g": attn.norm.weight,
        "to_q.weight": attn.to_q.weight,
        "to_kv.weight": attn.to_kv.weight,
        "to_out.0.weight": attn.to_out.weight,
        "to_out.1.g": attn.out_norm.weight,
    }
    with torch.no_grad():
        ours = attn(x, net.rotary, bias)
        naive = naive_attention(x, w, bias, net.blocks[0].attn.heads, net.rotary.freqs)
    torch.testing.assert_close(ours, naive, rtol=1e-9, atol=1e-9)


def test_attention_fp32_under_autocast_matches_fp32():
    net = tiny_net().float().eval()
    x, t, brain = (v.float() if v.is_floating_point() else v for v in inputs(net))
    with torch.no_grad():
        ref = net(x, t, brain)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = net(x, t, brain)
    assert amp.shape == ref.shape and torch.isfinite(amp).all()
    assert (amp.float() - ref).abs().max() < 0.15 * ref.abs().max()


def test_cosine_schedule_matches_numpy_formula():
    T, s = 100, 0.008
    steps = np.arange(T + 1, dtype=np.float64)
    f = np.cos((steps / T + s) / (1 + s) * np.pi / 2) ** 2
    betas = np.clip(1 - f[1:] / f[:-1], 0, 0.999)
    ac = np.cumprod(1 - betas)
    ac_prev = np.concatenate([[1.0], ac[:-1]])
    post_var = betas * (1 - ac_prev) / (1 - ac)
    expected = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - ac),
        "log_one_minus_alphas_cumprod": np.log(1 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / ac - 1),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1 - ac),
        "posterior_mean_coef2": (1 - ac_prev) * np.sqrt(1 - betas) / (1 - ac),
        "p2_loss_weight": np.ones(T),
    }
    np.testing.assert_allclose(cosine_beta_schedule(T).numpy(), betas, rtol=1e-12, atol=0)
    sched = DiffusionPrior(tiny_net()).schedule
    buffers = dict(sched.named_buffers())
    assert set(buffers) == set(expected)
    for name, value in expected.items():
        assert buffers[name].dtype == torch.float32 and buffers[name].shape == (T,)
        np.testing.assert_allclose(buffers[name].numpy(), value.astype(np.float32), rtol=1e-6, err_msg=name)
    assert betas[-1] == 0.999  # the clip is active at the end of the cosine schedule


def test_guidance_scale_one_is_conditional_and_scale_formula():
    net = tiny_net().train()  # train mode: a plain forward would drop conditions at random
    x, t, brain = inputs(net)
    with torch.no_grad():
        cond = net(x, t, brain, 0.0, 0.0)
        null = net(x, t, brain, 1.0, 1.0)
        torch.testing.assert_close(net.forward_with_cond_scale(x, t, brain, cond_scale=1.0), cond, rtol=0, atol=0)
        guided = net.forward_with_cond_scale(x, t, brain, cond_scale=3.5)
    torch.testing.assert_close(guided, null + (cond - null) * 3.5, rtol=1e-12, atol=1e-12)
    assert (cond - null).abs().max() > 1e-3


def test_null_conditions_ignore_their_inputs():
    net = tiny_net().eval()
    x, t, brain = inputs(net)
    with torch.no_grad():
        a = net(x, t, brain, brain_cond_drop_prob=1.0)
        b = net(x, t, torch.randn_like(brain), brain_cond_drop_prob=1.0)
        c = net(x, t, torch.randn_like(brain))
        d = net(x, t, brain, image_cond_drop_prob=1.0)
        e = net(torch.randn_like(x), t, brain, image_cond_drop_prob=1.0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(d, e, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3
    torch.testing.assert_close(net(x, t, brain), net(x, t, brain, 0.0, 0.0))  # eval: no dropout by default


def test_dropout_is_per_sample():
    net = tiny_net().train()
    x, t, brain = inputs(net, b=1)
    x, t, brain = x.expand(64, -1, -1), t.expand(64), brain.expand(64, -1, -1)
    with torch.no_grad():
        cond = net(x[:1], t[:1], brain[:1], 0.0, 0.0)
        null = net(x[:1], t[:1], brain[:1], 1.0, 0.0)
        torch.manual_seed(0)
        out = net(x, t, brain, brain_cond_drop_prob=0.5, image_cond_drop_prob=0.0)
    is_cond = torch.isclose(out, cond, atol=1e-10).flatten(1).all(1)
    is_null = torch.isclose(out, null, atol=1e-10).flatten(1).all(1)
    assert bool((is_cond ^ is_null).all())
    assert 10 < int(is_null.sum()) < 54


def test_time_embedding_is_sinusoidal_mlp():
    net = tiny_net()
    dim = net.dim
    t = torch.tensor([0.0, 7.0, 99.0], dtype=torch.float64)
    half = dim // 2
    w = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / (half - 1))
    emb = torch.cat(((t[:, None] * w).sin(), (t[:, None] * w).cos()), dim=-1)
    m = net.time_mlp
    expected = m[4](torch.nn.functional.silu(m[2](torch.nn.functional.silu(m[0](emb)))))
    torch.testing.assert_close(net.time_mlp(sinusoidal_embedding(t, dim)), expected)


def test_loss_is_mse_in_scaled_space_and_backpropagates():
    prior = DiffusionPrior(tiny_net().float())
    assert prior.image_embed_scale == pytest.approx(32**0.5)
    target = torch.randn(4, 40, 32) / 32**0.5
    brain = torch.randn(4, 40, 32)
    loss, pred = prior.loss(target, brain)
    s = prior.image_embed_scale
    torch.testing.assert_close(loss, torch.mean((pred * s - target * s) ** 2), rtol=1e-5, atol=1e-6)
    loss.backward()
    assert prior.net.blocks[0].attn.to_q.weight.grad.abs().sum() > 0
    assert prior.net.rotary.freqs.grad is None
    target_copy = target.clone()
    prior.loss(target, brain)
    assert torch.equal(target, target_copy)  # the target is not scaled in place


def test_forward_rejects_wrong_shapes():
    net = tiny_net()
    x, t, brain = inputs(net)
    with pytest.raises(ValueError, match="expected image and brain embeddings"):
        net(x[:, :5], t, brain)


class _FixedX0:
    """Stand-in network: records timesteps and always predicts the same x0."""

    def __init__(self, x0: torch.Tensor):
        self.x0, self.calls, self.num_tokens, self.dim = x0, [], x0.shape[1], x0.shape[2]

    def forward_with_cond_scale(self, x, t, brain, cond_scale):
        self.calls.append(int(t[0]))
        return self.x0.expand_as(x)


@pytest.mark.parametrize("steps", [None, 10, 1])
def test_sampler_timesteps_and_final_x0(steps):
    prior = DiffusionPrior(tiny_net().float())
    x0 = torch.randn(1, 40, 32)
    stub = _FixedX0(x0)
    prior.__dict__["net"] = stub  # bypass nn.Module registration for the stand-in
    out = prior.sample(torch.zeros(2, 40, 32), timesteps=steps, generator=torch.Generator().manual_seed(0))
    n = 100 if steps is None else steps
    assert len(stub.calls) == n and stub.calls[0] == 99 and stub.calls == sorted(stub.calls, reverse=True)
    assert stub.calls[-1] == (0 if n > 1 else 99)
    assert len(set(stub.calls)) == n
    # the last step returns the predicted x0 itself (no noise), in target units
    torch.testing.assert_close(out, (x0 / prior.image_embed_scale).expand(2, -1, -1), rtol=1e-5, atol=1e-6)


def test_sample_reproducible_with_generator():
    prior = DiffusionPrior(tiny_net(depth=1).float()).eval()
    brain = torch.randn(2, 40, 32)
    a = prior.sample(brain, cond_scale=2.0, timesteps=5, generator=torch.Generator().manual_seed(3))
    b = prior.sample(brain, cond_scale=2.0, timesteps=5, generator=torch.Generator().manual_seed(3))
    c = prior.sample(brain, cond_scale=2.0, timesteps=5, generator=torch.Generator().manual_seed(4))
    assert a.shape == (2, 40, 32)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-4
    with pytest.raises(ValueError, match="timesteps"):
        prior.sample(brain, timesteps=101)


@pytest.mark.parametrize("timesteps", [None, 5])  # DDPM over the whole chain, and DDIM
def test_sampling_with_one_generator_per_group_equals_sampling_each_group_alone(timesteps):
    prior = DiffusionPrior(tiny_net().eval(), timesteps=12)
    brain = inputs(prior.net, b=6)[2]
    seeds = [3, 4, 5]
    batched = prior.sample(brain, cond_scale=2.0, timesteps=timesteps,
                           generator=[torch.Generator().manual_seed(s) for s in seeds])
    alone = torch.cat([prior.sample(brain[2 * j:2 * j + 2], cond_scale=2.0, timesteps=timesteps,
                                    generator=torch.Generator().manual_seed(s)) for j, s in enumerate(seeds)])
    torch.testing.assert_close(batched, alone, rtol=1e-9, atol=1e-9)
    swapped = prior.sample(brain, cond_scale=2.0, timesteps=timesteps,
                           generator=[torch.Generator().manual_seed(s) for s in (4, 3, 5)])
    assert not torch.allclose(swapped[:2], batched[:2])  # each group really draws from its own generator
    with pytest.raises(ValueError, match="equal generator groups"):
        prior.sample(brain[:5], generator=[torch.Generator() for _ in seeds])
