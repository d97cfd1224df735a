"""The core's layout: no core module imports a plugin, the core's imports (late ones inside
functions included) form no circle, loading the plugins imports no model library, and what lives outside
the core (plugins, examples, the benchmarks package) imports only its public API (samora_kit.api)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "samora_kit"
# what a component's build imports (seconds each, with torchvision and torch._dynamo behind segment_anything);
# `samora-kit --help`, `plugins` and `validate` before the backbone is built must import none of them
HEAVY = ("monai", "segment_anything", "sam2", "timm", "torchvision", "nibabel", "scipy", "matplotlib", "tensorboard",
         "h5py", "omegaconf", "sklearn")


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


REPO = CORE.parent
PUBLIC = {"samora_kit.api", "samora_kit.testing"}  # what code outside the core may import
# outside the core: the built-in plugins, the example plugin and the benchmarks package (the evidence)
OUTSIDE = [*sorted((REPO / "plugins").rglob("*.py")), *sorted((REPO / "examples").rglob("*.py")),
           *sorted((REPO / "benchmarks" / "samora_benchmarks").rglob("*.py"))]


def private_core_imports(path: Path) -> list[str]:
    """'line: module' for each import of a core module other than the public ones in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                   else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
        found += [f"{node.lineno}: {m}" for m in modules
                  if (m == "samora_kit" or m.startswith("samora_kit.")) and m not in PUBLIC]
    return found


def test_plugins_examples_and_the_evidence_harness_import_only_the_public_api():
    offenders = {str(path.relative_to(REPO)): private for path in OUTSIDE if (private := private_core_imports(path))}
    assert not offenders, f"import these from samora_kit.api instead: {offenders}"


def test_the_layout_check_sees_a_private_import(tmp_path):
    module = tmp_path / "plugin.py"
    module.write_text("from samora_kit.api import SamoraError\n\ndef f():\n    from samora_kit.train.loop import train\n")
    assert private_core_imports(module) == ["4: samora_kit.train.loop"]


def test_every_public_name_resolves_and_the_api_module_loads_no_torch():
    code = ("import sys, samora_kit.api as api; assert 'torch' not in sys.modules, 'torch'; "
            "missing = [n for n in api.__all__ if getattr(api, n, None) is None]; print(len(api.__all__), missing)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    count, missing = done.stdout.split(" ", 1)
    assert int(count) > 50 and missing.strip() == "[]"


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



def test_loading_every_plugin_imports_no_model_library():
    # a fresh interpreter: this test session has imported them all long ago
    script = ("import json, sys\n"
              "from samora_kit.cli import main\n"
              "import samora_kit.checks, samora_kit.recipe, samora_kit.train.plan  # what validate imports\n"
              "main(['plugins', '--json'])\n"
              "from samora_kit.plugins import default_plugins\n"
              "loaded = default_plugins()\n"
              "print(json.dumps({'plugins': sorted(loaded.sources), 'failed': [f.name for f in loaded.failures],\n"
              "                  'modules': sorted({m.split('.')[0] for m in sys.modules})}))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=CORE.parent)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert not found["failed"] and {"sam", "samed", "hsam", "unet", "datasets", "pretext"} <= set(found["plugins"])
    assert not set(HEAVY) & set(found["modules"]), "imported while loading the plugins"
