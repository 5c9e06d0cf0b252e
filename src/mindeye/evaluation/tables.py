"""Markdown results table laid out like paper Table 1."""

from __future__ import annotations

import math

from mindeye.metrics.retrieval import TABLE1_COLUMNS, TABLE1_FOOTNOTE

# (row key, column header, shown as percent?)
COLUMNS = (
    ("pixcorr", "PixCorr ↑", False),
    ("ssim", "SSIM ↑", False),
    ("alexnet2", "Alex(2) ↑", True),
    ("alexnet5", "Alex(5) ↑", True),
    ("inceptionv3", "Incep ↑", True),
    ("clip", "CLIP ↑", True),
    ("efficientnet_b1", "Eff ↓", False),
    ("swav", "SwAV ↓", False),
    # Table 1's retrieval columns carry the direction the authors' numbers came from (see TABLE1_FOOTNOTE).
    (TABLE1_COLUMNS["Image retrieval"], "Image retrieval ↑", True),
    (TABLE1_COLUMNS["Brain retrieval"], "Brain retrieval ↑", True),
)
RETRIEVAL_KEYS = tuple(TABLE1_COLUMNS.values())
MISSING = "—"


def _value(cell) -> tuple[float | None, str | None]:
    """A row cell -> (number or None, unavailable reason or None).

    Cells may be a float, {"value": float}, {"unavailable": reason}, or absent/None.
    """
    if cell is None:
        return None, None
    if isinstance(cell, dict):
        if "unavailable" in cell:
            return None, str(cell["unavailable"])
        cell = cell.get("value")
        if cell is None:
            return None, None
    value = float(cell)
    return (None, None) if math.isnan(value) else (value, None)


def _format(value: float, percent: bool) -> str:
    if percent:
        return f"{100 * value:.1f}%"
    text = f"{value:.3f}"
    # Paper style: ".309" rather than "0.309".
    return text.replace("0.", ".", 1) if text.startswith(("0.", "-0.")) else text


def md_cell(text: object) -> str:
    """A Markdown table cell: ``|`` escaped and line breaks flattened, so a name cannot break the table."""
    return " ".join(str(text).replace("\\", "\\\\").replace("|", "\\|").split())


def csv_cell(text: object) -> str:
    """A CSV text cell that a spreadsheet shows as text: a leading = + - @ (or tab / carriage return) would make
    it a formula (e.g. ``=HYPERLINK(...)``: formula injection), so such a cell gets a leading apostrophe."""
    text = str(text)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def markdown_table(rows: list[dict], title: str | None = None, mean_row: bool = True) -> str:
    """Render result rows as a Markdown table in paper Table 1 layout.

    Each row is {"name": str, <metric key>: cell, ...} with metric keys from COLUMNS (e.g. merge
    `evaluate_reconstructions(...)` with `retrieval_top1_among(...)`). Two-way identification and
    retrieval are shown as percents, the rest with 3 decimals; missing or unavailable values are
    "—", and unavailable ones get a footnote with the reason. With several rows, a "Mean" row
    averages each column over the rows (only where every row has a value).
    """
    header = ["Method"] + [c[1] for c in COLUMNS]
    lines = []
    if title:
        lines += [f"### {md_cell(title)}", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":-:"] * len(COLUMNS)) + "|"]

    reasons: dict[str, list[str]] = {}  # reason -> ["Alex(2) (subj01)", ...]
    columns: dict[str, list[float | None]] = {key: [] for key, _, _ in COLUMNS}
    for i, row in enumerate(rows):
        name = md_cell(row.get("name", f"run {i + 1}"))
        cells = [name]
        for key, label, percent in COLUMNS:
            value, reason = _value(row.get(key))
            columns[key].append(value)
            if reason is not None:
                reasons.setdefault(reason, []).append(f"{label.rsplit(' ', 1)[0]} ({name})")
            cells.append(MISSING if value is None else _format(value, percent))
        lines.append("| " + " | ".join(cells) + " |")

    if mean_row and len(rows) > 1:
        cells = ["**Mean**"]
        for key, _, percent in COLUMNS:
            values = columns[key]
            ok = all(v is not None for v in values)
            cells.append(_format(sum(values) / len(values), percent) if ok else MISSING)
        lines.append("| " + " | ".join(cells) + " |")

    if any(row.get(key) is not None for row in rows for key in RETRIEVAL_KEYS):
        lines += ["", f"Retrieval: {TABLE1_FOOTNOTE}"]
    if reasons:
        lines += ["", "— unavailable:"]
        for reason, where in reasons.items():
            lines.append(f"- {', '.join(where)}: {reason}")
    return "\n".join(lines) + "\n"
