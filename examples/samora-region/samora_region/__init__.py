"""samora-region: a region-level pretext task for SAMora's stage 1, as a third-party samora-kit plugin.

Between the image level (the whole slice) and the patch level (one 16-px token) sits the region: a
square of tokens. The task cuts each slice into a grid x grid jigsaw of tiles aligned with the
backbone's 16-px token grid, shuffles the tiles and turns each by 0, 90, 180 or 270 degrees; the
backbone's LoRA-adapted tokens (`backbone.tokens`), averaged over each tile, feed two small heads
that predict each tile's quarter turn and the position it came from. Both are cross-entropies; their
sum is the loss, and only the backbone's LoRA and the two heads train.

Installed, the package registers the pretext task "region" through its entry point `region` (see
pyproject.toml); a recipe asks for it with `[plugins] require = ["region"]` and uses it as
`pretext = { name = "region", grid = 2 }`. `samora-kit validate` checks `grid` against the recipe's
backbone through `samora_kit_check_recipe`. docs/plugins.md in samora-kit walks through this file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from samora_kit.api import ComponentConfig, PretrainableBackbone, SamoraError, hookimpl

NAME = "region"
QUARTER_TURNS = 4
EXAMPLE = {"grid": 2, "hidden_dim": 32}  # tiny: what the conformance suite builds (a 64-px SAM has a 4-cell grid)


class RegionConfig(ComponentConfig):
    grid: int = Field(2, ge=1)            # tiles per side; must divide the backbone's token grid (embed_grid)
    rotations: bool = True                # predict each tile's quarter turn
    permutation: bool = True              # shuffle the tiles and predict where each came from (grid >= 2)
    hidden_dim: int = Field(256, ge=1)    # hidden width of the two heads

    @model_validator(mode="after")
    def _something_to_predict(self) -> "RegionConfig":
        if not self.rotations and not (self.permutation and self.grid > 1):
            raise ValueError("nothing to predict: set rotations = true, or permutation = true with grid >= 2")
        return self


def classifier(width: int, hidden: int, classes: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, classes))


class RegionPretext(nn.Module):
    """images B,3,S,S in [0, 1] -> {"loss", "rotation_acc", "position_acc"} (accuracies without gradient)."""

    def __init__(self, config: RegionConfig, backbone: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        width, tiles = backbone.token_channels, config.grid ** 2
        self.rotation_head = classifier(width, config.hidden_dim, QUARTER_TURNS) if config.rotations else None
        shuffles = config.permutation and config.grid > 1
        self.position_head = classifier(width, config.hidden_dim, tiles) if shuffles else None

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        jumbled, turns, origins = self.jumble(images)
        tiles = self.tile_features(self.backbone.tokens(jumbled))  # B, T, W
        losses, out = [], {}
        for what, head, target in (("rotation", self.rotation_head, turns), ("position", self.position_head, origins)):
            if head is None:
                continue
            logits = head(tiles).flatten(0, 1).float()  # B*T, classes
            losses.append(F.cross_entropy(logits, target.flatten()))
            out[f"{what}_acc"] = (logits.argmax(-1) == target.flatten()).float().mean().detach()
        return {"loss": sum(losses), **out}

    def jumble(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the jigsaw B,3,S,S; each position's quarter turns B,T; the tile each position shows B,T).
        Position p = row * grid + column."""
        b, c, s, _ = images.shape
        n = self.config.grid
        t, count = s // n, n * n
        tiles = images.reshape(b, c, n, t, n, t).permute(0, 2, 4, 1, 3, 5).reshape(b, count, c, t, t)
        turns = (torch.randint(QUARTER_TURNS, (b, count), device=images.device) if self.rotation_head is not None
                 else torch.zeros(b, count, dtype=torch.long, device=images.device))
        turned = tiles.clone()
        for k in range(1, QUARTER_TURNS):
            chosen = turns == k
            turned[chosen] = torch.rot90(tiles[chosen], k, dims=(-2, -1))
        origins = (torch.rand(b, count, device=images.device).argsort(dim=1) if self.position_head is not None
                   else torch.arange(count, device=images.device).expand(b, count))
        shown = turned.gather(1, origins[:, :, None, None, None].expand_as(turned))  # position p shows tile origins[p]
        jumbled = shown.reshape(b, n, n, c, t, t).permute(0, 3, 1, 4, 2, 5).reshape(b, c, s, s)
        return jumbled, turns.gather(1, origins), origins

    def tile_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """B,g,g,W tokens -> B,T,W: the mean token of each tile, in position order."""
        b, g, _, w = tokens.shape
        n = self.config.grid
        return tokens.reshape(b, n, g // n, n, g // n, w).mean(dim=(2, 4)).reshape(b, n * n, w)


def grid_problem(grid: int, backbone) -> str | None:
    """Why `grid` does not fit the backbone's token grid, or None."""
    cells = backbone.embed_grid
    if cells % grid == 0:
        return None
    fits = [d for d in range(1, cells + 1) if cells % d == 0]
    return (f"must divide the backbone's {cells}-cell token grid ({backbone.image_size}-px images / "
            f"{backbone.image_size // cells}); use one of {fits}")


def build_region(config: RegionConfig, *, backbone, teacher=None) -> RegionPretext:
    """Region-level pretext: a jigsaw of turned tiles on the token grid; heads predict each tile's turn and origin."""
    if teacher is not None:
        raise SamoraError(f"the region pretext task uses no teacher; remove the teacher from this expert "
                          f"(got {type(teacher).__name__})")
    if not isinstance(backbone, PretrainableBackbone):
        raise SamoraError(f"the region pretext task reads backbone.tokens(); {type(backbone).__name__} has no "
                          "token grid (use the sam or sam2 backbone)")
    problem = grid_problem(config.grid, backbone)
    if problem:
        raise SamoraError(f"region pretext: grid = {config.grid}: {problem}")
    return RegionPretext(config, backbone)


@hookimpl
def samora_kit_register(registry) -> None:
    registry.add("pretext", NAME, RegionConfig, build_region, example=EXAMPLE)


@hookimpl
def samora_kit_check_recipe(recipe, backbone) -> list[str]:
    """`samora-kit validate`: every region task's grid must divide the recipe's backbone's token grid."""
    pretexts = [(f"experts.{i}.pretext", e.pretext) for i, e in enumerate(getattr(recipe, "experts", None) or [])]
    base = getattr(recipe, "base_pretraining", None)
    pretexts += [("base_pretraining.pretext", base.pretext)] if base is not None else []
    problems = []
    for key, pretext in pretexts:
        problem = grid_problem(pretext.grid, backbone) if isinstance(pretext, RegionConfig) else None
        if problem:
            problems.append(f"{key}.grid = {pretext.grid}: {problem}")
    return problems
