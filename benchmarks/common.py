"""Shared by the benchmark scripts: a model from a recipe with random weights."""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from scipy.stats import t as t_distribution

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from samora_kit.plugins import default_registry  # noqa: E402
from samora_kit.recipe import load_recipe  # noqa: E402
from samora_kit.train.model import build_model  # noqa: E402
from samora_kit.weights.io import atomic_write_text  # noqa: E402


def model_from_recipe(recipe_path: Path, overrides: list[str], num_classes: int, device: torch.device,
                      full_rank_logits: bool = False):
    """The recipe's model with random weights: checkpoints named in the recipe are not read."""
    if full_rank_logits:
        from samora_kit_plugins.sam import experts

        experts.LOW_RANK_LOGITS = False
    registry = default_registry()
    recipe = load_recipe(recipe_path, registry, overrides)
    recipe.backbone.checkpoint = None
    if hasattr(recipe.decoder, "checkpoint"):
        recipe.decoder.checkpoint = None
    torch.manual_seed(0)
    return recipe, build_model(recipe, registry, num_classes).to(device)


def peak_memory_mib(device: torch.device) -> tuple[str, float]:
    if device.type == "cuda":
        return "peak GPU memory", torch.cuda.max_memory_allocated(device) / 2**20
    return "peak RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every per-recipe benchmark takes: recipes, overrides, device, class count."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipes", type=Path, nargs="+", help="one recipe, or several: each is measured in its own "
                   "process, then compared with the first as a ratio")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a recipe override (key.path=value, as for samora-kit run); repeatable")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--num-classes", type=int, default=8)
    p.add_argument("--full-rank-logits", action="store_true",
                   help="SAM expert variants: compute every variant's attention logits in full instead of as "
                        "rank-r corrections of the frozen logits (to measure what the corrections save)")
    return p


def report(result: dict[str, float]) -> None:
    """The last line of a measurement, read back by `measure_each`."""
    print("result " + json.dumps(result))


def measure_each(script: str, recipes: list[Path]) -> None:
    """Several recipes: each measured by `script` in its own process (so peak memory is its own),
    one after the other, then every figure of each recipe as a ratio to the first recipe's."""
    argv = [a for a in sys.argv[1:] if a not in {str(r) for r in recipes}]
    rows = []
    for recipe in recipes:
        done = subprocess.run([sys.executable, script, str(recipe), *argv], capture_output=True, text=True)
        print(done.stdout, end="")
        if done.returncode != 0:
            sys.exit(f"{script} {recipe} failed:\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1].removeprefix("result ")))
    for recipe, row in zip(recipes[1:], rows[1:]):
        ratios = ", ".join(f"{row[k] / rows[0][k]:.2f}x {k}" for k in rows[0] if rows[0][k])
        print(f"{recipe} / {recipes[0]}: {ratios}")


def write_doc_block(path: Path, block: str, text: str) -> None:
    """Put `text` between <!-- block:start --> and <!-- block:end --> in `path` (appended when absent)."""
    doc = path.read_text()
    start, end = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
    doc = doc[:doc.index(start)] + f"{start}\n{text}\n{end}" + doc[doc.index(end) + len(end):] \
        if start in doc else doc.rstrip() + f"\n\n{start}\n{text}\n{end}\n"
    atomic_write_text(path, doc)


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of the per-draw differences a - b and its 95 % t-interval (nan bounds for one draw)."""
    diffs = [x - y for x, y in zip(a, b)]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, math.nan, math.nan
    half = t_distribution.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half
