"""Published NSD results (src/mindeye/assets/published_results.json) and where a run's row falls among them.

Numbers are only comparable under the same protocol: the same test images, the same repetition averaging,
the same retrieval pool and the same image resizing before the metrics. :func:`place_run` compares a run's
protocol with each published row's and lists every difference, so the report says "2 protocol differences"
instead of ranking blindly; on a store that is not NSD (a simulated subject, another dataset) it says the
comparison does not apply. docs/published-results.md lists the rows and their sources.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from mindeye.evaluation.tables import COLUMNS, _format, _value

NSD_SOURCES = ("nsd", "nsd-webdataset")


def load_published() -> dict[str, Any]:
    """The shipped table: {"protocols": {name: {...}}, "results": [{method, subjects, protocol, source, metrics}]}."""
    text = resources.files("mindeye").joinpath("assets/published_results.json").read_text(encoding="utf-8")
    return json.loads(text)


def run_protocol(store_meta: dict[str, Any], retrieval: dict[str, Any] | None) -> dict[str, Any]:
    """The protocol facts of our run: dataset, test images, averaging, retrieval pool/draws, resizing."""
    r = retrieval or {}
    mode = r.get("test_mode", "averaged")
    return {"dataset": "nsd" if store_meta.get("source") in NSD_SOURCES else str(store_meta.get("source", "?")),
            "test_images": r.get("n_test"),
            "averaging": "single" if mode == "single" else "averaged",
            "retrieval_pool": r.get("pool"), "retrieval_draws": r.get("draws"),
            "resizing": "as MindEye v1 (256 px, 425 px bilinear for PixCorr / SSIM; docs/evaluation.md)"}


def protocol_differences(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """Plain sentences for each way our protocol differs from a published one (empty: same protocol)."""
    out = []
    if ours.get("test_images") is not None and ours["test_images"] != theirs.get("test_images"):
        out.append(f"test set: {ours['test_images']} images here vs {theirs.get('test_images')} "
                   f"({theirs.get('test_set', '?')})")
    single_there = "single" in str(theirs.get("averaging", ""))
    if (ours.get("averaging") == "single") != single_there:
        out.append(f"averaging: {ours.get('averaging')} test voxels here vs {theirs.get('averaging')}")
    elif "model outputs" in str(theirs.get("averaging", "")):
        out.append(f"averaging: voxels averaged before the model here vs {theirs.get('averaging')}")
    for key, what in (("retrieval_pool", "retrieval pool"), ("retrieval_draws", "retrieval draws")):
        if ours.get(key) is not None and theirs.get(key) is not None and ours[key] != theirs[key]:
            out.append(f"{what}: {ours[key]} here vs {theirs[key]}")
    if "blended" in str(theirs.get("resizing", "")):
        out.append(f"images: {theirs['resizing']} there; not blended here")
    return out


def place_run(name: str, row: dict[str, Any], store_meta: dict[str, Any], retrieval: dict[str, Any] | None,
              table: dict[str, Any] | None = None) -> dict[str, Any]:
    """Our row among the published ones, per metric, with the protocol differences of each published row.

    row: our Table-1 row ({metric key: cell}); store_meta: the store's meta.json; retrieval: the run's
    retrieval.json. Returns {"applies": False, "reason": ...} off NSD; else {"applies": True, "ours":
    {...}, "rows": [{method, subjects, source, cells, differences}], "ranks": {key: (rank, of)}}.
    """
    table = table or load_published()
    ours = run_protocol(store_meta, retrieval)
    if ours["dataset"] != "nsd":
        return {"applies": False,
                "reason": f"this run's store is {ours['dataset']!r} data, not NSD: published NSD numbers do not "
                          "apply (different images, brains and noise); compare runs on this store with each other "
                          "and with its floors and ceilings instead"}
    values = {key: _value(row.get(key))[0] for key, _, _ in COLUMNS}
    rows = []
    for entry in table["results"]:
        proto = table["protocols"][entry["protocol"]]
        rows.append({"method": entry["method"], "subjects": entry["subjects"], "source": entry["source"],
                     "protocol": proto.get("label", entry["protocol"]),
                     "cells": {key: entry["metrics"].get(key) for key, _, _ in COLUMNS},
                     "differences": protocol_differences(ours, proto)})
    ranks = {}
    for key, label, _ in COLUMNS:
        mine = values[key]
        theirs = [r["cells"][key] for r in rows if r["cells"][key] is not None]
        if mine is None or not theirs:
            continue
        lower_better = "↓" in label
        better = sum(1 for t in theirs if (t < mine if lower_better else t > mine))
        ranks[key] = (better + 1, len(theirs) + 1)
    return {"applies": True, "name": name, "ours": ours, "values": values, "rows": rows, "ranks": ranks}


def placement_lines(placed: dict[str, Any]) -> list[str]:
    """Short sentences for the report / CLI: where the run ranks per metric, and the protocol caveats."""
    if not placed.get("applies"):
        return [placed["reason"]]
    labels = {key: (label, pct) for key, label, pct in COLUMNS}
    lines = []
    for key, (rank, of) in placed["ranks"].items():
        label, pct = labels[key]
        lines.append(f"{label.rsplit(' ', 1)[0]} {_format(placed['values'][key], pct)}: rank {rank} of {of} "
                     "(this run and the published rows reporting it)")
    n_diff = sum(1 for r in placed["rows"] if r["differences"])
    if n_diff:
        lines.append(f"{n_diff} of {len(placed['rows'])} published rows were measured under another protocol than "
                     "this run (see each row's differences): compare those with care")
    return lines
