"""`mindeye summary` and `mindeye import-checkpoint` through the command line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from mindeye.cli import main  # noqa: E402
from mindeye.config import load_config  # noqa: E402
from mindeye.models.factory import build_model  # noqa: E402
from test_convert import TINY, authors_layout  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("overrides, backbone", [
    ([], 940_225_280), (["model.backbone.n_blocks=2"], 906_646_272), (["model.backbone.n_blocks=0"], 873_067_264),
    (["model.backbone.tokens=1"], 134_722_304),
])
def test_summary_prints_reference_counts(capsys, overrides, backbone):
    args = ["summary", str(REPO / "src/mindeye/configs" / "mindeye-subj01.yaml")]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 0
    out = capsys.readouterr().out
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()[1:]}
    assert counts["backbone"] == backbone
    if not overrides:
        assert counts["projector"] == 7_354_624
        assert counts["prior"] == 56_055_184


def test_summary_lowlevel(capsys):
    assert main(["summary", str(REPO / "src/mindeye/configs" / "lowlevel-subj01.yaml")]) == 0
    assert "total        206065604" in capsys.readouterr().out


def test_summary_needs_voxel_count(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {kind: mindeye}\n")
    assert main(["summary", str(cfg)]) == 2
    assert "--n-voxels" in capsys.readouterr().err


def _tiny_config(tmp_path: Path) -> Path:
    t = TINY
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        f"model:\n  kind: mindeye\n  backbone: {{hidden: {t['hidden']}, n_blocks: 4, tokens: {t['tokens']}, dim: {t['dim']}}}\n"
        f"  projector: {{hidden: {t['proj']}}}\n"
        f"  prior: {{depth: {t['depth']}, heads: {t['heads']}, dim_head: {t['dh']}}}\n")
    return cfg


def test_import_checkpoint_round_trip(tmp_path, capsys):
    torch.manual_seed(0)
    sd = {k: torch.randn(s) for k, s in authors_layout(**TINY).items()}
    freqs = [k for k in sd if k.endswith("rotary_emb.freqs")]
    for k in freqs:  # one rotary embedding shared by all layers: every per-layer copy is the same
        sd[k] = sd[freqs[0]].clone()
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"model_state_dict": sd}, ckpt)
    cfg = _tiny_config(tmp_path)
    assert main(["import-checkpoint", "--mindeye-v1", str(ckpt), "--out", str(tmp_path / "run"),
                 "--config", str(cfg)]) == 0
    weights = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert torch.equal(weights["backbone.head.weight"], sd["voxel2clip.lin1.weight"])
    assert torch.equal(weights["projector.net.5.weight"], sd["voxel2clip.projector.5.weight"])
    model = build_model(load_config(tmp_path / "run" / "config.yaml").model, TINY["nvox"])
    model.load_state_dict(weights, strict=True)
    # an existing run directory is refused
    assert main(["import-checkpoint", "--mindeye-v1", str(ckpt), "--out", str(tmp_path / "run"),
                 "--config", str(cfg)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_import_checkpoint_wrong_voxel_count(tmp_path, capsys):
    sd = {k: torch.zeros(s) for k, s in authors_layout(**TINY).items()}
    ckpt = tmp_path / "ckpt.pth"
    torch.save(sd, ckpt)
    code = main(["import-checkpoint", "--mindeye-v1", str(ckpt), "--out", str(tmp_path / "r"),
                 "--config", str(_tiny_config(tmp_path)), "--n-voxels", "15724"])
    assert code == 2
    assert "15724" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
