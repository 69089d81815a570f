"""The package's import graph has no cycle, counting the imports placed inside functions: a module's
place in the layers is where its imports say it is, not where a deferred import hides it."""

from __future__ import annotations

import ast
from pathlib import Path

import tsae_core

PACKAGE = Path(tsae_core.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, anywhere in its body (`from pkg import submodule`
    counts as the submodule, as Python resolves it), and the sub-packages above each one it imports
    (importing `a.b.c` runs `a/b/__init__.py` first). A package's own modules are not linked to its
    `__init__` this way, nor is any module to the root package's: that `__init__` has begun before them."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, f in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's package
                    base = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                subs = {f"{prefix}.{a.name}" for a in node.names} & mods.keys()
                deps |= subs
                if len(subs) < len(node.names) and prefix in mods:
                    deps.add(prefix)
        parents = {".".join(d.split(".")[:k]) for d in deps for k in range(2, d.count(".") + 1)}
        parents = {p for p in parents & mods.keys() if not name.startswith(p + ".")}
        graph[name] = (deps | parents) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_finder_sees_a_cycle_through_an_import_inside_a_function():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_reads_imports_inside_functions():
    graph = import_graph()
    assert "tsae_core.variants.registry" in graph["tsae_core.config"]  # config validates variants in a function
    assert "tsae_core.sae" in graph["tsae_core.loading"]
    # importing a module of a sub-package runs that sub-package's __init__ first
    assert "tsae_core.evals.autointerp" in graph["tsae_core.config"]


def test_tsae_core_has_no_import_cycle():
    found = cycles(import_graph())
    assert found == [], "import cycles (counting imports inside functions): " + "; ".join(" <-> ".join(c) for c in found)
