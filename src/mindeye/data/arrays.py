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
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from mindeye.data.sessions import number_repetitions
from mindeye.data.store import SPLITS, StoreWriter, TrialTable, check_output_dir, check_subject_id
from mindeye.errors import MindEyeError
from mindeye.safe_load import NPY_LOAD_ERRORS, npy_error
from mindeye.utils.images import resize_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _open_voxels(path: Path, key: str | None) -> tuple[Any, Callable[[], None]]:
    """The voxel array (memory-mapped .npy or an h5py dataset, never read whole) and a closer."""
    if not path.exists():
        raise MindEyeError(f"voxel file {path} not found; give --voxels a .npy or .h5/.hdf5 file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r")
        except NPY_LOAD_ERRORS as exc:
            raise MindEyeError(f"cannot read {path} as a numpy array ({npy_error(exc)}); save it with numpy.save") from None
        return arr, lambda: None
    if suffix in (".h5", ".hdf5"):
        import h5py

        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise MindEyeError(f"cannot open {path} as an HDF5 file ({exc})") from None
        names: list[str] = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and o.ndim == 2 else None)
        if key is None:
            if len(names) != 1:
                f.close()
                raise MindEyeError(
                    f"{path} holds {len(names)} 2-D datasets ({', '.join(names) or 'none'}); "
                    "name the voxel dataset with --voxels-key"
                )
            key = names[0]
        if key not in f or not isinstance(f[key], h5py.Dataset):
            f.close()
            raise MindEyeError(
                f"{path} has no dataset {key!r}; pass one of its 2-D datasets to --voxels-key: "
                f"{', '.join(names) or 'none'}"
            )
        return f[key], f.close
    raise MindEyeError(f"voxel file {path} must be .npy, .h5 or .hdf5")


def _nfc(name: str) -> str:
    """Unicode NFC form: an id and a file name that differ only in normalisation (é as one code point or as
    e + combining accent) name the same image."""
    return unicodedata.normalize("NFC", name)


def _read_trials(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        raise MindEyeError(f"trial table {path} not found; give --trials a CSV with columns image_id, session, split")
    try:
        return _parse_trials(path)
    except UnicodeDecodeError as exc:
        raise MindEyeError(
            f"trial table {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "re-save it as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet, or iconv -f latin1 -t utf-8)"
        ) from None


def _parse_trials(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: tolerate the BOM spreadsheets write
        reader = csv.DictReader(f)
        fields = [c.strip() for c in reader.fieldnames or []]
        missing = {"image_id", "session", "split"} - set(fields)
        if missing:
            raise MindEyeError(
                f"trial table {path} lacks column(s) {sorted(missing)}; it needs image_id, session, split "
                "(and optionally repetition), one row per voxel row"
            )
        reader.fieldnames = fields
        return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]


def _to_rgb8(im: Image.Image, path: Path) -> np.ndarray:
    """uint8 RGB of any image mode; 16-bit greyscale is rescaled (PIL's convert('RGB') clips it to white)."""
    if im.mode.startswith("I;16") or im.mode == "I":
        values = np.asarray(im, dtype=np.float64)  # 16-bit PNGs open as I;16 (or I), values 0..65535
        if values.min() < 0 or values.max() > 65535:
            raise MindEyeError(f"image {path} is {im.mode} with values outside 0..65535; export it as 8- or "
                               "16-bit PNG/JPEG")
        grey = np.round(values / 257.0).astype(np.uint8)  # 65535 -> 255
        return np.repeat(grey[..., None], 3, axis=-1)
    if im.mode == "F":
        raise MindEyeError(f"image {path} holds floating-point pixels (mode F), which have no fixed range; "
                           "export it as an 8- or 16-bit PNG/JPEG")
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _load_image(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return resize_image(_to_rgb8(im, path), size)
    except OSError as exc:
        raise MindEyeError(f"cannot read image {path}: {exc}; replace or re-export that file") from None


def _check_finite(block: np.ndarray, start: int, path: Path) -> None:
    if not np.isfinite(block).all():
        bad = np.argwhere(~np.isfinite(block))[0]
        raise MindEyeError(
            f"voxel data in {path} contains NaN or inf (first at trial {start + int(bad[0])}, voxel "
            f"{int(bad[1])}); remove or impute non-finite voxels before preparing the store"
        )


def _session_stats(vox: Any, session_pos: np.ndarray, n_sessions: int, chunk: int,
                   path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-session voxel mean and std (float64, from the source values, before any float16 rounding)."""
    n, v = vox.shape
    counts = np.bincount(session_pos, minlength=n_sessions).astype(np.float64)[:, None]
    sums = np.zeros((n_sessions, v))
    for start in range(0, n, chunk):
        block = np.asarray(vox[start:start + chunk], dtype=np.float64)
        _check_finite(block, start, path)
        pos = session_pos[start:start + len(block)]
        for k in np.unique(pos):
            sums[k] += block[pos == k].sum(0)
    mean = sums / counts
    sq = np.zeros((n_sessions, v))  # second pass: squared deviations (no cancellation on large offsets)
    for start in range(0, n, chunk):
        block = np.asarray(vox[start:start + chunk], dtype=np.float64)
        pos = session_pos[start:start + len(block)]
        for k in np.unique(pos):
            sq[k] += ((block[pos == k] - mean[k]) ** 2).sum(0)
    std = np.sqrt(sq / counts)
    return mean, np.where(std > 0, std, 1.0)  # constant voxels map to 0


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
    if image_size <= 0:
        raise MindEyeError(f"--image-size must be positive, got {image_size}")
    check_subject_id(subject)  # the label doubles as the subject's id in a cohort
    vox, close = _open_voxels(voxels, voxels_key)
    try:
        return _prepare(vox, voxels, images, trials, out, zscore=zscore, image_size=image_size,
                        voxel_dtype=voxel_dtype, source=source, subject=subject, overwrite=overwrite,
                        progress=progress)
    finally:
        close()


def _prepare(vox: Any, voxels: Path, images: Path, trials: Path, out: Path, *, zscore: bool, image_size: int,
             voxel_dtype: str, source: str, subject: str, overwrite: bool, progress: bool,
             rows: list[dict[str, str]] | None = None, meta_extra: dict[str, Any] | None = None,
             extra_files: dict[str, str | bytes] | None = None) -> Path:
    """``rows`` replaces reading ``trials`` (prepare nifti builds them from its events tables);
    ``meta_extra`` and ``extra_files`` go into the store's meta.json and directory."""
    if vox.ndim != 2:
        raise MindEyeError(f"voxels in {voxels} have shape {tuple(vox.shape)}; expected 2-D (n_trials, n_voxels)")
    if not np.issubdtype(vox.dtype, np.floating):
        raise MindEyeError(
            f"voxels in {voxels} have dtype {vox.dtype}; expected float16/32/64 (convert integer-scaled "
            "betas to float, e.g. percent signal change, first)"
        )
    rows = _read_trials(trials) if rows is None else rows
    if len(rows) != vox.shape[0]:
        raise MindEyeError(
            f"trial table {trials} has {len(rows)} rows but {voxels} has {vox.shape[0]} voxel rows; "
            "they must match one-to-one, in the same order"
        )
    # Image ids -> loader.
    if images.is_dir():
        files: dict[str, Path] = {}
        for p in sorted(images.iterdir()):
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            stem = _nfc(p.stem)  # macOS and some archives write file names decomposed (NFD)
            if stem in files:
                raise MindEyeError(
                    f"image id {p.stem!r} has two files in {images} ({files[stem].name}, {p.name}); keep one"
                )
            files[stem] = p
        load = lambda iid: _load_image(files[_nfc(iid)], image_size)  # noqa: E731
        available = set(files)
    elif images.suffix.lower() == ".npy" and images.is_file():
        try:
            arr = np.load(images, mmap_mode="r")
        except NPY_LOAD_ERRORS as exc:
            raise MindEyeError(f"cannot read {images} as a numpy array ({npy_error(exc)}); save it with numpy.save") from None
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise MindEyeError(f"images in {images} have shape {arr.shape}; expected (n_images, H, W, 3) RGB")
        if arr.dtype != np.uint8:
            raise MindEyeError(
                f"images in {images} have dtype {arr.dtype}; expected uint8 RGB (0-255), "
                "e.g. (x * 255).round().astype(np.uint8) for images in [0, 1]"
            )
        load = lambda iid: resize_image(np.asarray(arr[int(iid)]), image_size)  # noqa: E731
        available = {str(i) for i in range(arr.shape[0])}
    elif images.exists():
        raise MindEyeError(
            f"images {images} is neither a .npy array nor a directory; give a (N, H, W, 3) uint8 .npy "
            "or a directory of <image_id>.png/.jpg files"
        )
    else:
        raise MindEyeError(f"images {images} not found; give a .npy array (N, H, W, 3) uint8 or a directory of images")

    image_ids = sorted({r["image_id"] for r in rows}, key=lambda s: (len(s), s))
    missing = [i for i in image_ids if _nfc(i) not in available]
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
        raise MindEyeError(f"trial table {trials}: column 'session' must hold integers on every row") from None
    except OverflowError:
        raise MindEyeError(f"trial table {trials}: column 'session' holds a number beyond the 64-bit integer "
                           "range; number the sessions 1, 2, 3 ...") from None
    split = np.array([r["split"] for r in rows], dtype=str)
    bad = sorted(set(split.tolist()) - set(SPLITS))
    if bad:
        raise MindEyeError(f"trial table {trials}: unknown split value(s) {bad}; use {list(SPLITS)}")
    image_index = np.array([index[r["image_id"]] for r in rows], dtype=np.int64)
    if any(r.get("repetition", "") != "" for r in rows):
        try:
            repetition = np.array([int(r["repetition"]) for r in rows], dtype=np.int64)
        except (ValueError, OverflowError):
            raise MindEyeError(
                f"trial table {trials}: column 'repetition' must hold integers on every row "
                "(or leave the column out to number repetitions in presentation order)"
            ) from None
    else:
        repetition = number_repetitions(image_index)
    table = TrialTable(image_index=image_index, session=session, repetition=repetition, split=split)
    table.validate(len(image_ids))

    chunk = 1024
    if zscore:  # statistics from the source values, so float16 storage rounds only the z-scores
        sessions, session_pos = np.unique(session, return_inverse=True)
        mean, std = _session_stats(vox, session_pos, len(sessions), chunk, voxels)
    writer = StoreWriter(out, n_trials=vox.shape[0], n_voxels=vox.shape[1], n_images=len(image_ids),
                         image_size=image_size, voxel_dtype=voxel_dtype, overwrite=overwrite)
    try:
        for start in tqdm(range(0, vox.shape[0], chunk), desc="voxels", unit="chunk", disable=not progress):
            if zscore:
                block = np.array(vox[start:start + chunk], dtype=np.float64)  # a writable copy
                pos = session_pos[start:start + len(block)]
                for k in np.unique(pos):
                    block[pos == k] = (block[pos == k] - mean[k]) / std[k]
            else:
                block = np.asarray(vox[start:start + chunk])
                _check_finite(block, start, voxels)
            writer.write_voxels(start, block.astype(np.float32))
        for k, iid in enumerate(tqdm(image_ids, desc="images", unit="img", disable=not progress)):
            writer.write_images(k, load(iid)[None])
        writer.set_trials(table)
        writer.set_images(image_ids)
        return writer.finalize({
            "source": source,
            "subject": subject,
            "subject_id": str(subject),
            "preprocessing": "per-session z-score" if zscore else "as provided",
            "inputs": {"voxels": str(voxels), "images": str(images), "trials": str(trials)},
            **(meta_extra or {}),
        }, extra_files=extra_files)
    except BaseException:
        writer.abort()
        raise
