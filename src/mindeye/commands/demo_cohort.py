"""`mindeye demo-cohort`: the shared-subject comparison on a simulated cohort (docs/shared-subject.md)."""

from __future__ import annotations

import argparse
import json

from mindeye.commands.options import add_out, add_progress


def _sessions(text: str) -> int | None:
    if text == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a session count (a positive integer or 'all')") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"session counts start at 1, got {n}")
    return n


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo-cohort", help="shared-subject demo: pretrain on a simulated cohort, fine-tune a held-out subject",
        description="Simulate a tiny cohort, pretrain one high-level model on all subjects but the last, then "
                    "for the held-out subject with few sessions compare fine-tuned (--init-from) vs trained "
                    "from scratch vs ridge on both retrieval directions. Prints the table, writes "
                    "OUT/shared_subject.json, OUT/sessions.json (`mindeye report --sessions`) and OUT/sessions.png. Finished runs are reused on a re-run. "
                    "The defaults (1 seed, 1 session and all) take about 5 minutes on 2 CPU cores.")
    add_out(p, help="output directory (cohorts, runs, results)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default: 0)")
    p.add_argument("--sessions", type=_sessions, nargs="+", default=[1, None], metavar="N|all",
                   help="held-out subject's training session counts (default: 1 all)")
    p.add_argument("--subjects", type=int, default=4, help="cohort size, the last one held out (default 4)")
    p.add_argument("--scale", default="tiny", help="simulated scale (default tiny; small is ~20x the work)")
    p.add_argument("--pretrain-epochs", type=int, default=12, help="pretraining epochs (default 12)")
    p.add_argument("--epochs", type=int, default=None,
                   help="held-out subject's epochs, every method (default: the config's, 20)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the training config (demo-cohort-highlevel) for every run")
    add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mindeye.shared_subject import CohortPlan, format_table, run_comparison, write_sessions

    plan = CohortPlan(scale=args.scale, n_subjects=args.subjects, sessions=args.sessions, seeds=args.seeds,
                      overrides=args.overrides, pretrain_epochs=args.pretrain_epochs, finetune_epochs=args.epochs)
    result = run_comparison(args.out, plan, progress=not args.no_progress)
    print(format_table(result))
    points, figure = write_sessions(result, args.out)
    print(json.dumps({"results": str(Path(args.out) / "shared_subject.json"), "sessions": str(points),
                      "figure": str(figure)}))
    print(f"report with this figure: mindeye report --run {Path(args.out) / result['rows'][0]['run']} "
          f"--sessions {points} --out {Path(args.out) / 'report.html'}")
    return 0
