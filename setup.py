"""Package discovery below the folders pyproject.toml maps to packages ([tool.setuptools] package-dir):
samora_kit/, recipes/ (shipped as samora_kit.recipes) and plugins/ (samora_kit_plugins). pyproject.toml's
own `packages.find` names a package after its folder, so it cannot find these; everything else about the
build is in pyproject.toml."""

import tomllib
from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).resolve().parent

ROOTS = tomllib.loads((HERE / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]  # package -> folder


def discovered_packages() -> list[str]:
    """Each root's package and every folder below its folder (a data folder too, so that setuptools ships
    its package-data without warning that it "would be ignored")."""
    return sorted({found for package, folder in ROOTS.items()
                   for found in [package, *(f"{package}.{sub}" for sub in find_namespace_packages(HERE / folder))]})


setup(packages=discovered_packages())
