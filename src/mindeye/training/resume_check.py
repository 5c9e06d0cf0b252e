"""What may change when a run is resumed: only settings that do not alter the run being continued."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mindeye.config import Config, load_config, to_dict
from mindeye.errors import MindEyeError

# Stopping point, logging cadence, compilation, evaluation protocol, the run's name and where the
# store now lives: none of them changes the optimisation that is being continued.
CHANGEABLE_ON_RESUME = ("name", "data.store", "data.test_mode", "train.max_steps", "train.val_every", "train.log_every",
                        "train.compile", "eval.")


def flat_keys(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {"a.b.c": value}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_keys(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: Config, new: Config) -> list[tuple[str, Any, Any]]:
    """(key, run's value, new value) for every setting that differs and may not change on resume."""
    a, b = flat_keys(to_dict(old)), flat_keys(to_dict(new))
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not any(k == c or (c.endswith(".") and k.startswith(c))
                                                for c in CHANGEABLE_ON_RESUME)]


def check_resume_config(run_dir: Path, cfg: Config) -> None:
    """Refuse to resume ``run_dir`` with a config that would make it a different run."""
    saved = Path(run_dir) / "config.yaml"
    if not saved.exists():
        return
    changes = config_changes(load_config(saved), cfg)
    if changes:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes)
        raise MindEyeError(
            f"cannot --resume {run_dir} with a changed config ({listed}); a resumed run keeps its own config "
            f"({saved}). Resume without those changes, or start a new run with another --out. Settings that "
            f"may change on resume: {', '.join(c.rstrip('.') + ('.*' if c.endswith('.') else '') for c in CHANGEABLE_ON_RESUME)}"
        )


def _store_facts(store: Any) -> dict[str, Any]:
    return {"id": store.subject_id, "n_voxels": store.n_voxels, "subject": store.meta.get("subject"),
            "source": store.meta.get("source"),
            "voxels checksum": (store.meta.get("checksums") or {}).get("voxels.npy")}


def _recorded_facts(info: dict[str, Any]) -> list[dict[str, Any]]:
    entries = info.get("subjects") or [dict(info, id=None)]
    return [{"id": e.get("id"), "store": e.get("store"), "n_voxels": e.get("n_voxels"), "subject": e.get("subject"),
             "source": e.get("source"), "voxels checksum": e.get("store_voxels_sha256")} for e in entries]


def check_resume_stores(run_dir: Path, stores: list[Any]) -> None:
    """Refuse to resume ``run_dir`` on other data than it was trained on: the same store(s) (subject, source,
    voxel count and voxels checksum), in the same order. A store that moved may be given at its new path."""
    from mindeye.runs import read_run_json

    if not (Path(run_dir) / "run.json").exists():
        return  # stopped before run.json was written: nothing was trained yet
    recorded = _recorded_facts(read_run_json(run_dir))
    given = [_store_facts(st) for st in stores]
    fix = ("resume with the run's own --data store(s), in the order they were first given, or start a new run "
           "with another --out")
    if len(recorded) != len(given):
        was = ", ".join(str(r["id"] or r["store"]) for r in recorded)
        raise MindEyeError(f"cannot --resume {run_dir} on {len(given)} store(s): it was trained on {len(recorded)} "
                           f"({was}); {fix}")
    multi = len(recorded) > 1 or recorded[0]["id"] is not None
    if multi and [r["id"] for r in recorded] != [g["id"] for g in given]:
        if sorted(str(r["id"]) for r in recorded) == sorted(str(g["id"]) for g in given):
            raise MindEyeError(f"cannot --resume {run_dir} with the --data stores in another order (subjects "
                               f"{', '.join(g['id'] for g in given)}; the run's order is "
                               f"{', '.join(r['id'] for r in recorded)}): the batches would differ; {fix}")
        raise MindEyeError(f"cannot --resume {run_dir} on subjects {', '.join(g['id'] for g in given)}: it was "
                           f"trained on {', '.join(r['id'] for r in recorded)}; {fix}")
    for rec, got, store in zip(recorded, given, stores):
        differ = [k for k in ("n_voxels", "subject", "source", "voxels checksum")
                  if rec[k] is not None and got[k] is not None and rec[k] != got[k]]
        if differ:
            shown = "; ".join(f"{k} {str(rec[k])[:16]!r} vs {str(got[k])[:16]!r}" for k in differ)
            raise MindEyeError(f"cannot --resume {run_dir} on {store.path}: it is not the store the run was trained "
                               f"on ({rec['store']}: {shown}); {fix}")
