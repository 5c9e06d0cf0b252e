"""Check that every third-party module imported by src/mindeye is declared in pyproject.toml.

    python scripts/check_dependencies.py   # exit 1 and list what is missing

Imports are read with ``ast`` (module-level and inside functions); the standard library and mindeye
itself are skipped; each remaining top-level module is mapped to its distribution with
``importlib.metadata.packages_distributions`` (so ``yaml`` -> PyYAML, ``PIL`` -> Pillow) and looked up
among ``[project] dependencies`` and the optional extras.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(src: Path) -> dict[str, set[str]]:
    """Top-level module name -> files (relative to ``src``) importing it, for absolute imports."""
    found: dict[str, set[str]] = {}
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(src)))
    return found


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_distributions(pyproject: Path) -> dict[str, str]:
    """Normalised distribution name -> where it is declared ('dependencies' or 'extra NAME')."""
    project = tomllib.loads(pyproject.read_text())["project"]
    out = {}
    for where, reqs in [("dependencies", project.get("dependencies", [])),
                        *((f"extra {k}", v) for k, v in project.get("optional-dependencies", {}).items())]:
        for req in reqs:
            out.setdefault(_normalise(re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0]), where)
    return out


# Import name -> distribution for optional packages whose import name differs, used when they are not
# installed here (packages_distributions only knows installed ones).
NOT_INSTALLED_NAMES = {"open_clip": ["open-clip-torch"], "sklearn": ["scikit-learn"], "PIL": ["Pillow"],
                       "yaml": ["PyYAML"]}


def undeclared(root: Path = ROOT) -> list[str]:
    """One line per imported third-party module whose distribution is not declared."""
    dists = packages_distributions()
    declared = declared_distributions(root / "pyproject.toml")
    problems = []
    for module, files in sorted(imported_modules(root / "src" / "mindeye").items()):
        if module in sys.stdlib_module_names or module in {"mindeye", "__future__"}:
            continue
        candidates = [_normalise(d) for d in dists.get(module, NOT_INSTALLED_NAMES.get(module, [module]))]
        if not any(c in declared for c in candidates):
            problems.append(f"{module} (distribution {', '.join(candidates)}) imported by "
                            f"{', '.join(sorted(files)[:3])} is not declared in pyproject.toml")
    return problems


def main() -> int:
    problems = undeclared()
    for line in problems:
        print(line)
    if not problems:
        print("every imported third-party module is declared in pyproject.toml")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
