"""Patch-level pretext task (EfficientSAM's SAMI, adapted): distil an MAE teacher's token features.

75 % of the 16-px patches are blanked in the image (set to the image's mean, or to 0); the backbone + LoRA
sees the masked image, and a per-token head on the backbone's `tokens` (SAM: the pre-neck tokens, patch_embed +
pos_embed + blocks, since the neck's 3x3 conv would mix neighbouring tokens; SAM2: the stride-16 FPN level,
1x1 lateral convs) predicts the teacher's token features of the *unmasked* image at every
position. Loss: MSE over all positions by default (visible tokens keep their content aligned with the
teacher, masked ones must be inferred from context), or over the masked positions only (`loss_on`).

Alignment: student and teacher tokens are paired by grid index (i, j) — no gathering or shuffling — over the
same S-px input. The patch p is the teacher's (16 px without a teacher) and a multiple of the backbone's
embedding stride s: the student's tokens (B, S/s, S/s, W) are averaged over each p x p patch (p/s x p/s tokens,
nothing to average when s = p, as on SAM's ViT), so pair (i, j) covers the same p x p pixels on both sides.
(The authors' code compared index-ordered student tokens with shuffle-ordered teacher tokens.)

Without a teacher (the "scratch" ablation): MAE's objective on the student, the head predicts the 16x16x3
pixels of each masked patch, standardised per patch (norm_pix_loss), MSE over the masked patches only.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from samora_kit.api import ComponentConfig, SamoraError

from .losses import normalized_patch_targets
from .task_base import PretextTaskBase, mlp_head
from .tokens import blank_patches, patchify, random_patch_mask

SAM_PATCH = 16  # the patch without a teacher (SAM's ViT patch); a teacher brings its own


class MAEPretextConfig(ComponentConfig):
    mask_ratio: float = Field(0.75, gt=0, lt=1)
    fill: Literal["mean", "zero"] = "mean"  # what masked patches are blanked with
    loss_on: Literal["all", "masked"] = "all"  # with a teacher; without one the loss is on masked patches
    hidden_dim: int = Field(2048, ge=1)  # per-token head MLP width


class MAEPretext(PretextTaskBase):
    """images B,3,S,S in [0, 1] -> {"loss", "masked_loss", "visible_loss" (with teacher)}."""

    def __init__(self, config: MAEPretextConfig, backbone: nn.Module, teacher: nn.Module | None) -> None:
        super().__init__(backbone, teacher)
        self.config = config
        self.patch = getattr(teacher, "patch_size", None) or SAM_PATCH
        problem = patch_alignment_problem(self.patch, backbone.image_size, backbone.embed_stride)
        if problem:
            raise SamoraError(f"the mae task: {problem}")
        self.pool = self.patch // backbone.embed_stride  # student tokens per patch side
        self.grid = backbone.image_size // self.patch
        width = backbone.token_channels  # SAM: the ViT width before the neck; SAM2: the FPN width
        if teacher is not None:
            self._check_teacher_grid(teacher, backbone)
            dim_out = self.probe_teacher()[-1]
        else:
            dim_out = self.patch * self.patch * 3
        self.head = mlp_head(width, config.hidden_dim, dim_out)

    def _check_teacher_grid(self, teacher: nn.Module, backbone: nn.Module) -> None:
        size = getattr(teacher, "image_size", None)
        if size not in (None, backbone.image_size):
            raise SamoraError(
                f"the mae task pairs teacher and backbone tokens position by position over the same image, so the "
                f"teacher must read {backbone.image_size}-px images like the backbone; it reads {size}-px images "
                f"(set the teacher's image_size to {backbone.image_size})")
        shape = tuple(self.probe_teacher())
        if len(shape) != 4 or shape[1:3] != (self.grid, self.grid):
            raise SamoraError(f"the mae task needs teacher token features B,{self.grid},{self.grid},D (one per "
                              f"{self.patch}-px patch), but the teacher returns {shape}; use a patch-level teacher "
                              "such as mae_vit")

    def predict_tokens(self, masked_images: torch.Tensor) -> torch.Tensor:
        """Student: masked images B,3,S,S -> per-patch predictions B, S/p, S/p, D (tokens averaged per patch)."""
        tokens = self.backbone.tokens(masked_images)  # B, S/s, S/s, W
        if self.pool > 1:
            tokens = F.avg_pool2d(tokens.permute(0, 3, 1, 2), self.pool).permute(0, 2, 3, 1)
        return self.head(tokens)

    def target_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher: unmasked images B,3,S,S -> token features B, g, g, D (no gradient)."""
        with torch.no_grad():
            return self.teacher(images).float()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        mask = random_patch_mask(images.shape[0], self.grid, self.config.mask_ratio, images.device)  # B, g, g
        pred = self.predict_tokens(blank_patches(images, mask, self.patch, self.config.fill))  # B, g, g, D
        if self.teacher is None:
            target = normalized_patch_targets(patchify(images, self.patch))  # B, g, g, p*p*3
            loss = (pred - target).pow(2).mean(dim=-1)[mask].mean()
            return {"loss": loss, "masked_loss": loss.detach()}
        per_token = (pred - self.target_tokens(images)).pow(2).mean(dim=-1)  # B, g, g: pairs (i, j) <-> (i, j)
        masked, visible = per_token[mask].mean(), per_token[~mask].mean()
        loss = per_token.mean() if self.config.loss_on == "all" else masked
        return {"loss": loss, "masked_loss": masked.detach(), "visible_loss": visible.detach()}


def patch_alignment_problem(patch: int, image_size: int, stride: int) -> str | None:
    """Why `patch`-px patches cannot pair with a backbone whose tokens are `stride`-px cells, or None."""
    if patch % stride:
        return (f"the teacher's {patch}-px patches are not whole multiples of the backbone's {stride}-px token cells "
                f"(embed_stride {stride}); use a teacher patch_size that is a multiple of {stride}")
    if image_size % patch:
        return f"{image_size}-px images do not divide into {patch}-px patches"
    return None


def build_mae_pretext(config: MAEPretextConfig, *, backbone, teacher: nn.Module | None = None) -> MAEPretext:
    """Patch-level expert: SAM tokens of the masked image -> MAE teacher tokens of the full image (MSE)."""
    return MAEPretext(config, backbone, teacher)


def register(registry) -> None:
    registry.add("pretext", "mae", MAEPretextConfig, build_mae_pretext, example={"hidden_dim": 64})
