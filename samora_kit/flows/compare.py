"""[compare]: the baseline recipes run (or are reused when finished) on the same data, and their
scores print beside this run's. Baselines train through the segment flow directly, never the runner."""

from __future__ import annotations

import json
from typing import Callable

from rich.markup import escape

from ..errors import SamoraError
from ..eval.evaluate import comparison_table
from ..recipe import dump_recipe, load_recipe
from ..train.runfolder import RECIPE_FILE, STATE_FILE
from .common import Session, run_dir_of


def compare_with_baselines(recipe, summary: dict | None, class_names: list[str], session: Session,
                           run_baseline: Callable[..., object]) -> None:
    """`run_baseline(recipe, session, resume)` trains and evaluates one baseline (the segment flow)."""
    if not session.ctx.is_main:
        return
    if session.ctx.world_size > 1:
        session.console.print("[yellow]compare: skipped under torchrun; run the baselines on their own[/]")
        return
    summaries = {recipe.run.name: summary}
    for other in load_baselines(recipe, session.registry):
        other_dir = run_dir_of(other)
        report = other_dir / "eval" / "summary.json"
        if report.exists() and (other_dir / RECIPE_FILE).is_file() and \
                (other_dir / RECIPE_FILE).read_text() == dump_recipe(other):
            session.console.print(f"compare: reusing the finished run {escape(str(other_dir))}")
        else:
            run_baseline(other, session, (other_dir / STATE_FILE).exists())
        summaries[other.run.name] = json.loads(report.read_text())
    for policy in recipe.eval.policies:
        session.console.print(comparison_table(summaries, class_names, policy))


def load_baselines(recipe, registry) -> list:
    """The recipes [compare] names; each must be a segmentation recipe without [compare] of its own."""
    baselines = []
    for i, path in enumerate(recipe.compare.recipes):
        other = load_recipe(path, registry)
        if other.task != "segment" or other.compare is not None:
            what = f"a {other.task!r} recipe" if other.task != "segment" else "a recipe with its own [compare]"
            raise SamoraError(f"compare.recipes.{i} = {str(path)!r} is {what}; a baseline is a segmentation "
                              "recipe (task = \"segment\") without [compare]")
        baselines.append(other)
    return baselines
