"""Shared-subject comparison on a simulated cohort: fine-tuned vs from scratch vs ridge.

    PYTHONPATH=src python benchmarks/shared_subject.py --out /tmp/shared-subject            # 3 seeds, 1/2/all sessions
    PYTHONPATH=src python benchmarks/shared_subject.py --out DIR --seeds 0 --sessions 1 all  # = mindeye demo-cohort

Pretrains one high-level model (config demo-cohort-highlevel) on subjects 1-3 of a tiny simulated
cohort, then trains the held-out subject 4 on its first 1, 2, ... sessions three ways: fine-tuned from
the pretrained run (``--init-from``; new input layer alone for half the epochs, then everything), the
same model from scratch, and ridge. Prints top-1 retrieval (both directions, among the 60 test
images) as mean ± sd over seeds, writes DIR/shared_subject.json (every run's scores and the summary:
the data of the sessions-vs-accuracy figure) and DIR/sessions.png. Finished runs are reused, so an
interrupted comparison continues. docs/shared-subject.md has the measured table.
"""

from __future__ import annotations

import sys
import time

from mindeye.commands.demo_cohort import add_parser
from mindeye.errors import MindEyeError


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="shared_subject.py")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["demo-cohort", *(argv if argv is not None else sys.argv[1:])])
    if "--seeds" not in (argv or sys.argv):
        args.seeds = [0, 1, 2]
    if "--sessions" not in (argv or sys.argv):
        args.sessions = [1, 2, None]
    t0 = time.perf_counter()
    code = args.func(args)
    print(f"wall time {time.perf_counter() - t0:.0f} s")
    return code


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MindEyeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
