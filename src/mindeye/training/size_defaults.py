"""Size-aware defaults: `mindeye train` and the demo adapt a config to the size of the subject store.

On a store with few training images the MindEye networks, trained as on NSD, lose to ridge regression
(issue 23). Below :data:`SMALL_DATA_IMAGES` training images (per pipeline) a run therefore gets the small-data
settings of :func:`size_settings` (the ridge-first layout, best-epoch selection on held-out
validation images, a validation split scaled to the store); docs/small-data.md has the measurements.

Only settings nobody chose are changed: a key written in the user's own config file (any file outside
the package, including one that ``extends`` a shipped config) or given with ``--set`` always wins, and
``train.size_defaults: false`` (the paper configs) turns the whole thing off. Keys of the shipped
configs (``demo-highlevel``, ...) are package defaults and do adapt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mindeye.config import SHIPPED_CONFIG_DIR, Config, load_config, resolve_config_path
from mindeye.data.store import SubjectStore

# Below this many training images (the store's train split, after data.train_images) a pipeline gets
# the small-data settings; measured on the simulated subject (docs/small-data.md): the high-level
# network trained as on NSD beats ridge clearly from about 1,000 images on (and a ridge path there only
# cost it), the low-level one still lost to ridge at 1,500.
SMALL_DATA_IMAGES = {"mindeye": 1000, "lowlevel": 2000, "ridge": 2000}


def _flatten(data: dict[str, Any], prefix: str = "") -> set[str]:
    """The dotted keys of the values set in ``data`` (sections are not values: `model: {...}` chooses
    only what it holds)."""
    keys: set[str] = set()
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            keys |= _flatten(v, key + ".")
        elif v is not None or prefix:  # an empty section (`train:`) chooses nothing; `max_steps: null` does
            keys.add(key)
    return keys


def user_keys(config: str | Path | None, overrides: list[str] | None = None) -> set[str]:
    """Dotted keys the user chose: those of config files outside the package (along the ``extends``
    chain) and of ``--set`` overrides."""
    keys = {o.split("=", 1)[0].strip() for o in overrides or [] if "=" in o}
    path, base, seen = config, None, set()
    while path is not None:
        file = resolve_config_path(path, base).resolve()
        if file in seen:
            break
        seen.add(file)
        data = yaml.safe_load(file.read_text()) or {}
        if not isinstance(data, dict):
            break
        parent = data.pop("extends", None)
        if SHIPPED_CONFIG_DIR.resolve() not in file.parents:
            keys |= _flatten(data)
        path, base = (parent, file.parent) if isinstance(parent, str) else (None, None)
    return keys


def is_user_set(key: str, chosen: set[str]) -> bool:
    """``key`` or a section above it was chosen by the user."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in chosen for i in range(1, len(parts) + 1))


def store_train_images(store: SubjectStore, cfg: Config) -> int:
    """Training images the run will see (train split; data.train_images keeps a subset)."""
    n = len(store.image_indices("train"))
    return min(n, cfg.data.train_images) if cfg.data.train_images is not None else n


# The ridge-first layout keeps a full (outputs x voxels) float32 ridge weight in the model: above this many
# values (1 GB; NSD voxels to CLIP ViT-L/14 tokens would be 3.1e9) the small-data settings leave it off.
RIDGE_MAP_MAX_VALUES = 250_000_000


def ridge_map_values(cfg: Config, n_voxels: int) -> int:
    """Values of the ridge weight a ridge-first model of ``cfg`` would hold for ``n_voxels`` voxels."""
    from mindeye.models.factory import lowlevel_latent_size

    outputs = (lowlevel_latent_size(cfg.model) if cfg.model.kind == "lowlevel"
               else cfg.model.backbone.tokens * cfg.model.backbone.dim)
    return outputs * n_voxels


def size_settings(cfg: Config, n_images: int, has_val_split: bool, n_voxels: int = 0) -> tuple[dict[str, Any], str]:
    """(settings, why) for a run of ``cfg.model.kind`` on ``n_images`` training images ({} when none apply)."""
    limit = SMALL_DATA_IMAGES[cfg.model.kind]
    if n_images >= limit:
        return {}, f"{n_images} training images (>= {limit} for a {cfg.model.kind} run): the config as written"
    settings: dict[str, Any] = {}
    if not has_val_split:
        # Held-out images to select the epoch on and to compare with ridge: 20%, 10 to 100 of them.
        settings["data.val_images"] = int(min(100, max(10, round(0.2 * n_images))))
    too_big = ridge_map_values(cfg, n_voxels) > RIDGE_MAP_MAX_VALUES
    if cfg.model.kind in ("mindeye", "lowlevel"):
        settings.update({"data.train_on_val": False, "train.select_best": True, "train.val_every": 1})
        if not too_big:
            settings["model.ridge_residual"] = True
    why = f"{n_images} training images (< {limit} for a {cfg.model.kind} run): small-data settings"
    if cfg.model.kind != "ridge":
        why += (" (best validation epoch kept; no ridge-first network: its ridge weight would hold "
                f"{ridge_map_values(cfg, n_voxels):.2g} values)" if too_big
                else " (ridge-first network, best validation epoch kept)")
    return settings, why


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def sized_config(config: str | Path, overrides: list[str] | None, store: str | Path | None,
                 ) -> tuple[Config, str | None]:
    """The config for a run on ``store`` with the size-aware defaults applied, and the one line saying
    which and why (None when ``train.size_defaults`` is off or no store is known)."""
    overrides = list(overrides or [])
    cfg = load_config(config, overrides)
    store = store or cfg.data.store
    if not cfg.train.size_defaults or store is None or not (Path(store) / "meta.json").exists():
        return cfg, None
    if cfg.model.kind not in SMALL_DATA_IMAGES:  # mindeye2: its own per-subject ridge; the config as written
        return cfg, None
    st = SubjectStore(store)
    settings, why = size_settings(cfg, store_train_images(st, cfg), len(st.image_indices("val")) > 0, st.n_voxels)
    chosen = user_keys(config, overrides)
    applied = {k: v for k, v in settings.items() if not is_user_set(k, chosen)}
    kept = sorted(k for k in settings if k not in applied)
    if applied:
        cfg = load_config(config, [*(f"{k}={_yaml_value(v)}" for k, v in applied.items()), *overrides])
    shown = ", ".join(f"{k}={_yaml_value(v)}" for k, v in applied.items())
    line = f"size-aware defaults: {why}" + (f": {shown}" if shown else "")
    if kept:
        line += f"; kept your {', '.join(kept)}"
    return cfg, line + " (train.size_defaults=false turns this off)"
