"""Config system: YAML + --set overrides -> validated dataclasses, with helpful error messages."""

from __future__ import annotations

import dataclasses
import importlib.util
import typing
from pathlib import Path

import pytest
import yaml

from mindeye.config import Config, TrainConfig, dump_config, from_dict, load_config, to_dict
from mindeye.errors import MindEyeError

ROOT = Path(__file__).resolve().parents[1]


def write_yaml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Leaf keys of a config dataclass, computed independently of the docs generator."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += dotted_keys(hints[f.name], prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


# -- loading ----------------------------------------------------------------------------------
def test_defaults_without_file():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.train.epochs == 240 and cfg.model.backbone.tokens == 257 and cfg.model.prior.depth == 6


def test_yaml_file_sets_nested_keys_and_keeps_other_defaults(tmp_path):
    p = write_yaml(tmp_path, """
name: tiny
train:
  epochs: 3
  max_lr: 0.001
model:
  backbone:
    hidden: 64
    n_blocks: 1
  ridge:
    alphas: [1, 10]
""")
    cfg = load_config(p)
    assert cfg.name == "tiny"
    assert cfg.train.epochs == 3 and cfg.train.max_lr == pytest.approx(1e-3)
    assert cfg.model.backbone.hidden == 64 and cfg.model.backbone.n_blocks == 1
    assert cfg.model.backbone.dim == 768  # untouched default
    assert cfg.train.batch_size == 32
    # ints in a float list are coerced to float
    assert cfg.model.ridge.alphas == [1.0, 10.0] and all(isinstance(a, float) for a in cfg.model.ridge.alphas)


def test_set_overrides_win_over_yaml(tmp_path):
    p = write_yaml(tmp_path, "train:\n  epochs: 3\n  batch_size: 8\n")
    cfg = load_config(p, ["train.epochs=5", "model.backbone.n_blocks=2", "data.store=/x/store"])
    assert cfg.train.epochs == 5
    assert cfg.train.batch_size == 8  # from the file
    assert cfg.model.backbone.n_blocks == 2
    assert cfg.data.store == "/x/store"


def test_set_values_are_parsed_as_yaml():
    cfg = load_config(None, [
        "model.lowlevel.upsampler_channels=[8, 16]",
        "model.backbone.skip=false",
        "train.pct_start=null",
        "train.max_steps=7",
        "name=123",  # a number is acceptable for a string key
    ])
    assert cfg.model.lowlevel.upsampler_channels == [8, 16]
    assert cfg.model.backbone.skip is False
    assert cfg.train.pct_start is None and cfg.train.max_steps == 7
    assert cfg.name == "123"


def test_exponent_floats_without_dot(tmp_path):
    # PyYAML reads `3e-4` as a string (YAML 1.1); the config must still take it as a number.
    cfg = load_config(write_yaml(tmp_path, "train:\n  max_lr: 3e-4\n"), ["model.ridge.alphas=[1e2, 1e5]"])
    assert cfg.train.max_lr == pytest.approx(3e-4)
    assert cfg.model.ridge.alphas == [100.0, 100000.0]
    with pytest.raises(MindEyeError, match="train.max_lr: expected a number"):
        load_config(None, ["train.max_lr=fast"])


def test_empty_section_in_yaml_means_defaults(tmp_path):
    cfg = load_config(write_yaml(tmp_path, "train:\nmodel:\n  backbone:\n"), ["train.epochs=2"])
    assert cfg.train.epochs == 2 and cfg.model.backbone == Config().model.backbone


def test_empty_file_is_defaults(tmp_path):
    assert load_config(write_yaml(tmp_path, "")) == Config()


def test_literal_choices():
    assert load_config(None, ["data.test_mode=single"]).data.test_mode == "single"
    assert load_config(None, ["train.loss=softclip"]).train.loss == "softclip"
    with pytest.raises(MindEyeError) as exc:
        load_config(None, ["data.test_mode=mean"])
    msg = str(exc.value)
    assert "data.test_mode" in msg and "'averaged'" in msg and "'single'" in msg and "'mean'" in msg


def test_list_values_are_checked_per_item():
    with pytest.raises(MindEyeError, match=r"model\.lowlevel\.upsampler_channels\[1\]: expected an integer"):
        load_config(None, ["model.lowlevel.upsampler_channels=[8, wide]"])
    with pytest.raises(MindEyeError, match="upsampler_channels: expected list of int"):
        load_config(None, ["model.lowlevel.upsampler_channels=8"])


# -- errors -----------------------------------------------------------------------------------
def test_unknown_key_lists_valid_keys():
    with pytest.raises(MindEyeError) as exc:
        load_config(None, ["train.epoch=3"])
    msg = str(exc.value)
    assert "train.epoch" in msg
    for f in dataclasses.fields(TrainConfig):
        assert f"train.{f.name}" in msg


def test_unknown_top_level_key_in_yaml(tmp_path):
    with pytest.raises(MindEyeError) as exc:
        load_config(write_yaml(tmp_path, "trian:\n  epochs: 3\n"))
    msg = str(exc.value)
    assert "trian" in msg and "train" in msg and "model" in msg


def test_unknown_non_string_key(tmp_path):
    with pytest.raises(MindEyeError, match="unknown config key"):
        load_config(write_yaml(tmp_path, "1: x\n"))


@pytest.mark.parametrize("override, pattern", [
    ("train.epochs=three", r"train\.epochs: expected an integer, got 'three'"),
    ("train.epochs=2.5", r"train\.epochs: expected an integer"),
    ("train.epochs=true", r"train\.epochs: expected an integer"),  # bool is not an int here
    ("model.backbone.skip=1", r"model\.backbone\.skip: expected true or false"),
    ("train.max_steps=[1]", r"train\.max_steps: expected int or NoneType"),
    ("train=3", r"train: expected a mapping of TrainConfig fields"),
])
def test_wrong_type_messages(override, pattern):
    with pytest.raises(MindEyeError, match=pattern):
        load_config(None, [override])


@pytest.mark.parametrize("override, pattern", [
    ("train.epochs=0", r"train\.epochs must be positive, got 0"),
    ("train.batch_size=-4", r"train\.batch_size must be positive"),
    ("train.mixco_fraction=1.5", r"train\.mixco_fraction must be in \[0, 1\]"),
    ("train.mixco_prob=-0.1", r"train\.mixco_prob must be in \[0, 1\]"),
    ("model.prior.cond_drop_prob=1.0", r"model\.prior\.cond_drop_prob must be in \[0, 1\)"),
    ("train.pct_start=1.0", r"train\.pct_start must be in \(0, 1\)"),
    ("train.max_lr=.nan", r"train\.max_lr must be positive"),  # NaN fails every range check
    ("model.backbone.n_blocks=-1", r"model\.backbone\.n_blocks must be >= 0"),
    ("train.max_steps=0", r"train\.max_steps must be positive or null"),
    ("model.ridge.alphas=[]", r"model\.ridge\.alphas must be a non-empty list"),
    ("eval.pool=0", r"eval\.pool must be positive"),
    ("train.log_every=0", r"train\.log_every must be positive"),  # was a ZeroDivisionError mid-training
    ("model.backbone.dropout_in=1.5", r"model\.backbone\.dropout_in must be in \[0, 1\]"),
    ("model.lowlevel.dropout_block=.nan", r"model\.lowlevel\.dropout_block must be in \[0, 1\]"),
    ("model.prior.dim_head=15", r"model\.prior\.dim_head must be even"),
    ("model.lowlevel.norm_groups=0", r"model\.lowlevel\.norm_groups must be positive"),
])
def test_out_of_range_values(override, pattern):
    with pytest.raises(MindEyeError, match=pattern) as exc:
        load_config(None, [override])
    assert "--set" in str(exc.value)  # says how to fix it


def test_edge_values_in_range_are_accepted():
    cfg = load_config(None, ["train.mixco_fraction=0", "model.backbone.n_blocks=0", "model.prior.cond_drop_prob=0",
                             "train.pct_start=0.5", "model.backbone.dropout_in=1", "model.lowlevel.norm_groups=64"])
    assert cfg.train.mixco_fraction == 0.0 and cfg.model.backbone.n_blocks == 0


def test_bad_yaml(tmp_path):
    with pytest.raises(MindEyeError, match="not valid YAML"):
        load_config(write_yaml(tmp_path, "train: [epochs: 3\n"))


def test_yaml_top_level_must_be_mapping(tmp_path):
    with pytest.raises(MindEyeError, match="mapping at top level"):
        load_config(write_yaml(tmp_path, "- 1\n- 2\n"))


def test_missing_file(tmp_path):
    with pytest.raises(MindEyeError, match=r"nope\.yaml not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("override, pattern", [
    ("train.epochs", "KEY=VALUE"),
    ("=3", "KEY=VALUE"),
    ("train.epochs=[1", "not valid YAML"),
    ("name.x=1", "config key name: expected a string"),
])
def test_bad_set_syntax(override, pattern):
    with pytest.raises(MindEyeError, match=pattern):
        load_config(None, [override])


def test_set_into_a_scalar_from_yaml(tmp_path):
    with pytest.raises(MindEyeError, match="name is not a section"):
        load_config(write_yaml(tmp_path, "name: run\n"), ["name.x=1"])


# -- round trip -------------------------------------------------------------------------------
def test_dump_and_reload_round_trip(tmp_path):
    cfg = load_config(None, ["train.epochs=7", "model.kind=ridge", "model.ridge.alphas=[0.5, 2]",
                             "targets.weights=/w", "train.max_lr=3e-4"])
    p = write_yaml(tmp_path, dump_config(cfg))
    again = load_config(p)
    assert again == cfg
    assert from_dict(Config, to_dict(cfg)) == cfg
    assert yaml.safe_load(dump_config(cfg))["train"]["epochs"] == 7


# -- docs/configs.md is generated from the dataclasses ---------------------------------------------
def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_config_docs", ROOT / "scripts" / "gen_config_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_docs_up_to_date():
    doc = (ROOT / "docs" / "configs.md").read_text()
    missing = [k for k in dotted_keys(Config) if f"`{k}`" not in doc]
    assert not missing, f"docs/configs.md lacks {missing}; run python scripts/gen_config_docs.py"
    assert doc == _load_generator().render(), "docs/configs.md is stale; run python scripts/gen_config_docs.py"


def test_config_docs_have_a_meaning_and_default_for_every_key():
    gen = _load_generator()
    rows = gen.rows()
    assert [r.key for r in rows] == dotted_keys(Config)
    for r in rows:
        assert r.comment, f"{r.key} has no trailing `# comment` in config.py"
    by_key = {r.key: r for r in rows}
    assert by_key["train.epochs"].default == "`240`"
    assert by_key["model.ridge.alphas"].default == "`[100.0, 1000.0, 10000.0, 100000.0]`"
    assert by_key["data.store"].default == "`null`"
    assert by_key["train.batch_size"].comment.startswith("global batch")
