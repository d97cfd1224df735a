"""Shared by the benchmark scripts: a model from a recipe with random weights."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samora_kit.plugins import default_registry  # noqa: E402
from samora_kit.recipe import load_recipe  # noqa: E402
from samora_kit.train.model import build_model  # noqa: E402


def model_from_recipe(recipe_path: Path, overrides: list[str], num_classes: int, device: torch.device):
    """The recipe's model with random weights: checkpoints named in the recipe are not read."""
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
