"""Brain images in: NIfTI betas + a mask + an events table -> subject store (``mindeye prepare nifti``).

Inputs (format in docs/adding-a-dataset.md, "From NIfTI betas"):

* betas: one 4-D NIfTI per session (one volume per trial, e.g. GLMsingle / GLMdenoise outputs or a
  BIDS derivative), or 3-D NIfTIs with one trial each; all on the mask's voxel grid.
* mask: a 3-D binary NIfTI (the ROI, e.g. a visual-cortex mask); voxels are read with nilearn's
  ``NiftiMasker``, in its order (numpy's C order of the mask's nonzero voxels).
* events: tab-separated tables, BIDS-like, one row per beta volume in the order of the volumes: either
  one table for all betas files together or one table per betas file. The stimulus is the ``image``
  column, else ``stim_file`` (BIDS), else ``trial_type``: an image id or a file name (directories and
  the .png/.jpg suffix are dropped to find ``<image_id>.png|jpg`` in the images directory). ``n/a`` or
  an empty cell marks a volume that is not a trial (it is skipped). Optional columns: ``session``
  (default: the position of the betas file, 1, 2, ...; 1 for 3-D betas), ``split`` (train/val/test;
  default: a seeded ``test_fraction`` of the unique images is the test split), ``repetition``.
  Other columns (``onset``, ``duration`` ...) are ignored.

The masked rows then take the same path as ``mindeye prepare arrays`` (data/arrays.py), and the mask is
kept in the store as ``mask.nii.gz`` so per-voxel results map back to brain space
(:meth:`mindeye.data.store.SubjectStore.unmask`).
"""

from __future__ import annotations

import csv
import gzip
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mindeye.data.arrays import IMAGE_SUFFIXES, _nfc, _prepare
from mindeye.data.store import MASK_FILE, SPLITS, check_output_dir, check_subject_id
from mindeye.errors import MindEyeError

STIMULUS_COLUMNS = ("image", "stim_file", "trial_type")
NOT_A_TRIAL = ("", "n/a", "na", "nan")
AFFINE_TOLERANCE = 1e-3  # mm: affines closer than this are the same grid


def _nilearn() -> Any:
    try:
        from nilearn.maskers import NiftiMasker
    except ImportError:
        raise MindEyeError("reading NIfTI betas needs nilearn, which is not installed; install it with "
                           "pip install 'mindeye[nifti]'") from None
    return NiftiMasker


def _load(path: Path, what: str) -> Any:
    import nibabel as nib

    if not path.exists():
        raise MindEyeError(f"{what} {path} not found; give a NIfTI file (.nii or .nii.gz)")
    try:
        return nib.load(path)
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError, ValueError ...
        raise MindEyeError(f"cannot read {what} {path} as a NIfTI image ({type(exc).__name__}: {exc}); "
                           "give a .nii or .nii.gz file") from None


def _affine_text(affine: np.ndarray) -> str:
    return np.array2string(np.asarray(affine, float), precision=3, suppress_small=True).replace("\n", "")


def load_mask(path: Path) -> tuple[Any, np.ndarray]:
    """The mask image and its boolean voxel array, checked: 3-D, two values, at least one voxel."""
    img = _load(path, "mask")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise MindEyeError(f"mask {path} is a {len(img.shape)}D image of shape {img.shape}; the mask must be a "
                           "3D image (one volume)")
    data = np.asarray(img.dataobj).reshape(shape)
    if not np.isfinite(data).all():
        raise MindEyeError(f"mask {path} holds NaN or inf values; a mask holds 0 (outside) and 1 (inside)")
    values = np.unique(data)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        raise MindEyeError(
            f"mask {path} is not binary: it holds {len(values)} different values ({values[:5].tolist()}"
            f"{' ...' if len(values) > 5 else ''}); threshold it first, e.g. "
            "nilearn.image.binarize_img(mask, threshold=0.5)")
    mask = data != 0
    if not mask.any():
        raise MindEyeError(f"mask {path} is empty: it selects no voxel; check that it is the right file "
                           "(a mask holds 1 inside the region)")
    return img, mask


def _check_grid(betas: Path, img: Any, mask_path: Path, mask_img: Any) -> int:
    """Number of volumes in ``betas``, after checking it lies on the mask's grid."""
    shape = img.shape
    if len(shape) not in (3, 4):
        raise MindEyeError(f"betas {betas} is a {len(shape)}D image of shape {shape}; expected a 4D image (one "
                           "volume per trial) or a 3D image (one trial)")
    if tuple(shape[:3]) != tuple(mask_img.shape[:3]):
        raise MindEyeError(
            f"betas {betas} has voxel grid {tuple(shape[:3])} but mask {mask_path} has {tuple(mask_img.shape[:3])}; "
            "they must be on the same grid: resample the mask to the betas, e.g. "
            "nilearn.image.resample_to_img(mask, betas, interpolation='nearest')")
    if not np.allclose(img.affine, mask_img.affine, atol=AFFINE_TOLERANCE):
        raise MindEyeError(
            f"betas {betas} and mask {mask_path} have different affines (betas: {_affine_text(img.affine)}, "
            f"mask: {_affine_text(mask_img.affine)}); they must be in the same space: resample the mask to "
            "the betas, e.g. nilearn.image.resample_to_img(mask, betas, interpolation='nearest')")
    return 1 if len(shape) == 3 else int(shape[3])


def _read_events(path: Path) -> tuple[list[dict[str, str]], str]:
    if not path.exists():
        raise MindEyeError(f"events table {path} not found; give --events a tab-separated file with an "
                           f"'image' column (one row per beta volume)")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t")
            fields = [c.strip() for c in reader.fieldnames or []]
            reader.fieldnames = fields
            rows = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except UnicodeDecodeError:
        raise MindEyeError(f"events table {path} is not UTF-8 text; re-save it as UTF-8") from None
    column = next((c for c in STIMULUS_COLUMNS if c in fields), None)
    if column is None:
        extra = " (it has one column only: is it tab-separated?)" if len(fields) == 1 else ""
        raise MindEyeError(f"events table {path} has no stimulus column: it needs 'image' (or BIDS 'stim_file' "
                           f"or 'trial_type'); its columns are {fields}{extra}")
    return rows, column


def _image_id(value: str) -> str:
    """``images/shared0001.png`` -> ``shared0001``; an id without an image suffix is kept whole."""
    name = value.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, suffix = name.rpartition(".")
    return _nfc(stem if dot and f".{suffix.lower()}" in IMAGE_SUFFIXES else name)


def _choose_test(image_ids: list[str], fraction: float, seed: int) -> set[str]:
    if not 0 < fraction < 1:
        raise MindEyeError(f"--test-fraction must be between 0 and 1, got {fraction}")
    unique = sorted(set(image_ids))
    if len(unique) < 2:
        raise MindEyeError("the events name fewer than 2 different images; a store needs train and test images")
    n_test = min(len(unique) - 1, max(1, round(fraction * len(unique))))
    order = np.random.default_rng(seed).permutation(len(unique))
    return {unique[k] for k in order[:n_test].tolist()}


def _mask_bytes(mask_img: Any, mask: np.ndarray) -> bytes:
    """The mask as a gzipped uint8 NIfTI-1 (what the store keeps as mask.nii.gz)."""
    import nibabel as nib

    out = nib.Nifti1Image(mask.astype(np.uint8), mask_img.affine)
    if isinstance(mask_img, nib.Nifti1Image):  # keep the space codes (scanner / MNI) of the source mask
        out.set_qform(mask_img.affine, int(mask_img.header["qform_code"]))
        out.set_sform(mask_img.affine, int(mask_img.header["sform_code"]))
    return gzip.compress(out.to_bytes(), mtime=0)


def prepare_nifti(
    betas: list[str | Path],
    mask: str | Path,
    events: list[str | Path],
    images: str | Path,
    out: str | Path,
    *,
    zscore: bool = False,
    test_fraction: float = 0.1,
    seed: int = 0,
    image_size: int = 256,
    voxel_dtype: str = "float16",
    source: str = "nifti",
    subject: str = "1",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Check every input first (grids, affines, mask, events, images), then mask the betas one file at a
    time into a temporary memory-mapped matrix and write the store as ``prepare arrays`` does."""
    betas = [Path(b) for b in betas]
    events = [Path(e) for e in events]
    mask_path, images, out = Path(mask), Path(images), Path(out)
    if not betas:
        raise MindEyeError("no betas given; pass one or more NIfTI files to --betas")
    check_output_dir(out, overwrite)
    check_subject_id(subject)
    NiftiMasker = _nilearn()
    mask_img, mask_arr = load_mask(mask_path)
    imgs = [_load(b, "betas") for b in betas]
    counts = [_check_grid(b, img, mask_path, mask_img) for b, img in zip(betas, imgs)]

    # -- events: one table for all volumes, or one per betas file -------------------------------------
    if len(events) not in (1, len(betas)):
        raise MindEyeError(f"{len(events)} events tables for {len(betas)} betas files; give one table for all "
                           "volumes, or one per betas file in the same order")
    tables = [_read_events(e) for e in events]
    expected = [sum(counts)] if len(events) == 1 else counts
    for (rows, _), e, n in zip(tables, events, expected):
        if len(rows) != n:
            what = "the betas together" if len(events) == 1 else "its betas file"
            raise MindEyeError(f"events table {e} has {len(rows)} rows but {what} hold(s) {n} volumes; "
                               "write one row per beta volume, in volume order ('n/a' in the stimulus column "
                               "for a volume that is not a trial)")
    volume_rows = [(row, col) for rows, col in tables for row in rows]
    file_of = np.repeat(np.arange(len(betas)), counts)  # betas file of each volume
    keep, trial_rows = [], []
    for v, (row, col) in enumerate(volume_rows):
        value = row.get(col, "")
        if value.lower() in NOT_A_TRIAL:
            continue
        session = row.get("session", "")
        if session == "":
            session = str(file_of[v] + 1) if len(imgs[file_of[v]].shape) == 4 else "1"
        keep.append(v)
        trial_rows.append({"image_id": _image_id(value), "session": session, "split": row.get("split", ""),
                           "repetition": row.get("repetition", "")})
    if not trial_rows:
        raise MindEyeError(f"the events tables ({', '.join(map(str, events))}) name no image; every volume is "
                           "marked n/a")
    if any(r["split"] == "" for r in trial_rows):
        if any(r["split"] != "" for r in trial_rows):
            raise MindEyeError("the events' 'split' column is empty on some rows; fill it on every trial row "
                               f"({'/'.join(SPLITS)}) or leave the column out")
        test = _choose_test([r["image_id"] for r in trial_rows], test_fraction, seed)
        for r in trial_rows:
            r["split"] = "test" if r["image_id"] in test else "train"

    # -- images: all present before the (slow) masking ---------------------------------------------------
    if not images.is_dir():
        raise MindEyeError(f"images {images} is not a directory; give --images the directory of the stimuli "
                           "(<image_id>.png/.jpg)")
    available = {_nfc(p.stem) for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    missing = sorted({r["image_id"] for r in trial_rows} - available)
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise MindEyeError(f"{len(missing)} image(s) named in the events have no file in {images}: {shown}; "
                           "every trial's image must be there as <image_id>.png/.jpg")

    # -- mask the betas, one file at a time, into a temporary memory-mapped matrix ---------------------
    import nibabel as nib

    masker = NiftiMasker(mask_img=nib.Nifti1Image(mask_arr.astype(np.uint8), mask_img.affine), standardize=None).fit()
    n_voxels = int(mask_arr.sum())
    coords = np.argwhere(mask_arr)  # the masker's voxel order: C order of the mask's nonzero voxels
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.nifti-", dir=out.absolute().parent))
    try:
        vox = np.lib.format.open_memmap(tmp / "voxels.npy", mode="w+", dtype=np.float32,
                                        shape=(len(keep), n_voxels))
        keep_arr = np.asarray(keep)
        first = np.concatenate([[0], np.cumsum(counts)])
        from tqdm.auto import tqdm

        for k in tqdm(range(len(betas)), desc="betas", unit="file", disable=not progress):
            wanted = keep_arr[(keep_arr >= first[k]) & (keep_arr < first[k + 1])]
            if len(wanted) == 0:
                continue
            data = np.asarray(imgs[k].dataobj, dtype=np.float32)  # read once; the masker gets it in memory
            inside = data[mask_arr]  # (n_voxels, volumes): checked here, as the masker turns NaN into 0
            bad = ~np.isfinite(inside[:, wanted - first[k]] if data.ndim == 4 else inside[:, None])
            if bad.any():
                c, r = np.argwhere(bad)[np.argmin(np.argwhere(bad)[:, 1])]
                volume = int(wanted[r] - first[k])
                raise MindEyeError(
                    f"betas {betas[k]} holds NaN or inf inside the mask (volume {volume}, voxel "
                    f"{tuple(int(x) for x in coords[c])}); shrink the mask to voxels with finite betas in every "
                    "volume, or impute them first")
            img = nib.Nifti1Image(data, imgs[k].affine)
            rows = np.asarray(masker.transform(img), dtype=np.float32).reshape(-1, n_voxels)[wanted - first[k]]
            del data, inside
            dest = np.searchsorted(keep_arr, wanted)
            vox[dest[0]:dest[-1] + 1] = rows  # the kept volumes of one file are contiguous in ``keep``
        vox.flush()
        events_desc = Path(", ".join(map(str, events)))  # names the tables in messages from the arrays path
        meta = {"source": source, "inputs": {"betas": [str(b) for b in betas], "mask": str(mask_path),
                                             "events": [str(e) for e in events], "images": str(images)},
                "mask": {"file": MASK_FILE, "shape": list(mask_arr.shape), "n_voxels": n_voxels,
                         "affine": np.asarray(mask_img.affine, float).round(6).tolist()}}
        return _prepare(vox, Path(betas[0]), images, events_desc, out, zscore=zscore, image_size=image_size,
                        voxel_dtype=voxel_dtype, source=source, subject=subject, overwrite=overwrite,
                        progress=progress, rows=trial_rows, meta_extra=meta,
                        extra_files={MASK_FILE: _mask_bytes(mask_img, mask_arr)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
