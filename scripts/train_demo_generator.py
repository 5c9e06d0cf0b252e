"""Train the demo's tiny latent diffusion generator on simulated scenes (CPU, a few minutes).

What it is (named honestly): a small diffusers ``UNet2DConditionModel`` that denoises the
``standin-vae`` latent (4 x 16 x 16 of a 128 px image) with cross-attention on the 17 x 64
``standin-clip-hidden`` tokens of the image. It stands in for Versatile Diffusion in the demo so the
demo runs prior -> generator -> img2img -> best-of exactly as the full-size path does. It only knows
the procedural scenes of ``mindeye.data.scenes`` and its pictures are as blurry as the stand-in VAE
(16 x 16 colour-opponent blocks upsampled).

Training: DDPM epsilon prediction with Stable Diffusion's noise schedule (the same config the UniPC
sampler uses at inference), 15% condition dropout to zeros (the unconditional branch of classifier-free
guidance), AdamW, EMA of the weights. Output: ``--out`` (.safetensors, fp16) and a JSON config beside it.

    python scripts/train_demo_generator.py --minutes 9 --out src/mindeye/assets/demo_generator.safetensors
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from safetensors.torch import save_file

from mindeye.data.scenes import generate_scenes
from mindeye.encoders.registry import get_encoder
from mindeye.inference.generators import SD_SCHEDULER_CONFIG

UNET_CONFIG = {
    "sample_size": 16, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": 64, "attention_head_dim": 4, "norm_num_groups": 16,
}
SCENE_SEED = 12345  # not the seed of any demo subject: the generator never sees their test images


def encode_all(encoder, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    return torch.cat([encoder.encode(images[s:s + batch]).float() for s in range(0, len(images), batch)])


@torch.no_grad()
def evaluate(weights: Path, n: int = 32, steps: int = 20, guidance: float = 3.5, grid: Path | None = None) -> dict:
    """Held-out scenes generated from their true condition through the library's sampling path.

    Reports the identification accuracy of the generated images (top-1 of n, by ``standin-clip-hidden``
    cosine to every scene's condition; chance 1/n) and the pixel correlation with the true scene, for a
    pure-noise start (strength 0) and for img2img (strength 0.15) from the stand-in VAE's blurry image.
    """
    from mindeye.inference.generators import load_demo_generator

    gen = load_demo_generator(str(weights))
    clip = get_encoder("standin-clip-hidden")
    images, _, _ = generate_scenes(SCENE_SEED + 1, range(n), 128)
    conds = gen.prepare_condition(encode_all(clip, images))
    g = torch.Generator().manual_seed(0)
    noise = torch.randn((n, *gen.latent_shape), generator=g)
    blurry_latents = gen.codec.encode(gen.codec.decode(gen.codec.encode(images)))
    out, rows = {}, [images]
    for strength in (0.0, 0.15):
        init = blurry_latents if strength > 0 else None
        imgs = gen.codec.decode(gen.denoise(conds, noise, init, strength, steps, guidance))
        emb = F.normalize(encode_all(clip, imgs.numpy()).flatten(1), dim=-1)
        cos = emb @ F.normalize(conds.flatten(1), dim=-1).T
        top1 = float((cos.argmax(1) == torch.arange(n)).float().mean())
        a, b = imgs.float().flatten(1), torch.from_numpy(images).float().flatten(1)
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        pixcorr = float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean())
        out[f"strength_{strength}"] = {"top1": round(top1, 3), "chance": round(1 / n, 3), "pixcorr": round(pixcorr, 3)}
        rows.append(imgs.numpy())
    rows.insert(1, gen.codec.decode(blurry_latents).numpy())
    if grid is not None:
        from PIL import Image

        k = min(n, 12)
        canvas = np.concatenate([np.concatenate(list(r[:k]), axis=1) for r in rows], axis=0)
        Image.fromarray(canvas).save(grid)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("src/mindeye/assets/demo_generator.safetensors"))
    ap.add_argument("--images", type=int, default=6000)
    ap.add_argument("--minutes", type=float, default=9.0, help="training wall-time budget")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--cond-drop", type=float, default=0.15)
    ap.add_argument("--threads", type=int, default=1, help="1 is fastest for this tiny model on a busy CPU")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (reproducible)")
    ap.add_argument("--grid", type=Path, default=None, help="write a PNG grid: truth / blurry / s=0 / s=0.15")
    ap.add_argument("--evaluate-only", action="store_true", help="evaluate existing --out weights, no training")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    if args.evaluate_only:
        meta = json.loads(args.out.with_suffix(".json").read_text())
        meta["evaluation"] = evaluate(args.out, grid=args.grid)
        args.out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
        print(json.dumps(meta["evaluation"], indent=1))
        return

    images, _, _ = generate_scenes(SCENE_SEED, range(args.images), 128)
    vae = get_encoder("standin-vae")
    clip = get_encoder("standin-clip-hidden")
    latents = encode_all(vae, images)
    conds = encode_all(clip, images)
    latent_scale = float(1.0 / latents.std())
    latents = latents * latent_scale
    print(f"data: {len(images)} scenes, latents {tuple(latents.shape[1:])} (scale {latent_scale:.3f}), "
          f"conditions {tuple(conds.shape[1:])}, {time.time() - t0:.0f}s")

    unet = UNet2DConditionModel(**UNET_CONFIG)
    ema = copy.deepcopy(unet).requires_grad_(False)
    n_params = sum(p.numel() for p in unet.parameters())
    sched = DDPMScheduler(**SD_SCHEDULER_CONFIG)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(args.seed)
    budget, start, step, losses = args.minutes * 60, time.time(), 0, []
    while time.time() - start < budget and (args.max_steps is None or step < args.max_steps):
        idx = torch.randint(0, len(latents), (args.batch,), generator=gen)
        x0, c = latents[idx], conds[idx].clone()
        c[torch.rand(args.batch, generator=gen) < args.cond_drop] = 0.0  # unconditional = zeros
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (args.batch,), generator=gen)
        pred = unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=c).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        frac = (time.time() - start) / budget  # cosine decay over the time budget
        for g in opt.param_groups:
            g["lr"] = args.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(frac, 1.0))))
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        losses.append(float(loss.detach()))
        step += 1
        if step % 50 == 0:
            print(f"step {step} loss {np.mean(losses[-50:]):.4f} ({time.time() - start:.0f}s)", flush=True)

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in ema.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out))
    meta = {
        "name": "demo-latent-diffusion",
        "description": "tiny latent diffusion model trained on simulated scenes (stand-in for Versatile "
                       "Diffusion in the demo; not a natural-image generator)",
        "unet": UNET_CONFIG, "scheduler": SD_SCHEDULER_CONFIG, "codec": "standin-vae", "latent_scale": latent_scale,
        "condition_encoder": "standin-clip-hidden", "condition_shape": list(conds.shape[1:]), "image_size": 128,
        "training": {"scenes": args.images, "scene_seed": SCENE_SEED, "steps": step, "batch": args.batch,
                     "lr": args.lr, "cond_drop": args.cond_drop, "final_loss": float(np.mean(losses[-100:])),
                     "minutes": round((time.time() - start) / 60, 2), "parameters": n_params,
                     "script": "scripts/train_demo_generator.py"},
        "sha": hashlib.sha256(args.out.read_bytes()).hexdigest()[:16],
    }
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    meta["evaluation"] = evaluate(args.out, grid=args.grid)
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    print(json.dumps(meta["evaluation"]))
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, {n_params} parameters, {step} steps)")


if __name__ == "__main__":
    main()
