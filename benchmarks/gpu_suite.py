"""One script for a lent GPU (<= 10 minutes of device time, one H200): the issue-22 evidence in one table.

    # here, once (needs PyPI through pip and a checkout of the authors' repository):
    python benchmarks/gpu_suite.py --prepare-wheels .gpu-carry --authors-src /tmp/authors-nsd
    python benchmarks/gpu_suite.py --out /tmp/suite --dry          # CPU rehearsal: checks the carry, tiny sizes
    # on the GPU machine (device run with carry [".gpu-carry"]):
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_suite.py --out "$OUT"

Steps, in this order, each a subprocess with its own time limit (cut to what is left of ``--budget``; a
step that fails or times out is recorded as such and the suite goes on). The limits are planned to sum
inside the budget and the sum is printed first:

0. setup: the carried wheels are unpacked (zipfile, no pip or registry) into two folders put on
   PYTHONPATH per step: the authors' pinned packages (dalle2-pytorch 1.14.2, diffusers 0.13.0, kornia
   0.6.12, accelerate 0.19.0, ...) for the authors' step, and what our package misses on the GPU image
   (diffusers 0.42.1, webdataset, nibabel, braceexpand) for the rest.
1. hardware probe (hw_probe.py): bf16 GEMM TFLOP/s and device-to-device TB/s of this card, now.
2. HEADLINE, high level: ours vs the authors' own step (authors_step.py), full size, batch 32, the
   same-weights check first, their step with cached targets and as they ran it (kornia + CLIP ViT-L/14
   per batch), interleaved rounds.
3. The same for the low-level step (batch 8; theirs in fp32 as they ran it, with the VAE + ConvNeXt-XL
   teacher per batch, and with cached targets).
4. Levers as rows with the phase breakdown (phase_breakdown.py): trainer defaults, foreach AdamW, data on
   the device, SoftCLIP phase, lean mode (checkpointing + optimizer in backward); MFU and the AdamW floor
   relative to step 1's measurements.
5. The compile levers: torch.compile, and torch.compile with CUDA graphs (reduce-overhead).
6. Reconstruction: best-of-16, 20 UniPC steps, random-init Versatile Diffusion (s per image).
7. The data path alone on the device (data_throughput.py), if time is left.

Not in the 470 s plan (each needs the ~6 min `mindeye simulate --scale nsd` store): the whole
`mindeye train` loop per data path (train_throughput.py --whole-train); run it in a later session.

Writes ``OUT/gpu_suite.md`` (card, date, torch, the plan, each step's table as printed) and
``OUT/bench.jsonl``. Copy the tables into benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CARRY = REPO / ".gpu-carry"
MAX_CARRY_MIB = 64.0
# The authors' pinned versions (their src/environment.yaml at 6b30ea5) of what their step imports.
AUTHORS_WHEELS = [
    "dalle2-pytorch==1.14.2", "diffusers==0.13.0", "kornia==0.6.12", "accelerate==0.19.0", "einops==0.6.1",
    "rotary-embedding-torch==0.2.3", "x-clip==0.12.1", "coca-pytorch==0.0.7", "vector-quantize-pytorch==1.5.15",
    "ema-pytorch==0.2.3", "resize-right==0.0.2", "pydantic==1.10.8", "open-clip-torch==2.20.0",
    "clip-anytorch==2.5.2", "ftfy==6.3.1", "wcwidth==0.2.13", "timm==0.9.2", "pytorch-warmup==0.1.1",
    "webdataset==0.2.48", "braceexpand==0.1.7",
    "setuptools==80.10.2",  # accelerate 0.19 imports pkg_resources (gone from setuptools >= 81)
]
# What our package needs that the GPU image lacks (versions as constraints.txt).
SUITE_WHEELS = ["diffusers==0.42.1", "webdataset==1.0.2", "nibabel==5.4.2", "braceexpand==0.1.7"]
# The GPU image's Python packages (device docs, KINDS.md, read 2026-11-17); Python 3.12, torch 2.11.
GPU_IMAGE = set("""absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite
lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas
nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax
opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision
tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug
wheel wrapt xarray xxhash yarl zipp""".split())
# Imported here but not needed on the image: optional imports, or this host's newer huggingface_hub's own
# dependencies (the image's hub uses httpx, which it has).
NOT_NEEDED_THERE = {"kornia-rs": "kornia's optional try/except import",
                    "httpcore2": "this host's huggingface_hub 2.x", "httpx2": "this host's huggingface_hub 2.x",
                    "truststore": "this host's huggingface_hub 2.x"}
AUTHORS_FILES = ["models.py", "utils.py", "convnext.py", "Train_MindEye.py", "train_autoencoder.py"]

# (key, title, limit seconds on the GPU). The limits sum inside the default budget (printed at start).
PLAN = [
    ("setup", "setup: unpack the carried wheels", 5),
    ("probe", "hardware probe: bf16 GEMM, device-to-device bandwidth", 15),
    ("authors-high", "HEADLINE high level: ours vs the authors' own step (full size, batch 32)", 120),
    ("authors-low", "HEADLINE low level: ours vs the authors' own step (full size, batch 8)", 60),
    ("levers", "levers as rows + phase breakdown (high level, full size, batch 32)", 75),
    ("compile", "compile levers: torch.compile, + CUDA graphs (reduce-overhead)", 100),
    ("recon", "reconstruction: best-of-16, 20 UniPC steps", 60),
    ("data", "data path alone, on the device", 25),
]


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


# ------------------------------------------------------------------------------------------ the carry
def prepare_wheels(carry: Path, authors_src: str | None) -> int:
    """Download the wheels (pip download --no-deps: these exact versions, never torch) and copy the
    authors' five source files; refuse a carry over 64 MiB."""
    py = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "py", "--platform", "any"]
    for sub, wheels in (("authors-wheels", AUTHORS_WHEELS), ("suite-wheels", SUITE_WHEELS)):
        d = carry / sub
        d.mkdir(parents=True, exist_ok=True)
        for spec in wheels:
            name = _norm(spec.split("==")[0])
            if any(_norm(w.name.split("-")[0]) == name for w in d.glob("*.whl")):
                continue
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(d), spec]
            # pure-Python wheels first (any Python 3.12 machine); else the manylinux one for 3.12
            if subprocess.run(cmd + py, capture_output=True).returncode:
                plat = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                        "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                        "--platform", "manylinux2014_x86_64"]
                run = subprocess.run(cmd + plat, capture_output=True, text=True)
                if run.returncode:
                    print(f"error: pip download {spec} failed:\n{run.stderr[-800:]}", file=sys.stderr)
                    return 2
    if authors_src:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from authors_step import authors_src_dir

        src = authors_src_dir(authors_src)
        (carry / "authors-src").mkdir(parents=True, exist_ok=True)
        for f in AUTHORS_FILES:
            shutil.copy2(src / f, carry / "authors-src" / f)
    manifest = write_manifest(carry)
    print(f"carry {carry}: {manifest['total_mib']:.1f} MiB in {len(manifest['files'])} files "
          f"(limit {MAX_CARRY_MIB:.0f} MiB per device call)")
    return 0 if manifest["total_mib"] <= MAX_CARRY_MIB else 2


def write_manifest(carry: Path) -> dict:
    files = {str(p.relative_to(carry)): p.stat().st_size for p in sorted(carry.rglob("*"))
             if p.is_file() and p.name != "manifest.json"}
    manifest = {"files": files, "total_mib": sum(files.values()) / 2**20,
                "authors_wheels": AUTHORS_WHEELS, "suite_wheels": SUITE_WHEELS}
    (carry / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def check_carry(carry: Path) -> list[str]:
    """Problems with the carry: a listed wheel missing, two versions of one, size over the limit."""
    problems = []
    if not carry.is_dir():
        return [f"{carry} does not exist: run --prepare-wheels {carry} --authors-src PATH here first"]
    for sub, wheels in (("authors-wheels", AUTHORS_WHEELS), ("suite-wheels", SUITE_WHEELS)):
        have = {}
        for w in (carry / sub).glob("*.whl"):
            have.setdefault(_norm(w.name.split("-")[0]), []).append(w.name)
        for spec in wheels:
            name, version = spec.split("==")
            got = have.get(_norm(name), [])
            if len(got) != 1 or f"-{version}-" not in got[0]:
                problems.append(f"{sub}: want {spec}, have {got or 'nothing'}")
    for f in AUTHORS_FILES:
        if not (carry / "authors-src" / f).is_file():
            problems.append(f"authors-src/{f} missing (prepare with --authors-src PATH)")
    total = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file()) / 2**20
    if total > MAX_CARRY_MIB:
        problems.append(f"carry is {total:.1f} MiB, over {MAX_CARRY_MIB:.0f} MiB")
    return problems


def unpack(wheels: Path, site: Path) -> None:
    site.mkdir(parents=True, exist_ok=True)
    for w in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(w) as z:
            z.extractall(site)


IMPORT_PROBE = r"""
import importlib, importlib.metadata as md, json, sys
sys.path.insert(0, sys.argv[2] + "/benchmarks")
site = sys.argv[3]
if sys.argv[1] == "authors":
    import authors_step as A
    A.import_authors(A.authors_src_dir(sys.argv[4]))
    import convnext, kornia.augmentation, accelerate
    from transformers import CLIPVisionModelWithProjection
    import mindeye.models.factory, mindeye.models.convert, mindeye.training.trainer
else:
    for m in ("train_throughput", "phase_breakdown", "hw_probe", "reconstruct_throughput", "data_throughput",
              "mindeye.cli", "mindeye.training.trainer", "mindeye.models.factory", "webdataset", "nibabel",
              "braceexpand", "diffusers"):
        importlib.import_module(m)
    from diffusers import UNet2DConditionModel, AutoencoderKL, UniPCMultistepScheduler
pd = md.packages_distributions()
out = {}
for name, mod in list(sys.modules.items()):
    f = str(getattr(mod, "__file__", "") or "")
    if not f or "." in name:
        continue
    for d in pd.get(name, []):
        out[d] = "carried" if f.startswith(site) else "here"
print(json.dumps(out))
"""


def import_check(kind: str, site: Path, authors_src: Path) -> tuple[bool, str]:
    """Import everything a step needs with only ``site`` added; list what must come from the GPU image."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO / "src")])}
    run = subprocess.run([sys.executable, "-W", "ignore", "-c", IMPORT_PROBE, kind, str(REPO), str(site),
                          str(authors_src)], env=env, capture_output=True, text=True, timeout=600)
    if run.returncode:
        return False, f"imports FAILED:\n{run.stderr[-1500:]}"
    dists = json.loads(run.stdout.strip().splitlines()[-1])
    from_image = sorted(d for d, w in dists.items() if w == "here" and _norm(d) != "mindeye")
    missing = [d for d in from_image if _norm(d) not in GPU_IMAGE and _norm(d) not in NOT_NEEDED_THERE]
    excused = [f"{d} ({NOT_NEEDED_THERE[_norm(d)]})" for d in from_image if _norm(d) in NOT_NEEDED_THERE]
    carried = sorted(d for d, w in dists.items() if w == "carried")
    text = (f"imports resolve; carried: {', '.join(carried)}; from the GPU image: {', '.join(from_image)}"
            + (f"; NOT on the GPU image's list: {', '.join(missing)}" if missing else "; all on the GPU image's list")
            + (f"; not needed there: {', '.join(excused)}" if excused else ""))
    return not missing, text


# ----------------------------------------------------------------------------------------------- the run
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="output folder (gpu_suite.md, bench.jsonl)")
    ap.add_argument("--budget", type=float, default=470.0, help="seconds for the whole suite (GPU)")
    ap.add_argument("--dry", action="store_true", help="CPU rehearsal: check the carry and imports, tiny sizes")
    ap.add_argument("--carry", default=str(CARRY), help="the carried folder (wheels, the authors' files)")
    ap.add_argument("--authors-src", default=None, help="the authors' checkout (default: CARRY/authors-src)")
    ap.add_argument("--prepare-wheels", metavar="DIR", default=None,
                    help="download the wheels and copy the authors' files into DIR (here, not on the GPU)")
    ap.add_argument("--limit-scale", type=float, default=None,
                    help="multiply every step's limit (default 1; 6 with --dry: a loaded 2-core CPU is slow)")
    args = ap.parse_args(argv)
    if args.prepare_wheels:
        return prepare_wheels(Path(args.prepare_wheels), args.authors_src)
    if not args.out:
        ap.error("--out is required (or --prepare-wheels DIR)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl, report = out / "bench.jsonl", out / "gpu_suite.md"
    carry = Path(args.carry)
    authors_src = Path(args.authors_src) if args.authors_src else carry / "authors-src"
    scale = args.limit_scale or (6.0 if args.dry else 1.0)
    planned = sum(limit for _, _, limit in PLAN)
    budget = args.budget * (scale if args.dry else 1.0)
    py = sys.executable
    start = time.monotonic()

    import torch

    cuda = torch.cuda.is_available() and not args.dry
    card = torch.cuda.get_device_name(0) if cuda else "CPU (dry run)"
    head = (f"# GPU suite\n\ncard: {card}; date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch "
            f"{torch.__version__}; cuda {torch.version.cuda}; Python {sys.version.split()[0]}; budget "
            f"{budget:.0f} s{' (DRY RUN: tiny sizes on the CPU, numbers meaningless)' if args.dry else ''}\n\n"
            f"planned step limits: " + " + ".join(f"{k} {lim}" for k, _, lim in PLAN)
            + f" = **{planned} s** (x {scale:g} in this run) against a budget of {args.budget:.0f} s\n")
    report.write_text(head)
    print(head, flush=True)
    if planned > args.budget:
        print(f"warning: the planned limits ({planned} s) exceed the budget", file=sys.stderr)

    # 0. setup: the carry
    problems = check_carry(carry)
    tmp = Path(tempfile.mkdtemp(prefix="mindeye-suite-"))
    authors_site, suite_site = tmp / "authors-site", tmp / "suite-site"
    with open(report, "a") as f:
        f.write(f"\n## setup\n\ncarry {carry}: " + ("OK" if not problems else "PROBLEMS: " + "; ".join(problems))
                + "\n")
    if not problems:
        unpack(carry / "authors-wheels", authors_site)
        unpack(carry / "suite-wheels", suite_site)
    if args.dry:  # every import the suite needs resolves with only the carry added
        for kind, site in (("authors", authors_site), ("suite", suite_site)):
            ok, text = import_check(kind, site, authors_src)
            print(f"import check ({kind}): {text}", flush=True)
            with open(report, "a") as f:
                f.write(f"import check ({kind}): {text}\n")
            problems += [] if ok else [f"import check {kind}"]

    def left() -> float:
        return budget - (time.monotonic() - start)

    def step(key: str, cmd: list[str], site: Path, min_needed: float = 10.0) -> bool:
        title, limit = next((t, lim) for k, t, lim in PLAN if k == key)
        timeout = min(limit * scale, left())
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join([str(site), str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
        with open(report, "a") as f:
            f.write(f"\n## {title}\n\n    {shlex.join(cmd)}\n\nlimit {limit * scale:.0f} s\n\n")
        if timeout < min_needed:
            with open(report, "a") as f:
                f.write(f"SKIPPED: {left():.0f} s of the budget left\n")
            print(f"[{time.monotonic() - start:5.0f} s] {title}: SKIPPED", flush=True)
            return False
        t0 = time.monotonic()
        try:
            run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
            text = run.stdout + (f"\n[stderr tail]\n{run.stderr[-2000:]}" if run.returncode else "")
            ok = run.returncode == 0
        except subprocess.TimeoutExpired as exc:
            so = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            text, ok = so + f"\nTIMED OUT after {timeout:.0f} s", False
        used = time.monotonic() - t0
        with open(report, "a") as f:
            f.write(text.rstrip() + f"\n\n({'ok' if ok else 'FAILED'}, {used:.0f} s of {limit * scale:.0f})\n")
        print(f"[{time.monotonic() - start:5.0f} s] {title}: {'ok' if ok else 'FAILED'} ({used:.0f} s)", flush=True)
        return ok

    dev = "cpu" if args.dry else "cuda"
    probe = out / "probe.json"
    step("probe", [py, "benchmarks/hw_probe.py", "--device", dev, "--json", str(probe)], suite_site)
    if args.dry:
        asz = ["--size", "test", "--voxels", "500", "--prior-depth", "1", "--rounds", "2", "--steps", "1",
               "--warmup", "1", "--batch", "4", "--targets", "both"]
        lever = ["--size", "small", "--batch", "8", "--warmup", "1", "--steps", "1", "--phase-steps", "1"]
    else:
        asz = ["--size", "full", "--rounds", "3", "--steps", "5", "--warmup", "3", "--targets", "both"]
        lever = ["--size", "full", "--batch", "32", "--warmup", "3", "--steps", "10", "--phase-steps", "3"]
    a = [py, "benchmarks/authors_step.py", "--authors-src", str(authors_src), "--device", dev, "--json", str(jsonl)]
    step("authors-high", [*a, "--pipeline", "high", *asz], authors_site)
    # the low level's online teacher is full-size whatever --size (SD VAE + ConvNeXt-XL at 512 x 512): a
    # rehearsal on the CPU runs it with cached targets only
    low = [*asz[:-1], "cached"] if args.dry else asz
    step("authors-low", [*a, "--pipeline", "low", *low], authors_site)
    pb = [py, "benchmarks/phase_breakdown.py", "--device", dev, "--probe", str(probe), "--json", str(jsonl), *lever]
    step("levers", [*pb, "--rows", "base,foreach,device,softclip,lean"], suite_site)
    step("compile", [*pb, "--rows", "base,compile" if args.dry else "compile,cudagraphs"], suite_site)
    rec = [py, "benchmarks/reconstruct_throughput.py", "--device", dev]
    step("recon", rec + (["--size", "tiny", "--brains", "1"] if args.dry else
                         ["--size", "full", "--brains", "2", "--batch-brains", "1", "--dtype", "bfloat16"]), suite_site)
    step("data", [py, "benchmarks/data_throughput.py", "--device", dev, "--pipeline", "high", "--batches",
                  "3" if args.dry else "60", "--scratch", str(tmp / "data"), "--json", str(jsonl),
                  *(["--tiny"] if args.dry else [])], suite_site)
    shutil.rmtree(tmp, ignore_errors=True)
    with open(report, "a") as f:
        f.write(f"\nsuite finished in {time.monotonic() - start:.0f} s\n")
    print(f"wrote {report}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
