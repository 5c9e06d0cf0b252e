"""Evaluate a trained run: retrieval on the test set (paper Table 1 / 7 protocol)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mindeye.data.splits import load_eval_split
from mindeye.devices import resolve_device
from mindeye.encoders.targets import Targets, target_options
from mindeye.errors import MindEyeError
from mindeye.finite import require_finite
from mindeye.runs import check_same_store, embed_voxels, load_run_model  # noqa: F401  (their home is mindeye.runs)


def evaluate_retrieval(run_dir: str | Path, store: str | Path | None = None, device: str | None = None,
                       mode: str | None = None, seed: int = 0, write: bool = True,
                       subject: str | None = None, pools: Sequence[int | str] = (),
                       n_boot: int = 1000, floors: bool = True,
                       bottleneck: bool | list[int] = False) -> dict[str, Any]:
    """Retrieval of a run on its test set (the config's pool, as Table 1) plus, for each of ``pools`` (e.g.
    ``"all"``, 1000), N-way top-1 with bootstrap CIs; on a category-disjoint store view also in- vs
    out-of-distribution side by side (``result["ood"]``). ``floors``: also chance, the mean training target,
    the shuffled-brain floor (3 seeds) and the ceiling, with the fraction floor -> ceiling
    (mindeye.evaluation.floors), and the per-image ranks that `mindeye compare` tests. ``bottleneck``: also
    the BrainBits-style curve (True: k on a log grid; or a list of k)."""
    from mindeye.evaluation import floors as fl
    from mindeye.metrics.retrieval import check_pool, retrieval_nway, retrieval_top1_among, topk_full

    device = resolve_device(device)
    cfg, info, model, subject = load_run_model(run_dir, device, store, subject=subject)
    if cfg.model.kind == "lowlevel":
        raise MindEyeError("retrieval evaluation needs a high-level (mindeye) or ridge run, not a low-level one")
    mode = mode or cfg.data.test_mode
    test = load_eval_split(subject, subject.image_indices("test"), mode, cfg.data.test_repetitions,
                           average=cfg.data.test_average)
    if len(test) < 2:
        raise MindEyeError(f"{subject.path} has {len(test)} test samples; retrieval needs at least 2")
    require_finite(test.voxels, f"test voxels of {subject.path}",
                   "the store is damaged: prepare it again (or verify it with `mindeye info`)")
    target_source = Targets(subject.path, cfg.targets.encoder, cfg.targets.weights,
                            options=target_options(cfg, cfg.targets.encoder))
    targets = target_source.get(test.image_index)
    for p in pools:  # a pool the test set cannot fill is an error before any work
        check_pool(p, len(test))
    preds = embed_voxels(model, test.voxels, device)
    among = retrieval_top1_among(preds.flatten(1), targets.flatten(1), pool=cfg.eval.pool, draws=cfg.eval.draws,
                                 seed=seed, ci=cfg.eval.ci, draw_mode=cfg.eval.draw_mode)
    full = topk_full(preds.flatten(1), targets.flatten(1), ks=(1, 5))
    result = {"run": str(run_dir), "kind": cfg.model.kind, "name": cfg.name, "test_mode": mode,
              **({"subject": info["subject_id"]} if info.get("subjects") else {}),
              "n_test": len(test), **_jsonable(among), "full_test_set": _jsonable(full)}
    if pools:
        result["nway"] = {str(p): _jsonable(retrieval_nway(preds.flatten(1), targets.flatten(1), pool=p,
                                                           draws=cfg.eval.draws, seed=seed, n_boot=n_boot,
                                                           draw_mode=cfg.eval.draw_mode))
                          for p in pools}
    groups = subject.test_groups(test.image_index)
    if groups is not None and all(m.any() for m in groups.values()):
        result["ood"] = ood_retrieval(preds.flatten(1), targets.flatten(1), groups, subject.view, cfg, seed, n_boot)
        trained_on = info.get("store")
        if trained_on and Path(trained_on).resolve() != subject.path.resolve():
            result["ood"]["warning"] = (f"the run was trained on {trained_on}, not on this view {subject.path}: its "
                                        "'out-of-distribution' images may have been training images; train on the "
                                        "view for a real in- vs out-of-distribution comparison")
    if info.get("ridge_check"):  # the trainer's comparison with ridge on validation (docs/small-data.md)
        result["ridge_check"] = info["ridge_check"]
    retrieval_args = (cfg.eval.pool, cfg.eval.draws, seed, cfg.eval.ci, cfg.eval.draw_mode)
    if floors:
        train = subject.image_indices("train")
        if len(train) > 1000:  # a constant prediction scores ~1/N whatever it is: 1000 images make the mean
            train = train[np.unique(np.linspace(0, len(train) - 1, 1000).astype(np.int64))]
        mean = fl.mean_target(target_source, train) if len(train) else None
        result["floors"] = _jsonable(fl.retrieval_floors(preds, targets, mean, *retrieval_args))
        result["per_image"] = {"image_index": [int(i) for i in test.image_index],
                               **fl.retrieval_per_image(preds, targets)}
    if bottleneck:
        result["bottleneck"] = _jsonable(fl.bottleneck_curve(preds, targets, *retrieval_args,
                                                             ks=None if bottleneck is True else list(bottleneck)))
    if write:
        out = Path(run_dir) / "eval"
        out.mkdir(exist_ok=True)
        # One file per subject of a shared-subject run, so evaluating another does not overwrite it.
        name = f"retrieval-{info['subject_id']}.json" if len(info.get("subjects") or []) > 1 else "retrieval.json"
        (out / name).write_text(json.dumps(result, indent=2))
    return result


def ood_retrieval(preds: torch.Tensor, targets: torch.Tensor, groups: dict[str, Any], view: dict[str, Any],
                  cfg: Any, seed: int = 0, n_boot: int = 1000) -> dict[str, Any]:
    """In- vs out-of-distribution retrieval of a category-disjoint view's test set: "pooled" (the config's
    pool, as Table 1) and "all" (the whole test set), both groups scored against the same pools; and the
    same for the noise control (metrics.retrieval.noise_control) matched to the model's overall top-1, whose
    gap is what the test images alone produce. ``excess_gap`` = the model's gap minus the control's."""
    from mindeye.metrics.retrieval import DIRECTIONS, noise_control, retrieval_nway

    out: dict[str, Any] = {"view": view.get("description"), "held_out_clusters": view.get("held_out_clusters")}
    pools = (("pooled", min(cfg.eval.pool, len(preds))), ("all", "all"))
    for key, p in pools:
        out[key] = _jsonable(retrieval_nway(preds, targets, pool=p, draws=cfg.eval.draws, seed=seed, n_boot=n_boot,
                                            groups=groups, draw_mode=cfg.eval.draw_mode))
    overall = sum(out["all"][d] for d in DIRECTIONS) / len(DIRECTIONS)
    control, sigma = noise_control(targets, overall, seed)
    out["control"] = {"what": "target + Gaussian noise matched to the model's whole-test-set top-1 (mean of both "
                              "directions): the gap the test images alone produce", "noise_sigma": sigma}
    for key, p in pools:
        out["control"][key] = _jsonable(retrieval_nway(control, targets, pool=p, draws=cfg.eval.draws, seed=seed,
                                                       n_boot=n_boot, groups=groups, draw_mode=cfg.eval.draw_mode))
        out[key]["excess_gap"] = {d: out[key]["gap"][d] - out["control"][key]["gap"][d] for d in DIRECTIONS}
    return out


def _jsonable(x: Any) -> Any:
    """JSON-ready copy; floats rounded to 6 significant digits (float32 scores: 0.52, not 0.5199999809265137)."""
    if isinstance(x, float):
        return float(f"{x:.6g}")
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if hasattr(x, "item"):
        return _jsonable(x.item())
    return x


def retrieval_table(results: list[dict[str, Any]]) -> str:
    """A short fixed-width table of retrieval results (one row per run), Table 1's column names."""
    from mindeye.metrics.retrieval import TABLE1_COLUMNS, TABLE1_FOOTNOTE

    image_col, brain_col = TABLE1_COLUMNS["Image retrieval"], TABLE1_COLUMNS["Brain retrieval"]
    pools = {r.get("pool", 300) for r in results}
    pool_label = str(pools.pop()) if len(pools) == 1 else "pool"  # the pool actually used, not the paper's 300
    lines = [f"{'run':<24} {f'image retr. ({pool_label})':>18} {f'brain retr. ({pool_label})':>18} "
             f"{'top-1 all':>10} {'top-5 all':>10}"]
    for r in results:
        pool = r.get("pool", 300)
        img, brain = r[image_col], r[brain_col]
        full = r.get("full_test_set", {})
        top1 = full.get(f"{image_col}_top1", float("nan"))
        top5 = full.get(f"{image_col}_top5", float("nan"))
        lines.append(f"{r.get('name', r['run'])[:24]:<24} {100 * img:>17.1f}% {100 * brain:>17.1f}% "
                     f"{100 * top1:>9.1f}% {100 * top5:>9.1f}%")
        lines.append(f"{'':<24} (chance {100 / pool:.2f}%, {r.get('draws', 30)} draws of {pool})")
        if r.get("floors"):
            lines.extend(floor_lines(r["floors"], image_col, brain_col))
    lines.append(TABLE1_FOOTNOTE)
    return "\n".join(lines)


def floor_lines(floors: dict[str, Any], image_col: str, brain_col: str) -> list[str]:
    """Two table lines: the shuffled-brain floor and ceiling of both pool columns, and the model's fraction."""
    from mindeye.evaluation.floors import outside_lines

    sh, ceil, frac = floors["shuffled_brain"], floors["ceiling"], floors["fraction"]
    cells = [f"{100 * sh['mean'][c]:.1f}±{100 * (sh['sd'][c] or 0):.1f}% .. {100 * ceil[c]:.0f}%"
             for c in (image_col, brain_col)]
    fr = [("n/a" if frac[c]["value"] is None else f"{frac[c]['value']:.2f}") for c in (image_col, brain_col)]
    return [f"{'':<24} shuffled brain .. ceiling: {cells[0]} / {cells[1]}; fraction floor->ceiling {fr[0]} / {fr[1]}",
            *(f"{'':<24} {line}" for line in outside_lines("model", floors))]


def ridge_warnings(results: list[dict[str, Any]]) -> list[str]:
    """Plain sentences for every network that loses to ridge regression: on its validation images (the
    trainer's ``ridge_check``) and, when a ridge run was evaluated beside it, on this test set."""
    from mindeye.metrics.retrieval import DIRECTIONS
    from mindeye.training.ridge_first import ridge_check_line

    lines = [line for r in results if r.get("kind") != "ridge"
             if (line := ridge_check_line(r.get("ridge_check"), f"run {r.get('name', r['run'])}"))]
    ridges = [r for r in results if r.get("kind") == "ridge"]
    for r in results:
        if r.get("kind") == "ridge" or not ridges:
            continue
        mean = sum(r[d] for d in DIRECTIONS) / len(DIRECTIONS)
        for ridge in ridges:
            ridge_mean = sum(ridge[d] for d in DIRECTIONS) / len(DIRECTIONS)
            if ridge_mean > mean and ridge.get("n_test") == r.get("n_test"):
                lines.append(f"WARNING: run {r.get('name', r['run'])} retrieves worse than the ridge baseline "
                             f"{ridge.get('name', ridge['run'])} on this test set (mean top-1 of both directions "
                             f"{100 * mean:.1f}% vs {100 * ridge_mean:.1f}%)")
    return lines


def _pct_ci(block: dict[str, Any], key: str) -> str:
    lo, hi = block.get(f"{key}_ci95_bootstrap", (float("nan"), float("nan")))
    return f"{100 * block[key]:5.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def nway_table(results: list[dict[str, Any]]) -> str:
    """N-way retrieval beyond the config's pool (``--pool all``/``--pool 1000``) and, on a category-disjoint
    view, in- vs out-of-distribution side by side; '' when no result has either."""
    from mindeye.metrics.retrieval import TABLE1_COLUMNS

    image_col, brain_col = TABLE1_COLUMNS["Image retrieval"], TABLE1_COLUMNS["Brain retrieval"]
    lines: list[str] = []
    for r in results:
        name = r.get("name", r["run"])
        for block in (r.get("nway") or {}).values():
            lines.append(f"{name[:24]:<24} {block['pool']}-way ({block['draws']} draw(s), chance "
                         f"{100 * block['chance']:.2f}%): image retr. {_pct_ci(block, image_col)}  brain retr. "
                         f"{_pct_ci(block, brain_col)}  (bootstrap 95% CI over test images)")
        ood = r.get("ood")
        if not ood:
            continue
        lines.append(f"{name[:24]:<24} in- vs out-of-distribution ({ood.get('view')}; held out: "
                     f"{', '.join(map(str, ood.get('held_out_clusters') or []))})")
        if ood.get("warning"):
            lines.append(f"{'':<4}WARNING: {ood['warning']}")
        for key in ("pooled", "all"):
            block = ood.get(key)
            if not block:
                continue
            g = block["groups"]
            lines.append(f"{'':<4}{block['pool']}-way, pools shared by both groups (chance {100 * block['chance']:.2f}%):")
            control = (ood.get("control") or {}).get(key, {}).get("gap", {})
            for label, col in (("image retr.", image_col), ("brain retr.", brain_col)):
                gap = block.get("gap", {})
                glo, ghi = gap.get(f"{col}_ci95_bootstrap", (float("nan"), float("nan")))
                lines.append(f"{'':<6}{label}  ID {_pct_ci(g['in-distribution'], col)} (n={g['in-distribution']['n']})"
                             f"  OOD {_pct_ci(g['out-of-distribution'], col)} (n={g['out-of-distribution']['n']})"
                             f"  gap {100 * gap.get(col, float('nan')):+.1f} points [{100 * glo:+.1f}, {100 * ghi:+.1f}]"
                             + (f"; noise control's gap {100 * control[col]:+.1f}, excess "
                                f"{100 * block['excess_gap'][col]:+.1f}" if col in control else ""))
    return "\n".join(lines)
