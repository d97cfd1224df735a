"""The small Protocols every plugin kind satisfies. Components are plain nn.Modules."""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import torch

from .data.volume import Volume


class FeaturePyramid(NamedTuple):
    """A backbone output with finer levels besides the embedding (SAM2's image encoder).

    `embedding` is the B,C,g,g map every decoder reads (g = S / 16); `high_res` holds the
    higher-resolution maps, finest first (SAM2: strides 4 and 8, B,C',4g,4g and B,C',2g,2g)."""

    embedding: torch.Tensor
    high_res: tuple[torch.Tensor, ...]


def embedding_of(features: "torch.Tensor | FeaturePyramid") -> torch.Tensor:
    """The B,C,g,g embedding of a backbone output, whether a plain tensor or a FeaturePyramid."""
    return features.embedding if isinstance(features, FeaturePyramid) else features


@runtime_checkable
class Backbone(Protocol):
    """Image encoder. Input B,3,S,S in [0, 1]; output B,C,g,g (g = S / 16), or a FeaturePyramid
    whose `embedding` is that map (decoders that need only the embedding call `embedding_of`)."""

    image_size: int
    embed_channels: int
    embed_grid: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes (LoRA), for compact checkpoints."""
        ...


@runtime_checkable
class PretrainableBackbone(Backbone, Protocol):
    """What stage-1 pretext tasks read from a backbone besides its output (SAM and SAM2 have it)."""

    token_channels: int       # W of `tokens`
    block_channels: list[int]  # output width of each encoder block, in order

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """B,g,g,W features on the 16-px grid that every LoRA block feeds (the patch-level student)."""
        ...

    def block_outputs(self, images: torch.Tensor, blocks: list[int]
                      ) -> "tuple[torch.Tensor | FeaturePyramid, list[torch.Tensor]]":
        """One pass: (the backbone output, channels-last B,h,w,W_i outputs of `blocks`, in that order)."""
        ...

    def default_skip_blocks(self) -> list[int]:
        """Blocks whose outputs make good U-Net skips (the pixel-level decoder), shallow to deep."""
        ...


@runtime_checkable
class Decoder(Protocol):
    """Prompt-free mask decoder: backbone output (B,C,g,g or a FeaturePyramid) -> logits B,num_classes+1,4g,4g."""

    num_classes: int

    def __call__(self, features: "torch.Tensor | FeaturePyramid") -> torch.Tensor: ...


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
class ParameterGroups(Protocol):
    """A module (anywhere in what trains) some of whose trainable parameters take their own learning
    rate: group "fuser" trains at `train.fuser_lr`, group "lora" at `train.lora_lr`; every other
    trainable parameter at `train.lr`."""

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]: ...


@runtime_checkable
class Diagnostics(Protocol):
    """A module that measures itself during a forward on logging steps (every `train.log_every`
    steps the loop enables recording, runs the step, and writes `diagnostics()` to metrics.jsonl)."""

    def record_diagnostics(self, enabled: bool) -> None: ...

    def diagnostics(self) -> dict[str, torch.Tensor]:
        """Scalar tensors by metric name, from the last recorded forward."""
        ...


@runtime_checkable
class DatasetAdapter(Protocol):
    """Reads one on-disk layout into Volumes with intensities in [0, 1]."""

    num_classes: int          # foreground classes; label values are 0..num_classes
    class_names: list[str]    # foreground class names, index i is label i + 1

    def cases(self, split: str) -> list[str]:
        """Case ids of `train` (labelled subset) or `test`."""
        ...

    def load_case(self, case_id: str) -> Volume: ...
