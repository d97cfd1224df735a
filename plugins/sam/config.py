"""Configs of the SAM ViT backbone and its LoRA, plus the architecture presets."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from samora_kit.registry import ComponentConfig

SamVariant = Literal["vit_b", "vit_l", "vit_h", "tiny"]
LoRATarget = Literal["q", "k", "v"]


@dataclass(frozen=True)
class SamPreset:
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    out_chans: int = 256


SAM_PRESETS: dict[str, SamPreset] = {
    "vit_b": SamPreset(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamPreset(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamPreset(1280, 32, 16, (7, 15, 23, 31)),
    # a few M parameters: tests and the CPU quick start
    "tiny": SamPreset(96, 4, 3, (1, 3), window_size=7, out_chans=64),
}


class LoRAConfig(ComponentConfig):
    rank: int = Field(4, ge=1)
    targets: list[LoRATarget] = Field(default_factory=lambda: ["q", "v"], min_length=1)
    blocks: Literal["all"] | list[int] = "all"

    @field_validator("targets")
    @classmethod
    def _unique_targets(cls, targets: list[str]) -> list[str]:
        if len(set(targets)) != len(targets):
            raise ValueError(f"lora.targets {targets} repeats a projection; list each of q, k, v once")
        return targets


class ExpertsConfig(ComponentConfig):
    """Stage 2: K frozen LoRA experts in every LoRA block, combined by a fuser.

    The experts' LoRA shape (rank, targets, blocks) is the backbone's `lora` section."""

    names: list[str] = Field(min_length=1)  # fuser order: deltas[i] is expert names[i]
    packs: dict[str, Path] = Field(default_factory=dict)  # name -> pack; others start fresh (B = 0)
    scope: Literal["attention", "block"] = "attention"
    check_base: bool = True  # refuse a pack trained on other frozen base weights than this backbone's

    @field_validator("names")
    @classmethod
    def _unique_names(cls, names: list[str]) -> list[str]:
        if any(not n for n in names):
            raise ValueError("experts.names holds an empty name")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"experts.names {names} repeats {dupes[0]!r}; each expert needs its own name")
        return names

    @model_validator(mode="after")
    def _packs_are_named_experts(self) -> "ExpertsConfig":
        unknown = [n for n in self.packs if n not in self.names]
        if unknown:
            raise ValueError(f"experts.packs names {unknown[0]!r}, which is not in experts.names {self.names}")
        return self


class LoRABackboneConfig(ComponentConfig):
    """What the SAM and SAM2 backbones share: the weights file, the LoRA shape and the stage-2 experts.
    Subclasses say how deep they are (`depth()`) and validate `lora.blocks` against it."""

    checkpoint: Path | None = None  # safetensors made by `samora-kit weights import` (or a self-pre-trained base)
    checkpoint_sha256: str | None = None
    lora: LoRAConfig = Field(default_factory=LoRAConfig)
    experts: ExpertsConfig | None = None  # None: one trainable LoRA (SAMed / SAMed-2, stage 1)

    @field_validator("checkpoint_sha256")
    @classmethod
    def _hex_digest(cls, digest: str | None) -> str | None:
        if digest is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            raise ValueError("checkpoint_sha256 must be 64 hexadecimal characters (sha256sum output)")
        return digest.lower() if digest else digest

    def depth(self) -> int:
        raise NotImplementedError

    def check_lora_blocks(self, what: str) -> None:
        """lora.blocks must name distinct blocks of the encoder (`what` names it in the message)."""
        depth = self.depth()
        if self.lora.blocks != "all":
            bad = [i for i in self.lora.blocks if not 0 <= i < depth]
            if bad:
                raise ValueError(f"lora.blocks {bad} out of range: {what} has blocks 0..{depth - 1}")
            if len(set(self.lora.blocks)) != len(self.lora.blocks):
                raise ValueError(f"lora.blocks {self.lora.blocks} repeats a block index")

    def lora_block_indexes(self) -> list[int]:
        blocks = self.lora.blocks
        return list(range(self.depth())) if blocks == "all" else sorted(blocks)


class SamBackboneConfig(LoRABackboneConfig):
    variant: SamVariant = "vit_b"
    image_size: int = 224

    @field_validator("image_size")
    @classmethod
    def _multiple_of_patch(cls, size: int) -> int:
        if size <= 0 or size % 16:
            raise ValueError(f"image_size {size} must be a positive multiple of 16 (the SAM patch size), "
                             "e.g. 224, 512 or 1024")
        return size

    @model_validator(mode="after")
    def _blocks_exist(self) -> "SamBackboneConfig":
        self.check_lora_blocks(self.variant)
        return self

    @property
    def preset(self) -> SamPreset:
        return SAM_PRESETS[self.variant]

    def depth(self) -> int:
        return self.preset.depth
