"""tables/table1.tex fits a NeurIPS text width (5.5 in): compiled with pdflatex when LaTeX is installed."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from mindeye.evaluation.report_tables import latex_table, rounded
from mindeye.evaluation.tables import COLUMNS

PDFLATEX = shutil.which("pdflatex")
DOC = r"""\documentclass{article}
\usepackage{booktabs,graphicx}
\setlength{\textwidth}{5.5in}
\begin{document}
\input{%s}
\end{document}
"""


def _rows() -> list[dict]:
    row = {key: {"value": 0.987654} for key, _, _ in COLUMNS}
    row["alexnet2"] = {"unavailable": "needs AlexNet weights (--weights-dir)"}
    return [{**row, "name": "MindEye high-level (demo, subj01), best of 16 reconstructions"},
            {**row, "name": "ridge baseline"}]


def test_headers_caption_and_footnotes_as_the_paper():
    tex = latex_table(_rows(), caption="Retrieval and reconstruction of subj01")
    assert r"\multicolumn{2}{c}{Retrieval}" in tex and r"Image $\uparrow$ & Brain $\uparrow$ \\" in tex
    assert r"\caption{Retrieval and reconstruction of subj01}" in tex
    assert tex.count(r"--\textsuperscript{a}") == 2 and r"\textsuperscript{a}\,unavailable: needs AlexNet" in tex
    assert r"98.8\%" in tex and ".988" in tex


def test_csv_numbers_are_rounded():
    assert rounded(0.5199999809265137) == "0.52" and rounded(0.30912345) == "0.3091" and rounded(1.0) == "1.0"


def _compile(tmp_path, name: str, tex: str) -> str:
    (tmp_path / f"{name}.tex").write_text(tex)
    (tmp_path / f"doc_{name}.tex").write_text(DOC % name)
    proc = subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", f"doc_{name}.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-2000:]
    return (tmp_path / f"doc_{name}.log").read_text(errors="replace")


@pytest.mark.skipif(PDFLATEX is None, reason="pdflatex is not installed (apt-get install texlive-latex-recommended)")
def test_table_compiles_and_fits_the_text_width(tmp_path):
    tex = latex_table(_rows(), caption="A caption with 50% and under_scores")
    log = _compile(tmp_path, "table1", tex)
    assert "Overfull \\hbox" not in log
    # The check can fail: the same table without its shrink-to-width box overflows 5.5 in.
    wide = re.sub(r"\\resizebox\{.*\}\{!\}\{%", "{%", tex)
    assert wide != tex and "Overfull \\hbox" in _compile(tmp_path, "wide", wide)
