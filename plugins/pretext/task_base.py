"""What the distillation pretext tasks share: a frozen teacher kept in eval mode, small MLP heads."""

from __future__ import annotations

import torch
from torch import nn


def mlp_head(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    """LayerNorm -> Linear -> GELU -> Linear, on the last axis (pooled features or B, g, g, C tokens)."""
    return nn.Sequential(nn.LayerNorm(dim_in), nn.Linear(dim_in, hidden), nn.GELU(), nn.Linear(hidden, dim_out))


class PretextTaskBase(nn.Module):
    """Holds `backbone` and an optional `teacher` (frozen here, and kept in eval mode by `train()`).
    Trainable: the backbone's LoRA (already its only trainable part) and the task's heads."""

    def __init__(self, backbone: nn.Module, teacher: nn.Module | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.teacher = teacher
        if teacher is not None:
            if hasattr(teacher, "freeze"):
                teacher.freeze()  # also undoes a CPT objective's requires_grad/train mode
            else:
                teacher.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "PretextTaskBase":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    @torch.no_grad()
    def probe_teacher(self) -> torch.Size:
        """Shape of the teacher's features for one image of the backbone's size (checked once, at build)."""
        device = next(self.teacher.parameters()).device
        size = self.backbone.image_size
        return self.teacher(torch.zeros(1, 3, size, size, device=device)).shape
