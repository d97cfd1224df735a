"""docs/plugins.md runs as written: its Python blocks, executed in order as the module the entry point
`region` names, make a plugin that loads and passes the conformance suite; its walk-through's code is
examples/samora-region's module, statement for statement."""

import ast
import re
import types
from pathlib import Path

from samora_kit import testing
from samora_kit.plugins import load_plugins

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "plugins.md"
EXAMPLE = REPO / "examples" / "samora-region"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_plugin_guide_runs_as_written(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(EXAMPLE))  # the package's folder, where the guide imports samora_region
    module = types.ModuleType("region")  # the page's code, as the module of the entry point `region`
    # `conformance_tests("region")` finds it as if the package were installed
    monkeypatch.setattr(testing, "default_plugins", lambda: load_plugins(extra=[module]))
    blocks = _python_blocks(DOC.read_text())
    assert len(blocks) >= 7
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), module.__dict__)
    assert ("experts.0.pretext.grid = 3: must divide the backbone's 4-cell token grid (64-px images / 16); "
            "use one of [1, 2, 4]") in capsys.readouterr().out
    loaded = load_plugins(extra=[module])
    assert not loaded.failures, loaded.failures
    spec = loaded.registry.get("pretext", "region")
    assert spec.source == "region (<registered in process>)"
    testing.check_component(spec, loaded.registry)


def _statements(source: str) -> dict[str, str]:
    """Each top-level import, definition and assignment of `source`, by name (docstrings and comments aside)."""
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found[node.name] = ast.dump(node)
        elif isinstance(node, ast.Assign):
            found[", ".join(ast.unparse(t) for t in node.targets)] = ast.dump(node)
        elif not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):  # the module docstring
            found[ast.unparse(node)] = ast.dump(node)
    return found


def test_the_guides_walk_through_is_the_example_packages_module():
    text = DOC.read_text()
    walk_through = text[text.index("### Config, task, factory"):text.index("### Test it")]
    guide = _statements("\n".join(_python_blocks(walk_through)))
    example = _statements((EXAMPLE / "samora_region" / "__init__.py").read_text())
    assert sorted(guide) == sorted(example)
    assert [name for name in guide if guide[name] != example[name]] == []
