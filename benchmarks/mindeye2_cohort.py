"""v1-shared vs MindEye2 on the simulated cohort (issue 24; docs/mindeye2.md has the measured table).

For each family (``demo-cohort-highlevel`` = our v1 shared-subject model, ``demo-cohort-mindeye2``) the
shared-subject comparison of :mod:`mindeye.shared_subject` is run: pretrain on 3 subjects, then for the
held-out subject fine-tuned / scratch / ridge, per session count and seed; both retrieval directions.
For MindEye2 runs the blurry head is also scored on the held-out subject's test images: the predicted
stand-in VAE latents are decoded and compared with the images (PixCorr, SSIM), averaged over seeds.

    PYTHONPATH=src python benchmarks/mindeye2_cohort.py --out /tmp/me2-cohort \
        --seeds 0 1 2 --sessions 1 --pretrain-epochs 4

Every run directory is reused when the script is run again (interrupting loses at most one run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

FAMILIES = {"v1-shared": "demo-cohort-highlevel", "mindeye2": "demo-cohort-mindeye2"}


def blurry_scores(run_dir: Path, store: Path) -> dict[str, float]:
    """PixCorr and SSIM of the MindEye2 blurry head's decoded latents on the store's averaged test set."""
    from mindeye.data.store import SubjectStore
    from mindeye.encoders.registry import get_encoder
    from mindeye.evaluation.metrics import pixcorr, ssim
    from mindeye.runs import load_run
    from mindeye.training.data import load_eval_split

    run = load_run(run_dir, device="cpu")
    st = SubjectStore(store)
    test = load_eval_split(st, st.image_indices("test"))
    with torch.no_grad():
        latents = torch.cat([run.model(test.voxels[s:s + 64].float())["blurry"] for s in range(0, len(test), 64)])
    vae = get_encoder(run.config.targets.lowlevel_encoder, device="cpu")
    images = vae.decode(latents)  # uint8 (N, H, W, 3)
    truth = np.asarray(st.images[test.image_index])
    return {"pixcorr": float(pixcorr(images, truth)), "ssim": float(ssim(images, truth))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sessions", nargs="+", default=["1"], help="session counts; 'all' = every session")
    ap.add_argument("--pretrain-epochs", type=int, default=4)
    ap.add_argument("--finetune-epochs", type=int, default=None)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mindeye.encoders.cache import embed_store
    from mindeye.shared_subject import CohortPlan, _store_dirs, format_table, run_comparison

    out = Path(args.out)
    sessions = [None if s == "all" else int(s) for s in args.sessions]
    results = {}
    for family in args.families:
        plan = CohortPlan(sessions=sessions, seeds=args.seeds, config=FAMILIES[family],
                          pretrain_epochs=args.pretrain_epochs, finetune_epochs=args.finetune_epochs)
        fam_out = out / family
        if family == "mindeye2":  # the blurry head's targets, cached beside the CLIP stand-in's
            for path in _store_dirs(plan, fam_out, progress=False).values():
                for store in sorted(p for p in path.iterdir() if p.is_dir()):
                    for enc in ("standin-vae", "standin-vicregl"):
                        embed_store(store, enc, progress=False)
        res = run_comparison(fam_out, plan, progress=True)
        if family == "mindeye2":
            for row in res["rows"]:
                if row["method"] == "ridge":
                    continue
                tag = f"cohort-{row['sessions']}sess" if row["sessions"] != "all" else "cohort"
                row.update(blurry_scores(fam_out / row["run"], fam_out / "data" / tag / res["held_out"]))
        results[family] = res
        print(f"== {family}\n" + format_table(res), flush=True)
    (out / "mindeye2_cohort.json").write_text(json.dumps(results, indent=2))
    print(summary_table(results))
    return 0


def summary_table(results: dict) -> str:
    """Markdown: family, sessions, method, both directions and blurry PixCorr/SSIM, mean ± sd over seeds."""
    lines = ["| family | sessions | method | brain->image top-1 | image->brain top-1 | blurry PixCorr | blurry SSIM |",
             "|---|---|---|---|---|---|---|"]
    for family, res in results.items():
        groups: dict[tuple, list] = {}
        for r in res["rows"]:
            groups.setdefault((str(r["sessions"]), r["method"]), []).append(r)
        for (sess, method), rs in groups.items():
            def ms(key, pct=True, rs=rs):
                vals = [r[key] for r in rs if key in r]
                if not vals:
                    return "n/a"
                v = np.array(vals) * (100 if pct else 1)
                sd = v.std(ddof=1) if len(v) > 1 else 0.0
                return f"{v.mean():.1f} ± {sd:.1f}%" if pct else f"{v.mean():.3f} ± {sd:.3f}"
            lines.append(f"| {family} | {sess} | {method} | {ms('brain_to_image')} | {ms('image_to_brain')} | "
                         f"{ms('pixcorr', False)} | {ms('ssim', False)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
