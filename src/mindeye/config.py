"""Configs are data: typed dataclasses loaded from YAML and overridden from the command line.

``load_config("configs/mindeye-subj01.yaml", ["train.epochs=3"])`` returns a validated
:class:`Config`. Unknown keys, wrong types and out-of-range values raise
:class:`~mindeye.errors.MindEyeError` naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
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
    store: str | None = None  # path of a prepared subject store (mindeye simulate / prepare)
    test_mode: Literal["averaged", "single"] = "averaged"  # repetition-averaged test (paper) or single-trial
    val_images: int = 0  # train images held out for validation when the store has no val split
    n_voxels: int | None = None  # for `mindeye summary` without a store (subj01: 15724)


@dataclass
class TargetsConfig:
    encoder: str = "clip-vit-l14-hidden"  # high-level target encoder (registry name)
    weights: str | None = None  # HF id or local path; None = the encoder's default id
    lowlevel_encoder: str = "sd-vae"  # latent target of the low-level pipeline
    lowlevel_weights: str | None = None
    teacher_encoder: str = "vicregl-convnext"  # contrastive teacher of the low-level pipeline
    teacher_weights: str | None = None
    augmented_views: int = 0  # K cached augmented views per image sampled at train time (0 = none)


@dataclass
class BackboneConfig:
    hidden: int = 4096
    n_blocks: int = 4
    skip: bool = True
    tokens: int = 257  # 257 = CLIP last hidden layer; 1 = final embedding only (paper Table 2)
    dim: int = 768
    dropout_in: float = 0.5
    dropout_block: float = 0.15


@dataclass
class ProjectorConfig:
    enabled: bool = True
    hidden: int = 2048


@dataclass
class PriorConfig:
    enabled: bool = True
    depth: int = 6
    heads: int = 12
    dim_head: int = 64
    timesteps: int = 100
    cond_drop_prob: float = 0.2
    sample_steps: int = 100  # prior sampling steps at inference
    guidance: float = 3.5  # classifier-free guidance scale for prior sampling


@dataclass
class LowLevelConfig:
    hidden: int = 4096
    n_blocks: int = 4
    spatial_channels: int = 64
    spatial_size: int = 16
    latent_channels: int = 4
    upsampler_channels: list[int] = field(default_factory=lambda: [64, 128, 256])
    projector_dim: int = 512
    norm_groups: int = 32
    dropout_in: float = 0.5
    dropout_block: float = 0.25


@dataclass
class RidgeConfig:
    alphas: list[float] = field(default_factory=lambda: [1e2, 1e3, 1e4, 1e5])


@dataclass
class ModelConfig:
    kind: Literal["mindeye", "lowlevel", "ridge"] = "mindeye"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    lowlevel: LowLevelConfig = field(default_factory=LowLevelConfig)
    ridge: RidgeConfig = field(default_factory=RidgeConfig)


@dataclass
class TrainConfig:
    epochs: int = 240
    batch_size: int = 32  # global batch: the same on 1 or N processes
    max_lr: float = 3e-4  # not scaled by the number of processes
    weight_decay: float = 1e-2
    pct_start: float | None = None  # None = 2 / epochs (reference)
    final_div_factor: float = 1000.0
    loss: Literal["bimixco+softclip", "bimixco", "softclip", "clip", "infonce", "mixco+infonce"] = (
        "bimixco+softclip"
    )
    mixco_fraction: float = 0.33  # first third of epochs use BiMixCo
    mixco_beta: float = 0.15
    mixco_prob: float = 0.5
    mixco_temperature: float = 0.006
    soft_temperature_start: float = 0.004
    soft_temperature_end: float = 0.0075
    prior_loss_weight: float = 30.0  # reference's weight (paper's alpha 0.3 is on a differently scaled loss)
    lowlevel_loss: Literal["l1", "mse"] = "l1"
    lowlevel_contrastive_weight: float = 0.1
    lowlevel_temperature: float = 0.075
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    val_every: int = 1  # epochs between validation retrieval evaluations
    max_steps: int | None = None  # stop early (smoke tests / benchmarks)
    backbone_mse_weight: float = 0.0  # MSE on the backbone output (paper Table 4 no-prior variants)
    log_every: int = 20  # steps between progress-bar / metrics-log updates (host syncs only then)
    num_workers: int = 0
    compile: bool = False


@dataclass
class EvalConfig:
    pool: int = 300
    draws: int = 30


@dataclass
class Config:
    name: str = "mindeye"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        positive = {
            "train.epochs": self.train.epochs, "train.batch_size": self.train.batch_size,
            "model.backbone.hidden": self.model.backbone.hidden, "model.backbone.tokens": self.model.backbone.tokens,
            "model.backbone.dim": self.model.backbone.dim, "model.prior.timesteps": self.model.prior.timesteps,
            "eval.pool": self.eval.pool, "eval.draws": self.eval.draws,
        }
        for key, value in positive.items():
            if value <= 0:
                raise MindEyeError(f"config value {key} must be positive, got {value}")
        if self.model.backbone.n_blocks < 0:
            raise MindEyeError(f"model.backbone.n_blocks must be >= 0, got {self.model.backbone.n_blocks}")
        if not 0 <= self.train.mixco_fraction <= 1:
            raise MindEyeError(f"train.mixco_fraction must be in [0, 1], got {self.train.mixco_fraction}")
        if not 0 <= self.model.prior.cond_drop_prob < 1:
            raise MindEyeError(f"model.prior.cond_drop_prob must be in [0, 1), got {self.model.prior.cond_drop_prob}")
        if self.train.max_lr <= 0:
            raise MindEyeError(f"train.max_lr must be positive, got {self.train.max_lr}")
        if self.train.pct_start is not None and not 0 < self.train.pct_start < 1:
            raise MindEyeError(f"train.pct_start must be in (0, 1), got {self.train.pct_start}")
        if self.model.prior.heads <= 0 or self.model.prior.dim_head <= 0:
            raise MindEyeError("model.prior.heads and model.prior.dim_head must be positive")


# --------------------------------------------------------------------------------------------
# Generic dataclass <-> dict machinery
# --------------------------------------------------------------------------------------------
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
    unknown = sorted(set(data) - set(names))
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
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise MindEyeError(f"--set {override!r}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls: type = Config) -> Any:
    """Defaults <- YAML file <- ``--set`` overrides, then type- and range-checked."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise MindEyeError(f"config file {path} not found; see configs/ for the shipped configs")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise MindEyeError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise MindEyeError(f"config file {path} must contain a mapping at top level")
        data = loaded
    for override in overrides or []:
        apply_override(data, override)
    cfg = from_dict(cls, data)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
