"""Our `unclip-sdxl` (diffusers classes) vs the authors' own Stability `sgm` classes, at reduced width.

The authors' code is read at run time from a checkout of MedARC-AI/MindEyeV2 (never copied here):

    pip install einops omegaconf          # what their sgm modules import (not mindeye dependencies)
    PYTHONPATH=src python benchmarks/compare_unclip_sgm.py --authors-src /path/to/MindEyeV2/src

It builds their ``sgm.modules.diffusionmodules.openaimodel.UNetModel`` with ``unclip6.yaml``'s structure
(``num_classes: sequential``, ``adm_in_channels``, ``use_linear_in_transformer``, ``context_dim``) at a
small width with random weights, and their first-stage ``Encoder``/``Decoder`` (``model.py``), writes their
state dicts under the ``DiffusionEngine`` prefixes (``model.diffusion_model.``, ``first_stage_model.``),
loads them with :func:`mindeye.inference.unclip_sdxl.from_sgm_state_dict`, and prints max |diff| of

1. the UNet's eps for the same latents, timesteps, 256-token context and the ``ConcatTimestepEmbedderND``
   vector of (768, 768) and (0, 0) made with their ``timestep_embedding``;
2. the VAE decode;
3. a whole sampling run: their ``EulerEDMSampler`` (``LegacyDDPMDiscretization``, ``VanillaCFG`` scale 5)
   driving their ``DiscreteDenoiser`` (``EpsScaling``) around their UNet, against our ``denoise`` with the
   same start noise and unconditional tokens.

Their ``sgm/__init__.py`` imports Lightning; the script registers ``sgm`` and ``sgm.modules`` as bare
packages so that only the modules above are imported. CPU, a few seconds.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path

import torch


def load_sgm(src: Path) -> types.SimpleNamespace:
    root = src / "generative_models" / "sgm"
    if not (root / "modules" / "diffusionmodules" / "openaimodel.py").is_file():
        raise SystemExit(f"{root} has no modules/diffusionmodules/openaimodel.py; --authors-src must be MindEyeV2/src")
    for name, path in (("sgm", root), ("sgm.modules", root / "modules")):
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(path)]
        sys.modules[name] = pkg
    mods = {n: importlib.import_module(f"sgm.modules.diffusionmodules.{n}")
            for n in ("openaimodel", "model", "util", "denoiser", "discretizer", "sampling")}
    return types.SimpleNamespace(**mods)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--authors-src", required=True, type=Path, help="MindEyeV2/src (holds generative_models/)")
    ap.add_argument("--steps", type=int, default=4, help="sampling steps of the comparison (theirs: 38)")
    args = ap.parse_args()
    sgm = load_sgm(args.authors_src.resolve())

    from mindeye.inference.unclip_sdxl import ORIGINAL_SIZE, UnclipSdxlGenerator, from_sgm_state_dict

    torch.manual_seed(0)
    ch, ctx, t_dim = 32, 24, 8  # model_channels, context_dim, ConcatTimestepEmbedderND outdim
    theirs = sgm.openaimodel.UNetModel(
        in_channels=4, out_channels=4, model_channels=ch, attention_resolutions=[2], num_res_blocks=1,
        channel_mult=[1, 2], num_head_channels=16, use_linear_in_transformer=True, transformer_depth=[1, 2],
        context_dim=ctx, num_classes="sequential", adm_in_channels=4 * t_dim, spatial_transformer_attn_type="softmax",
        use_checkpoint=False).eval()
    for p in theirs.parameters():  # their zero_module() outputs would hide mapping errors: randomise everything
        p.data.normal_(0, 0.05)
    ddconfig = dict(double_z=True, z_channels=4, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
                    num_res_blocks=1, attn_resolutions=[], dropout=0.0, attn_type="vanilla")
    first = torch.nn.Module()
    first.encoder, first.decoder = sgm.model.Encoder(**ddconfig), sgm.model.Decoder(**ddconfig)
    first.quant_conv, first.post_quant_conv = torch.nn.Conv2d(8, 8, 1), torch.nn.Conv2d(4, 4, 1)
    first.eval()
    sd = {**{f"model.diffusion_model.{k}": v for k, v in theirs.state_dict().items()},
          **{f"first_stage_model.{k}": v for k, v in first.state_dict().items()}}

    unet_config = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(ch, 2 * ch),
                       down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                       up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
                       attention_head_dim=(ch // 16, 2 * ch // 16), use_linear_projection=True,
                       cross_attention_dim=ctx, addition_embed_type="text_time", addition_time_embed_dim=t_dim,
                       projection_class_embeddings_input_dim=4 * t_dim, norm_num_groups=32)
    vae_config = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                      down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                      norm_num_groups=32, sample_size=16, scaling_factor=0.13025)
    ours: UnclipSdxlGenerator = from_sgm_state_dict(sd, unet_config, vae_config)

    # 1. eps
    b = 2
    x, t = torch.randn(b, 4, 8, 8), torch.tensor([999, 26])
    context = torch.randn(b, 256, ctx)
    sizes = torch.tensor([[*ORIGINAL_SIZE], [0, 0]], dtype=torch.float32)  # original_size, crop_coords_top_left
    vector = torch.cat([sgm.util.timestep_embedding(v, t_dim).reshape(1, -1) for v in sizes], 1).repeat(b, 1)
    with torch.no_grad():
        eps_theirs = theirs(x, timesteps=t, context=context, y=vector)
        eps_ours = ours.unet(x, t, encoder_hidden_states=context, added_cond_kwargs=ours.added_cond(b, x.device)).sample
    print(f"UNet eps           max |diff| {float((eps_theirs - eps_ours).abs().max()):.2e}  "
          f"(scale {float(eps_theirs.abs().mean()):.2e})")

    # 2. VAE decode
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        dec_theirs = first.decoder(first.post_quant_conv(z))
        dec_ours = ours.codec.vae.decode(z).sample
    print(f"VAE decode         max |diff| {float((dec_theirs - dec_ours).abs().max()):.2e}")

    # 3. a whole sampling run
    class Wrapper(torch.nn.Module):  # sgm's OpenAIWrapper
        def __init__(self, net):
            super().__init__()
            self.diffusion_model = net

        def forward(self, x, t, c, **kw):
            return self.diffusion_model(x, timesteps=t, context=c.get("crossattn"), y=c.get("vector"), **kw)

    disc = {"target": "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"}
    denoiser = sgm.denoiser.DiscreteDenoiser(
        scaling_config={"target": "sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling"}, num_idx=1000,
        discretization_config=disc)
    sampler = sgm.sampling.EulerEDMSampler(
        discretization_config=disc, num_steps=args.steps, verbose=False, device="cpu",
        guider_config={"target": "sgm.modules.diffusionmodules.guiders.VanillaCFG", "params": {"scale": 5.0}})
    cond = torch.randn(b, 256, ctx)
    noise = torch.randn(b, 4, 8, 8)
    gens = UnclipSdxlGenerator.row_generators(noise)  # our per-sample unconditional tokens and offset noise
    uncond = torch.stack([torch.randn((256, ctx), generator=g) for g in gens])
    offset = torch.stack([torch.randn((), generator=g) for g in gens]).view(-1, 1, 1, 1)
    wrapped = Wrapper(theirs)
    with torch.no_grad():
        lat_theirs = sampler(lambda x_, s_, c_: denoiser(wrapped, x_, s_, c_), (noise + 0.04 * offset).clone(),
                             cond={"crossattn": cond, "vector": vector}, uc={"crossattn": uncond, "vector": vector})
        lat_ours = ours.denoise(cond, noise, steps=args.steps, guidance=5.0)
    print(f"sampling ({args.steps} steps) max |diff| {float((lat_theirs - lat_ours).abs().max()):.2e}  "
          f"(scale {float(lat_theirs.abs().mean()):.2e})")


if __name__ == "__main__":
    main()
