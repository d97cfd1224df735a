"""The plugin guide's example (examples/samora-region), installed the way a user installs it: listed, its
recipes validated (a bad grid caught by its own hook), stage 1 and stage 2 trained and evaluated on
synthetic data, and samora-kit's conformance suite run on it with the one line of its tests/ folder.

The package is built and installed into a temporary folder (pip --target) that the commands find on
PYTHONPATH, so the shared environment is left as it was."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from .synthetic import write_decathlon

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "samora-region"
STAGE1, STAGE2 = EXAMPLE / "recipes" / "region_pretrain.toml", EXAMPLE / "recipes" / "region_samora.toml"
SAMORA_KIT = [sys.executable, "-m", "samora_kit.cli"]
EXPERTS = ("image", "patch", "pixel", "region")
# the synthetic Decathlon folder's cases in place of the recipe's hippocampus subjects
CASES = ['data.train.cases=["case_000","case_001"]', 'data.test.cases=["case_002"]']
DATA = "data.root=data/Task04_Hippocampus"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example package installed into a folder of its own, as pip would install it anywhere."""
    tmp = tmp_path_factory.mktemp("region")
    source = shutil.copytree(EXAMPLE, tmp / "src", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = tmp / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                                "--no-index", "--target", str(site), str(source)], capture_output=True, text=True,
                               timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert (site / "samora_region" / "__init__.py").is_file()
    return site


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A working folder with a tiny MSD-like Task04_Hippocampus: 4 labelled cases of 8 slices, and their
    images again as the unlabelled imagesTs that stage 1 reads (32 slices: 2 batches of the recipe's 16)."""
    work = tmp_path_factory.mktemp("work")
    data = write_decathlon(work / "data" / "Task04_Hippocampus", n_cases=4)
    shutil.copytree(data / "imagesTr", data / "imagesTs")
    (work / "stage1_smoke.toml").write_text(
        "# the example's stage 1 with the first run's command-line overrides, as a recipe (paths: from here)\n"
        f'base = "{STAGE1}"\n\n[run]\noutput_dir = "runs/pretrain"\n\n[data]\nroot = "data/Task04_Hippocampus"\n\n'
        "[train]\nmax_steps = 2\n")
    return work


def _env(site: Path) -> dict[str, str]:
    """This environment with the installed example on PYTHONPATH, where its entry point is found."""
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)}


def _cli(argv: list, site: Path, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*SAMORA_KIT, *map(str, argv)], capture_output=True, text=True, env=_env(site), cwd=cwd,
                          timeout=timeout)


def _resolved(stdout: str) -> dict:
    """The TOML that `validate` prints after its first line."""
    first, _, rest = stdout.partition("\n")
    assert "valid" in first
    return tomllib.loads(rest)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def test_installed_example_lists_the_region_pretext_task(site, tmp_path):
    listed = _cli(["plugins", "--json"], site, tmp_path)
    assert listed.returncode == 0, listed.stderr
    listing = json.loads(listed.stdout)
    region = listing["pretext"]["region"]
    assert region["source"] == "region (samora-region 0.1.0)"
    assert region["config"] == ["grid", "hidden_dim", "permutation", "rotations"]
    assert region["summary"].startswith("Region-level pretext")
    assert "_failed" not in listing


def test_example_recipes_validate_and_a_bad_grid_is_caught_by_the_plugins_hook(site, workdir):
    stage1 = _cli(["validate", STAGE1, DATA], site, workdir)
    assert stage1.returncode == 0, stage1.stderr
    assert _resolved(stage1.stdout)["experts"][3]["pretext"] == {"name": "region", "grid": 2, "hidden_dim": 64,
                                                                 "rotations": True, "permutation": True}
    stage2 = _cli(["validate", STAGE2, DATA, *CASES, "pretrain.recipe=stage1_smoke.toml"], site, workdir)
    assert stage2.returncode == 0, stage2.stderr
    assert _resolved(stage2.stdout)["fuser"]["order"] == ["pixel", "region", "patch", "image"]

    bad = _cli(["validate", STAGE1, DATA, "experts.3.pretext.grid=3"], site, workdir)
    assert bad.returncode == 2
    assert ("experts.3.pretext.grid = 3: must divide the backbone's 4-cell token grid (64-px images / 16); "
            "use one of [1, 2, 4]") in _one_line(bad.stderr)
    assert "Traceback" not in bad.stderr


def test_stage1_trains_four_experts_and_stage2_fuses_them_and_evaluates(site, workdir):
    # absolute paths: an override's relative path stays relative in the resolved recipe, while the smoke
    # recipe's resolve from its folder, and reuse compares the resolved settings
    data = f"data.root={workdir / 'data' / 'Task04_Hippocampus'}"
    stage1 = _cli(["run", STAGE1, data, "train.max_steps=2", f"run.output_dir={workdir / 'runs' / 'pretrain'}"],
                  site, workdir)
    assert stage1.returncode == 0, stage1.stdout + stage1.stderr
    out = _one_line(stage1.stdout)
    assert "expert region: region on 32 unlabelled slices, no teacher" in out
    for name in EXPERTS:
        assert f"expert {name}: 2 steps" in out
        assert (workdir / "runs" / "pretrain" / "experts" / f"{name}.safetensors").is_file()

    # stage 2 chains stage 1 through the same settings written as a recipe: the four packs are reused
    stage2 = _cli(["run", STAGE2, data, *CASES, "train.max_steps=2", "run.output_dir=runs/samora",
                   "pretrain.recipe=stage1_smoke.toml"], site, workdir)
    assert stage2.returncode == 0, stage2.stdout + stage2.stderr
    out = _one_line(stage2.stdout)
    for name in EXPERTS:
        assert f"expert {name}: reusing" in out
    assert "trained 2 steps" in out
    run = workdir / "runs" / "samora"
    resolved = (run / "recipe.resolved.toml").read_text()
    assert "region.safetensors" in resolved
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert set(summary) == {"transunet", "strict"} and summary["transunet"]["n_cases"] == 1
    assert (run / "weights.safetensors").is_file()


def test_conformance_suite_passes_on_the_installed_plugin_with_one_line(site, tmp_path):
    tests = EXAMPLE / "tests" / "test_region.py"
    assert "test_conformance = conformance_tests(\"region\")" in tests.read_text()
    shutil.copy(tests, tmp_path / "test_region.py")  # outside the repo: no samora-kit conftest or settings
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "test_region.py"],
                            capture_output=True, text=True, env=_env(site), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
