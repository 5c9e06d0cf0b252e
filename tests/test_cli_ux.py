"""The command line as a user meets it (issue 28): config names vs directories, log lines vs progress bars,
-v/-q, a fast --help with every default shown, messages that name the right fix, and `reconstruct` picking
the generator of the run's target space. Tiny stores and models only."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mindeye.cli import _subparsers, build_parser, main
from mindeye.config import SHIPPED_CONFIG_DIR, load_config, looks_like_path, resolve_config_path
from mindeye.errors import MindEyeError

REPO = Path(__file__).resolve().parents[1]
HIGH = str(SHIPPED_CONFIG_DIR / "demo-highlevel.yaml")
TINY = ["model.backbone.hidden=64", "model.backbone.n_blocks=1", "model.projector.hidden=32",
        "model.prior.depth=1", "model.prior.heads=2", "model.prior.dim_head=16", "train.batch_size=32",
        "train.log_every=5", "data.val_images=0", "train.val_every=100"]


def sets(*overrides: str) -> list[str]:
    return [a for o in (*TINY, *overrides) for a in ("--set", o)]


def cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# -- 1. names and directories -----------------------------------------------------------------------------------
def test_a_directory_named_like_a_shipped_config_does_not_hide_it(tmp_path, monkeypatch):
    from mindeye.demo import load_demo_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # `mindeye demo --out demo`
    (tmp_path / "demo-ridge").mkdir()  # `mindeye train --config demo-ridge --out demo-ridge`
    (tmp_path / "demo-ridge" / "config.yaml").write_text("model:\n  kind: mindeye\n")
    assert resolve_config_path("demo") == SHIPPED_CONFIG_DIR / "demo.yaml"
    assert load_config("demo-ridge").model.kind == "ridge"  # the shipped config, not the run directory
    demo, base = load_demo_config("demo")
    assert base == SHIPPED_CONFIG_DIR.resolve() and demo.generator == "demo-latent-diffusion"
    # an explicit path means the path: a directory there is an error, not a silent fallback
    with pytest.raises(MindEyeError, match=r"config \./demo is a directory"):
        resolve_config_path("./demo")


def test_paths_mean_files_and_bare_names_mean_shipped_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ridge.yaml").write_text("extends: ridge\nseed: 7\n")  # a user's file extending the shipped one
    (tmp_path / "ridge").write_text("seed: 9\n")  # a file without suffix, named like a shipped config
    assert load_config("ridge.yaml").seed == 7  # .yaml suffix: the file here
    assert load_config("ridge").seed == load_config(SHIPPED_CONFIG_DIR / "ridge.yaml").seed != 9  # bare: shipped
    assert load_config("./ridge").seed == 9  # explicit ./: the file
    assert load_config("ablations/blocks0").model.backbone.n_blocks == 0  # a shipped name with a separator
    assert [looks_like_path(x) for x in ("demo", "a/b", "x.yml", "X.YAML", "./demo")] == [False, True, True, True, True]
    # inside a config, a bare name next to it wins (a user's copy of the shipped configs)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "ridge.yaml").write_text("seed: 11\n")
    (tmp_path / "mine" / "run.yaml").write_text("extends: ridge\n")
    assert load_config("mine/run.yaml").seed == 11
    with pytest.raises(MindEyeError, match="not found: it is neither a file nor a shipped config name"):
        load_config("no-such-config")


# -- 2. logs: one line per epoch always, bars only on a terminal, -v/-q ------------------------------------------
@pytest.fixture(scope="module")
def trained(tiny_store, tmp_path_factory) -> dict:
    """A 2-epoch tiny high-level run trained through the CLI, with what it wrote to stdout and stderr."""
    run = tmp_path_factory.mktemp("ux") / "high"
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["train", "--config", HIGH, "--data", str(tiny_store), "--out", str(run), "--no-progress",
                   *sets("train.epochs=2")])
    return {"rc": rc, "run": run, "out": out.getvalue(), "err": err.getvalue()}


def test_no_progress_keeps_one_line_per_epoch(trained):
    assert trained["rc"] == 0, trained["err"]
    lines = [ln for ln in trained["err"].splitlines() if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1/2", "epoch 2/2"], trained["err"]
    assert all(re.search(r"loss \d+\.\d{4}", ln) and ln.endswith(" s") for ln in lines), lines
    assert "\r" not in trained["err"]  # no progress bar
    # the lines agree with what the run recorded: the last logged loss of each epoch
    records = [json.loads(x) for x in (trained["run"] / "metrics.jsonl").read_text().splitlines()]
    last = {r["epoch"]: r["loss"] for r in records if "loss" in r}
    assert [float(re.search(r"loss (\S+),", ln).group(1)) for ln in lines] == pytest.approx(
        [last[1], last[2]], abs=6e-5)
    assert json.loads(trained["out"][trained["out"].index("{"):])["epochs"] == 2  # the result stays on stdout


def test_quiet_hides_the_lines_before_or_after_the_command(tiny_store, tmp_path, capsys):
    for where, argv in (("after", ["train", "-q"]), ("before", ["-q", "train"])):
        rc, out, err = cli(capsys, *argv, "--config", HIGH, "--data", tiny_store, "--out", tmp_path / where,
                           *sets("train.epochs=1", "train.max_steps=2"))
        assert rc == 0, err
        assert "epoch 1/1" not in err and "\r" not in err, (where, err)
        assert '"epochs": 1' in out  # results are not log lines


def test_without_a_terminal_there_are_no_bars_but_the_lines_stay(tiny_store, tmp_path, capsys):
    rc, _, err = cli(capsys, "train", "--config", HIGH, "--data", tiny_store, "--out", tmp_path / "r",
                     *sets("train.epochs=1", "train.max_steps=2"))  # no --no-progress; stderr is captured
    assert rc == 0, err
    assert "epoch 1/1: loss" in err and "\r" not in err and "step/s" not in err


def test_every_long_command_takes_no_progress_and_every_command_verbose_quiet():
    parser = build_parser()
    long = [["demo"], ["demo-cohort"], ["report"], ["evaluate", "retrieval"], ["evaluate", "recon"],
            ["import-checkpoint"], ["train"], ["simulate"], ["embed"], ["reconstruct"], ["reconstruct-blurry"],
            ["retrieve"], ["index", "build"], ["prepare", "arrays"], ["prepare", "nsd"], ["prepare", "webdataset"]]
    by_prog = {p.prog: p for p in _subparsers(parser)}
    for words in long:
        p = by_prog["mindeye " + " ".join(words)]
        assert any("--no-progress" in a.option_strings for a in p._actions), words
    for p in by_prog.values():
        flags = {s for a in p._actions for s in a.option_strings}
        assert {"-v", "--verbose", "-q", "--quiet"} <= flags, p.prog
    args = parser.parse_args(["-v", "-v", "simulate", "--out", "x"])
    assert args.verbose == 2 and args.quiet is False
    args = parser.parse_args(["simulate", "--out", "x", "--quiet"])
    assert args.quiet is True and args.verbose == 0


def test_logging_levels_and_no_second_handler():
    import logging

    from mindeye.utils.logs import configure_logging, level_for

    assert [level_for(0, False), level_for(1, False), level_for(0, True)] == [logging.INFO, logging.DEBUG,
                                                                               logging.WARNING]
    logger = configure_logging()
    configure_logging(quiet=True)
    assert len([h for h in logger.handlers if type(h).__name__ == "_StderrHandler"]) == 1
    assert logger.level == logging.WARNING
    configure_logging()


# -- 3. fast --help ------------------------------------------------------------------------------------------------
def test_building_the_parser_imports_no_heavy_module():
    code = ("import sys, mindeye.cli as c\nc.build_parser()\n"
            "print([m for m in ('torch', 'torchvision', 'diffusers', 'transformers', 'nilearn', 'faiss', 'scipy',"
            " 'matplotlib', 'mindeye.data.simulate', 'mindeye.encoders.registry') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


def test_the_encoder_and_scale_lists_in_help_match_the_real_ones():
    from mindeye.data.simulate import SCALES as REAL_SCALES
    from mindeye.encoders.catalog import ENCODER_SUMMARIES
    from mindeye.encoders.registry import ENCODERS

    assert {n: s.summary for n, s in ENCODERS.items()} == ENCODER_SUMMARIES
    from mindeye.data.scales import SCALES

    assert SCALES is REAL_SCALES


# -- 4. every option's default in --help ---------------------------------------------------------------------------
def test_help_shows_every_options_default(capsys):
    parser = build_parser()
    missing = []
    for p in [parser, *_subparsers(parser)]:
        formatter = p._get_formatter()
        p.format_help()  # renders (a stray % in a help text would raise here)
        for a in p._actions:
            if a.option_strings and a.nargs != 0 and not a.required and a.default is not argparse.SUPPRESS:
                if "default" not in formatter._get_help_string(a).lower():
                    missing.append(f"{p.prog} {a.option_strings[0]}")
    assert missing == []
    with pytest.raises(SystemExit):
        main(["reconstruct", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--batch-brains" in text and "(default: 1)" in text and "(default: auto)" in text  # appended defaults
    assert "(default 3.5" in text and "(default: 3.5)" not in text  # already said: not twice


# -- 5. messages -----------------------------------------------------------------------------------------------------
def test_download_hints_use_hf_download():
    files = [*REPO.joinpath("src").rglob("*.py"), REPO / "README.md", *REPO.joinpath("docs").rglob("*.md")]
    assert [str(f) for f in files if "huggingface-cli" in f.read_text()] == []
    hints = 0
    for f in files:
        text = re.sub(r'"\s*\n\s*"', "", f.read_text())  # join implicitly concatenated string literals
        for command in re.findall(r"`hf download [^`]*`", text):
            hints += 1
            # one pattern per --include: a second bare pattern would be read as a file name
            before = re.findall(r"(\S+) '[^']*'", command)
            assert set(before) <= {"--include"}, command
    assert hints >= 5


def test_readme_nsd_one_liner_names_the_store():
    line = next(ln for ln in (REPO / "README.md").read_text().splitlines() if "demo --config demo-nsd-subj01" in ln)
    assert "--set store=" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_demo_device_error_names_set_device(tmp_path, capsys):
    rc, _, err = cli(capsys, "demo", "--out", tmp_path / "d", "--set", "device=cuda")
    assert rc == 2 and "--set device=cpu" in err and "--device cpu" not in err, err
    assert not (tmp_path / "d").exists()  # refused before anything was created


def test_demo_missing_store_names_set_store(tmp_path, capsys):
    rc, _, err = cli(capsys, "demo", "--out", tmp_path / "d", "--set", f"store={tmp_path / 'nothing'}",
                     "--set", "device=cpu")
    assert rc == 2 and "is not a subject store" in err and "--set store=" in err, err


def test_train_missing_weights_names_the_config_key(tiny_store, tmp_path, capsys):
    rc, _, err = cli(capsys, "train", "--config", "ridge", "--data", tiny_store, "--out", tmp_path / "r",
                     "--set", f"targets.weights={tmp_path / 'no-clip-here'}")
    assert rc == 2, err
    assert "--set targets.weights=/path/to/local/copy" in err and "pass --weights" not in err, err


@pytest.fixture(scope="module")
def ridge_run(tiny_store, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ux") / "ridge"
    assert main(["train", "--config", "demo-ridge", "--data", str(tiny_store), "--out", str(run), "-q"]) == 0
    return run


def test_reconstruct_of_a_ridge_run_says_what_it_is(ridge_run, tmp_path, capsys):
    rc, _, err = cli(capsys, "reconstruct", "--run", ridge_run, "--out", tmp_path / "rec")
    assert rc == 2 and "is a 'ridge' run" in err and "reconstruct-blurry" in err, err
    assert "prior.enabled=True" not in err


# -- 6. reconstruct picks the generator of the run's target space --------------------------------------------------
def test_generator_for_matches_encoder_and_shape():
    from mindeye.inference.generators import GENERATORS, generator_for

    for name, spec in GENERATORS.items():
        assert generator_for(spec.condition_encoder, spec.condition_shape) == name
    assert generator_for("clip-vit-l14-hidden", (1, 768)) == "sd-image-variations"  # shape decides when needed
    assert generator_for("clip-vit-l14-hidden", (5, 7)) is None


def test_reconstruct_names_the_matching_generator(trained, tmp_path, capsys):
    rc, _, err = cli(capsys, "reconstruct", "--run", trained["run"], "--generator", "versatile-diffusion",
                     "--out", tmp_path / "rec")
    assert rc == 2 and "use --generator demo-latent-diffusion" in err, err
    rc, out, err = cli(capsys, "reconstruct", "--run", trained["run"], "--out", tmp_path / "rec2", "--limit", "1",
                       "--samples", "1", "--steps", "2", "--prior-steps", "2", "--no-progress")
    assert rc == 0, err
    assert json.loads(out.strip().splitlines()[-1])["generator"] == "demo-latent-diffusion"
    index = json.loads((tmp_path / "rec2" / "index.json").read_text())
    assert index["config"]["generator"] == "demo-latent-diffusion" and len(index["images"]) == 1


def test_a_disabled_bar_becomes_log_lines(capsys):
    from mindeye.utils.logs import configure_logging, progress_bar

    configure_logging()
    bar = progress_bar(total=10, initial=2, desc="embed x", unit="img", disable=True, interval=0.0)
    bar.update(3)  # interval 0: a line at every update
    bar.set_postfix_str("session 2")
    bar.close()
    bar.close()  # once only
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("embed x: 5/10 img (50%), ") and " img/s, ~" in lines[0] and "left" in lines[0]
    assert lines[1].startswith("embed x: 5/10 img (50%)") and lines[1].endswith("[session 2]")
    assert list(progress_bar(range(3), desc="d", disable=True, interval=1e9)) == [0, 1, 2]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("d: 3/3 it (100%), "), lines  # the end of the work only
    quiet = progress_bar(total=4, initial=4, desc="done already", disable=True, interval=0.0)
    quiet.close()  # nothing was done: nothing to say
    assert capsys.readouterr().err == ""
