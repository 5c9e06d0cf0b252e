"""`mindeye compare A B`: paired tests of two evaluations on the same images, per metric.

A and B are run directories (their ``eval/retrieval.json``), retrieval JSON files, or reconstruction
metrics files (``metrics.json`` of `mindeye evaluate recon`; ``row`` picks a row when there are several).
Each must hold per-image values (written since issue 26). For every metric both hold: the mean of A and of
B, the mean difference B - A with its paired bootstrap 95% interval (images resampled with replacement)
and the Wilcoxon signed-rank test (scipy). The image sets must be the same.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from mindeye.errors import MindEyeError
from mindeye.evaluation.floors import paired_test

LOWER_IS_BETTER_SUFFIXES = ("_rank", "efficientnet_b1", "swav")


def load_per_image(path: str | os.PathLike, row: str | None = None) -> tuple[str, list[int], dict[str, list[float]]]:
    """(label, image index per value, {metric: per-image values}) of a run directory or an evaluation JSON."""
    path = Path(path)
    file = path / "eval" / "retrieval.json" if path.is_dir() else path
    if not file.is_file():
        raise MindEyeError(f"{path} is neither a run directory with eval/retrieval.json nor an evaluation JSON; "
                           "evaluate it first (`mindeye evaluate retrieval --run RUN` or `mindeye evaluate recon "
                           "... --out metrics.json`)")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise MindEyeError(f"{file} is not valid JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("rows"), list):  # reconstruction metrics
        rows = data["rows"]
        if row is not None:
            rows = [r for r in rows if r.get("name") == row]
            if not rows:
                names = [r.get("name") for r in data["rows"]]
                raise MindEyeError(f"{file} has no row named {row!r}; its rows: {names}")
        elif len(rows) != 1:
            raise MindEyeError(f"{file} has {len(rows)} rows ({[r.get('name') for r in rows]}); pick one with "
                               "--row-a / --row-b")
        item, label = rows[0], f"{file}:{rows[0].get('name')}"
    else:
        items = data if isinstance(data, list) else [data]
        if len(items) != 1:
            raise MindEyeError(f"{file} holds {len(items)} retrieval results; compare run directories instead")
        item, label = items[0], str(item_name(items[0], file))
    per = item.get("per_image") if isinstance(item, dict) else None
    if not per or "image_index" not in per:
        raise MindEyeError(f"{file} has no per-image values (evaluated before they were saved, or with "
                           "--no-floors); evaluate it again with this version of mindeye")
    values = {k: v for k, v in per.items() if k != "image_index" and isinstance(v, list)}
    return label, [int(i) for i in per["image_index"]], values


def item_name(item: dict[str, Any], file: Path) -> str:
    return str(item.get("name") or item.get("run") or file)


def _aligned(a_index: list[int], b_index: list[int], label_a: str, label_b: str) -> tuple[np.ndarray, np.ndarray]:
    """Row orders that pair A's and B's values image by image; an error when the image sets differ."""
    a, b = np.asarray(a_index), np.asarray(b_index)
    if sorted(a.tolist()) != sorted(b.tolist()):
        only_a, only_b = sorted(set(a.tolist()) - set(b.tolist())), sorted(set(b.tolist()) - set(a.tolist()))
        raise MindEyeError(f"{label_a} and {label_b} were evaluated on different images ({len(a)} vs {len(b)}; "
                           f"{len(only_a)} only in A, e.g. {only_a[:3]}; {len(only_b)} only in B, e.g. {only_b[:3]}); "
                           "a paired test needs the same test images: evaluate both on the same store, split, "
                           "test mode and --limit")
    if len(set(a.tolist())) != len(a):  # repeated images (single-trial mode): the same order is required
        if not np.array_equal(a, b):
            raise MindEyeError(f"{label_a} and {label_b} list repeated images in different orders; evaluate both "
                               "with the same test mode")
        return np.arange(len(a)), np.arange(len(b))
    return np.argsort(a, kind="stable"), np.argsort(b, kind="stable")


def compare(a: str | os.PathLike, b: str | os.PathLike, row_a: str | None = None, row_b: str | None = None,
            n_boot: int = 10000, seed: int = 0) -> dict[str, Any]:
    label_a, idx_a, val_a = load_per_image(a, row_a)
    label_b, idx_b, val_b = load_per_image(b, row_b)
    order_a, order_b = _aligned(idx_a, idx_b, label_a, label_b)
    metrics = [m for m in val_a if m in val_b]
    if not metrics:
        raise MindEyeError(f"{label_a} and {label_b} share no per-image metric (A: {sorted(val_a)}; B: "
                           f"{sorted(val_b)}); compare two retrieval results or two reconstruction rows")
    out: dict[str, Any] = {"a": label_a, "b": label_b, "n_images": len(order_a), "metrics": {}}
    for m in metrics:
        res = paired_test(np.asarray(val_a[m])[order_a], np.asarray(val_b[m])[order_b], n_boot=n_boot, seed=seed)
        res["higher_is_better"] = not m.endswith(LOWER_IS_BETTER_SUFFIXES)
        out["metrics"][m] = res
    return out


def compare_table(result: dict[str, Any]) -> str:
    lines = [f"A = {result['a']}", f"B = {result['b']}", f"{result['n_images']} paired images; difference = B - A, "
             "95% paired bootstrap interval, two-sided Wilcoxon signed-rank p",
             f"{'metric':<22} {'A':>10} {'B':>10} {'B - A':>10} {'95% CI':>22} {'p':>9}  better"]
    for m, r in result["metrics"].items():
        lo, hi = r["ci95"]
        sign = 1 if r["higher_is_better"] else -1
        better = "B" if lo * sign > 0 else "A" if hi * sign < 0 else "-"
        lines.append(f"{m:<22} {r['mean_a']:>10.4g} {r['mean_b']:>10.4g} {r['mean_diff']:>10.4g} "
                     f"{f'[{lo:.4g}, {hi:.4g}]':>22} {r['wilcoxon_p']:>9.3g}  {better}")
    lines.append("better: the run whose side the whole interval lies on ('-': the interval holds 0); "
                 "ranks and EfficientNet/SwAV distances are lower-is-better.")
    return "\n".join(lines)
