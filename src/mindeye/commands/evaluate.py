"""`mindeye evaluate {retrieval,recon}`: the paper's retrieval and reconstruction metrics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mindeye.commands.options import add_data, add_device, add_out, add_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="retrieval (N-way, both directions; 300 by default) and reconstruction metrics",
                       description="Evaluate runs: retrieval top-1 among the config's pool (eval.pool, 300 as the paper; "
                                   "the whole test set when it is smaller; 30 draws, 95% CI) and over the "
                                   "whole test set, or the eight reconstruction metrics of paper Table 1.")
    esub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    r = esub.add_parser("retrieval", help="image and brain retrieval of one or more runs on the test set",
                      description="Top-1 retrieval in both directions among eval.pool (300) test samples, or all of them when the test set is smaller (mean of 30 random draws, 95% CI) and top-1/top-5 over the whole test set, by cosine of the flattened brain embedding vs its target. JSON keys name the direction: image_to_brain (Table 1's 'Image retrieval', as the authors computed it) and brain_to_image ('Brain retrieval'). Also written to RUN/eval/retrieval.json.")
    r.add_argument("--run", action="append", required=True, help="run directory (repeatable)")
    add_data(r, help="subject store (default: the one the run was trained on)")
    r.add_argument("--subject", default=None, metavar="ID", help="subject of a shared-subject run (required when it has several; RUN/run.json lists them)")
    r.add_argument("--mode", choices=["averaged", "single"], default=None,
                   help="test voxels repetition-averaged (paper) or single-trial (paper Table 8)")
    add_device(r)
    r.add_argument("--seed", type=int, default=0, help="seed of the 30 random 300-image draws")
    r.add_argument("--pool", action="append", default=None, metavar="N|all",
                   help="also N-way top-1 among N candidates (e.g. 1000; pools drawn without replacement, so the "
                        "test set must hold N images) or 'all' (the whole test set), with bootstrap 95%% CIs over "
                        "test images; repeatable (JSON key nway)")
    r.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                   help="bootstrap resamples for the N-way and in-/out-of-distribution CIs (default 1000)")
    r.add_argument("--no-floors", action="store_true",
                   help="skip the floors and ceiling (chance, mean training target, shuffled brain over 3 seeds, "
                        "true embeddings) and the per-image ranks that `mindeye compare` reads")
    r.add_argument("--bottleneck", action="store_true",
                   help="also retrieval with the brain embeddings projected onto their top-k principal "
                        "components, k = 1, 2, 4, ... (BrainBits-style bottleneck curve; docs/evaluation.md)")
    add_out(r, help="also write all results to this JSON file", required=False, kind="file")
    add_progress(r)
    r.set_defaults(func=run_retrieval)
    try:
        from mindeye.commands.evaluate_recon import add_recon_parser
    except ModuleNotFoundError:
        return
    add_recon_parser(esub)
    from mindeye.commands.evaluate_bottleneck import add_bottleneck_parser

    add_bottleneck_parser(esub)


def run_retrieval(args: argparse.Namespace) -> int:
    from mindeye.evaluation.run_eval import evaluate_retrieval, nway_table, retrieval_table, ridge_warnings

    pools = [p if p == "all" else _pool_number(p) for p in (args.pool or [])]
    results = [evaluate_retrieval(run, store=args.data, device=args.device, mode=args.mode, seed=args.seed,
                                  subject=args.subject, pools=pools, n_boot=args.bootstrap,
                                  floors=not args.no_floors, bottleneck=args.bottleneck)
               for run in args.run]
    print(retrieval_table(results))
    extra = nway_table(results)
    if extra:
        print(extra)
    for line in ridge_warnings(results):
        print(line)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


def _pool_number(text: str) -> int:
    from mindeye.errors import MindEyeError

    try:
        return int(text)
    except ValueError:
        raise MindEyeError(f"--pool takes a number of candidates (e.g. 1000) or 'all', got {text!r}") from None
