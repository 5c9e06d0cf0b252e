"""The `mindeye` command line: one subcommand per module in :mod:`mindeye.commands`.

Every subcommand module exposes ``add_parser(subparsers)`` and sets ``func`` on its parser.
A :class:`~mindeye.errors.MindEyeError` is printed as one clear message and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from mindeye import __version__
from mindeye.commands.options import check_out
from mindeye.errors import MindEyeError, Terminated, continue_advice, describe_os_error

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
    "demo_cohort",
    "ceiling",
    "compare",
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
    previous = _terminate_like_interrupt()
    try:
        check_out(args)  # the one output-path check, before any work
        return int(args.func(args) or 0)
    except MindEyeError as exc:
        print(f"mindeye {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # full disk, read-only filesystem, a path through a file ...: one line, no traceback
        print(f"mindeye {args.command}: error: {describe_os_error(exc, args.command)}", file=sys.stderr)
        return MindEyeError.exit_code
    except KeyboardInterrupt as exc:
        how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"mindeye {args.command}: {how} ({continue_advice(args.command)})", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _terminate_like_interrupt() -> object | None:
    """Handle SIGTERM like SIGINT while a command runs (only where nobody else handles it: the main thread,
    default disposition); returns the handler to put back, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        return None
    signal.signal(signal.SIGTERM, _raise_terminated)
    return previous


if __name__ == "__main__":
    sys.exit(main())
