"""Reconstruction metrics for reconstruction output directories (`mindeye evaluate recon`).

A reconstruction directory is what `mindeye reconstruct` or `mindeye reconstruct-blurry` writes:
``DIR/index.json`` (kind, config with the generator / run / store, and per store image index the PNG
file) plus the PNGs. Here each PNG is paired with its ground-truth image from the subject store and
the eight metrics of paper Table 1 are computed with :func:`mindeye.evaluation.metrics.evaluate_reconstructions`.
Metrics whose network weights are missing are kept in the result as ``{"unavailable": reason}``.

Result of :func:`evaluate_recon_dirs` (also the metrics.json format)::

    {"mindeye_version": ..., "metrics_order": [...],
     "rows": [{"name", "recons", "kind", "generator", "generator_weights", "store", "high_run",
               "n_images", "image_index": [...], "metrics": {metric: {"value"} | {"unavailable"}},
               "retrieval": {"brain_to_image", "image_to_brain", ...} (when given),
               "ood": {...} (on a category-disjoint store view: recon_ood)}, ...],
     "mean": {metric: value, ...} (with several rows; only metrics every row has)}
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mindeye import __version__
from mindeye.errors import MindEyeError
from mindeye.evaluation.feature_nets import DEFAULT_CLIP, NET_METRICS, NET_NAMES, FeatureNets, Unavailable
from mindeye.evaluation.metrics import METRICS, evaluate_reconstructions
from mindeye.inference.recon_dir import INDEX_NAME, entry_path, read_index
from mindeye.metrics.retrieval import DIRECTIONS
from mindeye.utils.files import write_json_atomic

PIXEL_METRICS = ("pixcorr", "ssim")  # need no network weights
RETRIEVAL_KEYS = DIRECTIONS


@dataclass
class ReconDir:
    """A reconstruction output directory: its index and the PNG of each store image index (sorted)."""

    path: Path
    index: dict[str, Any]
    image_index: np.ndarray  # (N,) store image indices, ascending
    files: list[Path]  # PNG per image_index entry

    @property
    def kind(self) -> str:
        return str(self.index.get("kind", "unknown"))

    @property
    def config(self) -> dict[str, Any]:
        return self.index.get("config") or {}

    @property
    def generator(self) -> str | None:
        """What made the images: the generator for reconstructions, the decoder for blurry images."""
        cfg = self.config
        if self.kind == "blurry":
            return f"{cfg['decoder']} decoder" if cfg.get("decoder") else None
        return cfg.get("generator")

    def float_files(self) -> list[Path] | None:
        """The float copy of every image (``floats/IIIII.npy``, written since issue 25), or None when any
        is missing (then the metrics read the PNGs)."""
        recs = self.index["images"]
        files = [recs[str(int(i))].get("float_file") for i in self.image_index]
        if not all(files) or not all((self.path / f).is_file() for f in files):
            return None
        return [self.path / f for f in files]

    def load_images(self) -> np.ndarray | torch.Tensor:
        """What the metrics score: float (N, 3, H, W) in [0, 1] from the float copies (the authors' metrics
        run on float tensors; a blurry image's out-of-range values are clamped), else the uint8 PNGs."""
        floats = self.float_files()
        if floats is None:
            return load_pngs(self.files)
        return torch.stack([torch.from_numpy(np.load(f)).float() for f in floats]).clamp(0, 1)

    def image_ids(self) -> list[str | None]:
        recs = self.index["images"]
        return [recs[str(int(i))].get("image_id") for i in self.image_index]

    def store_path(self) -> Path | None:
        """The subject store the images were made from, if the index (or its run) says."""
        cfg = self.config
        if cfg.get("store"):
            return Path(cfg["store"])
        run = cfg.get("run") or cfg.get("high_run")
        if run and (Path(run) / "run.json").exists():
            from mindeye.runs import read_run_json

            store = read_run_json(run).get("store")
            return Path(store) if store else None
        return None


def read_recon_dir(path: str | os.PathLike) -> ReconDir:
    """Read DIR/index.json and check that every PNG it lists exists."""
    path = Path(path)
    if not path.is_dir():
        raise MindEyeError(f"reconstruction directory {path} does not exist; make it with `mindeye reconstruct "
                           "--run RUN --out DIR` (or `mindeye reconstruct-blurry`) or fix the path")
    index_path = path / INDEX_NAME
    index = read_index(path, f"{path} holds no reconstructions (no {INDEX_NAME}); make them with `mindeye "
                             "reconstruct --run RUN --out DIR` (or `mindeye reconstruct-blurry`)")
    images = index.get("images") if isinstance(index, dict) else None
    if not isinstance(images, dict):
        raise MindEyeError(f"{index_path} has no 'images' table; it was not written by `mindeye reconstruct`")
    if not images:
        raise MindEyeError(f"{path} is empty: its {INDEX_NAME} lists no images; run (or resume) the "
                           "reconstruction that writes into it")
    try:
        order = sorted(images, key=int)
        recs = [images[k] for k in order]
        image_index = np.array([int(r.get("image_index", k)) for k, r in zip(order, recs)], dtype=np.int64)
        files = [entry_path(path, r["file"]) for r in recs]
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise MindEyeError(f"{index_path} is malformed ({type(exc).__name__}: {exc}); re-run the reconstruction") from None
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise MindEyeError(f"{path}: {len(missing)} PNG file(s) listed in {INDEX_NAME} are missing (e.g. "
                           f"{missing[0]}); re-run the same reconstruct command to resume and rewrite them")
    return ReconDir(path, index, image_index, files)


def load_pngs(files: Sequence[Path]) -> np.ndarray:
    """uint8 (N, H, W, 3); all files must have the same size."""
    from PIL import Image

    arrays = []
    for f in files:
        try:
            with Image.open(f) as im:
                arrays.append(np.asarray(im.convert("RGB")))
        except OSError as exc:
            raise MindEyeError(f"cannot read {f} as an image ({exc}); re-create it") from None
    sizes: dict[tuple[int, ...], list[Path]] = {}
    for f, a in zip(files, arrays):
        sizes.setdefault(a.shape[:2], []).append(f)
    if len(sizes) > 1:
        desc = "; ".join(f"{h}x{w}: {len(fs)} file(s), e.g. {fs[0]}" for (h, w), fs in sizes.items())
        raise MindEyeError(f"the reconstructions have different sizes ({desc}); all images of one directory "
                           "must have one size: regenerate the odd ones with the same settings")
    return np.stack(arrays)


def ground_truth(store, recon: ReconDir) -> np.ndarray:
    """The store images (uint8 (N, S, S, 3)) the reconstructions belong to, checked against the index."""
    bad = recon.image_index[(recon.image_index < 0) | (recon.image_index >= store.n_images)]
    if len(bad):
        raise MindEyeError(f"{recon.path}/{INDEX_NAME} refers to image index {int(bad[0])} but {store.path} has "
                           f"only {store.n_images} images; the reconstructions were made from another store: "
                           "pass that store with --data")
    for i, rec_id in zip(recon.image_index.tolist(), recon.image_ids()):
        if rec_id is not None and store.image_ids[i] != rec_id:
            raise MindEyeError(f"{recon.path}: image {i} is '{rec_id}' in the reconstruction index but "
                               f"'{store.image_ids[i]}' in {store.path}; the reconstructions were made from "
                               "another store: pass that store with --data")
    return np.asarray(store.images[recon.image_index])


def pixel_only_nets() -> FeatureNets:
    """Every feature network marked unavailable: only PixCorr and SSIM are computed."""
    reason = ("skipped (--pixel-only): this metric needs pretrained network weights; run `mindeye evaluate "
              "recon` without --pixel-only, with the weights in --weights-dir (see docs/evaluation.md)")
    return FeatureNets({name: Unavailable(reason) for name in NET_NAMES})


def load_feature_nets(weights_dir: str | os.PathLike | None = None, clip: str | None = None,
                      device: str = "cpu", metrics: Sequence[str] = METRICS) -> FeatureNets:
    """FeatureNets for the requested metrics only (missing weights become Unavailable, never random)."""
    names = [net for net, provides in NET_METRICS.items() if any(m in metrics for m in provides)]
    if not names:
        return FeatureNets({})
    return FeatureNets.load(weights_dir, clip or DEFAULT_CLIP, device=device, names=names)


def read_json_file(path: Path, missing: str) -> Any:
    """Parsed JSON of ``path``; a missing file or invalid JSON is a MindEyeError (``missing`` says the fix)."""
    if not path.is_file():
        raise MindEyeError(missing)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MindEyeError(f"{path} is not valid JSON ({exc})") from None


def read_retrieval(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Retrieval results from RUN/eval/retrieval.json (one dict) or `evaluate retrieval --out` (a list)."""
    path = Path(path)
    data = read_json_file(path, f"retrieval results {path} not found; write them with `mindeye evaluate retrieval "
                            "--run RUN` (RUN/eval/retrieval.json) or its --out option")
    items = data if isinstance(data, list) else [data]
    for r in items:
        if not isinstance(r, dict) or not all(k in r for k in RETRIEVAL_KEYS):
            raise MindEyeError(f"{path} is not a retrieval result (needs {list(RETRIEVAL_KEYS)}); use the JSON "
                               "written by `mindeye evaluate retrieval`")
    return items


def _retrieval_summary(r: dict[str, Any]) -> dict[str, Any]:
    keep = ("run", "name", *DIRECTIONS, *(f"{d}_ci95" for d in DIRECTIONS), "pool", "draws", "ci", "draw_mode",
            "n_test", "test_mode", "full_test_set")
    return {k: r[k] for k in keep if k in r}


def evaluate_recon_dirs(
    recons: Sequence[str | os.PathLike],
    names: Sequence[str] | None = None,
    store: str | os.PathLike | None = None,
    nets: FeatureNets | None = None,
    weights_dir: str | os.PathLike | None = None,
    clip: str | None = None,
    device: str = "cpu",
    metrics: Sequence[str] = METRICS,
    pixel_only: bool = False,
    retrieval: str | os.PathLike | list[dict[str, Any]] | None = None,
    batch_size: int = 32,
    progress: bool = True,
    mean_row: bool = True,
    first_resize: str = "reference",
    offline_net: bool = False,
    net_resize: str = "reference",
    blend_blurry: str | os.PathLike | None = None,
    blend_weight: float = 0.25,
    floors: bool = False,
    ceilings: Sequence[str | os.PathLike | None] | None = None,
    floor_seeds: int = 3,
    ood_bootstrap: int = 1000,
) -> dict[str, Any]:
    """Table 1 metrics for one or more reconstruction directories (one row each, plus the mean).

    blend_blurry: a blurry (`reconstruct-blurry`) directory; every reconstruction row (not blurry rows) is
        scored as ``(1 - blend_weight) * recon + blend_weight * blurry``, both resized to 256 first: MindEye2's
        "enhanced" evaluation (``src/final_evaluations.ipynb``: ``all_recons*.75 + all_blurryrecons*.25``).

    Every row keeps its per-image values (``row["per_image"]``, for `mindeye compare`). ``floors``: also
    each row's floors (chance, mean training image, shuffled brain over 3 seeds; mindeye.evaluation.floors)
    into ``row["floors"]`` (``floor_seeds`` derangements for the shuffled brain); ``ceilings``: per --recons, a directory of the same images made from the true
    images' own targets (`mindeye reconstruct --ceiling`, `reconstruct-blurry --ceiling`), or None.

    first_resize: the resize to 256, ``reference`` (no antialias, as the authors) or ``antialias``.
    net_resize: the feature networks' own downscales (CLIP/SwAV 224, EfficientNet 255), the same choice.

    mean_row: add the mean over rows (for rows that are subjects of one method, as in paper Table 1);
        turn it off when the rows are different methods.

    store: the subject store (default: the one named in each directory's index / run).
    nets: pre-loaded feature networks (else loaded once from weights_dir / clip; pixel_only skips them).
    retrieval: retrieval JSON path or results; one result applies to every non-blurry row, a list as
        long as ``recons`` pairs up with them.
    offline_net: also score each row with the offline substitute network (EfficientNet-Lite0, extra
        mindeye[offline]) into ``row["offline_metrics"]``, apart from the paper's metrics.
    ood_bootstrap: on a category-disjoint store view, each row gets ``row["ood"]`` (:func:`recon_ood`): in- vs
        out-of-distribution means per metric and the gap's bootstrap CI with this many resamples.
    """
    from mindeye.data.store import SubjectStore

    if not recons:
        raise MindEyeError("no reconstruction directory given; pass --recons DIR")
    if names is not None and len(names) not in (0, len(recons)):
        raise MindEyeError(f"got {len(names)} --name for {len(recons)} --recons; give one name per --recons "
                           "(in the same order) or none")
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise MindEyeError(f"unknown metric(s) {sorted(unknown)}; choose from {list(METRICS)}")
    dirs = [read_recon_dir(p) for p in recons]  # check them all before any slow work
    ceiling_dirs = [None if c is None else read_recon_dir(c) for c in (ceilings or [])]
    if ceiling_dirs and len(ceiling_dirs) != len(dirs):
        raise MindEyeError(f"got {len(ceiling_dirs)} ceiling directories for {len(dirs)} --recons; give one per "
                           "--recons (in the same order)")
    for recon, ceil in zip(dirs, ceiling_dirs):
        if ceil is not None and not set(recon.image_index.tolist()) <= set(ceil.image_index.tolist()):
            raise MindEyeError(f"the ceiling {ceil.path} lacks images of {recon.path}; make it for the same test "
                               "images (the same --limit)")
    retrievals: list[dict[str, Any] | None] = [None] * len(dirs)
    if retrieval is not None:
        items = read_retrieval(retrieval) if isinstance(retrieval, str | os.PathLike) else list(retrieval)
        if len(items) == 1:  # one run's retrieval: every reconstruction row, not blurry ones (no retrieval)
            retrievals = [None if d.kind == "blurry" else items[0] for d in dirs]
        elif len(items) == len(dirs):
            retrievals = list(items)
        else:
            raise MindEyeError(f"the retrieval JSON holds {len(items)} results for {len(dirs)} --recons; give "
                               "one result (for all rows) or one per --recons")
    if not 0.0 <= blend_weight <= 1.0:
        raise MindEyeError(f"--blend-weight must be between 0 and 1, got {blend_weight}")
    blurry_dir = read_recon_dir(blend_blurry) if blend_blurry is not None else None
    if nets is None:
        nets = pixel_only_nets() if pixel_only else load_feature_nets(weights_dir, clip, device, metrics)

    rows = []
    stores: dict[Path, SubjectStore] = {}
    mean_images: dict[Path, torch.Tensor] = {}
    cache: dict[tuple, Any] = {}
    for k, recon in enumerate(dirs):
        store_path = Path(store) if store is not None else recon.store_path()
        if store_path is None:
            raise MindEyeError(f"{recon.path}/{INDEX_NAME} does not say which subject store it was made from; "
                               "pass it with --data STORE")
        if store_path not in stores:
            stores[store_path] = SubjectStore(store_path)
        subject = stores[store_path]
        reals = ground_truth(subject, recon)
        fakes = recon.load_images()
        blended = blurry_dir is not None and recon.kind != "blurry"
        if blended:
            fakes = blend_with_blurry(fakes, recon, blurry_dir, blend_weight, first_resize)
        if len(reals) < 2:
            raise MindEyeError(f"{recon.path} holds {len(reals)} image; the metrics (two-way identification) "
                               "need at least 2")
        kwargs = dict(batch_size=batch_size, device=device, first_resize=first_resize, net_resize=net_resize)
        per_image: dict[str, list[float]] = {}
        values = evaluate_reconstructions(reals, fakes, nets, progress=progress, metrics=metrics,
                                          per_image=per_image, **kwargs)
        row: dict[str, Any] = {
            "name": names[k] if names else recon.path.name,
            "recons": str(recon.path.resolve()),
            "kind": recon.kind,
            "generator": recon.generator,
            "generator_weights": recon.config.get("generator_weights"),
            "store": str(subject.path.resolve()),
            "high_run": recon.config.get("high_run") or recon.config.get("run"),
            "n_images": int(len(reals)),
            "image_size": {"real": int(reals.shape[1]), "recon": int(fakes.shape[-1] if isinstance(fakes, torch.Tensor) else fakes.shape[1])},
            "image_index": recon.image_index.tolist(),
            "metrics": values,
            "per_image": {"image_index": recon.image_index.tolist(), **per_image},
        }
        if blended:
            row["blend"] = {"blurry": str(blurry_dir.path.resolve()), "weight": blend_weight}
        pairs = None
        keys = [m for m, v in values.items() if "value" in v]
        if (floors or ceiling_dirs) and keys:
            from mindeye.evaluation import floors as fl

            set_key = (str(store_path), tuple(recon.image_index.tolist()), tuple(keys))
            if set_key not in cache:  # the real images prepared once per image set
                cache[set_key] = fl.Pairings(reals, nets, keys, **kwargs)
            pairs = cache[set_key]
        ceiling_values = None
        ceil_images = None
        if ceiling_dirs and ceiling_dirs[k] is not None:
            ceil = ceiling_dirs[k]
            images_key = ("ceiling images", str(ceil.path.resolve()), tuple(recon.image_index.tolist()))
            if images_key not in cache:  # one ceiling serves several rows (the blurry and the ridge blurry rows)
                pos = {int(i): j for j, i in enumerate(ceil.image_index.tolist())}
                cache[images_key] = ceil.load_images()[[pos[int(i)] for i in recon.image_index]]
            ceil_images = cache[images_key]
        if ceil_images is not None and pairs is not None:
            key = ("ceiling", str(ceil.path.resolve()), set_key)
            if key not in cache:
                cache[key] = {m: {"value": v} for m, v in pairs.values(pairs.prepare(ceil_images)).items()}
            ceiling_values = cache[key]
            row["ceiling"] = {"recons": str(ceil.path.resolve()), "what": ceil.config.get("ceiling", ceil.kind),
                              "metrics": ceiling_values}
        if floors and store_path not in mean_images:
            from mindeye.evaluation import floors as fl

            mean_images[store_path] = fl.mean_train_image(subject)
        if floors and pairs is not None:
            key = ("floors", set_key)
            if key not in cache:  # chance and the mean image: once per image set
                cache[key] = (fl.recon_chance(pairs), fl.recon_mean_image(pairs, mean_images[store_path]))
            chance, mean_values = cache[key]
            row["floors"] = fl.recon_floors(pairs, fakes, values, chance, mean_values, ceiling_values,
                                            seeds=list(range(floor_seeds)))
        if offline_net:
            from mindeye.evaluation.offline_net import offline_metrics

            spec = None
            if floors or ceil_images is not None:  # the same floors and ceiling, on the offline network's features
                spec = {"mean_image": mean_images.get(store_path) if floors else None, "ceiling": ceil_images,
                        "seeds": list(range(floor_seeds))}
            row["offline_metrics"] = offline_metrics(reals, fakes, device, batch_size, progress, floors=spec)
            if "floors" in row["offline_metrics"]:
                row["offline_floors"] = row["offline_metrics"].pop("floors")
        if retrievals[k] is not None:
            row["retrieval"] = _retrieval_summary(retrievals[k])
        groups = subject.test_groups(recon.image_index)
        if groups is not None and all(m.any() for m in groups.values()) and per_image:
            row["ood"] = recon_ood(per_image, groups, subject.view, n_boot=ood_bootstrap)
            trained_on = _trained_on(recon)
            if trained_on and Path(trained_on).resolve() != subject.path.resolve():
                row["ood"]["warning"] = (f"the images were made by a run trained on {trained_on}, not on this view "
                                         f"{subject.path}: its 'out-of-distribution' images may have been training "
                                         "images; train on the view for a real in- vs out-of-distribution comparison")
        rows.append(row)

    result: dict[str, Any] = {"mindeye_version": __version__, "metrics_order": list(metrics),
                              "first_resize": first_resize, "net_resize": net_resize, "rows": rows}
    if mean_row and len(rows) > 1:
        keys = [*metrics, *(RETRIEVAL_KEYS if all("retrieval" in r for r in rows) else ())]
        mean = {}
        for m in keys:
            vals = [table_row(r).get(m) for r in rows]
            nums = [v["value"] for v in vals if isinstance(v, dict) and "value" in v]
            if len(nums) == len(rows):
                mean[m] = float(np.mean(nums))
        result["mean"] = mean
    return result


OOD_TWO_WAY_NOTE = ("two-way identification per image is the share of ALL the row's other images (ID and OOD "
                    "together) that its own image beats: both groups face the same distractors, as the same "
                    "candidate pools in retrieval's in- vs out-of-distribution comparison")


def recon_ood(per_image: dict[str, list[float]], groups: dict[str, np.ndarray], view: dict[str, Any] | None = None,
              n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """In- vs out-of-distribution reconstruction metrics of a category-disjoint view's test images.

    ``per_image``: {metric: per-image values} (the row's ``per_image``; an ``image_index`` entry is skipped);
    ``groups``: {"in-distribution": mask, "out-of-distribution": mask} over those images
    (SubjectStore.test_groups). Per metric: both groups' means, ``gap`` = ID mean - OOD mean, its percentile
    bootstrap 95% CI (each group's images resampled apart, ``n_boot`` times, the same seeded draws for every
    metric), whether lower is better (Eff, SwAV), which group scores ``better`` and whether the CI excludes 0.
    """
    from mindeye.evaluation.floors import LOWER_IS_BETTER

    ida = np.asarray(groups["in-distribution"], dtype=bool)
    ood = np.asarray(groups["out-of-distribution"], dtype=bool)
    view = view or {}
    out: dict[str, Any] = {"view": view.get("description"), "held_out_clusters": view.get("held_out_clusters"),
                           "n": {"in-distribution": int(ida.sum()), "out-of-distribution": int(ood.sum())},
                           "n_boot": int(n_boot), "seed": int(seed), "two_way": OOD_TWO_WAY_NOTE, "metrics": {}}
    for m, vals in per_image.items():
        if m == "image_index":
            continue
        v = np.asarray(vals, dtype=np.float64)
        if len(v) != len(ida):
            raise MindEyeError(f"metric {m} has {len(v)} per-image values for {len(ida)} images")
        a, b = v[ida], v[ood]
        gap = float(a.mean() - b.mean())
        ci: list[float] | None = None
        if len(a) > 1 and len(b) > 1 and n_boot > 0:
            rng = np.random.default_rng(seed)
            diffs = (a[rng.integers(0, len(a), (n_boot, len(a)))].mean(1)
                     - b[rng.integers(0, len(b), (n_boot, len(b)))].mean(1))
            ci = [float(q) for q in np.quantile(diffs, [0.025, 0.975])]
        lower = m in LOWER_IS_BETTER
        advantage = -gap if lower else gap  # > 0: the in-distribution images score better
        out["metrics"][m] = {
            "in-distribution": float(a.mean()), "out-of-distribution": float(b.mean()), "gap": gap,
            "gap_ci95_bootstrap": ci, "lower_is_better": lower,
            "better": "in-distribution" if advantage > 0 else "out-of-distribution" if advantage < 0 else "neither",
            "ci_excludes_zero": None if ci is None else bool(ci[0] > 0 or ci[1] < 0)}
    return out


def _trained_on(recon: ReconDir) -> str | None:
    """The store the run that made ``recon`` was trained on (its run.json), if known."""
    run = recon.config.get("high_run") or recon.config.get("run")
    if run and (Path(run) / "run.json").exists():
        from mindeye.runs import read_run_json

        try:
            return read_run_json(run).get("store")
        except MindEyeError:
            return None
    return None


def ood_cells(ood: dict[str, Any]) -> list[dict[str, str]]:
    """Printable cells of a row's ``ood`` block, one per metric in Table 1 order: label, ID, OOD, gap [CI],
    better (two-way identification in percent and points, the rest with 3 decimals)."""
    from mindeye.evaluation.tables import COLUMNS

    cells = []
    for key, label, percent in COLUMNS:
        c = (ood.get("metrics") or {}).get(key)
        if c is None:
            continue
        unit = "%" if percent else ""

        def num(x: float, sign: str = "", percent: bool = percent) -> str:
            return f"{100 * x:{sign}.1f}" if percent else f"{x:{sign}.3f}"

        ci = c.get("gap_ci95_bootstrap")
        gap = num(c["gap"], "+") + (f" [{num(ci[0], '+')}, {num(ci[1], '+')}]" if ci else " [n/a]")
        better = {"in-distribution": "ID", "out-of-distribution": "OOD"}.get(c["better"], "neither")
        if c.get("ci_excludes_zero") is False:
            better += " (CI includes 0)"
        cells.append({"metric": label, "id": num(c["in-distribution"]) + unit, "ood": num(c["out-of-distribution"]) + unit,
                      "gap": gap + (" points" if percent else ""), "better": better})
    return cells


def ood_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The "In- vs out-of-distribution" block of metrics.md for the rows that have ``ood``."""
    from mindeye.evaluation.tables import md_cell

    rows = [r for r in rows if r.get("ood")]
    first = rows[0]["ood"]
    lines = ["### In- vs out-of-distribution", "",
             f"{first.get('view') or 'category-disjoint store view'}; held out of training: "
             f"{', '.join(map(str, first.get('held_out_clusters') or [])) or '?'}. ID: test images of trained "
             "clusters; OOD: images of the held-out clusters. Gap = ID - OOD with a bootstrap 95% CI over images "
             f"({first.get('n_boot')} resamples); for Eff and SwAV lower is better, so a negative gap favours ID. "
             f"Note: {first.get('two_way')}.", "",
             "| Method | metric | ID | OOD | ID − OOD [95% CI] | better |", "|---|---|:-:|:-:|:-:|:-:|"]
    for r in rows:
        n = r["ood"]["n"]
        name = md_cell(f"{r.get('name', '?')} (ID n={n['in-distribution']}, OOD n={n['out-of-distribution']})")
        lines += [f"| {name} | {c['metric']} | {c['id']} | {c['ood']} | {c['gap']} | {c['better']} |"
                  for c in ood_cells(r["ood"])]
    lines += [f"\nWARNING ({r.get('name')}): {r['ood']['warning']}" for r in rows if r["ood"].get("warning")]
    return "\n".join(lines)


def blend_with_blurry(fakes: np.ndarray | torch.Tensor, recon: ReconDir, blurry: ReconDir, weight: float,
                      first_resize: str = "reference", size: int = 256) -> torch.Tensor:
    """``(1 - weight) * recon + weight * blurry`` per image index, both first resized to ``size`` (bilinear;
    antialiased only with ``first_resize="antialias"``), as ``src/final_evaluations.ipynb`` (resize to 256,
    then ``*.75 + *.25``)."""
    import torch.nn.functional as F

    from mindeye.utils.images import as_float_images

    pos = {int(i): k for k, i in enumerate(blurry.image_index)}
    missing = [int(i) for i in recon.image_index if int(i) not in pos]
    if missing:
        raise MindEyeError(f"the blurry directory {blurry.path} lacks {len(missing)} image(s) of {recon.path} (e.g. "
                           f"store image {missing[0]}); make its blurry images for the same test images")

    def at_size(x: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = as_float_images(x)
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=first_resize == "antialias")
        return x

    b = at_size(blurry.load_images())[[pos[int(i)] for i in recon.image_index]]
    return (1.0 - weight) * at_size(fakes) + weight * b


def table_row(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics.json row -> a `tables.markdown_table` row (metric cells + retrieval columns)."""
    out: dict[str, Any] = {"name": row.get("name", "?"), **row.get("metrics", {})}
    ret = row.get("retrieval") or {}
    for k in RETRIEVAL_KEYS:
        if k in ret:
            out[k] = {"value": float(ret[k])}
    return out


OFFLINE_FLOORS_LABEL = "offline EfficientNet-Lite0, not a paper metric"


def floor_blocks(rows: Sequence[dict[str, Any]], suffix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(title, floors block) of every metrics.json row that has them: the paper metrics', then the offline
    network's (``row["offline_floors"]``)."""
    blocks = [(f"{r.get('name')}{suffix}", r["floors"]) for r in rows if r.get("floors")]
    return blocks + [(f"{r.get('name')}{suffix} ({OFFLINE_FLOORS_LABEL})", r["offline_floors"]) for r in rows
                     if r.get("offline_floors")]


def metrics_markdown(result: dict[str, Any], title: str | None = None) -> str:
    """Paper-Table-1 Markdown table of an :func:`evaluate_recon_dirs` result (mean row with several rows)."""
    from mindeye.evaluation.tables import markdown_table

    rows = [table_row(r) for r in result["rows"]]
    text = markdown_table(rows, title=title, mean_row="mean" in result)
    lines = ["", "Images: " + "; ".join(
        f"{r['name']}: {r['n_images']} from {r['recons']} (made by {r.get('generator') or 'unknown'})"
        for r in result["rows"])]
    if any(r.get("offline_metrics") for r in result["rows"]):
        from mindeye.evaluation.offline_net import offline_markdown

        lines += ["", offline_markdown(result["rows"])]
    blocks = floor_blocks(result["rows"])
    if blocks:
        from mindeye.evaluation.floors import floors_markdown

        lines += ["", floors_markdown(blocks)]
    if any(r.get("ood") for r in result["rows"]):
        lines += ["", ood_markdown(result["rows"])]
    return text + "\n".join(lines) + "\n"


def write_metrics(result: dict[str, Any], out: str | os.PathLike, title: str | None = None) -> tuple[Path, Path]:
    """Write metrics.json and the Markdown table next to it (same name, .md)."""
    out = Path(out)
    if out.is_dir():
        raise MindEyeError(f"--out {out} is a directory; give the metrics file to write, e.g. {out / 'metrics.json'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result)
    md = out.with_suffix(".md")
    md.write_text(metrics_markdown(result, title))
    return out, md


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """A metrics.json written by :func:`write_metrics`."""
    path = Path(path)
    data = read_json_file(path, f"metrics file {path} not found; write it with `mindeye evaluate recon --recons DIR "
                            "--out metrics.json`")
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise MindEyeError(f"{path} is not a reconstruction metrics file (no 'rows'); write it with "
                           "`mindeye evaluate recon`")
    return data
