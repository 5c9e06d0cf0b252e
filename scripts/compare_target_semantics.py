"""Are retrieval errors semantically closer with EfficientNet-Lite0 targets than with the stand-in?

On a simulated store (default: `small`, 300 test images), for each target encoder:

1. image space alone: each test image's nearest other test image (cosine of targets);
2. decoded: a ridge regression (src/mindeye/configs/demo-ridge.yaml, its alpha search) from training voxels to the
   targets -- or, with --kind mindeye, the demo's MindEye model (src/mindeye/configs/demo-highlevel.yaml, prior off
   for every encoder alike) -- then top-1 retrieval over the test set (repetition-averaged voxels).

"Semantically close" is measured with the scene attributes the images were drawn from, which no
encoder sees: the cosine between the attribute vectors (mindeye.data.scenes.attribute_vector) of the
true and the retrieved image, and whether their largest objects share the category. Chance = the
same over all pairs of distinct test images. Prints one Markdown table (docs/evaluation.md quotes it).

    PYTHONPATH=src python scripts/compare_target_semantics.py --store /tmp/sim-small --out /tmp/semantics
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

ENCODERS = {  # encoder -> ridge output (tokens, dim)
    "standin-clip-hidden": (17, 64),
    "standin-clip-final": (1, 64),
    "effnet-lite0-pooled": (1, 1280),
}


def main() -> None:
    from mindeye.config import load_config
    from mindeye.data.splits import load_eval_split
    from mindeye.data.store import SubjectStore
    from mindeye.encoders.cache import embed_store
    from mindeye.encoders.targets import Targets
    from mindeye.evaluation.scene_semantics import error_semantics, scene_semantics
    from mindeye.runs import load_run_model
    from mindeye.training.trainer import Trainer, embed_voxels

    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=Path, required=True, help="simulated store (made with `mindeye simulate`)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the ridge runs and results.json")
    ap.add_argument("--encoders", nargs="+", default=list(ENCODERS))
    ap.add_argument("--kind", choices=["ridge", "mindeye"], default="ridge")
    ap.add_argument("--set", nargs="*", default=[], help="extra config overrides (e.g. train.epochs=10)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    repo = Path(__file__).resolve().parents[1]
    store = SubjectStore(args.store)
    test_index = store.image_indices("test")
    attrs, main_cat = scene_semantics(args.store, test_index)
    rows = {}
    for enc in args.encoders:
        tokens, dim = ENCODERS[enc]
        embed_store(args.store, enc, progress=False)
        targets = Targets(args.store, enc, None).get(test_index).flatten(1).float()
        t = torch.nn.functional.normalize(targets, dim=1)
        space_sim = (t @ t.T).numpy()
        np.fill_diagonal(space_sim, -np.inf)  # nearest OTHER image
        s = error_semantics(space_sim, attrs, main_cat)
        run = args.out / f"{args.kind}-{enc}"
        if not (run / "model.safetensors").exists():
            config = "demo-ridge.yaml" if args.kind == "ridge" else "demo-highlevel.yaml"
            extra = [] if args.kind == "ridge" else ["model.prior.enabled=false"]
            cfg = load_config(repo / "src/mindeye/configs" / config, [f"targets.encoder={enc}", f"model.backbone.tokens={tokens}",
                                                          f"model.backbone.dim={dim}", *extra, *args.set])
            Trainer(cfg, run, store=args.store, device="cpu", progress=False).fit()
        cfg, _, model, subject = load_run_model(run, "cpu")
        test = load_eval_split(subject, test_index, cfg.data.test_mode)
        assert np.array_equal(test.image_index, test_index)
        pred = torch.nn.functional.normalize(embed_voxels(model, test.voxels, "cpu").flatten(1).float(), dim=1)
        d = error_semantics((pred @ t.T).numpy(), attrs, main_cat)
        rows[enc] = {"space": s, "decoded": d}
        print(enc, json.dumps(rows[enc]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"rows": rows}, indent=2))
    chance = next(iter(rows.values()))["space"]
    print(f"\n{len(test_index)} test images; chance: attribute cosine {chance['chance_attr_cos']:.3f}, same main "
          f"category {100 * chance['chance_same_category']:.1f}%\n")
    print(f"| target encoder | nearest other image: attr. cos / same category | {args.kind} top-1 | {args.kind} errors: "
          "attr. cos / same category |")
    print("|---|:-:|:-:|:-:|")
    for enc, r in rows.items():
        s, d = r["space"], r["decoded"]
        print(f"| {enc} | {s['error_attr_cos']:.3f} / {100 * s['error_same_category']:.1f}% | {100 * d['top1']:.1f}% | "
              f"{d['error_attr_cos']:.3f} / {100 * d['error_same_category']:.1f}% |")


if __name__ == "__main__":
    main()
