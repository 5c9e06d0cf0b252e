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

import errno
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from mindeye import __version__
from mindeye.config import Config, dump_config
from mindeye.errors import MindEyeError
from mindeye.runs import (  # noqa: F401  (the run-directory readers' home is mindeye.runs)
    _load_state_dict,
    load_weights,
    read_run,
    read_run_json,
    read_safetensors,
    refuse_diverged,
)
from mindeye.safe_load import load_torch_file
from mindeye.utils.files import atomic_path, write_text_atomic


def _contiguous_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def _write_error(exc: BaseException, run_dir: Path, what: Path) -> BaseException:
    """A failed checkpoint / weights write as one line (safetensors and torch.save report a full disk as their own
    exception types); the previous checkpoint is intact, so the run resumes exactly once there is room."""
    if isinstance(exc, KeyboardInterrupt | SystemExit | MindEyeError) or not isinstance(exc, Exception):
        return exc
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT) or any(
        k in text for k in ("No space left", "StorageFull", "Disk quota", "QuotaExceeded", "os error 28"))
    if not full and not isinstance(exc, OSError) and "safetensor" not in type(exc).__name__.lower() \
            and "PytorchStreamWriter" not in text:
        return exc  # not a write failure: a bug to report as it is
    why = "no space left on the device" if full else f"{type(exc).__name__}: {text}"
    kept = ("the previous checkpoint is intact; free some space, then continue with `mindeye train --resume`"
            if (run_dir / "checkpoint").exists() else
            "no checkpoint was written yet; free some space, then `mindeye train --resume` starts the run over")
    return MindEyeError(f"could not write {what} ({why}); {kept}")


def save_weights(model: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    try:
        with atomic_path(path) as tmp:
            save_file(_contiguous_state(model), str(tmp),
                      metadata={"mindeye_version": __version__, **(metadata or {})})
    except BaseException as exc:
        raise _write_error(exc, path.parent, path) from None


def write_run_files(run_dir: Path, cfg: Config, info: dict[str, Any]) -> None:
    # Atomic: a resumed run rewrites both, and a torn config.yaml would make the run unreadable.
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", dump_config(cfg))
    write_text_atomic(run_dir / "run.json", json.dumps({"mindeye_version": __version__, **info}, indent=2))


def mark_diverged(run_dir: Path, step: int, epoch: int) -> None:
    """Record in run.json that training diverged (evaluation and inference then refuse the run)."""
    path = run_dir / "run.json"
    info = read_run_json(run_dir) if path.exists() else {"mindeye_version": __version__}
    info["diverged"] = {"step": step, "epoch": epoch}
    write_text_atomic(path, json.dumps(info, indent=2))


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
    except BaseException as exc:  # e.g. a full disk: the previous checkpoint stays, the torn one goes
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(exc, run_dir, final) from None
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
    check_state_values(ckpt / "state.pt", state)
    return state


def _bad_state(path: Path, problem: str) -> MindEyeError:
    return MindEyeError(f"{path} is not a valid mindeye training state ({problem}); restore the run's own "
                        "checkpoint or start a new run")


def check_state_values(path: Path, state: dict[str, Any]) -> None:
    """The values of a loaded state.pt have the types a checkpoint writes (before anything is restored)."""
    for key in ("epoch", "step"):
        value = state[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _bad_state(path, f"{key} is {value!r}, not a count")
    for key in ("rng_cpu", "rng_cuda"):
        value = state.get(key)
        if key in state and not (isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.ndim == 1):
            shown = f"a {value.dtype} tensor" if isinstance(value, torch.Tensor) else type(value).__name__
            raise _bad_state(path, f"{key} is {shown}, not a uint8 random-generator state")
    opt = state["optimizer"]
    if not (isinstance(opt, dict) and isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)
            and all(isinstance(g, dict) for g in opt["param_groups"])):
        raise _bad_state(path, "the optimizer state is not an optimizer's state_dict")
    if not isinstance(state["scheduler"], dict):
        raise _bad_state(path, "the scheduler state is not a scheduler's state_dict")


@contextmanager
def restoring_state(run_dir: Path, scheduler: Any = None, saved_scheduler: Any = None) -> Iterator[None]:
    """Restore optimizer / scheduler / RNG states inside this block: a state that does not fit this run (other
    optimizer groups, a foreign scheduler) is one MindEyeError, never a traceback or a silently other run."""
    path = Path(run_dir) / "checkpoint" / "state.pt"
    if scheduler is not None:
        expected = scheduler.state_dict()
        if set(saved_scheduler) != set(expected) or any(
                type(saved_scheduler[k]) is not type(v) for k, v in expected.items() if v is not None):
            odd = sorted(set(saved_scheduler) ^ set(expected)) or [
                k for k, v in expected.items() if v is not None and type(saved_scheduler[k]) is not type(v)]
            raise _bad_state(path, f"its scheduler state does not fit this run's scheduler (differs in "
                                   f"{', '.join(map(str, odd[:5]))})")
    try:
        yield
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise _bad_state(path, f"it does not fit this run: {first}") from None
