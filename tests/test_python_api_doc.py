"""docs/python-api.md runs as written: every ```python block, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_python_api_walkthrough_runs(tmp_path, monkeypatch, capsys):
    blocks = code_blocks(DOC.read_text())
    assert len(blocks) == 8, "update this count when a block is added to docs/python-api.md"
    monkeypatch.chdir(tmp_path)  # the page writes into ./mindeye-walkthrough
    namespace: dict = {"__name__": "walkthrough"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{DOC.name} block {i + 1}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"{DOC.name} code block {i + 1} failed: {exc!r}\n{block}") from exc
    printed = capsys.readouterr().out
    # The error messages the page promises.
    assert "voxels must have shape (n_samples, 600) for this run (or (600,) for one sample), got (8, 500)" in printed
    assert "voxels contain 1 non-finite values (NaN/inf)" in printed
    assert sorted(p.name for p in (tmp_path / "mindeye-walkthrough" / "recons").iterdir()) == ["00000.png",
                                                                                              "00001.png"]
