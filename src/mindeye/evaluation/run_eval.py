"""Evaluate a trained run: retrieval on the test set (paper Table 1 / 7 protocol)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mindeye.data.store import SubjectStore
from mindeye.devices import resolve_device
from mindeye.errors import MindEyeError
from mindeye.finite import require_finite
from mindeye.models.factory import build_model
from mindeye.training.checkpoint import load_weights, read_run, refuse_diverged
from mindeye.training.data import Targets, load_eval_split, target_options
from mindeye.training.trainer import embed_voxels


def load_run_model(run_dir: str | Path, device: str = "cpu", store: str | Path | None = None,
                   subject: str | None = None):
    """(cfg, info, model in eval mode, store) for a run directory; of a shared-subject run, for
    ``subject`` (info then names that subject's store and voxel count)."""
    from mindeye.runs import model_voxels, subject_view

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
    model = build_model(cfg.model, model_voxels(full_info, subject.n_voxels))
    load_weights(model, run_dir / "model.safetensors", device="cpu")
    if entry is not None:
        model.select_subject(entry["id"])
    model.to(device).eval()
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


def evaluate_retrieval(run_dir: str | Path, store: str | Path | None = None, device: str | None = None,
                       mode: str | None = None, seed: int = 0, write: bool = True,
                       subject: str | None = None) -> dict[str, Any]:
    from mindeye.evaluation.retrieval import retrieval_top1_among, topk_full

    device = resolve_device(device)
    cfg, info, model, subject = load_run_model(run_dir, device, store, subject=subject)
    if cfg.model.kind == "lowlevel":
        raise MindEyeError("retrieval evaluation needs a high-level (mindeye) or ridge run, not a low-level one")
    mode = mode or cfg.data.test_mode
    test = load_eval_split(subject, subject.image_indices("test"), mode)
    if len(test) < 2:
        raise MindEyeError(f"{subject.path} has {len(test)} test samples; retrieval needs at least 2")
    require_finite(test.voxels, f"test voxels of {subject.path}",
                   "the store is damaged: prepare it again (or verify it with `mindeye info`)")
    targets = Targets(subject.path, cfg.targets.encoder, cfg.targets.weights,
                      options=target_options(cfg, cfg.targets.encoder)).get(test.image_index)
    preds = embed_voxels(model, test.voxels, device)
    among = retrieval_top1_among(preds.flatten(1), targets.flatten(1), pool=cfg.eval.pool, draws=cfg.eval.draws,
                                 seed=seed, ci=cfg.eval.ci, draw_mode=cfg.eval.draw_mode)
    full = topk_full(preds.flatten(1), targets.flatten(1), ks=(1, 5))
    result = {"run": str(run_dir), "kind": cfg.model.kind, "name": cfg.name, "test_mode": mode,
              **({"subject": info["subject_id"]} if info.get("subjects") else {}),
              "n_test": len(test), **_jsonable(among), "full_test_set": _jsonable(full)}
    if write:
        out = Path(run_dir) / "eval"
        out.mkdir(exist_ok=True)
        # One file per subject of a shared-subject run, so evaluating another does not overwrite it.
        name = f"retrieval-{info['subject_id']}.json" if len(info.get("subjects") or []) > 1 else "retrieval.json"
        (out / name).write_text(json.dumps(result, indent=2))
    return result


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if hasattr(x, "item"):
        return x.item()
    return x


def retrieval_table(results: list[dict[str, Any]]) -> str:
    """A short fixed-width table of retrieval results (one row per run), Table 1's column names."""
    from mindeye.evaluation.retrieval import TABLE1_COLUMNS, TABLE1_FOOTNOTE

    image_col, brain_col = TABLE1_COLUMNS["Image retrieval"], TABLE1_COLUMNS["Brain retrieval"]
    pools = {r.get("pool", 300) for r in results}
    pool_label = str(pools.pop()) if len(pools) == 1 else "pool"  # the pool actually used, not the paper's 300
    lines = [f"{'run':<24} {f'image retr. ({pool_label})':>18} {f'brain retr. ({pool_label})':>18} "
             f"{'top-1 all':>10} {'top-5 all':>10}"]
    for r in results:
        pool = r.get("pool", 300)
        img, brain = r[image_col], r[brain_col]
        full = r.get("full_test_set", {})
        top1 = full.get(f"{image_col}_top1", float("nan"))
        top5 = full.get(f"{image_col}_top5", float("nan"))
        lines.append(f"{r.get('name', r['run'])[:24]:<24} {100 * img:>17.1f}% {100 * brain:>17.1f}% "
                     f"{100 * top1:>9.1f}% {100 * top5:>9.1f}%")
        lines.append(f"{'':<24} (chance {100 / pool:.2f}%, {r.get('draws', 30)} draws of {pool})")
    lines.append(TABLE1_FOOTNOTE)
    return "\n".join(lines)
