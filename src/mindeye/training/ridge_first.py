"""Small datasets: the ridge-first layout, best-epoch selection and the "worse than ridge?" check (issue 23).

docs/small-data.md has the design and the measurements behind it. Three pieces the trainer calls:

* :func:`fit_ridge_map` fits the closed-form ridge map of a ridge-first model (``model.ridge_residual``)
  on the run's training trials before the first step. With the residual branches zeroed, the untrained
  model is exactly that ridge regression; training learns a residual over it.
* :class:`BestEpoch` keeps the weights of the epoch with the best validation score
  (``train.select_best``), epoch 0 (before any step) included, in ``RUN/best.safetensors``, and at the
  end puts them into ``RUN/model.safetensors`` (``RUN/checkpoint/`` keeps the last epoch for
  ``--resume``).
* :func:`ridge_reference` scores a ridge regression on the same validation images with the same metric,
  so the trainer can say plainly when the network is worse (``run.json`` ``ridge_check``). A ridge-first
  run's epoch 0 is that ridge; other runs fit one when it is cheap (:data:`RIDGE_CHECK_MAX_VALUES`).

The validation score a run is selected and compared on: the mean of the two retrieval directions'
top-1 (high level), the correlation of predicted and true latents (low level).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mindeye.data.splits import load_trials
from mindeye.data.store import SubjectStore
from mindeye.models.ridge import RidgeRegression
from mindeye.utils.files import write_text_atomic

# A reference ridge for the check is fitted only when its weight matrix (outputs x voxels) and its
# training rows stay this small (the demo: 1,088 x 2,000; NSD with CLIP tokens: 3.1e9, skipped).
RIDGE_CHECK_MAX_VALUES = 50_000_000
RIDGE_CHECK_MAX_TRIALS = 20_000

SCORE_NAMES = {"mindeye": "validation top-1 retrieval (mean of both directions)",
               "lowlevel": "validation latent correlation"}


def val_score(kind: str, scores: dict[str, float]) -> float | None:
    """The one number a validation is judged by (None when the validation produced none)."""
    if kind == "lowlevel":
        return scores.get("latent_corr")
    if "brain_to_image" in scores and "image_to_brain" in scores:
        return 0.5 * (scores["brain_to_image"] + scores["image_to_brain"])
    return None


def ridge_data(store: SubjectStore, images: np.ndarray, targets: Any
               ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(x (N, V) float32, y (N, K) float32, image of each row): every trial of ``images``, its flat target."""
    trials = load_trials(store, images)
    return trials.voxels.float(), targets.get(trials.image_index).flatten(1), trials.image_index


def _fit(ridge: RidgeRegression, x: torch.Tensor, y: torch.Tensor, groups: np.ndarray, alphas: list[float],
         seed: int) -> None:
    ridge.fit(x, y, alpha=alphas if len(alphas) > 1 else alphas[0], generator=torch.Generator().manual_seed(seed),
              groups=torch.from_numpy(np.asarray(groups)))


def fit_ridge_map(ridge: RidgeRegression, store: SubjectStore, images: np.ndarray, targets: Any,
                  alphas: list[float], seed: int) -> float:
    """Fit ``ridge`` in place (alpha chosen on held-out trials among ``alphas``); returns the alpha."""
    x, y, groups = ridge_data(store, images, targets)
    _fit(ridge, x, y, groups, alphas, seed)
    return float(ridge.alpha)


def ridge_reference(kind: str, store: SubjectStore, images: np.ndarray, targets: Any, alphas: list[float],
                    seed: int, validate) -> dict[str, Any] | None:
    """A ridge regression's validation scores (``validate(ridge)`` -> scores), or None when too costly."""
    n_out = int(np.prod(targets.shape))
    if n_out * store.n_voxels > RIDGE_CHECK_MAX_VALUES:
        return None
    x, y, groups = ridge_data(store, images, targets)
    if len(x) > RIDGE_CHECK_MAX_TRIALS:
        return None
    ridge = RidgeRegression(store.n_voxels, n_out)
    _fit(ridge, x, y, groups, alphas, seed)
    scores = validate(ridge)
    return {"scores": scores, "score": val_score(kind, scores), "alpha": float(ridge.alpha)}


def ridge_check(kind: str, model_score: float | None, ridge_score: float | None, n_val: int,
                alpha: float | None) -> dict[str, Any] | None:
    """run.json's ``ridge_check``: the network's and a ridge regression's validation score, and who wins."""
    if model_score is None or ridge_score is None:
        return None
    return {"metric": SCORE_NAMES[kind], "model": model_score, "ridge": ridge_score, "n_val_images": n_val,
            "ridge_alpha": alpha, "worse_than_ridge": bool(model_score < ridge_score)}


def ridge_check_line(check: dict[str, Any] | None, what: str = "this model") -> str | None:
    """The plain sentence the CLI and the report print when the network lost to ridge (else None)."""
    if not check or not check.get("worse_than_ridge"):
        return None
    return (f"WARNING: {what} is worse than a plain ridge regression on its {check['n_val_images']} validation "
            f"images ({check['metric']}: {check['model']:.3f} vs ridge {check['ridge']:.3f}); use the ridge "
            "baseline, or train with the size-aware defaults (model.ridge_residual, train.select_best; "
            "docs/small-data.md)")


class BestEpoch:
    """The best validation epoch so far and its weights (``RUN/best.safetensors``)."""

    def __init__(self, run_dir: Path, kind: str) -> None:
        self.run_dir, self.kind = run_dir, kind
        self.path = run_dir / "best.safetensors"
        self.epoch: int | None = None
        self.score: float | None = None
        self.scores: dict[str, float] = {}

    def resume(self, log_path: Path) -> None:
        """Pick up the best validation of the epochs already trained (records after the checkpoint are gone)."""
        if not log_path.exists() or not self.path.exists():
            return
        for line in log_path.read_text().splitlines():
            rec = json.loads(line) if line.strip() else {}
            scores = {k[4:]: v for k, v in rec.items() if k.startswith("val_")}
            if scores:
                self.offer(int(rec.get("epoch", 0)), scores, None)
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            saved_epoch = (f.metadata() or {}).get("epoch")
        if saved_epoch != str(self.epoch):  # weights of an epoch the resumed run no longer has: start afresh
            self.epoch, self.score, self.scores = None, None, {}
            self.path.unlink()

    def offer(self, epoch: int, scores: dict[str, float], model: torch.nn.Module | None) -> bool:
        """Keep ``epoch`` if it beats the best so far (strictly: ties keep the earlier, simpler model)."""
        score = val_score(self.kind, scores)
        if score is None or (self.score is not None and not score > self.score):
            return False
        self.epoch, self.score, self.scores = epoch, score, dict(scores)
        if model is not None:
            from mindeye.training.checkpoint import save_weights

            save_weights(model, self.path, metadata={"epoch": str(epoch)})
        return True

    def install(self, last_epoch: int) -> bool:
        """Put the best epoch's weights into RUN/model.safetensors (when it is not the last one)."""
        if self.epoch is None or self.epoch == last_epoch or not self.path.exists():
            return False
        tmp = self.run_dir / "model.safetensors.tmp"
        shutil.copyfile(self.path, tmp)
        tmp.replace(self.run_dir / "model.safetensors")
        return True


def update_run_info(run_dir: Path, **fields: Any) -> None:
    """Add ``fields`` to RUN/run.json (atomically)."""
    path = run_dir / "run.json"
    info = json.loads(path.read_text()) if path.exists() else {}
    info.update(fields)
    write_text_atomic(path, json.dumps(info, indent=2))
