"""`mindeye train`: train the high-level model, the low-level model or the ridge baseline."""

from __future__ import annotations

import argparse
import json

from mindeye.commands.options import add_data, add_device, add_out, add_progress
from mindeye.config import load_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model (high-level MindEye, low-level, ridge) from a config",
        description="Train the model described by CONFIG on a subject store. Checkpoints every epoch into "
                    "--out; --resume continues an interrupted run exactly. Multi-GPU: launch with "
                    "`torchrun --nproc_per_node N -m mindeye train ...` (train.batch_size is the global batch).")
    p.add_argument("--config", required=True, help="YAML config: a path, or a shipped config name (mindeye-subj01, ablations/blocks0, ...; docs/configs.md)")
    add_data(p, help="subject store (overrides data.store)")
    add_out(p, help="run directory to write")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_device(p)
    add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mindeye.training.trainer import Trainer

    cfg = load_config(args.config, args.overrides)
    trainer = Trainer(cfg, args.out, store=args.data, device=args.device, resume=args.resume,
                      progress=not args.no_progress)
    result = trainer.fit()
    if trainer.dist.is_main:
        print(json.dumps({"run": str(args.out), **result}, indent=2))
    return 0
