"""What the report reads: runs (config, info, metrics.jsonl, retrieval), their curves, and test-split
embeddings (targets, backbone / projector outputs, prior samples) for the UMAP and the retrieved row."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mindeye.errors import MindEyeError
from mindeye.evaluation.recon_eval import load_pngs, read_json_file
from mindeye.evaluation.report_figures import Series
from mindeye.evaluation.report_tables import RETRIEVAL
from mindeye.evaluation.tables import COLUMNS


# ----------------------------------------------------------------------------------------------------
# Reading runs
# ----------------------------------------------------------------------------------------------------
@dataclass
class RunInfo:
    role: str  # "high-level", "low-level", "ridge"
    path: Path
    cfg: Any
    info: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    retrieval: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return str(getattr(self.cfg, "name", None) or self.path.name)


def read_run_info(path: str | os.PathLike, role: str) -> RunInfo:
    from mindeye.runs import read_run

    path = Path(path)
    cfg, info = read_run(path)
    records = []
    log = path / "metrics.jsonl"
    if log.exists():
        for line in log.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line torn by a kill mid-write; the rest still plots
    retrieval = None
    rpath = path / "eval" / "retrieval.json"
    if rpath.exists():
        retrieval = json.loads(rpath.read_text())
    return RunInfo(role, path, cfg, info, records, retrieval)


def curve_series(records: list[dict[str, Any]]) -> tuple[list[Series], list[Series], list[Series]]:
    """(total loss vs step, loss components vs step, validation metrics vs epoch) from metrics.jsonl records."""
    skip = {"step", "epoch", "loss", "lr", "samples_per_s"}
    train = [r for r in records if "loss" in r and "step" in r]
    val = [r for r in records if any(k.startswith("val_") for k in r) and "epoch" in r]
    loss = [Series("loss", [r["step"] for r in train], [float(r["loss"]) for r in train])] if train else []
    comp_keys = sorted({k for r in train for k, v in r.items() if k not in skip and isinstance(v, int | float)})
    comps = [Series(k, [r["step"] for r in train if k in r], [float(r[k]) for r in train if k in r])
             for k in comp_keys]
    # val_alpha is the ridge's chosen regularisation, a setting rather than a score.
    val_keys = sorted({k for r in val for k, v in r.items() if k.startswith("val_") and k != "val_alpha"
                       and isinstance(v, int | float) and not isinstance(v, bool)})
    vals = [Series(k.removeprefix("val_"), [r["epoch"] for r in val if k in r], [float(r[k]) for r in val if k in r])
            for k in val_keys]
    return loss, comps, vals


# ----------------------------------------------------------------------------------------------------
# Embeddings for the UMAP and the retrieved-image row
# ----------------------------------------------------------------------------------------------------
@dataclass
class SplitEmbeddings:
    image_index: np.ndarray  # (N,) all test images, ascending
    targets: np.ndarray  # (N, F) CLIP-image targets, flattened
    backbone: np.ndarray  # (N, F)
    projector: np.ndarray | None  # (N, F) or None without a projector
    prior: np.ndarray | None  # (M, F) prior samples for the first M test images, or None
    prior_note: str = ""
    encoder: str = "CLIP image"


def test_embeddings(model, cfg, subject, device: str = "cpu", prior_samples: int = 100,
                    seed: int = 0) -> SplitEmbeddings:
    """Targets, backbone / projector outputs for the whole test split; prior samples for the first few."""
    import torch

    from mindeye.data.splits import load_eval_split
    from mindeye.encoders.targets import Targets, target_options
    from mindeye.runs import embed_voxels

    test = load_eval_split(subject, subject.image_indices("test"), cfg.data.test_mode, cfg.data.test_repetitions)
    targets = Targets(subject.path, cfg.targets.encoder, cfg.targets.weights,
                      options=target_options(cfg, cfg.targets.encoder)).get(test.image_index)
    backbone = embed_voxels(model, test.voxels, device, which="backbone")
    projector = embed_voxels(model, test.voxels, device, which="projector") if model.projector is not None else None
    prior, note = None, ""
    if getattr(model, "prior", None) is None:
        note = "this run has no diffusion prior, so there are no prior samples"
    elif prior_samples > 0:
        m = min(prior_samples, len(test))
        gen = torch.Generator(device=device).manual_seed(seed)
        with torch.no_grad():
            prior = model.prior.sample(backbone[:m].to(device), cond_scale=cfg.model.prior.guidance,
                                       timesteps=cfg.model.prior.sample_steps, generator=gen).float().cpu()
        note = (f"{m} prior samples (guidance {cfg.model.prior.guidance}, {cfg.model.prior.sample_steps} steps) "
                f"for the first {m} test images")

    def flat(x):
        return None if x is None else x.flatten(1).float().numpy()

    return SplitEmbeddings(test.image_index, flat(targets), flat(backbone), flat(projector), flat(prior), note,
                          cfg.targets.encoder)


def umap_points(emb: SplitEmbeddings, limit: int, seed: int = 0, cache_dir: str | os.PathLike | None = None
                ) -> tuple[list[tuple[str, np.ndarray]] | None, str]:
    """UMAP (cosine) of targets / backbone / projector / prior samples for the first `limit` test images.

    Returns ([(group label, (n, 2) points)], "") or (None, why there is no UMAP). ``cache_dir``: reuse a
    layout computed earlier for exactly these points and settings (keyed by their bytes), or store this
    one there -- `mindeye demo` computes it in its second process while the main one still works, since
    UMAP's first call spends ~30 s compiling (numba) on a CPU.
    """
    try:
        import umap
    except ImportError:
        return None, "UMAP unavailable: the umap-learn package is not installed (`pip install umap-learn`)."
    m = min(limit, len(emb.image_index))
    groups = [(f"targets ({emb.encoder})", emb.targets[:m]), ("backbone outputs", emb.backbone[:m])]
    if emb.projector is not None:
        groups.append(("projector outputs", emb.projector[:m]))
    if emb.prior is not None:
        groups.append(("prior samples", emb.prior[:m]))
    if any(g.shape[1] != groups[0][1].shape[1] for _, g in groups):
        shapes = ", ".join(f"{label} {g.shape[1]}" for label, g in groups)
        return None, f"UMAP skipped: the embeddings have different sizes ({shapes})."
    data = np.concatenate([g for _, g in groups]).astype(np.float32)
    settings = {"n_components": 2, "metric": "cosine", "n_neighbors": min(15, len(data) - 1),
                "random_state": seed, "init": "random" if len(data) < 20 else "spectral"}
    cached = None
    if cache_dir is not None:
        import hashlib

        key = hashlib.sha256(data.tobytes() + json.dumps([settings, data.shape, umap.__version__]).encode())
        cached = Path(cache_dir) / f"umap-{key.hexdigest()[:24]}.npy"
    if cached is not None and cached.is_file():
        xy = np.load(cached)
    else:
        import warnings

        with warnings.catch_warnings():  # umap warns that random_state disables parallelism
            warnings.simplefilter("ignore")
            xy = umap.UMAP(**settings).fit_transform(data)
        if cached is not None:
            from mindeye.utils.files import atomic_path

            cached.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cached) as tmp, open(tmp, "wb") as f:
                np.save(f, xy)
    out, start = [], 0
    for label, g in groups:
        out.append((label, xy[start:start + len(g)]))
        start += len(g)
    return out, ""


def png_data_uri(image: np.ndarray, max_size: int | None = None) -> str:
    """uint8 (H, W, 3) -> 'data:image/png;base64,...' (downscaled so its longer side <= max_size)."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if max_size and max(im.size) > max_size:
        scale = max_size / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def read_sessions(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Points of an accuracy-vs-sessions curve: a JSON list (or {"points": [...]}) of
    {"sessions": int >= 1, "method": str (optional), <Table-1 key>: value in [0, 1], <key>_std: ...}."""
    path = Path(path)
    if not path.is_file():
        raise MindEyeError(f"sessions file {path} not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MindEyeError(f"{path} is not valid JSON ({exc})") from None
    points = data.get("points") if isinstance(data, dict) else data
    keys = {key for key, _, _ in COLUMNS}
    if not isinstance(points, list) or not points:
        raise MindEyeError(f"{path}: expected a list of points like {{\"sessions\": 1, \"{RETRIEVAL[0].key}\": 0.4}}")
    for k, p in enumerate(points):
        if not isinstance(p, dict) or not isinstance(p.get("sessions"), int) or p["sessions"] < 1:
            raise MindEyeError(f"{path}: point {k} needs an integer 'sessions' >= 1")
        if not keys & set(p):
            raise MindEyeError(f"{path}: point {k} has no metric (one of {sorted(keys)})")
    return points


def read_bottleneck_curve(path: str | os.PathLike) -> dict[str, Any]:
    """A reconstruction bottleneck curve: `evaluate bottleneck-recon`'s OUT/curve.json (or a directory holding it)
    or `evaluate bottleneck-blurry`'s JSON: {"kind", "model": {metric: value}, "points": [{"k", metric: value}]}."""
    path = Path(path)
    if path.is_dir():
        path = path / "curve.json"
    data = read_json_file(path, f"bottleneck curve {path} not found; make it with `mindeye evaluate bottleneck-recon` "
                                "(OUT/curve.json) or `mindeye evaluate bottleneck-blurry --out JSON`")
    points = data.get("points") if isinstance(data, dict) else None
    if (not isinstance(points, list) or not points or not isinstance(data.get("model"), dict)
            or not all(isinstance(q, dict) and isinstance(q.get("k"), int) for q in points)):
        raise MindEyeError(f"{path} is not a bottleneck curve (expected 'model' and 'points' with an integer 'k' "
                           "each, as `mindeye evaluate bottleneck-recon` / `bottleneck-blurry` write)")
    return {**data, "path": str(path)}


def grid_images(subject, shown: np.ndarray, sources: list[tuple[str, dict[int, Any]]]) -> list[tuple[str, list]]:
    """(row label, [uint8 image or None per shown column])."""
    out = []
    for label, source in sources:
        cells = []
        for i in shown:
            item = source.get(int(i))
            cells.append(None if item is None else load_pngs([item])[0] if isinstance(item, Path) else np.asarray(item))
        out.append((label, cells))
    return out


def write_strips(rows: list[tuple[str, list]], folder: Path) -> list[Path]:
    """Each image row as one PNG strip at full resolution (missing cells white), for a paper figure."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for label, cells in rows:
        have = [c for c in cells if c is not None]
        if not have:
            continue
        size = max(max(c.shape[:2]) for c in have)
        tiles = [np.full((size, size, 3), 255, np.uint8) if c is None else
                 np.asarray(Image.fromarray(c).resize((size, size), Image.BICUBIC)) for c in cells]
        stem = re.sub(r"[^a-z0-9]+", "_", label.lower().split(" (")[0]).strip("_")
        path = folder / f"{stem}.png"
        Image.fromarray(np.concatenate(tiles, axis=1)).save(path)
        paths.append(path)
    return paths
