"""The scripts use spiel as installed (``make setup`` installs it editable): none edits ``sys.path``, and none
imports a private (underscore) name from spiel, which would tie it to internals that move without notice."""

from __future__ import annotations

import ast

import pytest

from tests.helpers.paths import SCRIPTS

SCRIPT_FILES = sorted(SCRIPTS.glob("*.py"))


def _path_edits(tree: ast.AST) -> list[int]:
    """Lines that call sys.path.insert/append/extend or assign to sys.path."""
    lines = []
    for node in ast.walk(tree):
        target = (
            node.func.value if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) else None
        )
        if isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            target = next((t for t in targets if ast.unparse(t) == "sys.path"), None)
        if target is not None and ast.unparse(target) == "sys.path":
            lines.append(node.lineno)
    return sorted(lines)


def _private_spiel_imports(tree: ast.AST) -> list[str]:
    return [
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("spiel")
        for alias in node.names
        if alias.name.startswith("_")
    ]


@pytest.mark.parametrize("path", SCRIPT_FILES, ids=[p.name for p in SCRIPT_FILES])
def test_script_neither_edits_sys_path_nor_imports_private_names(path):
    tree = ast.parse(path.read_text())
    assert not _path_edits(tree), f"{path.name} edits sys.path at lines {_path_edits(tree)}"
    assert not _private_spiel_imports(tree), f"{path.name} imports private {_private_spiel_imports(tree)}"


def test_the_checks_find_what_they_look_for():
    tree = ast.parse("import sys\nsys.path.insert(0, 'x')\nsys.path += ['y']\nfrom spiel.a import _b, c\n")
    assert _path_edits(tree) == [2, 3]
    assert _private_spiel_imports(tree) == ["spiel.a._b"]
