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
