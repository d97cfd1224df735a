"""The wheel holds every package, recipe and data file of the folders pyproject.toml maps to packages,
and every module its entry points name: built from a copy of the checkout as `pip wheel` builds it, then
listed. (.ci/wheel installs such a wheel into a fresh environment and runs it from outside the checkout.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PACKAGE_DIRS = PYPROJECT["tool"]["setuptools"]["package-dir"]  # package -> folder of the checkout
LEFT_OUT = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def _source_files(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in set(PACKAGE_DIRS.values()):
        shutil.copytree(REPO / folder, source / folder, ignore=LEFT_OUT)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "--no-index", "--wheel-dir", str(tmp / "dist"), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    assert "would be ignored" not in built.stderr, built.stderr  # setuptools: a folder left out of `packages`
    (path,) = (tmp / "dist").glob("samora_kit-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_holds_every_file_of_every_mapped_folder(wheel):
    names = set(wheel.namelist())
    missing = [f"{folder}/{file.as_posix()}" for package, folder in PACKAGE_DIRS.items()
               for file in _source_files(REPO / folder) if f"{package.replace('.', '/')}/{file.as_posix()}" not in names]
    assert not missing, f"not in the wheel: {missing}"
    assert "samora_kit/flows/segment.py" in names and "samora_kit/recipes/fewshot/hippocampus_samora.toml" in names


def test_the_wheel_holds_every_module_its_entry_points_name(wheel):
    names = set(wheel.namelist())
    modules = [*PYPROJECT["project"]["entry-points"]["samora_kit"].values(),
               *(target.split(":")[0] for target in PYPROJECT["project"]["scripts"].values())]
    absent = [m for m in modules if not {f"{m.replace('.', '/')}.py", f"{m.replace('.', '/')}/__init__.py"} & names]
    assert not absent, f"entry points name modules the wheel lacks: {absent}"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "[samora_kit]" in wheel.read(entry_points).decode()


def test_the_wheel_ships_the_product_without_the_benchmarks_evidence(wheel):
    """The miniature world's datasets and recipes and the LiteMedSAM harness's recipes live in the benchmarks
    package (benchmarks/), not in the kit a user installs."""
    names = set(wheel.namelist())
    assert "samora_kit/api.py" in names and "samora_kit/recipes/quickstart.toml" in names
    evidence = sorted(n for n in names if n.startswith(("samora_benchmarks/", "samora_kit/recipes/world/",
                                                         "samora_kit/recipes/litemedsam/"))
                      or n.endswith(("datasets/scenes.py", "datasets/kvasir_seg.py", "datasets/instances.py")))
    assert not evidence, f"evidence shipped in the product's wheel: {evidence}"
