"""MindEye's diffusion prior: brain tokens (257 x 768) -> CLIP image tokens (257 x 768).

This is the authors' modification of the DALL-E 2 prior from dalle2-pytorch 1.14.2, re-written so that
with the same weights it computes the same numbers (see benchmarks/compare_prior_reference.py):

    tokens = [brain tokens (257) | time token (1) | noised image tokens + learned pos emb (257)]
    depth x { x = Attention(x) + x ; x = FeedForward(x) + x }   (bidirectional, pre-norm)
    out    = project_out(stable_layernorm(x))[:, -257:]

Attention is dalle2's: multi-query (one shared key/value head), rotary embedding on the first 32
features of q and k, a learned null key/value prepended, cosine-similarity logits (16 x cos) plus a
T5-style relative position bias, softmax in fp32, then Linear + LayerNorm on the way out.

The diffusion is DDPM with a 100-step cosine schedule that predicts x0 (not noise). Targets are scaled by
sqrt(768) before noising and samples divided by it afterwards.

Why one module of ~420 lines: the network, its attention and the diffusion schedule are checked
together against the reference numerically (benchmarks/compare_prior_reference.py); split, a reader
would lose the one-to-one reading against dalle2-pytorch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

# --------------------------------------------------------------------------------------------- helpers


class LayerNorm(nn.Module):
    """Gain-only LayerNorm (no bias) as in dalle2; eps 1e-5 in fp32, 1e-3 in half precision (fp16/bf16).

    ``stable=True`` divides the input by its max along the features first (dalle2's final norm). The
    division is mathematically a no-op for a positive max, but it keeps half-precision variance finite.
    """

    def __init__(self, dim: int, stable: bool = False):
        super().__init__()
        self.stable = stable
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        eps = 1e-3 if x.dtype in (torch.float16, torch.bfloat16) else 1e-5
        if self.stable:
            x = x / x.amax(dim=-1, keepdim=True).detach()
        return F.layer_norm(x, (x.shape[-1],), self.weight, None, eps)


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """dalle2's SinusoidalPosEmb: [sin(t w_k) | cos(t w_k)], w_k = 10000^(-k / (dim/2 - 1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=t.dtype) * -(math.log(10000) / (half - 1)))
    args = t[:, None] * freqs[None, :]
    return torch.cat((args.sin(), args.cos()), dim=-1)


def relative_position_bucket(rel_pos: Tensor, num_buckets: int = 32, max_distance: int = 128) -> Tensor:
    """T5 bucketing exactly as dalle2 1.14.2's RelPosBias (``rel_pos = key_pos - query_pos``).

    Note dalle2 uses the one-sided (causal) variant even though MindEye's attention is bidirectional:
    every key at or after the query (rel_pos >= 0) falls into bucket 0; keys d = -rel_pos > 0 positions
    before the query get bucket d for d < num_buckets/2, then log-spaced buckets up to max_distance.
    """
    n = torch.clamp(-rel_pos, min=0)
    max_exact = num_buckets // 2
    # Same float32 ops as dalle2 so border cases round identically.
    log_ratio = torch.log(n.float() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return torch.where(n < max_exact, n, large)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding on the first ``dim`` features, adjacent pairs (x0,x1),(x2,x3),... rotated.

    ``freqs`` is a frozen nn.Parameter (not a buffer) because the reference's rotary-embedding-torch stores
    it that way: it is in the checkpoints and in the reference's parameter count (16 of 56,055,184).
    """

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.freqs = nn.Parameter(freqs, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        """Rotate ``x`` (..., seq, features) by position along ``seq``; computed in fp32 (or better)."""
        rot, dtype = self.freqs.shape[0] * 2, torch.promote_types(x.dtype, torch.float32)
        pos = torch.arange(x.shape[-2], device=x.device, dtype=dtype)
        angles = pos[:, None] * self.freqs.to(dtype)[None, :]  # (seq, rot/2)
        cos, sin = angles.cos(), angles.sin()
        x_rot = x[..., :rot].to(dtype).unflatten(-1, (-1, 2))
        x1, x2 = x_rot[..., 0], x_rot[..., 1]
        rotated = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        return torch.cat((rotated.to(x.dtype), x[..., rot:]), dim=-1)


# ------------------------------------------------------------------------------------------ transformer


class Attention(nn.Module):
    """dalle2's prior attention: multi-query, rotary, null kv, cosine-sim logits, rel-pos bias."""

    def __init__(self, dim: int, heads: int, dim_head: int, cosine_sim_scale: float = 16.0):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.cosine_sim_scale = cosine_sim_scale
        self.norm = LayerNorm(dim)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim_head, bias=False)  # one key and one value head shared by all
        self.null_kv = nn.Parameter(torch.randn(2, dim_head))  # attended to by every query
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)
        self.out_norm = LayerNorm(dim)

    def forward(self, x: Tensor, rotary: RotaryEmbedding, bias: Tensor) -> Tensor:
        """x: (B, N, dim); bias: (heads, N, N + 1) additive logits bias (key 0 is the null key)."""
        b, n, _ = x.shape
        x = self.norm(x)
        q = self.to_q(x).view(b, n, self.heads, self.dim_head).transpose(1, 2)  # (B, H, N, D)
        k, v = self.to_kv(x).chunk(2, dim=-1)  # (B, N, D) each
        q, k = rotary(q), rotary(k)
        null_k, null_v = (t.to(k.dtype).expand(b, 1, self.dim_head) for t in self.null_kv[:, None])
        k = torch.cat((null_k, k), dim=1)
        v = torch.cat((null_v, v), dim=1)

        # Core in fp32 (the reference's softmax is fp32; doing it all in fp32 is as exact or better).
        # Cosine similarity: unit q and k, each times sqrt(scale), so logits = scale * cos(q, k) + bias
        # and SDPA must not scale again (scale=1).
        dtype = torch.promote_types(q.dtype, torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            root = math.sqrt(self.cosine_sim_scale)
            q = F.normalize(q.to(dtype), dim=-1) * root
            k = F.normalize(k.to(dtype), dim=-1)[:, None] * root  # (B, 1, N+1, D): same key for all heads
            v = v.to(dtype)[:, None]
            out = F.scaled_dot_product_attention(
                q,
                k.expand(b, self.heads, n + 1, self.dim_head),
                v.expand(b, self.heads, n + 1, self.dim_head),
                attn_mask=bias.to(dtype),
                scale=1.0,
            )
        out = out.to(x.dtype).transpose(1, 2).reshape(b, n, self.heads * self.dim_head)
        return self.out_norm(self.to_out(out))


class FeedForward(nn.Module):
    """Pre-norm SwiGLU MLP: the first half of the hidden features is the value, the second the gate."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = mult * dim
        self.norm = LayerNorm(dim)
        self.proj_in = nn.Linear(dim, 2 * inner, bias=False)
        self.proj_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h, gate = self.proj_in(self.norm(x)).chunk(2, dim=-1)
        return self.proj_out(h * F.silu(gate))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, ff_mult: int):
        super().__init__()
        self.attn = Attention(dim, heads, dim_head)
        self.ff = FeedForward(dim, ff_mult)

    def forward(self, x: Tensor, rotary: RotaryEmbedding, bias: Tensor) -> Tensor:
        x = self.attn(x, rotary, bias) + x
        return self.ff(x) + x


class PriorNetwork(nn.Module):
    """Denoiser: predicts the clean (scaled) image tokens from noised ones, the time and the brain tokens."""

    def __init__(
        self,
        dim: int = 768,
        depth: int = 6,
        heads: int = 12,
        dim_head: int = 64,
        num_tokens: int = 257,
        ff_mult: int = 4,
        rotary_dim: int = 32,
        rel_pos_buckets: int = 32,
        rel_pos_max_distance: int = 128,
        cond_drop_prob: float = 0.2,
    ):
        super().__init__()
        if rotary_dim > dim_head or rotary_dim % 2:
            raise ValueError(f"rotary_dim must be even and <= dim_head ({dim_head}), got {rotary_dim}")
        self.dim, self.num_tokens, self.cond_drop_prob = dim, num_tokens, cond_drop_prob
        self.rel_pos_buckets, self.rel_pos_max_distance = rel_pos_buckets, rel_pos_max_distance

        self.time_mlp = nn.Sequential(  # applied to sinusoidal_embedding(t, dim)
            nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim)
        )
        self.pos_emb = nn.Parameter(torch.randn(num_tokens, dim) * dim**-0.5)  # on the noised image tokens
        # Learned "no condition" replacements for classifier-free guidance.
        self.null_brain = nn.Parameter(torch.randn(num_tokens, dim))
        self.null_image = nn.Parameter(torch.randn(num_tokens, dim))

        self.rotary = RotaryEmbedding(rotary_dim)  # one instance shared by all layers, as in the reference
        self.rel_pos_bias = nn.Embedding(rel_pos_buckets, heads)  # shared by all layers
        self.blocks = nn.ModuleList(Block(dim, heads, dim_head, ff_mult) for _ in range(depth))
        self.checkpoint_blocks = False  # lean mode: recompute the layers in backward (same gradients)
        self.norm_out = LayerNorm(dim, stable=True)
        self.project_out = nn.Linear(dim, dim, bias=False)

    def attn_bias(self, n: int, device: torch.device) -> Tensor:
        """(heads, n, n + 1) bias; key index j is compared with query index i as positions j and i."""
        rel_pos = torch.arange(n + 1, device=device)[None, :] - torch.arange(n, device=device)[:, None]
        buckets = relative_position_bucket(rel_pos, self.rel_pos_buckets, self.rel_pos_max_distance)
        return self.rel_pos_bias(buckets).permute(2, 0, 1)

    @staticmethod
    def _keep_mask(batch: int, drop_prob: float, device: torch.device) -> Tensor:
        # Same draw as dalle2's prob_mask_like (no RNG use for 0 or 1) so seeded runs line up.
        if drop_prob == 0:
            return torch.ones(batch, 1, 1, dtype=torch.bool, device=device)
        if drop_prob == 1:
            return torch.zeros(batch, 1, 1, dtype=torch.bool, device=device)
        return (torch.zeros(batch, device=device).uniform_(0, 1) < 1 - drop_prob).view(batch, 1, 1)

    def forward(
        self,
        image_embed_noisy: Tensor,
        t: Tensor,
        brain_embed: Tensor,
        brain_cond_drop_prob: float | None = None,
        image_cond_drop_prob: float | None = None,
    ) -> Tensor:
        """image_embed_noisy, brain_embed: (B, num_tokens, dim); t: (B,) timesteps -> (B, num_tokens, dim).

        Drop probabilities default to ``cond_drop_prob`` in training mode and 0 in eval mode; each sample's
        brain tokens and (independently) noised image tokens are swapped for the learned nulls.
        """
        b, device = image_embed_noisy.shape[0], image_embed_noisy.device
        expected = (b, self.num_tokens, self.dim)
        if image_embed_noisy.shape != expected or brain_embed.shape != expected:
            raise ValueError(
                f"expected image and brain embeddings of shape {expected}, "
                f"got {tuple(image_embed_noisy.shape)} and {tuple(brain_embed.shape)}"
            )
        default_p = self.cond_drop_prob if self.training else 0.0
        brain_p = default_p if brain_cond_drop_prob is None else brain_cond_drop_prob
        image_p = default_p if image_cond_drop_prob is None else image_cond_drop_prob

        brain_keep = self._keep_mask(b, brain_p, device)
        image_keep = self._keep_mask(b, image_p, device)
        brain_embed = torch.where(brain_keep, brain_embed, self.null_brain.to(brain_embed.dtype)[None])
        image = torch.where(image_keep, image_embed_noisy, self.null_image.to(image_embed_noisy.dtype)[None])

        # The reference embeds t in the input dtype, then runs the MLP on a float32 (or better) copy.
        time_emb = sinusoidal_embedding(t.to(image_embed_noisy.dtype), self.dim)
        time_tok = self.time_mlp(time_emb.to(torch.promote_types(time_emb.dtype, torch.float32)))[:, None]

        x = torch.cat((brain_embed, time_tok.to(brain_embed.dtype), image + self.pos_emb), dim=1)
        bias = self.attn_bias(x.shape[1], device)
        recompute = self.checkpoint_blocks and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, self.rotary, bias, use_reentrant=False) if recompute else block(x, self.rotary, bias)
        x = self.project_out(self.norm_out(x))
        return x[:, -self.num_tokens :]

    def forward_with_cond_scale(
        self, image_embed_noisy: Tensor, t: Tensor, brain_embed: Tensor, cond_scale: float = 1.0
    ) -> Tensor:
        """Classifier-free guidance: null + (cond - null) * cond_scale (one pass when cond_scale == 1)."""
        cond = self.forward(image_embed_noisy, t, brain_embed, 0.0, 0.0)
        if cond_scale == 1:
            return cond
        null = self.forward(image_embed_noisy, t, brain_embed, 1.0, 1.0)
        return null + (cond - null) * cond_scale


# ------------------------------------------------------------------------------------------- diffusion


def cosine_beta_schedule(timesteps: int, s: float = 0.008) -> Tensor:
    """Nichol & Dhariwal's cosine schedule in float64, betas clipped to [0, 0.999] (as dalle2)."""
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    alphas_cumprod = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
    return torch.clip(betas, 0, 0.999)


class NoiseSchedule(nn.Module):
    """The DDPM schedule buffers, named as the reference's ``noise_scheduler.*`` so checkpoints load 1:1.

    Computed in float64, stored as float32 (like the reference).
    """

    def __init__(self, timesteps: int):
        super().__init__()
        self.num_timesteps = timesteps
        betas = cosine_beta_schedule(timesteps)
        alphas = 1.0 - betas
        ac = torch.cumprod(alphas, dim=0)
        ac_prev = F.pad(ac[:-1], (1, 0), value=1.0)
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        buffers = {
            "betas": betas,
            "alphas_cumprod": ac,
            "alphas_cumprod_prev": ac_prev,
            "sqrt_alphas_cumprod": ac.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
            "log_one_minus_alphas_cumprod": (1.0 - ac).log(),
            "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1).sqrt(),
            "posterior_variance": post_var,
            # clipped because the posterior variance is 0 at t = 0
            "posterior_log_variance_clipped": post_var.clamp(min=1e-20).log(),
            "posterior_mean_coef1": betas * ac_prev.sqrt() / (1.0 - ac),
            "posterior_mean_coef2": (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
            "p2_loss_weight": torch.ones_like(betas),  # reference's p2 reweighting is off (gamma 0)
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.to(torch.float32))

    @staticmethod
    def _at(buf: Tensor, t: Tensor, like: Tensor) -> Tensor:
        return buf.gather(-1, t).view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Noise x0 to timestep t: sqrt(ac_t) x0 + sqrt(1 - ac_t) noise."""
        return self._at(self.sqrt_alphas_cumprod, t, x0) * x0 + self._at(
            self.sqrt_one_minus_alphas_cumprod, t, x0
        ) * noise

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and clipped log-variance of q(x_{t-1} | x_t, x0)."""
        mean = self._at(self.posterior_mean_coef1, t, x_t) * x0 + self._at(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, self._at(self.posterior_log_variance_clipped, t, x_t)


class DiffusionPrior(nn.Module):
    """x0-predicting DDPM over (num_tokens, dim) CLIP image tokens, conditioned on brain tokens."""

    def __init__(self, net: PriorNetwork, timesteps: int = 100, image_embed_scale: float | None = None):
        super().__init__()
        self.net = net
        self.schedule = NoiseSchedule(timesteps)
        # Scale unit-ish CLIP tokens up to roughly unit variance per feature before noising (crowsonkb).
        self.image_embed_scale = net.dim**0.5 if image_embed_scale is None else image_embed_scale

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    def loss(self, target_embed: Tensor, brain_embed: Tensor) -> tuple[Tensor, Tensor]:
        """MSE between the predicted and true (scaled) x0 at a random timestep per sample.

        Returns ``(loss, pred)`` where ``pred`` is the predicted x0 divided by ``image_embed_scale`` (i.e. in
        the target's units). Conditioning dropout uses ``net.cond_drop_prob``. Random draws happen in the
        reference's order (t, noise, brain mask, image mask) so seeded runs match it.
        """
        b = target_embed.shape[0]
        t = torch.randint(0, self.num_timesteps, (b,), device=target_embed.device, dtype=torch.long)
        x0 = target_embed * self.image_embed_scale
        noise = torch.randn_like(x0)
        x_t = self.schedule.q_sample(x0, t, noise)
        p = self.net.cond_drop_prob
        pred = self.net(x_t, t, brain_embed, brain_cond_drop_prob=p, image_cond_drop_prob=p)
        return F.mse_loss(pred, x0), pred / self.image_embed_scale

    def forward(self, target_embed: Tensor, brain_embed: Tensor) -> tuple[Tensor, Tensor]:
        """Same as :meth:`loss` (so DDP and friends can wrap the prior)."""
        return self.loss(target_embed, brain_embed)

    @torch.no_grad()
    def sample(
        self,
        brain_embed: Tensor,
        cond_scale: float = 1.0,
        timesteps: int | None = None,
        eta: float = 1.0,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> Tensor:
        """Sample image tokens (B, num_tokens, dim), in the target's units (divided by the scale).

        ``generator`` may be a list of k generators: the batch is then k equal groups, group j drawing all
        its noise from generator j, so a group gets the same draws as a call on that group alone (batched
        reconstructions equal one-brain-at-a-time ones, to float rounding).

        ``timesteps=None`` (or the full count) runs the reference's DDPM ancestral sampler: x_{t-1} =
        posterior mean(x0_hat, x_t) + exp(log_var / 2) z, with no noise at t = 0. Fewer steps use DDIM
        (Song et al. 2021) on ``timesteps`` evenly spaced steps from T-1 down to 0, with
        sigma = eta * sqrt((1 - ac_prev) / (1 - ac) * (1 - ac / ac_prev)); eta = 1 is the DDPM posterior
        on the respaced chain, eta = 0 is deterministic. (dalle2's own DDIM loop reads ac at t - 1 while
        conditioning the network on t; ours uses the noise level the network is conditioned on.)
        """
        n_total = self.num_timesteps
        steps = n_total if timesteps is None else timesteps
        if not 1 <= steps <= n_total:
            raise ValueError(f"timesteps must be between 1 and {n_total}, got {steps}")
        b, device = brain_embed.shape[0], brain_embed.device
        shape = (b, self.net.num_tokens, self.net.dim)
        sch = self.schedule
        gens = list(generator) if isinstance(generator, list | tuple) else [generator]
        if b % len(gens):
            raise ValueError(f"a batch of {b} cannot be split into {len(gens)} equal generator groups")

        def randn(dtype: torch.dtype) -> Tensor:
            if len(gens) == 1:
                return torch.randn(shape, device=device, dtype=dtype, generator=gens[0])
            part = (b // len(gens), *shape[1:])
            return torch.cat([torch.randn(part, device=device, dtype=dtype, generator=g) for g in gens])

        x = randn(brain_embed.dtype)

        if steps == n_total:  # DDPM, exactly as the reference
            for i in reversed(range(n_total)):
                t = torch.full((b,), i, device=device, dtype=torch.long)
                x0 = self.net.forward_with_cond_scale(x, t, brain_embed, cond_scale)
                mean, log_var = sch.q_posterior(x0, x, t)
                z = randn(x.dtype)
                x = mean + (0.5 * log_var).exp() * z if i > 0 else mean
            return x / self.image_embed_scale

        ts = torch.linspace(n_total - 1, 0, steps).round().long().tolist()
        for i, t_now in enumerate(ts):
            t = torch.full((b,), t_now, device=device, dtype=torch.long)
            x0 = self.net.forward_with_cond_scale(x, t, brain_embed, cond_scale)
            if i == len(ts) - 1:
                x = x0
                break
            a, a_prev = sch.alphas_cumprod[t_now], sch.alphas_cumprod[ts[i + 1]]
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
            z = randn(x.dtype)
            x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps + sigma * z
        return x / self.image_embed_scale
