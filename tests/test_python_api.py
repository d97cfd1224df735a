"""docs/python-api.md runs as written."""

import re
from pathlib import Path

from samora_kit.plugins import load_plugins

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def test_python_api_page_runs_as_written(monkeypatch, capsys):
    # a fresh registry, so the page's own registration does not leak into other tests
    monkeypatch.setattr("samora_kit.plugins.default_registry", lambda: load_plugins().registry)
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 4
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    out = capsys.readouterr().out
    assert "torch.Size([4, 64, 64])" in out and "torch.Size([2, 3, 16, 16])" in out
    assert "torch.Size([2, 32, 4, 4]) [16, 8]" in out  # the SAM2 pyramid
    assert "gated_sum" in namespace["registry"].names("fuser")
    assert "\nmy-lab\n" in out  # credited as asked, not to the plugin whose hook ran last
