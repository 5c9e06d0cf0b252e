"""Prove `mindeye import-checkpoint --mindeye2` on the authors' own MindEye2 classes (issue 24).

Builds the authors' model from THEIR repository at run time (nothing of theirs is in this repository):
their ``RidgeRegression`` and ``MindEyeModule`` (class statements executed from ``src/Train.ipynb``),
``BrainNetwork``, ``PriorNetwork`` and ``BrainDiffusionPrior`` (imported from ``src/models.py``), at a
reduced width with random weights, saves it the way their notebook's ``save_ckpt`` does
(``torch.save({'epoch', 'model_state_dict', ...})``), imports that file with our converter, and compares:
per subject the backbone tokens, the CLIP projector tokens, the blurry latent and blurry tokens (eval
mode), and the diffusion prior's loss and prediction under one seed (train mode: conditioning dropout on).
It also counts the parameters of their classes at the paper's sizes (meta device) against ours.

    git --git-dir=<mirror of MedARC-AI/MindEyeV2> archive HEAD src | tar -x -C /tmp/me2src  (or git show)
    PYTHONPATH=src <python with dalle2-pytorch 1.14.2> benchmarks/mindeye2_authors_check.py --authors-src /tmp/me2src

Needs dalle2-pytorch (theirs: unpinned; checked with 1.14.2) beside this package's environment; modules
their files import but the check never runs (``generative_models.sgm``, ``accelerate``, ...) are stubbed
and printed. Exit status 0 when every max |difference| <= --tol (1e-5), 1 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import tempfile
import types
from pathlib import Path

import torch
from torch import nn


def import_authors(src: Path):
    """Their ``models`` module (``src/models.py``) with absent, unused imports stubbed."""
    try:
        import diffusers.models.vae  # noqa: F401  (diffusers < 0.26, theirs 0.23)
    except ImportError:
        import diffusers.models.autoencoders.vae as vae

        sys.modules["diffusers.models.vae"] = vae
    root = src / "src" if (src / "src" / "models.py").exists() else src
    sys.path.insert(0, str(root))
    stubbed = []
    # Their utils.py imports Stability's sgm (vendored under src/generative_models, with heavy imports of
    # its own: lightning, ...) for helpers the check never calls: stubbed up front, whatever is installed.
    for name in ("generative_models", "generative_models.sgm", "generative_models.sgm.util"):
        mod = types.ModuleType(name)
        mod.__path__ = []
        mod.__getattr__ = lambda attr: (lambda *a, **k: None)
        sys.modules[name] = mod
    stubbed.append("generative_models.sgm (always)")
    for _ in range(30):
        try:
            import models  # their src/models.py

            return models, root, stubbed
        except ModuleNotFoundError as e:
            if e.name in ("models", "utils") or e.name is None:
                raise
            parts = e.name.split(".")
            for j in range(1, len(parts) + 1):
                name = ".".join(parts[:j])
                if name not in sys.modules:
                    mod = types.ModuleType(name)
                    mod.__path__ = []
                    mod.__getattr__ = lambda attr: (lambda *a, **k: None)
                    sys.modules[name] = mod
            stubbed.append(e.name)
            for k in ("models", "utils"):
                sys.modules.pop(k, None)
    raise RuntimeError("too many missing modules")


def notebook_classes(root: Path, names: tuple[str, ...] = ("MindEyeModule", "RidgeRegression")) -> dict:
    """Execute the class statements ``names`` of their Train.ipynb (nothing else of the notebook runs)."""
    nb = json.loads((root / "Train.ipynb").read_text())
    ns: dict = {"torch": torch, "nn": nn}
    found = {}
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name in names:
                exec(compile(ast.Module([node], []), "Train.ipynb", "exec"), ns)
                found[node.name] = ns[node.name]
    missing = set(names) - set(found)
    if missing:
        raise RuntimeError(f"Train.ipynb has no class {', '.join(sorted(missing))}")
    return found


def build_theirs(models, classes, voxels: list[int], hidden: int, n_blocks: int, tokens: int, dim: int,
                 depth: int, dim_head: int, timesteps: int = 100) -> nn.Module:
    """Their cells 18-22 with the sizes as arguments."""
    model = classes["MindEyeModule"]()
    model.ridge = classes["RidgeRegression"](voxels, out_features=hidden)
    model.backbone = models.BrainNetwork(h=hidden, in_dim=hidden, seq_len=1, n_blocks=n_blocks, clip_size=dim,
                                         out_dim=dim * tokens, blurry_recon=True, clip_scale=1)
    net = models.PriorNetwork(dim=dim, depth=depth, dim_head=dim_head, heads=dim // dim_head, causal=False,
                              num_tokens=tokens, learned_query_mode="pos_emb")
    model.diffusion_prior = models.BrainDiffusionPrior(net=net, image_embed_dim=dim, condition_on_text_encodings=False,
                                                       timesteps=timesteps, cond_drop_prob=0.2, image_embed_scale=None)
    return model


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--authors-src", required=True, help="checkout of MedARC-AI/MindEyeV2 (or its src/)")
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-paper-count", action="store_true", help="skip the paper-size parameter count")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from mindeye.config import load_config
    from mindeye.models.convert import load_mindeye_v1_checkpoint
    from mindeye.models.convert_mindeye2 import convert_mindeye2_state_dict, infer_sizes
    from mindeye.models.factory import build_model, parameter_counts

    models, root, stubbed = import_authors(Path(args.authors_src))
    classes = notebook_classes(root)
    print(f"authors' classes from {root} (stubbed imports: {', '.join(stubbed) or 'none'})")

    torch.manual_seed(args.seed)
    voxels = [300, 250, 280]  # three subjects, reduced
    sizes = dict(hidden=64, n_blocks=2, tokens=8, dim=32, depth=2, dim_head=16)
    theirs = build_theirs(models, classes, voxels, **sizes)
    with torch.no_grad():  # random, not default, norms and biases (an untrained LayerNorm is 1 / 0)
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "last.pth"
        optimizer = torch.optim.AdamW(theirs.parameters(), lr=1e-4)
        torch.save({"epoch": 0, "model_state_dict": theirs.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                    "lr_scheduler": {}, "train_losses": [], "test_losses": [], "lrs": []}, path)
        state = load_mindeye_v1_checkpoint(path)
    overrides = infer_sizes(state)
    print("inferred:", " ".join(overrides))
    cfg = load_config("mindeye2-pretrain", overrides)
    subjects = ["s1", "s2", "s3"]
    converted = convert_mindeye2_state_dict(state, subjects)
    ours = build_model(cfg.model, dict(zip(subjects, voxels)))
    ours.load_state_dict(converted, strict=True)
    print(f"imported {len(converted)} tensors ({len(state)} in their state dict) strict=True")

    diffs: dict[str, float] = {}
    theirs.eval()
    ours.eval()
    with torch.no_grad():
        for i, (sid, n) in enumerate(zip(subjects, voxels)):
            x = torch.randn(6, n)
            backbone, clip, (blur, blur_tokens) = theirs.backbone(theirs.ridge(x[:, None], i))
            out = ours(x, subject=sid)
            for name, a, b in (("backbone", backbone, out["backbone"]), ("projector", clip, out["projector"]),
                               ("blurry_latent", blur, out["blurry"]), ("blurry_tokens", blur_tokens, out["blurry_tokens"])):
                diffs[f"{sid}/{name}"] = float((a - b).abs().max())
        target = torch.randn(6, sizes["tokens"], sizes["dim"])
        theirs.diffusion_prior.train()
        ours.prior.train()
        torch.manual_seed(123)
        loss_t, pred_t = theirs.diffusion_prior(text_embed=backbone, image_embed=target)
        torch.manual_seed(123)
        loss_o, pred_o = ours.prior.loss(target, out["backbone"])
        diffs["prior/loss"] = float((loss_t - loss_o).abs())
        diffs["prior/pred"] = float((pred_t - pred_o).abs().max())
    for k, v in diffs.items():
        print(f"  max |theirs - ours| {k:<22} {v:.3e}")
    worst = max(diffs.values())
    print(f"worst {worst:.3e} (tolerance {args.tol:g}): {'PASS' if worst <= args.tol else 'FAIL'}")

    if not args.skip_paper_count:
        # Paper sizes (docs/mindeye2.md): 7 pretraining subjects' nsdgeneral counts, hidden 4096, bigG tokens.
        from mindeye.constants import NSDGENERAL_VOXELS

        cfg = load_config("mindeye2-pretrain")
        held_out = 1
        subj = {f"subj0{s}": n for s, n in NSDGENERAL_VOXELS.items() if s != held_out}
        b = cfg.model.backbone
        with torch.device("meta"):
            big_theirs = build_theirs(models, classes, list(subj.values()), hidden=b.hidden, n_blocks=b.n_blocks,
                                      tokens=b.tokens, dim=b.dim, depth=cfg.model.prior.depth,
                                      dim_head=cfg.model.prior.dim_head)
        big_ours = build_model(cfg.model, subj, device=torch.device("meta"))
        ours_counts = parameter_counts(big_ours)
        theirs_counts = {"ridge": count(big_theirs.ridge), "backbone (+projector, blurry)": count(big_theirs.backbone),
                         "diffusion_prior": count(big_theirs.diffusion_prior), "total": count(big_theirs)}
        ours_grouped = {"ridge": ours_counts["subject_layers"],
                        "backbone (+projector, blurry)": ours_counts["backbone"] + ours_counts["projector"]
                        + ours_counts["blurry"], "diffusion_prior": ours_counts["prior"], "total": ours_counts["total"]}
        print("paper size (mindeye2-pretrain, 7 subjects, held out subj01):")
        for k in theirs_counts:
            print(f"  {k:<30} theirs {theirs_counts[k]:>14,}  ours {ours_grouped[k]:>14,}"
                  f"  {'equal' if theirs_counts[k] == ours_grouped[k] else 'DIFFERENT'}")
        if theirs_counts != ours_grouped:
            worst = float("inf")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    raise SystemExit(main())
