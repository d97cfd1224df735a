"""What every teacher shares: frozen and in eval mode, CPT results saved/reloaded as safetensors."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field
from torch import nn

from samora_kit.api import ComponentConfig, __version__, load_weights, save_weights

from .checkpoints import check_state


class TeacherConfig(ComponentConfig):
    """Fields every teacher has."""

    checkpoint: Path | None = None  # local .safetensors, or .pth/.pt read with weights_only=True
    cpt: bool = True  # whether the caller runs continual pre-training before distillation
    cpt_epochs: int = Field(1, ge=0)


class FrozenTeacher(nn.Module):
    """Frozen (requires_grad False) and in eval mode whatever `.train()` is called with.

    Subclasses define `cpt_tensors()` (its own key layout, the one its checkpoints use) and `cpt_objective()`.
    The CPT objective holds the teacher's *own* sub-networks with requires_grad True, so training it updates
    this teacher in place; `freeze()` (called by `load_cpt` and by the pretext tasks) freezes it again."""

    expected_checkpoint = "a teacher checkpoint"
    teacher_name = "teacher"

    def freeze(self) -> "FrozenTeacher":
        self.requires_grad_(False)
        return self.train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        # a pretext task's .train() must not put BatchNorm/Dropout of the teacher in training mode
        return super().train(False)

    def ensure_eval(self) -> None:
        """Back to eval mode if a CPT objective left the teacher's sub-networks in training mode."""
        if any(child.training for child in self.children()):
            self.train(False)

    def cpt_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_tensors(self, tensors: dict[str, torch.Tensor], source: Path) -> None:
        raise NotImplementedError

    def save_cpt(self, path: str | Path, **header) -> Path:
        """Write `cpt_tensors()` to safetensors with a JSON header (teacher name, kit version, `header`)."""
        meta = {"format": f"samora_kit.teacher.{self.teacher_name}", "samora_kit_version": __version__, **header}
        return save_weights(path, self.cpt_tensors(), meta)

    def load_cpt(self, path: str | Path) -> None:
        """Reload a file written by `save_cpt` (or any safetensors in this teacher's checkpoint layout)."""
        tensors, _ = load_weights(path)
        self.load_tensors(tensors, Path(path))
        self.freeze()

    def _load_checked(self, module: nn.Module, found: dict[str, torch.Tensor], source: Path, **kwargs) -> None:
        own = module.state_dict()
        module.load_state_dict(check_state(found, own, source, self.expected_checkpoint, **kwargs), strict=False)
