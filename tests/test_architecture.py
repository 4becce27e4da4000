"""The package's shape: no module imports another that (directly or through others) imports it,
counting imports inside functions too; only ``if TYPE_CHECKING:`` blocks, which never run, are left out."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gpumlp"


def _runtime_imports(tree: ast.AST, module: str, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``module`` imports anywhere in its code, TYPE_CHECKING blocks excluded."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("gpumlp."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "gpumlp":  # from gpumlp import blas, checkpoint
                found.update(f"gpumlp.{a.name}" for a in node.names)
            elif node.module.startswith("gpumlp."):
                found.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return (found & known) - {module}


def import_graph() -> dict[str, set[str]]:
    modules = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return {m: _runtime_imports(ast.parse(p.read_text()), m, set(modules)) for m, p in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n) :] + [n]
            if n not in state and (cycle := walk(n)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := walk(m)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_the_cycle_finder_finds_cycles_through_lazy_imports():
    tree = ast.parse("def f():\n    from gpumlp import b\n")
    graph = {"gpumlp.a": _runtime_imports(tree, "gpumlp.a", {"gpumlp.b"}), "gpumlp.b": {"gpumlp.c"}}
    graph["gpumlp.c"] = {"gpumlp.a"}
    assert find_cycle(graph) == ["gpumlp.a", "gpumlp.b", "gpumlp.c", "gpumlp.a"]
    typing_only = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gpumlp.b import X\n")
    assert _runtime_imports(typing_only, "gpumlp.a", {"gpumlp.b"}) == set()
