"""A deliberately naive re-statement of the reference prior, for tests (independent of our code path).

Plain einsums, complex-number rotary, a pure-Python T5 bucket table and explicit LayerNorm maths, reading
weights by the AUTHORS' checkpoint names (``net.causal_transformer.layers.0.0.to_q.weight`` ...).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def bucket(rel_pos: int, num_buckets: int = 32, max_distance: int = 128) -> int:
    """dalle2's one-sided T5 bucket for key_pos - query_pos, in plain Python."""
    d = max(-rel_pos, 0)
    exact = num_buckets // 2
    if d < exact:
        return d
    return min(exact + int(math.log(d / exact) / math.log(max_distance / exact) * (num_buckets - exact)), num_buckets - 1)


def layer_norm(x: Tensor, g: Tensor, eps: float = 1e-5) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * g


def rotate(x: Tensor, freqs: Tensor) -> Tensor:
    """Rotary as complex multiplication: pair (x[2i], x[2i+1]) times exp(i * pos * freqs[i])."""
    rot = 2 * freqs.shape[0]
    pairs = torch.view_as_complex(x[..., :rot].reshape(*x.shape[:-1], rot // 2, 2).contiguous())
    pos = torch.arange(x.shape[-2], dtype=x.dtype)
    phase = torch.polar(torch.ones(x.shape[-2], rot // 2, dtype=x.dtype), pos[:, None] * freqs.to(x.dtype)[None])
    return torch.cat((torch.view_as_real(pairs * phase).flatten(-2), x[..., rot:]), dim=-1)


def attention(x: Tensor, w: dict[str, Tensor], bias: Tensor, heads: int, freqs: Tensor) -> Tensor:
    """One reference attention layer; ``w`` has keys null_kv, norm.g, to_q.weight, to_kv.weight,
    to_out.0.weight, to_out.1.g. bias: (heads, n, n + 1)."""
    b, n, _ = x.shape
    dh = w["null_kv"].shape[-1]
    h = layer_norm(x, w["norm.g"])
    q = torch.einsum("bnc,ec->bne", h, w["to_q.weight"]).reshape(b, n, heads, dh).permute(0, 2, 1, 3)
    kv = torch.einsum("bnc,ec->bne", h, w["to_kv.weight"])
    k, v = kv[..., :dh], kv[..., dh:]
    q, k = rotate(q, freqs), rotate(k, freqs)
    k = torch.cat((w["null_kv"][0].expand(b, 1, dh), k), dim=1)
    v = torch.cat((w["null_kv"][1].expand(b, 1, dh), v), dim=1)
    q = q / q.norm(dim=-1, keepdim=True)
    k = k / k.norm(dim=-1, keepdim=True)
    sim = 16 * torch.einsum("bhid,bjd->bhij", q, k) + bias
    attn = torch.softmax(sim, dim=-1)
    out = torch.einsum("bhij,bjd->bhid", attn, v).permute(0, 2, 1, 3).reshape(b, n, heads * dh)
    return layer_norm(torch.einsum("bne,ce->bnc", out, w["to_out.0.weight"]), w["to_out.1.g"])


def bias_table(rel_weight: Tensor, n: int) -> Tensor:
    """(heads, n, n + 1) relative position bias from the (buckets, heads) embedding table."""
    nb = rel_weight.shape[0]
    idx = torch.tensor([[bucket(j - i, nb) for j in range(n + 1)] for i in range(n)])
    return rel_weight[idx].permute(2, 0, 1)


def prior_forward(
    p: dict[str, Tensor],
    image_noisy: Tensor,
    t: Tensor,
    brain: Tensor,
    heads: int,
    null_brain: bool = False,
    null_image: bool = False,
) -> Tensor:
    """The authors' PriorNetwork forward from their state dict ``p`` (keys starting with 'net.')."""
    b, tokens, dim = image_noisy.shape
    if null_brain:
        brain = p["net.null_brain_embeds"].expand(b, tokens, dim)
    if null_image:
        image_noisy = p["net.null_image_embed"].expand(b, tokens, dim)

    half = dim // 2
    freqs_t = torch.exp(-math.log(10000) * torch.arange(half, dtype=image_noisy.dtype) / (half - 1))
    e = t.to(image_noisy.dtype)[:, None] * freqs_t[None]
    h = torch.cat((e.sin(), e.cos()), dim=-1)
    tm = "net.to_time_embeds.0.1.net"
    h = F.silu(h @ p[f"{tm}.0.0.weight"].T + p[f"{tm}.0.0.bias"])
    h = F.silu(h @ p[f"{tm}.1.0.weight"].T + p[f"{tm}.1.0.bias"])
    time_tok = (h @ p[f"{tm}.2.weight"].T + p[f"{tm}.2.bias"])[:, None]

    x = torch.cat((brain, time_tok, image_noisy + p["net.learned_query"]), dim=1)
    tr = "net.causal_transformer"
    bias = bias_table(p[f"{tr}.rel_pos_bias.relative_attention_bias.weight"], x.shape[1])
    depth = 1 + max(int(k.split(".")[3]) for k in p if k.startswith(f"{tr}.layers."))
    for i in range(depth):
        a = f"{tr}.layers.{i}.0."
        w = {k.removeprefix(a): v for k, v in p.items() if k.startswith(a)}
        x = x + attention(x, w, bias, heads, p[f"{a}rotary_emb.freqs"])
        f = f"{tr}.layers.{i}.1."
        hid = layer_norm(x, p[f + "0.g"]) @ p[f + "1.weight"].T
        val, gate = hid.chunk(2, dim=-1)
        x = x + (val * F.silu(gate)) @ p[f + "5.weight"].T
    x = x / x.amax(dim=-1, keepdim=True)
    x = layer_norm(x, p[f"{tr}.norm.g"]) @ p[f"{tr}.project_out.weight"].T
    return x[:, -tokens:]
