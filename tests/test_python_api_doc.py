"""docs/python-api.md runs as written: every ```python block, in order, in one namespace -- and then all of
them again in the same namespace and directory, as "Run All" a second time in a notebook does."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_python_api_walkthrough_runs_twice(tmp_path, monkeypatch, capsys):
    blocks = code_blocks(DOC.read_text())
    assert len(blocks) == 8, "update this count when a block is added to docs/python-api.md"
    monkeypatch.chdir(tmp_path)  # the page writes into ./mindeye-walkthrough
    namespace: dict = {"__name__": "walkthrough"}
    for attempt in ("first", "second"):
        for i, block in enumerate(blocks):
            try:
                exec(compile(block, f"{DOC.name} block {i + 1}", "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"{DOC.name} code block {i + 1} failed on the {attempt} run: {exc!r}\n"
                                     f"{block}") from exc
        printed = capsys.readouterr().out
        # The error messages the page promises, in their Python rendering.
        assert "voxels must have shape (n_samples, 600) for this run (or (600,) for one sample), got (8, 500)" in printed
        assert "voxels contain 1 non-finite values (NaN/inf)" in printed
        assert "already holds a training run; pass resume=True to continue it, overwrite=True" in printed
        assert "--resume" not in printed and "--out" not in printed
        # The reprs it prints are short and say what they hold.
        assert "SubjectStore('mindeye-walkthrough/store'" in printed and "Run('mindeye-walkthrough/high'" in printed
        assert "VoxelSplit('test', mode='averaged'" in printed and "Embeddings(n=8" in printed
        assert "array(" not in printed.replace("=array(", "")  # shapes only, never values
        work = tmp_path / "mindeye-walkthrough"
        assert sorted(p.name for p in (work / "recons").iterdir()) == ["00000.png", "00001.png"]
        from PIL import Image

        assert Image.open(work / "grid.png").size[1] == 4 * 96 + 3 * 2  # four rows of 96 px, 2 px apart
