"""The report's out-of-distribution paragraph and its place among published results (report sections).

Kept apart from report.py so the sections stay small: each function takes what report.py already has
(the runs' retrieval.json, the store's meta) and returns plain data for the template.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mindeye.metrics.retrieval import TABLE1_COLUMNS

OOD_EXPLANATION = (
    "The test set of this category-disjoint store view has two parts: in-distribution (ID) images, from "
    "clusters (categories) the model was trained on, and out-of-distribution (OOD) images, from whole clusters "
    "held out of training. Both are scored against the same candidate pools. A model that has learned a "
    "general brain-to-embedding mapping scores about the same on both; a large ID - OOD gap means it mostly "
    "recognises the categories it was trained on and 'decodes' new images as trained ones -- the "
    "spurious-reconstruction effect Shirakawa et al. (2024, 'Spurious reconstruction from brain activity') "
    "found for NSD, whose train and test images share semantic clusters. Published NSD scores are ID scores.")


def _pct(block: dict[str, Any], key: str) -> str:
    lo, hi = block.get(f"{key}_ci95_bootstrap", (float("nan"), float("nan")))
    return f"{100 * block[key]:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def ood_rows(runs: Sequence[Any]) -> list[dict[str, Any]]:
    """One entry per run whose retrieval.json has an ``ood`` block: label, ID / OOD / gap cells per direction."""
    out = []
    for r in runs:
        ood = (getattr(r, "retrieval", None) or {}).get("ood")
        if not ood:
            continue
        for key in ("pooled", "all"):
            block = ood.get(key)
            if not block:
                continue
            g, gap = block["groups"], block.get("gap", {})
            control = ((ood.get("control") or {}).get(key) or {}).get("gap", {})
            cells = []
            for column, d in TABLE1_COLUMNS.items():
                lo, hi = gap.get(f"{d}_ci95_bootstrap", (float("nan"), float("nan")))
                cells.append({"column": column, "id": _pct(g["in-distribution"], d),
                              "ood": _pct(g["out-of-distribution"], d),
                              "gap": f"{100 * gap.get(d, float('nan')):+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]",
                              "control": f"{100 * control[d]:+.1f}" if d in control else "—",
                              "excess": f"{100 * block['excess_gap'][d]:+.1f}" if "excess_gap" in block else "—"})
            out.append({"name": r.name, "pool": block["pool"], "n_id": g["in-distribution"]["n"],
                        "n_ood": g["out-of-distribution"]["n"], "cells": cells, "view": ood.get("view"),
                        "held_out": ", ".join(map(str, ood.get("held_out_clusters") or []))})
    return out


def ood_recon_rows(metric_files: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per metrics.json row (`mindeye evaluate recon`) with an ``ood`` block: name, group sizes,
    view and one cell per metric (recon_eval.ood_cells: ID, OOD, gap [CI], the better group)."""
    from mindeye.evaluation.recon_eval import ood_cells

    return [{"name": str(row.get("name", "?")), "n_id": row["ood"]["n"]["in-distribution"],
             "n_ood": row["ood"]["n"]["out-of-distribution"], "cells": ood_cells(row["ood"]),
             "view": row["ood"].get("view"), "held_out": ", ".join(map(str, row["ood"].get("held_out_clusters") or [])),
             "warning": row["ood"].get("warning"), "two_way": row["ood"].get("two_way")}
            for mf in metric_files for row in mf.get("rows", []) if row.get("ood")]


def published_section(rows: Sequence[dict[str, Any]], store_meta: dict[str, Any],
                      retrieval: dict[str, Any] | None) -> dict[str, Any]:
    """Our first model row placed among the published NSD rows (or why that does not apply)."""
    from mindeye.evaluation.published import place_run, placement_lines

    ours = next((r for r in rows if "ridge baseline" not in str(r.get("name", ""))), rows[0] if rows else {})
    from mindeye.evaluation.tables import COLUMNS, MISSING, _format

    placed = place_run(str(ours.get("name", "this run")), ours, store_meta, retrieval)
    out = {**placed, "lines": placement_lines(placed), "keys": [key for key, _, _ in COLUMNS]}
    if placed["applies"]:
        pct = {key: p for key, _, p in COLUMNS}

        def shown(cells: dict[str, Any]) -> dict[str, str]:
            return {k: MISSING if v is None else _format(v, pct[k]) for k, v in cells.items()}

        out["rows"] = [{"method": f"{placed['name']} (this run)", "subjects": str(store_meta.get("subject", "?")),
                        "shown": shown(placed["values"]), "differences": [], "source": "this report"}] + [
            {**r, "shown": shown(r["cells"])} for r in placed["rows"]]
    return out


def validation_axes(run: Any, subject: Any) -> tuple[str, str, list[Any]]:
    """(title, y label, series with readable labels) of a run's validation chart: retrieval scores are
    "top-1 among N" with N the validation pool the trainer used (min(eval.pool, validation images))."""
    from dataclasses import replace

    from mindeye.evaluation.report_data import curve_series
    from mindeye.training.data import train_val_images

    _, _, vals = curve_series(run.records)
    names = {d: f"{column.lower()} ({d.replace('_to_', '→')})" for column, d in TABLE1_COLUMNS.items()}
    if not vals or not all(s.label in names for s in vals):
        return "validation", "score", vals
    try:
        n_val = len(train_val_images(subject, run.cfg)[1])
    except Exception:  # noqa: BLE001 - a label must never break the report
        n_val = 0
    pool = min(int(run.cfg.eval.pool), n_val) if n_val else None
    ylabel = f"top-1 accuracy, {pool}-way (chance {100 / pool:.2g}%)" if pool else "top-1 accuracy"
    title = f"validation retrieval, {pool} candidates" if pool else "validation retrieval"
    return title, ylabel, [replace(s, label=names[s.label]) for s in vals]


def table1_caption(title: str, runs: Sequence[Any], subject: Any) -> str:
    """A real caption for tables/table1.tex: what was measured, on what, and how to read each column."""
    pools = sorted({int(r.retrieval["pool"]) for r in runs if getattr(r, "retrieval", None) and "pool" in r.retrieval})
    draws = sorted({int(r.retrieval.get("draws", 30)) for r in runs if getattr(r, "retrieval", None)})
    n_test = len(subject.image_indices("test"))
    where = (f"subject {subject.meta.get('subject', '?')} of {subject.meta.get('source', '?')} data, "
             f"{n_test} test images")
    text = (f"{title}: retrieval and reconstruction ({where}). PixCorr: pixelwise correlation; SSIM: structural "
            "similarity; Alex(2), Alex(5), Incep, CLIP: two-way identification (chance 50%); Eff, SwAV: average "
            "correlation distance (lower is better).")
    if pools:
        pool = "/".join(map(str, pools))
        text += (f" Image / Brain retrieval: top-1 among {pool} candidates (chance {100 / pools[0]:.2g}%), mean of "
                 f"{'/'.join(map(str, draws))} random draws; Image retrieval = given an image, find its brain sample "
                 "(image_to_brain), as the authors' code computed Table 1.")
    return text + " -- : not measured."
