"""The package's shape (scripts/structure.py): no import cycle, no function over 80 lines, and modules over
500 lines only among those still to be split, none of them growing."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Modules still over 500 lines, with their size when the limit came in: each may shrink, none may grow, and no
# other module may pass the limit. Empty since attnviz.ui lent its parts to attnviz.page and attnviz.importers its
# file reading and key mappings to attnviz.checkpoints: no module is over 500 lines.
STILL_TO_SPLIT: dict[str, int] = {}


@pytest.fixture(scope="module")
def structure():
    spec = importlib.util.spec_from_file_location("structure", ROOT / "scripts" / "structure.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["structure"] = module
    spec.loader.exec_module(module)
    return module


def _write(root: Path, name: str, text: str) -> None:
    path = root / "attnviz" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_checker_finds_cycles_long_modules_and_long_functions(structure, tmp_path):
    _write(tmp_path, "__init__.py", "")
    _write(tmp_path, "a.py", "from attnviz.b import x\n")
    _write(tmp_path, "b.py", "from attnviz import c\nx = 1\n")
    _write(tmp_path, "c.py", "import attnviz.a\n")
    # not cycles: an import inside a function, under TYPE_CHECKING, or in a script's entry point
    _write(tmp_path, "d.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import attnviz.e\n"
                             "if __name__ == '__main__':\n    import attnviz.e\n")
    _write(tmp_path, "e.py", "def f():\n    import attnviz.d\n" + "    pass\n" * 80)
    _write(tmp_path, "sub/__init__.py", "from .g import y\n")
    _write(tmp_path, "sub/g.py", "from attnviz.sub import y as z\ny = 2\n" + "\n" * 500)
    found = structure.check(tmp_path)
    assert found["cycles"] == [["attnviz.a", "attnviz.b", "attnviz.c"], ["attnviz.sub", "attnviz.sub.g"]]
    assert found["long_functions"] == {"attnviz.e": {"f": 82}}
    assert found["long_modules"] == {"attnviz.sub.g": 502}


def test_the_package_has_no_import_cycle_and_no_function_over_80_lines(structure):
    found = structure.check(ROOT)
    assert found["cycles"] == []
    assert found["long_functions"] == {}


def test_modules_over_500_lines_are_only_those_still_to_split_and_none_grew(structure):
    found = structure.check(ROOT)["long_modules"]
    assert set(found) <= set(STILL_TO_SPLIT), set(found) - set(STILL_TO_SPLIT)
    grown = {name: lines for name, lines in found.items() if lines > STILL_TO_SPLIT[name]}
    assert not grown, grown
