"""The MindEye authors' published webdataset shards -> subject store (``mindeye prepare webdataset``).

Layout (``webdataset_avg_split`` on the authors' Hugging Face dataset)::

    train/train_subj01_{0..17}.tar   val/val_subj01_0.tar   test/test_subj01_{0..1}.tar

Each sample is one unique image with its repetitions: ``jpg`` / ``png`` (the image; a numpy array in
``.npy`` format is accepted too), ``nsdgeneral.npy`` (3 x n_voxels, one row per repetition -- rows of
repetitions the subject never had are NaN or all zero and are skipped), ``trial.npy`` (the
repetitions' trial numbers, used for session and order), ``coco73k.npy`` (0-based 73k index) and
``num_uniques.npy``. The voxels are already nsdgeneral-masked and z-scored per session by the
authors, so they are stored as they are (no second z-scoring).

Store rows are ordered by trial number where known (session = trial // 750 + 1, taking trial.npy as
0-based global trial numbers; 0 = unknown), image ids are ``nsd-XXXXX`` with the 0-based 73k index,
exactly as :mod:`mindeye.data.nsd` writes them, so both routes give comparable stores.

The shards are read twice (a cheap first pass skips the images to size the store), each through the
``webdataset`` library; a corrupt or truncated tar raises a MindEyeError naming the shard.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mindeye.data.nsd import TRIALS_PER_SESSION, nsd_image_id
from mindeye.data.shards import check_shard, iter_shard  # noqa: F401  (check_shard: re-exported)
from mindeye.data.store import SPLITS, StoreWriter, TrialTable, check_output_dir
from mindeye.errors import MindEyeError
from mindeye.safe_load import npy_error
from mindeye.utils.images import decode_image, resize_image

VOXEL_KEY = "nsdgeneral.npy"
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "image", "img", "image.npy", "img.npy", "jpg.npy", "png.npy")


def find_shards(root: str | Path, subject: int) -> list[tuple[str, Path]]:
    """(split, path) of the subject's .tar shards under ``root``, train/val/test then numeric order.

    Shards are matched to the subject by a ``subjNN`` tag in their path (when any shard has one), and
    to a split by ``train``/``val``/``test`` in the file name or a parent directory name.
    """
    root = Path(root)
    if not root.is_dir():
        raise MindEyeError(f"--shards {root} is not a directory; point it at the folder holding the .tar shards")
    tars = sorted(root.rglob("*.tar"))
    if not tars:
        raise MindEyeError(f"no .tar shards found under {root}; download the MindEye webdataset shards (docs/nsd.md)")
    tag = re.compile(r"subj0?(\d)(?!\d)")
    tagged = {p: tag.search(str(p.relative_to(root))) for p in tars}
    if any(tagged.values()):
        mine = [p for p in tars if tagged[p] and int(tagged[p].group(1)) == subject]
        if not mine:
            found = sorted({int(m.group(1)) for m in tagged.values() if m})
            raise MindEyeError(f"no shards of subject {subject} (subj{subject:02d}) under {root}; found shards of "
                               f"subject(s) {found}")
    else:
        mine = tars
    out: list[tuple[str, Path]] = []
    for p in mine:
        split = _split_of(p.relative_to(root))
        if split is None:
            raise MindEyeError(f"cannot tell whether shard {p} is train, val or test; put it in a train/, val/ or "
                               "test/ folder or name it train_..., val_... or test_...")
        out.append((split, p))
    natural = lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]  # noqa: E731
    return sorted(out, key=lambda sp: (SPLITS.index(sp[0]), natural(sp[1])))


def _split_of(rel: Path) -> str | None:
    for part in [rel.name, *reversed(rel.parent.parts)]:
        found = [s for s in SPLITS if re.search(rf"(?<![a-z]){s}(?![a-z])", part.lower())]
        if len(found) == 1:
            return found[0]
    return None




def _npy(sample: dict[str, Any], key: str, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(sample[key]), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise MindEyeError(f"{where}: cannot read {key} ({npy_error(exc)}); the shard is damaged, download it "
                           "again") from None


@dataclass
class _Sample:
    key: str
    split: str
    shard: Path
    coco: int
    n_rows: int  # rows in nsdgeneral.npy
    reps: list[int]  # rows of nsdgeneral.npy that hold a repetition
    trials: list[float]  # trial number per kept row (inf = unknown)


def _read_meta(sample: dict[str, Any], split: str, shard: Path) -> tuple[_Sample, int]:
    where = f"shard {shard}, sample {sample.get('__key__')}"
    missing = [k for k in (VOXEL_KEY, "coco73k.npy") if k not in sample]
    if missing:
        present = sorted(k for k in sample if not k.startswith("__"))
        raise MindEyeError(f"{where} lacks {', '.join(missing)} (has {', '.join(present)}); these are not MindEye "
                           "NSD shards, or the shard is truncated")
    vox = _npy(sample, VOXEL_KEY, where).astype(np.float32)
    vox = vox[None] if vox.ndim == 1 else vox.reshape(vox.shape[0], -1)
    reps = [r for r in range(len(vox)) if np.isfinite(vox[r]).all() and np.any(vox[r] != 0)]
    trial_nums = [np.inf] * len(vox)
    if "trial.npy" in sample:
        t = _npy(sample, "trial.npy", where).astype(np.float64).reshape(-1)
        if len(t) == len(vox):
            trial_nums = [float(v) if np.isfinite(v) and v >= 0 else np.inf for v in t]
    coco = int(_npy(sample, "coco73k.npy", where).reshape(-1)[0])
    return _Sample(sample["__key__"], split, shard, coco, len(vox), reps, [trial_nums[r] for r in reps]), vox.shape[1]


def prepare_webdataset(
    shards: str | Path,
    subject: int,
    out: str | Path,
    *,
    image_size: int = 256,
    voxel_dtype: str = "float16",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Prepare one subject from the MindEye webdataset shards into a store at ``out``; returns its path."""
    out = Path(out)
    check_output_dir(out, overwrite)
    shard_list = find_shards(shards, subject)
    not_image = lambda name: not any(name.lower().endswith("." + k) for k in IMAGE_KEYS)  # noqa: E731

    # Pass 1: everything but the images, to size the store and order its rows.
    samples: list[_Sample] = []
    n_vox: int | None = None
    for split, path in tqdm(shard_list, desc="reading shards (1/2)", unit="shard", disable=not progress):
        for raw in iter_shard(path, select_files=not_image):
            s, nv = _read_meta(raw, split, path)
            if n_vox is not None and nv != n_vox:
                raise MindEyeError(f"shard {path}, sample {s.key} has {nv} voxels but earlier samples have {n_vox}; "
                                   "all shards must be of the same subject")
            n_vox = nv
            samples.append(s)
    if not samples or n_vox is None:
        raise MindEyeError(f"the shards under {shards} hold no samples")
    split_of: dict[int, _Sample] = {}
    for s in samples:
        first = split_of.setdefault(s.coco, s)
        if first.split != s.split:
            raise MindEyeError(f"image {nsd_image_id(s.coco)} is in {first.split} shard {first.shard} and in "
                               f"{s.split} shard {s.shard}; splits must not share images")

    # Rows: every kept repetition, in trial order where known (else shard order).
    entries = [(t, k, r) for k, s in enumerate(samples) for r, t in zip(s.reps, s.trials)]
    entries.sort(key=lambda e: (e[0], e[1], e[2]))
    if not entries:
        raise MindEyeError(f"every repetition in the shards under {shards} is empty (NaN or zero voxels)")
    row_of = {(k, r): i for i, (_, k, r) in enumerate(entries)}
    cocos = np.unique([s.coco for s in samples])
    image_index = np.array([np.searchsorted(cocos, samples[k].coco) for _, k, _ in entries], dtype=np.int64)
    repetition = np.zeros(len(entries), dtype=np.int64)
    seen: dict[int, int] = {}
    for i, idx in enumerate(image_index.tolist()):
        repetition[i] = seen.get(idx, 0)
        seen[idx] = repetition[i] + 1
    trial_num = np.array([t for t, _, _ in entries])
    session = np.where(np.isfinite(trial_num), np.nan_to_num(trial_num, posinf=0) // TRIALS_PER_SESSION + 1, 0)
    n_missing = sum(s.n_rows - len(s.reps) for s in samples)

    writer = StoreWriter(out, n_trials=len(entries), n_voxels=n_vox, n_images=len(cocos), image_size=image_size,
                         voxel_dtype=voxel_dtype, overwrite=overwrite)
    try:
        # Pass 2: voxels and images into their rows.
        k = 0
        for _split, path in tqdm(shard_list, desc="reading shards (2/2)", unit="shard", disable=not progress):
            for raw in iter_shard(path):
                if k >= len(samples) or raw["__key__"] != samples[k].key:
                    raise MindEyeError(f"shard {path} changed while it was being read; run again")
                s = samples[k]
                where = f"shard {path}, sample {s.key}"
                vox = _npy(raw, VOXEL_KEY, where).astype(np.float32)
                vox = vox[None] if vox.ndim == 1 else vox.reshape(vox.shape[0], -1)
                for r in s.reps:
                    writer.write_voxels(row_of[(k, r)], vox[r][None])
                img_key = next((key for key in IMAGE_KEYS if key in raw), None)
                if img_key is None:
                    raise MindEyeError(f"{where} has no image (looked for {', '.join(IMAGE_KEYS)}); the shard is "
                                       "truncated or not a MindEye shard")
                img = resize_image(decode_image(raw[img_key], where, "the shard is damaged"), image_size)
                writer.write_images(int(np.searchsorted(cocos, s.coco)), img[None])
                k += 1
        if k != len(samples):
            raise MindEyeError(f"the shards under {shards} changed while being read; run again")
        splits = np.array([samples[k].split for _, k, _ in entries])
        writer.set_trials(TrialTable(image_index=image_index, session=session.astype(np.int64),
                                     repetition=repetition, split=splits))
        writer.set_images([nsd_image_id(c) for c in cocos.tolist()])
        root = Path(shards)
        return writer.finalize({
            "source": "nsd-webdataset",
            "subject": subject,
            "subject_id": f"subj{subject:02d}",
            "shards": [str(p.relative_to(root)) for _, p in shard_list],
            "preprocessing": "as published in the MindEye webdataset shards (nsdgeneral voxels, z-scored per "
                             "session by the authors); not z-scored again",
            "zscored": "by the authors (not re-z-scored)",
            "missing_repetitions": int(n_missing),
            "sessions_from": "trial.npy as 0-based global trial numbers: session = trial // 750 + 1 (0 = unknown)",
            "image_id_format": "nsd-XXXXX, XXXXX = 0-based 73k index (coco73k.npy; imgBrick row)",
            "test_images": "the test shards (shared-1000 images; average the repetitions when evaluating)",
        })
    except BaseException:
        writer.abort()  # close the memory maps, then drop the unfinished store
        raise
