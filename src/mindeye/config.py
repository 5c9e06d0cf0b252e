"""Configs are data: typed dataclasses loaded from YAML and overridden from the command line.

``load_config("mindeye-subj01", ["train.epochs=3"])`` returns a validated :class:`Config`. The
argument is a path, or the name of a config shipped in the package (``mindeye/configs/``, e.g.
``mindeye-subj01`` or ``ablations/blocks0``). A YAML file may start from another with
``extends: <name-or-path>`` and give only what it changes (nested sections merge key by key).
Unknown keys, wrong types and out-of-range values raise :class:`~mindeye.errors.MindEyeError`
naming the key and what is allowed.

Over ~400 lines on purpose: every section's dataclass sits next to its validation, and
docs/configs.md is generated from this one file (scripts/gen_config_docs.py).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mindeye.errors import MindEyeError


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    """Which prepared subject store to read and how its test split is served."""

    store: str | None = None  # path of a prepared subject store (mindeye simulate / prepare)
    test_mode: Literal["averaged", "single"] = "averaged"  # repetition-averaged test (paper) or single-trial
    test_repetitions: Literal["pad3", "available"] = "pad3"  # averaged test of an image seen < 3 times: padded to three, [a, b, a] (authors' data) or its available repetitions equally
    val_images: int = 0  # train images held out for validation when the store has no val split
    train_images: int | None = None  # use a seeded random subset of N of the store's train images (learning curves); null = all
    train_on_val: bool = True  # also train on the validation images (authors: num_train = 8559 + 300)
    n_voxels: int | None = None  # for `mindeye summary` without a store (subj01: 15724)
    test_average: Literal["inputs", "outputs"] = "inputs"  # averaged test: mean of the repetitions' voxels (MindEye1) or of the model's outputs on each, padded to three (MindEye2 recon_inference.ipynb)


@dataclass
class TargetsConfig:
    """Frozen image encoders whose embeddings are the regression targets (cached by `mindeye embed`)."""

    encoder: str = "clip-vit-l14-hidden"  # high-level target encoder (registry name)
    weights: str | None = None  # HF id or local path; None = the encoder's default id
    lowlevel_encoder: str = "sd-vae"  # latent target of the low-level pipeline
    lowlevel_weights: str | None = None  # weights of lowlevel_encoder; None = its default id
    teacher_encoder: str = "vicregl-convnext"  # contrastive teacher of the low-level pipeline
    teacher_weights: str | None = None  # weights of teacher_encoder; None = its default id
    lowlevel_image_size: int | None = None  # image side the lowlevel_encoder sees; None = its default (sd-vae 512: 4x64x64; MindEye2 224: 4x28x28)
    teacher_image_size: int | None = None  # image side the teacher_encoder sees; None = its default (vicregl 512: 16x16 tokens; MindEye2 224: 7x7)
    augmented_views: int = 0  # K cached augmented views per image sampled at train time (0 = none)
    online: bool = False  # high-level targets computed every step from images augmented the authors' way (kornia), not read from the cache
    clip_preprocess: Literal["reference", "processor"] = "reference"  # CLIP targets: float bicubic, no antialias (authors) or HF processor (uint8, antialiased)
    blurry_decoder_weights: str | None = None  # VAE that decodes blurry images; None = lowlevel_weights (paper: Versatile Diffusion's)


@dataclass
class BackboneConfig:
    """Residual MLP mapping flattened voxels to CLIP image tokens."""

    hidden: int = 4096  # width of the residual MLP
    n_blocks: int = 4  # residual blocks (paper Table 2 ablates 0, 2, 4)
    skip: bool = True  # residual connections around each block
    tokens: int = 257  # 257 = CLIP last hidden layer; 1 = final embedding only (paper Table 2)
    dim: int = 768  # width of each predicted token (CLIP ViT-L/14 projection dim)
    dropout_in: float = 0.5  # dropout after the input layer
    dropout_block: float = 0.15  # dropout inside each residual block


@dataclass
class ProjectorConfig:
    """Per-token MLP head trained contrastively for retrieval."""

    enabled: bool = True  # train the contrastive projector head (retrieval)
    hidden: int = 2048  # hidden width of the projector MLP


@dataclass
class PriorConfig:
    """Diffusion prior: backbone tokens -> CLIP image tokens, for reconstruction."""

    enabled: bool = True  # train the diffusion prior (reconstruction)
    depth: int = 6  # transformer layers
    heads: int = 12  # attention heads
    dim_head: int = 64  # width of each attention head
    timesteps: int = 100  # diffusion timesteps (cosine schedule, predicts x0)
    cond_drop_prob: float = 0.2  # probability of dropping the brain condition (classifier-free guidance)
    sample_steps: int = 100  # prior sampling steps at inference
    guidance: float = 1.0  # prior classifier-free guidance at sampling; 1 = none (authors; VD's own 3.5 is separate)


@dataclass
class LowLevelConfig:
    """Low-level pipeline: voxels -> Stable Diffusion VAE latent (blurry reconstruction)."""

    hidden: int = 4096  # width of the low-level residual MLP
    n_blocks: int = 4  # residual blocks of the low-level MLP
    spatial_channels: int = 64  # channels of the spatial map the MLP output is reshaped to
    spatial_size: int = 16  # side of that spatial map (64 x 16 x 16 in the paper)
    latent_channels: int = 4  # channels of the target latent (SD VAE: 4 x 64 x 64)
    upsampler_channels: list[int] = field(default_factory=lambda: [64, 128, 256])  # upsampler up-block widths
    projector_dim: int = 512  # width of the contrastive projector tokens (1x1 convs)
    norm_groups: int = 32  # GroupNorm groups in the upsampler
    dropout_in: float = 0.5  # dropout after the low-level input layer
    dropout_block: float = 0.25  # dropout inside each low-level residual block


@dataclass
class RidgeConfig:
    """Ridge-regression baseline."""

    alphas: list[float] = field(default_factory=lambda: [1e2, 1e3, 1e4, 1e5])  # penalties tried; best on val
    target: Literal["highlevel", "lowlevel"] = "highlevel"  # a ridge run maps to targets.encoder (retrieval) or targets.lowlevel_encoder (blurry images)


@dataclass
class BlurryConfig:
    """MindEye2's blurry (low-level) head inside the high-level model (model.kind mindeye2)."""

    enabled: bool = True  # predict the VAE latent (targets.lowlevel_encoder) from the backbone's mixer output
    channels: int = 64  # channels of the spatial map the head's Linear output is read as
    side: int = 7  # side of that map; the latent is 4 x side (authors: 7 -> 28, the VAE latent of 224 px)
    upsampler_channels: list[int] = field(default_factory=lambda: [32, 64, 128])  # Decoder up-block widths
    norm_groups: int = 32  # GroupNorm groups in the Decoder
    projector_dim: int = 512  # width of the contrastive tokens (1x1 convs), = the teacher's token width
    dropout: float = 0.3  # dropout after the head's Linear


@dataclass
class ModelConfig:
    """Which model to train and the sizes of its parts."""

    kind: Literal["mindeye", "lowlevel", "ridge", "mindeye2"] = "mindeye"  # pipeline: high-level, low-level, ridge or MindEye2 (per-subject ridge + mixer + blurry head; docs/mindeye2.md)
    ridge_residual: bool = False  # ridge-first: a closed-form ridge map voxels -> targets, the network learns a residual over it (docs/small-data.md)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)  # high-level backbone
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)  # contrastive projector
    prior: PriorConfig = field(default_factory=PriorConfig)  # diffusion prior
    lowlevel: LowLevelConfig = field(default_factory=LowLevelConfig)  # low-level pipeline
    ridge: RidgeConfig = field(default_factory=RidgeConfig)  # ridge baseline
    blurry: BlurryConfig = field(default_factory=BlurryConfig)  # MindEye2 blurry head (kind mindeye2)


@dataclass
class TrainConfig:
    """Optimisation, losses and schedule."""

    epochs: int = 240  # passes over the training images (see train.epoch_unit)
    epoch_unit: Literal["images", "trials"] = "images"  # an epoch = each unique image once (authors) or each trial once
    repetition: Literal["step", "sample"] = "step"  # epoch_unit=images: repetition (step % R) for the whole batch (authors) or a random one per sample
    lowlevel_repetition_mix: Literal["batch", "sample"] = "batch"  # low-level repetition mix: one draw per batch (authors) or per sample
    batch_size: int = 32  # global batch: the same on 1 or N processes
    max_lr: float = 3e-4  # peak OneCycleLR learning rate (not scaled by the number of processes)
    weight_decay: float = 1e-2  # AdamW weight decay (see train.no_decay)
    no_decay: Literal["bias", "bias+norm"] = "bias"  # parameters without decay: biases only (authors) or also norms/embeddings
    pct_start: float | None = None  # OneCycleLR warm-up fraction; null = 2 / epochs (reference)
    final_div_factor: float = 1000.0  # OneCycleLR final_div_factor
    loss: Literal["bimixco+softclip", "bimixco", "softclip", "clip", "infonce", "mixco+infonce"] = (
        "bimixco+softclip"  # contrastive loss (and its schedule) on the projector output
    )
    mixco_fraction: float = 0.33  # fraction of epochs on BiMixCo before SoftCLIP (first third)
    mixco_beta: float = 0.15  # MixCo lambda ~ Beta(mixco_beta, mixco_beta)
    mixco_prob: float = 0.5  # probability that a sample is mixed
    mixco_self_label: Literal["assign", "add"] = "assign"  # label of a sample mixed with itself: assigned 1-lambda (authors) or lambda + (1-lambda)
    mixco_temperature: float = 0.006  # BiMixCo temperature
    prior_targets: Literal["unmixed", "mixed"] = "unmixed"  # prior (and backbone MSE) targets under MixCo: the unmixed CLIP targets (authors) or mixed like the voxels (paper text)
    soft_temperature_start: float = 0.004  # SoftCLIP temperature when SoftCLIP starts (cosine-annealed)
    soft_temperature_end: float = 0.0075  # SoftCLIP temperature at the last epoch
    prior_loss_weight: float = 30.0  # reference's weight (paper's alpha 0.3 is on a differently scaled loss)
    lowlevel_loss: Literal["l1", "mse"] = "l1"  # latent reconstruction loss of the low-level pipeline
    lowlevel_contrastive_weight: float = 0.1  # weight of the low-level contrastive (teacher) loss
    lowlevel_temperature: float = 0.075  # SoftCLIP temperature of the low-level contrastive loss
    lowlevel_contrastive_views: Literal["two", "one"] = "two"  # soft labels clean x augmented teacher, logits student x augmented teacher (authors; augmented = a cached view 1..K) or one teacher view for both
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    val_every: int = 1  # epochs between validation retrieval evaluations
    max_steps: int | None = None  # stop early (smoke tests / benchmarks)
    backbone_mse_weight: float = 0.0  # MSE on the backbone output (paper Table 4 no-prior variants)
    log_every: int = 20  # steps between progress-bar / metrics-log updates (host syncs only then)
    compile: bool = False  # torch.compile the model
    data_path: Literal["auto", "resident", "prefetch", "simple"] = "auto"  # batch feeding (docs/performance.md)
    activation_checkpointing: bool = False  # lean mode: recompute backbone blocks / prior layers in backward
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: DDP replicas or FSDP2 sharded parameters
    select_best: bool = False  # keep the epoch with the best validation score (epoch 0 included), not the last (needs held-out val images; docs/small-data.md)
    size_defaults: bool = True  # mindeye train / demo: adapt settings to the store's size (docs/small-data.md); explicit settings always win
    epoch_trials: int | None = None  # samples per epoch over all subjects (MindEye2: 750 x sessions); null = the sampler's epoch (train.epoch_unit)
    blurry_loss_weight: float = 0.5  # mindeye2: weight of the blurry loss L1 + blurry_contrastive_weight x soft contrastive (authors' blur_scale)
    blurry_contrastive_weight: float = 0.1  # mindeye2: weight of the blurry head's soft contrastive loss inside it
    blurry_temperature: float = 0.2  # mindeye2: temperature of the blurry soft contrastive loss
    bimixco_authors_permutation: bool = False  # several subjects: BiMixCo labels from per-subject permutations concatenated WITHOUT offsets (the authors' bug, docs/choices.md); false = correct labels
    finetune_input_epochs: int = 0  # --init-from: epochs training only the new subject layers before all (0: whole model from the start, MindEye2)


@dataclass
class EvalConfig:
    """Retrieval evaluation protocol."""

    pool: int = 300  # retrieval candidates per draw (top-1 among pool)
    draws: int = 30  # random draws of pool test samples; results averaged
    draw_mode: Literal["uniform", "contiguous"] = "uniform"  # a random subset per draw, or pool consecutive test samples (authors' stream batches)
    ci: Literal["normal", "t"] = "normal"  # 95% interval over draws: normal, std ddof 0 (authors) or Student-t


@dataclass
class Config:
    """A whole run: the top-level sections below plus a name and seed."""

    name: str = "mindeye"  # run name (output files and logs)
    seed: int = 0  # random seed for initialisation, shuffling and augmentation
    data: DataConfig = field(default_factory=DataConfig)  # data source
    targets: TargetsConfig = field(default_factory=TargetsConfig)  # target encoders
    model: ModelConfig = field(default_factory=ModelConfig)  # model
    train: TrainConfig = field(default_factory=TrainConfig)  # training
    eval: EvalConfig = field(default_factory=EvalConfig)  # evaluation

    def validate(self) -> None:
        """Range checks the types cannot express; each message names the key and the allowed range."""
        t, m = self.train, self.model
        # Written as `not (ok)` so NaN fails every check.
        ranges: list[tuple[str, Any, Any, str]] = [  # (key, value, ok, allowed)
            *((k, v, v > 0, "positive") for k, v in {
                "train.epochs": t.epochs, "train.batch_size": t.batch_size, "train.max_lr": t.max_lr,
                "train.final_div_factor": t.final_div_factor, "train.val_every": t.val_every,
                "train.mixco_beta": t.mixco_beta, "train.mixco_temperature": t.mixco_temperature,
                "train.soft_temperature_start": t.soft_temperature_start,
                "train.soft_temperature_end": t.soft_temperature_end,
                "train.lowlevel_temperature": t.lowlevel_temperature, "train.log_every": t.log_every,
                "model.backbone.hidden": m.backbone.hidden, "model.backbone.tokens": m.backbone.tokens,
                "model.backbone.dim": m.backbone.dim, "model.projector.hidden": m.projector.hidden,
                "model.prior.depth": m.prior.depth, "model.prior.heads": m.prior.heads,
                "model.prior.dim_head": m.prior.dim_head, "model.prior.timesteps": m.prior.timesteps,
                "model.prior.sample_steps": m.prior.sample_steps,
                "model.lowlevel.hidden": m.lowlevel.hidden, "model.lowlevel.spatial_channels": m.lowlevel.spatial_channels,
                "model.lowlevel.spatial_size": m.lowlevel.spatial_size,
                "model.lowlevel.latent_channels": m.lowlevel.latent_channels,
                "model.lowlevel.projector_dim": m.lowlevel.projector_dim,
                "model.lowlevel.norm_groups": m.lowlevel.norm_groups,
                "model.blurry.channels": m.blurry.channels, "model.blurry.side": m.blurry.side,
                "model.blurry.projector_dim": m.blurry.projector_dim, "model.blurry.norm_groups": m.blurry.norm_groups,
                "train.blurry_temperature": t.blurry_temperature,
                "eval.pool": self.eval.pool, "eval.draws": self.eval.draws,
            }.items()),
            *((k, v, v >= 0, ">= 0") for k, v in {
                "data.val_images": self.data.val_images, "targets.augmented_views": self.targets.augmented_views,
                "model.backbone.n_blocks": m.backbone.n_blocks, "model.lowlevel.n_blocks": m.lowlevel.n_blocks,
                "model.prior.guidance": m.prior.guidance, "train.weight_decay": t.weight_decay,
                "train.prior_loss_weight": t.prior_loss_weight,
                "train.lowlevel_contrastive_weight": t.lowlevel_contrastive_weight,
                "train.blurry_loss_weight": t.blurry_loss_weight,
                "train.blurry_contrastive_weight": t.blurry_contrastive_weight,
            }.items()),
            ("train.mixco_fraction", t.mixco_fraction, 0 <= t.mixco_fraction <= 1, "in [0, 1]"),
            ("train.mixco_prob", t.mixco_prob, 0 <= t.mixco_prob <= 1, "in [0, 1]"),
            ("model.prior.cond_drop_prob", m.prior.cond_drop_prob, 0 <= m.prior.cond_drop_prob < 1, "in [0, 1)"),
            *((k, v, 0 <= v <= 1, "in [0, 1]") for k, v in {
                "model.backbone.dropout_in": m.backbone.dropout_in,
                "model.backbone.dropout_block": m.backbone.dropout_block,
                "model.lowlevel.dropout_in": m.lowlevel.dropout_in,
                "model.lowlevel.dropout_block": m.lowlevel.dropout_block,
            }.items()),
            # The prior's rotary embedding rotates feature pairs of each head.
            ("model.prior.dim_head", m.prior.dim_head, m.prior.dim_head % 2 == 0, "even"),
            ("train.pct_start", t.pct_start, t.pct_start is None or 0 < t.pct_start < 1, "in (0, 1) or null"),
            ("train.epoch_trials", t.epoch_trials, t.epoch_trials is None or t.epoch_trials > 0, "positive or null"),
            ("model.blurry.dropout", m.blurry.dropout, 0 <= m.blurry.dropout <= 1, "in [0, 1]"),
            ("train.max_steps", t.max_steps, t.max_steps is None or t.max_steps > 0, "positive or null"),
            ("data.train_images", self.data.train_images,
             self.data.train_images is None or self.data.train_images > 0, "positive or null"),
            ("model.lowlevel.upsampler_channels", m.lowlevel.upsampler_channels,
             len(m.lowlevel.upsampler_channels) > 0 and all(c > 0 for c in m.lowlevel.upsampler_channels),
             "a non-empty list of positive integers"),
            ("model.ridge.alphas", m.ridge.alphas, len(m.ridge.alphas) > 0 and all(a > 0 for a in m.ridge.alphas),
             "a non-empty list of positive numbers"),
        ]
        for key, value, ok, allowed in ranges:
            if not ok:
                raise MindEyeError(
                    f"config value {key} must be {allowed}, got {value!r}; fix it in the config file "
                    f"or with --set {key}=..."
                )


# --------------------------------------------------------------------------------------------
# Generic dataclass <-> dict machinery
# --------------------------------------------------------------------------------------------
_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except MindEyeError:
                continue
        raise MindEyeError(f"config key {key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise MindEyeError(f"config key {key}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise MindEyeError(f"config key {key}: expected {_type_name(tp)}, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if value is None:  # an empty section in YAML (`train:` with every key commented out)
            value = {}
        if not isinstance(value, dict):
            raise MindEyeError(f"config key {key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise MindEyeError(f"config key {key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise MindEyeError(f"config key {key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        # PyYAML follows YAML 1.1, which reads `3e-4` (no dot) as a string: accept numeric strings.
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)
        raise MindEyeError(f"config key {key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise MindEyeError(f"config key {key}: expected a string, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys with a helpful message."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in set(data) - set(names))
    if unknown:
        raise MindEyeError(
            f"unknown config key(s) {', '.join(prefix + u for u in unknown)}; valid keys here: "
            f"{', '.join(prefix + n for n in names)}"
        )
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict in place."""
    if "=" not in override:
        raise MindEyeError(f"--set expects KEY=VALUE (e.g. train.epochs=3), got {override!r}")
    key, raw = override.split("=", 1)
    key = key.strip()
    if not key:
        raise MindEyeError(f"--set expects KEY=VALUE, got {override!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else None
    except yaml.YAMLError as exc:
        raise MindEyeError(f"--set {override!r}: value is not valid YAML ({exc})") from None
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:  # absent, or an empty section in the YAML file
            child = node[part] = {}
        if not isinstance(child, dict):
            raise MindEyeError(f"--set {override!r}: {part} is not a section")
        node = child
    node[parts[-1]] = value


SHIPPED_CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def shipped_config_names() -> list[str]:
    """Names of the configs shipped in the package (``ablations/blocks0`` etc.)."""
    return sorted(p.relative_to(SHIPPED_CONFIG_DIR).with_suffix("").as_posix()
                  for p in SHIPPED_CONFIG_DIR.rglob("*.yaml"))


def looks_like_path(path: str | Path) -> bool:
    """Whether a config argument clearly names a file, not a shipped config: it has a path separator
    (``./demo``, ``runs/x``), a ``.yaml``/``.yml`` suffix, or is absolute."""
    text = str(path)
    return (Path(text).is_absolute() or "/" in text or "\\" in text
            or text.lower().endswith((".yaml", ".yml")))


def resolve_config_path(path: str | Path, base: Path | None = None) -> Path:
    """A config file. A bare name (``demo``, ``mindeye-subj01``) is a shipped config first, so a run or output
    directory named like a config (``--out demo``) never hides it; a path (see :func:`looks_like_path`) is the
    file first. Inside a config (``base``: the directory of the file naming it) a file next to it wins. Only
    files match, never directories."""
    p = Path(path)
    local = [p] if p.is_absolute() else [*([base / p, base / p.with_name(p.name + ".yaml")] if base is not None else []), p]
    shipped = []
    if not p.is_absolute() and not str(path).startswith(("./", "../", ".\\", "..\\")):  # `./x`: that file only
        name = p.as_posix().removeprefix("configs/")  # old `configs/x.yaml` spellings still resolve
        shipped = [SHIPPED_CONFIG_DIR / name, SHIPPED_CONFIG_DIR / (name + ".yaml")]
    name_first = base is None and not looks_like_path(path)
    candidates = [*shipped, *local] if name_first else [*local, *shipped]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if p.is_dir():
        raise MindEyeError(f"config {path} is a directory, not a YAML file or a shipped config name; shipped "
                           f"configs: {', '.join(shipped_config_names())}")
    raise MindEyeError(f"config {path} not found: it is neither a file nor a shipped config name; shipped "
                       f"configs: {', '.join(shipped_config_names())}")


def _merge(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """``delta`` over ``base``; nested mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config_data(path: str | Path, base: Path | None = None, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The nested dict of a config file with its ``extends`` chain applied (not yet type-checked)."""
    try:
        path = resolve_config_path(path, base).resolve()
    except MindEyeError as exc:
        raise MindEyeError(f"{_chain[-1]}: extends {exc}" if _chain else str(exc)) from None
    if path in _chain:
        raise MindEyeError(f"config {path} extends itself (chain: {' -> '.join(str(p) for p in (*_chain, path))})")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MindEyeError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise MindEyeError(f"config file {path} must contain a mapping at top level")
    parent = loaded.pop("extends", None)
    if parent is None:
        return loaded
    if not isinstance(parent, str):
        raise MindEyeError(f"config file {path}: extends must be a config name or path, got {parent!r}")
    return _merge(read_config_data(parent, path.parent, (*_chain, path)), loaded)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls: type = Config) -> Any:
    """Defaults <- YAML file (a path or a shipped name, with its ``extends`` chain) <- ``--set`` overrides,
    then type- and range-checked."""
    data: dict[str, Any] = read_config_data(path) if path is not None else {}
    for override in overrides or []:
        apply_override(data, override)
    cfg = from_dict(cls, data)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
