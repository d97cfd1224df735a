"""The benchmarks package's recipes (world/, litemedsam/) validate where they lie, but for the files a clone
lacks until a build makes them (mini-SAM, the mini-teachers, LiteMedSAM's imported weights, all in runs/),
as the kit's own recipes do (tests/test_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cli import NOT_SHIPPED, _cli, _resolved

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "benchmarks" / "recipes").rglob("*.toml"))


def test_the_package_has_the_world_and_litemedsam_recipes():
    names = {p.relative_to(REPO / "benchmarks" / "recipes").as_posix() for p in RECIPES}
    assert {"world/source_mae.toml", "world/hippocampus_samora.toml", "litemedsam/hippocampus_samora.toml",
            "litemedsam/acdc_pretrain.toml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=[p.relative_to(REPO / "benchmarks" / "recipes").as_posix() for p in RECIPES])
def test_every_recipe_of_the_package_validates_but_for_files_a_clone_lacks(path, capsys):
    code, out, err = _cli(capsys, "validate", path)
    if code == 0:
        assert _resolved(out)["backbone"]["name"] in ("sam", "tinyvit", "unet")
        return
    problems = [line.strip()[2:] for line in err.splitlines() if line.strip().startswith("- ")]
    assert code == 2 and problems, err
    for problem in problems:  # its paths resolve from the recipe's folder into the repository's runs/
        assert problem.endswith("no such file or folder") and any(f"'{p}/" in problem for p in NOT_SHIPPED), err
