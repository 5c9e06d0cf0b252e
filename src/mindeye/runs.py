"""A trained run directory loaded for use from Python: ``mindeye.load_run(path)``.

Loading needs only the run directory (config.yaml, run.json, model.safetensors), not the subject store
it was trained on: the voxel count comes from run.json (written by `mindeye train` and
`mindeye import-checkpoint`), and for a run that predates that field, from the shape of the model's
input layer in model.safetensors.

This module is the one home of reading a run directory: :func:`read_run` (config + run.json),
:func:`load_weights`, :func:`load_run` (store-free) and :func:`load_run_model` (checked against a subject
store, for commands that evaluate on the store's test split), and :func:`embed_voxels` (a model's
outputs for voxel rows, used by validation, evaluation, retrieval and the pipeline). It sits above
``models`` and below ``training`` / ``inference`` (docs/architecture.md); writing runs is the trainer's
(``mindeye.training.checkpoint``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mindeye.config import Config, load_config
from mindeye.devices import resolve_device
from mindeye.errors import MindEyeError, option
from mindeye.finite import non_finite_tensors, require_finite_outputs
from mindeye.safe_load import load_safetensors_file
from mindeye.utils.reprs import short_path

if TYPE_CHECKING:
    from mindeye.data.store import SubjectStore

# The weight whose input dimension is the voxel count, per model kind (see mindeye.models.factory).
_CREATE_RUN = option("mindeye.train(CONFIG, data=STORE, out=RUN_DIR)", "`mindeye train --config CONFIG --out RUN_DIR`")
_INPUT_WEIGHT = {"mindeye": ("backbone.stem.0.weight", 1), "lowlevel": ("stem.0.weight", 1), "ridge": ("weight", 1)}


@dataclass(repr=False)
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

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.model.parameters()) if hasattr(self.model, "parameters") else None
        subject = f", subject={self.subject!r}" if self.subject is not None else ""
        return (f"Run({short_path(self.path)!r}, config={self.name!r}, kind={self.kind!r}, n_voxels={self.n_voxels}"
                f"{subject}, targets={self.config.targets.encoder!r}, "
                f"params={f'{params:,}' if params is not None else '?'}, device={self.device!r})")


def refuse_diverged(run_dir: Path, info: dict[str, Any]) -> None:
    bad = info.get("diverged")
    if bad:
        raise MindEyeError(
            f"{run_dir} diverged during training (non-finite loss at step {bad.get('step')}, epoch "
            f"{bad.get('epoch')}; see its run.json), so its weights are not a trained model; train it again "
            "with a lower train.max_lr")


def _bad_run_json(path: Path, problem: str) -> MindEyeError:
    return MindEyeError(f"{path} {problem}; it was not written by mindeye or is damaged: restore the run's own "
                        "run.json (or train the run again)")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def read_run_json(run_dir: str | Path) -> dict[str, Any]:
    """RUN/run.json, parsed and checked: the one reader of run.json (loading, evaluation, resume, report).

    A truncated or foreign file, or a field of the wrong type, is one MindEyeError naming the field."""
    path = Path(run_dir) / "run.json"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise MindEyeError(f"{run_dir} is not a mindeye run directory (no run.json); create one with "
                           f"{_CREATE_RUN}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad_run_json(path, f"is not valid JSON ({exc}; truncated?)") from None
    if not isinstance(info, dict):
        raise _bad_run_json(path, f"holds a {type(info).__name__}, not a JSON object")
    if info.get("n_voxels") is not None and not _positive_int(info["n_voxels"]):
        raise _bad_run_json(path, f"has n_voxels {info['n_voxels']!r}, not a positive integer")
    for key in ("store", "store_voxels_sha256", "kind"):
        if info.get(key) is not None and not isinstance(info[key], str):
            raise _bad_run_json(path, f"has {key} {info[key]!r}, not a string")
    if info.get("diverged") not in (None, False) and not isinstance(info["diverged"], dict):
        raise _bad_run_json(path, f"has diverged {info['diverged']!r}, not an object")
    if info.get("init_from") is not None and not (isinstance(info["init_from"], dict)
                                                  and isinstance(info["init_from"].get("run"), str)):
        raise _bad_run_json(path, "has an init_from without the pretrained run's path")
    if "subjects" in info:
        subjects = info["subjects"]
        if not isinstance(subjects, list) or not subjects:
            raise _bad_run_json(path, "has a subjects field that is not a non-empty list")
        for i, s in enumerate(subjects):
            if not isinstance(s, dict) or not isinstance(s.get("id"), str) or not isinstance(s.get("store"), str) \
                    or not _positive_int(s.get("n_voxels")):
                raise _bad_run_json(path, f"has a malformed subjects[{i}] (each needs an id, a store and a "
                                          "positive n_voxels)")
        ids = [s["id"] for s in subjects]
        if len(set(ids)) != len(ids):
            raise _bad_run_json(path, f"lists a subject twice ({', '.join(ids)})")
    return info


def read_run_config(run_dir: str | Path, info: dict[str, Any] | None = None) -> Config:
    """RUN/config.yaml, checked: not empty, a valid config, of the model kind run.json records."""
    path = Path(run_dir) / "config.yaml"
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        text = "?"  # load_config says what is wrong
    if not text.strip():
        raise MindEyeError(f"{path} is empty, so the run's model cannot be built; restore the run's own config.yaml")
    try:
        cfg = load_config(path)
    except MindEyeError as exc:
        raise MindEyeError(f"{path} is not a usable run config ({exc}); restore the run's own config.yaml") from None
    recorded = (info or {}).get("kind")
    if recorded is not None and recorded != cfg.model.kind:
        raise MindEyeError(f"{path} describes a {cfg.model.kind} model but run.json records a {recorded} run; "
                           "restore the run's own config.yaml")
    return cfg


def read_run(run_dir: str | Path) -> tuple[Config, dict[str, Any]]:
    """(config.yaml, run.json) of a run directory, both checked (:func:`read_run_json`, :func:`read_run_config`)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists() or not (run_dir / "run.json").exists():
        raise MindEyeError(f"{run_dir} is not a mindeye run directory (no config.yaml/run.json); "
                           f"create one with {_CREATE_RUN}")
    info = read_run_json(run_dir)
    return read_run_config(run_dir, info), info


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
                           f"say which one with {option('subject=ID', '--subject ID')}")
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


def _built_model(run_dir: Path, cfg: Config, n_voxels: int | dict[str, int], device: str,
                 subject: str | None = None) -> nn.Module:
    """The run's model with its saved weights, in eval mode on ``device`` (the one place runs are loaded);
    of a shared-subject run ({id: n_voxels}) taking ``subject``'s voxels."""
    from mindeye.models.factory import build_model

    model = build_model(cfg.model, n_voxels)
    load_weights(model, run_dir / "model.safetensors", device="cpu")
    if subject is not None:
        model.select_subject(subject)
    return model.to(device).eval()


def load_run(path: str | Path, device: str = "cpu", subject: str | None = None) -> Run:
    """The run in directory ``path`` with its weights loaded, in eval mode on ``device`` ("auto": GPU if any).

    A shared-subject run (several subjects) needs ``subject``: the model then takes that subject's voxels.
    """
    run_dir = Path(path)
    device = resolve_device(device)
    cfg, info = read_run(run_dir)
    refuse_diverged(run_dir, info)
    view, entry = subject_view(info, subject, run_dir)
    n_voxels = voxel_count(run_dir, cfg, view) if entry is None else int(entry["n_voxels"])
    model = _built_model(run_dir, cfg, model_voxels(info, n_voxels), device, entry["id"] if entry else None)
    return Run(path=run_dir, config=cfg, info=view, model=model, kind=cfg.model.kind, n_voxels=n_voxels,
               device=device, subject=entry["id"] if entry else None,
               subjects=[s["id"] for s in info["subjects"]] if entry else None)


def load_run_model(run_dir: str | Path, device: str = "cpu", store: str | Path | None = None,
                   subject: str | None = None):
    """(cfg, info, model in eval mode, store) for a run directory, checked against its subject store; of a
    shared-subject run, for ``subject`` (info then names that subject's store and voxel count)."""
    from mindeye.data.store import SubjectStore

    run_dir = Path(run_dir)
    cfg, full_info = read_run(run_dir)
    refuse_diverged(run_dir, full_info)
    info, entry = subject_view(full_info, subject, run_dir)
    store_path = store or info.get("store")
    if not store_path:
        raise MindEyeError(f"{run_dir}/run.json names no store; pass --data STORE")
    if store is None and not Path(store_path).exists():
        raise MindEyeError(f"the store {run_dir} was trained on, {store_path}, is not there any more (moved or "
                           "deleted); pass its new location with --data STORE")
    subject = SubjectStore(store_path)
    if subject.n_voxels != info.get("n_voxels", subject.n_voxels):
        raise MindEyeError(f"the run was trained on {info['n_voxels']} voxels but {store_path} has "
                           f"{subject.n_voxels}; evaluate on the subject it was trained for")
    check_same_store(run_dir, info, subject)
    model = _built_model(run_dir, cfg, model_voxels(full_info, subject.n_voxels), device,
                         entry["id"] if entry else None)
    return cfg, info, model, subject


def check_same_store(run_dir: Path, info: dict[str, Any], subject: SubjectStore) -> None:
    """The store is the one the run was trained on (same subject, source and voxel data), not just as wide."""
    trained = {"subject": info.get("subject"), "source": info.get("source"), "voxels checksum": info.get("store_voxels_sha256")}
    given = {"subject": subject.meta.get("subject"), "source": subject.meta.get("source"),
             "voxels checksum": subject.meta.get("checksums", {}).get("voxels.npy")}
    differ = [k for k in trained if trained[k] is not None and given[k] is not None and trained[k] != given[k]]
    if differ:
        shown = "; ".join(f"{k} {str(trained[k])[:16]!r} vs {str(given[k])[:16]!r}" for k in differ)
        raise MindEyeError(f"{subject.path} is not the store {run_dir} was trained on ({shown}); evaluate on the "
                           f"run's own store ({info.get('store')}), or --data its moved copy")


@torch.no_grad()
def embed_voxels(model: nn.Module, voxels: torch.Tensor, device: str, batch_size: int = 256,
                 which: str = "projector") -> torch.Tensor:
    """Projector (retrieval) or backbone outputs for voxel rows, in eval mode, float32 on the CPU.

    ``voxels`` (M, R, V), repetitions side by side (``data.test_average: outputs``): the mean of the
    outputs on each repetition (MindEye2's test protocol)."""
    if voxels.ndim == 3:
        reps = [embed_voxels(model, voxels[:, r], device, batch_size, which) for r in range(voxels.shape[1])]
        return torch.stack(reps).mean(0)
    was_training = model.training
    model.eval()
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise MindEyeError(f"batch_size must be a positive integer, got {batch_size!r}")
    outs = []
    try:
        for s in range(0, len(voxels), batch_size):
            x = voxels[s:s + batch_size].float().to(device)
            if hasattr(model, "predict"):
                emb = model.predict(x)
            else:
                out = model(x)
                emb = out.get(which) if out.get(which) is not None else out["backbone"]
            emb = emb.float()
            require_finite_outputs(emb, s, "the model")
            outs.append(emb.cpu())
    finally:
        model.train(was_training)
    if not outs:
        raise MindEyeError("no voxel rows to embed")
    return torch.cat(outs)

