"""Run directories and atomic checkpoints.

A run directory holds::

    RUN/config.yaml          the resolved config
    RUN/run.json             package version, store, voxel count, what kind of model
    RUN/model.safetensors    the latest model weights (safetensors: loading never unpickles)
    RUN/checkpoint/          everything needed to resume: model.safetensors, state.pt
                             (optimizer, scheduler, RNG states, epoch; loaded with weights_only=True)
    RUN/metrics.jsonl        one JSON object per logged step / evaluation

Checkpoints are written to ``checkpoint.tmp/`` and swapped in with renames, so a kill at any
moment leaves either the previous or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mindeye import __version__
from mindeye.config import Config, dump_config, load_config
from mindeye.errors import MindEyeError


def _contiguous_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def save_weights(model: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(_contiguous_state(model), str(tmp), metadata={"mindeye_version": __version__, **(metadata or {})})
    os.replace(tmp, path)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_run_files(run_dir: Path, cfg: Config, info: dict[str, Any]) -> None:
    # Atomic: a resumed run rewrites both, and a torn config.yaml would make the run unreadable.
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(run_dir / "config.yaml", dump_config(cfg))
    _write_text_atomic(run_dir / "run.json", json.dumps({"mindeye_version": __version__, **info}, indent=2))


def read_run(run_dir: str | Path) -> tuple[Config, dict[str, Any]]:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists() or not (run_dir / "run.json").exists():
        raise MindEyeError(f"{run_dir} is not a mindeye run directory (no config.yaml/run.json); "
                           "create one with `mindeye train --config CONFIG --out RUN_DIR`")
    return load_config(run_dir / "config.yaml"), json.loads((run_dir / "run.json").read_text())


def save_checkpoint(run_dir: Path, model: torch.nn.Module, state: dict[str, Any]) -> None:
    """Atomically replace RUN/checkpoint with model weights + resumable training state."""
    final = run_dir / "checkpoint"
    tmp = run_dir / "checkpoint.tmp"
    old = run_dir / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_contiguous_state(model), str(tmp / "model.safetensors"),
              metadata={"mindeye_version": __version__})
    torch.save({"mindeye_version": __version__, **state}, tmp / "state.pt")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    # The top-level weights follow the checkpoint so inference always sees the newest model.
    shutil.copyfile(final / "model.safetensors", run_dir / "model.safetensors.tmp")
    os.replace(run_dir / "model.safetensors.tmp", run_dir / "model.safetensors")


def recover_interrupted_swap(run_dir: Path) -> None:
    """If a kill landed between the two renames, the previous checkpoint is still in checkpoint.old."""
    final, old = run_dir / "checkpoint", run_dir / "checkpoint.old"
    if not final.exists() and old.exists():
        os.replace(old, final)


def load_checkpoint(run_dir: Path, model: torch.nn.Module, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    recover_interrupted_swap(run_dir)
    ckpt = run_dir / "checkpoint"
    if not (ckpt / "state.pt").exists():
        raise MindEyeError(f"{run_dir} has no checkpoint to resume from; start without --resume")
    model.load_state_dict(load_file(str(ckpt / "model.safetensors"), device=str(map_location)))
    return torch.load(ckpt / "state.pt", map_location=map_location, weights_only=True)


def load_weights(model: torch.nn.Module, path: Path, device: str | torch.device = "cpu") -> None:
    if not path.exists():
        raise MindEyeError(f"weights file {path} not found; has the run finished at least one epoch?")
    state = load_file(str(path), device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MindEyeError(
            f"{path} does not match the model built from the run's config: missing {list(missing)[:5]}, "
            f"unexpected {list(unexpected)[:5]}"
        )
