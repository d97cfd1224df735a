"""SAM ViT image encoder (B/L/H and a tiny test size) with SAMed-style LoRA or fused LoRA experts.

Registering imports only the pydantic configs: segment_anything and the model code load when a component is
built (or one of their names below is first read)."""

from samora_kit.api import hookimpl, lazy_exports
from samora_kit_plugins.lora import ExpertsConfig, ExpertsQKV, LoRAConfig, LoRAQKV

from .config import SAM_PRESETS, SamBackboneConfig, SamImportConfig, SamPreset

__all__ = ["SAM_PRESETS", "ExpertFusedBlock", "ExpertsConfig", "ExpertsQKV", "LoRAConfig", "LoRAQKV",
           "RelPosSdpaAttention", "SamBackbone", "SamBackboneConfig", "SamImportConfig", "SamPreset",
           "build_image_encoder", "build_sam_backbone", "import_sam", "import_sam_checkpoint", "sam_attention_sdpa",
           "variants_attention"]

__getattr__ = lazy_exports(__name__, {
    ".backbone": ("SamBackbone", "build_image_encoder"),
    ".checkpoint_import": ("import_sam_checkpoint",),
    ".experts": ("ExpertFusedBlock",),
    ".rel_pos_attention": ("RelPosSdpaAttention", "sam_attention_sdpa"),
    ".variant_attention": ("variants_attention",),
})


def build_sam_backbone(config: SamBackboneConfig, *, fuser=None):
    """SAM ViT image encoder, frozen, with SAMed-style LoRA on q/v (or fused frozen LoRA experts)."""
    from .backbone import build_sam_backbone as build

    return build(config, fuser=fuser)


def import_sam(config: SamImportConfig, *, src, out):
    """An official segment-anything .pth (vit_b/l/h) -> checksummed safetensors."""
    from .checkpoint_import import import_sam as convert

    return convert(config, src=src, out=out)


@hookimpl
def samora_kit_register(registry) -> None:
    registry.add("backbone", "sam", SamBackboneConfig, build_sam_backbone,
                 example={"variant": "tiny", "image_size": 64})
    registry.add("importer", "segment-anything", SamImportConfig, import_sam)
