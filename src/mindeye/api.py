"""The public training and data API: ``mindeye.train``, ``mindeye.load_store``, ``mindeye.embed``,
``mindeye.simulate``.

What `mindeye train`, `mindeye embed` and a subject store do on the command line, from Python without
internal modules (docs/python-api.md)::

    store = mindeye.load_store("stores/subj01")
    mindeye.embed(store, "clip-vit-l14-hidden")               # the target cache training reads
    run = mindeye.train("mindeye-subj01", data=store, out="runs/high", train__epochs=3)
    test = store.test_split()                                 # averaged test voxels, image_index, image_ids
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from mindeye.config import Config, apply_override, from_dict, load_config, to_dict
from mindeye.data.store import SubjectStore
from mindeye.errors import MindEyeError
from mindeye.runs import Run, load_run

log = logging.getLogger(__name__)

_RUN_FILES = ("config.yaml", "run.json", "checkpoint", "checkpoint.old", "model.safetensors")


def load_store(path: str | Path | SubjectStore) -> SubjectStore:
    """A prepared subject store (memory-mapped): ``.train_split()``, ``.test_split()``, ``.images``, ..."""
    return path if isinstance(path, SubjectStore) else SubjectStore(path)


def simulate(out: str | Path, scale: str = "small", seed: int = 0, *, exist_ok: bool = False,
             overwrite: bool = False, progress: bool | None = None) -> SubjectStore:
    """The simulated subject ``scale`` (tiny, small, nsd; docs/simulated-subject.md) as a store in ``out``, as
    `mindeye simulate` makes it. ``exist_ok=True`` returns the store already in ``out`` when it is that same
    simulation (a notebook run twice); ``overwrite=True`` makes it again."""
    from mindeye.data.simulate import simulate_subject
    from mindeye.pipeline import in_notebook

    out = Path(out)
    if exist_ok and not overwrite and (out / "meta.json").exists():
        store = SubjectStore(out)
        made = store.meta.get("simulation") or {}
        if (made.get("scale"), made.get("seed")) != (scale, seed):
            raise MindEyeError(f"{out} holds another store (simulation {made or 'none'}), not the {scale!r} subject "
                               f"with seed {seed}; choose another out, or pass overwrite=True to replace it")
        return store
    simulate_subject(out, scale=scale, seed=seed, overwrite=overwrite,
                     progress=in_notebook() if progress is None else progress)
    return SubjectStore(out)


def _store_path(store: Any) -> Path:
    return store.path if isinstance(store, SubjectStore) else Path(store)


def embed(store: str | Path | SubjectStore, encoder: Any, weights: str | None = None, device: str = "auto",
          batch_size: int | None = None, progress: bool | None = None, overwrite: bool = False) -> np.ndarray:
    """Compute (or reuse) the store's target cache for ``encoder`` (a name such as ``clip-vit-l14-hidden``, or
    an image encoder object), as `mindeye embed` does; returns the embeddings, memory-mapped float16
    ``(n_images, ...)``: row i belongs to store image i. Already computed: returns at once."""
    from mindeye.devices import resolve_device
    from mindeye.encoders.cache import embed_store
    from mindeye.pipeline import in_notebook

    obj = None if isinstance(encoder, str) else encoder
    name = encoder if isinstance(encoder, str) else getattr(encoder, "name", None)
    if not isinstance(name, str):
        raise MindEyeError(f"encoder must be an encoder name (e.g. 'clip-vit-l14-hidden') or an image encoder, "
                           f"got {type(encoder).__name__}")
    directory = embed_store(_store_path(store), name, weights, resolve_device(device), batch_size=batch_size,
                            progress=in_notebook() if progress is None else progress, encoder=obj,
                            overwrite=overwrite)
    return np.load(directory / "targets.npy", mmap_mode="r")


def _yaml(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def override_list(overrides: dict[str, Any] | list[str] | None, dotted: dict[str, Any]) -> list[str]:
    """``{"train.epochs": 3}`` / ``["train.epochs=3"]`` and keywords ``train__epochs=3`` -> ``--set`` strings."""
    if overrides is None:
        items: list[str] = []
    elif isinstance(overrides, dict):
        items = [f"{k}={_yaml(v)}" for k, v in overrides.items()]
    elif isinstance(overrides, list | tuple) and all(isinstance(o, str) for o in overrides):
        items = list(overrides)
    else:
        raise MindEyeError(f'overrides must be a dict ({{"train.epochs": 3}}) or a list of "key=value" strings, '
                           f"got {type(overrides).__name__}")
    top = {f.name for f in dataclasses.fields(Config)}
    for key, value in dotted.items():
        if "__" not in key and key not in top:
            raise MindEyeError(f"unknown keyword {key}=; config values are passed as section__key=value "
                               f"(e.g. train__epochs=3) or overrides={{'train.epochs': 3}}; top-level keys: "
                               f"{', '.join(sorted(top))}")
        items.append(f"{key.replace('__', '.')}={_yaml(value)}")
    return items


def _config(config: str | Path | Config, overrides: list[str], store: Path | None, sized: bool) -> Config:
    if isinstance(config, Config):  # a Config object is taken as given (no size-aware defaults)
        data = to_dict(config)
        for item in overrides:
            apply_override(data, item)
        cfg = from_dict(Config, data)
        cfg.validate()
        return cfg
    if not isinstance(config, str | Path):
        raise MindEyeError(f"config must be a shipped config name, a YAML path or a mindeye Config, got "
                           f"{type(config).__name__}")
    if not sized:
        return load_config(config, overrides)
    from mindeye.training.size_defaults import sized_config

    cfg, line = sized_config(config, overrides, store)
    if line:
        log.info(line)
    return cfg


def train(config: str | Path | Config, data: Any = None, out: str | Path | None = None, *,
          overrides: dict[str, Any] | list[str] | None = None, device: str = "auto", resume: bool = False,
          overwrite: bool = False, init_from: str | Path | None = None, progress: bool | None = None,
          **dotted: Any) -> Run:
    """Train a run as `mindeye train` does and return it loaded (:class:`mindeye.Run`).

    ``config``: a shipped config name (``demo-highlevel``, ``mindeye-subj01``, ...), a YAML path or a
    ``Config``. ``data``: a subject store (path or :func:`load_store`), a list of them for a
    shared-subject run, or None for the config's ``data.store``. ``out``: the run directory.
    Config values: ``train__epochs=3`` (``__`` for the dots of ``--set train.epochs=3``) or
    ``overrides={"train.epochs": 3}``. For one store, the size-aware defaults of `mindeye train` apply
    to a name or path (docs/small-data.md); a ``Config`` object is used as given.
    ``resume=True`` continues an interrupted run; ``overwrite=True`` replaces a run already in ``out``.
    ``progress``: bars (default: in notebooks only).
    """
    from mindeye.pipeline import in_notebook
    from mindeye.training.trainer import Trainer

    if out is None:
        raise MindEyeError("train() needs out=: the run directory to write (e.g. out='runs/high')")
    if resume and overwrite:
        raise MindEyeError("pass resume=True (continue the run in out) or overwrite=True (train it again), not both")
    items = override_list(overrides, dotted)
    stores = [_store_path(s) for s in data] if isinstance(data, list | tuple) else data
    if isinstance(stores, list) and len(stores) == 1:
        stores = stores[0]
    if stores is not None and not isinstance(stores, list):
        stores = _store_path(stores)
    sized = not isinstance(stores, list) and init_from is None
    cfg = _config(config, items, stores, sized)
    out = Path(out)
    if overwrite and out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not any((out / f).exists() for f in _RUN_FILES)):
            raise MindEyeError(f"{out} exists and is not a mindeye run directory; overwrite=True only replaces a "
                               "run: choose another out")
        shutil.rmtree(out)
    trainer = Trainer(cfg, out, store=stores, device=device, resume=resume,
                      progress=in_notebook() if progress is None else progress, init_from=init_from)
    trainer.fit()
    subject = trainer.subject_ids[0] if trainer.shared_layout else None
    return load_run(out, trainer.device, subject=subject)
