"""The core's layout: no core module imports a plugin, and the core's imports (late ones inside
functions included) form no circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "samora_kit"


def core_imports() -> dict[str, set[str]]:
    """{core module: the core modules it imports anywhere in its body}."""
    graph: dict[str, set[str]] = {}
    for path in CORE.rglob("*.py"):
        parts = path.relative_to(CORE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node.module, node.level, package)
                targets |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        graph[module] = targets
    return graph


def _absolute(module: str | None, level: int, package: str) -> str:
    if level == 0:
        return module or ""
    parts = package.split(".")[: len(package.split(".")) - level + 1]
    return ".".join(parts + ([module] if module else []))


def test_no_core_module_imports_a_plugin():
    offenders = {m: sorted(t for t in targets if t.split(".")[0] in ("samora_kit_plugins", "plugins"))
                 for m, targets in core_imports().items()}
    assert not {m: t for m, t in offenders.items() if t}


def test_the_core_imports_form_no_circle():
    graph = core_imports()
    modules = set(graph)
    edges = {m: {t for t in targets if t in modules and t != m} for m, targets in graph.items()}
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                pytest.fail("import circle: " + " -> ".join(trail[trail.index(target):] + [node, target])
                            if target in trail else f"import circle through {node} -> {target}")
            if target not in state:
                visit(target, [*trail, node])
        state[node] = "done"

    for module in sorted(modules):
        if module not in state:
            visit(module, [])
