"""The `mindeye` CLI: `info` round trip, exit codes, and error reporting without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mindeye import __version__
from mindeye.cli import build_parser, main
from mindeye.data.store import FORMAT_VERSION

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def store(tmp_path) -> Path:
    """A store made through the CLI itself: 8 trials, 4 images (one test image seen 3 times)."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "vox.npy", rng.normal(size=(8, 5)).astype(np.float32))
    np.save(tmp_path / "imgs.npy", rng.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8))
    rows = [(0, 1, "train"), (1, 1, "train"), (3, 1, "test"), (2, 1, "val"),
            (3, 2, "test"), (0, 2, "train"), (3, 2, "test"), (1, 2, "train")]
    (tmp_path / "trials.csv").write_text(
        "image_id,session,split\n" + "".join(f"{i},{s},{sp}\n" for i, s, sp in rows))
    out = tmp_path / "subj"
    rc = main(["prepare", "arrays", "--voxels", str(tmp_path / "vox.npy"), "--images", str(tmp_path / "imgs.npy"),
               "--trials", str(tmp_path / "trials.csv"), "--out", str(out), "--image-size", "6",
               "--subject", "9", "--source-name", "toy"])
    assert rc == 0
    return out


def run_subprocess(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "mindeye", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_info_round_trip(store, capsys):
    capsys.readouterr()
    assert main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"subject store  {store}"
    assert "  source       toy  subject 9" in lines
    assert f"  format       v{FORMAT_VERSION} (written by mindeye {__version__})" in lines
    assert "  trials       8" in lines
    assert "  voxels       5 (float16)" in lines
    assert "  images       4 unique, 6x6 RGB uint8" in lines
    assert "  sessions     2 (1-2)" in lines
    assert "  train        4 trials, 2 images (repetitions 2x:2)" in lines
    assert "  val          1 trials, 1 images (repetitions 1x:1)" in lines
    assert "  test         3 trials, 1 images (repetitions 3x:1)" in lines
    assert "  targets      none cached (run mindeye embed)" in lines
    assert lines[-1] == "  checksums    ok"


def test_info_reports_checksum_mismatch(store, capsys):
    data = bytearray((store / "voxels.npy").read_bytes())
    data[-2] ^= 0x55
    (store / "voxels.npy").write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["info", str(store)]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "  checksums    MISMATCH in voxels.npy"
    assert main(["info", "--no-checksums", str(store)]) == 0
    assert "checksums" not in capsys.readouterr().out


def test_info_exit_code_ignores_path_text(tmp_path, store, capsys):
    # A healthy store whose path contains the word must not be reported as corrupted.
    renamed = store.rename(tmp_path / "MISMATCH")
    assert main(["info", str(renamed)]) == 0


def test_info_not_a_store(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mindeye info: error: ")
    assert "is not a mindeye subject store" in err and "mindeye prepare arrays" in err
    (tmp_path / "nothing.partial").mkdir()
    assert main(["info", str(tmp_path / "nothing")]) == 2
    assert "nothing.partial exists: that preparation was interrupted" in capsys.readouterr().err


def test_info_newer_format_in_process(store, capsys):
    meta = json.loads((store / "meta.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 5
    (store / "meta.json").write_text(json.dumps(meta))
    assert main(["info", str(store)]) == 2
    err = capsys.readouterr().err
    assert f"format version {FORMAT_VERSION + 5}, newer" in err and "upgrade mindeye" in err


def test_subprocess_exit_codes_and_no_traceback(store, tmp_path):
    ok = run_subprocess("info", str(store))
    assert ok.returncode == 0, ok.stderr
    assert "checksums    ok" in ok.stdout

    missing = run_subprocess("info", str(tmp_path / "absent"))
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr
    assert missing.stderr.strip().startswith("mindeye info: error:") and "not a mindeye subject store" in missing.stderr

    meta = json.loads((store / "meta.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (store / "meta.json").write_text(json.dumps(meta))
    newer = run_subprocess("info", str(store))
    assert newer.returncode == 2
    assert "Traceback" not in newer.stderr and "upgrade mindeye" in newer.stderr


def test_subprocess_prepare_bad_input(tmp_path):
    np.save(tmp_path / "vox.npy", np.zeros((3, 2), np.float32))
    np.save(tmp_path / "imgs.npy", np.zeros((2, 4, 4, 3), np.uint8))
    (tmp_path / "trials.csv").write_text("image_id,session,split\n0,1,train\n1,1,test\n")
    res = run_subprocess("prepare", "arrays", "--voxels", str(tmp_path / "vox.npy"), "--images",
                         str(tmp_path / "imgs.npy"), "--trials", str(tmp_path / "trials.csv"),
                         "--out", str(tmp_path / "S"))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "has 2 rows but" in res.stderr and "3 voxel rows" in res.stderr
    assert not (tmp_path / "S").exists() and not (tmp_path / "S.partial").exists()


def test_version_help_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"mindeye {__version__}"
    assert main([]) == 0
    assert "info" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "arrays", "--voxels", "x.npy"])  # missing required options
    assert exc.value.code == 2
    assert "required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "arrays", "--voxels", "v", "--images", "i", "--trials", "t", "--out", "o",
              "--voxel-dtype", "float64"])
    assert exc.value.code == 2


def test_parser_lists_commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"prepare", "info"} <= set(sub.choices)
