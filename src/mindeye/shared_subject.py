"""The shared-subject comparison on a simulated cohort (docs/shared-subject.md).

Pretrain one high-level model on the first subjects of a cohort, then for a held-out subject with a
few sessions compare: fine-tuned from the pretrained run (``--init-from``), the same model trained from
scratch on the same sessions, and ridge; both retrieval directions, over several seeds, for several
session counts. ``mindeye demo --config demo-cohort`` and ``benchmarks/shared_subject.py`` run it.

Every run is an ordinary run directory under ``out`` (``pretrain-s<seed>``, ``<method>-<n>sess-s<seed>``),
so a finished one is reused when the comparison is run again (interrupting loses at most one run).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mindeye.config import load_config
from mindeye.errors import MindEyeError

METHODS = ("finetuned", "scratch", "ridge")

log = logging.getLogger(__name__)


@dataclass
class CohortPlan:
    """What to run; the defaults are the CPU demo's (tiny cohort, about 10 minutes on 2 cores)."""

    scale: str = "tiny"
    cohort_seed: int = 0
    n_subjects: int = 4  # the last one is held out
    sessions: list[int | None] = field(default_factory=lambda: [1, 2, None])  # None = all sessions
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    config: str = "demo-cohort-highlevel"  # high-level training config (pretraining and the held-out subject)
    ridge_config: str = "demo-ridge"
    encoder: str = "standin-clip-hidden"
    pretrain_epochs: int | None = 12  # pretraining epochs (None: the config's train.epochs)
    finetune_epochs: int | None = None  # held-out subject's epochs, all three methods (None: the config's)
    overrides: list[str] = field(default_factory=list)


def _store_dirs(plan: CohortPlan, out: Path, progress: bool) -> dict[int | None, Path]:
    """Cohort directories: the full cohort and one few-session cohort per session count."""
    from mindeye.data.simulate import simulate_cohort
    from mindeye.encoders.cache import embed_store

    dirs: dict[int | None, Path] = {}
    for n in sorted({s for s in plan.sessions if s is not None}) + [None]:
        path = out / "data" / (f"cohort-{n}sess" if n is not None else "cohort")
        if not (path / "cohort.json").exists():
            simulate_cohort(path, plan.n_subjects, scale=plan.scale, seed=plan.cohort_seed, train_sessions=n,
                            progress=progress, overwrite=path.exists())
        subjects = sorted(p for p in path.iterdir() if p.is_dir())
        # Few-session cohorts are only used for the held-out subject.
        for store in subjects if n is None else subjects[-1:]:
            embed_store(store, plan.encoder, progress=False)
        dirs[n] = path
    return dirs


def _train(cfg_name: str, overrides: list[str], run: Path, stores: list[Path], init_from: Path | None = None,
           progress: bool = False) -> None:
    from mindeye.training.trainer import Trainer

    if (run / "eval-ready").exists():
        return
    shutil.rmtree(run, ignore_errors=True)  # an interrupted run is redone from the start
    cfg = load_config(cfg_name, overrides)
    Trainer(cfg, run, store=stores if len(stores) > 1 else stores[0], device="cpu", progress=progress,
            init_from=init_from).fit()
    (run / "eval-ready").write_text("")


def _score(run: Path) -> dict[str, float]:
    from mindeye.evaluation.run_eval import evaluate_retrieval

    res = evaluate_retrieval(run, device="cpu", write=False)
    return {"brain_to_image": float(res["brain_to_image"]), "image_to_brain": float(res["image_to_brain"]),
            "n_test": int(res["n_test"]), "pool": int(res.get("pool", res["n_test"]))}


def run_comparison(out: str | Path, plan: CohortPlan | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or finish) the comparison in ``out``; writes ``out/shared_subject.json`` and returns it."""
    plan = plan or CohortPlan()
    if plan.n_subjects < 2:
        raise MindEyeError("the comparison needs at least 2 cohort subjects (pretraining ones + a held-out one)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dirs = _store_dirs(plan, out, progress)
    full = sorted(p for p in dirs[None].iterdir() if p.is_dir())
    pretrain_stores, held_out = full[:-1], full[-1].name
    base = list(plan.overrides)
    rows: list[dict[str, Any]] = []
    for seed in plan.seeds:
        pre = out / f"pretrain-s{seed}"
        pre_over = base + [f"seed={seed}"] + ([f"train.epochs={plan.pretrain_epochs}"] if plan.pretrain_epochs else [])
        log.info(f"seed {seed}: pretraining on {', '.join(p.name for p in pretrain_stores)}")
        _train(plan.config, pre_over, pre, pretrain_stores)
        ft_over = base + [f"seed={seed}"] + ([f"train.epochs={plan.finetune_epochs}"] if plan.finetune_epochs else [])
        for n in plan.sessions:
            store = dirs[n] / held_out
            tag = f"{n}sess" if n is not None else "all"
            for method in METHODS:
                run = out / f"{method}-{tag}-s{seed}"
                if method == "finetuned":
                    _train(plan.config, ft_over, run, [store], init_from=pre)
                elif method == "scratch":
                    _train(plan.config, ft_over, run, [store])
                else:
                    _train(plan.ridge_config, [f"seed={seed}", f"targets.encoder={plan.encoder}"], run, [store])
                row = {"method": method, "sessions": n if n is not None else "all", "seed": seed, "run": run.name,
                       "train_trials": _train_trials(store), **_score(run)}
                rows.append(row)
                log.info(f"  {method:<9} {tag:>5}: brain_to_image {row['brain_to_image']:.3f}, "
                         f"image_to_brain {row['image_to_brain']:.3f}")
    result = {"plan": dict(plan.__dict__), "held_out": held_out,
              "pretrain_subjects": [p.name for p in pretrain_stores], "rows": rows, "summary": summarise(rows)}
    (out / "shared_subject.json").write_text(json.dumps(result, indent=2))
    return result


def _train_trials(store: Path) -> int:
    from mindeye.data.store import SubjectStore

    st = SubjectStore(store)
    return int(np.isin(st.trials.image_index, st.image_indices("train")).sum())


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation over seeds per (method, sessions)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], str(r["sessions"])), []).append(r)
    out = []
    for (method, sessions), rs in groups.items():
        entry: dict[str, Any] = {"method": method, "sessions": sessions, "seeds": len(rs),
                                 "train_trials": rs[0]["train_trials"]}
        for d in ("brain_to_image", "image_to_brain"):
            vals = np.array([r[d] for r in rs])
            entry[d] = float(vals.mean())
            entry[f"{d}_sd"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        out.append(entry)
    return out


def format_table(result: dict[str, Any]) -> str:
    """Fixed-width table: one row per (sessions, method), mean ± sd over seeds, both directions."""
    rows = result["summary"]
    pool = result["rows"][0]["pool"] if result["rows"] else 0
    lines = [f"held-out subject {result['held_out']} (pretrained on {', '.join(result['pretrain_subjects'])}); "
             f"top-1 among {pool} (chance {100 / max(pool, 1):.1f}%), mean ± sd over {rows[0]['seeds']} seeds",
             f"{'sessions':>8} {'trials':>6} {'method':<10} {'brain_to_image':>16} {'image_to_brain':>16}"]
    for r in rows:
        lines.append(f"{r['sessions']:>8} {r['train_trials']:>6} {r['method']:<10} "
                     f"{100 * r['brain_to_image']:>7.1f} ± {100 * r['brain_to_image_sd']:>4.1f}% "
                     f"{100 * r['image_to_brain']:>7.1f} ± {100 * r['image_to_brain_sd']:>4.1f}%")
    return "\n".join(lines)


def session_points(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary as `mindeye report --sessions` points: integer sessions ("all" = the scale's
    session count), both directions and their sd over seeds as ``<key>_std``."""
    from mindeye.data.simulate import SCALES

    total = SCALES[result["plan"]["scale"]].n_sessions
    return [{"sessions": total if r["sessions"] == "all" else int(r["sessions"]), "method": r["method"],
             "train_trials": r["train_trials"], "seeds": r["seeds"],
             **{k: r[k] for k in ("brain_to_image", "image_to_brain")},
             **{f"{k}_std": r[f"{k}_sd"] for k in ("brain_to_image", "image_to_brain")}}
            for r in result["summary"]]


def write_sessions(result: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """OUT/sessions.json (the report's sessions-figure input) and OUT/sessions.png (that figure)."""
    from mindeye.evaluation.report_figures import sessions_chart
    from mindeye.evaluation.report_tables import RETRIEVAL

    out = Path(out)
    points = session_points(result)
    data = out / "sessions.json"
    data.write_text(json.dumps(points, indent=2))
    figure = sessions_chart("sessions", points, [(d.key, d.label) for d in RETRIEVAL])
    png = out / "sessions.png"
    figure.figure.savefig(png, dpi=120, bbox_inches="tight")
    return data, png
