"""SAM ViT image encoder (B/L/H and a tiny test size) with SAMed-style LoRA."""

from samora_kit.hookspecs import hookimpl

from .backbone import SamBackbone, build_image_encoder, build_sam_backbone
from .config import SAM_PRESETS, LoRAConfig, SamBackboneConfig, SamPreset
from .lora import LoRAQKV

__all__ = ["SAM_PRESETS", "LoRAConfig", "LoRAQKV", "SamBackbone", "SamBackboneConfig", "SamPreset",
           "build_image_encoder", "build_sam_backbone"]


@hookimpl
def samora_kit_register(registry) -> None:
    registry.add("backbone", "sam", SamBackboneConfig, build_sam_backbone,
                 example={"variant": "tiny", "image_size": 64})
