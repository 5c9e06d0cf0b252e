"""Config files: shipped configs by name, `extends` chains, and their error messages."""

from __future__ import annotations

import pytest

from mindeye.config import SHIPPED_CONFIG_DIR, load_config, shipped_config_names
from mindeye.errors import MindEyeError


def test_shipped_name_resolves_like_its_path():
    by_name = load_config("mindeye-subj01")
    by_path = load_config(SHIPPED_CONFIG_DIR / "mindeye-subj01.yaml")
    assert by_name == by_path and by_name.name == "mindeye-subj01"
    assert load_config("ablations/blocks0.yaml").model.backbone.n_blocks == 0
    assert load_config("configs/ridge.yaml").model.kind == "ridge"  # the old repository spelling


def test_unknown_name_lists_the_shipped_configs():
    with pytest.raises(MindEyeError) as exc:
        load_config("mindeye-subj99")
    msg = str(exc.value)
    assert msg.startswith("config mindeye-subj99 not found: it is neither a file nor a shipped config name")
    assert "mindeye-subj01" in msg and "ablations/blocks0" in msg
    assert {"demo", "mindeye-subj01", "lowlevel-subj01", "ridge", "ablations/retrieval-only"} <= set(
        shipped_config_names())


def test_extends_merges_sections_key_by_key(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\nmodel:\n  backbone: {hidden: 64, n_blocks: 3}\n"
                                        "train: {epochs: 7, batch_size: 8}\n")
    (tmp_path / "child.yaml").write_text("extends: base\nname: child\nmodel:\n  backbone: {n_blocks: 1}\n")
    cfg = load_config(tmp_path / "child.yaml", ["train.epochs=2"])
    assert cfg.name == "child"
    assert (cfg.model.backbone.hidden, cfg.model.backbone.n_blocks) == (64, 1)  # sibling key kept
    assert (cfg.train.epochs, cfg.train.batch_size) == (2, 8)  # --set applies last


def test_extends_a_shipped_config_by_name(tmp_path):
    (tmp_path / "mine.yaml").write_text("extends: mindeye-subj01\ntrain: {epochs: 3}\n")
    cfg, base = load_config(tmp_path / "mine.yaml"), load_config("mindeye-subj01")
    assert cfg.train.epochs == 3 and cfg.train.batch_size == base.train.batch_size
    assert cfg.model == base.model


def test_ablations_hold_only_their_change():
    base, retrieval = load_config("mindeye-subj01"), load_config("ablations/retrieval-only")
    assert not retrieval.model.prior.enabled and (retrieval.train.epochs, retrieval.train.batch_size) == (120, 300)
    blocks0 = load_config("ablations/blocks0")
    assert blocks0.model.backbone.n_blocks == 0 and blocks0.model.projector == base.model.projector
    assert blocks0.train.loss == base.train.loss and blocks0.model.prior.enabled is False
    for path in (SHIPPED_CONFIG_DIR / "ablations").glob("*.yaml"):
        assert "extends:" in path.read_text() and len(path.read_text().splitlines()) <= 8, path.name


def test_extends_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(MindEyeError, match="extends itself"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing-parent\n")
    with pytest.raises(MindEyeError) as exc:
        load_config(tmp_path / "c.yaml")
    assert str(exc.value).startswith(f"{tmp_path / 'c.yaml'}: extends config missing-parent not found")
    (tmp_path / "d.yaml").write_text("extends: [a, b]\n")
    with pytest.raises(MindEyeError, match="extends must be a config name or path, got"):
        load_config(tmp_path / "d.yaml")

