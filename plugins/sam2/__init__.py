"""SAM2 Hiera image encoder (t/s/b+/l from the sam2 package's configs, and a tiny test size) with
SAMed-2-style LoRA or fused LoRA experts; outputs a FeaturePyramid of the raw FPN maps."""

from samora_kit.extras import require
from samora_kit.hookspecs import hookimpl

from .backbone import PIXEL_MEAN, PIXEL_STD, Sam2Backbone, build_sam2_backbone, build_trunk_and_neck
from .checkpoint_import import Sam2ImportConfig, import_sam2, import_sam2_checkpoint
from .config import Sam2BackboneConfig, image_encoder_node

__all__ = ["PIXEL_MEAN", "PIXEL_STD", "ExpertFusedHieraBlock", "Sam2Backbone", "Sam2BackboneConfig",
           "build_sam2_backbone", "build_trunk_and_neck", "import_sam2_checkpoint", "hiera_variants_attention", "image_encoder_node",
           "install_hiera_experts"]

EXPERTS = ("ExpertFusedHieraBlock", "hiera_variants_attention", "install_hiera_experts")


def __getattr__(name: str):
    """The experts subclass sam2's Hiera block, so they import on first use: sam2 is an optional extra."""
    if name not in EXPERTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    require("sam2", f"{__name__}.{name}")
    from . import experts

    return getattr(experts, name)


@hookimpl
def samora_kit_register(registry) -> None:
    registry.add("backbone", "sam2", Sam2BackboneConfig, build_sam2_backbone,
                 example={"variant": "tiny", "image_size": 64})
    registry.add("importer", "sam2", Sam2ImportConfig, import_sam2)
