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
            cells = []
            for column, d in TABLE1_COLUMNS.items():
                lo, hi = gap.get(f"{d}_ci95_bootstrap", (float("nan"), float("nan")))
                cells.append({"column": column, "id": _pct(g["in-distribution"], d),
                              "ood": _pct(g["out-of-distribution"], d),
                              "gap": f"{100 * gap.get(d, float('nan')):+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"})
            out.append({"name": r.name, "pool": block["pool"], "n_id": g["in-distribution"]["n"],
                        "n_ood": g["out-of-distribution"]["n"], "cells": cells, "view": ood.get("view"),
                        "held_out": ", ".join(map(str, ood.get("held_out_clusters") or []))})
    return out


def published_section(rows: Sequence[dict[str, Any]], store_meta: dict[str, Any],
                      retrieval: dict[str, Any] | None) -> dict[str, Any]:
    """Our first model row placed among the published NSD rows (or why that does not apply)."""
    from mindeye.evaluation.published import place_run, placement_lines

    ours = next((r for r in rows if "ridge baseline" not in str(r.get("name", ""))), rows[0] if rows else {})
    placed = place_run(str(ours.get("name", "this run")), ours, store_meta, retrieval)
    return {**placed, "lines": placement_lines(placed)}
