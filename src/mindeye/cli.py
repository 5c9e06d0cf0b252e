"""The `mindeye` command line: one subcommand per module in :mod:`mindeye.commands`.

Every subcommand module exposes ``add_parser(subparsers)`` and sets ``func`` on its parser; it imports heavy
modules (torch, ...) only inside the function that runs, so ``--help`` is instant.
A :class:`~mindeye.errors.MindEyeError` is printed as one clear message and exits with status 2.
Every command takes ``-v/--verbose`` and ``-q/--quiet`` (before or after its name) and logs one line per
epoch or stage to stderr (Python ``logging``, logger ``"mindeye"``); progress bars are drawn only on a
terminal and never with ``--no-progress`` or ``-q``.
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
from mindeye.utils.logs import configure_logging

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
    "refine",
    "index",
    "retrieve",
    "report",
    "import_checkpoint",
    "demo",
    "demo_cohort",
    "ceiling",
    "compare",
]


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or action.default is argparse.SUPPRESS or not action.option_strings
                or action.required or action.nargs == 0):  # flags (store_true, count, ...) default to off
            return text
        default = action.default
        shown = "none" if default is None or default == [] else " ".join(map(str, default)) \
            if isinstance(default, list | tuple) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()


class RawDescriptionHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """A description kept as written (e.g. the encoder list of `mindeye embed`) and the defaults shown."""


def _add_log_flags(parser: argparse.ArgumentParser, top: bool) -> None:
    """-v/-q on the top-level parser and again on every subcommand (given after the command's name)."""
    unset = argparse.SUPPRESS  # a subcommand's flag only overrides the top-level one when given
    parser.add_argument("-v", "--verbose", action="count", default=0 if top else unset,
                        help="more log lines (debug)")
    parser.add_argument("-q", "--quiet", action="store_true", default=False if top else unset,
                        help="warnings and errors only: no per-epoch/stage lines, no progress bars")


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``parser`` (subcommands, their sub-subcommands, ...), each once."""
    found: dict[int, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if id(child) not in found:
                    found[id(child)] = child
                    found.update((id(p), p) for p in _subparsers(child))
    return list(found.values())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mindeye", formatter_class=HelpFormatter,
        description="MindEye: fMRI-to-image retrieval and reconstruction (Scotti et al., NeurIPS 2023).",
    )
    parser.add_argument("--version", action="version", version=f"mindeye {__version__}")
    _add_log_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"mindeye.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("mindeye.commands"):
                continue  # command not part of this build
            raise
        module.add_parser(sub)
    for child in _subparsers(parser):
        raw = issubclass(child.formatter_class, argparse.RawDescriptionHelpFormatter)
        child.formatter_class = RawDescriptionHelpFormatter if raw else HelpFormatter
        _add_log_flags(child, top=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    configure_logging(args.verbose, args.quiet)
    if hasattr(args, "no_progress") and (args.quiet or not _stderr_is_terminal()):
        args.no_progress = True  # bars only on a terminal; the log lines stay (cluster logs, pipes, CI)
    previous = _terminate_like_interrupt()
    try:
        check_out(args)  # the one output-path check, before any work
        return int(args.func(args) or 0)
    except MindEyeError as exc:
        print(f"mindeye {args.command}: error: {exc.render('cli')}", file=sys.stderr)  # options as flags
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


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


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
