"""Training-step throughput of the MindEye models: samples/s, ms/step, peak memory and MFU.

    # one GPU, full-size subject-1 high-level model, our step vs the reference's step, one process:
    python benchmarks/train_throughput.py --pipeline high --compare
    # a lever on its own (see benchmarks/NOTES.md for the plan):
    python benchmarks/train_throughput.py --pipeline high --mode ours --compile --checkpointing
    # the CPU smoke run (scaled-down model, < 1 minute on 2 cores):
    python benchmarks/train_throughput.py --pipeline high --size small --compare --device cpu
    # a real store (targets read from its cache, as `mindeye train` does):
    python benchmarks/train_throughput.py --pipeline high --source store --data STORE

What one step is. The trainer's own step (``mindeye.training.trainer``): ``HighLevelTask.loss`` /
``LowLevelTask.loss`` (BiMixCo or SoftCLIP on the projector + 30 x the diffusion prior's MSE; L1 latent
+ 0.1 x SoftCLIP for the low-level model) under autocast, ``zero_grad``, backward, AdamW step (weight
decay groups as the trainer's ``param_groups``), OneCycleLR step. Models are built by
``mindeye.models.factory.build_model`` from the shipped configs (random weights).

Modes:
  ours       the trainer's step with the levers given on the command line (defaults = the trainer's
             defaults: bf16 autocast and fused AdamW on CUDA, fp32 on CPU, no compile).
  reference  the authors' step as they ran it: fp16 autocast + GradScaler, AdamW(foreach=False,
             fused=False), no compile, and (``--reference-targets online``, the default) the frozen
             target encoders run on every batch with the reference's augmentations: CLIP ViT-L/14 for
             the high-level model; SD-VAE + VICRegL ConvNeXt-XL (teacher view) for the low-level one.
             Encoders are random-initialised at full architecture (timing only).
  --compare  reference (online targets), reference (cached targets, i.e. the model step alone: the
             issue's ~114 ms figure) and ours, in this process, one after the other; prints the ratios.

FLOPs: ``flops_per_sample`` counts every matmul/conv (2 x multiply-accumulates) of the forward pass from
the config (attention score and value products included), and a training step as 3 x forward (backward =
2 x forward: gradients w.r.t. inputs and weights). MFU = achieved model FLOP/s / the GPU's dense bf16 peak
(``PEAK_TFLOPS`` by device name, or ``--peak-tflops``). Checkpointing recomputation is not counted
(model FLOPs, not hardware FLOPs).

Memory: on CUDA, ``torch.cuda.max_memory_allocated/reserved`` over the whole run (model, optimizer
states, activations). On the CPU: the process's peak resident set size (``getrusage``) and its growth
over the run -- the peak is monotone over the process, so in ``--compare`` later runs can only show
growth beyond the earlier runs' peak.
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import json
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mindeye.config import Config, ModelConfig, load_config
from mindeye.errors import MindEyeError
from mindeye.models.factory import build_model, parameter_counts
from mindeye.training.distributed import DistInfo
from mindeye.training.trainer import (
    HighLevelTask,
    LowLevelTask,
    mix_repetitions,
    param_groups,
    resolve_device,
)

REPO = Path(__file__).resolve().parents[1]
SUBJ01_VOXELS = 15724
SMALL_VOXELS = 2000
# Full size: the subject-1 configs. Small: the CPU demo configs (they match the stand-in encoders,
# so `--size small --source store` works on a simulated store).
CONFIGS = {("high", "full"): "mindeye-subj01.yaml", ("low", "full"): "lowlevel-subj01.yaml",
           ("high", "small"): "demo-highlevel.yaml", ("low", "small"): "demo-lowlevel.yaml"}
# Dense (no sparsity) bf16/fp16 tensor-core peaks in TFLOP/s, by a substring of the device name.
# Checked in order, so the more specific names come first.
PEAK_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("H800", 989.4),
    ("GH200", 989.4), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
    ("L4", 121.0), ("A10G", 70.0), ("RTX 4090", 165.0), ("V100", 125.0),
]
GIB = 1024**3

# Small random-init encoder architectures for the reference mode at --size small (outputs match the
# demo configs: CLIP 17 x 64 tokens; VAE latent 4 x 16 x 16; VICRegL 16 x 32 tokens).
SMALL_ENCODERS = {
    "clip": ({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": 32, "patch_size": 8, "projection_dim": 64, "hidden_act": "quick_gelu"}, {}),
    "vae": ({"down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
             "block_out_channels": [32, 32], "layers_per_block": 1, "latent_channels": 4,
             "norm_num_groups": 8, "sample_size": 32}, {"image_size": 32}),
    "vicregl": ({"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128], "maps_mlp": [32, 32, 32]}, {"image_size": 128}),
}


# ------------------------------------------------------------------------------------------------ FLOPs
def flops_per_sample(cfg: ModelConfig, n_voxels: int) -> dict[str, float]:
    """Forward FLOPs per sample by part, plus ``forward`` and ``train`` (= 3 x forward) totals.

    Every Linear is 2 x in x out per token it is applied to; the prior's attention adds its score
    (Q K^T) and value (P V) products over 2 * tokens + 1 queries and one more key (the null key).
    """
    if cfg.kind == "mindeye":
        parts = _high_level_flops(cfg, n_voxels)
    elif cfg.kind == "lowlevel":
        parts = _low_level_flops(cfg, n_voxels)
    else:
        raise MindEyeError(f"no FLOP count for model kind {cfg.kind!r}; use a mindeye or lowlevel config")
    forward = float(sum(parts.values()))
    return {**parts, "forward": forward, "train": 3.0 * forward}


def _high_level_flops(cfg: ModelConfig, n_voxels: int) -> dict[str, float]:
    b, proj, p = cfg.backbone, cfg.projector, cfg.prior
    parts = {"backbone": 2.0 * (n_voxels * b.hidden + b.n_blocks * b.hidden**2 + b.hidden * b.tokens * b.dim)}
    if proj.enabled:  # three Linears on every token
        parts["projector"] = 2.0 * b.tokens * (b.dim * proj.hidden + proj.hidden**2 + proj.hidden * b.dim)
    if p.enabled:
        d, inner, n = b.dim, p.heads * p.dim_head, 2 * b.tokens + 1  # [brain | time | noised image]
        ff = 4 * d  # PriorNetwork's ff_mult = 4, SwiGLU: proj_in d -> 2 ff, proj_out ff -> d
        per_token_layer = 2.0 * (d * inner + d * 2 * p.dim_head + inner * d + d * 2 * ff + ff * d)
        attention = 2.0 * 2.0 * p.heads * n * (n + 1) * p.dim_head  # scores + values, one null key
        time_mlp = 2.0 * (d * 2 * d + 2 * d * 2 * d + 2 * d * d)  # one time token per sample
        parts["prior_layers"] = p.depth * (n * per_token_layer)
        parts["prior_attention"] = p.depth * attention
        parts["prior_other"] = time_mlp + 2.0 * n * d * d  # + project_out on all n tokens
    return parts


def _low_level_flops(cfg: ModelConfig, n_voxels: int) -> dict[str, float]:
    c = cfg.lowlevel
    hw = c.spatial_size**2
    parts = {
        "mlp": 2.0 * (n_voxels * c.hidden + c.n_blocks * c.hidden**2 + c.hidden * c.spatial_channels * hw),
        # 1x1 convs on every position of the (C, s, s) map: C -> P -> P -> P
        "projector": 2.0 * hw * (c.spatial_channels * c.projector_dim + 2 * c.projector_dim**2),
        "upsampler": _upsampler_flops(cfg),
    }
    return parts


def _upsampler_flops(cfg: ModelConfig) -> float:
    """The diffusers Decoder's conv/linear/attention FLOPs from its layer shapes (one sample on the CPU).

    Conv2d: 2 x (C_in / groups) x k_h x k_w x C_out per output position; Linear: 2 x in x out per token;
    attention: 2 x 2 x n^2 x inner (scores and values) for n = H x W tokens.
    """
    from diffusers.models.attention_processor import Attention

    c = cfg.lowlevel
    with torch.device("meta"):
        model = build_model(cfg, n_voxels=8)
    up = model.upsampler.to_empty(device="cpu")  # only the decoder gets real (uninitialised) memory
    total = [0.0]

    def conv_hook(m: nn.Conv2d, inputs: Any, out: torch.Tensor) -> None:
        k = m.kernel_size[0] * m.kernel_size[1]
        total[0] += 2.0 * (m.in_channels // m.groups) * k * m.out_channels * out.shape[-2] * out.shape[-1]

    def linear_hook(m: nn.Linear, inputs: Any, out: torch.Tensor) -> None:
        total[0] += 2.0 * m.in_features * m.out_features * (out.numel() // m.out_features)

    def attn_hook(m: Attention, inputs: Any, out: torch.Tensor) -> None:
        x = inputs[0]
        n = x.shape[-2] * x.shape[-1] if x.ndim == 4 else x.shape[1]
        total[0] += 2.0 * 2.0 * n * n * m.to_q.out_features

    hooks = []
    for m in up.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, Attention):
            hooks.append(m.register_forward_hook(attn_hook))
    with torch.no_grad():
        up(torch.zeros(1, c.spatial_channels, c.spatial_size, c.spatial_size))
    for h in hooks:
        h.remove()
    return total[0]


def peak_tflops(device: str, override: float | None) -> float | None:
    """Dense bf16 peak of the device in TFLOP/s (None on the CPU or for an unknown GPU)."""
    if override:
        return override
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    for key, value in PEAK_TFLOPS:
        if key in name:
            return value
    return None


# --------------------------------------------------------------------------------------------- configs
def load_bench_config(pipeline: str, size: str, config: str | None, overrides: list[str]) -> Config:
    path = Path(config) if config else REPO / "src/mindeye/configs" / CONFIGS[(pipeline, size)]
    cfg = load_config(path, overrides)
    want = "mindeye" if pipeline == "high" else "lowlevel"
    if cfg.model.kind != want:
        raise MindEyeError(f"--pipeline {pipeline} needs a config with model.kind={want}; {path} has {cfg.model.kind}")
    return cfg


# ------------------------------------------------------------------------------------------- the step
class Checkpointed(nn.Module):
    """Activation checkpointing around a block: its activations are recomputed in backward.

    The dropout masks are replayed (RNG state preserved), so the maths is unchanged.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any) -> Any:
        if self.training and torch.is_grad_enabled():
            return checkpoint(self.inner, *args, use_reentrant=False)
        return self.inner(*args)


def apply_checkpointing(model: nn.Module, pipeline: str) -> None:
    """Checkpoint the residual MLP blocks, the projector and the prior layers (high) / the decoder
    blocks (low). Only benchmark-side wrapping: the model files are unchanged."""
    def wrap_all(blocks: nn.ModuleList) -> None:
        for i, blk in enumerate(blocks):
            blocks[i] = Checkpointed(blk)

    wrap_all(model.blocks if pipeline == "low" else model.backbone.blocks)
    if pipeline == "high":
        if model.projector is not None:
            model.projector.net = Checkpointed(model.projector.net)
        if model.prior is not None:
            wrap_all(model.prior.net.blocks)
    else:
        wrap_all(model.upsampler.up_blocks)
        model.upsampler.mid_block = Checkpointed(model.upsampler.mid_block)


def apply_compile(model: nn.Module, pipeline: str, mode: str) -> None:
    """torch.compile the modules in place (state-dict names unchanged)."""
    kwargs = {} if mode == "default" else {"mode": mode}
    if pipeline == "low":
        model.compile(**kwargs)
        return
    model.backbone.compile(**kwargs)
    if model.projector is not None:
        model.projector.compile(**kwargs)
    if model.prior is not None:
        model.prior.net.compile(**kwargs)


class Optimizers:
    """AdamW as the trainer builds it (param groups, OneCycleLR), in one of several implementations.

    ``in_backward``: one AdamW per parameter, stepped by a post-accumulate-grad hook as soon as that
    gradient is complete, then the gradient is freed -- the full gradient set never exists at once.
    AdamW is elementwise per parameter and the trainer does not clip gradients, so this is the same
    update; it cannot be combined with a GradScaler (fp16).
    """

    def __init__(self, model: nn.Module, cfg: Config, impl: str, in_backward: bool, total_steps: int) -> None:
        t = cfg.train
        groups = param_groups(model, t.weight_decay, t.no_decay)
        self.in_backward = in_backward

        def make(params_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
            if impl in ("8bit", "paged-8bit"):
                try:
                    import bitsandbytes as bnb
                except ImportError:
                    raise MindEyeError("--adam-8bit needs bitsandbytes: pip install bitsandbytes (CUDA only)") from None
                cls = bnb.optim.PagedAdamW8bit if impl == "paged-8bit" else bnb.optim.AdamW8bit
                return cls(params_groups, lr=t.max_lr)
            kw = {"fused": {"fused": True}, "foreach": {"foreach": True},
                  "forloop": {"foreach": False, "fused": False}, "default": {}}[impl]
            return torch.optim.AdamW(params_groups, lr=t.max_lr, **kw)

        if in_backward:
            self.optimizers = []
            for g in groups:
                for p in g["params"]:
                    opt = make([{"params": [p], "weight_decay": g["weight_decay"]}])
                    self.optimizers.append(opt)
                    p.register_post_accumulate_grad_hook(_step_and_free(opt))
        else:
            self.optimizers = [make(groups)]
        self.schedulers = [torch.optim.lr_scheduler.OneCycleLR(
            o, max_lr=t.max_lr, total_steps=total_steps, pct_start=0.5, final_div_factor=t.final_div_factor)
            for o in self.optimizers]

    def zero_grad(self) -> None:
        if not self.in_backward:
            self.optimizers[0].zero_grad(set_to_none=True)

    def step(self, scaler: torch.amp.GradScaler | None) -> None:
        if not self.in_backward:
            if scaler is not None:
                scaler.step(self.optimizers[0])
                scaler.update()
            else:
                self.optimizers[0].step()
        for s in self.schedulers:
            s.step()


def _step_and_free(opt: torch.optim.Optimizer) -> Callable[[torch.Tensor], None]:
    def hook(p: torch.Tensor) -> None:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return hook


def make_task(pipeline: str, cfg: Config, device: str, store_path: Path | None = None) -> Any:
    """The trainer's task object: the real one reading a store, else one with just what ``loss`` uses."""
    from mindeye.data.store import SubjectStore

    stub = SimpleNamespace(cfg=cfg, dist=DistInfo(), device=device, store_path=store_path,
                           store=SubjectStore(store_path) if store_path else None)
    if store_path is not None:
        return HighLevelTask(stub) if pipeline == "high" else LowLevelTask(stub)
    if pipeline == "high":
        task = object.__new__(HighLevelTask)
        task.t, task.mixco_epochs = stub, int(math.floor(cfg.train.mixco_fraction * cfg.train.epochs))
    else:
        task = object.__new__(LowLevelTask)
        task.t = stub
        task.teacher = True if cfg.train.lowlevel_contrastive_weight > 0 else None  # loss only tests for None
        task.latent_scale = 0.18215 if cfg.targets.lowlevel_encoder == "sd-vae" else 1.0
    return task


# ------------------------------------------------------------------------------------------------ data
def random_batches(pipeline: str, cfg: Config, n_voxels: int, batch: int, device: str, on_device: bool,
                   with_images: int, n_distinct: int = 4) -> Iterator[dict[str, Any]]:
    """Random voxels and cached-target-shaped tensors (CPU like the trainer's, or already on the device)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    where = device if on_device else "cpu"
    m = cfg.model
    batches = []
    for _ in range(n_distinct):
        b: dict[str, Any] = {"voxels": torch.randn(batch, n_voxels, generator=gen).to(where), "device": device}
        if pipeline == "high":
            tok = torch.randn(batch, m.backbone.tokens, m.backbone.dim, generator=gen)
            b["targets"] = (tok / tok[:, :1].norm(dim=-1, keepdim=True)).to(where)  # CLS-normalised like CLIP's
            b["generator"] = gen
        else:
            side = 4 * m.lowlevel.spatial_size
            b["latents"] = torch.randn(batch, m.lowlevel.latent_channels, side, side, generator=gen).to(where)
            b["teacher"] = torch.randn(batch, m.lowlevel.spatial_size**2, m.lowlevel.projector_dim,
                                       generator=gen).to(where)
        if with_images:
            b["images"] = torch.randint(0, 256, (batch, with_images, with_images, 3), dtype=torch.uint8,
                                        generator=gen).to(device)
        batches.append(b)
    return itertools.cycle(batches)


def store_batches(task: Any, epoch: int) -> Iterator[dict[str, Any]]:
    """The trainer's own batches (targets from the store's cache), epoch after epoch."""
    for e in itertools.count(epoch):
        yield from task.batches(e)


def reference_store_batches(pipeline: str, cfg: Config, store_path: Path, batch: int, device: str,
                            epoch: int) -> Iterator[dict[str, Any]]:
    """Voxels as the trainer samples them plus the raw store images (targets are computed online)."""
    from mindeye.data.store import SubjectStore
    from mindeye.training.data import load_repetitions, load_trials, train_val_images

    store = SubjectStore(store_path)
    train_imgs, _ = train_val_images(store, cfg)
    if pipeline == "high":
        split = load_trials(store, train_imgs)
        n, image_of_row = len(split), split.image_index
    else:
        vox, mask, image_of_row = load_repetitions(store, train_imgs)
        n = len(image_of_row)
    if n < batch:
        raise MindEyeError(f"the store has {n} training rows, fewer than --batch {batch}")
    for e in itertools.count(epoch):
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + e)
        perm = torch.randperm(n, generator=gen)
        for s in range(n // batch):
            idx = perm[s * batch:(s + 1) * batch]
            images = np.asarray(store.images[np.sort(image_of_row[idx.numpy()])])  # sorted: memmap-friendly
            order = np.argsort(np.argsort(image_of_row[idx.numpy()], kind="stable"), kind="stable")
            b: dict[str, Any] = {"device": device, "images": torch.from_numpy(images[order]).to(device)}
            if pipeline == "high":
                b["voxels"], b["generator"] = split.voxels[idx].float(), gen
            else:
                b["voxels"] = mix_repetitions(vox[idx], mask[idx], gen, cfg.train.lowlevel_repetition_mix)
            yield b


class OnlineTargets:
    """The reference's per-batch targets: augmentation + frozen encoders on every batch, on the device.

    High level: CLIP ViT-L/14 (all 257 tokens) on the ``clip``-augmented images. Low level: SD-VAE latents
    of the plain images and VICRegL tokens of the ``teacher``-augmented images. The augmentation runs
    image by image on the device (torchvision ops; the reference used kornia on the batch).
    """

    def __init__(self, pipeline: str, size: str, device: str) -> None:
        from mindeye.encoders import get_encoder

        def enc(name: str, key: str) -> Any:
            config, options = SMALL_ENCODERS[key] if size == "small" else (None, {})
            return get_encoder(name, device=device, random_init=True, config=config, dtype=torch.float32, **options)

        self.pipeline = pipeline
        if pipeline == "high":
            self.encoders = {"targets": (enc("clip-vit-l14-hidden", "clip"), "clip")}
        else:
            self.encoders = {"latents": (enc("sd-vae", "vae"), None),
                             "teacher": (enc("vicregl-convnext", "vicregl"), "teacher")}
        self.rng = np.random.default_rng(0)

    def image_size(self) -> int:
        return max(e.image_size for e, _ in self.encoders.values())

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from mindeye.encoders.augment import augment_image

        images = batch["images"]  # (N, H, W, 3) uint8 on the device
        out = dict(batch)
        for key, (encoder, preset) in self.encoders.items():
            x = images
            if preset is not None:
                chw = images.permute(0, 3, 1, 2)
                x = torch.stack([augment_image(im, preset, self.rng) for im in chw]).permute(0, 2, 3, 1)
            out[key] = encoder(encoder.preprocess(x)).float()
        return out


# ------------------------------------------------------------------------------------------- measuring
@dataclass
class Result:
    name: str
    pipeline: str
    size: str
    device: str
    hardware: str
    precision: str
    optimizer: str
    levers: str
    batch: int
    steps: int
    parameters: int
    ms_per_step: float
    samples_per_s: float
    train_gflop_per_sample: float
    achieved_tflops: float
    mfu: float | None
    peak_allocated_gib: float | None
    peak_reserved_gib: float | None
    peak_rss_gib: float | None
    rss_growth_gib: float | None
    mean_loss: float
    build_s: float


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_one(args: argparse.Namespace, name: str, reference: bool, online_targets: bool) -> Result:
    """Build the model and optimizer, warm up, time ``args.steps`` training steps."""
    device = args.device
    cfg = load_bench_config(args.pipeline, args.size, args.config, args.set)
    store_path = Path(args.data) if args.source == "store" else None
    if store_path is not None:
        from mindeye.data.store import SubjectStore

        n_voxels = SubjectStore(store_path).n_voxels
    else:
        n_voxels = args.voxels or (SUBJ01_VOXELS if args.size == "full" else SMALL_VOXELS)
    cfg.train.batch_size = args.batch
    epoch = 0 if args.phase == "bimixco" else int(math.floor(cfg.train.mixco_fraction * cfg.train.epochs))

    if reference:
        precision, adam, compile_mode, ckpt, in_backward, on_device = "fp16", "forloop", None, False, False, False
        if device == "cpu":
            precision = "fp32"  # fp16 autocast on the CPU is neither the reference nor fast
    else:
        precision = args.precision if args.precision != "auto" else ("bf16" if device.startswith("cuda") else "fp32")
        adam = args.adam_8bit or ({True: "fused", False: "foreach", None: "fused" if device.startswith("cuda")
                                   else "default"}[args.fused_adam])
        compile_mode = args.compile_mode if args.compile else None
        ckpt, in_backward, on_device = args.checkpointing, args.optimizer_in_backward, args.data_on_device
    if in_backward and precision == "fp16":
        raise MindEyeError("--optimizer-in-backward cannot be combined with fp16 (GradScaler); use --precision bf16")

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch.backends.cuda.matmul.allow_tf32 = True  # as the trainer (and the reference)
        torch.backends.cudnn.allow_tf32 = True
    rss0 = _rss()
    t_build = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, n_voxels, device=device)
    model.train()
    n_params = parameter_counts(model)["total"]
    if ckpt:
        apply_checkpointing(model, args.pipeline)
    if compile_mode:
        apply_compile(model, args.pipeline, compile_mode)
    total = args.warmup + args.steps + 1
    opt = Optimizers(model, cfg, adam, in_backward, total)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" and device.startswith("cuda") else None
    autocast = (torch.autocast(device_type=device.split(":")[0], dtype={"bf16": torch.bfloat16,
                "fp16": torch.float16}[precision]) if precision != "fp32" else None)

    # Online targets on a store come from its images; otherwise the trainer's own batches (target cache).
    task = make_task(args.pipeline, cfg, device, None if online_targets else store_path)
    online = OnlineTargets(args.pipeline, args.size, device) if online_targets else None
    if store_path is None:
        img = (args.image_size or online.image_size()) if online else 0
        batches = random_batches(args.pipeline, cfg, n_voxels, args.batch, device, on_device, img)
    elif online_targets:
        batches = reference_store_batches(args.pipeline, cfg, store_path, args.batch, device, epoch)
    else:
        if on_device and args.pipeline == "high":
            task.train.voxels = task.train.voxels.to(device)
        batches = store_batches(task, epoch)
    build_s = time.perf_counter() - t_build

    losses: list[torch.Tensor] = []

    def step() -> None:
        batch = next(batches)
        if online is not None:
            if autocast is not None:
                with autocast:
                    batch = online(batch)
            else:
                batch = online(batch)
        if autocast is not None:
            with autocast:
                loss, _ = task.loss(model, model, batch, epoch)
        else:
            loss, _ = task.loss(model, model, batch, epoch)
        opt.zero_grad()
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        opt.step(scaler)
        losses.append(loss.detach())

    for _ in range(args.warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    elapsed = time.perf_counter() - t0
    mean_loss = float(torch.stack(losses[args.warmup:]).float().mean())

    flops = flops_per_sample(cfg.model, n_voxels)["train"]
    sps = args.batch * args.steps / elapsed
    peak = peak_tflops(device, args.peak_tflops)
    achieved = flops * sps / 1e12
    cuda = device.startswith("cuda")
    levers = [f"compile={compile_mode}" if compile_mode else "", "checkpointing" if ckpt else "",
              "optimizer-in-backward" if in_backward else "", "data-on-device" if on_device else "",
              f"targets={'online' if online_targets else 'cached'}", f"source={args.source}", f"phase={args.phase}"]
    result = Result(
        name=name, pipeline=args.pipeline, size=args.size, device=device,
        hardware=torch.cuda.get_device_name(torch.device(device)) if cuda else f"CPU, {torch.get_num_threads()} threads",
        precision=precision + ("+GradScaler" if scaler is not None else ""), optimizer=f"AdamW({adam})",
        levers=" ".join(x for x in levers if x), batch=args.batch, steps=args.steps, parameters=n_params,
        ms_per_step=1000 * elapsed / args.steps, samples_per_s=sps, train_gflop_per_sample=flops / 1e9,
        achieved_tflops=achieved, mfu=achieved / peak if peak else None,
        peak_allocated_gib=torch.cuda.max_memory_allocated(device) / GIB if cuda else None,
        peak_reserved_gib=torch.cuda.max_memory_reserved(device) / GIB if cuda else None,
        peak_rss_gib=None if cuda else _max_rss() / GIB,
        rss_growth_gib=None if cuda else (_max_rss() - rss0) / GIB,
        mean_loss=mean_loss, build_s=build_s,
    )
    if not math.isfinite(mean_loss):
        print(f"warning: {name}: non-finite loss {mean_loss}", file=sys.stderr)
    return result


def run_whole_train(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``--whole-train``: the real ``Trainer.fit`` loop (data path, step, scheduler, logging) per
    ``train.data_path``, timed between optimizer steps ``warmup`` and ``warmup + steps``.

    The clock is read in a global optimizer step post-hook (after a device sync), so the window holds
    exactly ``steps`` whole iterations of the loop and nothing of the setup (store reading, model
    build) or of the end of the epoch (validation, checkpoint): ``warmup + steps`` must fit in an epoch.
    """
    import tempfile

    from torch.optim.optimizer import register_optimizer_step_post_hook

    from mindeye.training.trainer import Trainer

    rows = []
    for data_path in args.data_paths.split(","):
        cfg = load_bench_config(args.pipeline, args.size, args.config,
                                [*args.set, f"train.data_path={data_path}", "train.val_every=100000"])
        cfg.train.batch_size = args.batch
        cfg.train.max_steps = args.warmup + args.steps
        cfg.train.log_every = max(cfg.train.max_steps, 1)  # the loop's one host sync, once
        stamps: list[float] = []

        def stamp(*_: Any, stamps: list[float] = stamps) -> None:
            _sync(args.device)
            stamps.append(time.perf_counter())

        handle = register_optimizer_step_post_hook(stamp)
        t0 = time.perf_counter()
        import mindeye.encoders.cache as cache

        real_load = cache.load_targets
        if args.random_init_targets:  # the trainer reads the `mindeye embed --random-init` cache
            cache.load_targets = functools.partial(real_load, random_init=True)
        try:
            with tempfile.TemporaryDirectory(prefix="mindeye-whole-train-") as out:
                trainer = Trainer(cfg, out, store=args.data, device=args.device, progress=False)
                result = trainer.fit()
        finally:
            handle.remove()
            cache.load_targets = real_load
        total = time.perf_counter() - t0
        if result["steps"] < cfg.train.max_steps or len(stamps) < args.warmup + args.steps:
            raise MindEyeError(f"the store gives {result['steps']} steps, fewer than --warmup + --steps")
        first = stamps[args.warmup - 1] if args.warmup else t0
        elapsed = stamps[args.warmup + args.steps - 1] - first
        sps = args.batch * args.steps / elapsed
        flops = flops_per_sample(cfg.model, trainer.store.n_voxels)["train"]
        peak = peak_tflops(args.device, args.peak_tflops)
        cuda = args.device.startswith("cuda")
        rows.append({"data_path": data_path, "ms_per_step": 1000 * elapsed / args.steps, "samples_per_s": sps,
                     "mfu": flops * sps / 1e12 / peak if peak else None, "fit_s": total,
                     "peak_allocated_gib": torch.cuda.max_memory_allocated() / GIB if cuda else None,
                     "peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB if cuda else None,
                     "pipeline": args.pipeline, "size": args.size, "batch": args.batch, "steps": args.steps})
        if cuda:
            torch.cuda.reset_peak_memory_stats()
    print(f"\nwhole `mindeye train` loop, {args.pipeline}-level {args.size}, batch {args.batch}, "
          f"{args.warmup} warm-up + {args.steps} timed steps, store {args.data}:")
    print("| train.data_path | ms/step | samples/s | vs simple | MFU | peak alloc / reserved GiB | fit() s |\n"
          "|---|---|---|---|---|---|---|")
    base = next((r for r in rows if r["data_path"] == "simple"), rows[0])
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        mem = (f"{r['peak_allocated_gib']:.2f} / {r['peak_reserved_gib']:.2f}" if r["peak_reserved_gib"] is not None
               else "n/a (CPU)")
        print(f"| {r['data_path']} | {r['ms_per_step']:.1f} | {r['samples_per_s']:.1f} | "
              f"{r['samples_per_s'] / base['samples_per_s']:.2f}x | {mfu} | {mem} | {r['fit_s']:.1f} |")
    return rows


def _fmt(r: Result) -> str:
    mfu = f"{100 * r.mfu:.1f}%" if r.mfu is not None else "n/a"
    if r.peak_reserved_gib is not None:
        mem = f"peak {r.peak_allocated_gib:.2f} GiB allocated / {r.peak_reserved_gib:.2f} GiB reserved"
    else:
        mem = f"peak RSS {r.peak_rss_gib:.2f} GiB (grew {r.rss_growth_gib:.2f} GiB during this run)"
    return (f"{r.name:<22} {r.ms_per_step:9.1f} ms/step {r.samples_per_s:9.1f} samples/s  "
            f"{r.achieved_tflops:8.3f} TFLOP/s  MFU {mfu:>6}  {mem}\n"
            f"{'':<22} {r.precision}, {r.optimizer}, {r.levers}; loss {r.mean_loss:.4f}; build {r.build_s:.1f} s")


def print_flops(cfg: ModelConfig, n_voxels: int, label: str) -> None:
    f = flops_per_sample(cfg, n_voxels)
    parts = ", ".join(f"{k} {v / 1e9:.4g}" for k, v in f.items() if k not in ("forward", "train"))
    print(f"FLOPs per sample ({label}, {n_voxels} voxels): forward {f['forward'] / 1e9:.4g} GFLOP ({parts}); "
          f"training step 3 x forward = {f['train'] / 1e9:.4g} GFLOP")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", choices=["high", "low"], default="high")
    ap.add_argument("--mode", choices=["ours", "reference"], default="ours")
    ap.add_argument("--compare", action="store_true", help="reference (online targets), reference (cached "
                    "targets) and ours in this process; prints the speed-ups")
    ap.add_argument("--reference-targets", choices=["online", "cached"], default="online",
                    help="reference mode: run the frozen encoders on every batch (online) or not (cached)")
    ap.add_argument("--size", choices=["full", "small"], default="full")
    ap.add_argument("--config", default=None, help="model/train config (default: the subject-1 config "
                    "for --size full, the demo config for --size small)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--source", choices=["random", "store"], default="random")
    ap.add_argument("--data", default=None, help="subject store for --source store")
    ap.add_argument("--voxels", type=int, default=None, help="voxels for --source random "
                    f"(default {SUBJ01_VOXELS} full, {SMALL_VOXELS} small)")
    ap.add_argument("--image-size", type=int, default=None, help="side of the random images the online "
                    "encoders see (default: the encoder's input size, 224 for CLIP)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--phase", choices=["bimixco", "softclip"], default="bimixco",
                    help="contrastive phase of the high-level loss (first third / rest of training)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    # levers (mode ours)
    ap.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                    help="autocast dtype (auto: bf16 on CUDA, fp32 on CPU, as the trainer)")
    ap.add_argument("--fused-adam", action=argparse.BooleanOptionalAction, default=None,
                    help="fused AdamW (--no-fused-adam: foreach); default as the trainer: fused on CUDA")
    ap.add_argument("--adam-8bit", choices=["8bit", "paged-8bit"], default=None,
                    help="bitsandbytes 8-bit (optionally paged) AdamW states (changes the optimizer's numerics)")
    ap.add_argument("--optimizer-in-backward", action="store_true",
                    help="step each parameter in its gradient hook and free the gradient (same update)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model's modules")
    ap.add_argument("--compile-mode", default="default",
                    choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                    help="torch.compile mode (reduce-overhead = CUDA graphs)")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing of blocks")
    ap.add_argument("--data-on-device", action="store_true",
                    help="batches already on the device (no per-step host-to-device copies of targets)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (default: by GPU name)")
    ap.add_argument("--json", default=None, help="append the results as JSON lines to this file")
    ap.add_argument("--whole-train", action="store_true", help="time the whole `mindeye train` loop (data "
                    "path included) on --data STORE, once per --data-paths entry")
    ap.add_argument("--data-paths", default="simple,prefetch,resident",
                    help="--whole-train: comma-separated train.data_path values to compare")
    ap.add_argument("--random-init-targets", action="store_true", help="--whole-train: read the store's "
                    "`mindeye embed --random-init` caches (timing only; a GPU machine has no real weights)")
    args = ap.parse_args(argv)
    if args.whole_train and not args.data:
        ap.error("--whole-train needs --data STORE")
    if args.source == "store" and not args.data:
        ap.error("--source store needs --data STORE")
    if args.steps < 1 or args.warmup < 0 or args.batch < 2:
        ap.error("need --steps >= 1, --warmup >= 0, --batch >= 2")
    return args


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = resolve_device(args.device)
    if args.whole_train:
        rows = run_whole_train(args)
        if args.json:
            with open(args.json, "a") as f:
                for r in rows:
                    f.write(json.dumps({**r, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}) + "\n")
        return rows  # type: ignore[return-value]
    cfg = load_bench_config(args.pipeline, args.size, args.config, args.set)
    print(f"torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name(torch.device(args.device))})" if args.device.startswith("cuda") else
             f" ({torch.get_num_threads()} threads)") + f", batch {args.batch}, {args.warmup} warm-up + "
          f"{args.steps} timed steps")
    if args.source == "store":
        from mindeye.data.store import SubjectStore

        n_vox = SubjectStore(args.data).n_voxels
    else:
        n_vox = args.voxels or (SUBJ01_VOXELS if args.size == "full" else SMALL_VOXELS)
    print_flops(cfg.model, n_vox, f"{args.pipeline}-level, {args.size}")
    if args.size == "small":  # the full-size number is the one the issue quotes
        full = load_bench_config(args.pipeline, "full", None, [])
        print_flops(full.model, SUBJ01_VOXELS, f"{args.pipeline}-level, full size")
    peak = peak_tflops(args.device, args.peak_tflops)
    print(f"MFU peak: {peak} TFLOP/s" if peak else "MFU: n/a (no GPU peak known; pass --peak-tflops)")

    if args.compare:
        plan = [("reference", True, True), ("reference-cached", True, False), ("ours", False, False)]
    else:
        plan = [(args.mode, args.mode == "reference", args.mode == "reference" and args.reference_targets == "online")]
    results = []
    for name, reference, online in plan:
        r = run_one(args, name, reference, online)
        results.append(r)
        print(_fmt(r), flush=True)
    if args.compare:
        ref, ref_cached, ours = results
        print(f"speed-up ours / reference (online targets, as the authors ran it): "
              f"{ours.samples_per_s / ref.samples_per_s:.2f}x")
        print(f"speed-up ours / reference model step (cached targets; the issue's 5x target): "
              f"{ours.samples_per_s / ref_cached.samples_per_s:.2f}x")
    if args.json:
        with open(args.json, "a") as f:
            for r in results:
                f.write(json.dumps({**asdict(r), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}) + "\n")
    return results


if __name__ == "__main__":
    try:
        main()
    except MindEyeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
