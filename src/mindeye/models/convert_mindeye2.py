"""Import the MindEye2 authors' checkpoints (MedARC-AI/MindEyeV2 ``src/Train.ipynb``) into our names.

Their notebook saves ``torch.save({'epoch', 'model_state_dict', 'optimizer_state_dict', 'lr_scheduler',
'train_losses', 'test_losses', 'lrs'}, 'last.pth')`` where ``model_state_dict`` is their ``MindEyeModule``:
``ridge.linears.<i>.*`` (one Linear per subject of their ``subj_list``), ``backbone.*`` (``BrainNetwork``:
``mixer_blocks1/2``, ``backbone_linear``, ``clip_proj``, ``blin1``, ``bnorm``, ``bupsampler``,
``b_maps_projector``) and ``diffusion_prior.{net,noise_scheduler}.*`` (the dalle2-style prior, same names
as MindEye v1's). Every tensor is renamed (:data:`_RENAMES`), the architecture sizes are read off the
shapes (:func:`infer_sizes`) and the result is loaded ``strict=True`` into our model, so a wrong file
fails loudly. ``benchmarks/mindeye2_authors_check.py`` proves the mapping on their own classes.
"""

from __future__ import annotations

import math
import re

from torch import Tensor

from mindeye.constants import NSDGENERAL_VOXELS
from mindeye.errors import MindEyeError
from mindeye.models.convert import _rename as _rename_v1_prior

_RENAMES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r)
    for p, r in [
        (r"backbone\.mixer_blocks1\.(\d+)\.(.+)", r"backbone.feature_blocks.\1.\2"),
        (r"backbone\.mixer_blocks2\.(\d+)\.(.+)", r"backbone.token_blocks.\1.\2"),
        (r"backbone\.backbone_linear\.(weight|bias)", r"backbone.head.\1"),
        (r"backbone\.clip_proj\.(\d+)\.(weight|bias)", r"projector.net.\1.\2"),
        (r"backbone\.blin1\.(weight|bias)", r"blurry.head.\1"),
        (r"backbone\.bnorm\.(weight|bias)", r"blurry.norm.\1"),
        (r"backbone\.bupsampler\.(.+)", r"blurry.upsampler.\1"),
        (r"backbone\.b_maps_projector\.(.+)", r"blurry.projector.\1"),
    ]
]


def _strip(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k.removeprefix(prefix): v for k, v in sd.items()}
    return sd


def check_mindeye2_layout(sd: dict[str, Tensor]) -> None:
    if any(k.startswith("ridge.linears.") for k in sd) and any(k.startswith("backbone.") for k in sd):
        return
    keys = sorted(sd)
    hint = (" (this looks like a MindEye v1 checkpoint: use --mindeye-v1)"
            if any(k.startswith("voxel2clip.") for k in keys) else "")
    raise MindEyeError("not a MindEye2 checkpoint: expected keys starting with 'ridge.linears.' and 'backbone.', "
                       f"found: {', '.join(keys[:6]) or 'no keys'}{hint}")


def subject_ids(sd: dict[str, Tensor], given: list[str] | None = None) -> list[str]:
    """Ids of the checkpoint's ridge layers, in their order: ``given``, else the NSD subject whose
    nsdgeneral voxel count matches (``subj0N``), else ``subject<i>``."""
    n = sum(1 for k in sd if re.fullmatch(r"ridge\.linears\.\d+\.weight", k))
    if given is not None:
        if len(given) != n:
            raise MindEyeError(f"the checkpoint has {n} subject ridge layers but {len(given)} subject ids were given "
                               f"({', '.join(given)}); give one id per layer, in the authors' subj_list order")
        return list(given)
    by_count = {v: s for s, v in NSDGENERAL_VOXELS.items()}
    ids = []
    for i in range(n):
        count = int(sd[f"ridge.linears.{i}.weight"].shape[1])
        s = by_count.get(count)
        ids.append(f"subj0{s}" if s is not None else f"subject{i}")
    if len(set(ids)) != len(ids):
        ids = [f"subject{i}" for i in range(n)]
    return ids


def infer_sizes(sd: dict[str, Tensor]) -> list[str]:
    """``--set`` overrides (``model.*``) giving our model the checkpoint's architecture."""
    sd = _strip(sd)
    check_mindeye2_layout(sd)
    hidden = int(sd["ridge.linears.0.weight"].shape[0])
    n_blocks = sum(1 for k in sd if re.fullmatch(r"backbone\.mixer_blocks1\.\d+\.0\.weight", k))
    dim = int(sd["backbone.clip_proj.0.weight"].shape[0]) if "backbone.clip_proj.0.weight" in sd else None
    out = int(sd["backbone.backbone_linear.weight"].shape[0])
    if dim is None:
        raise MindEyeError("the checkpoint has no CLIP projector (backbone.clip_proj.*: trained with clip_scale 0); "
                           "our mindeye2 model needs it")
    sizes = ["model.kind=mindeye2", f"model.backbone.hidden={hidden}", f"model.backbone.n_blocks={n_blocks}",
             f"model.backbone.tokens={out // dim}", f"model.backbone.dim={dim}",
             f"model.projector.hidden={int(sd['backbone.clip_proj.2.weight'].shape[0])}"]
    if "backbone.blin1.weight" in sd:
        channels = int(sd["backbone.bnorm.weight"].shape[0])
        side = math.isqrt(int(sd["backbone.blin1.weight"].shape[0]) // channels)
        ups = sorted((int(m.group(1)), int(v.shape[0])) for k, v in sd.items()
                     if (m := re.fullmatch(r"backbone\.bupsampler\.up_blocks\.(\d+)\.resnets\.0\.conv2\.weight", k)))
        widths = [w for _, w in ups][::-1]
        sizes += ["model.blurry.enabled=true", f"model.blurry.channels={channels}", f"model.blurry.side={side}",
                  f"model.blurry.upsampler_channels=[{', '.join(map(str, widths))}]",
                  f"model.blurry.projector_dim={int(sd['backbone.b_maps_projector.0.weight'].shape[0])}",
                  f"model.lowlevel.latent_channels={int(sd['backbone.bupsampler.conv_out.weight'].shape[0])}"]
    else:
        sizes.append("model.blurry.enabled=false")
    if any(k.startswith("diffusion_prior.") for k in sd):
        depth = sum(1 for k in sd if re.fullmatch(r"diffusion_prior\.net\.causal_transformer\.layers\.\d+\.0\.null_kv", k))
        dim_head = int(sd["diffusion_prior.net.causal_transformer.layers.0.0.null_kv"].shape[1])
        heads = int(sd["diffusion_prior.net.causal_transformer.layers.0.0.to_q.weight"].shape[0]) // dim_head
        steps = int(sd["diffusion_prior.noise_scheduler.betas"].shape[0])
        sizes += ["model.prior.enabled=true", f"model.prior.depth={depth}", f"model.prior.heads={heads}",
                  f"model.prior.dim_head={dim_head}", f"model.prior.timesteps={steps}"]
    else:
        sizes.append("model.prior.enabled=false")
    return sizes


def convert_mindeye2_state_dict(sd: dict[str, Tensor], subjects: list[str] | None = None) -> dict[str, Tensor]:
    """Rename the authors' MindEye2 state dict to ours (``subject_layers.<id>.*``, ``backbone.*``,
    ``projector.net.*``, ``blurry.*``, ``prior.*``). Tensors are not copied."""
    if not isinstance(sd, dict):
        raise MindEyeError(f"expected a state dict (dict of tensors), got {type(sd).__name__}")
    sd = _strip(sd)
    check_mindeye2_layout(sd)
    ids = subject_ids(sd, subjects)
    out: dict[str, Tensor] = {}
    unknown = []
    for key in sorted(sd):
        m = re.fullmatch(r"ridge\.linears\.(\d+)\.(weight|bias)", key)
        if m:
            new = f"subject_layers.{ids[int(m.group(1))]}.{m.group(2)}"
        elif key.startswith("diffusion_prior."):
            try:
                new = _rename_v1_prior(key.removeprefix("diffusion_prior."))
            except AssertionError:
                unknown.append(key)
                continue
        else:
            for pattern, template in _RENAMES:
                if pattern.fullmatch(key):
                    new = pattern.sub(template, key)
                    break
            else:
                unknown.append(key)
                continue
        if new in out:  # the prior's shared rotary frequencies, stored once per layer
            continue
        out[new] = sd[key]
    if unknown:
        raise MindEyeError(f"checkpoint keys with no MindEye2 mapping: {', '.join(unknown[:6])}"
                           + (f", ... ({len(unknown)} in all)" if len(unknown) > 6 else "")
                           + "; is it the authors' MindEye2 model_state_dict?")
    return out
