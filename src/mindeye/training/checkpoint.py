"""Run directories and atomic checkpoints.

A run directory holds::

    RUN/config.yaml          the resolved config
    RUN/run.json             package version, store, voxel count, what kind of model
    RUN/model.safetensors    the latest model weights (safetensors: loading never unpickles)
    RUN/checkpoint/          everything needed to resume: model.safetensors, state.pt
                             (optimizer, scheduler, RNG states, epoch; loaded with weights_only=True)
    RUN/metrics.jsonl        one JSON object per logged step / evaluation
    RUN/.lock                OS file lock held by the training process (its PID inside)

Checkpoints are written to ``checkpoint.tmp/`` and swapped in with renames, so a kill at any
moment leaves either the previous or the new checkpoint, never a torn one
(:func:`recover_interrupted_swap` tidies up whatever state the kill left). A run whose loss became
non-finite saves nothing more and records ``"diverged": {"step", "epoch"}`` in run.json; evaluation
and inference refuse it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from mindeye import __version__
from mindeye.config import Config, dump_config, load_config
from mindeye.errors import MindEyeError
from mindeye.finite import non_finite_tensors
from mindeye.safe_load import load_safetensors_file, load_torch_file


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


def mark_diverged(run_dir: Path, step: int, epoch: int) -> None:
    """Record in run.json that training diverged (evaluation and inference then refuse the run)."""
    path = run_dir / "run.json"
    info = json.loads(path.read_text()) if path.exists() else {"mindeye_version": __version__}
    info["diverged"] = {"step": step, "epoch": epoch}
    _write_text_atomic(path, json.dumps(info, indent=2))


def refuse_diverged(run_dir: Path, info: dict[str, Any]) -> None:
    bad = info.get("diverged")
    if bad:
        raise MindEyeError(
            f"{run_dir} diverged during training (non-finite loss at step {bad.get('step')}, epoch "
            f"{bad.get('epoch')}; see its run.json), so its weights are not a trained model; train it again "
            "with a lower train.max_lr")


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
    recover_interrupted_swap(run_dir)  # a kill during the previous swap may have left tmp/ or old/
    tmp.mkdir(parents=True)
    try:
        save_file(_contiguous_state(model), str(tmp / "model.safetensors"),
                  metadata={"mindeye_version": __version__})
        torch.save({"mindeye_version": __version__, **state}, tmp / "state.pt")
    except BaseException:  # e.g. a full disk: the previous checkpoint stays, the torn one goes
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)
    # The top-level weights follow the checkpoint so inference always sees the newest model.
    shutil.copyfile(final / "model.safetensors", run_dir / "model.safetensors.tmp")
    os.replace(run_dir / "model.safetensors.tmp", run_dir / "model.safetensors")


def recover_interrupted_swap(run_dir: Path) -> None:
    """Bring a run directory back to one checkpoint after a kill at any point of :func:`save_checkpoint`.

    The swap is: write tmp/ -> rename checkpoint/ to old/ -> rename tmp/ to checkpoint/ -> delete old/.
    checkpoint/ present: it is the newest complete one; tmp/ (possibly half written) and old/ (the
    previous one, possibly half deleted) are removed. checkpoint/ absent but old/ present: the kill
    came between the renames, old/ is the last complete checkpoint and is put back; tmp/ is dropped
    (it may be complete, but nothing proves it). Only tmp/: the first checkpoint was never published.
    """
    final, tmp, old = run_dir / "checkpoint", run_dir / "checkpoint.tmp", run_dir / "checkpoint.old"
    if not final.exists() and old.exists():
        os.replace(old, final)
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    (run_dir / "model.safetensors.tmp").unlink(missing_ok=True)
    # Killed after the swap but before the top-level copy: the top-level weights would be an epoch old.
    top, inner = run_dir / "model.safetensors", final / "model.safetensors"
    if inner.exists() and (not top.exists() or top.stat().st_mtime < inner.stat().st_mtime):
        shutil.copyfile(inner, run_dir / "model.safetensors.tmp")
        os.replace(run_dir / "model.safetensors.tmp", top)


def read_safetensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A run's safetensors weights (never unpickles); a damaged or foreign file is a MindEyeError."""
    return load_safetensors_file(path, "restore the run's own file or train the run again", device)


def _load_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, strict: bool) -> Any:
    try:
        return model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
        raise MindEyeError(f"{path} does not fit the model built from the run's config ({first}); the file "
                           "belongs to another run or config: restore the run's own weights") from None


def load_checkpoint(run_dir: Path, model: torch.nn.Module, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    recover_interrupted_swap(run_dir)
    ckpt = run_dir / "checkpoint"
    if not (ckpt / "state.pt").exists():
        raise MindEyeError(f"{run_dir} has no checkpoint to resume from; start without --resume")
    _load_state_dict(model, read_safetensors(ckpt / "model.safetensors", map_location), ckpt / "model.safetensors",
                     strict=True)
    state = load_torch_file(ckpt / "state.pt", "restore the run's own checkpoint or start a new run")
    if not isinstance(state, dict) or not {"epoch", "step", "optimizer", "scheduler", "rng_cpu"} <= set(state):
        raise MindEyeError(f"{ckpt / 'state.pt'} is not a mindeye training state (keys missing); "
                           "restore it or start a new run")
    return state


def load_weights(model: torch.nn.Module, path: Path, device: str | torch.device = "cpu") -> None:
    if not path.exists():
        raise MindEyeError(f"weights file {path} not found; has the run finished at least one epoch?")
    state = read_safetensors(path, device)
    bad = non_finite_tensors(state)
    if bad:
        raise MindEyeError(f"{path} holds NaN or inf weights (in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}); "
                           "the run diverged or the file is damaged: train the run again")
    missing, unexpected = _load_state_dict(model, state, path, strict=False)
    if missing or unexpected:
        raise MindEyeError(
            f"{path} does not match the model built from the run's config: missing {list(missing)[:5]}, "
            f"unexpected {list(unexpected)[:5]}"
        )
