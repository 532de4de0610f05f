"""The layers import downwards only and no module imports itself back through others.

`model/` (pure PyTorch) imports neither `components/` nor `flows/`; `components/` (stage logic usable
without Prefect) never imports `flows/`; and the module graph of all three has no cycle. Every import
counts, deferred ones inside functions and those under TYPE_CHECKING too: a deferred import hides a
cycle from Python, not from the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("model", "components", "flows")
LAYER = {"model": 0, "components": 1, "flows": 2}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports: `from pkg import x` is pkg.x when that is a module, else pkg."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name inside a module: its module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_deferred_and_relative_imports():
    graph = _graph()
    assert "flows.stages" in graph["flows.runner"]  # `from .stages import ...`
    assert "components.tracking.pyfunc" in graph["flows.runner"]  # inside a function
    assert "flows.runner" in graph["flows.pools"]  # under TYPE_CHECKING and inside a function
    assert "components.tracking" in graph["flows.pools"]  # `from components.tracking import TAG_...`: a name


def test_no_layer_imports_a_layer_above_it():
    upward = [f"{src} -> {dst}" for src, targets in sorted(_graph().items()) for dst in sorted(targets)
              if LAYER[dst.split(".")[0]] > LAYER[src.split(".")[0]]]
    assert not upward, "imports of a higher layer (model < components < flows):\n  " + "\n  ".join(upward)


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n  " + "\n  ".join(" <-> ".join(c) for c in cycles)
