"""Options several subcommands share, defined once so they read and behave the same everywhere."""

from __future__ import annotations

import argparse

DEVICE_HELP = "torch device: auto (a GPU if there is one, else the CPU), cpu, cuda, cuda:1 ... (default: auto)"


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help=DEVICE_HELP)


def add_out(p: argparse.ArgumentParser, help: str, required: bool = True, metavar: str | None = None) -> None:
    p.add_argument("--out", required=required, default=None, metavar=metavar, help=help)


def add_data(p: argparse.ArgumentParser, help: str = "subject store (default: the run's)", required: bool = False) -> None:
    p.add_argument("--data", required=required, default=None, metavar="STORE", help=help)


def add_progress(p: argparse.ArgumentParser, *aliases: str) -> None:
    p.add_argument("--no-progress", *aliases, dest="no_progress", action="store_true", help="no progress bars")
