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
from mindeye.config import Config, dump_config
from mindeye.errors import MindEyeError
from mindeye.runs import load_weights, read_run  # noqa: F401  (their home is mindeye.runs)
from mindeye.utils.files import atomic_path, write_text_atomic


def _contiguous_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def save_weights(model: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file(_contiguous_state(model), str(tmp), metadata={"mindeye_version": __version__, **(metadata or {})})


def write_run_files(run_dir: Path, cfg: Config, info: dict[str, Any]) -> None:
    # Atomic: a resumed run rewrites both, and a torn config.yaml would make the run unreadable.
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", dump_config(cfg))
    write_text_atomic(run_dir / "run.json", json.dumps({"mindeye_version": __version__, **info}, indent=2))


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
