"""SAM ViT image encoder (B/L/H and a tiny test size) with SAMed-style LoRA or fused LoRA experts."""

from samora_kit.hookspecs import hookimpl
from samora_kit_plugins.lora import ExpertsConfig, ExpertsQKV, LoRAConfig, LoRAQKV

from .backbone import SamBackbone, build_image_encoder, build_sam_backbone
from .checkpoint_import import SamImportConfig, import_sam, import_sam_checkpoint
from .config import SAM_PRESETS, SamBackboneConfig, SamPreset
from .experts import ExpertFusedBlock
from .rel_pos_attention import RelPosSdpaAttention, sam_attention_sdpa
from .variant_attention import variants_attention

__all__ = ["SAM_PRESETS", "import_sam_checkpoint", "ExpertFusedBlock", "ExpertsConfig", "ExpertsQKV", "LoRAConfig", "LoRAQKV", "SamBackbone",
           "SamBackboneConfig", "SamPreset", "build_image_encoder", "build_sam_backbone", "sam_attention_sdpa",
           "RelPosSdpaAttention", "variants_attention"]


@hookimpl
def samora_kit_register(registry) -> None:
    registry.add("backbone", "sam", SamBackboneConfig, build_sam_backbone,
                 example={"variant": "tiny", "image_size": 64})
    registry.add("importer", "segment-anything", SamImportConfig, import_sam)
