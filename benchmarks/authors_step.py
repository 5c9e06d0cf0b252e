"""Our training step against the MindEye authors' own step, same size, same weights, one process.

    # a reference environment with the authors' pinned packages (see benchmarks/README.md, "authors_step.py"):
    PYTHONPATH=src /tmp/refvenv/bin/python benchmarks/authors_step.py --authors-src /tmp/authors-nsd
    PYTHONPATH=src python benchmarks/authors_step.py --authors-src PATH --device cuda --size full --targets both

``--authors-src`` is a checkout of MedARC-AI/fMRI-reconstruction-NSD (the folder holding ``src/`` or ``src``
itself). Nothing of it is copied here: at run time this script imports their ``models.py`` / ``utils.py``
and **executes their own statements** from ``Train_MindEye.py`` and ``train_autoencoder.py``, located by
parsing those scripts (``ast``): their argument parser and defaults, Accelerator(fp16), the model and
optimizer construction, OneCycleLR, and the body of their ``for train_i, ... in enumerate(train_dl)`` loop
(fp16 autocast + GradScaler through accelerate on CUDA, their per-step ``.item()`` host syncs and
metrics, kornia augmentation + CLIP when the targets are computed online). What is replaced, and only
that: the data loader (batches are handed to the loop body as their loader would deliver them, already on
the device), weight *loading* of the frozen encoders (random initialisation at their architecture: this
machine reaches no model hub), and, for ``--targets cached``, the frozen encoders themselves (their
``clip_extractor.embed_image`` / ``autoenc.encode`` / ``cnx`` return the cached tensors, as ours read a
target cache). Modules their files import that the step never uses (``clip_retrieval``, and ``clip``,
``open_clip``, ``webdataset``, ... when not installed) are stubbed and listed in the output.

Before any timing, a same-weights check: their freshly built model's state dict goes through our
converter (``mindeye.models.convert``, the one that imports their checkpoints) into our model, both get
the same batch and the same seed, and their loss (the number their loop appends to ``losses``) and every
parameter's gradient must match ours (fp32 on the CPU: relative 1e-4 on the loss, 1e-3 on gradients; on
CUDA both sides run fp16 autocast for the check, relative 2e-2 on the loss). The check runs in the SoftCLIP
phase (no MixCo draws; the two sides draw MixCo differently) with dropout and prior conditioning dropout
active: the random draws happen in the same order on both sides. A failed check stops the script (exit
3) before any ratio is printed.

Timing: ``--rounds`` rounds; in each, every side runs ``--steps`` steps (order alternating between
rounds so drift and neighbours' load hit both); samples/s per round, median and [min, max] over rounds,
and the ratio ours / theirs per round (median [min, max]). Memory: on CUDA the peak allocated/reserved
above what was allocated before that side was built (both sides live on the card together); on the CPU
the growth of the process's resident set while that side was built and warmed up.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
SUBJ01_VOXELS = 15724
# The CPU size: full 257 x 768 head and prior, reduced MLP.
SIZES = {"test": {"hidden": 64, "n_blocks": 1}, "small": {"hidden": 1024, "n_blocks": 2},
         "full": {"hidden": 4096, "n_blocks": 4}}
# Imported by their models.py / utils.py / convnext.py but never used by the training step.
STUBBABLE = ("clip", "open_clip", "clip_retrieval", "clip_retrieval.clip_client", "webdataset", "braceexpand",
             "matplotlib", "matplotlib.pyplot", "pandas", "requests", "info_nce", "pytorch_msssim")
# What their step needs for real (no stubs): the reference environment must have these.
REQUIRED = ("dalle2_pytorch", "diffusers", "kornia", "accelerate", "einops", "transformers", "timm")
VERSIONS = ("torch", "dalle2-pytorch", "diffusers", "kornia", "accelerate", "transformers", "einops",
            "rotary-embedding-torch", "timm", "huggingface-hub", "numpy")
GIB = 1024**3


class AuthorsUnavailable(RuntimeError):
    """The authors' checkout or one of their required packages is missing."""


class CheckFailed(RuntimeError):
    """Ours and theirs do not compute the same loss from the same weights."""


# --------------------------------------------------------------------------------- their source files
def authors_src_dir(path: str | Path) -> Path:
    p = Path(path).expanduser().resolve()
    for cand in (p / "src", p):
        if (cand / "models.py").is_file() and (cand / "Train_MindEye.py").is_file():
            return cand
    raise AuthorsUnavailable(f"{path}: no models.py + Train_MindEye.py there or under src/ "
                             "(a checkout of MedARC-AI/fMRI-reconstruction-NSD is expected)")


class _Stub(types.ModuleType):
    """A module the step never uses: any attribute is a class that refuses to be used."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def refuse(*_: Any, **__: Any) -> Any:
            raise RuntimeError(f"{self.__name__}.{name} is stubbed by benchmarks/authors_step.py "
                               "(not part of the training step)")
        return type(name, (), {"__init__": refuse, "__call__": refuse})


def import_authors(src: Path) -> tuple[types.ModuleType, types.ModuleType, list[str]]:
    """Import their ``models`` and ``utils``; stub the unused imports that are not installed."""
    missing = [m for m in REQUIRED if importlib.util.find_spec(m) is None]
    if missing:
        raise AuthorsUnavailable(f"the authors' step needs {', '.join(missing)} (their pinned versions: "
                                 "benchmarks/README.md, 'authors_step.py')")
    stubbed = []
    for name in STUBBABLE:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except Exception:  # not installed, or broken against this torch: the step does not use it
            sys.modules[name] = _Stub(name)
            stubbed.append(name)
            parent, _, child = name.rpartition(".")
            if parent and parent in sys.modules:
                setattr(sys.modules[parent], child, sys.modules[name])
    for generic in ("models", "utils", "convnext"):  # their module names are generic: keep them theirs
        mod = sys.modules.get(generic)
        if mod is not None and not str(getattr(mod, "__file__", "")).startswith(str(src)):
            raise AuthorsUnavailable(f"another module named {generic!r} is already imported ({mod.__file__})")
    sys.path.insert(0, str(src))
    # diffusers 0.13 imports hub download helpers that newer huggingface_hub releases dropped (a GPU image
    # with a recent transformers has such a hub); the step downloads nothing: placeholders that refuse.
    import huggingface_hub
    import huggingface_hub.utils as hub_utils

    for owner, names in ((huggingface_hub, ("HfFolder", "cached_download", "hf_hub_download", "model_info",
                                            "snapshot_download", "ModelCard", "ModelCardData", "whoami")),
                         (hub_utils, ("EntryNotFoundError", "RepositoryNotFoundError", "RevisionNotFoundError",
                                      "is_jinja_available"))):
        for name in names:
            if not hasattr(owner, name):
                setattr(owner, name, _Stub(owner.__name__).__getattr__(name))
                stubbed.append(f"{owner.__name__}.{name}")
    if int(importlib.metadata.version("transformers").split(".")[0]) >= 5 and "diffusers" not in sys.modules:
        # diffusers 0.13 imports its pipelines when transformers is present, and those need transformers < 5
        # (a GPU image has 5.x). The step uses diffusers' VAE Decoder / AutoencoderKL only: let diffusers
        # see no transformers while it is imported (their Clipper still gets the real one later).
        real_find_spec = importlib.util.find_spec
        importlib.util.find_spec = lambda name, package=None: (None if name == "transformers"
                                                               else real_find_spec(name, package))
        try:
            with _quiet():
                importlib.import_module("diffusers")
        finally:
            importlib.util.find_spec = real_find_spec
        stubbed.append("transformers (hidden from diffusers 0.13's import only: its pipelines need transformers < 5)")
    try:
        with _quiet():
            models = importlib.import_module("models")
            utils = importlib.import_module("utils")
    except ImportError as exc:
        raise AuthorsUnavailable(f"importing the authors' models/utils failed: {exc}") from exc
    return models, utils, stubbed


def versions() -> dict[str, str]:
    out = {}
    for name in VERSIONS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    out["torch"] = torch.__version__
    return out


@contextlib.contextmanager
def _quiet():
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


class Script:
    """One of their training scripts, parsed: top-level statements by their first characters, and the
    inner training loop's body (``for train_i, ... in enumerate(train_dl)``) compiled as is."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.source = path.read_text()
        self.tree = ast.parse(self.source)
        self.top = [(ast.get_source_segment(self.source, s) or "", s) for s in self.tree.body]

    def _code(self, stmts: list[ast.stmt]) -> types.CodeType:
        return compile(ast.Module(body=stmts, type_ignores=[]), str(self.path), "exec")

    def pick(self, *prefixes: str, contains: str | None = None, every: bool = False) -> types.CodeType:
        """The first top-level statement starting with each prefix (all of them with ``every``)."""
        out = []
        for prefix in prefixes:
            found = [s for text, s in self.top if text.startswith(prefix) and (contains is None or contains in text)]
            if not found:
                raise AuthorsUnavailable(f"{self.path.name}: no top-level statement starting with {prefix!r}"
                                         + (f" containing {contains!r}" if contains else "")
                                         + " (is this commit 6b30ea5 of their repository?)")
            out.extend(found if every else found[:1])
        return self._code(out)

    def train_loop(self, loader: str = "train_dl") -> tuple[types.CodeType, types.CodeType]:
        """(the epoch loop's statements before the inner loop, the inner loop's body)."""
        for outer in ast.walk(self.tree):
            if not isinstance(outer, ast.For):
                continue
            for i, inner in enumerate(outer.body):
                it = getattr(inner, "iter", None)
                if (isinstance(inner, ast.For) and isinstance(it, ast.Call) and getattr(it.func, "id", "") == "enumerate"
                        and it.args and getattr(it.args[0], "id", "") == loader):
                    return self._code(outer.body[:i]), self._code(inner.body)
        raise AuthorsUnavailable(f"{self.path.name}: no `for ... in enumerate({loader})` training loop found")


def _devnull_tqdm(*args: Any, **kwargs: Any) -> Any:
    from tqdm import tqdm

    return tqdm(*args, **{**kwargs, "file": open(os.devnull, "w")})  # noqa: SIM115 -- lives as long as the bar


def _force(cls: Callable[..., Any], **forced: Any) -> Callable[..., Any]:
    """``cls`` with some keyword arguments forced (their scripts pass sizes explicitly)."""
    if not forced:
        return cls

    @functools.wraps(cls)
    def build(*args: Any, **kwargs: Any) -> Any:
        return cls(*args, **{**kwargs, **forced})
    return build


# ------------------------------------------------------------------------------------- their frozen encoders
class CachedTargets:
    """Stands in for their frozen encoder when targets are cached: returns this batch's cached tensors."""

    def __init__(self) -> None:
        self.current: Any = None

    def requires_grad_(self, *_: Any) -> CachedTargets:  # their setup freezes the encoder
        return self

    eval = to = requires_grad_

    # Clipper.embed_image(image) -> (B, 257, 768)
    def embed_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.current

    # autoenc.encode(x).latent_dist.mode() * 0.18215 == the cached (scaled) latents
    def encode(self, x: torch.Tensor) -> Any:
        latents = self.current["latents"]
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: latents / 0.18215))

    # _, cnx_embeds = cnx(image): the cached teacher tokens (also for the augmented view)
    def __call__(self, x: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, self.current["teacher"]


def _clip_vit_l14_random(small: bool) -> Callable[..., Any]:
    """``CLIPVisionModelWithProjection.from_pretrained`` replacement: their ViT-L/14 at random init
    (``small``: 2 narrow layers with the same 257 x 768 output, for a CPU smoke run)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    def build(*_: Any, **__: Any) -> Any:
        cfg = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                   image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
        if small:
            cfg.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
        return CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg))
    return build


# ------------------------------------------------------------------------------------------------ theirs
def no_decay_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> set[str]:
    """Names of the parameters their optimizer groups put at weight decay 0."""
    ids = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


class AuthorsHigh:
    """Their high-level training (Train_MindEye.py), built and stepped by their own statements."""

    def __init__(self, src: Path, models: types.ModuleType, utils: types.ModuleType, device: str, size: str,
                 batch: int, online: bool, phase: str, prior_depth: int | None = None,
                 n_voxels: int = SUBJ01_VOXELS) -> None:
        script = Script(src / "Train_MindEye.py")
        from accelerate import Accelerator

        self.cache = CachedTargets()
        clipper: Any = (lambda *a, **k: self.cache)  # noqa: E731
        if online:
            clipper = self._online_clipper(models, size != "full")
        sizes = SIZES[size]
        ns: dict[str, Any] = {
            "__name__": "authors_train_mindeye", "torch": torch, "nn": nn, "np": np, "os": os, "sys": sys,
            "argparse": argparse, "json": json, "utils": utils, "print": lambda *a, **k: None,
            "tqdm": _devnull_tqdm, "Accelerator": Accelerator, "Clipper": clipper,
            "BrainNetwork": _force(models.BrainNetwork, h=sizes["hidden"], n_blocks=sizes["n_blocks"],
                                   **({} if n_voxels == SUBJ01_VOXELS else {"in_dim": n_voxels})),
            "BrainDiffusionPrior": models.BrainDiffusionPrior, "BrainDiffusionPriorOld": models.BrainDiffusionPriorOld,
            "VersatileDiffusionPriorNetwork": _force(models.VersatileDiffusionPriorNetwork,
                                                     **({"depth": prior_depth} if prior_depth else {})),
            "train_dl": [], "val_dl": [],
        }
        self.ns = ns
        with _quiet():
            exec(script.pick("torch.backends.cuda.matmul.allow_tf32"), ns)
            exec(script.pick("accelerator = Accelerator(", "device = accelerator.device", "num_devices = ",
                             "if num_devices==0", "local_rank = ", "world_size = ", "distributed = "), ns)
            exec(script.pick("parser = argparse.ArgumentParser("), ns)
            exec(script.pick("parser.add_argument(", every=True), ns)
            argv = [f"--batch_size={batch}", "--use_image_aug" if online else "--no-use_image_aug"]
            ns["args"] = ns["parser"].parse_args(argv)  # their defaults, our batch size
            ns.update(vars(ns["args"]))
            exec(script.pick("utils.seed_everything(", "max_lr *= ", "num_epochs *= "), ns)
            if online:
                exec(script.pick("if use_image_aug:"), ns)
            exec(script.pick("num_train = ", "num_val = "), ns)
            exec(script.pick("clip_sizes = ", "clip_size = ", "if hidden:", "if subj == 1:", "voxel2clip_kwargs = ",
                             "voxel2clip = BrainNetwork("), ns)
            exec(script.pick("out_dim = clip_size", "depth = ", "dim_head = ", "heads = "), ns)
            exec(script.pick("if hidden:", contains="VersatileDiffusionPriorNetwork"), ns)
            exec(script.pick("if not prior:", "no_decay = ", "opt_grouped_parameters = ", "optimizer = ",
                             "global_batch_size = ", "if lr_scheduler_type == "), ns)
            exec(script.pick("epoch = 0", "losses, val_losses, lrs = ", "nce_losses, ", "sim_losses, ",
                             "best_val_loss = ", "soft_loss_temps = "), ns)
            exec(script.pick("if hidden:", contains="prior_mult"), ns)
            exec(script.pick("diffusion_prior, optimizer, train_dl, val_dl, lr_scheduler = accelerator.prepare("), ns)
        self.device = str(ns["device"])
        if not self.device.startswith(device.split(":")[0]):
            raise AuthorsUnavailable(f"their Accelerator chose {self.device}, the benchmark runs on {device}")
        ns["epoch"] = 0 if phase == "bimixco" else int(ns["mixup_pct"] * ns["num_epochs"])
        prologue, self.body = script.train_loop()
        with _quiet():
            exec(prologue, ns)  # diffusion_prior.train(), the epoch's metric accumulators
        self.model = ns["diffusion_prior"]
        self.shim = ""
        if not self.device.startswith("cuda"):
            # Their loop divides the prior's prediction in place after the loss (`aligned_clip_voxels /=
            # ...`). Under their CUDA fp16 autocast the MSE saved an fp32 copy of it; in fp32 it saved the
            # tensor itself and autograd refuses. On the CPU the loss gets that copy explicitly.
            sched = self.model.noise_scheduler
            real_loss_fn = sched.loss_fn
            sched.loss_fn = lambda pred, target: real_loss_fn(pred.clone(), target)
            self.shim = "CPU: the prior's MSE takes a copy of the prediction (their CUDA autocast made one)"
        acc = ns["accelerator"]
        self.precision = (f"accelerate {acc.mixed_precision}" + (" + GradScaler" if acc.scaler is not None else "")
                          + ("; torch.cuda.amp.autocast in the loop" if torch.cuda.is_available() else
                             "; fp32 (no CUDA: their cuda autocast is off)"))
        self.optimizer = f"AdamW(torch default: {'foreach' if self.device.startswith('cuda') else 'for-loop'})"
        self.step_i = 0

    @staticmethod
    def _online_clipper(models: types.ModuleType, small: bool) -> Callable[..., Any]:
        import transformers

        def build(*args: Any, **kwargs: Any) -> Any:
            clip_mod = sys.modules["clip"]
            real_load = getattr(clip_mod, "load", None)
            real_fp = transformers.CLIPVisionModelWithProjection.from_pretrained
            # their Clipper also loads OpenAI CLIP (clip.load) which embed_image(hidden_state=True) never uses
            clip_mod.load = lambda *a, **k: (nn.Linear(1, 1), None)
            transformers.CLIPVisionModelWithProjection.from_pretrained = _clip_vit_l14_random(small)
            try:
                return models.Clipper(*args, **kwargs)
            finally:
                transformers.CLIPVisionModelWithProjection.from_pretrained = real_fp
                if real_load is not None:
                    clip_mod.load = real_load
        return build

    def state_dict_for_ours(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def grads_for_ours(self) -> dict[str, torch.Tensor]:
        """Their state-dict layout with each parameter's gradient in place of its value (zeros elsewhere)."""
        grads = {n: p.grad for n, p in self.model.named_parameters()}
        return {k: (grads[k].detach().float().cpu() if grads.get(k) is not None else torch.zeros_like(v, device="cpu"))
                for k, v in self.model.state_dict().items()}

    def no_decay_names(self) -> set[str]:
        return no_decay_names(self.model, self.ns["optimizer"])

    def step(self, batch: dict[str, Any]) -> None:
        ns = self.ns
        self.cache.current = batch["targets"]
        ns["train_i"], ns["voxel"], ns["image"], ns["coco"] = self.step_i, batch["voxel3"], batch.get("images"), None
        exec(self.body, ns)
        self.step_i += 1

    def last_loss(self) -> float:
        return float(self.ns["losses"][-1])


class AuthorsLow:
    """Their low-level training (train_autoencoder.py), built and stepped by their own statements."""

    def __init__(self, src: Path, models: types.ModuleType, utils: types.ModuleType, device: str, size: str,
                 batch: int, online: bool, n_voxels: int = SUBJ01_VOXELS) -> None:
        import kornia
        import torch.nn.functional as F
        from diffusers.models import AutoencoderKL
        from kornia.augmentation.container import AugmentationSequential

        script = Script(src / "train_autoencoder.py")
        self.cache = CachedTargets()
        sizes = SIZES[size]
        if online:
            sys.path.insert(0, str(src))
            convnext = importlib.import_module("convnext")

            class RandomInitConvnextXL(convnext.ConvnextXL):  # their class; only the weight file is not read
                def init_weights(self, path: str) -> None:
                    pass
            cnx_cls: Any = RandomInitConvnextXL
        else:
            cnx_cls = lambda *a, **k: self.cache  # noqa: E731
        ns: dict[str, Any] = {
            "__name__": "authors_train_autoencoder", "torch": torch, "nn": nn, "F": F, "np": np, "os": os,
            "kornia": kornia, "utils": utils, "print": lambda *a, **k: None, "tqdm": _devnull_tqdm,
            "AugmentationSequential": AugmentationSequential if online else (lambda *a, **k: (lambda x: x)),
            "AutoencoderKL": AutoencoderKL, "ConvnextXL": cnx_cls,
            "Voxel2StableDiffusionModel": _force(models.Voxel2StableDiffusionModel, h=sizes["hidden"],
                                                 n_blocks=sizes["n_blocks"],
                                                 **({} if n_voxels == SUBJ01_VOXELS else {"in_dim": n_voxels})),
            "OrderedDict": __import__("collections").OrderedDict, "train_dl": [],
        }
        self.ns = ns
        consts = ("model_name = ", "voxel_dims = ", "use_reconst = ", "batch_size = ", "num_epochs = ",
                  "lr_scheduler = ", "initial_lr = ", "max_lr = ", "use_mp = ", "mixup_pct = ", "use_cont = ",
                  "use_sobel_loss = ", "use_blurred_training = ", "use_full_trainset = ", "subj_id = ", "seed = ",
                  "cont_model = ", "ups_mode = ", "local_rank = ", "num_devices = ", "distributed = ")
        with _quiet():
            exec(script.pick(*consts), ns)
            ns["batch_size"] = batch
            ns["device"] = torch.device(device)  # theirs: torch.device("cuda:0")
            exec(script.pick("torch.backends.cuda.matmul.allow_tf32"), ns)
            if online:
                exec(script.pick("autoenc = AutoencoderKL(", "autoenc.requires_grad_(", "autoenc.eval()"), ns)
            else:
                ns["autoenc"] = self.cache
            exec(script.pick("if use_cont:"), ns)  # mixup_pct = -1; cnx; train_augs
            if not online:
                ns["autoenc"] = self.cache
            else:
                ns["autoenc"].to(device)
            exec(script.pick("in_dims = ", "if voxel_dims == 1:", "voxel2sd.to(device)",
                             "voxel2sd = torch.nn.SyncBatchNorm", "num_train = ", "no_decay = ",
                             "opt_grouped_parameters = ", "optimizer = ", "lr_scheduler = torch.optim"), ns)
            ns["epoch"] = 0  # theirs: 0 unless resuming
            exec(script.pick("progress_bar = tqdm(", "losses = []", "val_losses = []", "lrs = []", "mean = ",
                             "std = "), ns)
        ns["epoch"] = 0
        prologue, self.body = script.train_loop()
        with _quiet():
            exec(prologue, ns)  # voxel2sd.train(), accumulators
        self.model = ns["voxel2sd"]
        self.device = device
        self.precision = f"fp32 (use_mp={ns['use_mp']}: autocast disabled), TF32 matmuls"
        self.optimizer = f"AdamW(torch default: {'foreach' if device.startswith('cuda') else 'for-loop'})"
        self.step_i = 0

    def state_dict_for_ours(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def grads_for_ours(self) -> dict[str, torch.Tensor]:
        return {n: (p.grad.detach().float().cpu() if p.grad is not None else torch.zeros_like(p, device="cpu"))
                for n, p in self.model.named_parameters()}

    def no_decay_names(self) -> set[str]:
        return no_decay_names(self.model, self.ns["optimizer"])

    def step(self, batch: dict[str, Any]) -> None:
        ns = self.ns
        self.cache.current = batch
        ns["train_i"], ns["voxel"], ns["image"], ns["_"] = self.step_i, batch["voxels"], batch["images"], None
        exec(self.body, ns)
        self.step_i += 1

    def last_loss(self) -> float:
        return float(self.ns["losses"][-1])


LOW_RENAMES = (("lin0.", "stem."), ("mlp.", "blocks."), ("lin1.", "head."), ("maps_projector.", "projector."))


def low_level_to_ours(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for a, b in LOW_RENAMES:
            if k.startswith(a):
                k = b + k[len(a):]
                break
        out[k] = v
    return out


# -------------------------------------------------------------------------------------------------- ours
class Ours:
    """Our model with the trainer's real step: ``train_step`` (task loss under the trainer's autocast,
    backward, AdamW, OneCycleLR, divergence guard), optimizer and scheduler built as ``Trainer._fit``."""

    def __init__(self, pipeline: str, size: str, device: str, batch: int, n_voxels: int, phase: str,
                 theirs_sd: dict[str, torch.Tensor], adam: str, precision: str | None = None,
                 prior_depth: int | None = None) -> None:
        from mindeye.config import load_config
        from mindeye.models.convert import convert_mindeye_v1_state_dict
        from mindeye.models.factory import build_model
        from mindeye.training.distributed import DistInfo
        from mindeye.training.divergence import DivergenceGuard
        from mindeye.training.trainer import HighLevelLoss, LowLevelLoss, autocast_context, param_groups

        sizes = SIZES[size]
        if pipeline == "high":
            over = [f"model.backbone.hidden={sizes['hidden']}", f"model.backbone.n_blocks={sizes['n_blocks']}"]
            if prior_depth:
                over.append(f"model.prior.depth={prior_depth}")
            cfg = load_config(REPO / "src/mindeye/configs/mindeye-subj01.yaml", over)
        else:
            over = [f"model.lowlevel.hidden={sizes['hidden']}", f"model.lowlevel.n_blocks={sizes['n_blocks']}"]
            cfg = load_config(REPO / "src/mindeye/configs/lowlevel-subj01.yaml", over)
        if precision:
            cfg.train.precision = precision
        cfg.train.batch_size = batch
        self.cfg = cfg
        model = build_model(cfg.model, n_voxels, device="cpu")
        if pipeline == "high":
            sd = convert_mindeye_v1_state_dict(theirs_sd, n_voxels, hidden=sizes["hidden"], n_blocks=sizes["n_blocks"],
                                               **({"depth": prior_depth} if prior_depth else {}))
        else:
            sd = low_level_to_ours(theirs_sd)
        model.load_state_dict(sd, strict=True)  # every tensor of theirs, every tensor of ours
        self.model = model.to(device).train()
        t = cfg.train
        fused = {"fused": True, "foreach": False, "default": None}[adam]
        kw = {"fused": True} if fused else ({"foreach": True} if adam == "foreach" else {})
        self.opt = torch.optim.AdamW(param_groups(self.model, t.weight_decay, t.no_decay), lr=t.max_lr, **kw)
        pct = t.pct_start if t.pct_start is not None else min(0.5, 2 / t.epochs)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=t.max_lr, total_steps=t.epochs * 276,
                                                         pct_start=pct, final_div_factor=t.final_div_factor)
        self.autocast, prec = autocast_context(t.precision, device)
        self.scaler = torch.amp.GradScaler("cuda") if prec == "fp16" else None
        self.guard = DivergenceGuard(device, DistInfo())
        self.task = (HighLevelLoss if pipeline == "high" else LowLevelLoss)(cfg, DistInfo())
        self.epoch = 0 if (pipeline == "low" or phase == "bimixco") else self.task.mixco_epochs
        self.precision = prec + (" + GradScaler" if self.scaler is not None else "")
        self.optimizer = f"AdamW({adam})"
        self.pipeline, self.device, self.step_i, self.loss = pipeline, device, 0, None

    def step(self, batch: dict[str, Any]) -> None:
        from mindeye.training.trainer import train_step

        self.step_i += 1
        b = {k: v for k, v in batch.items() if k in ("voxels", "targets", "latents", "teacher")}
        b.update(device=self.device, generator=batch.get("generator"))
        self.loss, _ = train_step(self.task, self.model, self.model, b, self.epoch, self.opt, scheduler=self.sched,
                                  scaler=self.scaler, autocast=self.autocast, guard=self.guard, step=self.step_i)

    def last_loss(self) -> float:
        return float(self.loss)

    def no_decay_names(self) -> set[str]:
        ids = {id(p) for g in self.opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
        return {n for n, p in self.model.named_parameters() if id(p) in ids}


# ------------------------------------------------------------------------------------------------ batches
def make_batches(pipeline: str, n_voxels: int, batch: int, device: str, online: bool, n: int = 3,
                 seed: int = 0) -> list[dict[str, Any]]:
    """Random voxels and cached-target-shaped tensors on the device (their loader's delivery)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        vox = torch.randn(batch, n_voxels, generator=gen)
        b: dict[str, Any] = {"voxels": vox.to(device), "generator": torch.Generator().manual_seed(seed + 1)}
        if pipeline == "high":
            b["voxel3"] = b["voxels"].unsqueeze(1).expand(-1, 3, -1)  # their loader's (B, 3 repetitions, V)
            tok = torch.randn(batch, 257, 768, generator=gen)
            b["targets"] = (tok / tok[:, :1].norm(dim=-1, keepdim=True)).to(device)  # CLS-normalised as theirs
            if online:
                b["images"] = torch.rand(batch, 3, 256, 256, generator=gen).to(device)
        else:
            b["latents"] = (torch.randn(batch, 4, 64, 64, generator=gen) * 0.18215 * 5).to(device)
            b["teacher"] = torch.randn(batch, 256, 512, generator=gen).to(device)
            side = 256 if online else 16  # cached: their loop still resizes the image to 512 (a tiny one here)
            b["images"] = torch.rand(batch, 3, side, side, generator=gen).to(device)
        out.append(b)
    return out


# -------------------------------------------------------------------------------------------------- check
def _seeded(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def same_weights_check(pipeline: str, theirs: Any, ours: Any, batch: dict[str, Any], device: str) -> dict[str, Any]:
    """One step each from the same weights, batch and seed: loss, gradients and AdamW decay groups."""
    from mindeye.models.convert import convert_mindeye_v1_state_dict

    _seeded(1234)
    theirs.step(batch)
    _seeded(1234)
    ours.step(batch)
    lt, lo = theirs.last_loss(), ours.last_loss()
    rel = abs(lt - lo) / max(abs(lt), 1e-12)
    cpu = not device.startswith("cuda")
    out: dict[str, Any] = {"loss_theirs": lt, "loss_ours": lo, "loss_rel_diff": rel, "loss_tol": 1e-4 if cpu else 2e-2}
    g = theirs.grads_for_ours()
    if pipeline == "high":
        g = convert_mindeye_v1_state_dict(g, ours.model.backbone.stem[0].in_features,
                                          hidden=ours.cfg.model.backbone.hidden,
                                          n_blocks=ours.cfg.model.backbone.n_blocks, depth=ours.cfg.model.prior.depth)
    else:
        g = low_level_to_ours(g)
    worst, worst_name, compared = 0.0, "", 0
    for name, p in ours.model.named_parameters():
        if p.grad is None or name not in g:
            continue
        a, b = p.grad.detach().float().cpu(), g[name]
        err = float((a - b).abs().max() / (b.abs().max() + 1e-12))
        compared += 1
        if err > worst:
            worst, worst_name = err, name
    out.update(grad_rel_max=worst, grad_worst=worst_name, grads_compared=compared,
               grad_tol=1e-3 if cpu else float("inf"))
    theirs_nd = theirs.no_decay_names()
    if pipeline == "high":
        mapped = convert_mindeye_v1_state_dict({k: (torch.ones(()) if k in theirs_nd else torch.zeros(())).expand(v.shape)
                                                for k, v in theirs.state_dict_for_ours().items()},
                                               ours.model.backbone.stem[0].in_features,
                                               hidden=ours.cfg.model.backbone.hidden,
                                               n_blocks=ours.cfg.model.backbone.n_blocks,
                                               depth=ours.cfg.model.prior.depth)
        theirs_nd_ours = {k for k, v in mapped.items() if v.numel() and bool(v.flatten()[0])}
    else:
        theirs_nd_ours = set(low_level_to_ours(dict.fromkeys(theirs_nd, 0)))
    out["decay_groups_equal"] = theirs_nd_ours == ours.no_decay_names()
    out["ok"] = (rel <= out["loss_tol"] and worst <= out["grad_tol"] and out["decay_groups_equal"]
                 and math.isfinite(lt) and compared > 0)
    return out


# ------------------------------------------------------------------------------------------------- timing
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _memory_baseline(cuda: bool) -> tuple[int, int, int]:
    """(allocated, reserved, RSS) before a side is built; on CUDA also resets the peak counters."""
    base_a = base_r = 0
    if cuda:
        torch.cuda.synchronize()
        gc.collect()
        torch.cuda.reset_peak_memory_stats()
        base_a, base_r = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    return base_a, base_r, _rss()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Side:
    def __init__(self, name: str, runner: Any) -> None:
        self.name, self.runner, self.sps, self.mem = name, runner, [], ""


def measure(args: argparse.Namespace, pipeline: str, phase: str, src: Path, models: Any, utils: Any,
            n_voxels: int) -> dict[str, Any]:
    dev = args.device
    cuda = dev.startswith("cuda")
    modes = ["cached", "online"] if args.targets == "both" else [args.targets]
    batch = args.batch or (32 if pipeline == "high" and args.size == "full" else 8)
    sides: list[Side] = []
    check: dict[str, Any] | None = None
    ours_sd = None
    for mode in modes:
        online = mode == "online"
        base_a, base_r, rss0 = _memory_baseline(cuda)
        t0 = time.perf_counter()
        if pipeline == "high":
            th = AuthorsHigh(src, models, utils, dev, args.size, batch, online, phase, n_voxels=n_voxels,
                             prior_depth=args.prior_depth)
        else:
            th = AuthorsLow(src, models, utils, dev, args.size, batch, online, n_voxels=n_voxels)
        build = time.perf_counter() - t0
        batches = make_batches(pipeline, n_voxels, batch, dev, online)
        for i in range(args.warmup):
            th.step(batches[i % len(batches)])
        _sync(dev)
        side = Side(f"theirs ({mode} targets)", th)
        side.mem = _mem(cuda, base_a if cuda else 0, base_r if cuda else 0, rss0)
        side.build_s = build
        side.batches = batches
        sides.append(side)
        if ours_sd is None:
            ours_sd = th.state_dict_for_ours()
    # ours, from their weights
    base_a, base_r, rss0 = _memory_baseline(cuda)
    t0 = time.perf_counter()
    ours = Ours(pipeline, args.size, dev, batch, n_voxels, phase, ours_sd, args.ours_adam,
                prior_depth=args.prior_depth)
    build = time.perf_counter() - t0
    batches = make_batches(pipeline, n_voxels, batch, dev, online=False)
    for i in range(args.warmup):
        ours.step(batches[i % len(batches)])
    _sync(dev)
    side = Side("ours", ours)
    side.mem, side.build_s, side.batches = _mem(cuda, base_a if cuda else 0, base_r if cuda else 0, rss0), build, batches
    sides.insert(0, side)
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    for r in range(args.rounds):
        order = sides if r % 2 == 0 else list(reversed(sides))
        for s in order:
            _sync(dev)
            t0 = time.perf_counter()
            for i in range(args.steps):
                s.runner.step(s.batches[i % len(s.batches)])
            _sync(dev)
            s.sps.append(batch * args.steps / (time.perf_counter() - t0))
    rows = []
    base = sides[0]
    for s in sides:
        ratios = [o / t for o, t in zip(base.sps, s.sps)]
        rows.append({
            "pipeline": pipeline, "phase": phase if pipeline == "high" else "-", "side": s.name, "batch": batch,
            "precision": s.runner.precision, "optimizer": s.runner.optimizer,
            "samples_per_s_median": statistics.median(s.sps), "samples_per_s_min": min(s.sps),
            "samples_per_s_max": max(s.sps), "ms_per_step_median": 1000 * batch / statistics.median(s.sps),
            "ours_over_this_median": statistics.median(ratios), "ours_over_this_min": min(ratios),
            "ours_over_this_max": max(ratios), "memory": s.mem, "build_s": s.build_s,
            "last_loss": s.runner.last_loss(),
        })
    return {"rows": rows, "check": check}


def _mem(cuda: bool, base_a: int, base_r: int, rss0: int) -> str:
    if cuda:
        return (f"{(torch.cuda.max_memory_allocated() - base_a) / GIB:.2f} GiB alloc / "
                f"{(torch.cuda.max_memory_reserved() - base_r) / GIB:.2f} GiB reserved")
    return f"RSS +{(_rss() - rss0) / GIB:.2f} GiB"


def run_check(args: argparse.Namespace, pipeline: str, src: Path, models: Any, utils: Any, n_voxels: int,
              size: str, batch: int, prior_depth: int | None = None) -> dict[str, Any]:
    """The same-weights check at ``size`` on ``args.device`` (both sides built fresh, then freed)."""
    dev = args.device
    if pipeline == "high":
        th = AuthorsHigh(src, models, utils, dev, size, batch, False, "softclip", prior_depth=prior_depth,
                         n_voxels=n_voxels)
    else:
        th = AuthorsLow(src, models, utils, dev, size, batch, False, n_voxels=n_voxels)
    prec = None if not dev.startswith("cuda") else ("fp16" if pipeline == "high" else "fp32")
    ours = Ours(pipeline, size, dev, batch, n_voxels, "softclip", th.state_dict_for_ours(), "default",
                precision=prec, prior_depth=prior_depth)
    b = make_batches(pipeline, n_voxels, batch, dev, online=False, n=1, seed=7)[0]
    res = same_weights_check(pipeline, th, ours, b, dev)
    del th, ours
    gc.collect()
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()
    return res


def format_check(pipeline: str, c: dict[str, Any]) -> str:
    return (f"same-weights check ({pipeline}-level, SoftCLIP phase, dropout on, same seed): loss theirs "
            f"{c['loss_theirs']:.6f} ours {c['loss_ours']:.6f} (rel diff {c['loss_rel_diff']:.2e}, tol "
            f"{c['loss_tol']:.0e}); gradients of {c['grads_compared']} tensors, worst rel diff "
            f"{c['grad_rel_max']:.2e} ({c['grad_worst']}, tol {c['grad_tol']:.0e}); AdamW no-decay groups equal: "
            f"{c['decay_groups_equal']} -> {'PASS' if c['ok'] else 'FAIL'}")


def print_table(rows: list[dict[str, Any]]) -> None:
    print("| pipeline | phase | side | precision | optimizer | samples/s median [min, max] | ms/step | "
          "ours / this, median [min, max] | peak memory (this side) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = ("1" if r["side"] == "ours" else
                 f"**{r['ours_over_this_median']:.2f}x** [{r['ours_over_this_min']:.2f}, {r['ours_over_this_max']:.2f}]")
        print(f"| {r['pipeline']} | {r['phase']} | {r['side']} | {r['precision']} | {r['optimizer']} | "
              f"{r['samples_per_s_median']:.2f} [{r['samples_per_s_min']:.2f}, {r['samples_per_s_max']:.2f}] | "
              f"{r['ms_per_step_median']:.0f} | {ratio} | {r['memory']} |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--authors-src", default=os.environ.get("MINDEYE_AUTHORS_SRC"),
                    help="checkout of MedARC-AI/fMRI-reconstruction-NSD (default: $MINDEYE_AUTHORS_SRC)")
    ap.add_argument("--pipeline", choices=["high", "low", "both"], default="both")
    ap.add_argument("--phase", default="bimixco", help="high level: bimixco, softclip or both")
    ap.add_argument("--size", choices=["small", "full", "test"], default="small",
                    help="small: 15,724 voxels, hidden 1024, 2 blocks, full 257 x 768 head and prior (CPU); "
                         "full: the published sizes; test: hidden 64, 1 block (rehearsals)")
    ap.add_argument("--prior-depth", type=int, default=None, help="override the prior's depth (rehearsals)")
    ap.add_argument("--targets", choices=["cached", "online", "both"], default="cached",
                    help="their targets: cached (model step alone) or online (their kornia aug + CLIP / "
                         "VAE + ConvNeXt per batch, random-init encoders); both = two rows")
    ap.add_argument("--batch", type=int, default=None, help="default: 8 (small, and low level), 32 (full high)")
    ap.add_argument("--voxels", type=int, default=SUBJ01_VOXELS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps per side per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--ours-adam", choices=["fused", "foreach", "default"], default="fused",
                    help="our AdamW implementation (the trainer: fused on CUDA; fused on the CPU per issue 22)")
    ap.add_argument("--check-only", action="store_true", help="only the same-weights check")
    ap.add_argument("--skip-check", action="store_true", help="time without the check (the ratio is then "
                    "marked unverified)")
    ap.add_argument("--json", default=None, help="append one JSON line per row to this file")
    args = ap.parse_args(argv)
    if not args.authors_src:
        ap.error("--authors-src PATH (or MINDEYE_AUTHORS_SRC) is required")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        src = authors_src_dir(args.authors_src)
        models, utils, stubbed = import_authors(src)
    except AuthorsUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ver = versions()
    print(f"authors_step: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; device {args.device}"
          + (f" ({torch.cuda.get_device_name(0)})" if args.device.startswith("cuda") else
             f" ({torch.get_num_threads()} threads)"))
    print("versions (one process, both sides): " + ", ".join(f"{k} {v}" for k, v in ver.items()))
    print(f"authors' source: {src}; stubbed (not installed, unused by the step): {', '.join(stubbed) or 'none'}")
    pipelines = ["high", "low"] if args.pipeline == "both" else [args.pipeline]
    phases = ["bimixco", "softclip"] if args.phase == "both" else [args.phase]
    rows: list[dict[str, Any]] = []
    checks = {}
    for pipeline in pipelines:
        if not args.skip_check:
            batch = args.batch or 8
            c = run_check(args, pipeline, src, models, utils, args.voxels, args.size, batch,
                          prior_depth=args.prior_depth if pipeline == "high" else None)
            checks[pipeline] = c
            print(format_check(pipeline, c), flush=True)
            if not c["ok"]:
                print(f"error: the {pipeline}-level sides do not compute the same loss from the same weights; "
                      "no ratio is reported", file=sys.stderr)
                return 3
        if args.check_only:
            continue
        for phase in (phases if pipeline == "high" else ["-"]):
            res = measure(args, pipeline, phase, src, models, utils, args.voxels)
            for r in res["rows"]:
                r["check"] = "skipped" if args.skip_check else ("pass" if checks[pipeline]["ok"] else "FAIL")
            rows.extend(res["rows"])
            gc.collect()
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    if rows:
        print(f"\n{args.size} size, {args.rounds} rounds x {args.steps} steps per side (after {args.warmup} "
              f"warm-up), interleaved:")
        print_table(rows)
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps({**r, "versions": ver, "stubbed": stubbed, "device": args.device,
                                    "size": args.size, "date": time.strftime("%Y-%m-%d")}) + "\n")
            for p, c in checks.items():
                f.write(json.dumps({"check": p, **c, "versions": ver, "device": args.device}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
