"""The report's figures, drawn with matplotlib (Agg backend: no display needed).

Every figure is a :class:`FigureFile`: a matplotlib figure with a file stem. :func:`save_figure` writes
it as PNG and PDF (for a paper) and :func:`png_data_uri` embeds it in the HTML page, so the page and
the files show the same drawing. Figures follow paper conventions: training curves (loss vs step,
validation vs epoch), retrieval accuracy per draw (paper Table 1's 30 draws), the UMAP of embedding
spaces (paper Figure 9), accuracy vs number of training sessions, and the image grids (Figures 3-4).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display, no GUI toolkit

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

# Colour-blind friendly categorical palette (Okabe-Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
PAGE_DPI = 110  # embedded PNGs; the files get FILE_DPI
FILE_DPI = 200
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False,
         "axes.grid": True, "grid.color": "#e6e6e6", "legend.frameon": False, "axes.prop_cycle":
         matplotlib.cycler(color=PALETTE), "pdf.fonttype": 42, "svg.fonttype": "none"}


@dataclass
class Series:
    label: str
    x: Sequence[float]
    y: Sequence[float]


@dataclass
class FigureFile:
    """A finished figure: ``stem`` is its file name without suffix (figures/<stem>.png, .pdf)."""

    stem: str
    figure: Figure
    caption: str = ""


def _new(width: float = 5.2, height: float = 2.9) -> tuple[Figure, Any]:
    with plt.rc_context(STYLE):
        fig = Figure(figsize=(width, height), layout="constrained")
        ax = fig.add_subplot()
    return fig, ax


def line_chart(stem: str, series: Sequence[Series], title: str, xlabel: str, ylabel: str,
               caption: str = "") -> FigureFile | None:
    """One line per series (markers where a series has few points); None when nothing is logged."""
    series = [s for s in series if len(s.x)]
    if not series:
        return None
    with plt.rc_context(STYLE):
        fig, ax = _new()
        for s in series:
            y = np.asarray(s.y, float)
            ax.plot(np.asarray(s.x, float), y, label=s.label, linewidth=1.5,
                    marker="o" if len(y) <= 30 else None, markersize=3)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        if len(series) > 1 or series[0].label != ylabel:
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    return FigureFile(stem, fig, caption)


def retrieval_draws_chart(stem: str, runs: Sequence[tuple[str, dict[str, Sequence[float]]]], pool: int,
                          caption: str = "") -> FigureFile | None:
    """Top-1 accuracy of every draw, a dot per draw and a bar at the mean, per run and direction.

    runs: [(run name, {direction label: per-draw accuracies})]; chance (1/pool) is a dashed line.
    """
    cells = [(run, label, np.asarray(v, float)) for run, dirs in runs for label, v in dirs.items() if len(v)]
    if not cells:
        return None
    with plt.rc_context(STYLE):
        fig, ax = _new(5.2, 3.1)
        labels = list(dict.fromkeys(label for _, label, _ in cells))
        rng = np.random.default_rng(0)  # horizontal jitter of the dots only
        for k, (_, label, v) in enumerate(cells):
            color = PALETTE[labels.index(label) % len(PALETTE)]
            ax.scatter(k + rng.uniform(-0.18, 0.18, len(v)), 100 * v, s=9, color=color, alpha=0.7, linewidths=0)
            ax.hlines(100 * v.mean(), k - 0.3, k + 0.3, color=color, linewidth=2)
        ax.axhline(100 / pool, color="#777", linestyle="--", linewidth=1, label=f"chance ({100 / pool:.2g}%)")
        ax.set_xticks(range(len(cells)), [f"{run}\n{label}" for run, label, _ in cells], fontsize=7)
        ax.set_ylim(bottom=0)
        ax.set(ylabel=f"top-1 among {pool} (%)", title=f"Retrieval per draw ({max(len(v) for *_, v in cells)} draws)")
        ax.legend(loc="best", fontsize=8)
    return FigureFile(stem, fig, caption)


def scatter_chart(stem: str, groups: Sequence[tuple[str, np.ndarray]], title: str,
                  caption: str = "") -> FigureFile:
    """2-D scatter, one colour per group (the UMAP of paper Figure 9)."""
    with plt.rc_context(STYLE):
        fig, ax = _new(5.6, 4.0)
        for label, g in groups:
            ax.scatter(g[:, 0], g[:, 1], s=10, alpha=0.75, linewidths=0, label=f"{label} ({len(g)})")
        ax.set(title=title, xticks=[], yticks=[])
        ax.grid(False)
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=1.5)
    return FigureFile(stem, fig, caption)


def sessions_chart(stem: str, points: Sequence[dict[str, Any]], metrics: Sequence[tuple[str, str]],
                   caption: str = "") -> FigureFile | None:
    """Accuracy vs number of training sessions, one line per (method, metric); error bars from `<key>_std`.

    points: [{"sessions": int, "method": str (optional), <metric key>: float, <metric key>_std: float}];
    metrics: [(key, label)] to draw, values in [0, 1] shown as percent.
    """
    methods = list(dict.fromkeys(str(p.get("method", "")) for p in points))
    lines = []
    for method in methods:
        pts = sorted((p for p in points if str(p.get("method", "")) == method), key=lambda p: p["sessions"])
        for key, label in metrics:
            have = [p for p in pts if p.get(key) is not None and math.isfinite(float(p[key]))]
            if have:
                lines.append((f"{method}: {label}" if method else label, have, key))
    if not lines:
        return None
    with plt.rc_context(STYLE):
        fig, ax = _new()
        for label, pts, key in lines:
            x = [p["sessions"] for p in pts]
            y = [100 * float(p[key]) for p in pts]
            err = [100 * float(p.get(f"{key}_std") or 0) for p in pts]
            ax.errorbar(x, y, yerr=err if any(err) else None, label=label, marker="o", markersize=4,
                        linewidth=1.5, capsize=2)
        ax.set_xscale("log", base=2)
        xs = sorted({p["sessions"] for _, pts, _ in lines for p in pts})
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.set(title="Accuracy vs training sessions", xlabel="training sessions", ylabel="accuracy (%)")
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    return FigureFile(stem, fig, caption)


def image_grid_figure(stem: str, columns: Sequence[str], rows: Sequence[tuple[str, Sequence[np.ndarray | None]]],
                      outlines: Sequence[str | None] | None = None, caption: str = "") -> FigureFile:
    """Rows of images (paper Figures 3-4): one row per source, one column per test image.

    A missing image leaves its cell blank with a dash; `outlines` colours the last row's frames
    (e.g. green for a correct retrieval, orange for a wrong one).
    """
    n_rows, n_cols = len(rows), len(columns)
    cell = 0.95
    with plt.rc_context({**STYLE, "axes.grid": False}):
        fig = Figure(figsize=(1.3 + cell * n_cols, 0.25 + cell * n_rows))
        axes = fig.subplots(n_rows, n_cols, squeeze=False, gridspec_kw={"wspace": 0.04, "hspace": 0.06})
        fig.subplots_adjust(left=1.2 / (1.3 + cell * n_cols), right=0.995, top=1 - 0.22 / (0.25 + cell * n_rows),
                            bottom=0.01)
        for r, (label, images) in enumerate(rows):
            for c in range(n_cols):
                ax = axes[r, c]
                ax.set_xticks([])
                ax.set_yticks([])
                img = images[c] if c < len(images) else None
                if img is None:
                    ax.text(0.5, 0.5, "—", ha="center", va="center", color="#999", transform=ax.transAxes)
                    for s in ax.spines.values():
                        s.set_visible(False)
                else:
                    ax.imshow(np.asarray(img), interpolation="none")  # PDF: the raw pixels, unresampled
                    color = outlines[c] if outlines is not None and r == n_rows - 1 else None
                    for s in ax.spines.values():
                        s.set_visible(color is not None)
                        if color is not None:
                            s.set_edgecolor(color)
                            s.set_linewidth(2.5)
                if r == 0:
                    ax.set_title(columns[c], fontsize=7, pad=2)
                if c == 0:
                    ax.set_ylabel(label.replace(" (", "\n("), fontsize=7, rotation=0, ha="right", va="center", labelpad=4)
    return FigureFile(stem, fig, caption)


def png_bytes(fig: Figure, dpi: int = PAGE_DPI) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def png_data_uri(fig: Figure, dpi: int = PAGE_DPI) -> str:
    """The figure as 'data:image/png;base64,...' for the self-contained page."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(fig, dpi)).decode("ascii")


def save_figure(fig: FigureFile, folder: Path, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write ``folder/<stem>.<fmt>`` for each format (PDF with embedded TrueType fonts); returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = folder / f"{fig.stem}.{fmt}"
        fig.figure.savefig(path, format=fmt, dpi=FILE_DPI, metadata={"Creator": "mindeye"} if fmt == "pdf" else None)
        paths.append(path)
    return paths


def first_layer_voxel_norm(model: Any, subject_id: str | None = None) -> np.ndarray | None:
    """Per voxel, the L2 norm of its weights in the model's first linear layer (how strongly the network
    reads that voxel): the subject's own input layer in a shared-subject model, else the backbone's stem;
    None when the model has neither (e.g. a ridge regression)."""
    import torch

    layers = getattr(model, "subject_layers", None)
    if layers is not None and subject_id in layers:
        layer = layers[subject_id]
    else:
        stem = getattr(getattr(model, "backbone", None), "stem", None)
        layer = stem[0] if stem is not None and len(stem) else None
    if not isinstance(layer, torch.nn.Linear):
        return None
    return layer.weight.detach().float().norm(dim=0).cpu().numpy()  # weight: (hidden, n_voxels)


def brain_map_figure(stem: str, store: Any, values: np.ndarray | None, title: str,
                     caption: str = "") -> tuple[FigureFile | None, str | None]:
    """A per-voxel map on a glass brain (nilearn.plotting.plot_glass_brain): (figure, None), or (None, why
    not) when it cannot be drawn; (None, None) for a store without a brain mask (simulated, NSD, arrays),
    which has no brain space to draw in."""
    if getattr(store, "mask_path", None) is None:
        return None, None
    if values is None:
        return None, "No voxel map: the model has no per-voxel first layer."
    try:
        from nilearn import plotting
    except ImportError:
        return None, "No glass-brain figure: nilearn is not installed (pip install 'mindeye[nifti]')."
    img = store.unmask(np.asarray(values, dtype=np.float32))
    peak = float(np.abs(values).max()) if len(values) else 0.0
    with plt.rc_context(STYLE | {"axes.grid": False}):
        fig = Figure(figsize=(7.0, 2.6))
        plotting.plot_glass_brain(img, figure=fig, title=title, colorbar=True, plot_abs=False,
                                  cmap="viridis", threshold=peak * 1e-6 if peak > 0 else None,
                                  vmin=0 if float(np.min(values)) >= 0 else None)
    return FigureFile(stem, fig, caption), None
