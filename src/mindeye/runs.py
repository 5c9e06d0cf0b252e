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
    subject: str | None = None  # the subject whose input layer a shared-subject run's model uses
    subjects: list[str] | None = None  # every subject of a shared-subject run (None: single-subject run)

    @property
    def name(self) -> str:
        return self.config.name


def run_subject(info: dict[str, Any], subject: str | None, run_dir: str | Path) -> dict[str, Any] | None:
    """The run.json entry (id, store, n_voxels) of ``subject`` in a shared-subject run; None for a
    single-subject run. ``subject`` may be left out only when the run has one subject."""
    subjects = info.get("subjects")
    if not subjects:
        if subject is not None:
            own = info.get("subject")
            names = {str(own)} | ({f"subj{own:02d}"} if isinstance(own, int) else set())
            if own is not None and subject not in names:
                raise MindEyeError(f"{run_dir} is a single-subject run (subject {own}); --subject {subject} "
                                   "does not name it")
        return None
    ids = [s["id"] for s in subjects]
    if subject is None:
        if len(ids) == 1:
            return dict(subjects[0])
        raise MindEyeError(f"{run_dir} was trained on several subjects ({', '.join(ids)}); "
                           "say which one with --subject ID (Python: subject=ID)")
    if subject not in ids:
        raise MindEyeError(f"subject {subject!r} is not in {run_dir}; its subjects are {', '.join(ids)}")
    return dict(subjects[ids.index(subject)])


def subject_view(info: dict[str, Any], subject: str | None, run_dir: str | Path) -> tuple[dict[str, Any], dict | None]:
    """(run.json as seen for one subject: its store and voxel count in ``store``/``n_voxels``, the entry)."""
    entry = run_subject(info, subject, run_dir)
    if entry is None:
        return info, None
    view = {**info, "store": entry["store"], "n_voxels": entry["n_voxels"], "subject_id": entry["id"]}
    for key in ("subject", "source", "store_voxels_sha256"):  # what check_same_store compares
        view[key] = entry.get(key)
    return view, entry


def model_voxels(info: dict[str, Any], n_voxels: int) -> int | dict[str, int]:
    """What :func:`mindeye.models.factory.build_model` takes for this run: the voxel count, or
    {subject id: voxel count} for a shared-subject run."""
    subjects = info.get("subjects")
    return {s["id"]: int(s["n_voxels"]) for s in subjects} if subjects else n_voxels


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


def load_run(path: str | Path, device: str = "cpu", subject: str | None = None) -> Run:
    """The run in directory ``path`` with its weights loaded, in eval mode on ``device`` ("auto": GPU if any).

    A shared-subject run (several subjects) needs ``subject``: the model then takes that subject's voxels.
    """
    from mindeye.devices import resolve_device
    from mindeye.models.factory import build_model
    from mindeye.training.checkpoint import load_weights, read_run

    run_dir = Path(path)
    device = resolve_device(device)
    cfg, info = read_run(run_dir)
    view, entry = subject_view(info, subject, run_dir)
    n_voxels = voxel_count(run_dir, cfg, view) if entry is None else int(entry["n_voxels"])
    model = build_model(cfg.model, model_voxels(info, n_voxels))
    load_weights(model, run_dir / "model.safetensors", device="cpu")
    if entry is not None:
        model.select_subject(entry["id"])
    model.to(device).eval()
    return Run(path=run_dir, config=cfg, info=view, model=model, kind=cfg.model.kind, n_voxels=n_voxels,
               device=device, subject=entry["id"] if entry else None,
               subjects=[s["id"] for s in info["subjects"]] if entry else None)
