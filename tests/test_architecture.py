"""Imports flow one way (docs/architecture.md): a module imports only from its own layer or below,
``training`` and ``inference`` (one layer, side by side) never import each other, and no modules
import each other in a circle. Function-level imports count too: an AST scan of src/mindeye."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "mindeye"

# Bottom to top. Names are module prefixes; within one rank, different groups must not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("mindeye.errors", "mindeye.constants", "mindeye.utils", "mindeye.devices", "mindeye.diskspace", "mindeye.finite",
     "mindeye.safe_load", "mindeye.__version__"),
    ("mindeye.config",),
    ("mindeye.data",),
    ("mindeye.encoders",),
    ("mindeye.models",),
    ("mindeye.runs",),
    ("mindeye.metrics",),
    ("mindeye.training", "mindeye.inference"),
    ("mindeye.pipeline", "mindeye.api"),
    ("mindeye.evaluation",),
    ("mindeye.commands", "mindeye.demo", "mindeye.shared_subject", "mindeye.cli", "mindeye.__main__"),
]
SIBLINGS = {("mindeye.training", "mindeye.inference"), ("mindeye.inference", "mindeye.training")}


def _layer(module: str) -> tuple[int, str]:
    if module == "mindeye":  # the package's __init__: the public API, on top of everything
        return len(LAYERS), module
    best: tuple[int, str] | None = None
    for rank, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best[1])):
                best = (rank, name)
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/test_architecture.py: add it there and to "
                             "docs/architecture.md")
    return best


def _module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, root: Path = SRC) -> set[str]:
    """mindeye modules imported anywhere in ``path`` (module level, functions, TYPE_CHECKING blocks)."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "mindeye")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "mindeye":
                continue
            if target != "mindeye":
                found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)  # `from pkg import x`: x may be a module
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        rank, group = _layer(module)
        for target in sorted(targets):
            t_rank, t_group = _layer(target)
            if t_rank > rank or (group, t_group) in SIBLINGS:
                bad.append(f"{module} (layer {rank}, {group}) imports {target} (layer {t_rank}, {t_group})")
    return bad


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_imports_follow_the_layers():
    assert layer_violations(_graph()) == []


def test_no_import_cycles():
    graph = {m: t for m, t in _graph().items() if m != "mindeye"}
    # A package's __init__ importing its own submodules (mindeye.encoders) is not a cycle worth flagging.
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    assert import_cycles(graph) == []


def test_the_check_catches_back_references():
    graph = {
        "mindeye.training.trainer": {"mindeye.evaluation.retrieval"},  # upward
        "mindeye.inference.database": {"mindeye.training.trainer"},  # sideways
        "mindeye.models.convert": {"mindeye.data.nsd"},  # downward: allowed
        "mindeye.inference.blurry": {"mindeye.inference.reconstruct"},
        "mindeye.inference.reconstruct": {"mindeye.inference.blurry"},
    }
    assert layer_violations(graph) == [
        "mindeye.training.trainer (layer 7, mindeye.training) imports mindeye.evaluation.retrieval "
        "(layer 9, mindeye.evaluation)",
        "mindeye.inference.database (layer 7, mindeye.inference) imports mindeye.training.trainer "
        "(layer 7, mindeye.training)",
    ]
    assert import_cycles(graph) == [["mindeye.inference.blurry", "mindeye.inference.reconstruct"]]


def test_function_level_imports_are_seen(tmp_path):
    pkg = tmp_path / "mindeye" / "models"
    pkg.mkdir(parents=True)
    f = pkg / "x.py"
    f.write_text("def f():\n    from mindeye.evaluation.report import build_report\n    from ..data import nsd\n")
    assert {"mindeye.evaluation.report", "mindeye.data.nsd"} <= _imports(f, tmp_path)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_has_a_layer(path):
    _layer(_module_name(path))


def test_progress_bars_come_from_tqdm_auto():
    """Notebooks get widget progress bars (tqdm.auto), terminals text bars: no module imports plain tqdm."""
    import re

    plain = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
             if re.search(r"^\s*(from tqdm import|import tqdm\b)", p.read_text(), flags=re.M)]
    assert plain == [], plain
