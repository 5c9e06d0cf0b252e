"""`mindeye summary CONFIG`: parameter counts per module, without allocating the weights."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="print parameter counts per module for a config",
                       description="Build the config's model on the meta device (no memory) and print "
                                   "parameter counts per module as plain integers.")
    p.add_argument("config", nargs="?", default=None, help="YAML config: a path or a shipped config name")
    p.add_argument("--config", dest="config_option", default=None, metavar="CONFIG",
                   help="the same as the positional CONFIG (as `mindeye train --config`)")
    p.add_argument("--n-voxels", default=None,
                   help="voxel count (default: data.n_voxels from the config or the store's); model.kind mindeye2: "
                        "a comma-separated list gives one ridge per subject, e.g. the 7 pretraining subjects")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.backbone.n_blocks=2 (repeatable)")
    p.set_defaults(func=run)


def summary_counts(cfg, n_voxels: int | dict[str, int]) -> dict[str, int]:
    import torch

    from mindeye.models.factory import build_model, parameter_counts

    model = build_model(cfg.model, n_voxels, device=torch.device("meta"))
    counts = parameter_counts(model)
    if cfg.model.kind in ("mindeye", "mindeye2") and getattr(model, "prior", None) is not None:
        counts["prior.net"] = sum(p.numel() for p in model.prior.net.parameters())
    return counts


def run(args: argparse.Namespace) -> int:
    from mindeye.config import load_config
    from mindeye.errors import MindEyeError

    if (args.config is None) == (args.config_option is None):
        raise MindEyeError("give one config: `mindeye summary CONFIG` or `mindeye summary --config CONFIG`")
    cfg = load_config(args.config or args.config_option, args.overrides)
    n_voxels = _parse_voxels(args.n_voxels, cfg.model.kind) or cfg.data.n_voxels
    if n_voxels is None and cfg.data.store:
        from mindeye.data.store import SubjectStore

        n_voxels = SubjectStore(cfg.data.store).n_voxels
    if n_voxels is None:
        raise MindEyeError("voxel count unknown: pass --n-voxels N or set data.n_voxels / data.store in the config")
    shown = "+".join(map(str, n_voxels.values())) if isinstance(n_voxels, dict) else n_voxels
    print(f"{cfg.name}  ({cfg.model.kind}, {shown} voxels)")
    for name, count in summary_counts(cfg, n_voxels).items():
        print(f"  {name:<12} {count}")
    return 0


def _parse_voxels(text: str | None, kind: str) -> int | dict[str, int] | None:
    """``--n-voxels``: N, or (mindeye2) N1,N2,... -> {subject1: N1, ...}."""
    from mindeye.errors import MindEyeError

    if text is None:
        return None
    try:
        counts = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise MindEyeError(f"--n-voxels expects an integer (or, for mindeye2, integers separated by commas), "
                           f"got {text!r}") from None
    if len(counts) == 1:
        return counts[0]
    if kind != "mindeye2":
        raise MindEyeError("several --n-voxels counts need model.kind mindeye2 (one ridge per subject)")
    return {f"subject{i + 1}": n for i, n in enumerate(counts)}
