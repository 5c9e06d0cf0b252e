"""`mindeye import-checkpoint`: use the authors' published MindEye v1 weights with this package."""

from __future__ import annotations

import argparse
from pathlib import Path

from mindeye.commands.options import add_data, add_out, add_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-checkpoint", help="convert an authors' MindEye v1 or MindEye2 checkpoint into a mindeye run directory",
        description="Map every tensor of an authors'-layout high-level checkpoint (voxel2clip.*, net.*, "
                    "noise_scheduler.*) onto our model, check shapes, and write a run directory usable by "
                    "`mindeye evaluate`, `mindeye reconstruct`, ...")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--mindeye-v1", dest="checkpoint", help=".pth/.pt/.safetensors checkpoint file")
    which.add_argument("--mindeye2", dest="checkpoint_v2", metavar="FILE",
                       help="the MindEye2 authors' checkpoint (their Train.ipynb last.pth: multi-subject or fine-tuned); "
                            "sizes are read from it (docs/mindeye2.md)")
    p.add_argument("--subjects", default=None,
                   help="--mindeye2: comma-separated ids of its ridge layers in their subj_list order "
                        "(default: subj0N from each layer's nsdgeneral voxel count)")
    add_out(p, help="run directory to create")
    p.add_argument("--config", default=None,
                   help="config describing the model (a shipped name such as mindeye-subj01, or a path; default: the config defaults)")
    p.add_argument("--n-voxels", type=int, default=None,
                   help="expected voxel count (default: read from the checkpoint; subj01 15724)")
    add_data(p, help="subject store the run should evaluate on (recorded in run.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file

    from mindeye.config import load_config
    from mindeye.data.store import check_output_dir
    from mindeye.models.convert import convert_mindeye_v1_state_dict, load_mindeye_v1_checkpoint
    from mindeye.models.factory import build_model
    from mindeye.training.checkpoint import write_run_files

    out = Path(args.out)
    check_output_dir(out, args.overwrite)
    if args.checkpoint_v2 is not None:
        return _run_mindeye2(args, out)
    cfg = load_config(args.config) if args.config else load_config(
        None, ["model.kind=mindeye", "targets.weights=openai/clip-vit-large-patch14"])
    import logging

    log = logging.getLogger("mindeye.commands.import_checkpoint")
    log.info(f"reading {args.checkpoint}")
    state = load_mindeye_v1_checkpoint(args.checkpoint)
    n_voxels = args.n_voxels
    if n_voxels is None and "voxel2clip.lin0.0.weight" in state:
        n_voxels = int(state["voxel2clip.lin0.0.weight"].shape[1])
    b, pr = cfg.model.backbone, cfg.model.prior
    sizes = dict(hidden=b.hidden, n_blocks=b.n_blocks, tokens=b.tokens, dim=b.dim,
                 proj_hidden=cfg.model.projector.hidden, depth=pr.depth, heads=pr.heads, dim_head=pr.dim_head,
                 rotary_dim=min(32, pr.dim_head), timesteps=pr.timesteps)
    converted = convert_mindeye_v1_state_dict(state, n_voxels=n_voxels, **sizes)
    model = build_model(cfg.model, n_voxels, device=torch.device("meta"))
    model.load_state_dict(converted, strict=True, assign=True)
    log.info(f"writing the run directory {out}")
    write_run_files(out, cfg, {"kind": "mindeye", "store": args.data, "n_voxels": n_voxels,
                               "imported_from": str(Path(args.checkpoint).resolve()), "format": "mindeye-v1"})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    print(f"imported {len(converted)} tensors from {args.checkpoint} into {out}")
    return 0


def _run_mindeye2(args: argparse.Namespace, out: Path) -> int:
    import torch
    from safetensors.torch import save_file

    from mindeye.config import load_config
    from mindeye.models.convert import load_mindeye_v1_checkpoint
    from mindeye.models.convert_mindeye2 import convert_mindeye2_state_dict, infer_sizes, subject_ids
    from mindeye.models.factory import build_model
    from mindeye.training.checkpoint import write_run_files

    state = load_mindeye_v1_checkpoint(args.checkpoint_v2)  # same file formats; unwraps model_state_dict
    sizes = infer_sizes(state)
    cfg = load_config(args.config or "mindeye2-pretrain", sizes)
    ids = subject_ids(state, args.subjects.split(",") if args.subjects else None)
    converted = convert_mindeye2_state_dict(state, ids)
    voxels = {sid: int(converted[f"subject_layers.{sid}.weight"].shape[1]) for sid in ids}
    model = build_model(cfg.model, voxels, device=torch.device("meta"))
    try:
        model.load_state_dict(converted, strict=True, assign=True)
    except RuntimeError as exc:
        from mindeye.errors import MindEyeError

        raise MindEyeError(f"{args.checkpoint_v2} does not fit the MindEye2 model its shapes describe: {exc}") from None
    subjects = [{"id": sid, "store": args.data if len(ids) == 1 else None, "n_voxels": n, "identity": None}
                for sid, n in voxels.items()]
    write_run_files(out, cfg, {"kind": "mindeye2", "store": args.data, "n_voxels": next(iter(voxels.values())),
                               "subjects": subjects, "imported_from": str(Path(args.checkpoint_v2).resolve()),
                               "format": "mindeye2"})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    print(f"imported {len(converted)} tensors from {args.checkpoint_v2} into {out} "
          f"(subjects {', '.join(ids)}; {' '.join(s for s in sizes if 'hidden' in s or 'tokens' in s)})")
    return 0
