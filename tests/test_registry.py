"""Attention families are plug-ins: the registry declares them, and nothing outside a family's module names it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from attnviz.attention import FAMILY_MODULES, RECORD_KINDS, families, family, family_keys
from attnviz.capture import model_gates
from attnviz.models import build_resnet50
from attnviz.texts import LANGUAGES, locale

PACKAGE = Path(__file__).resolve().parent.parent / "attnviz"
FAMILY_FILES = {PACKAGE / "attention" / f"{name.rsplit('.', 1)[1]}.py" for name in FAMILY_MODULES}


def _names_a_family(node: ast.AST, keys: set[str]) -> bool:
    values = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return any(isinstance(v, ast.Constant) and v.value in keys for v in values)


def family_branches(source: str, keys: set[str]) -> list[int]:
    """Lines that compare with a family's key, index by one or key a dict literal by one."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(_names_a_family(n, keys) for n in [node.left, *node.comparators]):
            lines.append(node.lineno)
        elif isinstance(node, ast.Subscript) and _names_a_family(node.slice, keys):
            lines.append(node.lineno)
        elif isinstance(node, ast.Dict) and any(k is not None and _names_a_family(k, keys) for k in node.keys):
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and any(_names_a_family(a, keys) for a in node.args) \
                and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("get", "family", "_colour"):
            lines.append(node.lineno)
    return lines


def test_the_guard_finds_a_branch_on_a_family_name():
    keys = {"se", "cbam"}
    assert family_branches('if variant == "cbam":\n    pass\n', keys) == [1]
    assert family_branches('x = {"se": 1}\ny = titles["cbam"]\nz = v in ("se", "x")\n', keys) == [1, 2, 3]
    assert family_branches('if variant == other:\n    pass\n', keys) == []


def test_no_module_outside_a_familys_own_branches_on_its_name():
    keys = set(family_keys())
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in FAMILY_FILES:
            continue
        lines = family_branches(path.read_text(encoding="utf-8"), keys)
        if lines:
            found[str(path.relative_to(PACKAGE))] = lines
    assert found == {}


def test_every_family_is_complete_and_builds_what_it_declares():
    for entry in families():
        assert entry.key and entry.title and entry.short and entry.colour.startswith("#")
        for language in LANGUAGES:  # its title is translated in every locale file
            assert f"family_{entry.key}" in locale(language)
        if not entry.has_attention:
            assert entry.gates == () and list(model_gates(build_resnet50(entry.key, num_classes=3))) == []
            continue
        model = build_resnet50(entry.key, num_classes=3)
        gates = model_gates(model)
        assert len(gates) == 16 * len(entry.gates)
        assert {g.spec.name for g in gates} == {g.name for g in entry.gates}
        for gate in entry.gates:
            assert gate.kind in RECORD_KINDS


@pytest.mark.parametrize("key", [f.key for f in families() if f.has_attention])
def test_each_gate_outputs_weights_in_0_1_of_its_kinds_shape(key):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_resnet50(key, num_classes=3).eval()
    outputs = {}
    handles = [g.module.register_forward_hook(lambda m, i, o, g=g: outputs.__setitem__((g.block, g.spec.name), o))
               for g in model_gates(model)]
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    for handle in handles:
        handle.remove()
    for (block, name), out in outputs.items():
        kind = family(key).gate(name).kind
        channels = model.get_submodule(block).conv3.out_channels
        if kind == "channel":
            assert out.reshape(2, -1).shape == (2, channels)
        else:
            assert out.dim() == 4 and out.shape[:2] == (2, 1)
        assert bool(((out > 0) & (out < 1)).all())


def test_unknown_family_is_refused_naming_the_registered_ones():
    with pytest.raises(ValueError, match="registered: resnet50, se, cbam, eca"):
        family("bam")
