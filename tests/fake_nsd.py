"""Builders of tiny fake NSD releases and MindEye webdataset shards, in the real file formats.

The NSD tree has the official layout and formats (``.mat`` design, NIfTI mask, HDF5 int16 betas stored
(750, z, y, x) or NIfTI (x, y, z, 750), stimuli HDF5 ``imgBrick``), with a small volume and few images so
tests run in seconds. The design is structured like NSD's: 10000 images per subject each shown 3 times
in the 30000-trial ``masterordering``; the first sessions only use a small pool of images (so the
stimuli file stays small), part of which are shared-1000 images.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import scipy.io
from PIL import Image

DEFAULT_BETAS = "betas_fithrf_GLMdenoise_RR"
TRIALS = 750


@dataclass
class FakeNSD:
    root: Path
    mask: np.ndarray  # bool (x, y, z)
    betas: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (subject, session) -> (750, x, y, z) int16
    masterordering: np.ndarray | None = None  # (30000,) 1-based
    subjectim: np.ndarray | None = None  # (8, 10000) 1-based
    sharedix: np.ndarray | None = None  # (1000,) 1-based
    brick: np.ndarray | None = None  # (n_stim, s, s, 3) uint8

    def session_images0(self, subject: int, session: int) -> np.ndarray:
        """0-based 73k ids of the 750 trials of a session."""
        rows = self.masterordering[(session - 1) * TRIALS: session * TRIALS] - 1
        return self.subjectim[subject - 1, rows] - 1

    def betas_path(self, subject: int, session: int, ext: str = "hdf5", betas: str = DEFAULT_BETAS) -> Path:
        return (self.root / f"nsddata_betas/ppdata/subj{subject:02d}/func1pt8mm/{betas}"
                / f"betas_session{session:02d}.{ext}")

    def mask_path(self, subject: int) -> Path:
        return self.root / f"nsddata/ppdata/subj{subject:02d}/func1pt8mm/roi/nsdgeneral.nii.gz"


def build_fake_nsd(
    root: str | Path,
    *,
    subject: int = 1,
    n_sessions: int = 3,
    mask_shape: tuple[int, int, int] = (7, 6, 5),
    n_stim: int = 1200,
    stim_size: int = 20,
    pool: int = 900,
    n_shared_in_pool: int = 120,
    betas_format: str = "hdf5",
    betas_name: str = DEFAULT_BETAS,
    seed: int = 0,
    keep_betas: bool = True,
) -> FakeNSD:
    """Write a fake NSD release for one subject under ``root`` and return what was written.

    Sessions 1..n_sessions (n_sessions * 750 <= 3 * pool) only show images of a pool of ``pool``
    per-subject images, ``n_shared_in_pool`` of which are shared-1000 images.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    assert n_sessions * TRIALS <= 3 * pool and pool <= n_stim

    # -- design: each of 10000 per-subject images three times; the pool fills the first trials
    order = np.concatenate([rng.permutation(np.repeat(np.arange(pool), 3)),
                            rng.permutation(np.repeat(np.arange(pool, 10000), 3))]) + 1
    # 73k ids (0-based): the pool maps to distinct ids below n_stim; shared ones are the first of the pool.
    pool_ids = rng.permutation(n_stim)[:pool]
    shared0 = np.concatenate([pool_ids[:n_shared_in_pool],
                              n_stim + np.arange(1000 - n_shared_in_pool)])  # rest never shown here
    subjectim = np.zeros((8, 10000), dtype=np.int64)
    for s in range(8):
        rest = np.setdiff1d(np.arange(n_stim, 73000), shared0)[: 10000 - pool]
        subjectim[s] = np.concatenate([pool_ids, rest]) + 1
    design_path = root / "nsddata/experiments/nsd/nsd_expdesign.mat"
    design_path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(design_path, {
        "masterordering": order[None].astype(np.float64),  # MATLAB doubles, as in the real file
        "subjectim": subjectim.astype(np.float64),
        "sharedix": (shared0 + 1)[None].astype(np.float64),
    })

    # -- nsdgeneral mask: -1 outside the brain, 0 brain but not ROI, 1 ROI (as the real file)
    mask_vals = rng.choice([-1, 0, 1], size=mask_shape, p=[0.3, 0.2, 0.5]).astype(np.int16)
    mask_vals.flat[0] = 1
    mask_path = root / f"nsddata/ppdata/subj{subject:02d}/func1pt8mm/roi/nsdgeneral.nii.gz"
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(mask_vals, np.diag([1.8, 1.8, 1.8, 1])), mask_path)
    fake = FakeNSD(root=root, mask=mask_vals > 0, masterordering=order, subjectim=subjectim, sharedix=shared0 + 1)

    # -- betas: per-session voxel offsets/scales (so z-scoring matters) + image signal + noise
    image_pattern = rng.normal(size=(n_stim,) + mask_shape).astype(np.float32)
    for session in range(1, n_sessions + 1):
        ids = fake.session_images0(subject, session)
        offset = rng.normal(0, 300, size=mask_shape)
        scale = rng.uniform(100, 600, size=mask_shape)
        vol = offset + scale * (image_pattern[ids] + rng.normal(size=(TRIALS,) + mask_shape))
        betas = np.clip(np.round(vol), -32768, 32767).astype(np.int16)  # (750, x, y, z)
        write_betas(fake.betas_path(subject, session, "hdf5" if betas_format == "hdf5" else "nii.gz", betas_name),
                    betas)
        if keep_betas:
            fake.betas[(subject, session)] = betas

    # -- stimuli
    brick = rng.integers(0, 256, size=(n_stim, stim_size, stim_size, 3), dtype=np.uint8)
    stim_path = root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
    stim_path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(stim_path, "w") as f:
        f.create_dataset("imgBrick", data=brick, chunks=(1, stim_size, stim_size, 3))
    fake.brick = brick
    return fake


def write_betas(path: Path, betas_xyz: np.ndarray, chunks: tuple[int, ...] | None = None,
                compression: str | None = None) -> None:
    """(750, x, y, z) int16 -> NSD's HDF5 layout (750, z, y, x) or NIfTI (x, y, z, 750) by file suffix.

    ``chunks=(750, 1, 1, 1)`` is the official NSD HDF5 layout (MATLAB's [1 1 1 750]); default contiguous.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".hdf5":
        with h5py.File(path, "w") as f:
            f.create_dataset("betas", data=betas_xyz.transpose(0, 3, 2, 1), chunks=chunks, compression=compression)
    else:
        nib.save(nib.Nifti1Image(np.ascontiguousarray(betas_xyz.transpose(1, 2, 3, 0)), np.eye(4)), path)


# ----------------------------------------------------------------------------------------------
# webdataset shards


@dataclass
class FakeShardSample:
    coco: int
    split: str
    voxels: np.ndarray  # (3, nvox) float32, rows of missing repetitions are NaN or 0
    trials: np.ndarray  # (3,) global 0-based trial numbers, -1 where missing
    image: np.ndarray  # (S, S, 3) uint8 as decoded from the shard


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def build_fake_shards(
    root: str | Path,
    *,
    subject: int = 1,
    n_voxels: int = 40,
    counts: dict[str, tuple[int, int]] | None = None,
    size: int = 16,
    seed: int = 0,
) -> list[FakeShardSample]:
    """Write ``train/train_subjNN_{i}.tar``, ``val/...``, ``test/...`` like the authors' shards.

    ``counts[split] = (n_shards, samples_per_shard)``. Train images are stored as JPEG (``jpg``),
    val/test as ``jpg`` holding a 3xSxS float npy (both occur in the wild). Some samples miss one
    repetition (NaN row in train, zero row in test) with trial -1.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    counts = counts or {"train": (2, 5), "val": (1, 3), "test": (2, 4)}
    samples: list[FakeShardSample] = []
    coco_pool = rng.permutation(73000)
    trial_pool = rng.permutation(30000)
    k = 0
    for split, (n_shards, per_shard) in counts.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for shard in range(n_shards):
            with tarfile.open(root / split / f"{split}_subj{subject:02d}_{shard}.tar", "w") as tar:
                for _ in range(per_shard):
                    vox = rng.normal(size=(3, n_voxels)).astype(np.float32)
                    trials = trial_pool[3 * k: 3 * k + 3].astype(np.int64)
                    if k % 4 == 1:  # a missing third repetition
                        vox[2] = np.nan if split == "train" else 0.0
                        trials[2] = -1
                    img = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                    if split == "train":
                        buf = io.BytesIO()
                        Image.fromarray(img).save(buf, format="JPEG", quality=95)
                        img_bytes = buf.getvalue()
                        img = np.asarray(Image.open(io.BytesIO(img_bytes)).convert("RGB"))
                    else:
                        img_bytes = _npy(img.transpose(2, 0, 1).astype(np.float32) / 255.0)
                    files = {"jpg": img_bytes, "nsdgeneral.npy": _npy(vox.astype(np.float16)),
                             "trial.npy": _npy(trials), "coco73k.npy": _npy(np.array(coco_pool[k])),
                             "num_uniques.npy": _npy(np.array(int((trials >= 0).sum())))}
                    for ext, data in files.items():
                        info = tarfile.TarInfo(f"sample{k:09d}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
                    samples.append(FakeShardSample(int(coco_pool[k]), split, vox.astype(np.float16).astype(np.float32),
                                                   trials, img))
                    k += 1
    return samples
