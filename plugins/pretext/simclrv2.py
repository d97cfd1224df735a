"""Image-level pretext task: distil a SimCLRv2 teacher's image embedding into SAM + LoRA (paper Eq. 1).

Student: SAM encoder with the expert's LoRA -> neck output B,C,g,g -> global average pool -> projector MLP
-> the teacher's embedding width. Loss: squared error between the L2-normalised student projection and the
L2-normalised frozen teacher embedding of the same augmented view, summed over features (= 2 - 2 cos, in
[0, 4]) and averaged over the views; each view is a SimCLR augmentation of the input (`views` of them).

Without a teacher (the "scratch" ablation): SimCLR itself on the student, NT-Xent between the projections of
two views of each image (the other images of the batch are the negatives), projector width `projection_dim`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from samora_kit.api import ComponentConfig, SamoraError, embedding_of

from .augment import ViewAugmentConfig, random_view
from .losses import nt_xent
from .task_base import PretextTaskBase, mlp_head


class SimCLRv2PretextConfig(ComponentConfig):
    hidden_dim: int = Field(2048, ge=1)  # projector MLP width
    views: Literal[1, 2] = 2  # augmented views per image distilled each step (scratch always uses 2)
    projection_dim: int = Field(128, ge=1)  # projector output without a teacher
    temperature: float = Field(0.1, gt=0)  # NT-Xent without a teacher
    augment: ViewAugmentConfig = Field(default_factory=ViewAugmentConfig)


class SimCLRv2Pretext(PretextTaskBase):
    """images B,3,S,S in [0, 1] -> {"loss", "cosine" (with teacher) | "nt_xent" (without)}."""

    def __init__(self, config: SimCLRv2PretextConfig, backbone: nn.Module, teacher: nn.Module | None) -> None:
        super().__init__(backbone, teacher)
        self.config = config
        if teacher is not None:
            shape = self.probe_teacher()
            if len(shape) != 2:
                raise SamoraError(f"the simclrv2 task distils an image embedding B,D, but the teacher returns "
                                  f"{tuple(shape)}; use an image-level teacher such as simclrv2_resnet")
            dim_out = shape[1]
        else:
            dim_out = config.projection_dim
        self.projector = mlp_head(backbone.embed_channels, config.hidden_dim, dim_out)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        n_views = 2 if self.teacher is None else self.config.views
        views = torch.cat([random_view(images, self.config.augment) for _ in range(n_views)])  # V*B, 3, S, S
        pooled = embedding_of(self.backbone(views)).mean(dim=(2, 3))  # V*B, C
        student = self.projector(pooled)  # V*B, D
        if self.teacher is None:
            z1, z2 = student.chunk(2)
            loss = nt_xent(z1, z2, self.config.temperature)
            return {"loss": loss, "nt_xent": loss.detach()}
        with torch.no_grad():
            target = F.normalize(self.teacher(views).float(), dim=1)  # V*B, D
        student = F.normalize(student, dim=1)
        loss = (student - target).pow(2).sum(dim=1).mean()
        return {"loss": loss, "cosine": (student * target).sum(dim=1).mean().detach()}


def build_simclrv2_pretext(config: SimCLRv2PretextConfig, *, backbone, teacher: nn.Module | None = None
                           ) -> SimCLRv2Pretext:
    """Image-level expert: pooled SAM features -> projector -> SimCLRv2 teacher embedding (MSE)."""
    return SimCLRv2Pretext(config, backbone, teacher)


def register(registry) -> None:
    registry.add("pretext", "simclrv2", SimCLRv2PretextConfig, build_simclrv2_pretext,
                 example={"hidden_dim": 64})
