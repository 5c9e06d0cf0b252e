"""mindeye works after `pip install`: declared dependencies, and the wheel in a fresh venv outside the checkout."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_imported_dependency_is_declared():
    check = _load_script("check_dependencies")
    assert check.undeclared() == []
    found = check.imported_modules(ROOT / "src" / "mindeye")
    assert {"yaml", "torch", "braceexpand", "huggingface_hub"} <= set(found)  # the scan sees real imports


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 240) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    """Build the wheel, install it in a new venv and train a tiny run from a directory outside the repo.

    A venv with its own torch would take minutes and gigabytes, so the new venv reaches this
    environment's third-party packages through a .pth file. Python does not process .pth files inside a
    directory added that way, so the editable mindeye of this environment stays invisible: only the
    wheel's mindeye can be imported (checked).
    """
    src = tmp_path / "src-copy"  # build from a copy: setuptools writes build/ and *.egg-info next to the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
          str(src)], tmp_path, env)
    (wheel,) = (tmp_path / "dist").glob("mindeye-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    py, bindir = venv / "bin" / "python", venv / "bin"
    # Install before the .pth exists, so pip sees an empty environment (and never touches this one).
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-build-isolation",
          str(wheel)], tmp_path, env)
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        tmp_path, env).strip())
    (purelib / "dev-environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    work = tmp_path / "elsewhere"  # not the checkout: nothing may be found relative to the repository
    work.mkdir()
    check = textwrap.dedent(f"""
        import json, mindeye
        from pathlib import Path
        from mindeye.config import load_config, resolve_config_path
        from mindeye.cli import main
        assert Path(mindeye.__file__).resolve().is_relative_to(Path({str(venv)!r}).resolve()), mindeye.__file__
        assert resolve_config_path("mindeye-subj01").is_relative_to(Path(mindeye.__file__).parent)
        assert load_config("ablations/blocks0").model.backbone.n_blocks == 0   # extends across shipped files
        assert load_config("demo", cls=__import__("mindeye.demo").demo.DemoConfig).generator == "demo-latent-diffusion"
        assert main(["simulate", "--scale", "tiny", "--out", "store", "--quiet"]) == 0
        assert main(["embed", "--data", "store", "--encoder", "standin-clip-hidden", "--no-progress"]) == 0
        print(json.dumps({{"mindeye": mindeye.__file__}}))
    """)
    out = _run([str(py), "-c", check], work, env)
    assert str(venv) in out
    _run([str(bindir / "mindeye"), "train", "--config", "demo-highlevel", "--data", "store", "--out", "run",
          "--set", "train.max_steps=2", "--set", "data.val_images=0", "--set", "train.val_every=100",
          "--set", "model.backbone.hidden=64", "--set", "model.prior.depth=1", "--set", "model.prior.heads=2",
          "--set", "model.prior.dim_head=16", "--no-progress"], work, env)
    assert (work / "run" / "model.safetensors").exists()
    assert json.loads((work / "run" / "run.json").read_text())["n_voxels"] == 600


def test_license_file_matches_the_metadata():
    """pyproject's SPDX licence is the LICENSE file's, the wheel ships that file, and the project has URLs."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    text = (root / "LICENSE").read_text()
    assert project["license"] == "MIT" and text.startswith("MIT License")
    assert "Permission is hereby granted, free of charge" in text and 'THE SOFTWARE IS PROVIDED "AS IS"' in text
    assert project["license-files"] == ["LICENSE"]
    urls = project["urls"]
    assert {"Repository", "Issues", "Paper"} <= set(urls) and all(u.startswith("https://") for u in urls.values())
