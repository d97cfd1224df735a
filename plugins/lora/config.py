"""Configs that the SAM and SAM2 backbones share: the LoRA shape, the stage-2 experts, and the
base of both backbone configs (weights file, LoRA, experts)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from samora_kit.api import ComponentConfig

LoRATarget = Literal["q", "k", "v"]


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
