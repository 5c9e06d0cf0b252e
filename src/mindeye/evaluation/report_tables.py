"""The report's tables: paper-Table-1 rows, and their Markdown / CSV / LaTeX (booktabs) exports.

Rows are ``tables`` rows ({"name": str, <metric key>: cell}); the columns and their labels come from
:data:`mindeye.evaluation.tables.COLUMNS`, and the retrieval result keys from :data:`RETRIEVAL` below,
so a renamed key or label changes in one place only.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mindeye.evaluation.recon_eval import table_row
from mindeye.evaluation.tables import COLUMNS, MISSING, _format, _value, csv_cell, markdown_table
from mindeye.metrics.retrieval import TABLE1_COLUMNS


@dataclass(frozen=True)
class RetrievalDirection:
    """One retrieval direction as `evaluate retrieval` writes it: the keys of its mean, CI and draws."""

    key: str  # mean over draws; also its Table-1 column key
    ci_key: str
    per_draw_key: str
    topk_prefix: str  # whole-test-set keys are f"{topk_prefix}_top{k}"
    label: str


# THE place that names the retrieval result keys and their labels (Table-1 column order).
# Table 1's "Image retrieval" is image_to_brain, "Brain retrieval" brain_to_image (the authors' direction,
# mindeye.evaluation.retrieval.TABLE1_COLUMNS / TABLE1_FOOTNOTE).
RETRIEVAL = tuple(
    RetrievalDirection(key, f"{key}_ci95", f"{key}_per_draw", key, f"{column.lower()} ({key.replace('_to_', '→')})")
    for column, key in TABLE1_COLUMNS.items()
)
RETRIEVAL_KEYS = tuple(d.key for d in RETRIEVAL)
# Paper Table 1's column groups (the rest of COLUMNS are high-level metrics).
LOW_LEVEL_KEYS = ("pixcorr", "ssim", "alexnet2", "alexnet5")


def column_group(key: str) -> str:
    if key in RETRIEVAL_KEYS:
        return "Retrieval"
    return "Low-Level" if key in LOW_LEVEL_KEYS else "High-Level"


# ----------------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------------
def _same_path(a: str | os.PathLike | None, b: Path) -> bool:
    return a is not None and Path(a).resolve() == b.resolve()


def retrieval_cells(r: dict[str, Any]) -> dict[str, Any]:
    return {k: {"value": float(r[k])} for k in RETRIEVAL_KEYS if k in r}


def assemble_rows(runs: Sequence[Any], metrics_files: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows: one per metrics.json row (plus its file's mean row), then the runs not yet shown.

    runs: report RunInfo objects (role, path, name, retrieval). A reconstruction row without retrieval
    columns gets those of the high-level run that made it (its ``high_run``); blurry rows never get
    retrieval (the low-level model does not retrieve).
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
                elif (RETRIEVAL_KEYS[0] not in row and mrow.get("kind") != "blurry" and run.retrieval
                      and _same_path(mrow.get("high_run"), run.path)):
                    row.update(retrieval_cells(run.retrieval))
                    used.add(run.path)
            file_rows.append(row)
        rows += file_rows
        if len(file_rows) > 1 and "mean" in mf:  # e.g. several subjects: their mean, as in the paper's tables
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
            row.update(retrieval_cells(run.retrieval))
        rows.append(row)
    return rows


def html_table(rows: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], list[tuple[int, str]]]:
    """Data for the page's Table-1 template: header labels, rows of cells, and numbered footnotes.

    Each cell is {"text", "reason" (or None), "note" (footnote number or None)}.
    """
    notes: dict[str, int] = {}
    body = []
    for row in rows:
        cells = []
        for key, _, percent in COLUMNS:
            value, reason = _value(row.get(key))
            note = notes.setdefault(reason, len(notes) + 1) if reason is not None else None
            cells.append({"text": MISSING if value is None else _format(value, percent), "reason": reason,
                          "note": note})
        body.append({"name": str(row.get("name", "?")), "mean": bool(row.get("mean")), "cells": cells})
    table = {"groups": _groups(), "labels": [label for _, label, _ in COLUMNS], "rows": body}
    return table, [(n, reason) for reason, n in notes.items()]


def _groups() -> list[tuple[str, int]]:
    """Consecutive column groups as (name, span), e.g. [("Low-Level", 4), ("High-Level", 4), ("Retrieval", 2)]."""
    out: list[tuple[str, int]] = []
    for key, _, _ in COLUMNS:
        g = column_group(key)
        if out and out[-1][0] == g:
            out[-1] = (g, out[-1][1] + 1)
        else:
            out.append((g, 1))
    return out


# ----------------------------------------------------------------------------------------------------
# Exports
# ----------------------------------------------------------------------------------------------------
def csv_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per row: method, then every COLUMNS key as a raw number (fractions, not percent);
    empty where missing, and an `unavailable` column listing the metrics that could not be computed."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", *[key for key, _, _ in COLUMNS], "unavailable"])
    for row in rows:
        values, missing = [], []
        for key, _, _ in COLUMNS:
            value, reason = _value(row.get(key))
            values.append("" if value is None else rounded(value))
            if reason is not None:
                missing.append(key)
        w.writerow([csv_cell(row.get("name", "?")), *values, " ".join(missing)])
    return buf.getvalue()


def rounded(value: float, digits: int = 4) -> str:
    """A CSV number with ``digits`` significant digits (0.5199999809265137 -> 0.52): the metrics carry no more."""
    return repr(float(f"{float(value):.{digits}g}"))


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex_label(label: str) -> str:
    """'Alex(2) ↑' -> 'Alex(2) $\\uparrow$' (the arrows say which way is better, as in the paper)."""
    return latex_escape(label).replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$")


# Table 1's retrieval sub-headers: "Image" / "Brain" under the "Retrieval" group, as in the paper.
_SHORT_LABELS = {key: label.replace(" retrieval", "") for key, label, _ in COLUMNS if key in RETRIEVAL_KEYS}


def latex_table(rows: Sequence[dict[str, Any]], caption: str = "", label: str = "tab:mindeye") -> str:
    """Paper Table 1 as a booktabs LaTeX table (needs \\usepackage{booktabs} and {graphicx}): the column groups
    Low-Level / High-Level / Retrieval over the metric columns (Image / Brain under Retrieval, as in the paper),
    percents as in the paper, '--' for a missing value, a lettered footnote (below the table) for each reason
    a metric is unavailable; the mean rows are bold. Shrunk to the column width when wider (NeurIPS: 5.5 in)."""
    groups = _groups()
    n = len(COLUMNS)
    notes: dict[str, str] = {}
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    # Method names wrap in a 2.4 cm column; the rest is shrunk only when still wider than the column.
    lines += [rf"\label{{{label}}}", r"\footnotesize", r"\setlength{\tabcolsep}{3pt}",
              r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
              r"\begin{tabular}{p{2.4cm}" + "c" * n + "}", r"\toprule"]
    lines.append(" & " + " & ".join(rf"\multicolumn{{{span}}}{{c}}{{{g}}}" for g, span in groups) + r" \\")
    start, rules = 2, []
    for _, span in groups:
        rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
        start += span
    lines.append(" ".join(rules))
    lines.append("Method & " + " & ".join(_latex_label(_SHORT_LABELS.get(key, lab)) for key, lab, _ in COLUMNS)
                 + r" \\")
    lines.append(r"\midrule")
    for row in rows:
        cells = []
        for key, _, percent in COLUMNS:
            value, reason = _value(row.get(key))
            if reason is not None:
                mark = notes.setdefault(reason, "abcdefghijklmnopqrstuvwxyz"[len(notes) % 26])
                cells.append(rf"--\textsuperscript{{{mark}}}")
            else:
                cells.append("--" if value is None else latex_escape(_format(value, percent)))
        name = latex_escape(row.get("name", "?"))
        if row.get("mean"):
            name, cells = rf"\textbf{{{name}}}", [rf"\textbf{{{c}}}" for c in cells]
        lines.append(r"\raggedright " + name + " & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}"]
    if notes:
        lines.append(r"\par\smallskip\parbox{\linewidth}{\footnotesize " + r" \\ ".join(
            rf"\textsuperscript{{{mark}}}\,unavailable: {latex_escape(reason)}" for reason, mark in notes.items()) + "}")
    lines += [r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_tables(rows: Sequence[dict[str, Any]], folder: Path, stem: str = "table1", caption: str = "") -> list[Path]:
    """``folder/<stem>.md``, ``.csv`` and ``.tex``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for suffix, text in ((".md", markdown_table(list(rows), mean_row=False)), (".csv", csv_table(rows)),
                         (".tex", latex_table(rows, caption))):
        path = folder / f"{stem}{suffix}"
        path.write_text(text, encoding="utf-8")
        out.append(path)
    return out


def retrieval_details(runs: Sequence[Any]) -> list[tuple[str, str, bool]]:
    """(run name, sentence, evaluated?) for each retrieving run: CIs, pool, draws, chance, whole-test-set top-k."""
    out = []
    for run in runs:
        if run.role == "low-level":
            continue
        r = run.retrieval
        if r is None:
            out.append((run.name, f"not evaluated -- run `mindeye evaluate retrieval --run {run.path}` and rebuild "
                                  "the report.", False))
            continue
        pool = r.get("pool", 300)
        parts = []
        for d in RETRIEVAL:
            if d.key in r:
                lo, hi = r.get(d.ci_key, [float("nan")] * 2)
                parts.append(f"{d.label} {100 * r[d.key]:.1f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f})")
        text = (", ".join(parts) + f", top-1 among {pool} over {r.get('draws', '?')} draws (chance "
                f"{100 / pool:.2f}%), {r.get('test_mode', '?')} test voxels, n = {r.get('n_test', '?')}")
        full = r.get("full_test_set", {})
        if full:
            d = RETRIEVAL[0]
            text += (f"; whole test set: {d.label} top-1 {100 * full.get(f'{d.topk_prefix}_top1', float('nan')):.1f}%, "
                     f"top-5 {100 * full.get(f'{d.topk_prefix}_top5', float('nan')):.1f}%")
        if r.get("note"):
            text += f" ({r['note']})"
        out.append((run.name, text, True))
    return out
