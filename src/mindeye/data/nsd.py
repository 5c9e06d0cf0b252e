"""Raw Natural Scenes Dataset release -> subject store (``mindeye prepare nsd``).

Reads the official NSD layout under ``--nsd-root`` (see docs/nsd.md for what to download)::

    nsddata/experiments/nsd/nsd_expdesign.mat                         masterordering, subjectim, sharedix
    nsddata/ppdata/subjNN/func1pt8mm/roi/nsdgeneral.nii.gz           ROI mask (x, y, z), voxel = value > 0
    nsddata_betas/ppdata/subjNN/func1pt8mm/<betas>/betas_sessionNN.hdf5   (750, z, y, x) int16
        (or betas_sessionNN.nii.gz, (x, y, z, 750) int16, used when the HDF5 is absent)
    nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5                     imgBrick (73000, 425, 425, 3) uint8

Preprocessing (as MindEye v1): betas / 300 = percent signal change; nsdgeneral voxels in NIfTI
(x, y, z) orientation flattened in C order (the order the authors' checkpoints expect); each voxel
z-scored over the trials of its session (all 750, or with ``zscore_exclude_test`` only the
non-shared-1000 trials, as the MindEye2 notes recommend). Splits are made by image: the shared-1000
images the subject saw go to test, the rest to train (optionally some to val).

Image ids are ``"nsd-XXXXX"`` with XXXXX the **0-based** 73k index, i.e. the row of imgBrick, the
``nsdId`` column of nsd_stim_info_merged.csv and the value of the shards' ``coco73k.npy``
(= NSD's 1-based "73k ID" minus one).

The work streams one session at a time and never holds a whole session's volumes: peak memory is
about one session of masked voxels (750 x n_voxels float32, ~50 MB) plus, for contiguous HDF5 / NIfTI
files, one block of ``chunk_trials`` whole volumes (1.4 MB each at 1.8 mm); measured ~175 MB resident
for subject-1-sized data (docs/nsd.md). Each finished session is recorded with
:meth:`StoreWriter.mark_done`, so an interrupted run resumes where it stopped.

Over ~400 lines on purpose: one pipeline from the NSD release to a store (design file, ROI mask,
betas, per-session z-scoring, test-set conventions) whose steps share the NSD layout and run only together.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mindeye.constants import DEFAULT_BETAS, NSDGENERAL_VOXELS
from mindeye.data.sessions import number_repetitions, zscore_session
from mindeye.data.store import StoreWriter, TrialTable, check_output_dir
from mindeye.errors import MindEyeError
from mindeye.utils.images import resize_image
from mindeye.utils.logs import progress_bar

log = logging.getLogger(__name__)

TRIALS_PER_SESSION = 750
N_NSD_IMAGES = 73000
RELEASED_SESSIONS = {1: 40, 2: 40, 3: 32, 4: 30, 5: 40, 6: 32, 7: 40, 8: 30}
# NSD withheld every subject's last 3 sessions until the full release; the MindEye paper used
# what was out then (sessions 1-37 of subject 1).
WITHHELD_SESSIONS = 3
# Test conventions: "v1" = MindEye v1's test set (shared-1000 images seen in the sessions released
# before the full release: 1-37 for subject 1, 982 images / 2,770 trials); "v2" = MindEye2's
# "new_test" (every shared-1000 image over all released sessions, 3,000 trials for subject 1) with
# each session z-scored using its non-shared-1000 trials only.
TEST_SETS = ("v1", "v2")
KNOWN_NSDGENERAL_VOXELS = NSDGENERAL_VOXELS
BETAS_SCALE = 300.0  # NSD stores betas as int16 percent signal change x 300


def nsd_image_id(index0: int) -> str:
    """Store image id of a 0-based 73k index (row of imgBrick)."""
    return f"nsd-{int(index0):05d}"


# ----------------------------------------------------------------------------------------------
# files


@dataclass(frozen=True)
class NSDPaths:
    """Where the files of one subject live inside an NSD download."""

    root: Path
    subject: int
    betas: str = DEFAULT_BETAS

    @property
    def expdesign(self) -> Path:
        return self.root / "nsddata/experiments/nsd/nsd_expdesign.mat"

    @property
    def mask(self) -> Path:
        return self.root / f"nsddata/ppdata/subj{self.subject:02d}/func1pt8mm/roi/nsdgeneral.nii.gz"

    @property
    def stimuli(self) -> Path:
        return self.root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"

    def betas_dir(self) -> Path:
        return self.root / f"nsddata_betas/ppdata/subj{self.subject:02d}/func1pt8mm/{self.betas}"

    def betas_hdf5(self, session: int) -> Path:
        return self.betas_dir() / f"betas_session{session:02d}.hdf5"

    def betas_nifti(self, session: int) -> Path:
        return self.betas_dir() / f"betas_session{session:02d}.nii.gz"

    def betas_file(self, session: int) -> Path | None:
        """The HDF5 betas of a session, else the NIfTI version, else None."""
        for path in (self.betas_hdf5(session), self.betas_nifti(session)):
            if path.exists():
                return path
        return None


def convention_sessions(subject: int, test_set: str = "v1") -> list[int]:
    """Sessions a test convention uses: v1 all but the last 3 released (1-37 for subjects 1, 2, 5, 7;
    1-29 for 3 and 6; 1-27 for 4 and 8), v2 every released session."""
    if test_set not in TEST_SETS:
        raise MindEyeError(f"unknown --test-set {test_set!r}; choose v1 (MindEye v1) or v2 (MindEye2 new_test)")
    released = RELEASED_SESSIONS[subject]
    return list(range(1, released + 1 - (WITHHELD_SESSIONS if test_set == "v1" else 0)))


def parse_sessions(text: str | None, subject: int, test_set: str = "v1") -> list[int]:
    """``"1-37"``, ``"1,3,5-7"`` or ``"all"`` -> sorted session numbers, checked against the release.

    ``None`` means the sessions of the test convention (:func:`convention_sessions`).
    """
    released = RELEASED_SESSIONS[subject]
    if text is None:
        return convention_sessions(subject, test_set)
    if text.strip().lower() == "all":
        return list(range(1, released + 1))
    sessions: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise MindEyeError(f"cannot read --sessions {text!r}; write e.g. '1-37', '1,3,5-7' or 'all'")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo < 1 or hi < lo:
            raise MindEyeError(f"bad session range {part.strip()!r} in --sessions; sessions are numbered from 1")
        sessions.update(range(lo, hi + 1))
    beyond = sorted(s for s in sessions if s > released)
    if beyond:
        raise MindEyeError(
            f"subject {subject} has {released} released NSD sessions, but --sessions asks for "
            f"{_ranges(beyond)}; choose sessions within 1-{released}"
        )
    return sorted(sessions)


def _ranges(values: list[int]) -> str:
    """[1,2,3,7] -> '1-3, 7' (short lists of session numbers in messages)."""
    out: list[str] = []
    for v in values:
        if out and int(out[-1].split("-")[-1]) == v - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{v}"
        else:
            out.append(str(v))
    return ", ".join(out)


def check_nsd_files(paths: NSDPaths, sessions: list[int]) -> None:
    """Raise one MindEyeError listing every file that is missing (not just the first)."""
    missing = [p for p in (paths.expdesign, paths.mask, paths.stimuli) if not p.exists()]
    for s in sessions:
        if paths.betas_file(s) is None:
            missing.append(paths.betas_hdf5(s))
    if missing:
        listing = "\n  ".join(str(p.relative_to(paths.root)) for p in missing)
        no_betas = [s for s in sessions if paths.betas_file(s) is None]
        extra = (f"\n(betas missing for session(s) {_ranges(no_betas)}; a betas_sessionNN.nii.gz is accepted "
                 "instead of the .hdf5)") if no_betas else ""
        raise MindEyeError(
            f"{len(missing)} NSD file(s) needed for subject {paths.subject} are missing under {paths.root}:\n  "
            f"{listing}{extra}\nDownload them as described in docs/nsd.md (aws s3 cp "
            "s3://natural-scenes-dataset/<path> ...), or pick other sessions with --sessions / --max-sessions."
        )


# ----------------------------------------------------------------------------------------------
# experimental design


@dataclass
class NSDDesign:
    """nsd_expdesign.mat converted to 0-based indices."""

    masterordering: np.ndarray  # (30000,) 0-based index into a subject's 10000 images
    subjectim: np.ndarray  # (8, 10000) 0-based 73k index of each subject's images
    shared: np.ndarray  # (1000,) 0-based 73k index of the shared images


def load_design(path: Path) -> NSDDesign:
    try:
        import scipy.io

        mat = scipy.io.loadmat(str(path))
        get = lambda k: np.asarray(mat[k])  # noqa: E731
    except NotImplementedError:  # MATLAB v7.3 files are HDF5; h5py shows them transposed
        import h5py

        f = h5py.File(path, "r")
        get = lambda k: np.asarray(f[k]).T  # noqa: E731
    except Exception as exc:  # noqa: BLE001 - anything unreadable is a user-fixable bad file
        raise MindEyeError(f"cannot read the NSD design file {path} ({exc}); download it again") from None
    try:
        design = NSDDesign(
            masterordering=get("masterordering").reshape(-1).astype(np.int64) - 1,
            subjectim=get("subjectim").astype(np.int64) - 1,
            shared=get("sharedix").reshape(-1).astype(np.int64) - 1,
        )
    except KeyError as exc:
        raise MindEyeError(f"{path} lacks the variable {exc}; it is not NSD's nsd_expdesign.mat") from None
    if design.subjectim.ndim != 2 or design.subjectim.shape[0] != 8:
        raise MindEyeError(f"{path}: subjectim has shape {design.subjectim.shape}, expected (8, 10000)")
    if design.masterordering.min() < 0 or design.masterordering.max() >= design.subjectim.shape[1]:
        raise MindEyeError(f"{path}: masterordering refers outside subjectim; the file is damaged")
    return design


@dataclass
class SessionTrials:
    """Every trial of the chosen sessions, in experiment order (one entry per trial)."""

    nsd_id: np.ndarray  # 0-based 73k index of the image shown
    session: np.ndarray  # 1-based session number
    repetition: np.ndarray  # presentations of this image before this trial (0, 1, 2) in the whole experiment
    shared: np.ndarray  # bool: image is one of the shared 1000


def subject_trials(design: NSDDesign, subject: int, sessions: list[int]) -> SessionTrials:
    order = design.masterordering
    needed = max(sessions) * TRIALS_PER_SESSION
    if len(order) < needed:
        raise MindEyeError(f"the design has {len(order)} trials, fewer than session {max(sessions)} needs")
    # Repetition counts every earlier presentation, also in sessions not prepared, so a session
    # subset keeps the true "seen before" number.
    rep_all = number_repetitions(order)
    rows = np.concatenate([np.arange((s - 1) * TRIALS_PER_SESSION, s * TRIALS_PER_SESSION) for s in sessions])
    nsd_id = design.subjectim[subject - 1, order[rows]]
    return SessionTrials(
        nsd_id=nsd_id,
        session=np.repeat(np.asarray(sessions, dtype=np.int64), TRIALS_PER_SESSION),
        repetition=rep_all[rows],
        shared=np.isin(nsd_id, design.shared),
    )


def assign_splits(
    trials: SessionTrials,
    *,
    val_fraction: float = 0.0,
    train_fraction: float = 1.0,
    train_images: int | None = None,
    seed: int = 0,
    trainable: np.ndarray | None = None,
) -> np.ndarray:
    """Split label per trial: shared images -> test, others -> val/train; '' = trial left out.

    ``val_fraction`` of the non-shared images (seeded) become val; of the remaining train images a
    seeded ``train_fraction`` (or exactly ``train_images``) is kept with all its trials (paper Table 9).
    ``trainable`` (bool per trial) limits train/val to those trials (few-session stores); the
    shared images' trials stay test wherever they are.
    """
    for name, f in (("val fraction", val_fraction), ("train fraction", train_fraction)):
        if not 0 <= f <= 1:
            raise MindEyeError(f"{name} must be between 0 and 1, got {f}")
    rng = np.random.default_rng(seed)
    trainable = np.ones(len(trials.nsd_id), dtype=bool) if trainable is None else np.asarray(trainable, dtype=bool)
    others = np.unique(trials.nsd_id[~trials.shared & trainable])
    perm = rng.permutation(others)
    n_val = int(round(val_fraction * len(perm)))
    val, train = np.sort(perm[:n_val]), perm[n_val:]
    n_train = len(train) if train_images is None else train_images
    if train_images is None:
        n_train = int(round(train_fraction * len(train)))
    elif not 0 < train_images <= len(train):
        raise MindEyeError(f"--train-images {train_images} asks for more than the {len(train)} training "
                           "images in the chosen sessions; lower it")
    if n_train == 0:
        raise MindEyeError("no training images left; raise --train-fraction / --train-images or use more sessions")
    kept_train = train[rng.permutation(len(train))[:n_train]]
    split = np.full(len(trials.nsd_id), "", dtype=object)
    split[np.isin(trials.nsd_id, kept_train) & trainable] = "train"
    split[np.isin(trials.nsd_id, val) & trainable] = "val"
    split[trials.shared] = "test"
    return split.astype(str)


# ----------------------------------------------------------------------------------------------
# voxels


def load_mask(path: Path) -> np.ndarray:
    """nsdgeneral ROI as a boolean (x, y, z) array (NIfTI orientation); a voxel is in when value > 0."""
    import nibabel as nib

    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as exc:  # noqa: BLE001
        raise MindEyeError(f"cannot read the nsdgeneral mask {path} ({exc}); download it again") from None
    if data.ndim != 3:
        raise MindEyeError(f"{path} has shape {data.shape}; the nsdgeneral mask must be a 3-D volume")
    mask = data > 0
    if not mask.any():
        raise MindEyeError(f"{path} contains no voxel > 0; it is not an nsdgeneral mask")
    return mask


class BetasReader:
    """One session's betas masked to (750 trials, n_voxels) float32 percent signal change.

    HDF5: dataset ``betas`` (750, z, y, x) = the NIfTI volume transposed. NIfTI: (x, y, z, 750).
    Either way voxels come out in C order of the (x, y, z) mask. How it reads depends on the layout:

    * NSD's official HDF5 files are chunked (750, 1, 1, 1) -- all trials of one voxel per chunk --
      so they are read voxel row by voxel row (a (z, y) line of x), touching only the chunks of
      lines that hold mask voxels (a few % of the file);
    * contiguous HDF5 and NIfTI files are read ``chunk_trials`` whole volumes at a time.
    """

    def __init__(self, path: Path, mask: np.ndarray) -> None:
        self.path = path
        self.mask = mask
        self.kind = "hdf5" if path.suffix == ".hdf5" else "nifti"
        if self.kind == "hdf5":
            import h5py

            try:
                self._file = h5py.File(path, "r")
                self._data = self._file["betas"]
            except Exception as exc:  # noqa: BLE001
                raise MindEyeError(f"cannot read dataset 'betas' from {path} ({exc}); download it again") from None
            shape = tuple(self._data.shape)
            self.n_trials, volume = (shape[0], shape[1:][::-1]) if len(shape) == 4 else (0, shape)
            chunks = self._data.chunks
            self.by_voxel = bool(chunks) and chunks[0] > 1 and len(shape) == 4 and int(np.prod(chunks[1:])) < 64
            self.trial_step = int(chunks[0]) if chunks and not self.by_voxel else 1
        else:
            import nibabel as nib

            try:
                self._img = nib.load(str(path), keep_file_open=True)
            except Exception as exc:  # noqa: BLE001
                raise MindEyeError(f"cannot read {path} ({exc}); download it again") from None
            shape = tuple(self._img.shape)
            self.n_trials, volume = (shape[3], shape[:3]) if len(shape) == 4 else (0, shape)
            self.by_voxel, self.trial_step = False, 1
        if tuple(volume) != mask.shape or self.n_trials != TRIALS_PER_SESSION:
            self.close()
            raise MindEyeError(
                f"{path} holds betas of shape {shape} (volume {tuple(volume)}, {self.n_trials} trials) but the "
                f"nsdgeneral mask has shape {mask.shape} and a session has {TRIALS_PER_SESSION} trials; "
                "the betas must be the same subject and resolution (func1pt8mm) as the mask"
            )

    def read_session(self, chunk_trials: int) -> np.ndarray:
        out = np.empty((self.n_trials, int(self.mask.sum())), dtype=np.float32)
        if self.by_voxel:
            self._read_by_voxel(out)
        else:
            step = -(-chunk_trials // self.trial_step) * self.trial_step  # whole HDF5 chunks
            for start in range(0, self.n_trials, step):
                stop = min(start + step, self.n_trials)
                out[start:stop] = self._read_trials(start, stop)
        out /= np.float32(BETAS_SCALE)
        return out

    def _read_trials(self, start: int, stop: int) -> np.ndarray:
        if self.kind == "hdf5":
            chunk = self._data[start:stop]  # (k, z, y, x) int16
            x, y, z = np.nonzero(self.mask)  # C order over (x, y, z)
            return chunk[:, z, y, x]
        chunk = np.asarray(self._img.dataobj[..., start:stop])  # (x, y, z, k); trials are contiguous
        return chunk[self.mask].T

    def _read_by_voxel(self, out: np.ndarray) -> None:
        column = np.full(self.mask.shape, -1, dtype=np.int64)
        column[self.mask] = np.arange(out.shape[1])  # store column of each mask voxel
        for z in range(self.mask.shape[2]):
            for y in np.flatnonzero(self.mask[:, :, z].any(0)):
                xs = np.flatnonzero(self.mask[:, y, z])
                line = self._data[:, z, y, xs[0]: xs[-1] + 1]  # (750, span) int16
                out[:, column[xs, y, z]] = line[:, xs - xs[0]]

    def close(self) -> None:
        if self.kind == "hdf5" and hasattr(self, "_file"):
            self._file.close()
        elif hasattr(self, "_img"):
            self._img.uncache()


# ----------------------------------------------------------------------------------------------
# the whole preparation


def prepare_nsd(
    nsd_root: str | Path,
    subject: int,
    out: str | Path,
    *,
    sessions: str | list[int] | None = None,
    betas: str = DEFAULT_BETAS,
    image_size: int = 256,
    val_fraction: float = 0.0,
    train_fraction: float = 1.0,
    train_images: int | None = None,
    max_sessions: int | None = None,
    zscore_exclude_test: bool = False,
    test_set: str = "v1",
    train_sessions: int | None = None,
    seed: int = 0,
    voxel_dtype: str = "float16",
    overwrite: bool = False,
    restart: bool = False,
    chunk_trials: int = 50,
    progress: bool = True,
) -> Path:
    """Prepare one NSD subject into a subject store at ``out``; returns its path.

    ``test_set`` picks the test convention (:data:`TEST_SETS`): the default sessions and, for
    ``"v2"``, z-scoring without the shared-1000 trials. ``train_sessions=N`` keeps training trials
    from the first N sessions only; the test set is unchanged. An interrupted run leaves
    ``OUT.partial``; calling again with the same options resumes after the last finished session
    (``restart=True`` discards it instead).
    """
    import h5py

    root, out = Path(nsd_root), Path(out)
    if subject not in RELEASED_SESSIONS:
        raise MindEyeError(f"NSD has subjects 1-8; got --subject {subject}")
    if not root.is_dir():
        raise MindEyeError(f"--nsd-root {root} is not a directory; point it at your NSD download (docs/nsd.md)")
    check_output_dir(out, overwrite)
    if test_set not in TEST_SETS:
        raise MindEyeError(f"unknown --test-set {test_set!r}; choose v1 (MindEye v1) or v2 (MindEye2 new_test)")
    if test_set == "v2":
        zscore_exclude_test = True  # MindEye2: statistics from each session's non-shared-1000 trials
    if sessions is not None and not isinstance(sessions, str):
        sessions = ",".join(str(int(s)) for s in sessions)
    session_list = parse_sessions(sessions, subject, test_set)
    if max_sessions is not None:
        if max_sessions < 1:
            raise MindEyeError(f"--max-sessions must be at least 1, got {max_sessions}")
        session_list = session_list[:max_sessions]
    if train_sessions is not None and not 1 <= train_sessions <= len(session_list):
        raise MindEyeError(f"--train-sessions must be between 1 and the {len(session_list)} chosen sessions, "
                           f"got {train_sessions}")
    training_sessions = session_list if train_sessions is None else session_list[:train_sessions]
    if chunk_trials < 1:
        raise MindEyeError(f"chunk size must be at least 1 trial, got {chunk_trials}")

    paths = NSDPaths(root, subject, betas)
    check_nsd_files(paths, session_list)
    warnings: list[str] = []
    mask = load_mask(paths.mask)
    n_vox = int(mask.sum())
    if n_vox != KNOWN_NSDGENERAL_VOXELS[subject]:
        msg = (f"the nsdgeneral mask {paths.mask} selects {n_vox} voxels, but NSD's subj{subject:02d} mask has "
               f"{KNOWN_NSDGENERAL_VOXELS[subject]}; using the mask as given (checkpoints trained on the "
               "official mask will not fit this store)")
        log.warning(msg)
        warnings.append(msg)
    # Open every session once up front so a wrong-shaped file fails now, not hours in.
    betas_files = {s: paths.betas_file(s) for s in session_list}
    shape_errors = []
    for path in betas_files.values():
        try:
            BetasReader(path, mask).close()
        except MindEyeError as exc:
            shape_errors.append(str(exc))
    if shape_errors:
        raise MindEyeError("\n".join(shape_errors))

    design = load_design(paths.expdesign)
    trials = subject_trials(design, subject, session_list)
    split = assign_splits(trials, val_fraction=val_fraction, train_fraction=train_fraction,
                          train_images=train_images, seed=seed,
                          trainable=np.isin(trials.session, training_sessions))
    keep = split != ""
    image_ids0 = np.unique(trials.nsd_id[keep])  # 0-based 73k ids, ascending = store image order

    with h5py.File(paths.stimuli, "r") as f:
        brick_shape = _check_brick(f, paths.stimuli, int(image_ids0.max()))

    config = {"subject": subject, "betas": betas, "sessions": session_list, "image_size": image_size,
              "val_fraction": val_fraction, "train_fraction": train_fraction, "train_images": train_images,
              "zscore_exclude_test": zscore_exclude_test, "seed": seed, "voxel_dtype": voxel_dtype,
              "test_set": test_set, "train_sessions": train_sessions}
    partial = out.with_name(out.name + ".partial")
    resume = not restart and (partial / "progress.json").exists()
    if resume:
        old = json.loads((partial / "progress.json").read_text()).get("config")
        if old is not None and old != config:
            changed = sorted(k for k in config if old.get(k) != config[k])
            raise MindEyeError(
                f"{partial} holds an interrupted preparation with different options ({', '.join(changed)}); "
                "re-run with the same options to resume it, or pass --restart to start over"
            )
    writer = StoreWriter(out, n_trials=int(keep.sum()), n_voxels=n_vox, n_images=len(image_ids0),
                         image_size=image_size, voxel_dtype=voxel_dtype, overwrite=overwrite, resume=resume)
    if "config" not in writer.progress:
        writer.mark_done("config", config)

    image_index = np.searchsorted(image_ids0, trials.nsd_id)  # valid where keep
    first_seen = np.zeros(len(trials.nsd_id), dtype=bool)  # first kept trial of each stored image
    first_seen[np.flatnonzero(keep)[np.unique(trials.nsd_id[keep], return_index=True)[1]]] = True
    kept_rows_before = np.concatenate([[0], np.cumsum(keep)])  # store row of trial i = kept_rows_before[i]
    done = [s for s in session_list if writer.progress.get(f"session{s}")]
    bar = progress_bar(total=len(session_list), initial=len(done), desc=f"subj{subject:02d} sessions", unit="session",
               disable=not progress)
    stim_file = h5py.File(paths.stimuli, "r")
    brick = stim_file["imgBrick"]
    try:
        for k, s in enumerate(session_list):
            if writer.progress.get(f"session{s}"):
                continue
            rows = np.arange(k * TRIALS_PER_SESSION, (k + 1) * TRIALS_PER_SESSION)
            bar.set_postfix_str(f"session {s}: betas")
            x = _session_voxels(betas_files[s], mask, chunk_trials)
            stat_rows = np.flatnonzero(~trials.shared[rows]) if zscore_exclude_test else None
            if stat_rows is not None and len(stat_rows) < 2:
                raise MindEyeError(f"session {s} has fewer than 2 non-shared trials; drop --zscore-exclude-test")
            zscore_session(x, stat_rows)
            kept = np.flatnonzero(keep[rows])
            start = int(kept_rows_before[rows[0]])
            for i in range(0, len(kept), 128):  # blocks: no second full-session copy
                writer.write_voxels(start + i, x[kept[i:i + 128]])
            del x
            bar.set_postfix_str(f"session {s}: images")
            for i in rows[first_seen[rows]]:
                writer.write_images(int(image_index[i]), resize_image(brick[int(trials.nsd_id[i])], image_size)[None])
            writer.mark_done(f"session{s}")
            bar.update(1)
    finally:
        bar.close()
        stim_file.close()

    writer.set_trials(TrialTable(image_index=image_index[keep], session=trials.session[keep],
                                 repetition=trials.repetition[keep], split=split[keep]))
    writer.set_images([nsd_image_id(i) for i in image_ids0.tolist()])
    kinds = sorted({"hdf5" if p.suffix == ".hdf5" else "nifti" for p in betas_files.values()})
    zscore_text = ("non-shared-1000 trials of the session (MindEye2 recommendation)" if zscore_exclude_test
                   else f"all {TRIALS_PER_SESSION} trials of the session (as MindEye v1)")
    default_sessions = session_list == convention_sessions(subject, test_set)
    meta: dict[str, Any] = {
        "source": "nsd",
        "subject": subject,
        "subject_id": f"subj{subject:02d}",
        "betas": betas,
        "betas_format": kinds,
        "sessions": session_list,
        # "custom": test = shared images of the chosen sessions, not a published convention
        "test_set": test_set if default_sessions else "custom",
        "train_sessions": training_sessions,
        "preprocessing": (f"GLMsingle {betas} int16 / {BETAS_SCALE:g} = percent signal change; nsdgeneral mask "
                          f"(value > 0) on (x, y, z) NIfTI-oriented volumes, C-order flattening; each voxel "
                          f"z-scored (mean/std, ddof=0) over {zscore_text}"),
        "zscore_exclude_test": zscore_exclude_test,
        "nsdgeneral_voxels": n_vox,
        "nsdgeneral_voxels_expected": KNOWN_NSDGENERAL_VOXELS[subject],
        "mask_shape": list(mask.shape),
        "image_id_format": "nsd-XXXXX, XXXXX = 0-based 73k index (imgBrick row; NSD 73k ID minus 1)",
        "image_source_size": list(brick_shape[1:3]),
        "test_images": "shared-1000 images seen in these sessions (average the repetitions when evaluating)",
        "test_trials": int((split == "test").sum()),
        "val_fraction": val_fraction,
        "train_fraction": train_fraction,
        "train_images": train_images,
        "max_sessions": max_sessions,
        "seed": seed,
        "warnings": warnings,
    }
    return writer.finalize(meta)


def _check_brick(f: Any, path: Path, max_id: int) -> tuple[int, ...]:
    if "imgBrick" not in f:
        raise MindEyeError(f"{path} has no dataset 'imgBrick'; download nsd_stimuli.hdf5 again")
    shape = tuple(f["imgBrick"].shape)
    if len(shape) != 4 or shape[3] != 3 or max_id >= shape[0]:
        raise MindEyeError(
            f"{path}: imgBrick has shape {shape}; expected (73000, 425, 425, 3) covering image index "
            f"{max_id}; download nsd_stimuli.hdf5 again"
        )
    return shape


def _session_voxels(path: Path, mask: np.ndarray, chunk_trials: int) -> np.ndarray:
    """(750, n_voxels) float32 percent signal change of one session (a seam tests use to interrupt)."""
    reader = BetasReader(path, mask)
    try:
        return reader.read_session(chunk_trials)
    finally:
        reader.close()
