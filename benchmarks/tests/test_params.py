"""The parameter counts the docs print beside the paper's (samora_benchmarks.params)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_parameter_counts_of_vit_b_printed_next_to_the_paper():
    out = subprocess.run([sys.executable, "-m", "samora_benchmarks.params", str(REPO / "recipes" / "samed.toml"),
                          str(REPO / "recipes" / "samora.toml")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0].rsplit("/", 1)[-1]: line.split() for line in out.stdout.splitlines()[1:]}
    samed, samora = float(rows["samed.toml"][1]), float(rows["samora.toml"][1])
    assert rows["samora.toml"][-1] == "118.5" and rows["samed.toml"][-1] == "108.8"
    assert 8.5 < samora - samed < 11.0  # the paper's difference is 9.7 M
