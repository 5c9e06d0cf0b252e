"""`mindeye train`: train the high-level model, the low-level model or the ridge baseline."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mindeye.commands.options import add_device, add_out, add_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model (high-level MindEye, low-level, ridge) from a config",
        description="Train the model described by CONFIG on a subject store. Checkpoints every epoch into "
                    "--out; --resume continues an interrupted run exactly. Multi-GPU: launch with "
                    "`torchrun --nproc_per_node N -m mindeye train ...` (train.batch_size is the global batch). "
                    "Several --data stores train one shared-subject high-level model (one input layer per "
                    "subject, batches split evenly over subjects); --init-from fine-tunes a pretrained run on "
                    "new subjects (docs/shared-subject.md).")
    p.add_argument("--config", default=None, help="YAML config: a path, or a shipped config name (mindeye-subj01, ablations/blocks0, ...; docs/configs.md); with --init-from, default: the pretrained run's")
    p.add_argument("--data", action="append", default=None, metavar="STORE",
                   help="subject store (overrides data.store); repeat for a shared-subject run on several subjects")
    p.add_argument("--init-from", default=None, metavar="RUN",
                   help="start from this trained high-level run's shared weights; each --data subject not in "
                        "it gets a new input layer (fine-tuning a new subject)")
    add_out(p, help="run directory to write")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_device(p)
    add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mindeye.config import load_config
    from mindeye.errors import MindEyeError
    from mindeye.training.trainer import Trainer

    config = args.config
    if config is None:
        if not args.init_from:
            raise MindEyeError("--config is required (a path or a shipped config name, docs/configs.md)")
        config = Path(args.init_from) / "config.yaml"
        if not config.exists():
            raise MindEyeError(f"--init-from {args.init_from} is not a mindeye run directory (no config.yaml)")
    stores = args.data if args.data and len(args.data) > 1 else (args.data[0] if args.data else None)
    if isinstance(stores, list) or args.init_from:  # several subjects / fine-tuning: the config as written
        cfg = load_config(config, args.overrides)
    else:  # one store: settings suited to its size, unless the user chose them (docs/small-data.md)
        from mindeye.training.size_defaults import sized_config

        cfg, line = sized_config(config, args.overrides, stores)
        if line:
            import logging

            logging.getLogger("mindeye.commands.train").info(line)
    trainer = Trainer(cfg, args.out, store=stores, device=args.device, resume=args.resume,
                      progress=not args.no_progress, init_from=args.init_from)
    result = trainer.fit()
    if trainer.dist.is_main:
        print(json.dumps({"run": str(args.out), **result}, indent=2))
        from mindeye.training.ridge_first import ridge_check_line

        line = ridge_check_line(result.get("ridge_check"), f"this {cfg.model.kind} model")
        if line:  # the last thing printed, so it is not missed
            print(line)
    return 0
