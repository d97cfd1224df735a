"""What `samora-kit validate` checks beyond each key's schema: the files and recipes a recipe
names, its cross-references, and (with the backbone built) every plugin's own checks through the
`samora_kit_check_recipe` hook; with the data at hand, that data.val holds no test case. `run` makes the
first two checks before anything trains (and the segment flow the last)."""

from __future__ import annotations

from .errors import SamoraError
from .eval.validation import validation_cases
from .flows.compare import load_baselines
from .interfaces import ValidationCases, experts_of
from .flows.segment import experts_nobody_trains, load_pretrain_recipe
from .plugins import LoadedPlugins
from .recipe_paths import path_fields
from .train.model import build_backbone, build_dataset

OUTPUTS = ("run.output_dir",)  # paths a run writes, not reads


def check_references(recipe, registry) -> list[str]:
    """Every path the recipe reads exists; the recipes it chains ([pretrain]) and compares with
    ([compare]) load, have the right task and hold what this recipe takes from them."""
    problems = [f"{key} = {str(path)!r}: no such file or folder"
                for key, path in path_fields(recipe) if key not in OUTPUTS and not path.exists()]
    if recipe.task != "segment":
        return problems
    if recipe.pretrain is not None:
        problems += _chained("pretrain.recipe", lambda: _pretrain_problems(recipe, registry))
    if recipe.compare is not None:
        problems += _chained("compare.recipes", lambda: [
            p for path, other in zip(recipe.compare.recipes, load_baselines(recipe, registry))
            for p in _prefixed(path, check_references(other, registry))])
    return problems


def check_with_backbone(recipe, plugins: LoadedPlugins) -> list[str]:
    """Build the recipe's backbone (its fuser and expert packs included) and run every plugin's checks;
    the same for the stage-1 recipe it chains. Call it once check_references found nothing."""
    try:
        backbone = build_backbone(recipe, plugins.registry)
    except (SamoraError, ValueError) as exc:
        return [f"backbone (built to check the recipe): {exc}"]
    results = plugins.manager.hook.samora_kit_check_recipe(recipe=recipe, backbone=backbone)
    problems = [problem for found in results for problem in found or []]
    if recipe.task == "segment" and recipe.pretrain is not None:  # the chained stage 1 is checked alike
        stage1 = load_pretrain_recipe(recipe, plugins.registry)
        problems += _prefixed(recipe.pretrain.recipe, check_with_backbone(stage1, plugins))
    return problems


def check_validation_cases(recipe, registry) -> list[str]:
    """data.val's cases resolve and none is a test case (reads the data set's case lists)."""
    if recipe.task != "segment" or not isinstance(recipe.data, ValidationCases) or recipe.data.val is None:
        return []
    try:
        validation_cases(recipe, build_dataset(recipe, registry))
    except SamoraError as exc:
        return [str(exc)]
    return []


def _pretrain_problems(recipe, registry) -> list[str]:
    if experts_of(recipe.backbone) is None:
        return ["pretrain: [pretrain] is set but backbone.experts is not: name the experts to fuse"]
    stage1 = load_pretrain_recipe(recipe, registry)
    unknown = experts_nobody_trains(recipe, stage1)
    return [unknown] if unknown else _prefixed(recipe.pretrain.recipe, check_references(stage1, registry))


def _chained(key: str, check) -> list[str]:
    try:
        return check()
    except SamoraError as exc:  # RecipeError included: the other recipe's own problems
        return [f"{key}: {exc}"]


def _prefixed(path, problems: list[str]) -> list[str]:
    return [f"in {path}: {p}" for p in problems]
