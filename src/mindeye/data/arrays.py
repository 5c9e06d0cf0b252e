"""Bring your own dataset: per-trial voxel rows + images + a trial table -> subject store.

This is how BOLD5000, THINGS-fMRI, NOD or a lab's own data enter mindeye. Inputs:

* voxels: ``.npy`` (n_trials, n_voxels) or ``.h5``/``.hdf5`` (dataset given by ``voxels_key``,
  or the file's only 2-D dataset), float16/32/64, one row per trial, already masked to the ROI.
* images: ``.npy`` (n_images, H, W, 3) uint8 whose row k has image id ``k``, or a directory of
  ``<image_id>.png|jpg|jpeg`` files.
* trials: CSV with columns ``image_id``, ``session`` and ``split`` (train/val/test), one row per
  voxel row in the same order; ``repetition`` is optional (computed from presentation order).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from mindeye.data.store import SPLITS, StoreWriter, TrialTable, check_output_dir
from mindeye.errors import MindEyeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _open_voxels(path: Path, key: str | None):
    if not path.exists():
        raise MindEyeError(f"voxel file {path} not found")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r")
        except ValueError as exc:
            raise MindEyeError(f"cannot read {path} as a numpy array ({exc})") from None
        return arr
    if path.suffix in (".h5", ".hdf5"):
        import h5py

        f = h5py.File(path, "r")
        names: list[str] = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and o.ndim == 2 else None)
        if key is None:
            if len(names) != 1:
                raise MindEyeError(
                    f"{path} holds {len(names)} 2-D datasets ({', '.join(names) or 'none'}); "
                    "name the voxel dataset with --voxels-key"
                )
            key = names[0]
        if key not in f:
            raise MindEyeError(f"{path} has no dataset {key!r}; 2-D datasets present: {', '.join(names) or 'none'}")
        return f[key]
    raise MindEyeError(f"voxel file {path} must be .npy, .h5 or .hdf5")


def _read_trials(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        raise MindEyeError(f"trial table {path} not found")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"image_id", "session", "split"} - set(reader.fieldnames or [])
        if missing:
            raise MindEyeError(
                f"trial table {path} lacks column(s) {sorted(missing)}; it needs image_id, session, split "
                "(and optionally repetition), one row per voxel row"
            )
        return list(reader)


def _load_image(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except OSError as exc:
        raise MindEyeError(f"cannot read image {path}: {exc}") from None


def _resize_array_image(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size and img.shape[1] == size:
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def _zscore_sessions(writer: StoreWriter, sessions: np.ndarray) -> None:
    for s in np.unique(sessions):
        rows = np.flatnonzero(sessions == s)
        block = np.asarray(writer.voxels[rows], dtype=np.float64)
        std = block.std(0)
        writer.voxels[rows] = (block - block.mean(0)) / np.where(std > 0, std, 1.0)


def prepare_arrays(
    voxels: str | Path,
    images: str | Path,
    trials: str | Path,
    out: str | Path,
    *,
    voxels_key: str | None = None,
    zscore: bool = False,
    image_size: int = 256,
    voxel_dtype: str = "float16",
    source: str = "arrays",
    subject: str = "1",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Validate everything first, then write the store atomically; see the module docstring."""
    voxels, images, trials, out = Path(voxels), Path(images), Path(trials), Path(out)
    check_output_dir(out, overwrite)
    vox = _open_voxels(voxels, voxels_key)
    if vox.ndim != 2:
        raise MindEyeError(f"voxels in {voxels} have shape {tuple(vox.shape)}; expected 2-D (n_trials, n_voxels)")
    if not np.issubdtype(vox.dtype, np.floating):
        raise MindEyeError(
            f"voxels in {voxels} have dtype {vox.dtype}; expected float16/32/64 (convert integer-scaled "
            "betas to float, e.g. percent signal change, first)"
        )
    rows = _read_trials(trials)
    if len(rows) != vox.shape[0]:
        raise MindEyeError(
            f"trial table {trials} has {len(rows)} rows but {voxels} has {vox.shape[0]} voxel rows; "
            "they must match one-to-one, in the same order"
        )
    # Image ids -> loader.
    if images.is_dir():
        files = {p.stem: p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        load = lambda iid: _load_image(files[iid], image_size)  # noqa: E731
        available = set(files)
    elif images.suffix == ".npy" and images.exists():
        arr = np.load(images, mmap_mode="r")
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise MindEyeError(f"images in {images} have shape {arr.shape}; expected (n_images, H, W, 3)")
        if arr.dtype != np.uint8:
            raise MindEyeError(f"images in {images} have dtype {arr.dtype}; expected uint8 RGB (0-255)")
        load = lambda iid: _resize_array_image(np.asarray(arr[int(iid)]), image_size)  # noqa: E731
        available = {str(i) for i in range(arr.shape[0])}
    else:
        raise MindEyeError(f"images {images} not found; give a .npy array (N, H, W, 3) uint8 or a directory of images")

    image_ids = sorted({r["image_id"] for r in rows}, key=lambda s: (len(s), s))
    missing = [i for i in image_ids if i not in available]
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise MindEyeError(
            f"{len(missing)} image id(s) in {trials} have no image in {images}: {shown}; "
            "every trial's image must be present (file <image_id>.png/.jpg, or row index of the .npy)"
        )
    index = {iid: k for k, iid in enumerate(image_ids)}
    try:
        session = np.array([int(r["session"]) for r in rows], dtype=np.int64)
    except ValueError:
        raise MindEyeError(f"trial table {trials}: column 'session' must hold integers") from None
    split = np.array([r["split"].strip() for r in rows])
    bad = sorted(set(split.tolist()) - set(SPLITS))
    if bad:
        raise MindEyeError(f"trial table {trials}: unknown split value(s) {bad}; use {list(SPLITS)}")
    image_index = np.array([index[r["image_id"]] for r in rows], dtype=np.int64)
    if rows and rows[0].get("repetition", "") != "":
        repetition = np.array([int(r["repetition"]) for r in rows], dtype=np.int64)
    else:
        seen: dict[int, int] = {}
        repetition = np.zeros(len(rows), dtype=np.int64)
        for i, idx in enumerate(image_index.tolist()):
            repetition[i] = seen.get(idx, 0)
            seen[idx] = repetition[i] + 1
    table = TrialTable(image_index=image_index, session=session, repetition=repetition, split=split)
    table.validate(len(image_ids))

    writer = StoreWriter(out, n_trials=vox.shape[0], n_voxels=vox.shape[1], n_images=len(image_ids),
                         image_size=image_size, voxel_dtype=voxel_dtype, overwrite=overwrite)
    try:
        chunk = 1024
        for start in tqdm(range(0, vox.shape[0], chunk), desc="voxels", unit="chunk", disable=not progress):
            writer.write_voxels(start, np.asarray(vox[start:start + chunk], dtype=np.float32))
        if zscore:
            _zscore_sessions(writer, session)
        for k, iid in enumerate(tqdm(image_ids, desc="images", unit="img", disable=not progress)):
            writer.write_images(k, load(iid)[None])
        writer.set_trials(table)
        writer.set_images(image_ids)
        return writer.finalize({
            "source": source,
            "subject": subject,
            "preprocessing": "per-session z-score" if zscore else "as provided",
            "inputs": {"voxels": str(voxels), "images": str(images), "trials": str(trials)},
        })
    except BaseException:
        writer.abort()
        raise
