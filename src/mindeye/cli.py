"""The `mindeye` command line: one subcommand per module in :mod:`mindeye.commands`.

Every subcommand module exposes ``add_parser(subparsers)`` and sets ``func`` on its parser.
A :class:`~mindeye.errors.MindEyeError` is printed as one clear message and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mindeye import __version__
from mindeye.errors import MindEyeError, describe_os_error

# Order = order in `mindeye --help`. A module that fails to import (e.g. an optional
# dependency missing) is skipped with a note instead of breaking every other command.
COMMAND_MODULES = [
    "simulate",
    "prepare",
    "info",
    "embed",
    "summary",
    "train",
    "evaluate",
    "reconstruct",
    "index",
    "retrieve",
    "report",
    "import_checkpoint",
    "demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mindeye",
        description="MindEye: fMRI-to-image retrieval and reconstruction (Scotti et al., NeurIPS 2023).",
    )
    parser.add_argument("--version", action="version", version=f"mindeye {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"mindeye.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("mindeye.commands"):
                continue  # command not part of this build
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except MindEyeError as exc:
        print(f"mindeye {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # full disk, read-only filesystem, a path through a file ...: one line, no traceback
        print(f"mindeye {args.command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return MindEyeError.exit_code
    except KeyboardInterrupt:
        how = "re-run it with --resume" if args.command == "train" else "re-run the same command"
        print(f"mindeye {args.command}: interrupted (finished work is kept; {how} to continue)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
