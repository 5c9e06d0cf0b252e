"""Reconstruction metrics of paper Table 1, following the reference protocol.

Images come in as uint8 numpy (N, H, W, 3) or float tensors (N, 3, H, W) in [0, 1]. Reals and
reconstructions are both resized to 256x256 first (no centre crop anywhere), then:

- PixCorr: resize 425 (bilinear), Pearson r of the flattened RGB images per pair, mean.
- SSIM: resize 425, RGB -> gray (scikit-image's rgb2gray weights), gaussian-weighted SSIM with
  sigma 1.5, population covariance, data range 1 -- scikit-image's `structural_similarity`,
  vectorised in torch (checked against scikit-image in the tests).
- Alex(2), Alex(5), Incep, CLIP: two-way identification on the network features.
- Eff, SwAV: mean correlation distance between paired features (lower is better).

The first resize to 256 is bilinear WITHOUT antialiasing by default (``first_resize="reference"``):
the authors' `Reconstruction_Metrics.py` ran `transforms.Resize((256, 256))` on tensors under
torchvision 0.15.2, which does not antialias tensors; ``first_resize="antialias"`` antialiases it
(torchvision's current default). The networks' own downscales (CLIP and SwAV 256 -> 224, EfficientNet
256 -> 255) are not antialiased either by default (``net_resize="reference"``, the same torchvision 0.15);
``net_resize="antialias"`` antialiases them. The upsampling to 425 (and Inception's 342) is the same
either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mindeye.errors import MindEyeError
from mindeye.evaluation.feature_nets import NET_METRICS, FeatureExtractor, FeatureNets, resize_short_side

METRICS = ("pixcorr", "ssim", "alexnet2", "alexnet5", "inceptionv3", "clip", "efficientnet_b1", "swav")
TWO_WAY_METRICS = ("alexnet2", "alexnet5", "inceptionv3", "clip")
CORRELATION_DISTANCE_METRICS = ("efficientnet_b1", "swav")

PROTOCOL_SIZE = 256  # everything is brought to 256x256 first
LOW_LEVEL_SIZE = 425  # PixCorr / SSIM resolution
RGB2GRAY = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray


ImageBatch = np.ndarray | torch.Tensor


def to_float_images(images: ImageBatch, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 (N, H, W, 3) numpy / float (N, 3, H, W) tensor -> float32 (N, 3, H, W) in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if x.ndim != 4:
        raise MindEyeError(f"expected a batch of images with 4 dims, got shape {tuple(x.shape)}")
    if x.shape[1] != 3 and x.shape[-1] == 3:  # channels-last (numpy convention)
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] != 3:
        raise MindEyeError(f"expected RGB images (N,H,W,3) or (N,3,H,W), got shape {tuple(x.shape)}")
    x = x.to(device)
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    x = x.float()
    if x.numel() and (x.min() < -1e-3 or x.max() > 1 + 1e-3):
        raise MindEyeError(
            f"float images must be in [0, 1] (got min {x.min().item():.3g}, max {x.max().item():.3g}); "
            "pass uint8 images or rescale to [0, 1]"
        )
    return x.clamp(0, 1)


FIRST_RESIZE_MODES = ("reference", "antialias")
NET_RESIZE_MODES = FIRST_RESIZE_MODES


def prepare(images: ImageBatch, device: str | torch.device = "cpu", first_resize: str = "reference") -> torch.Tensor:
    """The protocol's first step: float [0, 1] images resized to 256x256 (bilinear; see the module doc)."""
    if first_resize not in FIRST_RESIZE_MODES:
        raise MindEyeError(f"first_resize must be one of {', '.join(FIRST_RESIZE_MODES)}, got {first_resize!r}")
    x = to_float_images(images, device)
    if x.shape[-2:] != (PROTOCOL_SIZE, PROTOCOL_SIZE):
        x = F.interpolate(x, size=(PROTOCOL_SIZE, PROTOCOL_SIZE), mode="bilinear",
                          antialias=first_resize == "antialias", align_corners=False)
    return x


def rowwise_pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson r between a[i] and b[i] (flattened), float64. Shape (N,)."""
    a = a.flatten(1).double()
    b = b.flatten(1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def _check_pair(real, recon) -> int:
    if len(real) != len(recon):
        raise MindEyeError(f"got {len(real)} real images but {len(recon)} reconstructions; they must pair up")
    if len(real) == 0:
        raise MindEyeError("no images to evaluate")
    return len(real)


def pixcorr_per_image(real256: torch.Tensor, recon256: torch.Tensor) -> torch.Tensor:
    """PixCorr per pair for already-prepared (256x256) images."""
    return rowwise_pearson(resize_short_side(real256, LOW_LEVEL_SIZE), resize_short_side(recon256, LOW_LEVEL_SIZE))


def _gaussian_kernel1d(sigma: float, truncate: float, device, dtype) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)  # scipy.ndimage.gaussian_filter's radius
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def ssim_gray(im1: torch.Tensor, im2: torch.Tensor, sigma: float = 1.5, data_range: float = 1.0) -> torch.Tensor:
    """Gaussian-weighted SSIM per image for gray images (N, H, W), float64.

    Same as skimage.metrics.structural_similarity(gaussian_weights=True, sigma=sigma,
    use_sample_covariance=False, data_range=data_range): scikit-image filters with
    scipy's gaussian_filter (truncate 3.5) and then crops the (win_size-1)//2 border, so a
    'valid' convolution gives exactly the kept pixels and padding never matters.
    """
    im1 = im1.double().unsqueeze(1)
    im2 = im2.double().unsqueeze(1)
    k = _gaussian_kernel1d(sigma, 3.5, im1.device, im1.dtype)
    taps = [float(v) for v in k]

    def valid_1d(x: torch.Tensor, dim: int) -> torch.Tensor:
        # A 'valid' 1-d correlation as a sum of shifted slices: float64 F.conv2d on the CPU has no
        # fast kernel (35 s for the demo's 120 images; this: < 1 s), and the sum is the same one.
        n = x.shape[dim] - len(taps) + 1
        out = x.narrow(dim, 0, n) * taps[0]
        for i, w in enumerate(taps[1:], start=1):
            out.add_(x.narrow(dim, i, n), alpha=w)
        return out

    def filt(x: torch.Tensor) -> torch.Tensor:
        return valid_1d(valid_1d(x, 2), 3)

    ux, uy = filt(im1), filt(im2)
    vx = filt(im1 * im1) - ux * ux
    vy = filt(im2 * im2) - uy * uy
    vxy = filt(im1 * im2) - ux * uy
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, H, W) with scikit-image's rgb2gray weights."""
    w = torch.tensor(RGB2GRAY, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
    return (x.double() * w).sum(1)


def ssim_per_image(real256: torch.Tensor, recon256: torch.Tensor) -> torch.Tensor:
    """SSIM per pair for already-prepared (256x256) images."""
    g1 = rgb_to_gray(resize_short_side(real256, LOW_LEVEL_SIZE))
    g2 = rgb_to_gray(resize_short_side(recon256, LOW_LEVEL_SIZE))
    return ssim_gray(g2, g1)


def _batched_mean(fn, real: ImageBatch, recon: ImageBatch, batch_size: int, device) -> float:
    n = _check_pair(real, recon)
    vals = [fn(prepare(real[i : i + batch_size], device), prepare(recon[i : i + batch_size], device)).cpu()
            for i in range(0, n, batch_size)]
    return torch.cat(vals).mean().item()


def pixcorr(real: ImageBatch, recon: ImageBatch, batch_size: int = 64, device: str | torch.device = "cpu") -> float:
    """Mean pixelwise Pearson correlation (256 -> 425 bilinear, flattened RGB)."""
    return _batched_mean(pixcorr_per_image, real, recon, batch_size, device)


def ssim(real: ImageBatch, recon: ImageBatch, batch_size: int = 64, device: str | torch.device = "cpu") -> float:
    """Mean SSIM (256 -> 425, gray, gaussian sigma 1.5, population covariance, data range 1)."""
    return _batched_mean(ssim_per_image, real, recon, batch_size, device)


def _as_matrix(feats: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, ...) -> a fresh float64 (N, F) copy (safe to modify in place)."""
    x = torch.as_tensor(feats)
    return x.reshape(len(x), -1).to(torch.float64, copy=True)


def _zscore_rows_(x: torch.Tensor) -> torch.Tensor:
    """Centre and L2-normalise rows in place (AlexNet(2) features are ~1.4 GB in float64 for 982 images)."""
    x.sub_(x.mean(1, keepdim=True))
    return x.div_(x.norm(dim=1, keepdim=True))


def two_way_identification(real_feats: np.ndarray | torch.Tensor, recon_feats: np.ndarray | torch.Tensor) -> float:
    """Two-way identification accuracy (chance 0.5), as in the reference / Ozcelik & VanRullen.

    r[i, j] = Pearson r(real_i, recon_j) over flattened features. For each reconstruction j the
    score is the share of the other N-1 reals i with r[i, j] < r[j, j]; the result is the mean over j.
    """
    return two_way_per_image(real_feats, recon_feats).mean().item()


def two_way_per_image(real_feats: np.ndarray | torch.Tensor, recon_feats: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Per reconstruction j, the share of the other reals that its own real beats (see two_way_identification)."""
    real, recon = _as_matrix(real_feats), _as_matrix(recon_feats)
    n = _check_pair(real, recon)
    if n < 2:
        raise MindEyeError("two-way identification needs at least 2 image pairs")
    if real.shape != recon.shape:
        raise MindEyeError(f"feature shapes differ: {tuple(real.shape)} vs {tuple(recon.shape)}")
    r = _zscore_rows_(real) @ _zscore_rows_(recon).T  # (N reals, N recons)
    congruent = torch.diagonal(r)  # r(real_j, recon_j)
    wins = (r < congruent.unsqueeze(0)).sum(0)  # over i, per column j; the diagonal never counts
    return wins.double() / (n - 1)


def correlation_distance(real_feats: np.ndarray | torch.Tensor, recon_feats: np.ndarray | torch.Tensor) -> float:
    """Mean over pairs of 1 - Pearson r (scipy.spatial.distance.correlation, vectorised)."""
    return correlation_distance_per_image(real_feats, recon_feats).mean().item()


def correlation_distance_per_image(real_feats: np.ndarray | torch.Tensor,
                                   recon_feats: np.ndarray | torch.Tensor) -> torch.Tensor:
    """1 - Pearson r per pair (N,)."""
    real, recon = _as_matrix(real_feats), _as_matrix(recon_feats)
    _check_pair(real, recon)
    if real.shape != recon.shape:
        raise MindEyeError(f"feature shapes differ: {tuple(real.shape)} vs {tuple(recon.shape)}")
    return 1.0 - rowwise_pearson(real, recon)


def evaluate_reconstructions(
    reals: ImageBatch,
    recons: ImageBatch,
    nets: FeatureNets,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
    metrics: Sequence[str] = METRICS,
    first_resize: str = "reference",
    net_resize: str = "reference",
    per_image: dict[str, list[float]] | None = None,
) -> dict[str, dict]:
    """All Table 1 reconstruction metrics for paired reals / reconstructions.

    ``first_resize``: ``reference`` (no antialias, the authors') or ``antialias`` for the resize to 256;
    ``net_resize``: the same choice for the feature networks' own downscales (CLIP, SwAV, EfficientNet).

    Returns {metric: {"value": float}} or {metric: {"unavailable": reason}} for each requested
    metric (default all of METRICS, in that order). Metrics whose network is Unavailable (or was
    not loaded) are reported with the reason and the fix; the rest still run. ``per_image``: a dict
    filled with each computed metric's per-pair values (their mean is the metric).
    """
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise MindEyeError(f"unknown metric(s) {sorted(unknown)}; choose from {list(METRICS)}")
    if net_resize not in NET_RESIZE_MODES:
        raise MindEyeError(f"net_resize must be one of {', '.join(NET_RESIZE_MODES)}, got {net_resize!r}")
    antialias = net_resize == "antialias"
    n = _check_pair(reals, recons)
    if n < 2:
        raise MindEyeError("reconstruction metrics need at least 2 image pairs (two-way identification)")

    results: dict[str, dict] = {}
    extractors: list[FeatureExtractor] = []
    for net_name, provides in NET_METRICS.items():
        wanted = [m for m in provides if m in metrics]
        if not wanted:
            continue
        net = nets.nets.get(net_name)
        if isinstance(net, FeatureExtractor):
            extractors.append(net.to(device))
        else:
            reason = net.reason if net is not None else (
                f"feature network '{net_name}' was not loaded; include it in FeatureNets.load(names=...)")
            for m in wanted:
                results[m] = {"unavailable": reason}

    pixel_values: dict[str, list[torch.Tensor]] = {"pixcorr": [], "ssim": []}
    feats: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for start in tqdm(range(0, n, batch_size), desc="reconstruction metrics", disable=not progress):
        real = prepare(reals[start : start + batch_size], device, first_resize)
        recon = prepare(recons[start : start + batch_size], device, first_resize)
        if "pixcorr" in metrics:
            pixel_values["pixcorr"].append(pixcorr_per_image(real, recon).cpu())
        if "ssim" in metrics:
            pixel_values["ssim"].append(ssim_per_image(real, recon).cpu())
        for net in extractors:
            f_real, f_recon = net(real, antialias=antialias), net(recon, antialias=antialias)
            for m in f_real:
                if m in metrics:
                    lists = feats.setdefault(m, ([], []))
                    lists[0].append(f_real[m].float().flatten(1).cpu())
                    lists[1].append(f_recon[m].float().flatten(1).cpu())

    values: dict[str, torch.Tensor] = {}
    for m in ("pixcorr", "ssim"):
        if m in metrics:
            values[m] = torch.cat(pixel_values[m])
    for m, (f_real, f_recon) in feats.items():
        real_all, recon_all = torch.cat(f_real), torch.cat(f_recon)
        fn = two_way_per_image if m in TWO_WAY_METRICS else correlation_distance_per_image
        values[m] = fn(real_all, recon_all)
    for m, v in values.items():
        results[m] = {"value": v.mean().item()}
        if per_image is not None:
            per_image[m] = v.double().tolist()
    return {m: results[m] for m in METRICS if m in metrics}


# -- re-pairing the same images (floors: chance, shuffled brain, mean image) ----------------------------------------
PIXEL_METRICS = ("pixcorr", "ssim")


class PixelCache:
    """PixCorr / SSIM inputs of a set of images, computed once so that any pairing of two sets costs one
    SSIM cross term per pair instead of the whole pipeline (the floors re-pair the same images several times).

    Per image: the 425 px RGB image centred and scaled to unit norm (PixCorr is then a dot product), its
    gray image and the gray image's local mean and mean square (the SSIM filter), as float32; a pairing's
    SSIM cross term is filtered in float32. The values of a pairing agree with :func:`evaluate_reconstructions`
    to ~1e-5 (the tests check it).
    """

    def __init__(self, images: ImageBatch, batch_size: int = 32, device: str | torch.device = "cpu",
                 first_resize: str = "reference") -> None:
        rgb, gray, mu, mu2 = [], [], [], []
        for i in range(0, len(images), batch_size):
            x = resize_short_side(prepare(images[i:i + batch_size], device, first_resize), LOW_LEVEL_SIZE)
            g = rgb_to_gray(x)
            z = x.flatten(1).double()
            z = z - z.mean(1, keepdim=True)
            rgb.append((z / z.norm(dim=1, keepdim=True)).float().cpu())
            gray.append(g.float().cpu())
            g = g.float()
            mu.append(_ssim_filter(g).cpu())
            mu2.append(_ssim_filter(g * g).cpu())
        self.rgb, self.gray, self.mu, self.mu2 = (torch.cat(t) for t in (rgb, gray, mu, mu2))

    def __len__(self) -> int:
        return len(self.rgb)


def _ssim_filter(x: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """The valid gaussian filter of :func:`ssim_gray` on (N, H, W) images, in their dtype."""
    taps = [float(v) for v in _gaussian_kernel1d(sigma, 3.5, x.device, torch.float64)]

    def valid_1d(y: torch.Tensor, dim: int) -> torch.Tensor:
        n = y.shape[dim] - len(taps) + 1
        out = y.narrow(dim, 0, n) * taps[0]
        for i, w in enumerate(taps[1:], start=1):
            out.add_(y.narrow(dim, i, n), alpha=w)
        return out

    return valid_1d(valid_1d(x, 1), 2)


def paired_pixel_values(reals: PixelCache, recons: PixelCache, recon_rows: Sequence[int] | np.ndarray,
                        metrics: Sequence[str] = PIXEL_METRICS, batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Per-pair PixCorr / SSIM of real i with reconstruction ``recon_rows[i]`` (float64 (N,) each)."""
    rows = torch.as_tensor(np.asarray(recon_rows), dtype=torch.long)
    if len(rows) != len(reals):
        raise MindEyeError(f"{len(rows)} pairings for {len(reals)} real images")
    out: dict[str, list[torch.Tensor]] = {m: [] for m in metrics if m in PIXEL_METRICS}
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    for i in range(0, len(rows), batch_size):
        r = rows[i:i + batch_size]
        if "pixcorr" in out:
            out["pixcorr"].append((reals.rgb[i:i + batch_size] * recons.rgb[r]).sum(1).double())
        if "ssim" in out:
            g1, g2 = reals.gray[i:i + batch_size], recons.gray[r]
            ux, uy = recons.mu[r], reals.mu[i:i + batch_size]  # as ssim_gray(recon, real)
            vx = recons.mu2[r] - ux * ux
            vy = reals.mu2[i:i + batch_size] - uy * uy
            vxy = _ssim_filter(g2 * g1) - ux * uy
            s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
            out["ssim"].append(s.double().mean(dim=(1, 2)))
    return {m: torch.cat(v) for m, v in out.items()}


class NetFeatureCache:
    """The feature networks' features of a set of images (per metric, flattened, float32 on the CPU), computed
    once, so that any pairing of two sets costs one comparison per metric (two-way identification or correlation
    distance) instead of a network pass: the floors re-pair the same images several times. The features are
    those :func:`evaluate_reconstructions` computes (same preparation, resize and layers)."""

    def __init__(self, images: ImageBatch, nets: FeatureNets, metrics: Sequence[str], batch_size: int = 32,
                 device: str | torch.device = "cpu", first_resize: str = "reference",
                 net_resize: str = "reference") -> None:
        extractors = [nets.nets.get(name) for name, provides in NET_METRICS.items()
                      if any(m in metrics for m in provides)]
        extractors = [net.to(device) for net in extractors if isinstance(net, FeatureExtractor)]
        feats: dict[str, list[torch.Tensor]] = {}
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                x = prepare(images[start:start + batch_size], device, first_resize)
                for net in extractors:
                    for m, f in net(x, antialias=net_resize == "antialias").items():
                        if m in metrics:
                            feats.setdefault(m, []).append(f.float().flatten(1).cpu())
        self.features = {m: torch.cat(v) for m, v in feats.items()}
        self.n = len(images)

    def __len__(self) -> int:
        return self.n


def paired_net_values(reals: NetFeatureCache, recons: NetFeatureCache,
                      recon_rows: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
    """Per-pair network metrics of real i with reconstruction ``recon_rows[i]`` (float64 (N,) each), as
    :func:`evaluate_reconstructions` computes them for ``recons[recon_rows]``."""
    rows = torch.as_tensor(np.asarray(recon_rows), dtype=torch.long)
    if len(rows) != len(reals):
        raise MindEyeError(f"{len(rows)} pairings for {len(reals)} real images")
    out = {}
    for m, real in reals.features.items():
        fn = two_way_per_image if m in TWO_WAY_METRICS else correlation_distance_per_image
        out[m] = fn(real, recons.features[m][rows])
    return out
