"""The package's import graph: no circles, not even through imports inside functions, and no
module below the top level imports the top-level package (the API layer)."""

from __future__ import annotations

import ast
from pathlib import Path

import semclip_bench
from semclip_bench._version import __version__

PACKAGE_DIR = Path(semclip_bench.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    """Dotted name -> source file of every module of the package."""
    out = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = ("semclip_bench", *path.relative_to(PACKAGE_DIR).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and "TYPE_CHECKING" in {
        getattr(test, "id", None),
        getattr(test, "attr", None),
    }


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere (module level or inside a function),
    except under ``if TYPE_CHECKING``."""
    modules = _modules()

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        found: set[str] = set()
        nodes = [ast.parse(path.read_text(encoding="utf-8"))]
        while nodes:
            node = nodes.pop()
            if _is_type_checking(node):
                nodes.extend(node.orelse)
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {known(f"{node.module}.{a.name}") or "" for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {known(a.name) or "" for a in node.names}
            nodes.extend(ast.iter_child_nodes(node))
        graph[module] = found - {"", module}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph.get(module, ()):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_the_cycle_finder_finds_a_circle_closed_inside_a_function() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    assert import_cycles(import_graph()) == []


def test_no_module_imports_the_top_level_package() -> None:
    upward = sorted(m for m, targets in import_graph().items() if "semclip_bench" in targets)
    assert upward == [], upward
    assert semclip_bench.__version__ is __version__  # defined once, in _version.py
