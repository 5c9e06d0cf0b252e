"""Import the MindEye authors' (v1) high-level checkpoints into our module names.

The authors' checkpoint holds ``voxel2clip.*`` (residual-MLP backbone + projector), ``net.*`` (the prior
network, dalle2-pytorch names) and ``noise_scheduler.*`` (the 100-step schedule buffers). We map every
tensor to our names (``backbone.*``, ``projector.net.*``, ``prior.*``), check every shape, and refuse
anything left over or missing, so a wrong file fails loudly instead of loading half a model.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from mindeye.constants import NSDGENERAL_VOXELS
from mindeye.errors import MindEyeError

# nsdgeneral voxel counts of the NSD subjects (1.8 mm), as used by the authors' checkpoints.
SUBJECT_VOXELS = NSDGENERAL_VOXELS

_SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "p2_loss_weight",
)


def _known_subjects() -> str:
    return ", ".join(f"subj0{s} {n}" for s, n in SUBJECT_VOXELS.items())


def expected_v1_shapes(
    n_voxels: int,
    hidden: int = 4096,
    n_blocks: int = 4,
    tokens: int = 257,
    dim: int = 768,
    proj_hidden: int = 2048,
    depth: int = 6,
    heads: int = 12,
    dim_head: int = 64,
    ff_mult: int = 4,
    rotary_dim: int = 32,
    rel_pos_buckets: int = 32,
    timesteps: int = 100,
) -> dict[str, tuple[int, ...]]:
    """Every key of the authors' high-level checkpoint with its shape, for the given sizes."""
    s: dict[str, tuple[int, ...]] = {}
    for name in _SCHEDULE_BUFFERS:
        s[f"noise_scheduler.{name}"] = (timesteps,)

    s["net.learned_query"] = (tokens, dim)
    s["net.null_brain_embeds"] = (tokens, dim)
    s["net.null_image_embed"] = (tokens, dim)
    time = "net.to_time_embeds.0.1.net"
    s[f"{time}.0.0.weight"], s[f"{time}.0.0.bias"] = (2 * dim, dim), (2 * dim,)
    s[f"{time}.1.0.weight"], s[f"{time}.1.0.bias"] = (2 * dim, 2 * dim), (2 * dim,)
    s[f"{time}.2.weight"], s[f"{time}.2.bias"] = (dim, 2 * dim), (dim,)
    tr = "net.causal_transformer"
    s[f"{tr}.rel_pos_bias.relative_attention_bias.weight"] = (rel_pos_buckets, heads)
    for i in range(depth):
        a, f = f"{tr}.layers.{i}.0", f"{tr}.layers.{i}.1"
        s[f"{a}.null_kv"] = (2, dim_head)
        s[f"{a}.norm.g"] = (dim,)
        s[f"{a}.to_q.weight"] = (heads * dim_head, dim)
        s[f"{a}.to_kv.weight"] = (2 * dim_head, dim)
        s[f"{a}.rotary_emb.freqs"] = (rotary_dim // 2,)
        s[f"{a}.to_out.0.weight"] = (dim, heads * dim_head)
        s[f"{a}.to_out.1.g"] = (dim,)
        s[f"{f}.0.g"] = (dim,)
        s[f"{f}.1.weight"] = (2 * ff_mult * dim, dim)
        s[f"{f}.5.weight"] = (dim, ff_mult * dim)
    s[f"{tr}.norm.g"] = (dim,)
    s[f"{tr}.project_out.weight"] = (dim, dim)

    v = "voxel2clip"
    s[f"{v}.lin0.0.weight"], s[f"{v}.lin0.0.bias"] = (hidden, n_voxels), (hidden,)
    s[f"{v}.lin0.1.weight"], s[f"{v}.lin0.1.bias"] = (hidden,), (hidden,)
    for i in range(n_blocks):
        s[f"{v}.mlp.{i}.0.weight"], s[f"{v}.mlp.{i}.0.bias"] = (hidden, hidden), (hidden,)
        s[f"{v}.mlp.{i}.1.weight"], s[f"{v}.mlp.{i}.1.bias"] = (hidden,), (hidden,)
    s[f"{v}.lin1.weight"], s[f"{v}.lin1.bias"] = (tokens * dim, hidden), (tokens * dim,)
    proj = {0: (dim,), 2: (proj_hidden, dim), 3: (proj_hidden,), 5: (proj_hidden, proj_hidden)}
    proj |= {6: (proj_hidden,), 8: (dim, proj_hidden)}
    for idx, w_shape in proj.items():
        s[f"{v}.projector.{idx}.weight"], s[f"{v}.projector.{idx}.bias"] = w_shape, (w_shape[0],)
    return s


# (authors' key pattern, our key template); patterns are full matches, groups fill the template.
_RENAMES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r)
    for p, r in [
        (r"noise_scheduler\.(\w+)", r"prior.schedule.\1"),
        (r"net\.learned_query", "prior.net.pos_emb"),
        (r"net\.null_brain_embeds", "prior.net.null_brain"),
        (r"net\.null_image_embed", "prior.net.null_image"),
        (r"net\.to_time_embeds\.0\.1\.net\.0\.0\.(weight|bias)", r"prior.net.time_mlp.0.\1"),
        (r"net\.to_time_embeds\.0\.1\.net\.1\.0\.(weight|bias)", r"prior.net.time_mlp.2.\1"),
        (r"net\.to_time_embeds\.0\.1\.net\.2\.(weight|bias)", r"prior.net.time_mlp.4.\1"),
        (r"net\.causal_transformer\.rel_pos_bias\.relative_attention_bias\.weight", "prior.net.rel_pos_bias.weight"),
        # the rotary module is shared by all layers; the checkpoint repeats it per layer
        (r"net\.causal_transformer\.layers\.\d+\.0\.rotary_emb\.freqs", "prior.net.rotary.freqs"),
        (r"net\.causal_transformer\.layers\.(\d+)\.0\.null_kv", r"prior.net.blocks.\1.attn.null_kv"),
        (r"net\.causal_transformer\.layers\.(\d+)\.0\.norm\.g", r"prior.net.blocks.\1.attn.norm.weight"),
        (r"net\.causal_transformer\.layers\.(\d+)\.0\.(to_q|to_kv)\.weight", r"prior.net.blocks.\1.attn.\2.weight"),
        (r"net\.causal_transformer\.layers\.(\d+)\.0\.to_out\.0\.weight", r"prior.net.blocks.\1.attn.to_out.weight"),
        (r"net\.causal_transformer\.layers\.(\d+)\.0\.to_out\.1\.g", r"prior.net.blocks.\1.attn.out_norm.weight"),
        (r"net\.causal_transformer\.layers\.(\d+)\.1\.0\.g", r"prior.net.blocks.\1.ff.norm.weight"),
        (r"net\.causal_transformer\.layers\.(\d+)\.1\.1\.weight", r"prior.net.blocks.\1.ff.proj_in.weight"),
        (r"net\.causal_transformer\.layers\.(\d+)\.1\.5\.weight", r"prior.net.blocks.\1.ff.proj_out.weight"),
        (r"net\.causal_transformer\.norm\.g", "prior.net.norm_out.weight"),
        (r"net\.causal_transformer\.project_out\.weight", "prior.net.project_out.weight"),
        (r"voxel2clip\.lin0\.([01])\.(weight|bias)", r"backbone.stem.\1.\2"),
        (r"voxel2clip\.mlp\.(\d+)\.([01])\.(weight|bias)", r"backbone.blocks.\1.\2.\3"),
        (r"voxel2clip\.lin1\.(weight|bias)", r"backbone.head.\1"),
        (r"voxel2clip\.projector\.(\d+)\.(weight|bias)", r"projector.net.\1.\2"),
    ]
]


def _rename(key: str) -> str:
    for pattern, template in _RENAMES:
        if pattern.fullmatch(key):
            return pattern.sub(template, key)
    raise AssertionError(f"no rename rule for {key}")  # unreachable: keys were checked against the layout


def _sample(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _check_layout(sd: dict[str, Tensor]) -> None:
    if any(k.startswith("voxel2clip.") for k in sd) and any(k.startswith("net.") for k in sd):
        return
    keys = sorted(sd)
    if any(k.startswith(("upsampler.", "maps_projector.")) for k in keys):
        raise MindEyeError(
            "this is the authors' low-level (perceptual, voxel->VAE latent) checkpoint, not the high-level "
            "(voxel->CLIP + diffusion prior) one; pass the high-level checkpoint (its keys start with "
            "'voxel2clip.', 'net.' and 'noise_scheduler.') to the high-level import"
        )
    raise MindEyeError(
        "not a MindEye v1 high-level checkpoint: expected keys starting with 'voxel2clip.', 'net.' and "
        f"'noise_scheduler.', found: {_sample(keys) or 'no keys'}. Pass the authors' high-level "
        "(prior) checkpoint file"
    )


def convert_mindeye_v1_state_dict(
    sd: dict[str, Tensor], n_voxels: int | None = None, **sizes: int
) -> dict[str, Tensor]:
    """Rename the authors' high-level state dict to ours (``backbone.*``, ``projector.net.*``, ``prior.*``).

    ``n_voxels`` (if given) must equal the checkpoint's voxel count. ``sizes`` override the architecture
    sizes of :func:`expected_v1_shapes` (defaults: the published model). Tensors are not copied.
    Raises MindEyeError for another layout, a voxel-count mismatch, missing/unexpected keys or wrong shapes.
    """
    if not isinstance(sd, dict):
        raise MindEyeError(f"expected a state dict (dict of tensors), got {type(sd).__name__}")
    if sd and all(k.startswith("module.") for k in sd):  # saved from a DistributedDataParallel wrapper
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    _check_layout(sd)

    stem = sd.get("voxel2clip.lin0.0.weight")
    if stem is None or stem.dim() != 2:
        raise MindEyeError("checkpoint lacks a 2-D 'voxel2clip.lin0.0.weight'; it is incomplete or not MindEye v1")
    found = int(stem.shape[1])
    if n_voxels is not None and found != n_voxels:
        subject = [f"subj0{s}" for s, n in SUBJECT_VOXELS.items() if n == found]
        raise MindEyeError(
            f"checkpoint expects {found} voxels"
            + (f" ({subject[0]}'s count)" if subject else "")
            + f" but the data has {n_voxels}. Use the checkpoint of the subject you are decoding "
            f"(known nsdgeneral counts: {_known_subjects()})"
        )

    expected = expected_v1_shapes(found, **sizes)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_sample(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_sample(unexpected)}")
        raise MindEyeError(
            "checkpoint does not have the MindEye v1 high-level layout (" + "; ".join(parts) + "). "
            "Check that it is the authors' high-level checkpoint for this architecture"
        )
    wrong = [
        f"{k} {tuple(sd[k].shape)} (expected {shape})" for k, shape in expected.items() if tuple(sd[k].shape) != shape
    ]
    if wrong:
        raise MindEyeError(
            f"checkpoint tensors have unexpected shapes: {_sample(wrong, 5)}. It was trained with another "
            "architecture than the published MindEye v1 high-level model"
        )

    out: dict[str, Tensor] = {}
    for key in sorted(sd):
        new = _rename(key)
        if new in out:  # the shared rotary frequencies, stored once per layer in the checkpoint
            if not (sd[key].is_meta or torch.equal(out[new], sd[key])):
                raise MindEyeError(f"checkpoint's per-layer copies of the shared {key} differ; file is corrupt")
            continue
        out[new] = sd[key]
    return out


def load_mindeye_v1_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Load a checkpoint file's state dict (.pth/.pt/.bin via torch.load(weights_only=True), or .safetensors).

    Unwraps the authors' ``{'model_state_dict': ...}`` training checkpoints. Returns the raw (authors')
    names; pass the result to :func:`convert_mindeye_v1_state_dict`.
    """
    path = Path(path)
    if not path.is_file():
        raise MindEyeError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise MindEyeError(f"could not read {path} as safetensors ({e}); is the file complete?") from e

    try:
        try:  # memory-map: the full checkpoint is ~4 GB
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as e:
        raise MindEyeError(
            f"could not load {path} safely with torch.load(weights_only=True): {e}. The file either is not a "
            "PyTorch checkpoint or pickles objects other than tensors. If you trust it, re-save only its "
            "weights, e.g. torch.save(torch.load(p, weights_only=False)['model_state_dict'], 'weights.pth'), "
            "or convert it to .safetensors"
        ) from e

    if isinstance(obj, dict) and isinstance(obj.get("model_state_dict"), dict):
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise MindEyeError(
            f"{path} does not hold a state dict (a dict of tensors, or {{'model_state_dict': ...}}); "
            "pass the authors' high-level checkpoint"
        )
    return obj
