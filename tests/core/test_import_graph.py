"""Imports go one way: no cycle between the package's files, nor between its packages; and the core
(``spiel.delta``, ``spiel.optim``, ``spiel.selection``) imports with torch alone.

The graph is read from the source with ``ast``: every ``import spiel...`` and ``from spiel... import`` /
relative import, at module level or inside a function (a function-level import still ties the two files
together; it only hides the cycle until the function runs). "Packages" are the subpackages
(``spiel.delta``, ``spiel.training``, ...) with each top-level module (``spiel.model.spiel_model``, ...) its own node.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import REPO

SPIEL = REPO / "spiel"


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under ``root`` (a package directory)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imported(node: ast.AST, module: str, is_package: bool, modules: dict) -> list[str]:
    """The names an import statement of ``module`` refers to (modules where they are modules)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        here = module.split(".") if is_package else module.split(".")[:-1]
        anchor = here[: len(here) - node.level + 1]
        base = ".".join(anchor + ([node.module] if node.module else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]


def import_graph(root: Path = SPIEL) -> dict[str, dict[str, int]]:
    """{module: {imported module of the same package: line}} (imports of a module's own package
    ``__init__`` through a longer name are taken as the deepest module that exists)."""
    modules = _modules(root)
    top = root.name
    graph: dict[str, dict[str, int]] = {m: {} for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for name in _imported(node, module, path.name == "__init__.py", modules):
                if name.split(".")[0] != top:
                    continue
                while name not in modules:
                    name = name.rpartition(".")[0]
                if name != module:
                    graph[module].setdefault(name, node.lineno)
    return graph


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def package_graph(graph: dict[str, dict[str, int]]) -> dict[str, dict[str, str]]:
    """{package: {other package: "module:line -> module" of one import that ties them}}."""
    packages: dict[str, dict[str, str]] = {}
    for module, targets in graph.items():
        for target, line in targets.items():
            a, b = package_of(module), package_of(target)
            if a != b:
                packages.setdefault(a, {}).setdefault(b, f"{module}:{line} -> {target}")
            packages.setdefault(b, {})
    return packages


def find_cycle(graph: dict) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def _describe(cycle: list[str], graph: dict) -> str:
    return "; ".join(f"{a} -> {b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False))


def test_the_graph_sees_module_level_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import B\n")
    (pkg / "a.py").write_text("import os\nfrom pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import x\n\n\nB = 1\n")
    (pkg / "c.py").write_text("from . import a\nimport pkg.sub.b\n")
    graph = import_graph(pkg)
    assert graph == {
        "pkg": {},
        "pkg.a": {"pkg.sub.b": 2},
        "pkg.c": {"pkg.a": 1, "pkg.sub.b": 2},
        "pkg.sub": {"pkg.sub.b": 1},
        "pkg.sub.b": {"pkg.a": 2},
    }
    assert find_cycle(graph) in (["pkg.a", "pkg.sub.b", "pkg.a"], ["pkg.sub.b", "pkg.a", "pkg.sub.b"])
    assert find_cycle(package_graph(graph)) in (
        ["pkg.a", "pkg.sub", "pkg.a"],
        ["pkg.sub", "pkg.a", "pkg.sub"],
    )
    del graph["pkg.sub.b"]["pkg.a"]
    assert find_cycle(graph) is None and find_cycle(package_graph(graph)) is None


def test_spiel_graph_is_read():
    graph = import_graph()
    assert "spiel.delta.layer" in graph["spiel.model.spiel_model"]  # a module-level relative import
    assert (
        "spiel.model.spiel_model" in graph["spiel.training.methods.spiel_methods"]
    )  # a function-level absolute one
    assert len(graph) > 100


def test_no_import_cycle_between_modules():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + _describe(cycle, graph)


def test_no_import_cycle_between_packages():
    packages = package_graph(import_graph())
    cycle = find_cycle(packages)
    assert cycle is None, "packages import each other: " + _describe(cycle, packages)


# The layers, lowest first: a package imports only from its own layer or below (cycles inside a layer are
# caught above). A new package must be placed here.
LAYERS = (
    (
        "spiel",
        "spiel.paths",
        "spiel.dtypes",
        "spiel.testing",  # the version, paths, dtype names, test helpers
        "spiel.extras",
        "spiel.quiet_imports",
        "spiel.json_text",
    ),  # optional packages and their extras; quiet imports offline; JSON from outside
    ("spiel.delta", "spiel.optim", "spiel.selection"),  # the core: torch only
    ("spiel.spiel_config", "spiel.checkpoint"),  # the knobs; the checkpoint format
    ("spiel.io", "spiel.data"),  # loading bases, sources and the Hub; training data
    ("spiel.model",),  # SpielModel
    ("spiel.integrations", "spiel.training", "spiel.eval", "spiel.planning", "spiel.bench"),
    ("spiel.cli",),  # the four commands
)


def upward_imports(packages: dict[str, dict[str, str]], layers=LAYERS) -> list[str]:
    """The imports of ``packages`` (a package graph) that go from a layer to a higher one."""
    level = {package: i for i, layer in enumerate(layers) for package in layer}
    return [
        f"{a} (layer {level[a]}) imports {b} (layer {level[b]}): {where}"
        for a, targets in packages.items()
        for b, where in targets.items()
        if level[b] > level[a]
    ]


def test_an_upward_import_is_found():
    packages = {"spiel.model": {"spiel.delta": "m:1 -> d"}, "spiel.delta": {"spiel.cli": "d:3 -> c"}}
    assert upward_imports(packages) == ["spiel.delta (layer 1) imports spiel.cli (layer 6): d:3 -> c"]
    assert upward_imports({"spiel.cli": {"spiel.delta": "c:1 -> d"}}) == []


def test_every_package_has_a_layer_and_imports_go_down():
    packages = package_graph(import_graph())
    placed = {package for layer in LAYERS for package in layer}
    assert set(packages) <= placed, f"place {sorted(set(packages) - placed)} in LAYERS"
    assert upward_imports(packages) == []


HEAVY = ("hydra", "omegaconf", "datasets", "bitsandbytes", "wandb", "transformers", "peft")


@pytest.mark.parametrize("package", ["spiel.delta", "spiel.optim", "spiel.selection"])
def test_core_imports_with_torch_alone(package):
    """Import the package (all its modules) in a fresh interpreter where the heavy libraries cannot load."""
    code = f"""
import importlib, pkgutil, sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ImportError(f"{{name}} is blocked in this test")
sys.meta_path.insert(0, Blocked())
pkg = importlib.import_module({package!r})
for info in pkgutil.walk_packages(pkg.__path__, {package!r} + "."):
    importlib.import_module(info.name)
print(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r}))
"""
    env = dict(os.environ, PYTHONPATH=str(SPIEL.parent))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
