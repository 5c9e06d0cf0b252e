"""Options several subcommands share, defined once so they read and behave the same everywhere."""

from __future__ import annotations

import argparse

DEVICE_HELP = "torch device: auto (a GPU if there is one, else the CPU), cpu, cuda, cuda:1 ... (default: auto)"


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help=DEVICE_HELP)


def add_out(p: argparse.ArgumentParser, help: str, required: bool = True, metavar: str | None = None,
            kind: str = "dir") -> None:
    """``--out``: a directory (``kind="dir"``) or a file (``kind="file"``), checked by :func:`check_out` before
    the command does any work."""
    p.add_argument("--out", required=required, default=None, metavar=metavar, help=help)
    p.set_defaults(out_kind=kind)


def check_out(args: argparse.Namespace) -> None:
    """The one output-path check (the CLI runs it before every command with ``--out``): a directory output is
    not a regular file, a file output is not a directory, and no part of the path above it is a file."""
    from pathlib import Path

    from mindeye.errors import MindEyeError

    kind, out = getattr(args, "out_kind", None), getattr(args, "out", None)
    if kind is None or out is None:
        return
    path = Path(out)
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise MindEyeError(f"--out {out}: {parent} is a file, not a directory; choose another path")
    if kind == "dir" and path.exists() and not path.is_dir() and not getattr(args, "overwrite", False):
        raise MindEyeError(f"--out {out} is a file, not a directory; choose a directory path (or remove "
                           "the file)")
    if kind == "file" and path.is_dir():
        raise MindEyeError(f"--out {out} is a directory; give a file path (e.g. {path / 'out'}{path.suffix})")


def add_data(p: argparse.ArgumentParser, help: str = "subject store (default: the run's)", required: bool = False) -> None:
    p.add_argument("--data", required=required, default=None, metavar="STORE", help=help)


def add_progress(p: argparse.ArgumentParser, *aliases: str) -> None:
    p.add_argument("--no-progress", *aliases, dest="no_progress", action="store_true", help="no progress bars (default: bars only on a terminal); the "
                   "one-line-per-epoch/stage log stays (-q hides it)")
