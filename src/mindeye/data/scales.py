"""The simulated subject's scales and synthetic-brain settings: plain dataclasses, importable without
numpy or torch (the CLI lists the scales in `mindeye simulate --help`); :mod:`mindeye.data.simulate`
generates the stores."""

from __future__ import annotations

from dataclasses import dataclass, field

from mindeye.constants import NSDGENERAL_VOXELS
from mindeye.errors import MindEyeError

MAX_COHORT = 99  # most subjects `simulate --cohort` writes


@dataclass(frozen=True)
class BrainSpec:
    """The synthetic brain: encoding model and measurement noise (identical at every scale)."""

    grid: int = 32  # feature maps of the low-level model are computed on a grid x grid downsampling
    frac_low: float = 0.4  # early visual (V1-V3-like) voxels: retinotopic, low-level features only
    frac_mid: float = 0.2  # V4/LO-like voxels: a mixture of low- and high-level responses
    ncsnr_median: tuple[float, float, float] = (0.5, 0.4, 0.32)  # per area (low, mid, high), NSD-like
    ncsnr_log_sd: float = 0.55  # spread of log ncsnr across voxels
    # Share of each voxel's repeatable variance that the encoding model explains; the rest is
    # image-specific variance that no stimulus feature predicts (as for real voxels, whose best
    # encoding models fall well short of the noise ceiling). It caps how decodable images are.
    explained_fraction: float = 0.6
    unexplained_factors: int = 16  # part of that rest is shared by voxels (low rank)
    shared_noise_fraction: float = 0.3  # part of the noise variance shared across voxels (low rank)
    noise_factors: int = 8
    drift_offset_sd: float = 0.3  # per-session random-walk step of each voxel's offset (signal sd units)
    drift_gain_sd: float = 0.08  # per-session random-walk step of each voxel's log gain


@dataclass(frozen=True)
class ScaleSpec:
    """Shapes of one simulated subject."""

    name: str
    image_size: int
    n_voxels: int
    n_train_images: int
    n_train_trials: int
    n_test_images: int
    n_test_trials: int
    n_sessions: int
    session_length: int  # trials per session; the last session holds the remainder
    brain: BrainSpec = field(default_factory=BrainSpec)

    @property
    def n_images(self) -> int:
        return self.n_train_images + self.n_test_images

    @property
    def n_trials(self) -> int:
        return self.n_train_trials + self.n_test_trials

    def session_sizes(self) -> list[int]:
        last = self.n_trials - (self.n_sessions - 1) * self.session_length
        return [self.session_length] * (self.n_sessions - 1) + [last]

    def validate(self) -> None:
        for split, images, trials in (("train", self.n_train_images, self.n_train_trials),
                                      ("test", self.n_test_images, self.n_test_trials)):
            if not images <= trials <= 3 * images:
                raise MindEyeError(f"scale {self.name!r}: {trials} {split} trials for {images} images; "
                                   "each image needs 1-3 trials")
        if self.n_sessions < 3:
            raise MindEyeError(f"scale {self.name!r}: need >= 3 sessions to spread 3 repetitions")
        if not 0 < self.session_sizes()[-1] <= self.session_length:
            raise MindEyeError(f"scale {self.name!r}: {self.n_trials} trials do not fill {self.n_sessions} "
                               f"sessions of {self.session_length}")
        if self.image_size % self.brain.grid:
            raise MindEyeError(f"scale {self.name!r}: image size must be a multiple of {self.brain.grid}")


SCALES: dict[str, ScaleSpec] = {
    # unit tests: generated in about a second
    "tiny": ScaleSpec("tiny", image_size=64, n_voxels=600, n_train_images=240, n_train_trials=640,
                      n_test_images=60, n_test_trials=176, n_sessions=4, session_length=204),
    # CPU demo: trains in minutes on 2 cores; 300 test images for 300-way retrieval
    "small": ScaleSpec("small", image_size=128, n_voxels=2000, n_train_images=1500, n_train_trials=4200,
                       n_test_images=300, n_test_trials=900, n_sessions=12, session_length=425),
    # NSD subject 1 as used by MindEye: 37 sessions x 750 trials, 15,724 nsdgeneral voxels,
    # 8,859 training images / 24,980 trials, 982 shared test images / 2,770 trials
    "nsd": ScaleSpec("nsd", image_size=256, n_voxels=NSDGENERAL_VOXELS[1], n_train_images=8859, n_train_trials=24980,
                     n_test_images=982, n_test_trials=2770, n_sessions=37, session_length=750),
}
