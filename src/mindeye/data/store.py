"""The subject store: the on-disk format every dataset is prepared into.

One directory per prepared subject (format documented in docs/subject-store.md)::

    STORE/
      meta.json       source, subject, counts, preprocessing, format version, checksums
      voxels.npy      (n_trials, n_voxels) float16/float32, one row per trial (memory-mapped)
      trials.csv      trial, image_index, image_id, session, repetition, split
      images.npy      (n_images, S, S, 3) uint8, one per unique image (memory-mapped)
      images.csv      image_index, image_id, split, caption
      targets/        target cache written by `mindeye embed` (one sub-directory per encoder key)
      mask.nii.gz     (stores prepared from NIfTI only) the brain mask: voxel k is its k-th nonzero voxel

Writes are atomic: everything is built in ``STORE.partial/`` and renamed to ``STORE`` only once
complete, so a directory named STORE always holds a finished store. ``STORE.partial/`` is kept
on interruption so preparations that support it can resume.

Over ~400 lines on purpose: the store format's reader, writer, trial table and checks are the two
sides of one on-disk format and change together.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mindeye import __version__
from mindeye.diskspace import reserve_file
from mindeye.errors import MindEyeError, option
from mindeye.safe_load import NPY_LOAD_ERRORS, npy_error
from mindeye.utils.files import replace_dir, write_json_atomic

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
_DATA_FILES = ("voxels.npy", "trials.csv", "images.npy", "images.csv")
MASK_FILE = "mask.nii.gz"  # the brain mask of a store prepared from NIfTI (SubjectStore.unmask)
_TRIAL_COLUMNS = ("trial", "image_index", "image_id", "session", "repetition", "split")


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_SUBJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_subject_id(subject_id: str) -> str:
    """A subject id names the subject's layers in multi-subject checkpoints: 1-64 letters, digits, '-', '_'."""
    text = str(subject_id)
    if not _SUBJECT_ID.fullmatch(text):
        raise MindEyeError(
            f"subject id {text!r} cannot name a subject; use 1-64 letters, digits, '-' or '_' "
            "(starting with a letter or digit), e.g. 'subj01' or 'lab-S03'"
        )
    return text


def check_output_dir(out: Path, overwrite: bool = False) -> None:
    """Refuse to clobber an existing result: the user must choose another path or ask for --overwrite."""
    out = Path(out)
    if out.exists():
        if not overwrite:
            raise MindEyeError(
                f"output directory {out} already exists; choose another {option('output path', '--out path')}, "
                f"delete it, or pass {option('overwrite=True', '--overwrite')} to replace it"
            )
    check_writable_location(out, suffix=".partial")


def check_writable_location(out: Path, suffix: str = "") -> None:
    """``out`` (plus ``suffix``, the temporary name it is built under) can be created: say why not, up front."""
    out = Path(out)
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise MindEyeError(f"cannot create {out}: {parent} is a file, not a directory; choose another path")
    try:
        name_max = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        name_max = 255
    too_long = [p for p in out.parts if len(os.fsencode(p)) > name_max]
    if len(os.fsencode(out.name + suffix)) > name_max or too_long:
        raise MindEyeError(f"the name {(too_long or [out.name])[0][:40]}... is too long for the filesystem "
                           f"({name_max} bytes at most, including the {suffix or 'added'} suffix mindeye "
                           "writes under); choose a shorter --out")
    if not os.access(parent, os.W_OK):
        raise MindEyeError(f"cannot write in {parent} (read-only filesystem or no permission); "
                           "choose an output on a writable disk")


@dataclass
class TrialTable:
    """Per-trial metadata; all arrays have length n_trials."""

    image_index: np.ndarray  # int64 index into the store's images
    session: np.ndarray  # int64, 1-based (0: unknown)
    repetition: np.ndarray  # int64, 0-based: how many times this image was seen before
    split: np.ndarray  # str: train / val / test

    def __len__(self) -> int:
        return len(self.image_index)

    def validate(self, n_images: int) -> None:
        n = len(self.image_index)
        for name in ("session", "repetition", "split"):
            if len(getattr(self, name)) != n:
                raise MindEyeError(
                    f"trial table column '{name}' has {len(getattr(self, name))} rows but "
                    f"image_index has {n}; every column needs one row per trial"
                )
        if n and (self.image_index.min() < 0 or self.image_index.max() >= n_images):
            raise MindEyeError(
                f"trial table refers to image index {int(self.image_index.max())} but only "
                f"{n_images} images exist; every trial's image must be present"
            )
        if n and self.session.min() < 0:  # 1-based; 0 is reserved for "session unknown"
            raise MindEyeError(
                f"trial table has session number {int(self.session.min())}; sessions are numbered from 1 "
                "(renumber them; 0 means unknown)"
            )
        bad = sorted(set(np.unique(self.split).tolist()) - set(SPLITS))
        if bad:
            raise MindEyeError(f"unknown split name(s) {bad}; use only {list(SPLITS)}")
        # A unique image may appear in one split only, or results would leak between splits.
        per_image: dict[int, str] = {}
        for idx, sp in zip(self.image_index.tolist(), self.split.tolist()):
            if per_image.setdefault(idx, sp) != sp:
                raise MindEyeError(
                    f"image index {idx} appears in both '{per_image[idx]}' and '{sp}' splits; "
                    "splits must be made by unique image"
                )


class StoreWriter:
    """Builds a store in ``OUT.partial`` and publishes it with one rename in :meth:`finalize`.

    Voxels and images are written in blocks through memory maps, so a 25k x 16k subject never
    sits in RAM. With ``resume=True`` an existing ``OUT.partial`` with the same shapes is reopened
    and ``self.progress`` (a dict persisted in progress.json) tells the caller what is done.
    """

    def __init__(
        self,
        out: str | Path,
        *,
        n_trials: int,
        n_voxels: int,
        n_images: int,
        image_size: int,
        voxel_dtype: str = "float16",
        overwrite: bool = False,
        resume: bool = False,
    ) -> None:
        self.out = Path(out)
        check_output_dir(self.out, overwrite)
        if voxel_dtype not in ("float16", "float32"):
            raise MindEyeError(f"voxel dtype must be float16 or float32, got {voxel_dtype!r}")
        for name, v in (("n_trials", n_trials), ("n_voxels", n_voxels), ("n_images", n_images),
                        ("image_size", image_size)):
            if int(v) <= 0:
                raise MindEyeError(f"{name} must be positive, got {v}")
        self.tmp = self.out.with_name(self.out.name + ".partial")
        self.shapes = {
            "voxels": (int(n_trials), int(n_voxels)),
            "images": (int(n_images), int(image_size), int(image_size), 3),
        }
        progress_file = self.tmp / "progress.json"
        if resume and progress_file.exists():
            self.progress = json.loads(progress_file.read_text())
            if self.progress.get("shapes") != {k: list(v) for k, v in self.shapes.items()}:
                raise MindEyeError(
                    f"cannot resume {self.tmp}: it was started with different shapes "
                    f"{self.progress.get('shapes')}; delete it to start again"
                )
            mode = "r+"
        else:
            if self.tmp.exists():
                shutil.rmtree(self.tmp)
            self.tmp.mkdir(parents=True)
            self.progress = {"shapes": {k: list(v) for k, v in self.shapes.items()}}
            self._save_progress()
            mode = "w+"
        open_memmap = np.lib.format.open_memmap
        if mode == "w+":
            self.voxels = open_memmap(self.tmp / "voxels.npy", mode="w+", dtype=voxel_dtype,
                                      shape=self.shapes["voxels"])
            self.images = open_memmap(self.tmp / "images.npy", mode="w+", dtype=np.uint8,
                                      shape=self.shapes["images"])
            try:  # a full disk is an error now, not a SIGBUS halfway through the memory-mapped writes
                reserve_file(self.tmp / "voxels.npy")
                reserve_file(self.tmp / "images.npy")
            except BaseException:
                self.abort()
                raise
        else:
            self.voxels = open_memmap(self.tmp / "voxels.npy", mode="r+")
            self.images = open_memmap(self.tmp / "images.npy", mode="r+")
        self.trials: TrialTable | None = None
        self.image_ids: list[str] | None = None
        self.image_captions: list[str] | None = None

    def _save_progress(self) -> None:
        path = self.tmp / "progress.json"
        write_json_atomic(path, self.progress, indent=None)

    def mark_done(self, key: str, value: Any = True) -> None:
        """Record a finished unit of work (e.g. a session) so an interrupted run can skip it."""
        self.voxels.flush()
        self.images.flush()
        self.progress[key] = value
        self._save_progress()

    def write_voxels(self, start: int, block: np.ndarray) -> None:
        block = np.asarray(block)
        if block.ndim != 2 or block.shape[1] != self.shapes["voxels"][1]:
            raise MindEyeError(
                f"voxel block has shape {block.shape}; expected (rows, {self.shapes['voxels'][1]})"
            )
        if not np.isfinite(block).all():
            bad = np.argwhere(~np.isfinite(block))[0]
            raise MindEyeError(
                f"voxel data contains NaN or inf (first at trial {start + int(bad[0])}, voxel "
                f"{int(bad[1])}); remove or impute non-finite voxels before preparing the store"
            )
        with np.errstate(over="ignore"):  # overflow is reported below, as an error
            stored = block.astype(self.voxels.dtype)
        if not np.isfinite(stored).all():  # finite input that overflows the storage dtype (float16 > 65504)
            raise MindEyeError(
                f"voxel values up to {float(np.abs(block).max()):.4g} overflow the store's "
                f"{self.voxels.dtype} voxels; pass --voxel-dtype float32, or --zscore to normalise them"
            )
        self.voxels[start:start + len(block)] = stored

    def write_images(self, start: int, block: np.ndarray) -> None:
        block = np.asarray(block)
        expected = self.shapes["images"][1:]
        if block.dtype != np.uint8 or block.shape[1:] != expected:
            raise MindEyeError(
                f"image block has dtype {block.dtype} and shape {block.shape}; expected uint8 "
                f"(n, {expected[0]}, {expected[1]}, 3)"
            )
        self.images[start:start + len(block)] = block

    def set_trials(self, trials: TrialTable) -> None:
        if len(trials) != self.shapes["voxels"][0]:
            raise MindEyeError(
                f"trial table has {len(trials)} rows but the voxel array has "
                f"{self.shapes['voxels'][0]} trials; they must match one-to-one"
            )
        trials.validate(self.shapes["images"][0])
        self.trials = trials

    def set_images(self, image_ids: list[str], captions: list[str] | None = None) -> None:
        if len(image_ids) != self.shapes["images"][0]:
            raise MindEyeError(f"{len(image_ids)} image ids for {self.shapes['images'][0]} images")
        if len(set(image_ids)) != len(image_ids):
            raise MindEyeError("image ids must be unique")
        if captions is not None and len(captions) != len(image_ids):
            raise MindEyeError(f"{len(captions)} captions for {len(image_ids)} images; give one caption per image")
        self.image_ids = [str(i) for i in image_ids]
        self.image_captions = captions

    def abort(self) -> None:
        """Remove the partial directory (for preparations that cannot resume)."""
        for name in ("voxels", "images"):
            if hasattr(self, name):
                delattr(self, name)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def finalize(self, meta: dict[str, Any], extra_files: dict[str, str | bytes] | None = None) -> Path:
        """Write tables, checksums and meta.json, then rename ``.partial`` to the final path."""
        if self.trials is None or self.image_ids is None:
            raise RuntimeError("set_trials() and set_images() must be called before finalize()")
        self.voxels.flush()
        self.images.flush()
        del self.voxels, self.images  # close the memory maps before renaming
        t = self.trials
        with open(self.tmp / "trials.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(_TRIAL_COLUMNS)
            for i in range(len(t)):
                idx = int(t.image_index[i])
                w.writerow([i, idx, self.image_ids[idx], int(t.session[i]), int(t.repetition[i]), t.split[i]])
        image_split = {int(i): s for i, s in zip(t.image_index.tolist(), t.split.tolist())}
        with open(self.tmp / "images.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(("image_index", "image_id", "split", "caption"))
            for i, iid in enumerate(self.image_ids):
                cap = self.image_captions[i] if self.image_captions else ""
                w.writerow([i, iid, image_split.get(i, "unused"), cap])
        for name, text in (extra_files or {}).items():
            if isinstance(text, bytes):
                (self.tmp / name).write_bytes(text)
            else:
                (self.tmp / name).write_text(text)
        n_trials, n_voxels = self.shapes["voxels"]
        full_meta = {
            "format_version": FORMAT_VERSION,
            "mindeye_version": __version__,
            "n_trials": n_trials,
            "n_voxels": n_voxels,
            "n_images": self.shapes["images"][0],
            "image_size": self.shapes["images"][1],
            **meta,
            "checksums": {name: file_sha256(self.tmp / name) for name in _DATA_FILES},
        }
        (self.tmp / "meta.json").write_text(json.dumps(full_meta, indent=2))
        (self.tmp / "progress.json").unlink(missing_ok=True)
        replace_dir(self.tmp, self.out)  # an existing store (overwrite=True) goes once the new one is in place
        return self.out


def _cache_complete(directory: Path) -> bool:
    """Whether a target-cache directory's manifest says it is finished (read here to keep imports one-way)."""
    try:
        return json.loads((directory / "manifest.json").read_text()).get("complete") is True
    except (OSError, ValueError, AttributeError):
        return False


def _cache_note(directory: Path) -> str:
    """'' for a finished target cache whose arrays have the recorded shapes, else what is wrong with it."""
    if not _cache_complete(directory):
        return " (unfinished: re-run mindeye embed to finish)"
    manifest = json.loads((directory / "manifest.json").read_text())
    expected = {"targets.npy": manifest.get("n_images")}
    if manifest.get("views"):
        expected["views.npy"] = manifest.get("n_images")
    for name, rows in expected.items():
        try:
            arr = np.load(directory / name, mmap_mode="r")
            ok = arr.ndim > 0 and arr.shape[0] == rows and (name != "views.npy" or arr.shape[1] == manifest["views"])
        except (*NPY_LOAD_ERRORS, IndexError):
            ok = False
        if not ok:
            return f" (DAMAGED: {name} is truncated or does not match its manifest; recompute it with mindeye embed --overwrite)"
    return ""


def data_root(path: str | Path) -> Path:
    """The directory holding a store's data files: the store itself, or for a store view the store it is a
    view of (followed through meta.json's ``view_of``, without opening the arrays)."""
    path = Path(path)
    try:
        parent = json.loads((path / "meta.json").read_text()).get("view_of")
    except (OSError, ValueError, AttributeError):
        return path
    if not parent:
        return path
    parent = Path(parent)
    return data_root(parent if parent.is_absolute() else path / parent)

@dataclass(repr=False)
class VoxelSplit:
    """Voxel rows of one split of a store (``SubjectStore.train_split()`` / ``test_split()``)."""

    split: str  # train / val / test
    mode: str  # averaged (one row per image) or single (one row per trial)
    voxels: np.ndarray  # (N, n_voxels) float32
    image_index: np.ndarray  # (N,) int64: the store image of each row (``store.images[image_index]``)
    image_ids: list[str]  # (N,) its id (images.csv)

    def __len__(self) -> int:
        return len(self.image_index)

    def __repr__(self) -> str:
        return (f"VoxelSplit({self.split!r}, mode={self.mode!r}, voxels={self.voxels.shape} {self.voxels.dtype}, "
                f"images={len(np.unique(self.image_index))})")


class SubjectStore:
    """Read access to a prepared subject. Voxels and images are memory-mapped, never copied whole."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.exists():
            partial = self.path.with_name(self.path.name + ".partial")
            hint = (f" ({partial} exists: that preparation was interrupted; re-run it to resume or finish)"
                    if partial.exists() else "")
            raise MindEyeError(
                f"{self.path} is not a mindeye subject store (no meta.json){hint}; create one with "
                "`mindeye simulate`, `mindeye prepare arrays` or `mindeye prepare nsd`"
            )
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MindEyeError(f"{meta_path} is not valid JSON ({exc}); prepare the store again") from None
        if not isinstance(self.meta, dict):
            raise MindEyeError(f"{meta_path} must hold a JSON object; prepare the store again")
        version = self.meta.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise MindEyeError(
                f"{meta_path} has no valid format_version (got {version!r}); it was not written by "
                "mindeye or is damaged: prepare the store again"
            )
        if version > FORMAT_VERSION:
            raise MindEyeError(
                f"{self.path} was written in store format version {version}, newer than this mindeye "
                f"({__version__}) reads (version {FORMAT_VERSION}); upgrade mindeye (pip install -U mindeye)"
            )
        # A store VIEW (docs/subject-store.md#store-views) holds only its own trials.csv / images.csv (other
        # splits) and reads voxels, images and target caches from the store it is a view of.
        self.view: dict[str, Any] | None = None
        self.data_path = self.path  # the directory holding voxels.npy, images.npy and targets/
        if "view_of" in self.meta:
            self._open_view()
        for name in _DATA_FILES:
            folder = self.path if name.endswith(".csv") else self.data_path
            if not (folder / name).exists():
                raise MindEyeError(f"{folder} is incomplete: {name} is missing; prepare the store again")
        try:
            self.voxels: np.ndarray = np.load(self.data_path / "voxels.npy", mmap_mode="r")
            self.images: np.ndarray = np.load(self.data_path / "images.npy", mmap_mode="r")
        except NPY_LOAD_ERRORS as exc:  # a damaged header fails to parse
            raise MindEyeError(f"{self.path}: cannot read voxels.npy/images.npy ({npy_error(exc)}); "
                               "the store is damaged: prepare it again") from None
        if self.voxels.ndim != 2 or self.images.ndim != 4:
            raise MindEyeError(
                f"{self.path}: voxels.npy has shape {self.voxels.shape} and images.npy {self.images.shape}; "
                "expected (trials, voxels) and (images, S, S, 3); prepare the store again"
            )
        try:
            with open(self.path / "trials.csv", newline="") as f:
                rows = list(csv.DictReader(f))
            self.trials = TrialTable(
                image_index=np.array([int(r["image_index"]) for r in rows], dtype=np.int64),
                session=np.array([int(r["session"]) for r in rows], dtype=np.int64),
                repetition=np.array([int(r["repetition"]) for r in rows], dtype=np.int64),
                split=np.array([r["split"] for r in rows], dtype=str),
            )
            with open(self.path / "images.csv", newline="") as f:
                image_rows = list(csv.DictReader(f))
            self.image_ids = [r["image_id"] for r in image_rows]
            self.captions = [r.get("caption") or "" for r in image_rows]
        except (KeyError, ValueError, TypeError, OverflowError) as exc:
            raise MindEyeError(
                f"{self.path}: trials.csv or images.csv is malformed ({type(exc).__name__}: {exc}); "
                "prepare the store again"
            ) from None
        if len(self.trials) != self.voxels.shape[0] or len(self.image_ids) != self.images.shape[0]:
            raise MindEyeError(
                f"{self.path} is inconsistent: {len(self.trials)} trial rows for {self.voxels.shape[0]} voxel "
                f"rows, {len(self.image_ids)} image rows for {self.images.shape[0]} images; prepare the store again"
            )

        if self.view is not None and self.image_ids != self._parent_image_ids:
            raise MindEyeError(f"{self.path}/images.csv does not list the images of {self.data_path} in the same "
                               "order; the view is damaged or its store was re-prepared: write the view again")

    def _open_view(self) -> None:
        """Read a view's meta.json: the parent store's facts, this view's splits (see views.py)."""
        view_meta = self.meta
        parent_path = Path(view_meta["view_of"])
        if not parent_path.is_absolute():
            parent_path = self.path / parent_path
        if not (parent_path / "meta.json").exists():
            raise MindEyeError(f"{self.path} is a view of the store {parent_path}, which is not there (moved or "
                               f"deleted); restore it, or write the view again from its new location")
        parent = SubjectStore(parent_path)
        recorded = (view_meta.get("view") or {}).get("parent_voxels_sha256")
        now = (parent.meta.get("checksums") or {}).get("voxels.npy")
        if recorded and now and recorded != now:
            raise MindEyeError(f"{self.path} was written from another version of {parent_path} (its voxels "
                               "changed since); write the view again")
        self.view = dict(view_meta.get("view") or {})
        self.data_path = parent.data_path
        self._parent_image_ids = parent.image_ids
        self.meta = {**parent.meta, "view_of": str(parent_path), "view": self.view,
                     "checksums": {**(parent.meta.get("checksums") or {}), **(self.view.get("checksums") or {})}}

    def test_groups(self, image_index: np.ndarray) -> dict[str, np.ndarray] | None:
        """For a category-disjoint view: {"in-distribution": mask, "out-of-distribution": mask} over
        ``image_index`` (test images), else None. OOD images belong to clusters held out of training."""
        held = (self.view or {}).get("ood_images")
        if held is None:
            return None
        ood = np.isin(np.asarray(image_index), np.asarray(held, dtype=np.int64))
        return {"in-distribution": ~ood, "out-of-distribution": ood}

    # -- basic facts -------------------------------------------------------------------------
    @property
    def subject_id(self) -> str:
        """The subject's id in a cohort: ``meta["subject_id"]``; stores written before it existed
        derive one (NSD / shard stores ``subjNN``, others their ``subject`` label or directory name)."""
        sid = self.meta.get("subject_id")
        if sid is None:
            subject = self.meta.get("subject")
            if self.meta.get("source") in ("nsd", "nsd-webdataset") and isinstance(subject, int):
                sid = f"subj{subject:02d}"
            else:
                sid = re.sub(r"[^A-Za-z0-9_-]+", "-", str(subject or self.path.name)).strip("-_")[:64] or "subject"
        return check_subject_id(sid)

    @property
    def n_voxels(self) -> int:
        return int(self.voxels.shape[1])

    @property
    def n_trials(self) -> int:
        return int(self.voxels.shape[0])

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def verify_checksums(self) -> dict[str, bool | None]:
        """Per data file: True (matches meta.json), False (differs) or None (meta.json records no checksum)."""
        expected = self.meta.get("checksums") or {}
        folder = {name: self.path if name.endswith(".csv") else self.data_path for name in _DATA_FILES}
        return {name: (file_sha256(folder[name] / name) == expected[name]) if expected.get(name) else None
                for name in _DATA_FILES}

    # -- brain space (stores prepared from NIfTI) --------------------------------------------------
    @property
    def mask_path(self) -> Path | None:
        """The store's brain mask (``mask.nii.gz``), or None for stores without one (simulated, NSD, arrays)."""
        path = self.data_path / MASK_FILE  # a store view's mask is its parent's
        return path if path.exists() else None

    def unmask(self, values: Any) -> Any:
        """A per-voxel vector (n_voxels,) -> a 3-D NIfTI image on the mask's grid (0 outside the mask);
        a (k, n_voxels) array -> a 4-D image of k volumes. The inverse of the masking that prepared the
        store (nilearn's ``NiftiMasker.inverse_transform``), done with nibabel alone."""
        import nibabel as nib

        if self.mask_path is None:
            raise MindEyeError(
                f"{self.path} has no brain mask ({MASK_FILE}): only stores made by `mindeye prepare nifti` map "
                "voxels back to brain space")
        try:
            mask_img = nib.load(self.mask_path)
            mask = np.asarray(mask_img.dataobj) != 0
        except Exception as exc:  # nibabel raises several types for a damaged file
            raise MindEyeError(f"{self.mask_path} cannot be read ({type(exc).__name__}: {exc}); prepare the "
                               "store again") from None
        if int(mask.sum()) != self.n_voxels:
            raise MindEyeError(f"{self.mask_path} selects {int(mask.sum())} voxels but the store has "
                               f"{self.n_voxels}; the mask does not belong to this store: prepare it again")
        if hasattr(values, "detach"):  # a torch tensor
            values = values.detach().cpu().numpy()
        arr = np.asarray(values)
        if arr.ndim not in (1, 2) or arr.shape[-1] != self.n_voxels:
            raise MindEyeError(f"values of shape {arr.shape} cannot be put back in the brain: give "
                               f"({self.n_voxels},) (one value per voxel) or (k, {self.n_voxels})")
        dtype = np.float32 if arr.dtype.kind in "fiub" and arr.dtype.itemsize <= 4 else np.float64
        if arr.ndim == 1:
            data = np.zeros(mask.shape, dtype=dtype)
            data[mask] = arr
        else:
            data = np.zeros((*mask.shape, arr.shape[0]), dtype=dtype)
            data[mask] = arr.T
        header = mask_img.header.copy()  # keeps the space codes (scanner / MNI); the values are floats
        header.set_data_dtype(data.dtype)
        return nib.Nifti1Image(data, mask_img.affine, header)

    def to_nifti(self, values: Any, path: str | Path | None = None) -> Any:
        """:meth:`unmask`, saved to ``path`` (.nii or .nii.gz) when one is given; returns the image."""
        img = self.unmask(values)
        if path is not None:
            img.to_filename(str(path))
        return img

    # -- splits --------------------------------------------------------------------------------
    def trial_indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise MindEyeError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        return np.flatnonzero(self.trials.split == split)

    def image_indices(self, split: str) -> np.ndarray:
        """Unique images of a split, in ascending image-index order."""
        return np.unique(self.trials.image_index[self.trial_indices(split)])

    def repetitions(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(image_indices (M,), trial matrix (M, R)) with -1 where an image has fewer than R trials."""
        rows = self.trial_indices(split)
        images = np.unique(self.trials.image_index[rows])
        pos = {int(img): k for k, img in enumerate(images)}
        groups: list[list[int]] = [[] for _ in images]
        for r in rows.tolist():
            groups[pos[int(self.trials.image_index[r])]].append(r)
        width = max((len(g) for g in groups), default=0)
        mat = np.full((len(images), width), -1, dtype=np.int64)
        for k, g in enumerate(groups):
            mat[k, : len(g)] = g
        return images, mat

    def split_voxels(
        self, split: str, mode: Literal["averaged", "single"] = "averaged"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Voxels of a split as float32 with the image index of each row.

        ``averaged``: one row per unique image, the mean of its repetitions (the paper's test setting).
        ``single``: one row per trial (paper Table 8, single-trial evaluation).
        """
        if mode == "single":
            rows = self.trial_indices(split)
            return np.asarray(self.voxels[rows], dtype=np.float32), self.trials.image_index[rows]
        if mode != "averaged":
            raise MindEyeError(f"unknown test mode {mode!r}; use 'averaged' or 'single'")
        images, mat = self.repetitions(split)
        out = np.zeros((len(images), self.n_voxels), dtype=np.float32)
        counts = (mat >= 0).sum(1)
        for r in range(mat.shape[1]):
            have = mat[:, r] >= 0
            out[have] += np.asarray(self.voxels[mat[have, r]], dtype=np.float32)
        out /= np.maximum(counts, 1)[:, None]
        return out, images

    def train_split(self) -> VoxelSplit:
        """Every training trial, one row each (float32 voxels, image index and id of each row)."""
        return self._split("train", "single")

    def test_split(self, mode: Literal["averaged", "single"] = "averaged", repetitions: str = "pad3") -> VoxelSplit:
        """The test images: one row per image, the mean of its repetitions (the paper's test setting), or one
        row per trial (``mode="single"``); float32 voxels with the image index and id of each row.
        ``repetitions`` (as ``data.test_repetitions``, what evaluation uses): ``"pad3"`` pads an image seen
        fewer than three times to three as the authors' data did ([a, b] -> (2a + b) / 3); ``"available"``
        averages the repetitions it has."""
        if repetitions not in ("pad3", "available"):
            raise MindEyeError(f"repetitions must be 'pad3' or 'available', got {repetitions!r}")
        if mode == "averaged" and repetitions == "pad3":
            images, mat = self.repetitions("test")
            counts = (mat >= 0).sum(1)
            out = np.zeros((len(images), self.n_voxels), dtype=np.float64)
            for r in range(mat.shape[1]):
                have = mat[:, r] >= 0
                weight = np.where(counts[have] == 1, 3.0, np.where((counts[have] == 2) & (r == 0), 2.0, 1.0))
                out[have] += weight[:, None] * np.asarray(self.voxels[mat[have, r]], dtype=np.float64)
            out /= np.maximum(counts, 3)[:, None]
            return VoxelSplit("test", mode, out.astype(np.float32), images.astype(np.int64),
                              [self.image_ids[i] for i in images.tolist()])
        return self._split("test", mode)

    def _split(self, split: str, mode: Literal["averaged", "single"]) -> VoxelSplit:
        voxels, index = self.split_voxels(split, mode)
        return VoxelSplit(split, mode, voxels, np.asarray(index, dtype=np.int64),
                          [self.image_ids[i] for i in index.tolist()])

    def __repr__(self) -> str:
        from mindeye.utils.reprs import short_path

        t = self.trials
        splits = ", ".join(f"{sp}={int((t.split == sp).sum())}" for sp in SPLITS if (t.split == sp).any())
        try:
            subject = self.subject_id
        except MindEyeError:
            subject = self.meta.get("subject", "?")
        return (f"SubjectStore({short_path(self.path)!r}, subject={subject!r}, "
                f"source={self.meta.get('source', '?')!r}, voxels={self.n_voxels}, trials={self.n_trials} "
                f"({splits}), images={self.n_images} ({self.image_size}px))")

    # -- summary -------------------------------------------------------------------------------
    def summary(self, check: bool = True) -> str:
        t = self.trials
        lines = [
            f"subject store  {self.path}",
            f"  source       {self.meta.get('source', '?')}  subject {self.meta.get('subject', '?')}",
            *([f"  view of      {self.data_path} ({self.view.get('description', 'other splits')})"] if self.view else []),
            f"  format       v{self.meta.get('format_version')} (written by mindeye "
            f"{self.meta.get('mindeye_version', '?')})",
            f"  trials       {self.n_trials}",
            f"  voxels       {self.n_voxels} ({self.voxels.dtype})",
            f"  images       {self.n_images} unique, {self.image_size}x{self.image_size} RGB uint8",
            f"  sessions     {len(np.unique(t.session))} ({int(t.session.min())}-{int(t.session.max())})"
            if len(t) else "  sessions     0",
        ]
        for split in SPLITS:
            rows = self.trial_indices(split)
            if len(rows) == 0:
                continue
            imgs = np.unique(t.image_index[rows])
            reps = np.bincount(np.bincount(t.image_index[rows])[imgs])
            rep_text = ", ".join(f"{k}x:{int(c)}" for k, c in enumerate(reps) if c)
            lines.append(f"  {split:<6}       {len(rows)} trials, {len(imgs)} images (repetitions {rep_text})")
        pre = self.meta.get("preprocessing")
        if pre:
            lines.append(f"  preprocessing {pre}")
        if self.mask_path is not None:
            grid = (self.meta.get("mask") or {}).get("shape")
            lines.append(f"  brain mask   {MASK_FILE}" + (f" (grid {'x'.join(map(str, grid))})" if grid else ""))
        cached = [p.name + _cache_note(p)
                  for p in sorted((self.data_path / "targets").glob("*")) if p.is_dir()] \
            if (self.data_path / "targets").exists() else []
        lines.append(f"  targets      {', '.join(cached) if cached else 'none cached (run mindeye embed)'}")
        if check:
            res = self.verify_checksums()
            bad = [k for k, ok in res.items() if ok is False]
            unrecorded = [k for k, ok in res.items() if ok is None]
            if bad:
                lines.append(f"  checksums    MISMATCH in {', '.join(bad)}")
            elif unrecorded:
                lines.append(f"  checksums    not recorded in meta.json for {', '.join(unrecorded)} (cannot verify)")
            elif any("DAMAGED" in c for c in cached):
                lines.append("  checksums    ok for the store's data files; a target cache is DAMAGED (see targets)")
            else:
                lines.append("  checksums    ok")
        return "\n".join(lines)
