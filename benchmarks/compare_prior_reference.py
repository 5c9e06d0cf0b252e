"""Compare our diffusion prior with the reference built from dalle2-pytorch 1.14.2's own components.

Needs an environment with dalle2-pytorch==1.14.2 (NOT a mindeye dependency), e.g.:

    python3 -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install dalle2-pytorch==1.14.2
    PYTHONPATH=src /tmp/refvenv/bin/python benchmarks/compare_prior_reference.py

The reference network is the MindEye authors' PriorNetwork rebuilt from dalle2's pieces (CausalTransformer
with its attention made non-causal, SinusoidalPosEmb + MLP time embedding, learned pos emb on the noised
image tokens, learned null embeddings). Its state dict therefore has the authors' checkpoint names; it is
imported into ours with mindeye.models.convert, which is checked along the way. Prints max |diff|.
"""

from __future__ import annotations

import argparse

import dalle2_pytorch.dalle2_pytorch as d2
import torch
from einops.layers.torch import Rearrange
from torch import nn

from mindeye.models.convert import convert_mindeye_v1_state_dict, expected_v1_shapes
from mindeye.models.prior import DiffusionPrior, PriorNetwork, relative_position_bucket


class RefPriorNetwork(nn.Module):
    """The authors' PriorNetwork (learned_query_mode='pos_emb', causal=False) on top of dalle2 1.14.2."""

    def __init__(self, dim, depth, heads, dim_head, num_tokens):
        super().__init__()
        self.dim, self.num_tokens, self.self_cond = dim, num_tokens, False
        self.to_time_embeds = nn.Sequential(
            nn.Sequential(d2.SinusoidalPosEmb(dim), d2.MLP(dim, dim)), Rearrange("b (n d) -> b n d", n=1)
        )
        self.learned_query = nn.Parameter(torch.randn(num_tokens, dim) * dim**-0.5)
        self.causal_transformer = d2.CausalTransformer(dim=dim, depth=depth, dim_head=dim_head, heads=heads)
        for attn, _ in self.causal_transformer.layers:  # the authors' FlaggedCausalTransformer(causal=False)
            attn.causal = False
        self.null_brain_embeds = nn.Parameter(torch.randn(num_tokens, dim))
        self.null_image_embed = nn.Parameter(torch.randn(num_tokens, dim))

    def forward_with_cond_scale(self, *args, cond_scale=1.0, **kwargs):
        logits = self.forward(*args, **kwargs)
        if cond_scale == 1:
            return logits
        null = self.forward(*args, text_cond_drop_prob=1.0, image_cond_drop_prob=1.0, **kwargs)
        return null + (logits - null) * cond_scale

    def forward(self, image_embed, t, *, self_cond=None, text_embed=None, text_cond_drop_prob=0.0,
                image_cond_drop_prob=0.0):
        b, device = image_embed.shape[0], image_embed.device
        brain_keep = d2.prob_mask_like((b,), 1 - text_cond_drop_prob, device=device)[:, None, None]
        image_keep = d2.prob_mask_like((b,), 1 - image_cond_drop_prob, device=device)[:, None, None]
        brain = torch.where(brain_keep, text_embed, self.null_brain_embeds.to(text_embed.dtype)[None])
        image = torch.where(image_keep, image_embed, self.null_image_embed.to(image_embed.dtype)[None])
        time_embed = self.to_time_embeds(t.type(image_embed.dtype))
        tokens = torch.cat((brain, time_embed, image + self.learned_query[None]), dim=-2)
        return self.causal_transformer(tokens)[..., -self.num_tokens:, :]


def randomize_(module: nn.Module, seed: int) -> None:
    """Perturb every parameter (gains included) so that a wrong mapping cannot hide behind 1s and 0s."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(".g"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif not name.endswith("freqs"):
                p.add_(0.02 * torch.randn(p.shape, generator=g))


def build_pair(dim, depth, heads, dim_head, tokens, timesteps=100, seed=0):
    torch.manual_seed(seed)
    ref_net = RefPriorNetwork(dim, depth, heads, dim_head, tokens)
    randomize_(ref_net, seed + 1)
    ref = d2.DiffusionPrior(net=ref_net, image_embed_dim=dim, timesteps=timesteps, cond_drop_prob=0.2,
                            condition_on_text_encodings=False)
    sizes = dict(hidden=8, n_blocks=1, tokens=tokens, dim=dim, proj_hidden=8, depth=depth, heads=heads,
                 dim_head=dim_head, rotary_dim=min(32, dim_head), timesteps=timesteps)
    # The authors' checkpoints also hold voxel2clip.*; zero-memory stand-ins complete the layout.
    sd = {k: torch.zeros(()).expand(s) for k, s in expected_v1_shapes(10, **sizes).items()
          if k.startswith("voxel2clip.")}
    sd |= ref.state_dict()
    ours_sd = {k.removeprefix("prior."): v for k, v in convert_mindeye_v1_state_dict(sd, 10, **sizes).items()
               if k.startswith("prior.")}
    ours = DiffusionPrior(PriorNetwork(dim, depth, heads, dim_head, tokens, rotary_dim=min(32, dim_head)),
                          timesteps=timesteps)
    ours.load_state_dict(ours_sd, strict=True)
    return ref.eval(), ours.eval()


def maxdiff(a, b):
    return (a.double() - b.double()).abs().max().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--sample-depth", type=int, default=1, help="prior depth for the 100-step sampling check")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    dim, depth, heads, dim_head, tokens, b = 768, 6, 12, 64, 257, args.batch

    ref, ours = build_pair(dim, depth, heads, dim_head, tokens)
    n_ref = sum(p.numel() for p in ref.net.parameters())
    n_ours = sum(p.numel() for p in ours.net.parameters())
    print(f"parameters: reference {n_ref:,}  ours {n_ours:,}")

    print("\n[schedule buffers, 100-step cosine]")
    for name, buf in ref.noise_scheduler.named_buffers():
        fresh = getattr(DiffusionPrior(PriorNetwork(dim=8, depth=1, heads=1, dim_head=8, num_tokens=1,
                                                    rotary_dim=8)).schedule, name)
        print(f"  {name:32s} max|diff| {maxdiff(buf, fresh):.3g}")

    print("\n[components]")
    n = 2 * tokens + 1
    rel = torch.arange(n + 1)[None, :] - torch.arange(n)[:, None]
    same = torch.equal(d2.RelPosBias._relative_position_bucket(rel), relative_position_bucket(rel))
    print(f"  rel-pos buckets ({n}x{n + 1}) identical: {same}")
    rot_ref = ref.net.causal_transformer.layers[0][0].rotary_emb
    q = torch.randn(b, heads, n, dim_head)
    print(f"  rotary on q           max|diff| {maxdiff(rot_ref.rotate_queries_or_keys(q), ours.net.rotary(q)):.3g}")
    x = torch.randn(b, n, dim)
    bias_ref = ref.net.causal_transformer.rel_pos_bias(n, n + 1, device=x.device)
    bias_ours = ours.net.attn_bias(n, x.device)
    print(f"  rel-pos bias          max|diff| {maxdiff(bias_ref, bias_ours):.3g}")
    with torch.no_grad():
        a_ref = ref.net.causal_transformer.layers[0][0](x, attn_bias=bias_ref)
        a_ours = ours.net.blocks[0].attn(x, ours.net.rotary, bias_ours)
        f_ref = ref.net.causal_transformer.layers[0][1](x)
        f_ours = ours.net.blocks[0].ff(x)
    print(f"  attention layer       max|diff| {maxdiff(a_ref, a_ours):.3g}   (|out| max {a_ref.abs().max():.3g})")
    print(f"  feed-forward          max|diff| {maxdiff(f_ref, f_ours):.3g}   (|out| max {f_ref.abs().max():.3g})")

    print(f"\n[full network, fp32, batch {b}]")
    xt = torch.randn(b, tokens, dim) * dim**0.5 * 0.1
    brain = torch.randn(b, tokens, dim) * 0.1
    t = torch.randint(0, 100, (b,))
    with torch.no_grad():
        out_ref = ref.net(xt, t, text_embed=brain)
        out_ours = ours.net(xt, t, brain)
        g_ref = ref.net.forward_with_cond_scale(xt, t, text_embed=brain, cond_scale=3.0)
        g_ours = ours.net.forward_with_cond_scale(xt, t, brain, cond_scale=3.0)
    print(f"  forward               max|diff| {maxdiff(out_ref, out_ours):.3g}   (|out| max {out_ref.abs().max():.3g})")
    print(f"  guided (scale 3)      max|diff| {maxdiff(g_ref, g_ours):.3g}")

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf_ref = ref.net(xt, t, text_embed=brain)
        bf_ours = ours.net(xt, t, brain)
    print(f"  bf16 autocast: ref vs fp32 {maxdiff(bf_ref, out_ref):.3g}, ours vs fp32 {maxdiff(bf_ours, out_ref):.3g},"
          f" ref vs ours {maxdiff(bf_ref, bf_ours):.3g}")

    print("\n[training loss, same seed, cond dropout 0.2 active]")
    target = torch.randn(b, tokens, dim) / dim**0.5
    ref.train(), ours.train()
    with torch.no_grad():
        torch.manual_seed(123)
        times = ref.noise_scheduler.sample_random_times(b)  # the authors' forward: t, then scale, then p_losses
        loss_ref = ref.p_losses(target * ref.image_embed_scale, times, text_cond=dict(text_embed=brain))
        torch.manual_seed(123)
        loss_ours, _ = ours.loss(target, brain)
    print(f"  loss ref {loss_ref.item():.6f} ours {loss_ours.item():.6f}  |diff| {abs(loss_ref - loss_ours).item():.3g}")

    sd = args.sample_depth
    print(f"\n[DDPM sampling, 100 steps, cond_scale 2, same seed; depth {sd} prior of width 768]")
    ref_s, ours_s = build_pair(dim, sd, heads, dim_head, tokens, seed=7)
    brain = torch.randn(1, tokens, dim) * 0.1
    torch.manual_seed(5)
    s_ref = ref_s.p_sample_loop((1, tokens, dim), text_cond=dict(text_embed=brain), cond_scale=2.0)
    torch.manual_seed(5)
    s_ours = ours_s.sample(brain, cond_scale=2.0)
    print(f"  samples               max|diff| {maxdiff(s_ref, s_ours):.3g}   (|out| max {s_ref.abs().max():.3g})")


if __name__ == "__main__":
    main()
