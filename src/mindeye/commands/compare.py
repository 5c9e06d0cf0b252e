"""`mindeye compare A B`: paired bootstrap interval and Wilcoxon signed-rank test per metric of two runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mindeye.commands.options import add_out


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="paired test of two runs' per-image metrics (bootstrap CI, Wilcoxon)",
                       description="Compare two evaluations on the same images, metric by metric: mean difference "
                                   "B - A, its paired bootstrap 95%% interval and the Wilcoxon signed-rank p. A and "
                                   "B are run directories (eval/retrieval.json), retrieval JSON files or "
                                   "reconstruction metrics.json files. See docs/evaluation.md.")
    p.add_argument("a", metavar="A", help="run directory or evaluation JSON")
    p.add_argument("b", metavar="B", help="run directory or evaluation JSON")
    p.add_argument("--row-a", default=None, metavar="NAME", help="row of A when it is a metrics.json with several")
    p.add_argument("--row-b", default=None, metavar="NAME", help="row of B when it is a metrics.json with several")
    p.add_argument("--bootstrap", type=int, default=10000, metavar="N", help="bootstrap resamples (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    add_out(p, help="also write the result to this JSON file", required=False, kind="file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mindeye.errors import MindEyeError
    from mindeye.evaluation.compare import compare, compare_table

    if args.bootstrap < 100:
        raise MindEyeError("--bootstrap must be at least 100")
    result = compare(args.a, args.b, args.row_a, args.row_b, n_boot=args.bootstrap, seed=args.seed)
    print(compare_table(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0
