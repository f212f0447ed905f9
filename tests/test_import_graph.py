"""No import circle among attribot_rag's modules (issue #18), and each module imports on its own.

The graph holds every ``import`` of one attribot_rag module by another, at module level *and*
inside functions: a deferred import is still a dependency, only a lazy one (the circle this test
was written for, ``render`` <-> ``result``, ran through function-level imports both ways). Only
imports under ``if TYPE_CHECKING:`` are left out: they never run. A package's own submodules
importing each other is not a circle through the package (``batch.job`` -> ``batch.io`` does not
count as ``batch.job`` -> ``batch``): Python initialises the package first in any case.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "attribot_rag"

# Known back edges (importer, imported), each with its way out: without them the graph must have no circle, and
# the test fails once one is gone (so its entry is removed here).
KNOWN_BACK_EDGES: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    names = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]  # `from . import cli`
    if target in MODULES and len(names) < len(node.names):
        names.append(target)
    return names


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        skip = _type_checking_nodes(tree)
        edges: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in MODULES)
            elif isinstance(node, ast.ImportFrom):
                edges.update(_resolve(module, path.name == "__init__.py", node))
        edges.discard(module)
        graph[module] = edges
    return graph


def circles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Every strongly connected component with more than one module (Tarjan), as a sorted tuple."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: set[tuple[str, ...]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.add(tuple(sorted(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_function_level_imports_and_skips_type_checking():
    graph = import_graph()
    assert "attribot_rag.render" in graph["attribot_rag.result"]  # to_html's deferred import
    assert "attribot_rag.result" not in graph["attribot_rag.render"]  # only under TYPE_CHECKING
    assert "attribot_rag.decisions" in graph["attribot_rag.result"]


def test_no_import_circle_among_attribot_rag_modules():
    graph = import_graph()
    gone = {(a, b) for a, b in KNOWN_BACK_EDGES if b not in graph[a]}
    assert not gone, f"these imports are gone: drop them from KNOWN_BACK_EDGES: {sorted(gone)}"
    for a, b in KNOWN_BACK_EDGES:
        graph[a].discard(b)
    found = circles(graph)
    assert not found, f"import circles among attribot_rag modules: {sorted(found)}"


def test_the_circle_finder_finds_circles():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {("a", "b", "c")}
    assert circles({"a": {"b"}, "b": set()}) == set()


def test_each_module_imports_alone():
    """Each module imported first, in a fresh package state (one interpreter: torch is imported once)."""
    script = (
        "import importlib, sys\n"
        f"names = {sorted(MODULES)!r}\n"
        "failed = []\n"
        "for name in names:\n"
        "    for m in [m for m in sys.modules if m == 'attribot_rag' or m.startswith('attribot_rag.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
