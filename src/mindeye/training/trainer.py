"""`mindeye train`: one trainer for the high-level model, the low-level model and the ridge baseline.

Reference schedule (docs/choices.md): AdamW (no decay on biases: ``train.no_decay``), OneCycle with
pct_start = 2/epochs and final_div_factor 1000, BiMixCo for the first third of the epochs then
SoftCLIP with a cosine-annealed temperature, prior loss weight 30. Checkpoints every epoch,
atomically; ``resume=True`` continues exactly where the last finished epoch left off.

Why one module of this size: the Trainer (run directory, resume, logging), the step
(``train_step``) and the two tasks (HighLevelTask / LowLevelTask: what a batch is, what the loss is,
how to validate) share the run's state and are read together; the pieces that stand alone already
live beside it (batches, checkpoint, divergence, resume_check, run_lock, distributed, losses).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mindeye.config import Config, to_dict
from mindeye.constants import SD_LATENT_SCALE
from mindeye.data.store import SubjectStore
from mindeye.devices import resolve_device
from mindeye.errors import MindEyeError, option
from mindeye.models.factory import build_model, parameter_counts
from mindeye.models.mindeye import MindEyeModel
from mindeye.runs import embed_voxels, read_run_json
from mindeye.training import losses
from mindeye.training.batches import BatchLoader, Request, TargetTable
from mindeye.training.checkpoint import (
    load_checkpoint,
    mark_diverged,
    recover_interrupted_swap,
    restoring_state,
    save_checkpoint,
    save_weights,
    write_run_files,
)
from mindeye.training.data import (
    EpochSampler,
    Targets,
    load_eval_split,
    load_repetitions,
    load_trials,
    target_options,
    train_val_images,
    training_images,
)
from mindeye.training.distributed import (
    DistInfo,
    barrier,
    full_model_state,
    full_optimizer_state,
    gather_with_grad,
    init_distributed,
    load_full_optimizer_state,
    local_slice,
    shard_model,
)
from mindeye.training.divergence import DivergenceGuard
from mindeye.training.resume_check import check_resume_config, check_resume_stores, flat_keys
from mindeye.training.ridge_first import (
    SCORE_NAMES,
    BestEpoch,
    fit_ridge_map,
    ridge_check,
    ridge_check_line,
    ridge_reference,
    update_run_info,
    val_score,
)
from mindeye.training.run_lock import RunLock

log = logging.getLogger(__name__)  # one line per epoch and stage, with or without progress bars


def autocast_context(precision: str, device: str):
    """bf16 autocast on GPU by default, fp32 on CPU (the 'auto' setting)."""
    if precision == "auto":
        precision = "bf16" if device.startswith("cuda") else "fp32"
    if precision == "fp32":
        return nullcontext(), precision
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dtype), precision


def param_groups(model: nn.Module, weight_decay: float, no_decay: str = "bias",
                 decay_all: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """AdamW groups: ``bias`` = no decay only for parameters named ``*bias*`` (the authors' effective
    grouping: their list also names ``LayerNorm.weight``, which matches none of their modules, so norm
    gains and embeddings are decayed); ``bias+norm`` = also no decay on 1-d/norm/null/position parameters."""
    decay, no_decay_params = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith(decay_all) if decay_all else False:
            skip = False  # MindEye2's ridge: decayed whole, bias included (their Train.ipynb groups)
        elif no_decay == "bias":
            skip = "bias" in name
        else:
            is_norm = any(k in name.lower() for k in ("norm", ".ln", "null_", "pos_emb"))
            skip = p.ndim < 2 or name.endswith(".bias") or is_norm
        (no_decay_params if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay_params, "weight_decay": 0.0}]


def adamw_implementation(device: str, sharded: bool = False) -> dict[str, bool]:
    """The fastest correct AdamW kernel for the device: ``fused`` on CUDA and on the CPU (one pass over
    each tensor; torch's CPU default is the for-loop implementation, 6-15x the memory-traffic floor with
    a full-size temporary per tensor: benchmarks/cpu_optimizer.py). FSDP shards are DTensors, which the
    CPU fused kernel does not take, so sharded CPU runs use ``foreach``. The update is the same AdamW
    (equal to the for-loop result to float rounding: tests/test_trainer.py)."""
    if sharded and not device.startswith("cuda"):
        return {"foreach": True}
    return {"fused": True}


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.flatten(1).float(), dim=-1)


def _record(line: str) -> dict[str, Any] | None:
    """One metrics.jsonl record; None for a blank or torn line (a power loss mid-write leaves one)."""
    try:
        record = json.loads(line) if line.strip() else None
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step", 0), int | float) else None


class Trainer:
    """One training run. ``store`` may name several subject stores (a list): the high-level model then
    has one input layer per subject (shared-subject layout) and every batch is drawn evenly from all of
    them. ``init_from`` (a finished high-level run) starts the shared weights from that run and gives
    each new subject a fresh input layer (fine-tuning; docs/shared-subject.md)."""

    def __init__(self, cfg: Config, run_dir: str | Path, store: str | Path | list[str | Path] | None = None,
                 device: str | None = None, resume: bool = False, progress: bool = True,
                 init_from: str | Path | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        paths = list(store) if isinstance(store, list | tuple) else [store or cfg.data.store]
        if not paths or not all(paths):
            raise MindEyeError("no subject store given: pass --data STORE or set data.store in the config")
        self.store_paths = [Path(p) for p in paths]
        self.stores = [SubjectStore(p) for p in self.store_paths]
        ids = [st.subject_id for st in self.stores]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise MindEyeError(f"subject id {dupes[0]} names several --data stores "
                               f"({', '.join(str(p) for p, i in zip(self.store_paths, ids) if i == dupes[0])}); "
                               "each subject of a run needs its own id (meta.json subject_id)")
        self.subject_ids = ids
        self.store_path, self.store = self.store_paths[0], self.stores[0]
        self.init_from = Path(init_from) if init_from is not None else None
        info_file = self.run_dir / "run.json"
        if resume and self.init_from is None and info_file.exists():
            recorded = read_run_json(self.run_dir).get("init_from")
            self.init_from = Path(recorded["run"]) if recorded else None  # a resumed fine-tune stays one
        self.device = resolve_device(device)
        self.dist: DistInfo = init_distributed(self.device)
        if self.dist.enabled and self.device.startswith("cuda"):
            self.device = f"cuda:{self.dist.local_rank}"
        self.progress = progress and self.dist.is_main
        if self.device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        # Existing weights (a ridge run or a run stopped mid-epoch has no checkpoint/, only its
        # weights; a kill mid-swap may leave only checkpoint.old/) are never silently replaced.
        has_run = any((self.run_dir / name).exists() for name in ("checkpoint", "checkpoint.old", "model.safetensors"))
        if has_run and not resume:
            raise MindEyeError(f"{self.run_dir} already holds a training run; pass "
                               f"{option('resume=True to continue it, overwrite=True to train it again', '--resume to continue it')}"
                               f" or choose another {option('out', '--out')}")
        started = (self.run_dir / "config.yaml").exists()  # a run stopped before its first checkpoint
        if resume and not (has_run or started):
            raise MindEyeError(f"nothing to resume in {self.run_dir} (no run there: no config.yaml, checkpoint/ or "
                               "model.safetensors); drop --resume to start a new run, or give the run's own --out")
        if resume:
            check_resume_config(self.run_dir, cfg)
            check_resume_stores(self.run_dir, self.stores)  # the same data, in the same order
        self.resume = resume
        self.shared_layout = (len(self.stores) > 1 or self.init_from is not None or self._resumed_shared()
                              or cfg.model.kind == "mindeye2")  # MindEye2: always per-subject ridge layers
        if self.shared_layout and cfg.model.kind not in ("mindeye", "mindeye2"):
            raise MindEyeError(f"only the high-level model (model.kind mindeye) trains on several subjects or "
                               f"from --init-from; train a {cfg.model.kind} model per subject store")
        self.pretrained = self._check_init_from() if self.init_from is not None else None

    def _resumed_shared(self) -> bool:
        info = self.run_dir / "run.json"
        return self.resume and info.exists() and "subjects" in read_run_json(self.run_dir)

    def _check_init_from(self) -> dict[str, Any]:
        """The pretrained run's config, run.json and weights, checked against this run."""
        from mindeye.runs import read_run

        cfg_pre, info_pre = read_run(self.init_from)
        if cfg_pre.model.kind != self.cfg.model.kind or cfg_pre.model.kind not in ("mindeye", "mindeye2"):
            raise MindEyeError(f"--init-from {self.init_from} is a {cfg_pre.model.kind} run; fine-tuning a "
                               f"{self.cfg.model.kind} model starts from a {self.cfg.model.kind} run")
        pre, new = flat_keys(to_dict(cfg_pre.model)), flat_keys(to_dict(self.cfg.model))
        diff = [k for k in pre if pre[k] != new.get(k)]
        if diff:
            raise MindEyeError(f"the model config differs from the pretrained run {self.init_from} "
                               f"(model.{', model.'.join(diff[:4])}); fine-tune with the same architecture "
                               "(leave out --config to use the pretrained run's)")
        if (cfg_pre.targets.encoder, cfg_pre.targets.weights) != (self.cfg.targets.encoder, self.cfg.targets.weights):
            raise MindEyeError(f"the pretrained run {self.init_from} maps to {cfg_pre.targets.encoder} targets, "
                               f"this config to {self.cfg.targets.encoder}; they must be the same")
        pre_subjects = {s["id"]: s for s in run_subjects(info_pre)}
        for sid, st in zip(self.subject_ids, self.stores):
            if sid in pre_subjects and pre_subjects[sid].get("identity") != subject_identity(st):
                raise MindEyeError(
                    f"subject id {sid} of {st.path} is already in the pretrained run {self.init_from} "
                    f"(trained on {pre_subjects[sid].get('store')}, {pre_subjects[sid].get('n_voxels')} voxels) "
                    "but is not the same subject; give the new subject its own id (meta.json subject_id)")
        weights = self.init_from / "model.safetensors"
        if not weights.exists():
            raise MindEyeError(f"--init-from {self.init_from} has no model.safetensors; has it finished an epoch?")
        return {"config": cfg_pre, "info": info_pre, "subjects": pre_subjects, "weights": weights}

    # -- public ------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train (under an OS lock on the run directory, so two processes never write one run)."""
        with RunLock(self.run_dir) if self.dist.is_main else nullcontext():
            if self.dist.is_main:
                recover_interrupted_swap(self.run_dir)  # only under the lock: another process may be mid-swap
            barrier(self.dist)  # the other processes read the checkpoint only once it is recovered
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        if cfg.model.kind == "ridge":
            return self._fit_ridge()
        task = HighLevelTask(self) if cfg.model.kind in ("mindeye", "mindeye2") else LowLevelTask(self)
        n_voxels = ({sid: st.n_voxels for sid, st in zip(self.subject_ids, self.stores)} if self.shared_layout
                    else self.store.n_voxels)
        model = build_model(cfg.model, n_voxels).to(self.device)
        has_checkpoint = self.resume and (self.run_dir / "checkpoint").exists()
        ridge_alpha = None
        if cfg.model.ridge_residual and has_checkpoint and (self.run_dir / "run.json").exists():
            ridge_alpha = json.loads((self.run_dir / "run.json").read_text()).get("ridge_alpha")  # fitted before
        if cfg.model.ridge_residual and not has_checkpoint:
            t_ridge = time.perf_counter()
            ridge_alpha = fit_ridge_map(model.ridge, self.store, task.images, task.ridge_targets,
                                        cfg.model.ridge.alphas, cfg.seed)
            if self.dist.is_main:
                log.info(f"ridge-first: ridge map fitted on {len(task.images)} training images (alpha {ridge_alpha:g}, "
                      f"{time.perf_counter() - t_ridge:.1f} s); the network learns a residual over it")
        new_subjects: list[str] = []
        if self.pretrained is not None and not (self.resume and (self.run_dir / "checkpoint").exists()):
            new_subjects = init_from_pretrained(model, self.pretrained["weights"], self.pretrained["subjects"])
        if cfg.train.activation_checkpointing:
            set_activation_checkpointing(model, True)
        if cfg.train.compile:
            compile_model(model)
        if self.dist.is_main:
            extra: dict[str, Any] = {"processes": self.dist.world}
            if self.pretrained is not None:
                extra["init_from"] = {"run": str(self.init_from.resolve()),
                                      "subjects": sorted(self.pretrained["subjects"]),
                                      "new_subjects": new_subjects or [s for s in self.subject_ids
                                                                       if s not in self.pretrained["subjects"]]}
            if ridge_alpha is not None:
                extra["ridge_alpha"] = ridge_alpha
            write_run_files(self.run_dir, cfg, self._run_info(model, **extra))
        # Small data (docs/small-data.md): the best validation epoch, epoch 0 included (a ridge-first
        # model's epoch 0 is its ridge regression, the reference the run is checked against). Epoch 0 is
        # scored before any sharding, by the main process alone.
        best = BestEpoch(self.run_dir, cfg.model.kind)
        has_val = task.val is not None and len(task.val) >= 2 and not self.shared_layout
        if has_val and (cfg.train.select_best or cfg.model.ridge_residual) and self.dist.is_main and not has_checkpoint:
            first = task.validate(model)
            self._log(self.run_dir / "metrics.jsonl", {"epoch": 0, "step": 0, **{f"val_{k}": v for k, v in first.items()}})
            best.offer(0, first, model if cfg.train.select_best else None)
            if self.dist.is_main:
                log.info("epoch 0 (before training" + (", = the ridge map" if cfg.model.ridge_residual else "") + "): "
                      + ", ".join(f"{k} {v:.3f}" for k, v in first.items()))
        sharded = self.dist.enabled and cfg.train.parallel == "fsdp"
        resume_state = None
        if sharded and has_checkpoint:  # full weights go in before the parameters are sharded
            resume_state = load_checkpoint(self.run_dir, model, map_location=self.device)
        ddp_model: nn.Module = model
        if sharded:
            shard_model(model, self.dist, self.device)
        elif self.dist.enabled:
            # A rank's slice of a several-subject batch may hold no sample of some subject: its layer
            # then gets no gradient there, which DDP must be told about.
            ddp_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.dist.local_rank] if self.device.startswith("cuda") else None,
                find_unused_parameters=self.shared_layout and len(self.stores) > 1)
        decay_all = ("subject_layers.",) if cfg.model.kind == "mindeye2" else ()
        optimizer = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay, cfg.train.no_decay, decay_all),
                                      lr=cfg.train.max_lr,
                                      **adamw_implementation(self.device, sharded))
        steps_per_epoch = task.steps_per_epoch()
        total_steps = cfg.train.epochs * steps_per_epoch
        pct_start = cfg.train.pct_start if cfg.train.pct_start is not None else min(0.5, 2 / cfg.train.epochs)
        scheduler = one_cycle(optimizer, cfg.train.max_lr, total_steps, pct_start, cfg.train.final_div_factor)
        start_epoch, step = 0, 0
        if has_checkpoint:
            state = resume_state or load_checkpoint(self.run_dir, model, map_location=self.device)
            fsdp_written = any(isinstance(k, str) for k in state["optimizer"]["state"])  # keyed by name
            if fsdp_written != sharded:
                raise MindEyeError(f"{self.run_dir} was checkpointed with train.parallel="
                                   f"{'fsdp' if fsdp_written else 'ddp'} under torchrun; resume it with that setting")
            with restoring_state(self.run_dir, scheduler, state["scheduler"]):  # checked: one clear error
                if sharded:
                    load_full_optimizer_state(model, optimizer, state["optimizer"])
                else:
                    optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                torch.set_rng_state(state["rng_cpu"])
                if self.device.startswith("cuda") and "rng_cuda" in state:
                    torch.cuda.set_rng_state(state["rng_cuda"])
            start_epoch, step = int(state["epoch"]), int(state["step"])
            if self.dist.is_main:
                self._drop_records_after(self.run_dir / "metrics.jsonl", step)
            if self.dist.is_main:
                log.info(f"resuming {self.run_dir} after epoch {start_epoch} (step {step})")
        autocast, precision = autocast_context(cfg.train.precision, self.device)
        scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        log_path = self.run_dir / "metrics.jsonl"
        last_eval: dict[str, Any] = {}
        guard = DivergenceGuard(self.device, self.dist)
        if has_checkpoint and cfg.train.select_best:
            best.resume(log_path)
        last_done = start_epoch
        for epoch in range(start_epoch, cfg.train.epochs):
            ddp_model.train()
            t0, seen, epoch_loss = time.perf_counter(), 0, None
            running: list[torch.Tensor] = []
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                       disable=not self.progress, leave=False, unit="step")
            # Fine-tuning schedule: the first train.finetune_input_epochs epochs update only the new
            # subjects' input layers (the shared weights get no gradient, so AdamW leaves them alone).
            frozen = (self.pretrained is not None and epoch < cfg.train.finetune_input_epochs)
            frozen_params = [p for _, p in model.shared_parameters()] if frozen else []
            for batch in task.batches(epoch):
                loss, parts = train_step(task, ddp_model, model, batch, epoch, optimizer, scheduler=scheduler,
                                         scaler=scaler, autocast=autocast, frozen=frozen_params, guard=guard,
                                         step=step + 1)
                step += 1
                seen += cfg.train.batch_size
                running.append(loss)
                bar.update(1)
                if step % cfg.train.log_every == 0 or step == total_steps:
                    # The only host sync in the loop: once every log_every steps.
                    mean_loss = torch.stack(running).float().mean().item()
                    running.clear()
                    epoch_loss = mean_loss
                    bad_step = guard.diverged_at()
                    if bad_step is not None or not math.isfinite(mean_loss):
                        self._stop_diverged(bad_step or step, epoch)
                    rate = seen / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                                    samples_s=f"{rate:.0f}")
                    if self.dist.is_main:
                        self._log(log_path, {"step": step, "epoch": epoch + 1, "loss": mean_loss,
                                             "lr": scheduler.get_last_lr()[0], "samples_per_s": rate,
                                             **{k: float(v) for k, v in parts.items()}})
                if cfg.train.max_steps is not None and step >= cfg.train.max_steps:
                    break
            bar.close()
            bad_step = guard.diverged_at()  # before anything of this epoch is validated or saved
            if bad_step is not None:
                self._stop_diverged(bad_step, epoch)
            done = epoch + 1
            stop = cfg.train.max_steps is not None and step >= cfg.train.max_steps
            # A sharded model's forward is a collective: every process validates, the main one logs.
            validated = False
            if (self.dist.is_main or sharded) and (done % cfg.train.val_every == 0 or done == cfg.train.epochs or stop):
                last_eval, validated = task.validate(model), True
                if last_eval and self.dist.is_main:
                    self._log(log_path, {"epoch": done, "step": step, **{f"val_{k}": v for k, v in last_eval.items()}})
            if self.dist.is_main:  # every epoch, bars or not: a job without a terminal is never silent for long
                if epoch_loss is None and running:  # fewer steps than train.log_every: one sync, once
                    epoch_loss = torch.stack(running).float().mean().item()
                shown = [f"loss {epoch_loss:.4f}"] if epoch_loss is not None else []
                shown += [f"{k} {v:.3f}" for k, v in last_eval.items()] if validated else []
                log.info(f"epoch {done}/{cfg.train.epochs}: " + ", ".join(
                    [*shown, f"{time.perf_counter() - t0:.1f} s"]))
            epoch_complete = step == done * steps_per_epoch
            saved = full_model_state(model) if sharded else model  # gathering is a collective
            last_done = done
            if cfg.train.select_best and self.dist.is_main and validated and last_eval and epoch_complete:
                best.offer(done, last_eval, saved)  # a part epoch (train.max_steps) is no candidate
            opt_state = full_optimizer_state(model, optimizer) if sharded and epoch_complete else None
            if self.dist.is_main and epoch_complete:
                state = {"epoch": done, "step": step, "optimizer": opt_state or optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "rng_cpu": torch.get_rng_state()}
                if self.device.startswith("cuda"):
                    state["rng_cuda"] = torch.cuda.get_rng_state()
                save_checkpoint(self.run_dir, saved, state)
            elif self.dist.is_main:
                # Stopped mid-epoch (train.max_steps): keep the weights for inspection, but the
                # resumable checkpoint stays at the last whole epoch so --resume replays exactly.
                save_weights(saved, self.run_dir / "model.safetensors")
            barrier(self.dist)
            if stop:
                break
        result = {"epochs": cfg.train.epochs, "steps": step, **last_eval}
        if self.dist.is_main and has_val:
            result.update(self._small_data_end(task, model, best, last_done, last_eval))
        return result

    def _small_data_end(self, task: Any, model: nn.Module, best: BestEpoch, last_done: int,
                        last_eval: dict[str, float]) -> dict[str, Any]:
        """After training: install the best epoch (train.select_best) and compare with ridge on validation."""
        cfg, out = self.cfg, {}
        final_scores = last_eval
        if cfg.train.select_best and best.epoch is not None:
            if best.install(last_done):
                final_scores = best.scores
                if self.dist.is_main:
                    log.info(f"selected epoch {best.epoch} (best {SCORE_NAMES[cfg.model.kind]}: {best.score:.3f}; "
                          f"the last epoch {last_done} scored {val_score(cfg.model.kind, last_eval) or float('nan'):.3f})")
            out["selected_epoch"] = best.epoch
            out.update(final_scores)
        # The ridge reference on the same validation images: a ridge-first run's epoch 0, else a fitted one.
        ridge_score, alpha = None, None
        info = json.loads((self.run_dir / "run.json").read_text())
        if cfg.model.ridge_residual:
            first = self._first_validation()
            ridge_score, alpha = val_score(cfg.model.kind, first), info.get("ridge_alpha")
        else:
            ref = ridge_reference(cfg.model.kind, self.store, task.images, task.ridge_targets, cfg.model.ridge.alphas,
                                  cfg.seed, task.validate)
            if ref is not None:
                ridge_score, alpha = ref["score"], ref["alpha"]
        check = ridge_check(cfg.model.kind, val_score(cfg.model.kind, final_scores), ridge_score, len(task.val), alpha)
        fields: dict[str, Any] = {}
        if "selected_epoch" in out:
            fields["selected_epoch"] = out["selected_epoch"]
        if check is not None:
            fields["ridge_check"] = check
            out["ridge_check"] = check
        if fields:
            update_run_info(self.run_dir, **fields)
        line = ridge_check_line(check, f"this {cfg.model.kind} model")
        if line:
            log.info(line)
        return out

    def _first_validation(self) -> dict[str, float]:
        """The epoch-0 validation record of metrics.jsonl ({} if none)."""
        path = self.run_dir / "metrics.jsonl"
        for line in path.read_text().splitlines() if path.exists() else []:
            rec = json.loads(line) if line.strip() else {}
            if rec.get("epoch") == 0 and any(k.startswith("val_") for k in rec):
                return {k[4:]: v for k, v in rec.items() if k.startswith("val_")}
        return {}

    # -- helpers -----------------------------------------------------------------------------------
    def _stop_diverged(self, step: int, epoch: int) -> None:
        """Record the divergence in run.json and stop; nothing of the diverged epoch is saved."""
        if self.dist.is_main:
            mark_diverged(self.run_dir, step=step, epoch=epoch + 1)
        kept = (f"the last checkpoint (epoch {epoch}) is kept" if epoch > 0
                else "no weights were saved")
        raise MindEyeError(f"training diverged at step {step} (non-finite loss); {kept} and {self.run_dir}/run.json "
                           "records the divergence; lower train.max_lr or check the data, then train again")

    def _run_info(self, model: nn.Module, **extra: Any) -> dict[str, Any]:
        """The run.json facts every kind of run records (plus ``extra``)."""
        info = {"kind": self.cfg.model.kind, "store": str(self.store_path.resolve()),
                "n_voxels": self.store.n_voxels, "subject": self.store.meta.get("subject"),
                "source": self.store.meta.get("source"), "parameters": parameter_counts(model),
                # checked when the run is evaluated on a store given with --data (same subject's data?)
                "store_voxels_sha256": (self.store.meta.get("checksums") or {}).get("voxels.npy"), **extra}
        if self.shared_layout:
            info["subjects"] = [{"id": sid, "store": str(p.resolve()), "n_voxels": st.n_voxels,
                                 "identity": subject_identity(st), "subject": st.meta.get("subject"),
                                 "source": st.meta.get("source"),
                                 "store_voxels_sha256": (st.meta.get("checksums") or {}).get("voxels.npy")}
                                for sid, p, st in zip(self.subject_ids, self.store_paths, self.stores)]
        return info

    @staticmethod
    def _drop_records_after(path: Path, step: int) -> None:
        """On resume, forget log records written after the checkpoint (that work is redone)."""
        if not path.exists():
            return
        kept = [line for line in path.read_text(errors="replace").splitlines()
                if (record := _record(line)) is not None and record.get("step", 0) <= step]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)

    @staticmethod
    def _log(path: Path, record: dict[str, Any]) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _fit_ridge(self) -> dict[str, Any]:
        """Closed-form ridge to the flattened targets: the 'previous methods' baseline."""
        cfg = self.cfg
        low = cfg.model.ridge.target == "lowlevel"  # voxels -> VAE latent (blurry images), not -> CLIP
        encoder, weights = ((cfg.targets.lowlevel_encoder, cfg.targets.lowlevel_weights) if low
                            else (cfg.targets.encoder, cfg.targets.weights))
        targets = Targets(self.store_path, encoder, weights, options=target_options(cfg, encoder),
                          key="targets.lowlevel_weights" if low else "targets.weights")
        train_imgs, val_imgs = train_val_images(self.store, cfg)
        train = load_trials(self.store, train_imgs)
        model = build_model(cfg.model, self.store.n_voxels)
        x = train.voxels.float()
        y = targets.get(train.image_index).flatten(1)
        if y.shape[1] != model.n_outputs:
            what = "model.lowlevel latent size" if low else "model.backbone.tokens x dim"
            raise MindEyeError(f"the {encoder} targets have {y.shape[1]} values per image but the config's {what} "
                               f"gives {model.n_outputs}; make them match")
        model.fit(x, y, alpha=cfg.model.ridge.alphas, generator=torch.Generator().manual_seed(cfg.seed),
                  groups=train.image_index)
        write_run_files(self.run_dir, cfg, self._run_info(model, alpha=float(model.alpha)))
        save_weights(model, self.run_dir / "model.safetensors")
        result: dict[str, Any] = {"alpha": float(model.alpha)}
        if len(val_imgs) >= 2:  # retrieval among one candidate would always score 1.0
            val = load_eval_split(self.store, val_imgs)
            preds = model.predict(val.voxels.float())
            if low:
                scale = SD_LATENT_SCALE if encoder == "sd-vae" else 1.0
                result.update(latent_scores(preds, targets.get(val.image_index), scale))
            else:
                result.update(quick_retrieval(preds, targets.get(val.image_index), self.cfg.eval.pool))
        self._log(self.run_dir / "metrics.jsonl", {"epoch": 1, **{f"val_{k}": v for k, v in result.items()}})
        return result


def train_step(task: Any, ddp_model: nn.Module, model: nn.Module, batch: dict[str, Any], epoch: int,
               optimizer: Any, scheduler: Any = None, scaler: torch.amp.GradScaler | None = None,
               autocast: Any = None, frozen: list[torch.Tensor] | None = None, guard: Any = None,
               step: int = 0) -> tuple[torch.Tensor, dict]:
    """One optimisation step (timm-style): the task's loss, backward, optimizer and scheduler step.

    ``optimizer`` needs ``zero_grad(set_to_none=...)`` and ``step()``; ``frozen`` parameters have their
    gradients dropped before the step; with a :class:`~mindeye.training.divergence.DivergenceGuard`
    a non-finite step (number ``step``) is recorded and its update skipped. Returns the detached loss
    and its parts (no host sync).
    """
    with autocast if autocast is not None else nullcontext():
        loss, parts = task.loss(ddp_model, model, batch, epoch)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
    else:
        loss.backward()
    for p in frozen or ():
        p.grad = None
    if guard is not None:
        guard.optimizer_step(optimizer, guard.observe(loss, step), scaler)
    elif scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss.detach(), parts


def subject_identity(store: SubjectStore) -> str:
    """What makes two stores the same subject for fine-tuning: id, voxel count, source and (simulated
    cohorts) the cohort seed and scale. Few-session stores of one subject share it."""
    cohort = store.meta.get("cohort") or {}
    parts = [store.subject_id, str(store.n_voxels), str(store.meta.get("source")),
             str(cohort.get("seed", "")), str(cohort.get("scale", ""))]
    return "/".join(parts)


def run_subjects(info: dict[str, Any]) -> list[dict[str, Any]]:
    """run.json's subjects: the ``subjects`` list of a shared-subject run, else its one store."""
    if "subjects" in info:
        return list(info["subjects"])
    return []


def init_from_pretrained(model: nn.Module, weights: Path, pretrained_subjects: dict[str, Any]) -> list[str]:
    """Load a pretrained run's shared weights (and the layers of subjects that continue) into ``model``.

    Every weight but the subject layers must load unchanged; subjects not in the pretrained run keep
    their fresh initialisation. A v1-layout (single-subject) run's ``backbone.stem.0`` is its subject's
    input layer. Returns the ids of the new subjects.
    """
    from safetensors.torch import load_file

    state = load_file(str(weights), device="cpu")
    if "backbone.stem.0.weight" in state:  # v1 layout: no subject layers, nothing to continue
        state = {k: v for k, v in state.items() if not k.startswith("backbone.stem.0.")}
    own = model.state_dict()
    shared = {k: v for k, v in state.items() if not k.startswith("subject_layers.")}
    missing = [k for k in own if not k.startswith("subject_layers.") and k not in shared]
    unexpected = [k for k in shared if k not in own]
    wrong = [k for k in shared if k in own and own[k].shape != shared[k].shape]
    if missing or unexpected or wrong:
        raise MindEyeError(f"{weights} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}, "
                           f"other shapes {wrong[:3]}")
    load = dict(shared)
    new = []
    for sid in model.subjects:
        keys = [k for k in state if k.startswith(f"subject_layers.{sid}.")]
        if sid in pretrained_subjects and keys:
            load.update({k: state[k] for k in keys})
        else:
            new.append(sid)
    model.load_state_dict(load, strict=False)
    return new


def set_activation_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Lean mode: every module with ``checkpoint_blocks`` (backbone MLP blocks, prior layers) recomputes
    its blocks in backward instead of storing their activations (dropout RNG replayed: same gradients)."""
    for m in model.modules():
        if hasattr(m, "checkpoint_blocks"):
            m.checkpoint_blocks = enabled


def compile_model(model: nn.Module) -> None:
    """torch.compile, in place, the modules a training step runs (state-dict names unchanged).

    The high-level model's forward covers backbone and projector only; the prior is called through
    ``prior.loss``, so its network is compiled on its own.
    """
    if getattr(model, "prior", None) is not None:
        model.backbone.compile()
        if model.projector is not None:
            model.projector.compile()
        model.prior.net.compile()
    else:
        model.compile()


def quick_retrieval(preds: torch.Tensor, targets: torch.Tensor, pool: int, draws: int = 5, seed: int = 0) -> dict[str, float]:
    """Validation-time top-1 retrieval among min(pool, N) candidates, both directions."""
    from mindeye.metrics.retrieval import DIRECTIONS, retrieval_top1_among

    res = retrieval_top1_among(preds.flatten(1).float(), targets.flatten(1).float(),
                               pool=min(pool, len(preds)), draws=draws, seed=seed)
    return {d: float(res[d]) for d in DIRECTIONS}


# ----------------------------------------------------------------------------------------------------
# Tasks: what a batch is, what the loss is, how to validate
# ----------------------------------------------------------------------------------------------------
class HighLevelLoss:
    """The high-level loss of one step (contrastive phase schedule, prior, optional backbone MSE); needs
    only the config and the process layout, so benchmarks time it on random batches too.

    A batch holds ``voxels`` (one (B, V) tensor, or a list of per-subject (b_s, V_s) tensors that make up
    the global batch in order, with their ids in ``subjects``), ``targets`` (B, T, D) in the same order,
    ``generator`` and ``device``.
    """

    def __init__(self, cfg: Config, dist: DistInfo) -> None:
        self.cfg, self.dist = cfg, dist
        self.mixco_epochs = int(math.floor(cfg.train.mixco_fraction * cfg.train.epochs))

    def _phase(self, epoch: int) -> str:
        loss = self.cfg.train.loss
        if loss == "bimixco+softclip":
            return "bimixco" if epoch < self.mixco_epochs else "softclip"
        return loss

    def soft_temperature(self, epoch: int) -> float:
        cfg = self.cfg.train
        n = max(cfg.epochs - self.mixco_epochs, 1)
        frac = (epoch - self.mixco_epochs) / max(n - 1, 1) if cfg.loss == "bimixco+softclip" else epoch / max(cfg.epochs - 1, 1)
        return losses.soft_clip_temperature(min(max(frac, 0.0), 1.0), cfg.soft_temperature_start, cfg.soft_temperature_end)

    def loss(self, ddp_model: nn.Module, model: nn.Module, batch: dict[str, Any], epoch: int):
        cfg, info = self.cfg, self.dist
        phase = self._phase(epoch)
        chunks, tgt, gen = batch["voxels"], batch["targets"], batch["generator"]
        subjects = batch.get("subjects")
        if isinstance(chunks, torch.Tensor):
            chunks = [chunks]
        perm = lambdas = None
        if phase in ("bimixco", "mixco+infonce"):
            # Mixing is drawn over the global batch so 1 and N processes see identical inputs; with
            # several subjects, within each subject's part (their voxels cannot be mixed across).
            mixed, perms, lams, offset = [], [], [], 0
            for vox in chunks:
                v, p, lam = losses.mixco_mix(vox, beta=cfg.train.mixco_beta, prob=cfg.train.mixco_prob, generator=gen)
                mixed.append(v)
                # train.bimixco_authors_permutation: their per-subject permutations concatenated without
                # offsets, so every subject after the first gets the first subject's rows as soft labels.
                perms.append(p if cfg.train.bimixco_authors_permutation else p + offset)
                lams.append(lam)
                offset += len(vox)
            chunks, perm, lambdas = mixed, torch.cat(perms), torch.cat(lams)
        self_label = cfg.train.mixco_self_label
        n_global = sum(len(v) for v in chunks)
        sl = local_slice(n_global, info)
        dev = batch["device"]
        tgt = tgt.to(dev, non_blocking=True)  # one host->device copy of the (global) target batch
        if perm is not None:
            perm, lambdas = perm.to(dev), lambdas.to(dev)
        out = ddp_model(self._local_input(chunks, subjects, sl, dev))
        preds = gather_with_grad(_normalize(MindEyeModel.contrastive_output(out)), info)
        targets_n = _normalize(tgt)
        parts: dict[str, torch.Tensor] = {}
        if phase == "bimixco":
            contrastive = losses.bimixco_loss(preds, targets_n, perm, lambdas, cfg.train.mixco_temperature,
                                              self_label=self_label)
        elif phase == "mixco+infonce":
            contrastive = losses.mixco_nce(preds, targets_n, perm, lambdas, cfg.train.mixco_temperature,
                                           self_label=self_label)
        elif phase == "softclip":
            contrastive = losses.soft_clip_loss(preds, targets_n, self.soft_temperature(epoch))
        elif phase == "clip":
            contrastive = losses.clip_loss(preds, targets_n, cfg.train.mixco_temperature)
        else:  # infonce
            contrastive = losses.info_nce(preds, targets_n, cfg.train.mixco_temperature)
        total = contrastive
        parts["contrastive"] = contrastive.detach()
        # Under MixCo the authors train the prior on the UNmixed targets (Train_MindEye.py: diffusion_prior(...,
        # image_embed=clip_target)); train.prior_targets=mixed mixes them like the voxels (the paper's text).
        mixed_prior = perm is not None and cfg.train.prior_targets == "mixed"
        prior_target = (losses.mix_like(tgt, perm, lambdas) if mixed_prior else tgt)[sl]
        if model.prior is not None:
            prior_loss, _ = model.prior.loss(prior_target.view_as(out["backbone"]), out["backbone"])
            total = total + cfg.train.prior_loss_weight * prior_loss
            parts["prior"] = prior_loss.detach()
        if cfg.train.backbone_mse_weight > 0:
            mse = F.mse_loss(out["backbone"].float(), prior_target.view_as(out["backbone"]).float())
            total = total + cfg.train.backbone_mse_weight * mse
            parts["backbone_mse"] = mse.detach()
        if out.get("blurry") is not None and "latents" in batch:
            blurry, cont = self._blurry_loss(out, batch, perm, lambdas, sl, dev)
            total = total + cfg.train.blurry_loss_weight * (blurry + cfg.train.blurry_contrastive_weight * cont)
            parts["blurry"], parts["blurry_contrastive"] = blurry.detach(), cont.detach()
        return total, parts

    def _blurry_loss(self, out: dict[str, Any], batch: dict[str, Any], perm: torch.Tensor | None,
                     lambdas: torch.Tensor | None, sl: slice, dev: str) -> tuple[torch.Tensor, torch.Tensor]:
        """MindEye2's blurry head: L1 to the (SD-scaled) VAE latent -- mixed like the voxels under BiMixCo,
        as their image_enc -- and the per-token soft contrastive loss against the teacher's tokens."""
        cfg, info = self.cfg, self.dist
        target = batch["latents"].to(dev)
        if perm is not None:
            target = losses.mix_like(target, perm, lambdas)
        pred = out["blurry"]
        l1 = (pred.float() - target[sl].view_as(pred)).abs().mean()
        tokens = out["blurry_tokens"]
        preds = gather_with_grad(F.normalize(tokens.float(), dim=-1).contiguous(), info)
        teacher = batch["teacher"].to(dev).view(len(batch["teacher"]), -1, tokens.shape[-1])
        if teacher.shape[1] != tokens.shape[1]:
            raise MindEyeError(f"the blurry head makes {tokens.shape[1]} tokens per image but the "
                               f"{cfg.targets.teacher_encoder} teacher has {teacher.shape[1]}; set model.blurry.side "
                               "so that side x side equals the teacher's token count")
        aug = batch.get("teacher_aug")
        aug = teacher if aug is None else aug.to(dev).view_as(teacher)
        return l1, losses.token_soft_cont_loss(preds, teacher, aug, cfg.train.blurry_temperature)

    @staticmethod
    def _local_input(chunks: list[torch.Tensor], subjects: list[str] | None, sl: slice, dev: str):
        """This process's rows of the global batch: a tensor (v1 layout) or (subject, rows) segments
        (a slice may cross from one subject's part into the next)."""
        if subjects is None:
            return chunks[0][sl].to(dev, non_blocking=True)
        segments, offset = [], 0
        for sid, vox in zip(subjects, chunks):
            lo, hi = max(sl.start - offset, 0), min(sl.stop - offset, len(vox))
            if hi > lo:
                segments.append((sid, vox[lo:hi].to(dev, non_blocking=True)))
            offset += len(vox)
        return segments


class HighLevelTask(HighLevelLoss):
    """Backbone -> projector (contrastive) + diffusion prior (MSE); which (image, repetition) pairs each
    step uses is the :class:`~mindeye.training.data.EpochSampler`'s choice (``train.epoch_unit``).

    Several subjects (MindEye2): each step takes ``batch_size / n_subjects`` samples from every subject,
    each from its own sampler, concatenated in subject order; an epoch ends when the subject with the
    fewest steps has had its epoch.
    """

    def __init__(self, trainer: Trainer) -> None:
        super().__init__(trainer.cfg, trainer.dist)
        self.t = trainer
        cfg = trainer.cfg
        n_sub = len(trainer.stores)
        if cfg.train.batch_size % n_sub:
            raise MindEyeError(f"train.batch_size={cfg.train.batch_size} does not split evenly over the "
                               f"{n_sub} subjects; choose a multiple of {n_sub}")
        per_subject = cfg.train.batch_size // n_sub
        self.subjects = trainer.subject_ids if trainer.shared_layout else None
        self.parts = []
        for path, store in zip(trainer.store_paths, trainer.stores):
            targets = Targets(path, cfg.targets.encoder, cfg.targets.weights,
                              views=cfg.targets.augmented_views, options=target_options(cfg, cfg.targets.encoder),
                              key="targets.weights")
            expected = (cfg.model.backbone.tokens, cfg.model.backbone.dim)
            if targets.shape != expected and not (cfg.model.backbone.tokens == 1 and targets.shape == (cfg.model.backbone.dim,)):
                raise MindEyeError(
                    f"the {cfg.targets.encoder} targets have shape {targets.shape} but the model outputs "
                    f"{expected}; set model.backbone.tokens/dim to match the encoder"
                )
            train_imgs, val_imgs = training_images(store, cfg)
            # (M, R, V) repetitions of each training image; the sampler picks (image, repetition) per step.
            vox, mask, images = load_repetitions(store, train_imgs)
            try:
                sampler = EpochSampler(mask.sum(1).numpy(), per_subject, cfg.train.epoch_unit, cfg.train.repetition)
            except MindEyeError as exc:
                raise MindEyeError(f"{store.path}: {exc}" if n_sub > 1 else str(exc)) from None
            val = load_eval_split(store, val_imgs) if len(val_imgs) else None
            tables = [TargetTable("targets", targets.array, targets.views)]
            if cfg.model.kind == "mindeye2" and cfg.model.blurry.enabled:
                tables += self._blurry_tables(path, cfg)
            loader = BatchLoader(vox, tables, images, trainer.device, mode=cfg.train.data_path)
            self.parts.append(SimpleNamespace(targets=targets, vox=vox, images=images, sampler=sampler, val=val,
                                              id=store.subject_id, loader=loader))
        # targets.online: the authors' targets, CLIP of every batch's images augmented with their kornia
        # pipeline (Train_MindEye.py l.201-211, 591-601); the cache still serves validation and the shape.
        self.online = None
        if cfg.targets.online:
            from mindeye.encoders.online import OnlineTargets
            from mindeye.encoders.registry import get_encoder

            encoder = get_encoder(cfg.targets.encoder, weights=cfg.targets.weights, device=trainer.device,
                                  **target_options(cfg, cfg.targets.encoder))
            self.online = [OnlineTargets(encoder, store.images) for store in trainer.stores]
        first = self.parts[0]  # single-subject attribute names (benchmarks, tests)
        self.targets, self.vox, self.images, self.sampler, self.val, self.loader = (
            first.targets, first.vox, first.images, first.sampler, first.val, first.loader)
        self.ridge_targets = self.targets  # what a ridge map / the ridge reference predicts

    @staticmethod
    def _blurry_tables(path: Path, cfg: Config) -> list[TargetTable]:
        """MindEye2's blurry-head targets: the VAE latent and the contrastive teacher's tokens (clean)."""
        latents = Targets(path, cfg.targets.lowlevel_encoder, cfg.targets.lowlevel_weights,
                          options=target_options(cfg, cfg.targets.lowlevel_encoder))
        from mindeye.models.factory import blurry_latent_shape

        if tuple(latents.shape) != blurry_latent_shape(cfg.model):
            raise MindEyeError(f"the {cfg.targets.lowlevel_encoder} latents have shape {tuple(latents.shape)} but the "
                               f"blurry head predicts {blurry_latent_shape(cfg.model)}; set model.blurry.side / "
                               "upsampler_channels and model.lowlevel.latent_channels to match")
        teacher = Targets(path, cfg.targets.teacher_encoder, cfg.targets.teacher_weights,
                          options=target_options(cfg, cfg.targets.teacher_encoder))
        return [TargetTable("latents", latents.array), TargetTable("teacher", teacher.array)]

    def steps_per_epoch(self) -> int:
        if self.t.cfg.train.epoch_trials is not None:  # MindEye2: 750 x sessions samples per epoch
            return max(self.t.cfg.train.epoch_trials // self.t.cfg.train.batch_size, 1)
        return min(p.sampler.steps_per_epoch() for p in self.parts)

    @staticmethod
    def _sampler_stream(sampler: EpochSampler, gen: torch.Generator):
        """The sampler's epochs back to back (train.epoch_trials may ask for more steps than one holds)."""
        while True:
            yield from sampler.epoch(gen)

    def batches(self, epoch: int):
        cfg, dev = self.t.cfg, self.t.device
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        steps = self.steps_per_epoch()
        # The whole epoch's data draws are made up front (per subject: sampler order, then the view per
        # step), so every data-path mode sees the same stream; one subject = the single-subject stream.
        streams, all_requests = [], []
        for part in self.parts:
            views = part.targets.views
            requests = []
            source = part.sampler.epoch(gen) if cfg.train.epoch_trials is None else self._sampler_stream(part.sampler, gen)
            for pos, slots in itertools.islice(source, steps):
                k = torch.randint(0, views.shape[1] + 1, (len(pos),), generator=gen).numpy() if views is not None else None
                requests.append(Request(pos, part.images[pos], repetition=slots, views=k))
            streams.append(part.loader.batches(requests))
            all_requests.append(requests)
        for step, got in enumerate(zip(*streams)):
            # global batch (sliced per rank in loss()), already float32 on the device
            chunks = [b["voxels"] for b in got]
            targets = [b["targets"] for b in got]
            batch = {}
            if self.online is not None:  # every step's seed from the epoch's stream, after its data draws
                seed = int(torch.randint(0, 2**62, (1,), generator=gen))
                targets = [online(reqs[step].image_index, seed + s).view_as(t)
                           for s, (online, reqs, t) in enumerate(zip(self.online, all_requests, targets))]
                batch["augment_seed"] = seed
                batch["image_index"] = np.concatenate([reqs[step].image_index for reqs in all_requests])
            for name in ("latents", "teacher"):
                if name in got[0]:
                    batch[name] = torch.cat([b[name] for b in got]) if len(got) > 1 else got[0][name]
            yield {
                "voxels": chunks if self.subjects is not None else chunks[0],
                "subjects": self.subjects,
                "targets": torch.cat(targets) if len(got) > 1 else targets[0],
                "generator": gen,
                "device": dev,
                **batch,
            }

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        scores: dict[str, dict[str, float]] = {}
        for part in self.parts:
            if part.val is None or len(part.val) < 2:
                continue
            if self.subjects is not None:
                model.select_subject(part.id)
            preds = embed_voxels(model, part.val.voxels, self.t.device)
            scores[part.id] = quick_retrieval(preds, part.targets.get(part.val.image_index), self.t.cfg.eval.pool)
        if self.subjects is not None:
            model.select_subject(None)
        if len(scores) <= 1:
            return next(iter(scores.values()), {})
        # Several subjects: the mean over subjects, plus each subject's own scores.
        out = {k: float(np.mean([s[k] for s in scores.values()])) for k in next(iter(scores.values()))}
        out.update({f"{sid}_{k}": v for sid, s in scores.items() for k, v in s.items()})
        return out


def repetition_weights(mask: torch.Tensor, gen: torch.Generator, mode: str = "batch") -> torch.Tensor:
    """(B, R) weights: random weighted average of each image's repetitions (p .5), their mean (p .3) or one (p .2).

    ``mode="batch"`` (``train.lowlevel_repetition_mix``; the authors' ``utils.voxel_select``): ONE of the
    three choices for the whole batch; ``"sample"``: one choice per sample. Weights and picks are per sample.
    """
    b, r = mask.shape
    u = torch.rand(1, generator=gen).expand(b) if mode == "batch" else torch.rand(b, generator=gen)
    w_rand = torch.rand(b, r, generator=gen) * mask
    w_mean = mask.float()
    pick = torch.multinomial(mask.float() + 1e-12, 1, generator=gen).squeeze(1)
    w_one = F.one_hot(pick, r).float()
    w = torch.where((u < 0.5)[:, None], w_rand, torch.where((u < 0.8)[:, None], w_mean, w_one))
    return w / w.sum(1, keepdim=True).clamp_min(1e-8)


def mix_repetitions(vox: torch.Tensor, mask: torch.Tensor, gen: torch.Generator, mode: str = "batch") -> torch.Tensor:
    """(B, V): each image's repetitions (B, R, V) averaged with :func:`repetition_weights`."""
    return torch.einsum("br,brv->bv", repetition_weights(mask, gen, mode), vox.float())


class LowLevelLoss:
    """The low-level loss of one step; needs only the config and the process layout (benchmarks)."""

    def __init__(self, cfg: Config, dist: DistInfo) -> None:
        self.cfg, self.dist = cfg, dist
        self.use_teacher = cfg.train.lowlevel_contrastive_weight > 0
        # Latents are stored scaled by SD_LATENT_SCALE (SD convention); the loss works on unscaled latents.
        self.latent_scale = SD_LATENT_SCALE if cfg.targets.lowlevel_encoder == "sd-vae" else 1.0

    def loss(self, ddp_model: nn.Module, model: nn.Module, batch: dict[str, Any], epoch: int):
        cfg, info, dev = self.cfg, self.dist, batch["device"]
        sl = local_slice(len(batch["voxels"]), info)
        latent_pred, tokens = ddp_model(batch["voxels"][sl].to(dev))
        target = batch["latents"][sl].to(dev).view_as(latent_pred)
        diff = (latent_pred.float() - target) / self.latent_scale
        recon = diff.abs().mean() if cfg.train.lowlevel_loss == "l1" else diff.pow(2).mean()
        total, parts = recon, {"recon": recon.detach()}
        if self.use_teacher:
            # Per token: (B*T) x (B*T) logits of per-token normalised tokens (authors; docs/encoders.md).
            preds = gather_with_grad(F.normalize(tokens.float(), dim=-1).contiguous(), info)
            teacher = batch["teacher"].to(dev).view(len(batch["teacher"]), -1, tokens.shape[-1])
            if cfg.train.lowlevel_contrastive_views == "two":
                # Two views (train_autoencoder.py, utils.soft_cont_loss): soft labels clean x augmented
                # teacher, logits student x augmented teacher; without cached views the two coincide.
                aug = batch.get("teacher_aug")
                aug = teacher if aug is None else aug.to(dev).view_as(teacher)
                contrastive = losses.token_soft_cont_loss(preds, teacher, aug, cfg.train.lowlevel_temperature)
            else:
                contrastive = losses.token_soft_clip_loss(preds, teacher, cfg.train.lowlevel_temperature)
            total = total + cfg.train.lowlevel_contrastive_weight * contrastive
            parts["contrastive"] = contrastive.detach()
        return total, parts



class LowLevelTask(LowLevelLoss):
    """Voxels -> SD-VAE latent (L1 / MSE) + 0.1 x SoftCLIP against the teacher's tokens."""

    def __init__(self, trainer: Trainer) -> None:
        super().__init__(trainer.cfg, trainer.dist)
        self.t = trainer
        cfg = trainer.cfg
        self.latents = Targets(trainer.store_path, cfg.targets.lowlevel_encoder, cfg.targets.lowlevel_weights,
                               options=target_options(cfg, cfg.targets.lowlevel_encoder), key="targets.lowlevel_weights")
        self.teacher = None
        if cfg.train.lowlevel_contrastive_weight > 0:
            self.teacher = Targets(trainer.store_path, cfg.targets.teacher_encoder, cfg.targets.teacher_weights,
                                   views=cfg.targets.augmented_views, key="targets.teacher_weights",
                                   options=target_options(cfg, cfg.targets.teacher_encoder))
        train_imgs, val_imgs = training_images(trainer.store, cfg)
        self.vox, self.mask, self.images = load_repetitions(trainer.store, train_imgs)
        if len(self.images) < cfg.train.batch_size:
            raise MindEyeError(f"only {len(self.images)} training images for batch size {cfg.train.batch_size}; "
                               "lower train.batch_size")
        self.val = load_eval_split(trainer.store, val_imgs) if len(val_imgs) else None
        self.ridge_targets = self.latents  # what a ridge map / the ridge reference predicts
        tables = [TargetTable("latents", self.latents.array)]
        # two views: the clean teacher tokens plus an augmented view 1..K ("teacher_aug"); one view: a
        # view 0..K (0 = clean) for both roles.
        self.two_views = (self.teacher is not None and self.teacher.views is not None
                          and cfg.train.lowlevel_contrastive_views == "two")
        if self.two_views:
            tables += [TargetTable("teacher", self.teacher.array),
                       TargetTable("teacher_aug", self.teacher.array, self.teacher.views)]
        elif self.teacher is not None:
            tables.append(TargetTable("teacher", self.teacher.array, self.teacher.views))
        self.loader = BatchLoader(self.vox, tables, self.images, trainer.device, mode=cfg.train.data_path)

    def steps_per_epoch(self) -> int:
        return len(self.images) // self.t.cfg.train.batch_size

    def repetition_weights(self, mask: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return repetition_weights(mask, gen, self.t.cfg.train.lowlevel_repetition_mix)

    def batches(self, epoch: int):
        cfg = self.t.cfg
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        perm = torch.randperm(len(self.images), generator=gen)
        bs = cfg.train.batch_size
        views = self.teacher.views if self.teacher is not None else None
        requests = []  # every data draw up front, in today's order (weights, then teacher views, per step)
        for s in range(self.steps_per_epoch()):
            idx = perm[s * bs:(s + 1) * bs].numpy()
            w = self.repetition_weights(self.mask[idx], gen)
            # two views: the augmented teacher is always an augmented view (the authors' RandomResizedCrop
            # is applied with p = 1), 1..K; one view: 0..K, 0 = the clean image.
            low = 1 if self.two_views else 0
            k = torch.randint(low, views.shape[1] + 1, (bs,), generator=gen).numpy() if views is not None else None
            requests.append(Request(idx, self.images[idx], mix_weights=w, views=k))
        for b in self.loader.batches(requests):
            yield {**b, "device": self.t.device}

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        if self.val is None or len(self.val) < 2:
            return {}
        model.eval()
        preds = []
        for s in range(0, len(self.val), 64):
            out = model(self.val.voxels[s:s + 64].float().to(self.t.device))
            preds.append((out[0] if isinstance(out, tuple) else out).float().cpu())  # a ridge map: the latent only
        pred = torch.cat(preds)
        model.train()
        return latent_scores(pred, self.latents.get(self.val.image_index), self.latent_scale)


def latent_scores(pred: torch.Tensor, target: torch.Tensor, latent_scale: float) -> dict[str, float]:
    """Low-level validation: mean absolute error of the (unscaled) latents and their correlation."""
    target = target.reshape(pred.shape)
    return {"latent_l1": float(((pred - target).abs().mean() / latent_scale).item()),
            "latent_corr": float(np.corrcoef(pred.flatten().numpy(), target.flatten().numpy())[0, 1])}


def one_cycle(optimizer: torch.optim.Optimizer, max_lr: float, total_steps: int, pct_start: float,
              final_div_factor: float) -> torch.optim.lr_scheduler.LRScheduler:
    """The paper's OneCycle schedule. torch divides by the warm-up's length (pct_start * total_steps - 1 steps),
    so a run of a few steps (e.g. one epoch of two steps) gets at least one warm-up step; a one-step run has no
    schedule to follow and keeps max_lr."""
    if total_steps < 2:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if pct_start * total_steps <= 1:
        pct_start = min(0.9, 1.5 / total_steps)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start,
                                               final_div_factor=final_div_factor)
