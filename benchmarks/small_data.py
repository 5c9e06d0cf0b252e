"""Small datasets (issue 23): ridge vs today's MindEye vs the size-aware defaults, by training-set size.

    PYTHONPATH=src python benchmarks/small_data.py --out /tmp/small-data              # 100/300/1000/all x seeds 0-2
    PYTHONPATH=src python benchmarks/small_data.py --out DIR --sizes 100 --seeds 0     # a quick look

On the `small` simulated subject (1,500 training images, 300 test images; simulated into OUT/store
unless --store is given, with the stand-in targets) each run keeps a seeded random subset of N training
images (``data.train_images``, a new subset per seed) and the same held-out validation images for every
method (the size-aware count: 20% of N, 10 to 100). Three methods, both pipelines:

* ``ridge``: ``demo-ridge`` (voxels -> stand-in CLIP tokens) and ``demo-ridge-lowlevel`` (voxels -> VAE latent);
* ``today``: ``demo-highlevel`` / ``demo-lowlevel`` as shipped before issue 23 (``train.size_defaults=false``);
* ``new``: the same configs with the size-aware defaults `mindeye train` applies (training/size_defaults.py).

The high-level runs train without the diffusion prior (``model.prior.enabled=false`` for both
networks): retrieval reads the projector, never the prior, and the prior is half of the CPU time.
Scores, all on the 300 test images: top-1 retrieval among all 300 in both directions (``image_to_brain``
= Table 1's image retrieval) and the blurry images' PixCorr / SSIM (test latents decoded by the stand-in
VAE, scored at the store's 128 px: the paper protocol first upsamples to 425 px, 10x the CPU time). Prints mean ± sd over seeds per size and method, writes OUT/small_data.json (every run and the
summary) and OUT/small_data.md (the table). Finished runs are reused, so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

TARGETS = ("standin-clip-hidden", "standin-vae", "standin-vicregl")
METHODS = ("ridge", "today", "new")
METRICS = (("image_to_brain", "image retr.", True), ("brain_to_image", "brain retr.", True),
           ("pixcorr", "PixCorr", False), ("ssim", "SSIM", False))


def val_images(n: int) -> int:
    from mindeye.config import Config
    from mindeye.training.size_defaults import size_settings

    return size_settings(Config(), n, has_val_split=False)[0].get("data.val_images", 100)


def configs(method: str, size: int | None, n_train: int, seed: int, store: Path, epochs: int | None = None,
            ) -> tuple[Any, Any, str | None]:
    """(high-level config, low-level config, the size-aware line) of one method at one size."""
    from mindeye.config import load_config
    from mindeye.training.size_defaults import sized_config

    common = [f"seed={seed}", f"data.train_images={size if size is not None else 'null'}"]
    if epochs is not None and method != "ridge":
        common.append(f"train.epochs={epochs}")
    if method == "ridge":
        val = [f"data.val_images={val_images(n_train)}"]
        return (load_config("demo-ridge", common + val), load_config("demo-ridge-lowlevel", common + val), None)
    high = common + ["model.prior.enabled=false", "train.log_every=50"]
    if method == "today":
        off = ["train.size_defaults=false", f"data.val_images={val_images(n_train)}"]
        return load_config("demo-highlevel", high + off), load_config("demo-lowlevel", common + off), None
    cfg_high, line = sized_config("demo-highlevel", high, store)
    cfg_low, _ = sized_config("demo-lowlevel", common, store)
    return cfg_high, cfg_low, line


def blurry_scores(run: Path, store: Path) -> dict[str, float]:
    """PixCorr / SSIM of the decoded test latents of a low-level (or low-level ridge) run."""
    from mindeye.data.splits import load_eval_split
    from mindeye.data.store import SubjectStore
    from mindeye.encoders.registry import get_encoder
    from mindeye.evaluation.metrics import rgb_to_gray, rowwise_pearson, ssim_gray
    from mindeye.models.factory import lowlevel_latent_shape
    from mindeye.runs import load_run

    r = load_run(run)
    st = SubjectStore(store)
    test = load_eval_split(st, st.image_indices("test"))
    with torch.no_grad():
        out = r.model(test.voxels.float())
    latents = out[0] if isinstance(out, tuple) else out.view(len(test), *lowlevel_latent_shape(r.config.model))
    recon = get_encoder(r.config.targets.lowlevel_encoder).decode(latents).permute(0, 3, 1, 2).double() / 255
    real = torch.from_numpy(np.asarray(st.images[test.image_index])).permute(0, 3, 1, 2).double() / 255
    # At the store's resolution: the paper protocol's 425 px upsampling costs ~10x the CPU time (minutes
    # per run on a shared 2-core machine) for a comparison between methods that it does not change.
    return {"pixcorr": float(rowwise_pearson(real, recon).mean()),
            "ssim": float(ssim_gray(rgb_to_gray(recon), rgb_to_gray(real)).mean())}


KIND_KEYS = {"high": ("image_to_brain", "brain_to_image"), "low": ("pixcorr", "ssim")}


def same_as_today(out: Path, method: str, size: int | None, n_train: int, seed: int, store: Path,
                  epochs: int | None, high: Any, low: Any) -> dict[str, dict[str, Any]]:
    """{kind: today's result} for the pipelines whose new config equals today's (size_defaults aside)."""
    from mindeye.config import to_dict

    if method != "new":
        return {}
    today_file = out / "results" / (f"today-{size or 'all'}-s{seed}" + (f"-e{epochs}" if epochs is not None else "")
                                    + ".json")
    if not today_file.exists():
        return {}
    today = json.loads(today_file.read_text())
    t_high, t_low, _ = configs("today", size, n_train, seed, store, epochs)

    def plain(cfg: Any) -> dict[str, Any]:
        d = to_dict(cfg)
        d["train"].pop("size_defaults")
        return d

    return {kind: today for kind, a, b in (("high", high, t_high), ("low", low, t_low)) if plain(a) == plain(b)}


def one(out: Path, store: Path, method: str, size: int | None, n_train: int, seed: int,
        epochs: int | None = None) -> dict[str, Any]:
    from mindeye.evaluation.run_eval import evaluate_retrieval
    from mindeye.training.trainer import Trainer

    tag = f"{method}-{size or 'all'}-s{seed}" + (f"-e{epochs}" if epochs is not None and method != "ridge" else "")
    done = out / "results" / f"{tag}.json"
    if done.exists():
        return json.loads(done.read_text())
    high, low, line = configs(method, size, n_train, seed, store, epochs)
    t0 = time.perf_counter()
    res: dict[str, Any] = {"method": method, "size": size or n_train, "seed": seed, "size_defaults": line,
                           "epochs": high.train.epochs if method != "ridge" else None}
    same = same_as_today(out, method, size, n_train, seed, store, epochs, high, low)
    for kind, cfg in (("high", high), ("low", low)):
        if kind in same:  # the size-aware defaults changed nothing: today's run is this run (deterministic)
            res.update({k: v for k, v in same[kind].items() if k.startswith(kind) or k in KIND_KEYS[kind]})
            res[f"{kind}_same_as_today"] = True
            continue
        run = out / "runs" / f"{tag}-{kind}"
        if run.exists():  # an interrupted run: start it again
            import shutil

            shutil.rmtree(run)
        t1 = time.perf_counter()
        fit = Trainer(cfg, run, store=store, device="cpu", progress=False).fit()
        res[f"{kind}_seconds"] = time.perf_counter() - t1
        res[f"{kind}_selected_epoch"] = fit.get("selected_epoch")
        res[f"{kind}_ridge_check"] = fit.get("ridge_check")
        if kind == "high":
            ev = evaluate_retrieval(run, device="cpu", write=False)
            res.update({d: ev[d] for d in ("image_to_brain", "brain_to_image")})
        else:
            res.update(blurry_scores(run, store))
    res["seconds"] = time.perf_counter() - t0
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(res, indent=2, default=str))
    return res


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """{size: {method: {metric: [mean, sd, n]}}}."""
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for r in rows:
        cell = out.setdefault(str(r["size"]), {}).setdefault(r["method"], {})
        for key, _, _ in METRICS:
            cell.setdefault(key, []).append(r[key])
    for methods in out.values():
        for cell in methods.values():
            for key, vals in cell.items():
                cell[key] = [float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, len(vals)]
    return out


def markdown(summary: dict[str, Any], seeds: int) -> str:
    names = {"ridge": "ridge regression", "today": "MindEye, demo configs as before",
             "new": "MindEye, size-aware defaults"}
    lines = [f"| training images | method | {' | '.join(label for _, label, _ in METRICS)} |",
             "|---:|---|" + ":-:|" * len(METRICS)]
    for size in sorted(summary, key=int):
        for method in METHODS:
            cell = summary[size].get(method)
            if cell is None:
                continue
            vals = []
            for key, _, pct in METRICS:
                m, sd, _ = cell[key]
                vals.append(f"{100 * m:.1f} ± {100 * sd:.1f}%" if pct else f".{round(1000 * m):03d} ± .{round(1000 * sd):03d}")
            lines.append(f"| {size} | {names[method]} | {' | '.join(vals)} |")
    lines.append(f"\nmean ± sd over {seeds} seeds (a new training subset, initialisation and validation split each); "
                 "retrieval: top-1 among the 300 test images (chance 0.33%); blurry: 300 test images.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="small_data.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--store", type=Path, default=None, help="a simulated `small` store (default: simulate OUT/store)")
    p.add_argument("--sizes", nargs="+", default=["100", "300", "1000", "all"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--epochs", type=int, default=None,
                   help="train both networks this many epochs (default: the configs' 20); a shorter schedule for a "
                        "CPU budget, the same for today's and the new settings")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the small models run fastest)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from mindeye.data.store import SubjectStore
    from mindeye.encoders.cache import embed_store

    t0 = time.perf_counter()
    store = args.store or args.out / "store"
    if not (store / "meta.json").exists():
        from mindeye.data.simulate import simulate_subject

        simulate_subject(store, scale="small", seed=0, progress=False)
    for name in TARGETS:
        embed_store(store, name, progress=False)
    n_all = len(SubjectStore(store).image_indices("train"))
    rows = []
    for size_arg in args.sizes:
        size = None if size_arg == "all" else int(size_arg)
        n_train = size or n_all
        for seed in args.seeds:
            for method in args.methods:
                r = one(args.out, store, method, size, n_train, seed, args.epochs)
                rows.append(r)
                print(f"{method:>5} {n_train:>5} images seed {seed}: image retr. {100 * r['image_to_brain']:5.1f}%  "
                      f"brain retr. {100 * r['brain_to_image']:5.1f}%  PixCorr {r['pixcorr']:.3f}  SSIM {r['ssim']:.3f}"
                      f"  ({r['seconds']:.0f} s)", flush=True)
    summary = summarise(rows)
    table = markdown(summary, len(args.seeds))
    (args.out / "small_data.json").write_text(json.dumps({"runs": rows, "summary": summary}, indent=2, default=str))
    (args.out / "small_data.md").write_text(table + "\n")
    print(table)
    print(f"wall time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    from mindeye.errors import MindEyeError

    try:
        sys.exit(main())
    except MindEyeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
