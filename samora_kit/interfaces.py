"""The small Protocols every plugin kind satisfies. Components are plain nn.Modules."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from .data.volume import Volume


@runtime_checkable
class Backbone(Protocol):
    """Image encoder. Input B,3,S,S in [0, 1]; output B,C,g,g (g = S / patch)."""

    image_size: int
    embed_channels: int
    embed_grid: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes (LoRA), for compact checkpoints."""
        ...


@runtime_checkable
class Decoder(Protocol):
    """Prompt-free mask decoder: embedding B,C,g,g -> logits B,num_classes+1,4g,4g."""

    num_classes: int

    def __call__(self, embedding: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class PretextTask(Protocol):
    """Self-supervised objective for one expert; returns a dict containing `loss`."""

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class Teacher(Protocol):
    """A frozen network in eval mode whose features a pretext task distils."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Fuser(Protocol):
    """Combines K expert deltas (K, B, ..., C) into one delta (B, ..., C)."""

    def __call__(self, deltas: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class DatasetAdapter(Protocol):
    """Reads one on-disk layout into Volumes with intensities in [0, 1]."""

    num_classes: int          # foreground classes; label values are 0..num_classes
    class_names: list[str]    # foreground class names, index i is label i + 1

    def cases(self, split: str) -> list[str]:
        """Case ids of `train` (labelled subset) or `test`."""
        ...

    def load_case(self, case_id: str) -> Volume: ...
