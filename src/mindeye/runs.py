"""A trained run directory loaded for use from Python: ``mindeye.load_run(path)``.

Loading needs only the run directory (config.yaml, run.json, model.safetensors), not the subject store
it was trained on: the voxel count comes from run.json (written by `mindeye train` and
`mindeye import-checkpoint`), and for a run that predates that field, from the shape of the model's
input layer in model.safetensors.

The run-directory reader and the weights loader still live in ``mindeye.training.checkpoint`` (imported
lazily here); moving them into this layer is part of the import-order clean-up of issue 15.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mindeye.config import Config
from mindeye.errors import MindEyeError

# The weight whose input dimension is the voxel count, per model kind (see mindeye.models.factory).
_INPUT_WEIGHT = {"mindeye": ("backbone.stem.0.weight", 1), "lowlevel": ("stem.0.weight", 1), "ridge": ("weight", 1)}


@dataclass
class Run:
    """A trained model with the facts recorded next to it."""

    path: Path  # the run directory
    config: Config  # the resolved config it was trained with (config.yaml)
    info: dict[str, Any]  # run.json: package version, store, voxel count, parameters, ...
    model: Any  # torch.nn.Module in eval mode, on ``device``
    kind: str  # "mindeye" (high-level), "lowlevel" or "ridge"
    n_voxels: int  # voxels per brain sample the model takes
    device: str  # where the model lives

    @property
    def name(self) -> str:
        return self.config.name


def voxel_count(run_dir: Path, cfg: Config, info: dict[str, Any]) -> int:
    """run.json's ``n_voxels``; for older runs without it, the input width of the saved weights."""
    if info.get("n_voxels"):
        return int(info["n_voxels"])
    key, dim = _INPUT_WEIGHT[cfg.model.kind]
    weights = run_dir / "model.safetensors"
    if weights.exists():
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            if key in f.keys():
                return int(f.get_slice(key).get_shape()[dim])
    raise MindEyeError(f"{run_dir}/run.json records no n_voxels and {weights} has no {key}; "
                       "this run cannot be loaded without its store")


def load_run(path: str | Path, device: str = "cpu") -> Run:
    """The run in directory ``path`` with its weights loaded, in eval mode on ``device`` ("auto": GPU if any)."""
    from mindeye.devices import resolve_device
    from mindeye.models.factory import build_model
    from mindeye.training.checkpoint import load_weights, read_run

    run_dir = Path(path)
    device = resolve_device(device)
    cfg, info = read_run(run_dir)
    n_voxels = voxel_count(run_dir, cfg, info)
    model = build_model(cfg.model, n_voxels)
    load_weights(model, run_dir / "model.safetensors", device="cpu")
    model.to(device).eval()
    return Run(path=run_dir, config=cfg, info=info, model=model, kind=cfg.model.kind, n_voxels=n_voxels,
               device=device)
