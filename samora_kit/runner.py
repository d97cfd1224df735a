"""From a recipe to a finished run folder: load and check the recipe, start the distributed
context, hand the recipe to its task's flow (samora_kit.flows)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from .checks import check_references
from .errors import RecipeError
from .flows import FLOWS, Session
from .plugins import default_plugins
from .recipe import load_recipe
from .train.distributed import init_distributed, shutdown
from .train.loop import StepCallback


def run(recipe_path: Path, overrides: list[str], resume: bool, argv: list[str],
        console: Console | None = None, show_progress: bool = True,
        step_callbacks: Sequence[StepCallback] = ()) -> Path:
    """Run the recipe at `recipe_path` with `overrides` into its run folder and return the folder;
    `step_callbacks` are called with the step number after every optimizer step of every training loop."""
    plugins = default_plugins()
    recipe = load_recipe(recipe_path, plugins.registry, overrides)
    problems = check_references(recipe, plugins.registry)  # before anything trains; validate checks more
    if problems:
        raise RecipeError(str(recipe_path), problems)
    ctx = init_distributed(recipe.run.device)
    try:
        return FLOWS[recipe.task](recipe, Session(plugins, ctx, argv, console or Console(), show_progress,
                                                      tuple(step_callbacks)), resume)
    finally:
        shutdown()
