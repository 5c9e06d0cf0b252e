"""Offline substitute metrics: two-way identification and a feature distance on EfficientNet-Lite0.

Where none of the paper's metric networks can be loaded (no internet, no checkpoints), the only real
ImageNet-pretrained network at hand is EfficientNet-Lite0 from the optional extra ``mindeye[offline]``
(:mod:`mindeye.encoders.effnet_lite`). A real network tells reconstructions apart by content, where
a random one only measures low-level statistics, so it is worth reporting -- under its own name and in
its own table, never in the paper's columns: its numbers are not comparable with the paper's
EfficientNet-B1 / AlexNet / Inception / CLIP / SwAV scores (docs/evaluation.md says why).

Protocol, mirroring the paper's metric code where it can: both image sets are brought to 256 x 256
(metrics.prepare), resized to 224 (bilinear, antialiased), normalised as the weights expect, and the
pooled 1280-d feature is read. ``effnet_lite0_2way``: two-way identification (as Incep / CLIP, chance
50%) on it; ``effnet_lite0_distance``: mean correlation distance 1 - r between paired features (as
Eff / SwAV, lower is better).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from mindeye.evaluation.feature_nets import resize_short_side
from mindeye.evaluation.metrics import (
    ImageBatch,
    _check_pair,
    correlation_distance,
    prepare,
    two_way_identification,
)

# key -> (label, shown as percent?). The labels say "offline" so no one reads them as paper columns.
OFFLINE_METRICS = {
    "effnet_lite0_2way": ("EffNet-Lite0 2-way (offline) ↑", True),
    "effnet_lite0_distance": ("EffNet-Lite0 distance (offline) ↓", False),
}
OFFLINE_NOTE = ("Offline substitute, NOT a paper metric: ImageNet EfficientNet-Lite0 (the `mindeye[offline]` "
                "extra) pooled features; 2-way identification (chance 50%) and correlation distance. Not comparable "
                "with the paper's Alex / Incep / CLIP / Eff / SwAV columns (docs/evaluation.md).")


def unavailable_offline(reason: str) -> dict[str, dict]:
    return {key: {"unavailable": reason} for key in OFFLINE_METRICS}


def offline_features(images: ImageBatch, net, device: str | torch.device = "cpu", batch_size: int = 32,
                     progress: bool = False) -> torch.Tensor:
    """Pooled EfficientNet-Lite0 features (n, 1280) of an image batch, by the protocol of the module doc."""
    from mindeye.encoders import effnet_lite

    feats = []
    for start in tqdm(range(0, len(images), batch_size), desc="offline EfficientNet-Lite0 features",
                      disable=not progress):
        x = resize_short_side(prepare(images[start:start + batch_size], device), effnet_lite.IMAGE_SIZE,
                              antialias=True)
        feats.append(net.pooled(x).float().cpu())
    return torch.cat(feats)


def _values(real: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    return {"effnet_lite0_2way": two_way_identification(real, other),
            "effnet_lite0_distance": correlation_distance(real, other)}


def offline_metrics(reals: ImageBatch, recons: ImageBatch, device: str | torch.device = "cpu",
                    batch_size: int = 32, progress: bool = True, net=None, floors: dict | None = None) -> dict[str, dict]:
    """{"effnet_lite0_2way": {"value"}, "effnet_lite0_distance": {"value"}}, or both
    {"unavailable": reason} when the extra is not installed.

    ``floors``: {"mean_image": float (3, S, S) or None, "ceiling": images paired with ``reals`` or None,
    "seeds": derangement seeds}: the result then also holds ``"floors"``, the same block as the paper metrics'
    (mindeye.evaluation.floors.summarise) from the same features re-paired: chance (the true images against a
    derangement of themselves; two-way exactly 0.5), the mean training image, the shuffled brain and the ceiling.
    """
    from mindeye.encoders import effnet_lite
    from mindeye.errors import WeightsUnavailableError

    _check_pair(reals, recons)
    if net is None:
        try:
            net = effnet_lite.load_effnet_lite0(device)
        except WeightsUnavailableError as exc:
            return unavailable_offline(str(exc))
    real = offline_features(reals, net, device, batch_size, progress)
    recon = offline_features(recons, net, device, batch_size, progress)
    model = _values(real, recon)
    out: dict[str, dict] = {k: {"value": v} for k, v in model.items()}
    if floors is not None:
        out["floors"] = offline_floors(real, recon, model, floors, net, device, batch_size)
    return out


def offline_floors(real: torch.Tensor, recon: torch.Tensor, model: dict[str, float], spec: dict, net,
                   device: str | torch.device = "cpu", batch_size: int = 32) -> dict:
    """The floors block of the offline metrics from features (see :func:`offline_metrics`)."""
    from mindeye.evaluation import floors as fl

    n = len(real)
    seeds = list(spec.get("seeds") or fl.SHUFFLE_SEEDS)
    chance = _values(real, real[fl.derangement(n, 0)])
    chance["effnet_lite0_2way"] = 0.5
    mean_values = None
    if spec.get("mean_image") is not None:
        mean_f = offline_features(spec["mean_image"].unsqueeze(0), net, device, batch_size)
        mean_values = _values(real, mean_f.expand(n, -1))
    ceiling = None
    if spec.get("ceiling") is not None:
        ceiling = _values(real, offline_features(spec["ceiling"], net, device, batch_size))
    shuffled = [_values(real, recon[fl.derangement(n, s)]) for s in seeds]
    return fl.summarise(model, chance, mean_values, shuffled, ceiling, seeds, notes={
        "chance": "the true images' features paired with a derangement of themselves (two-way: exactly 0.5)",
        "shuffled_brain": "each image paired with the reconstruction of another test sample (a derangement per seed)",
        "mean_train_image": "the mean training image as every reconstruction",
    })


def _cells(row: dict) -> list[tuple[float | None, str | None, bool]]:
    from mindeye.evaluation.tables import _value

    return [(*_value(row.get(key)), percent) for key, (_, percent) in OFFLINE_METRICS.items()]


def offline_markdown(rows: list[dict]) -> str:
    """Markdown table of rows' ``offline_metrics`` (metrics.json rows), with the not-a-paper-metric note."""
    from mindeye.evaluation.tables import MISSING, _format, md_cell

    lines = ["| Method | " + " | ".join(label for label, _ in OFFLINE_METRICS.values()) + " |",
             "|---|" + ":-:|" * len(OFFLINE_METRICS)]
    reasons = set()
    for row in rows:
        cells = []
        for value, reason, percent in _cells(row.get("offline_metrics") or {}):
            cells.append(MISSING if value is None else _format(value, percent))
            if reason:
                reasons.add(reason)
        lines.append(f"| {md_cell(row.get('name', '?'))} | " + " | ".join(cells) + " |")
    lines += ["", OFFLINE_NOTE.replace("`", "")] + [f"- unavailable: {r}" for r in sorted(reasons)]
    return "\n".join(lines) + "\n"


def offline_csv(rows: list[dict]) -> str:
    """method + raw values of the offline metrics (fractions for 2-way), one line per metrics.json row."""
    import csv
    import io

    from mindeye.evaluation.tables import csv_cell

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", *OFFLINE_METRICS])
    for row in rows:
        w.writerow([csv_cell(row.get("name", "?")), *("" if v is None else repr(float(v))
                                            for v, _, _ in _cells(row.get("offline_metrics") or {}))])
    return buf.getvalue()
