"""`mindeye summary CONFIG`: parameter counts per module, without allocating the weights."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="print parameter counts per module for a config",
                       description="Build the config's model on the meta device (no memory) and print "
                                   "parameter counts per module as plain integers.")
    p.add_argument("config", help="YAML config: a path or a shipped config name")
    p.add_argument("--n-voxels", type=int, default=None,
                   help="voxel count (default: data.n_voxels from the config or the store's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.backbone.n_blocks=2 (repeatable)")
    p.set_defaults(func=run)


def summary_counts(cfg, n_voxels: int) -> dict[str, int]:
    import torch

    from mindeye.models.factory import build_model, parameter_counts

    model = build_model(cfg.model, n_voxels, device=torch.device("meta"))
    counts = parameter_counts(model)
    if cfg.model.kind == "mindeye" and getattr(model, "prior", None) is not None:
        counts["prior.net"] = sum(p.numel() for p in model.prior.net.parameters())
    return counts


def run(args: argparse.Namespace) -> int:
    from mindeye.config import load_config
    from mindeye.errors import MindEyeError

    cfg = load_config(args.config, args.overrides)
    n_voxels = args.n_voxels or cfg.data.n_voxels
    if n_voxels is None and cfg.data.store:
        from mindeye.data.store import SubjectStore

        n_voxels = SubjectStore(cfg.data.store).n_voxels
    if n_voxels is None:
        raise MindEyeError("voxel count unknown: pass --n-voxels N or set data.n_voxels / data.store in the config")
    print(f"{cfg.name}  ({cfg.model.kind}, {n_voxels} voxels)")
    for name, count in summary_counts(cfg, n_voxels).items():
        print(f"  {name:<12} {count}")
    return 0
