"""`mindeye report`: one self-contained HTML page summarising a MindEye experiment.

The page holds (paper Table 1, Figures 1/3/7/9 in spirit):

- provenance: store, runs, target encoder and what generated the images (read from the recon index);
- the metrics table: retrieval from RUN/eval/retrieval.json of each run, reconstruction metrics from
  metrics.json files written by `mindeye evaluate recon`;
- training curves from each run's metrics.jsonl (inline SVG, no plotting library needed);
- an image grid for the first test images: ground truth / blurry / reconstruction / top-1 retrieved;
- a UMAP of CLIP-image targets vs backbone outputs vs projector outputs vs prior samples (Figure 9).

Images are embedded as base64 PNG data URIs and charts as inline SVG, so the page loads nothing
from anywhere: it can be mailed, archived or opened offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mindeye import __version__
from mindeye.errors import MindEyeError
from mindeye.evaluation.recon_eval import ReconDir, load_pngs, read_metrics, read_recon_dir, table_row
from mindeye.evaluation.tables import COLUMNS, MISSING, _format, _value
from mindeye.metrics.retrieval import BRAIN_TO_IMAGE, DIRECTIONS, IMAGE_TO_BRAIN, TABLE1_FOOTNOTE

# Categorical palette (colour-blind friendly, Okabe-Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")

# What known image makers are, so the page can say it plainly.
GENERATOR_NOTES = {
    "versatile-diffusion": "Versatile Diffusion image-variation UNet + SD VAE (the paper's generator)",
    "sd-image-variations": "Stable Diffusion Image Variations (paper Appendix A.7)",
    "demo-latent-diffusion": "the small latent diffusion model bundled for the CPU demo, conditioned on the "
                             "stand-in CLIP tokens -- NOT Versatile Diffusion; images are not comparable to the paper",
}


# ----------------------------------------------------------------------------------------------------
# Small HTML / SVG helpers
# ----------------------------------------------------------------------------------------------------
def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def png_data_uri(image: np.ndarray, max_size: int | None = None) -> str:
    """uint8 (H, W, 3) -> 'data:image/png;base64,...' (downscaled so its longer side <= max_size)."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if max_size and max(im.size) > max_size:
        scale = max_size / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:  # a single value: centre it
        half = abs(lo) / 2 or 0.5
        lo, hi = lo - half, hi + half
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks = [round(first, 12)]
    while ticks[-1] < hi - step * 1e-9:  # the last tick covers hi
        ticks.append(round(first + len(ticks) * step, 12))
    return ticks


def _fmt_tick(v: float) -> str:
    return f"{v:.4g}"


@dataclass
class Series:
    label: str
    x: Sequence[float]
    y: Sequence[float]


def svg_line_chart(series: Sequence[Series], title: str, xlabel: str, ylabel: str, width: int = 560,
                   height: int = 280) -> str:
    """A line chart (one polyline per series, dots where a series has few points) as inline SVG."""
    series = [s for s in series if len(s.x)]
    if not series:
        return f'<p class="note">{esc(title)}: nothing logged.</p>'
    xs = np.concatenate([np.asarray(s.x, float) for s in series])
    ys = np.concatenate([np.asarray(s.y, float) for s in series])
    ok = np.isfinite(ys)
    xt, yt = nice_ticks(float(xs.min()), float(xs.max())), nice_ticks(float(ys[ok].min()), float(ys[ok].max()))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]
    left, right, top, bottom = 58, 140, 28, 42  # the legend sits in the right margin
    pw, ph = width - left - right, height - top - bottom

    def px(v: float) -> float:
        return left + (v - x0) / ((x1 - x0) or 1) * pw

    def py(v: float) -> float:
        return top + ph - (v - y0) / ((y1 - y0) or 1) * ph

    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
             f'<text x="{width / 2}" y="16" text-anchor="middle" class="title">{esc(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>']
    for t in xt:
        parts.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{top}" y2="{top + ph}" class="grid"/>'
                     f'<text x="{px(t):.1f}" y="{top + ph + 14}" text-anchor="middle">{_fmt_tick(t)}</text>')
    for t in yt:
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" class="grid"/>'
                     f'<text x="{left - 4}" y="{py(t) + 4:.1f}" text-anchor="end">{_fmt_tick(t)}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">{esc(xlabel)}</text>')
    parts.append(f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" text-anchor="middle">{esc(ylabel)}</text>')
    for k, s in enumerate(series):
        color = PALETTE[k % len(PALETTE)]
        pts = [(px(a), py(b)) for a, b in zip(s.x, s.y) if math.isfinite(b)]
        coords = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
        parts.append(f'<polyline class="series" data-label="{esc(s.label)}" points="{coords}" fill="none" '
                     f'stroke="{color}" stroke-width="1.8"/>')
        if len(pts) <= 30:
            parts += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.6" fill="{color}"/>' for a, b in pts]
        ly = top + 8 + 16 * k
        parts.append(f'<rect x="{left + pw + 18}" y="{ly - 8}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{left + pw + 32}" y="{ly + 1}">{esc(s.label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_scatter(groups: Sequence[tuple[str, np.ndarray]], title: str, width: int = 680, height: int = 460) -> str:
    """2-D scatter plot, one colour per group, as inline SVG."""
    pts = np.concatenate([g for _, g in groups])
    lo, hi = pts.min(0), pts.max(0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    pad, top, legend = 16, 28, 250
    pw, ph = width - 2 * pad - legend, height - top - pad
    parts = [f'<svg class="scatter" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
             f'<text x="{width / 2}" y="16" text-anchor="middle" class="title">{esc(title)}</text>',
             f'<rect x="{pad}" y="{top}" width="{pw}" height="{ph}" class="frame"/>']
    for k, (label, g) in enumerate(groups):
        color = PALETTE[k % len(PALETTE)]
        xy = (g - lo) / span
        parts.append(f'<g class="group" data-label="{esc(label)}" fill="{color}" fill-opacity="0.75">')
        parts += [f'<circle cx="{pad + 4 + a * (pw - 8):.1f}" cy="{top + ph - 4 - b * (ph - 8):.1f}" r="3"/>'
                  for a, b in xy]
        parts.append("</g>")
        ly = top + 16 + 18 * k
        parts.append(f'<circle cx="{pad + pw + 16}" cy="{ly - 4}" r="5" fill="{color}"/>'
                     f'<text x="{pad + pw + 26}" y="{ly}">{esc(label)} ({len(g)})</text>')
    parts.append("</svg>")
    return "".join(parts)


# ----------------------------------------------------------------------------------------------------
# Reading runs
# ----------------------------------------------------------------------------------------------------
@dataclass
class RunInfo:
    role: str  # "high-level", "low-level", "ridge"
    path: Path
    cfg: Any
    info: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    retrieval: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return str(getattr(self.cfg, "name", None) or self.path.name)


def read_run_info(path: str | os.PathLike, role: str) -> RunInfo:
    from mindeye.runs import read_run

    path = Path(path)
    cfg, info = read_run(path)
    records = []
    log = path / "metrics.jsonl"
    if log.exists():
        for line in log.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line torn by a kill mid-write; the rest still plots
    retrieval = None
    rpath = path / "eval" / "retrieval.json"
    if rpath.exists():
        retrieval = json.loads(rpath.read_text())
    return RunInfo(role, path, cfg, info, records, retrieval)


def curve_series(records: list[dict[str, Any]]) -> tuple[list[Series], list[Series], list[Series]]:
    """(total loss vs step, loss components vs step, validation metrics vs epoch) from metrics.jsonl records."""
    skip = {"step", "epoch", "loss", "lr", "samples_per_s"}
    train = [r for r in records if "loss" in r and "step" in r]
    val = [r for r in records if any(k.startswith("val_") for k in r) and "epoch" in r]
    loss = [Series("loss", [r["step"] for r in train], [float(r["loss"]) for r in train])] if train else []
    comp_keys = sorted({k for r in train for k, v in r.items() if k not in skip and isinstance(v, int | float)})
    comps = [Series(k, [r["step"] for r in train if k in r], [float(r[k]) for r in train if k in r])
             for k in comp_keys]
    # val_alpha is the ridge's chosen regularisation, a setting rather than a score.
    val_keys = sorted({k for r in val for k, v in r.items() if k.startswith("val_") and k != "val_alpha"
                       and isinstance(v, int | float) and not isinstance(v, bool)})
    vals = [Series(k.removeprefix("val_"), [r["epoch"] for r in val if k in r], [float(r[k]) for r in val if k in r])
            for k in val_keys]
    return loss, comps, vals


# ----------------------------------------------------------------------------------------------------
# Embeddings for the UMAP and the retrieved-image row
# ----------------------------------------------------------------------------------------------------
@dataclass
class SplitEmbeddings:
    image_index: np.ndarray  # (N,) all test images, ascending
    targets: np.ndarray  # (N, F) CLIP-image targets, flattened
    backbone: np.ndarray  # (N, F)
    projector: np.ndarray | None  # (N, F) or None without a projector
    prior: np.ndarray | None  # (M, F) prior samples for the first M test images, or None
    prior_note: str = ""
    encoder: str = "CLIP image"


def test_embeddings(model, cfg, subject, device: str = "cpu", prior_samples: int = 100,
                    seed: int = 0) -> SplitEmbeddings:
    """Targets, backbone / projector outputs for the whole test split; prior samples for the first few."""
    import torch

    from mindeye.data.splits import load_eval_split
    from mindeye.encoders.targets import Targets, target_options
    from mindeye.runs import embed_voxels

    test = load_eval_split(subject, subject.image_indices("test"), cfg.data.test_mode)
    targets = Targets(subject.path, cfg.targets.encoder, cfg.targets.weights,
                      options=target_options(cfg, cfg.targets.encoder)).get(test.image_index)
    backbone = embed_voxels(model, test.voxels, device, which="backbone")
    projector = embed_voxels(model, test.voxels, device, which="projector") if model.projector is not None else None
    prior, note = None, ""
    if getattr(model, "prior", None) is None:
        note = "this run has no diffusion prior, so there are no prior samples"
    elif prior_samples > 0:
        m = min(prior_samples, len(test))
        gen = torch.Generator(device=device).manual_seed(seed)
        with torch.no_grad():
            prior = model.prior.sample(backbone[:m].to(device), cond_scale=cfg.model.prior.guidance,
                                       timesteps=cfg.model.prior.sample_steps, generator=gen).float().cpu()
        note = (f"{m} prior samples (guidance {cfg.model.prior.guidance}, {cfg.model.prior.sample_steps} steps) "
                f"for the first {m} test images")

    def flat(x):
        return None if x is None else x.flatten(1).float().numpy()

    return SplitEmbeddings(test.image_index, flat(targets), flat(backbone), flat(projector), flat(prior), note,
                          cfg.targets.encoder)


def umap_section(emb: SplitEmbeddings, limit: int, seed: int = 0) -> str:
    """UMAP (cosine) of targets / backbone / projector / prior samples for the first `limit` test images."""
    try:
        import umap
    except ImportError:
        return ('<p class="note" id="umap-unavailable">UMAP unavailable: the umap-learn package is not installed '
                "(<code>pip install umap-learn</code>).</p>")
    m = min(limit, len(emb.image_index))
    groups = [(f"targets ({emb.encoder})", emb.targets[:m]), ("backbone outputs", emb.backbone[:m])]
    if emb.projector is not None:
        groups.append(("projector outputs", emb.projector[:m]))
    if emb.prior is not None:
        groups.append(("prior samples", emb.prior[:m]))
    if any(g.shape[1] != groups[0][1].shape[1] for _, g in groups):
        shapes = ", ".join(f"{label} {g.shape[1]}" for label, g in groups)
        return f'<p class="note">UMAP skipped: the embeddings have different sizes ({esc(shapes)}).</p>'
    data = np.concatenate([g for _, g in groups]).astype(np.float32)
    import warnings

    with warnings.catch_warnings():  # umap warns that random_state disables parallelism
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(n_components=2, metric="cosine", n_neighbors=min(15, len(data) - 1),
                            random_state=seed, init="random" if len(data) < 20 else "spectral")
        xy = reducer.fit_transform(data)
    out, start = [], 0
    for label, g in groups:
        out.append((label, xy[start:start + len(g)]))
        start += len(g)
    return svg_scatter(out, f"UMAP (cosine) of {m} test images' embeddings")


# ----------------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1200px;color:#222;
padding:0 16px;line-height:1.4}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:center}
th{background:#f3f3f3}td.name{text-align:left;font-weight:600}tr.mean td{font-weight:700;background:#fafafa}
table.grid td,table.grid th{padding:2px;font-size:.85em}table.grid img{display:block;width:80px;height:80px}
table.grid th.rowhead{text-align:right;padding-right:6px;max-width:130px}.scroll{overflow-x:auto}
img.hit{outline:3px solid #009E73}img.miss{outline:3px solid #D55E00}
.note{color:#555;font-size:.92em}.charts{display:flex;flex-wrap:wrap;gap:12px}
svg text{font-size:11px;fill:#333}svg text.title{font-size:13px;font-weight:600}
svg .frame{fill:none;stroke:#999}svg .grid{stroke:#eee}code{background:#f5f5f5;padding:0 3px}
dl.prov dt{font-weight:600;float:left;clear:left;width:190px}dl.prov dd{margin-left:200px}
"""


def metrics_html_table(rows: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """Paper-Table-1 HTML table of `tables` rows, and footnotes for unavailable cells.

    A row with ``"mean": True`` is shown bold (the mean over one metrics file's rows).
    """
    head = "".join(f"<th>{esc(label)}</th>" for _, label, _ in COLUMNS)
    body, notes = [], {}
    for row in rows:
        cells = [f'<td class="name">{esc(row.get("name", "?"))}</td>']
        for key, _, percent in COLUMNS:
            value, reason = _value(row.get(key))
            if reason is not None:
                n = notes.setdefault(reason, len(notes) + 1)
                cells.append(f'<td class="unavailable" title="{esc(reason)}">{MISSING}<sup>{n}</sup></td>')
            else:
                cells.append(f"<td>{MISSING if value is None else _format(value, percent)}</td>")
        body.append(f'<tr{" class=mean" if row.get("mean") else ""}>' + "".join(cells) + "</tr>")
    table = (f'<table id="metrics-table" class="metrics"><thead><tr><th>Method</th>{head}</tr></thead>'
             f'<tbody>{"".join(body)}</tbody></table>')
    footnotes = [f"<sup>{n}</sup> unavailable: {esc(reason)}" for reason, n in notes.items()]
    return table, footnotes


def _same_path(a: str | os.PathLike | None, b: Path) -> bool:
    return a is not None and Path(a).resolve() == b.resolve()


def _retrieval_cells(r: dict[str, Any]) -> dict[str, Any]:
    return {k: {"value": float(r[k])} for k in DIRECTIONS}


def assemble_rows(runs: list[RunInfo], metrics_files: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows: one per metrics.json row (plus its file's mean row), then the runs not yet shown.

    A reconstruction row without retrieval columns gets those of the high-level run that made it
    (its ``high_run``); blurry rows never get retrieval (the low-level model does not retrieve).
    """
    rows, used = [], set()
    retrieving = [r for r in runs if r.role in ("high-level", "ridge")]
    for mf in metrics_files:
        file_rows = []
        for mrow in mf["rows"]:
            row = table_row(mrow)
            for run in retrieving:
                given = (mrow.get("retrieval") or {}).get("run")
                if given is not None and _same_path(given, run.path):
                    used.add(run.path)
                elif (IMAGE_TO_BRAIN not in row and mrow.get("kind") != "blurry" and run.retrieval
                      and _same_path(mrow.get("high_run"), run.path)):
                    row.update(_retrieval_cells(run.retrieval))
                    used.add(run.path)
            file_rows.append(row)
        rows += file_rows
        if len(file_rows) > 1 and "mean" in mf:  # e.g. several subjects: their mean, as in the paper's per-subject tables
            mean: dict[str, Any] = {"name": "Mean of " + ", ".join(str(r["name"]) for r in file_rows), "mean": True}
            for key, _, _ in COLUMNS:
                vals = [_value(r.get(key))[0] for r in file_rows]
                if all(v is not None for v in vals):
                    mean[key] = {"value": float(np.mean(vals))}
            rows.append(mean)
    for run in retrieving:
        if run.path in used:
            continue
        label = "ridge baseline" if run.role == "ridge" else "retrieval only"
        row = {"name": f"{run.name} ({label})"}
        if run.retrieval:
            row.update(_retrieval_cells(run.retrieval))
        rows.append(row)
    return rows


def retrieval_details(runs: list[RunInfo]) -> str:
    lines = []
    for run in runs:
        if run.role == "low-level":
            continue
        r = run.retrieval
        if r is None:
            lines.append(f"<li><b>{esc(run.name)}</b>: not evaluated -- run <code>mindeye evaluate retrieval "
                         f"--run {esc(run.path)}</code> and rebuild the report.</li>")
            continue
        full = r.get("full_test_set", {})
        ci = r.get(f"{IMAGE_TO_BRAIN}_ci95", [float("nan")] * 2)
        bci = r.get(f"{BRAIN_TO_IMAGE}_ci95", [float("nan")] * 2)
        pool = r.get("pool", 300)
        text = (f"image retrieval ({IMAGE_TO_BRAIN}) {100 * r[IMAGE_TO_BRAIN]:.1f}% "
                f"(95% CI {100 * ci[0]:.1f}-{100 * ci[1]:.1f}), "
                f"brain retrieval ({BRAIN_TO_IMAGE}) {100 * r[BRAIN_TO_IMAGE]:.1f}% "
                f"(95% CI {100 * bci[0]:.1f}-{100 * bci[1]:.1f}), "
                f"top-1 among {pool} over {r.get('draws', '?')} draws (chance {100 / pool:.2f}%), "
                f"{r.get('test_mode', '?')} test voxels, n = {r.get('n_test', '?')}")
        if full:
            text += (f"; whole test set: image retrieval top-1 "
                     f"{100 * full.get(f'{IMAGE_TO_BRAIN}_top1', float('nan')):.1f}%, "
                     f"top-5 {100 * full.get(f'{IMAGE_TO_BRAIN}_top5', float('nan')):.1f}%")
        if r.get("note"):
            text += f" ({r['note']})"
        lines.append(f"<li><b>{esc(run.name)}</b>: {esc(text)}</li>")
    return "<ul>" + "".join(lines) + "</ul>"


def _maker(recon: ReconDir) -> str:
    cfg = recon.config
    if recon.kind == "blurry":
        weights = f" (weights: {cfg['decoder_weights']})" if cfg.get("decoder_weights") else ""
        return f"decoded by the {cfg.get('decoder', 'unknown')} decoder{weights} from low-level run {cfg.get('run', '?')}"
    gen = cfg.get("generator") or "an unknown generator (the index names none)"
    text = f"generated by '{gen}'"
    if cfg.get("generator_weights"):
        text += f" (weights: {cfg['generator_weights']})"
    if gen in GENERATOR_NOTES:
        text += f": {GENERATOR_NOTES[gen]}"
    s = cfg.get("settings") or {}
    if s:
        text += (f"; best of {s.get('samples', '?')} samples, {s.get('steps', '?')} steps, guidance "
                 f"{s.get('guidance', '?')}, img2img strength {s.get('img2img_strength', '?')}"
                 f"{'' if cfg.get('img2img') else ' (no blurry start)'}")
    return text


def _index_images(recon: ReconDir) -> dict[int, Path]:
    return {int(i): f for i, f in zip(recon.image_index.tolist(), recon.files)}


def image_grid(subject, shown: np.ndarray, rows: list[tuple[str, dict[int, Any]]], thumb: int,
               classes: dict[int, str] | None = None) -> str:
    """HTML table: one column per shown image, one row per source (images as data URIs; '—' where missing)."""
    head = "".join(f'<th title="{esc(subject.image_ids[i])}">#{int(i)}</th>' for i in shown)
    body = []
    for label, source in rows:
        cells = [f'<th class="rowhead">{esc(label)}</th>']
        for i in shown:
            item = source.get(int(i))
            if item is None:
                cells.append(f"<td>{MISSING}</td>")
                continue
            img = load_pngs([item])[0] if isinstance(item, Path) else np.asarray(item)
            cls = ""
            if classes is not None and label.startswith("retrieved") and int(i) in classes:
                cls = f' class="{classes[int(i)]}"'
            cells.append(f'<td><img{cls} src="{png_data_uri(img, thumb)}" alt="{esc(label)} {int(i)}" '
                         f'width="80" height="80"></td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table class="grid" id="image-grid"><thead><tr><th></th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def build_report(
    run: str | os.PathLike,
    lowlevel: str | os.PathLike | None = None,
    ridge: str | os.PathLike | None = None,
    recons: str | os.PathLike | None = None,
    blurry: str | os.PathLike | None = None,
    metrics: Sequence[str | os.PathLike] = (),
    out: str | os.PathLike | None = None,
    retrieved: str | os.PathLike | None = None,
    store: str | os.PathLike | None = None,
    umap: bool = True,
    n_images: int = 12,
    embed_samples: int = 100,
    device: str = "cpu",
    seed: int = 0,
    thumb: int = 128,
    title: str | None = None,
) -> Path:
    """Write the HTML report for a high-level run (and optional low-level / ridge runs, reconstructions,
    blurry images and reconstruction metrics); returns its path (default RUN/report.html).

    blurry defaults to RECONS/blurry, or the blurry directory the recon index names as its img2img
    source, when those hold blurry images. retrieved: a directory in the reconstruction index format holding retrieved images.
    embed_samples caps the test images in the UMAP (and the prior samples drawn for it).
    """
    from mindeye.runs import load_run_model

    t0 = time.perf_counter()
    run = Path(run)
    out = Path(out) if out is not None else run / "report.html"
    if n_images < 1:
        raise MindEyeError("--images must be at least 1")
    high = read_run_info(run, "high-level")
    if high.cfg.model.kind != "mindeye":
        raise MindEyeError(f"{run} is a '{high.cfg.model.kind}' run; --run must be the high-level (mindeye) run "
                           "(pass low-level runs with --lowlevel and ridge runs with --ridge)")
    runs = [high]
    if ridge is not None:
        runs.append(read_run_info(ridge, "ridge"))
    if lowlevel is not None:
        runs.append(read_run_info(lowlevel, "low-level"))
    recon_dir = read_recon_dir(recons) if recons is not None else None
    if blurry is None and recon_dir is not None:  # where `mindeye reconstruct --lowlevel` put / found them
        for cand in (recon_dir.path / "blurry", recon_dir.config.get("lowlevel")):
            if cand and (Path(cand) / "index.json").exists():
                blurry = Path(cand)
                break
    blurry_dir = read_recon_dir(blurry) if blurry is not None else None
    retrieved_dir = read_recon_dir(retrieved) if retrieved is not None else None
    metric_files = [read_metrics(p) for p in metrics]

    cfg, info, model, subject = load_run_model(run, device, store)
    emb = test_embeddings(model, cfg, subject, device, embed_samples if umap else 0, seed)
    notes: list[str] = []

    # -- provenance ----------------------------------------------------------------------------------
    meta = subject.meta
    encoder = cfg.targets.encoder
    enc_note = (" -- a stand-in encoder for the CPU demo, NOT CLIP ViT-L/14 (docs/encoders.md)"
                if encoder.startswith("standin") else "")
    prov = [("subject store", f"{subject.path} (source: {meta.get('source', '?')}, subject "
                              f"{meta.get('subject', '?')}, {subject.n_images} images of {subject.image_size} px, "
                              f"{len(emb.image_index)} test images)"),
            ("target encoder", f"{encoder}{enc_note}")]
    for r in runs:
        n_params = (r.info.get("parameters") or {}).get("total")
        extra = f", {n_params:,} parameters" if n_params else ""
        if r.info.get("alpha") is not None:
            extra += f", ridge alpha {r.info['alpha']:g}"
        prov.append((f"{r.role} run", f"{r.path} (config '{r.name}'{extra})"))
    if recon_dir is not None:
        prov.append(("reconstructions", f"{recon_dir.path}: {len(recon_dir.image_index)} images {_maker(recon_dir)}"))
    if blurry_dir is not None:
        prov.append(("blurry images", f"{blurry_dir.path}: {len(blurry_dir.image_index)} images {_maker(blurry_dir)}"))
    if retrieved_dir is not None:
        prov.append(("retrieved images", f"{retrieved_dir.path} ({retrieved_dir.kind})"))
    prov_html = "<dl class='prov'>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in prov) + "</dl>"

    # -- metrics table -------------------------------------------------------------------------------
    rows = assemble_rows(runs, metric_files)
    table, footnotes = metrics_html_table(rows)
    footnotes.insert(0, esc(TABLE1_FOOTNOTE))
    if not metric_files:
        footnotes.insert(0, "No reconstruction metrics given: compute them with <code>mindeye evaluate recon "
                            "--recons DIR --out metrics.json</code> and pass <code>--metrics metrics.json</code>.")
    for mf in metric_files:
        for mrow in mf["rows"]:
            footnotes.append(esc(f"{mrow.get('name')}: {mrow.get('n_images')} images from {mrow.get('recons')} "
                                 f"(made by {mrow.get('generator') or 'unknown'})"))
    from mindeye.evaluation.tables import markdown_table

    table_md = markdown_table(rows)

    # -- curves --------------------------------------------------------------------------------------
    charts = []
    for r in runs:
        loss, comps, vals = curve_series(r.records)
        block = [f"<h3>{esc(r.role)}: {esc(r.name)}</h3><div class='charts'>"]
        if loss:
            block.append(svg_line_chart(loss, "training loss", "step", "loss"))
        if comps:
            block.append(svg_line_chart(comps, "loss components", "step", "loss"))
        if vals and max(len(v.x) for v in vals) > 1:
            block.append(svg_line_chart(vals, "validation", "epoch", "value"))
        elif vals:  # one evaluation (e.g. the ridge): a line of numbers says more than a chart
            shown = ", ".join(f"{v.label} {v.y[0]:.3f}" for v in vals)
            block.append(f"<p class='note validation'>validation (epoch {vals[0].x[0]}): {esc(shown)}</p>")
        if not (loss or comps or vals):
            block.append(f"<p class='note'>{esc(r.path)}/metrics.jsonl has no records.</p>")
        elif r.role == "ridge":
            block.append("<p class='note'>ridge regression is fitted in closed form: no training curve, only its "
                         "validation retrieval.</p>")
        block.append("</div>")
        charts.append("".join(block))

    # -- image grid ----------------------------------------------------------------------------------
    if recon_dir is not None:
        candidates = recon_dir.image_index
    elif blurry_dir is not None:
        candidates = blurry_dir.image_index
    else:
        candidates = emb.image_index
    shown = np.sort(candidates)[:n_images]
    grid_rows: list[tuple[str, dict[int, Any]]] = [("ground truth", {int(i): subject.images[i] for i in shown})]
    if blurry_dir is not None:
        grid_rows.append(("blurry (low-level)", _index_images(blurry_dir)))
    if recon_dir is not None:
        grid_rows.append(("reconstruction", _index_images(recon_dir)))
    if retrieved_dir is not None:
        grid_rows.append(("retrieved (given)", _index_images(retrieved_dir)))
    # Top-1 retrieval among the test images: projector output vs every test target (cosine).
    classes: dict[int, str] = {}
    if emb.projector is not None:
        from mindeye.metrics.retrieval import cosine_matrix

        best = cosine_matrix(emb.projector, emb.targets).argmax(dim=1).numpy()
        pos = {int(i): k for k, i in enumerate(emb.image_index)}
        found = {}
        for i in shown:
            if int(i) in pos:
                j = int(emb.image_index[best[pos[int(i)]]])
                found[int(i)] = subject.images[j]
                classes[int(i)] = "hit" if j == int(i) else "miss"
        grid_rows.append((f"retrieved (top-1 of {len(emb.image_index)} test images)", found))
    if blurry_dir is None:
        notes.append("No blurry images: make them with <code>mindeye reconstruct-blurry --run LOW_RUN --out DIR"
                     "</code> and pass <code>--blurry DIR</code>.")
    if recon_dir is None:
        notes.append("No reconstructions: make them with <code>mindeye reconstruct --run RUN --out DIR</code> and "
                     "pass <code>--recons DIR</code>.")
    grid = image_grid(subject, shown, grid_rows, thumb, classes)

    # -- UMAP ----------------------------------------------------------------------------------------
    if umap:
        umap_html = umap_section(emb, embed_samples, seed)
        if emb.prior_note:
            umap_html += f"<p class='note'>{esc(emb.prior_note)}.</p>"
    else:
        umap_html = "<p class='note'>UMAP not computed (--no-umap).</p>"

    heading = title or f"MindEye report: {high.name}"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="generator" content="mindeye {esc(__version__)}">
<title>{esc(heading)}</title><style>{CSS}</style></head>
<body>
<h1>{esc(heading)}</h1>
<p class="note">Written by mindeye {esc(__version__)} on {time.strftime('%Y-%m-%d %H:%M')}. Every image and chart is
embedded in this file.</p>
<section id="provenance"><h2>What produced this</h2>{prov_html}</section>
<section id="metrics"><h2>Metrics (paper Table 1 layout)</h2>{table}
<p class="note">{'<br>'.join(footnotes)}</p>
<h3>Retrieval details</h3>{retrieval_details(runs)}
<details><summary>Markdown</summary><pre>{esc(table_md)}</pre></details></section>
<section id="curves"><h2>Training curves</h2>{''.join(charts)}</section>
<section id="images"><h2>Test images</h2>
<p class="note">The first {len(shown)} test images (store index above each column). Retrieved: the test image whose
target embedding is closest (cosine) to the brain's projector output, outlined green when it is the right one
(retrieval among this subject's test set, not LAION-5B as in paper Figure 3).</p>
{grid}<p class="note">{' '.join(notes)}</p></section>
<section id="umap"><h2>Embedding spaces (paper Figure 9)</h2>{umap_html}</section>
<p class="note">Built in {time.perf_counter() - t0:.1f} s.</p>
</body></html>
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out
