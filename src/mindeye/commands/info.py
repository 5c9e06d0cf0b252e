"""`mindeye info STORE`: a human summary of a prepared subject store."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="summarise a subject store (trials, images, voxels, splits, checksums)",
                       description="Print a human summary of a prepared subject store and verify its checksums.")
    p.add_argument("store", help="path of the subject store directory")
    p.add_argument("--no-checksums", action="store_true", help="skip verifying file checksums (faster)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mindeye.data.store import SubjectStore

    store = SubjectStore(args.store)
    text = store.summary(check=not args.no_checksums)
    print(text)
    # Look only at the checksum line: a store path may itself contain the word.
    return 1 if text.splitlines()[-1].startswith("  checksums    MISMATCH") else 0
