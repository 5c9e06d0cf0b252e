"""Store views: other splits of a subject store, without copying its voxels (docs/subject-store.md).

A view is a small directory::

    VIEW/
      meta.json      format_version, "view_of": the parent store (absolute path), "view": how it was made
      trials.csv     the parent's trials, same rows and order, with this view's split column
      images.csv     the parent's images, with this view's split column
      clusters.csv   (category-disjoint views) image_index, image_id, cluster, held_out

:class:`mindeye.data.store.SubjectStore` opens a view like a store: its voxels, images and target caches
are the parent's (memory-mapped from there), its splits are the view's. Everything that accepts a store
path (train, evaluate, embed, reconstruct, report, info) accepts a view path.

The one view written here is the **category-disjoint split** (Shirakawa et al., "Spurious reconstruction
from brain activity", 2024): images are grouped into clusters -- by a category label where the store has
one (a simulated store's main-object category) or by k-means on their target embeddings -- and whole
clusters are held out of training. Every image of a held-out cluster becomes a test image
(out-of-distribution, OOD); the parent's test images of the other clusters stay test images
(in-distribution, ID). A model that only "reconstructs" the categories it was trained on scores well on
ID and poorly on OOD.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from mindeye import __version__
from mindeye.data.store import FORMAT_VERSION, SPLITS, SubjectStore, check_output_dir, file_sha256
from mindeye.errors import MindEyeError
from mindeye.utils.files import replace_dir


def kmeans(features: np.ndarray, k: int, seed: int = 0, iters: int = 100) -> np.ndarray:
    """Spherical k-means (cosine) with k-means++ seeding: a cluster label (0..k-1) per row of ``features``.

    Deterministic for a seed. Rows are L2-normalised first (targets are compared by cosine everywhere).
    """
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    if not 2 <= k <= len(x):
        raise MindEyeError(f"--clusters must be between 2 and the number of images ({len(x)}), got {k}")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):  # k-means++: next centre with probability ~ squared distance to the nearest one
        d = np.maximum(1.0 - np.max(x @ np.stack(centres).T, axis=1), 0.0) ** 2
        centres.append(x[rng.choice(len(x), p=d / d.sum())] if d.sum() > 0 else x[rng.integers(len(x))])
    c = np.stack(centres)
    labels = np.full(len(x), -1)
    for _ in range(iters):
        new = np.argmax(x @ c.T, axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                m = members.sum(0)
                c[j] = m / max(np.linalg.norm(m), 1e-12)
            else:  # an empty cluster restarts at the point farthest from its centre
                c[j] = x[np.argmin(np.max(x @ c.T, axis=1))]
    return labels


def scene_categories(store: SubjectStore) -> np.ndarray | None:
    """Main-object category name per image of a simulated store (its attributes.json), else None."""
    path = store.data_path / "attributes.json"
    if not path.is_file():
        return None
    scenes = json.loads(path.read_text())
    if len(scenes) != store.n_images:
        return None
    return np.array([max(s["objects"], key=lambda o: o["size"])["category"] for s in scenes])


def disjoint_splits(split: np.ndarray, labels: np.ndarray, holdout: float, seed: int = 0,
                    held_out: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """New per-image split and the held-out cluster names.

    split: (n_images,) the parent's split per image ("unused" for images in no split); labels: (n_images,)
    cluster name per image. ``round(holdout * clusters)`` clusters (at least one), chosen at random with
    ``seed`` unless ``held_out`` names them, go wholly to test; the other images keep their split.
    """
    split = np.asarray(split).astype(object)
    labels = np.asarray(labels).astype(str)
    used = split != "unused"
    names = sorted(set(labels[used].tolist()))
    if len(names) < 2:
        raise MindEyeError(f"the images fall in {len(names)} cluster; a category-disjoint split needs at least 2")
    if held_out is None:
        if not 0 < holdout < 1:
            raise MindEyeError(f"--holdout must be a fraction between 0 and 1 (of the clusters), got {holdout}")
        n_held = min(len(names) - 1, max(1, round(holdout * len(names))))
        order = np.random.default_rng(seed).permutation(len(names))
        held_out = sorted(names[i] for i in order[:n_held])
    else:
        unknown = sorted(set(held_out) - set(names))
        if unknown:
            raise MindEyeError(f"--hold-out names unknown cluster(s) {unknown}; the clusters are {names}")
        held_out = sorted(set(held_out))
    ood = used & np.isin(labels, held_out)
    new = np.where(ood, "test", split)
    if not (used & ~ood & (split == "test")).any():
        raise MindEyeError("no in-distribution test image is left (every test image is in a held-out cluster); "
                           "hold out fewer clusters (--holdout) or use more clusters (--clusters)")
    if not (new == "train").any():
        raise MindEyeError("no training image is left; hold out fewer clusters (--holdout)")
    return new.astype(str), held_out


def write_view(store: SubjectStore, out: str | Path, image_split: np.ndarray, view: dict[str, Any],
               clusters: np.ndarray | None = None, overwrite: bool = False) -> Path:
    """Write a view of ``store`` whose split of image i is ``image_split[i]`` (atomically, as a store)."""
    if store.view is not None:
        raise MindEyeError(f"{store.path} is itself a view; write the new view from the store it is a view of "
                           f"({store.data_path})")
    out = Path(out)
    check_output_dir(out, overwrite)
    image_split = np.asarray(image_split).astype(str)
    bad = sorted(set(image_split.tolist()) - set(SPLITS) - {"unused"})
    if len(image_split) != store.n_images or bad:
        raise MindEyeError(f"a view needs one split per image ({store.n_images}) from {list(SPLITS)}; got "
                           f"{len(image_split)} with {bad or 'valid names'}")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t = store.trials
    with open(tmp / "trials.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("trial", "image_index", "image_id", "session", "repetition", "split"))
        for i in range(len(t)):
            idx = int(t.image_index[i])
            w.writerow([i, idx, store.image_ids[idx], int(t.session[i]), int(t.repetition[i]), image_split[idx]])
    shown = np.zeros(store.n_images, dtype=bool)
    shown[t.image_index] = True
    with open(tmp / "images.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("image_index", "image_id", "split", "caption"))
        for i, iid in enumerate(store.image_ids):
            w.writerow([i, iid, image_split[i] if shown[i] else "unused", store.captions[i]])
    if clusters is not None:
        held = set(view.get("held_out_clusters") or [])
        with open(tmp / "clusters.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(("image_index", "image_id", "cluster", "held_out"))
            for i, iid in enumerate(store.image_ids):
                w.writerow([i, iid, clusters[i], int(str(clusters[i]) in held)])
    view = {**view, "parent_voxels_sha256": (store.meta.get("checksums") or {}).get("voxels.npy"),
            "checksums": {name: file_sha256(tmp / name) for name in ("trials.csv", "images.csv")}}
    meta = {"format_version": FORMAT_VERSION, "mindeye_version": __version__,
            "view_of": str(store.path.resolve()), "view": view}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    replace_dir(tmp, out)
    SubjectStore(out)  # reads back (validates the splits: one split per image)
    return out


def write_disjoint_view(store_path: str | Path, out: str | Path, labels: np.ndarray, *, method: str,
                        holdout: float = 0.25, seed: int = 0, held_out: list[str] | None = None,
                        overwrite: bool = False) -> tuple[Path, dict[str, Any]]:
    """Category-disjoint view of a store: whole clusters (``labels``, one per image) held out of training.

    Returns (view path, the view's description as recorded in its meta.json)."""
    store = SubjectStore(store_path)
    labels = np.asarray(labels).astype(str)
    if len(labels) != store.n_images:
        raise MindEyeError(f"{len(labels)} cluster labels for {store.n_images} images")
    parent_split = np.full(store.n_images, "unused", dtype=object)
    parent_split[store.trials.image_index] = store.trials.split
    new, held = disjoint_splits(parent_split, labels, holdout, seed, held_out)
    ood = np.flatnonzero((new == "test") & np.isin(labels, held))
    id_test = np.flatnonzero((new == "test") & ~np.isin(labels, held))
    view = {"kind": "category-disjoint", "method": method, "seed": seed, "holdout": holdout,
            "clusters": sorted(set(labels[parent_split != "unused"].tolist())), "held_out_clusters": held,
            "n_train_images": int((new == "train").sum()), "n_id_test_images": len(id_test),
            "n_ood_test_images": len(ood),
            "description": f"category-disjoint split by {method}: {len(held)} of "
                           f"{len(set(labels[parent_split != 'unused'].tolist()))} clusters held out of training "
                           f"({len(id_test)} in-distribution + {len(ood)} out-of-distribution test images)",
            "ood_images": ood.tolist()}
    return write_view(store, out, new, view, clusters=labels, overwrite=overwrite), view
