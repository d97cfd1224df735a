"""Configs of the SAM ViT backbone and its checkpoint importer, plus the architecture presets (the LoRA and
experts configs: lora/config.py). Light: the plugin imports it when it loads (segment_anything when built)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import field_validator, model_validator

from samora_kit.api import ComponentConfig
from samora_kit_plugins.lora.config import LoRABackboneConfig

SamVariant = Literal["vit_b", "vit_l", "vit_h", "tiny"]


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


class SamImportConfig(ComponentConfig):
    variant: SamVariant | None = None  # refuse the file unless it holds this variant
