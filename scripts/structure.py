"""The package's shape, checked before a stop: modules over 500 lines, functions over 80, import cycles.

    .venv/bin/python scripts/structure.py            # lists what is over; exit 1 when anything is
    .venv/bin/python scripts/structure.py --json     # the same as JSON (tests/test_structure.py reads it)

An import counts when it runs at import time: module level, not under ``if TYPE_CHECKING`` or
``if __name__ == "__main__"``, not inside a function (a function's own import runs when it is called, after both
modules are loaded).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "attnviz"


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package."""
    found = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _runs_on_import(node: ast.If) -> bool:
    """False for ``if TYPE_CHECKING:`` and ``if __name__ == "__main__":`` (a script's own entry point)."""
    test = node.test
    if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    ):
        return False
    return not (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__")


def load_time_imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports while it is being imported."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)  # a submodule imported by name
            elif isinstance(node, ast.If) and _runs_on_import(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(tree.body)
    return {t for t in targets if t in known and t != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(1000, 10 * len(graph)))
    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(found)


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function or method longer than ``limit`` lines, decorators included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qualified = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                    length = child.end_lineno - start + 1
                    if length > limit:
                        out.append((qualified, length))
                visit(child, qualified + ".")

    visit(tree, "")
    return out


def check(root: Path = ROOT) -> dict:
    known = modules(root)
    graph = {name: load_time_imports(name, path, known) for name, path in known.items()}
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in known.items()}
    return {
        "long_modules": {n: s for n, s in sorted(sizes.items()) if s > MAX_MODULE_LINES},
        "long_functions": {n: dict(long_functions(p)) for n, p in known.items() if long_functions(p)},
        "cycles": cycles(graph),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    args = parser.parse_args(argv)
    found = check()
    if args.json:
        print(json.dumps(found, indent=1))
    else:
        for name, lines in found["long_modules"].items():
            print(f"module over {MAX_MODULE_LINES} lines: {name} ({lines})")
        for name, functions in found["long_functions"].items():
            for function, lines in functions.items():
                print(f"function over {MAX_FUNCTION_LINES} lines: {name}.{function} ({lines})")
        for cycle in found["cycles"]:
            print("import cycle: " + " <-> ".join(cycle))
        if not any(found.values()):
            print("structure: no module over 500 lines, no function over 80, no import cycle")
    return 1 if any(found.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
