"""The main job end to end: simulate -> embed -> train (high, low, ridge) -> retrieval -> reconstruct
-> metrics -> report. Every step skips work that is already done, so a killed demo resumes.

``mindeye demo --out DIR`` runs it on the `small` simulated subject with stand-in encoders on a CPU;
``mindeye demo --config demo-nsd-subj01 --out DIR`` runs the real thing (a prepared NSD
store, CLIP ViT-L/14, SD VAE, Versatile Diffusion) on a GPU.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mindeye.config import SHIPPED_CONFIG_DIR, load_config, resolve_config_path
from mindeye.errors import MindEyeError
from mindeye.utils.logs import configure_logging

log = logging.getLogger(__name__)  # stage lines; results and tables are printed


@dataclass
class DemoConfig:
    """What the end-to-end job runs (the shipped demo.yaml)."""

    store: str | None = None  # an existing subject store; null = simulate one into OUT/store
    scale: str = "small"  # simulated subject scale when store is null
    seed: int = 0  # seed of the simulation and of every training run
    highlevel_config: str = "demo-highlevel.yaml"  # high-level model config (relative to this file)
    lowlevel_config: str = "demo-lowlevel.yaml"  # low-level model config
    ridge_config: str | None = "demo-ridge.yaml"  # ridge baseline config; null = skip the baseline
    # The low-level ridge baseline (voxels -> VAE latent, closed form), decoded like the low-level run's
    # latents; its blurry images get their own row in every blurry table. null = skip it.
    ridge_lowlevel_config: str | None = "demo-ridge-lowlevel.yaml"
    # A second high-level run on EfficientNet-Lite0 targets (retrieval only; extra mindeye[offline], skipped
    # without it); null = skip. Its errors are scored for semantic closeness on simulated stores.
    offline_target_config: str | None = "demo-highlevel-effnet.yaml"
    device: str = "auto"  # auto = GPU if present
    generator: str = "demo-latent-diffusion"  # image generator for reconstructions
    generator_weights: str | None = None  # HF id / local path (null = the generator's default)
    samples: int = 4  # generations per brain sample (best-of-N)
    steps: int = 20  # generator denoising steps
    guidance: float = 3.5  # generator (Versatile Diffusion) classifier-free guidance; the prior's is model.prior.guidance
    img2img_strength: float = 0.15  # share of the schedule skipped when starting from the blurry image
    recon_limit: int | None = 60  # reconstruct only the first N test images (null = all)
    metrics_weights_dir: str | None = None  # where metric network checkpoints live (offline machines)
    clip_weights: str | None = None  # CLIP for the CLIP metric (HF id or local path)
    # Without metric weights: also score with the offline substitute network (EfficientNet-Lite0, extra
    # mindeye[offline]) in its own table, never the paper's columns ("unavailable" without the extra).
    offline_net: bool = True
    overrides: list[str] = field(default_factory=list)  # --set overrides applied to all three model configs
    report_umap: bool = True  # include the UMAP figure (paper Figure 9) in report.html
    progress: bool = True  # progress bars (the CLI: off without a terminal, with --no-progress or -q)
    cpu_threads: int | None = 1  # torch threads on a CPU (1: small models run far faster without contention)
    # On a CPU with >= 2 cores, train the low-level model and run the EfficientNet-Lite0 target run
    # (embedding + training) in processes of their own beside the high-level training (each on
    # cpu_threads threads): these stages share no data.
    parallel_stages: bool = True
    batch_brains: int = 10  # brain samples per generator batch in the reconstructions (same images, less overhead)
    # Floors and ceilings beside every metric (docs/evaluation.md): retrieval floors always come with
    # `evaluate retrieval`; these settings are the reconstruction side's (shuffled-brain seeds, ceiling images).
    floors: bool = True
    floor_seeds: int = 1  # shuffled-brain derangements of the reconstruction rows (retrieval always uses 3)
    ceiling_samples: int | None = 1  # best-of-N of the generative ceiling (null = the reconstructions' N)
    bottleneck: bool = True  # the BrainBits-style bottleneck curve of the high-level run's retrieval


def _resolve(path: str, base: Path) -> Path:
    """A model config named by the demo config: relative to it, a path, or a shipped config name."""
    return resolve_config_path(path, base)


def load_demo_config(path: str | Path | None, overrides: list[str] | None = None) -> tuple[DemoConfig, Path]:
    path = resolve_config_path(path or "demo")
    return load_config(path, overrides, cls=DemoConfig), path.resolve().parent


def _demo_device(demo: DemoConfig) -> str:
    """The demo config's ``device``, resolved; `mindeye demo` has no --device, so its errors name --set."""
    from mindeye.devices import resolve_device

    try:
        return resolve_device(demo.device)
    except MindEyeError as exc:
        reason = str(exc).split(";")[0].replace(f"--device {demo.device!r} ", "").replace(f"--device {demo.device} ", "")
        raise MindEyeError(f"device: {demo.device} (from the demo config): {reason}; pass --set device=cpu "
                           "(or --set device=auto: a GPU when there is one)") from None


def _step(title: str) -> float:
    log.info(f"\n== {title}")
    return time.perf_counter()


def _done(t0: float) -> None:
    log.info(f"   ({time.perf_counter() - t0:.1f} s)")


def _model_config(config_path: Path, demo: DemoConfig, store: Path | None = None) -> Any:
    """A model config as the demo trains it: the file, then the demo's seed and overrides; with ``store``,
    the size-aware defaults for that store (printed; docs/small-data.md)."""
    if store is None:
        return load_config(config_path, [f"seed={demo.seed}", *demo.overrides])
    from mindeye.training.size_defaults import sized_config

    cfg, line = sized_config(config_path, [f"seed={demo.seed}", *demo.overrides], store)
    if line:
        log.info(f"   {line}")
    return cfg


def _train(config_path: Path, run: Path, store: Path, demo: DemoConfig, progress: bool | None = None) -> dict[str, Any]:
    from mindeye.training.trainer import Trainer

    cfg = _model_config(config_path, demo, store)
    if (run / "model.safetensors").exists() and cfg.model.kind == "ridge":
        log.info(f"   {run} already trained")
        return {}
    resume = (run / "checkpoint").exists()
    return Trainer(cfg, run, store=store, device=demo.device, resume=resume,
                   progress=demo.progress if progress is None else progress).fit()


def run_demo(out: str | Path, config: str | Path | None = None, overrides: list[str] | None = None,
             progress: bool | None = None) -> dict:
    """``progress``: progress bars (None: the config's ``progress``)."""
    from dataclasses import replace

    from mindeye.encoders.cache import embed_store

    demo, base = load_demo_config(config, overrides)
    if progress is not None:
        demo = replace(demo, progress=progress)
    if demo.cpu_threads and not torch.cuda.is_available():
        # Two OpenMP threads on a 2-core machine that is doing anything else run these small
        # models up to 10x slower than one thread (measured: 2.9 s vs 0.26 s per step).
        torch.set_num_threads(demo.cpu_threads)
    device = _demo_device(demo)  # checked before anything is created
    if demo.store and not (Path(demo.store) / "meta.json").is_file():
        raise MindEyeError(f"store: {demo.store} (from the demo config) is not a subject store; prepare one "
                           "(e.g. `mindeye prepare nsd --nsd-root DIR --subject 1 --out stores/subj01`) and pass "
                           "--set store=stores/subj01")
    if not demo.store:
        from mindeye.data.simulate import SCALES

        if demo.scale not in SCALES:  # checked before anything is created
            raise MindEyeError(f"unknown demo scale {demo.scale!r}; choose one of {', '.join(SCALES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    high_cfg_path = _resolve(demo.highlevel_config, base)
    low_cfg_path = _resolve(demo.lowlevel_config, base)
    ridge_cfg_path = _resolve(demo.ridge_config, base) if demo.ridge_config else None

    # 1. the subject
    if demo.store:
        store = Path(demo.store)
    else:
        store = out / "store"
        t0 = _step(f"simulate the '{demo.scale}' subject -> {store}")
        if (store / "meta.json").exists():
            log.info("   already simulated")
        else:
            from mindeye.data.simulate import simulate_subject

            simulate_subject(store, scale=demo.scale, seed=demo.seed, progress=demo.progress)
        _done(t0)

    # 2. targets, computed once per encoder
    t0 = _step("embed targets (target cache)")
    # The same configs training will use, so an override of a target encoder is embedded too.
    high = _model_config(high_cfg_path, demo)
    low = _model_config(low_cfg_path, demo)
    wanted = {(high.targets.encoder, high.targets.weights), (low.targets.lowlevel_encoder, low.targets.lowlevel_weights)}
    if low.train.lowlevel_contrastive_weight > 0:
        wanted.add((low.targets.teacher_encoder, low.targets.teacher_weights))
    from mindeye.encoders.targets import target_options

    for name, weights in sorted(wanted, key=lambda x: x[0]):
        embed_store(store, name, weights=weights, device=device, progress=demo.progress,
                    **target_options(high, name))
    _done(t0)

    # 3. training
    runs = out / "runs"
    results: dict[str, Any] = {}
    lane = _start_offline_lane(demo, out, store, runs, device)
    low_lane = _start_train_lane(demo, low_cfg_path, runs / "lowlevel", store, out, device,
                                 "the low-level model (voxels -> VAE latent)")
    try:
        _main_lane(demo, out, store, runs, results, device, high_cfg_path, low_cfg_path, ridge_cfg_path, lane,
                   low_lane)
    finally:
        for started in (lane, low_lane):
            if started is not None and started.is_alive():  # the main lane failed or was interrupted
                started.terminate()
                started.join()

    results["wall_seconds"] = time.perf_counter() - t_start
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults: {out / 'results.json'}  ({results['wall_seconds']:.0f} s in all)")
    if (out / "report.html").exists():
        print(f"report:  {out / 'report.html'}")
    return results


def _main_lane(demo: DemoConfig, out: Path, store: Path, runs: Path, results: dict, device: str,
               high_cfg_path: Path, low_cfg_path: Path, ridge_cfg_path: Path | None, lane: Any,
               low_lane: Any = None) -> None:
    from mindeye.evaluation.run_eval import evaluate_retrieval, retrieval_table

    if ridge_cfg_path:
        t0 = _step("train the ridge baseline")
        _train(ridge_cfg_path, runs / "ridge", store, demo)
        _done(t0)
    t0 = _step("train the high-level model (BiMixCo -> SoftCLIP, diffusion prior)")
    _train(high_cfg_path, runs / "highlevel", store, demo)
    if lane is not None:
        lane.highlevel_done.set()  # the second process may now lay out the report's UMAP
    _done(t0)
    if low_lane is None:
        t0 = _step("train the low-level model (voxels -> VAE latent)")
        _train(low_cfg_path, runs / "lowlevel", store, demo)
        _done(t0)

    # 4. retrieval
    from mindeye.data.store import SubjectStore

    eval_cfg = _model_config(high_cfg_path, demo).eval  # the pool actually used: a 60-image store is 60-way
    pool = min(eval_cfg.pool, len(SubjectStore(store).image_indices("test")))
    t0 = _step(f"retrieval evaluation ({pool}-way, both directions, {eval_cfg.draws} draws)")
    retrieval = [evaluate_retrieval(runs / "highlevel", device=device, bottleneck=demo.bottleneck)]
    if ridge_cfg_path:
        retrieval.append(evaluate_retrieval(runs / "ridge", device=device))
    print(retrieval_table(retrieval))
    results["retrieval"] = retrieval
    _done(t0)
    if low_lane is not None:
        _join_train_lane(low_lane, out)

    if lane is None:
        _stage_offline_target(demo, out, store, runs, results, device)
    for stage in (_stage_reconstruct, _stage_ridge_lowlevel, _stage_ceilings, _stage_metrics):
        stage(demo, out, store, runs, results, device)
    if lane is not None:
        _join_offline_lane(lane, demo, out, runs, results, device)
    _stage_report(demo, out, store, runs, results, device)


def _stage_offline_target(demo: DemoConfig, out: Path, store: Path, runs: Path, results: dict, device: str) -> None:
    """The EfficientNet-Lite0 target run beside the stand-in one, and how close each one's errors are."""
    from mindeye.encoders.effnet_lite import available

    if not demo.offline_target_config:
        return
    t0 = _step("high-level model on EfficientNet-Lite0 targets (offline substitute; retrieval only)")
    missing = available()
    if missing is not None:
        log.info(f"   skipped: {missing}")
        results["offline_target"] = {"skipped": missing}
        return
    retrieval = _offline_target_run(demo, store, runs, device)
    _offline_semantics(retrieval, runs, results, device)
    _done(t0)


def _offline_target_run(demo: DemoConfig, store: Path, runs: Path, device: str, progress: bool | None = None) -> dict:
    """Embed the EfficientNet-Lite0 targets, train the second high-level run on them, evaluate its retrieval."""
    from mindeye.encoders.cache import embed_store
    from mindeye.evaluation.run_eval import evaluate_retrieval

    cfg_path = _resolve(demo.offline_target_config, SHIPPED_CONFIG_DIR)
    cfg = _model_config(cfg_path, demo)
    embed_store(store, cfg.targets.encoder, weights=cfg.targets.weights, device=device,
                progress=demo.progress if progress is None else progress)
    _train(cfg_path, runs / "highlevel-effnet", store, demo, progress=progress)
    return evaluate_retrieval(runs / "highlevel-effnet", device=device)


def _offline_semantics(retrieval: dict, runs: Path, results: dict, device: str) -> None:
    """How close each high-level run's retrieval errors are to the true scene (needs both runs trained)."""
    from mindeye.evaluation.scene_semantics import run_error_semantics

    semantics = {name: run_error_semantics(runs / name, device) for name in ("highlevel", "highlevel-effnet")}
    results["offline_target"] = {"retrieval": retrieval, "error_semantics": semantics}
    if semantics["highlevel"] is not None:
        print("   test-set top-1 (brain -> image) and its errors' closeness to the true scene (chance: attribute "
              f"cosine {semantics['highlevel']['chance_attr_cos']:.3f}, same category "
              f"{100 * semantics['highlevel']['chance_same_category']:.1f}%):")
        for s in semantics.values():
            print(f"   {s['encoder']:<22} top-1 {100 * s['top1']:5.1f}%  errors: attribute cosine "
                  f"{s['error_attr_cos']:.3f}, same main-object category {100 * s['error_same_category']:.1f}%")


# -- stages in processes of their own (a CPU with >= 2 cores; each process on demo.cpu_threads threads) --------
def _lanes_enabled(demo: DemoConfig, device: str) -> bool:
    import os

    return demo.parallel_stages and device == "cpu" and (os.cpu_count() or 1) >= 2


def _start_train_lane(demo: DemoConfig, cfg_path: Path, run: Path, store: Path, out: Path, device: str,
                      title: str) -> Any:
    """Train ``run`` in a process of its own (None: lanes are off; the main process trains it later)."""
    import multiprocessing

    if not _lanes_enabled(demo, device):
        return None
    log_file, result = out / f"{run.name}-train.log", out / f"{run.name}-train.json"
    result.unlink(missing_ok=True)
    log.info(f"\n== started in its own process: train {title} (log: {log_file})")
    lane = multiprocessing.get_context("spawn").Process(
        target=_train_lane_main, args=(demo, str(cfg_path), str(run), str(store), str(log_file), str(result)),
        daemon=True)
    lane.start()
    lane.t0, lane.title, lane.log, lane.result = time.perf_counter(), title, log_file, result
    return lane


def _train_lane_main(demo: DemoConfig, cfg_path: str, run: str, store: str, log_path: str, result: str) -> None:
    import contextlib
    import traceback

    from mindeye.utils.files import write_json_atomic

    if demo.cpu_threads:
        torch.set_num_threads(demo.cpu_threads)
    with open(log_path, "w") as log_file, contextlib.redirect_stdout(log_file), contextlib.redirect_stderr(log_file):
        configure_logging()  # this process's epoch lines go to its log file
        try:
            _train(Path(cfg_path), Path(run), Path(store), demo, progress=False)
            write_json_atomic(Path(result), {"done": True})
        except BaseException as exc:  # reported by the main process, which reads this file
            traceback.print_exc()
            write_json_atomic(Path(result), {"error": f"{type(exc).__name__}: {exc}"})


def _join_train_lane(lane: Any, out: Path) -> None:
    t0 = _step(f"train {lane.title} (ran in its own process)")
    lane.join()
    done = json.loads(lane.result.read_text()) if lane.result.exists() else {"error": f"exit code {lane.exitcode}"}
    if "error" in done:
        raise MindEyeError(f"training {lane.title} failed ({done['error']}); its log is {lane.log}. Re-run the "
                           "demo to resume it")
    log.info(f"   (finished {time.perf_counter() - lane.t0:.0f} s after it started, beside the stages above)")
    _done(t0)


# -- the EfficientNet-Lite0 target run in its own process ------------------------------------------------------
LANE_LOG = "offline-target.log"
LANE_RESULT = "offline-target.json"


def _start_offline_lane(demo: DemoConfig, out: Path, store: Path, runs: Path, device: str) -> Any:
    """Start the EfficientNet-Lite0 target run in a second process (None: run it inline later)."""
    import multiprocessing

    from mindeye.encoders.effnet_lite import available

    if not _lanes_enabled(demo, device) or not demo.offline_target_config or available() is not None:
        return None
    (out / LANE_RESULT).unlink(missing_ok=True)
    log.info(f"\n== started in a second process: the EfficientNet-Lite0 target run (log: {out / LANE_LOG})")
    ctx = multiprocessing.get_context("spawn")
    highlevel_done = ctx.Event()
    lane = ctx.Process(target=_offline_lane_main, args=(demo, str(out), str(store), str(runs), device,
                                                        highlevel_done), daemon=True)
    lane.start()
    lane.t0 = time.perf_counter()
    lane.highlevel_done = highlevel_done
    return lane


def _offline_lane_main(demo: DemoConfig, out: str, store: str, runs: str, device: str, highlevel_done: Any) -> None:
    """The second process: its output goes to OUT/offline-target.log, its result to OUT/offline-target.json.
    Then, once the main process has trained the high-level run, the report's UMAP layout (into its cache)."""
    import contextlib
    import traceback

    from mindeye.utils.files import write_json_atomic

    if demo.cpu_threads:
        torch.set_num_threads(demo.cpu_threads)
    with open(Path(out) / LANE_LOG, "w") as log_file, contextlib.redirect_stdout(log_file), \
            contextlib.redirect_stderr(log_file):
        configure_logging()  # this process's epoch lines go to its log file
        try:
            retrieval = _offline_target_run(demo, Path(store), Path(runs), device, progress=False)
            write_json_atomic(Path(out) / LANE_RESULT, {"retrieval": retrieval})
        except BaseException as exc:  # reported by the main process, which reads this file
            traceback.print_exc()
            write_json_atomic(Path(out) / LANE_RESULT, {"error": f"{type(exc).__name__}: {exc}"})
            return
        if demo.report_umap:
            highlevel_done.wait()
            try:
                _umap_ahead(Path(out), Path(store), Path(runs), device)
            except Exception:  # only a head start: the report computes the layout itself
                traceback.print_exc()


REPORT_SAMPLING = {"embed_samples": 100, "seed": 0}  # the demo report's UMAP points (both processes)


def _umap_ahead(out: Path, store: Path, runs: Path, device: str) -> None:
    """The report's UMAP layout of the high-level run, computed into OUT/cache as build_report would."""
    from mindeye.evaluation.report_data import test_embeddings, umap_points
    from mindeye.runs import load_run_model

    cfg, _, model, subject = load_run_model(runs / "highlevel", device, store)
    emb = test_embeddings(model, cfg, subject, device, REPORT_SAMPLING["embed_samples"], REPORT_SAMPLING["seed"])
    umap_points(emb, REPORT_SAMPLING["embed_samples"], REPORT_SAMPLING["seed"], cache_dir=out / "cache")


def _join_offline_lane(lane: Any, demo: DemoConfig, out: Path, runs: Path, results: dict, device: str) -> None:
    t0 = _step("high-level model on EfficientNet-Lite0 targets (offline substitute; retrieval only; "
               "ran in the second process)")
    lane.join()
    path = out / LANE_RESULT
    lane_result = json.loads(path.read_text()) if path.exists() else {"error": f"exit code {lane.exitcode}"}
    if "error" in lane_result:
        raise MindEyeError(f"the EfficientNet-Lite0 target run failed ({lane_result['error']}); its log is "
                           f"{out / LANE_LOG}. Re-run the demo to resume, or --set offline_target_config=null "
                           "to skip it")
    log.info(f"   (finished {time.perf_counter() - lane.t0:.0f} s after it started, beside the stages above)")
    _offline_semantics(lane_result["retrieval"], runs, results, device)
    _done(t0)


def _stage_reconstruct(demo: DemoConfig, out: Path, store: Path, runs: Path, results: dict, device: str) -> None:
    from mindeye.inference.blurry import reconstruct_blurry
    from mindeye.inference.reconstruct import ReconstructSettings, reconstruct_run

    t0 = _step(f"blurry reconstructions (low-level run, first {demo.recon_limit or 'all'} test images)")
    reconstruct_blurry(runs / "lowlevel", out / "recons" / "blurry", store=store, device=device,
                       limit=demo.recon_limit, progress=demo.progress)
    _done(t0)
    t0 = _step(f"reconstructions: prior -> {demo.generator} -> img2img {demo.img2img_strength} -> "
               f"best of {demo.samples}")
    settings = ReconstructSettings(samples=demo.samples, steps=demo.steps, guidance=demo.guidance,
                                   img2img_strength=demo.img2img_strength, seed=demo.seed,
                                   batch_brains=demo.batch_brains)
    reconstruct_run(runs / "highlevel", out / "recons" / "final", demo.generator, settings,
                    lowlevel=out / "recons" / "blurry", weights=demo.generator_weights, store=store,
                    device=device, limit=demo.recon_limit, progress=demo.progress)
    results["reconstructions"] = {"blurry": str(out / "recons" / "blurry"), "final": str(out / "recons" / "final"),
                                  "generator": demo.generator}
    _done(t0)


def _stage_ridge_lowlevel(demo: DemoConfig, out: Path, store: Path, runs: Path, results: dict, device: str) -> None:
    """The low-level ridge baseline (seconds): voxels -> VAE latent in closed form -> blurry images."""
    from mindeye.inference.blurry import reconstruct_blurry

    if not demo.ridge_lowlevel_config:
        return
    t0 = _step("low-level ridge baseline (voxels -> VAE latent, closed form) and its blurry images")
    _train(_resolve(demo.ridge_lowlevel_config, SHIPPED_CONFIG_DIR), runs / "ridge-lowlevel", store, demo)
    reconstruct_blurry(runs / "ridge-lowlevel", out / "recons" / "blurry-ridge", store=store, device=device,
                       limit=demo.recon_limit, progress=demo.progress)
    results.setdefault("reconstructions", {})["blurry_ridge"] = str(out / "recons" / "blurry-ridge")
    _done(t0)


def _stage_ceilings(demo: DemoConfig, out: Path, store: Path, runs: Path, results: dict, device: str) -> None:
    """The ceilings of the blurry and generative rows: the true images' own targets through the same decoder and
    generator (mindeye.inference.ceilings)."""
    from mindeye.inference.ceilings import ceiling_blurry, ceiling_reconstruct

    if not demo.floors:
        return
    t0 = _step("ceilings: the true images' own VAE latents decoded, the generator fed their own embeddings")
    recons = out / "recons"
    ceiling_blurry(runs / "lowlevel", recons / "ceiling-blurry", store=store, device=device, limit=demo.recon_limit,
                   progress=False)
    ceiling_reconstruct(recons / "final", recons / "ceiling-final", blurry_ceiling=recons / "ceiling-blurry",
                        store=store, device=device, weights=demo.generator_weights, samples=demo.ceiling_samples,
                        batch_brains=demo.batch_brains * demo.samples // (demo.ceiling_samples or demo.samples),
                        progress=False)  # as many images per generator batch as the reconstructions
    results.setdefault("reconstructions", {}).update(ceiling_blurry=str(recons / "ceiling-blurry"),
                                                     ceiling_final=str(recons / "ceiling-final"))
    _done(t0)


def _stage_metrics(demo: DemoConfig, out: Path, store: Path, runs: Path, results: dict, device: str) -> None:
    from mindeye.evaluation.recon_eval import evaluate_recon_dirs, write_metrics

    offline = demo.metrics_weights_dir is None and demo.clip_weights is None
    t0 = _step("reconstruction metrics" + (" (PixCorr, SSIM: no metric-network weights configured)" if offline else ""))
    dirs, names = [out / "recons" / "final", out / "recons" / "blurry"], ["MindEye", "MindEye (low-level)"]
    ceilings = [out / "recons" / "ceiling-final", out / "recons" / "ceiling-blurry"]
    if (out / "recons" / "blurry-ridge" / "index.json").exists():  # every blurry table shows the ridge baseline
        dirs, names = [*dirs, out / "recons" / "blurry-ridge"], [*names, "ridge regression (low-level baseline)"]
        ceilings.append(out / "recons" / "ceiling-blurry")  # the same decoder: the same ceiling
    res = evaluate_recon_dirs(
        dirs, names=names,
        store=store, weights_dir=demo.metrics_weights_dir, clip=demo.clip_weights, device=device,
        pixel_only=offline, retrieval=runs / "highlevel" / "eval" / "retrieval.json",
        mean_row=False,  # the rows are two methods, not subjects of one
        offline_net=demo.offline_net and offline, progress=demo.progress,  # the real metric networks win when their weights are given
        floors=demo.floors, floor_seeds=demo.floor_seeds, ceilings=ceilings if demo.floors else None)
    json_path, md_path = write_metrics(res, out / "metrics.json", title="mindeye demo")
    results["metrics"] = str(json_path)
    print(md_path.read_text())
    _done(t0)


def _stage_report(demo: DemoConfig, out: Path, store: Path, runs: Path, results: dict, device: str) -> None:
    from mindeye.evaluation.report import build_report

    t0 = _step("report")
    build_report(runs / "highlevel", lowlevel=runs / "lowlevel",
                 ridge=runs / "ridge" if (runs / "ridge").exists() else None,
                 recons=out / "recons" / "final", blurry=out / "recons" / "blurry",
                 metrics=[out / "metrics.json"], out=out / "report.html", store=store, device=device,
                 umap=demo.report_umap, umap_cache=out / "cache", **REPORT_SAMPLING)
    _done(t0)

